"""Any game a user brings: pipeline folders per game, run folders usable from anywhere, short
runs that give sensible worlds, rare episode ends, and an action check for any game."""

import math

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN

from worldsim.config import ConfigError, load_config
from worldsim.data.segments import SegmentSampler
from worldsim.data.store import Dataset, Episode
from worldsim.games import EnvConfig
from worldsim.training.train import TrainConfig, Trainer, train


def tiny_config(data, out, *overrides) -> TrainConfig:
    """The tiny world model's training config over `data`, written to `out`."""
    return load_config(
        "train", TrainConfig, [f"data={data}", f"out={out}", *TINY_TRAIN, *overrides]
    )


def dot_game(
    root, episodes=12, length=120, size=32, end_frame=False, seed=0, end_reward=0.0
) -> Dataset:
    """A synthetic game: a white dot that actions 1-4 move (left, right, up, down) and action
    0 leaves. With `end_frame`, each episode's last frame is red: an end, rare (1 in
    `length`) but visible, that pays `end_reward`."""
    rng = np.random.default_rng(seed)
    ds = Dataset.create_or_append(
        root,
        env_id="test/Dot-v0",
        env="dot",
        test_fraction=0.25,
        action_meanings=["NOOP", "LEFT", "RIGHT", "UP", "DOWN"],
        frame_size=[size, size],
        lives=False,
    )
    moves = {0: (0, 0), 1: (0, -2), 2: (0, 2), 3: (-2, 0), 4: (2, 0)}
    for ep in range(episodes):
        y, x = rng.integers(4, size - 4, 2)
        frames, actions = [], rng.integers(0, 5, length)
        for t in range(length + 1):
            f = np.zeros((size, size, 3), np.uint8)
            f[y : y + 2, x : x + 2] = 255
            if end_frame and t == length:
                f[..., 0] = 200
            frames.append(f)
            if t < length:
                dy, dx = moves[int(actions[t])]
                y, x = int(np.clip(y + dy, 0, size - 2)), int(np.clip(x + dx, 0, size - 2))
        term, rewards = np.zeros(length, bool), np.zeros(length, np.float32)
        term[-1] = end_frame
        rewards[-1] = end_reward if end_frame else 0.0
        ds.add(
            ep,
            Episode(
                np.stack(frames),
                actions.astype(np.int64),
                rewards,
                term,
                np.zeros(length, bool),
            ),
            "random",
        )
    return ds


# --- pipeline folders ---------------------------------------------------------------------


def test_pipeline_folder_is_named_by_the_game():
    from worldsim.pipeline import default_root

    atari = EnvConfig(name="atari", id="Breakout", kind="atari")
    assert default_root(atari, "quick").as_posix() == "pipelines/breakout-quick"
    assert default_root(EnvConfig(name="gym", id="CartPole-v1", kind="gym"), "full").name == (
        "cartpole-full"
    )


def test_pipeline_refuses_a_folder_of_another_game(tmp_path, bricks32):
    import shutil

    from worldsim.pipeline import PipelineConfig, pipeline

    root = tmp_path / "p"
    shutil.copytree(bricks32.root, root / "data")  # a Bricks dataset where Maze should go
    cfg = load_config("pipeline", PipelineConfig, [f"root={root}", "env=maze"])
    with pytest.raises(
        ValueError, match=r"data is of the game worldsim/Bricks-v0, not worldsim/Maze-v0"
    ):
        pipeline(cfg)
    assert not (root / "teacher").exists()  # refused before anything was made


def test_pipeline_has_a_policy_key_and_auto_plays_any_game():
    import gymnasium as gym

    from worldsim.pipeline import PipelineConfig
    from worldsim.policies import Policy, PolicyConfig

    cfg = load_config("pipeline", PipelineConfig, ["policy.name=sticky", "policy.repeat=8"])
    assert cfg.policy == PolicyConfig(name="sticky", repeat=8)
    rng = np.random.default_rng(0)
    assert Policy(PolicyConfig(), gym.make("worldsim/Bricks-v0"), rng).name == "scripted"
    assert Policy(PolicyConfig(), gym.make("CartPole-v1"), rng).name == "sticky"
    with pytest.raises(ValueError, match="no scripted policy"):
        Policy(PolicyConfig(name="scripted"), gym.make("CartPole-v1"), rng)


def test_a_run_folder_works_from_another_directory(bricks32, tmp_path, monkeypatch):
    from worldsim.sim.world_file import load_world
    from worldsim.training.bundle import BundleConfig, bundle

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    (here / "data").symlink_to(bricks32.root)
    monkeypatch.chdir(here)
    cfg = load_config(
        "train", TrainConfig, ["data=data", "out=runs/r", *TINY_TRAIN, "steps=2", "batch_size=4"]
    )
    train(cfg)
    monkeypatch.chdir(elsewhere)
    world = bundle(BundleConfig(run=str(here / "runs" / "r"), out="w", starts=2))
    assert load_world(world).meta["source"]["data"] == str((here / "data").resolve())


def test_a_fine_tune_of_a_shipped_world_records_that_world_folder(tmp_path, monkeypatch):
    from worldsim.sim.world_file import WORLDS_DIR
    from worldsim.training.train import _absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = _absolute_paths(TrainConfig(data="data", out="r", init="maze"))
    assert cfg.init == str((WORLDS_DIR / "maze").resolve())
    assert cfg.data == str(tmp_path.resolve() / "data")


# --- short runs ---------------------------------------------------------------------------


def test_ema_ramps_up_so_a_short_run_keeps_what_it_learned(bricks32, tmp_path):
    trainer = Trainer(
        tiny_config(
            bricks32.root, tmp_path / "r", "ema=0.999", "steps=30", "batch_size=4", "optim.lr=3e-3"
        )
    )
    # EDM's ramp-up: the half-life is at most 5% of the steps so far, and the decay set in
    # `ema` once the run is long enough for it
    assert trainer.ema_decay_at(0) == pytest.approx(0.5**20)
    assert trainer.ema_decay_at(99) == pytest.approx(0.5 ** (1 / 5))
    assert trainer.ema_decay_at(10**6) == pytest.approx(0.999)
    start = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()

    def moved(params):
        return sum((p - s).pow(2).sum() for p, s in zip(params, start, strict=True)).sqrt()

    # a fixed 0.999 decay would have left the EMA at ~3% of the way after 30 steps
    assert moved(trainer.ema.parameters()) > 0.5 * moved(trainer.model.parameters())


def test_warmup_and_progress_total_follow_a_time_budget(bricks32, tmp_path):
    trainer = Trainer(
        tiny_config(
            bricks32.root,
            tmp_path / "r",
            "steps=100000",
            "minutes=10",
            "optim.warmup=200",
            "optim.lr=1e-3",
        )
    )
    assert trainer.planned_steps() == 100_000  # nothing measured yet
    assert trainer.lr_at(0) == pytest.approx(1e-3 / 200)
    trainer.step, trainer.elapsed = 100, 60.0  # 0.6 s a step: 900 more in the 9 minutes left
    assert trainer.planned_steps() == 1000
    assert trainer.lr_at(0) == pytest.approx(1e-3 / 100)  # warm-up: a tenth of the run
    trainer.elapsed = 600.0
    assert trainer.planned_steps() == 100  # the budget is spent
    assert trainer.lr_at(0) == pytest.approx(1e-3 / 100)  # the warm-up, once decided, stays


def test_a_short_time_budget_says_how_far_it_got(bricks32, tmp_path, capsys):
    train(tiny_config(bricks32.root, tmp_path / "r", "minutes=0.02", "batch_size=4"))
    err = capsys.readouterr()
    assert "steps in 0.0 min" in err.out
    assert "too few for a useful world" in err.err and "resume=true" in err.err


# --- rare episode ends --------------------------------------------------------------------


def test_end_head_learns_rare_ends_and_rewards_and_its_threshold_is_calibrated(tmp_path):
    from worldsim.training.calibration import calibrate, end_scores

    ds = dot_game(tmp_path / "dot", episodes=12, length=200, end_frame=True, end_reward=1.0)
    args = [f"data={ds.root}", f"out={tmp_path / 'r'}", *TINY_TRAIN, "steps=120", "batch_size=32"]
    train(load_config("train", TrainConfig, args))
    trainer = Trainer(load_config("train", TrainConfig, [*args, "resume=true"]))
    # the ends and the exit's reward come in the events drawn beside each batch, so their
    # losses are not weighted up as well
    assert trainer.n_events == 16 and trainer.model.end_weight == 1.0
    model = trainer.ema.eval()
    thresholds = calibrate(model, ds)
    test = SegmentSampler(ds, "test", model.cfg.denoiser.context)
    scores = end_scores(model, test, thresholds)
    assert scores["end_seen"] == 3
    assert scores["end_recall"] > 0.9 and scores["end_precision"] > 0.9
    # the exit's reward, as rare as the end, is learned too
    assert scores["reward_seen"] == 3
    assert scores["reward_recall"] > 0.9 and scores["reward_precision"] > 0.9


def test_without_events_the_rare_classes_are_weighed_up(tmp_path):
    ds = dot_game(tmp_path / "dot", episodes=4, length=200, end_frame=True, end_reward=1.0)
    args = [f"data={ds.root}", f"out={tmp_path / 'r'}", *TINY_TRAIN, "events=0"]
    trainer = Trainer(load_config("train", TrainConfig, args))
    assert trainer.n_events == 0 and not trainer.events
    assert trainer.model.end_weight == pytest.approx(math.sqrt(199))  # 1 end in 200 steps
    assert trainer.model.reward_weight.tolist() == pytest.approx([1.0, math.sqrt(199)])
    assert len(trainer._batch(0).obs) == trainer.cfg.batch_size


def test_events_are_drawn_in_equal_shares_beside_the_batch(tmp_path):
    ds = dot_game(tmp_path / "dot", episodes=4, length=200, end_frame=True, end_reward=1.0)
    data = SegmentSampler(ds, "train", 2)
    n = len(data.entries)  # episodes, each ending once, paying 1 there
    kinds = data.events()  # the ends, then the reward (no lives in this game)
    assert [len(k) for k in kinds] == [n, n] and (kinds[0] == kinds[1]).all()
    seg = data.sample_events(10, np.random.default_rng(0), kinds)
    assert seg.end[:, 0].all() and (seg.rew[:, 0] == 1).all()
    # a game with lives: an end, a lost life and two reward values, one of each in turn
    _, rews, ends, lost = data.flat
    rews[5], rews[6], lost[7] = 2.0, 1.0, True
    kinds = data.events()
    assert [len(k) for k in kinds] == [n, 1, n + 1, 1]
    seg = data.sample_events(8, np.random.default_rng(1), kinds)
    assert int((seg.life & ~seg.end).sum()) == 2
    assert 2 <= int(seg.end.sum()) <= 4  # the ends, and the 1s paid at the ends
    assert int((seg.rew == 2).sum()) == 2
    args = [f"data={ds.root}", f"out={tmp_path / 'r'}", *TINY_TRAIN, "batch_size=8"]
    trainer = Trainer(load_config("train", TrainConfig, args))
    assert len(trainer._batch(0).obs) == 8 + 4  # events=0.5 of the batch, for the reward model
    with pytest.raises(ConfigError, match="events must be in"):
        load_config("train", TrainConfig, [*args, "events=-1"])


def test_rare_rewards_are_all_scored_by_the_eval(tmp_path):
    """Every rewarded transition of the held-out play is scored (a maze pays once in
    ~15,000 steps: a random draw of transitions would miss it), against a known answer."""
    from worldsim.models.world_model import WorldModel
    from worldsim.training.calibration import end_scores

    ds = dot_game(tmp_path / "dot", episodes=12, length=200, end_frame=True, end_reward=1.0)
    test = SegmentSampler(ds, "test", 2)
    model = WorldModel(load_config("train", TrainConfig, ["model=tiny"]).model, 5, [0.0, 1.0])

    class Rewards(torch.nn.Module):  # a red next frame pays, when `pays`
        life_head = False

        def __init__(self, pays: bool):
            super().__init__()
            self.pays = pays

        def forward(self, obs, action, nxt):
            red = (nxt[:, 0].mean((1, 2)) > nxt[:, 1].mean((1, 2))).float() * 20 - 10
            r = torch.stack([-red, red], 1) if self.pays else torch.stack([red, -red], 1)
            return r, red, torch.full_like(red, -10.0)

    model.reward = Rewards(True)
    scores = end_scores(model, test, {"end": 0.0})
    assert scores["reward_seen"] == 3  # the three held-out episodes' exits
    assert scores["reward_recall"] == 1 and scores["reward_precision"] == 1
    assert scores["end_recall"] == 1 and scores["reward_false_per_1k"] == 0
    model.reward = Rewards(False)
    scores = end_scores(model, test, {"end": 0.0})
    assert scores["reward_recall"] == 0 and scores["reward_seen"] == 3
    # a model that never pays has no precision to report: None (null in report.json), not NaN
    model.reward.forward = lambda obs, action, nxt: (
        torch.tensor([[10.0, -10.0]]).expand(len(obs), 2),
        torch.full((len(obs),), -10.0),
        torch.full((len(obs),), -10.0),
    )
    scores = end_scores(model, test, {"end": 0.0})
    assert scores["reward_precision"] is None and scores["reward_recall"] == 0
    assert scores["end_precision"] is None and scores["end_recall"] == 0


# --- action following for any game --------------------------------------------------------


def test_inverse_dynamics_tells_a_world_that_follows_the_keys_from_one_that_does_not(tmp_path):
    from worldsim.evaluation.inverse_dynamics import action_recovery, train_idm

    ds = dot_game(tmp_path / "dot", episodes=8, length=200)
    train_split, test = SegmentSampler(ds, "train", 2), SegmentSampler(ds, "test", 2)
    idm = train_idm(train_split, 5, steps=300)
    shifts = {0: (0, 0), 1: (0, -2), 2: (0, 2), 3: (-2, 0), 4: (2, 0)}

    def follows(ctx, act):  # the game's own rule, as a perfect world would draw it
        return torch.stack(
            [
                torch.roll(f[-1], shifts[int(a)], dims=(1, 2))
                for f, a in zip(ctx, act[:, -1], strict=True)
            ]
        )

    def ignores(ctx, act):  # a world that draws the dot where it was
        return ctx[:, -1]

    good = action_recovery(idm, follows, test, 5, n=256)
    bad = action_recovery(idm, ignores, test, 5, n=256)
    assert good["real"] > 0.6 and good["world"] > 0.85 * good["real"]
    assert bad["world"] < 0.3 and bad["chance"] == pytest.approx(0.2)


# --- your own recordings ------------------------------------------------------------------


def _write_video(path, frames):
    import cv2

    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15, frames.shape[2:0:-1])
    for f in frames:
        out.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    out.release()


def test_a_folder_of_videos_and_action_files_imports_and_trains(tmp_path):
    from worldsim.data.imports import import_videos

    src = dot_game(tmp_path / "dot", episodes=3, length=40)
    folder = tmp_path / "videos"
    folder.mkdir()
    for i, entry in enumerate(src.entries()):
        ep = src.load(entry)
        _write_video(folder / f"play{i}.mp4", ep.frames)
        if i == 0:  # an .npy of actions
            np.save(folder / f"play{i}.npy", ep.actions)
        else:  # a CSV with a header, rewards and ends
            rows = ["action,reward,terminated"] + [
                f"{a},{r},{int(t)}"
                for a, r, t in zip(ep.actions, ep.rewards, ep.terminated, strict=True)
            ]
            (folder / f"play{i}.csv").write_text("\n".join(rows) + "\n")
    (folder / "actions.json").write_text('["NOOP", "LEFT", "RIGHT", "UP", "DOWN"]')
    ds = import_videos(folder, tmp_path / "imported", frame_size=32, test_fraction=0.34)
    assert ds.action_meanings == ["NOOP", "LEFT", "RIGHT", "UP", "DOWN"]
    got, real = ds.load(ds.entries()[1]), src.load(src.entries()[1])
    assert np.array_equal(got.actions, real.actions) and got.frames.shape == real.frames.shape
    assert np.abs(got.frames.astype(int) - real.frames).mean() < 8  # a lossy codec, same frames
    train(tiny_config(ds.root, tmp_path / "r", "steps=2", "batch_size=4"))


@pytest.mark.parametrize(
    "problem, message",
    [
        ("no_actions", r"play0.mp4: no action file beside it"),
        (
            "short",
            r"play0.csv: 39 actions for a video of 41 frames; expected one action per step \(40\)",
        ),
        ("text", r"play0.csv: column 'action' holds a value that is not a number"),
        ("header", r"play0.csv: expected a header row with an 'action' column"),
    ],
)
def test_a_malformed_recording_is_one_clear_error_and_nothing_is_written(
    tmp_path, problem, message
):
    from worldsim.data.imports import import_videos
    from worldsim.data.store import DataError

    src = dot_game(tmp_path / "dot", episodes=1, length=40)
    ep = src.load(src.entries()[0])
    folder = tmp_path / "videos"
    folder.mkdir()
    _write_video(folder / "play0.mp4", ep.frames)
    actions = [str(a) for a in ep.actions]
    if problem == "short":
        actions = actions[:-1]
    if problem == "text":
        actions[5] = "left"
    if problem != "no_actions":
        header = "key" if problem == "header" else "action"
        (folder / "play0.csv").write_text("\n".join([header, *actions]) + "\n")
    with pytest.raises(DataError, match=message):
        import_videos(folder, tmp_path / "imported", frame_size=32)
    assert not (tmp_path / "imported").exists()


def test_minari_export_and_import_round_trip_and_train(bricks32, tmp_path, monkeypatch):
    pytest.importorskip("minari")
    from worldsim.data.imports import export_minari, import_minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    export_minari(bricks32.root, "worldsim/bricks32-v0")
    ds = import_minari("worldsim/bricks32-v0", tmp_path / "imported", frame_size=32)
    assert ds.action_meanings == bricks32.action_meanings
    assert ds.meta["env_id"] == bricks32.meta["env_id"]
    assert len(ds.entries()) == len(bricks32.entries())
    a, b = ds.load(ds.entries()[0]), bricks32.load(bricks32.entries()[0])
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.actions, b.actions)  # lossless
    train(tiny_config(ds.root, tmp_path / "r", "steps=2", "batch_size=4"))
    with pytest.raises(ValueError, match="no local Minari dataset 'nope'"):
        import_minari("nope", tmp_path / "other")
