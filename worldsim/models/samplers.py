"""Samplers: draw x0 given a denoiser closure `denoise(x, sigma) -> x0` and unit noise.

As in k-diffusion's `sampling.py`, each sampler takes the noise levels it visits
(`sampler_sigmas(cfg)`), and the ODE samplers and the distillation's teacher share one step
function, `ode_step`. `sample(denoise, noise, cfg)` picks the sampler `cfg` names; the
consistency samplers of the one-step head slot in beside Euler and Heun.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

MAX_STEPS = 1000
"""Most network evaluations a sampler may take per frame (EDM's best samplers use < 100)."""

SamplerName = Literal["euler", "heun", "onestep", "multistep"]
SAMPLER_NAMES: tuple[SamplerName, ...] = ("euler", "heun", "onestep", "multistep")

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | list[torch.Generator] | None


def randn(shape, generator: Generators = None, device=None, dtype=None) -> torch.Tensor:
    """Standard normal noise; with a list of generators, row i is drawn from generator i, so
    each member of a batch gets the same noise it would get alone.

    >>> gs = [torch.Generator().manual_seed(s) for s in (1, 2)]
    >>> both = randn((2, 3), gs)
    >>> torch.equal(both[1], randn((1, 3), torch.Generator().manual_seed(2))[0])
    True
    """
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        out = torch.empty(shape, device=device, dtype=dtype)
        for row, g in zip(out, generator, strict=True):  # randn is empty().normal_(): same draws
            row.normal_(generator=g)
        return out
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


DEFAULT_STILL = 8
"""`SamplerConfig.still` of a world that did not choose its own."""


@dataclass(frozen=True)
class SamplerConfig:
    """How a frame is drawn."""

    name: SamplerName = "euler"
    """euler/heun: ODE solvers on the teacher; onestep/multistep: the consistency student."""
    steps: int = 3
    """Network evaluations (heun uses 2 per step but the last); onestep ignores it."""
    sigma_min: float = 0.002
    """Smallest noise level of the schedule."""
    sigma_max: float = 5.0
    """Starting noise level."""
    rho: float = 7.0
    """Karras schedule curvature."""
    still: int | None = None
    """A pixel of the drawn frame whose colours all lie within this many uint8 levels of the
    last frame's keeps the last frame's pixel (0 = off), where a world draws frames (env,
    play, eval): the faint noise a sampler leaves on a background that does not move is not
    drawn, so it cannot pile up over long play. A change the game itself makes that small in
    one step is held back too. (Training targets are drawn without it.) Empty = the world's
    own level, chosen on its training play when it was bundled (`DEFAULT_STILL` for worlds
    bundled before)."""

    def __post_init__(self):
        if self.still is not None and not 0 <= self.still <= 255:
            raise ValueError(f"sampler.still must be in [0, 255] uint8 levels, got {self.still}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"sampler.steps must be in [1, {MAX_STEPS}], got {self.steps}")
        if not (math.isfinite(self.sigma_max) and math.isfinite(self.rho) and self.rho > 0):
            raise ValueError(
                f"sampler sigma_max and rho must be finite (rho > 0), got {self.sigma_max}, "
                f"{self.rho}"
            )
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )

    @property
    def uses_student(self) -> bool:
        """Whether this sampler runs the one-step student (else the teacher)."""
        return self.name in ("onestep", "multistep")

    @property
    def evaluations(self) -> int:
        """Network evaluations per frame."""
        if self.name == "onestep":
            return 1
        return 2 * self.steps - 1 if self.name == "heun" else self.steps


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """Noise levels of Karras et al. 2022, eq. 5, from sigma_max down to sigma_min.

    >>> [round(s, 4) for s in karras_sigmas(3, 0.002, 5.0, 7.0).tolist()]
    [5.0, 0.2831, 0.002]
    >>> karras_sigmas(1, 0.002, 5.0, 7.0).tolist()
    [5.0]
    """
    if steps == 1:
        return torch.tensor([sigma_max])
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_rho = 1 / rho
    sigmas = (sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact endpoints, free of rounding
    return sigmas.float()


def _full(x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)


def ode_step(
    denoise: DenoiseFn, x: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor, heun: bool = False
) -> torch.Tensor:
    """One step of the probability-flow ODE from level `s` down to `s_next` (Karras et al.
    2022, Algorithm 1): Euler, or with `heun` its second-order correction (skipped where
    `s_next` is 0). The levels are one for the batch (0-d) or one per sample (B,). Every
    sampler and the distillation's teacher take their steps here."""
    if s.ndim:  # one level per sample: broadcast over the frame
        shape = (-1, *[1] * (x.ndim - 1))
        sb, nb, s_in, n_in = s.view(shape), s_next.view(shape), s, s_next
    else:
        sb, nb, s_in, n_in = s, s_next, _full(x, s), _full(x, s_next)
    d = (x - denoise(x, s_in)) / sb
    x_next = x + (nb - sb) * d
    if heun and bool((s_next > 0).all()):
        d_next = (x_next - denoise(x_next, n_in)) / nb
        x_next = x + (nb - sb) * (d + d_next) / 2
    return x_next


def sampler_sigmas(cfg: SamplerConfig) -> torch.Tensor:
    """The noise levels a sampler visits, from where it starts.

    ODE samplers (euler, heun): `steps` Karras levels, then 0 (the last step jumps to the
    clean frame). onestep: sigma_max alone. multistep: the `steps` levels it denoises from.

    >>> [round(s, 4) for s in sampler_sigmas(SamplerConfig("euler", 2)).tolist()]
    [5.0, 0.002, 0.0]
    >>> sampler_sigmas(SamplerConfig("onestep", 1)).tolist()
    [5.0]
    """
    if cfg.name == "onestep":
        return torch.tensor([cfg.sigma_max])
    if cfg.name == "multistep":
        return karras_sigmas(cfg.steps + 1, cfg.sigma_min, cfg.sigma_max, cfg.rho)[:-1]
    return torch.cat(
        [karras_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho), torch.zeros(1)]
    )


def euler(denoise: DenoiseFn, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Euler on the probability-flow ODE through `sigmas` (ending at 0, so 1 step is
    x0 = D(sigma_max z))."""
    x = noise * sigmas[0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = ode_step(denoise, x, s, s_next)
    return x


def heun(denoise: DenoiseFn, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Heun's second-order method through `sigmas` (Karras et al. 2022, deterministic)."""
    x = noise * sigmas[0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = ode_step(denoise, x, s, s_next, heun=True)
    return x


def onestep(denoise: DenoiseFn, noise: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """One-step consistency sampling (Song et al. 2023, Algorithm 1): x = f(sigma_max z)."""
    return denoise(noise * sigma_max, _full(noise, sigma_max))


def multistep(
    denoise: DenoiseFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    sigma_min: float,
    draw: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): denoise from
    sigmas[0], re-noise to the next level with fresh noise `draw(x)`, denoise again."""
    x = onestep(denoise, noise, float(sigmas[0]))
    for s in sigmas[1:]:
        x_s = x + (s**2 - sigma_min**2).sqrt() * draw(x)
        x = denoise(x_s, _full(x, s))
    return x


def sample(
    denoise: DenoiseFn,
    noise: torch.Tensor,
    cfg: SamplerConfig,
    generator: Generators = None,
    draw: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Draw x0 with the sampler `cfg.name`. Samplers that re-noise (multistep) take fresh
    noise shaped like x from `draw(x)`: by default `randn` from `generator`; a caller whose
    x is laid out differently (`World`'s packed frames) draws it as its plain frames would.

    >>> x0 = torch.full((1, 3, 4, 4), 0.25)
    >>> perfect = lambda x, sigma: x0  # an oracle denoiser
    >>> bool(torch.allclose(sample(perfect, torch.randn(1, 3, 4, 4), SamplerConfig("heun", 5)), x0))
    True
    """
    if draw is None:

        def draw(x):
            return randn(x.shape, generator, x.device, x.dtype)

    sigmas = sampler_sigmas(cfg)
    if cfg.name == "onestep":
        return onestep(denoise, noise, cfg.sigma_max)
    if cfg.name == "multistep":
        return multistep(denoise, noise, sigmas, cfg.sigma_min, draw)
    return (heun if cfg.name == "heun" else euler)(denoise, noise, sigmas)
