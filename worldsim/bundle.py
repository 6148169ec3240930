"""World bundles: the self-contained folder that play, RL, record and eval load.

A world folder holds `world.json` (format, game, action meanings, frame size, reward
values, model config, key map, provenance), `teacher.safetensors` (fp16 EMA weights of
the world model), optionally `student.safetensors` (the one-step head), and
`starts.safetensors`: real starting contexts, so the world resets without the dataset.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from worldsim import checkpoint as ckpt
from worldsim import world_file
from worldsim.calibration import calibrate
from worldsim.config import from_dict
from worldsim.data.store import Dataset
from worldsim.models.world_model import ModelConfig, WorldModel

WORLDS_DIR = Path(__file__).parent / "worlds"  # worlds shipped inside the package


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

    def __post_init__(self):
        if self.starts < 1:
            raise ValueError(f"starts must be >= 1, got {self.starts}")


@dataclass
class WorldBundle:
    """A loaded world: its metadata, networks (fp32, eval mode) and starting contexts."""

    path: Path
    meta: dict
    model: WorldModel
    student: torch.nn.Module | None
    start_frames: torch.Tensor  # (N, K, H, W, 3) uint8
    start_actions: torch.Tensor  # (N, K) int64
    keys_to_action: dict[tuple[int, ...], int] = field(default_factory=dict)

    @property
    def thresholds(self) -> dict[str, float]:
        """Logit thresholds of the end and lost-life predictions (chosen at bundle time on
        the training data; 0, probability one half, for worlds made before that)."""
        return {"end": 0.0, "life": 0.0, **self.meta.get("thresholds", {})}

    @property
    def action_meanings(self) -> list[str]:
        return list(self.meta["action_meanings"])

    @property
    def frame_size(self) -> tuple[int, int]:
        return tuple(self.meta["frame_size"])

    @property
    def context(self) -> int:
        return self.model.cfg.denoiser.context

    @property
    def lives(self) -> bool:
        """Whether the reward/end model predicts lost lives (learned from data with lives)."""
        return _knows_lives(self.meta)


def bundle(cfg: BundleConfig) -> Path:
    """Write the world folder `cfg.out` from the run `cfg.run`."""
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=true to replace it")
    if (Path(cfg.run) / "world.json").is_file():
        return _rebundle(cfg, out)
    path = ckpt.latest_checkpoint(Path(cfg.run))
    state = ckpt.load_json(path / "state.json")
    weights = ckpt.load_tensors(path / "ema.safetensors")
    model_cfg = from_dict(ModelConfig, state["model"])
    model = WorldModel(model_cfg, len(state["action_meanings"]), state["reward_values"])
    ckpt.load_weights(model, weights, path)  # refuse a checkpoint that does not fit its config
    ds = Dataset.open(state["config"]["data"])
    frames, actions = _starts(ds, model_cfg.denoiser.context, cfg.starts)
    thresholds = calibrate(model, ds)
    meta = {"kind": "worldsim-world", "env_id": state["env_id"], "action_meanings": state["action_meanings"],
            "frame_size": state["frame_size"], "reward_values": state["reward_values"],
            "model": state["model"], "keys_to_action": _keymap(state["env_id"]), "thresholds": thresholds,
            "lives": bool(state.get("lives")) and model_cfg.reward.life_head,
            "env": {**state["config"].get("env", {}), "id": state["env_id"], "frame_size": state["frame_size"][0]},
            "source": {"run": str(Path(cfg.run).resolve()), "step": state["step"], "data": state["config"]["data"],
                       **({"init": state["config"]["init"]} if state["config"].get("init") else {})}}  # fmt: skip

    def files(tmp: Path) -> None:
        teacher = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
        ckpt.save_tensors(tmp / "teacher.safetensors", teacher)
        ckpt.save_tensors(tmp / "starts.safetensors", {"frames": frames, "actions": actions})

    return _write_world(out, meta, cfg.student, files)


def _rebundle(cfg: BundleConfig, out: Path) -> Path:
    """A world from another world folder: same teacher and starts, the student of `cfg.student`."""
    src = Path(cfg.run)
    meta = ckpt.load_json(src / "world.json")
    meta.pop("student", None)

    def files(tmp: Path) -> None:
        for name in ("teacher.safetensors", "starts.safetensors"):
            shutil.copy2(src / name, tmp / name)

    return _write_world(out, meta, cfg.student, files)


def _write_world(out: Path, meta: dict, student: str, write_files) -> Path:
    """Write a world folder under a temporary name, then put it in place of `out`."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_files(tmp)
        if student:
            meta["student"] = _write_student(Path(student), meta, tmp / "student.safetensors")
        meta["checksums"] = ckpt.checksums(tmp)
        ckpt.write_json(tmp / "world.json", meta)
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

    if (run / "world.json").is_file():  # the student of another world
        other = ckpt.load_json(run / "world.json")
        if "student" not in other:
            raise ckpt.CheckpointError(f"{run}: this world has no student to take")
        path, state = run / "student.safetensors", {**other["student"], "model": other["model"]}
        weights = ckpt.load_tensors(path)
    else:
        path = ckpt.latest_checkpoint(run)
        state = ckpt.load_json(path / "state.json")
        weights = ckpt.load_tensors(path / "ema.safetensors")
    if "model" not in state or _denoiser_cfg(state["model"]) != _denoiser_cfg(meta["model"]):
        raise ckpt.CheckpointError(f"{path}: the student's model config differs from the teacher's")
    student = Denoiser(
        from_dict(ModelConfig, state["model"]).denoiser, len(meta["action_meanings"]), "consistency"
    )
    ckpt.load_weights(student, weights, path)
    ckpt.save_tensors(
        dest, {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    )
    if "config" not in state:  # taken from a world: keep where it was made
        return {k: state[k] for k in ("run", "step", "sigma_min", "sigma_max")}
    return {"run": str(run.resolve()), "step": state["step"], "sigma_min": state["config"]["sigma_min"],
            "sigma_max": state["config"]["sigma_max"]}  # fmt: skip


def _denoiser_cfg(model: dict):
    return from_dict(ModelConfig, model).denoiser


def _starts(ds: Dataset, K: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Episode starts: first frames (N, H, W, 3), and the NOOP actions of their contexts (the
    loader repeats each frame K times, as training pads an episode's start)."""
    entries = ds.entries("train")[:n]
    if not entries:
        raise ValueError(f"{ds.root}: no training episodes to take starting contexts from")
    first = np.stack([ds.load(e).frames[0] for e in entries])
    return torch.from_numpy(first), torch.zeros(len(entries), K, dtype=torch.int64)


def _keymap(env_id: str) -> list[list]:
    """The source game's key map as JSON: [[key codes...], action] pairs ([] if it has none)."""
    import gymnasium as gym

    try:
        env = gym.make(env_id).unwrapped
        keys = env.get_keys_to_action() if hasattr(env, "get_keys_to_action") else {}
    except Exception:  # a game we cannot make here (e.g. Atari without ale-py) has no key map
        return []
    return [[list(k), int(a)] for k, a in keys.items()]


def resolve(world: str | Path) -> Path:
    """A world folder from a path or the name of a shipped world."""
    path = Path(world)
    if (path / "world.json").is_file():
        return path
    shipped = sorted(p.name for p in WORLDS_DIR.glob("*") if (p / "world.json").is_file())
    if str(world) in shipped:
        return WORLDS_DIR / str(world)
    if path.exists():
        raise ckpt.CheckpointError(f"{path}: not a world folder (no world.json)")
    raise ckpt.CheckpointError(
        f"no world {str(world)!r}: not a folder, and shipped worlds are: {shipped or 'none yet'}"
    )


def knows_lives(world: str | Path) -> bool:
    """Whether a world (folder or shipped name) predicts lost lives, read from its world.json."""
    return _knows_lives(ckpt.load_json(resolve(world) / "world.json"))


def _knows_lives(meta: dict) -> bool:
    return bool(meta.get("lives")) and from_dict(ModelConfig, meta["model"]).reward.life_head


def load_world(world: str | Path, device: str | torch.device = "cpu") -> WorldBundle:
    """Load a world folder (or shipped world name) for inference. Its world.json and the
    weights' shapes are checked before anything is allocated (`worldsim.world_file`)."""
    from worldsim.models.denoiser import Denoiser

    path = resolve(world)
    meta = world_file.read_meta(path)
    A, rewards, cfg = len(meta.action_meanings), list(meta.reward_values), meta.model
    world_file.check_weights(path / "teacher.safetensors", lambda: WorldModel(cfg, A, rewards))
    has_student = (path / "student.safetensors").is_file()
    if has_student != (meta.student is not None):
        raise ckpt.CheckpointError(
            f"{path}: student.safetensors and world.json's 'student' entry must come together"
        )
    if has_student:
        world_file.check_weights(path / "student.safetensors",
                                 lambda: Denoiser(cfg.denoiser, A, parameterization="consistency"))  # fmt: skip
    model = WorldModel(cfg, A, rewards)
    ckpt.load_weights(
        model, ckpt.load_tensors(path / "teacher.safetensors"), path / "teacher.safetensors"
    )
    starts = ckpt.load_tensors(path / "starts.safetensors")
    if set(starts) != {"frames", "actions"}:
        raise ckpt.CheckpointError(
            f"{path}/starts.safetensors: expected 'frames' and 'actions', got {sorted(starts)}"
        )
    K = cfg.denoiser.context
    world_file.check_starts(
        path / "starts.safetensors", starts["frames"], starts["actions"], meta, K
    )
    starts["frames"] = starts["frames"][:, None].expand(-1, K, -1, -1, -1).contiguous()
    student = None
    if has_student:
        student = Denoiser(cfg.denoiser, A, parameterization="consistency")
        ckpt.load_weights(
            student, ckpt.load_tensors(path / "student.safetensors"), path / "student.safetensors"
        )
        student = student.to(device, memory_format=torch.channels_last).eval()
    meta_dict = world_file.as_dict(meta)
    keys = {tuple(k): a for k, a in meta_dict.get("keys_to_action", [])}
    # channels_last: the layout oneDNN's and cuDNN's convolutions run fastest in
    model = model.to(device, memory_format=torch.channels_last).eval()
    return WorldBundle(path, meta_dict, model, student, starts["frames"], starts["actions"], keys)
