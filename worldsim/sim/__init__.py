"""The world as a Gymnasium environment: world files, the stepping core, env, vector env."""
