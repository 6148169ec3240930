"""The source games: Gymnasium conformance, determinism, key maps, adapters."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import worldsim  # noqa: F401  (registers the games)
from worldsim.games import EnvConfig, action_meanings, make_env

GAMES = ["worldsim/Bricks-v0", "worldsim/Maze-v0"]


@pytest.mark.parametrize("env_id", GAMES)
def test_check_env(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    assert env.observation_space.shape == (64, 64, 3)
    assert isinstance(env.action_space, gym.spaces.Discrete)
    assert len(env.unwrapped.get_action_meanings()) == env.action_space.n


@pytest.mark.parametrize("env_id", GAMES)
def test_same_seed_same_actions_same_frames(env_id):
    actions = np.random.default_rng(0).integers(0, gym.make(env_id).action_space.n, 300)

    def play(seed):
        env = gym.make(env_id)
        frames = [env.reset(seed=seed)[0]]
        for a in actions:
            obs, _, term, trunc, _ = env.step(int(a))
            frames.append(obs)
            if term or trunc:
                frames.append(env.reset()[0])
        return np.stack(frames)

    a, b = play(7), play(7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, play(8))
    assert len(np.unique(a.reshape(len(a), -1), axis=0)) > 50  # the picture really moves


@pytest.mark.parametrize("env_id", GAMES)
def test_invalid_action_is_refused(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be"):
        env.step(99)


@pytest.mark.parametrize("game", ["bricks", "maze"])
def test_key_maps_are_data_over_valid_actions(game):
    env = gym.make(f"worldsim/{game.capitalize()}-v0")
    keys = env.unwrapped.get_keys_to_action()
    assert keys and all(0 <= a < env.action_space.n for a in keys.values())
    assert all(isinstance(k, tuple) for k in keys)


def test_bricks_fire_launches_the_ball_and_bricks_score():
    env = gym.make("worldsim/Bricks-v0").unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    total = sum(env.step(env.autopilot_action(rng))[1] for _ in range(2000))
    assert total > 0 and not env.attached


def test_gym_adapter_resizes_any_rgb_env():
    env = make_env(EnvConfig(name="gym", id="CartPole-v1", kind="gym", frame_size=32))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (32, 32, 3) and obs.dtype == np.uint8
    assert action_meanings(env) == ["ACTION_0", "ACTION_1"]


def test_unknown_game_lists_the_valid_ones():
    with pytest.raises(ValueError, match="worldsim/Bricks-v0"):
        make_env(EnvConfig(id="worldsim/Nope-v0"))


def test_frame_size_must_be_a_multiple_of_8():
    with pytest.raises(ValueError, match="multiple of 8, got 30"):
        EnvConfig(frame_size=30)


def test_atari_adapter_gives_64x64_frames_and_life_loss_ends():
    pytest.importorskip("ale_py")
    env = make_env(EnvConfig(name="atari", id="Breakout", kind="atari", life_loss=True))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert "FIRE" in action_meanings(env)
    for _ in range(2000):
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            break
    assert term  # a lost life ends the episode long before the game is over
