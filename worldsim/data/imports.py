"""Bring your own play: import recordings into the episode store, and export to Minari.

Two sources, each read into the same lossless episode store `worldsim collect` writes, so
`worldsim train data=<imported>` works on them unchanged:

- a **Minari dataset** installed locally (`pip install 'worldsim[minari]'`; nothing is
  downloaded): image observations (H, W, 3) uint8 and Discrete actions;
- a **folder of videos** with a per-step action file beside each: `NAME.mp4` (or any video
  OpenCV reads) holding frames 0..T, and `NAME.csv` with a header row and one row per step
  (T rows; column `action` required, `reward`, `terminated`, `truncated` optional), or
  `NAME.npy` with the T actions. Action `t` is what the player pressed on frame `t`, so
  frame `t+1` shows its effect. An optional `actions.json` (a list of names) names the
  actions; otherwise they are ACTION_0.. up to the largest action seen.

Frames are resized to `frame_size` (area interpolation) when they differ. Every file is
checked before anything is written, and one error names the first bad file and what was
expected.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np

from worldsim.data.store import DataError, Dataset, Episode

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) uint8."""
    if frames.shape[1:3] == (size, size):
        return frames
    import cv2

    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def _check_size(frame_size: int) -> None:
    if frame_size < 8 or frame_size % 8:
        raise DataError(f"frame_size must be a positive multiple of 8, got {frame_size}")


def _write(
    out: Path,
    episodes: list[Episode],
    env_id: str,
    meanings: list[str],
    frame_size: int,
    test_fraction: float,
    source: str,
) -> Dataset:
    """Append checked episodes to the dataset `out` (a new one, or one of the same game)."""
    ds = Dataset.create_or_append(
        out,
        env_id=env_id,
        env=env_id.rsplit("/", 1)[-1],
        action_meanings=meanings,
        frame_size=[frame_size, frame_size],
        test_fraction=test_fraction,
        lives=False,
    )
    first = ds.next_id()
    for i, ep in enumerate(episodes):
        ds.add(first + i, ep, source)
    return ds


# --- Minari -------------------------------------------------------------------------------


def _minari():
    try:
        import minari
    except ImportError:
        raise DataError(
            "Minari import/export needs minari: pip install 'worldsim[minari]'"
        ) from None
    return minari


def import_minari(
    dataset_id: str, out: str | Path, frame_size: int = 64, test_fraction: float = 0.1
) -> Dataset:
    """Import a locally installed Minari dataset (image observations, Discrete actions)."""
    import gymnasium as gym

    _check_size(frame_size)
    minari = _minari()
    if dataset_id not in minari.list_local_datasets():
        raise DataError(
            f"no local Minari dataset {dataset_id!r} (worldsim downloads nothing; local ones: "
            f"{', '.join(sorted(minari.list_local_datasets())) or 'none'})"
        )
    data = minari.load_dataset(dataset_id)
    obs_space, act_space = data.observation_space, data.action_space
    if not (
        isinstance(obs_space, gym.spaces.Box)
        and obs_space.dtype == np.uint8
        and len(obs_space.shape) == 3
        and obs_space.shape[-1] == 3
    ):
        raise DataError(
            f"{dataset_id}: observations must be (H, W, 3) uint8 images, got {obs_space}"
        )
    if not isinstance(act_space, gym.spaces.Discrete):
        raise DataError(f"{dataset_id}: actions must be Discrete, got {act_space}")
    meanings = data.storage.metadata.get("worldsim_action_meanings")
    meanings = json.loads(meanings) if meanings else [f"ACTION_{i}" for i in range(act_space.n)]
    episodes = []
    for ep in data.iterate_episodes():
        e = Episode(
            _resize(np.asarray(ep.observations, np.uint8), frame_size),
            np.asarray(ep.actions, np.int64),
            np.asarray(ep.rewards, np.float32),
            np.asarray(ep.terminations, bool),
            np.asarray(ep.truncations, bool),
        )
        e.check(f"{dataset_id} episode {ep.id}")
        episodes.append(e)
    spec = data.spec.env_spec
    env_id = data.storage.metadata.get("worldsim_env_id") or (
        spec.id if spec is not None else f"minari/{dataset_id}"
    )
    return _write(Path(out), episodes, env_id, meanings, frame_size, test_fraction, "minari")


def export_minari(data: str | Path, dataset_id: str) -> str:
    """Write a worldsim dataset as a local Minari dataset (lossless, no JPEG); returns its id."""
    import gymnasium as gym

    minari = _minari()
    from minari.data_collector.episode_buffer import EpisodeBuffer

    ds = Dataset.open(data)
    if dataset_id in minari.list_local_datasets():
        raise DataError(f"a local Minari dataset {dataset_id!r} already exists")
    h, w = ds.frame_size
    buffers = []
    for i, entry in enumerate(ds.entries()):
        ep = ds.load(entry)
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=ep.frames,
                actions=ep.actions,
                rewards=list(ep.rewards),
                terminations=list(ep.terminated),
                truncations=list(ep.truncated),
                infos={},
            )
        )
    with warnings.catch_warnings():  # Minari's advice on authors and permalinks
        warnings.simplefilter("ignore", UserWarning)
        created = minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            observation_space=gym.spaces.Box(0, 255, (h, w, 3), np.uint8),
            action_space=gym.spaces.Discrete(len(ds.action_meanings)),
            description=f"exported by worldsim from {ds.root} ({ds.meta['env_id']})",
            algorithm_name=", ".join(sorted({e["policy"] for e in ds.entries()})),
            jpeg_encoding=False,
        )
    created.storage.update_metadata(
        {
            "worldsim_action_meanings": json.dumps(ds.action_meanings),
            "worldsim_env_id": ds.meta["env_id"],
        }
    )
    return dataset_id


# --- videos with action files -------------------------------------------------------------


def read_video(path: Path) -> np.ndarray:
    """All frames of a video as (T, H, W, 3) uint8 RGB."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise DataError(f"{path}: no frames could be read (not a video OpenCV can decode?)")
    return np.stack(frames)


def read_actions(path: Path, steps: int) -> dict[str, np.ndarray]:
    """The per-step columns of an action file (.csv with a header, or .npy of actions)."""
    if path.suffix == ".npy":
        try:
            actions = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: not a readable .npy array ({e})") from None
        cols = {"action": actions}
    else:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or "action" not in [c.strip() for c in rows[0]]:
            raise DataError(f"{path}: expected a header row with an 'action' column")
        header = [c.strip() for c in rows[0]]
        body = [r for r in rows[1:] if r]
        for i, r in enumerate(body):
            if len(r) != len(header):
                raise DataError(
                    f"{path}: row {i + 2} has {len(r)} values, the header {len(header)}"
                )
        cols = {}
        for j, name in enumerate(header):
            try:
                cols[name] = np.array([float(r[j]) for r in body])
            except ValueError:
                raise DataError(
                    f"{path}: column {name!r} holds a value that is not a number"
                ) from None
    a = np.asarray(cols["action"])
    if a.ndim != 1 or len(a) != steps:
        raise DataError(
            f"{path}: {a.shape[0] if a.ndim else 0} actions for a video of {steps + 1} frames; "
            f"expected one action per step ({steps})"
        )
    if a.size and (np.any(a != np.round(a)) or a.min() < 0):
        raise DataError(f"{path}: actions must be whole numbers >= 0")
    return {k: np.asarray(v) for k, v in cols.items()}


def import_videos(
    folder: str | Path,
    out: str | Path,
    frame_size: int = 64,
    test_fraction: float = 0.1,
    env_id: str = "",
) -> Dataset:
    """Import every video of `folder` with the action file beside it (see the module doc)."""
    _check_size(frame_size)
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise DataError(f"{folder}: no videos ({', '.join(VIDEO_SUFFIXES)})")
    episodes = []
    for video in videos:
        action_file = next(
            (p for p in (video.with_suffix(".csv"), video.with_suffix(".npy")) if p.is_file()), None
        )
        if action_file is None:
            raise DataError(f"{video}: no action file beside it ({video.stem}.csv or .npy)")
        frames = _resize(read_video(video), frame_size)
        cols = read_actions(action_file, len(frames) - 1)
        T = len(frames) - 1
        zeros = np.zeros(T)
        ep = Episode(
            frames,
            cols["action"].astype(np.int64),
            cols.get("reward", zeros).astype(np.float32),
            cols.get("terminated", zeros).astype(bool),
            cols.get("truncated", zeros).astype(bool),
        )
        ep.check(str(video))
        episodes.append(ep)
    n_actions = 1 + max(int(ep.actions.max(initial=0)) for ep in episodes)
    names_file = folder / "actions.json"
    if names_file.is_file():
        try:
            meanings = json.loads(names_file.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{names_file}: not valid JSON ({e})") from None
        if not (isinstance(meanings, list) and all(isinstance(m, str) for m in meanings)):
            raise DataError(f"{names_file}: expected a list of action names")
        if len(meanings) < n_actions:
            raise DataError(
                f"{names_file}: {len(meanings)} names, but action {n_actions - 1} occurs"
            )
    else:
        meanings = [f"ACTION_{i}" for i in range(n_actions)]
    game = env_id or f"videos/{folder.resolve().name}"
    return _write(Path(out), episodes, game, meanings, frame_size, test_fraction, "videos")
