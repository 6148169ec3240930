"""Ending episodes at a lost life, with the game going on after it (Atari's EpisodicLifeEnv
rule, for any game that reports lives and for the learned worlds)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


def life_loss_end(terminated, truncated, life_lost):
    """(terminated, go_on) of a step under the EpisodicLifeEnv rule: a lost life ends the
    episode too, and where the game itself neither ended nor was cut, the next reset goes
    on from that moment. Takes bools, or numpy bool arrays (one per env).

    >>> life_loss_end(np.array([False, True, False]), np.array([False, False, True]), True)
    (array([ True,  True,  True]), array([ True, False, False]))
    """
    go_on = np.logical_and(life_lost, ~np.logical_or(terminated, truncated))
    return np.logical_or(terminated, life_lost), go_on


class EndOnLifeLoss(gym.Wrapper):
    """Episodes that also end when a life is lost; `reset()` then goes on from that moment
    (no new game) unless the game itself ended or a seed or options are given.

    A lost life is `info["life_lost"]` where the env reports it (a learned world), else a
    drop of `info["lives"]` (the built-in games, and any game that reports lives). SB3's
    EpisodicLifeEnv reads ALE's lives only, and steps a no-op to go on; the learned worlds'
    own `end_on_life_loss` follows this same rule (`life_loss_end`).

    >>> from worldsim.games import EnvConfig, make_env
    >>> env = EndOnLifeLoss(make_env(EnvConfig()))
    >>> env.reset(seed=0)[1]["lives"]
    3
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._lives, self._go_on = None, None

    def reset(self, *, seed=None, options=None):
        go_on, self._go_on = self._go_on, None
        if go_on is not None and seed is None and not options:
            return go_on
        obs, info = self.env.reset(seed=seed, options=options)
        self._lives = info.get("lives")
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = info.get("lives", self._lives)
        if "life_lost" in info:
            lost = bool(info["life_lost"])
        else:
            lost = self._lives is not None and lives < self._lives
        self._lives = lives
        terminated, go_on = life_loss_end(terminated, truncated, lost)
        self._go_on = (obs, info) if go_on else None
        return obs, reward, bool(terminated), truncated, info
