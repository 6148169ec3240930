"""Behaviour policies that play the source games while episodes are recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class PolicyConfig:
    """How the recorded play is chosen."""

    name: Literal["random", "sticky", "scripted"] = "scripted"
    """random: uniform actions; sticky: a random action held `repeat` steps;
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


class Policy:
    """Chooses actions for one env; `act` may read the env's state (the scripted policy does)."""

    def __init__(self, cfg: PolicyConfig, env: gym.Env, rng: np.random.Generator):
        self.cfg, self.env, self.rng = cfg, env, rng
        self.n = int(env.action_space.n)
        self.held, self.left = 0, 0
        if cfg.name == "scripted" and not hasattr(env.unwrapped, "autopilot_action"):
            raise ValueError(
                f"{env.spec.id if env.spec else env}: no scripted policy for this game; "
                "use policy.name=random or policy.name=sticky"
            )

    def act(self) -> int:
        cfg, rng = self.cfg, self.rng
        if cfg.name == "random":
            return int(rng.integers(self.n))
        if self.left > 0:
            self.left -= 1
            return self.held
        if cfg.name == "sticky" or rng.random() < cfg.eps:
            self.held, self.left = int(rng.integers(self.n)), int(rng.integers(cfg.repeat))
            return self.held
        return int(self.env.unwrapped.autopilot_action(rng))
