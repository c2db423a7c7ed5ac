"""RL sampling through vLLM on CPU (rl.vllm, colocate): TRL's GRPO trainer with the
engine and weight sync of posttrain/rl.py:colocate_vllm_on_cpu. The sampler must
generate from the weights being trained, not from the checkpoint it started on."""

import json
import shutil

import pytest

from conftest import run_stage
from test_rl_stage import RL_FAST


def _greedy(llm, prompt_ids: list[list[int]], n: int = 8):
    """vLLM's greedy continuation of each prompt: token ids and their log-probabilities."""
    from vllm import SamplingParams

    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids],
                           SamplingParams(max_tokens=n, temperature=0.0, logprobs=0), use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outputs]
    logprobs = [[next(iter(step.values())).logprob for step in o.outputs[0].logprobs] for o in outputs]
    return tokens, logprobs


def _hf_logprobs(model, prompt_ids: list[list[int]], tokens: list[list[int]]) -> list[list[float]]:
    """The trained model's log-probabilities of the same continuations (fp32)."""
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for prompt, continuation in zip(prompt_ids, tokens):
            ids = torch.tensor([prompt + continuation])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
            out.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(continuation)[:, None])[:, 0].tolist())
    return out


@pytest.fixture()
def isolated_process():
    """TRL's colocated vLLM sets RANK/WORLD_SIZE/MASTER_* and starts a process group in
    this process: undo both, or later stage subprocesses would think they are distributed."""
    import os

    saved = dict(os.environ)
    yield
    import torch
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


def test_colocated_vllm_follows_the_trained_weights(sft_workspace, tmp_path, monkeypatch, isolated_process):
    """Train a few GRPO steps at a large learning rate with vLLM colocated (fp32, so its
    numbers equal transformers'). Afterwards vLLM still holds the weights of the last
    sync; the sync must then make vLLM's log-probabilities those of the trained model,
    and they must differ from what it computed before (the weights did move)."""
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.config import GenerationParams, RlParams
    from posttrain.models import load_tokenizer
    from posttrain.rl import colocate_vllm_on_cpu, vllm_arguments
    from posttrain.training import load_base_for_training

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    base, adapter = sft_workspace / "models/base", sft_workspace / "models/sft"
    tokenizer = load_tokenizer(base)
    policy = PeftModel.from_pretrained(load_base_for_training(base, "none"), adapter, is_trainable=True)
    questions = [f"Tom has {i + 2} pens and gets {i + 5} more. How many pens?" for i in range(4)]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in questions])

    def variety_reward(completion_ids, **_):
        # The mean token id: a continuous score that differs between any two different samples, so
        # every group has a non-zero advantage and a gradient (a count of distinct tokens is the
        # same 1.0 for every sample of a near-uniform tiny model, and GRPO would learn nothing).
        return [sum(ids) / len(ids) / 1000 for ids in completion_ids]

    colocate_vllm_on_cpu(GenerationParams(dtype="float32", kv_cache_gib=1))
    config = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=3, learning_rate=1e-2, use_cpu=True,
                        per_device_train_batch_size=4, num_generations=2, max_completion_length=12,
                        temperature=1.0, beta=0.0, report_to=[], logging_steps=1, save_strategy="no",
                        **vllm_arguments(RlParams(vllm=True)))
    trainer = GRPOTrainer(model=policy, reward_funcs=[variety_reward], args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    llm = trainer.vllm_generation.llm
    prompt_ids = [tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"] for row in dataset]

    trainer.vllm_generation.sync_weights()  # the start checkpoint, as TRL pushes it before the first step
    start_tokens, start_logprobs = _greedy(llm, prompt_ids)
    start_hf = _hf_logprobs(trainer.model, prompt_ids, start_tokens)
    assert max(abs(a - b) for x, y in zip(start_logprobs, start_hf) for a, b in zip(x, y)) < 1e-3

    trainer.train()
    stale_tokens, stale_logprobs = _greedy(llm, prompt_ids)  # the weights of the last step's sync
    trainer.vllm_generation.sync_weights()
    synced_tokens, synced_logprobs = _greedy(llm, prompt_ids)
    trained_hf = _hf_logprobs(trainer.model, prompt_ids, synced_tokens)

    def gap(a, b):
        return max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x, y))

    # After the sync vLLM computes what the trained model computes (fp32; its fused
    # kernels round differently, ~4e-3 after these large updates)...
    assert gap(synced_logprobs, trained_hf) < 1e-2
    # ...and what the start weights computed is far from that: training moved the model,
    # so a sampler left on the start weights would fail the check above.
    assert synced_tokens != start_tokens or gap(synced_logprobs, start_logprobs) > 0.2
    assert gap(start_logprobs, _hf_logprobs(trainer.model, prompt_ids, start_tokens)) > 0.2
    # The sync is what moved it: before it, vLLM still held older weights.
    assert (stale_tokens, stale_logprobs) != (synced_tokens, synced_logprobs)


def test_rl_stage_with_vllm_sampling(sft_workspace, tmp_path):
    """The rl stage end to end with rl.vllm (the default): TRL's GRPO samples through
    colocated vLLM, trains, and writes its adapter and metrics."""
    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    reward = {"exact": 1.0, "format": 0.1, "length": 0.5}
    result = run_stage(root, "rl", overrides={"rl": {**RL_FAST, "algorithm": "grpo", "reward": reward, "vllm": True,
                                                     "vllm_importance_sampling": True},
                                              "generation": {"dtype": "float32"}})
    metrics = json.loads((root / "metrics/rl.json").read_text())
    assert metrics["sampler"] == "vllm" and metrics["steps"] == 2
    # vLLM's sampling log-probs agree with the trainer's: the sampler holds the trained weights.
    assert metrics["sampling_logp_difference_max"] < 1e-2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("algorithm", ["reinforce_ema"])
def test_reinforce_ema_with_vllm_sampling(sft_workspace, tmp_path, algorithm):
    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    reward = {"exact": 1.0, "format": 0.1, "length": 0.5}
    run_stage(root, "rl", overrides={"rl": {**RL_FAST, "algorithm": algorithm, "reward": reward, "vllm": True},
                                     "generation": {"dtype": "float32"}})
    metrics = json.loads((root / "metrics/rl.json").read_text())
    assert metrics["sampler"] == "vllm" and metrics["algorithm"] == algorithm
