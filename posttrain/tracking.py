"""MLflow tracking shared by every stage.

Each stage opens one MLflow run. The stages of one pipeline run (one `dvc repro`, or
one `dvc exp run`, queued or not) are nested under a parent run, so `mlflow ui` lists
one entry per pipeline run with its stages under it. Every run is also tagged
`posttrain.pipeline_run`, `posttrain.stage`, `git.commit` and `dvc.experiment` (DVC
sets DVC_EXP_NAME inside `dvc exp run`; plain `dvc repro` is "workspace").

What makes a pipeline run: DVC starts every stage of one invocation as a child of the
same `dvc` process, so that process (its pid and start time) plus the experiment name
identifies it. POSTTRAIN_PIPELINE_RUN overrides this (a scheduler wrapping several
`dvc` calls can set one id); a stage run by hand, outside DVC, gets no parent.

The store is `sqlite:///mlflow.db` at the repository root unless MLFLOW_TRACKING_URI
says otherwise. The root is DVC_ROOT when DVC sets it: a queued experiment runs in a
temporary copy of the repo (.dvc/tmp/exps/...), and DVC points DVC_ROOT at the user's
repo, so its runs land in the user's one store rather than in a copy thrown away.
Open it with `mlflow ui --backend-store-uri sqlite:///mlflow.db`.

Under `accelerate launch` only the main process (RANK 0) logs; the others get no run.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

PIPELINE_RUN_ENV = "POSTTRAIN_PIPELINE_RUN"
PIPELINE_TAG = "posttrain.pipeline_run"
KIND_TAG = "posttrain.kind"


def project_root() -> Path:
    """The user's repository: DVC_ROOT inside DVC (the parent repo, for queued
    experiments running in a temporary copy), else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def is_main_process() -> bool:
    """False on the non-zero ranks of a distributed (accelerate/torchrun) launch."""
    return os.environ.get("RANK", "0") == "0"


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path.cwd(), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _process_info(pid: int) -> tuple[int, str, list[str]] | None:
    """(parent pid, start time in clock ticks, argv) of a process, from /proc (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces
    return int(fields[1]), fields[19], [a for a in argv if a]


def _is_dvc(argv: list[str]) -> bool:
    names = [Path(a).name for a in argv[:3]]
    return "dvc" in names or argv[1:3] == ["-m", "dvc"]


def pipeline_run_id() -> str | None:
    """The id shared by the stages of one DVC invocation; None outside DVC."""
    if os.environ.get(PIPELINE_RUN_ENV):
        return os.environ[PIPELINE_RUN_ENV]
    pid = os.getppid()
    for _ in range(32):  # stage -> shell -> ... -> dvc
        info = _process_info(pid)
        if info is None or pid <= 1:
            return None
        parent, started, argv = info
        if _is_dvc(argv):
            return f"{os.environ.get('DVC_EXP_NAME', 'workspace')}:{pid}:{started}"
        pid = parent
    return None


def flatten(data: Mapping, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: MLflow params and DVC keys use the same dotted names."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _pipeline_parent(client, experiment_id: str, run_id: str, tags: dict[str, str]) -> str:
    """The parent run of this pipeline run: found by its tag, created by the first stage."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{run_id}' and tags.`{KIND_TAG}` = 'pipeline'",
        max_results=1)
    if found:
        return found[0].info.run_id
    name = f"pipeline {tags['dvc.experiment']} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    return client.create_run(experiment_id, run_name=name, tags={**tags, KIND_TAG: "pipeline"}).info.run_id


@contextmanager
def stage_run(stage: str, params: BaseModel, sections: list[str]) -> Iterator[object]:
    """Open the stage's MLflow run, nested in its pipeline run, and log the params
    sections the stage reads. Yields None on non-main ranks (nothing is logged there)."""
    if not is_main_process():
        yield None
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.set_experiment(params.tracking.experiment)
    pipeline_id = pipeline_run_id()
    tags = {
        "git.commit": git_commit(),
        "dvc.experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
    }
    client = mlflow.MlflowClient()
    parent = None
    if pipeline_id:
        tags[PIPELINE_TAG] = pipeline_id
        parent = _pipeline_parent(client, experiment.experiment_id, pipeline_id, tags)
    dumped = params.model_dump()
    logged = flatten({key: dumped[key] for key in sections})
    status = "FAILED"
    try:
        with mlflow.start_run(run_name=stage, tags={**tags, "posttrain.stage": stage, KIND_TAG: "stage"},
                              parent_run_id=parent) as run:
            # MLflow params are strings of at most 6000 chars; long prompts get cut, not rejected.
            mlflow.log_params({k: str(v)[:6000] for k, v in logged.items()})
            yield run
        status = "FINISHED"
    finally:
        if parent:  # the parent's end time and status follow its latest stage
            client.set_terminated(parent, status=status)


def log_metrics(metrics: Mapping[str, object], step: int | None = None) -> None:
    """Log the numeric leaves of a (nested) metrics dict under dotted names."""
    if not is_main_process():
        return
    import mlflow

    numeric = {
        k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if numeric:
        mlflow.log_metrics(numeric, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    if not is_main_process():
        return
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)
