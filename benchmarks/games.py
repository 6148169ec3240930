"""Benchmark: source-game speed on one core, and collecting Bricks episodes to disk.

    python benchmarks/games.py [--steps 20000] [--collect 100000]

Prints a Markdown table for BENCHMARKS.md. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import gymnasium as gym
import numpy as np

import worldsim  # noqa: F401


def steps_per_second(env_id: str, steps: int) -> float:
    env = gym.make(env_id).unwrapped  # the game itself, without wrapper overhead
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, env.action_space.n, steps)
    t = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(int(a))
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t)


def collect_seconds(steps: int, workers: int) -> float:
    out = tempfile.mkdtemp()
    try:
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "worldsim",
                "collect",
                f"out={out}/d",
                f"steps={steps}",
                f"workers={workers}",
            ],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - t
    finally:
        shutil.rmtree(out)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=20000, help="steps per game speed measurement")
    p.add_argument("--collect", type=int, default=100000, help="steps to collect to disk")
    args = p.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core for the games
    rows = [
        (env_id, steps_per_second(env_id, args.steps))
        for env_id in ("worldsim/Bricks-v0", "worldsim/Maze-v0")
    ]
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    secs = collect_seconds(args.collect, workers=2)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print("| measure | result |\n|---|---|")
    for env_id, sps in rows:
        print(f"| {env_id} random play, 1 core | {sps:,.0f} steps/s |")
    print(
        f"| collect {args.collect:,} Bricks steps to disk (scripted policy, 2 workers) "
        f"| {secs:.1f} s |"
    )


if __name__ == "__main__":
    main()
