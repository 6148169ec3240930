"""Random training segments from recorded episodes, with bounded memory.

Frames are read through an uncompressed memory-mapped cache, made once per split on first
use, so datasets larger than RAM train with only the pages in use resident; actions,
rewards and ends are small and kept in memory. The cache lives in a folder of its own
(`cache_dir()`: $WORLDSIM_CACHE, else $XDG_CACHE_HOME/worldsim, else ~/.cache/worldsim),
never inside the dataset, so read-only datasets train; it is keyed by the dataset's path
and episodes, and a damaged one is rebuilt with a message naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from worldsim.data.store import DataError, Dataset, load_fields


def cache_dir() -> Path:
    """Where frame caches go: $WORLDSIM_CACHE, else $XDG_CACHE_HOME/worldsim, else
    ~/.cache/worldsim."""
    if os.environ.get("WORLDSIM_CACHE"):
        return Path(os.environ["WORLDSIM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "worldsim"


class Segment(NamedTuple):
    """A batch of training segments (B = batch size, K = context, h = horizon).

    obs (B, K+h, 3, H, W) uint8: K context frames then h target frames ·
    act (B, K+h-1) int64: act[:, i] is the action taken at frame i ·
    rew (B, h) float32 and end (B, h) bool: reward and termination of each target step ·
    mask (B, K+h) bool: False where a frame is padding before the episode's start ·
    life (B, h) bool: whether the game lost a life at each target step.
    """

    obs: torch.Tensor
    act: torch.Tensor
    rew: torch.Tensor
    end: torch.Tensor
    mask: torch.Tensor
    life: torch.Tensor


class SegmentSampler:
    """Draws random segments from one split of a dataset.

    A segment ending at step t has context frames t-K+1..t (the first frame repeated, with
    NOOP actions, where that reaches before the episode's start) and targets t+1..t+h.
    """

    def __init__(self, dataset: Dataset, split: str, context: int, horizon: int = 1):
        self.ds, self.K, self.h = dataset, context, horizon
        self.entries = [e for e in dataset.entries(split) if e["length"] >= horizon]
        if not self.entries:
            raise DataError(f"{dataset.root}: no {split} episodes with at least {horizon} steps")
        self.small = []  # (actions, rewards, terminated, life_lost) of each episode, in memory
        fields = ("actions", "rewards", "terminated", "life_lost")
        for e in self.entries:
            d = load_fields(dataset.root / e["file"], fields)
            self.small.append(tuple(d[k] for k in fields))
        # frame offsets of each episode inside the cache; every step ending a segment is
        # sampled with equal probability
        self.offsets = np.cumsum([0] + [e["length"] + 1 for e in self.entries])
        self.starts = np.array([e["length"] - horizon + 1 for e in self.entries], np.int64)
        self.cum = np.cumsum(self.starts)
        # the small arrays of every episode end to end, for gathering a batch in one go
        self.flat = [np.concatenate([x[k] for x in self.small]) for k in range(4)]
        self.flat_offsets = np.cumsum([0] + [len(x[0]) for x in self.small])[:-1]
        self.all_frames = self._frame_cache(split)

    def __len__(self) -> int:
        return int(self.cum[-1])

    def _frame_cache(self, split: str) -> np.ndarray:
        """All frames of the split in one uncompressed, memory-mapped file."""
        h, w = self.ds.frame_size
        episodes = [(e["file"], e["length"]) for e in self.entries]
        key = hashlib.sha1(json.dumps([str(self.ds.root.resolve()), episodes]).encode())
        path = cache_dir() / f"{self.ds.root.name}-{split}-{key.hexdigest()[:16]}.npy"
        shape = (int(self.offsets[-1]), h, w, 3)
        if path.exists():
            try:
                frames = np.load(path, mmap_mode="r")
                if frames.shape == shape and frames.dtype == np.uint8:
                    return frames
                problem = f"shape {frames.shape} {frames.dtype}, expected {shape} uint8"
            except (ValueError, OSError, EOFError) as e:
                problem = str(e)
            print(f"frame cache {path} is damaged ({problem}); rebuilding it", file=sys.stderr)
        self._build_cache(path, shape)
        return np.load(path, mmap_mode="r")

    def _build_cache(self, path, shape: tuple[int, ...]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(
                f"cannot make the frame cache folder {path.parent} ({e.strerror}); "
                "set WORLDSIM_CACHE to a writable folder"
            ) from None
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")  # concurrent builders don't clash
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            for entry, o in zip(self.entries, self.offsets[:-1], strict=True):
                frames = self.ds.load(entry).frames
                n = entry["length"]
                if len(frames) != n + 1:
                    raise DataError(
                        f"{self.ds.root / entry['file']}: {len(frames)} frames, but the "
                        f"manifest says {n} steps ({n + 1} frames)"
                    )
                out[o : o + n + 1] = frames
            out.flush()
            del out
            os.replace(tmp, path)
        except OSError as e:  # disk full, or an unwritable folder
            tmp.unlink(missing_ok=True)
            raise DataError(
                f"cannot write the frame cache {path} ({e.strerror or e}); free space "
                "or set WORLDSIM_CACHE to another folder"
            ) from None
        except BaseException:  # interrupted or a damaged episode: leave no large .tmp
            tmp.unlink(missing_ok=True)
            raise

    def _gather(self, index: np.ndarray) -> tuple[np.ndarray, ...]:
        """Segments with global indices `index` (B,): frames (B, K+h, H, W, 3), actions
        (B, K+h-1) (NOOP before an episode's start), rewards and ends (B, h), mask (B, K+h),
        lost lives (B, h)."""
        i = np.searchsorted(self.cum, index, side="right")  # episode of each segment
        t = index - np.where(i > 0, self.cum[i - 1], 0)  # its last context frame
        idx = t[:, None] + np.arange(-self.K + 1, self.h + 1)  # frame indices in the episode
        frames = self.all_frames[(self.offsets[i][:, None] + np.clip(idx, 0, None)).ravel()]
        frames = frames.reshape(len(index), self.K + self.h, *frames.shape[1:])
        off = self.flat_offsets[i][:, None]
        act_idx, tgt = idx[:, :-1], off + t[:, None] + np.arange(self.h)
        acts, rews, ends, lost = self.flat
        act = np.where(act_idx >= 0, acts[off + np.clip(act_idx, 0, None)], 0)
        return frames, act, rews[tgt], ends[tgt], idx >= 0, lost[tgt]

    def segment(self, index: int) -> tuple[np.ndarray, ...]:
        """The segment with global index `index` in [0, len(self))."""
        return tuple(x[0] for x in self._gather(np.array([index])))

    def sample(self, batch_size: int, rng: np.random.Generator) -> Segment:
        return self._segments(rng.integers(0, len(self), batch_size))

    def events(self) -> list[np.ndarray]:
        """The one-step segments whose target step is a rare event, by kind: the episode
        ends, the lost lives that did not end the episode, and the steps of each non-zero
        reward value; kinds the data has none of are left out."""
        if self.h != 1:
            raise ValueError(f"events are one-step segments; this sampler's horizon is {self.h}")
        _, rews, ends, lost = self.flat  # one-step segment j is flat transition j
        kinds = [ends, lost & ~ends] + [rews == v for v in np.unique(rews[rews != 0])]
        return [np.flatnonzero(k) for k in kinds if k.any()]

    def sample_events(self, n: int, rng: np.random.Generator, events: list[np.ndarray]) -> Segment:
        """n one-step segments drawn from `events` (from `events()`), the kinds in turn from
        a random one, so that each has an equal share: a Pong end, seen once in ~800 steps,
        is then as common in these as a lost life or a point."""
        first = int(rng.integers(len(events)))
        kind = (first + np.arange(n)) % len(events)
        index = np.array([events[k][rng.integers(len(events[k]))] for k in kind], np.int64)
        return self._segments(index)

    def _segments(self, index: np.ndarray) -> Segment:
        obs, act, rew, end, mask, life = self._gather(index)
        return Segment(
            torch.from_numpy(obs).permute(0, 1, 4, 2, 3).contiguous(),
            torch.from_numpy(act),
            torch.from_numpy(rew.astype(np.float32)),
            torch.from_numpy(end),
            torch.from_numpy(mask),
            torch.from_numpy(life),
        )
