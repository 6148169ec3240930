"""Recording played episodes: an H.264 mp4 plus the episode in the collection format; the
play loop's callback that records, and the writer that saves episodes in the background."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from worldsim.data.store import Dataset, Episode
from worldsim.data.video import write_mp4


class Recorder:
    """Collects frames and actions; `save` writes `<out>/<name>.mp4` and appends the episode
    to the dataset `<out>` itself (`worldsim data info <out>`). Never overwrites."""

    def __init__(
        self, out: str | Path, env_id: str, action_meanings: list[str], frame_size, fps: int
    ):
        self.out, self.env_id, self.meanings = Path(out), env_id, action_meanings
        self.size, self.fps = frame_size, fps
        self.frames: list[np.ndarray] = []
        self.actions: list[int] = []
        self.rewards: list[float] = []
        self.ends: list[bool] = []

    @property
    def active(self) -> bool:
        return bool(self.frames)

    def start(self, frame: np.ndarray) -> None:
        self.frames, self.actions, self.rewards, self.ends = [frame], [], [], []

    def add(self, action: int, frame: np.ndarray, reward: float, terminated: bool) -> None:
        if self.frames:
            self.actions.append(action)
            self.frames.append(frame)
            self.rewards.append(reward)
            self.ends.append(terminated)

    def save(self, source: str) -> Path | None:
        """Write what was recorded; returns the mp4 path (None if nothing was played)."""
        ep = self.take()
        return None if ep is None else self.write(ep, source)

    def take(self) -> Episode | None:
        """The episode recorded so far (None if nothing was played), and recording stops: the
        quick half of `save`, so that a caller can hand the slow half (`write`) to a thread."""
        frames, self.frames = self.frames, []
        if len(frames) < 2:
            return None
        T = len(frames) - 1
        ep = Episode(
            np.stack(frames),
            np.array(self.actions, np.int64),
            np.array(self.rewards, np.float32),
            np.array(self.ends, bool),
            np.zeros(T, bool),
        )
        ep.truncated[-1] = not ep.terminated[-1]
        return ep

    def write(self, ep: Episode, source: str, threads: int | None = None) -> Path:
        """Write a `take`n episode: the mp4 (returned) and the dataset entry. One at a time:
        two writes at once could pick the same file name or episode id. `threads`: the video
        encoder's (`write_mp4`)."""
        self.out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, i = self.out / f"{source}-{stamp}.mp4", 1
        while path.exists():
            path, i = self.out / f"{source}-{stamp}-{i}.mp4", i + 1
        # the dataset first: it refuses another game's episodes before any file is written
        ds = Dataset.create_or_append(
            self.out,
            env_id=self.env_id,
            env=source,
            action_meanings=self.meanings,
            frame_size=list(self.size),
            test_fraction=0.0,
        )
        write_mp4(path, ep.frames, fps=self.fps, scale=4, threads=threads)
        try:
            ds.add(ds.next_id(), ep, policy=source)
        except BaseException:  # no video without its episode
            path.unlink(missing_ok=True)
            raise
        return path


class RecordingCallback:
    """A play loop callback (`PlayLoop(callback=...)`) that records the steps played while
    it is on. An episode is cut where play ends one and where play was restarted (a step
    whose obs_t is not the last step's obs_tp1), so that each recorded action produced the
    frame after it; each cut episode goes to `save` (e.g. `BackgroundWriter.submit`)."""

    def __init__(self, recorder: Recorder, save: Callable[[Episode], object]):
        self.recorder, self.save = recorder, save
        self.on = False
        self._last: np.ndarray | None = None

    def start(self, obs: np.ndarray) -> None:
        """Record from `obs` (the frame play shows now) on."""
        self.on, self._last = True, obs
        self.recorder.start(obs)

    def stop(self) -> bool:
        """Stop recording and save what was recorded; False if nothing was."""
        self.on = False
        return self.cut()

    def cut(self) -> bool:
        """Save the episode recorded so far (recording goes on from the next step); False
        if nothing was recorded."""
        ep = self.recorder.take()
        if ep is None:
            return False
        self.save(ep)
        return True

    def __call__(self, obs_t, obs_tp1, action, reward, terminated, truncated, info) -> None:
        if not self.on:
            return
        if obs_t is not self._last or not self.recorder.active:
            self.cut()
            self.recorder.start(obs_t)
        self.recorder.add(int(action), obs_tp1, float(reward), bool(terminated))
        self._last = obs_tp1
        if terminated or truncated:
            self.cut()


class BackgroundWriter:
    """Runs `write(episode)` for each episode submitted, one after another on a thread of
    lower priority, so that play does not stall while an episode is encoded. `join()` waits
    for them all."""

    def __init__(self, write: Callable[[Episode], object]):
        self.write = write
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def submit(self, ep: Episode) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worldsim-save")
        self._pending.append(self._pool.submit(self._write, ep))

    def _write(self, ep: Episode) -> None:
        _lower_priority()
        self.write(ep)

    def join(self) -> None:
        """Wait for every write (in order: files are named and numbered as made); then
        raise the first error a write raised, if any."""
        pending, self._pending = self._pending, []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        errors = [e for f in pending if (e := f.exception()) is not None]
        if errors:
            raise errors[0]


def _lower_priority() -> None:
    """Run the calling thread, and the processes it starts (the video encoder), at a lower
    priority, where the system allows it per thread (Linux): on a machine with few cores the
    encoder otherwise takes a core from the world's threads, which then wait on each other
    at every operation."""
    import sys
    import threading

    if sys.platform.startswith("linux"):  # elsewhere the id is no process id: leave it be
        with contextlib.suppress(OSError):  # not allowed: the default priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
