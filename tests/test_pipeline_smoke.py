"""The smoke profile through a real `dvc repro`, in a temporary copy of the repository.

Checks the plumbing end to end: stages run in order, outputs and metrics exist with
sane values, MLflow has a run per stage with the right tags, a second repro does
nothing, and changing an evaluation knob reruns evaluation only.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from posttrain.profiles import profile_params

REPO = Path(__file__).resolve().parent.parent
COPIED = ["posttrain", "stages", "profiles", "dvc.yaml", ".dvc/config", ".dvcignore"]


def run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(profile_params("smoke", REPO / "params.yaml"), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", POSTTRAIN_THREADS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "smoke"], root, env)
    first = run(["dvc", "repro"], root, env)
    return root, env, first


def test_outputs_and_metrics(pipeline):
    root, _, _ = pipeline
    assert (root / "models/base/model.safetensors").is_file()
    assert (root / "models/base/chat_template.jinja").is_file() or "chat_template" in (
        root / "models/base/tokenizer_config.json").read_text()
    data = json.loads((root / "metrics/data.json").read_text())
    assert data["splits"] == {"sft": 48, "rl": 24, "test": 16}
    assert data["skipped"] == 0
    test_ids = {json.loads(line)["id"] for line in (root / "data/prepared/test.jsonl").open()}
    train_ids = {json.loads(line)["id"] for f in ("sft", "rl") for line in (root / f"data/prepared/{f}.jsonl").open()}
    assert test_ids and not test_ids & train_ids

    metrics = json.loads((root / "metrics/eval/base.json").read_text())
    gsm, safety = metrics["gsm"], metrics["safety"]
    assert gsm["n"] == 16
    for key in ("strict_accuracy", "flexible_accuracy", "format_rate"):
        assert 0.0 <= gsm[key] <= 1.0
    assert gsm["strict_accuracy"] <= gsm["format_rate"]  # strict needs the format
    assert 0 < gsm["mean_completion_tokens"] <= 24
    assert safety["n_harmful"] + safety["n_benign"] == 16
    assert 0.0 <= safety["refusal_rate"] <= 1.0 and 0.0 <= safety["over_refusal_rate"] <= 1.0
    assert metrics["generation"]["tokens_per_second"] > 0
    rows = [json.loads(line) for line in (root / "data/eval/base.jsonl").open()]
    assert len(rows) == 32 and {r["task"] for r in rows} == {"gsm", "safety"}

    sft = json.loads((root / "metrics/sft.json").read_text())
    assert sft["steps"] == 4 and sft["train_tokens"] > 0
    assert (root / "models/sft/adapter_model.safetensors").is_file()
    card = json.loads((root / "metrics/compare.json").read_text())
    assert list(card) == ["base", "sft", "dpo", "rl"]
    sft_eval = json.loads((root / "metrics/eval/sft.json").read_text())
    assert card["sft"]["delta_vs_base"]["strict_accuracy"] == pytest.approx(
        sft_eval["gsm"]["strict_accuracy"] - metrics["gsm"]["strict_accuracy"], abs=1e-4)


def test_mlflow_has_a_tagged_run_per_stage(pipeline):
    root, _, _ = pipeline
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("posttrain")
    runs = client.search_runs([experiment.experiment_id])
    by_stage = {r.data.tags["posttrain.stage"]: r for r in runs}
    assert set(by_stage) == {"base", "prepare", "sft", "preferences", "reward_model", "dpo", "best_of_n", "rl",
                             "evaluate@base", "evaluate@sft", "evaluate@dpo", "evaluate@rl"}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    for run_ in runs:
        assert run_.info.status == "FINISHED"
        assert run_.data.tags["git.commit"] == commit
        assert run_.data.tags["dvc.experiment"] == "workspace"
    evaluation = by_stage["evaluate@base"].data
    assert evaluation.params["evaluate.max_new_tokens"] == "24"
    assert 0.0 <= evaluation.metrics["gsm.strict_accuracy"] <= 1.0
    assert by_stage["prepare"].data.metrics["splits.sft"] == 48


def test_second_repro_does_nothing_and_eval_param_reruns_only_evaluation(pipeline):
    root, env, _ = pipeline
    again = run(["dvc", "repro"], root, env)
    assert "Running stage" not in again
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["max_new_tokens"] = 12
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["dvc", "repro"], root, env)
    ran = sorted(line.split("'")[1] for line in changed.splitlines() if line.startswith("Running stage"))
    # evaluation, and what reads its outputs: the scorecard, and best-of-N (greedy results)
    assert ran == ["best_of_n", "compare", "evaluate@base", "evaluate@dpo", "evaluate@rl", "evaluate@sft"], changed
