"""Process set-up every stage does first: threads, seeds, quiet offline-friendly libraries."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

from posttrain import errors
from posttrain.errors import UserError
from posttrain.config import RuntimeParams


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def queue_workers() -> int:
    """Live `dvc exp queue-worker` processes on this machine (Linux /proc; 0 elsewhere).
    `dvc queue start -j N` runs N of them, each running one experiment at a time."""
    count = 0
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = entry.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"queue-worker" in argv and b"exp" in argv:
            count += 1
    return count


def in_queued_experiment() -> bool:
    """DVC runs a queued experiment in a temporary copy under <repo>/.dvc/tmp/exps/."""
    root = os.environ.get("DVC_ROOT")
    return bool(root) and Path.cwd().resolve().is_relative_to(Path(root).resolve() / ".dvc" / "tmp" / "exps")


def thread_count(runtime: RuntimeParams) -> int:
    """Threads for torch: params first, then POSTTRAIN_THREADS, then a fair share of the
    available cores.

    Two busy processes that each use every core slow down 15-80x from oversubscription,
    so the cores are split between the processes that run at once: the ranks of one
    `accelerate launch` on this machine (LOCAL_WORLD_SIZE), and the experiments that
    `dvc queue start -j N` runs side by side (one per queue worker).
    """
    if runtime.threads:
        return runtime.threads
    from_env = os.environ.get("POSTTRAIN_THREADS", "").strip()
    if from_env:
        try:
            return max(1, int(from_env))
        except ValueError:
            raise UserError(f"POSTTRAIN_THREADS: expected a whole number, got {from_env!r}") from None
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if in_queued_experiment():
        sharing *= max(1, queue_workers())
    return max(1, available_cores() // sharing)


def setup(runtime: RuntimeParams, seed: int) -> int:
    """Configure threads and seeds before any heavy work; returns the thread count used."""
    # Must be set before torch (and its OpenMP runtime) is first imported: spinning
    # idle OpenMP threads steal the cores another process is computing on.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    errors.install()  # a UserError ends the stage in its one line, without a traceback
    # bitsandbytes (imported by peft) warns on every import that the optional `kernels`
    # hub package is absent, then uses its own CPU kernel: noise in every stage's log.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    threads = thread_count(runtime)
    import torch

    torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    return threads


def native_bf16() -> bool:
    """Whether bf16 runs natively here: a CUDA GPU with bf16, or a CPU whose oneDNN has a
    bf16 path (avx512_bf16 or AMX). On other CPUs (AVX2 only) bf16 matrix products are
    emulated: on one 2-core AVX2 machine 0.8 GFLOP/s against 66.5 in fp32, and an SFT step
    took 100-110 s against 6-9 s in fp32 (bench/precision.py measures a machine)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


_told: set[str] = set()


def use_bf16(requested: bool, what: str) -> bool:
    """bf16 when asked for and native here; else fp32, said once per `what`. Results
    then differ from a bf16 machine's by rounding only; the speed would not."""
    if requested and not native_bf16():
        if what not in _told:
            _told.add(what)
            print(f"{what}: this CPU has no native bf16 (avx512_bf16/AMX); computing in float32")
        return False
    return requested


def generation_dtype(dtype: str) -> str:
    """The vLLM dtype to use for generation.dtype on this machine (see use_bf16)."""
    if dtype == "bfloat16" and not use_bf16(True, "generation.dtype"):
        return "float32"
    return dtype

