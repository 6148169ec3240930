"""Training checkpoints: safetensors weights plus a JSON of config and format version.

A run folder holds `checkpoints/step_XXXXXXX/` (model, ema, optim .safetensors and
state.json) and a `latest` file naming the newest one; each checkpoint folder is written
under a temporary name and renamed, and `latest` is replaced atomically, so a crash at any
moment leaves the previous checkpoint intact. Reading run folders is
`worldsim.sim.world_file`'s job.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from worldsim.files import CheckpointError, atomic_write, save_tensors, write_json


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


def write_checkpoint(
    run: Path, step: int, files: dict[str, dict[str, torch.Tensor]], state: dict, keep: int = 2
) -> Path:
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
        sums = {
            f"{name}.safetensors": save_tensors(tmp / f"{name}.safetensors", tensors)
            for name, tensors in files.items()
        }
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
