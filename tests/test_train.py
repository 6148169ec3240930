"""Training end to end: it learns motion, resumes exactly after kill -9, runs under DDP,
and refuses checkpoints it cannot trust."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN

from worldsim import files
from worldsim.config import load_config
from worldsim.data.segments import SegmentSampler
from worldsim.evaluation.rollout import copy_last, rollout, score
from worldsim.models.samplers import SamplerConfig
from worldsim.sim import world_file
from worldsim.sim.world import Sampler
from worldsim.training.train import TrainConfig, Trainer, train


def config(data, out, *overrides):
    return load_config(
        "train", TrainConfig, [f"data={data.root}", f"out={out}", *TINY_TRAIN, *overrides]
    )


def test_tiny_world_learns_motion_and_beats_copying_the_last_frame(bricks32, tmp_path):
    trainer = Trainer(config(bricks32, tmp_path / "run", "steps=1500", "ckpt_every=1500"))
    trainer.fit()
    losses = [
        float(line.split('"loss": ')[1].split(",")[0])
        for line in open(tmp_path / "run" / "log.jsonl")
    ]
    assert np.mean(losses[-100:]) < 0.5 * np.mean(losses[:20])  # training lowers the loss
    K = trainer.cfg.model.denoiser.context
    test = SegmentSampler(trainer.ds, "test", K, horizon=1)
    batch = test.sample(256, np.random.default_rng(0))
    den = trainer.ema.denoiser
    generated = rollout(
        Sampler(den, SamplerConfig("euler", 1)),
        batch.obs,
        batch.act,
        K,
        1,
    )
    model, copy = score(generated, batch.obs, K), score(copy_last(batch.obs, K, 1), batch.obs, K)
    print("held-out PSNR h1: model", model, "copy-last", copy)
    assert model["moving"][0] > copy["moving"][0] + 1.0  # it has learned motion
    assert model["whole"][0] > copy["whole"][0]  # and keeps the static picture


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return files.load_tensors(world_file.latest_checkpoint(run) / "model.safetensors")


def _latest_step(run) -> int:
    """The step the run's `latest` pointer names (its folder is written before the pointer
    moves, so the folder alone does not say a checkpoint is the latest); -1 = none yet."""
    try:
        return int((run / "latest").read_text().strip().rsplit("_", 1)[-1])
    except (FileNotFoundError, ValueError):
        return -1


def test_kill_9_then_resume_continues_exactly(bricks32, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "worldsim",
        "train",
        f"data={bricks32.root}",
        f"out={run}",
        *TINY_TRAIN,
        "steps=100000",
        "ckpt_every=3",
        "batch_size=8",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and _latest_step(run) < 6:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = files.load_json(world_file.latest_checkpoint(run) / "state.json")["step"]
    assert step >= 6
    with pytest.raises(ValueError, match="resume=true"):  # a second run never overwrites
        Trainer(config(bricks32, run, "steps=100", "batch_size=8"))
    resumed = Trainer(
        config(bricks32, run, f"steps={step + 4}", "ckpt_every=3", "batch_size=8", "resume=true")
    )
    assert resumed.step == step
    resumed.fit()
    # an uninterrupted run to the same step lands on exactly the same weights
    train(
        config(bricks32, tmp_path / "straight", f"steps={step + 4}", "ckpt_every=3", "batch_size=8")
    )
    a, b = _weights(run), _weights(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_with_two_cpu_processes_writes_one_checkpoint(bricks32, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "worldsim",
        "train",
        f"data={bricks32.root}",
        f"out={run}",
        *TINY_TRAIN,
        "steps=4",
        "ckpt_every=4",
        "batch_size=4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000004"]
    assert files.load_json(run / "checkpoints" / "step_0000004" / "state.json")["step"] == 4
    # procs=2 starts the same two one-thread processes itself: the same batches, the same
    # averaged gradients, so the same weights; only the first process writes the log
    spawned = tmp_path / "procs"
    train(config(bricks32, spawned, "steps=4", "ckpt_every=4", "batch_size=4", "procs=2"))
    a, b = _weights(run), _weights(spawned)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((spawned / "log.jsonl").read_text().splitlines()) == 4


def test_an_error_in_a_training_process_comes_back_on_one_line(tmp_path, capsys):
    from worldsim.cli import main

    (tmp_path / "empty").mkdir()
    code = main(["train", f"data={tmp_path / 'empty'}", f"out={tmp_path / 'run'}", "procs=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("worldsim train: error: training process ") and "\n" not in err
    assert "not a worldsim dataset" in err


def test_pickled_checkpoint_is_refused(small_run, tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(3)}, path)  # a pickle wearing the right name
    with pytest.raises(files.CheckpointError, match="not a readable safetensors file.*no pickles"):
        files.load_tensors(path)


def test_truncated_checkpoint_is_refused(small_run, tmp_path):
    data = (world_file.latest_checkpoint(small_run) / "model.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(
        files.CheckpointError, match="cut.safetensors: not a readable safetensors file"
    ):
        files.load_tensors(path)


def test_checkpoint_of_another_shape_is_refused(small_run, bricks32):
    trainer = Trainer(
        config(bricks32, small_run.parent / "other", "model.denoiser.unet.channels=[8,16]")
    )
    with pytest.raises(files.CheckpointError, match="model config differs"):
        trainer.load(world_file.latest_checkpoint(small_run))
    tensors = files.load_tensors(world_file.latest_checkpoint(small_run) / "ema.safetensors")
    with pytest.raises(files.CheckpointError, match="has shape .* needs"):
        files.load_weights(trainer.model, tensors, small_run)


def test_saving_a_step_again_keeps_a_checkpoint_through_a_crash(tmp_path):
    from worldsim.files import load_tensors
    from worldsim.sim.world_file import latest_checkpoint
    from worldsim.training.checkpoint import write_checkpoint

    for value in (1.0, 2.0):  # the same step saved twice: the second one wins
        write_checkpoint(tmp_path, 5, {"w": {"x": torch.full((2,), value)}}, {})
    ckpt = latest_checkpoint(tmp_path)
    assert load_tensors(ckpt / "w.safetensors")["x"][0] == 2.0
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000005"]
    # a crash between moving the old copy aside and putting the new one in place
    ckpt.rename(ckpt.with_name(".step_0000005.old"))
    assert load_tensors(latest_checkpoint(tmp_path) / "w.safetensors")["x"][0] == 2.0


def test_optimizer_settings_are_checked_and_no_warmup_works(bricks32, tmp_path):
    from worldsim.training.train import OptimConfig

    for bad in (["optim.warmup=-10"], ["optim.lr=0"], ["minutes=-5"]):
        with pytest.raises(ValueError, match="must be"):
            load_config("train", TrainConfig, [f"data={bricks32.root}", *bad])
    assert OptimConfig(warmup=0).warmup == 0
    cfg = load_config(
        "train",
        TrainConfig,
        [
            f"data={bricks32.root}",
            f"out={tmp_path}",
            "model=tiny",
            "optim.warmup=0",
            "batch_size=4",
        ],
    )
    assert Trainer(cfg).lr_at(0) == cfg.optim.lr  # no warm-up: the full rate from the start


def test_explicit_bf16_training_warns_where_bf16_is_emulated(bricks32, tmp_path, monkeypatch):
    import worldsim.runtime

    monkeypatch.setattr(worldsim.runtime, "bf16_is_fast", lambda device: False)
    args = [f"data={bricks32.root}", "model=tiny", "batch_size=4"]
    with pytest.warns(UserWarning, match="emulated and several times slower than fp32"):
        Trainer(load_config("train", TrainConfig, [*args, f"out={tmp_path}/a", "precision=bf16"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto picks fp32 there: nothing to say
        Trainer(load_config("train", TrainConfig, [*args, f"out={tmp_path}/b", "precision=auto"]))
