"""Stage `dpo`: preference optimisation (DPO, KTO, ORPO or SimPO) from the SFT adapter.

    PYTHONPATH=. python -m posttrain.launch stages/dpo.py --base models/base --start models/sft \
        --pairs data/preferences/train.jsonl --out models/dpo --metrics metrics/dpo.json --log metrics/dpo/loss.csv

Reads params: seed, prompt, dpo, launch. Continues training the START (SFT) LoRA adapter
on the preference pairs with `dpo.objective`: TRL's DPOTrainer (the default) or
KTOTrainer, whose reference policy is the start policy itself (TRL copies the loaded
adapter into a frozen `ref` adapter, so no second model is held in memory), or ORPO or
SimPO, which need no reference (posttrain/dpo.py). Writes the adapter to OUT, METRICS
and the loss, reward accuracy and margin per step to LOG. Under `accelerate launch` every process
trains on its share of each batch and the main process alone writes.
"""

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, base="the base model (stage base)", start="the adapter checkpoint to continue",
                       pairs="preference pairs, JSONL (stage preferences)", out="the adapter directory to write",
                       metrics="metrics JSON to write", log="per-step loss CSV to write")
params = load_params()

from posttrain import runtime, tracking  # noqa: E402
from posttrain.dpo import train_dpo  # noqa: E402
from posttrain.io import PAIR, read_jsonl, write_json  # noqa: E402
from posttrain.models import adapter_checkpoint  # noqa: E402
from posttrain.preferences import preference_example  # noqa: E402

SECTIONS = ["seed", "prompt", "dpo"]  # the params sections this stage reads
cfg = params.dpo

# What the stage was given, checked before torch loads and the MLflow run opens: a missing
# or damaged input is one line in a second, and leaves no failed run behind.
adapter_checkpoint(args.start, args.base)
pairs = read_jsonl(args.pairs, PAIR)[: cfg.max_pairs]

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("dpo", params, SECTIONS):
    examples = [preference_example(p, params.prompt) for p in pairs]
    result = train_dpo(params, cfg, args.start, args.base, examples, args.out, args.log, "dpo", SECTIONS,
                       sft_weight=cfg.sft_weight)
    if not result.main_process:
        raise SystemExit(0)  # trained its share; the main process writes

    metrics = {
        "objective": cfg.objective,
        "pairs": len(pairs),
        "steps": result.steps,
        "train_loss": result.train_loss,
        "final_reward_accuracy": result.final_reward_accuracy,
        "final_reward_margin": result.final_reward_margin,
        "seconds": result.seconds,
        "resumed_from_step": result.resumed_from_step,
        "processes": result.processes,
    }
    write_json(args.metrics, metrics)
    tracking.log_metrics(metrics)
    print(f"dpo ({cfg.objective}): {metrics['steps']} steps on {len(pairs)} pairs, loss {metrics['train_loss']} "
          f"({metrics['seconds']} s)")
