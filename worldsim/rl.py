"""`worldsim rl`: train an agent inside a learned world, then play it in the real game.

The agent (Stable-Baselines3 PPO) never sees the real game while it learns. It is then
scored in the real game for `eval_episodes` episodes beside a random policy and, for
contrast, the same number of PPO steps trained in the real game. Writes the agent, an mp4
of it playing the real game and report.json to `out`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from worldsim.files import atomic_write_json
from worldsim.policies import Uniform, simple_policy
from worldsim.runtime import check_precision


@dataclass(frozen=True)
class RLConfig:
    """Train PPO in a world; evaluate it in the real game."""

    world: str = "bricks"
    """Shipped world name or world folder."""
    steps: int = 100_000
    """PPO environment steps in the world (and in the real game for the baseline)."""
    num_envs: int = 16
    """Worlds stepped together in one batch."""
    frame_stack: int = 4
    """Frames the agent sees at once (SB3's VecFrameStack), so it can tell where things move."""
    max_episode_steps: int = 500
    """Dream episodes are truncated here."""
    sampler: str = ""
    """World sampler (empty = the world's default)."""
    sampler_steps: int = 0
    """Network evaluations per frame of that sampler (0 = its default: 1 for onestep, 3 for
    euler and heun)."""
    eval_episodes: int = 20
    """Real-game episodes to score each policy on."""
    eval_max_steps: int = 2000
    """Real-game episodes are cut here."""
    real_baseline: bool = True
    """Also train PPO for `steps` steps in the real game, for contrast."""
    out: str = "runs/rl"
    """Folder for the agent, the video and report.json."""
    seed: int = 0
    """Seeds PPO, the worlds and the real games."""
    device: str = "cpu"
    """cpu or cuda (for the worlds and the agent)."""
    precision: str = "fp32"
    """fp32, or bf16: the worlds' networks in bfloat16 (faster on CPUs with AMX or
    AVX512-BF16 and on GPUs, emulated and slow elsewhere; BENCHMARKS.md)."""
    minutes: float = 0.0
    """Wall-clock budget for training in the world (0 = none); the real-game baseline then
    trains for as many steps as the dream agent got."""
    check_steps: int = 200
    """Before training: steps of random play (in each of num_envs worlds and as many real
    games) to compare how often the world and the real game end episodes; 0 = skip. A world
    that ends far fewer episodes than its game does not punish what an agent does wrong."""
    life_loss: Literal["auto", "on", "off"] = "auto"
    """End training episodes at each lost life (done, no reset, as Atari's EpisodicLifeEnv):
    a lost ball then costs the agent its future rewards. on: needs a world that predicts
    lost lives; auto: on for those worlds, off for others. The real-game baseline trains
    the same way."""

    def __post_init__(self):
        positive = ("steps", "num_envs", "eval_episodes", "eval_max_steps", "max_episode_steps")
        for key in (*positive, "frame_stack"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.sampler_steps < 0:
            raise ValueError(f"sampler_steps must be >= 0 (0 = default), got {self.sampler_steps}")
        if self.check_steps < 0:
            raise ValueError(f"check_steps must be >= 0 (0 = skip), got {self.check_steps}")
        check_precision(self.precision)
        if self.minutes < 0:
            raise ValueError(f"minutes must be >= 0 (0 = no time budget), got {self.minutes}")


# RL Zoo's Atari settings for PPO (128-step rollouts, 4 epochs, clip 0.1, entropy bonus)
PPO_ARGS: dict[str, Any] = dict(
    n_steps=128,
    batch_size=256,
    n_epochs=4,
    learning_rate=2.5e-4,
    clip_range=0.1,
    ent_coef=0.01,
    vf_coef=0.5,
    verbose=0,
)


def _policy_for(shape) -> str:
    # SB3's NatureCNN needs at least 36x36 frames; smaller worlds get the MLP policy
    return "CnnPolicy" if min(shape[:2]) >= 36 else "MlpPolicy"


def real_env(game, end_on_life_loss: bool = False):
    """A world's source game (`game`: the world, or an EnvConfig), with `end_on_life_loss`
    wrapped in EndOnLifeLoss."""
    from worldsim.config import from_dict
    from worldsim.games import EnvConfig, make_env
    from worldsim.sim.wrappers import EndOnLifeLoss

    cfg = game if isinstance(game, EnvConfig) else from_dict(EnvConfig, game.meta["env"])
    env = make_env(cfg)
    return EndOnLifeLoss(env) if end_on_life_loss else env


def dream_rates(venv, hold: int | None, steps: int, seed: int = 0) -> tuple[float, float]:
    """(episode ends, reward) per 1,000 steps of `simple_policy` in a WorldModelVectorEnv
    (made with autoreset_mode="same_step", so ended dreams restart at once)."""
    envs, n = venv.num_envs, int(venv.single_action_space.n)
    venv.reset(seed=seed)
    rng, ends, reward = np.random.default_rng(seed), 0, 0.0
    for _ in range(steps):
        _, r, term, _, _ = venv.step(simple_policy(hold, n, rng, envs))
        ends, reward = ends + int(term.sum()), reward + float(r.sum())
    return 1000 * ends / (envs * steps), 1000 * reward / (envs * steps)


def real_rates(
    bundle, hold: int | None, envs: int, steps: int, seed: int = 0, end_on_life_loss: bool = False
) -> tuple[float, float]:
    """The same in the world's real game: `envs` games of `steps` steps each (a lost life
    counts as an end with `end_on_life_loss`)."""
    env, ends, reward = real_env(bundle, end_on_life_loss), 0, 0.0
    n = int(env.action_space.n)
    for i in range(envs):
        env.reset(seed=seed + i)
        rng = np.random.default_rng(seed + i)
        for _ in range(steps):
            _, r, term, trunc, _ = env.step(int(simple_policy(hold, n, rng, 1)[0]))
            reward += float(r)
            if term or trunc:
                ends += int(term)
                env.reset()
    return 1000 * ends / (envs * steps), 1000 * reward / (envs * steps)


def world_envs(cfg: RLConfig, starts=None):
    """The batched worlds PPO trains in (an SB3 VecEnv), and whether their episodes end at
    a lost life (`cfg.life_loss`, resolved for this world). `starts`: contexts to start
    episodes from (see WorldModelVectorEnv)."""
    from worldsim.sim.env import LIVES_HINT
    from worldsim.sim.sb3 import WorldVecEnv
    from worldsim.sim.world_file import knows_lives

    life = cfg.life_loss != "off" and knows_lives(cfg.world)
    if cfg.life_loss == "on" and not life:
        raise ValueError(
            f"life_loss=on needs a world that predicts lost lives; {cfg.world} does not: "
            f"{LIVES_HINT}"
        )
    venv = WorldVecEnv(
        cfg.num_envs,
        world=cfg.world,
        sampler=cfg.sampler or None,
        steps=cfg.sampler_steps or None,
        max_episode_steps=cfg.max_episode_steps,
        device=cfg.device,
        precision=cfg.precision,
        end_on_life_loss=life,
        starts=starts,
    )
    said = "yes" if life else "no"
    print(f"training episodes end at a lost life: {said} (life_loss={cfg.life_loss})")
    return venv, life


def check_ends(venv, cfg: RLConfig, life: bool) -> dict:
    """Random play in the training worlds themselves and in as many real games: how often
    each ends an episode (`cfg.check_steps` steps; PPO's first reset reseeds the worlds)."""
    check: dict[str, object] = {"life_loss": life}
    if cfg.check_steps:
        world_ends, _ = dream_rates(venv.venv, None, cfg.check_steps, cfg.seed)
        real_ends, _ = real_rates(
            venv.venv.bundle, None, cfg.num_envs, cfg.check_steps, cfg.seed, life
        )
        check["random_play_ends_per_1k_steps"] = {"world": world_ends, "real": real_ends}
        print(check_line(world_ends, real_ends), flush=True)
    return check


def train_in_world(
    venv, cfg: RLConfig, policy: str, agent=None, callback=None, progress_bar: bool = True
):
    """PPO trained for `cfg.steps` steps (or `cfg.minutes`) in the worlds, seeing
    `cfg.frame_stack` frames at once (SB3's VecFrameStack); `agent` (a PPO from an earlier
    call) goes on learning instead of a new one. `callback`: another SB3 callback to run;
    `progress_bar`: SB3's own (rich) bar, where rich is installed."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.vec_env import VecFrameStack

    venv.seed(cfg.seed)
    stacked = VecFrameStack(venv, cfg.frame_stack)
    if agent is None:
        agent = PPO(policy, stacked, seed=cfg.seed, device=cfg.device, **PPO_ARGS)
    else:
        agent.set_env(stacked)
    callbacks = [_time_budget(cfg.minutes)] + ([callback] if callback is not None else [])
    agent.learn(
        total_timesteps=cfg.steps,
        progress_bar=progress_bar and _has_rich(),
        callback=CallbackList(callbacks),
        reset_num_timesteps=agent.num_timesteps == 0,
    )
    return agent


def train_in_real_game(bundle, cfg: RLConfig, life: bool, steps: int, policy: str):
    """The contrast: PPO trained for `steps` steps in 8 copies of the real game."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

    agent = PPO(
        policy,
        VecFrameStack(DummyVecEnv([lambda: real_env(bundle, life)] * 8), cfg.frame_stack),
        seed=cfg.seed,
        device=cfg.device,
        **PPO_ARGS,
    )
    agent.learn(total_timesteps=steps, progress_bar=_has_rich())
    return agent


def score(act, game, cfg: RLConfig, frames: list | None = None) -> list[float]:
    """Returns of `act(stacked frames) -> action` over eval_episodes episodes of `game` (a
    world's source game, or an EnvConfig: see `real_env`); the
    frames are stacked as SB3's VecFrameStack stacks them in training (its
    StackedObservations). With `frames`, the first episode's frames are appended to it."""
    from stable_baselines3.common.vec_env.stacked_observations import StackedObservations

    env, returns = real_env(game), []
    stack = StackedObservations(1, cfg.frame_stack, env.observation_space)
    not_done = np.zeros(1, bool)  # an episode's end is seen by this loop, not by the stack
    for i in range(cfg.eval_episodes):
        obs, _ = env.reset(seed=10_000 + cfg.seed + i)
        seen, total = stack.reset(obs[None]), 0.0
        for _ in range(cfg.eval_max_steps):
            obs, r, term, trunc, _ = env.step(act(seen[0]))
            seen, _ = stack.update(obs[None], not_done, [{}])
            total += r
            if frames is not None and i == 0:
                frames.append(obs)
            if term or trunc:
                break
        returns.append(total)
    return returns


def _sampled(agent):
    """The agent as `score` plays it: an action sampled from its policy."""
    return lambda obs: int(agent.predict(obs, deterministic=False)[0])


def train_rl(cfg: RLConfig) -> dict:
    """Train PPO in the world, score it in the real game beside random play (and PPO
    trained in the real game); writes the agents, a video and report.json to `cfg.out`."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        raise ImportError(
            "worldsim rl needs stable-baselines3: pip install 'worldsim[rl]'"
        ) from None
    from worldsim.data.video import write_mp4

    venv, life = world_envs(cfg)
    check = check_ends(venv, cfg, life)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    bundle = venv.venv.bundle
    policy = _policy_for(bundle.frame_size)
    agent = train_in_world(venv, cfg, policy)
    agent.save(out / "agent_dream")
    steps = int(agent.num_timesteps)
    report = {
        "world": str(bundle.path),
        "steps": steps,
        "minutes_in_world": (time.monotonic() - t0) / 60,
        "episodes": cfg.eval_episodes,
        "policy": policy,
        **check,
    }
    frames: list = []
    report["dream_agent"] = score(_sampled(agent), bundle, cfg, frames)
    video = out / "dream_agent_in_real_game.mp4"
    write_mp4(video, np.stack(frames), fps=15, scale=4, overwrite=True)
    pick = Uniform(len(bundle.action_meanings), np.random.default_rng(cfg.seed))
    report["random"] = score(lambda obs: pick(), bundle, cfg)
    # what is known so far, should the real-game baseline be cut off
    atomic_write_json(out / "report.json", report)
    if cfg.real_baseline:
        real = train_in_real_game(bundle, cfg, life, steps, policy)
        real.save(out / "agent_real")
        report["real_agent"] = score(_sampled(real), bundle, cfg)
        atomic_write_json(out / "report.json", report)
    return report


def _time_budget(minutes: float):
    """An SB3 callback that ends learning once `minutes` of wall-clock time are spent."""
    from stable_baselines3.common.callbacks import BaseCallback

    class TimeBudget(BaseCallback):
        def _on_training_start(self) -> None:
            self.t0 = time.monotonic()

        def _on_step(self) -> bool:
            return minutes <= 0 or time.monotonic() - self.t0 < 60 * minutes

    return TimeBudget()


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def check_line(world_ends: float, real_ends: float) -> str:
    """What the episode-end check found, in one line (a warning when the world ends less
    than half as many episodes as the real game)."""
    line = (
        f"random play ends {world_ends:.2f} episodes per 1k steps in the world, "
        f"{real_ends:.2f} in the real game"
    )
    if world_ends < real_ends / 2:
        line += (
            "; warning: the world seldom ends episodes, so an agent trained in it is not"
            " taught to avoid what ends them in the real game"
        )
    return line


def summary(report: dict) -> str:
    lines = [f"real-game return over {report['episodes']} episodes (mean ± std):"]
    if "random_play_ends_per_1k_steps" in report:
        ends = report["random_play_ends_per_1k_steps"]
        lines.insert(0, check_line(ends["world"], ends["real"]))
    for key in ("dream_agent", "random", "real_agent"):
        if key in report:
            r = np.array(report[key])
            lines.append(f"  {key:<12} {r.mean():8.2f} ± {r.std():.2f}")
    return "\n".join(lines)
