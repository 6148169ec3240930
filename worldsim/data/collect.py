"""`worldsim collect`: play a game with a behaviour policy and record every episode."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldsim.config import to_json
from worldsim.data.store import DataError, Dataset, Episode, save_episode
from worldsim.games import EnvConfig, action_meanings, make_env
from worldsim.policies import Policy, PolicyConfig


@dataclass(frozen=True)
class CollectConfig:
    """Record play of a game into an episode dataset."""

    env: EnvConfig = field(default_factory=EnvConfig)
    """The game (choose with env=bricks|maze|gym|atari)."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The behaviour policy."""
    out: str = "data/bricks"
    """Dataset folder; an existing dataset of the same game is appended to."""
    steps: int = 100_000
    """Environment steps to record (the last episode is cut at this budget)."""
    workers: int = 2
    """Game copies played in parallel processes."""
    seed: int = 0
    """Seeds the games and the policy; episode i uses (seed, i)."""
    test_fraction: float = 0.1
    """Share of episodes held out for evaluation (chosen by episode id; 1 = all of them, as
    for evaluation play)."""

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0 <= self.test_fraction <= 1:
            raise ValueError(f"test_fraction must be in [0, 1], got {self.test_fraction}")


def play_episode(
    env, policy: Policy | Callable[[np.ndarray], int], seed: int, max_steps: int, report=None
) -> Episode:
    """Play one episode of at most `max_steps` steps; it is truncated if cut at that budget.
    `policy` is a behaviour Policy or any `act(observation) -> action` (an agent)."""
    act = (lambda obs: policy.act()) if isinstance(policy, Policy) else policy
    obs, info = env.reset(seed=seed)
    lives = info.get("lives")
    frames, actions, rewards, terms, truncs, lost = [obs], [], [], [], [], []
    for t in range(max_steps):
        a = act(obs)
        obs, r, term, trunc, info = env.step(a)
        trunc = trunc or (t == max_steps - 1 and not term)
        frames.append(obs)
        actions.append(a)
        rewards.append(r)
        terms.append(term)
        truncs.append(trunc)
        lost.append(lives is not None and info.get("lives", lives) < lives)
        lives = info.get("lives", lives)
        if report is not None and (t + 1) % 256 == 0:
            report(256)
        if term or trunc:
            break
    if report is not None:
        report(len(actions) % 256)
    return Episode(
        np.stack(frames),
        np.array(actions, np.int64),
        np.array(rewards, np.float32),
        np.array(terms, bool),
        np.array(truncs, bool),
        np.array(lost, bool),
    )


def _worker(cfg: CollectConfig, rank: int, first_id: int, budget: int, queue) -> None:
    """Record episodes with ids first_id + rank + k * workers until `budget` steps are done;
    an error that stops it (a full disk) goes to the collector as one line."""
    try:
        _record(cfg, rank, first_id, budget, queue)
    except (OSError, DataError) as e:
        if isinstance(queue, _Inline):
            raise
        queue.put(("error", str(e)))


def _record(cfg: CollectConfig, rank: int, first_id: int, budget: int, queue) -> None:
    parent = os.getppid()
    env = make_env(cfg.env)
    ds = Dataset(Path(cfg.out), {})
    done, k = 0, 0
    while done < budget:
        if os.getppid() != parent:  # the collector died: stop instead of running on orphaned
            return
        ep_id = first_id + rank + k * cfg.workers
        policy = Policy(cfg.policy, env, np.random.default_rng([cfg.seed, ep_id]))
        ep = play_episode(
            env,
            policy,
            seed=cfg.seed * 1_000_003 + ep_id,
            max_steps=budget - done,
            report=lambda n: queue.put(("steps", n)),
        )
        save_episode(ds.path_for(ep_id), ep)
        queue.put(("episode", ep_id, len(ep), float(ep.rewards.sum()), policy.name))
        done, k = done + len(ep), k + 1
    env.close()


def collect(cfg: CollectConfig) -> Dataset:
    """Record `cfg.steps` steps of play into `cfg.out` and return the dataset."""
    env = make_env(cfg.env)
    frame_size = list(env.observation_space.shape or ())[:2]
    Policy(cfg.policy, env, np.random.default_rng(0))  # fails early if the game lacks it
    lives = "lives" in env.reset(seed=cfg.seed)[1]  # the game reports lives: record lost ones
    ds = Dataset.create_or_append(
        cfg.out,
        env_id=cfg.env.id,
        env=cfg.env.name,
        game=to_json(cfg.env),  # how to make the game again (a world's `real` env, evals)
        action_meanings=action_meanings(env),
        frame_size=frame_size,
        test_fraction=cfg.test_fraction,
        lives=lives,
    )
    env.close()
    first_id = ds.next_id()
    budgets = [cfg.steps // cfg.workers + (r < cfg.steps % cfg.workers) for r in range(cfg.workers)]
    with tqdm(total=cfg.steps, desc=f"collect {cfg.env.name}", unit="step", smoothing=0.1) as bar:
        if cfg.workers == 1:  # in this process: no start-up cost, works from any script
            _worker(cfg, 0, first_id, cfg.steps, _Inline(ds, bar))
            return ds
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(cfg, r, first_id, b, queue), daemon=True)
            for r, b in enumerate(budgets)
            if b > 0
        ]
        for p in procs:
            p.start()
        sink, recorded = _Inline(ds, bar), 0
        while recorded < cfg.steps:
            msg = _get(queue, procs)
            if msg[0] == "error":  # the finished episodes stay in the dataset
                for p in procs:
                    p.terminate()
                raise DataError(f"collection stopped: {msg[1]}")
            sink.put(msg)
            recorded += msg[2] if msg[0] == "episode" else 0
    for p in procs:
        p.join()
    return ds


class _Inline:
    """Takes the workers' messages: advances the progress bar, records finished episodes."""

    def __init__(self, ds: Dataset, bar: tqdm):
        self.ds, self.bar = ds, bar

    def put(self, msg: tuple) -> None:
        if msg[0] == "steps":
            self.bar.update(msg[1])
            return
        _, ep_id, length, ret, policy = msg
        self.ds.add_entry(ep_id, length, ret, policy)
        self.bar.set_postfix(episodes=len(self.ds.entries()), ret=f"{ret:.0f}")


def _get(queue, procs):
    """Next worker message; raise if a worker died without finishing."""
    import queue as queue_mod

    while True:
        try:
            return queue.get(timeout=1.0)
        except queue_mod.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(
                    f"a collection worker failed (exit code {dead[0].exitcode})"
                ) from None
