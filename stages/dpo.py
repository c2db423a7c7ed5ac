"""Stage `dpo`: Direct Preference Optimisation from the SFT adapter.

    PYTHONPATH=. python -m posttrain.launch stages/dpo.py

Reads params: seed, prompt, dpo, launch. Continues training the SFT LoRA adapter with
TRL's DPOTrainer on the preference pairs; the reference policy is the SFT policy itself
(TRL copies the loaded adapter into a frozen `ref` adapter, so no second model is
held in memory; posttrain/dpo.py). Writes the adapter to models/dpo/, metrics/dpo.json
and the loss, reward accuracy and margin per step to metrics/dpo/loss.csv. Under
`accelerate launch` every process trains on its share of each batch and the main
process alone writes.
"""

from posttrain.config import load_params

params = load_params()

from posttrain import runtime, tracking  # noqa: E402
from posttrain.dpo import train_dpo  # noqa: E402
from posttrain.io import PAIR, read_jsonl, write_json  # noqa: E402
from posttrain.preferences import preference_example  # noqa: E402

START_CHECKPOINT = "sft"
OUT_DIR = "models/dpo"
METRICS_FILE = "metrics/dpo.json"
LOSS_PLOT = "metrics/dpo/loss.csv"
SECTIONS = ["seed", "prompt", "dpo"]  # the params sections this stage reads
cfg = params.dpo

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("dpo", params, SECTIONS):
    pairs = read_jsonl("data/preferences/train.jsonl", PAIR)[: cfg.max_pairs]
    examples = [preference_example(p, params.prompt) for p in pairs]
    result = train_dpo(params, cfg, START_CHECKPOINT, examples, OUT_DIR, LOSS_PLOT, "dpo", SECTIONS)
    if not result.main_process:
        raise SystemExit(0)  # trained its share; the main process writes

    metrics = {
        "pairs": len(pairs),
        "steps": result.steps,
        "train_loss": result.train_loss,
        "final_reward_accuracy": result.final_reward_accuracy,
        "final_reward_margin": result.final_reward_margin,
        "seconds": result.seconds,
        "resumed_from_step": result.resumed_from_step,
        "processes": result.processes,
    }
    write_json(METRICS_FILE, metrics)
    tracking.log_metrics(metrics)
    print(f"dpo: {metrics['steps']} steps on {len(pairs)} pairs, loss {metrics['train_loss']} ({metrics['seconds']} s)")
