"""Nothing lost, one line for every bad input: non-finite training, damaged checkpoints,
pointers and state files that cannot be trusted."""

import json

import pytest
import torch
from conftest import TINY_TRAIN

from worldsim import checkpoint as ckpt
from worldsim.cli import main
from worldsim.config import load_config
from worldsim.train import TrainConfig, Trainer, train


def config(data, out, *overrides):
    return load_config(
        "train", TrainConfig, [f"data={data.root}", f"out={out}", *TINY_TRAIN, *overrides]
    )


def _finite(path):
    return all(
        t.isfinite().all() for t in ckpt.load_tensors(path).values() if t.is_floating_point()
    )


def test_a_diverging_run_stops_in_one_line_and_keeps_finite_checkpoints(bricks32, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", f"data={bricks32.root}", f"out={run}", *TINY_TRAIN, "optim.lr=1e12",
                 "optim.warmup=0", "ckpt_every=2", "steps=200", "batch_size=4"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2 and "run saved" not in out
    errors = [line for line in err.splitlines() if line.startswith("worldsim train: error")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "steps in a row" in errors[0] and "optim.lr=1e+12" in errors[0]
    for c in (run / "checkpoints").glob("step_*"):
        assert _finite(c / "model.safetensors") and _finite(c / "ema.safetensors")


def test_non_finite_weights_are_never_saved(tmp_path):
    ckpt.write_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(2)}}, {})
    with pytest.raises(ckpt.CheckpointError, match="refusing to save model with non-finite"):
        ckpt.write_checkpoint(tmp_path, 2, {"model": {"w": torch.tensor([1.0, float("nan")])}}, {})
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000001"  # the good one stays


def _damage(path, n=1000):
    data = bytearray(path.read_bytes())
    data[-n - 8 : -8] = b"\xff" * n  # tensor bytes, after the header: still parses
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_named_and_resume_falls_back(bricks32, tmp_path, capsys):
    run = tmp_path / "run"
    train(config(bricks32, run, "steps=4", "ckpt_every=2", "batch_size=4"))
    latest = ckpt.latest_checkpoint(run)
    assert latest.name == "step_0000004"
    _damage(latest / "ema.safetensors")
    with pytest.raises(ckpt.CheckpointError, match=r"step_0000004/ema.safetensors: damaged"):
        ckpt.load_tensors(latest / "ema.safetensors")
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
    with pytest.raises(ckpt.CheckpointError, match="latest: expected the name of one of"):
        ckpt.latest_checkpoint(run)
    (run / "latest").write_text("step_0000002")
    state = ckpt.latest_checkpoint(run) / "state.json"
    meta = json.loads(state.read_text())
    del meta["step"]
    state.write_text(json.dumps(meta))
    trainer = Trainer(load_config("train", TrainConfig, [f"data={meta['config']['data']}",
                                                         f"out={tmp_path / 'other'}", "model=tiny"]))  # fmt: skip
    with pytest.raises(ckpt.CheckpointError, match="state.json: 'step' is missing"):
        trainer.load(ckpt.latest_checkpoint(run))
    state.write_text("[1, 2]")
    with pytest.raises(ckpt.CheckpointError, match="expected a JSON object, got a list"):
        ckpt.load_json(state)
    state.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ckpt.CheckpointError, match="nested too deeply"):
        ckpt.load_json(state)


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
    for path, bad in ((("sigma_data",), float("nan")), (("context",), 10**9), (("context",), 0),
                      (("unet", "channels"), [10**6, 10**6, 10**6]), (("unet", "cond_dim"), 10**7),
                      (("unet", "blocks"), 10**5), (("P_std",), float("inf"))):  # fmt: skip
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
    yield "student without file", json.dumps({**meta, "student": {"run": "r", "step": 1,
                                                                   "sigma_min": 0.002, "sigma_max": 5.0}})  # fmt: skip
    yield "frame size 1e6", json.dumps({**meta, "frame_size": [10**6, 10**6]})
    yield "thresholds NaN", json.dumps({**meta, "thresholds": {"end": float("nan")}})


def test_fuzzed_world_files_load_or_fail_in_one_clear_line(tiny_world, tmp_path):
    import resource
    import shutil

    from worldsim.bundle import load_world
    from worldsim.world import World

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
        except ckpt.CheckpointError as e:
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

    from worldsim.bundle import load_world

    cases = {
        "zero starts": {"frames": torch.zeros(0, 32, 32, 3, dtype=torch.uint8), "actions": torch.zeros(0, 2, dtype=torch.long)},
        "float frames": {"frames": torch.zeros(2, 32, 32, 3), "actions": torch.zeros(2, 2, dtype=torch.long)},
        "action out of range": {"frames": torch.zeros(2, 32, 32, 3, dtype=torch.uint8), "actions": torch.full((2, 2), 99)},
        "missing actions": {"frames": torch.zeros(2, 32, 32, 3, dtype=torch.uint8)},
    }  # fmt: skip
    for i, tensors in enumerate(cases.values()):
        world = tmp_path / f"w{i}"
        shutil.copytree(tiny_world, world)
        meta = json.loads((world / "world.json").read_text())
        meta["checksums"]["starts.safetensors"] = ckpt.save_tensors(
            world / "starts.safetensors", tensors
        )
        (world / "world.json").write_text(json.dumps(meta))
        with pytest.raises(ckpt.CheckpointError, match="starts.safetensors"):
            load_world(world)


def test_sizes_are_bounded_before_memory_is_taken():
    import gymnasium as gym

    import worldsim  # noqa: F401  (registers the envs)

    with pytest.raises(ValueError, match=r"sampler.steps must be in \[1, 1000\], got 1000000000"):
        gym.make("worldsim/World-v0", world="bricks", sampler="euler", steps=10**9)
    from worldsim.models.denoiser import DenoiserConfig

    with pytest.raises(ValueError, match=r"model.denoiser.context must be in \[1, 64\], got 0"):
        DenoiserConfig(context=0)
