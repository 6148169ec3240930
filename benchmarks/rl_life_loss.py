"""Experiment: PPO in the Bricks world with dream episodes ended at each lost life.

    python benchmarks/rl_life_loss.py [--minutes 38] [--out runs/rl-life-loss]

The shipped Bricks world seldom ends episodes (`benchmarks/dream_vs_real.py`): at the last
life its ball bounces off the floor. A missed ball then costs the agent nothing, and the
agent trained in it does not learn to keep the paddle under the ball. This experiment
gives the dream agent the usual Atari signal instead: an episode ends whenever a life is
lost (like SB3's EpisodicLifeEnv: done=True, no reset). Lives are read from the dream's
own frames, from Bricks' HUD (a red 3x2 bar per life, top right), so this script is
Bricks-specific. The general version is built in now: worlds whose reward/end model learned
lost lives (`model.reward.life_head`, from data that recorded them) end RL episodes there
with `worldsim rl life_loss=auto` (the default); this script stays as the experiment that
showed the signal was what the dream agent lacked.
Everything else is `worldsim rl`'s setup: 16 worlds in bf16, 4 stacked frames, PPO with
RL Zoo's Atari settings, scored over 20 real-game episodes beside random play.
Writes <out>.json and <out>_agent.zip; prints the result.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnvWrapper, VecFrameStack

from worldsim.rl import PPO_ARGS, RLConfig, _time_budget, score, summary
from worldsim.sim.sb3 import WorldVecEnv


def lives(obs: np.ndarray) -> np.ndarray:
    """Lives shown in Bricks' HUD of frames (N, 64, 64, 3) uint8."""
    bars = [obs[:, 2:4, 58 - 4 * i : 61 - 4 * i, 0] for i in range(3)]
    return sum(((b > 150).mean(axis=(1, 2)) > 0.5).astype(int) for b in bars)


class EndOnLifeLoss(VecEnvWrapper):
    """done=True for an env whose HUD shows one life fewer than the step before."""

    def reset(self):
        obs = self.venv.reset()
        self.lives, self.losses = lives(obs), 0
        return obs

    def step_wait(self):
        obs, rew, done, infos = self.venv.step_wait()
        now = lives(obs)
        lost = (now < self.lives) & ~done
        for i in np.flatnonzero(lost):
            infos[i]["terminal_observation"] = obs[i]
        self.losses += int(lost.sum())
        self.lives = now
        return obs, rew, done | lost, infos


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=38.0, help="PPO training budget")
    p.add_argument("--out", default="runs/rl-life-loss", help="prefix of the outputs")
    args = p.parse_args()
    if args.minutes <= 0:
        p.error(f"--minutes must be > 0, got {args.minutes}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    venv = WorldVecEnv(16, world="bricks", max_episode_steps=500, precision="bf16")
    venv.seed(0)
    wrapped = EndOnLifeLoss(venv)
    agent = PPO("CnnPolicy", VecFrameStack(wrapped, 4), seed=0, device="cpu", **PPO_ARGS)
    t0 = time.monotonic()
    agent.learn(total_timesteps=10**9, callback=_time_budget(args.minutes))
    agent.save(f"{out}_agent")
    cfg, rng = RLConfig(eval_episodes=20, frame_stack=4), np.random.default_rng(0)
    bundle = venv.venv.bundle
    report = {
        "steps": int(agent.num_timesteps),
        "minutes": (time.monotonic() - t0) / 60,
        "life_losses_in_dream": wrapped.losses,
        "episodes": cfg.eval_episodes,
        "dream_agent": score(lambda o: int(agent.predict(o, deterministic=False)[0]), bundle, cfg),
        "random": score(lambda o: int(rng.integers(4)), bundle, cfg),
    }
    Path(f"{out}.json").write_text(json.dumps(report, indent=1))
    print(
        f"{report['steps']} steps in {report['minutes']:.1f} min, "
        f"{wrapped.losses} lives lost in the dream"
    )
    print(summary(report))


if __name__ == "__main__":
    main()
