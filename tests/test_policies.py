"""The policies that play without learning: the same seed gives the same actions."""

import numpy as np
import pytest

from worldsim.data.collect import play_episode
from worldsim.games import EnvConfig, make_env
from worldsim.policies import (
    Policy,
    PolicyConfig,
    Replay,
    Sticky,
    Uniform,
    action_source,
    simple_policy,
)


def draws(pick, n=400):
    return [pick() for _ in range(n)]


@pytest.mark.parametrize("name", ["random", "sticky"])
def test_a_seed_gives_the_same_actions_and_another_seed_others(name):
    first = draws(action_source(name, 4, seed=7))
    assert first == draws(action_source(name, 4, seed=7))
    assert first != draws(action_source(name, 4, seed=8))
    assert set(first) == {0, 1, 2, 3}


def test_sticky_holds_each_action_for_1_to_repeat_steps():
    # with 1000 actions, two holds in a row seldom draw the same one: runs are holds
    acts = draws(Sticky(1000, np.random.default_rng(0), repeat=5), 5000)
    cuts = np.flatnonzero(np.diff(acts)) + 1
    runs = np.diff([0, *cuts, len(acts)])[:-1]  # (the last hold may be cut short)
    assert set(runs) == {1, 2, 3, 4, 5} and abs(runs.mean() - 3) < 0.15  # uniform in [1, 5]
    uniform = draws(Uniform(1000, np.random.default_rng(0)), 5000)
    assert np.mean(np.diff(uniform) == 0) < 0.01  # uniform play holds nothing


def test_replay_gives_the_actions_in_order_once(tmp_path):
    path = tmp_path / "acts.txt"
    path.write_text("2\n0\n3\n")
    pick = action_source("actions", 4, actions=str(path))
    assert isinstance(pick, Replay) and draws(pick, 3) == [2, 0, 3] and pick.exhausted
    with pytest.raises(IndexError, match="all 3 actions were replayed"):
        pick()
    with pytest.raises(ValueError, match="policy=actions needs actions="):
        action_source("actions", 4)
    with pytest.raises(ValueError, match="policy must be random, sticky or actions, got 'x'"):
        action_source("x", 4)


def test_simple_policy_is_seeded_and_holds_its_action():
    a = simple_policy(2, 4, np.random.default_rng(3), 2000)
    assert np.array_equal(a, simple_policy(2, 4, np.random.default_rng(3), 2000))
    assert 0.85 < (a == 2).mean() < 0.98
    b = simple_policy(None, 4, np.random.default_rng(3), 2000)
    assert np.array_equal(b, np.random.default_rng(3).integers(0, 4, 2000))


@pytest.mark.parametrize("name", ["random", "sticky", "scripted", "miss"])
def test_a_behaviour_policy_plays_the_same_episode_from_the_same_seed(name):
    def episode(seed):
        env = make_env(EnvConfig())
        policy = Policy(PolicyConfig(name), env, np.random.default_rng(seed))
        return play_episode(env, policy, 0, 300).actions

    assert np.array_equal(episode(5), episode(5))
    assert not np.array_equal(episode(5), episode(6))
