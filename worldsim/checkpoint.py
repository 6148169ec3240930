"""Checkpoints: safetensors weights plus a JSON of config and format version. No pickles.

A run folder holds `checkpoints/step_XXXXXXX/` (model, ema, optim .safetensors and
state.json) and a `latest` file naming the newest one; each checkpoint folder is written
under a temporary name and renamed, and `latest` is replaced atomically, so a crash at any
moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from worldsim.data.store import atomic_write, atomic_write_json

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint, run or world folder that cannot be loaded."""


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda f: f.write(_serialize(tensors)))


def _serialize(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (a pickle, a truncated file) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
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
        save_tensors(tmp / f"{name}.safetensors", tensors)
    write_json(tmp / "state.json", {**state, "step": step})
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
    ckpt = run / "checkpoints" / pointer.read_text().strip()
    old_copy = ckpt.with_name(f".{ckpt.name}.old")
    if not ckpt.is_dir() and old_copy.is_dir():  # a crash while the same step was saved again
        return old_copy
    if not ckpt.is_dir():
        raise CheckpointError(f"{run}: 'latest' names {ckpt.name}, which is missing")
    return ckpt
