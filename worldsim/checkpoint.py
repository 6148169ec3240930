"""Checkpoints: safetensors weights plus a JSON of config and format version. No pickles.

A run folder holds `checkpoints/step_XXXXXXX/` (model, ema, optim .safetensors and
state.json) and a `latest` file naming the newest one; each checkpoint folder is written
under a temporary name and renamed, and `latest` is replaced atomically, so a crash at any
moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file
from torch import nn

from worldsim.data.store import atomic_write, atomic_write_json

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
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).glob("*.safetensors"))}  # fmt: skip


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


def load_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be a worldsim file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    if data.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format {data.get('format')!r}, expected {FORMAT_VERSION}")
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


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Flatten an optimizer's state into named tensors and its JSON-able param groups."""
    sd = opt.state_dict()
    tensors = {
        f"{i}.{k}": torch.as_tensor(v) for i, st in sd["state"].items() for k, v in st.items()
    }
    return tensors, sd["param_groups"]


def load_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list
) -> None:
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        i, k = name.split(".", 1)
        state.setdefault(int(i), {})[k] = t
    opt.load_state_dict({"state": state, "param_groups": groups})


def write_checkpoint(run: Path, step: int, files: dict[str, dict[str, torch.Tensor]],
                     state: dict, keep: int = 2) -> Path:  # fmt: skip
    """Write checkpoints/step_<step>/ atomically, point `latest` at it, keep the newest `keep`."""
    root = Path(run) / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".step_{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, tensors in files.items():
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:  # never let a non-finite checkpoint replace (and then rotate out) a good one
            raise CheckpointError(
                f"step {step}: refusing to save {name} with non-finite values in {bad[0]}"
            )
    try:
        sums = {f"{name}.safetensors": save_tensors(tmp / f"{name}.safetensors", tensors)
                for name, tensors in files.items()}  # fmt: skip
        write_json(tmp / "state.json", {**state, "step": step, "checksums": sums})
    except BaseException:  # e.g. a full disk: no half-written checkpoint, the last one stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old_copy = root / f".step_{step:07d}.old"  # a step saved again (a re-run from an older
    shutil.rmtree(old_copy, ignore_errors=True)  # checkpoint): kept until the new one is in
    if final.exists():
        final.rename(old_copy)
    tmp.rename(final)
    atomic_write(Path(run) / "latest", lambda f: f.write(final.name.encode()))
    shutil.rmtree(old_copy, ignore_errors=True)
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run: Path) -> Path:
    run = Path(run)
    pointer = run / "latest"
    if not pointer.is_file():
        raise CheckpointError(f"{run}: no checkpoint (expected a run folder with a 'latest' file)")
    name = pointer.read_text(errors="replace").strip()
    if not re.fullmatch(r"step_\d{7}", name):
        raise CheckpointError(
            f"{pointer}: expected the name of one of {run}/checkpoints/step_NNNNNNN, got {name[:80]!r}"
        )
    ckpt = run / "checkpoints" / name
    old_copy = ckpt.with_name(f".{ckpt.name}.old")
    if not ckpt.is_dir() and old_copy.is_dir():  # a crash while the same step was saved again
        return old_copy
    if not ckpt.is_dir():
        raise CheckpointError(f"{run}: 'latest' names {ckpt.name}, which is missing")
    return ckpt


def checkpoints_newest_first(run: Path) -> list[Path]:
    """The run's checkpoint folders, newest first (for falling back past a damaged one)."""
    return sorted((Path(run) / "checkpoints").glob("step_*"), reverse=True)
