"""`worldsim pipeline`: game -> world in one command; a second run skips finished stages."""

from worldsim.cli import main

TINY = ["env.frame_size=32", "preset.collect_steps=2500", "preset.test_fraction=0.34", "preset.train_steps=3", "preset.distill_steps=2",
        "preset.batch_size=4", "preset.eval_starts=2", "preset.eval_horizon=2",
        "preset.model.denoiser.context=2", "preset.model.denoiser.unet.channels=[8,16]",
        "preset.model.denoiser.unet.attention=[false,false]", "preset.model.denoiser.unet.cond_dim=32",
        "preset.model.reward.channels=[8,8]"]  # fmt: skip


def test_pipeline_makes_a_playable_world_and_resumes(tmp_path, capsys):
    root = tmp_path / "p"
    assert main(["pipeline", f"root={root}", *TINY]) == 0
    first = capsys.readouterr().out
    assert "[1/5] collect" in first and "world ready" in first
    assert (root / "world" / "world.json").exists() and (
        root / "world" / "student.safetensors"
    ).exists()
    assert (root / "world" / "eval" / "report.json").exists()
    assert main(["pipeline", f"root={root}", *TINY]) == 0
    second = capsys.readouterr().out
    assert (
        "[1/5] collect" not in second
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
