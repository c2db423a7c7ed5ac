"""Stage `sft`: supervised fine-tuning of a LoRA adapter on the SFT split.

    PYTHONPATH=. python -m posttrain.launch stages/sft.py --base models/base --train data/prepared/sft.jsonl \
        --safety data/prepared/safety_train.jsonl --out models/sft --metrics metrics/sft.json --log metrics/sft/loss.csv

Reads params: seed, prompt, sft, runtime, tracking. Trains with TRL's SFTTrainer on
conversations in the base model's own chat template; the loss covers assistant tokens
only, end-of-turn included, so the model learns to answer in format and to stop. With
sft.safety_share > 0, that share of the mix is safety prompts (SAFETY) with their
curated responses, never those that stage safety holds out for its monitor
(safety.held_out_prompts), so its held-out readings stay held out.
Writes the adapter to OUT (with sft.merge, also a standalone merged model in
OUT/merged/), the loss per step to LOG, and METRICS. Under `accelerate launch`
(params launch.*) every process trains on its share of each batch and the main
process alone writes.
"""

import random

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, base="the base model (stage base)", train="SFT problems, JSONL (stage prepare)",
                       safety="safety training prompts with curated responses, JSONL (stage prepare)",
                       out="the adapter directory to write", metrics="metrics JSON to write",
                       log="per-step loss CSV to write")
params = load_params()

from posttrain import resume, runtime, tracking  # noqa: E402
from posttrain.adapters import sort_target_modules  # noqa: E402
from posttrain.generation import chat_messages, gsm_messages  # noqa: E402
from posttrain.io import GSM_RECORD, SAFETY_PROMPT, atomic_dir, read_jsonl, write_json  # noqa: E402
from posttrain.models import checkpoint_dirs, load_tokenizer  # noqa: E402
from posttrain.safety_data import held_out_split  # noqa: E402
from posttrain.training import (  # noqa: E402
    checkpoints_for, fit_to_length, gathered_state_dict, load_base_for_training, lora_config, trainer_arguments,
    write_log_history)

SECTIONS = ["seed", "prompt", "sft", "safety.held_out_prompts"]  # the params this stage reads
cfg = params.sft

# What the stage was given, checked before torch loads and the MLflow run opens: a missing
# or damaged input is one line in a second, and leaves no failed run behind.
if cfg.merge and cfg.quantization != "none":
    raise SystemExit("sft.merge: merging into a quantised base loses precision; "
                     "merge an adapter trained with sft.quantization: none")
checkpoint_dirs(args.base, args.base)  # a missing or damaged base is one line now, not a hub lookup error later
records = read_jsonl(args.train, GSM_RECORD)
# safety prompts with their curated responses, less those stage safety holds out
safety_rows = held_out_split(read_jsonl(args.safety, SAFETY_PROMPT), params.safety.held_out_prompts,
                             params.seed)[0] if cfg.safety_share > 0 else []

threads = runtime.setup(params.runtime, params.seed)
with tracking.stage_run("sft", params, SECTIONS):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(args.base, padding_side="right")
    conversations, too_long = [], 0
    for record in records:
        messages = gsm_messages(record["question"], params.prompt)
        messages.append({"role": "assistant", "content": record["solution"]})
        fitted = fit_to_length(tokenizer, messages, cfg.max_length)
        if fitted is None:
            too_long += 1
        else:
            conversations.append({"messages": fitted})
    if too_long:
        print(f"sft: skipped {too_long} examples whose answer alone exceeds sft.max_length={cfg.max_length}")
    safety_examples = 0
    if cfg.safety_share > 0:  # a seeded sample of the safety rows
        wanted = round(len(conversations) * cfg.safety_share / (1 - cfg.safety_share))
        picked = random.Random(params.seed).sample(safety_rows, min(wanted, len(safety_rows)))
        safety = [fit_to_length(tokenizer, chat_messages(row["prompt"], params.prompt)
                                + [{"role": "assistant", "content": row["response"]}], cfg.max_length)
                  for row in picked]
        conversations += [{"messages": messages} for messages in safety if messages is not None]
        safety_examples = sum(messages is not None for messages in safety)
        if wanted > len(safety_rows):
            print(f"sft: sft.safety_share {cfg.safety_share} asks for {wanted} safety examples; {args.safety} "
                  f"holds {len(safety_rows)}")
    dataset = Dataset.from_list(conversations)

    # Resumable checkpoints (and the trainer's scratch) live outside the DVC output.
    checkpoints = checkpoints_for("sft", params, SECTIONS, conversations, [args.base])
    config = SFTConfig(
        **trainer_arguments(params, cfg, checkpoints),
        max_length=cfg.max_length,
        packing=cfg.packing,
        assistant_only_loss=cfg.assistant_only_loss,
        include_num_input_tokens_seen="non_padding",
        # Batches padded to a multiple of 64 tokens come in a handful of shapes, so the CPU
        # allocator reuses freed blocks: with every length its own shape, resident memory grew
        # by ~15 MB a step (4.4 GiB after 120 steps; 3.1 GiB flat with this).
        pad_to_multiple_of=64,
    )
    trainer = SFTTrainer(
        model=load_base_for_training(args.base, cfg.quantization),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
    )
    run = resume.train(trainer, checkpoints)

    state_dict = gathered_state_dict(trainer)  # every process takes part (FSDP, ZeRO-3)
    if not trainer.accelerator.is_main_process:
        raise SystemExit(0)  # trained its share; the main process writes (and removes the checkpoints)
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainable, _ = model.get_nb_trainable_parameters()
    sort_target_modules(model)  # the same adapter_config.json, so the same DVC hash, on every run
    with atomic_dir(args.out) as out:
        model.save_pretrained(out, state_dict=state_dict)
        if cfg.merge:  # from the saved adapter: under FSDP or ZeRO-3 the model in memory is sharded
            from peft import PeftModel

            merged = PeftModel.from_pretrained(load_base_for_training(args.base, "none"), out).merge_and_unload()
            merged.save_pretrained(out / "merged")
            tokenizer.save_pretrained(out / "merged")
    checkpoints.remove()

    history = write_log_history(trainer.state.log_history, args.log, ["loss", "learning_rate", "grad_norm"])
    tokens = trainer.state.num_input_tokens_seen
    metrics = {
        "examples": len(dataset),
        "safety_examples": safety_examples,
        "skipped_too_long": too_long,
        "steps": trainer.state.global_step,
        "train_loss": run.train_loss,
        "final_loss": history[-1]["loss"] if history else None,
        "train_tokens": tokens,
        # a resumed run: tokens of the whole run over the seconds since the resume
        "tokens_per_second": round(tokens / run.seconds, 1),
        "seconds": run.seconds,
        "resumed_from_step": run.resumed_from_step,
        "trainable_parameters": trainable,
        "threads": threads,
        "processes": trainer.accelerator.num_processes,
    }
    write_json(args.metrics, metrics)
    tracking.log_metrics({k: v for k, v in metrics.items() if k != "final_loss"})
    print(f"sft: {metrics['steps']} steps, loss {metrics['train_loss']}, {metrics['tokens_per_second']} tok/s, "
          f"{metrics['seconds']} s")
