"""Stage `prepare`: GSM splits and safety sets that every later stage reads.

    PYTHONPATH=. python stages/prepare.py --out data/prepared --metrics metrics/data.json

Reads params: seed, data, tracking. Writes the directory OUT:
    sft.jsonl    supervised fine-tuning problems
    rl.jsonl     prompts for preference sampling and RL
    test.jsonl   held out: no training stage ever reads it
    safety_train.jsonl, safety_test.jsonl
and METRICS (counts, lengths, what was skipped and why).
"""

import sys
from collections import Counter
from statistics import mean

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, out="directory of the prepared splits", metrics="metrics JSON to write")
params = load_params()

from posttrain import tracking  # noqa: E402
from posttrain.data import DataError, prepare_gsm  # noqa: E402
from posttrain.io import atomic_dir, write_json, write_jsonl  # noqa: E402
from posttrain.safety_data import SafetyDataError, load_safety_prompts, split_safety  # noqa: E402

SECTIONS = ["seed", "data"]  # the params sections this stage reads
# The data, read and checked before the MLflow run opens: a bad file is one line and
# leaves no failed run behind.
try:
    gsm = prepare_gsm(params.data, params.seed)
    safety_train, safety_test = split_safety(
        load_safety_prompts(params.data.safety.source), params.data.safety.test_fraction, params.seed,
        tuple(params.data.safety.held_out_subtypes))
except (DataError, SafetyDataError) as exc:
    raise SystemExit(f"prepare: {exc}") from None

with tracking.stage_run("prepare", params, SECTIONS):
    if params.data.safety.held_out_subtypes and not any(row.get("held_out_subtype") for row in safety_test):
        print(f"prepare: {params.data.safety.source} has no subtype field: data.safety.held_out_subtypes holds "
              "nothing out", file=sys.stderr)
    report = gsm.report
    if report.skipped_total:
        print(f"prepare: skipped {report.skipped_total} of {report.total} records:", file=sys.stderr)
        for reason, count in report.skipped.most_common():
            print(f"  {count:6d}  {reason}", file=sys.stderr)
        for example in report.examples:
            print(f"  e.g. {example}", file=sys.stderr)

    splits = {"sft": gsm.sft, "rl": gsm.rl, "test": gsm.test}
    with atomic_dir(args.out) as tmp:
        for name, records in splits.items():
            write_jsonl(tmp / f"{name}.jsonl", records)
        write_jsonl(tmp / "safety_train.jsonl", safety_train)
        write_jsonl(tmp / "safety_test.jsonl", safety_test)

    def kinds(rows):
        return dict(sorted(Counter(row["kind"] for row in rows).items()))

    metrics = {
        "source": params.data.source,
        "records_read": report.total,
        "skipped": report.skipped_total,
        "skipped_by_reason": dict(report.skipped.most_common()),
        "skipped_examples": report.examples,
        "duplicates_dropped": gsm.duplicates,
        "splits": {name: len(records) for name, records in splits.items()},
        "mean_question_words": round(mean(len(r["question"].split()) for r in gsm.sft), 1),
        "mean_solution_words": round(mean(len(r["solution"].split()) for r in gsm.sft), 1),
        "mean_reasoning_steps": round(mean(r["reasoning"].count("\n") + 1 for r in gsm.sft), 2),
        "test_templates": dict(sorted(Counter(r.get("templates", "untagged") for r in gsm.test).items())),
        "safety": {"train": kinds(safety_train), "test": kinds(safety_test),
                   "test_held_out_subtypes": kinds([r for r in safety_test if r.get("held_out_subtype")]),
                   "categories": len({row["category"] for row in safety_train + safety_test})},
    }
    write_json(args.metrics, metrics)
    tracking.log_metrics({k: metrics[k] for k in ("records_read", "skipped", "duplicates_dropped", "splits")})
    tracking.log_artifact(args.metrics)
    print(f"prepare: {metrics['splits']} from {params.data.source}; safety {metrics['safety']}")
