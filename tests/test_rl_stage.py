"""Stage rl on the tiny model: every algorithm family runs and logs what it must."""

import csv
import json
import shutil

import pytest
from safetensors.torch import load_file

from conftest import run_stage

RL_FAST = {"num_prompts": 4, "steps": 2, "prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 12,
           "learning_rate": 1e-2}


@pytest.mark.parametrize("algorithm", ["reinforce_ema", "grpo", "gspo", "rloo"])
def test_rl_stage_trains_and_logs(sft_workspace, tmp_path, algorithm):
    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    run_stage(root, "rl", overrides={"rl": {**RL_FAST, "algorithm": algorithm}})
    metrics = json.loads((root / "metrics/rl.json").read_text())
    assert metrics["algorithm"] == algorithm and metrics["steps"] == 2
    monitors = metrics["monitors"]
    for key in ("flexible_minus_strict", "mean_completion_words", "distinct_2"):
        assert key in monitors["first_step"] and key in monitors["change"]
    with open(root / "metrics/rl/log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(row["reward"] != "" for row in rows)
    before = load_file(root / "models/sft/adapter_model.safetensors")
    after = load_file(root / "models/rl/adapter_model.safetensors")
    assert before.keys() == after.keys()
    if algorithm == "reinforce_ema":
        # all-zero rewards give zero advantages at the start; the baseline is logged per step
        assert {"baseline", "reward_exact", "reward_format", "frac_reward_zero_std"} <= set(rows[0])


def test_unknown_algorithm_is_rejected_before_any_work(sft_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    result = run_stage(root, "rl", check=False, overrides={"rl": {"algorithm": "ppo"}})
    assert result.returncode == 2
    assert result.stderr.startswith("params.yaml: rl.algorithm: Input should be")
