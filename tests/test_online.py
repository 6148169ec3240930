"""The online loop (`worldsim loop`): real play, world update, agent training, scoring."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("stable_baselines3")

from worldsim.config import load_config  # noqa: E402
from worldsim.data.store import Dataset  # noqa: E402
from worldsim.files import CheckpointError, load_tensors  # noqa: E402
from worldsim.online import STAGES, LoopConfig, LoopError, loop  # noqa: E402
from worldsim.sim.world_file import resolve  # noqa: E402

# 2 iterations: 300 steps of mixed play, a world, an agent; then 150 steps of the agent's play
TINY_LOOP = [
    "model=tiny",
    "env.frame_size=32",
    "real_steps=450",
    "first_steps=300",
    "iter_steps=150",
    "test_fraction=0.5",
    "world_steps=10",
    "student_steps=4",
    "batch_size=8",
    "agent_steps=256",
    "num_envs=2",
    "max_episode_steps=100",
    "eval_episodes=2",
    "eval_max_steps=60",
    "precision=fp32",
]


def _digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in sorted(paths)}


def _finished_iteration_files(out: Path, i: int) -> dict[str, str]:
    """The files an iteration leaves behind: its world and its agent."""
    return _digest(
        [*(out / "worlds" / f"iter_{i:03d}").glob("*"), out / "agents" / f"iter_{i:03d}.zip"]
    )


def test_loop_grows_data_updates_world_and_agent_and_reports(tmp_path):
    from stable_baselines3 import PPO

    out = tmp_path / "loop"
    report = loop(load_config("loop", LoopConfig, [*TINY_LOOP, f"out={out}"]))

    its = report["iterations"]
    assert [h["iteration"] for h in its] == [0, 1]
    # the data grows by the agent's play, and every recorded step is counted once
    assert its[0]["real_steps"] == 300 and its[1]["real_steps"] == 450
    ds = Dataset.open(out / "data")
    assert sum(e["length"] for e in ds.entries()) == 450
    assert {e["policy"] for e in ds.entries() if e["id"] >= len(ds.entries()) - 1} == {"agent"}
    # each iteration has its own world, trained further than the last, with its own student
    w0, w1 = (
        load_tensors(out / "worlds" / f"iter_{i:03d}" / "teacher.safetensors") for i in (0, 1)
    )
    assert any((w0[k] != w1[k]).any() for k in w0)
    s0, s1 = (
        load_tensors(out / "worlds" / f"iter_{i:03d}" / "student.safetensors") for i in (0, 1)
    )
    assert any((s0[k] != s1[k]).any() for k in s0)
    # the same agent trained on: more steps, other weights
    a0, a1 = (PPO.load(out / "agents" / f"iter_{i:03d}.zip") for i in (0, 1))
    assert a1.num_timesteps == a0.num_timesteps + 256 == its[1]["dream_steps"]
    p0, p1 = a0.policy.state_dict(), a1.policy.state_dict()
    assert any((p0[k] != p1[k]).any() for k in p0)
    # the report: every iteration scored, the baselines on the same axis, a plot
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["iterations"] == its
    for h in its:
        assert len(h["returns"]) == 2 and h["world"] and h["world_loss"] is not None
    assert len(report["baselines"]["random"]["returns"]) == 2
    marks = [r["steps"] for r in report["baselines"]["ppo_real"]]
    assert marks == sorted({300, 450, 4 * 450, its[1]["dream_steps"]})
    assert (out / "report.png").stat().st_size > 0
    # a second run into the same folder is refused in one line unless it resumes
    with pytest.raises(LoopError, match="resume=true"):
        loop(load_config("loop", LoopConfig, [*TINY_LOOP, f"out={out}"]))


def _mid_collection(out: Path, state: dict) -> bool:
    """Whether the agent's play has written episodes that the loop has not yet taken in."""
    try:
        episodes = json.loads((out / "data" / "manifest.json").read_text())["episodes"]
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return len(episodes) > state["next_episode"]


def _kill_at(out: Path, iteration: int, stage: str, overrides: list[str]) -> None:
    """Run the loop in a process of its own and SIGKILL it once it is in `stage` of
    `iteration` (or past it; in the collect stage, once it has recorded an episode of it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "worldsim", "loop", *overrides, f"out={out}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    order = {s: k for k, s in enumerate(STAGES)}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                state = json.loads((out / "loop.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                state = None
            if state and (state["iteration"], order[state["stage"]]) >= (iteration, order[stage]):
                if stage != "collect" or _mid_collection(out, state) or state["stage"] != stage:
                    break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize(
    "stage",
    [
        "collect",
        "world",
        pytest.param("student", marks=pytest.mark.slow),
        pytest.param("agent", marks=pytest.mark.slow),
        pytest.param("score", marks=pytest.mark.slow),
    ],
)
def test_loop_killed_in_a_stage_resumes_without_losing_finished_iterations(tmp_path, stage):
    out = tmp_path / "loop"
    overrides = [*TINY_LOOP, "baselines=none"]
    if stage == "collect":  # long enough to be killed halfway through
        overrides += ["real_steps=3300", "iter_steps=3000"]
    _kill_at(out, 1, stage, overrides)
    state = json.loads((out / "loop.json").read_text())
    assert state["iteration"] >= 1, "killed before the first iteration was done"
    kept = _finished_iteration_files(out, 0)
    first_play = _digest((out / "data" / "episodes").glob("*.npz"))
    first_play = {k: v for k, v in first_play.items() if k in _first_play_files(out, state)}

    report = loop(load_config("loop", LoopConfig, [*overrides, f"out={out}", "resume=true"]))

    assert [h["iteration"] for h in report["iterations"]] == [0, 1]
    assert _finished_iteration_files(out, 0) == kept
    assert {
        k: v
        for k, v in _digest((out / "data" / "episodes").glob("*.npz")).items()
        if k in first_play
    } == first_play
    ds = Dataset.open(out / "data")
    real_steps = 3300 if stage == "collect" else 450
    assert sum(e["length"] for e in ds.entries()) == report["real_steps"] == real_steps
    assert sorted(e["id"] for e in ds.entries()) == list(range(len(ds.entries())))


def _first_play_files(out: Path, state: dict) -> set[str]:
    """The episode files of the first, finished collection."""
    n = state["history"][0]["real_steps"] if state["history"] else 0
    ds = Dataset.open(out / "data")
    files, steps = set(), 0
    for e in sorted(ds.entries(), key=lambda e: e["id"]):
        if steps >= n:
            break
        files.add(str(out / "data" / e["file"]))
        steps += e["length"]
    return files


def test_loop_from_a_shipped_world_fine_tunes_it(tmp_path, monkeypatch):
    """world= takes a shipped world's name from any folder; its first play fine-tunes it."""
    monkeypatch.chdir(tmp_path)
    overrides = [
        "world=bricks",
        "real_steps=200",
        "first_steps=200",
        "test_fraction=0.5",
        "world_steps=2",
        "student_steps=1",
        "batch_size=2",
        "agent_steps=256",
        "num_envs=2",
        "eval_episodes=1",
        "eval_max_steps=30",
        "baselines=none",
        "precision=fp32",
    ]
    report = loop(load_config("loop", LoopConfig, [*overrides, "out=loop"]))
    assert [h["iteration"] for h in report["iterations"]] == [0]
    tuned = load_tensors(tmp_path / "loop" / "worlds" / "iter_000" / "teacher.safetensors")
    shipped = load_tensors(resolve("bricks") / "teacher.safetensors")
    assert tuned.keys() == shipped.keys() and any((tuned[k] != shipped[k]).any() for k in tuned)


def test_loop_from_a_missing_world_fails_before_writing_anything(tmp_path):
    with pytest.raises(CheckpointError, match="no world"):
        loop(
            load_config(
                "loop", LoopConfig, ["world=/nope", "first_steps=0", f"out={tmp_path / 'x'}"]
            )
        )
    assert not (tmp_path / "x").exists()


def test_baselines_alone_run_beside_the_loop_and_join_its_report(tmp_path):
    """baselines=only needs nothing of the loop: it writes baselines.json, and the loop's
    report (written then or later) carries them."""
    out = tmp_path / "loop"
    overrides = [*TINY_LOOP, f"out={out}"]
    alone = loop(load_config("loop", LoopConfig, [*overrides, "baselines=only"]))
    assert not (out / "loop.json").exists()
    marks = [r["steps"] for r in alone["baselines"]["ppo_real"]]
    assert marks == sorted({300, 450, 4 * 450, 256 * 2})
    assert len(alone["baselines"]["random"]["returns"]) == 2
    # a second run has nothing left to do and keeps the figures
    again = loop(load_config("loop", LoopConfig, [*overrides, "baselines=only"]))
    assert again["baselines"] == alone["baselines"]
    report = loop(load_config("loop", LoopConfig, [*overrides, "baselines=none"]))
    assert report["baselines"] == alone["baselines"]
    assert len(report["iterations"]) == 2
