"""`python play.py` / `worldsim play`: play a learned world live with the keyboard.

The play loop (`loop.PlayLoop`) steps the world as fast as it can up to `fps`; this app
shows it scaled up with a HUD (achieved FPS, step, return, sampler), takes its actions from
the keyboard or, when headless, from a scripted policy (random, sticky random, or a file
of actions), records as a callback of the loop and writes recordings in the background.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from worldsim.data.store import DataError
from worldsim.play.controls import HELP
from worldsim.runtime import check_precision

if TYPE_CHECKING:
    import gymnasium as gym


@dataclass(frozen=True)
class PlayConfig:
    """Play a world live (or headless from scripted actions), optionally recording."""

    world: str = "bricks"
    """Shipped world name or world folder."""
    sampler: str = ""
    """onestep, multistep, euler or heun; empty = the world's default (one-step if it has a
    student)."""
    steps: int = 0
    """Sampler evaluations; 0 = the sampler's default."""
    teacher_steps: int = 3
    """Euler steps of the teacher when TAB switches to it."""
    still: int | None = None
    """Pixels the draw moves by at most this many uint8 levels keep the last frame's (0 = off:
    the raw draw, faint noise on still backgrounds included); empty = the world's own level."""
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
                f"need fps >= 0, scale >= 1, frames >= 0; "
                f"got {self.fps}, {self.scale}, {self.frames}"
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


class PlaySession:
    """A world played live: a PlayLoop over the world, with its commands (TAB sampler, G
    the real game beside the dream, C record), the HUD, and recording as the loop's
    callback, written in the background."""

    def __init__(self, cfg: PlayConfig):
        if cfg.headless:
            os.environ["SDL_VIDEODRIVER"] = os.environ["SDL_AUDIODRIVER"] = "dummy"
        from worldsim.play.loop import PlayLoop
        from worldsim.play.recorder import BackgroundWriter, Recorder, RecordingCallback
        from worldsim.policies import action_source
        from worldsim.sim.env import WorldModelEnv
        from worldsim.sim.window import Window

        self.cfg = cfg
        self.env = WorldModelEnv(
            cfg.world,
            sampler=cfg.sampler or None,
            steps=cfg.steps or None,
            still=cfg.still,
            max_episode_steps=10**9,
            device=cfg.device,
            precision=cfg.precision,
        )
        self.samplers = [self.env.world.sampler, self._teacher_sampler()]
        n = int(self.env.action_space.n)
        script = None
        if cfg.policy != "keyboard":
            script = action_source(cfg.policy, n, cfg.seed, cfg.actions)
        self.window = Window(self.env.bundle.frame_size, cfg.scale, "worldsim", panels=2)
        b = self.env.bundle
        self.recorder = Recorder(
            cfg.out, b.meta["env_id"], b.action_meanings, b.frame_size, max(cfg.fps, 15)
        )
        self.writer = BackgroundWriter(lambda ep: self._write_recording(ep, threads=1))
        self.recording = RecordingCallback(self.recorder, self.writer.submit)
        self.real_env: gym.Env | None = None
        self.real_frame: np.ndarray | None = None
        self.message, self._bar = "", None
        commands = {
            "reset": self.reset,
            "sampler": self.switch_sampler,
            "real": self.toggle_real,
            "record": self.toggle_record,
        }
        self.loop = PlayLoop(
            self.env,
            self.env.get_keys_to_action(),
            callback=self.on_step,
            fps=cfg.fps,
            actions=script,
            frames=cfg.frames if script is not None else 0,
            commands=commands,
            draw=lambda loop: self.draw(),
            seed=cfg.seed,
        )
        if cfg.real:
            self.toggle_real()
        if cfg.record:
            self.toggle_record()

    @property
    def frame(self) -> np.ndarray:
        """The dream's frame shown now."""
        return self.loop.obs

    def _teacher_sampler(self):
        from worldsim.models.samplers import SamplerConfig

        return SamplerConfig("euler", self.cfg.teacher_steps, still=self.cfg.still)

    # --- commands ------------------------------------------------------------------------
    def reset(self) -> None:
        """A new dream (and, if shown, a new real game beside it)."""
        self.loop.reset()
        if self.real_env is not None:
            self.real_env = None
            self.toggle_real()

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
        frames = [self.real_env.reset(seed=self.cfg.seed + self.loop.t)[0]] * K
        self.loop.reset(options={"frames": np.stack(frames), "actions": np.zeros(K, np.int64)})
        self.real_frame = frames[-1]

    def toggle_record(self) -> None:
        """Start recording, or stop and save what was recorded (in the background)."""
        if not self.recording.on:
            self.recording.start(self.frame)
            self.message = "recording"
        elif not self.recording.stop():
            self.message = "nothing recorded"

    def on_step(self, obs_t, obs_tp1, action, reward, terminated, truncated, info) -> None:
        """The loop's callback: record the step, feed its action to the real game too."""
        self.recording(obs_t, obs_tp1, action, reward, terminated, truncated, info)
        if self.real_env is not None:
            self.real_frame, _, real_end, real_trunc, _ = self.real_env.step(action)
            if real_end or real_trunc:
                self.real_frame, _ = self.real_env.reset()
        if self._bar is not None:
            self._bar.update(1)

    # --- recordings ----------------------------------------------------------------------
    def _write_recording(self, ep, threads: int | None) -> None:
        """Write a recorded episode (the writer's thread, or at the end); say how it went."""
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
        try:
            self.writer.join()
        finally:
            if ep is not None:
                self._write_recording(ep, threads=None)

    # --- the loop ------------------------------------------------------------------------
    def draw(self) -> None:
        s, loop = self.env.world.sampler, self.loop
        hud = f"{loop.fps:4.1f} fps  step {loop.t}  return {loop.ret:.0f}"
        hud += f"  {s.name} x{s.evaluations}"
        hud += "  [paused]" if loop.paused else ""
        hud += "  REC" if self.recording.on else ""
        hud += f"  {self.message}" if self.message else f"   {HELP}"
        frames = (self.frame,) if self.real_frame is None else (self.frame, self.real_frame)
        self.window.show(*frames, hud=hud)

    def run(self, events_source) -> dict:
        """Loop until quit (or `frames` headless frames); returns achieved frame rate."""
        try:
            self._bar = self._progress()
            try:
                result = self.loop.run(events_source)
            finally:
                if self._bar is not None:
                    self._bar.close()
                    self._bar = None
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


def play(cfg: PlayConfig) -> dict:
    session = PlaySession(cfg)
    if cfg.headless:
        return session.run(lambda: [])
    import pygame

    return session.run(pygame.event.get)
