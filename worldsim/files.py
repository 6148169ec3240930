"""worldsim's files on disk: atomic writes, versioned JSON, checksummed safetensors. No pickles.

Every file is written to a temporary name beside its place and renamed into it, so a crash
at any moment leaves the previous file intact; a full disk is one `DiskFull` naming the
file. Safetensors files record their SHA-256 in the JSON beside them (a checkpoint's
`state.json`, a world's `world.json`), and reading checks it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file
from torch import nn

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint, run or world folder that cannot be loaded."""


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write a safetensors file atomically; returns the SHA-256 of its bytes."""
    data = _serialize({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    atomic_write(path, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of each .safetensors file in a folder, by file name."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).glob("*.safetensors"))
    }


def _recorded_checksum(path: Path) -> tuple[str, str] | None:
    """(checksum, where) recorded for `path` by its folder's state.json or world.json."""
    for name in ("state.json", "world.json"):
        meta = path.parent / name
        if meta.is_file():
            try:
                sums = json.loads(meta.read_text()).get("checksums") or {}
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                return None  # reported by whoever reads that file
            if isinstance(sums, dict) and isinstance(sums.get(path.name), str):
                return sums[path.name], name
    return None


def _serialize(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (a pickle, a truncated file) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        recorded = _recorded_checksum(path)
        if recorded is None:
            return load_file(path)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != recorded[0]:
            raise CheckpointError(
                f"{path}: damaged (its SHA-256 differs from the one {recorded[1]} recorded)"
            )
        return load(data)
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({e}); worldsim loads no pickles"
        ) from None


def load_json(path: Path, error: type[ValueError] = CheckpointError) -> dict:
    """A worldsim JSON file (a checkpoint's state, a world's or a dataset's metadata): a JSON
    object of this format version, else one `error` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: nested too deeply to be a worldsim file") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got a {type(data).__name__}")
    if data.get("format") != FORMAT_VERSION:
        raise error(f"{path}: format {data.get('format')!r}, expected {FORMAT_VERSION}")
    return data


def write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, {"format": FORMAT_VERSION, **data})


def load_weights(module: nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Load weights whose names and shapes must match the module exactly."""
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"{where}: weights do not match the model of its config "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for k, v in own.items():
        if v.shape != tensors[k].shape:
            raise CheckpointError(
                f"{where}: weight {k} has shape {tuple(tensors[k].shape)}, the config's model "
                f"needs {tuple(v.shape)}"
            )
    module.load_state_dict({k: t.to(own[k].dtype) for k, t in tensors.items()})


class DiskFull(OSError):
    """A write that ran out of space: one line naming the file."""

    def __init__(self, path):
        super().__init__(errno.ENOSPC, "no space left on device", str(path))

    def __str__(self) -> str:
        return f"{self.filename}: no space left on device"


def disk_full(e: BaseException) -> bool:
    """Whether `e` is the operating system saying the disk is full."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def atomic_write(path: Path, write) -> None:
    """Call `write(file_object)` on a temporary file beside `path`, then rename it into place;
    a full disk is a `DiskFull` naming `path`, and leaves nothing behind."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        if disk_full(e):
            raise DiskFull(path) from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; datasets are meant to be shared
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if disk_full(e):
            raise DiskFull(path) from None
        raise


def atomic_write_json(path: Path, data: dict) -> None:
    """`data` as indented JSON at `path`, written with `atomic_write`."""
    text = json.dumps(data, indent=1).encode()
    atomic_write(path, lambda f: f.write(text))
