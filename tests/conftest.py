import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
# frame caches of the tests' datasets go to a folder of the session's, not ~/.cache
os.environ.setdefault("WORLDSIM_CACHE", __import__("tempfile").mkdtemp(prefix="worldsim-cache-"))
# Under pytest-xdist (`-n 2`) each worker takes its share of the cores, and so do the
# commands its tests start: two workers of two threads each on two cores run slower than one.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
    __import__("torch").set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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


@pytest.fixture(scope="session")
def bricks32(tmp_path_factory):
    """Bricks scaled down to 32x32 for quick training runs (6,000 steps, a quarter held out)."""
    out = tmp_path_factory.mktemp("data") / "bricks32"
    cfg = load_config(
        "collect",
        CollectConfig,
        [f"out={out}", "steps=6000", "workers=1", "test_fraction=0.25", "env.frame_size=32"],
    )
    return collect(cfg)


# a tiny world model that learns Bricks-32 in about a minute on 2 cores
TINY_TRAIN = [
    "model=tiny",
    "optim.lr=1e-3",
    "optim.warmup=20",
    "ema=0.95",
    "eval_every=100000",
    "sample_every=100000",
]


@pytest.fixture(scope="session")
def small_run(bricks32, tmp_path_factory):
    """A tiny world model run (2 steps) over Bricks-32: enough to exercise checkpoints."""
    from worldsim.training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("runs") / "small"
    cfg = load_config(
        "train",
        TrainConfig,
        [
            f"data={bricks32.root}",
            f"out={run}",
            *TINY_TRAIN,
            "steps=2",
            "ckpt_every=2",
            "batch_size=4",
        ],
    )
    return train(cfg)


@pytest.fixture(scope="session")
def tiny_world(small_run, tmp_path_factory):
    """A world folder with teacher and one-step student (both barely trained: for API tests)."""
    from worldsim.training.bundle import BundleConfig, bundle
    from worldsim.training.distill import DistillConfig, distill

    root = tmp_path_factory.mktemp("worlds")
    student = distill(
        load_config(
            "distill",
            DistillConfig,
            [f"teacher={small_run}", f"out={root / 'student'}", "steps=1", "batch_size=2"],
        )
    )
    return bundle(
        BundleConfig(run=str(small_run), student=str(student), out=str(root / "world"), starts=4)
    )
