"""Stage distill on the tiny model: the student's adapter moves towards the teacher."""

import json
import shutil
import subprocess
import sys

from safetensors.torch import load_file

from conftest import FAST, REPO, dvc_arguments, run_stage, stage_env, write_params


def teacher_student_kl(root, student: str, teacher: str, n: int = 6) -> float:
    """Mean per-token KL(teacher || student) over the first n SFT conversations' tokens."""
    import torch

    from posttrain.config import read_params
    from posttrain.distill import load_teacher
    from posttrain.generation import gsm_messages
    from posttrain.io import read_jsonl
    from posttrain.models import checkpoint_dirs, load_causal_lm, load_tokenizer

    params = read_params(root / "params.yaml")
    base_dir, adapter_dir = checkpoint_dirs(root / "models" / student, root / "models/base")
    student_model = load_causal_lm(base_dir, adapter_dir).eval()
    teacher_model = load_teacher(root / "models" / teacher, base_dir).eval()
    tokenizer = load_tokenizer(base_dir)
    total, tokens = 0.0, 0
    for record in read_jsonl(root / "data/prepared/sft.jsonl")[:n]:
        messages = gsm_messages(record["question"], params.prompt) + [{"role": "assistant",
                                                                         "content": record["solution"]}]
        ids = torch.tensor([tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]])
        with torch.no_grad():
            p = teacher_model(ids).logits.log_softmax(-1)
            q = student_model(ids).logits.log_softmax(-1)
        total += (p.exp() * (p - q)).sum().item()
        tokens += ids.shape[1]
    return total / tokens


def test_on_policy_distillation_brings_the_student_closer_to_the_teacher(sft_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    # teacher: the base model itself; student: the SFT adapter, which moved away from it
    run_stage(root, "distill", overrides={"distill": {**FAST, "teacher": "base", "max_steps": 4,
                                                      "num_prompts": 4, "max_new_tokens": 16}})
    metrics = json.loads((root / "metrics/distill.json").read_text())
    assert (metrics["method"], metrics["student"], metrics["teacher"], metrics["steps"]) == (
        "on_policy", "sft", "base", 4)
    before = load_file(root / "models/sft/adapter_model.safetensors")
    after = load_file(root / "models/distill/adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not before[k].equal(after[k]) for k in before)
    start, trained = teacher_student_kl(root, "sft", "base"), teacher_student_kl(root, "distill", "base")
    assert trained < start, f"KL(teacher || student) {start:.5f} -> {trained:.5f}"
    assert (root / "metrics/distill/loss.csv").read_text().startswith("step,loss")


def test_teacher_traces_fine_tune_the_student_on_every_teacher_sample(sft_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    run_stage(root, "distill", overrides={"distill": {**FAST, "method": "teacher_traces", "teacher": "base",
                                                      "num_prompts": 4, "samples_per_prompt": 2, "max_steps": 2,
                                                      "sampling": {"max_new_tokens": 16}}})
    metrics = json.loads((root / "metrics/distill.json").read_text())
    assert metrics["method"] == "teacher_traces" and metrics["prompts"] == 4
    assert metrics["teacher_samples"] + metrics["skipped_too_long"] <= 8 and metrics["teacher_samples"] > 0
    assert 0.0 <= metrics["teacher_sample_accuracy"] <= 1.0 and metrics["steps"] == 2
    before = load_file(root / "models/sft/adapter_model.safetensors")
    after = load_file(root / "models/distill/adapter_model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before)


def test_a_hub_teacher_for_teacher_traces_is_refused_before_any_work(tmp_path):
    write_params(tmp_path, {"distill": {"method": "teacher_traces", "teacher_model": "HuggingFaceTB/SmolLM2-1.7B"}})
    result = subprocess.run([sys.executable, str(REPO / "stages/distill.py"), *dvc_arguments("distill")],
                            cwd=tmp_path, env=stage_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("distill.teacher_model: 'HuggingFaceTB/SmolLM2-1.7B' is not a local directory")
