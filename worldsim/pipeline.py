"""`worldsim pipeline`: one command from a game to a playable world.

collect -> train -> distill -> bundle -> fit the reward/end model to the world's drawings ->
eval, in one folder. Each stage is skipped when
its output is already complete and resumed when it was interrupted, so re-running the same
command after a crash picks up where it stopped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from worldsim import files
from worldsim.data.store import DataError, Dataset
from worldsim.games import EnvConfig
from worldsim.models.reward import RewardConfig
from worldsim.models.world_model import ModelConfig
from worldsim.policies import PolicyConfig
from worldsim.runtime import check_procs
from worldsim.sim import world_file


@dataclass(frozen=True)
class PresetConfig:
    """How big each stage is."""

    collect_steps: int = 30_000
    """Steps of recorded play."""
    test_fraction: float = 0.1
    """Share of episodes held out for evaluation."""
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(reward=RewardConfig(life_head=True))
    )
    """World model size (the reward/end model also learns lost lives)."""
    batch_size: int = 32
    """Training (and distillation) batch size, per process."""
    procs: int = 0
    """Processes that train (and distil) together, one thread each: 0 = one per core on a
    CPU, one on a GPU (`worldsim train --help`, procs)."""
    lr: float = 3e-4
    """Teacher learning rate."""
    lr_decay: float = 0.0
    """Share of the teacher's run, at its end, over which its rate falls to zero."""
    train_steps: int = 100_000
    """Teacher training steps (the time budget usually ends it first)."""
    train_minutes: float = 8.0
    """Teacher training time budget."""
    distill_steps: int = 100_000
    """Student distillation steps (the time budget usually ends it first)."""
    distill_minutes: float = 2.0
    """Student distillation time budget."""
    reward_steps: int = 100_000
    """Steps of the reward/end model's fit to the bundled world's own drawings (`worldsim
    train reward_only=true drawn=0.5`: the world shows it drawings, not the game's frames)."""
    reward_minutes: float = 1.5
    """Its time budget; 0 skips the stage."""
    eval_starts: int = 8
    """Held-out starts scored by eval."""
    eval_horizon: int = 16
    """Autoregressive horizon of eval."""
    eval_long_play: int = 200
    """Steps of free play eval checks for realism (and the rules, for Bricks)."""

    def __post_init__(self):  # checked here, not hours later when the stage starts
        for key in (
            "collect_steps",
            "batch_size",
            "train_steps",
            "distill_steps",
            "reward_steps",
            "eval_starts",
            "eval_horizon",
            "eval_long_play",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"preset.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("train_minutes", "distill_minutes", "reward_minutes"):
            if getattr(self, key) < 0:
                raise ValueError(
                    f"preset.{key} must be >= 0 (0 = no budget), got {getattr(self, key)}"
                )
        check_procs(self.procs, "preset.procs")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"preset.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.lr <= 0:
            raise ValueError(f"preset.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class PipelineConfig:
    """Collect, train, distill, bundle and eval a world for a game."""

    env: EnvConfig = field(default_factory=EnvConfig)
    """The game (env=bricks|maze|gym|atari)."""
    preset: PresetConfig = field(default_factory=PresetConfig)
    """Stage sizes (preset=quick|full)."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The behaviour policy that plays the game for the data (policy.name=auto: the game's
    scripted autopilot where it has one, else sticky-random play)."""
    name: Literal["quick", "full", "custom"] = "custom"
    """Name of the preset (set by preset=...)."""
    root: str = ""
    """Folder holding data/, teacher/, student/, reward/, world/ (and world/eval/); empty =
    pipelines/<game>-<preset>, e.g. pipelines/pong-quick for env=atari env.id=Pong."""
    seed: int = 0
    """Seeds every stage."""
    device: str = "auto"
    """Where training, distillation and eval run: cpu, cuda, or auto (cuda when available)."""


def _complete_run(run: Path, steps: int, minutes: float) -> bool:
    """A run is complete when it reached its steps or spent its time budget."""
    try:
        state = files.load_json(world_file.latest_checkpoint(run) / "state.json")
    except files.CheckpointError:
        return False
    log = run / "log.jsonl"
    spent = (
        minutes > 0
        and log.exists()
        and any(
            '"time"' in line and float(line.split('"time": ')[1].split(",")[0]) >= 60 * minutes
            for line in log.read_text().splitlines()[-1:]
        )
    )
    return state["step"] >= steps or bool(spent)


def _made_from(world: Path) -> Path | None:
    """The run a world folder's teacher (and reward/end model) came from, if it has one."""
    if not (world / "world.json").is_file():
        return None
    return Path(files.load_json(world / "world.json")["source"]["run"]).resolve()


def default_root(env: EnvConfig, preset: str) -> Path:
    """pipelines/<game>-<preset>: the game's id without its namespace or version, lowercased.

    >>> default_root(EnvConfig(name="atari", id="ALE/Pong-v5", kind="atari"), "quick").as_posix()
    'pipelines/pong-quick'
    >>> default_root(EnvConfig(), "full").as_posix()
    'pipelines/bricks-full'
    """
    game = re.sub(r"-v\d+$", "", env.id.rsplit("/", 1)[-1]).lower()
    return Path("pipelines") / f"{re.sub(r'[^a-z0-9_.-]+', '_', game)}-{preset}"


def _check_game(root: Path, env: EnvConfig) -> None:
    """Refuse a folder whose data, teacher or world come from another game than `env`'s."""
    want, found = env.id, []
    if (root / "data" / "manifest.json").is_file():
        found.append(("data", Dataset.open(root / "data").meta.get("env_id")))
    for stage in ("teacher", "student", "reward"):
        if (root / stage / "latest").is_file():
            try:
                state = files.load_json(world_file.latest_checkpoint(root / stage) / "state.json")
            except files.CheckpointError:
                continue
            found.append((stage, state.get("env_id")))
    if (root / "world" / "world.json").is_file():
        found.append(("world", files.load_json(root / "world" / "world.json").get("env_id")))
    for stage, game in found:
        if game != want:
            raise ValueError(
                f"{root}: its {stage} is of the game {game}, not {want}; choose another "
                "root= (by default pipelines/<game>-<preset>)"
            )


def pipeline(cfg: PipelineConfig) -> Path:
    from worldsim.data.collect import CollectConfig, collect
    from worldsim.evaluation.evaluate import EvalConfig, evaluate, summary
    from worldsim.models.samplers import SamplerConfig
    from worldsim.training.bundle import BundleConfig, bundle
    from worldsim.training.distill import DistillConfig, distill
    from worldsim.training.train import TrainConfig, train

    p, root = cfg.preset, Path(cfg.root) if cfg.root else default_root(cfg.env, cfg.name)
    _check_game(root, cfg.env)
    print(f"pipeline folder: {root}")
    data, teacher, student, world = (
        root / "data",
        root / "teacher",
        root / "student",
        root / "world",
    )
    try:
        have = sum(e["length"] for e in Dataset.open(data).entries())
    except DataError:
        have = 0
    if have < p.collect_steps:
        print(f"[1/6] collect: {p.collect_steps - have} steps of {cfg.env.name}")
        collect(
            CollectConfig(
                env=cfg.env,
                policy=cfg.policy,
                out=str(data),
                steps=p.collect_steps - have,
                seed=cfg.seed + have,
                test_fraction=p.test_fraction,
            )
        )
    print(
        "[2/6] train the teacher"
        + (" (done)" if _complete_run(teacher, p.train_steps, p.train_minutes) else "")
    )
    teacher_cfg = TrainConfig(
        env=cfg.env,
        data=str(data),
        out=str(teacher),
        model=p.model,
        batch_size=p.batch_size,
        procs=p.procs,
        optim=replace(TrainConfig().optim, lr=p.lr, decay=p.lr_decay),
        device=cfg.device,
        steps=p.train_steps,
        minutes=p.train_minutes,
        seed=cfg.seed,
        resume=(teacher / "latest").exists(),
    )
    if not _complete_run(teacher, p.train_steps, p.train_minutes):
        train(teacher_cfg)
    print(
        "[3/6] distill the one-step student"
        + (" (done)" if _complete_run(student, p.distill_steps, p.distill_minutes) else "")
    )
    if not _complete_run(student, p.distill_steps, p.distill_minutes):
        distill(
            DistillConfig(
                teacher=str(teacher),
                data=str(data),
                out=str(student),
                batch_size=p.batch_size,
                procs=p.procs,
                steps=p.distill_steps,
                minutes=p.distill_minutes,
                seed=cfg.seed,
                device=cfg.device,
                resume=(student / "latest").exists(),
                optim=replace(DistillConfig().optim, lr=5e-5),
            )
        )
    if not (world / "world.json").exists():
        print("[4/6] bundle the world")
        bundle(BundleConfig(run=str(teacher), student=str(student), out=str(world)))
    reward = root / "reward"
    if p.reward_minutes > 0 and _made_from(world) != reward.resolve():
        print("[5/6] fit the reward/end model to the world's drawings")
        if not _complete_run(reward, p.reward_steps, p.reward_minutes):
            train(
                replace(  # the teacher's run, its reward/end model alone, at the default rate
                    teacher_cfg,
                    out=str(reward),
                    init=str(world),
                    reward_only=True,
                    drawn=0.5,
                    optim=TrainConfig().optim,
                    steps=p.reward_steps,
                    minutes=p.reward_minutes,
                    resume=(reward / "latest").exists(),
                )
            )
        still = files.load_json(world / "world.json").get("still")
        bundle(
            BundleConfig(
                run=str(reward), student=str(world), out=str(world), overwrite=True, still=still
            )
        )
    if not (world / "eval" / "report.json").exists():
        print("[6/6] evaluate on held-out episodes")
        print(
            summary(
                evaluate(
                    EvalConfig(
                        world=str(world),
                        starts=p.eval_starts,
                        horizon=p.eval_horizon,
                        rules_steps=p.eval_long_play,
                        # the world as it plays, and the teacher's cheapest sampler beside it;
                        # `worldsim eval` scores the others when asked
                        samplers=(SamplerConfig("onestep", 1), SamplerConfig("euler", 1)),
                        seed=cfg.seed,
                        device=cfg.device,
                    )
                )
            )
        )
    print(f"world ready: python play.py world={world}")
    return world
