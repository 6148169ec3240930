"""`worldsim pipeline`: game -> world in one command; a second run skips finished stages."""

import json

import pytest

from worldsim.cli import main
from worldsim.config import load_config

TINY = [
    "env.frame_size=32",
    "preset.collect_steps=2500",
    "preset.test_fraction=0.34",
    "preset.train_steps=3",
    "preset.distill_steps=2",
    "preset.reward_steps=2",
    "preset.batch_size=4",
    "preset.procs=1",
    "preset.eval_starts=2",
    "preset.eval_horizon=2",
    "preset.model.denoiser.context=2",
    "preset.model.denoiser.unet.channels=[8,16]",
    "preset.model.denoiser.unet.attention=[false,false]",
    "preset.model.denoiser.unet.cond_dim=32",
    "preset.model.reward.channels=[8,8]",
]


def test_pipeline_makes_a_playable_world_and_resumes(tmp_path, capsys):
    root = tmp_path / "p"
    assert main(["pipeline", f"root={root}", *TINY]) == 0
    first = capsys.readouterr().out
    assert "[1/6] collect" in first and "world ready" in first
    # the reward/end model was fitted to the world's own drawings, and the world took it
    assert "[5/6] fit the reward/end model to the world's drawings" in first
    meta = json.loads((root / "world" / "world.json").read_text())
    assert meta["source"]["run"] == str((root / "reward").resolve()) and "student" in meta
    assert (root / "world" / "world.json").exists() and (
        root / "world" / "student.safetensors"
    ).exists()
    assert (root / "world" / "eval" / "report.json").exists()
    assert main(["pipeline", f"root={root}", *TINY]) == 0
    second = capsys.readouterr().out
    assert (
        "[1/6] collect" not in second
        and "[5/6]" not in second
        and "train the teacher (done)" in second
        and "distill the one-step student (done)" in second
    )
    assert (
        main(
            [
                "play",
                f"world={root / 'world'}",
                "headless=true",
                "policy=random",
                "frames=5",
                "fps=0",
            ]
        )
        == 0
    )


def test_preset_values_are_checked_before_any_stage_runs(tmp_path):
    from worldsim.pipeline import PipelineConfig, _complete_run

    for bad, msg in (
        ("preset.eval_horizon=0", "preset.eval_horizon must be >= 1"),
        ("preset.train_minutes=-1", "preset.train_minutes must be >= 0"),
        ("preset.test_fraction=1.5", "preset.test_fraction must be in"),
        ("preset.procs=-1", "preset.procs must be in"),
    ):
        with pytest.raises(ValueError, match=msg):
            load_config("pipeline", PipelineConfig, [f"root={tmp_path}", bad])
    # with no time budget (minutes=0) a run is complete only when it reached its steps
    run = tmp_path / "run"
    from worldsim.training import checkpoint as ckpt

    ckpt.write_checkpoint(run, 3, {}, {"config": {}})
    (run / "log.jsonl").write_text('{"step": 3, "time": 1.2, "loss": 0.5}\n')
    assert not _complete_run(run, 100_000, 0.0) and _complete_run(run, 3, 0.0)
    assert _complete_run(run, 100_000, 0.01)  # 1.2 s spent a 0.6 s budget
