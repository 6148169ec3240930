"""Drawing next frames with a trained world: the shared core of eval, the env and play."""

from __future__ import annotations

from typing import NamedTuple, cast

import torch
from torch import nn

from worldsim.models.denoiser import Denoiser, DenoiserConfig
from worldsim.models.prepare import prepare
from worldsim.models.samplers import DEFAULT_STILL, Generators, SamplerConfig, randn, sample
from worldsim.models.unet import pack, unpack
from worldsim.models.world_model import to_uint8, to_unit
from worldsim.runtime import check_precision, keep_freed_memory, warn_if_bf16_emulated


class Sampler:
    """A sampler bound to the network it evaluates (as DIAMOND's `DiffusionSampler`: a
    `Denoiser`, or one `prepare`d): draws next frames from context frames and actions.

    `sampler(obs, act)` draws the next frame (B, 3, H, W) in [-1, 1] from obs (B, K, 3, H, W)
    in [-1, 1] and act (B, K), where act[:, -1] is the action being taken now. `ctx_noise`
    > 0 noises the context to that level and says so to the network, as in training
    (GameNGen). `packed`: obs comes, and the frame goes, `pack`ed by the network's stem r:
    (B, K*3*r*r, H/r, W/r) and (B, 3*r*r, H/r, W/r) (`World`'s state); every noise is drawn
    as for plain frames, then packed, so the frames are the plain path's up to rounding.
    """

    def __init__(self, denoiser: Denoiser | nn.Module, cfg: SamplerConfig):
        self.denoiser, self.cfg = denoiser, cfg

    @torch.no_grad()
    def __call__(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        generator: Generators = None,
        ctx_noise: float = 0.0,
        packed: bool = False,
    ) -> torch.Tensor:
        B = obs.shape[0]
        r = cast(DenoiserConfig, self.denoiser.cfg).unet.stem  # a Denoiser's or a prepared one's
        C, H, W = (3, obs.shape[-2] * r, obs.shape[-1] * r) if packed else obs.shape[-3:]

        def draw(x=None, channels=C):
            """Standard noise for a frame (or the context), drawn as for plain frames."""
            z = randn((B, channels, H, W), generator, obs.device)
            return pack(z, r) if packed else z

        last = obs[:, -C * r * r :] if packed else obs[:, -1]  # before any context noise
        sigma_ctx = torch.full((B,), float(ctx_noise), device=obs.device)
        if ctx_noise > 0:
            z = draw(channels=obs.shape[1] // r**2 if packed else obs.shape[1] * C)
            obs = (obs + ctx_noise * z.view(obs.shape)).to(obs.dtype)
        noise = draw()

        def denoise(x, sigma):
            return self.denoiser(x, sigma, obs, act, sigma_ctx, packed=packed)

        x = sample(denoise, noise, self.cfg, generator, draw).clamp(-1, 1)
        still = DEFAULT_STILL if self.cfg.still is None else self.cfg.still
        if still:
            x = keep_still(x, last, still, packed)
        return x


def keep_still(x: torch.Tensor, last: torch.Tensor, levels: int, packed: bool) -> torch.Tensor:
    """Frames x (B, 3, H, W) in [-1, 1] (or `pack`ed) with every pixel whose three colour
    values all lie within `levels` uint8 levels of `last`'s set to `last`'s pixel (whole
    pixels, so that an object drawn in a new place keeps its colour).

    >>> last = torch.zeros(1, 3, 1, 2)
    >>> x = torch.tensor([[[[0.02, 0.5]], [[0.0, 0.02]], [[0.0, 0.0]]]])  # 2.5 and 64 levels
    >>> keep_still(x, last, 4, packed=False)[0, :, 0].tolist()
    [[0.0, 0.5], [0.0, 0.019999999552965164], [0.0, 0.0]]
    """
    xs, ls = x.unflatten(1, (3, -1)), last.to(x.dtype).unflatten(1, (3, -1))  # colour first
    # [-1, 1] spans 255 levels; a value within levels + 1/2 rounds to at most `levels` away
    near = (xs - ls).abs().amax(1, keepdim=True) <= (levels + 0.5) / 127.5
    out = torch.where(near, ls, xs).flatten(1, 2)
    return out.contiguous(memory_format=torch.channels_last) if packed else out


class Step(NamedTuple):
    """What one step of N dreams gives: frames (N, H, W, 3) uint8, rewards (N,) float, ends
    (N,) bool, and lives_lost (N,) bool (always False when the world does not know lives)."""

    frames: torch.Tensor
    rewards: torch.Tensor
    ends: torch.Tensor
    lives_lost: torch.Tensor


class World:
    """N dreams stepped together by one batched network call per step.

    The networks run `prepare`d in this world's precision: frozen inference copies, made
    once (the teacher's when a sampler first needs it). `precision="bf16"` runs them in
    bfloat16: faster on CPUs with AMX and on GPUs, frames a little off fp32's. (The shipped
    Bricks world's bf16 reward/end model agrees with fp32 on all 19,862 held-out
    transitions.) The bundle's networks are left as they are; a world made before their
    weights change keeps the weights it was made with.

    State: the last K frames, quantised to uint8 levels as the user sees them, and the K
    actions that produced them (`actions`, (N, K)). The frames are kept the way the network
    reads them, `pack`ed by its stem in the precision it runs in, so that a step adds one
    packed frame instead of re-laying-out the whole context twice (for the denoiser and the
    reward model); `frames` gives them as (N, K, 3, H, W) in [-1, 1].
    """

    def __init__(self, bundle, sampler: SamplerConfig | None = None, precision: str = "fp32"):
        self.bundle = bundle
        self.precision = check_precision(precision)
        self.model = bundle.model
        self.device = next(self.model.parameters()).device
        if self.device.type == "cpu":
            keep_freed_memory()
        if self.precision == "bf16":
            warn_if_bf16_emulated(self.device)
        self._prepared: dict[str, nn.Module] = {}  # by role: teacher, student
        self.reward = prepare(self.model.reward, self.precision)
        """The reward/end model, prepared."""
        self._r = bundle.model.denoiser.cfg.unet.stem
        # bf16 context where the network reads it in bf16 anyway; a residual denoiser also
        # adds its last frame to the output, which must stay exact
        residual = bundle.model.denoiser.cfg.residual
        self._dtype = torch.bfloat16 if self.precision == "bf16" and not residual else torch.float32
        # logit thresholds of the end and lost-life predictions, read once (not per step)
        self._end_at, self._life_at = bundle.thresholds["end"], bundle.thresholds["life"]
        self._ctx: torch.Tensor | None = None  # (N, K*3*r*r, H/r, W/r), `pack`ed frames
        self.actions: torch.Tensor | None = None
        self.sampler = sampler or bundle.sampler()

    @property
    def sampler(self) -> SamplerConfig:
        """How frames are drawn; setting it binds the sampler to its network (student or
        teacher), prepared in this world's precision the first time it is bound."""
        return self._sampler.cfg

    @sampler.setter
    def sampler(self, cfg: SamplerConfig) -> None:
        cfg = self.bundle.fit_sampler(cfg)
        which = "student" if cfg.uses_student else "teacher"
        if which not in self._prepared:
            self._prepared[which] = prepare(self.bundle.denoiser_for(cfg), self.precision)
        self._sampler = Sampler(self._prepared[which], cfg)

    @property
    def frames(self) -> torch.Tensor | None:
        """The context frames (N, K, 3, H, W) in [-1, 1] (a copy; None before `reset`)."""
        if self._ctx is None:
            return None
        x = to_unit(self._levels(self._ctx))  # exact uint8 levels
        return x.view(x.shape[0], -1, 3, *x.shape[-2:])

    def _levels(self, packed: torch.Tensor) -> torch.Tensor:
        """Packed frames of the context -> uint8 (N, C, H, W)."""
        return to_uint8(unpack(packed.float(), self._r))

    def _state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The packed context and the actions; the world must have been `reset`."""
        if self._ctx is None or self.actions is None:
            raise RuntimeError("the world has no state yet: reset it first")
        return self._ctx, self.actions

    def save(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of the state of the dreams in `index` (for `restore`)."""
        ctx, actions = self._state()
        return ctx[index], actions[index]  # (indexing copies)

    def restore(self, index: torch.Tensor, saved: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Put back the state `save` took of the dreams in `index`."""
        ctx, actions = self._state()
        ctx[index], actions[index] = saved

    @property
    def denoiser(self) -> nn.Module:
        """The network the sampler evaluates, prepared."""
        return self._sampler.denoiser

    def reset(
        self, frames: torch.Tensor, actions: torch.Tensor, index: torch.Tensor | None = None
    ) -> None:
        """Set the context of all dreams (or those in `index`): frames (n, K, H, W, 3) uint8,
        actions (n, K) with actions[:, i] the action that produced frames[:, i]."""
        n, K, H, W, C = frames.shape
        x = frames.to(self.device).permute(0, 1, 4, 2, 3).reshape(n, K * C, H, W)
        ctx = pack(to_unit(x), self._r, self._dtype)
        actions = actions.to(self.device, torch.int64)
        if index is None or self._ctx is None:
            self._ctx, self.actions = ctx, actions.clone()
        else:
            old_ctx, old_actions = self._state()
            old_ctx[index], old_actions[index] = ctx, actions

    @torch.no_grad()
    def draw(
        self, obs: torch.Tensor, act: torch.Tensor, generator: Generators = None
    ) -> torch.Tensor:
        """The next frames of plain (unpacked) context, with this world's sampler and
        precision (fp32 out)."""
        return self._sampler(obs, act, generator).float()

    @torch.no_grad()
    def step(self, actions: torch.Tensor, generator: Generators = None) -> Step:
        """Advance every dream by one action (N,)."""
        ctx, prev = self._state()
        actions = actions.to(self.device, torch.int64)
        act = torch.cat([prev[:, 1:], actions[:, None]], dim=1)
        x = self._sampler(ctx, act, generator, packed=True)
        frame = to_uint8(x.float())  # packed
        nxt = to_unit(frame).to(self._dtype)  # what the user sees: uint8 levels
        r_logits, e_logit, l_logit = self.reward(ctx, actions, nxt, packed=self._r)
        self._ctx = torch.cat([ctx[:, nxt.shape[1] :], nxt], dim=1)
        self.actions = act
        rewards = self.model.reward_values[r_logits.argmax(dim=1)]
        frames = unpack(frame, self._r).permute(0, 2, 3, 1)
        return Step(frames, rewards, e_logit > self._end_at, l_logit > self._life_at)

    def observation(self) -> torch.Tensor:
        """The latest frames (N, H, W, 3) uint8."""
        return self._levels(self._state()[0][:, -3 * self._r**2 :]).permute(0, 2, 3, 1)
