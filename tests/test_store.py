"""The episode store: exact round trips, crash safety, clear errors."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from worldsim.data.segments import SegmentSampler
from worldsim.data.store import DataError, Dataset, Episode, load_episode, save_episode


def random_episode(T=20, seed=0):
    rng = np.random.default_rng(seed)
    return Episode(
        rng.integers(0, 256, (T + 1, 16, 16, 3), dtype=np.uint8),
        rng.integers(0, 4, T),
        rng.random(T).astype(np.float32),
        rng.random(T) < 0.1,
        np.zeros(T, bool),
    )


def test_episode_round_trips_exactly(tmp_path):
    ep = random_episode()
    save_episode(tmp_path / "ep.npz", ep)
    back = load_episode(tmp_path / "ep.npz")
    for name in ("frames", "actions", "rewards", "terminated", "truncated"):
        assert np.array_equal(getattr(ep, name), getattr(back, name)), name
        assert getattr(ep, name).dtype == getattr(back, name).dtype or name == "actions"


def test_dataset_round_trips_and_splits(bricks_data):
    ds = Dataset.open(bricks_data.root)
    assert ds.entries("train") and ds.entries("test")
    assert sum(e["length"] for e in ds.entries()) == 4000
    ep = ds.load(ds.entries()[0])
    assert ep.frames.shape[1:] == (64, 64, 3) and len(ep.frames) == len(ep) + 1
    assert "steps" in ds.summary() and "NOOP" in ds.summary()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_episode_names_the_file(tmp_path, damage):
    path = tmp_path / "ep.npz"
    save_episode(path, random_episode())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not an episode" * 10)
    with pytest.raises(DataError, match="ep.npz: not a readable episode file"):
        load_episode(path)


def test_orphan_episode_is_adopted(tmp_path):
    ds = Dataset.create_or_append(
        tmp_path / "d",
        env_id="x",
        env="x",
        action_meanings=["A"],
        frame_size=[16, 16],
        test_fraction=0.0,
    )
    ds.add(0, random_episode(), "random")
    save_episode(ds.path_for(1), random_episode(seed=1))  # written, but the manifest missed it
    assert [e["id"] for e in Dataset.open(tmp_path / "d").entries()] == [0, 1]


def test_appending_another_game_is_refused(bricks_data):
    with pytest.raises(DataError, match="cannot append env_id"):
        Dataset.create_or_append(
            bricks_data.root,
            env_id="worldsim/Maze-v0",
            env="maze",
            action_meanings=["NOOP"],
            frame_size=[64, 64],
            test_fraction=0.25,
        )


def test_segments_pad_episode_starts_and_use_train_only(bricks_data):
    s = SegmentSampler(bricks_data, "train", context=4, horizon=2)
    train_ids = {e["id"] for e in bricks_data.entries("train")}
    assert {e["id"] for e in s.entries} <= train_ids
    frames, act, rew, end, mask, _ = s.segment(0)  # step 0 of the first episode
    assert frames.shape == (6, 64, 64, 3) and act.shape == (5,) and rew.shape == (2,)
    assert mask.tolist() == [False, False, False, True, True, True]
    assert (frames[:3] == frames[3]).all() and (act[:3] == 0).all()
    batch = s.sample(8, np.random.default_rng(0))
    assert batch.obs.shape == (8, 6, 3, 64, 64) and batch.act.shape == (8, 5)


def test_a_batch_is_the_segments_of_its_indices(bricks_data):
    """The batched gather gives exactly what segment() gives one index at a time."""
    s = SegmentSampler(bricks_data, "train", context=4, horizon=3)
    batch = s.sample(64, np.random.default_rng(1))
    for k, j in enumerate(np.random.default_rng(1).integers(0, len(s), 64)):
        frames, act, rew, end, mask, _ = s.segment(int(j))
        assert np.array_equal(batch.obs[k].permute(0, 2, 3, 1).numpy(), frames)
        assert np.array_equal(batch.act[k].numpy(), act)
        assert np.array_equal(batch.rew[k].numpy(), rew.astype(np.float32))
        assert np.array_equal(batch.end[k].numpy(), end)
        assert np.array_equal(batch.mask[k].numpy(), mask)


def test_sigkill_mid_collection_leaves_a_readable_dataset(tmp_path):
    out = tmp_path / "d"
    cmd = [
        sys.executable,
        "-m",
        "worldsim",
        "collect",
        f"out={out}",
        "steps=2000000",
        "workers=2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "manifest.json").exists() and len(Dataset.open(out).entries()) >= 3:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.5)  # let orphaned workers notice their parent is gone
    ds = Dataset.open(out)  # adopts any episode finished after the last manifest write
    assert len(ds.entries()) >= 3
    assert len(ds.entries()) == len(list((out / "episodes").glob("ep_*.npz")))
    for entry in ds.entries():
        ds.load(entry)  # every finished episode reads back whole
