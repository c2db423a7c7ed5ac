"""Stage `report`: a report card to read, metrics/report.md with its charts in metrics/report/.

    PYTHONPATH=. python stages/report.py base sft dpo rl safety --start safety=rl

Trains and loads nothing; it reads what the other stages wrote and takes a few seconds:
- metrics/eval/<checkpoint>.json of each checkpoint named (pipeline order, base first):
  the scorecard, each value with its change from the previous checkpoint and from base
  (the numbers of stage `compare`), as a table and a chart;
- --start CHECKPOINT=START: the alignment tax of CHECKPOINT, its change against the
  checkpoint it was trained from (strict accuracy, refusal, over-refusal);
- --curves: a training-curve chart per log in CURVES (default: every checkpoint named
  that has one, and the reward model);
- metrics/reward_model.json with the score histogram metrics/reward_model/scores.csv,
  metrics/best_of_n.json, and metrics/rl.json when rl is among the checkpoints.
Every input it names must exist: a missing one stops the stage, naming the file, before
anything is written. The charts replace metrics/report/ whole, then the markdown is written.
"""

import argparse
import json
import sys
from pathlib import Path

# Training logs: name -> (CSV, columns drawn, one panel each). The first column must be in
# the log; the others are drawn where it has them. "a|b": whichever of a, b it has (the
# RL algorithms name some columns differently).
CURVES = {
    "sft": ("metrics/sft/loss.csv", ["loss", "learning_rate", "grad_norm"]),
    "reward_model": ("metrics/reward_model/loss.csv", ["loss", "accuracy", "margin"]),
    "dpo": ("metrics/dpo/loss.csv", ["loss", "rewards/accuracies", "rewards/margins"]),
    "rl": ("metrics/rl/log.csv", ["reward", "rewards/exact/mean|reward_exact", "rewards/format/mean|reward_format",
                                  "loss", "kl", "completions/mean_length|mean_completion_length",
                                  "frac_reward_zero_std", "entropy"]),
    "safety": ("metrics/safety/loss.csv", ["loss", "rewards/accuracies", "rewards/margins"]),
}

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("checkpoints", nargs="+", help="checkpoint names in pipeline order, base first")
parser.add_argument("--start", action="append", default=[], metavar="CHECKPOINT=START",
                    help="report the alignment tax of CHECKPOINT against START (both among the checkpoints)")
parser.add_argument("--curves", nargs="*", choices=list(CURVES), metavar="NAME",
                    help=f"training curves to draw, of {', '.join(CURVES)} "
                         "(default: the checkpoints named that have one, and reward_model)")
args = parser.parse_args()

from posttrain.evaluation import headline, scorecard  # noqa: E402
from posttrain.io import atomic_dir, write_text_atomic  # noqa: E402
from posttrain.report import (alignment_tax, best_of_n_line, csv_columns, image, missing_inputs, pick_column,  # noqa: E402
                              plot_curve, plot_histogram, plot_scorecard, read_rows, reward_model_line, rl_section,
                              scorecard_table, significance_section)

REPORT_FILE = Path("metrics/report.md")
IMAGE_DIR = Path("metrics/report")
LINK = IMAGE_DIR.relative_to(REPORT_FILE.parent)  # image links are relative to the markdown file
REWARD_MODEL, SCORES = "metrics/reward_model.json", "metrics/reward_model/scores.csv"
BEST_OF_N, RL = "metrics/best_of_n.json", "metrics/rl.json"
RL_HELD_OUT = "metrics/rl/held_out.csv"  # optional: rl's held-out accuracy, drawn beside its reward
COMPARE = "metrics/compare.json"  # stage compare's intervals and paired tests

# 1. What to report, checked before anything is read.
if len(set(args.checkpoints)) < len(args.checkpoints):
    parser.error(f"a checkpoint is named twice: {' '.join(args.checkpoints)}")
starts = dict(pair.partition("=")[::2] for pair in args.start)
for checkpoint, start in starts.items():
    if checkpoint not in args.checkpoints or start not in args.checkpoints:
        parser.error(f"--start {checkpoint}={start}: both must be among the checkpoints {' '.join(args.checkpoints)}")
curves = args.curves if args.curves is not None else [
    name for name in CURVES if name in args.checkpoints or name == "reward_model"]

inputs = {f"metrics/eval/{name}.json": f"evaluation of checkpoint {name}" for name in args.checkpoints}
inputs |= {CURVES[name][0]: f"training curve {name}" for name in curves}
inputs |= {REWARD_MODEL: "reward model numbers", SCORES: "reward model score histogram", BEST_OF_N: "best-of-N numbers",
           COMPARE: "intervals and paired tests (stage compare)"}
if "rl" in args.checkpoints:
    inputs[RL] = "RL monitors, as rl is a checkpoint"
missing = missing_inputs(inputs)
if missing:
    sys.exit("report: missing input(s), nothing written:\n  " + "\n  ".join(missing))

# 2. Read everything.
headlines = {name: headline(json.loads(Path(f"metrics/eval/{name}.json").read_text())) for name in args.checkpoints}
card = scorecard(headlines)
logs = {name: read_rows(CURVES[name][0]) for name in curves}
columns = {name: [c for c in (pick_column(logs[name], spec) for spec in CURVES[name][1]) if c] for name in curves}
for name in curves:
    first = CURVES[name][1][0]
    if logs[name] and pick_column(logs[name], first) is None:
        if not set(first.split("|")) & set(csv_columns(CURVES[name][0])):
            sys.exit(f"report: {CURVES[name][0]} has no column {first!r}, nothing written")
        logs[name] = []  # declared but never logged: the run ended before its first logging step
if "rl" in curves and logs["rl"] and Path(RL_HELD_OUT).exists():  # one more panel on the rl curves
    held_out_rows = read_rows(RL_HELD_OUT)
    if held_out_rows:
        logs["rl"] = sorted(logs["rl"] + held_out_rows, key=lambda row: row["step"])
        columns["rl"].append("held_out_accuracy")
reward_model = json.loads(Path(REWARD_MODEL).read_text())
best_of_n = json.loads(Path(BEST_OF_N).read_text())
compare = {name: row for name, row in json.loads(Path(COMPARE).read_text()).items() if name in args.checkpoints}
rl = json.loads(Path(RL).read_text()) if "rl" in args.checkpoints else None

# 3. Charts, then the markdown that links them.
with atomic_dir(IMAGE_DIR) as out:
    plot_scorecard(card, out / "scorecard.png")
    plot_histogram(read_rows(SCORES, key="bin"), ["chosen", "rejected"], out / "reward_model_scores.png",
                   title="Reward model scores of held-out pairs", xlabel="reward model score")
    for name in curves:
        if logs[name]:
            plot_curve(f"{name} ({CURVES[name][0]})", logs[name], columns[name], out / f"curve_{name}.png")

    sections = [
        "# Post-training report",
        f"Checkpoints in pipeline order: {' → '.join(args.checkpoints)}. Written by `stages/report.py` "
        "from the files under metrics/; `dvc repro` rewrites it.",
        "## Scorecard",
        "Each cell: the value (Δprev: change from the previous checkpoint, Δbase: from base). "
        "Higher is better, except over_refusal_rate.",
        scorecard_table(card),
        image("Headline metrics per checkpoint", f"{LINK}/scorecard.png"),
        "## Which changes are real",
        significance_section(compare),
    ]
    if starts:
        sections += ["## Alignment tax", "\n".join(alignment_tax(headlines, c, s) for c, s in starts.items())]
    sections += ["## Reward model", reward_model_line(reward_model),
                 image("Reward model scores of chosen and rejected answers", f"{LINK}/reward_model_scores.png"),
                 "## Best-of-N", best_of_n_line(best_of_n)]
    if rl is not None:
        sections += ["## RL", rl_section(rl)]
    sections.append("## Training curves")
    for name in curves:
        sections += [f"### {name}", image(f"{name} training curves", f"{LINK}/curve_{name}.png") if logs[name]
                     else f"_{CURVES[name][0]} logged no steps._"]
    markdown = "\n\n".join(sections) + "\n"
write_text_atomic(REPORT_FILE, markdown)
print(f"report: {REPORT_FILE} and {len(list(IMAGE_DIR.iterdir()))} charts in {IMAGE_DIR}/")
