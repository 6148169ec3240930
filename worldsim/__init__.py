"""worldsim: learn a playable, Gymnasium-compatible copy of a game from recorded play."""

import worldsim_envs  # noqa: F401  (registers the source games with Gymnasium)

__version__ = "0.1.0"
