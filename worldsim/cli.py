"""The `worldsim` command: one subcommand per stage of the game -> world path.

Stage commands take hydra overrides (`key=value`, `group=option`); `worldsim CMD --help`
lists every key with its default and meaning.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable

from worldsim.config import ConfigError, describe, load_config
from worldsim.files import CheckpointError
from worldsim.runtime import reexec_with_fast_allocator


def _collect(overrides: list[str]) -> None:
    from worldsim.data.collect import CollectConfig, collect

    ds = collect(load_config("collect", CollectConfig, overrides))
    print(ds.summary())


def _train(overrides: list[str]) -> None:
    from worldsim.training.train import TrainConfig, train

    run = train(load_config("train", TrainConfig, overrides))
    print(f"run saved in {run}")


def _bundle(overrides: list[str]) -> None:
    from worldsim.training.bundle import BundleConfig, bundle

    print(f"world written to {bundle(load_config('bundle', BundleConfig, overrides))}")


def _distill(overrides: list[str]) -> None:
    from worldsim.training.distill import DistillConfig, distill

    print(f"student saved in {distill(load_config('distill', DistillConfig, overrides))}")


def _eval(overrides: list[str]) -> None:
    from worldsim.evaluation.evaluate import EvalConfig, evaluate, summary

    print(summary(evaluate(load_config("eval", EvalConfig, overrides))))


def _play(overrides: list[str]) -> None:
    import os

    from worldsim.play.app import PlayConfig, play

    cfg = load_config("play", PlayConfig, overrides)
    if not cfg.headless and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        print(
            "no display found: playing headless with random actions (headless=true policy=random)"
        )
        from dataclasses import replace

        cfg = replace(
            cfg, headless=True, policy="random" if cfg.policy == "keyboard" else cfg.policy
        )
    result = play(cfg)
    print(
        f"played {result['frames']} frames at {result['fps']:.1f} fps"
        + (f"; {result['message']}" if result["message"] else "")
    )


def _record(overrides: list[str]) -> None:
    from worldsim.play.record import RecordConfig, record

    for path in record(load_config("record", RecordConfig, overrides)):
        print(f"wrote {path}")


def _rl(overrides: list[str]) -> None:
    from worldsim.rl import RLConfig, summary, train_rl

    print(summary(train_rl(load_config("rl", RLConfig, overrides))))


def _loop(overrides: list[str]) -> None:
    from worldsim.online import LoopConfig, loop, summary

    print(summary(loop(load_config("loop", LoopConfig, overrides))))


def _pipeline(overrides: list[str]) -> None:
    from worldsim.pipeline import PipelineConfig, pipeline

    pipeline(load_config("pipeline", PipelineConfig, overrides))


# name -> (one-line help, config dataclass getter, runner)
def _commands() -> dict[str, tuple[str, Callable, Callable]]:
    def cfg_of(module: str, name: str) -> Callable:
        def get():
            import importlib

            return getattr(importlib.import_module(module), name)

        return get

    return {
        "pipeline": (
            "game -> playable world in one command: collect, train, distill, bundle, fit the "
            "reward/end model to the world's drawings, eval",
            cfg_of("worldsim.pipeline", "PipelineConfig"),
            _pipeline,
        ),
        "collect": (
            "record play of a game into an episode dataset",
            cfg_of("worldsim.data.collect", "CollectConfig"),
            _collect,
        ),
        "train": (
            "train a world model (denoiser + reward/end model) on a dataset",
            cfg_of("worldsim.training.train", "TrainConfig"),
            _train,
        ),
        "distill": (
            "train the one-step consistency student of a trained world model",
            cfg_of("worldsim.training.distill", "DistillConfig"),
            _distill,
        ),
        "eval": (
            "score a world against held-out real episodes (report, plot, video)",
            cfg_of("worldsim.evaluation.evaluate", "EvalConfig"),
            _eval,
        ),
        "play": (
            "play a world live with the keyboard (or headless), recording if asked",
            cfg_of("worldsim.play.app", "PlayConfig"),
            _play,
        ),
        "record": (
            "record episodes of a world or a real game (mp4 + episode dataset)",
            cfg_of("worldsim.play.record", "RecordConfig"),
            _record,
        ),
        "rl": (
            "train a PPO agent inside a world, then score it in the real game",
            cfg_of("worldsim.rl", "RLConfig"),
            _rl,
        ),
        "loop": (
            "the online loop: play the real game with the agent, update the world, train the "
            "agent in it; repeat",
            cfg_of("worldsim.online", "LoopConfig"),
            _loop,
        ),
        "bundle": (
            "make a self-contained world folder from a training run",
            cfg_of("worldsim.training.bundle", "BundleConfig"),
            _bundle,
        ),
    }


def _data(argv: list[str]) -> None:
    from worldsim.data.store import Dataset

    parser = argparse.ArgumentParser(prog="worldsim data", description="Inspect episode datasets.")
    sub = parser.add_subparsers(dest="action", required=True)
    info = sub.add_parser("info", help="print a dataset's games, splits, lengths and returns")
    info.add_argument("dir", help="dataset folder (from `worldsim collect`)")
    video = sub.add_parser("video", help="export an episode to an H.264 mp4")
    video.add_argument("dir", help="dataset folder (from `worldsim collect`)")
    video.add_argument("--episode", type=int, default=None, help="episode id (default: the first)")
    video.add_argument("--out", default=None, help="mp4 path (default: <dir>/ep_<id>.mp4)")
    video.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscale factor")
    video.add_argument("--fps", type=int, default=15, help="frames per second of the video")
    video.add_argument("--overwrite", action="store_true", help="replace an existing file")
    imp = sub.add_parser(
        "import",
        help="import your own recordings into a dataset (a folder "
        "of videos with per-step action files, or a local Minari dataset)",
    )
    imp.add_argument(
        "source",
        help="a folder of NAME.mp4 + NAME.csv/.npy (see README, 'Your own "
        "game'), or with --minari a local Minari dataset id",
    )
    imp.add_argument("--out", required=True, help="dataset folder to write (or append to)")
    imp.add_argument("--minari", action="store_true", help="source is a local Minari dataset id")
    imp.add_argument("--frame-size", type=int, default=64, help="side of the square frames")
    imp.add_argument("--test-fraction", type=float, default=0.1, help="share held out")
    imp.add_argument("--game", default="", help="game id to record (default: from the source)")
    exp = sub.add_parser("export-minari", help="write a dataset as a local Minari dataset")
    exp.add_argument("dir", help="dataset folder")
    exp.add_argument("id", help="Minari dataset id to create, e.g. worldsim/bricks-v0")
    args = parser.parse_args(argv)
    if args.action in ("import", "export-minari"):
        _data_transfer(args)
        return
    ds = Dataset.open(args.dir)
    if args.action == "info":
        print(ds.summary())
        return
    from worldsim.data.video import write_mp4

    entries = ds.entries()
    if not entries:
        raise ConfigError(f"{args.dir}: dataset has no episodes")
    ids = [e["id"] for e in entries]
    ep_id = ids[0] if args.episode is None else args.episode
    if ep_id not in ids:
        raise ConfigError(f"no episode {ep_id} in {args.dir}; ids run {ids[0]}..{ids[-1]}")
    out = args.out or f"{args.dir}/ep_{ep_id:06d}.mp4"
    frames = ds.load(entries[ids.index(ep_id)]).frames
    write_mp4(out, frames, fps=args.fps, scale=args.scale, overwrite=args.overwrite)
    print(f"wrote {out} ({len(frames)} frames)")


def _data_transfer(args) -> None:
    from worldsim.data import imports

    if args.action == "export-minari":
        print(f"wrote the local Minari dataset {imports.export_minari(args.dir, args.id)}")
        return
    if not 0 <= args.test_fraction < 1:
        raise ConfigError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    if args.minari:
        ds = imports.import_minari(args.source, args.out, args.frame_size, args.test_fraction)
    else:
        ds = imports.import_videos(
            args.source, args.out, args.frame_size, args.test_fraction, args.game
        )
    print(ds.summary())


def _usage(commands) -> str:
    lines = ["usage: worldsim COMMAND [key=value ...]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (desc, _, _) in commands.items()]
    lines += [
        f"  {'data':<10} datasets: data info DIR | data video DIR | data import SRC --out DIR"
        " | data export-minari DIR ID"
    ]
    lines += ["", "`worldsim COMMAND --help` lists a command's keys and defaults."]
    return "\n".join(lines)


def _command_help(name: str, desc: str, cls) -> str:
    try:  # the defaults a run gets: the dataclass's, with configs/<name>.yaml on top
        values, heading = (
            load_config(name, cls, []),
            f"keys (defaults as configs/{name}.yaml sets them):",
        )
    except (ConfigError, ValueError):
        values, heading = None, "keys (default):"
    usage = f"usage: worldsim {name} [key=value ...]"
    if name == "play":
        usage = "usage: python play.py [key=value ...]   (or: worldsim play [key=value ...])"
    lines = [usage, "", desc, "", heading]
    for key, default, doc in describe(cls, values=values):
        shown = "" if default == "" else f" ({default!r})"
        lines.append(f"  {key}{shown}\n      {doc}" if doc else f"  {key}{shown}")
    return "\n".join(lines)


# commands that run the networks long enough to gain from tcmalloc (BENCHMARKS.md, "Page
# faults at every batched step")
HEAVY = ("train", "distill", "eval", "rl", "record", "pipeline")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: recordings are saved, windows closed, work kept."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While a command runs, SIGTERM raises `Terminated` (in the main thread only, where
    Python delivers signals); the previous handler is put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    from_shell, argv = argv is None, sys.argv[1:] if argv is None else argv
    commands = _commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(commands))
        return 0
    name, rest = argv[0], argv[1:]
    try:
        if name == "data":
            _data(rest)
            return 0
        if name not in commands:
            valid = ", ".join([*commands, "data"])
            print(f"worldsim: unknown command {name!r}; valid: {valid}", file=sys.stderr)
            return 2
        desc, get_cls, run = commands[name]
        if any(a in ("-h", "--help") for a in rest):
            print(_command_help(name, desc, get_cls()))
            return 0
        if name in HEAVY and from_shell:
            reexec_with_fast_allocator()
        with _sigterm_as_interrupt():
            run(rest)
        return 0
    except (ConfigError, ValueError, OSError, CheckpointError) as e:
        print(f"worldsim {name}: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"worldsim {name}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"worldsim {name}: interrupted", file=sys.stderr)
        return 130
