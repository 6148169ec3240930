"""Behaviour policies that play the source games while episodes are recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class PolicyConfig:
    """How the recorded play is chosen."""

    name: Literal["auto", "random", "sticky", "scripted"] = "auto"
    """auto: scripted where the game has an autopilot (the built-in games), else sticky;
    random: uniform actions; sticky: a random action held for 1 to `repeat` steps;
    scripted: the game's coverage autopilot, with `eps` sticky-random noise."""
    repeat: int = 4
    """sticky/scripted: steps a random action is held (drawn in [1, repeat])."""
    eps: float = 0.2
    """scripted: chance of starting a random action instead of the autopilot's."""

    def __post_init__(self):
        if self.repeat < 1:
            raise ValueError(f"policy.repeat must be >= 1, got {self.repeat}")
        if not 0 <= self.eps <= 1:
            raise ValueError(f"policy.eps must be in [0, 1], got {self.eps}")


def has_autopilot(env: gym.Env) -> bool:
    """Whether the game has a scripted coverage policy (the built-in games do)."""
    return hasattr(env.unwrapped, "autopilot_action")


def policy_name(cfg: PolicyConfig, env: gym.Env) -> str:
    """The policy `cfg` plays `env` with: `auto` resolved to scripted or sticky."""
    if cfg.name == "auto":
        return "scripted" if has_autopilot(env) else "sticky"
    return cfg.name


class Policy:
    """Chooses actions for one env; `act` may read the env's state (the scripted policy does)."""

    def __init__(self, cfg: PolicyConfig, env: gym.Env, rng: np.random.Generator):
        self.name = policy_name(cfg, env)
        self.cfg, self.env, self.rng = cfg, env, rng
        self.n = int(env.action_space.n)
        self.held, self.left = 0, 0
        if self.name == "scripted" and not has_autopilot(env):
            raise ValueError(
                f"{env.spec.id if env.spec else env}: no scripted policy for this game; "
                "use policy.name=auto, random or sticky"
            )

    def act(self) -> int:
        cfg, rng = self.cfg, self.rng
        if self.name == "random":
            return int(rng.integers(self.n))
        if self.left > 0:
            self.left -= 1
            return self.held
        if self.name == "sticky" or rng.random() < cfg.eps:
            self.held, self.left = int(rng.integers(self.n)), int(rng.integers(cfg.repeat))
            return self.held
        return int(self.env.unwrapped.autopilot_action(rng))
