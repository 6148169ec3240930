"""worldsim: learn a playable, Gymnasium-compatible copy of a game from recorded play."""

import worldsim_envs  # noqa: F401  (registers the source games with Gymnasium)

__version__ = "0.1.0"

import gymnasium as _gym  # noqa: E402

if "worldsim/World-v0" not in _gym.registry:
    _gym.register(
        "worldsim/World-v0",
        entry_point="worldsim.sim.env:WorldModelEnv",
        vector_entry_point="worldsim.sim.vector_env:WorldModelVectorEnv",
    )
