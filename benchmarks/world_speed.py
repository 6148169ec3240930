"""Benchmark: how fast a world runs on this machine, batched and live.

    python benchmarks/world_speed.py --world worlds/bricks [--sampler onestep]
        [--precision fp32 bf16]
        [--vector-only] [--sizes 1 32] [--seconds 6]

Reports WorldModelVectorEnv frames/s at N = 1, 8, 32, 128 (with the arithmetic rate that is,
against a large matrix product's on the same machine: how near the machine's limit the
batched worlds run, and so how much batching can still gain); a 10,000-step single-env
rollout (finite, in range, memory before/after); and headless play's achieved FPS over
600 frames at the 30 FPS target and uncapped, in each precision asked. Markdown on stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np
import torch

from worldsim.files import CheckpointError
from worldsim.play.app import PlayConfig, PlaySession
from worldsim.sim.env import WorldModelEnv
from worldsim.sim.vector_env import WorldModelVectorEnv


def vector_fps(
    world: str,
    sampler: str | None,
    n: int,
    steps: int,
    device: str = "cpu",
    precision: str = "fp32",
    min_seconds: float = 5.0,
) -> float:
    """Frames/s of N batched worlds: at least `steps` steps and `min_seconds` of them."""
    venv = WorldModelVectorEnv(
        n, world, sampler=sampler, max_episode_steps=10**9, device=device, precision=precision
    )
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(3):  # warm-up
        venv.step(rng.integers(0, venv.single_action_space.n, n))
    t, done = time.perf_counter(), 0
    while done < steps or time.perf_counter() - t < min_seconds:
        venv.step(rng.integers(0, venv.single_action_space.n, n))
        done += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return n * done / (time.perf_counter() - t)


def gflop_per_frame(world: str, sampler: str | None) -> float:
    """The network work of one frame (denoiser and reward/end model: convolutions and matrix
    products, by torch's flop counter), in GFLOP: with the frames/s it gives the arithmetic
    rate achieved, to set against what the machine can do."""
    from torch.utils.flop_counter import FlopCounterMode

    venv = WorldModelVectorEnv(1, world, sampler=sampler, max_episode_steps=10**9)
    venv.reset(seed=0)
    with FlopCounterMode(display=False) as counter:
        venv.step(np.zeros(1, dtype=np.int64))
    return counter.get_total_flops() / 1e9


def matmul_gflops(precision: str, device: str, seconds: float = 1.0) -> float:
    """GFLOP/s of a large square matrix product in `precision` on `device`: about the best
    arithmetic rate this machine reaches, the ceiling for the network's convolutions."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(2048, 2048, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t, done = time.perf_counter(), 0
    while done < 3 or time.perf_counter() - t < seconds:
        a @ b
        done += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * 2048**3 * done / (time.perf_counter() - t) / 1e9


def cpu_name() -> str:
    """The CPU's model name and the vector instructions torch uses on it."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    from worldsim.runtime import bf16_is_fast

    native = "native bf16" if bf16_is_fast(torch.device("cpu")) else "bf16 emulated"
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}, {native}"


def long_rollout(world: str, sampler: str | None, steps: int) -> dict:
    env = WorldModelEnv(world, sampler=sampler, max_episode_steps=10**9)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    rss0, lo, hi, resets = None, 255, 0, 0
    for t in range(steps):
        obs, r, term, _, _ = env.step(int(rng.integers(env.action_space.n)))
        assert np.isfinite(r), f"reward {r} at step {t}"
        lo, hi = min(lo, int(obs.min())), max(hi, int(obs.max()))
        if term:
            env.reset()
            resets += 1
        if t == 100:
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "steps": steps,
        "min": lo,
        "max": hi,
        "resets": resets,
        "rss_mb_at_100": rss0 / 1024,
        "rss_mb_end": rss1 / 1024,
    }


def play_fps(world: str, sampler: str, fps: int, precision: str, frames: int = 600) -> float:
    cfg = PlayConfig(
        world=world,
        sampler=sampler,
        headless=True,
        policy="sticky",
        frames=frames,
        fps=fps,
        precision=precision,
    )
    return PlaySession(cfg).run(lambda: [])["fps"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--world", required=True)
    p.add_argument(
        "--sampler", default=None, help="default: the world's (one-step when it has a student)"
    )
    p.add_argument("--rollout", type=int, default=10_000)
    p.add_argument("--device", default="cpu", help="where the vector env runs (cpu, cuda)")
    p.add_argument("--vector-only", action="store_true", help="only the N = 1..128 table")
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[1, 8, 32, 128], help="N values of the table"
    )
    p.add_argument(
        "--seconds", type=float, default=5.0, help="least timed seconds per N and precision"
    )
    p.add_argument(
        "--precision",
        default="fp32",
        nargs="+",
        choices=["fp32", "bf16"],
        help="vector env precision(s): one frames/s column each",
    )
    args = p.parse_args()
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    if min(args.sizes) < 1 or args.seconds <= 0:
        p.error(f"--sizes must be >= 1 and --seconds > 0, got {args.sizes} and {args.seconds}")
    try:
        work = gflop_per_frame(args.world, args.sampler)  # (loads the world: checks --world)
    except (CheckpointError, ValueError) as e:
        p.error(str(e))
    print(
        f"device: {args.device} (GPU: {gpu}); machine: {platform.machine()}, {cpu_name()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"network work per frame: {work:.3f} GFLOP (the GFLOP/s columns: frames/s times it)")
    precisions = [args.precision] if isinstance(args.precision, str) else args.precision
    peaks = ", ".join(f"{p} {matmul_gflops(p, args.device):.1f}" for p in precisions)
    print(f"a 2048x2048 matrix product here, GFLOP/s: {peaks}\n")
    print("| N | " + " | ".join(f"frames/s {p} | GFLOP/s {p}" for p in precisions) + " |")
    print("|---|" + "---|---|" * len(precisions))
    table = {}
    for n in args.sizes:
        table[n] = [
            vector_fps(args.world, args.sampler, n, max(4, 128 // n), args.device, p, args.seconds)
            for p in precisions
        ]
        cells = " | ".join(f"{f:.1f} | {f * work:.1f}" for f in table[n])
        print(f"| {n} | {cells} |", flush=True)
    if 1 in table and len(table) > 1:
        for n in (m for m in args.sizes if m != 1):
            ratios = ", ".join(
                f"{p} {f / f1:.2f}x"
                for p, f, f1 in zip(precisions, table[n], table[1], strict=True)
            )
            print(f"N={n} over N=1: {ratios}")
    if args.vector_only:
        return
    r = long_rollout(args.world, args.sampler, args.rollout)
    print(
        f"\n{r['steps']}-step rollout: pixel range [{r['min']}, {r['max']}], {r['resets']} resets, "
        f"max RSS {r['rss_mb_at_100']:.0f} MB at step 100 -> {r['rss_mb_end']:.0f} MB at the end"
    )
    s = args.sampler or ""
    for p in precisions:
        print(
            f"headless play ({p}), 600 frames: {play_fps(args.world, s, 30, p):.1f} FPS at the "
            f"30 FPS target, {play_fps(args.world, s, 0, p):.1f} FPS uncapped"
        )


if __name__ == "__main__":
    main()
