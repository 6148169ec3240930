"""`worldsim loop`: an agent and its world learn together (the online world-model loop).

A world learned once from fixed play is wrong where an agent goes and that play never went,
and an agent trained only in it learns those mistakes. The loop does what DIAMOND, IRIS and
DreamerV3 do instead. Each iteration:

1. **collect**: plays the real game with the current agent (and a little exploration
   noise) into the loop's episode store (the first iteration plays a behaviour policy
   instead, or nothing when a world is given to start from);
2. **world**: fine-tunes the world (denoiser and reward/end model) on all the data so far,
   from the previous iteration's weights, and bundles it;
3. **agent**: trains the same PPO agent further inside the new world, batched, in short
   dreams (`max_episode_steps`) that start at moments drawn from the loop's real play, as
   DIAMOND and IRIS do, so that a world's errors have few steps to compound;
4. **score**: plays the agent in the real game (`eval_episodes`; these steps are reported
   but not counted against `real_steps`, as in the papers above).

Then the baselines, on the same real-step axis: random play, PPO trained directly in the
real game on as many real steps as the loop used (scored at each iteration's mark and at
4x the budget), and PPO trained in the real game for as many steps as the agent took in
the worlds (what a perfect world would give), kept in `baselines.json`; `baselines=only`
runs just these, beside a running loop if a core is free. Every stage ends with `loop.json` written
atomically, so a run killed anywhere goes on with `resume=true` from the stage it was in:
the finished iterations' data, worlds and agents are kept as they were.

The agent trains on the one-step student, refreshed after each world update by a short
distillation (`student_steps`) toward the new teacher's own 3-step solution, starting from the
previous student. The cheaper choice, the teacher's 1- or 2-step Euler sampler with no
distillation, loses the ball: on the shipped Bricks world (fresh random play, 1,000-step free
play) it keeps the one-ball rule in ~22% of transitions against 78% for the student, and the
teacher's 3-step sampler, which keeps it, costs three network evaluations a frame.
`student_steps=0` trains on the teacher's sampler instead.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from worldsim.config import from_dict, to_json
from worldsim.files import FORMAT_VERSION, atomic_write_json, load_json
from worldsim.games import EnvConfig
from worldsim.models.world_model import ModelConfig
from worldsim.policies import PolicyConfig, Uniform
from worldsim.runtime import check_precision, check_procs, resolve_device, resolve_precision
from worldsim.training.train import OptimConfig


@dataclass(frozen=True)
class LoopConfig:
    """Alternate real play, world updates and agent training for a budget of real steps."""

    env: EnvConfig = field(default_factory=EnvConfig)
    """The game (choose with env=bricks|maze|gym|atari); with world=, the world's own game."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Network sizes of a world learned from scratch (model=default|tiny); with world=, the
    world's own."""
    world: str = ""
    """A world folder or shipped world to start from (warm start); empty = learn the world
    from the game's play."""
    out: str = "loops/bricks"
    """Loop folder: data, worlds, agents, loop.json, report.json and report.png."""
    real_steps: int = 100_000
    """Real-game steps of play for the world, in all (the first play included); the agent's
    scoring episodes are reported apart."""
    first_steps: int = 20_000
    """Steps of the behaviour policy's play before the first world (0 = none; a world= start
    then trains the first agent in that world as it is)."""
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig(name="mix"))
    """Behaviour policy of that first play (mix: the game's autopilot where it has one,
    sticky-random and missing play; random/sticky for games without one)."""
    iter_steps: int = 10_000
    """Real-game steps the agent plays (and the world learns from) per iteration."""
    explore: float = 0.05
    """While collecting: chance per step of a uniformly random action instead of the agent's."""
    test_fraction: float = 0.1
    """Share of the collected episodes held out for the world's held-out loss."""
    world_steps: int = 2_000
    """World training steps per iteration (from the previous iteration's weights)."""
    first_world_steps: int = 0
    """Training steps of a world learned from scratch, in the first iteration (0 =
    world_steps)."""
    world_minutes: float = 0.0
    """Time budget of each iteration's world training (0 = none; the steps still bound it)."""
    batch_size: int = 32
    """World training batch (segments per step, per process)."""
    procs: int = 1
    """Processes the world's training and distillation run in, one thread each (0 = one per
    core this process may use: under `taskset -c 0`, one; `worldsim train --help`, procs)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup=50))
    """The world's optimizer (a fresh warm-up each iteration)."""
    student_steps: int = 300
    """Distillation steps per iteration that refresh the one-step student for the updated
    teacher (`worldsim distill target=solve`, from the previous student); 0 = no student:
    the agent trains on the teacher's `sampler`."""
    agent_steps: int = 100_000
    """PPO steps in the world per iteration."""
    agent_minutes: float = 0.0
    """Time budget of each iteration's agent training (0 = none; the steps still bound it)."""
    sampler: str = ""
    """World sampler the agent trains on; empty = the world's default (the one-step student
    where there is one, else the teacher's Euler)."""
    sampler_steps: int = 0
    """Network evaluations per frame of that sampler (0 = its default: 1 for onestep, 3 for
    euler)."""
    num_envs: int = 16
    """Worlds stepped together in one batch while the agent trains."""
    frame_stack: int = 4
    """Frames the agent sees at once."""
    dream_starts: Literal["data", "world"] = "data"
    """Where the agent's dream episodes start: data = moments drawn uniformly from the loop's
    real play (the world's own starts while there is none yet), so that short dreams cover
    the states the game reaches and errors have few steps to compound (as DIAMOND and IRIS
    do); world = the world's own starting contexts."""
    max_episode_steps: int = 100
    """Dream episodes are truncated here (PPO bootstraps the value there)."""
    life_loss: Literal["auto", "on", "off"] = "auto"
    """End training episodes at each lost life (see `worldsim rl --help`)."""
    eval_episodes: int = 20
    """Real-game episodes each agent is scored on."""
    eval_max_steps: int = 2000
    """Real-game scoring episodes are cut here."""
    baselines: Literal["after", "only", "none"] = "after"
    """Random play, PPO in the real game on the loop's real steps (scored at each
    iteration's mark, and at 4x), and PPO in the real game for as many steps as the agent
    takes in the worlds: after = once the loop is done; only = just these, into the loop
    folder's baselines.json (they need nothing of the loop, so they can run beside it, e.g.
    on another core, with the same settings); none."""
    seed: int = 0
    """Seeds the play, the worlds' training, the agent and the scoring games."""
    device: str = "cpu"
    """cpu or cuda (worlds and agent)."""
    precision: str = "auto"
    """Of the worlds' training and of the worlds the agent trains in: auto (bfloat16 where
    the CPU or GPU has it natively, else fp32), fp32 or bf16."""
    resume: bool = False
    """Go on with the loop in `out` from the stage it was in."""

    def __post_init__(self):
        for key in ("real_steps", "iter_steps", "world_steps", "agent_steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("num_envs", "frame_stack", "max_episode_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        check_procs(self.procs, "procs")
        for key in ("sampler_steps", "student_steps", "first_world_steps"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.eval_episodes < 1 or self.eval_max_steps < 1:
            raise ValueError(
                f"eval_episodes and eval_max_steps must be >= 1, got {self.eval_episodes}, "
                f"{self.eval_max_steps}"
            )
        if not 0 <= self.first_steps <= self.real_steps:
            raise ValueError(
                f"first_steps must be in [0, real_steps={self.real_steps}], got {self.first_steps}"
            )
        if self.first_steps == 0 and not self.world:
            raise ValueError("first_steps=0 needs world=<a world to start from>")
        if not 0 <= self.explore <= 1:
            raise ValueError(f"explore must be in [0, 1], got {self.explore}")
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.world_minutes < 0 or self.agent_minutes < 0:
            raise ValueError(
                f"world_minutes and agent_minutes must be >= 0 (0 = none), got "
                f"{self.world_minutes}, {self.agent_minutes}"
            )
        check_precision(self.precision, ("auto", "fp32", "bf16"))

    def iterations(self) -> int:
        """Iterations in all: the first, then one per `iter_steps` of the rest."""
        return 1 + math.ceil((self.real_steps - self.first_steps) / self.iter_steps)


class LoopError(ValueError):
    """A loop folder that cannot be used as asked."""


# ---------------------------------------------------------------------------------------
# state


STAGES = ("collect", "world", "student", "agent", "score")


class Loop:
    """One loop run: its folder, its state (`loop.json`) and its stages."""

    def __init__(self, cfg: LoopConfig):
        self.cfg = cfg
        self.root = Path(cfg.out).resolve()
        self.state_path = self.root / "loop.json"
        if self.state_path.exists():
            if not cfg.resume:
                raise LoopError(
                    f"{self.root} holds a loop already; pass resume=true to go on with it, "
                    "or choose another out="
                )
            self.state = load_json(self.state_path, LoopError)
            if self.state["env_id"] != self.env_cfg().id:
                raise LoopError(
                    f"{self.root} holds a loop of {self.state['env_id']}, not {self.env_cfg().id}"
                )
        else:
            env_id = self.env_cfg().id  # a missing world fails here, before any folder is made
            self.root.mkdir(parents=True, exist_ok=True)
            self.state = {
                "format": FORMAT_VERSION,
                "env_id": env_id,
                "iteration": 0,
                "stage": "collect",
                "real_steps": 0,
                "next_episode": 0,
                "dream_steps": 0,
                "history": [],
                "current": {},
            }
            self.save()

    # --- folders and state ---------------------------------------------------------------
    def env_cfg(self) -> EnvConfig:
        return game_of(self.cfg)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def world_dir(self, i: int) -> Path:
        return self.root / "worlds" / f"iter_{i:03d}"

    def run_dir(self, i: int) -> Path:
        return self.root / "world-runs" / f"iter_{i:03d}"

    def student_run_dir(self, i: int) -> Path:
        return self.root / "student-runs" / f"iter_{i:03d}"

    def agent_path(self, i: int) -> Path:
        return self.root / "agents" / f"iter_{i:03d}.zip"

    def save(self) -> None:
        atomic_write_json(self.state_path, self.state)

    def advance(self, stage: str, **current) -> None:
        """Record a finished stage: the iteration's figures so far, and the next stage."""
        self.state["current"].update(current)
        self.state["stage"] = stage
        self.save()

    def rl_cfg(self, **changes):
        from worldsim.rl import RLConfig

        cfg = self.cfg
        return RLConfig(
            world=str(self.state["current"].get("world", "")),
            steps=cfg.agent_steps,
            num_envs=cfg.num_envs,
            frame_stack=cfg.frame_stack,
            max_episode_steps=cfg.max_episode_steps,
            sampler=cfg.sampler,
            sampler_steps=cfg.sampler_steps,
            eval_episodes=cfg.eval_episodes,
            eval_max_steps=cfg.eval_max_steps,
            out=str(self.root),
            seed=cfg.seed,
            device=cfg.device,
            precision=resolve_precision(resolve_device(cfg.device), cfg.precision),
            minutes=cfg.agent_minutes,
            check_steps=0,
            life_loss=cfg.life_loss,
            **changes,
        )

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, state = self.cfg, self.state
        total = cfg.iterations()
        while state["iteration"] < total:
            i = state["iteration"]
            if state["stage"] == "collect":
                self.collect(i)
            if state["stage"] == "world":
                self.update_world(i)
            if state["stage"] == "student":
                self.refresh_student(i)
            if state["stage"] == "agent":
                self.train_agent(i)
            if state["stage"] == "score":
                self.score(i)
                print(progress_line(state, total), flush=True)
                self.write_report()
        if cfg.baselines == "after":
            Baselines(cfg).run()
        return self.write_report()

    def collect(self, i: int) -> None:
        """Real play for iteration i: the behaviour policy first, then the agent."""
        from worldsim.data.store import Dataset

        cfg, state = self.cfg, self.state
        if self.data.exists() and (self.data / "manifest.json").exists():
            dropped = Dataset.open(self.data).drop_from(state["next_episode"])
            if dropped:
                print(f"loop: dropped {dropped} episodes of an unfinished collection")
        steps = (
            cfg.first_steps if i == 0 else min(cfg.iter_steps, cfg.real_steps - state["real_steps"])
        )
        ends = 0.0
        if steps > 0:
            if i == 0:
                ds = self._collect_policy(steps)
            else:
                ds = self._collect_agent(i, steps)
            new = [e for e in ds.entries() if e["id"] >= state["next_episode"]]
            ends = _ends_per_1k(ds, new)
            state["next_episode"] = ds.next_id()
            state["real_steps"] += sum(e["length"] for e in new)
        state["current"] = {"iteration": i}
        self.advance("world", collected=steps, real_ends_per_1k=ends)

    def _collect_policy(self, steps: int):
        from worldsim.data.collect import CollectConfig, collect

        cfg = self.cfg
        return collect(
            CollectConfig(
                env=self.env_cfg(),
                policy=cfg.policy,
                out=str(self.data),
                steps=steps,
                workers=1,
                seed=cfg.seed,
                test_fraction=cfg.test_fraction,
            )
        )

    def _collect_agent(self, i: int, steps: int):
        """`steps` real steps of the agent of iteration i - 1 (sampled actions, and a random
        one with chance `explore`), recorded as whole episodes (the last one cut)."""
        import torch
        from stable_baselines3 import PPO
        from tqdm import tqdm

        from worldsim.data.collect import play_episode
        from worldsim.data.store import Dataset
        from worldsim.games import action_meanings, make_env

        cfg, env_cfg = self.cfg, self.env_cfg()
        env = make_env(env_cfg)
        lives = "lives" in env.reset(seed=cfg.seed)[1]
        ds = Dataset.create_or_append(
            self.data,
            env_id=env_cfg.id,
            env=env_cfg.name,
            action_meanings=action_meanings(env),
            frame_size=list(env.observation_space.shape or ())[:2],
            test_fraction=cfg.test_fraction,
            lives=lives,
        )
        agent = PPO.load(self.agent_path(i - 1), device=cfg.device)
        torch.manual_seed(cfg.seed * 1_000 + i)
        rng = np.random.default_rng([cfg.seed, i])
        actor = AgentActor(agent, env, cfg.frame_stack, cfg.explore, rng)
        done, ep_id = 0, self.state["next_episode"]
        with tqdm(total=steps, desc=f"loop {i}: agent plays the real game", unit="step") as bar:
            while done < steps:
                actor.reset()
                seed = cfg.seed * 1_000_003 + 500_000 + ep_id  # apart from the first play's
                ep = play_episode(env, actor, seed, steps - done, report=bar.update)
                ds.add(ep_id, ep, "agent")
                done, ep_id = done + len(ep), ep_id + 1
        env.close()
        return ds

    def update_world(self, i: int) -> None:
        """Fine-tune the world on all data so far and bundle it (or keep the given world
        when there is no data yet)."""
        from worldsim.training.bundle import BundleConfig, bundle
        from worldsim.training.train import TrainConfig, train

        cfg, state = self.cfg, self.state
        if state["real_steps"] == 0:  # a warm start with no first play: the world as given
            from worldsim.sim.world_file import resolve

            self.advance("agent", world=str(resolve(cfg.world)), world_loss=None)
            return
        run = self.run_dir(i)
        init = self._previous_weights(i)
        model = self.model_cfg()
        steps = cfg.world_steps if init else (cfg.first_world_steps or cfg.world_steps)
        train(
            TrainConfig(
                **self._run_settings(i, run, steps),
                optim=cfg.optim,
                env=self.env_cfg(),
                model=model,
                init=init,
            )
        )
        world = self.world_dir(i)
        bundle(BundleConfig(run=str(run), out=str(world), overwrite=True))
        if i > 0 and self.run_dir(i - 1).exists():  # its weights live on in this run
            shutil.rmtree(self.run_dir(i - 1))
        self.advance("student", world=str(world), world_loss=_heldout_loss(run))

    def _run_settings(self, i: int, run: Path, steps: int) -> dict[str, Any]:
        """What iteration i's world training and distillation share: the loop's data, a run
        folder resumed where a killed stage left it, checkpoints four times a run."""
        cfg = self.cfg
        return dict(
            data=str(self.data),
            out=str(run),
            batch_size=cfg.batch_size,
            procs=cfg.procs,
            steps=steps,
            minutes=cfg.world_minutes,
            eval_every=max(1, steps // 4),
            sample_every=steps,
            ckpt_every=max(1, min(500, steps // 4)),
            seed=cfg.seed * 1_000 + i,
            resume=(run / "latest").exists(),
            device=cfg.device,
            precision=cfg.precision,
        )

    def refresh_student(self, i: int) -> None:
        """Distil the one-step student further for iteration i's teacher (from the previous
        world's student, if it has one) and bundle it into iteration i's world."""
        from worldsim.training.bundle import BundleConfig, bundle
        from worldsim.training.distill import DistillConfig, distill

        cfg = self.cfg
        if cfg.student_steps == 0:
            self.advance("agent")
            return
        run, steps = self.student_run_dir(i), cfg.student_steps
        previous = self._previous_student(i)
        distill(
            DistillConfig(
                **self._run_settings(i, run, steps),
                teacher=str(self.run_dir(i)),
                init=previous,
                target="solve",
                optim=dataclasses.replace(cfg.optim, lr=min(cfg.optim.lr, 1e-4)),
            )
        )
        world = self.world_dir(i)
        bundle(
            BundleConfig(run=str(self.run_dir(i)), student=str(run), out=str(world), overwrite=True)
        )
        if i > 0 and self.student_run_dir(i - 1).exists():
            shutil.rmtree(self.student_run_dir(i - 1))
        self.advance("agent", student_loss=_heldout_loss(run))

    def _previous_student(self, i: int) -> str:
        """The world whose student iteration i's starts from: the newest earlier world with
        one (the given world included); empty = start from the teacher."""
        candidates = [self.world_dir(j) for j in range(i - 1, -1, -1)]
        if self.cfg.world:
            from worldsim.sim.world_file import resolve

            candidates.append(resolve(self.cfg.world))
        for world in candidates:
            if (world / "student.safetensors").is_file():
                return str(world)
        return ""

    def _previous_weights(self, i: int) -> str:
        """Where iteration i's world starts: the previous run, else the given world."""
        for j in range(i - 1, -1, -1):
            if (self.run_dir(j) / "latest").exists():
                return str(self.run_dir(j))
        if not self.cfg.world:
            return ""
        from worldsim.sim.world_file import resolve

        return str(resolve(self.cfg.world))  # a shipped world's name, or a folder

    def model_cfg(self) -> ModelConfig:
        if self.cfg.world:
            from worldsim.sim.world_file import load_source, resolve

            return load_source(resolve(self.cfg.world)).model_cfg
        return self.cfg.model

    def train_agent(self, i: int) -> None:
        """Train the agent (from iteration i - 1's) in iteration i's world."""
        from stable_baselines3 import PPO

        from worldsim.rl import _policy_for, train_in_world, world_envs

        cfg = self.rl_cfg()
        starts = self._dream_starts(i)
        venv, life = world_envs(cfg, starts)
        previous = self.agent_path(i - 1)
        agent = PPO.load(previous, device=cfg.device) if i > 0 else None
        before = agent.num_timesteps if agent is not None else 0
        counter = end_counter(cfg.steps, f"loop {i}: agent in the world")
        policy = _policy_for(venv.venv.bundle.frame_size)
        agent = train_in_world(venv, cfg, policy, agent, counter, progress_bar=False)
        path = self.agent_path(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.zip")
        agent.save(tmp)
        tmp.replace(path)
        self.state["dream_steps"] = int(agent.num_timesteps)
        self.advance(
            "score",
            agent=str(path),
            agent_steps=int(agent.num_timesteps) - before,
            dream_ends_per_1k=counter.per_1k(),
            life_loss=life,
        )

    def _dream_starts(self, i: int):
        """Iteration i's pool of dream starts (None: the world's own)."""
        from worldsim.data.store import Dataset

        if self.cfg.dream_starts == "world" or not (self.data / "manifest.json").exists():
            return None
        ds = Dataset.open(self.data)
        if not ds.entries("train"):
            return None
        K = self.model_cfg().denoiser.context
        rng = np.random.default_rng([self.cfg.seed, i])
        return real_contexts(ds, K, START_POOL, rng)

    def score(self, i: int) -> None:
        from stable_baselines3 import PPO

        from worldsim.rl import _sampled, score
        from worldsim.sim.world_file import load_world

        state = self.state
        bundle = load_world(state["current"]["world"])
        agent = PPO.load(self.agent_path(i), device=self.cfg.device)
        returns = score(_sampled(agent), bundle, self.rl_cfg())
        state["history"].append(
            {
                **state["current"],
                "real_steps": state["real_steps"],
                "dream_steps": state["dream_steps"],
                **_stats(returns),
            }
        )
        state["iteration"], state["stage"], state["current"] = i + 1, "collect", {}
        self.save()

    # --- report --------------------------------------------------------------------------
    def write_report(self) -> dict:
        state = self.state
        report: dict[str, Any] = {
            "env_id": state["env_id"],
            "config": to_json(self.cfg),
            "real_steps": state["real_steps"],
            "dream_steps": state["dream_steps"],
            "eval_episodes": self.cfg.eval_episodes,
            "iterations": state["history"],
            "baselines": Baselines(self.cfg).results(),
        }
        atomic_write_json(self.root / "report.json", report)
        if state["history"]:
            plot(report, self.root / "report.png")
        return report


def game_of(cfg: LoopConfig) -> EnvConfig:
    """The loop's game: the world's own (from world.json alone, without loading the
    networks), or `cfg.env`."""
    if cfg.world:
        from worldsim.sim.world_file import load_source, resolve

        return from_dict(EnvConfig, load_source(resolve(cfg.world)).meta["env"])
    return cfg.env


class Baselines:
    """The loop's baselines in the real game, kept in `baselines.json` of the loop folder
    (written atomically after each; a killed run goes on where it was): random play, and one
    PPO agent trained in the real game, scored when its real steps pass each mark: each
    iteration's planned real-step total, 4x the loop's `real_steps`, and the agent's planned
    steps in the worlds (`agent_steps` x iterations)."""

    def __init__(self, cfg: LoopConfig):
        self.cfg = cfg
        self.root = Path(cfg.out).resolve()
        self.path = self.root / "baselines.json"

    def results(self) -> dict:
        if not self.path.exists():
            return {}
        base = load_json(self.path, LoopError)
        return {k: v for k, v in base.items() if k not in ("format", "done")}

    def marks(self) -> list[int]:
        cfg = self.cfg
        used, marks = cfg.first_steps, set()
        if used:
            marks.add(used)
        while used < cfg.real_steps:
            used = min(used + cfg.iter_steps, cfg.real_steps)
            marks.add(used)
        marks |= {4 * cfg.real_steps, cfg.agent_steps * cfg.iterations()}
        return sorted(marks)

    def run(self) -> dict:
        from stable_baselines3 import PPO
        from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

        from worldsim.games import make_env
        from worldsim.rl import PPO_ARGS, RLConfig, _policy_for, _sampled, real_env, score

        cfg, game = self.cfg, game_of(self.cfg)
        env = make_env(game)
        has_lives = "lives" in env.reset(seed=cfg.seed)[1]
        shape, n_actions = env.observation_space.shape, int(env.action_space.n)  # type: ignore[attr-defined]
        env.close()
        life = cfg.life_loss == "on" or (cfg.life_loss == "auto" and has_lives)
        self.root.mkdir(parents=True, exist_ok=True)
        base = load_json(self.path, LoopError) if self.path.exists() else {}
        base["format"] = FORMAT_VERSION
        rl_cfg = RLConfig(
            frame_stack=cfg.frame_stack,
            eval_episodes=cfg.eval_episodes,
            eval_max_steps=cfg.eval_max_steps,
            seed=cfg.seed,
            device=cfg.device,
        )
        if "random" not in base:
            pick = Uniform(n_actions, np.random.default_rng(cfg.seed))
            base["random"] = _stats(score(lambda obs: pick(), game, rl_cfg))
            atomic_write_json(self.path, base)
            print(f"baseline: random play: {_fmt(base['random'])}", flush=True)
        done = {r["steps"] for r in base.get("ppo_real", [])}
        path = self.root / "agents" / "ppo_real.zip"
        path.parent.mkdir(parents=True, exist_ok=True)
        envs = VecFrameStack(DummyVecEnv([lambda: real_env(game, life)] * 8), cfg.frame_stack)
        if path.exists():
            agent = PPO.load(path, env=envs, device=cfg.device)
        else:
            agent = PPO(_policy_for(shape), envs, seed=cfg.seed, device=cfg.device, **PPO_ARGS)
        for mark in self.marks():
            if mark in done:
                continue
            if mark > agent.num_timesteps:
                more = mark - agent.num_timesteps
                agent.learn(
                    total_timesteps=more,
                    reset_num_timesteps=agent.num_timesteps == 0,
                    callback=end_counter(more, f"baseline: PPO in the real game to {mark:,}"),
                )
            tmp = path.with_name("ppo_real.tmp.zip")
            agent.save(tmp)
            tmp.replace(path)
            row = {"steps": mark, "trained_steps": int(agent.num_timesteps)}
            row.update(_stats(score(_sampled(agent), game, rl_cfg)))
            base.setdefault("ppo_real", []).append(row)
            atomic_write_json(self.path, base)
            print(f"baseline: PPO in the real game, {mark:,} steps: {_fmt(row)}", flush=True)
        base["done"] = True
        atomic_write_json(self.path, base)
        return base


class AgentActor:
    """A PPO agent as `act(observation) -> action` for one real game: it stacks the frames
    as SB3's VecFrameStack does in training, samples from the policy, and now and then
    (`explore`) takes a uniformly random action. `reset()` before each episode."""

    def __init__(self, agent, env, frame_stack: int, explore: float, rng: np.random.Generator):
        from stable_baselines3.common.vec_env.stacked_observations import StackedObservations

        self.agent, self.explore, self.rng = agent, explore, rng
        self.stack = StackedObservations(1, frame_stack, env.observation_space)
        self.n = int(env.action_space.n)
        self.seen: np.ndarray | None = None

    def reset(self) -> None:
        self.seen = None

    def __call__(self, obs: np.ndarray) -> int:
        if self.seen is None:
            self.seen = self.stack.reset(obs[None])
        else:
            self.seen, _ = self.stack.update(obs[None], np.zeros(1, bool), [{}])
        if self.rng.random() < self.explore:
            return int(self.rng.integers(self.n))
        return int(self.agent.predict(self.seen, deterministic=False)[0][0])


START_POOL = 4096
"""Dream starts drawn from the loop's real play per iteration."""


def real_contexts(ds, K: int, n: int, rng: np.random.Generator):
    """`n` moments drawn uniformly from the training episodes of `ds`, as world contexts:
    frames (n, K, H, W, 3) uint8 and actions (n, K), where actions[:, j] produced frames[:, j];
    before an episode's first frame the context repeats it with action 0, as training pads.
    The last frame of an episode that ended (game over) is never a start."""
    import torch

    from worldsim.data.store import load_fields

    entries = ds.entries("train")
    # moments t in [0, T] of each episode; T only where it did not end there
    lengths = np.array([e["length"] for e in entries])
    ended = np.array(
        [
            bool(load_fields(ds.root / e["file"], ("terminated",))["terminated"][-1:].any())
            for e in entries
        ]
    )
    counts = lengths + 1 - ended
    picks = np.sort(rng.integers(counts.sum(), size=n))
    episode = np.searchsorted(np.cumsum(counts), picks, side="right")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    frames, actions = [], []
    for j in np.unique(episode):
        ep = ds.load(entries[j])
        acts = np.concatenate([np.zeros(K, np.int64), ep.actions])  # acts[K + t - 1] made t
        for t in picks[episode == j] - offsets[j]:
            idx = np.arange(t - K + 1, t + 1)
            frames.append(ep.frames[np.maximum(idx, 0)])
            actions.append(np.where(idx > 0, acts[np.maximum(idx, 0) + K - 1], 0))
    return torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(actions))


def end_counter(total: int, desc: str):
    """An SB3 callback that counts steps and episode ends (lost lives included where they
    end training episodes) while the agent trains in the worlds, on a progress bar of
    `total` steps (a plain tqdm bar, which also reads in a log file); `per_1k()` reads it."""
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class EndCounter(BaseCallback):
        steps = 0
        ends = 0

        def _on_training_start(self) -> None:
            self.bar = tqdm(total=total, desc=desc, unit="step", smoothing=0.1)

        def _on_step(self) -> bool:
            dones, infos = self.locals["dones"], self.locals["infos"]
            self.steps += len(dones)
            self.ends += sum(
                bool(d) and not info.get("TimeLimit.truncated", False)
                for d, info in zip(dones, infos, strict=True)
            )
            self.bar.update(len(dones))
            self.bar.set_postfix(ends_per_1k=f"{self.per_1k():.1f}", refresh=False)
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

        def per_1k(self) -> float:
            return 1000 * self.ends / max(self.steps, 1)

    return EndCounter()


def _ends_per_1k(ds, entries: list[dict]) -> float:
    """Episode ends and lost lives per 1,000 steps of the given episodes (real play)."""
    from worldsim.data.store import load_fields

    ends = steps = 0
    for e in entries:
        d = load_fields(ds.root / e["file"], ("terminated", "life_lost"))
        ends += int(d["terminated"].sum() + d["life_lost"].sum())
        steps += e["length"]
    return 1000 * ends / max(steps, 1)


def _heldout_loss(run: Path) -> float | None:
    """The last held-out loss in a training run's log."""
    import json

    loss = None
    log = run / "log.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            loss = row.get("heldout_loss", loss)
    return loss


def _stats(returns: list[float]) -> dict:
    r = np.asarray(returns, float)
    return {
        "returns": r.tolist(),
        "mean": float(r.mean()),
        "sem": float(r.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else 0.0,
    }


def _fmt(row: dict) -> str:
    return f"{row['mean']:.2f} ± {row['sem']:.2f} (s.e.)"


def progress_line(state: dict, total: int) -> str:
    """One line per finished iteration: what a user watches."""
    h = state["history"][-1]
    loss = "–" if h.get("world_loss") is None else f"{h['world_loss']:.4f}"
    return (
        f"loop {h['iteration'] + 1}/{total} · real steps {h['real_steps']:,} · "
        f"world loss {loss} · ends/1k dream {h['dream_ends_per_1k']:.1f} "
        f"real {h['real_ends_per_1k']:.1f} · dream steps {h['dream_steps']:,} · "
        f"real-game return {_fmt(h)}"
    )


def plot(report: dict, path: Path) -> None:
    """Real-game return against real steps used: the loop, and its baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    its = report["iterations"]
    x = [h["real_steps"] for h in its]
    ax.errorbar(
        x,
        [h["mean"] for h in its],
        [h["sem"] for h in its],
        marker="o",
        capsize=3,
        label="agent trained in the loop's worlds",
    )
    base = report["baselines"]
    real = base.get("ppo_real", [])
    if real:
        ax.errorbar(
            [r["steps"] for r in real],
            [r["mean"] for r in real],
            [r["sem"] for r in real],
            marker="s",
            capsize=3,
            label="PPO trained in the real game (x = its real steps)",
        )
    if "random" in base:
        ax.axhline(base["random"]["mean"], color="grey", ls=":", label="random play")
    ax.set_xlabel("real-game steps used")
    ax.set_ylabel(f"real-game return (mean ± s.e., {report['eval_episodes']} episodes)")
    ax.set_title(f"{report['env_id']}: the online world-model loop")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loop(cfg: LoopConfig) -> dict:
    """Run (or resume) the loop; returns the report."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        raise ImportError(
            "worldsim loop needs stable-baselines3: pip install 'worldsim[rl]'"
        ) from None
    t0 = time.monotonic()
    if cfg.baselines == "only":
        game_of(cfg)  # a missing world fails here, before any folder is made
        Baselines(cfg).run()
        loop_json = Path(cfg.out) / "loop.json"
        report = (
            Loop(dataclasses.replace(cfg, resume=True)).write_report()
            if loop_json.exists()
            else {"baselines": Baselines(cfg).results()}
        )
        minutes = (time.monotonic() - t0) / 60
        print(f"baselines finished in {minutes:.1f} min; {cfg.out}/baselines.json")
        return report
    report = Loop(cfg).run()
    print(f"loop finished in {(time.monotonic() - t0) / 60:.1f} min; {cfg.out}/report.json")
    return report


def summary(report: dict) -> str:
    lines = [
        f"{report['env_id']}: real-game return (mean ± s.e., {report['eval_episodes']} episodes)"
    ]
    for h in report["iterations"]:
        lines.append(
            f"  loop iteration {h['iteration']:>2}  real steps {h['real_steps']:>8,}  "
            f"dream steps {h['dream_steps']:>9,}  {_fmt(h)}"
        )
    base = report["baselines"]
    if "random" in base:
        lines.append(f"  random play{'':>43}{_fmt(base['random'])}")
    for r in base.get("ppo_real", []):
        lines.append(f"  PPO in the real game, {r['steps']:>9,} real steps{'':>14}{_fmt(r)}")
    return "\n".join(lines)
