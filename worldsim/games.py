"""Which game to learn from: the env section of every config, and making that env."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import worldsim_envs  # noqa: F401  (registers worldsim/Bricks-v0 and worldsim/Maze-v0)


@dataclass(frozen=True)
class EnvConfig:
    """A source game."""

    name: str = "bricks"
    """Short name, used for default folders (data/<name>, runs/<name>)."""
    id: str = "worldsim/Bricks-v0"
    """Gymnasium id (for kind=atari: the ALE game name, e.g. Breakout)."""
    kind: Literal["builtin", "gym", "atari"] = "builtin"
    """builtin: a worldsim game; gym: any env that renders rgb_array; atari: ALE via ale-py."""
    frame_size: int = 64
    """Side of the square frames the world sees; a multiple of 8."""
    kwargs: dict = field(default_factory=dict)
    """Extra keyword arguments for the env's constructor."""
    max_episode_steps: int | None = None
    """Time limit; None keeps the env's registered limit."""
    frameskip: int = 4
    """Atari only: emulator frames per step."""
    life_loss: bool = False
    """Atari only: end the episode when a life is lost."""

    def __post_init__(self):
        if self.frame_size < 8 or self.frame_size % 8:
            raise ValueError(
                f"env.frame_size must be a positive multiple of 8, got {self.frame_size}"
            )


def make_env(cfg: EnvConfig, render_mode: str | None = None) -> gym.Env:
    """Make the game of `cfg`; its observations are (frame_size, frame_size, 3) uint8."""
    from worldsim_envs.adapters import PixelObservation, ResizeFrame, make_atari

    limit: dict[str, Any] = (
        {} if cfg.max_episode_steps is None else {"max_episode_steps": cfg.max_episode_steps}
    )
    if cfg.kind == "atari":
        return make_atari(
            cfg.id, cfg.frame_size, cfg.frameskip, cfg.life_loss, **limit, **cfg.kwargs
        )
    if cfg.id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("worldsim/"))
        raise ValueError(f"unknown game id {cfg.id!r}; worldsim games: {', '.join(known)}")
    if cfg.kind == "gym":
        env = gym.make(cfg.id, render_mode="rgb_array", **limit, **cfg.kwargs)
        return PixelObservation(env, cfg.frame_size)
    env = gym.make(cfg.id, render_mode=render_mode, **limit, **cfg.kwargs)
    if env.observation_space.shape != (cfg.frame_size, cfg.frame_size, 3):
        env = ResizeFrame(env, cfg.frame_size)
    return env


def action_meanings(env: gym.Env) -> list[str]:
    """The game's action names, or ACTION_<i> when it has none."""
    unwrapped = env.unwrapped
    if hasattr(unwrapped, "get_action_meanings"):
        return list(unwrapped.get_action_meanings())
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise ValueError(f"worldsim needs Discrete actions, got {env.action_space}")
    return [f"ACTION_{i}" for i in range(int(env.action_space.n))]
