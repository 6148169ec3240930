"""Adapters that turn other games into worldsim sources: pixels at the world's frame size."""

from __future__ import annotations

import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class PixelObservation(gym.ObservationWrapper):
    """Replace an env's observation with its `rgb_array` render, resized to (size, size, 3).

    Works for any Gymnasium env made with `render_mode="rgb_array"`.
    """

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        if env.render_mode != "rgb_array":
            raise ValueError(
                f"env must be made with render_mode='rgb_array', got {env.render_mode!r}"
            )
        self.size = size
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)

    def observation(self, observation) -> np.ndarray:
        frame = self.env.render()
        return resize_frame(np.asarray(frame)[..., :3], self.size)


class ResizeFrame(gym.ObservationWrapper):
    """Resize (H, W, 3) uint8 observations to (size, size, 3) with area averaging."""

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        self.size = size
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)

    def observation(self, observation) -> np.ndarray:
        return resize_frame(observation, self.size)


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    if frame.shape[:2] == (size, size):
        return np.ascontiguousarray(frame, dtype=np.uint8)
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA).astype(np.uint8)


class LifeLossTermination(gym.Wrapper):
    """End the episode when an Atari game loses a life (a common training signal)."""

    def step(self, action):
        lives = self.env.unwrapped.ale.lives()
        obs, reward, terminated, truncated, info = self.env.step(action)
        terminated = terminated or self.env.unwrapped.ale.lives() < lives
        return obs, reward, terminated, truncated, info


def make_atari(game: str, size: int, frameskip: int, life_loss: bool, **kwargs) -> gym.Env:
    """An ALE game at `size`x`size` RGB (needs the `atari` extra)."""
    try:
        import ale_py
    except ImportError:
        raise ImportError("Atari games need ale-py: pip install 'worldsim[atari]'") from None
    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", obs_type="rgb", frameskip=frameskip, **kwargs)
    env = ResizeFrame(env, size)
    return LifeLossTermination(env) if life_loss else env
