"""Reading a world folder's files without trusting them.

`world.json` is read through a typed schema (`WorldMeta`, built by the same `from_dict`
the command line uses: unknown keys, missing keys, wrong types and out-of-range values are
each one error naming the file and the field). The weights' names and shapes are read from
the safetensors headers and compared with the model the config describes, built on the
`meta` device (no memory), before any tensor is allocated; the starting contexts are
checked against the game's frame size and actions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from worldsim import files
from worldsim.config import ConfigError, from_dict
from worldsim.files import FORMAT_VERSION, CheckpointError, load_json
from worldsim.models.denoiser import Denoiser
from worldsim.models.samplers import DEFAULT_STILL, SAMPLER_NAMES, SamplerConfig
from worldsim.models.world_model import ModelConfig, WorldModel

WORLDS_DIR = Path(__file__).parent.parent / "worlds"  # worlds shipped inside the package

MAX_PARAMETERS = 100_000_000
"""Most parameters a world's networks may have (400 MB in fp32): a bound on what a world
file can make worldsim allocate."""


@dataclass(frozen=True)
class StudentMeta:
    """Where a world's one-step student came from, and its noise range."""

    run: str
    step: int
    sigma_min: float
    sigma_max: float

    def __post_init__(self):
        if not (
            math.isfinite(self.sigma_min)
            and math.isfinite(self.sigma_max)
            and 0 < self.sigma_min < self.sigma_max
        ):
            raise ValueError(
                f"student needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )


@dataclass(frozen=True)
class WorldMeta:
    """The contents of world.json."""

    format: int
    kind: Literal["worldsim-world"]
    env_id: str
    action_meanings: tuple[str, ...]
    frame_size: tuple[int, ...]
    reward_values: tuple[float, ...]
    model: ModelConfig
    source: dict
    keys_to_action: tuple[tuple, ...] = ()
    lives: bool = False
    env: dict = field(default_factory=dict)
    student: StudentMeta | None = None
    thresholds: dict = field(default_factory=dict)
    still: int | None = None
    checksums: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.format != FORMAT_VERSION:
            raise ValueError(f"format must be {FORMAT_VERSION}, got {self.format}")
        if not 1 <= len(self.action_meanings) <= 1024:
            raise ValueError(
                f"action_meanings must name 1 to 1024 actions, got {len(self.action_meanings)}"
            )
        h_w = self.frame_size
        if len(h_w) != 2 or not all(8 <= s <= 1024 and s % 8 == 0 for s in h_w):
            raise ValueError(
                f"frame_size must be [H, W], multiples of 8 in [8, 1024], got {list(h_w)}"
            )
        m = self.model.denoiser.unet.downsampling
        if h_w[0] % m or h_w[1] % m:
            raise ValueError(f"frame_size {list(h_w)} must be a multiple of {m} for this U-Net")
        if not 1 <= len(self.reward_values) <= 32 or not all(
            math.isfinite(r) for r in self.reward_values
        ):
            raise ValueError(
                f"reward_values must be 1 to 32 finite numbers, got {list(self.reward_values)[:40]}"
            )
        if self.still is not None and not (isinstance(self.still, int) and 0 <= self.still <= 255):
            raise ValueError(f"still must be empty or a level in [0, 255], got {self.still!r}")
        for name, t in self.thresholds.items():
            if (
                name not in ("end", "life")
                or not isinstance(t, int | float)
                or not math.isfinite(t)
            ):
                raise ValueError(
                    f"thresholds must map end/life to finite numbers, got {name}: {t!r}"
                )
        for pair in self.keys_to_action:
            ok = (
                isinstance(pair, list | tuple)
                and len(pair) == 2
                and isinstance(pair[0], list)
                and all(isinstance(k, int | str) for k in pair[0])
                and isinstance(pair[1], int)
                and 0 <= pair[1] < len(self.action_meanings)
            )
            if not ok:
                raise ValueError(
                    f"keys_to_action entries must be [[keys], action], got {pair!r}"[:200]
                )
        if not isinstance(self.source.get("data", ""), str):
            raise ValueError(f"source.data must be a folder path, got {self.source.get('data')!r}")


def read_meta(folder: Path) -> WorldMeta:
    """world.json of `folder` as a `WorldMeta`, or one CheckpointError naming what is wrong."""
    path = Path(folder) / "world.json"
    data = load_json(path)  # (a JSON object of the right format, or one clear error)
    if data.get("kind") != "worldsim-world":
        raise CheckpointError(f"{path}: not a worldsim world (kind={data.get('kind')!r})")
    try:
        return from_dict(WorldMeta, data)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (TypeError, ValueError, OverflowError) as e:  # values a dataclass check choked on
        raise CheckpointError(f"{path}: {e}") from None


def header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} from a safetensors file's header, reading nothing else."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= 100_000_000:
                raise ValueError(f"a header of {n} bytes")
            head = json.loads(f.read(n))
        return {k: (v["dtype"], tuple(v["shape"])) for k, v in head.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def expected_shapes(module_fn) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a module's weights, built on the meta device (no memory taken);
    refuses one of more than MAX_PARAMETERS parameters."""
    with torch.device("meta"):
        module = module_fn()
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    n = sum(math.prod(s) for s in shapes.values())
    if n > MAX_PARAMETERS:
        raise ValueError(f"{n:,} parameters, more than worldsim loads ({MAX_PARAMETERS:,})")
    return shapes


def check_weights(path: Path, module_fn) -> None:
    """The safetensors file at `path` holds exactly the weights `module_fn()` would have."""
    try:
        want = expected_shapes(module_fn)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path.parent}/world.json: its model config gives {e}") from None
    have = header(path)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise CheckpointError(
            f"{path}: weights do not match the model of world.json "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for k, shape in want.items():
        if have[k][1] != shape:
            raise CheckpointError(
                f"{path}: weight {k} has shape {list(have[k][1])}, "
                f"world.json's model needs {list(shape)}"
            )


def check_starts(
    path: Path, frames: torch.Tensor, actions: torch.Tensor, meta: WorldMeta, context: int
) -> None:
    """Starting contexts: frames (N, H, W, 3) uint8 and actions (N, K) of the game's actions."""
    h, w = meta.frame_size
    if frames.dtype != torch.uint8 or tuple(frames.shape[1:]) != (h, w, 3) or len(frames) < 1:
        raise CheckpointError(
            f"{path}: frames must be (N >= 1, {h}, {w}, 3) uint8, got "
            f"{tuple(frames.shape)} {frames.dtype}"
        )
    A = len(meta.action_meanings)
    if actions.dtype != torch.int64 or tuple(actions.shape) != (len(frames), context):
        raise CheckpointError(
            f"{path}: actions must be ({len(frames)}, {context}) int64, got "
            f"{tuple(actions.shape)} {actions.dtype}"
        )
    if actions.numel() and not 0 <= int(actions.min()) <= int(actions.max()) < A:
        raise CheckpointError(
            f"{path}: actions must be in [0, {A}), got {int(actions.min())}..{int(actions.max())}"
        )


def as_dict(meta: WorldMeta) -> dict:
    """The validated metadata as plain JSON data (what `WorldBundle.meta` holds)."""
    return json.loads(json.dumps(dataclasses.asdict(meta)))


@dataclass
class WorldBundle:
    """A loaded world: its metadata, networks (fp32, eval mode) and starting contexts."""

    path: Path
    meta: dict
    model: WorldModel
    student: Denoiser | None
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

    def sampler(
        self, name: str | None = None, steps: int | None = None, still: int | None = None
    ) -> SamplerConfig:
        """The sampler `name` (euler, heun, onestep, multistep) with `steps` evaluations, set to
        this world's noise levels; by default one-step when the world has a student, else the
        teacher's 3-step Euler. Steps asked of the default student mean its multistep sampler.
        `still`: see `SamplerConfig.still` (None = the world's own level)."""
        default = "onestep" if self.student is not None else "euler"
        chosen = name or default
        if name is None and chosen == "onestep" and steps not in (None, 1):
            chosen = "multistep"
        known = {n: n for n in SAMPLER_NAMES}
        if chosen not in known:
            raise ValueError(f"sampler must be euler, heun, onestep or multistep, got {chosen!r}")
        if chosen == "onestep" and steps not in (None, 1):
            raise ValueError(f"sampler 'onestep' takes one step, got steps={steps} (use multistep)")
        if steps is None:
            steps = 1 if chosen == "onestep" else 3
        return self.fit_sampler(SamplerConfig(known[chosen], steps, still=still))

    @property
    def still(self) -> int:
        """The `SamplerConfig.still` level this world draws with unless told otherwise."""
        still = self.meta.get("still")  # (None in worlds bundled before they chose one)
        return DEFAULT_STILL if still is None else int(still)

    def fit_sampler(self, cfg: SamplerConfig) -> SamplerConfig:
        """`cfg` at the noise levels its network was trained for (a student sampler takes the
        student's sigma_min and sigma_max, and needs a world with a student), with the
        world's own `still` level where `cfg` names none."""
        if cfg.still is None:
            cfg = dataclasses.replace(cfg, still=self.still)
        if not cfg.uses_student:
            return cfg
        if self.student is None:
            raise ValueError(
                f"sampler {cfg.name!r} needs a world with a one-step student; {self.path} has none"
            )
        levels = self.meta["student"]
        return dataclasses.replace(
            cfg, sigma_min=levels["sigma_min"], sigma_max=levels["sigma_max"]
        )

    def denoiser_for(self, cfg: SamplerConfig) -> Denoiser:
        """The network `cfg` samples with: the one-step student or the teacher."""
        if cfg.uses_student:
            if self.student is None:
                raise ValueError(
                    f"sampler {cfg.name!r} needs a one-step student; {self.path} has none"
                )
            return self.student
        return self.model.denoiser


def resolve(world: str | Path) -> Path:
    """A world folder from a path or the name of a shipped world."""
    path = Path(world)
    if (path / "world.json").is_file():
        return path
    shipped = sorted(p.name for p in WORLDS_DIR.glob("*") if (p / "world.json").is_file())
    if str(world) in shipped:
        return WORLDS_DIR / str(world)
    if path.exists():
        raise files.CheckpointError(f"{path}: not a world folder (no world.json)")
    raise files.CheckpointError(
        f"no world {str(world)!r}: not a folder, and shipped worlds are: {shipped or 'none yet'}"
    )


def knows_lives(world: str | Path) -> bool:
    """Whether a world (folder or shipped name) predicts lost lives, read from its world.json."""
    return _knows_lives(files.load_json(resolve(world) / "world.json"))


def _knows_lives(meta: dict) -> bool:
    return bool(meta.get("lives")) and from_dict(ModelConfig, meta["model"]).reward.life_head


def load_world(world: str | Path, device: str | torch.device = "cpu") -> WorldBundle:
    """Load a world folder (or shipped world name) for inference. Its world.json and the
    weights' shapes are checked before anything is allocated (`worldsim.sim.world_file`)."""
    path = resolve(world)
    meta = read_meta(path)
    A, rewards, cfg = len(meta.action_meanings), list(meta.reward_values), meta.model
    check_weights(path / "teacher.safetensors", lambda: WorldModel(cfg, A, rewards))
    has_student = (path / "student.safetensors").is_file()
    if has_student != (meta.student is not None):
        raise files.CheckpointError(
            f"{path}: student.safetensors and world.json's 'student' entry must come together"
        )
    if has_student:
        check_weights(
            path / "student.safetensors",
            lambda: Denoiser(cfg.denoiser, A, parameterization="consistency"),
        )
    model = WorldModel(cfg, A, rewards)
    files.load_weights(
        model, files.load_tensors(path / "teacher.safetensors"), path / "teacher.safetensors"
    )
    starts = files.load_tensors(path / "starts.safetensors")
    if set(starts) != {"frames", "actions"}:
        raise files.CheckpointError(
            f"{path}/starts.safetensors: expected 'frames' and 'actions', got {sorted(starts)}"
        )
    K = cfg.denoiser.context
    check_starts(path / "starts.safetensors", starts["frames"], starts["actions"], meta, K)
    starts["frames"] = starts["frames"][:, None].expand(-1, K, -1, -1, -1).contiguous()
    student = None
    if has_student:
        student = Denoiser(cfg.denoiser, A, parameterization="consistency")
        files.load_weights(
            student, files.load_tensors(path / "student.safetensors"), path / "student.safetensors"
        )
        student = student.to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    meta_dict = as_dict(meta)
    keys = {tuple(k): a for k, a in meta_dict.get("keys_to_action", [])}
    # channels_last: the layout oneDNN's and cuDNN's convolutions run fastest in
    model = model.to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    return WorldBundle(path, meta_dict, model, student, starts["frames"], starts["actions"], keys)


@dataclass(frozen=True)
class Source:
    """Trained weights on disk: a run folder's latest checkpoint (its EMA weights) or a world
    folder (its teacher), with the JSON beside them. Both JSONs hold the game (`env_id`,
    `action_meanings`, `reward_values`) and the `model` config under the same keys."""

    folder: Path
    """The run or world folder."""
    kind: Literal["run", "world"]
    meta: dict
    """state.json of the checkpoint, or world.json."""
    weights_path: Path
    """ema.safetensors of the checkpoint, or the world's teacher.safetensors."""

    @property
    def model_cfg(self) -> ModelConfig:
        return from_dict(ModelConfig, self.meta["model"])

    @property
    def step(self) -> int:
        """Training steps behind the weights."""
        return self.meta["step"] if self.kind == "run" else self.meta["source"]["step"]

    @property
    def data(self) -> str:
        """The dataset the weights were trained on."""
        return self.meta["config"]["data"] if self.kind == "run" else self.meta["source"]["data"]

    @property
    def student_path(self) -> Path:
        """Where a one-step student's weights are: a distillation run's EMA, a world's student."""
        if self.kind == "run":
            return self.weights_path
        if "student" not in self.meta:
            raise CheckpointError(f"{self.folder}: this world has no student to take")
        return self.folder / "student.safetensors"

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights, floating-point ones in fp32 (a world keeps them in fp16)."""
        loaded = files.load_tensors(self.weights_path)
        return {k: v.float() if v.is_floating_point() else v for k, v in loaded.items()}


def load_source(path: str | Path) -> Source:
    """A run folder (from `worldsim train` or `worldsim distill`) or a world folder (or a
    shipped world's name): the one place that tells them apart."""
    path = Path(path)
    if (path / "latest").is_file():
        latest = latest_checkpoint(path)
        return Source(path, "run", load_json(latest / "state.json"), latest / "ema.safetensors")
    if not (path / "world.json").is_file() and path.exists():
        raise CheckpointError(
            f"{path}: neither a run folder (with a 'latest' file) nor a world folder (with "
            "world.json)"
        )
    world = resolve(path)
    return Source(world, "world", load_json(world / "world.json"), world / "teacher.safetensors")


# --- run folders (from `worldsim train` / `worldsim distill`) ---


def latest_checkpoint(run: Path) -> Path:
    run = Path(run)
    pointer = run / "latest"
    if not pointer.is_file():
        raise CheckpointError(f"{run}: no checkpoint (expected a run folder with a 'latest' file)")
    name = pointer.read_text(errors="replace").strip()
    if not re.fullmatch(r"step_\d{7}", name):
        raise CheckpointError(
            f"{pointer}: expected the name of one of {run}/checkpoints/step_NNNNNNN, "
            f"got {name[:80]!r}"
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
