"""Nothing lost, one line for every bad input: non-finite training, damaged checkpoints,
pointers and state files that cannot be trusted."""

import json

import pytest
import torch
from conftest import TINY_TRAIN

from worldsim import files
from worldsim.cli import main
from worldsim.config import load_config
from worldsim.sim import world_file
from worldsim.training import checkpoint as ckpt
from worldsim.training.train import TrainConfig, Trainer, train


def config(data, out, *overrides):
    return load_config(
        "train", TrainConfig, [f"data={data.root}", f"out={out}", *TINY_TRAIN, *overrides]
    )


def _finite(path):
    return all(
        t.isfinite().all() for t in files.load_tensors(path).values() if t.is_floating_point()
    )


def test_a_diverging_run_stops_in_one_line_and_keeps_finite_checkpoints(bricks32, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            f"data={bricks32.root}",
            f"out={run}",
            *TINY_TRAIN,
            "optim.lr=1e12",
            "optim.warmup=0",
            "ckpt_every=2",
            "steps=200",
            "batch_size=4",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2 and "run saved" not in out
    errors = [line for line in err.splitlines() if line.startswith("worldsim train: error")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "steps in a row" in errors[0] and "optim.lr=1e+12" in errors[0]
    for c in (run / "checkpoints").glob("step_*"):
        assert _finite(c / "model.safetensors") and _finite(c / "ema.safetensors")


def test_non_finite_weights_are_never_saved(tmp_path):
    ckpt.write_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(2)}}, {})
    with pytest.raises(files.CheckpointError, match="refusing to save model with non-finite"):
        ckpt.write_checkpoint(tmp_path, 2, {"model": {"w": torch.tensor([1.0, float("nan")])}}, {})
    assert world_file.latest_checkpoint(tmp_path).name == "step_0000001"  # the good one stays


def _damage(path, n=1000):
    data = bytearray(path.read_bytes())
    data[-n - 8 : -8] = b"\xff" * n  # tensor bytes, after the header: still parses
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_named_and_resume_falls_back(bricks32, tmp_path, capsys):
    run = tmp_path / "run"
    train(config(bricks32, run, "steps=4", "ckpt_every=2", "batch_size=4"))
    latest = world_file.latest_checkpoint(run)
    assert latest.name == "step_0000004"
    _damage(latest / "ema.safetensors")
    with pytest.raises(files.CheckpointError, match=r"step_0000004/ema.safetensors: damaged"):
        files.load_tensors(latest / "ema.safetensors")
    resumed = Trainer(
        config(bricks32, run, "steps=6", "ckpt_every=2", "batch_size=4", "resume=true")
    )
    assert resumed.step == 2
    assert "resuming from step_0000002" in capsys.readouterr().err
    resumed.fit()
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the log does not repeat steps 3-4


def test_a_pointer_or_state_file_that_cannot_be_trusted_is_refused(small_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / "latest").write_text("../../elsewhere/checkpoints/step_0000002")
    with pytest.raises(files.CheckpointError, match="latest: expected the name of one of"):
        world_file.latest_checkpoint(run)
    (run / "latest").write_text("step_0000002")
    state = world_file.latest_checkpoint(run) / "state.json"
    meta = json.loads(state.read_text())
    del meta["step"]
    state.write_text(json.dumps(meta))
    trainer = Trainer(
        load_config(
            "train",
            TrainConfig,
            [f"data={meta['config']['data']}", f"out={tmp_path / 'other'}", "model=tiny"],
        )
    )
    with pytest.raises(files.CheckpointError, match="state.json: 'step' is missing"):
        trainer.load(world_file.latest_checkpoint(run))
    state.write_text("[1, 2]")
    with pytest.raises(files.CheckpointError, match="expected a JSON object, got a list"):
        files.load_json(state)
    state.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(files.CheckpointError, match="nested too deeply"):
        files.load_json(state)


# --- world files --------------------------------------------------------------------------


def _mutations(meta: dict):
    """(name, world.json text) cases: keys dropped, types changed, NaN, huge, nested."""
    for key in meta:
        yield f"drop {key}", json.dumps({k: v for k, v in meta.items() if k != key})
    for key, value in meta.items():
        for bad in ("x", 1, [1], {"a": 1}, None, 1e300):
            if type(bad) is not type(value):
                yield f"{key}={bad!r}", json.dumps({**meta, key: bad})
    m = json.loads(json.dumps(meta))
    den = m["model"]["denoiser"]
    for path, bad in (
        (("sigma_data",), float("nan")),
        (("context",), 10**9),
        (("context",), 0),
        (("unet", "channels"), [10**6, 10**6, 10**6]),
        (("unet", "cond_dim"), 10**7),
        (("unet", "blocks"), 10**5),
        (("P_std",), float("inf")),
    ):
        c = json.loads(json.dumps(m))
        d = c["model"]["denoiser"]
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = bad
        yield f"denoiser.{'.'.join(path)}={bad}", json.dumps(c)
    assert den  # (the shipped structure is what is mutated)
    yield "a list", json.dumps([meta])
    yield "deep nesting", "[" * 100_000 + "]" * 100_000
    yield (
        "channels as text",
        json.dumps({**m, "model": {**m["model"], "reward": {"channels": "64"}}}),
    )
    yield (
        "student without file",
        json.dumps(
            {**meta, "student": {"run": "r", "step": 1, "sigma_min": 0.002, "sigma_max": 5.0}}
        ),
    )
    yield "frame size 1e6", json.dumps({**meta, "frame_size": [10**6, 10**6]})
    yield "thresholds NaN", json.dumps({**meta, "thresholds": {"end": float("nan")}})


def test_fuzzed_world_files_load_or_fail_in_one_clear_line(tiny_world, tmp_path):
    import resource
    import shutil

    from worldsim.sim.world import World
    from worldsim.sim.world_file import load_world

    base = json.loads((tiny_world / "world.json").read_text())
    base.pop("student", None)  # the fuzz runs on a teacher-only copy (no student file)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"loaded": 0, "refused": 0}
    for i, (name, text) in enumerate(_mutations(base)):
        world = tmp_path / f"w{i}"
        shutil.copytree(tiny_world, world, ignore=shutil.ignore_patterns("student.safetensors"))
        (world / "world.json").write_text(text)
        try:
            bundle = load_world(world)
        except files.CheckpointError as e:
            msg = str(e)
            assert "\n" not in msg and str(world) in msg, (name, msg)
            assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__), name
            outcomes["refused"] += 1
            continue
        w = World(bundle)  # a world that loads also works
        w.reset(bundle.start_frames[:1], bundle.start_actions[:1])
        frames, *_ = w.step(torch.zeros(1, dtype=torch.long))
        assert frames.dtype == torch.uint8, name
        outcomes["loaded"] += 1
    assert outcomes["refused"] > 30 and outcomes["loaded"] >= 1
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mb < 1024


def test_a_bad_starts_file_is_refused(tiny_world, tmp_path):
    import shutil

    from worldsim.sim.world_file import load_world

    cases = {
        "zero starts": {
            "frames": torch.zeros(0, 32, 32, 3, dtype=torch.uint8),
            "actions": torch.zeros(0, 2, dtype=torch.long),
        },
        "float frames": {
            "frames": torch.zeros(2, 32, 32, 3),
            "actions": torch.zeros(2, 2, dtype=torch.long),
        },
        "action out of range": {
            "frames": torch.zeros(2, 32, 32, 3, dtype=torch.uint8),
            "actions": torch.full((2, 2), 99),
        },
        "missing actions": {"frames": torch.zeros(2, 32, 32, 3, dtype=torch.uint8)},
    }
    for i, tensors in enumerate(cases.values()):
        world = tmp_path / f"w{i}"
        shutil.copytree(tiny_world, world)
        meta = json.loads((world / "world.json").read_text())
        meta["checksums"]["starts.safetensors"] = files.save_tensors(
            world / "starts.safetensors", tensors
        )
        (world / "world.json").write_text(json.dumps(meta))
        with pytest.raises(files.CheckpointError, match="starts.safetensors"):
            load_world(world)


def test_sizes_are_bounded_before_memory_is_taken():
    import gymnasium as gym

    import worldsim  # noqa: F401  (registers the envs)

    with pytest.raises(ValueError, match=r"sampler.steps must be in \[1, 1000\], got 1000000000"):
        gym.make("worldsim/World-v0", world="bricks", sampler="euler", steps=10**9)
    from worldsim.models.denoiser import DenoiserConfig

    with pytest.raises(ValueError, match=r"model.denoiser.context must be in \[1, 64\], got 0"):
        DenoiserConfig(context=0)
    with pytest.raises(ValueError, match=r"num_envs must be in \[1, 65536\], got 1000000"):
        gym.make_vec("worldsim/World-v0", num_envs=10**6, world="bricks")
    with pytest.raises(ValueError, match="batch_size must be <= 8192, got 100000"):
        TrainConfig(batch_size=100_000)


# --- datasets are only read ---------------------------------------------------------------


def _listing(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_training_never_writes_into_its_dataset(bricks32, tmp_path, monkeypatch, capsys):
    import shutil

    from worldsim.data.segments import SegmentSampler, cache_dir

    data = tmp_path / "data"
    shutil.copytree(bricks32.root, data)
    monkeypatch.setenv("WORLDSIM_CACHE", str(tmp_path / "cache"))
    before = _listing(data)
    train(config(bricks32, tmp_path / "run", f"data={data}", "steps=2", "batch_size=4"))
    assert _listing(data) == before
    caches = sorted(cache_dir().glob("*.npy"))
    assert caches and all(c.parent == tmp_path / "cache" for c in caches)
    caches[0].write_bytes(b"not a numpy file")  # a damaged cache is rebuilt, and said so
    from worldsim.data.store import Dataset

    split = "train" if "-train-" in caches[0].name else "test"
    SegmentSampler(Dataset.open(data), split, 2)
    assert f"frame cache {caches[0]} is damaged" in capsys.readouterr().err


def test_a_read_only_dataset_with_an_orphan_episode_opens(bricks32, tmp_path, monkeypatch):
    import shutil

    from worldsim.data.store import Dataset

    data = tmp_path / "data"
    shutil.copytree(bricks32.root, data)
    manifest = json.loads((data / "manifest.json").read_text())
    orphan = manifest["episodes"].pop()  # its file stays: an orphan
    (data / "manifest.json").write_text(json.dumps(manifest))

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Dataset, "_write_manifest", refuse)
    ds = Dataset.open(data)
    assert orphan["id"] in [e["id"] for e in ds.entries()]


# --- SIGTERM ------------------------------------------------------------------------------


def _wait_for(predicate, seconds=120):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_sigterm_ends_play_and_keeps_the_recording(tiny_world, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "rec"
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "play.py",
            f"world={tiny_world}",
            "headless=true",
            "policy=random",
            "frames=1000000",
            "fps=30",
            "record=true",
            f"out={out}",
        ],
        cwd=os.path.dirname(os.path.dirname(__file__)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert _wait_for(lambda: (out / "episodes").exists() or proc.poll() is not None)
    import time

    time.sleep(2)  # some frames recorded
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err
    assert list(out.glob("*.mp4")) and list((out / "episodes").glob("ep_*.npz"))


def test_sigterm_stops_a_script_with_a_human_window(tiny_world, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "loop.py"
    script.write_text(
        "import gymnasium as gym, worldsim\n"
        f"env = gym.make('worldsim/World-v0', world={str(tiny_world)!r}, render_mode='human')\n"
        "env.reset(seed=0)\nprint('ready', flush=True)\n"
        "while True:\n    env.step(0)\n"
    )
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0


# --- a full disk --------------------------------------------------------------------------


def _fill_disk_after(monkeypatch, n):
    """os.fsync (every atomic write) succeeds n times, then reports a full disk."""
    import errno
    import os

    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_while_collecting_keeps_finished_episodes(tmp_path, monkeypatch, capsys):
    from worldsim.data.store import Dataset

    out = tmp_path / "data"
    _fill_disk_after(monkeypatch, 6)  # the manifest and a few episodes, then no space
    code = main(["collect", f"out={out}", "steps=3000", "workers=1", "env.frame_size=32"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "no space left on device" in errors[0]
    assert str(out) in errors[0] and "Traceback" not in err
    monkeypatch.undo()
    ds = Dataset.open(out)
    assert ds.entries() and all(ds.load(e).frames.shape[0] == e["length"] + 1 for e in ds.entries())
    assert not list(out.rglob("*.tmp"))


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one(bricks32, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train(config(bricks32, run, "steps=2", "ckpt_every=2", "batch_size=4"))
    _fill_disk_after(monkeypatch, 0)
    code = main(
        [
            "train",
            f"data={bricks32.root}",
            f"out={run}",
            *TINY_TRAIN,
            "steps=4",
            "ckpt_every=2",
            "batch_size=4",
            "resume=true",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no space left on device" in err and "Traceback" not in err
    monkeypatch.undo()
    assert world_file.latest_checkpoint(run).name == "step_0000002"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_full_disk_while_encoding_a_video_is_one_line(tmp_path, monkeypatch):
    import shutil

    import imageio.v2 as imageio
    import numpy as np

    from worldsim.data.video import write_mp4
    from worldsim.files import DiskFull

    class Writer:  # ffmpeg's pipe breaks when its disk fills up
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def append_data(self, frame):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(imageio, "get_writer", lambda *a, **k: Writer())
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(DiskFull, match=r"v.mp4: no space left on device"):
        write_mp4(tmp_path / "v.mp4", np.zeros((3, 8, 8, 3), np.uint8))
    assert not list(tmp_path.iterdir())


# --- smaller things a newcomer met ----------------------------------------------------------


def test_a_negative_seed_names_its_key(capsys):
    assert main(["collect", "seed=-1"]) == 2
    assert "seed must be an integer in [0, 2**63), got -1" in capsys.readouterr().err


def test_no_held_out_episodes_says_why_instead_of_nan(tmp_path, capsys):
    from test_any_game import dot_game

    ds = dot_game(tmp_path / "dot", episodes=2, length=30)
    ds.meta["test_fraction"] = 0.0
    for e in ds.meta["episodes"]:
        e["split"] = "train"
    ds._write_manifest()
    train(
        load_config(
            "train",
            TrainConfig,
            [
                f"data={ds.root}",
                f"out={tmp_path / 'r'}",
                *TINY_TRAIN,
                "steps=2",
                "batch_size=4",
                "eval_every=1",
            ],
        )
    )
    out = capsys.readouterr()
    assert "no held-out (test) episodes" in out.out and "nan" not in out.out + out.err


def test_a_shipped_worlds_report_is_not_written_into_the_package(tmp_path):
    from worldsim.evaluation.evaluate import default_out
    from worldsim.sim.world_file import resolve

    assert default_out(resolve("bricks")).as_posix() == "eval/bricks"
    assert default_out(tmp_path / "w") == tmp_path / "w" / "eval"


def test_headless_play_says_how_long_it_will_take(tiny_world, capsys):
    assert (
        main(
            ["play", f"world={tiny_world}", "headless=true", "policy=random", "frames=4", "fps=100"]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "4 frames at 100 fps (about 0 s)" in out.out and "play: 100%" in out.err


def test_a_full_disk_while_playing_says_so_and_play_goes_on(
    tiny_world, tmp_path, monkeypatch, capsys
):
    _fill_disk_after(monkeypatch, 0)
    code = main(
        [
            "play",
            f"world={tiny_world}",
            "headless=true",
            "policy=random",
            "frames=6",
            "fps=0",
            "record=true",
            f"out={tmp_path / 'rec'}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "played 6 frames" in out
    assert "recording not saved: no space left on device" in out


def test_atari_key_maps_of_characters_load(tiny_world, tmp_path):
    import shutil

    from worldsim.sim.world_file import load_world

    world = tmp_path / "w"
    shutil.copytree(tiny_world, world)
    meta = json.loads((world / "world.json").read_text())
    meta["keys_to_action"] = [[["e"], 0], [[" "], 1], [["d", " "], 2]]  # as ALE gives them
    (world / "world.json").write_text(json.dumps(meta))
    assert load_world(world).keys_to_action == {("e",): 0, (" ",): 1, ("d", " "): 2}
