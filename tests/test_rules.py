"""The Bricks and Maze rule checkers: real play keeps every rule; broken rules are caught."""

import gymnasium as gym
import numpy as np
import pytest
from worldsim_envs import maze

from worldsim.data.collect import play_episode
from worldsim.evaluation.rules import maze_rule_scores, read_bricks, read_maze, rule_scores
from worldsim.policies import Policy, PolicyConfig


@pytest.mark.parametrize("policy", ["scripted", "miss", "sticky", "random"])
def test_real_play_keeps_every_rule(policy):
    env = gym.make("worldsim/Bricks-v0")
    ep = play_episode(
        env, Policy(PolicyConfig(name=policy), env, np.random.default_rng(1)), seed=7, max_steps=400
    )
    scores = rule_scores(ep.frames[None])
    assert scores["kept"] == 1.0, scores["broken"]


def test_broken_rules_are_caught():
    env = gym.make("worldsim/Bricks-v0")
    frames = [env.reset(seed=0)[0]]
    for a in [1] + [2] * 5:
        frames.append(env.step(a)[0])
    frames = np.stack(frames)
    o = read_bricks(frames[-1])
    y, x = (int(v) for v in o.balls[0])
    two_balls = frames.copy()
    two_balls[-1, 30:32, 30:32] = 236  # a second ball appears
    lost_brick = frames.copy()
    lost_brick[:-1, 14:16, 2:7] = 0  # a brick missing before is back at the end
    more_lives = frames.copy()
    more_lives[:-1, 2:4, 50:53] = 0  # the third life mark missing before: lives went up
    jump = frames.copy()
    jump[-1, y - 1 : y + 3, x - 1 : x + 3] = 0  # the ball vanishes where it was...
    jump[-1, 40:42, 30:32] = 236  # ...and is far away
    for broken, rule in (
        (two_balls, "one ball"),
        (lost_brick, "bricks come back"),
        (more_lives, "lives"),
        (jump, "ball jump"),
    ):
        assert rule in rule_scores(broken[None])["broken"], rule


@pytest.mark.parametrize("policy", ["scripted", "miss", "sticky", "random"])
def test_real_maze_play_keeps_every_rule(policy):
    env = gym.make("worldsim/Maze-v0")
    ep = play_episode(
        env, Policy(PolicyConfig(name=policy), env, np.random.default_rng(1)), seed=7, max_steps=400
    )
    assert set(ep.actions.tolist()) == {0, 1, 2, 3, 4} or policy == "scripted"
    scores = maze_rule_scores(ep.frames[None], ep.actions[None])
    assert scores["kept"] == 1.0, scores["broken"]


def test_broken_maze_rules_are_caught():
    env = gym.make("worldsim/Maze-v0")
    frames = [env.reset(seed=0)[0]]
    for a in (4, 4):  # two turns right
        frames.append(env.step(a)[0])
    frames = np.stack(frames)
    assert read_maze(frames[0]).heights.std() > 1  # a view whose slide can be seen
    turns = np.array([[4, 4]])
    assert maze_rule_scores(frames[None], turns)["kept"] == 1.0
    idle = frames[[0, 0, 1]]  # NOOP, then the view jumps by a turn although the key is NOOP
    lifted = frames.copy()
    background = maze.PALETTE[maze.BACKGROUND_INDEX]
    wall = (frames[-1] != background).any(-1)
    lifted[-1] = background
    lifted[-1, :-6][wall[6:]] = frames[-1, 6:][wall[6:]]  # the walls float 6 rows up
    for broken, acts, rule in (
        (frames[None], np.array([[3, 3]]), "turn direction"),  # turned left, the view went right
        (idle[None], np.array([[0, 0]]), "still when idle"),
        (lifted[None], turns, "walls centred"),
    ):
        assert rule in maze_rule_scores(broken, acts)["broken"], rule


def test_eval_checks_the_shipped_bricks_world_on_fresh_play(tmp_path):
    from worldsim.config import load_config
    from worldsim.evaluation.evaluate import EvalConfig, evaluate, summary

    report = evaluate(
        load_config(
            "eval",
            EvalConfig,
            [
                "world=bricks",
                f"out={tmp_path}",
                "policy=sticky",
                "play_steps=300",
                "starts=2",
                "horizon=2",
                "idm_steps=0",
                "rules_steps=8",
                "samplers=[{name:onestep,steps:1}]",
            ],
        )
    )
    assert report["rules"]["real game"]["kept"] == 1.0
    dream = report["rules"]["student onestep 1"]
    assert dream["transitions"] == 8 * 8 and 0 <= dream["kept"] <= 1
    assert "rules kept over long play, student onestep 1" in summary(report)
    realism = report["realism"]["student onestep 1"]
    assert realism[0] is not None and realism[0] >= 0 and realism[2] is None  # 8 steps only
    assert (tmp_path / "psnr.png").exists()
