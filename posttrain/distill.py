"""Knowledge distillation into a student checkpoint's LoRA adapter: stage distill.

on_policy (GKD, Agarwal et al. 2024): the student samples completions of the prompts and
learns the teacher's next-token distributions on them, by a generalised Jensen-Shannon
divergence (beta 0: forward KL, 1: reverse KL), with TRL's DistillationTrainer. The
teacher must share the student's vocabulary (every pipeline checkpoint does).
teacher_traces (sequence-level KD): the student is fine-tuned on the teacher's samples
(posttrain/adapter_sft.py); stages/distill.py does the sampling.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.config import DistillParams, Params
from posttrain.models import checkpoint_dirs


def load_teacher(teacher: str | Path, base_dir: Path):
    """The teacher as one model: a pipeline checkpoint (its adapter merged into the base)
    or a full model in a local directory; any other string is left for TRL to load (a
    hub id)."""
    from posttrain.models import load_causal_lm

    if not Path(teacher).is_dir():
        return str(teacher)
    teacher_base, teacher_adapter = checkpoint_dirs(teacher, base_dir)
    model = load_causal_lm(teacher_base, teacher_adapter)
    return model.merge_and_unload() if teacher_adapter is not None else model


def distill_on_policy(params: Params, cfg: DistillParams, conversations: list[list[dict]], base_dir: Path,
                      student_adapter: Path, teacher: str | Path, out_dir: Path, sections: list[str]):
    """Train the student adapter on-policy against the teacher and save it to out_dir.
    Returns the trainer's log history, its steps and the run (posttrain/resume.py)."""
    from datasets import Dataset
    from peft import PeftModel
    from trl import DistillationConfig, DistillationTrainer

    from posttrain import resume
    from posttrain.models import load_tokenizer
    from posttrain.training import checkpoints_for, load_base_for_training, save_adapter, trainer_arguments

    tokenizer = load_tokenizer(base_dir)
    student = PeftModel.from_pretrained(load_base_for_training(base_dir, "none"), student_adapter, is_trainable=True)
    inputs = [base_dir, student_adapter] + ([Path(teacher)] if Path(teacher).is_dir() else [])
    checkpoints = checkpoints_for("distill", params, sections, conversations, inputs)
    config = DistillationConfig(**trainer_arguments(params, cfg, checkpoints), beta=cfg.beta,
                                temperature=cfg.temperature, max_completion_length=cfg.max_new_tokens)
    trainer = DistillationTrainer(model=student, teacher_model=load_teacher(teacher, base_dir), args=config,
                                  train_dataset=Dataset.from_list([{"prompt": c} for c in conversations]),
                                  processing_class=tokenizer)
    run = resume.train(trainer, checkpoints)
    save_adapter(trainer, out_dir, checkpoints)
    return trainer.state.log_history, trainer.state.global_step, run
