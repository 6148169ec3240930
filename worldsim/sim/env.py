"""The learned world as a Gymnasium environment."""

from __future__ import annotations

from typing import TypeGuard

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from worldsim.models.samplers import SamplerConfig
from worldsim.sim.world import World
from worldsim.sim.world_file import WorldBundle, load_world
from worldsim.sim.wrappers import life_loss_end


def check_context(
    options: dict, K: int, size: tuple[int, int], n_actions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a reset context: frames (K, H, W, 3) uint8 and actions (K,) in range."""
    missing = [k for k in ("frames", "actions") if k not in options]
    if missing:
        raise ValueError(
            f"options need both 'frames' and 'actions' to start from a given moment; "
            f"{' and '.join(repr(k) for k in missing)} missing"
        )
    frames, actions = np.asarray(options["frames"]), np.asarray(options["actions"])
    if frames.shape != (K, *size, 3) or frames.dtype != np.uint8:
        raise ValueError(
            f"options['frames'] must be ({K}, {size[0]}, {size[1]}, 3) uint8, got {frames.shape} "
            f"{frames.dtype}"
        )
    if actions.shape != (K,) or not np.issubdtype(actions.dtype, np.integer):
        raise ValueError(
            f"options['actions'] must be {K} integers, got {actions.shape} {actions.dtype}"
        )
    if actions.min() < 0 or actions.max() >= n_actions:
        raise ValueError(f"options['actions'] must lie in [0, {n_actions}), got {actions.tolist()}")
    return torch.from_numpy(frames.copy()), torch.from_numpy(actions.astype(np.int64))


LIVES_HINT = (
    "its game reports no lives, or its data was recorded before worldsim kept them "
    "(record it again, then: worldsim train init=<world> reward_only=true data=<data>)"
)


def has_context(options: dict | None) -> TypeGuard[dict]:
    """Whether reset options ask for a given start (then `check_context` validates them)."""
    return bool(options and ("frames" in options or "actions" in options))


def load_checked(
    world, frame_size: int | None, num_actions: int | None, device, end_on_life_loss: bool = False
) -> WorldBundle:
    bundle = load_world(world, device)
    if end_on_life_loss and not bundle.lives:
        raise ValueError(
            f"end_on_life_loss=True needs a world that predicts lost lives; {bundle.path} does "
            "not: "
            f"{LIVES_HINT}"
        )
    h, w = bundle.frame_size
    if frame_size is not None and (h, w) != (frame_size, frame_size):
        raise ValueError(
            f"world {bundle.path} draws {h}x{w} frames, not the {frame_size}x{frame_size} asked for"
        )
    if num_actions is not None and len(bundle.action_meanings) != num_actions:
        raise ValueError(
            f"world {bundle.path} has {len(bundle.action_meanings)} actions, not the "
            f"{num_actions} asked for"
        )
    return bundle


class WorldModelEnv(gym.Env):
    """A game as a learned world model dreams it.

    ## Description
    Each step draws the next frame with the world's diffusion model (by default its
    one-step consistency student) from the last K frames and the actions, and predicts the
    reward and whether the episode ends with its reward/end model.

    ## Action Space
    `Discrete(n)` with the source game's actions (`get_action_meanings()`).

    ## Observation Space
    `Box(0, 255, (H, W, 3), uint8)`: the dreamed frame (64x64 for the built-in worlds).

    ## Rewards
    The reward model's prediction: one of the reward values seen in the game's data.

    ## Episode End
    Terminated when the end model predicts the episode ends; truncated after
    `max_episode_steps` steps. With `end_on_life_loss=True` (worlds that predict lost
    lives), an episode also terminates when a life is lost, and the next `reset()` without
    a seed or options goes on from that moment, as Atari's EpisodicLifeEnv does (the step
    count, and so truncation, runs on across these resets).

    ## Info
    `step`: steps since the last full reset. `life_lost`: whether the world predicts that
    this step lost a life (always False for worlds that do not know lives).

    ## Arguments
    `world`: a shipped world's name or a world folder. `sampler`/`steps`: how frames are
    drawn (`onestep`, `multistep`, `euler`, `heun`; default one-step when the world has a
    student). `still`: pixels the draw moves by at most this many uint8 levels keep the last
    frame's (default: the world's own level; 0 = off; `SamplerConfig.still`).
    `max_episode_steps` (1000). `render_mode`: `rgb_array` or `human`.
    `end_on_life_loss`: see Episode End. `device`: `cpu` or `cuda`. `precision`: `fp32`
    (default) or `bf16` (the denoiser under bfloat16 autocast: faster batches on CPUs with
    AMX and on GPUs). `frame_size`/`num_actions`: if given, the world must match.
    `reset(options={"frames": (K, H, W, 3) uint8, "actions": (K,)})` starts the dream from
    any real moment (`actions[i]` produced `frames[i]`); otherwise from one of the world's
    recorded starts.
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 15}
    action_space: spaces.Discrete

    def __init__(
        self,
        world: str = "bricks",
        sampler: str | None = None,
        steps: int | None = None,
        still: int | None = None,
        max_episode_steps: int = 1000,
        render_mode: str | None = None,
        device: str = "cpu",
        frame_size: int | None = None,
        num_actions: int | None = None,
        precision: str = "fp32",
        end_on_life_loss: bool = False,
    ):
        if render_mode not in (None, "rgb_array", "human"):
            raise ValueError(
                f"render_mode must be None, 'rgb_array' or 'human', got {render_mode!r}"
            )
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.bundle = load_checked(world, frame_size, num_actions, device, end_on_life_loss)
        self.world = World(self.bundle, self.bundle.sampler(sampler, steps, still), precision)
        self.render_mode, self.max_episode_steps = render_mode, max_episode_steps
        self.end_on_life_loss = end_on_life_loss
        self._go_on = False  # the last episode ended at a lost life: reset() goes on from there
        h, w = self.bundle.frame_size
        self.observation_space = spaces.Box(0, 255, (h, w, 3), np.uint8)
        self.action_space = spaces.Discrete(len(self.bundle.action_meanings))
        self._gen = torch.Generator(self.world.device)
        self._t, self._window = 0, None

    def get_action_meanings(self) -> list[str]:
        return self.bundle.action_meanings

    def get_keys_to_action(self) -> dict[tuple[int, ...], int]:
        return dict(self.bundle.keys_to_action)

    @property
    def sampler(self) -> SamplerConfig:
        return self.world.sampler

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._gen.manual_seed(int(self.np_random.integers(2**62)))
        K = self.bundle.context
        go_on, self._go_on = self._go_on and seed is None and not options, False
        if go_on:
            self._render_human()
            return self.world.observation()[0].cpu().numpy(), {"step": self._t, "life_lost": False}
        if has_context(options):
            frames, actions = check_context(
                options, K, self.bundle.frame_size, int(self.action_space.n)
            )
        else:
            i = int(self.np_random.integers(len(self.bundle.start_frames)))
            frames, actions = self.bundle.start_frames[i], self.bundle.start_actions[i]
        self.world.reset(frames[None], actions[None])
        self._t = 0
        self._render_human()
        return self.world.observation()[0].cpu().numpy(), {"step": 0, "life_lost": False}

    def step(self, action):
        if self.world.actions is None:
            raise ResetNeeded("call reset() before step()")
        if isinstance(action, (bool, np.bool_)) or not self.action_space.contains(action):
            raise ValueError(
                f"action must be an integer in [0, {self.action_space.n}), got {action!r}"
            )
        frames, rewards, ends, lost = self.world.step(torch.tensor([int(action)]), self._gen)
        self._t += 1
        self._render_human()
        truncated = self._t >= self.max_episode_steps
        end, lost = bool(ends[0]), bool(lost[0])
        if self.end_on_life_loss:
            end, go_on = life_loss_end(end, truncated, lost)
            end, self._go_on = bool(end), bool(go_on)
        return (
            frames[0].cpu().numpy(),
            float(rewards[0]),
            end,
            truncated,
            {"step": self._t, "life_lost": lost},
        )

    def render(self):
        if self.render_mode == "rgb_array":
            return self.world.observation()[0].cpu().numpy()
        return None

    def _render_human(self):
        if self.render_mode != "human":
            return
        from worldsim.sim.window import Window

        if self._window is None:
            self._window = Window(self.bundle.frame_size, scale=8, caption="worldsim")
        self._window.show(self.world.observation()[0].cpu().numpy())

    def close(self):
        if self._window is not None:
            self._window.close()
            self._window = None
