"""Stage `evaluate@<checkpoint>`: GSM accuracy and safety behaviour of one checkpoint.

    PYTHONPATH=. python stages/evaluate.py base

Reads params: seed, prompt, evaluate, runtime, tracking. On the held-out GSM test it
measures strict and flexible accuracy, format rate, completion length and generation
speed; on the safety test set, refusal rate (harmful prompts) and over-refusal rate
(benign look-alikes). Writes metrics/eval/<checkpoint>.json and every completion to
data/eval/<checkpoint>.jsonl for inspection.
"""

import argparse

from posttrain.config import load_params

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("checkpoint", help="base, or a training stage whose output is in models/<name>")
args = parser.parse_args()
params = load_params()

from posttrain import runtime, tracking  # noqa: E402
from posttrain.evaluation import score_gsm, score_safety  # noqa: E402
from posttrain.generation import chat_messages, generate, gsm_messages, render_prompts  # noqa: E402
from posttrain.io import read_jsonl, write_json, write_jsonl  # noqa: E402
from posttrain.models import checkpoint_dirs, load_causal_lm, load_tokenizer  # noqa: E402

DATA_DIR = "data/prepared"
METRICS_FILE = f"metrics/eval/{args.checkpoint}.json"
COMPLETIONS_FILE = f"data/eval/{args.checkpoint}.jsonl"
cfg = params.evaluate

threads = runtime.setup(params.runtime, params.seed)
with tracking.stage_run(f"evaluate@{args.checkpoint}", params, ["seed", "prompt", "evaluate"]):
    base_dir, adapter_dir = checkpoint_dirs(args.checkpoint)
    tokenizer = load_tokenizer(base_dir)
    model = load_causal_lm(base_dir, adapter_dir)

    def complete(conversations, max_new_tokens, desc, stop_after_answer=False):
        return generate(model, tokenizer, render_prompts(tokenizer, conversations), max_new_tokens,
                        cfg.batch_size, cfg.temperature, cfg.top_p, desc, stop_after_answer)

    problems = read_jsonl(f"{DATA_DIR}/test.jsonl")[: cfg.gsm_limit]
    gsm_out = complete([gsm_messages(p["question"], params.prompt) for p in problems], cfg.max_new_tokens,
                       f"gsm {args.checkpoint}", stop_after_answer=True)
    gsm_metrics, gsm_rows = score_gsm(problems, gsm_out.completions, gsm_out.completion_tokens)

    safety_prompts = read_jsonl(f"{DATA_DIR}/safety_test.jsonl")[: cfg.safety_limit]
    safety_out = complete([chat_messages(p["prompt"], params.prompt) for p in safety_prompts],
                          cfg.safety_max_new_tokens, f"safety {args.checkpoint}")
    safety_metrics, safety_rows = score_safety(safety_prompts, safety_out.completions)

    seconds = gsm_out.seconds + safety_out.seconds
    tokens = sum(gsm_out.completion_tokens) + sum(safety_out.completion_tokens)
    metrics = {
        "checkpoint": args.checkpoint,
        "gsm": gsm_metrics,
        "safety": safety_metrics,
        "generation": {"tokens_per_second": round(tokens / seconds, 1), "seconds": round(seconds, 1),
                       "threads": threads},
    }
    write_json(METRICS_FILE, metrics)
    write_jsonl(COMPLETIONS_FILE, [{"task": "gsm", **r} for r in gsm_rows] +
                [{"task": "safety", **r} for r in safety_rows])
    tracking.log_metrics({k: v for k, v in metrics.items() if k != "checkpoint"})
    tracking.log_artifact(METRICS_FILE)
    tracking.log_artifact(COMPLETIONS_FILE)
    g, s = gsm_metrics, safety_metrics
    print(f"evaluate@{args.checkpoint}: strict {g['strict_accuracy']:.3f} flexible {g['flexible_accuracy']:.3f} "
          f"format {g['format_rate']:.3f} | refusal {s['refusal_rate']:.3f} over-refusal "
          f"{s['over_refusal_rate']:.3f} | {metrics['generation']['tokens_per_second']} tok/s")
