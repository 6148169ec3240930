"""Writing frames to H.264 mp4 (imageio-ffmpeg ships an ffmpeg binary; browsers play it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from worldsim.files import DiskFull, disk_full


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale of (..., H, W, 3) frames.

    >>> upscale(np.zeros((2, 4, 4, 3), np.uint8), 3).shape
    (2, 12, 12, 3)
    """
    return frames.repeat(scale, axis=-3).repeat(scale, axis=-2)


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: int = 15,
    scale: int = 4,
    overwrite: bool = False,
    threads: int | None = None,
) -> Path:
    """Write (T, H, W, 3) uint8 frames to an H.264 mp4; refuses to replace a file unless asked.
    `threads`: ffmpeg's encoder and filter threads (None: its choice, all cores); 1 leaves the
    other cores to a live loop that goes on meanwhile."""
    import imageio.v2 as imageio

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite to replace it")
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    try:
        # the encoder upscales (nearest neighbour): no scale^2-sized copy of the frames here
        params = ["-vf", f"scale=iw*{scale}:ih*{scale}:flags=neighbor"] if scale > 1 else []
        params += ["-threads", str(threads), "-filter_threads", str(threads)] if threads else []
        with imageio.get_writer(
            tmp,
            fps=fps,
            codec="libx264",
            quality=8,
            macro_block_size=1,
            pixelformat="yuv420p",
            ffmpeg_log_level="error",
            ffmpeg_params=params,
        ) as w:
            for frame in frames:
                w.append_data(frame)  # type: ignore[attr-defined]  # imageio's ffmpeg writer
        tmp.replace(path)
    except (OSError, RuntimeError) as e:  # ffmpeg died: a full disk is the usual cause
        if disk_full(e) or shutil.disk_usage(path.parent).free < 2**20:
            raise DiskFull(path) from None
        if isinstance(e, OSError) and not isinstance(e, BrokenPipeError):
            raise
        raise OSError(
            f"{path}: the video encoder failed ({str(e).splitlines()[0][:200]})"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
