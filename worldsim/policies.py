"""Behaviour policies that play the source games while episodes are recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class PolicyConfig:
    """How the recorded play is chosen."""

    name: Literal["auto", "random", "sticky", "scripted", "miss", "mix"] = "auto"
    """auto: scripted where the game has an autopilot (the built-in games), else sticky;
    random: uniform actions; sticky: a random action held for 1 to `repeat` steps;
    scripted: the game's coverage autopilot, with `eps` sticky-random noise; miss: the
    autopilot with stretches of wrong moves, so it loses balls and walks into walls; mix:
    each episode one of scripted / sticky / miss, drawn with the weights `mix` (games
    without an autopilot: sticky / random / sticky). The manifest records each episode's."""
    repeat: int = 4
    """sticky/scripted: steps a random action is held (drawn in [1, repeat])."""
    eps: float = 0.2
    """scripted: chance of starting a random action instead of the autopilot's."""
    mix: tuple[float, float, float] = (0.5, 0.3, 0.2)
    """mix: the shares of episodes played scripted, sticky and miss."""
    miss_p: float = 0.05
    """miss: chance per step of starting a stretch of 4 to 16 wrong moves."""

    def __post_init__(self):
        if self.repeat < 1:
            raise ValueError(f"policy.repeat must be >= 1, got {self.repeat}")
        if not 0 <= self.eps <= 1 or not 0 <= self.miss_p <= 1:
            raise ValueError(
                f"policy.eps and policy.miss_p must be in [0, 1], got {self.eps}, {self.miss_p}"
            )
        if len(self.mix) != 3 or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ValueError(
                f"policy.mix must be 3 weights >= 0 with a positive sum, got {list(self.mix)}"
            )


def has_autopilot(env: gym.Env) -> bool:
    """Whether the game has a scripted coverage policy (the built-in games do)."""
    return hasattr(env.unwrapped, "autopilot_action")


def policy_name(cfg: PolicyConfig, env: gym.Env, rng: np.random.Generator | None = None) -> str:
    """The policy `cfg` plays `env` with: `auto` resolved to scripted or sticky, and `mix`
    to one of its parts, drawn with `rng` (an episode's)."""
    if cfg.name == "auto":
        return "scripted" if has_autopilot(env) else "sticky"
    if cfg.name == "mix":
        parts = (
            ("scripted", "sticky", "miss") if has_autopilot(env) else ("sticky", "random", "sticky")
        )
        w = np.asarray(cfg.mix, float)
        rng = rng if rng is not None else np.random.default_rng(0)
        return parts[int(rng.choice(3, p=w / w.sum()))]
    return cfg.name


class Policy:
    """Chooses actions for one env; `act` may read the env's state (the scripted policy does)."""

    def __init__(self, cfg: PolicyConfig, env: gym.Env, rng: np.random.Generator):
        self.name = policy_name(cfg, env, rng)
        self.cfg, self.env, self.rng = cfg, env, rng
        self.n = int(env.action_space.n)
        self.held, self.left, self.wrong = 0, 0, 0
        if self.name in ("scripted", "miss") and not has_autopilot(env):
            raise ValueError(
                f"{env.spec.id if env.spec else env}: no scripted policy for this game; "
                "use policy.name=auto, random or sticky"
            )

    def act(self) -> int:
        cfg, rng = self.cfg, self.rng
        if self.name == "random":
            return int(rng.integers(self.n))
        if self.name == "miss":
            return self._miss()
        if self.left > 0:
            self.left -= 1
            return self.held
        if self.name == "sticky" or rng.random() < cfg.eps:
            self.held, self.left = int(rng.integers(self.n)), int(rng.integers(cfg.repeat))
            return self.held
        return int(self.env.unwrapped.autopilot_action(rng))

    def _miss(self) -> int:
        """The autopilot, but in stretches of 4-16 steps it presses another key than it
        would (away from the ball, into a wall)."""
        rng = self.rng
        right = int(self.env.unwrapped.autopilot_action(rng))
        if self.wrong == 0 and rng.random() < self.cfg.miss_p:
            self.wrong = int(rng.integers(4, 17))
        if self.wrong > 0 and self.n > 1:
            self.wrong -= 1
            return int((right + rng.integers(1, self.n)) % self.n)
        return right
