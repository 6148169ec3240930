"""Recording played episodes: an H.264 mp4 plus the episode in the collection format."""

from __future__ import annotations

import time
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
        self.out, self.env_id, self.meanings, self.size, self.fps = (
            Path(out),
            env_id,
            action_meanings,
            frame_size,
            fps,
        )
        self.frames, self.actions, self.rewards, self.ends = [], [], [], []

    @property
    def active(self) -> bool:
        return bool(self.frames)

    def start(self, frame: np.ndarray) -> None:
        self.frames, self.actions, self.rewards, self.ends = [frame], [], [], []

    def add(self, action: int, frame: np.ndarray, reward: float, terminated: bool) -> None:
        if self.frames:
            (
                self.actions.append(action),
                self.frames.append(frame),
                self.rewards.append(reward),
                self.ends.append(terminated),
            )  # noqa: E501

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
        ep = Episode(np.stack(frames), np.array(self.actions, np.int64), np.array(self.rewards, np.float32),
                     np.array(self.ends, bool), np.zeros(T, bool))  # fmt: skip
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
        ds = Dataset.create_or_append(self.out, env_id=self.env_id, env=source, action_meanings=self.meanings,
                                      frame_size=list(self.size), test_fraction=0.0)  # fmt: skip
        write_mp4(path, ep.frames, fps=self.fps, scale=4, threads=threads)
        try:
            ds.add(ds.next_id(), ep, policy=source)
        except BaseException:  # no video without its episode
            path.unlink(missing_ok=True)
            raise
        return path
