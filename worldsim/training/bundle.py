"""World bundles: the self-contained folder that play, RL, record and eval load.

A world folder holds `world.json` (format, game, action meanings, frame size, reward
values, model config, key map, provenance), `teacher.safetensors` (fp16 EMA weights of
the world model), optionally `student.safetensors` (the one-step head), and
`starts.safetensors`: real starting contexts, so the world resets without the dataset.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldsim import files
from worldsim.config import from_dict
from worldsim.data.store import Dataset, load_fields
from worldsim.models.world_model import ModelConfig, WorldModel
from worldsim.sim import world_file
from worldsim.training.calibration import calibrate, choose_still


@dataclass(frozen=True)
class BundleConfig:
    """Make a world folder from a training run."""

    run: str = "runs/bricks"
    """Run folder (from `worldsim train`); its latest checkpoint's EMA weights are used. A
    world folder also works: its teacher and starts are kept (e.g. to swap in a new student)."""
    out: str = "worlds/bricks"
    """World folder to write."""
    student: str = ""
    """Run folder of the one-step student (from `worldsim distill`), or a world folder whose
    student to take (its denoiser config must match); empty = none."""
    starts: int = 64
    """Real starting contexts to include (episode starts of the run's training data)."""
    overwrite: bool = False
    """Replace an existing world folder."""
    still: int | None = None
    """The world's `sampler.still` level (pixels its draw moves by at most this many uint8
    levels keep the last frame's); empty = chosen on the training play, the level whose
    frames come nearest the real ones without losing more than 1 dB on the moving pixels
    (`worldsim.training.calibration.choose_still`)."""

    def __post_init__(self):
        if self.starts < 1:
            raise ValueError(f"starts must be >= 1, got {self.starts}")
        if self.still is not None and not 0 <= self.still <= 255:
            raise ValueError(f"still must be empty or a level in [0, 255], got {self.still}")


def bundle(cfg: BundleConfig) -> Path:
    """Write the world folder `cfg.out` from the run `cfg.run`."""
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=true to replace it")
    src = world_file.load_source(cfg.run)
    if src.kind == "world":
        return _rebundle(src.folder, cfg, out)
    state, weights = src.meta, files.load_tensors(src.weights_path)
    model_cfg = src.model_cfg
    model = WorldModel(model_cfg, len(state["action_meanings"]), state["reward_values"])
    files.load_weights(model, weights, src.weights_path)  # refuse weights that do not fit
    ds = Dataset.open(state["config"]["data"])
    frames, actions = _starts(ds, model_cfg.denoiser.context, cfg.starts)
    thresholds = calibrate(model, ds)
    meta = {
        "kind": "worldsim-world",
        "env_id": state["env_id"],
        "action_meanings": state["action_meanings"],
        "frame_size": state["frame_size"],
        "reward_values": state["reward_values"],
        "model": state["model"],
        "keys_to_action": _keymap({**state["config"].get("env", {}), "id": state["env_id"]}),
        "thresholds": thresholds,
        "lives": bool(state.get("lives")) and model_cfg.reward.life_head and _loses_lives(ds),
        "env": {
            **state["config"].get("env", {}),
            # the game the data was recorded from names it, and makes it where the data
            # keeps how (a run given only `data=` keeps the default env config)
            **({"name": ds.meta["env"]} if isinstance(ds.meta.get("env"), str) else {}),
            **(ds.meta["game"] if isinstance(ds.meta.get("game"), dict) else {}),
            "id": state["env_id"],
            "frame_size": state["frame_size"][0],
        },
        "source": {
            "run": str(Path(cfg.run).resolve()),
            "step": state["step"],
            "data": state["config"]["data"],
            **({"init": state["config"]["init"]} if state["config"].get("init") else {}),
        },
    }

    def write_files(tmp: Path) -> None:
        teacher = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
        files.save_tensors(tmp / "teacher.safetensors", teacher)
        files.save_tensors(tmp / "starts.safetensors", {"frames": frames, "actions": actions})

    return _write_world(out, meta, cfg, write_files, ds)


def _rebundle(src: Path, cfg: BundleConfig, out: Path) -> Path:
    """A world from another world folder: same teacher and starts, the student of `cfg.student`."""
    meta = files.load_json(src / "world.json")
    meta.pop("student", None)
    data = Path(meta.get("source", {}).get("data", ""))
    ds = Dataset.open(data) if str(data) and (data / "manifest.json").exists() else None

    def write_files(tmp: Path) -> None:
        for name in ("teacher.safetensors", "starts.safetensors"):
            shutil.copy2(src / name, tmp / name)

    return _write_world(out, meta, cfg, write_files, ds)


def _write_world(out: Path, meta: dict, cfg: BundleConfig, write_files, ds: Dataset | None) -> Path:
    """Write a world folder under a temporary name, then put it in place of `out`. Its
    `still` level is `cfg.still`, or chosen on `ds`'s training play (kept as it was when
    there is none)."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_files(tmp)
        if cfg.student:
            meta["student"] = _write_student(Path(cfg.student), meta, tmp / "student.safetensors")
        meta["checksums"] = files.checksums(tmp)
        if cfg.still is not None:
            meta["still"] = cfg.still
        elif ds is not None:
            files.write_json(tmp / "world.json", meta)  # (choose_still loads the world)
            meta["still"], scores = choose_still(tmp, ds)
            tried = ", ".join(f"{k}: {w:.1f} / {m:.1f}" for k, (w, m) in scores.items())
            print(
                f"still: {meta['still']} levels (one-step PSNR whole / moving on training "
                f"play, by level: {tried})"
            )
        files.write_json(tmp / "world.json", meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # leave nothing half-written behind
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _write_student(run: Path, meta: dict, dest: Path) -> dict:
    """Copy a distilled student's EMA weights (fp16) into the bundle; it must fit the teacher."""
    from worldsim.models.denoiser import Denoiser

    src = world_file.load_source(run)
    path = src.student_path
    weights = files.load_tensors(path)
    state = {**src.meta["student"], "model": src.meta["model"]} if src.kind == "world" else src.meta
    if "model" not in state or _denoiser_cfg(state["model"]) != _denoiser_cfg(meta["model"]):
        raise files.CheckpointError(
            f"{path}: the student's model config differs from the teacher's"
        )
    student = Denoiser(
        from_dict(ModelConfig, state["model"]).denoiser, len(meta["action_meanings"]), "consistency"
    )
    files.load_weights(student, weights, path)
    files.save_tensors(
        dest, {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    )
    if "config" not in state:  # taken from a world: keep where it was made
        return {k: state[k] for k in ("run", "step", "sigma_min", "sigma_max")}
    return {
        "run": str(run.resolve()),
        "step": state["step"],
        "sigma_min": state["config"]["sigma_min"],
        "sigma_max": state["config"]["sigma_max"],
    }


def _denoiser_cfg(model: dict):
    """What a model dict's denoiser weights mean (a student may have trained with another
    loss weighting than its teacher)."""
    return from_dict(ModelConfig, model).denoiser.weights_meaning()


def _starts(ds: Dataset, K: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Episode starts: first frames (N, H, W, 3), and the NOOP actions of their contexts (the
    loader repeats each frame K times, as training pads an episode's start)."""
    entries = ds.entries("train")[:n]
    if not entries:
        raise ValueError(f"{ds.root}: no training episodes to take starting contexts from")
    first = np.stack([ds.load(e).frames[0] for e in entries])
    return torch.from_numpy(first), torch.zeros(len(entries), K, dtype=torch.int64)


def _loses_lives(ds: Dataset) -> bool:
    """Whether the training play lost a life at least once: a game that reports lives but
    never loses one there (Pong reports 0 throughout) gives a world nothing to learn them
    from, so its world does not claim to predict them."""
    return any(
        load_fields(ds.root / e["file"], ("life_lost",))["life_lost"].any()
        for e in ds.entries("train")
    )


def _keymap(env: dict) -> list[list]:
    """The source game's key map as JSON: [[key codes...], action] pairs ([] if it has none).
    `env`: the run's EnvConfig, as JSON."""
    from worldsim.games import EnvConfig, make_env

    try:
        game = make_env(from_dict(EnvConfig, env))
        unwrapped = game.unwrapped
        keys = unwrapped.get_keys_to_action() if hasattr(unwrapped, "get_keys_to_action") else {}
        game.close()
    except Exception:  # a game we cannot make here (e.g. Atari without ale-py) has no key map
        return []
    return [[list(k), int(a)] for k, a in keys.items()]
