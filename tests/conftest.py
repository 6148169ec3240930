import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import pytest  # noqa: E402

from worldsim.config import load_config  # noqa: E402
from worldsim.data.collect import CollectConfig, collect  # noqa: E402


@pytest.fixture(scope="session")
def bricks_data(tmp_path_factory):
    """A small recorded Bricks dataset (scripted policy, 4,000 steps, a quarter held out)."""
    out = tmp_path_factory.mktemp("data") / "bricks"
    cfg = load_config(
        "collect", CollectConfig, [f"out={out}", "steps=4000", "workers=1", "test_fraction=0.25"]
    )
    return collect(cfg)
