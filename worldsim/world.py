"""Drawing next frames with a trained world: the shared core of eval, the env and play."""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from worldsim.models.denoiser import Denoiser
from worldsim.models.samplers import Generators, SamplerConfig, randn, sample
from worldsim.models.world_model import to_uint8, to_unit
from worldsim.runtime import check_precision, keep_freed_memory


def bf16_weights(net: nn.Module) -> nn.Module:
    """A copy of `net` with its convolutions stored in bfloat16: what autocast would cast them
    to on every call, cast once: the same frames, and no per-call weight copies (bf16 batch 1
    went from 60 to 77 frames/s on the 2-core dev CPU). Linear layers stay fp32: the
    denoiser's conditioning path runs them in fp32 without autograd (`UNet.projections`)."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.to(torch.bfloat16)
    return net


@torch.no_grad()
def next_frame(denoiser: Denoiser, obs: torch.Tensor, act: torch.Tensor, sampler: SamplerConfig,
               generator: Generators = None, ctx_noise: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Draw the next frame (B, 3, H, W) in [-1, 1] from obs (B, K, 3, H, W) in [-1, 1] and
    act (B, K), where act[:, -1] is the action being taken now. `ctx_noise` > 0 noises the
    context to that level and says so to the network, as in training (GameNGen)."""
    B, _, C, H, W = obs.shape
    sigma_ctx = torch.full((B,), float(ctx_noise), device=obs.device)
    if ctx_noise > 0:
        obs = obs + ctx_noise * randn(obs.shape, generator, obs.device)
    noise = randn((B, C, H, W), generator, obs.device)

    def denoise(x, sigma):
        return denoiser(x, sigma, obs, act, sigma_ctx)

    return sample(denoise, noise, sampler, generator).clamp(-1, 1)


class Step(NamedTuple):
    """What one step of N dreams gives: frames (N, H, W, 3) uint8, rewards (N,) float, ends
    (N,) bool, and lives_lost (N,) bool (always False when the world does not know lives)."""

    frames: torch.Tensor
    rewards: torch.Tensor
    ends: torch.Tensor
    lives_lost: torch.Tensor


def default_sampler(bundle) -> SamplerConfig:
    """One-step when the world has a student, else the teacher's 3-step Euler."""
    if bundle.student is not None:
        s = bundle.meta["student"]
        return SamplerConfig("onestep", 1, sigma_min=s["sigma_min"], sigma_max=s["sigma_max"])
    return SamplerConfig("euler", 3)


class World:
    """N dreams stepped together by one batched network call per step.

    `precision="bf16"` runs the denoiser and the reward/end model under bfloat16 autocast:
    faster on CPUs with AMX and on GPUs, frames a little off fp32's. (The shipped Bricks
    world's bf16 reward/end model agrees with fp32 on all 19,862 held-out transitions.) They
    run as copies with bfloat16 conv and linear weights, made on first use (for the teacher,
    when a sampler switch first needs it), so autocast does not re-cast them.

    State: the last K frames (N, K, 3, H, W) in [-1, 1] (quantised to uint8 levels, as the
    user sees them) and the K actions that produced them (N, K).
    """

    def __init__(self, bundle, sampler: SamplerConfig | None = None, precision: str = "fp32"):
        self.bundle = bundle
        self.sampler = sampler or default_sampler(bundle)
        self.precision = check_precision(precision)
        if self.sampler.name in ("onestep", "multistep") and bundle.student is None:
            raise ValueError(
                f"sampler {self.sampler.name!r} needs a world with a one-step student; {bundle.path} has none"
            )
        self.model = bundle.model
        self.device = next(self.model.parameters()).device
        if self.device.type == "cpu":
            keep_freed_memory()
        self._bf16: dict[str, nn.Module] = {}  # bfloat16-weight copies, made when first used
        self.frames: torch.Tensor | None = None
        self.actions: torch.Tensor | None = None

    @property
    def denoiser(self) -> Denoiser:
        """The network the sampler evaluates (with bfloat16 weights under precision="bf16")."""
        which = "student" if self.sampler.name in ("onestep", "multistep") else "teacher"
        net = self.bundle.student if which == "student" else self.model.denoiser
        return self._in_precision(which, net)

    @property
    def reward(self) -> nn.Module:
        """The reward/end model (with bfloat16 weights under precision="bf16")."""
        return self._in_precision("reward", self.model.reward)

    def _in_precision(self, which: str, net: nn.Module) -> nn.Module:
        if self.precision == "bf16":
            if which not in self._bf16:
                self._bf16[which] = bf16_weights(net)
            net = self._bf16[which]
        return net

    def reset(
        self, frames: torch.Tensor, actions: torch.Tensor, index: torch.Tensor | None = None
    ) -> None:
        """Set the context of all dreams (or those in `index`): frames (n, K, H, W, 3) uint8,
        actions (n, K) with actions[:, i] the action that produced frames[:, i]."""
        ctx = to_unit(frames.to(self.device).permute(0, 1, 4, 2, 3))
        actions = actions.to(self.device, torch.int64)
        if index is None or self.frames is None:
            self.frames, self.actions = ctx.clone(), actions.clone()
        else:
            self.frames[index], self.actions[index] = ctx, actions

    @torch.no_grad()
    def draw(
        self, obs: torch.Tensor, act: torch.Tensor, generator: Generators = None
    ) -> torch.Tensor:
        """next_frame with this world's denoiser, sampler and precision (fp32 out)."""
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            return next_frame(self.denoiser, obs, act, self.sampler, generator).float()

    @torch.no_grad()
    def step(self, actions: torch.Tensor, generator: Generators = None) -> Step:
        """Advance every dream by one action (N,)."""
        actions = actions.to(self.device, torch.int64)
        act = torch.cat([self.actions[:, 1:], actions[:, None]], dim=1)
        frame = to_uint8(self.draw(self.frames, act, generator))
        nxt = to_unit(frame)  # the context holds what the user sees: uint8 levels
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            r_logits, e_logit, l_logit = self.reward(self.frames, actions, nxt)
        self.frames = torch.cat([self.frames[:, 1:], nxt[:, None]], dim=1)
        self.actions = act
        rewards = self.model.reward_values[r_logits.argmax(dim=1)]
        return Step(frame.permute(0, 2, 3, 1), rewards, e_logit > 0, l_logit > 0)

    def observation(self) -> torch.Tensor:
        """The latest frames (N, H, W, 3) uint8."""
        return to_uint8(self.frames[:, -1]).permute(0, 2, 3, 1)
