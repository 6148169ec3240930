"""`python play.py` / `worldsim play`: play a learned world live with the keyboard.

The loop steps the world as fast as it can up to `fps`, shows it scaled up with a HUD
(achieved FPS, step, return, sampler), and takes its actions from the keyboard or, when
headless, from a scripted source (random, sticky random, or a file of actions).
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np

from worldsim.data.store import DataError
from worldsim.play.controls import HELP, KeyboardInput
from worldsim.runtime import check_precision


@dataclass(frozen=True)
class PlayConfig:
    """Play a world live (or headless from scripted actions), optionally recording."""

    world: str = "bricks"
    """Shipped world name or world folder."""
    sampler: str = ""
    """onestep, multistep, euler or heun; empty = the world's default (one-step if it has a student)."""
    steps: int = 0
    """Sampler evaluations; 0 = the sampler's default."""
    teacher_steps: int = 3
    """Euler steps of the teacher when TAB switches to it."""
    fps: int = 30
    """Target frames per second (0 = as fast as possible)."""
    scale: int = 8
    """Window pixels per world pixel (nearest-neighbour)."""
    headless: bool = False
    """No window (SDL dummy drivers); actions come from `policy`."""
    policy: Literal["keyboard", "random", "sticky", "actions"] = "keyboard"
    """Where actions come from; headless play needs random, sticky or actions."""
    actions: str = ""
    """policy=actions: a file of action indices (.npy, or text with one integer per line)."""
    frames: int = 600
    """Scripted play (policy != keyboard): frames to play (0 = until the actions run out)."""
    real: bool = False
    """Show the real game beside the dream, both fed the same actions."""
    record: bool = False
    """Record from the start (C toggles recording in the window)."""
    out: str = "recordings"
    """Folder for recordings (mp4 + episodes)."""
    seed: int = 0
    """Seeds the world's starts and noise and the scripted policies."""
    device: str = "cpu"
    """cpu or cuda."""
    precision: str = "fp32"
    """fp32, or bf16: the networks under bfloat16 autocast, faster on CPUs with AMX or
    AVX512-BF16 (and GPUs), frames a little off fp32's."""
    screenshot: str = ""
    """Save a PNG of the window here when the session ends."""

    def __post_init__(self):
        check_precision(self.precision)
        if self.fps < 0 or self.scale < 1 or self.frames < 0:
            raise ValueError(
                f"need fps >= 0, scale >= 1, frames >= 0; got {self.fps}, {self.scale}, {self.frames}"
            )
        if self.headless and self.policy == "keyboard":
            raise ValueError(
                "headless play needs policy=random, sticky or actions (there is no keyboard)"
            )
        if self.headless and self.frames == 0 and self.policy in ("random", "sticky"):
            raise ValueError(
                f"frames=0 plays until the actions run out, and policy={self.policy} never "
                "does: give frames=N (or policy=actions)"
            )
        if self.screenshot:
            from pathlib import Path

            shot = Path(self.screenshot)
            if shot.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                raise ValueError(f"screenshot must be a .png or .jpg file, got {self.screenshot!r}")
            if not shot.parent.is_dir():
                raise ValueError(f"screenshot {self.screenshot!r}: no folder {str(shot.parent)!r}")
        if self.policy == "actions" and not self.actions:
            raise ValueError("policy=actions needs actions=<file of action indices>")


def load_actions(path: str, n_actions: int) -> np.ndarray:
    """Action indices from a .npy file or a text file with one integer per line."""
    try:
        acts = np.load(path) if path.endswith(".npy") else np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a file of action indices ({e})") from None
    acts = np.asarray(acts).ravel()
    if len(acts) == 0:
        raise ValueError(f"{path}: no actions in the file")
    if not np.issubdtype(acts.dtype, np.integer):
        raise ValueError(f"{path}: actions must be integers, got an array of {acts.dtype}")
    bad = np.flatnonzero((acts < 0) | (acts >= n_actions))
    if len(bad):
        raise ValueError(
            f"{path}: actions must lie in [0, {n_actions}), got {int(acts[bad[0]])} at index {bad[0]}"
        )
    return acts.astype(np.int64)


class ScriptedActions:
    """Headless action source: random, sticky random, or a file."""

    def __init__(self, cfg: PlayConfig, n_actions: int):
        self.cfg, self.n, self.rng = cfg, n_actions, np.random.default_rng(cfg.seed)
        self.file = load_actions(cfg.actions, n_actions) if cfg.policy == "actions" else None
        self.t, self.held, self.left = 0, 0, 0

    def exhausted(self) -> bool:
        return self.file is not None and self.t >= len(self.file)

    def __call__(self) -> int:
        self.t += 1
        if self.file is not None:
            return int(self.file[self.t - 1])
        if self.cfg.policy == "sticky":
            if self.left == 0:
                self.held, self.left = int(self.rng.integers(self.n)), int(self.rng.integers(1, 8))
            self.left -= 1
            return self.held
        return int(self.rng.integers(self.n))


class PlaySession:
    """The game loop: input -> world step (and real game) -> window, at most `fps` times a second."""

    def __init__(self, cfg: PlayConfig):
        if cfg.headless:
            os.environ["SDL_VIDEODRIVER"] = os.environ["SDL_AUDIODRIVER"] = "dummy"
        from worldsim.play.recorder import Recorder
        from worldsim.sim.env import WorldModelEnv
        from worldsim.sim.window import Window

        self.cfg = cfg
        self.env = WorldModelEnv(cfg.world, sampler=cfg.sampler or None, steps=cfg.steps or None,
                                 max_episode_steps=10**9, device=cfg.device, precision=cfg.precision)  # fmt: skip
        self.samplers = [self.env.world.sampler, self._teacher_sampler()]
        self.input = KeyboardInput(self.env.get_keys_to_action())
        self.script = (
            None if cfg.policy == "keyboard" else ScriptedActions(cfg, self.env.action_space.n)
        )
        self.window = Window(self.env.bundle.frame_size, cfg.scale, "worldsim", panels=2)
        b = self.env.bundle
        self.recorder = Recorder(
            cfg.out, b.meta["env_id"], b.action_meanings, b.frame_size, max(cfg.fps, 15)
        )
        self.real_env, self.real_frame, self.message = None, None, ""
        self.paused, self.t, self.ret, self.fps = False, 0, 0.0, 0.0
        self._saver: ThreadPoolExecutor | None = None  # writes recordings (`_save_recording`)
        self._saves: list = []
        self.frame, _ = self.env.reset(seed=cfg.seed)
        if cfg.real:
            self.toggle_real()
        if cfg.record:
            self.toggle_record()

    def _teacher_sampler(self):
        from worldsim.models.samplers import SamplerConfig

        return SamplerConfig("euler", self.cfg.teacher_steps)

    # --- commands ------------------------------------------------------------------------
    def reset(self) -> None:
        with self._restart():
            self.frame, _ = self.env.reset()
            self.t, self.ret = 0, 0.0
            if self.real_env is not None:
                self.real_env = None
                self.toggle_real()

    @contextlib.contextmanager
    def _restart(self):
        """Around a restart of the dream: save the episode being recorded, and record on from
        the new start (a recording never spans a restart, so each saved action produced its
        next frame)."""
        recording = self.recorder.active
        if recording:
            self._save_recording()
        yield
        if recording:
            self.recorder.start(self.frame)

    def switch_sampler(self) -> None:
        other = self.samplers[1] if self.env.world.sampler == self.samplers[0] else self.samplers[0]
        self.env.world.sampler = other

    def toggle_real(self) -> None:
        """Show the real game beside the dream; the dream restarts from the real game's frames."""
        if self.real_env is not None:
            self.real_env, self.real_frame = None, None
            return
        from worldsim.config import from_dict
        from worldsim.games import EnvConfig, make_env

        try:
            self.real_env = make_env(from_dict(EnvConfig, self.env.bundle.meta["env"]))
        except Exception as e:  # the source game is not installed here
            self.message = f"real game unavailable: {e}"
            return
        K = self.env.bundle.context
        frames, actions = [self.real_env.reset(seed=self.cfg.seed + self.t)[0]] * K, [0] * K
        with self._restart():
            self.frame, _ = self.env.reset(
                options={"frames": np.stack(frames), "actions": np.array(actions)}
            )
        self.real_frame = frames[-1]

    def toggle_record(self) -> None:
        if not self.recorder.active:
            self.recorder.start(self.frame)
            self.message = "recording"
            return
        self._save_recording(say_if_empty=True)

    def _save_recording(self, say_if_empty: bool = False) -> None:
        """Save the recording (the player's C, a restart) and say so. The episode is taken at
        once; its mp4 and dataset entry are written on a background thread at a lower
        priority, one after another, so that play does not stall while they encode (a
        restart's save used to hold the loop for 0.8-4 s on a 2-core CPU)."""
        ep = self.recorder.take()
        if ep is None:
            if say_if_empty:
                self.message = "nothing recorded"
            return
        if self._saver is None:
            self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worldsim-save")
        self._saves.append(self._saver.submit(self._write_in_background, ep))

    def _write_in_background(self, ep) -> None:
        _lower_priority()
        self._write_recording(ep, threads=1)

    def _write_recording(self, ep, threads: int | None) -> None:
        try:
            self.message = f"saved {self.recorder.write(ep, 'dream', threads=threads)}"
        except OSError as e:  # an unwritable folder or a full disk: say so and play on
            self.message = f"recording not saved: {e.strerror or e} ({self.cfg.out})"
        except DataError as e:  # e.g. `out` already holds another game's episodes
            self.message = f"recording not saved: {e}"
        except Exception as e:  # a bug: say so now, raise it when play ends
            self.message = f"recording not saved: {e!r}"
            raise

    def _end_recording(self) -> None:
        """At the end of play: let the background writes finish, then write what is still
        being recorded here, at the normal priority and on every core (play has stopped).
        Raises the first unexpected error of any write, after writing the rest."""
        ep = self.recorder.take()
        if ep is not None:
            self.message = "saving the recording..."
            self.draw()
        saves, self._saves = self._saves, []
        if self._saver is not None:
            self._saver.shutdown(wait=True)  # in order: files are named and numbered as made
            self._saver = None
        errors = [f.exception() for f in saves if f.exception() is not None]
        if ep is not None:
            self._write_recording(ep, threads=None)
        if errors:
            raise errors[0]

    # --- the loop ------------------------------------------------------------------------
    def tick(self, events) -> bool:
        """Handle one frame's events and advance the world; False when the player quits."""
        single = False
        for cmd in self.input.process(events):
            if cmd == "quit":
                return False
            single |= cmd == "step"
            {"reset": self.reset, "pause": self._pause, "sampler": self.switch_sampler, "real": self.toggle_real,
             "record": self.toggle_record, "step": lambda: None}[cmd]()  # fmt: skip
        if not self.paused or single:
            self.advance(self.script() if self.script else self.input.action())
        self.draw()
        return True

    def _pause(self) -> None:
        self.paused = not self.paused

    def advance(self, action: int) -> None:
        self.frame, reward, terminated, _, _ = self.env.step(action)
        self.t, self.ret = self.t + 1, self.ret + reward
        self.recorder.add(action, self.frame, reward, terminated)
        if self.real_env is not None:
            self.real_frame, _, real_end, real_trunc, _ = self.real_env.step(action)
            if real_end or real_trunc:
                self.real_frame, _ = self.real_env.reset()
        if terminated:  # a new episode (and, if recording, a new recorded episode)
            self.reset()

    def draw(self) -> None:
        s = self.env.world.sampler
        hud = (f"{self.fps:4.1f} fps  step {self.t}  return {self.ret:.0f}  {s.name} x{s.evaluations}"
               + ("  [paused]" if self.paused else "") + ("  REC" if self.recorder.active else "")
               + (f"  {self.message}" if self.message else f"   {HELP}"))  # fmt: skip
        frames = (self.frame,) if self.real_frame is None else (self.frame, self.real_frame)
        self.window.show(*frames, hud=hud)

    def run(self, events_source) -> dict:
        """Loop until quit (or `frames` headless frames); returns achieved frame rate."""
        try:
            result = self._loop(events_source)
            self._end_recording()
            if self.cfg.screenshot:
                import cv2

                if not cv2.imwrite(self.cfg.screenshot, self.window.screenshot()[..., ::-1]):
                    raise OSError(f"could not write the screenshot {self.cfg.screenshot!r}")
            return {**result, "message": self.message}
        except BaseException:  # Ctrl-C or an error: still keep what was recorded
            with contextlib.suppress(Exception):  # (the error on its way out is the one to tell)
                self._end_recording()
            raise
        finally:
            self.window.close()

    def _loop(self, events_source) -> dict:
        period = 1.0 / self.cfg.fps if self.cfg.fps else 0.0
        t0 = last = due = time.perf_counter()
        n = 0
        bar = self._progress()
        while self.tick(events_source()):
            n += 1
            if bar is not None:
                bar.update(1)
            due = max(due + period, time.perf_counter() - period)  # a fixed schedule, no drift
            if period and due > time.perf_counter():
                time.sleep(due - time.perf_counter())
            now = time.perf_counter()
            self.fps = (
                0.9 * self.fps + 0.1 / max(now - last, 1e-6) if n > 1 else 1 / max(now - last, 1e-6)
            )
            last = now
            if self.script and (
                self.cfg.frames and n >= self.cfg.frames or self.script.exhausted()
            ):
                break
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        return {"frames": n, "seconds": elapsed, "fps": n / elapsed if elapsed else 0.0}

    def _progress(self):
        """Headless play says what it will do and shows how far it is (a bar, on stderr)."""
        if not self.cfg.headless:
            return None
        from tqdm import tqdm

        n, fps = self.cfg.frames, self.cfg.fps
        length = f"{n} frames" if n else "until the actions run out"
        pace = f" at {fps} fps (about {n / fps:.0f} s)" if fps and n else " as fast as it can"
        print(f"playing {self.cfg.world} headless, {self.cfg.policy} actions: {length}{pace}")
        return tqdm(total=n or None, desc="play", unit="frame")


def _lower_priority() -> None:
    """Run the calling thread, and the processes it starts (the video encoder), at a lower
    priority, where the system allows it per thread (Linux): on a machine with few cores the
    encoder otherwise takes a core from the world's threads, which then wait on each other
    at every operation (a step took 5-20x longer while an episode was being written)."""
    import sys
    import threading

    if sys.platform.startswith("linux"):  # elsewhere the id is no process id: leave it be
        with contextlib.suppress(OSError):  # not allowed: the default priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def play(cfg: PlayConfig) -> dict:
    session = PlaySession(cfg)
    if cfg.headless:
        return session.run(lambda: [])
    import pygame

    return session.run(pygame.event.get)
