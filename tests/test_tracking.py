"""How stages find their pipeline run: the `dvc` process that started them."""

import os
import subprocess
import sys
from pathlib import Path

from posttrain import tracking

REPO = Path(__file__).resolve().parent.parent


def test_dvc_is_recognised_however_it_was_started():
    assert tracking._is_dvc(["/venv/bin/python3", "/venv/bin/dvc", "repro"])
    assert tracking._is_dvc(["/venv/bin/dvc", "exp", "run"])
    assert tracking._is_dvc(["python", "-m", "dvc", "repro"])
    assert not tracking._is_dvc(["python", "stages/sft.py"])
    assert not tracking._is_dvc(["bash", "-c", "echo dvc"])


def test_stages_of_one_dvc_invocation_share_an_id_and_invocations_differ(tmp_path):
    # A stand-in `dvc` that runs two "stages", each printing the id it would log under.
    fake = tmp_path / "bin" / "dvc"
    fake.parent.mkdir()
    stage = f"{sys.executable} -c 'from posttrain.tracking import pipeline_run_id; print(pipeline_run_id())'"
    fake.write_text(f"#!/bin/sh\nsh -c \"{stage}\"\nsh -c \"{stage}\"\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in (tracking.PIPELINE_RUN_ENV, "DVC_EXP_NAME")}
    env["PYTHONPATH"] = str(REPO)

    def invocation() -> list[str]:
        return subprocess.run([str(fake)], env=env, capture_output=True, text=True, check=True).stdout.split()

    first, second = invocation(), invocation()
    assert first[0] == first[1] and second[0] == second[1]
    assert first[0] != second[0] and first[0].startswith("workspace:")
    outside = subprocess.run([sys.executable, "-c", "from posttrain.tracking import pipeline_run_id; "
                              "print(pipeline_run_id())"], env=env, capture_output=True, text=True, check=True)
    assert outside.stdout.strip() == "None"  # run by hand: no pipeline run, no parent


def test_the_environment_can_name_the_pipeline_run(monkeypatch):
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, "nightly-42")
    assert tracking.pipeline_run_id() == "nightly-42"


def test_queued_experiments_log_to_the_users_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking.tracking_uri() == "http://mlflow.internal:5000"


def _dead_process_key() -> str:
    """The key of a process that has exited (a killed stage's, as far as MLflow knows)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    key = tracking.process_key(child.pid)
    child.kill()
    child.wait()
    return key


def test_runs_of_killed_processes_end_killed_and_the_ui_opens_on_runs(tmp_path, monkeypatch):
    import mlflow

    from posttrain.config import parse_params

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv(tracking.PIPELINE_RUN_ENV, raising=False)
    client = mlflow.MlflowClient(tracking.tracking_uri())
    experiment = client.create_experiment("posttrain")
    dead = _dead_process_key()
    assert dead and not tracking.process_alive(dead)
    assert tracking.process_alive(tracking.process_key(os.getpid()))
    stage = client.create_run(experiment, tags={tracking.KIND_TAG: "stage", tracking.PROCESS_TAG: dead}).info.run_id
    pipeline = client.create_run(experiment, tags={tracking.KIND_TAG: "pipeline",
                                                   tracking.PIPELINE_TAG: f"workspace:{dead}"}).info.run_id
    named = client.create_run(experiment, tags={tracking.KIND_TAG: "pipeline",
                                                tracking.PIPELINE_TAG: "nightly-42"}).info.run_id  # not ours to judge
    alive = client.create_run(experiment, tags={tracking.KIND_TAG: "stage",
                                               tracking.PROCESS_TAG: tracking.process_key(os.getpid())}).info.run_id

    params = parse_params({"data": {"split": {"sft": 1, "rl": 1, "test": 1}}})
    with tracking.stage_run("evaluate@base", params, ["seed"]):  # the next stage to start cleans up
        pass
    status = {run: client.get_run(run).info.status for run in (stage, pipeline, named, alive)}
    assert status == {stage: "KILLED", pipeline: "KILLED", named: "RUNNING", alive: "RUNNING"}
    assert client.get_experiment(experiment).tags[tracking.EXPERIMENT_KIND[0]] == "custom_model_development"


def test_an_interrupted_stage_ends_its_run_killed(tmp_path, monkeypatch):
    import mlflow
    import pytest

    from posttrain.config import parse_params

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = parse_params({"data": {"split": {"sft": 1, "rl": 1, "test": 1}}})
    with pytest.raises(KeyboardInterrupt), tracking.stage_run("sft", params, ["seed"]) as run:
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM (turned into the same)
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "KILLED"
