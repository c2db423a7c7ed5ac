"""Stage rl on the tiny model: every algorithm family runs and logs what it must."""

import csv
import json
import shutil

import pytest
from safetensors.torch import load_file

from conftest import copy_with_crafted_pairs, run_stage

RL_FAST = {"num_prompts": 4, "steps": 2, "prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 12,
           "learning_rate": 1e-2}


@pytest.mark.parametrize("algorithm", ["reinforce_ema", "ppo", "grpo", "gspo", "rloo"])
def test_rl_stage_trains_and_logs(sft_workspace, tmp_path, algorithm):
    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    # The tiny model never answers right, so exact and format rewards are all 0; a
    # length penalty gives rewards that differ between samples, hence a gradient.
    reward = {"exact": 1.0, "format": 0.1, "length": 0.5}
    run_stage(root, "rl", overrides={"rl": {**RL_FAST, "algorithm": algorithm, "reward": reward}})
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
    modules = json.loads((root / "models/rl/adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules) and len(modules) > 1  # the same file under any hash seed
    with open(root / "metrics/rl/held_out.csv") as f:
        held_out_rows = list(csv.DictReader(f))
    if algorithm not in ("reinforce_ema", "ppo"):
        # Every sample of the tiny model runs to the token limit, so each group's rewards
        # are equal: group-normalised advantages are 0, and the monitor must say so.
        assert all(float(row["frac_reward_zero_std"]) == 1.0 for row in rows)
    else:
        # reinforce_ema: the EMA baseline starts at 0, so even equal rewards give a non-zero
        # advantage. ppo: the value head starts at 0 and the score lands on the last token,
        # so GAE's advantages differ along the completion and whitening keeps them non-zero.
        assert any(not before[k].equal(after[k]) for k in before), "RL did not change the adapter"
        assert {"reward_exact", "reward_format", "frac_reward_zero_std"} <= set(rows[0])
        if algorithm == "reinforce_ema":
            assert float(rows[1]["baseline"]) != 0.0  # moved after the first batch
        else:
            assert {"value_loss", "policy_clip_fraction", "approx_kl"} <= set(rows[0])
            assert float(rows[0]["value_loss"]) > 0.0  # V = 0 against a non-zero return
            assert not any(k.startswith("value") for k in after), "the value head is not part of the adapter"
    # The held-out monitor (smoke profile: 4 prompts, every step), every algorithm: before
    # step 1 and after each step, on prompts the training never drew.
    assert [row["step"] for row in held_out_rows] == ["0", "1", "2"]
    assert metrics["held_out"]["prompts"] == 4
    assert set(metrics["held_out"]["accuracy_by_step"]) == {"0", "1", "2"}
    assert all(0.0 <= float(row["held_out_accuracy"]) <= 1.0 for row in held_out_rows)


def test_unknown_algorithm_is_rejected_before_any_work(sft_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    result = run_stage(root, "rl", check=False, overrides={"rl": {"algorithm": "a2c"}})
    assert result.returncode == 2
    assert result.stderr.startswith("params.yaml: rl.algorithm: Input should be")


def rl_log(sft_workspace, root, **rl) -> list[dict]:
    """Stage rl on a copy of the SFT workspace with RL_FAST and a length-penalty reward
    (the tiny model's only non-zero reward); its per-step log rows."""
    shutil.copytree(sft_workspace, root)
    reward = {"exact": 1.0, "format": 0.1, "length": 0.5}
    run_stage(root, "rl", overrides={"rl": {**RL_FAST, **rl, "reward": reward}})
    with open(root / "metrics/rl/log.csv") as f:
        return list(csv.DictReader(f))


def test_reinforce_ema_with_kl_to_the_starting_adapter(sft_workspace, tmp_path):
    root = tmp_path / "ws"
    rows = rl_log(sft_workspace, root, algorithm="reinforce_ema", beta=0.1)
    assert abs(float(rows[0]["kl"])) < 1e-6  # the first step's policy is the starting policy itself
    assert float(rows[1]["kl"]) != 0.0  # after one update the policy has moved away from "ref"
    saved = load_file(root / "models/rl/adapter_model.safetensors")
    assert not any(".ref." in k for k in saved), "only the trained adapter is saved"


def test_ppo_value_head_learns_the_return(sft_workspace, tmp_path):
    # Every sample of the tiny model runs to the token limit, so every return is the same
    # -0.5 (the length penalty): the value head, starting at 0, must learn it.
    value_loss = [float(row["value_loss"]) for row in rl_log(sft_workspace, tmp_path / "ws", algorithm="ppo", steps=6)]
    assert len(value_loss) == 6 and value_loss[-1] < 0.5 * value_loss[0], value_loss


@pytest.mark.parametrize("algorithm", ["reinforce_ema", "grpo"])
def test_reward_model_term_enters_the_reward(sft_workspace, tmp_path, algorithm):
    root = copy_with_crafted_pairs(sft_workspace, tmp_path / "ws", n_train=6, n_held_out=2)
    run_stage(root, "reward_model", overrides={"reward_model": {"max_steps": 2, "batch_size": 4}})
    reward = {"exact": 1.0, "format": 0.1, "reward_model": 0.5}
    run_stage(root, "rl", overrides={"rl": {**RL_FAST, "algorithm": algorithm, "reward": reward}})
    with open(root / "metrics/rl/log.csv") as f:
        rows = list(csv.DictReader(f))
    column = "reward_model_score" if algorithm == "reinforce_ema" else "rewards/reward_model/mean"
    # exact and format are 0 for the tiny model, so the whole reward is 0.5 * the RM score
    for row in rows:
        assert float(row[column]) != 0.0
        assert float(row["reward"]) == pytest.approx(0.5 * float(row[column]), abs=1e-4)
