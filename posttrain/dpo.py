"""Preference optimisation from a pipeline checkpoint's adapter: what stages dpo and safety share.

The checkpoint's LoRA adapter keeps training, with the objective params name: DPO (TRL's
DPOTrainer), KTO (KTOTrainer, on the pairs unpaired), ORPO or SimPO (TRL's experimental
ORPOTrainer and CPOTrainer, which need no reference). For DPO and KTO, TRL copies the
adapter into a frozen `ref` adapter, so the reference policy is the starting checkpoint
itself and no second model is held in memory; its log-probs are computed once, before training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from posttrain.config import DpoParams, Params
from posttrain.models import adapter_checkpoint, load_tokenizer
from posttrain import resume
from posttrain.training import (
    checkpoints_for, freed_memory_callback, load_base_for_training, save_adapter, trainer_arguments,
    write_log_history)

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
              sft_weight: float = 0.0, callbacks: tuple = ()) -> DpoResult:
    """Train the adapter in start_dir (on base_dir) on TRL preference examples with
    cfg.objective (DPO, KTO, ORPO or SimPO); save the adapter to out_dir (atomically) and
    the per-step log to loss_plot. Under `accelerate launch` every process trains its
    share of each batch and the main process writes. `stage` and the params `sections`
    it reads key its resumable checkpoints (posttrain/resume.py).

    sft_weight > 0 adds an NLL loss on the chosen completions (dpo: RPO; simpo: CPO's
    behaviour-cloning term), which holds the policy to the chosen text instead of only
    pushing the rejected side down. callbacks: TrainerCallbacks to add (stage safety's
    held-out monitor)."""
    from peft import PeftModel

    base_dir, adapter_dir = adapter_checkpoint(start_dir, base_dir)
    tokenizer = load_tokenizer(base_dir, padding_side="right")
    policy = PeftModel.from_pretrained(load_base_for_training(base_dir, "none"), adapter_dir, is_trainable=True)
    checkpoints = checkpoints_for(stage, params, sections, examples, [base_dir, adapter_dir])
    trainer = preference_trainer(cfg, policy, tokenizer, examples, trainer_arguments(params, cfg, checkpoints),
                                 sft_weight)
    for callback in (*callbacks, freed_memory_callback()):  # memory back after each step and monitor reading
        trainer.add_callback(callback)
    run = resume.train(trainer, checkpoints)
    # Only the trained policy adapter, under the default name, so evaluation loads the
    # output like any other adapter checkpoint. Every process takes part (FSDP, ZeRO-3).
    save_adapter(trainer, out_dir, checkpoints, selected_adapters=["default"])
    main = trainer.accelerator.is_main_process
    history = write_log_history(trainer.state.log_history, loss_plot, LOGGED) if main else []
    last = {key: value for key, value in (history[-1] if history else {}).items() if value != ""}  # "": not logged
    return DpoResult(main, trainer.accelerator.num_processes, trainer.state.global_step, run.train_loss,
                     last.get("rewards/accuracies"), last.get("rewards/margins"), run.seconds, run.resumed_from_step)


def unpaired(examples: list[dict]) -> list[dict]:
    """Preference pairs as KTO's unpaired examples: each chosen completion desirable, each
    rejected one not. Ordered so that labels alternate (every batch holds both) and no two
    neighbours share a prompt: KTO's KL estimate scores each prompt with the completion of
    its neighbour in the batch, which must answer another prompt. The first pass takes the
    chosen side of even pairs and the rejected side of odd ones; the second the rest."""
    def example(pair: dict, side: str) -> dict:
        return {"prompt": pair["prompt"], "completion": pair[side], "label": side == "chosen"}

    first = [example(e, "chosen" if i % 2 == 0 else "rejected") for i, e in enumerate(examples)]
    second = [example(e, "rejected" if i % 2 == 0 else "chosen") for i, e in enumerate(examples)]
    return first + second


def preference_trainer(cfg: DpoParams, policy, tokenizer, examples: list[dict], arguments: dict, sft_weight: float):
    """The TRL trainer of cfg.objective on the policy adapter. dpo and kto hold the start
    adapter as a frozen `ref` copy (TRL makes it) and compute its log-probs once, before
    training; orpo and simpo need no reference."""
    from datasets import Dataset

    if cfg.objective == "kto":
        from trl import KTOConfig, KTOTrainer

        # Sequential batches: KTO's KL estimate pairs each prompt with a neighbour's completion.
        config = KTOConfig(**arguments, beta=cfg.beta, max_length=cfg.max_length, precompute_ref_log_probs=True,
                           desirable_weight=cfg.kto.desirable_weight, undesirable_weight=cfg.kto.undesirable_weight)
        return KTOTrainer(model=policy, ref_model=None, args=config,
                          train_dataset=Dataset.from_list(unpaired(examples)), processing_class=tokenizer)
    dataset = Dataset.from_list(examples)
    if cfg.objective == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        config = ORPOConfig(**arguments, beta=cfg.orpo.beta, max_length=cfg.max_length)
        return ORPOTrainer(model=policy, args=config, train_dataset=dataset, processing_class=tokenizer)
    if cfg.objective == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        config = CPOConfig(**arguments, loss_type="simpo", beta=cfg.simpo.beta, simpo_gamma=cfg.simpo.gamma,
                           cpo_alpha=sft_weight, max_length=cfg.max_length)
        return CPOTrainer(model=policy, args=config, train_dataset=dataset, processing_class=tokenizer)
    from trl import DPOConfig, DPOTrainer

    losses = {"loss_type": [cfg.loss_type]}
    if sft_weight > 0:
        losses = {"loss_type": [cfg.loss_type, "sft"], "loss_weights": [1.0, sft_weight]}
    config = DPOConfig(**arguments, beta=cfg.beta, max_length=cfg.max_length,
                       # The reference's log-probs once per pair before training, not at every step
                       # of every epoch: the reference (the start adapter) is frozen anyway.
                       precompute_ref_log_probs=True, **losses)
    return DPOTrainer(model=policy, ref_model=None,  # reference = the loaded adapter, frozen by TRL
                      args=config, train_dataset=dataset, processing_class=tokenizer)
