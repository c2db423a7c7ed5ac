"""Stage `reward_model`: a Bradley-Terry reward model on the preference pairs.

    PYTHONPATH=. python -m posttrain.launch stages/reward_model.py --base models/base --start models/sft \
        --pairs data/preferences --out models/reward_model --metrics metrics/reward_model.json \
        --scores metrics/reward_model/scores.csv --log metrics/reward_model/loss.csv

Reads params: seed, prompt, reward_model. A scalar-head (sequence classification)
model initialised from the START checkpoint (reward_model.start: SFT), trained with
LoRA by TRL's RewardTrainer on PAIRS/train.jsonl. Reports accuracy and mean margin on
PAIRS/held_out.jsonl and the score distribution (a histogram plot: a collapsed reward
model shows as one spike). Writes the adapter and score head to OUT, METRICS, the
histogram to SCORES and the per-step log to LOG. Under `accelerate launch` (params
launch.*) every process trains on its share of each batch, then scores all held-out
pairs (with a sharded model each forward pass is collective); the main process alone writes.
"""

from statistics import mean, pstdev

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, base="the base model (stage base)",
                       start="the checkpoint to train on (models/<reward_model.start>)",
                       pairs="directory of train.jsonl and held_out.jsonl (stage preferences)",
                       out="the reward adapter directory to write", metrics="metrics JSON to write",
                       scores="held-out score histogram CSV to write", log="per-step loss CSV to write")
params = load_params()

from posttrain import resume, runtime, tracking  # noqa: E402
from posttrain.reward_model import histogram, score_texts  # noqa: E402
from posttrain.preferences import preference_example  # noqa: E402
from posttrain.io import PAIR, read_jsonl, write_json  # noqa: E402
from posttrain.models import checkpoint_dirs, load_reward_backbone, load_tokenizer  # noqa: E402
from posttrain.training import (  # noqa: E402
    checkpoints_for, lora_config, save_adapter, trainer_arguments, write_log_history, write_rows_csv)

SECTIONS = ["seed", "prompt", "reward_model"]  # the params sections this stage reads
cfg = params.reward_model

# What the stage was given, checked before torch loads and the MLflow run opens: a missing
# or damaged input is one line in a second, and leaves no failed run behind.
train_pairs = read_jsonl(args.pairs / "train.jsonl", PAIR)[: cfg.max_pairs]
held_out = read_jsonl(args.pairs / "held_out.jsonl", PAIR)
base_dir, adapter_dir = checkpoint_dirs(args.start, args.base)

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("reward_model", params, SECTIONS):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    tokenizer = load_tokenizer(base_dir, padding_side="right")
    model = load_reward_backbone(base_dir, adapter_dir, tokenizer.pad_token_id)

    train_examples = [preference_example(p, params.prompt) for p in train_pairs]
    checkpoints = checkpoints_for("reward_model", params, SECTIONS, train_examples, [base_dir, adapter_dir])
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(**trainer_arguments(params, cfg, checkpoints), max_length=cfg.max_length),
        train_dataset=Dataset.from_list(train_examples),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora, task_type="SEQ_CLS"),
    )
    run = resume.train(trainer, checkpoints)
    save_adapter(trainer, args.out, checkpoints)  # every process takes part

    reward_model = trainer.model.eval()
    examples = [preference_example(p, params.prompt) for p in held_out]
    chosen = score_texts(reward_model, tokenizer, [e["prompt"] + e["chosen"] for e in examples])
    rejected = score_texts(reward_model, tokenizer, [e["prompt"] + e["rejected"] for e in examples])
    margins = [c - r for c, r in zip(chosen, rejected)]
    if not trainer.accelerator.is_main_process:
        raise SystemExit(0)  # trained its share and took part in scoring; the main process writes
    write_rows_csv(args.scores, histogram({"chosen": chosen, "rejected": rejected}, cfg.histogram_bins))
    write_log_history(trainer.state.log_history, args.log, ["loss", "accuracy", "margin"])
    metrics = {
        "train_pairs": len(trainer.train_dataset),  # after TRL drops pairs longer than max_length
        "held_out_pairs": len(held_out),
        "held_out_accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
        "held_out_mean_margin": round(mean(margins), 4),
        "score_mean": round(mean(chosen + rejected), 4),
        "score_std": round(pstdev(chosen + rejected), 4),
        "train_loss": run.train_loss,
        "steps": trainer.state.global_step,
        "seconds": run.seconds,
        "resumed_from_step": run.resumed_from_step,
        "processes": trainer.accelerator.num_processes,
    }
    write_json(args.metrics, metrics)
    tracking.log_metrics(metrics)
    print(f"reward_model: held-out accuracy {metrics['held_out_accuracy']}, margin "
          f"{metrics['held_out_mean_margin']}, score std {metrics['score_std']} ({metrics['seconds']} s)")
