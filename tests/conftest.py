"""Shared fixtures: a throw-away workspace with the tiny model and prepared data,
made by the real stage scripts, for tests that run one stage under other params."""

import contextlib
import functools
import io
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import stage_process
import yaml

from posttrain.profiles import deep_merge, profile_params

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """pytest.ini runs the suite in pytest-xdist workers side by side (`-n auto`, one per
    core). Each worker then computes on one thread, like the stage subprocesses the tests
    start (stage_env): processes that each use every core slow down 15-80x."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["POSTTRAIN_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    # MASTER_PORT: a port of its own for each stage's process group. Unset, TRL's colocated
    # vLLM takes the first of 29500, 23456, ... that looks free, and two stages started
    # side by side (two xdist workers) can both take 29500.
    env.update(PYTHONPATH=str(REPO), POSTTRAIN_THREADS="1", MASTER_PORT=str(free_port()),
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}")
    return env


def write_params(workdir: Path, overrides: dict | None = None) -> None:
    """workdir/params.yaml = smoke profile + overrides."""
    params = deep_merge(profile_params("smoke", REPO / "params.yaml"), overrides or {})
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@functools.cache
def _resolved_arguments(stage: str, params_text: str) -> tuple[str, ...]:
    from dvc.repo import Repo

    with tempfile.TemporaryDirectory() as scratch:  # dvc.yaml beside these params
        shutil.copy2(REPO / "dvc.yaml", scratch)
        (Path(scratch) / "params.yaml").write_text(params_text)
        with contextlib.redirect_stdout(io.StringIO()):  # "Initialized DVC repository."
            Repo.init(scratch, no_scm=True).close()
        with Repo(scratch) as repo:  # (repo.stage.collect would read the dvc.yaml of the working directory)
            words = shlex.split(next(s.cmd for s in repo.index.stages if s.name == stage))
    script = next(i for i, word in enumerate(words) if word.startswith("stages/") and word.endswith(".py"))
    return tuple(words[script + 1:])


def dvc_arguments(stage: str, params_file: Path | None = None) -> tuple[str, ...]:
    """The arguments dvc.yaml gives stage's script (`sft`, `evaluate@sft`), DVC resolving
    its vars and params (params_file's, else the repository's): tests run a stage on
    exactly the paths the pipeline passes it. A params file DVC cannot read (a test's
    broken params.yaml) resolves with the repository's: the stage stops before using them."""
    repository = (REPO / "params.yaml").read_text()
    try:
        return _resolved_arguments(stage, Path(params_file).read_text() if params_file else repository)
    except Exception:
        if params_file is None:
            raise
        return _resolved_arguments(stage, repository)


def stage_command(stage: str, *args: str, params_file: Path | None = None) -> list[str]:
    """The command of dvc.yaml's stage (`sft`, `evaluate@sft`): its script, with the
    arguments given, else those dvc.yaml gives it (under params_file's params)."""
    script = stage.split("@")[0]
    return [sys.executable, str(REPO / "stages" / f"{script}.py"), *(args or dvc_arguments(stage, params_file))]


def run_stage(workdir: Path, stage: str, *args: str, overrides: dict | None = None, check: bool = True):
    """Run dvc.yaml's stage in workdir, with params = smoke profile + overrides (and the
    arguments given, else dvc.yaml's), forked from a process that has the heavy libraries
    imported (stage_process)."""
    write_params(workdir, overrides)
    result = stage_process.run(stage_command(stage, *args, params_file=workdir / "params.yaml"), cwd=workdir,
                               env=stage_env(), timeout=900)
    if check:
        assert result.returncode == 0, f"{stage} failed:\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> Path:
    """models/base (tiny) and data/prepared, made once per test session."""
    root = tmp_path_factory.mktemp("workspace")
    run_stage(root, "base")
    run_stage(root, "prepare")
    return root


@pytest.fixture()
def workspace(tiny_workspace, tmp_path) -> Path:
    """A private copy of the tiny workspace that a test may change freely."""
    root = tmp_path / "ws"
    shutil.copytree(tiny_workspace, root, ignore=shutil.ignore_patterns("mlflow.db"))
    return root


# One pass per step: params.yaml splits dpo/reward_model/safety steps in two passes to save memory, which
# the tiny model does not need (the smoke pipeline keeps the split for dpo and reward_model).
FAST = {"learning_rate": 5e-3, "warmup_ratio": 0.0, "lr_scheduler": "constant", "logging_steps": 1, "batch_size": 4,
        "gradient_accumulation_steps": 1}


@pytest.fixture(scope="session")
def sft_workspace(tiny_workspace, tmp_path_factory) -> Path:
    """The tiny workspace plus a (briefly) trained SFT adapter in models/sft."""
    root = tmp_path_factory.mktemp("sft") / "ws"
    shutil.copytree(tiny_workspace, root)
    run_stage(root, "sft", overrides={"sft": {**FAST, "max_steps": 2}})
    return root


def copy_with_crafted_pairs(source: Path, destination: Path, n_train: int, n_held_out: int = 0) -> Path:
    """A copy of a workspace whose data/preferences hold easy, learnable pairs: the
    worked solution (chosen) over an evasive non-answer (rejected)."""
    from posttrain.io import read_jsonl, write_jsonl

    shutil.copytree(source, destination)
    records = read_jsonl(destination / "data/prepared/sft.jsonl")
    pairs = [{"prompt_id": r["id"], "question": r["question"], "chosen": r["solution"],
              "rejected": "I am not sure, maybe ask someone else.", "source": "crafted"}
             for r in records[: n_train + n_held_out]]
    (destination / "data/preferences").mkdir(parents=True, exist_ok=True)
    write_jsonl(destination / "data/preferences/train.jsonl", pairs[:n_train])
    write_jsonl(destination / "data/preferences/held_out.jsonl", pairs[n_train:])
    return destination
