"""What every training stage shares: the base model loaded for LoRA (optionally
quantised), the LoRA config, TRL's common arguments, saving the trained adapter, and
the loss history as a DVC plot.

Resumable checkpoints: posttrain/resume.py.

Under `accelerate launch` (posttrain/launch.py) every process runs the whole stage
script and trains; only the main process writes outputs (posttrain/io.py refuses the
others), and saving is a step all processes take (see save_adapter).
"""

from __future__ import annotations

import csv
from io import StringIO
from pathlib import Path

from posttrain.adapters import sort_target_modules
from posttrain.config import LoraParams, Params, TrainParams, sections_of
from posttrain.io import atomic_dir, write_text_atomic
from posttrain.resume import Checkpoints
from posttrain.runtime import use_bf16


def lora_config(lora: LoraParams, task_type: str = "CAUSAL_LM"):
    """LoRA as params say; task_type SEQ_CLS also trains the new score head in full."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        target_parameters=lora.target_parameters or None,
        # Never adapted, always frozen: a MoE router trained by LoRA destabilises expert load.
        exclude_modules=lora.exclude_modules or None,
        bias="none",
        task_type=task_type,
    )


def _disable_cpu_bf16_path(model) -> None:
    """bitsandbytes 0.50 CPU trap: after any eval-mode no_grad forward, Linear4bit
    switches to an AVX512-bf16 inference path whose weights training cannot use.
    Turning the path off on every Linear4bit keeps training working on CPU."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_base_for_training(base_dir: str | Path, quantization: str):
    """The base model for LoRA training: fp32, or 4-/8-bit through bitsandbytes (QLoRA)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if quantization == "none":
        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    from peft import prepare_model_for_kbit_training

    if quantization == "4bit":
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                 bnb_4bit_compute_dtype=torch.float32, bnb_4bit_use_double_quant=True)
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=bnb, dtype=torch.float32)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if quantization == "4bit" and not torch.cuda.is_available():
        _disable_cpu_bf16_path(model)
    return model


def score_only_labelled_positions_on_cpu() -> None:
    """Make TRL's fused LM head project only the positions that carry a label, on CPU too.

    TRL's SFT, DPO, GRPO and RLOO trainers compute log-probs through a fused, chunked LM
    head (trl.trainer.utils.add_fused_lm_head). On Triton devices it projects only the
    positions whose label is not -100; elsewhere every position, so that XLA devices see
    one tile shape (no recompilation). On CPU that runs the 49k-word head over every prompt
    and padding token: on SmolLM2-135M, prompts are most of each sequence and the head
    about a fifth of a token's compute. Eager CPU compiles nothing, so it takes the compact
    path here too (same log-probs: tests/test_training.py). Idempotent."""
    import trl.trainer.utils as trl_utils
    from trl.kernels.chunked_logprob import _use_triton

    if getattr(trl_utils._use_triton, "posttrain_compact_on_cpu", False):
        return

    def compact_positions(device) -> bool:
        return device.type == "cpu" or _use_triton(device)

    compact_positions.posttrain_compact_on_cpu = True
    trl_utils._use_triton = compact_positions


def checkpoints_for(stage: str, params: Params, sections: list[str], examples: list,
                    inputs: list[str | Path]) -> Checkpoints:
    """Where `stage` keeps resumable checkpoints, keyed by the params sections it reads,
    its training examples and the files of the checkpoint it starts from (inputs)."""
    material = {"params": sections_of(params, sections, mode="json"), "examples": examples}
    return Checkpoints.for_run(params.resume, stage, material, inputs)


def trainer_arguments_basic(params: Params, checkpoints: Checkpoints, learning_rate: float, max_steps: int | None,
                            logging_steps: int, max_grad_norm: float, bf16: bool) -> dict:
    """Arguments every TRL config of ours shares (SFTConfig, DPOConfig, GRPOConfig...).
    The trainer writes resumable checkpoints (and its scratch) under checkpoints.directory;
    the stage saves the final adapter itself, atomically, into its DVC output."""
    import torch

    score_only_labelled_positions_on_cpu()  # every TRL trainer of ours is built from these arguments
    on_gpu = torch.cuda.is_available()
    return dict(
        **checkpoints.trainer_arguments(),
        learning_rate=learning_rate,
        max_steps=max_steps or -1,
        logging_steps=logging_steps,
        max_grad_norm=max_grad_norm,
        seed=params.seed,
        report_to=["mlflow"],  # logs into the stage's open MLflow run
        use_cpu=not on_gpu,
        # Autocast to bf16 (weights and optimiser stay fp32). On a CPU with avx512_bf16 a
        # SmolLM2-135M LoRA step (16 x 160 tokens) took 11 s against 16-22 s in fp32;
        # on a CPU without it, bf16 is emulated (an SFT step 100-110 s against 6-9 s in
        # fp32 on a 2-core AVX2 machine): fp32 there.
        bf16=use_bf16(bf16, "training bf16"),
        dataloader_num_workers=0,
        # TRL configs turn checkpointing on by default; it recomputes activations to
        # save memory a small model does not need, at a large cost in speed.
        gradient_checkpointing=False,
    )


def trainer_arguments(params: Params, train: TrainParams, checkpoints: Checkpoints) -> dict:
    """trainer_arguments_basic plus the optimisation knobs of a TrainParams section."""
    arguments = trainer_arguments_basic(params, checkpoints, train.learning_rate, train.max_steps,
                                        train.logging_steps, train.max_grad_norm, train.bf16)
    arguments["gradient_checkpointing"] = train.gradient_checkpointing
    return dict(
        **arguments,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a float below 1 is a ratio of total steps
        num_train_epochs=train.epochs,
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        weight_decay=train.weight_decay,
    )


def process_state():
    """accelerate's view of this process (rank, world size), set up the way the Trainer
    will set it up, so work before training (sampling, pair building) can run on the
    main process alone. cpu= must match the Trainer's use_cpu, or CPU gets no process group."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def broadcast_from_main(value):
    """The main process's `value` on every process (a no-op in one process): work done
    before training on the main process alone (sampling, pair building) reaches the
    others without a round trip through a file."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def gathered_state_dict(trainer) -> dict | None:
    """The trained weights whole, for save_pretrained(state_dict=...), when processes hold
    shards of them (FSDP, DeepSpeed ZeRO-3); None when every process holds them whole.
    Gathering is collective: every process must call this, not only the one that saves."""
    if trainer.is_deepspeed_enabled:
        return trainer.accelerator.get_state_dict(trainer.deepspeed)
    if trainer.is_fsdp_enabled:
        return trainer.accelerator.get_state_dict(trainer.model)
    return None


def save_adapter(trainer, path: str | Path, checkpoints: Checkpoints | None = None, **save_options) -> None:
    """Save the trainer's adapter to `path` atomically. Call it on every process: the
    weights are gathered from all of them and the main process writes. save_options go
    to save_pretrained (e.g. selected_adapters=["default"]). Then the run's resumable
    checkpoints, if given, are removed: the stage's output now holds the result."""
    state_dict = gathered_state_dict(trainer)
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        sort_target_modules(model)  # the same adapter_config.json, so the same DVC hash, on every run
        with atomic_dir(path) as out:
            model.save_pretrained(out, state_dict=state_dict, **save_options)
        if checkpoints:
            checkpoints.remove()


def write_rows_csv(path: str | Path, rows: list[dict]) -> None:
    """Rows as a CSV, written atomically: DVC plots read these. Columns are every key
    seen, in first-seen order (trainer logs can gain keys after the first step)."""
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["step"]
    text = StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def write_log_history(log_history: list[dict], path: str | Path, keys: list[str]) -> list[dict]:
    """Trainer's per-step logs as a CSV that dvc.yaml declares as a plot."""
    rows = [{"step": entry["step"], **{k: entry.get(k, "") for k in keys}}
            for entry in log_history if any(k in entry for k in keys)]
    write_rows_csv(path, rows or [{"step": "", **{k: "" for k in keys}}])
    return rows


def fit_to_length(tokenizer, conversation: list[dict], max_length: int) -> list[dict] | None:
    """Shorten the user turn so the whole conversation fits in max_length tokens.

    Truncating from the end (TRL's default) would cut the answer and its end-of-turn
    token, the very tokens SFT learns from; we drop words from the start of the user
    turn instead. None when even the answer alone does not fit.
    """
    def length(messages):
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    if length(conversation) <= max_length:
        return conversation
    user_index = max(i for i, m in enumerate(conversation) if m["role"] == "user")
    words = conversation[user_index]["content"].split(" ")
    low, high = 1, len(words)  # binary search: the fewest words to drop
    best = None
    while low <= high:
        drop = (low + high) // 2
        trial = [dict(m) for m in conversation]
        trial[user_index]["content"] = "... " + " ".join(words[drop:])
        if length(trial) <= max_length:
            best, high = trial, drop - 1
        else:
            low = drop + 1
    return best


def release_freed_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim); False where
    there is no glibc. A training step frees its activations, but glibc keeps most of
    what it freed inside its heap, in holes the next step's differently shaped tensors
    fit only partly: resident memory then climbs step after step."""
    import ctypes
    import ctypes.util

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # no glibc: macOS, musl
        return False
    trim(0)
    return True


def freed_memory_callback():
    """A TrainerCallback that calls release_freed_memory() after every forward/backward
    pass (gradient accumulation's too) and every evaluation. Measured on stage rl (10 GRPO
    steps in 4 passes each): peak resident 4.2 -> 3.5 GiB, between passes 2.2-2.5 GiB
    instead of a climb to 4.1; trimmed once a step only, stage safety's four passes of a
    step still climbed 3.6 -> 4.4 GiB. The next pass pays page faults for what it takes
    back: 220 s against 240 s for rl's 10 steps, within this machine's drift."""
    from transformers import TrainerCallback

    class ReleaseFreedMemory(TrainerCallback):
        def on_substep_end(self, args, state, control, **kwargs):
            release_freed_memory()

        def on_step_end(self, args, state, control, **kwargs):
            release_freed_memory()

        def on_evaluate(self, args, state, control, **kwargs):
            release_freed_memory()

    return ReleaseFreedMemory()
