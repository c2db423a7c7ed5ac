"""Continued SFT of a checkpoint's LoRA adapter on given conversations: what stages rft
(the policy's own verified samples) and distill (a teacher's samples) share."""

from __future__ import annotations

from pathlib import Path

from posttrain.config import Params, TrainParams
from posttrain.errors import UserError


def continue_sft(params: Params, cfg: TrainParams, section: str, conversations: list[dict], base_dir: Path,
                 adapter_dir: Path, out_dir: Path, stage: str, sections: list[str]):
    """Continue training the LoRA adapter in adapter_dir on the conversations (loss on
    the assistant turn only, as stage sft), with the knobs of params section `section`
    (cfg), and save it to out_dir. Returns the trainer's log history, its steps, the run
    (posttrain/resume.py) and how many conversations were left out because even their
    answer exceeds cfg.max_length. `stage` and `sections` key the resumable checkpoints."""
    from datasets import Dataset
    from peft import PeftModel
    from trl import SFTConfig, SFTTrainer

    from posttrain import resume
    from posttrain.models import load_tokenizer
    from posttrain.training import (checkpoints_for, fit_to_length, load_base_for_training, save_adapter,
                                    trainer_arguments)

    tokenizer = load_tokenizer(base_dir, padding_side="right")
    fitted = [fit_to_length(tokenizer, c["messages"], cfg.max_length) for c in conversations]
    conversations = [{"messages": messages} for messages in fitted if messages is not None]
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


def pass_through(stage: str, checkpoint: str | Path, out: str | Path, metrics_path: str | Path,
                 log_path: str | Path, metrics: dict) -> None:
    """A stage that is switched off (its `enabled: false`): OUT is a copy of the checkpoint it
    would have started from, METRICS says so, LOG has a header and no rows. Nothing heavy
    is imported, and DVC still finds every output it declares."""
    import shutil

    from posttrain.io import atomic_dir, write_json, write_text_atomic

    with atomic_dir(out) as target:
        shutil.copytree(checkpoint, target, dirs_exist_ok=True)
    write_text_atomic(log_path, "step,loss\n")
    write_json(metrics_path, {"enabled": False, **metrics})
    print(f"{stage}: off ({stage}.enabled: false); {out} is a copy of {checkpoint}")
