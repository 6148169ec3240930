"""`worldsim train`: fit the world model (denoiser + reward/end model) to recorded play.

Also runs under torchrun for several processes or machines:
`torchrun --nproc_per_node=N -m worldsim train data=... out=...` (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from worldsim import files
from worldsim.config import to_json
from worldsim.data.segments import Segment, SegmentSampler
from worldsim.data.store import Dataset
from worldsim.files import atomic_write
from worldsim.games import EnvConfig
from worldsim.models.reward import balanced_weight
from worldsim.models.world_model import ModelConfig, WorldModel, to_uint8, to_unit
from worldsim.runtime import (
    TRAIN_PRECISIONS,
    autocast,
    check_precision,
    check_procs,
    resolve_device,
    spread,
    warn_if_bf16_emulated,
)
from worldsim.sim import world_file
from worldsim.training import checkpoint as ckpt

MAX_BATCH = 8192
"""Largest training batch (segments per step per process): a bound before memory is taken."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, then a constant rate."""

    lr: float = 3e-4
    """Peak learning rate."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    warmup: int = 200
    """Steps of linear warm-up (0 = none); a shorter run warms up for a tenth of its planned
    steps instead (under a time budget, the steps the budget is expected to allow)."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this."""
    decay: float = 0.0
    """Share of the run, at its end, over which the rate falls linearly to zero
    (warm-up, stable, decay); the run's end is its steps or its time budget, whichever comes
    first. 0 = a constant rate after the warm-up."""

    def __post_init__(self):
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(
                f"optim.lr and optim.grad_clip must be > 0, got {self.lr}, {self.grad_clip}"
            )
        if not 0 <= self.decay <= 1:
            raise ValueError(f"optim.decay must be in [0, 1], got {self.decay}")
        if self.warmup < 0 or self.weight_decay < 0:
            raise ValueError(
                f"optim.warmup and optim.weight_decay must be >= 0, got {self.warmup}, "
                f"{self.weight_decay}"
            )


@dataclass(frozen=True)
class RunConfig:
    """Run control shared by training and distillation."""

    data: str = "data/bricks"
    """Dataset folder (from `worldsim collect`)."""
    out: str = "runs/bricks"
    """Run folder: checkpoints, samples, log."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer."""
    batch_size: int = 32
    """Segments per step (per process)."""
    steps: int = 20_000
    """Optimizer steps in total."""
    minutes: float = 0.0
    """Wall-clock budget in minutes over the whole run, resumes included; training stops (with
    a checkpoint) when it is spent. 0 = none."""
    ema: float = 0.999
    """Decay per step of the EMA weights (those are what worlds use), once the run is long
    enough: see `ema_rampup`."""
    ema_rampup: float = 0.05
    """EMA ramp-up (EDM's `ema_rampup_ratio`): the EMA's half-life is at most this share of
    the steps so far, so a short run's EMA follows its training instead of staying near
    the initial weights. 0 = the fixed decay `ema` from the first step."""
    eval_every: int = 500
    """Steps between held-out losses."""
    sample_every: int = 1000
    """Steps between PNG sample grids (context | predicted | real)."""
    ckpt_every: int = 500
    """Steps between checkpoints."""
    max_bad_steps: int = 5
    """Steps in a row with a non-finite loss or gradient that are skipped (the weights left
    as they were) before the run stops with an error."""
    seed: int = 0
    """Seeds initialisation, batches and noise."""
    resume: bool = False
    """Continue the run in `out` from its last checkpoint."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    procs: int = 1
    """Processes that train together on this machine, data-parallel, one thread each
    (`batch_size` is per process). On a 2-core CPU the quick model takes about twice the
    steps per minute this way as one process using both cores on the same total batch
    (BENCHMARKS.md, "One process per core"). 0 = one per core on a CPU, one on a GPU. Under
    torchrun: 1."""
    precision: str = "auto"
    """auto (bfloat16 autocast on GPUs and on CPUs with AMX or AVX512-BF16, where it is
    faster; fp32 elsewhere), fp32 or bf16."""

    def __post_init__(self):
        check_precision(self.precision, TRAIN_PRECISIONS)
        for key in (
            "batch_size",
            "steps",
            "eval_every",
            "sample_every",
            "ckpt_every",
            "max_bad_steps",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.batch_size > MAX_BATCH:
            raise ValueError(f"batch_size must be <= {MAX_BATCH}, got {self.batch_size}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if not 0 <= self.ema_rampup <= 1:
            raise ValueError(f"ema_rampup must be in [0, 1], got {self.ema_rampup}")
        if self.minutes < 0:
            raise ValueError(f"minutes must be >= 0 (0 = no budget), got {self.minutes}")
        check_procs(self.procs)


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """Train a world model on a recorded dataset."""

    env: EnvConfig = field(default_factory=EnvConfig)
    """The game the data comes from (names the default folders)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Network sizes."""
    init: str = ""
    """A world folder (or run folder) to start from: its denoiser (which must have this run's
    model config), and its reward/end model when that fits too. Empty = fresh weights."""
    reward_only: bool = False
    """Train only the reward/end model; the denoiser stays as init= gave it (its config too,
    whatever `model.denoiser` says). Minutes on a CPU: e.g. to give a world the lost-life
    output from data recorded with lives, or a better end model."""
    events: float = 0.5
    """Rare events added to each step's batch for the reward/end model alone, as a share of
    `batch_size`: transitions that ended the episode, lost a life or scored, each kind in an
    equal share (`SegmentSampler.sample_events`). Without them a game's rare ends are seen a
    few times a run and its end model predicts noise. The denoiser learns from the plain
    batch only. 0 = none: the reward/end model then learns from that batch, its rare classes
    weighted up instead."""

    drawn: float = 0.0
    """With reward_only=true and init= a world: the share of the reward/end model's next
    frames that are that world's own one-step draws (from the real context and action, its
    sampler and still level) in place of the real ones, labelled with what the real step
    did. The world shows the reward/end model its drawings, not the game's frames; a model
    that only saw real ones reads a digit the world draws a little off as a lost life."""

    def __post_init__(self):
        super().__post_init__()
        if not (math.isfinite(self.drawn) and 0 <= self.drawn <= 1):
            raise ValueError(f"drawn must be in [0, 1], got {self.drawn}")
        if self.drawn and not self.reward_only:
            raise ValueError("drawn > 0 needs reward_only=true and init=<world folder>")
        if not (math.isfinite(self.events) and 0 <= self.events <= 4):
            raise ValueError(f"events must be in [0, 4] (a share of batch_size), got {self.events}")
        if self.reward_only and not self.init:
            raise ValueError("reward_only=true needs init=<world folder> (the denoiser to keep)")


class Trainer:
    """Owns the model, EMA, optimizer, data and RNGs of one run, and their checkpoints."""

    progress_name = "train"
    min_useful_steps = 1000
    """Fewer optimizer steps than this rarely give a world better than copying the last frame."""

    def __init__(self, cfg: RunConfig, model_cfg: ModelConfig | None = None):
        if model_cfg is None:
            if not isinstance(cfg, TrainConfig):
                raise TypeError(f"a {type(cfg).__name__} names no model: give model_cfg")
            model_cfg = cfg.model
            if cfg.reward_only:  # the denoiser is init's, kept as it is: so is its config
                init_cfg = world_file.load_source(cfg.init).model_cfg
                model_cfg = replace(model_cfg, denoiser=init_cfg.denoiser)
        self.cfg, self.model_cfg = cfg, model_cfg
        self.rank, self.world_size = _init_distributed()
        self.device = resolve_device(cfg.device, self.rank)
        if cfg.precision == "bf16":  # (auto takes bf16 only where it is native)
            warn_if_bf16_emulated(self.device)
        self.run = Path(cfg.out)
        self.ds = Dataset.open(cfg.data)
        K = self.model_cfg.denoiser.context
        h = self.horizon()
        self.train_data = SegmentSampler(self.ds, "train", K, h)
        self.test_data = SegmentSampler(self.ds, "test", K, h) if self.ds.entries("test") else None
        self._check_frame_size()
        reward_values = _reward_values(self.train_data)
        if isinstance(cfg, TrainConfig) and cfg.init:
            reward_values = _keep_init_rewards(Path(cfg.init), reward_values)
        torch.manual_seed(cfg.seed)
        self.model = self.build_model(reward_values).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
        )
        self.events = self.train_data.events() if self.n_events else []
        self.drawer = self._drawer()
        self.step = 0
        self.elapsed = 0.0  # seconds of training so far, across resumes
        self.warmup: int | None = None  # a time-budgeted run's warm-up, once decided
        self._prefetch = ThreadPoolExecutor(1, thread_name_prefix="batches")
        self._next: tuple[int, Future] | None = None
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + self.rank)
        self.meta = {
            "kind": "worldsim-run",
            "env_id": self.ds.meta["env_id"],
            "action_meanings": self.ds.action_meanings,
            "frame_size": list(self.ds.frame_size),
            "reward_values": reward_values,
            "model": to_json(self.model_cfg),
            "lives": self.ds.lives,
            "config": to_json(_absolute_paths(cfg)),
        }
        self._start_or_resume()
        self.ddp = self.model
        if self.world_size > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model)

    def _check_frame_size(self):
        h, w = self.ds.frame_size
        m = self.model_cfg.denoiser.unet.downsampling
        if h % m or w % m:
            raise ValueError(f"frame size {h}x{w} must be a multiple of {m} for this U-Net")

    def _start_or_resume(self):
        has_ckpt = (self.run / "latest").exists()
        if self.cfg.resume and has_ckpt:
            self._resume()
        elif has_ckpt:
            raise ValueError(
                f"{self.run} already holds a run; pass resume=true or choose another out="
            )
        elif self.rank == 0:
            self.run.mkdir(parents=True, exist_ok=True)

    def _resume(self) -> None:
        """Load the latest checkpoint; if it is damaged, the newest older one that is not."""
        try:
            self.load(world_file.latest_checkpoint(self.run))
            return
        except files.CheckpointError as e:
            first = e
        for path in world_file.checkpoints_newest_first(self.run):
            try:
                self.load(path)
            except files.CheckpointError:
                continue
            print(
                f"resume: the latest checkpoint cannot be used ({first}); resuming from "
                f"{path.name}",
                file=sys.stderr,
            )
            return
        raise first

    def horizon(self) -> int:
        """Target frames per training segment."""
        return 1

    # --- checkpoints -------------------------------------------------------------------
    def save(self) -> None:
        if self.rank != 0:
            return
        opt_tensors, groups = ckpt.optimizer_tensors(self.opt)
        files = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optim": opt_tensors,
            "rng": {"torch_global": torch.get_rng_state()},
        }
        state = {
            **self.meta,
            "param_groups": groups,
            "elapsed": self.elapsed,
            "warmup": self.warmup,
        }
        ckpt.write_checkpoint(self.run, self.step, files, state)

    def load(self, path: Path) -> None:
        state = files.load_json(path / "state.json")
        for key, kind in (("step", int), ("param_groups", list)):
            if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
                raise files.CheckpointError(
                    f"{path}/state.json: '{key}' is missing or not a {kind.__name__}"
                )
        if state.get("model") != self.meta["model"]:
            raise files.CheckpointError(f"{path}: its model config differs from this run's")
        files.load_weights(self.model, files.load_tensors(path / "model.safetensors"), path)
        files.load_weights(self.ema, files.load_tensors(path / "ema.safetensors"), path)
        ckpt.load_optimizer(
            self.opt, files.load_tensors(path / "optim.safetensors"), state["param_groups"]
        )
        rng = files.load_tensors(path / "rng.safetensors")
        torch.set_rng_state(rng["torch_global"])  # (the noise generator is seeded per step)
        for net in (self.model, self.ema):
            if not all(p.isfinite().all() for p in net.parameters()):
                raise files.CheckpointError(f"{path}: holds non-finite weights")
        self.step = state["step"]
        self.elapsed = float(state.get("elapsed", 0.0))
        self.warmup = state.get("warmup")
        if self.rank == 0:
            _truncate_log(self.run / "log.jsonl", self.step)

    # --- training ----------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up over `warmup_steps()`, then the constant rate, then (with
        `optim.decay`) a linear fall to zero over that share of the run's end."""
        o = self.cfg.optim
        rate = o.lr * min(1.0, (step + 1) / max(self.warmup_steps(), 1))
        if o.decay > 0:
            rate *= min(1.0, max(0.0, (1 - self.progress(step)) / o.decay))
        return rate

    def progress(self, step: int) -> float:
        """Share of the run done at `step`: of its steps, or of its time budget if further."""
        done = step / self.cfg.steps
        if self.cfg.minutes > 0:
            done = max(done, self.elapsed / (60 * self.cfg.minutes))
        return min(done, 1.0)

    def warmup_steps(self) -> int:
        """`optim.warmup`; under a time budget, at most a tenth of the steps the budget is
        expected to allow, decided once the first steps are timed and kept from then on
        (saved with the checkpoints, so a resumed run keeps its schedule)."""
        cfg = self.cfg
        if cfg.minutes <= 0:
            return cfg.optim.warmup
        if self.warmup is None and self.step >= 3:
            self.warmup = min(cfg.optim.warmup, self.planned_steps() // 10)
        return cfg.optim.warmup if self.warmup is None else self.warmup

    def ema_decay_at(self, step: int) -> float:
        """EMA decay for the update after `step` steps: the configured decay, with its
        half-life capped at `ema_rampup` times the steps so far (EDM's training loop)."""
        cfg = self.cfg
        if cfg.ema_rampup <= 0 or cfg.ema == 0:
            return cfg.ema
        halflife = min(math.log(0.5) / math.log(cfg.ema), (step + 1) * cfg.ema_rampup)
        return 0.5 ** (1 / max(halflife, 1e-8))

    def planned_steps(self) -> int:
        """Steps this run will end at: `steps`, or fewer when the time budget is expected to
        run out first (estimated from the time per step so far)."""
        cfg = self.cfg
        if cfg.minutes <= 0 or self.step < 3 or self.elapsed <= 0:
            return cfg.steps
        per_step = self.elapsed / self.step
        left = max(60 * cfg.minutes - self.elapsed, 0.0)
        return min(cfg.steps, self.step + int(left / per_step))

    def _batch(self, step: int):
        """The training batch of `step`: a function of (seed, rank, step) alone, so a resumed
        run sees the same batches; the next one is gathered in a thread meanwhile."""

        def draw(s):
            rng = np.random.default_rng([self.cfg.seed, self.rank, s])
            batch = self.train_data.sample(self.cfg.batch_size, rng)
            if not self.events:
                return batch
            extra = self.train_data.sample_events(self.n_events, rng, self.events)
            return Segment(*(torch.cat(pair) for pair in zip(batch, extra, strict=True)))

        if self._next is not None and self._next[0] == step:
            batch = self._next[1].result()
        else:
            batch = draw(step)
        self._next = (step + 1, self._prefetch.submit(draw, step + 1))
        return batch

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        batch = self._batch(self.step)
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        # the step's noise, like its batch, is a function of (seed, rank, step): every rank of a
        # resumed multi-process run draws what it would have drawn (only rank 0 saves state)
        self.gen.manual_seed(
            int(np.random.default_rng([cfg.seed, self.rank, self.step, 1]).integers(2**62))
        )
        with autocast(self.device, cfg.precision):
            loss, metrics = self.compute_loss(self.ddp, batch, self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        # each network clipped on its own: a rare event's large reward-model gradient does not
        # shrink the denoiser's step
        norms = [torch.nn.utils.clip_grad_norm_(p, cfg.optim.grad_clip) for p in self.clip_groups()]
        metrics["grad_norm"] = float(norms[0])
        if not (math.isfinite(loss.item()) and all(math.isfinite(float(n)) for n in norms)):
            self._skip_bad_step(loss.item(), norms)
            return metrics
        self.bad_steps = 0
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.ema.parameters()),
                list(self.model.parameters()),
                1 - self.ema_decay_at(self.step),
            )
        self.step += 1
        return metrics

    def _skip_bad_step(self, loss: float, norms) -> None:
        """Leave the weights as they are after a non-finite loss or gradient; stop the run
        after `max_bad_steps` such steps in a row (its checkpoints hold finite weights)."""
        self.opt.zero_grad(set_to_none=True)
        self.bad_steps = getattr(self, "bad_steps", 0) + 1
        self.step += 1
        if self.bad_steps > self.cfg.max_bad_steps:
            what = (
                f"loss {loss}"
                if not math.isfinite(loss)
                else f"gradient norm {max(float(n) for n in norms)}"
            )
            raise TrainingError(
                f"step {self.step}: {what} for {self.bad_steps} steps in a row; stopped without "
                f"saving them (the checkpoints in {self.run} hold the last finite weights). A "
                f"learning rate too high (optim.lr={self.cfg.optim.lr:g})?"
            )

    @torch.no_grad()
    def heldout_loss(self, batches: int = 4) -> float:
        if self.test_data is None:
            return float("nan")
        rng, gen = np.random.default_rng(1234), torch.Generator(self.device).manual_seed(1234)
        losses = []
        for _ in range(batches):
            _, m = self.compute_loss(self.ema, self.test_data.sample(self.cfg.batch_size, rng), gen)
            losses.append(m["loss"])
        return float(np.mean(losses))

    def clip_groups(self) -> list[list[torch.nn.Parameter]]:
        """Parameters whose gradient norm is clipped together (the denoiser's first)."""
        parts = (
            [self.model.denoiser, self.model.reward]
            if isinstance(self.model, WorldModel)
            else [self.model]
        )
        return [list(m.parameters()) for m in parts]

    @property
    def train_cfg(self) -> TrainConfig:
        """The config as the `TrainConfig` that this class's own model and loss read (a
        subclass with another config overrides those)."""
        if not isinstance(self.cfg, TrainConfig):
            raise TypeError(f"Trainer needs a TrainConfig, got {type(self.cfg).__name__}")
        return self.cfg

    # --- what a subclass (the distiller) changes -----------------------------------------
    @property
    def n_events(self) -> int:
        """Rare-event transitions added to each batch for the reward/end model (none in a run
        that trains no reward model, such as a distillation)."""
        if not isinstance(self.cfg, TrainConfig):
            return 0
        return round(self.cfg.events * self.cfg.batch_size)

    def build_model(self, reward_values: list[float]) -> torch.nn.Module:
        model = WorldModel(self.model_cfg, len(self.ds.action_meanings), reward_values)
        _, rews, ends, lost = self.train_data.flat
        if not self.n_events:  # no events drawn: weigh the rare classes up instead
            if not self.model_cfg.reward.end_weight:
                model.end_weight = balanced_weight(int(ends.sum()), len(ends))
                model.life_weight = balanced_weight(int(lost.sum()), len(lost))
            classes = model.reward_index(torch.from_numpy(rews).float())
            counts = torch.bincount(classes, minlength=len(reward_values)).tolist()
            model.reward_weight = torch.tensor(  # the zero class stays 1
                [
                    1.0 if v == 0 else balanced_weight(n, len(rews))
                    for v, n in zip(reward_values, counts, strict=True)
                ]
            )
        cfg = self.train_cfg
        if cfg.init:
            _init_from(model, Path(cfg.init), reward_values)
        if cfg.reward_only:
            model.denoiser.requires_grad_(False)
        return model

    def _drawer(self):
        """The init world that draws the reward/end model's next frames (`drawn`), or None."""
        if not isinstance(self.cfg, TrainConfig) or not self.cfg.drawn:
            return None
        from worldsim.sim.world import World

        bundle = world_file.load_world(self.cfg.init, self.device)
        if bundle.student is None:
            raise ValueError(f"drawn > 0 needs a world with a one-step student; {self.cfg.init}")
        return World(bundle)

    def with_drawn(self, obs: torch.Tensor, act: torch.Tensor, gen) -> torch.Tensor:
        """obs (B, K+1, 3, H, W) uint8 with the target frames of a `drawn` share of its rows,
        spread evenly over the plain batch and the events, drawn by the init world from
        their real context and actions."""
        if self.drawer is None:
            return obs
        share, K = self.train_cfg.drawn, self.model_cfg.denoiser.context
        i = torch.arange(len(obs), device=obs.device)
        rows = torch.floor((i + 1) * share) > torch.floor(i * share)
        obs = obs.clone()
        drawn = self.drawer.draw(to_unit(obs[rows, :K]), act[rows, :K], gen)
        obs[rows, K] = to_uint8(drawn)
        return obs

    def compute_loss(self, model, batch, gen) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of a batch of segments under `model` (the DDP-wrapped one, or the EMA)."""
        K, dev = self.model_cfg.denoiser.context, self.device
        return model(
            self.with_drawn(batch.obs.to(dev), batch.act.to(dev), gen),
            batch.act[:, :K].to(dev),
            batch.rew[:, 0].to(dev),
            batch.end[:, 0].to(dev),
            gen,
            life=batch.life[:, 0].to(dev),
            denoiser=not self.train_cfg.reward_only,
            denoise_rows=self.cfg.batch_size,
        )

    def write_samples(self, path: Path) -> None:
        from worldsim.training.samples import write_sample_grid

        ema = cast(WorldModel, self.ema)  # a copy of what build_model made
        write_sample_grid(ema.denoiser, self.test_data or self.train_data, path, self.device)

    def schedule_step(self) -> int:
        """Where a schedule over `steps` stands: the step, or the share of the time budget
        spent (scaled to steps) when that is further along."""
        if self.cfg.minutes <= 0:
            return self.step
        return max(self.step, int(self.cfg.steps * self.elapsed / (60 * self.cfg.minutes)))

    def _warn_if_short(self) -> None:
        """Say how far a time-budgeted run got, and warn when that is too few steps."""
        cfg = self.cfg
        if cfg.minutes <= 0 or self.step >= cfg.steps:
            return
        per_step = self.elapsed / max(self.step, 1)
        print(
            f"{self.run}: {self.step} steps in {self.elapsed / 60:.1f} min ({per_step:.2f} s/step)"
        )
        useful = 100 if isinstance(cfg, TrainConfig) and cfg.reward_only else self.min_useful_steps
        if self.step < useful:
            print(
                f"warning: {self.step} steps are too few for a useful world (aim for at least "
                f"{useful}); is the machine busy? Continue with resume=true and a "
                "larger "
                f"minutes= (now {cfg.minutes:g}), or free the CPU",
                file=sys.stderr,
            )

    def fit(self) -> None:
        """Train until `steps` or the time budget, whichever ends first, with checkpoints."""
        if self.test_data is None and self.rank == 0:
            print(
                f"{self.cfg.data}: no held-out (test) episodes, so no held-out loss; record "
                "with test_fraction > 0 to have one"
            )
        bar = tqdm(
            total=self.planned_steps(),
            initial=self.step,
            desc=self.progress_name,
            unit="step",
            disable=self.rank != 0,
        )
        log = open(self.run / "log.jsonl", "a") if self.rank == 0 else None
        try:
            self._loop(bar, log)
        finally:  # an error is reported on a line of its own, after the bar
            bar.close()
            if log is not None:
                log.close()
        if self.rank == 0:
            self._warn_if_short()

    def _loop(self, bar: tqdm, log) -> None:
        cfg, t0 = self.cfg, time.monotonic() - self.elapsed
        last = time.monotonic()
        while self.step < cfg.steps:
            m = self.train_step()
            now = time.monotonic()
            self.elapsed = now - t0
            m["samples_per_s"] = cfg.batch_size * self.world_size / max(now - last, 1e-9)
            last = now
            if cfg.minutes > 0:  # the total is whichever ends first, steps or time
                bar.total = self.planned_steps()
            bar.update(1)
            bar.set_postfix(
                loss=f"{m['loss']:.4f}",
                rew=f"{m['reward_loss']:.3f}",
                sps=f"{m['samples_per_s']:.0f}",
            )
            out_of_time = cfg.minutes > 0 and now - t0 > 60 * cfg.minutes
            if cfg.minutes > 0 and self.world_size > 1:  # every process stops at the same step
                out_of_time = self._any(out_of_time)
            due = self.step % cfg.eval_every == 0 or self.step == cfg.steps or out_of_time
            if due and self.test_data is not None:
                m["heldout_loss"] = self.heldout_loss()
                if self.rank == 0:
                    bar.write(f"step {self.step}: held-out loss {m['heldout_loss']:.4f}")
            if self.rank == 0 and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                self.write_samples(self.run / "samples" / f"step_{self.step:07d}.png")
            if log is not None:
                log.write(json.dumps({"step": self.step, "time": now - t0, **m}) + "\n")
                log.flush()
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps or out_of_time:
                self.save()
            if out_of_time:
                if self.rank == 0:
                    bar.write(f"time budget of {cfg.minutes} min spent at step {self.step}")
                break

    def _any(self, flag: bool) -> bool:
        """Whether `flag` holds in any of the run's processes."""
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


class TrainingError(ValueError):
    """A run that cannot go on (its loss or gradient stayed non-finite)."""


def _truncate_log(log: Path, step: int) -> None:
    """Drop the log lines of steps after `step` (a resumed run writes them again)."""
    if not log.is_file():
        return
    keep = []
    for line in log.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a crash
    atomic_write(log, lambda f: f.write("".join(x + "\n" for x in keep).encode()))


def _absolute_paths(cfg: RunConfig) -> RunConfig:
    """The config with its folders absolute, so a run folder works from any directory (a
    shipped world's name, as `init=` or `teacher=`, becomes that world's folder)."""
    paths: dict[str, Any] = {}
    for k in ("data", "out", "init", "teacher"):
        value = getattr(cfg, k, "")
        if k in ("init", "teacher") and value and not Path(value).exists():
            value = world_file.resolve(value)  # a shipped world's name
        if value:
            paths[k] = str(Path(value).resolve())
    return replace(cfg, **paths)


def _init_from(model: WorldModel, path: Path, reward_values: list[float]) -> None:
    """Load `model`'s denoiser from a world or run folder, and its reward/end model when its
    layers and reward values match (a lost-life output added or dropped, `end_weight` free);
    a denoiser of another config is refused (the loss's `motion_weight` aside: it changes
    how the run trains, not what the weights mean)."""
    src = world_file.load_source(path)
    other = src.model_cfg
    if other.denoiser.weights_meaning() != model.cfg.denoiser.weights_meaning():
        raise files.CheckpointError(
            f"{path}: its denoiser config differs from this run's model config ({other.denoiser})"
        )
    weights = src.weights()
    part = {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith("denoiser.")}
    files.load_weights(model.denoiser, part, src.weights_path)
    same_reward = other.reward.weights_meaning() == model.cfg.reward.weights_meaning()
    if same_reward and src.meta["reward_values"] == reward_values:
        part = {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith("reward.")}
        part = model.reward.adopt(part, other.reward.life_head)
        files.load_weights(model.reward, part, src.weights_path)
    elif not same_reward:
        print(
            f"init: denoiser from {path}; the reward/end model starts fresh (its config "
            f"{other.reward} differs from this run's {model.cfg.reward})"
        )
    else:
        print(
            f"init: denoiser from {path}; the reward/end model starts fresh (its reward values "
            f"{src.meta['reward_values']} differ from this data's {reward_values})"
        )


def _reward_values(data: SegmentSampler) -> list[float]:
    values = sorted({float(v) for _, rews, *_ in data.small for v in np.unique(rews)} | {0.0})
    if len(values) > 32:
        raise ValueError(
            f"{len(values)} distinct rewards in the data; the reward model handles at most 32"
        )
    return values


def _keep_init_rewards(init: Path, values: list[float]) -> list[float]:
    """The reward values of a fine-tune from `init`: init's own when they hold every value in
    this data (play that never scored some amount keeps the classes the model already has, and
    its reward/end model with them), else this data's."""
    known = world_file.load_source(init).meta["reward_values"]
    return list(known) if set(values) <= set(known) else values


def _init_distributed() -> tuple[int, int]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world_size) if world_size > 1 else (0, 1)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) and return the run folder."""
    if spread(train, cfg):
        return Path(cfg.out)
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return trainer.run
