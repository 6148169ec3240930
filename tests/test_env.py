"""The learned world as a Gymnasium citizen: conformance, determinism, batching, clear refusals."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import worldsim  # noqa: F401  (registers worldsim/World-v0)
from worldsim.files import CheckpointError
from worldsim.models.samplers import SamplerConfig
from worldsim.sim.env import WorldModelEnv
from worldsim.sim.vector_env import WorldModelVectorEnv
from worldsim.sim.world_file import load_world


def test_gymnasium_check_env(tiny_world):
    env = gym.make("worldsim/World-v0", world=str(tiny_world))
    check_env(env.unwrapped)
    assert env.unwrapped.sampler.name == "onestep"  # the default once a student exists
    assert env.unwrapped.get_action_meanings() == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert env.unwrapped.get_keys_to_action()


def test_sb3_check_env(tiny_world):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    sb3_check_env(WorldModelEnv(str(tiny_world)), warn=False)


def rollout(env, seed, actions, options=None):
    obs, _ = env.reset(seed=seed, options=options)
    frames, rewards = [obs], []
    for a in actions:
        obs, r, term, trunc, _ = env.step(int(a))
        frames.append(obs)
        rewards.append(r)
    return np.stack(frames), rewards


@pytest.mark.parametrize("sampler,steps", [("onestep", None), ("euler", 2), ("multistep", 2)])
def test_same_seed_same_actions_same_frames(tiny_world, sampler, steps):
    env = WorldModelEnv(str(tiny_world), sampler=sampler, steps=steps)
    actions = np.random.default_rng(0).integers(0, 4, 20)
    a, b = rollout(env, 3, actions), rollout(env, 3, actions)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert a[0].dtype == np.uint8 and a[0].shape == (21, 32, 32, 3)
    assert not np.array_equal(a[0], rollout(env, 4, actions)[0])


def test_reset_from_a_real_moment(tiny_world, bricks32):
    env = WorldModelEnv(str(tiny_world))
    ep = bricks32.load(bricks32.entries()[0])
    K = env.bundle.context
    obs, _ = env.reset(
        seed=0, options={"frames": ep.frames[10 : 10 + K], "actions": ep.actions[9 : 9 + K]}
    )
    assert np.array_equal(obs, ep.frames[10 + K - 1])
    with pytest.raises(ValueError, match=r"options\['frames'\] must be \(2, 32, 32, 3\) uint8"):
        env.reset(options={"frames": ep.frames[:5], "actions": ep.actions[:2]})
    with pytest.raises(ValueError, match=r"options\['actions'\] must lie in \[0, 4\)"):
        env.reset(options={"frames": ep.frames[:K], "actions": np.array([0, 9])})


def test_vector_env_starts_new_episodes_from_a_given_pool(tiny_world, bricks32):
    """`starts=`: new episodes (resets and autoresets) begin at moments of real play."""
    from worldsim.online import real_contexts

    frames, actions = real_contexts(bricks32, 2, 5, np.random.default_rng(0))
    venv = WorldModelVectorEnv(3, str(tiny_world), starts=(frames, actions), max_episode_steps=2)
    lasts = frames[:, -1].numpy()
    seen = []
    obs, _ = venv.reset(seed=0)
    seen += list(obs)
    for _ in range(4):  # two truncations: each env starts twice more
        obs, *_ = venv.step(np.zeros(3, int))
        seen += list(obs)
    starts = [o for o in seen if any(np.array_equal(o, f) for f in lasts)]
    assert len(starts) >= 3 * 2
    with pytest.raises(ValueError, match=r"starts frames must be \(N >= 1, 2, 32, 32, 3\) uint8"):
        WorldModelVectorEnv(2, str(tiny_world), starts=(frames[:, :1], actions[:, :1]))
    with pytest.raises(ValueError, match=r"starts actions must lie in \[0, 4\)"):
        WorldModelVectorEnv(2, str(tiny_world), starts=(frames, actions + 4))


def test_real_contexts_are_moments_of_the_episodes(bricks32):
    """A drawn context is K consecutive frames of one episode with the actions that made
    them; before the first frame it repeats it with action 0."""
    from worldsim.online import real_contexts

    K = 3
    frames, actions = real_contexts(bricks32, K, 200, np.random.default_rng(1))
    assert frames.shape == (200, K, 32, 32, 3) and actions.shape == (200, K)
    episodes = [bricks32.load(e) for e in bricks32.entries("train")]
    padded = 0
    for f, a in zip(frames.numpy(), actions.numpy(), strict=True):
        found = False
        for ep in episodes:
            for t in np.flatnonzero((ep.frames == f[-1]).all(axis=(1, 2, 3))):
                idx = np.arange(t - K + 1, t + 1)
                want_f = ep.frames[np.maximum(idx, 0)]
                want_a = np.where(idx > 0, ep.actions[np.maximum(idx - 1, 0)], 0)
                found |= np.array_equal(want_f, f) and np.array_equal(want_a, a)
            if found:
                break
        assert found
        padded += np.array_equal(f[0], f[-1]) and a[0] == 0
    assert padded < 200


def test_vector_env_is_batched_and_env_i_matches_a_single_env(tiny_world):
    venv = gym.make_vec("worldsim/World-v0", num_envs=3, world=str(tiny_world))
    assert isinstance(venv, WorldModelVectorEnv)
    actions = np.random.default_rng(1).integers(0, 4, (15, 3))
    obs, _ = venv.reset(seed=10)
    frames, ended = [obs], []
    for a in actions:
        obs, rew, term, trunc, _ = venv.step(a)
        frames.append(obs)
        ended.append(term | trunc)
    frames, ended = np.stack(frames), np.stack(ended)  # (T+1, N, H, W, 3), (T, N)
    single = WorldModelEnv(str(tiny_world))
    for i in range(3):
        alone, _ = rollout(single, 10 + i, actions[:, i])
        n = 1 + (
            int(np.argmax(ended[:, i])) + 1 if ended[:, i].any() else len(actions)
        )  # up to its first end
        # batched and single convolutions may round differently in the last bit; frames are
        # quantised to uint8, so they agree to within a level or two where they differ at all
        diff = np.abs(alone[:n].astype(int) - frames[:n, i].astype(int))
        assert diff.mean() < 0.05 and diff.max() <= 8, (i, n, diff.mean(), diff.max())
    assert (~ended[:5]).any()  # the comparison covered real steps


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["next_step", "same_step"])
def test_vector_env_autoreset(tiny_world, mode, precision):
    venv = WorldModelVectorEnv(
        3, str(tiny_world), max_episode_steps=3, autoreset_mode=mode, precision=precision
    )
    starts = {s[-1].tobytes() for s in venv.bundle.start_frames.numpy()}
    venv.reset(seed=0)
    prev_done, since_start = np.zeros(3, bool), np.zeros(3, int)
    for _ in range(8):
        obs, rew, term, trunc, info = venv.step(np.array([1, 2, 3]))
        done = term | trunc
        if mode == "next_step":  # an env that ended last step restarts now, ignoring its action
            assert not done[prev_done].any() and (rew[prev_done] == 0).all()
            assert all(obs[i].tobytes() in starts for i in np.flatnonzero(prev_done))
            since_start = np.where(prev_done, 0, since_start + 1)
        else:  # it restarts in the same step; what it ended on is in info
            if done.any():
                assert (info["_final_obs"] == done).all()
                assert all(obs[i].tobytes() in starts for i in np.flatnonzero(done))
                final = info["final_obs"]  # (N,) frames where done, even when all are
                assert final.shape == (3,) and all(final[i] is None for i in np.flatnonzero(~done))
                assert all(
                    final[i].dtype == np.uint8 and final[i].shape == (32, 32, 3)
                    for i in np.flatnonzero(done)
                )
            since_start += 1
        assert (trunc[~term] == (since_start[~term] >= 3)).all()
        if mode == "same_step":
            since_start[done] = 0
        prev_done = done
    assert venv.metadata["autoreset_mode"].name == mode.upper()


@pytest.mark.parametrize("native", [True, False])
def test_bf16_warns_where_it_is_emulated(tiny_world, monkeypatch, native):
    """On a CPU without AMX or AVX512-BF16, bf16 runs several times slower than fp32: the
    user who asks for it is told so, once, and still gets it."""
    import warnings

    import worldsim.runtime

    monkeypatch.setattr(worldsim.runtime, "bf16_is_fast", lambda device: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = WorldModelEnv(str(tiny_world), precision="bf16")
    said = [str(w.message) for w in caught if "bf16" in str(w.message)]
    assert env.world.precision == "bf16"
    if native:
        assert said == []
    else:
        assert len(said) == 1 and "slower than fp32" in said[0] and "precision='fp32'" in said[0]


def test_bf16_precision_is_deterministic_and_close_to_fp32(tiny_world):
    actions = np.random.default_rng(2).integers(0, 4, 6)
    # drawn raw (still=0): kept still pixels would hide the difference bfloat16 makes
    fp32 = rollout(WorldModelEnv(str(tiny_world), still=0), 5, actions)[0]
    env = WorldModelEnv(str(tiny_world), precision="bf16", still=0)
    a, b = rollout(env, 5, actions)[0], rollout(env, 5, actions)[0]
    assert np.array_equal(a, b) and a.dtype == np.uint8
    # the same noise through a bfloat16 network: one step ahead the frames nearly agree
    mse = np.mean((a[1].astype(float) - fp32[1].astype(float)) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-10)) > 30
    w16, w32 = env.world, WorldModelEnv(str(tiny_world), still=0).world  # it ran in bfloat16
    obs, act = w16.frames, torch.cat([w16.actions[:, 1:], w16.actions[:, :1]], 1)
    x16, x32 = (w.draw(obs, act, torch.Generator().manual_seed(0)) for w in (w16, w32))
    assert x16.dtype == x32.dtype == torch.float32 and not torch.equal(x16, x32)
    # it draws with the student prepared in bfloat16; the bundle keeps the fp32 network
    from worldsim.models.prepare import prepare
    from worldsim.sim.world import Sampler

    student = prepare(w16.bundle.student, "bf16")
    again = Sampler(student, w16.sampler)(obs, act, torch.Generator().manual_seed(0))
    assert torch.equal(again.float(), x16) and w16.denoiser is not w16.bundle.student
    assert next(w16.bundle.student.parameters()).dtype == torch.float32
    # play switches sampler at run time: the teacher gets its own bfloat16 copy
    student16 = w16.denoiser
    w16.sampler = SamplerConfig("euler", 3)
    teacher16 = w16.denoiser
    assert teacher16 is w16.denoiser and teacher16 is not student16
    assert teacher16.parameterization == w16.model.denoiser.parameterization != "consistency"
    assert any(p.dtype == torch.bfloat16 for p in teacher16.parameters())
    with pytest.raises(ValueError, match="precision must be fp32 or bf16, got 'fp16'"):
        WorldModelEnv(str(tiny_world), precision="fp16")


def test_bad_inputs_are_refused_with_one_clear_line(tiny_world, tmp_path):
    env = WorldModelEnv(str(tiny_world))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be an integer in \[0, 4\), got 7"):
        env.step(7)
    with pytest.raises(CheckpointError, match="no world"):
        WorldModelEnv(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="draws 32x32 frames, not the 64x64 asked for"):
        WorldModelEnv(str(tiny_world), frame_size=64)
    with pytest.raises(ValueError, match="has 4 actions, not the 6 asked for"):
        gym.make("worldsim/World-v0", world=str(tiny_world), num_actions=6)
    venv = WorldModelVectorEnv(2, str(tiny_world))
    with pytest.raises(gym.error.ResetNeeded, match="call reset"):
        venv.step(np.array([0, 1]))
    with pytest.raises(gym.error.ResetNeeded, match="call reset"):
        WorldModelEnv(str(tiny_world)).step(0)
    venv.reset(seed=np.int64(3))
    with pytest.raises(ValueError, match="actions must be 2 integers"):
        venv.step(np.array([0, 9]))
    with pytest.raises(ValueError, match="actions must be 2 integers"):
        venv.step(np.array([1.7, 0.2]))
    env.step(np.array(2))  # a 0-d integer array, as SB3's predict gives for one env
    for bad in (True, 1.0, np.float32(2)):
        with pytest.raises(ValueError, match=r"action must be an integer in \[0, 4\)"):
            env.step(bad)
    with pytest.raises(ValueError, match="render_mode must be None or 'rgb_array', got 'human'"):
        WorldModelVectorEnv(2, str(tiny_world), render_mode="human")
    with pytest.raises(ValueError, match="max_episode_steps must be >= 1, got 0"):
        WorldModelVectorEnv(2, str(tiny_world), max_episode_steps=0)
    for options in ({"frames": np.zeros((2, 32, 32, 3), np.uint8)}, {"actions": np.zeros(2, int)}):
        for e in (env, venv):
            with pytest.raises(ValueError, match="need both 'frames' and 'actions'"):
                e.reset(options=options)


def test_sampler_and_steps_arguments(tiny_world):
    default = WorldModelEnv(str(tiny_world)).sampler
    assert (default.name, default.steps) == ("onestep", 1)
    # steps asked of a world with a student: its multistep sampler, not a silent one step
    assert WorldModelEnv(str(tiny_world), steps=3).sampler.name == "multistep"
    assert WorldModelEnv(str(tiny_world), steps=1).sampler.name == "onestep"
    assert WorldModelEnv(str(tiny_world), sampler="heun", steps=2).sampler.steps == 2
    with pytest.raises(ValueError, match="sampler 'onestep' takes one step, got steps=4"):
        WorldModelEnv(str(tiny_world), sampler="onestep", steps=4)
    with pytest.raises(ValueError, match=r"sampler.steps must be in \[1, 1000\], got 0"):
        WorldModelEnv(str(tiny_world), sampler="euler", steps=0)
    # still backgrounds kept at the world's own level by default; off on request, for the
    # teacher's samplers too
    assert default.still == load_world(tiny_world).still
    assert WorldModelEnv(str(tiny_world), sampler="euler", still=0).sampler.still == 0
    with pytest.raises(ValueError, match=r"sampler.still must be in \[0, 255\].*got -1"):
        WorldModelEnv(str(tiny_world), still=-1)


def test_long_rollout_stays_finite_in_range_and_bounded(tiny_world):
    import resource

    env = WorldModelEnv(str(tiny_world), max_episode_steps=10**6)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for t in range(1500):
        obs, r, term, trunc, _ = env.step(int(rng.integers(4)))
        assert np.isfinite(r)
        if t == 200:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert obs.dtype == np.uint8 and obs.shape == (32, 32, 3)
    assert (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 50_000
    )  # KiB: no growth per step


def test_sb3_ppo_trains_on_the_batched_worlds(tiny_world):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecEnv

    from worldsim.sim.sb3 import WorldVecEnv

    venv = WorldVecEnv(num_envs=4, world=str(tiny_world), max_episode_steps=6)
    assert isinstance(venv, VecEnv)
    venv.seed(0)
    obs = venv.reset()
    assert obs.shape == (4, 32, 32, 3) and obs.dtype == np.uint8
    saw_end = False
    for _ in range(8):
        obs, rew, dones, infos = venv.step(np.array([0, 1, 2, 3]))
        for i in np.flatnonzero(dones):
            saw_end = True
            assert infos[i]["terminal_observation"].shape == (32, 32, 3)
            assert infos[i]["terminal_observation"].dtype == np.uint8
    assert saw_end
    assert venv.env_method("get_action_meanings") == [["NOOP", "FIRE", "RIGHT", "LEFT"]] * 4
    with pytest.raises(ValueError, match="acts on all 4 batched worlds at once"):
        venv.env_method("reset", indices=[0])
    start = venv.venv.bundle.start_frames[1].numpy()  # SB3's reset options reach the worlds
    venv.set_options({"frames": start, "actions": venv.venv.bundle.start_actions[1].numpy()})
    assert all(np.array_equal(o, start[-1]) for o in venv.reset())
    assert venv._options == [{}] * 4  # used once, as SB3's own VecEnvs do
    # SB3's NatureCNN needs frames of at least 36x36: this 32x32 test world takes the MLP policy
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=16, n_epochs=1, seed=0, verbose=0)
    model.learn(total_timesteps=32)
    assert model.num_timesteps >= 32


def test_real_game_scoring_sees_frames_stacked_as_in_training():
    from dataclasses import asdict
    from types import SimpleNamespace

    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

    from worldsim.games import EnvConfig, make_env
    from worldsim.rl import RLConfig, score

    actions, seen = [1, 2, 2, 3, 0, 1, 3], []

    def act(obs):
        seen.append(obs.copy())
        return actions[len(seen) - 1]

    cfg = RLConfig(eval_episodes=1, eval_max_steps=len(actions), frame_stack=4)
    score(act, SimpleNamespace(meta={"env": asdict(EnvConfig())}), cfg)
    venv = VecFrameStack(DummyVecEnv([lambda: make_env(EnvConfig())]), 4)
    venv.seed(10_000 + cfg.seed)  # the seed of score's first episode
    theirs = venv.reset()[0]
    for ours, a in zip(seen, actions, strict=True):
        assert ours.shape == (64, 64, 12) and np.array_equal(ours, theirs)
        theirs = venv.step(np.array([a]))[0][0]


def test_rl_command_trains_in_the_dream_and_scores_in_the_real_game(tiny_world, tmp_path, capsys):
    import json

    from worldsim.cli import main

    out = tmp_path / "rl"
    assert (
        main(
            [
                "rl",
                f"world={tiny_world}",
                "steps=256",
                "num_envs=2",
                "eval_episodes=2",
                "eval_max_steps=30",
                "max_episode_steps=20",
                "real_baseline=false",
                "check_steps=30",
                f"out={out}",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert len(report["dream_agent"]) == 2 and len(report["random"]) == 2
    assert (out / "agent_dream.zip").exists() and (out / "dream_agent_in_real_game.mp4").exists()
    assert report["life_loss"]  # the tiny world learned lives from Bricks' data: auto turns it on
    ends = report["random_play_ends_per_1k_steps"]
    for where in ("world", "real"):  # ends counted over 2 envs x 30 steps, per 1,000 steps
        count = ends[where] * 60 / 1000
        assert count >= 0 and abs(count - round(count)) < 1e-9, (where, ends[where])
    printed = capsys.readouterr().out
    assert "dream_agent" in printed and "random play ends" in printed


def test_episode_end_check_counts_ends_and_warns_when_the_world_seldom_ends():
    from worldsim.policies import simple_policy
    from worldsim.rl import check_line, dream_rates

    class Ends:  # a stand-in vector env: every env ends every 4th step, reward 1 per step
        num_envs, single_action_space = 3, gym.spaces.Discrete(4)

        def reset(self, seed=None):
            self.t = 0

        def step(self, actions):
            self.t += 1
            return None, np.ones(3), np.full(3, self.t % 4 == 0), np.zeros(3, bool), {}

    assert dream_rates(Ends(), None, steps=40) == (250.0, 1000.0)
    held = simple_policy(2, 4, np.random.default_rng(0), 1000)
    assert 0.85 < (held == 2).mean() < 0.98 and set(np.unique(held)) == {0, 1, 2, 3}
    assert "warning" in check_line(0.9, 4.1) and "warning" not in check_line(3.0, 4.1)
