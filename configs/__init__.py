"""worldsim's hydra configs (installed as `worldsim_configs` so they are found after `pip install`)."""
