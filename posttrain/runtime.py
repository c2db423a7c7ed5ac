"""Process set-up every stage does first: threads, seeds, quiet offline-friendly libraries."""

from __future__ import annotations

import os
import random

from posttrain.config import RuntimeParams


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def thread_count(runtime: RuntimeParams) -> int:
    """Threads for torch: params first, then POSTTRAIN_THREADS, then the available cores.

    POSTTRAIN_THREADS lets a queue of experiments split the machine between its workers:
    two busy processes that each use every core slow down 15-80x from oversubscription.
    """
    if runtime.threads:
        return runtime.threads
    from_env = os.environ.get("POSTTRAIN_THREADS", "").strip()
    if from_env:
        try:
            return max(1, int(from_env))
        except ValueError:
            raise SystemExit(f"POSTTRAIN_THREADS: expected a whole number, got {from_env!r}") from None
    return available_cores()


def setup(runtime: RuntimeParams, seed: int) -> int:
    """Configure threads and seeds before any heavy work; returns the thread count used."""
    # Must be set before torch (and its OpenMP runtime) is first imported: spinning
    # idle OpenMP threads steal the cores another process is computing on.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    threads = thread_count(runtime)
    import torch

    torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    return threads
