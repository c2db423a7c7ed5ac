"""Stage `compare`: every evaluated checkpoint side by side, with deltas against base.

    PYTHONPATH=. python stages/compare.py base sft

Reads metrics/eval/<checkpoint>.json for each name given (in pipeline order) and
writes metrics/compare.json: the headline metrics of each checkpoint, their change
from base and from the previous checkpoint. No model is loaded; it takes a second.
"""

import argparse
import json

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("checkpoints", nargs="+", help="checkpoint names in pipeline order, base first")
args = parser.parse_args()

from posttrain.evaluation import HEADLINE, headline, scorecard  # noqa: E402
from posttrain.io import write_json  # noqa: E402

METRICS_FILE = "metrics/compare.json"

evaluations = {name: json.loads(open(f"metrics/eval/{name}.json").read()) for name in args.checkpoints}
card = scorecard({name: headline(metrics) for name, metrics in evaluations.items()})
write_json(METRICS_FILE, card)

width = max(len(name) for name in card)
print(f"{'checkpoint':<{width}}  " + "  ".join(f"{key:>13}" for key in HEADLINE))
for name, row in card.items():
    cells = [f"{row[key]:>6.3f} ({row['delta_vs_base'][key]:+.3f})" for key in HEADLINE]
    print(f"{name:<{width}}  " + "  ".join(cells))
