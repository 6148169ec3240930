"""Data that covers how people play, and evaluation on play the world never saw."""

import json

import numpy as np

from worldsim.config import load_config
from worldsim.data.collect import CollectConfig, collect


def _collect(out, *overrides):
    return collect(
        load_config(
            "collect", CollectConfig, [f"out={out}", "workers=1", "env.frame_size=32", *overrides]
        )
    )


def test_mix_records_which_policy_played_each_episode(tmp_path):
    ds = _collect(tmp_path / "mix", "steps=6000", "policy.name=mix", "seed=3")
    kinds = [e["policy"] for e in ds.entries()]
    assert set(kinds) <= {"scripted", "sticky", "miss"} and len(set(kinds)) >= 2
    again = _collect(tmp_path / "mix2", "steps=6000", "policy.name=mix", "seed=3")
    assert [e["policy"] for e in again.entries()] == kinds  # the draw follows the seed


def test_the_miss_policy_loses_balls_the_autopilot_keeps(tmp_path):
    def lost_per_1k(ds):
        lost = sum(int(ds.load(e).life_lost.sum()) for e in ds.entries())
        return 1000 * lost / sum(e["length"] for e in ds.entries())

    scripted = _collect(tmp_path / "s", "steps=4000", "policy.name=scripted", "policy.eps=0")
    miss = _collect(tmp_path / "m", "steps=4000", "policy.name=miss")
    assert lost_per_1k(miss) > 2 * lost_per_1k(scripted) + 1


def test_eval_on_fresh_play_of_another_policy(tiny_world, tmp_path):
    from worldsim.evaluation.evaluate import EvalConfig, evaluate

    out = tmp_path / "eval"
    report = evaluate(
        load_config(
            "eval",
            EvalConfig,
            [
                f"world={tiny_world}",
                f"out={out}",
                "policy=random",
                "play_steps=300",
                "starts=4",
                "horizon=2",
                "idm_steps=5",
                "samplers=[{name:euler,steps:1}]",
            ],
        )
    )
    assert report["policy"] == "random"
    manifest = json.loads((out / "play-random-seed0" / "manifest.json").read_text())
    assert {e["policy"] for e in manifest["episodes"]} == {"random"}
    assert all(e["split"] == "test" for e in manifest["episodes"])  # all of it held out
    psnr = report["samplers"]["teacher euler 1"]["autoregressive"]["psnr"]
    assert np.isfinite(psnr).all() and (out / "report.json").exists()
