"""Continued SFT of a checkpoint's LoRA adapter on given conversations: what stages rft
(the policy's own verified samples) and distill (a teacher's samples) share."""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.config import Params, TrainParams
from posttrain.errors import UserError


def continue_sft(params: Params, cfg: TrainParams, section: str, conversations: list[dict], base_dir: Path,
                 adapter_dir: Path, out_dir: Path, stage: str, sections: list[str],
                 chat_template: str | None = None, tools: list[dict] | None = None):
    """Continue training the LoRA adapter in adapter_dir on the conversations (loss on
    the assistant turns only, as stage sft), with the knobs of params section `section`
    (cfg), and save it to out_dir. Returns the trainer's log history, its steps, the run
    (posttrain/resume.py) and how many conversations were left out because even their
    answer exceeds cfg.max_length. `stage` and `sections` key the resumable checkpoints.
    chat_template (with {% generation %} markers) replaces the model's own; tools (JSON
    schemas) are offered in every conversation, as the template writes them."""
    from datasets import Dataset
    from peft import PeftModel
    from trl import SFTConfig, SFTTrainer

    from posttrain import resume
    from posttrain.models import load_tokenizer
    from posttrain.training import (checkpoints_for, fit_to_length, load_base_for_training, save_adapter,
                                    trainer_arguments)

    tokenizer = load_tokenizer(base_dir, padding_side="right")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    # The tools' schemas take the same tokens in every conversation: fit the rest in what they leave.
    tools_length = _tools_length(tokenizer, conversations[0]["messages"], tools) if tools and conversations else 0
    fitted = [fit_to_length(tokenizer, c["messages"], cfg.max_length - tools_length) for c in conversations]
    conversations = [{"messages": messages, **({"tools": json.dumps(tools)} if tools else {})}
                     for messages in fitted if messages is not None]
    if not conversations:
        raise UserError(f"{section}.max_length: none of the {len(fitted)} samples fits in {cfg.max_length} tokens")
    policy = PeftModel.from_pretrained(load_base_for_training(base_dir, "none"), adapter_dir, is_trainable=True)
    checkpoints = checkpoints_for(stage, params, sections, conversations, [base_dir, adapter_dir])
    arguments = trainer_arguments(params, cfg, checkpoints)
    trainer = SFTTrainer(model=policy, processing_class=tokenizer, train_dataset=Dataset.from_list(conversations),
                         args=SFTConfig(**arguments, max_length=cfg.max_length, assistant_only_loss=True))
    run = resume.train(trainer, checkpoints)
    save_adapter(trainer, out_dir, checkpoints)
    return trainer.state.log_history, trainer.state.global_step, run, len(fitted) - len(conversations)


def _tools_length(tokenizer, messages: list[dict], tools: list[dict]) -> int:
    def length(**extra):
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **extra)["input_ids"])

    return length(tools=tools) - length()


def pass_through(stage: str, checkpoint: str | Path, out: str | Path, metrics_path: str | Path,
                 log_path: str | Path, metrics: dict, log_header: str = "step,loss") -> None:
    """A stage that is switched off (its `enabled: false`): OUT is a copy of the checkpoint it
    would have started from, METRICS says so, LOG has a header and no rows. Nothing heavy
    is imported, and DVC still finds every output it declares."""
    import shutil

    from posttrain.io import atomic_dir, write_json, write_text_atomic

    with atomic_dir(out) as target:
        shutil.copytree(checkpoint, target, dirs_exist_ok=True)
    write_text_atomic(log_path, log_header + "\n")
    write_json(metrics_path, {"enabled": False, **metrics})
    print(f"{stage}: off ({stage}.enabled: false); {out} is a copy of {checkpoint}")
