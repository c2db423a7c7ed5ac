"""bench/safety_kl_tokens.py: where the safety update moves the start policy's GSM answers."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("safety_kl_tokens", ROOT / "bench/safety_kl_tokens.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("text, kind", [("8", "digit"), (" 12", "digit"), (" +", "operator"), ("=", "operator"),
                                        (" apples", "other"), ("\n", "other"), ("####", "other"), ("3.", "other")])
def test_token_kind_reads_digits_operators_and_the_rest(text, kind):
    assert bench.token_kind(text) == kind


def test_summary_reads_concentration_shares_and_flips():
    rows = [{"kl": 9.0, "token": "8", "kind": "digit", "flipped": True}] + \
           [{"kl": 0.01, "token": " the", "kind": "other", "flipped": False}] * 99 + \
           [{"kl": 0.0, "token": "+", "kind": "operator", "flipped": False}] * 100
    out = bench.summary(rows, top=2)
    assert out["tokens"] == 200
    assert out["mean_kl_per_token"] == pytest.approx(round(9.99 / 200, 5))
    assert out["kl_share_of_top_1_percent"] == pytest.approx(round(9.01 / 9.99, 3))  # the 2 largest of 200: 9 + 0.01
    assert out["token_share_by_kind"] == {"digit": 0.005, "operator": 0.5, "other": 0.495}
    assert out["kl_share_by_kind"]["digit"] == pytest.approx(round(9 / 9.99, 3))
    assert out["top_1_percent_by_kind"] == {"digit": 1, "other": 1} and out["top_1_percent_greedy_flipped"] == 1
    assert [r["token"] for r in out["largest"]] == ["8", " the"]


@pytest.fixture()
def adapters(tiny_workspace, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from posttrain.models import load_causal_lm

    base_dir = tiny_workspace / "models/base"
    for name, seed in (("start", 0), ("trained", 1)):
        torch.manual_seed(seed)
        model = get_peft_model(load_causal_lm(base_dir), LoraConfig(r=4, lora_alpha=8,
                                                                    target_modules=["q_proj", "v_proj"]))
        for key, parameter in model.named_parameters():
            if "lora_" in key:
                torch.nn.init.normal_(parameter, std=0.2)
        model.save_pretrained(tmp_path / name)
    return base_dir, tmp_path / "start", tmp_path / "trained"


def test_kl_is_zero_against_itself_and_positive_against_another_adapter(adapters):
    from posttrain.models import load_causal_lm, load_tokenizer

    base, start, trained = adapters
    tokenizer = load_tokenizer(base)
    start_model = load_causal_lm(base, start)
    conversation = {"prompt": [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many?"}],
                    "completion": [{"role": "assistant", "content": "3 + 4 = 7\n#### 7"}]}
    sequences = [bench.completion_ids(tokenizer, conversation)]
    ids, first = sequences[0]
    start_logps = bench.completion_log_probs(start_model, ids, first)
    assert start_logps.shape[0] == ids.shape[1] - first  # one distribution per completion token
    assert start_logps.exp().sum(-1).sub(1).abs().max() < 1e-4  # each row a distribution
    same = bench.kl_by_token(tokenizer, sequences, start_model, start_model)
    assert len(same) == ids.shape[1] - first and all(abs(r["kl"]) < 1e-6 and not r["flipped"] for r in same)
    assert "".join(r["token"] for r in same).startswith("3 + 4 = 7")
    moved = bench.kl_by_token(tokenizer, sequences, start_model, load_causal_lm(base, trained))
    assert all(r["kl"] >= -1e-6 for r in moved) and sum(r["kl"] for r in moved) > 1e-3


def test_the_command_reads_a_graded_file_and_names_one_without_gsm_answers(adapters, tmp_path):
    base, start, trained = adapters
    graded = tmp_path / "rl.jsonl"
    answers = [{"task": "gsm", "question": f"What is {n} + {n}?", "completion": f"{n} + {n} = {2 * n}\n#### {2 * n}"}
               for n in (2, 5)]
    graded.write_text("".join(json.dumps(answer) + "\n" for answer in answers))
    command = [sys.executable, str(ROOT / "bench/safety_kl_tokens.py"), "--base", str(base), "--start", str(start),
               "--trained", str(trained), "--json", str(tmp_path / "out.json")]
    result = subprocess.run([*command, "--graded", str(graded)], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["tokens"] > 0 and out["mean_kl_per_token"] > 0
    safety_only = tmp_path / "safety.jsonl"
    safety_only.write_text(json.dumps({"task": "safety", "question": "x", "completion": "y"}) + "\n")
    result = subprocess.run([*command, "--graded", str(safety_only)], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode != 0 and "no GSM completions" in result.stderr
