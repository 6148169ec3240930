"""N learned worlds stepped by one batched network call: a Gymnasium VectorEnv."""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv

from worldsim.sim.env import check_context, has_context, load_checked
from worldsim.sim.world import World
from worldsim.sim.wrappers import life_loss_end

MAX_ENVS = 65_536
"""Most worlds one vector env steps together (a bound before memory is taken)."""


class WorldModelVectorEnv(VectorEnv):
    """`num_envs` dreams of one world, batched. Env i behaves like a `WorldModelEnv` seeded
    with seed + i and given the same actions. Autoreset: `next_step` (Gymnasium's default)
    or `same_step` (what Stable-Baselines3 expects); final observations of the same-step
    mode are in `infos["final_obs"]`. Arguments as `WorldModelEnv` (but `render_mode` is
    None or `rgb_array`), plus `num_envs`.

    With `end_on_life_loss=True`, an env whose world loses a life (and does not end)
    terminates, and its autoreset goes on from that moment instead of a new start, as
    Atari's EpisodicLifeEnv does; `infos["life_lost"]` says where the world lost a life.
    An explicit `reset()` always starts afresh.

    `starts`: a pool of contexts, frames (N, K, H, W, 3) uint8 and actions (N, K), that new
    episodes start from instead of the world's own starting contexts: moments of real play,
    so that short dreams (`max_episode_steps`) cover the states the game reaches."""

    single_action_space: spaces.Discrete

    def __init__(
        self,
        num_envs: int = 8,
        world: str = "bricks",
        sampler: str | None = None,
        steps: int | None = None,
        still: int | None = None,
        max_episode_steps: int = 1000,
        device: str = "cpu",
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        frame_size: int | None = None,
        num_actions: int | None = None,
        render_mode: str | None = None,
        precision: str = "fp32",
        end_on_life_loss: bool = False,
        starts: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        if not 1 <= num_envs <= MAX_ENVS:
            raise ValueError(f"num_envs must be in [1, {MAX_ENVS}], got {num_envs}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        modes: dict[str | AutoresetMode, str | AutoresetMode] = {
            "next_step": AutoresetMode.NEXT_STEP,
            "same_step": AutoresetMode.SAME_STEP,
        }
        mode = modes.get(autoreset_mode, autoreset_mode)
        if mode not in modes.values():
            raise ValueError(
                f"autoreset_mode must be next_step or same_step, got {autoreset_mode!r}"
            )
        self.metadata = {"autoreset_mode": mode, "render_modes": ["rgb_array"], "render_fps": 15}
        self.bundle = load_checked(world, frame_size, num_actions, device, end_on_life_loss)
        self.end_on_life_loss = end_on_life_loss
        self.start_frames, self.start_actions = (
            (self.bundle.start_frames, self.bundle.start_actions)
            if starts is None
            else check_pool(
                starts,
                self.bundle.context,
                self.bundle.frame_size,
                len(self.bundle.action_meanings),
            )
        )
        self.world = World(self.bundle, self.bundle.sampler(sampler, steps, still), precision)
        self.num_envs, self.max_episode_steps, self.render_mode = (
            num_envs,
            max_episode_steps,
            render_mode,
        )
        h, w = self.bundle.frame_size
        self.single_observation_space = spaces.Box(0, 255, (h, w, 3), np.uint8)
        self.single_action_space = spaces.Discrete(len(self.bundle.action_meanings))
        self.observation_space = spaces.Box(0, 255, (num_envs, h, w, 3), np.uint8)
        self.action_space = spaces.MultiDiscrete(np.full(num_envs, self.single_action_space.n))
        self._rngs = [seeding.np_random(None)[0] for _ in range(num_envs)]
        self._gens = [torch.Generator(self.world.device) for _ in range(num_envs)]
        self._t = np.zeros(num_envs, np.int64)
        self._needs_reset = np.zeros(num_envs, bool)
        self._go_on = np.zeros(num_envs, bool)  # ended at a lost life: autoreset goes on

    def get_action_meanings(self) -> list[str]:
        return self.bundle.action_meanings

    def _start(self, i: int, options: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Seed env i's noise from its np_random and pick its starting context."""
        rng = self._rngs[i]
        self._gens[i].manual_seed(int(rng.integers(2**62)))
        if has_context(options):
            return check_context(
                options,
                self.bundle.context,
                self.bundle.frame_size,
                int(self.single_action_space.n),
            )
        k = int(rng.integers(len(self.start_frames)))
        return self.start_frames[k], self.start_actions[k]

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        if isinstance(seed, (int, np.integer)):
            seed = [int(seed) + i for i in range(self.num_envs)]
        seeds = seed if seed is not None else [None] * self.num_envs
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        for i, s in enumerate(seeds):
            if s is not None:  # unseeded envs go on with their generators (random from __init__)
                self._rngs[i], _ = seeding.np_random(s)
        starts = [self._start(i, options) for i in range(self.num_envs)]
        self.world.reset(torch.stack([f for f, _ in starts]), torch.stack([a for _, a in starts]))
        self._t[:] = 0
        self._needs_reset[:] = False
        self._go_on[:] = False
        return self.world.observation().cpu().numpy(), {}

    def _reset_envs(self, index: np.ndarray) -> None:
        """Autoreset: a new start, or (ended at a lost life) go on with fresh noise seeds."""
        for i in index[self._go_on[index]]:
            self._gens[i].manual_seed(int(self._rngs[i].integers(2**62)))
        index = index[~self._go_on[index]]
        self._go_on[:] = False
        if len(index) == 0:
            return
        starts = [self._start(int(i), None) for i in index]
        idx = torch.as_tensor(index, device=self.world.device)
        self.world.reset(
            torch.stack([f for f, _ in starts]), torch.stack([a for _, a in starts]), idx
        )
        self._t[index] = 0

    def step(self, actions):
        if self.world.actions is None:
            raise ResetNeeded("call reset() before step()")
        actions = np.asarray(actions)
        if (
            actions.shape != (self.num_envs,)
            or not np.issubdtype(actions.dtype, np.integer)
            or not self.action_space.contains(actions.astype(np.int64))
        ):
            raise ValueError(
                f"actions must be {self.num_envs} integers in [0, {self.single_action_space.n}), "
                f"got {actions.tolist()}"
            )
        mode = self.metadata["autoreset_mode"]
        restarted = self._needs_reset.copy() if mode == AutoresetMode.NEXT_STEP else None
        kept = None
        if restarted is not None and (restarted & self._go_on).any():
            # envs going on after a lost life must not move this step: keep their state
            k = torch.from_numpy(restarted & self._go_on).to(self.world.device)
            kept = (k, self.world.save(k))
        frames, rewards, ends, lost = self.world.step(
            torch.from_numpy(actions.astype(np.int64)), self._gens
        )
        if kept is not None:
            self.world.restore(*kept)
        self._t += 1
        obs = frames.cpu().numpy()
        rewards, terms = rewards.cpu().numpy().astype(np.float32), ends.cpu().numpy()
        lost = lost.cpu().numpy()
        truncs = self._t >= self.max_episode_steps
        if mode == AutoresetMode.NEXT_STEP:
            # envs that ended last step start afresh now (their action is ignored)
            if restarted.any():
                self._t[restarted & self._go_on] -= 1  # they did not move
                self._reset_envs(np.flatnonzero(restarted))
                obs[restarted] = self.world.observation()[torch.from_numpy(restarted)].cpu().numpy()
                rewards[restarted], terms[restarted], truncs[restarted] = 0.0, False, False
                lost[restarted] = False
            terms = self._mark_life_ends(terms, truncs, lost)
            self._needs_reset = terms | truncs
            return obs, rewards, terms, truncs, {"life_lost": lost}
        terms = self._mark_life_ends(terms, truncs, lost)
        done = terms | truncs
        infos = {"life_lost": lost}
        if done.any():
            final = np.empty(self.num_envs, dtype=object)  # (N,): a frame where done, else None
            for i in np.flatnonzero(done):
                final[i] = obs[i]
            infos |= {"final_obs": final, "_final_obs": done.copy()}
            self._reset_envs(np.flatnonzero(done))
            obs = self.world.observation().cpu().numpy()
        return obs, rewards, terms, truncs, infos

    def _mark_life_ends(
        self, terms: np.ndarray, truncs: np.ndarray, lost: np.ndarray
    ) -> np.ndarray:
        """The terminations: with end_on_life_loss, envs that lost a life terminate too, and
        those whose game goes on (no end, no truncation) are marked so that their autoreset
        continues from here."""
        if self.end_on_life_loss:
            terms, self._go_on = life_loss_end(terms, truncs, lost)
        return terms

    def render(self):
        return self.world.observation().cpu().numpy() if self.render_mode == "rgb_array" else None


def check_pool(
    starts: tuple[torch.Tensor, torch.Tensor], K: int, size: tuple[int, int], n_actions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a pool of starting contexts: frames (N, K, H, W, 3) uint8, actions (N, K)."""
    frames, actions = (torch.as_tensor(x) for x in starts)
    if frames.dtype != torch.uint8 or tuple(frames.shape[1:]) != (K, *size, 3) or not len(frames):
        raise ValueError(
            f"starts frames must be (N >= 1, {K}, {size[0]}, {size[1]}, 3) uint8, got "
            f"{tuple(frames.shape)} {frames.dtype}"
        )
    if tuple(actions.shape) != (len(frames), K) or actions.is_floating_point():
        raise ValueError(
            f"starts actions must be ({len(frames)}, {K}) integers, got {tuple(actions.shape)} "
            f"{actions.dtype}"
        )
    if int(actions.min()) < 0 or int(actions.max()) >= n_actions:
        raise ValueError(
            f"starts actions must lie in [0, {n_actions}), got "
            f"{int(actions.min())}..{int(actions.max())}"
        )
    return frames, actions.to(torch.int64)
