"""Play, headless: synthetic key events drive the loop; sessions record mp4 + episodes."""

import os

import gymnasium as gym
import numpy as np
import pygame
import pytest

from worldsim.cli import main
from worldsim.data.store import Dataset
from worldsim.play.app import PlayConfig, PlaySession
from worldsim.play.controls import KeyboardInput
from worldsim.play.loop import PlayLoop


def key(kind, k):
    return pygame.event.Event(kind, key=k)


def test_held_keys_map_to_actions():
    inp = KeyboardInput({(pygame.K_SPACE,): 1, (pygame.K_RIGHT,): 2, (pygame.K_LEFT,): 3})
    assert inp.action() == 0
    assert inp.process([key(pygame.KEYDOWN, pygame.K_RIGHT)]) == [] and inp.action() == 2
    inp.process([key(pygame.KEYDOWN, pygame.K_LEFT)])
    assert inp.action() == 3  # the most recent mapped key wins when the pair has no mapping
    inp.process([key(pygame.KEYUP, pygame.K_LEFT)])
    assert inp.action() == 2
    inp.process([key(pygame.KEYUP, pygame.K_RIGHT), key(pygame.KEYDOWN, pygame.K_a)])
    assert inp.action() == 0  # unmapped keys do nothing
    inp.process([key(pygame.KEYDOWN, pygame.K_LEFT), key(pygame.KEYDOWN, pygame.K_RIGHT)])
    assert inp.action() == 2  # pressed in the other order: still the most recent
    inp.process([key(pygame.KEYDOWN, pygame.K_LEFT)])  # pressed again (a missed KEYUP)
    assert inp.action() == 3
    inp.process([key(pygame.KEYUP, pygame.K_LEFT), key(pygame.KEYUP, pygame.K_RIGHT)])
    assert inp.process([key(pygame.KEYDOWN, pygame.K_p), key(pygame.KEYDOWN, pygame.K_ESCAPE)]) == [
        "pause",
        "quit",
    ]


class Recording(PlaySession):
    """A session that remembers the actions it sent to the world."""

    def on_step(self, obs_t, obs_tp1, action, *rest):
        self.sent = [*getattr(self, "sent", []), action]
        super().on_step(obs_t, obs_tp1, action, *rest)


def test_game_loop_sends_the_keyboard_actions(tiny_world, tmp_path):
    os.environ["SDL_VIDEODRIVER"] = "dummy"
    cfg = PlayConfig(world=str(tiny_world), fps=0, out=str(tmp_path))
    s = Recording(cfg)
    script = [
        [key(pygame.KEYDOWN, pygame.K_RIGHT)],
        [],
        [key(pygame.KEYUP, pygame.K_RIGHT), key(pygame.KEYDOWN, pygame.K_SPACE)],
        [key(pygame.KEYUP, pygame.K_SPACE)],
        [key(pygame.KEYDOWN, pygame.K_p)],
        [],
        [key(pygame.KEYDOWN, pygame.K_n)],
        [key(pygame.KEYDOWN, pygame.K_q)],
    ]
    events = iter(script)
    s.run(lambda: next(events))
    # right, right, fire, noop, (paused: nothing), (paused: nothing), single step: noop; then quit
    assert s.sent == [2, 2, 1, 0, 0]


def test_headless_session_records_mp4_and_episode(tiny_world, tmp_path, capsys):
    out = tmp_path / "rec"
    assert (
        main(
            [
                "play",
                f"world={tiny_world}",
                "headless=true",
                "policy=sticky",
                "frames=20",
                "fps=0",
                "record=true",
                f"out={out}",
                "sampler=euler",
                "steps=1",
            ]
        )
        == 0
    )
    mp4s = list(out.glob("*.mp4"))
    assert mp4s and all(p.read_bytes()[4:8] == b"ftyp" for p in mp4s)
    ds = Dataset.open(out)
    assert ds.entries() and all(ds.load(e).frames.shape[1:] == (32, 32, 3) for e in ds.entries())
    assert sum(e["length"] for e in ds.entries()) >= 1


def test_actions_file_drives_headless_play(tiny_world, tmp_path):
    path = tmp_path / "acts.txt"
    path.write_text("\n".join(["2", "2", "3", "1"]))
    s = Recording(
        PlayConfig(
            world=str(tiny_world),
            headless=True,
            policy="actions",
            actions=str(path),
            frames=0,
            fps=0,
        )
    )
    s.run(lambda: [])
    assert s.sent == [2, 2, 3, 1]
    path.write_text("1\n2\n7\n")
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 4\), got 7 at index 2"):
        PlaySession(
            PlayConfig(world=str(tiny_world), headless=True, policy="actions", actions=str(path))
        )
    floats = tmp_path / "acts.npy"
    np.save(floats, np.array([0.9, 2.7]))
    with pytest.raises(ValueError, match="actions must be integers, got an array of float64"):
        PlaySession(
            PlayConfig(world=str(tiny_world), headless=True, policy="actions", actions=str(floats))
        )
    with pytest.raises(ValueError, match="policy=random never does: give frames=N"):
        PlayConfig(world=str(tiny_world), headless=True, policy="random", frames=0)


def test_play_runs_the_world_in_the_precision_asked(tiny_world, capsys):
    s = PlaySession(
        PlayConfig(
            world=str(tiny_world), headless=True, policy="random", frames=3, fps=0, precision="bf16"
        )
    )
    assert s.env.world.precision == "bf16" and s.run(lambda: [])["frames"] == 3
    assert (
        main(["play", f"world={tiny_world}", "headless=true", "policy=random", "precision=fp16"])
        == 2
    )
    assert "precision must be fp32 or bf16, got 'fp16'" in capsys.readouterr().err


def test_unwritable_recording_folder_is_one_message_and_play_goes_on(tiny_world, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a folder inside a file cannot be made, even by root
    s = PlaySession(
        PlayConfig(
            world=str(tiny_world),
            headless=True,
            policy="random",
            frames=5,
            fps=0,
            record=True,
            out=str(blocker / "sub"),
        )
    )
    result = s.run(lambda: [])
    assert result["frames"] == 5 and result["message"].startswith("recording not saved")


def recording_session(world, out) -> PlaySession:
    """10 frames of random play in `world`, headless and as fast as it goes, recorded."""
    os.environ["SDL_VIDEODRIVER"] = "dummy"
    return PlaySession(
        PlayConfig(
            world=str(world),
            headless=True,
            policy="random",
            frames=10,
            fps=0,
            record=True,
            out=str(out),
        )
    )


@pytest.mark.parametrize("command", ["reset", "real"])
def test_a_restart_while_recording_starts_a_new_recorded_episode(tiny_world, tmp_path, command):
    # R (reset) or G (the real game beside the dream, which restarts from its frames) at the
    # 5th frame: the 4 steps before it and the 6 after are separate episodes, so that every
    # recorded action produced the frame after it (no cut inside an episode), and every step
    # played is in exactly one saved episode
    os.environ["SDL_VIDEODRIVER"] = "dummy"
    s = recording_session(tiny_world, tmp_path)
    press = key(pygame.KEYDOWN, pygame.K_r if command == "reset" else pygame.K_g)
    events = iter([[]] * 4 + [[press]] + [[]] * 5)
    assert s.run(lambda: next(events))["frames"] == 10
    if command == "real":
        assert s.real_frame is not None and s.real_frame.shape == s.frame.shape
    lengths = [e["length"] for e in Dataset.open(tmp_path).entries()]
    assert (
        len(lengths) >= 2
        and sum(lengths) == 10
        and len(list(tmp_path.glob("*.mp4"))) == len(lengths)
    )


def test_play_goes_on_while_a_recording_is_written(tiny_world, tmp_path):
    # the restart's save is still writing (held here until frame 9) while play advances
    import threading

    os.environ["SDL_VIDEODRIVER"] = "dummy"
    s = recording_session(tiny_world, tmp_path)
    release, written, write = threading.Event(), [], s.recorder.write

    def held_write(ep, source, threads=None):
        assert release.wait(timeout=20)
        written.append(write(ep, source, threads))
        return written[-1]

    s.recorder.write = held_write
    ticks = []

    def events():
        ticks.append(len(ticks) + 1)
        if len(ticks) == 9:
            release.set()
        return [key(pygame.KEYDOWN, pygame.K_r)] if len(ticks) == 5 else []

    # R at the 5th frame; frames 6-8 are played while its episode is still being written (a
    # save on the loop's thread would wait for frame 9 forever: the held write times out)
    assert s.run(events)["frames"] == 10
    lengths = [e["length"] for e in Dataset.open(tmp_path).entries()]
    assert len(written) == len(lengths) >= 2 and sum(lengths) == 10
    assert len(list(tmp_path.glob("*.mp4"))) == len(lengths)


def test_an_unexpected_error_while_writing_is_raised_when_play_ends(tiny_world, tmp_path):
    # a restart's write fails in the background: play goes on; at the end the episode still
    # being recorded is written (on every encoder thread, play being over), then the error
    # is raised, not lost in the thread
    s = PlaySession(
        PlayConfig(
            world=str(tiny_world),
            headless=True,
            policy="random",
            frames=6,
            fps=0,
            out=str(tmp_path),
        )
    )
    write, calls = s.recorder.write, []

    def first_fails(ep, source, threads=None):
        calls.append(threads)
        if len(calls) == 1:
            raise ValueError("a bug in writing")
        return write(ep, source, threads)

    s.recorder.write = first_fails
    for steps in (2, 3):
        s.recorder.start(s.frame)
        for _ in range(steps):
            s.recorder.add(0, s.frame, 0.0, False)
        if steps == 2:
            s.recording.cut()  # as at a restart
            assert s.recorder.active is False
    with pytest.raises(ValueError, match="a bug in writing"):
        s._end_recording()
    assert calls == [1, None] and s.message.startswith("saved")
    assert [e["length"] for e in Dataset.open(tmp_path).entries()] == [3]


def test_a_screenshot_that_cannot_be_written_is_an_error(tiny_world, tmp_path):
    # refused before play starts, not after the session
    with pytest.raises(ValueError, match="no folder"):
        PlayConfig(
            world=str(tiny_world),
            headless=True,
            policy="random",
            screenshot=str(tmp_path / "missing" / "shot.png"),
        )
    with pytest.raises(ValueError, match="must be a .png or .jpg file"):
        PlayConfig(
            world=str(tiny_world),
            headless=True,
            policy="random",
            screenshot=str(tmp_path / "shot.txt"),
        )


def test_recording_into_another_games_folder_writes_nothing(tiny_world, tmp_path):
    from worldsim.data.store import DataError
    from worldsim.play.recorder import Recorder

    for env_id, ok in (("worldsim/Bricks-v0", True), ("worldsim/Maze-v0", False)):
        r = Recorder(tmp_path, env_id, ["NOOP", "FIRE", "RIGHT", "LEFT"], (32, 32), 15)
        r.start(np.zeros((32, 32, 3), np.uint8))
        r.add(1, np.zeros((32, 32, 3), np.uint8), 0.0, False)
        if ok:
            r.save("dream")
        else:
            with pytest.raises(DataError):
                r.save("dream")
    assert len(list(tmp_path.glob("*.mp4"))) == 1  # no video without its episode


def test_recording_never_overwrites(tiny_world, tmp_path):
    from worldsim.play.recorder import Recorder

    r = Recorder(tmp_path, "worldsim/Bricks-v0", ["NOOP", "FIRE", "RIGHT", "LEFT"], (32, 32), 15)
    paths = []
    for _ in range(2):
        r.start(np.zeros((32, 32, 3), np.uint8))
        r.add(1, np.zeros((32, 32, 3), np.uint8), 0.0, False)
        paths.append(r.save("dream"))
    assert paths[0] != paths[1] and all(p.exists() for p in paths)
    assert len(Dataset.open(tmp_path).entries()) == 2


@pytest.mark.parametrize("source", ["world", "game"])
def test_record_command_writes_videos_and_episodes(tiny_world, tmp_path, source):
    out = tmp_path / "rec"
    args = [f"world={tiny_world}"] if source == "world" else ["game=worldsim/Bricks-v0"]
    assert main(["record", *args, "episodes=2", "max_steps=12", f"out={out}", "policy=sticky"]) == 0
    assert len(list(out.glob("*.mp4"))) == 2
    ds = Dataset.open(out)
    assert len(ds.entries()) == 2 and all(1 <= e["length"] <= 12 for e in ds.entries())


class Count(gym.Env):
    """A plain Gymnasium env: each frame shows (episode, step) in its first pixel; an
    episode ends after 3 steps; reward = the action."""

    metadata = {"render_modes": ["rgb_array"]}
    observation_space = gym.spaces.Box(0, 255, (4, 4, 3), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, render_mode="rgb_array"):
        self.render_mode, self.episode, self.t = render_mode, -1, 0

    def _obs(self):
        obs = np.zeros((4, 4, 3), np.uint8)
        obs[0, 0, :2] = self.episode, self.t
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(action), self.t == 3, False, {"t": self.t}

    def render(self):
        return self._obs()


def test_play_loop_steps_any_env_from_keys_and_calls_back_each_step():
    os.environ["SDL_VIDEODRIVER"] = "dummy"
    steps = []
    keys = {(pygame.K_RIGHT,): 1, (pygame.K_LEFT,): 2}
    loop = PlayLoop(Count(), keys, callback=lambda *step: steps.append(step), fps=0)
    down, up = pygame.KEYDOWN, pygame.KEYUP
    script = [
        [key(down, pygame.K_RIGHT)],
        [],
        [key(up, pygame.K_RIGHT)],
        [key(down, pygame.K_p)],
        [],
        [key(down, pygame.K_n)],
        [key(down, pygame.K_LEFT)],
        [key(down, pygame.K_q)],
    ]
    events = iter(script)
    assert loop.run(lambda: next(events))["frames"] == 7
    # right, right, noop (the episode ends: a new one), paused: nothing, N: one noop step,
    # LEFT while paused: nothing; then quit
    assert [s[2] for s in steps] == [1, 1, 0, 0]
    assert [s[4] for s in steps] == [False, False, True, False]
    assert [s[3] for s in steps] == [1.0, 1.0, 0.0, 0.0] and steps[1][6] == {"t": 2}
    assert [tuple(s[1][0, 0, :2]) for s in steps] == [(0, 1), (0, 2), (0, 3), (1, 1)]
    assert steps[1][0] is steps[0][1] and steps[2][0] is steps[1][1]  # obs_t: the last obs_tp1
    assert tuple(steps[3][0][0, 0, :2]) == (1, 0)  # after the end: the new episode's start
    assert loop.paused and loop.window is None  # (the default window: closed at the end)


def test_play_loop_scripted_actions_stop_play_and_commands_run_their_handlers():
    from worldsim.policies import Replay

    os.environ["SDL_VIDEODRIVER"] = "dummy"
    sent, resets = [], []
    loop = PlayLoop(
        Count(),
        {},
        fps=0,
        actions=Replay([2, 1, 2, 2, 1]),
        callback=lambda *step: sent.append(step[2]),
        commands={"reset": lambda: resets.append(loop.t) or loop.reset()},
    )
    events = iter([[], [key(pygame.KEYDOWN, pygame.K_r)]] + [[]] * 10)
    assert loop.run(lambda: next(events))["frames"] == 5  # until the actions ran out
    assert sent == [2, 1, 2, 2, 1]
    assert resets == [1, 3]  # the R key after one step, the episode's end after 3 more
    loop = PlayLoop(Count(), {}, fps=0, actions=lambda: 0, frames=4, draw=lambda loop: None)
    assert loop.run(lambda: [])["frames"] == 4
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        PlayLoop(Count(render_mode=None), {})


def test_recording_callback_cuts_episodes_at_ends_and_restarts(tmp_path):
    from worldsim.play.recorder import Recorder, RecordingCallback

    os.environ["SDL_VIDEODRIVER"] = "dummy"
    saved = []
    recording = RecordingCallback(
        Recorder(tmp_path, "x", ["A", "B", "C"], (4, 4), 15), saved.append
    )
    loop = PlayLoop(Count(), {}, fps=0, actions=lambda: 1, frames=8, callback=recording)
    recording.start(loop.obs)
    events = iter([[], [], [], [], [key(pygame.KEYDOWN, pygame.K_r)], [], [], []])
    assert loop.run(lambda: next(events))["frames"] == 8
    recording.stop()
    # steps 1-3 end an episode; 4 is cut by the restart (R) before step 5; 5-7 end another;
    # 8 is saved at the stop
    assert [len(ep) for ep in saved] == [3, 1, 3, 1]
    assert [bool(ep.terminated[-1]) for ep in saved] == [True, False, True, False]
    for ep in saved:  # each recorded action produced the frame after it, from a start
        assert ep.frames[0, 0, 0, 1] == 0
        assert list(ep.frames[1:, 0, 0, 1]) == list(range(1, len(ep) + 1))


def test_background_writer_writes_in_order_off_the_loop_and_raises_the_first_error():
    import threading

    from worldsim.play.recorder import BackgroundWriter

    written, threads = [], set()

    def write(ep):
        threads.add(threading.get_ident())
        written.append(ep)
        if ep in ("b", "c"):
            raise ValueError(f"failed on {ep}")

    writer = BackgroundWriter(write)
    for ep in "abcd":
        writer.submit(ep)
    with pytest.raises(ValueError, match="failed on b"):
        writer.join()
    assert written == list("abcd") and threading.get_ident() not in threads
    writer.submit("e")  # a writer joined can take more
    writer.join()
    assert written[-1] == "e"
