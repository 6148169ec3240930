"""`worldsim distill`: the one-step head, a consistency-distilled student of the teacher.

Consistency distillation (Song et al. 2023, Algorithm 2) with the recipe of ECT (Geng et
al. 2024): the student starts from the teacher's EMA weights under the consistency
parameterisation (c_skip(sigma_min) = 1, c_out(sigma_min) = 0); targets come from one
teacher ODE step between neighbouring noise levels; the target network is the student
itself without gradient; the pseudo-Huber distance; and the gap between the two levels
shrinks over training as the discretisation doubles.

`target=solve` fine-tunes a student against the teacher's own few-step Euler solution from
the same noisy input instead (Luhman & Luhman 2021), at sigma_max and at the levels the
multistep sampler visits: a closer target when a one-step student lags the teacher's
few-step sampler.

`target=rollout` fine-tunes a student on the real game itself: it first draws up to
`unroll` frames from real context with the real actions, as a world does when played, then
its next frame from that self-drawn context is regressed onto the real frame. This trains
the one-step sampler out of the drift that autoregressive rollouts accumulate (exposure
bias: the teacher and the other targets only ever see real context). Regressing onto real
frames makes the student hedge (blur) wherever the context leaves it unsure: on Bricks it
traded much one-step accuracy for a little at h16 (BENCHMARKS.md), so it is not the default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, cast

import torch
import torch.distributed as dist

from worldsim import files
from worldsim.data.store import DataError, Dataset
from worldsim.models.denoiser import Denoiser
from worldsim.models.loss import motion_weights
from worldsim.models.prepare import prepare
from worldsim.models.samplers import SamplerConfig, karras_sigmas, ode_step, onestep, sample
from worldsim.models.world_model import WorldModel, to_uint8, to_unit
from worldsim.runtime import resolve_precision, spread
from worldsim.sim import world_file
from worldsim.training.train import RunConfig, Trainer

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DistillConfig(RunConfig):
    """Distil a trained world model's denoiser into a one-step consistency student."""

    teacher: str = "runs/bricks"
    """Run folder of the trained teacher (its latest EMA weights), or a world folder."""
    init: str = ""
    """World folder whose student starts this one (to distil further); empty = the teacher."""
    target: Literal["consistency", "solve", "rollout"] = "consistency"
    """consistency: consistency distillation (the student's output at one noise level is pulled
    towards its own, without gradient, one teacher ODE step lower; `solver`, `distance`,
    `n_start`/`n_end`). solve: regress the one-step
    output f(sigma_max z) onto the teacher's own `solve_steps`-step Euler solution from the
    same noise (Luhman & Luhman 2021); a fine-tune (with init=) that aims the one-step
    sampler at what the teacher's few-step sampler draws. rollout: regress the one-step
    output, from context the student drew itself for up to `unroll` steps, onto the real
    frame (a fine-tune, with init=)."""
    solve_steps: int = 3
    """target=solve: Euler steps of the teacher's solution."""
    unroll: int = 8
    """target=rollout: most frames the student draws before the one it is trained on (each
    batch draws a count in [0, unroll]). Segments are unroll + 1 steps long for every batch,
    so episodes shorter than that are left out."""
    solve_multistep: float = 0.5
    """target=solve or rollout: share of batches trained at the noise levels the multistep
    sampler visits (the rest at sigma_max, where the one-step sampler starts), so that both
    samplers keep to the target."""
    solver: Literal["euler", "heun"] = "heun"
    """Teacher ODE step that makes the targets."""
    distance: Literal["pseudo_huber", "l2"] = "pseudo_huber"
    """Distance between student outputs (iCT's pseudo-Huber, or squared L2)."""
    n_start: int = 10
    """Noise levels in the discretisation at the start (large gaps)."""
    n_end: int = 80
    """Noise levels at the end; the count doubles in stages between the two."""
    sigma_min: float = 0.002
    """Smallest noise level (the boundary condition holds here)."""
    sigma_max: float = 5.0
    """Largest noise level: the one-step sampler starts here."""
    rho: float = 7.0
    """Karras schedule curvature."""
    motion_weight: float | None = None
    """Extra weight of the pixels that change from the last context frame in the student's
    loss, as `model.denoiser.motion_weight` weighs the teacher's; empty = the teacher's own."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.solve_multistep <= 1:
            raise ValueError(f"solve_multistep must be in [0, 1], got {self.solve_multistep}")
        if self.unroll < 0:
            raise ValueError(f"unroll must be >= 0, got {self.unroll}")
        if self.solve_steps < 1:
            raise ValueError(f"solve_steps must be >= 1, got {self.solve_steps}")
        mw = self.motion_weight
        if mw is not None and not (math.isfinite(mw) and mw >= 0):
            raise ValueError(f"motion_weight must be empty or a finite number >= 0, got {mw}")
        if not 2 <= self.n_start <= self.n_end:
            raise ValueError(f"need 2 <= n_start <= n_end, got {self.n_start}, {self.n_end}")

    def levels_at(self, step: int) -> int:
        """Discretisation size at a training step: n_start doubling in equal stages to n_end.

        >>> [DistillConfig(steps=100, n_start=10, n_end=40).levels_at(s) for s in (0, 40, 99)]
        [10, 20, 40]
        """
        stages = int(math.log2(self.n_end / self.n_start)) + 1
        return min(self.n_end, self.n_start * 2 ** (step * stages // self.steps))


def pseudo_huber(diff: torch.Tensor) -> torch.Tensor:
    """Per-sample sqrt(|d|^2 + c^2) - c with c = 0.00054 sqrt(dim) (Song & Dhariwal 2023)."""
    dim = diff[0].numel()
    c = 0.00054 * math.sqrt(dim)
    return (diff.flatten(1).pow(2).sum(1) + c**2).sqrt() - c


def distance_of(
    diff: torch.Tensor, distance: str, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample pseudo-Huber or mean squared distance; `weight` (B, 1, H, W) weighs each
    pixel's squared difference (`loss.motion_weights`)."""
    if weight is not None:
        diff = diff * weight.sqrt()
    return pseudo_huber(diff) if distance == "pseudo_huber" else diff.flatten(1).pow(2).mean(1)


def distillation_loss(
    student: DenoiseFn,
    target: DenoiseFn,
    teacher: DenoiseFn,
    x0,
    sigmas,
    generator,
    solver: str = "heun",
    distance: str = "pseudo_huber",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Consistency distillation loss for clean samples x0 on the discretisation `sigmas`
    (descending): d(f(x_t, t), f^-(x_r, r)) / (t - r), with x_r one teacher step from x_t.
    `target` is the student without gradient (iCT/ECT drop the EMA target)."""
    B = x0.shape[0]
    n = torch.randint(0, len(sigmas) - 1, (B,), generator=generator, device=x0.device)
    t, r = sigmas[n], sigmas[n + 1]
    x_t = x0 + t.view(-1, *[1] * (x0.ndim - 1)) * torch.randn(
        x0.shape, generator=generator, device=x0.device
    )
    with torch.no_grad():
        x_r = ode_step(teacher, x_t, t, r, heun=solver == "heun")
        f_r = target(x_r, r)
    diff = student(x_t, t) - f_r
    return (distance_of(diff, distance, weight) / (t - r)).mean()


def solve_loss(
    student: DenoiseFn,
    teacher: DenoiseFn,
    x0,
    sampler: SamplerConfig,
    generator,
    distance: str = "pseudo_huber",
    level: float | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """d(f(x, s), the teacher's ODE solution from (x, s)) with the teacher's solver `sampler`.
    By default s = sigma_max and x = sigma_max z for fresh unit noise z, as the one-step
    sampler starts; with `level`, s = level and x = x0 + level z, the data noised to a level
    the multistep sampler visits. The boundary condition at sigma_min is untouched."""
    z = torch.randn(x0.shape, generator=generator, device=x0.device)
    if level is not None and level < sampler.sigma_max:
        sampler = replace(sampler, sigma_max=level)
        z = x0 / level + z  # the sampler starts from z * level = x0 + level * noise
    with torch.no_grad():
        target = sample(teacher, z, sampler).clamp(-1, 1).float()
    diff = onestep(student, z, sampler.sigma_max).float() - target
    return distance_of(diff, distance, weight).mean()


def rollout_loss(
    student: Callable,
    frames,
    act,
    K: int,
    unroll: int,
    sampler: SamplerConfig,
    generator,
    distance: str = "pseudo_huber",
    level: float | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """d(f(x, s | context the student drew), the real frame). `student(x, s, ctx, act)`;
    frames (B, K+unroll+1, 3, H, W) in [-1, 1]; act (B, K+unroll) with act[:, i] the action
    taken at frame i. The student draws `unroll` frames one step at a time from the K real
    ones (no gradient; rounded to uint8 as a world's frames are), then its next frame from
    that context is compared with the real one. x and s as in `solve_loss`; `weight` as in
    `distance_of`."""
    ctx, dev = frames[:, :K], frames.device
    with torch.no_grad():
        for t in range(unroll):
            z = torch.randn(frames[:, 0].shape, generator=generator, device=dev)

            def draw(x: torch.Tensor, s: torch.Tensor, c=ctx, a=act[:, t : t + K]) -> torch.Tensor:
                return student(x, s, c, a)

            nxt = onestep(draw, z, sampler.sigma_max)
            ctx = torch.cat([ctx[:, 1:], to_unit(to_uint8(nxt.float()))[:, None]], dim=1)
    x0 = frames[:, K + unroll]
    z = torch.randn(x0.shape, generator=generator, device=dev)
    if level is not None and level < sampler.sigma_max:
        sampler = replace(sampler, sigma_max=level)
        z = x0 / level + z
    a = act[:, unroll : unroll + K]
    diff = onestep(lambda x, s: student(x, s, ctx, a), z, sampler.sigma_max).float() - x0
    return distance_of(diff, distance, weight).mean()


def multistep_levels(cfg: DistillConfig, steps=(2, 3, 4)) -> list[float]:
    """The noise levels below sigma_max that the 2-4 step consistency samplers visit.

    >>> [round(s, 3) for s in multistep_levels(DistillConfig(), steps=(2,))]
    [0.283]
    """
    levels = {
        round(float(s), 6)
        for k in steps
        for s in karras_sigmas(k + 1, cfg.sigma_min, cfg.sigma_max, cfg.rho)[1:-1]
    }
    return sorted(levels, reverse=True)


class Distiller(Trainer):
    """Trains the student with the Trainer's loop, checkpoints and resume."""

    cfg: DistillConfig
    progress_name = "distill"
    min_useful_steps = 100  # (it starts from the teacher: a short distillation still helps)

    def __init__(self, cfg: DistillConfig):
        self.source = world_file.load_source(cfg.teacher)
        if not cfg.data:
            cfg = replace(cfg, data=self.source.data)
        game, teacher_game = Dataset.open(cfg.data).meta.get("env_id"), self.source.meta["env_id"]
        if game != teacher_game:  # checked before a run folder or a model is made
            raise DataError(
                f"{cfg.data}: recorded from {game}, not the teacher's game {teacher_game} "
                "(data= must come from the teacher's game)"
            )
        super().__init__(cfg, self.source.model_cfg)
        self.meta["teacher"] = {
            "run": str(Path(cfg.teacher).resolve()),
            "step": self.source.step,
            "init": cfg.init or None,
        }
        self.meta["reward_values"] = self.source.meta["reward_values"]
        self.levels = multistep_levels(self.cfg)  # where solve/rollout train the multistep sampler
        mw = cfg.motion_weight
        self.motion_weight = self.model_cfg.denoiser.motion_weight if mw is None else mw

    def horizon(self) -> int:
        """target=rollout trains on segments of unroll + 1 target frames."""
        return self.cfg.unroll + 1 if self.cfg.target == "rollout" else 1

    def build_model(self, reward_values: list[float]) -> torch.nn.Module:
        st = self.source.meta
        teacher = WorldModel(self.model_cfg, len(st["action_meanings"]), st["reward_values"])
        files.load_weights(teacher, self.source.weights(), self.source.weights_path)
        # frozen, so prepared once for inference in the run's precision
        precision = resolve_precision(self.device, self.cfg.precision)
        self.teacher = prepare(teacher.denoiser.to(self.device), precision)
        student = Denoiser(
            self.model_cfg.denoiser, len(st["action_meanings"]), parameterization="consistency"
        )
        student.load_state_dict(teacher.denoiser.state_dict())  # start from the teacher's EMA
        if self.cfg.init:
            path = world_file.load_source(self.cfg.init).student_path
            weights = {k: v.float() for k, v in files.load_tensors(path).items()}
            files.load_weights(student, weights, path)
        return student

    def compute_loss(self, model, batch, gen) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, K, dev = self.cfg, self.model_cfg.denoiser.context, self.device
        zero = torch.zeros(len(batch.obs), device=dev)  # no context noise
        level = None
        if cfg.target in ("solve", "rollout"):
            if torch.rand((), generator=gen, device=dev).item() < cfg.solve_multistep:
                i = int(torch.randint(len(self.levels), (), generator=gen, device=dev))
                level = self.levels[i]
        if cfg.target == "rollout":
            u = int(torch.randint(cfg.unroll + 1, (), generator=gen, device=dev))
            frames = to_unit(batch.obs[:, : K + u + 1].to(dev))
            # the real target frame against the real frame before it
            weight = motion_weights(frames[:, -1], frames[:, -2], self.motion_weight)
            sampler = SamplerConfig("onestep", 1, cfg.sigma_min, cfg.sigma_max, cfg.rho)
            loss = rollout_loss(
                lambda x, s, c, a: model(x, s, c, a, zero),
                frames,
                batch.act[:, : K + u].to(dev),
                K,
                u,
                sampler,
                gen,
                cfg.distance,
                level,
                weight,
            )
            return loss, {"loss": loss.item(), "reward_loss": 0.0}
        frames = to_unit(batch.obs[:, : K + 1].to(dev))
        ctx, x0, act = frames[:, :K], frames[:, K], batch.act[:, :K].to(dev)
        weight = motion_weights(x0, ctx[:, -1], self.motion_weight)
        if cfg.target == "solve":
            solver = SamplerConfig("euler", cfg.solve_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
            loss = solve_loss(
                lambda x, s: model(x, s, ctx, act, zero),
                lambda x, s: self.teacher(x, s, ctx, act, zero),
                x0,
                solver,
                gen,
                cfg.distance,
                level,
                weight,
            )
            return loss, {"loss": loss.item(), "reward_loss": 0.0}
        target_net = self.model if model is self.ddp else model  # no gradient through the target
        sigmas = karras_sigmas(
            cfg.levels_at(self.schedule_step()), cfg.sigma_min, cfg.sigma_max, cfg.rho
        ).to(dev)
        loss = distillation_loss(
            lambda x, s: model(x, s, ctx, act, zero),
            lambda x, s: target_net(x, s, ctx, act, zero),
            lambda x, s: self.teacher(x, s, ctx, act, zero),
            x0,
            sigmas,
            gen,
            cfg.solver,
            cfg.distance,
            weight,
        )
        return loss, {"loss": loss.item(), "reward_loss": 0.0}

    def write_samples(self, path: Path) -> None:
        from worldsim.training.samples import write_sample_grid

        sampler = SamplerConfig(
            "onestep", sigma_min=self.cfg.sigma_min, sigma_max=self.cfg.sigma_max
        )
        ema = cast(Denoiser, self.ema)  # a copy of the student build_model made
        write_sample_grid(ema, self.test_data or self.train_data, path, self.device, sampler)


def distill(cfg: DistillConfig) -> Path:
    if not spread(distill, cfg):
        try:
            Distiller(cfg).fit()
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    return Path(cfg.out)
