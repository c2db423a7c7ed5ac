"""DPO from a pipeline checkpoint's adapter: what stages dpo and safety share.

The checkpoint's LoRA adapter keeps training; TRL copies it into a frozen `ref`
adapter, so the reference policy is the starting checkpoint itself and no second
model is held in memory. The reference log-probs are computed once, before training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from posttrain.config import DpoParams, Params
from posttrain.models import CheckpointError, checkpoint_dirs, load_tokenizer
from posttrain import resume
from posttrain.training import (
    checkpoints_for, load_base_for_training, save_adapter, trainer_arguments, write_log_history)

LOGGED = ["loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"]


@dataclass
class DpoResult:
    main_process: bool  # False on the other ranks of an `accelerate launch`: they write nothing
    processes: int
    steps: int
    train_loss: float
    final_reward_accuracy: float | None
    final_reward_margin: float | None
    seconds: float  # training time of this process (a resumed run: since the resume)
    resumed_from_step: int  # 0: started fresh


def train_dpo(params: Params, cfg: DpoParams, start_dir: str | Path, base_dir: str | Path, examples: list[dict],
              out_dir: str | Path, loss_plot: str | Path, stage: str, sections: list[str],
              sft_weight: float = 0.0) -> DpoResult:
    """Train the adapter in start_dir (on base_dir) with DPO on TRL preference examples; save the adapter
    to out_dir (atomically) and the per-step log to loss_plot. Under `accelerate launch`
    every process trains its share of each batch and the main process writes. `stage`
    and the params `sections` it reads key its resumable checkpoints (posttrain/resume.py).

    sft_weight > 0 adds an NLL loss on the chosen completions (RPO), which holds the
    policy to the chosen text instead of only pushing the rejected side down."""
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    base_dir, adapter_dir = checkpoint_dirs(start_dir, base_dir)
    if adapter_dir is None:
        raise CheckpointError(f"checkpoint {Path(start_dir).name!r} holds no LoRA adapter to continue training")
    tokenizer = load_tokenizer(base_dir, padding_side="right")
    policy = PeftModel.from_pretrained(load_base_for_training(base_dir, "none"), adapter_dir, is_trainable=True)
    losses = {"loss_type": [cfg.loss_type]}
    if sft_weight > 0:
        losses = {"loss_type": [cfg.loss_type, "sft"], "loss_weights": [1.0, sft_weight]}

    checkpoints = checkpoints_for(stage, params, sections, examples, [base_dir, adapter_dir])
    trainer = DPOTrainer(
        model=policy,
        ref_model=None,  # reference = the loaded adapter, frozen by TRL
        args=DPOConfig(**trainer_arguments(params, cfg, checkpoints), beta=cfg.beta, max_length=cfg.max_length,
                       # The reference's log-probs once per pair before training, not at every step
                       # of every epoch: the reference (the start adapter) is frozen anyway.
                       precompute_ref_log_probs=True, **losses),
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
    )
    run = resume.train(trainer, checkpoints)
    # Only the trained policy adapter, under the default name, so evaluation loads the
    # output like any other adapter checkpoint. Every process takes part (FSDP, ZeRO-3).
    save_adapter(trainer, out_dir, checkpoints, selected_adapters=["default"])
    main = trainer.accelerator.is_main_process
    history = write_log_history(trainer.state.log_history, loss_plot, LOGGED) if main else []
    last = history[-1] if history else {}
    return DpoResult(main, trainer.accelerator.num_processes, trainer.state.global_step, run.train_loss,
                     last.get("rewards/accuracies"), last.get("rewards/margins"), run.seconds, run.resumed_from_step)
