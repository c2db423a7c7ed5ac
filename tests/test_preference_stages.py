"""Stages preferences, reward_model, dpo and best_of_n on the tiny model."""

import json

import pytest
from safetensors.torch import load_file

from posttrain.io import read_jsonl
from posttrain.preferences import REFERENCE_VS_SAMPLED

from conftest import run_stage

from conftest import FAST, copy_with_crafted_pairs


def test_preferences_pair_reference_against_wrong_samples_when_all_are_wrong(sft_workspace, tmp_path):
    import shutil

    # The tiny model answers nothing right, so every group is all-wrong: the fallback decides.
    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    sft_workspace = root
    run_stage(sft_workspace, "preferences", overrides={"preferences": {
        "num_prompts": 8, "samples_per_prompt": 2, "sampling": {"max_new_tokens": 16}}})
    metrics = json.loads((sft_workspace / "metrics/preferences.json").read_text())
    assert metrics["prompts"] == 8 and metrics["samples"] == 16
    assert metrics["groups"] == {"all_wrong": 8}
    pairs = read_jsonl(sft_workspace / "data/preferences/train.jsonl") + read_jsonl(
        sft_workspace / "data/preferences/held_out.jsonl")
    assert len(pairs) == metrics["pairs"]["train"] + metrics["pairs"]["held_out"] > 0
    by_source = metrics["pairs_by_source"]
    assert set(by_source) == {REFERENCE_VS_SAMPLED} and sum(by_source.values()) == len(pairs)
    references = {r["id"]: r["solution"] for r in read_jsonl(sft_workspace / "data/prepared/rl.jsonl")}
    for pair in pairs:
        assert pair["chosen"] != pair["rejected"]
        if pair["source"] == REFERENCE_VS_SAMPLED:
            assert pair["chosen"] == references[pair["prompt_id"]]


def test_preferences_with_skip_fallbacks_and_no_contrast_fails_clearly(sft_workspace, tmp_path):
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    (root / "data/preferences").mkdir(parents=True, exist_ok=True)
    (root / "data/preferences/train.jsonl").write_text("previous output\n")
    result = run_stage(root, "preferences", check=False, overrides={"preferences": {
        "num_prompts": 4, "samples_per_prompt": 2, "sampling": {"max_new_tokens": 8},
        "when_all_wrong": "skip", "when_all_correct": "skip"}})
    assert result.returncode != 0
    assert "preferences: only 0 pairs from 4 prompts" in result.stderr
    # A failed stage leaves the previous output as it was, never a half-written one.
    assert (root / "data/preferences/train.jsonl").read_text() == "previous output\n"


def test_reward_model_trained_on_crafted_pairs_ranks_held_out_chosen_higher(sft_workspace, tmp_path):
    root = copy_with_crafted_pairs(sft_workspace, tmp_path / "ws", n_train=32, n_held_out=12)
    run_stage(root, "reward_model", overrides={"reward_model": {**FAST, "max_steps": 24}})
    metrics = json.loads((root / "metrics/reward_model.json").read_text())
    assert metrics["held_out_pairs"] == 12
    assert metrics["held_out_accuracy"] >= 0.9, metrics
    assert metrics["held_out_mean_margin"] > 0
    histogram = (root / "metrics/reward_model/scores.csv").read_text().splitlines()
    assert histogram[0] == "bin,chosen,rejected" and len(histogram) == 21
    assert (root / "models/reward_model/adapter_model.safetensors").is_file()


def test_dpo_stage_trains_the_sft_adapter_further(sft_workspace, tmp_path):
    root = copy_with_crafted_pairs(sft_workspace, tmp_path / "ws", n_train=12)
    run_stage(root, "dpo", overrides={"dpo": {**FAST, "max_steps": 3}})
    metrics = json.loads((root / "metrics/dpo.json").read_text())
    assert metrics["steps"] == 3 and metrics["pairs"] == 12
    before = load_file(root / "models/sft/adapter_model.safetensors")
    after = load_file(root / "models/dpo/adapter_model.safetensors")
    assert before.keys() == after.keys()  # the policy adapter only, no `ref` copy
    assert any(not before[k].equal(after[k]) for k in before), "DPO did not change the adapter"
    config = json.loads((root / "models/dpo/adapter_config.json").read_text())
    assert config["r"] == json.loads((root / "models/sft/adapter_config.json").read_text())["r"]
    # Saved sorted, not in the hash order of PEFT's set: the same file under any hash seed.
    assert config["target_modules"] == sorted(config["target_modules"]) and len(config["target_modules"]) > 1


def completion_margin(root, checkpoint: str, pairs: list[dict]) -> float:
    """Mean over pairs of the checkpoint's per-token log-prob of the chosen completion
    minus that of the rejected one (length-normalised, so comparable across objectives)."""
    scored = completion_logprobs(root, checkpoint, pairs)
    return sum(chosen - rejected for chosen, rejected in scored) / len(scored)


def completion_logprobs(root, checkpoint: str, pairs: list[dict]) -> list[tuple[float, float]]:
    """(chosen, rejected) mean per-token log-probs of each pair under the checkpoint."""
    import torch

    from posttrain.config import read_params
    from posttrain.models import checkpoint_dirs, load_causal_lm, load_tokenizer
    from posttrain.preferences import preference_example

    params = read_params(root / "params.yaml")
    base_dir, adapter_dir = checkpoint_dirs(root / "models" / checkpoint, root / "models/base")
    model, tokenizer = load_causal_lm(base_dir, adapter_dir).eval(), load_tokenizer(base_dir)

    def mean_logprob(prompt: list[dict], completion: list[dict]) -> float:
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1]
        logprobs = logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        return logprobs[len(prompt_ids) - 1:].mean().item()

    examples = [preference_example(pair, params.prompt) for pair in pairs]
    return [(mean_logprob(e["prompt"], e["chosen"]), mean_logprob(e["prompt"], e["rejected"])) for e in examples]


def test_sft_weight_pulls_the_chosen_side_up(sft_workspace, tmp_path):
    """dpo.sft_weight adds an NLL loss on the chosen completions (RPO): the same DPO run
    with it ends with the chosen side more likely than without it. Plain DPO may lower
    both sides (it only needs the margin), which is what the NLL term is there to stop."""
    chosen = {}
    for weight in (0.0, 1.0):
        root = copy_with_crafted_pairs(sft_workspace, tmp_path / f"ws{weight}", n_train=12)
        run_stage(root, "dpo", overrides={"dpo": {**FAST, "max_steps": 8, "sft_weight": weight}})
        pairs = read_jsonl(root / "data/preferences/train.jsonl")
        chosen[weight] = sum(c for c, _ in completion_logprobs(root, "dpo", pairs)) / len(pairs)
    assert chosen[1.0] > chosen[0.0] + 0.05, chosen


@pytest.mark.parametrize("objective", ["kto", "orpo", "simpo"])
def test_each_preference_objective_moves_the_sft_adapter_towards_the_chosen_side(sft_workspace, tmp_path, objective):
    root = copy_with_crafted_pairs(sft_workspace, tmp_path / "ws", n_train=12)
    run_stage(root, "dpo", overrides={"dpo": {**FAST, "max_steps": 4, "objective": objective}})
    metrics = json.loads((root / "metrics/dpo.json").read_text())
    assert metrics["objective"] == objective and metrics["steps"] == 4 and metrics["pairs"] == 12
    # A figure the trainer does not log is null, not "" (KTO logs no pairwise accuracy).
    assert all(metrics[key] is None or isinstance(metrics[key], float)
               for key in ("final_reward_accuracy", "final_reward_margin"))
    before = load_file(root / "models/sft/adapter_model.safetensors")
    after = load_file(root / "models/dpo/adapter_model.safetensors")
    assert before.keys() == after.keys()  # the policy adapter only, no `ref` copy
    assert any(not before[k].equal(after[k]) for k in before), f"{objective} did not change the adapter"
    pairs = read_jsonl(root / "data/preferences/train.jsonl")
    start, trained = completion_margin(root, "sft", pairs), completion_margin(root, "dpo", pairs)
    assert trained > start + 0.1, f"{objective}: chosen-minus-rejected log-prob {start:.3f} -> {trained:.3f}"
    log = (root / "metrics/dpo/loss.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and len(log) == 1 + 4  # a row per step (logging_steps 1)


def test_best_of_n_reports_all_selection_rules(sft_workspace, tmp_path):
    root = copy_with_crafted_pairs(sft_workspace, tmp_path / "ws", n_train=8, n_held_out=4)
    run_stage(root, "reward_model", overrides={"reward_model": {**FAST, "max_steps": 2}})
    run_stage(root, "evaluate@sft")
    run_stage(root, "best_of_n", overrides={"best_of_n": {"n": 3, "limit": 6, "sampling": {"max_new_tokens": 12}}})
    metrics = json.loads((root / "metrics/best_of_n.json").read_text())
    assert metrics["n_problems"] == 6 and metrics["n_samples"] == 3
    for key in ("reward_model_top_pick_accuracy", "majority_vote_accuracy", "greedy_accuracy"):
        assert 0.0 <= metrics[key] <= metrics["pass_at_n"] or key == "greedy_accuracy"
