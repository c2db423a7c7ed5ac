"""The smoke profile through a real `dvc repro`, in a temporary copy of the repository.

Checks the plumbing end to end: stages run in order, outputs and metrics exist with
sane values, MLflow has a run per stage nested in one parent per pipeline run, a second
repro does nothing, an experiment that changes one stage's knob reruns that stage and
what reads its outputs only, and queued experiments (run by `dvc queue start` in temporary copies) land their
metrics, cache and MLflow runs in the one repository.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from posttrain.profiles import profile_params

# One pytest-xdist worker runs the whole module: its pipeline fixture is built once.
pytestmark = pytest.mark.xdist_group("pipeline_smoke")

REPO = Path(__file__).resolve().parent.parent
COPIED = ["posttrain", "stages", "profiles", "dvc.yaml", ".dvc/config", ".dvcignore"]
STAGE_RUNS = {"base", "prepare", "midtrain", "sft", "preferences", "reward_model", "dpo", "best_of_n", "rl", "safety", "distill",
              "tool_sft", "tool_rl", "evaluate@base", "evaluate@sft", "evaluate@dpo", "evaluate@rl", "evaluate@safety"}


def run(cmd, cwd, env):
    # Generous: beside the other pytest-xdist worker, on a slow machine, a repro takes minutes.
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def stages_ran(output: str) -> list[str]:
    return sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Three pipeline runs: `dvc repro`, a no-op `dvc repro`, and `dvc exp run -S` of the
    best-of-N stage's knob; then two queued experiments run by two queue workers."""
    root = tmp_path_factory.mktemp("repo")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    # Every stage after midtrain builds on its model: the wiring of models/${adapter_base} runs end to end.
    params = {**profile_params("smoke", REPO / "params.yaml"), "adapter_base": "midtrain"}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/mlflow.db\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "POSTTRAIN_"))}
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a core is the other workers': the stages get one thread
        env["POSTTRAIN_THREADS"] = "1"
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "smoke"], root, env)
    outputs = {"first": run(["dvc", "repro"], root, env)}
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "pipeline outputs"], root, env)
    outputs["noop"] = run(["dvc", "repro"], root, env)
    outputs["exp"] = run(["dvc", "exp", "run", "-n", "best-of-3", "-S", "best_of_n.n=3"], root, env)
    run(["git", "checkout", "-q", "--", "."], root, env)  # back to the committed baseline
    run(["dvc", "checkout", "-q"], root, env)
    # A knob whose effect on the metrics is certain: best-of-N's sample count. Its stage
    # starts a vLLM engine and logs to MLflow like any other, and reruns alone (with the
    # report): the cheapest stage that shows what a queued experiment must land.
    for n in (4, 5):
        run(["dvc", "exp", "run", "--queue", "-n", f"best-of-{n}", "-S", f"best_of_n.n={n}"], root, env)
    try:
        outputs["queue"] = run_queue(root, env, workers=2)
        yield root, env, outputs
    finally:  # no worker outlives the tests, whatever happened
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=root, env=env, capture_output=True, timeout=120)


def run_queue(root: Path, env: dict, workers: int, timeout: float = 900) -> str:
    """`dvc queue start -j N`, then wait until no experiment is queued or running, and
    return the final `dvc queue status`.

    `dvc queue start` exits at once, but the workers it forks keep its stdout and stderr:
    given pipes, as `run` gives, waiting for their end would wait for the workers, so
    its output goes to a file. On timeout the queue's status and each experiment's log
    are in the failure message."""
    log = root / ".dvc" / "tmp" / "queue-start.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        started = subprocess.run(["dvc", "queue", "start", "-j", str(workers)], cwd=root, env=env,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    assert started.returncode == 0, f"dvc queue start failed:\n{log.read_text()[-3000:]}"
    deadline = time.time() + timeout
    while True:
        status = run(["dvc", "queue", "status"], root, env)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        if time.time() > deadline:
            break
        time.sleep(3)
    names = [line.split()[1] for line in status.splitlines()[1:] if len(line.split()) > 1 and line.split()[0] != "Worker"]
    logs = [subprocess.run(["dvc", "queue", "logs", name], cwd=root, env=env, capture_output=True, text=True,
                           timeout=60).stdout[-2000:] for name in names]
    pytest.fail(f"the queue did not finish in {timeout:.0f} s:\n{status}\n" + "\n---\n".join(logs))


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
    tasks = [r["task"] for r in rows]
    assert (tasks.count("gsm"), tasks.count("safety"), tasks.count("instructions"), tasks.count("general:arc_easy")) \
        == (16, 16, 6, 6)
    assert metrics["generation"]["engine"] == "vllm"  # the smoke pipeline runs the default engine
    assert metrics["gsm"]["strict_accuracy_n"] == 16
    assert 0.0 <= metrics["gsm"]["strict_accuracy_ci95_low"] <= metrics["gsm"]["strict_accuracy"] \
        <= metrics["gsm"]["strict_accuracy_ci95_high"] <= 1.0
    assert metrics["instructions"]["n_prompts"] == 6 and metrics["general"]["arc_easy"]["accuracy_n"] == 6

    midtrain = json.loads((root / "metrics/midtrain.json").read_text())
    assert midtrain["steps"] == 2 and midtrain["general_documents"] > 0  # replay: the base model's own samples
    assert midtrain["domain_loss_before"] > 0 and midtrain["general_loss_after"] > 0
    adapter = json.loads((root / "models/sft/adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "models/midtrain"  # adapter_base: midtrain
    sft = json.loads((root / "metrics/sft.json").read_text())
    assert sft["steps"] == 4 and sft["train_tokens"] > 0
    assert (root / "models/sft/adapter_model.safetensors").is_file()
    card = json.loads((root / "metrics/compare.json").read_text())
    assert list(card) == ["base", "sft", "dpo", "rl", "safety"]
    safety_eval = json.loads((root / "metrics/eval/safety.json").read_text())
    rl_eval = json.loads((root / "metrics/eval/rl.json").read_text())
    assert card["safety"]["start"] == "rl"
    assert card["safety"]["delta_vs_start"]["refusal_rate"] == pytest.approx(
        safety_eval["safety"]["refusal_rate"] - rl_eval["safety"]["refusal_rate"], abs=1e-4)
    report = (root / "metrics/report.md").read_text()
    for image in [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]:
        assert (root / "metrics" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sft_eval = json.loads((root / "metrics/eval/sft.json").read_text())
    assert card["sft"]["delta_vs_base"]["strict_accuracy"] == pytest.approx(
        sft_eval["gsm"]["strict_accuracy"] - metrics["gsm"]["strict_accuracy"], abs=1e-4)


def mlflow_runs(root):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("posttrain")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def test_mlflow_nests_each_pipeline_runs_stages_under_one_parent(pipeline):
    root, _, outputs = pipeline
    runs = mlflow_runs(root)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("posttrain.kind") == "pipeline"}
    children: dict[str, list] = {run_id: [] for run_id in parents}
    for r in runs:
        if r.data.tags.get("posttrain.kind") == "stage":
            children[r.data.tags["mlflow.parentRunId"]].append(r)  # every stage run has a parent
    by_experiment = {p.data.tags["dvc.experiment"]: children[run_id] for run_id, p in parents.items()}
    # The no-op repro ran no stage, so opened no pipeline run.
    assert set(by_experiment) == {"workspace", "best-of-3", "best-of-4", "best-of-5"}
    assert {r.data.tags["posttrain.stage"] for r in by_experiment["workspace"]} == STAGE_RUNS
    assert sorted(r.data.tags["posttrain.stage"] for r in by_experiment["best-of-3"]) == sorted(
        s for s in stages_ran(outputs["exp"]) if s in STAGE_RUNS)
    for name in ("best-of-4", "best-of-5"):  # queued: ran in .dvc/tmp/exps copies, logged here
        assert [r.data.tags["posttrain.stage"] for r in by_experiment[name]] == ["best_of_n"]
    commit = subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=root, capture_output=True, text=True).stdout.strip()
    for r in by_experiment["workspace"]:
        assert r.info.status == "FINISHED"
        assert r.data.tags["git.commit"] == commit
    for run_id, parent in parents.items():
        assert parent.info.status == "FINISHED"
        assert {r.data.tags["posttrain.pipeline_run"] for r in children[run_id]} == {
            parent.data.tags["posttrain.pipeline_run"]}
    by_stage = {r.data.tags["posttrain.stage"]: r for r in by_experiment["workspace"]}
    evaluation = by_stage["evaluate@base"].data
    assert evaluation.params["evaluate.max_new_tokens"] == "24"
    assert 0.0 <= evaluation.metrics["gsm.strict_accuracy"] <= 1.0
    assert by_stage["prepare"].data.metrics["splits.sft"] == 48


def test_second_repro_does_nothing_and_an_experiment_reruns_only_what_its_knob_reaches(pipeline):
    _, _, outputs = pipeline
    assert "Running stage" not in outputs["noop"]
    # best-of-N, and what reads its outputs: the report
    assert stages_ran(outputs["exp"]) == ["best_of_n", "report"], outputs["exp"]


def test_queued_experiments_land_in_the_one_repository(pipeline):
    root, env, outputs = pipeline
    assert "Failed" not in outputs["queue"] and outputs["queue"].count("Success") == 2, outputs["queue"]
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env))
    experiments = {e["name"]: e for baseline in shown for e in (baseline.get("experiments") or [])
                   for e in [e["revs"][0]] if e.get("name")}
    assert {"best-of-3", "best-of-4", "best-of-5"} <= set(experiments)
    diff = json.loads(run(["dvc", "metrics", "diff", "best-of-4", "best-of-5", "--json"], root, env))
    assert diff["metrics/best_of_n.json"]["n_samples"] == {"old": 4, "new": 5, "diff": 1}, diff
    # The queued outputs are in the repository's cache: applying one needs nothing rebuilt.
    run(["dvc", "exp", "apply", "best-of-5"], root, env)
    status = run(["dvc", "status"], root, env)
    assert "changed" not in status, status
    assert yaml.safe_load((root / "params.yaml").read_text())["best_of_n"]["n"] == 5
