"""Rejection-sampling fine-tuning: only verified samples are trained on, round after round."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import REPO, dvc_arguments, run_stage, stage_env, write_params
from posttrain.rft import sft_conversations, verified_samples


def record(answer: str) -> dict:
    return {"id": f"p{answer}", "question": f"What is {answer}?", "answer": answer,
            "solution": f"It is {answer}.\n#### {answer}"}


def test_only_strictly_correct_distinct_samples_are_kept_up_to_the_limit():
    records = [record("12"), record("7"), record("3")]
    groups = [
        ["So 12.\n#### 12", "So  12.\n####   12", "Then 12 is it.\n#### 12", "#### 13"],  # 3 correct, 2 distinct
        ["#### 8", "The answer is 7", "7"],  # right number, but no "#### 7": not strictly correct
        ["#### 3.0"],  # the same number
    ]
    kept, found = verified_samples(records, groups, keep_per_prompt=2)
    assert [(r["id"], c) for r, c in kept] == [("p12", "So 12.\n#### 12"), ("p12", "Then 12 is it.\n#### 12"),
                                               ("p3", "#### 3.0")]
    assert found.as_dict() == {"prompts": 3, "samples": 8, "correct_samples": 4, "prompts_solved": 2, "kept": 3,
                               "sample_accuracy": 0.5, "pass_at_k": 0.6667}
    kept_one, found_one = verified_samples(records, groups, keep_per_prompt=1)
    assert [c for _, c in kept_one] == ["So 12.\n#### 12", "#### 3.0"] and found_one.correct_samples == 4


def test_kept_samples_become_conversations_in_the_pipeline_prompt_format():
    from posttrain.config import read_params

    prompt = read_params(REPO / "params.yaml").prompt
    [conversation] = sft_conversations([(record("5"), "2 + 3 = 5\n#### 5")], prompt)
    messages = conversation["messages"]
    assert messages[-1] == {"role": "assistant", "content": "2 + 3 = 5\n#### 5"}
    assert "What is 5?" in messages[-2]["content"] and messages[-2]["role"] == "user"


# The tiny model answers nothing right, so the stage runs with a stand-in sampler: for
# every other prompt its reference solution (twice, once re-spaced) and two wrong
# answers; for the rest wrong answers only. It records which checkpoint each round sampled.
FAKE_SAMPLER = """
import json, runpy, sys
import posttrain.engine as engine
records = [json.loads(line) for line in open("data/prepared/rl.jsonl")]
sampled_from = []
def sample_groups(cfg, checkpoint_dir, base_dir, seed, prompts, sampling, n, desc):
    sampled_from.append(str(checkpoint_dir))
    groups = []
    for i, record in enumerate(records[: len(prompts)]):
        wrong = record["solution"].rsplit("####", 1)[0] + "#### " + str(int(float(record["answer"])) + 1)
        right = [record["solution"], record["solution"].replace(" ", "  ")] if i % 2 == 0 else [wrong, "no idea"]
        groups.append((right + [wrong, "I cannot say."])[:n])
    return groups, 0.0
engine.sample_groups = sample_groups
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
json.dump(sampled_from, open("sampled_from.json", "w"))
"""


def run_rft(root, overrides):
    write_params(root, {"rft": {"enabled": True, **overrides}})
    script = [str(REPO / "stages/rft.py"), *dvc_arguments("rft", root / "params.yaml")]
    return subprocess.run([sys.executable, "-c", FAKE_SAMPLER, *script], cwd=root, env=stage_env(),
                          capture_output=True, text=True, timeout=900)


def test_rounds_train_on_verified_samples_and_each_samples_the_adapter_the_last_made(sft_workspace, tmp_path):
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    result = run_rft(root, {"rounds": 2, "num_prompts": 8, "samples_per_prompt": 4, "keep_per_prompt": 2,
                            "max_steps": 2, "batch_size": 2, "learning_rate": 5e-3})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((root / "metrics/rft.json").read_text())
    assert metrics["start"] == "sft" and len(metrics["rounds"]) == 2
    for number, summary in enumerate(metrics["rounds"], 1):
        # 4 of the 8 prompts have their solution twice (once re-spaced: one distinct sample) among 4 samples
        assert summary["round"] == number
        assert (summary["prompts"], summary["samples"], summary["correct_samples"]) == (8, 32, 8)
        assert (summary["prompts_solved"], summary["kept"], summary["steps"]) == (4, 4, 2)
        assert summary["sample_accuracy"] == 0.25 and summary["pass_at_k"] == 0.5
    assert metrics["examples"] == 8 and metrics["steps"] == 4
    sampled_from = json.loads((root / "sampled_from.json").read_text())
    assert sampled_from[0].endswith("models/sft") and "round-1" in sampled_from[1]
    start = load_file(root / "models/sft/adapter_model.safetensors")
    trained = load_file(root / "models/rft/adapter_model.safetensors")
    assert start.keys() == trained.keys() and any(not start[k].equal(trained[k]) for k in start)
    log = (root / "metrics/rft/loss.csv").read_text().splitlines()
    assert log[0] == "step,round,loss" and [line.split(",")[:2] for line in log[1:]] == [
        ["1", "1"], ["2", "1"], ["3", "2"], ["4", "2"]]


def test_no_correct_sample_in_any_round_stops_clearly_and_writes_nothing(sft_workspace, tmp_path):
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    write_params(root, {"rft": {"enabled": True, "rounds": 1, "num_prompts": 4, "samples_per_prompt": 2}})
    result = subprocess.run([sys.executable, str(REPO / "stages/rft.py"), *dvc_arguments("rft", root / "params.yaml")],
                            cwd=root, env=stage_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode != 0
    assert "rft: no round found a correct sample in 1 rounds of 2 samples on 4 prompts" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (root / "models/rft").exists() and not (root / "metrics/rft.json").exists()


@pytest.mark.parametrize("stage, start, log, header", [
    ("rft", "sft", "loss.csv", "step,loss"), ("distill", "sft", "loss.csv", "step,loss"),
    ("tool_sft", "sft", "loss.csv", "step,loss"), ("tool_rl", "sft", "log.csv", "step,reward"),
    ("midtrain", "base", "loss.csv", "step,loss")])
def test_a_stage_switched_off_passes_its_start_through(stage, start, log, header, sft_workspace, tmp_path):
    """enabled: false (the default of rft, distill, tool_sft, tool_rl and midtrain): dvc repro still gets every declared
    output: a copy of the start checkpoint, metrics saying it is off, an empty log."""
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    start_key = {"tool_rl": {"start": start}}.get(stage, {})  # its default start, tool_sft, is not built here
    result = run_stage(root, stage, overrides={stage: {"enabled": False, **start_key}})
    assert f"{stage}: off ({stage}.enabled: false)" in result.stdout
    copied = {p.relative_to(root / "models" / stage): p.read_bytes() for p in (root / "models" / stage).rglob("*")
              if p.is_file()}
    assert copied and copied == {p.relative_to(root / "models" / start): p.read_bytes()
                                 for p in (root / "models" / start).rglob("*") if p.is_file()}
    metrics = json.loads((root / f"metrics/{stage}.json").read_text())
    assert metrics["enabled"] is False
    assert (root / f"metrics/{stage}/{log}").read_text() == header + "\n"


@pytest.mark.parametrize("edit, message", [
    ({"keep_per_prompt": 0}, "rft.keep_per_prompt: Input should be greater than or equal to 1"),
    ({"rounds": 0}, "rft.rounds: Input should be greater than or equal to 1"),
])
def test_bad_rft_params_name_the_key(edit, message, tmp_path):
    write_params(tmp_path, {"rft": edit})
    result = subprocess.run([sys.executable, str(REPO / "stages/rft.py"), *dvc_arguments("rft")],
                            cwd=tmp_path, env=stage_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
