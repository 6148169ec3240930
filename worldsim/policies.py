"""Policies that play without learning: uniform, sticky and replayed actions, the check's
held-or-random batches, and the behaviour policies that play the source games while
episodes are recorded. Play, record, collection, evaluation and rl all take theirs here.

A policy is a callable that returns the next action; `exhausted` says when one that replays
a file has run out. Randomness comes from a `np.random.Generator` passed in, so a seed
gives the same actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, cast

import gymnasium as gym
import numpy as np


class Uniform:
    """Uniformly random actions in [0, n_actions).

    >>> pick = Uniform(4, np.random.default_rng(0))
    >>> [pick() for _ in range(6)]
    [3, 2, 2, 1, 1, 0]
    """

    exhausted = False

    def __init__(self, n_actions: int, rng: np.random.Generator):
        self.n, self.rng = n_actions, rng

    def __call__(self) -> int:
        return int(self.rng.integers(self.n))


class Sticky:
    """A uniformly random action held for 1 to `repeat` steps (also drawn uniformly), then
    another: random play that gets as far across the screen as a player does.

    >>> pick = Sticky(4, np.random.default_rng(0), repeat=3)
    >>> [pick() for _ in range(8)]
    [3, 3, 2, 1, 0, 0, 0, 0]
    """

    exhausted = False

    def __init__(self, n_actions: int, rng: np.random.Generator, repeat: int = 4):
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.n, self.rng, self.repeat = n_actions, rng, repeat
        self.held, self.left = 0, 0

    @property
    def holding(self) -> bool:
        """Whether the next call goes on with the action held now."""
        return self.left > 0

    def __call__(self) -> int:
        if self.left == 0:
            self.held = int(self.rng.integers(self.n))
            self.left = 1 + int(self.rng.integers(self.repeat))
        self.left -= 1
        return self.held


class Replay:
    """Given actions, in order, once.

    >>> pick = Replay([2, 3])
    >>> pick(), pick(), pick.exhausted
    (2, 3, True)
    """

    def __init__(self, actions):
        self.actions, self.t = np.asarray(actions, np.int64).ravel(), 0

    @property
    def exhausted(self) -> bool:
        return self.t >= len(self.actions)

    def __call__(self) -> int:
        if self.exhausted:
            raise IndexError(f"all {len(self.actions)} actions were replayed")
        self.t += 1
        return int(self.actions[self.t - 1])


def load_actions(path: str, n_actions: int) -> np.ndarray:
    """Action indices from a .npy file or a text file with one integer per line."""
    try:
        acts = np.load(path) if path.endswith(".npy") else np.loadtxt(path, np.int64, ndmin=1)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a file of action indices ({e})") from None
    acts = np.asarray(acts).ravel()
    if len(acts) == 0:
        raise ValueError(f"{path}: no actions in the file")
    if not np.issubdtype(acts.dtype, np.integer):
        raise ValueError(f"{path}: actions must be integers, got an array of {acts.dtype}")
    bad = np.flatnonzero((acts < 0) | (acts >= n_actions))
    if len(bad):
        raise ValueError(
            f"{path}: actions must lie in [0, {n_actions}), "
            f"got {int(acts[bad[0]])} at index {bad[0]}"
        )
    return acts.astype(np.int64)


def action_source(
    name: str, n_actions: int, seed: int = 0, actions: str = "", repeat: int = 7
) -> Uniform | Sticky | Replay:
    """The scripted play of `worldsim play` and `worldsim record`: `random` (Uniform),
    `sticky` (Sticky, actions held 1 to `repeat` steps) or `actions` (Replay of the file
    `actions`), drawn from `seed`.

    >>> pick = action_source("sticky", 4, seed=0)
    >>> [pick() for _ in range(4)]
    [3, 3, 3, 3]
    """
    rng = np.random.default_rng(seed)
    if name == "random":
        return Uniform(n_actions, rng)
    if name == "sticky":
        return Sticky(n_actions, rng, repeat)
    if name == "actions":
        if not actions:
            raise ValueError("policy=actions needs actions=<file of action indices>")
        return Replay(load_actions(actions, n_actions))
    raise ValueError(f"policy must be random, sticky or actions, got {name!r}")


def simple_policy(hold: int | None, n_actions: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """n actions: uniform random (hold None), or `hold` with a random action 10% of the time.

    >>> simple_policy(2, 4, np.random.default_rng(0), 8)
    array([2, 2, 2, 3, 2, 2, 2, 2])
    """
    if hold is None:
        return rng.integers(0, n_actions, n)
    return np.where(rng.random(n) < 0.1, rng.integers(0, n_actions, n), hold)


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


class Autopilot(Protocol):
    """A game with a scripted coverage policy (the built-in games' unwrapped envs)."""

    def autopilot_action(self, rng: np.random.Generator) -> int: ...


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
        space = env.action_space
        if not isinstance(space, gym.spaces.Discrete):
            raise TypeError(f"policies play discrete action spaces, got {space}")
        self.n = int(space.n)
        self.uniform, self.sticky = Uniform(self.n, rng), Sticky(self.n, rng, cfg.repeat)
        self.wrong = 0
        if self.name in ("scripted", "miss") and not has_autopilot(env):
            raise ValueError(
                f"{env.spec.id if env.spec else env}: no scripted policy for this game; "
                "use policy.name=auto, random or sticky"
            )

    def act(self) -> int:
        if self.name == "random":
            return self.uniform()
        if self.name == "miss":
            return self._miss()
        # scripted: the autopilot, but now and then (eps) a sticky random action instead
        if self.name == "sticky" or self.sticky.holding or self.rng.random() < self.cfg.eps:
            return self.sticky()
        return int(self._autopilot().autopilot_action(self.rng))

    def _autopilot(self) -> Autopilot:
        return cast(Autopilot, self.env.unwrapped)  # checked by has_autopilot in __init__

    def _miss(self) -> int:
        """The autopilot, but in stretches of 4-16 steps it presses another key than it
        would (away from the ball, into a wall)."""
        rng = self.rng
        right = int(self._autopilot().autopilot_action(rng))
        if self.wrong == 0 and rng.random() < self.cfg.miss_p:
            self.wrong = int(rng.integers(4, 17))
        if self.wrong > 0 and self.n > 1:
            self.wrong -= 1
            return int((right + rng.integers(1, self.n)) % self.n)
        return right
