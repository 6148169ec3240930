"""worldsim's hydra configs, installed as `worldsim_configs` so `pip install` finds them."""
