"""The worlds that ship inside the package: loadable by name, small, real Gymnasium envs."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import worldsim  # noqa: F401  (registers worldsim/World-v0)
from worldsim.sim.world_file import WORLDS_DIR, load_world

SHIPPED = ["bricks", "maze"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_world_loads_by_name_and_is_small(name):
    bundle = load_world(name)
    assert bundle.path == WORLDS_DIR / name
    assert bundle.student is not None  # one-step head included
    model_bytes = sum(
        (bundle.path / f).stat().st_size
        for f in ("teacher.safetensors", "student.safetensors", "starts.safetensors")
    )
    assert model_bytes < 15e6
    assert (bundle.path / "eval" / "report.json").is_file()
    assert (bundle.path / "MADE_WITH.md").is_file()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_world_is_a_gymnasium_env(name):
    env = gym.make("worldsim/World-v0", world=name, max_episode_steps=50)
    check_env(env.unwrapped, skip_render_check=True)
    a, _ = env.reset(seed=3)
    b, _ = gym.make("worldsim/World-v0", world=name).reset(seed=3)
    assert np.array_equal(a, b)
    actions = np.random.default_rng(0).integers(0, env.action_space.n, 8)
    frames = [env.step(int(x))[0] for x in actions]
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert len({f.tobytes() for f in frames}) > 1  # the world moves


def test_default_world_is_bricks():
    env = gym.make("worldsim/World-v0")
    assert env.unwrapped.bundle.meta["env_id"] == "worldsim/Bricks-v0"
