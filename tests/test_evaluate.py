"""`worldsim eval` writes a complete report for every sampler and refuses what it cannot score."""

import json

import numpy as np
import pytest

from worldsim.cli import main
from worldsim.config import load_config
from worldsim.evaluation.evaluate import EvalConfig, evaluate


def test_eval_writes_report_plot_and_video(tiny_world, tmp_path, capsys):
    out = tmp_path / "eval"
    # (a short inverse-dynamics fit and free play: their own tests check what they measure)
    assert (
        main(
            [
                "eval",
                f"world={tiny_world}",
                "starts=2",
                "horizon=3",
                f"out={out}",
                "idm_steps=20",
                "rules_steps=12",
            ]
        )
        == 0
    )
    assert "copy last frame" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    names = set(report["samplers"])
    assert {
        "copy last frame",
        "student onestep 1",
        "student multistep 2",
        "teacher euler 1",
        "teacher euler 3",
        "teacher euler 10",
    } == names
    for name, r in report["samplers"].items():
        ar = r["autoregressive"]
        assert all(len(ar[k]) == 3 for k in ("psnr", "psnr_moving", "ssim", "sharpness_ratio")), (
            name
        )
        if name != "copy last frame":
            assert r["fps_batch1"] > 0 and r["fps_batch32"] > 0 and "psnr" in r["teacher_forced"]
    assert 0 <= report["reward_end"]["reward_accuracy"] <= 1
    # the values, not only their shape: the copy-last baseline's PSNR recomputed here from
    # the same held-out starts, and every sampler's scores in their ranges
    from worldsim.data.segments import SegmentSampler
    from worldsim.data.store import Dataset
    from worldsim.sim.world_file import load_world

    bundle = load_world(str(tiny_world), "cpu")
    K = bundle.context
    segs = SegmentSampler(Dataset.open(report["data"]), "test", K, horizon=3).sample(
        2, np.random.default_rng(0)
    )
    obs = np.asarray(segs.obs, dtype=np.float64)  # (B, K + 3, 3, H, W)
    mse = ((obs[:, K - 1 : K] - obs[:, K:]) ** 2).mean(axis=(2, 3, 4))  # (B, 3)
    want = (10 * np.log10(255**2 / np.maximum(mse, 255**2 / 1e6))).mean(axis=0)
    got = report["samplers"]["copy last frame"]["autoregressive"]["psnr"]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for name, r in report["samplers"].items():
        ar = r["autoregressive"]
        assert all(0 < v <= 60 for v in ar["psnr"]) and all(-1 <= v <= 1 for v in ar["ssim"])
        assert all(v >= 0 for v in ar["sharpness_ratio"]), name
    assert (out / "psnr.png").stat().st_size > 1000
    assert (out / "rollouts.mp4").read_bytes()[4:8] == b"ftyp"
    assert (
        main(["eval", f"world={tiny_world}", "starts=2", "horizon=3", f"out={out}"]) == 2
    )  # no overwrite


def test_eval_refuses_data_of_another_game(tiny_world, bricks_data, tmp_path):
    with pytest.raises(ValueError, match="holds \\(64, 64\\) frames"):
        evaluate(
            load_config(
                "eval",
                EvalConfig,
                [f"world={tiny_world}", f"data={bricks_data.root}", f"out={tmp_path}"],
            )
        )


def test_eval_says_how_to_go_on_when_the_world_training_data_is_not_here(
    tiny_world, tmp_path, capsys
):
    import shutil

    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    meta = json.loads((world / "world.json").read_text())
    meta["source"]["data"] = str(tmp_path / "gone")
    (world / "world.json").write_text(json.dumps(meta))
    assert main(["eval", f"world={world}", f"out={tmp_path / 'e'}"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gone" in err and "policy=random" in err
    assert not (tmp_path / "e").exists()
