"""Stage `compare`: every evaluated checkpoint side by side, with deltas against base.

    PYTHONPATH=. python stages/compare.py base sft dpo rl safety --start safety=rl

Reads metrics/eval/<checkpoint>.json for each name given (in pipeline order) and
writes metrics/compare.json: the headline metrics of each checkpoint, their change
from base and from the previous checkpoint. `--start NAME=START` adds NAME's change
from the checkpoint it was trained from: for the safety stage, the alignment tax
(what refusal training cost in GSM accuracy and helpfulness). The same numbers, one
row per checkpoint, go to metrics/compare/scorecard.csv for the per-stage plots in
dvc.yaml. No model is loaded.
"""

import argparse
import json

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("checkpoints", nargs="+", help="checkpoint names in pipeline order, base first")
parser.add_argument("--start", action="append", default=[], metavar="NAME=START",
                    help="also report NAME's change from START, the checkpoint it was trained from")
args = parser.parse_args()

from posttrain.evaluation import HEADLINE, headline, scorecard  # noqa: E402
from posttrain.io import write_json  # noqa: E402
from posttrain.training import write_rows_csv  # noqa: E402

METRICS_FILE = "metrics/compare.json"
SCORECARD_PLOT = "metrics/compare/scorecard.csv"  # one row per checkpoint: `dvc plots diff` overlays runs

evaluations = {name: json.loads(open(f"metrics/eval/{name}.json").read()) for name in args.checkpoints}
rows = {name: headline(metrics) for name, metrics in evaluations.items()}
card = scorecard(rows)
for pair in args.start:
    name, _, start = pair.partition("=")
    if name not in rows or start not in rows:
        parser.error(f"--start {pair}: both checkpoints must be among {', '.join(rows)}")
    card[name]["start"] = start
    card[name]["delta_vs_start"] = scorecard({start: rows[start], name: rows[name]})[name]["delta_vs_base"]
write_json(METRICS_FILE, card)
write_rows_csv(SCORECARD_PLOT, [{"checkpoint": name, **row} for name, row in rows.items()])

width = max(len(name) for name in card)
print(f"{'checkpoint':<{width}}  " + "  ".join(f"{key:>13}" for key in HEADLINE))
for name, row in card.items():
    cells = [f"{row[key]:>6.3f} ({row['delta_vs_base'][key]:+.3f})" for key in HEADLINE]
    print(f"{name:<{width}}  " + "  ".join(cells))
for name, row in card.items():
    if "delta_vs_start" in row:
        tax = row["delta_vs_start"]
        print(f"{name} vs {row['start']}: strict {tax['strict_accuracy']:+.3f}, refusal {tax['refusal_rate']:+.3f}, "
              f"over-refusal {tax['over_refusal_rate']:+.3f}")
