"""Lost lives: recorded at collection, learned by the reward/end model, and (on request) the
end of an RL episode in the world and in the real game, with the game going on after it."""

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN

from worldsim import files
from worldsim.config import ConfigError, load_config
from worldsim.data.collect import play_episode
from worldsim.data.store import DataError, Dataset, Episode, load_episode, save_episode
from worldsim.games import EnvConfig, make_env
from worldsim.policies import Policy, PolicyConfig
from worldsim.sim import world_file
from worldsim.sim.env import WorldModelEnv
from worldsim.sim.vector_env import WorldModelVectorEnv
from worldsim.sim.world_file import knows_lives, load_world
from worldsim.sim.wrappers import EndOnLifeLoss
from worldsim.training.bundle import BundleConfig, bundle
from worldsim.training.train import TrainConfig, Trainer


def test_collection_records_each_lost_life(bricks_data):
    assert bricks_data.lives  # Bricks reports lives, so the dataset says it recorded them
    env = make_env(EnvConfig())
    ep = play_episode(env, Policy(PolicyConfig("random"), env, np.random.default_rng(0)), 0, 5000)
    assert ep.terminated[-1] and ep.life_lost.sum() == 3 and ep.life_lost[-1]  # three balls
    back = bricks_data.load(bricks_data.entries()[0])
    assert back.life_lost.dtype == bool and len(back.life_lost) == len(back)


def test_episodes_recorded_before_lives_read_as_no_lost_life(tmp_path):
    T = 5
    ep = Episode(
        np.zeros((T + 1, 8, 8, 3), np.uint8),
        np.zeros(T, np.int64),
        np.zeros(T, np.float32),
        np.zeros(T, bool),
        np.zeros(T, bool),
    )
    save_episode(tmp_path / "ep.npz", ep)
    with np.load(tmp_path / "ep.npz") as z:  # an older file: the same without life_lost
        old = {k: z[k] for k in z.files if k != "life_lost"}
    np.savez_compressed(tmp_path / "old.npz", **old)
    back = load_episode(tmp_path / "old.npz")
    assert back.life_lost.dtype == bool and not back.life_lost.any() and len(back.life_lost) == T


def test_appending_lives_to_a_dataset_recorded_without_them_is_refused(tmp_path):
    meta = dict(env_id="x", env="x", action_meanings=["A"], frame_size=[8, 8], test_fraction=0.0)
    Dataset.create_or_append(tmp_path / "d", **meta)
    with pytest.raises(DataError, match="cannot append lives=True"):
        Dataset.create_or_append(tmp_path / "d", **meta, lives=True)


@pytest.fixture(scope="module")
def reward_run(bricks32, tiny_world, tmp_path_factory):
    """The tiny world's reward/end model refitted alone (denoiser kept) for 60 steps."""
    out = tmp_path_factory.mktemp("runs") / "reward"
    cfg = load_config(
        "train",
        TrainConfig,
        [
            f"data={bricks32.root}",
            f"out={out}",
            *TINY_TRAIN,
            f"init={tiny_world}",
            "reward_only=true",
            "steps=60",
            "batch_size=16",
            "ckpt_every=60",
        ],
    )
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer


def test_reward_only_training_keeps_the_denoiser_and_lowers_the_reward_loss(reward_run, tiny_world):
    teacher = files.load_tensors(tiny_world / "teacher.safetensors")
    for name, w in reward_run.model.denoiser.state_dict().items():
        assert torch.equal(w, teacher[f"denoiser.{name}"].float()), name
    for name, w in reward_run.ema.denoiser.state_dict().items():
        assert torch.equal(w, teacher[f"denoiser.{name}"].float()), name
    losses = [json.loads(line)["reward_loss"] for line in open(reward_run.run / "log.jsonl")]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:3])


def test_a_world_refitted_with_lives_keeps_its_student_and_knows_lives(
    reward_run, tiny_world, tmp_path
):
    out = bundle(
        BundleConfig(run=str(reward_run.run), student=str(tiny_world), out=str(tmp_path / "w"))
    )
    assert knows_lives(out) and not knows_lives("maze")
    w, old = load_world(out), load_world(tiny_world)
    assert w.meta["student"] == old.meta["student"]
    for (name, a), b in zip(
        w.student.state_dict().items(), old.student.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_world_from_play_that_never_lost_a_life_does_not_claim_lives(
    bricks32, tiny_world, tmp_path
):
    """A game that reports lives but never loses one in the data (Pong reports 0 throughout)
    gives nothing to learn lost lives from: training episodes must not end at them."""
    data = tmp_path / "data"
    shutil.copytree(bricks32.root, data)
    ds = Dataset.open(data)
    assert ds.lives
    for e in ds.entries():
        ep = ds.load(e)
        ep.life_lost[:] = False
        save_episode(data / e["file"], ep)
    cfg = [f"data={data}", f"out={tmp_path / 'r'}", *TINY_TRAIN, f"init={tiny_world}"]
    trainer = Trainer(load_config("train", TrainConfig, [*cfg, "reward_only=true", "steps=1"]))
    trainer.fit()
    out = bundle(BundleConfig(run=str(trainer.run), out=str(tmp_path / "w"), starts=2))
    assert not knows_lives(out)
    with pytest.raises(ValueError, match="needs a world that predicts lost lives"):
        WorldModelVectorEnv(2, str(out), end_on_life_loss=True)


def test_init_from_a_world_of_another_denoiser_is_refused(bricks32, tmp_path):
    cfg = load_config(
        "train",
        TrainConfig,
        [
            f"data={bricks32.root}",
            f"out={tmp_path / 'r'}",
            "init=bricks",
            *TINY_TRAIN,
        ],
    )
    with pytest.raises(files.CheckpointError, match="denoiser config differs"):
        Trainer(cfg)
    assert not (tmp_path / "r").exists()


def test_a_reward_only_run_takes_its_init_denoiser_config(bricks32, tiny_world, tmp_path):
    """The denoiser is kept as it is, so its config need not be restated (the default model
    config names a larger one)."""
    args = [f"data={bricks32.root}", f"out={tmp_path / 'r'}", f"init={tiny_world}"]
    trainer = Trainer(load_config("train", TrainConfig, [*args, "reward_only=true"]))
    assert trainer.model_cfg.denoiser == load_world(tiny_world).model.cfg.denoiser
    with pytest.raises(files.CheckpointError, match="denoiser config differs"):
        Trainer(load_config("train", TrainConfig, [*args, f"out={tmp_path / 'r2'}"]))


def test_a_fine_tune_may_weigh_the_moving_pixels_differently_from_its_init(
    bricks32, tiny_world, tmp_path
):
    out = tmp_path / "r"
    cfg = [f"data={bricks32.root}", f"out={out}", *TINY_TRAIN, f"init={tiny_world}"]
    weighted = [*cfg, "model.denoiser.motion_weight=3", "steps=1"]
    trainer = Trainer(load_config("train", TrainConfig, weighted))
    assert trainer.model_cfg.denoiser.motion_weight == 3
    # and the bundle takes the init's student beside the re-weighted teacher
    trainer.fit()
    world = bundle(
        BundleConfig(run=str(out), student=str(tiny_world), out=str(tmp_path / "w"), starts=2)
    )
    assert (world / "student.safetensors").exists()
    with pytest.raises(files.CheckpointError, match="denoiser config differs"):
        Trainer(
            load_config(
                "train", TrainConfig, [*cfg, f"out={tmp_path / 'q'}", "model.denoiser.context=3"]
            )
        )


@pytest.fixture(scope="module")
def lossy_world(tiny_world, tmp_path_factory):
    """The tiny world with its end model set to 'never' and its lost-life output to 'always'."""
    out = tmp_path_factory.mktemp("worlds") / "lossy"
    shutil.copytree(tiny_world, out)
    meta = json.loads((out / "world.json").read_text())
    assert meta["model"]["reward"]["life_head"]
    meta["lives"] = True
    w = files.load_tensors(out / "teacher.safetensors")
    n = len(meta["reward_values"])
    w["reward.head.2.weight"][n:] = 0
    w["reward.head.2.bias"][n], w["reward.head.2.bias"][n + 1] = -100, 100
    # the world's checksum follows the edit (load_world refuses weights that differ from it)
    meta["checksums"]["teacher.safetensors"] = files.save_tensors(out / "teacher.safetensors", w)
    (out / "world.json").write_text(json.dumps(meta))
    return out


def test_end_on_life_loss_needs_a_world_that_knows_lives(tiny_world, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_world, plain)
    meta = json.loads((plain / "world.json").read_text())
    meta["lives"] = False
    (plain / "world.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match="end_on_life_loss=True needs a world that predicts lost lives"
    ):
        WorldModelEnv(str(plain), end_on_life_loss=True)
    WorldModelEnv(str(plain))  # without the option it is an ordinary world
    from worldsim.rl import RLConfig, train_rl

    with pytest.raises(ValueError, match="life_loss=on needs a world that predicts lost lives"):
        train_rl(RLConfig(world=str(plain), life_loss="on", out=str(tmp_path / "rl")))
    assert not (tmp_path / "rl").exists()


def test_an_episode_ended_by_a_lost_life_goes_on_from_there(lossy_world):
    env = WorldModelEnv(str(lossy_world), end_on_life_loss=True, max_episode_steps=3)
    env.reset(seed=0)
    obs, _, term, trunc, info = env.step(1)
    assert term and not trunc and info["life_lost"]
    again, info = env.reset()  # no new start: the same moment
    assert np.array_equal(again, obs) and info["step"] == 1
    env.step(2)
    env.reset()
    obs, _, term, trunc, _ = env.step(3)  # the step count ran on across the resets
    assert term and trunc
    starts = {s[-1].tobytes() for s in env.bundle.start_frames.numpy()}
    assert env.reset()[0].tobytes() in starts  # after a time limit: a fresh start
    plain = WorldModelEnv(str(lossy_world))  # without the option lost lives are only reported
    plain.reset(seed=0)
    _, _, term, _, info = plain.step(1)
    assert not term and info["life_lost"]


def test_vector_env_goes_on_after_lost_lives_like_single_envs(lossy_world):
    actions = np.random.default_rng(3).integers(0, 4, (6, 2))
    venv = WorldModelVectorEnv(
        2, str(lossy_world), end_on_life_loss=True, autoreset_mode="same_step"
    )
    obs, _ = venv.reset(seed=7)
    seen = [obs]
    for a in actions:
        obs, _, term, _, info = venv.step(a)
        assert term.all() and info["life_lost"].all()
        assert all(
            np.array_equal(o, f) and f.dtype == np.uint8
            for o, f in zip(obs, info["final_obs"], strict=True)
        )
        seen.append(obs)
    single = WorldModelEnv(str(lossy_world), end_on_life_loss=True)
    for i in range(2):
        frames = [single.reset(seed=7 + i)[0]]
        for a in actions[:, i]:
            single.step(int(a))
            frames.append(single.reset()[0])  # terminated: go on, as autoreset does
        diff = np.abs(np.stack(frames).astype(int) - np.stack(seen)[:, i].astype(int))
        assert diff.mean() < 0.05 and diff.max() <= 8
    nxt = WorldModelVectorEnv(2, str(lossy_world), end_on_life_loss=True)  # next_step autoreset
    nxt.reset(seed=7)
    obs, _, term, _, _ = nxt.step(actions[0])
    again, rew, term2, _, _ = nxt.step(actions[1])  # the reset step: nothing moves
    assert term.all() and not term2.any() and np.array_equal(again, obs) and (rew == 0).all()


def test_real_game_episodes_end_at_each_lost_life_and_the_game_goes_on():
    env = EndOnLifeLoss(make_env(EnvConfig()))
    obs, info = env.reset(seed=0)
    rng, ends, lives = np.random.default_rng(0), 0, [info["lives"]]
    for _ in range(5000):
        obs, _, term, trunc, info = env.step(int(rng.integers(4)))
        if term:
            ends += 1
            if info["lives"] == 0:
                break
            again, info = env.reset()
            assert np.array_equal(again, obs)
            lives.append(info["lives"])
    assert ends == 3 and lives == [3, 2, 1]
    assert env.reset()[1]["lives"] == 3  # the game ended: a new one


class Lives(gym.Env):
    """A fake game of 3 lives: one is lost at every 2nd step, the last ends the game; the
    observation counts the steps since the game's start."""

    observation_space = gym.spaces.Box(0, 10**6, (1,), np.int64)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, report="lives", limit=100):
        self.report, self.limit, self.resets = report, limit, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.lives, self.resets = 0, 3, self.resets + 1
        return np.array([self.t]), self._info(False)

    def step(self, action):
        self.t += 1
        lost = self.t % 2 == 0
        self.lives -= lost
        return np.array([self.t]), 1.0, self.lives == 0, self.t >= self.limit, self._info(lost)

    def _info(self, lost):
        return {"lives": self.lives} if self.report == "lives" else {"life_lost": lost}


@pytest.mark.parametrize("report", ["lives", "life_lost"])
def test_end_on_life_loss_ends_at_each_lost_life_and_goes_on_from_there(report):
    env = EndOnLifeLoss(Lives(report))
    env.reset(seed=0)
    ends = []
    for _ in range(3):  # three lives: three episodes of one game
        t = 0
        while True:
            obs, r, term, trunc, _ = env.step(0)
            t += 1
            if term or trunc:
                break
        ends.append((t, int(obs[0]), term, trunc))
        again, _ = env.reset()
        if len(ends) < 3:
            assert again is obs and env.env.resets == 1  # the same moment, the same game
    assert ends == [(2, 2, True, False), (2, 4, True, False), (2, 6, True, False)]
    assert int(again[0]) == 0 and env.env.resets == 2  # the game was over: a new one
    env.step(0), env.step(0)
    assert int(env.reset(seed=1)[0][0]) == 0 and env.env.resets == 3  # a seed: a new game


def test_end_on_life_loss_does_not_go_on_after_a_time_limit():
    env = EndOnLifeLoss(Lives(limit=2))
    env.reset(seed=0)
    env.step(0)
    _, _, term, trunc, info = env.step(0)  # a life lost at the time limit
    assert term and trunc and info["lives"] == 2
    assert int(env.reset()[0][0]) == 0 and env.env.resets == 2


def _play_with_rewards(root, n_steps: int, extra_reward: float | None = None) -> Dataset:
    """Random Bricks-32 play (train and test episodes), one reward set to `extra_reward`."""
    env = make_env(EnvConfig(frame_size=32))
    ds = Dataset.create_or_append(
        root,
        env_id="worldsim/Bricks-v0",
        env="bricks",
        action_meanings=["NOOP", "FIRE", "RIGHT", "LEFT"],
        frame_size=[32, 32],
        test_fraction=0.5,
        lives=True,
    )
    for i in range(2):
        ep = play_episode(
            env, Policy(PolicyConfig("random"), env, np.random.default_rng(i)), i, n_steps
        )
        if extra_reward is not None:
            ep.rewards[5] = extra_reward
        ds.add(i, ep, "random")
    return ds


@pytest.mark.parametrize("extra", [None, 99.0])
def test_a_fine_tune_keeps_the_init_reward_model_unless_the_data_scores_new_amounts(
    tiny_world, tmp_path, extra
):
    """Play that never scored some amounts (an agent's, a few steps of it) keeps the world's
    reward classes and reward/end model; an amount the world never saw gives a fresh one."""
    ds = _play_with_rewards(tmp_path / "data", 300, extra)
    world = load_world(tiny_world)
    known = world.meta["reward_values"]
    cfg = load_config(
        "train",
        TrainConfig,
        [f"data={ds.root}", f"out={tmp_path / 'r'}", *TINY_TRAIN, f"init={tiny_world}"],
    )
    trainer = Trainer(cfg)
    values = trainer.model.reward_values.tolist()
    same = [
        torch.equal(w, world.model.reward.state_dict()[k])
        for k, w in trainer.model.reward.state_dict().items()
    ]
    if extra is None:
        assert values == known and all(same)
    else:
        assert 99.0 in values and values != known and not all(same)


def test_a_fine_tune_that_weighs_rare_ends_otherwise_keeps_its_init_reward_model(
    bricks32, tiny_world, tmp_path
):
    cfg = [f"data={bricks32.root}", *TINY_TRAIN, f"init={tiny_world}"]
    weights = world_file.load_source(tiny_world).weights()
    assert world_file.load_source(tiny_world).model_cfg.reward.life_head
    n = len(world_file.load_source(tiny_world).meta["reward_values"]) + 1  # rewards, end
    for i, (life_head, keep) in enumerate([("true", n + 1), ("false", n)]):
        over = ["model.reward.end_weight=7", f"model.reward.life_head={life_head}"]
        trainer = Trainer(load_config("train", TrainConfig, [*cfg, *over, f"out={tmp_path}/{i}"]))
        assert trainer.model_cfg.reward.end_weight == 7
        for k, v in trainer.model.reward.state_dict().items():
            want = weights[f"reward.{k}"].to(v.dtype)
            if k.startswith("head.2."):  # the last layer: a row for each reward, end (, life)
                assert len(v) == keep
                v, want = v[:n], want[:n]
            assert torch.equal(v, want), k


def test_a_reward_model_may_learn_from_the_world_s_own_draws(bricks32, tiny_world, tmp_path):
    """drawn=0.5: every other next frame the reward/end model learns from is the init
    world's one-step draw from the real context, the labels still the real step's."""
    from worldsim.sim.world import World

    args = [f"data={bricks32.root}", f"out={tmp_path / 'r'}", *TINY_TRAIN, f"init={tiny_world}"]
    args += ["steps=2", "batch_size=8"]
    trainer = Trainer(load_config("train", TrainConfig, [*args, "reward_only=true", "drawn=0.5"]))
    batch = trainer._batch(0)
    K = trainer.model_cfg.denoiser.context
    gen = torch.Generator().manual_seed(3)
    obs = trainer.with_drawn(batch.obs, batch.act, gen)
    world = World(load_world(tiny_world))
    ctx = obs[1::2, :K].float() / 127.5 - 1
    expected = world.draw(ctx, batch.act[1::2, :K], gen.manual_seed(3))
    assert torch.equal(obs[::2], batch.obs[::2]) and torch.equal(obs[:, :K], batch.obs[:, :K])
    assert torch.equal(obs[1::2, K], (expected.add(1).mul(127.5).round().clamp(0, 255)).byte())
    trainer.fit()  # and it trains
    for bad in (["drawn=0.5"], ["reward_only=true", "drawn=2"]):
        with pytest.raises(ConfigError, match="drawn"):
            load_config("train", TrainConfig, [*args, *bad])
