"""World bundles: self-contained, loadable by path, refused with one clear message when damaged."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from worldsim.cli import main
from worldsim.files import CheckpointError
from worldsim.sim.world_file import load_world
from worldsim.training.bundle import BundleConfig, bundle


@pytest.fixture(scope="module")
def world(small_run, tmp_path_factory):
    return bundle(
        BundleConfig(run=str(small_run), out=str(tmp_path_factory.mktemp("w") / "world"), starts=5)
    )


def test_bundle_is_self_contained_and_loads(world):
    assert sorted(p.name for p in world.iterdir()) == [
        "starts.safetensors",
        "teacher.safetensors",
        "world.json",
    ]
    w = load_world(world)
    assert w.action_meanings == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert w.frame_size == (32, 32)
    assert w.start_frames.shape == (5, w.context, 32, 32, 3) and w.start_frames.dtype == torch.uint8
    assert w.keys_to_action and set(w.keys_to_action.values()) <= {0, 1, 2, 3}
    assert not w.model.training
    meta = json.loads((world / "world.json").read_text())
    assert meta["source"]["step"] == 2
    # the game is made as the data recorded it, though the run was given only `data=`
    game = json.loads((Path(meta["source"]["data"]) / "manifest.json").read_text())["game"]
    assert game["frame_size"] == 32 and meta["env"] == game


def test_still_level_is_chosen_on_training_play_or_set(world, small_run, tmp_path, capsys):
    """A world draws with the `still` level chosen for it when bundled (or the one given);
    a sampler that names its own level keeps it."""
    from worldsim.models.samplers import DEFAULT_STILL, SamplerConfig
    from worldsim.sim.world import World
    from worldsim.training.calibration import STILL_LEVELS

    chosen = json.loads((world / "world.json").read_text())["still"]
    assert chosen in STILL_LEVELS
    w = load_world(world)
    assert World(w).sampler.still == chosen
    assert World(w, SamplerConfig("euler", 2, still=0)).sampler.still == 0
    # a world bundled before worlds chose a level draws with the default one
    meta = json.loads((world / "world.json").read_text())
    del meta["still"]
    old = tmp_path / "old"
    shutil.copytree(world, old)
    (old / "world.json").write_text(json.dumps(meta))
    assert World(load_world(old)).sampler.still == DEFAULT_STILL
    out = tmp_path / "set"
    assert main(["bundle", f"run={small_run}", f"out={out}", "starts=5", "still=5"]) == 0
    assert load_world(out).sampler().still == 5
    assert main(["bundle", f"run={small_run}", f"out={out}", "still=300"]) == 2
    assert "still must be empty or a level in [0, 255], got 300" in capsys.readouterr().err


def test_bundle_never_overwrites_unless_asked(world, small_run, capsys):
    assert main(["bundle", f"run={small_run}", f"out={world}"]) == 2
    assert "exists; pass overwrite=true" in capsys.readouterr().err
    assert main(["bundle", f"run={small_run}", f"out={world}", "overwrite=true", "starts=5"]) == 0


def test_missing_and_damaged_worlds_are_refused(world, tmp_path):
    with pytest.raises(ValueError, match="starts must be >= 1, got 0"):
        BundleConfig(starts=0)
    with pytest.raises(CheckpointError, match="no world 'nowhere'"):
        load_world("nowhere")
    with pytest.raises(CheckpointError, match="not a world folder"):
        load_world(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in world.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "world.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="world.json: not valid JSON"):
        load_world(broken)
    (broken / "world.json").write_text((world / "world.json").read_text())
    data = (world / "teacher.safetensors").read_bytes()
    (broken / "teacher.safetensors").write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match="teacher.safetensors: not a readable safetensors"):
        load_world(broken)
