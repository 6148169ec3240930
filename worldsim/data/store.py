"""The episode store: one lossless compressed file per episode plus a JSON manifest.

A dataset folder holds `manifest.json` and `episodes/ep_000000.npz`, .... Every file is
written to a temporary name and renamed into place, so a crash at any moment leaves each
finished episode readable; an episode file that the manifest missed (a crash between the
two writes) is picked up again when the folder is opened.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldsim.files import (
    FORMAT_VERSION,
    atomic_write,
    atomic_write_json,
    load_json,
)

FIELDS = ("frames", "actions", "rewards", "terminated", "truncated")
OPTIONAL = ("life_lost",)  # fields that files recorded before them lack: read as all False


class DataError(ValueError):
    """A dataset folder or episode file that cannot be used."""


@dataclass
class Episode:
    """One episode: `frames[t + 1]` is what the game showed after `actions[t]`.

    frames (T+1, H, W, 3) uint8 · actions (T,) int64 · rewards (T,) float32 ·
    terminated (T,) bool · truncated (T,) bool · life_lost (T,) bool: the game reported
    fewer lives after the step (always False for games without lives, and in files recorded
    before worldsim kept it).
    """

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    life_lost: np.ndarray | None = None

    def __post_init__(self):
        if self.life_lost is None:
            self.life_lost = np.zeros(len(self.actions), bool)

    def __len__(self) -> int:
        return len(self.actions)

    def check(self, where: str = "episode") -> None:
        f, T = self.frames, len(self.actions)
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            raise DataError(
                f"{where}: frames must be (T+1, H, W, 3) uint8, got {f.shape} {f.dtype}"
            )
        if len(f) != T + 1:
            raise DataError(f"{where}: {len(f)} frames for {T} actions; expected {T + 1}")
        for name in (*FIELDS[2:], *OPTIONAL):
            if len(getattr(self, name)) != T:
                raise DataError(
                    f"{where}: {name} has {len(getattr(self, name))} entries, expected {T}"
                )


def save_episode(path: Path, ep: Episode) -> None:
    ep.check(str(path))
    arrays = {
        "frames": ep.frames,
        "actions": ep.actions.astype(np.int64),
        "rewards": ep.rewards.astype(np.float32),
        "terminated": ep.terminated.astype(bool),
        "truncated": ep.truncated.astype(bool),
        "life_lost": np.asarray(ep.life_lost, bool),
    }
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))  # type: ignore[arg-type]


def load_episode(path: Path) -> Episode:
    """Read an episode file; a damaged one raises one DataError naming the file. Optional
    fields an older file lacks come back as all False."""
    ep = Episode(**load_fields(path, FIELDS + OPTIONAL))
    ep.check(str(path))
    return ep


def load_fields(path: Path, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Some arrays of an episode file (as `load_episode`), e.g. its actions without its
    frames."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in fields if k in z.files or k not in OPTIONAL}
            for k in set(fields) - set(data):
                data[k] = np.zeros(len(z["actions"]), bool)
    except FileNotFoundError:
        raise DataError(f"{path}: episode file is missing") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not a readable episode file ({type(e).__name__}: {e})") from None
    return data


def is_test_episode(episode_id: int, test_fraction: float) -> bool:
    """Held-out split by id: exactly `test_fraction` of consecutive ids, spread evenly.

    >>> [i for i in range(20) if is_test_episode(i, 0.1)]
    [9, 19]
    """
    return int((episode_id + 1) * test_fraction) > int(episode_id * test_fraction)


class Dataset:
    """A folder of episodes with its manifest (env id, action meanings, frame size, splits)."""

    def __init__(self, root: Path, meta: dict):
        self.root, self.meta = Path(root), meta

    # --- opening and creating ----------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> Dataset:
        root = Path(root)
        manifest = root / "manifest.json"
        if not manifest.is_file():
            raise DataError(f"{root}: not a worldsim dataset (no manifest.json)")
        ds = cls(root, load_json(manifest, DataError))
        ds._adopt_orphans()
        return ds

    @classmethod
    def create_or_append(cls, root: str | Path, **meta) -> Dataset:
        """Open `root` to append (its game and frame size must match) or start a new dataset."""
        root = Path(root)
        if (root / "manifest.json").exists():
            ds = cls.open(root)
            for key in ("env_id", "frame_size", "action_meanings", "test_fraction", "lives"):
                if ds.meta.get(key, False) != meta.get(key, False):
                    raise DataError(
                        f"{root}: holds {key}={ds.meta.get(key, False)!r}, cannot append "
                        f"{key}={meta.get(key, False)!r}"
                        + (
                            " (it was recorded before worldsim kept lost lives; record a new "
                            "dataset)"
                            if key == "lives" and not ds.lives
                            else ""
                        )
                    )
            return ds
        (root / "episodes").mkdir(parents=True, exist_ok=True)
        ds = cls(root, {"format": FORMAT_VERSION, **meta, "episodes": []})
        ds._write_manifest()
        return ds

    def _write_manifest(self) -> None:
        atomic_write_json(self.root / "manifest.json", self.meta)

    def _adopt_orphans(self) -> None:
        """Take in episode files the manifest missed (a crash between the two writes); the
        manifest is rewritten only where the folder is writable (reading never needs it)."""
        known = {e["file"] for e in self.meta["episodes"]}
        orphans = [
            p
            for p in sorted((self.root / "episodes").glob("ep_*.npz"))
            if f"episodes/{p.name}" not in known
        ]
        for path in orphans:
            d = load_fields(path, ("actions", "rewards"))
            self._add_entry(int(path.stem[3:]), len(d["actions"]), float(d["rewards"].sum()), "?")
        if orphans and os.access(self.root, os.W_OK):
            try:
                self._write_manifest()
            except OSError:
                pass  # (a full disk: the orphans are read again next time)

    # --- episodes ----------------------------------------------------------------------
    def path_for(self, episode_id: int) -> Path:
        return self.root / "episodes" / f"ep_{episode_id:06d}.npz"

    def next_id(self) -> int:
        return max((e["id"] for e in self.meta["episodes"]), default=-1) + 1

    def add_entry(self, episode_id: int, length: int, ret: float, policy: str) -> None:
        """Record a finished episode file in the manifest (written atomically)."""
        self._add_entry(episode_id, length, ret, policy)
        self._write_manifest()

    def _add_entry(self, episode_id: int, length: int, ret: float, policy: str) -> None:
        split = "test" if is_test_episode(episode_id, self.meta["test_fraction"]) else "train"
        self.meta["episodes"].append(
            {
                "id": episode_id,
                "file": f"episodes/ep_{episode_id:06d}.npz",
                "length": length,
                "return": ret,
                "split": split,
                "policy": policy,
            }
        )
        self.meta["episodes"].sort(key=lambda e: e["id"])

    def add(self, episode_id: int, ep: Episode, policy: str) -> None:
        save_episode(self.path_for(episode_id), ep)
        self.add_entry(episode_id, len(ep), float(ep.rewards.sum()), policy)

    def drop_from(self, episode_id: int) -> int:
        """Remove the episodes with ids >= `episode_id` (files and manifest entries; e.g. the
        unfinished part of a collection that was killed); returns how many were removed."""
        dropped = [e for e in self.meta["episodes"] if e["id"] >= episode_id]
        self.meta["episodes"] = [e for e in self.meta["episodes"] if e["id"] < episode_id]
        self._write_manifest()
        for path in (self.root / "episodes").glob("ep_*.npz"):
            if int(path.stem[3:]) >= episode_id:
                path.unlink()
        return len(dropped)

    def entries(self, split: str | None = None) -> list[dict]:
        if split not in (None, "train", "test"):
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
        return [e for e in self.meta["episodes"] if split is None or e["split"] == split]

    def load(self, entry: dict) -> Episode:
        return load_episode(self.root / entry["file"])

    @property
    def frame_size(self) -> tuple[int, int]:
        return tuple(self.meta["frame_size"])

    @property
    def action_meanings(self) -> list[str]:
        return list(self.meta["action_meanings"])

    @property
    def lives(self) -> bool:
        """Whether the game reported lives, so `life_lost` says where one was lost."""
        return bool(self.meta.get("lives", False))

    def summary(self) -> str:
        lines = [
            f"dataset   {self.root}",
            f"game      {self.meta['env_id']}",
            f"frames    {self.frame_size[0]}x{self.frame_size[1]} RGB",
            f"actions   {', '.join(self.action_meanings)}",
        ]
        for split in ("train", "test"):
            es = self.entries(split)
            steps = sum(e["length"] for e in es)
            rets = np.array([e["return"] for e in es] or [0.0])
            lens = np.array([e["length"] for e in es] or [0])
            lines.append(
                f"{split:<9} {len(es)} episodes, {steps} steps; length {lens.mean():.0f} "
                f"(min {lens.min()}, max {lens.max()}); return {rets.mean():.1f} ± {rets.std():.1f}"
            )
        policies = sorted({e["policy"] for e in self.entries()})
        lines.append(f"policies  {', '.join(policies) or '-'}")
        return "\n".join(lines)
