"""Process set-up for heavy commands: a faster memory allocator when the system has one.

glibc returns large tensors to the OS after every step and page-faults them back; with
tcmalloc or jemalloc preloaded, CPU training runs about 2x faster (BENCHMARKS.md, "Page faults
at every batched step").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
)


def fast_allocator() -> str | None:
    """Path of an installed tcmalloc/jemalloc, or None."""
    return next((p for p in _CANDIDATES if Path(p).is_file()), None)


def reexec_with_fast_allocator() -> None:
    """Re-run this process with a fast allocator preloaded, once, if one is installed.

    Set WORLDSIM_NO_PRELOAD=1 to skip. Without one installed, nothing happens (Debian/Ubuntu:
    `apt-get install libtcmalloc-minimal4` makes CPU training about twice as fast).
    """
    lib = fast_allocator()
    preload = os.environ.get("LD_PRELOAD", "")
    if lib is None or os.environ.get("WORLDSIM_NO_PRELOAD") or "malloc" in preload:
        return
    env = {**os.environ, "LD_PRELOAD": f"{lib}:{preload}".rstrip(":")}
    os.execve(sys.executable, [sys.executable, "-m", "worldsim", *sys.argv[1:]], env)


_KEPT = False


def keep_freed_memory() -> None:
    """Stop glibc's malloc from giving large freed blocks back to the OS, once per process.

    By default glibc serves each block over 128 KiB with a fresh mmap and unmaps it when
    freed, so every batched world step page-faults its activations back in (the cost is in
    BENCHMARKS.md, "Page faults at every batched step"). Raising the mmap and trim
    thresholds keeps those pages in the heap for the next step; the process then holds on to
    its peak memory. Does nothing when
    tcmalloc or jemalloc is preloaded (they keep memory already), off glibc, or with
    WORLDSIM_NO_PRELOAD=1.
    """
    global _KEPT
    if _KEPT or sys.platform != "linux" or os.environ.get("WORLDSIM_NO_PRELOAD"):
        return
    _KEPT = True
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's largest allowed value on 64-bit
    mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024)


def resolve_device(name: str, rank: int = 0):
    """A torch device from cpu, cuda or auto (cuda when available); under torchrun, cuda
    means this process's GPU (LOCAL_RANK)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} asked for, but torch sees no CUDA GPU here")
    if name == "cuda":
        return torch.device(
            "cuda", int(os.environ.get("LOCAL_RANK", rank)) % max(torch.cuda.device_count(), 1)
        )
    return torch.device(name)


PRECISIONS = ("fp32", "bf16")
TRAIN_PRECISIONS = ("auto", *PRECISIONS)


def check_precision(name: str, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """fp32 (exact, what the eval reports measure), bf16 (network calls under bfloat16
    autocast: about 2x the batched throughput on CPUs with AMX or AVX512-BF16, and on GPUs),
    or, for training, auto (bf16 where it is fast)."""
    if name not in allowed:
        raise ValueError(
            f"precision must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {name!r}"
        )
    return name


def bf16_is_fast(device) -> bool:
    """Whether `device` runs bfloat16 natively: a GPU that supports it, or a CPU with AMX or
    AVX512-BF16 (elsewhere bf16 is emulated and many times slower than fp32)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(
        getattr(cpu, f, lambda: False)()
        for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    )


def warn_if_bf16_emulated(device, stacklevel: int = 3) -> None:
    """Warn (once per calling line) that bf16 on `device` is emulated, where it is: asked for
    explicitly there, it runs several times slower than fp32."""
    import warnings

    if not bf16_is_fast(device):
        warnings.warn(
            f"precision='bf16' on this {device.type.upper()}, which has no native bfloat16 "
            "(AMX or AVX512-BF16 on a CPU), is emulated and several times slower than fp32 "
            "(5-8x on an AVX2 CPU); use precision='fp32'",
            stacklevel=stacklevel,
        )


def resolve_precision(device, precision: str) -> str:
    """fp32 or bf16: a training precision on `device`, auto resolved (bf16 where it is fast)."""
    check_precision(precision, TRAIN_PRECISIONS)
    on = precision == "bf16" or (precision == "auto" and bf16_is_fast(device))
    return "bf16" if on else "fp32"


def autocast(device, precision: str):
    """The autocast context of a training precision: auto (bf16 where it is fast), fp32, bf16."""
    import torch

    on = resolve_precision(device, precision) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def processes(procs: int, device: str) -> int:
    """How many processes a run trains in: `procs`, or for 0 one per core this process may
    use on a CPU and one on a GPU. One under torchrun, which starts its own."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    if procs:
        return procs
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def check_procs(procs: int, key: str = "procs") -> int:
    """A `procs` setting: 0 (one per core) to 256."""
    if not 0 <= procs <= 256:
        raise ValueError(f"{key} must be in [0, 256] (0 = one per core), got {procs}")
    return procs


def spread(fn, cfg) -> bool:
    """Run `fn(cfg)` in `cfg.procs` processes (see `processes`) when that is more than one,
    and say whether it did; else the caller runs in this process."""
    n = processes(cfg.procs, cfg.device)
    if n > 1:
        in_processes(fn, cfg, n)
    return n > 1


def in_processes(fn, cfg, n: int) -> None:
    """Run `fn(cfg)` in `n` processes of one thread each, data-parallel as under torchrun
    (gloo over localhost; rank 0 shows progress and writes the run). A process's error is
    raised here on one line; Ctrl-C or SIGTERM here stops them all."""
    import logging
    import re
    import socket

    import torch.multiprocessing as mp

    # torch warns as it stops the other processes after one fails: the error says enough
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(
        _worker, args=(fn, cfg, n, port), nprocs=n, join=False, start_method="spawn"
    )
    try:
        while not ctx.join():
            pass
    except mp.ProcessRaisedException as e:  # its traceback's last line: "ValueError: ..."
        last = [line for line in str(e).splitlines() if line.strip()][-1]
        if last.startswith("KeyboardInterrupt"):
            raise KeyboardInterrupt from None
        last = re.sub(r"^[\w.]*(Error|Exception): ", "", last)  # the message, not its type
        raise ValueError(f"training process {e.error_index}: {last}") from None
    except mp.ProcessExitedException as e:
        raise ValueError(f"training process {e.error_index} exited ({e.exit_code})") from None
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
        for p in ctx.processes:
            p.join()


def _worker(rank: int, fn, cfg, n: int, port: int) -> None:
    import torch

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(n),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    fn(cfg)
