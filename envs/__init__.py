"""Source games for worldsim, registered as Gymnasium environments under `worldsim/`.

Installed under the import name `worldsim_envs` (PyPI's `envs` package owns `envs`).
"""

import gymnasium as gym

GAMES = {
    "worldsim/Bricks-v0": ("worldsim_envs.bricks:BricksEnv", 2000),
    "worldsim/Maze-v0": ("worldsim_envs.maze:MazeEnv", 500),
}


def register_games() -> None:
    """Register the built-in games with Gymnasium (safe to call more than once)."""
    for env_id, (entry_point, max_steps) in GAMES.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry_point, max_episode_steps=max_steps)


register_games()
