"""MLflow tracking shared by every stage.

Each stage opens one MLflow run, tagged so the stages of one pipeline run can be found
together: `posttrain.stage`, `git.commit`, `dvc.experiment` (DVC sets DVC_EXP_NAME
inside `dvc exp run`; plain `dvc repro` is "workspace").

The store is `sqlite:///mlflow.db` at the repository root unless MLFLOW_TRACKING_URI
says otherwise; `mlflow ui --backend-store-uri sqlite:///mlflow.db` opens it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel



def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path.cwd(), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


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


@contextmanager
def stage_run(stage: str, params: BaseModel, sections: list[str]) -> Iterator[object]:
    """Open the stage's MLflow run and log the params sections the stage reads."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(params.tracking.experiment)
    tags = {
        "posttrain.stage": stage,
        "git.commit": git_commit(),
        "dvc.experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
    }
    dumped = params.model_dump()
    logged = flatten({key: dumped[key] for key in sections})
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        # MLflow params are strings of at most 6000 chars; long prompts get cut, not rejected.
        mlflow.log_params({k: str(v)[:6000] for k, v in logged.items()})
        yield run


def log_metrics(metrics: Mapping[str, object], step: int | None = None) -> None:
    """Log the numeric leaves of a (nested) metrics dict under dotted names."""
    import mlflow

    numeric = {
        k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if numeric:
        mlflow.log_metrics(numeric, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)
