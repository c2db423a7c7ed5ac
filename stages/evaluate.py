"""Stage `evaluate@<checkpoint>`: what one checkpoint can do, each rate with its interval.

    PYTHONPATH=. python stages/evaluate.py --base models/base --checkpoint models/sft \
        --test data/prepared/test.jsonl --safety-test data/prepared/safety_test.jsonl \
        --metrics metrics/eval/sft.json --graded data/eval/sft.jsonl

Reads params: seed, prompt, evaluate, generation, runtime, tracking. Measures, each
task switchable in params:
- GSM (held-out test): strict and flexible accuracy, format rate, completion length;
  on generated problems also strict accuracy on seen and on held-out phrasings;
- safety (test prompts): refusal rate (harmful) and over-refusal rate (benign look-alikes),
  also on the sub-categories held out of training (data.safety.held_out_subtypes);
- instruction following (evaluate.instructions): IFEval-style prompts checked by
  IFEval's own checkers (posttrain/instructions.py), prompt- and instruction-level,
  strict and loose;
- general capability (evaluate.general): multiple-choice benchmarks scored by
  log-likelihood (posttrain/benchmarks.py), the forgetting that post-training costs.
Every rate carries its n and 95% Wilson interval (<rate>_ci95_low/high). The first three
generate with the engine (generation.*); the benchmarks are scored by the same engine
(vLLM's prompt log-probabilities, or the hf engine's transformers model). Writes
METRICS and every graded item to GRADED, which stage compare pairs across checkpoints.
The checkpoint is named by its directory (models/<name>).
"""

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, base="the base model (stage base)",
                       checkpoint="the checkpoint to evaluate: the base model, an adapter on it, or a full model",
                       test="the GSM test problems, JSONL (stage prepare)",
                       safety_test="the safety test prompts, JSONL (stage prepare)",
                       metrics="metrics JSON to write", graded="every graded item, JSONL to write")
params = load_params()
checkpoint_name = args.checkpoint.name
from posttrain.engine import exit_unless_available, open_engine  # noqa: E402

exit_unless_available(params.generation)

from posttrain import runtime, tracking  # noqa: E402
from posttrain.evaluation import refused, score_gsm, score_safety  # noqa: E402
from posttrain.generation import chat_messages, gsm_messages, render_prompts  # noqa: E402
from posttrain.io import GSM_RECORD, SAFETY_PROMPT, read_jsonl, write_json, write_jsonl  # noqa: E402
from posttrain.models import checkpoint_dirs, load_tokenizer  # noqa: E402
from posttrain.stats import rate_summary  # noqa: E402

SECTIONS = ["seed", "prompt", "evaluate", "generation"]  # the params sections this stage reads
cfg = params.evaluate


def with_intervals(metrics: dict, flags: dict[str, list[bool]]) -> dict:
    """metrics plus n and the 95% Wilson interval of each named rate."""
    for name, values in flags.items():
        summary = rate_summary(values)
        metrics |= {f"{name}_n": summary["n"], f"{name}_ci95_low": summary["ci95_low"],
                    f"{name}_ci95_high": summary["ci95_high"]}
    return metrics


# Every input is read before torch loads, the MLflow run opens and the engine starts: a
# missing or damaged one is one line in a second, and leaves no failed run behind.
base_dir, _ = checkpoint_dirs(args.checkpoint, args.base)  # fails in one line when the checkpoint is missing
problems = read_jsonl(args.test, GSM_RECORD)[: cfg.gsm_limit]
safety_prompts = read_jsonl(args.safety_test, SAFETY_PROMPT)[: cfg.safety_limit]
follow = cfg.instructions
if follow.prompts:
    from posttrain.instructions import load_prompts, make_prompts, score

    records = (make_prompts(follow.prompts, params.seed, follow.instructions_per_prompt)
               if follow.source == "generated" else load_prompts(follow.source)[: follow.prompts])
general = cfg.general
if general.tasks:
    from posttrain.benchmarks import load_task, score_task

    benchmark_items = {task: load_task(task, general.limit, params.seed) for task in general.tasks}

threads = runtime.setup(params.runtime, params.seed)
with tracking.stage_run(f"evaluate@{checkpoint_name}", params, SECTIONS):
    tokenizer = load_tokenizer(base_dir)
    rows, metrics = [], {"checkpoint": checkpoint_name}
    with open_engine(params.generation, args.checkpoint, args.base, params.seed, cfg.batch_size) as engine:
        # Every generating task in one engine call (continuous batching across them).
        groups = [(render_prompts(tokenizer, [gsm_messages(p["question"], params.prompt) for p in problems]),
                   cfg.max_new_tokens, True),
                  (render_prompts(tokenizer, [chat_messages(p["prompt"], params.prompt) for p in safety_prompts]),
                   cfg.safety_max_new_tokens, False)]
        if follow.prompts:
            groups.append((render_prompts(tokenizer, [chat_messages(r["prompt"], params.prompt) for r in records]),
                           follow.max_new_tokens, False))
        outputs = engine.generate_groups(groups, cfg.temperature, cfg.top_p, f"evaluate {checkpoint_name}")
        gsm_out, safety_out = outputs[0], outputs[1]

        gsm_metrics, gsm_rows = score_gsm(problems, gsm_out.completions, gsm_out.completion_tokens)
        metrics["gsm"] = with_intervals(gsm_metrics, {
            "strict_accuracy": [r["strict_correct"] for r in gsm_rows],
            "flexible_accuracy": [r["flexible_correct"] for r in gsm_rows],
            **{f"strict_accuracy_{tag}_templates": [r["strict_correct"] for r in gsm_rows if r.get("templates") == tag]
               for tag in ("seen", "held_out") if f"strict_accuracy_{tag}_templates" in gsm_metrics}})
        rows += [{"task": "gsm", **r} for r in gsm_rows]

        safety_metrics, safety_rows = score_safety(safety_prompts, safety_out.completions)

        def refusals(kind: str, held_out_only: bool = False) -> list[bool]:
            return [refused(r) for r in safety_rows
                    if r["kind"] == kind and (r["held_out_subtype"] or not held_out_only)]

        metrics["safety"] = with_intervals(safety_metrics, {
            "refusal_rate": refusals("harmful"), "over_refusal_rate": refusals("benign"),
            **({"refusal_rate_held_out_subtypes": refusals("harmful", held_out_only=True),
                "over_refusal_rate_held_out_subtypes": refusals("benign", held_out_only=True)}
               if "refusal_rate_held_out_subtypes" in safety_metrics else {})})
        rows += [{"task": "safety", **r} for r in safety_rows]

        if follow.prompts:
            follow_out = outputs[2]
            scored = score(records, follow_out.completions)
            items = scored.pop("items")
            metrics["instructions"] = with_intervals(
                {k: v for k, v in scored.items() if k != "per_instruction"},
                {"prompt_level_strict_acc": [i["prompt_strict"] for i in items if i["prompt_strict"] is not None],
                 "prompt_level_loose_acc": [i["prompt_loose"] for i in items if i["prompt_loose"] is not None]})
            metrics["instructions"]["per_instruction_strict_acc"] = {
                key: round(value["strict_acc"], 4) for key, value in scored["per_instruction"].items()}
            rows += [{"task": "instructions", **item, "prompt": record["prompt"], "completion": completion}
                     for item, record, completion in zip(items, records, follow_out.completions, strict=True)]

        if general.tasks:  # multiple choice, scored by log-likelihood on the same engine
            import time

            started, metrics["general"] = time.perf_counter(), {}
            for task, items in benchmark_items.items():
                result = score_task(None, tokenizer, items, scorer=lambda requests: engine.continuation_logprobs(
                    requests, general.batch_size, general.bf16))
                metrics["general"][task] = with_intervals(
                    {"accuracy": round(result["acc"], 4), "accuracy_norm": round(result["acc_norm"], 4)},
                    {"accuracy": [r["correct"] for r in result["rows"]],
                     "accuracy_norm": [r["correct_norm"] for r in result["rows"]]})
                rows += [{"task": f"general:{task}", **{k: v for k, v in r.items() if k != "logprobs"}}
                         for r in result["rows"]]
            metrics["general"]["seconds"] = round(time.perf_counter() - started, 1)

    seconds = outputs[0].seconds  # one call for every task
    tokens = sum(sum(o.completion_tokens) for o in outputs)
    metrics["generation"] = {"engine": engine.name, "tokens_per_second": round(tokens / seconds, 1),
                             "seconds": round(seconds, 1), "startup_seconds": engine.startup_seconds,
                             "threads": threads}

    write_json(args.metrics, metrics)
    write_jsonl(args.graded, rows)
    tracking.log_metrics({k: v for k, v in metrics.items() if k != "checkpoint"})
    tracking.log_artifact(args.metrics)
    tracking.log_artifact(args.graded)
    g, s = metrics["gsm"], metrics["safety"]
    extra = "".join(f" | {task} {m['accuracy']:.3f}" for task, m in metrics.get("general", {}).items()
                    if isinstance(m, dict))
    if "instructions" in metrics:
        extra += f" | instructions {metrics['instructions']['prompt_level_strict_acc']:.3f}"
    print(f"evaluate@{checkpoint_name}: strict {g['strict_accuracy']:.3f} flexible {g['flexible_accuracy']:.3f} "
          f"format {g['format_rate']:.3f} | refusal {s['refusal_rate']:.3f} over-refusal "
          f"{s['over_refusal_rate']:.3f}{extra} | {metrics['generation']['tokens_per_second']} tok/s")
