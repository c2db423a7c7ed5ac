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
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from posttrain.config import sections_of

PIPELINE_RUN_ENV = "POSTTRAIN_PIPELINE_RUN"
PIPELINE_TAG = "posttrain.pipeline_run"
KIND_TAG = "posttrain.kind"
PROCESS_TAG = "posttrain.process"  # "<pid>:<start time>" of the process a run belongs to
# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces);
# marked as model development, it opens on the runs table, grouped by pipeline run.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


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


def process_key(pid: int) -> str | None:
    """"<pid>:<start time>": names one process for good (a pid alone is reused)."""
    info = _process_info(pid)
    return f"{pid}:{info[1]}" if info else None


def process_alive(key: str) -> bool:
    """Whether the process a key names ("<pid>:<start>", or a pipeline id ending so) still runs."""
    pid, started = key.rsplit(":", 2)[-2:] if key.count(":") else ("", "")
    if not pid.isdigit():
        return True  # not a key we made (POSTTRAIN_PIPELINE_RUN): leave its run alone
    return process_key(int(pid)) == f"{pid}:{started}"


def end_orphaned_runs(client, experiment_id: str) -> int:
    """Mark KILLED the runs left RUNNING by a process that no longer exists (a stage
    killed with SIGKILL, or its `dvc`): stage runs by their process tag, pipeline runs by
    the `dvc` process in their id. Returns how many were ended."""
    if not Path("/proc/self/stat").exists():  # no /proc (macOS): liveness cannot be told
        return 0
    ended = 0
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=500):
        tags = run.data.tags
        owner = tags.get(PROCESS_TAG) if tags.get(KIND_TAG) == "stage" else (
            tags.get(PIPELINE_TAG) if tags.get(KIND_TAG) == "pipeline" else None)
        if owner and not process_alive(owner):
            client.set_terminated(run.info.run_id, status="KILLED")
            ended += 1
    return ended


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


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


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
    client = mlflow.MlflowClient()
    if experiment.tags.get(EXPERIMENT_KIND[0]) is None:
        client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
    end_orphaned_runs(client, experiment.experiment_id)
    pipeline_id = pipeline_run_id()
    tags = {
        "git.commit": git_commit(),
        "dvc.experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
    }
    parent = None
    if pipeline_id:
        tags[PIPELINE_TAG] = pipeline_id
        parent = _pipeline_parent(client, experiment.experiment_id, pipeline_id, tags)
        client.update_run(parent, status="RUNNING")  # until this stage ends, one way or another
    logged = flatten(sections_of(params, sections))
    status = "FAILED"
    # SIGTERM (a scheduler, `dvc queue kill`) unwinds like Ctrl-C, so the runs end KILLED;
    # SIGKILL cannot be caught: end_orphaned_runs ends those runs at the next stage start.
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    run_id = None
    try:
        with mlflow.start_run(run_name=stage, tags={**tags, "posttrain.stage": stage, KIND_TAG: "stage",
                                                    PROCESS_TAG: process_key(os.getpid()) or ""},
                              parent_run_id=parent) as run:
            run_id = run.info.run_id
            # MLflow params are strings of at most 6000 chars; long prompts get cut, not rejected.
            mlflow.log_params({k: str(v)[:6000] for k, v in logged.items()})
            yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        if run_id:
            client.set_terminated(run_id, status=status)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
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
