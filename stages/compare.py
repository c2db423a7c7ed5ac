"""Stage `compare`: every evaluated checkpoint side by side, with deltas against base.

    PYTHONPATH=. python stages/compare.py --checkpoints base sft dpo rl safety --start safety=rl \
        --evaluations metrics/eval --graded data/eval \
        --out metrics/compare.json --scorecard metrics/compare/scorecard.csv

(dvc.yaml passes these; every path is an argument.) Reads EVALUATIONS/<checkpoint>.json
for each name given (in pipeline order) and writes OUT: the headline metrics of each checkpoint, their change
from base and from the previous checkpoint. `--start NAME=START` adds NAME's change
from the checkpoint it was trained from: for the safety stage, the alignment tax
(what refusal training cost in GSM accuracy and helpfulness). The same numbers, one
row per checkpoint, go to SCORECARD for the per-stage plots in
dvc.yaml. No model is loaded.

Each checkpoint's GSM strict accuracy, refusal and over-refusal rates also get their n
and 95% Wilson interval, and every change (from the previous checkpoint, from base,
from the start) a paired test on the same items, read from GRADED/<checkpoint>.jsonl:
the change with its 95% interval, items lost and gained, exact McNemar p, and
`significant` (p < 0.05): whether the change is beyond the noise of the test set.
"""

import argparse
import json
from pathlib import Path

from posttrain.config import add_checkpoint_arguments, checkpoint_starts

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
add_checkpoint_arguments(parser)
parser.add_argument("--evaluations", required=True, type=Path, help="directory of <checkpoint>.json (stage evaluate)")
parser.add_argument("--graded", required=True, type=Path, help="directory of <checkpoint>.jsonl, every graded item")
parser.add_argument("--out", required=True, type=Path, help="the comparison, JSON")
parser.add_argument("--scorecard", required=True, type=Path, help="one CSV row per checkpoint, for the per-stage plots")
args = parser.parse_args()
starts = checkpoint_starts(parser, args)

from posttrain.evaluation import HEADLINE, headline, refused, scorecard  # noqa: E402
from posttrain.io import read_jsonl, write_json  # noqa: E402
from posttrain.stats import paired_change, rate_summary  # noqa: E402
from posttrain.training import write_rows_csv  # noqa: E402

evaluations = {name: json.loads((args.evaluations / f"{name}.json").read_text()) for name in args.checkpoints}
rows = {name: headline(metrics) for name, metrics in evaluations.items()}
card = scorecard(rows)
for name, start in starts.items():
    card[name]["start"] = start
    card[name]["delta_vs_start"] = scorecard({start: rows[start], name: rows[name]})[name]["delta_vs_base"]


def graded_items(name: str) -> dict[str, dict[str, bool]]:
    """Per tested rate, each item's outcome (id -> counted in the rate) for one checkpoint."""
    rows = read_jsonl(args.graded / f"{name}.jsonl")
    items = {
        "strict_accuracy": {r["id"]: r["strict_correct"] for r in rows if r["task"] == "gsm"},
        # generated problems phrased only with templates no training stage saw
        "strict_accuracy_held_out_templates": {r["id"]: r["strict_correct"] for r in rows
                                               if r["task"] == "gsm" and r.get("templates") == "held_out"},
        "refusal_rate": {r["id"]: refused(r) for r in rows if r["task"] == "safety" and r["kind"] == "harmful"},
        "over_refusal_rate": {r["id"]: refused(r) for r in rows if r["task"] == "safety" and r["kind"] == "benign"},
        # safety sub-categories held out of training
        "refusal_rate_held_out_subtypes": {r["id"]: refused(r) for r in rows if r["task"] == "safety"
                                           and r["kind"] == "harmful" and r.get("held_out_subtype")},
        # IFEval-style prompts: all of a prompt's instructions followed (prompt-level, strict)
        "instruction_following": {r["id"]: r["prompt_strict"] for r in rows
                                  if r["task"] == "instructions" and r["prompt_strict"] is not None},
    }
    for row in rows:  # general-capability multiple choice: task "general:<benchmark>"
        if row["task"].startswith("general:"):
            items.setdefault(row["task"], {})[row["id"]] = row["correct"]
    return {rate: outcomes for rate, outcomes in items.items() if outcomes}


items = {name: graded_items(name) for name in args.checkpoints}
names = list(items)
for index, name in enumerate(names):
    card[name]["intervals"] = {rate: rate_summary(list(outcomes.values())) for rate, outcomes in items[name].items()}
    against = {"previous": names[max(index - 1, 0)], "base": names[0], **(
        {"start": card[name]["start"]} if "start" in card[name] else {})}
    for label, other in against.items():
        if other != name:
            card[name][f"paired_vs_{label}"] = {rate: paired_change(items[other][rate], items[name][rate])
                                                for rate in items[name] if rate in items[other]}
write_json(args.out, card)
# one row per checkpoint: `dvc plots diff` overlays runs
write_rows_csv(args.scorecard, [{"checkpoint": name, **row} for name, row in rows.items()])

width = max(len(name) for name in card)
print(f"{'checkpoint':<{width}}  " + "  ".join(f"{key:>13}" for key in HEADLINE))
for name, row in card.items():
    cells = [f"{row[key]:>6.3f} ({row['delta_vs_base'][key]:+.3f})" for key in HEADLINE]
    print(f"{name:<{width}}  " + "  ".join(cells))
for name, row in card.items():
    for label in ("previous", "start"):
        for rate, change in row.get(f"paired_vs_{label}", {}).items():
            if change["significant"]:
                print(f"{name} vs {label}: {rate} {change['delta']:+.3f} (95% CI {change['ci95_low']:+.3f} to "
                      f"{change['ci95_high']:+.3f}, {change['gained']} gained, {change['lost']} lost, "
                      f"McNemar p {change['p_value']}): beyond noise")
for name, row in card.items():
    if "delta_vs_start" in row:
        tax = row["delta_vs_start"]
        print(f"{name} vs {row['start']}: strict {tax['strict_accuracy']:+.3f}, refusal {tax['refusal_rate']:+.3f}, "
              f"over-refusal {tax['over_refusal_rate']:+.3f}")
