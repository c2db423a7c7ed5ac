"""Stage `dpo`: Direct Preference Optimisation from the SFT adapter.

    PYTHONPATH=. python stages/dpo.py

Reads params: seed, prompt, dpo. Continues training the SFT LoRA adapter with TRL's
DPOTrainer on the preference pairs; the reference policy is the SFT policy itself
(TRL copies the loaded adapter into a frozen `ref` adapter, so no second model is
held in memory). Writes the adapter to models/dpo/, metrics/dpo.json and the loss,
reward accuracy and margin per step to metrics/dpo/loss.csv.
"""

import tempfile
import time

from posttrain.config import load_params

params = load_params()

from posttrain import runtime, tracking  # noqa: E402
from posttrain.io import atomic_dir, read_jsonl, write_json  # noqa: E402
from posttrain.models import checkpoint_dirs, load_tokenizer  # noqa: E402
from posttrain.preferences import preference_example  # noqa: E402
from posttrain.training import load_base_for_training, trainer_arguments, write_log_history  # noqa: E402

START_CHECKPOINT = "sft"
OUT_DIR = "models/dpo"
METRICS_FILE = "metrics/dpo.json"
LOSS_PLOT = "metrics/dpo/loss.csv"
cfg = params.dpo

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("dpo", params, ["seed", "prompt", "dpo"]):
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    pairs = read_jsonl("data/preferences/train.jsonl")[: cfg.max_pairs]
    dataset = Dataset.from_list([preference_example(p, params.prompt) for p in pairs])
    base_dir, adapter_dir = checkpoint_dirs(START_CHECKPOINT)
    tokenizer = load_tokenizer(base_dir, padding_side="right")
    policy = PeftModel.from_pretrained(load_base_for_training(base_dir, "none"), adapter_dir, is_trainable=True)

    with atomic_dir(OUT_DIR) as out, tempfile.TemporaryDirectory() as scratch:
        trainer = DPOTrainer(
            model=policy,
            ref_model=None,  # reference = the loaded SFT adapter, frozen by TRL
            args=DPOConfig(**trainer_arguments(params, cfg, scratch), beta=cfg.beta, loss_type=[cfg.loss_type],
                           max_length=cfg.max_length),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        # Save only the trained policy adapter, under the default name, so evaluation
        # loads models/dpo like any other adapter checkpoint.
        trainer.model.save_pretrained(out, selected_adapters=["default"])

    keys = ["loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"]
    history = write_log_history(trainer.state.log_history, LOSS_PLOT, keys)
    last = history[-1] if history else {}
    metrics = {
        "pairs": len(pairs),
        "steps": trainer.state.global_step,
        "train_loss": round(result.training_loss, 4),
        "final_reward_accuracy": last.get("rewards/accuracies"),
        "final_reward_margin": last.get("rewards/margins"),
        "seconds": round(seconds, 1),
    }
    write_json(METRICS_FILE, metrics)
    tracking.log_metrics(metrics)
    print(f"dpo: {metrics['steps']} steps on {len(pairs)} pairs, loss {metrics['train_loss']} ({metrics['seconds']} s)")
