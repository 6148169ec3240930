"""How often a world ends an episode early, and what it draws, over short rollouts.

`python benchmarks/early_ends.py --world pipelines/pong-quick/world --rollouts 100 --steps 16
--png pong.png`: N dreams from the world's real starts, each played with sticky-random
actions (a random action held 1-4 steps); prints the share of them the world ended (or
lost a life in) before `--steps` steps, and writes one PNG row per dream for the first few
(frames every 4 steps), to look at whether the field, the paddles and the score are drawn.
`--real` plays the same actions from the real game's resets (seeds from `--seed`) too: how
often the game itself ends or loses a life that soon, the figure a true world would show.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, help="world folder or shipped name")
    parser.add_argument("--rollouts", type=int, default=100, help="dreams")
    parser.add_argument("--steps", type=int, default=16, help="steps per dream")
    parser.add_argument("--seed", type=int, default=0, help="seeds starts and actions")
    parser.add_argument("--png", default="", help="where to write the frame strips")
    parser.add_argument("--real", action="store_true", help="also play the real game")
    args = parser.parse_args()
    if args.rollouts < 1 or args.steps < 1:
        parser.error(f"--rollouts and --steps must be >= 1, got {args.rollouts}, {args.steps}")

    import gymnasium as gym

    import worldsim  # noqa: F401  (registers worldsim/World-v0)

    venv = gym.make_vec("worldsim/World-v0", num_envs=args.rollouts, world=args.world)
    ended, strips = _play(venv, args)
    print(
        f"{args.world}: {ended.sum()} of {args.rollouts} dreams ended or lost a life within "
        f"{args.steps} steps ({100 * ended.mean():.1f}%)"
    )
    if args.real:
        from worldsim.config import from_dict
        from worldsim.games import EnvConfig, make_env
        from worldsim.sim import world_file

        env_cfg = from_dict(EnvConfig, world_file.read_meta(world_file.resolve(args.world)).env)
        real = gym.vector.SyncVectorEnv([lambda: make_env(env_cfg)] * args.rollouts)
        ended_real, _ = _play(real, args)
        print(
            f"the real game, same actions: {ended_real.sum()} of {args.rollouts} ended or lost "
            f"a life within {args.steps} steps ({100 * ended_real.mean():.1f}%)"
        )
    if args.png:
        import cv2

        rows = np.concatenate([np.concatenate(list(f), axis=1) for f in zip(*strips, strict=True)])
        big = rows.repeat(4, axis=0).repeat(4, axis=1)
        cv2.imwrite(args.png, big[..., ::-1])
        print(f"wrote {args.png} (a row per dream, frames every 4 steps)")


def _play(venv, args) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sticky-random play of `venv` from its resets: which rollouts ended or lost a life
    within `args.steps` steps, and the first 8 rollouts' frames every 4 steps."""
    rng = np.random.default_rng(args.seed)
    obs, info = venv.reset(seed=args.seed)
    n_actions = int(venv.single_action_space.n)
    held = rng.integers(0, n_actions, args.rollouts)
    left = rng.integers(0, 4, args.rollouts)
    ended = np.zeros(args.rollouts, bool)
    lives = info.get("lives")
    strips = [obs[:8].copy()]
    for t in range(args.steps):
        fresh = left <= 0
        held[fresh] = rng.integers(0, n_actions, int(fresh.sum()))
        left[fresh] = rng.integers(1, 5, int(fresh.sum()))
        left -= 1
        obs, _, term, trunc, info = venv.step(held)
        lost = np.asarray(info.get("life_lost", np.zeros_like(term)))
        if lives is not None and "lives" in info:  # the real game reports lives, not losses
            lost, lives = np.asarray(info["lives"]) < lives, info["lives"]
        ended |= term | lost
        if (t + 1) % 4 == 0:
            strips.append(obs[:8].copy())
    venv.close()
    return ended, strips


if __name__ == "__main__":
    main()
