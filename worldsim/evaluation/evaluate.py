"""`worldsim eval`: how closely a world follows the real game on held-out episodes.

Replays held-out real episodes' actions in the world from real starting frames and scores
the dream against the real frames at every horizon: PSNR and SSIM over the whole frame and
over the moving pixels, sharpness against the real frames, teacher-forced one-step PSNR,
reward/end accuracy, action following and speed, for each sampler and copy-the-last-frame.
Writes report.json, psnr.png and rollouts.mp4 (real | teacher | student) to `out`.
"""

from __future__ import annotations

import functools
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from worldsim.data.segments import Segment, SegmentSampler
from worldsim.data.store import Dataset
from worldsim.evaluation.inverse_dynamics import action_recovery, train_idm
from worldsim.evaluation.metrics import moving_mask, psnr, sharpness, ssim
from worldsim.evaluation.rollout import copy_last, rollout
from worldsim.files import atomic_write_json
from worldsim.models.samplers import DEFAULT_STILL, SamplerConfig
from worldsim.models.world_model import to_uint8, to_unit
from worldsim.runtime import check_precision, resolve_device
from worldsim.sim.world import World
from worldsim.sim.world_file import WorldBundle, load_world
from worldsim.training.calibration import end_scores

DEFAULT_SAMPLERS = (
    SamplerConfig("onestep", 1),
    SamplerConfig("multistep", 2),
    SamplerConfig("euler", 1),
    SamplerConfig("euler", 3),
    SamplerConfig("euler", 10),
)


@dataclass(frozen=True)
class EvalConfig:
    """Score a world against held-out real play."""

    world: str = "bricks"
    """World folder or shipped world name."""
    data: str = ""
    """Dataset with held-out episodes; empty = the one the world was trained on."""
    out: str = ""
    """Report folder; empty = <world>/eval (for a shipped world: eval/<name> in the current
    folder, not inside the installed package)."""
    samplers: tuple[SamplerConfig, ...] = field(default_factory=lambda: DEFAULT_SAMPLERS)
    """Samplers to score (student ones are skipped when the world has no student); e.g.
    'samplers=[{name:onestep,steps:1},{name:euler,steps:3}]'. Each draws with the world's
    own `still` level unless it names one ({name:onestep,steps:1,still:0}: the raw draw)."""
    starts: int = 32
    """Held-out starting points."""
    horizon: int = 64
    """Autoregressive steps per rollout."""
    seed: int = 0
    """Chooses the starting points and the sampling noise."""
    device: str = "cpu"
    """cpu, cuda, or auto (cuda when available)."""
    overwrite: bool = False
    """Replace an existing report."""
    precision: str = "fp32"
    """fp32, or bf16 to score the world as it runs under bfloat16 autocast."""
    policy: Literal["", "auto", "random", "sticky", "scripted", "miss", "mix"] = ""
    """Score on fresh play of the real game by this behaviour policy, recorded now with seeds
    the world never trained on (from `seed` + 1,000,000), instead of a dataset's held-out
    split: e.g. policy=random for play unlike the world's training data. Needs the game."""
    play_steps: int = 4000
    """policy=: steps of fresh play to record (into <out>/play-<policy>-seed<seed>)."""
    rules_steps: int = 1000
    """Steps of free play (sticky-random keys, 8 dreams; samplers of at most 3 evaluations)
    scored for realism (distance to the nearest held-out real frame, any game) and, for
    games with a rule checker (Bricks, Maze), against the game's rules, beside the real game's
    own figures; 0 = skip."""
    idm_steps: int = 600
    """Training steps of the inverse-dynamics model that checks, for any game, whether the
    world's frames show the action it was given (`worldsim.evaluation.inverse_dynamics`);
    0 = skip."""

    def __post_init__(self):
        check_precision(self.precision)
        if self.rules_steps < 0:
            raise ValueError(f"rules_steps must be >= 0 (0 = skip), got {self.rules_steps}")
        if self.play_steps < 1:
            raise ValueError(f"play_steps must be >= 1, got {self.play_steps}")
        if self.idm_steps < 0:
            raise ValueError(f"idm_steps must be >= 0 (0 = skip), got {self.idm_steps}")
        if self.starts < 1 or self.horizon < 1:
            raise ValueError(f"starts and horizon must be >= 1, got {self.starts}, {self.horizon}")


def label(s: SamplerConfig, world_still: int = DEFAULT_STILL) -> str:
    """How the report names a sampler (its still level only where it is not the world's)."""
    who = "student" if s.name in ("onestep", "multistep") else "teacher"
    default = SamplerConfig(s.name, s.steps, sigma_min=s.sigma_min)
    extra = f" (sigma_max {s.sigma_max:g})" if s.sigma_max != default.sigma_max else ""
    extra += f" (still {s.still})" if s.still not in (None, world_still) else ""
    return f"{who} {s.name} {s.evaluations}{extra}"


def scores(gen: torch.Tensor, obs: torch.Tensor, K: int) -> dict[str, list[float]]:
    """Per-horizon means: PSNR/SSIM whole and moving, sharpness generated / real."""
    last = obs[:, K - 1]
    out: dict[str, list[float]] = {
        k: [] for k in ("psnr", "psnr_moving", "ssim", "sharpness_ratio")
    }
    for t in range(gen.shape[1]):
        real, g = obs[:, K + t], gen[:, t]
        out["psnr"].append(psnr(g, real).mean().item())
        out["psnr_moving"].append(psnr(g, real, moving_mask(last, real)).nanmean().item())
        out["ssim"].append(ssim(g, real).mean().item())
        out["sharpness_ratio"].append(
            (sharpness(g).mean() / sharpness(real).mean().clamp_min(1e-6)).item()
        )
    return out


def teacher_forced(world: World, obs, act, K, gen) -> dict[str, float]:
    """One-step predictions from real context at every position of the segments."""
    H = obs.shape[1] - K
    ctx = torch.stack([obs[:, t : t + K] for t in range(H)], 1).flatten(0, 1)
    a = torch.stack([act[:, t : t + K] for t in range(H)], 1).flatten(0, 1)
    real = obs[:, K:].flatten(0, 1)
    preds = torch.cat(
        [
            world.draw(to_unit(ctx[i : i + 256]), a[i : i + 256], gen)
            for i in range(0, len(ctx), 256)
        ]
    )
    g, last = to_uint8(preds), ctx[:, -1]
    return {
        "psnr": psnr(g, real).mean().item(),
        "psnr_moving": psnr(g, real, moving_mask(last, real)).nanmean().item(),
    }


@torch.no_grad()
def reward_accuracy(
    bundle: WorldBundle, data: SegmentSampler, n: int, seed: int
) -> dict[str, float | None]:
    """Reward classes on `n` real transitions drawn at random (next frame real), and the
    non-zero reward, end and lost-life predictions' precision and recall at the world's
    thresholds over all of `data`."""
    b = _to(data.sample(n, np.random.default_rng(seed)), bundle.model.reward_values.device)
    K = bundle.context
    frames = to_unit(b.obs)
    logits, _, _ = bundle.model.reward(frames[:, :K], b.act[:, K - 1], frames[:, K])
    pred = bundle.model.reward_values[logits.argmax(1)]
    out = {"reward_accuracy": (pred == b.rew[:, 0]).float().mean().item()}
    ends = end_scores(bundle.model, data, bundle.thresholds, seed=seed)
    if not bundle.lives:
        ends = {k: v for k, v in ends.items() if not k.startswith("life")}
    return {**out, **ends}


def speed(
    bundle: WorldBundle,
    sampler: SamplerConfig,
    batch: int,
    steps: int,
    precision: str = "fp32",
    min_seconds: float = 1.0,
) -> float:
    """Frames per second of World.step at a batch size: at least `steps` steps and
    `min_seconds` of timing, after a warm-up step."""
    world = World(bundle, sampler, precision)
    idx = torch.arange(batch) % len(bundle.start_frames)
    world.reset(bundle.start_frames[idx], bundle.start_actions[idx])
    a = torch.zeros(batch, dtype=torch.int64)
    world.step(a)  # warm-up
    n, t = 0, time.perf_counter()
    while n < steps or time.perf_counter() - t < min_seconds:
        world.step(a)
        n += 1
    return batch * n / (time.perf_counter() - t)


@torch.no_grad()
def action_following(
    bundle: WorldBundle,
    sampler: SamplerConfig,
    n: int,
    seed: int,
    steps: int = 8,
    precision: str = "fp32",
) -> dict | None:
    """Branch real play into two action sequences that differ at every step, in the real game
    and in the world from the same context and noise: the pixels that differ between the
    branches should be the same ones. Needs a built-in game (its state can be copied)."""
    import copy

    import gymnasium as gym

    try:
        env = gym.make(bundle.meta["env_id"]).unwrapped
    except Exception:  # a game not installed here: skip the measure
        return None
    if env.observation_space.shape != (*bundle.frame_size, 3) or not hasattr(
        env, "autopilot_action"
    ):
        return None
    K, A, rng = bundle.context, len(bundle.action_meanings), np.random.default_rng(seed)
    world, ious, recalls = World(bundle, sampler, precision), [], []
    for i in range(n):
        frames, acts = [env.reset(seed=seed + i)[0]], [0]
        for _ in range(int(rng.integers(K, 60))):
            acts.append(env.autopilot_action(rng))
            frames.append(env.step(acts[-1])[0])
        seq_a = rng.integers(0, A, steps)
        seq_b = (seq_a + rng.integers(1, A, steps)) % A
        real = [np.stack(_play(copy.deepcopy(env), seq)) for seq in (seq_a, seq_b)]
        ctx = torch.from_numpy(np.stack(frames[-K:]))[None].repeat(2, 1, 1, 1, 1)
        world.reset(ctx, torch.tensor(acts[-K:])[None].repeat(2, 1))
        gens = [torch.Generator(world.device).manual_seed(seed + i) for _ in range(2)]
        dream: list[list[np.ndarray]] = [[], []]
        for t in range(steps):
            out, *_ = world.step(torch.tensor([seq_a[t], seq_b[t]]), gens)
            for i in range(2):
                dream[i].append(out[i].cpu().numpy())
        for t in range(steps):
            m_real = np.abs(real[0][t].astype(int) - real[1][t].astype(int)).max(-1) > 0
            m_dream = np.abs(dream[0][t].astype(int) - dream[1][t].astype(int)).max(-1) > 24
            if m_real.any():
                ious.append((m_real & m_dream).sum() / (m_real | m_dream).sum())
                recalls.append((m_real & m_dream).sum() / m_real.sum())
    return {
        "iou": float(np.mean(ious)) if ious else float("nan"),
        "recall": float(np.mean(recalls)) if recalls else float("nan"),
        "branches": n,
    }


def _play(env, actions) -> list[np.ndarray]:
    return [env.step(int(a))[0] for a in actions]


def evaluate(cfg: EvalConfig) -> dict:
    """Score the world and write report.json, psnr.png and rollouts.mp4."""
    device = resolve_device(cfg.device)
    bundle = load_world(cfg.world, device)
    out = Path(cfg.out) if cfg.out else default_out(bundle.path)
    if (out / "report.json").exists() and not cfg.overwrite:
        raise FileExistsError(f"{out}/report.json exists; pass overwrite=true to replace it")
    ds = _eval_data(cfg, bundle, out)
    if ds.frame_size != bundle.frame_size or ds.action_meanings != bundle.action_meanings:
        raise ValueError(
            f"{ds.root} holds {ds.frame_size} frames with actions {ds.action_meanings}; "
            f"the world has {bundle.frame_size} and {bundle.action_meanings}"
        )
    K, H = bundle.context, cfg.horizon
    test = SegmentSampler(ds, "test", K, horizon=H)
    b = _to(test.sample(cfg.starts, np.random.default_rng(cfg.seed)), device)
    report: dict[str, Any] = {
        "world": str(bundle.path),
        "data": str(ds.root),
        "policy": cfg.policy or "held-out split",
        "starts": cfg.starts,
        "horizon": H,
        "samplers": {
            "copy last frame": {"autoregressive": scores(copy_last(b.obs, K, H), b.obs, K)}
        },
    }
    videos, P = {}, cfg.precision
    report["precision"] = P
    samplers = [_for_world(s, bundle) for s in cfg.samplers]
    A, idm = len(bundle.action_meanings), None
    if cfg.idm_steps:
        print(f"eval: training the inverse-dynamics check ({cfg.idm_steps} steps)")
        idm = train_idm(_idm_data(ds, bundle, K), A, cfg.idm_steps, seed=cfg.seed, device=device)
    for s in tqdm([s for s in samplers if s is not None], desc="eval", unit="sampler"):
        world, gen = World(bundle, s, P), torch.Generator(device).manual_seed(cfg.seed)
        g = rollout(functools.partial(world.draw, generator=gen), b.obs, b.act, K, H)
        videos[label(s, bundle.still)] = g
        report["samplers"][label(s, bundle.still)] = {
            "sampler": asdict(s),
            "autoregressive": scores(g, b.obs, K),
            "teacher_forced": teacher_forced(world, b.obs, b.act, K, gen),
            "fps_batch1": speed(bundle, s, 1, 10, P),
            "fps_batch32": speed(bundle, s, 32, 2, P),
            "action_following": action_following(bundle, s, n=8, seed=cfg.seed, precision=P),
            "inverse_dynamics": None
            if idm is None
            else action_recovery(
                idm,
                lambda c, a, w=world, gen=gen: w.draw(c, a, gen),
                SegmentSampler(ds, "test", K),
                A,
                seed=cfg.seed,
                device=device,
            ),
        }
    _long_play(report, cfg, bundle, [s for s in samplers if s is not None], ds)
    report["reward_end"] = reward_accuracy(bundle, SegmentSampler(ds, "test", K), 2048, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    _plot(report, out / "psnr.png")
    _video(b.obs[:, K:], videos, out / "rollouts.mp4")
    # last, and atomically: a report means the folder is complete (the pipeline relies on it)
    atomic_write_json(out / "report.json", report)
    return report


def _long_play(report: dict, cfg: EvalConfig, bundle: WorldBundle, samplers, ds: Dataset) -> None:
    """Free play for `rules_steps` steps (8 dreams, sticky-random keys): for any game, how
    far its frames drift from the nearest real frame of held-out play (`realism`, with real
    play's own distance beside it); for games with a checker, the rules kept (`rules`)."""
    from worldsim.evaluation import rules

    if not cfg.rules_steps:
        return
    actions = rules.sticky_actions(8, cfg.rules_steps, len(bundle.action_meanings), cfg.seed)
    check = rules.CHECKERS.get(bundle.meta["env_id"]) if bundle.frame_size == (64, 64) else None
    episodes = [ds.load(e).frames for e in ds.entries("test")]
    bank = np.concatenate(episodes[::2])
    bank = bank[np.random.default_rng(cfg.seed).permutation(len(bank))[:4000]]
    report["realism"] = {"horizons": list(REALISM_BUCKETS)}
    if len(episodes) > 1:  # real play the bank does not hold: the distance the game itself keeps
        report["realism"]["real game"] = _buckets(
            [rules.nearest_real_distance(f[1:], bank) for f in episodes[1::2]]
        )
    if check is not None:
        real = _real_play(bundle, actions, cfg.seed)
        report["rules"] = {
            "real game": sum_rule_scores(
                [check(f[None], actions[i : i + 1, : len(f) - 1]) for i, f in enumerate(real)]
            )
            if real
            else {"error": "the game cannot be made here"}
        }
    cheap = [s for s in samplers if s.evaluations <= 3]  # (10-step Euler would take minutes)
    for s in tqdm(cheap, desc="long play", unit="sampler"):
        frames = rules.dream_play(World(bundle, s, cfg.precision), actions, cfg.seed)
        report["realism"][label(s, bundle.still)] = _buckets(
            list(rules.nearest_real_distance(frames[:, 1:], bank))
        )
        if check is not None:
            report["rules"][label(s, bundle.still)] = check(frames, actions)


REALISM_BUCKETS = ((1, 10), (11, 100), (101, 1000))


def _buckets(curves: list[np.ndarray]) -> list[float | None]:
    """Mean distance over steps 1-10, 11-100 and 101-1000 of some rollouts (None: none)."""
    out = []
    for lo, hi in REALISM_BUCKETS:
        parts = [c[lo - 1 : hi] for c in curves if len(c) >= lo]
        out.append(float(np.concatenate(parts).mean()) if parts else None)
    return out


def _real_play(bundle: WorldBundle, actions: np.ndarray, seed: int) -> list[np.ndarray]:
    from worldsim.config import from_dict
    from worldsim.evaluation import rules
    from worldsim.games import EnvConfig, make_env

    try:
        env = make_env(from_dict(EnvConfig, bundle.meta["env"]))
    except Exception:  # the game is not installed here: the worlds are still checked
        return []
    return rules.real_play(env, actions, 1_000_000 + seed)


def sum_rule_scores(parts: list[dict]) -> dict:
    """Rule scores of several rollouts, pooled."""
    total = sum(p["transitions"] for p in parts)
    kept = sum(p["kept"] * p["transitions"] for p in parts)
    broken: dict[str, int] = {}
    for p in parts:
        for k, v in p["broken"].items():
            broken[k] = broken.get(k, 0) + v
    return {"kept": kept / max(total, 1), "transitions": total, "broken": broken}


def _eval_data(cfg: EvalConfig, bundle: WorldBundle, out: Path) -> Dataset:
    """The dataset to score on: fresh play by `cfg.policy` (all of it held out), or the
    held-out split of `cfg.data` or of the world's own training data."""
    if not cfg.policy:
        from worldsim.data.store import DataError

        try:
            return Dataset.open(cfg.data or bundle.meta["source"]["data"])
        except DataError as e:
            if cfg.data:
                raise
            raise DataError(
                f"{e}; that is the world's training data: give data=<dataset> to score "
                "held-out play, or policy=random to score fresh play"
            ) from None
    from worldsim.config import from_dict
    from worldsim.data.collect import CollectConfig, collect
    from worldsim.games import EnvConfig
    from worldsim.policies import PolicyConfig

    if not bundle.meta.get("env"):
        raise ValueError(f"{bundle.path}/world.json names no game to play (no 'env' section)")
    folder = out / f"play-{cfg.policy}-seed{cfg.seed}"
    shutil.rmtree(folder, ignore_errors=True)  # (eval's own output, replaced with the report)
    print(f"eval: recording {cfg.play_steps} steps of fresh {cfg.policy} play in {folder}")
    return collect(
        CollectConfig(
            env=from_dict(EnvConfig, bundle.meta["env"]),
            policy=PolicyConfig(name=cfg.policy),
            out=str(folder),
            steps=cfg.play_steps,
            workers=1,
            seed=1_000_000 + cfg.seed,
            test_fraction=1.0,
        )
    )


def _idm_data(ds: Dataset, bundle: WorldBundle, K: int) -> SegmentSampler:
    """Real play to fit the inverse-dynamics check on: the world's training data where it
    is at hand, else the evaluation play itself."""
    from worldsim.data.store import DataError

    try:
        return SegmentSampler(Dataset.open(bundle.meta["source"]["data"]), "train", K)
    except DataError:
        return SegmentSampler(ds, "test" if not ds.entries("train") else "train", K)


def default_out(world: Path) -> Path:
    """<world>/eval, or eval/<name> here for a shipped world (its folder is the package's)."""
    from worldsim.sim.world_file import WORLDS_DIR

    if world.resolve().parent == WORLDS_DIR.resolve():
        return Path("eval") / world.name
    return world / "eval"


def _for_world(s: SamplerConfig, bundle: WorldBundle) -> SamplerConfig | None:
    """`s` at the world's noise levels; None for a student sampler of a world without one."""
    return None if s.uses_student and bundle.student is None else bundle.fit_sampler(s)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    realism = report.get("realism", {})
    fig, axes = plt.subplots(1, 3 if realism else 2, figsize=(16 if realism else 11, 4))
    for name, r in report["samplers"].items():
        ar = r["autoregressive"]
        h = np.arange(1, len(ar["psnr"]) + 1)
        style = "k--" if name == "copy last frame" else "-"
        axes[0].plot(h, ar["psnr"], style, label=name)
        axes[1].plot(h, ar["psnr_moving"], style, label=name)
    if realism:  # free play: distance to the nearest held-out real frame, per span of steps
        spans = [f"{lo}-{hi}" for lo, hi in realism["horizons"]]
        for name, r in realism.items():
            if name != "horizons":
                axes[2].plot(
                    spans,
                    [np.nan if v is None else v for v in r],
                    "k--" if name == "real game" else "o-",
                    label=name,
                )
        axes[2].set(
            xlabel="steps of free play",
            ylabel="RMS levels (16x16)",
            title="distance to nearest real frame",
        )
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=8)
    for ax, title in zip(axes[:2], ("whole frame", "moving pixels"), strict=True):
        ax.set(
            xscale="log", xlabel="horizon (steps, autoregressive)", ylabel="PSNR (dB)", title=title
        )
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _video(real: torch.Tensor, videos: dict[str, torch.Tensor], path: Path, rows: int = 4) -> None:
    """real | teacher | student, one row per start (teacher: Euler 3 if scored)."""
    from worldsim.data.video import write_mp4

    teachers = [k for k in videos if k.startswith("teacher")]
    teacher = (
        videos["teacher euler 3"]
        if "teacher euler 3" in videos
        else (videos[teachers[0]] if teachers else None)
    )
    student = videos.get("student onestep 1")
    panels = [p for p in (real, teacher, student) if p is not None]
    n = min(rows, len(real))
    grid = torch.cat(
        [torch.cat([p[i] for p in panels], dim=-1) for i in range(n)], dim=-2
    )  # (T, 3, n*H, P*W)
    write_mp4(path, grid.permute(0, 2, 3, 1).cpu().numpy(), fps=10, scale=3, overwrite=True)


def _to(batch: Segment, device) -> Segment:
    return Segment(*(x.to(device) for x in batch))


def summary(report: dict, horizons=(1, 4, 16, 64)) -> str:
    """A Markdown table of the report: PSNR whole/moving at some horizons, sharpness, speed."""
    H = report["horizon"]
    hs = [h for h in horizons if h <= H]
    head = "/".join(f"h{h}" for h in hs)
    lines = [
        f"| sampler | PSNR whole {head} | PSNR moving {head} | sharpness gen/real h1, h{hs[-1]} "
        "| teacher-forced PSNR whole, moving | action IoU "
        "| actions recovered world / real (chance) | frames/s b1, b32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["samplers"].items():
        ar = r["autoregressive"]
        tf, af, idm = r.get("teacher_forced"), r.get("action_following"), r.get("inverse_dynamics")
        lines.append(
            f"| {name} | "
            + " / ".join(f"{ar['psnr'][h - 1]:.1f}" for h in hs)
            + " | "
            + " / ".join(f"{ar['psnr_moving'][h - 1]:.1f}" for h in hs)
            + f" | {ar['sharpness_ratio'][0]:.2f}, {ar['sharpness_ratio'][hs[-1] - 1]:.2f}"
            + (f" | {tf['psnr']:.1f}, {tf['psnr_moving']:.1f}" if tf else " | -")
            + (f" | {af['iou']:.2f}" if af else " | -")
            + (
                f" | {idm['world']:.2f} / {idm['real']:.2f} ({idm['chance']:.2f})"
                if idm
                else " | -"
            )
            + (
                f" | {r['fps_batch1']:.0f}, {r['fps_batch32']:.0f} |"
                if "fps_batch1" in r
                else " | - |"
            )
        )
    real = report.get("realism", {})
    for name, r in real.items():
        if name != "horizons":
            spans = ", ".join(
                f"h{lo}-{hi} {v:.1f}"
                for (lo, hi), v in zip(real["horizons"], r, strict=True)
                if v is not None
            )
            lines.append(f"\ndistance to the nearest real frame (levels), {name}: {spans}")
    for name, r in report.get("rules", {}).items():
        if "kept" in r:
            worst = ", ".join(
                f"{k} {v}" for k, v in sorted(r["broken"].items(), key=lambda kv: -kv[1])[:3]
            )
            lines.append(
                f"\nrules kept over long play, {name}: {100 * r['kept']:.1f}% of "
                f"{r['transitions']} transitions" + (f" (broken: {worst})" if worst else "")
            )
    re = report["reward_end"]
    lines.append(f"\nreward accuracy {re['reward_accuracy']:.3f}")
    kinds = [("reward", "non-zero rewards"), ("end", "episode ends"), ("life", "lost lives")]
    for name, what in kinds:
        if f"{name}_recall" in re:
            precision, recall = re[f"{name}_precision"], re[f"{name}_recall"]
            lines[-1] += (
                f"; {what}: precision "
                + ("- (none predicted)" if precision is None else f"{precision:.2f}")
                + f", recall {'-' if recall is None else f'{recall:.2f}'} of {re[f'{name}_seen']}, "
                f"{re[f'{name}_false_per_1k']:.1f} false alarms per 1k steps"
            )
    return "\n".join(lines)
