"""`worldsim record`: record episodes of a world (or of a real game) played by a scripted
policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tqdm import tqdm

from worldsim.play.recorder import Recorder
from worldsim.policies import action_source


@dataclass(frozen=True)
class RecordConfig:
    """Record N episodes as H.264 mp4s plus an episode dataset (`<out>/episodes`)."""

    world: str = "bricks"
    """Shipped world name or world folder."""
    game: str = ""
    """Record this real game instead of a world (a Gymnasium id, e.g. worldsim/Bricks-v0)."""
    policy: Literal["random", "sticky", "actions"] = "random"
    """Where actions come from."""
    actions: str = ""
    """policy=actions: a file of action indices (.npy, or one integer per line)."""
    episodes: int = 1
    """Episodes to record."""
    max_steps: int = 500
    """Steps after which an episode is cut."""
    sampler: str = ""
    """World sampler (empty = the world's default)."""
    out: str = "recordings"
    """Folder for the mp4s and the episode dataset; existing files are never replaced."""
    fps: int = 15
    """Frame rate of the videos."""
    seed: int = 0
    """Seeds the episodes and the policy."""

    def __post_init__(self):
        if self.episodes < 1 or self.max_steps < 1:
            raise ValueError(
                f"episodes and max_steps must be >= 1, got {self.episodes}, {self.max_steps}"
            )


def _make(cfg: RecordConfig):
    if cfg.game:
        from worldsim.games import EnvConfig, action_meanings, make_env

        env = make_env(EnvConfig(name="game", id=cfg.game))
        return env, cfg.game, action_meanings(env), "game"
    from worldsim.sim.env import WorldModelEnv

    env = WorldModelEnv(cfg.world, sampler=cfg.sampler or None, max_episode_steps=cfg.max_steps)
    return env, env.bundle.meta["env_id"], env.get_action_meanings(), "dream"


def record(cfg: RecordConfig) -> list[str]:
    env, env_id, meanings, source = _make(cfg)
    actions = action_source(cfg.policy, env.action_space.n, cfg.seed, cfg.actions)
    rec = Recorder(cfg.out, env_id, meanings, env.observation_space.shape[:2], cfg.fps)
    paths = []
    for i in tqdm(range(cfg.episodes), desc="record", unit="episode"):
        if actions.exhausted:  # the action file ran out in an earlier episode
            break
        obs, _ = env.reset(seed=cfg.seed + i)
        rec.start(obs)
        for _ in range(cfg.max_steps):
            if actions.exhausted:
                break
            a = actions()
            obs, r, term, trunc, _ = env.step(a)
            rec.add(a, obs, float(r), bool(term))
            if term or trunc:
                break
        path = rec.save(source)
        if path is not None:
            paths.append(str(path))
    env.close()
    return paths
