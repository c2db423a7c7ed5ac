"""Stage `report`: a report card to read, a markdown file with its charts in a directory beside it.

    PYTHONPATH=. python stages/report.py --checkpoints base sft dpo rl safety --start safety=rl \
        --evaluations metrics/eval --compare metrics/compare.json \
        --reward-model metrics/reward_model.json --reward-scores metrics/reward_model/scores.csv \
        --best-of-n metrics/best_of_n.json --rl-monitors metrics/rl.json --rl-held-out metrics/rl/held_out.csv \
        --safety-held-out metrics/safety/held_out.csv \
        --sft metrics/sft/loss.csv --dpo metrics/dpo/loss.csv ... \
        --out metrics/report.md --images metrics/report

(dvc.yaml passes these; every path is an argument.) Trains and loads nothing; it reads
what the other stages wrote and takes a few seconds:
- EVALUATIONS/<checkpoint>.json of each checkpoint named (pipeline order, base first):
  the scorecard, each value with its change from the previous checkpoint and from base
  (the numbers of stage `compare`, read from COMPARE), as a table and a chart;
- --start CHECKPOINT=START: the alignment tax of CHECKPOINT, its change against the
  checkpoint it was trained from (strict accuracy, refusal, over-refusal);
- --<stage> CSV: a training-curve chart for each training log given (COLUMNS says which
  columns to draw; a stage not listed there gets its loss);
- the reward model's numbers and score histogram, best-of-N's numbers, and the RL
  monitors when rl is among the checkpoints (with its held-out accuracy if that file exists);
- --<stage>-held-out CSV (rl, safety): the held-out monitor's readings per step, drawn with
  that stage's training curves, and for safety a table of them.
Every input it names must exist: a missing one stops the stage, naming the file, before
anything is written. The charts replace IMAGES whole, then the markdown is written.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from posttrain.config import add_checkpoint_arguments, checkpoint_starts

# Columns drawn per training log, one panel each. The first column must be in the log;
# the others are drawn where it has them. "a|b": whichever of a, b it has (the RL
# algorithms name some columns differently).
COLUMNS = {
    "sft": ["loss", "learning_rate", "grad_norm"],
    "reward_model": ["loss", "accuracy", "margin"],
    "dpo": ["loss", "rewards/accuracies", "rewards/margins"],
    "rl": ["reward", "rewards/exact/mean|reward_exact", "rewards/format/mean|reward_format", "loss", "kl",
           "completions/mean_length|mean_completion_length", "frac_reward_zero_std", "entropy"],
    "safety": ["loss", "rewards/accuracies", "rewards/margins"],
}
DEFAULT_COLUMNS = ["loss"]
# Columns of a stage's held-out monitor (--<stage>-held-out), drawn beside its curves.
HELD_OUT_COLUMNS = {"rl": ["held_out_accuracy"],
                    "safety": ["held_out_refusal_rate", "held_out_over_refusal_rate", "held_out_gsm_accuracy"]}

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,  # --rl is a curve
                                 epilog="Any other --<stage> CSV is that stage's training log, drawn as a curve.")
add_checkpoint_arguments(parser)
parser.add_argument("--evaluations", required=True, type=Path, help="directory of <checkpoint>.json (stage evaluate)")
parser.add_argument("--compare", required=True, type=Path, help="intervals and paired tests (stage compare)")
parser.add_argument("--reward-model", required=True, type=Path, help="reward model numbers (stage reward_model)")
parser.add_argument("--reward-scores", required=True, type=Path, help="reward model score histogram, CSV")
parser.add_argument("--best-of-n", required=True, type=Path, help="best-of-N numbers (stage best_of_n)")
parser.add_argument("--rl-monitors", type=Path, help="RL monitors (stage rl); required when rl is a checkpoint")
parser.add_argument("--rl-held-out", type=Path, help="optional: RL's held-out accuracy per step, drawn by its reward")
parser.add_argument("--safety-held-out", type=Path,
                    help="optional: safety's held-out refusal, over-refusal and GSM accuracy per step")
parser.add_argument("--out", required=True, type=Path, help="the report, markdown")
parser.add_argument("--images", required=True, type=Path, help="directory of its charts, replaced whole")
args, rest = parser.parse_known_args()
pairs = list(zip(rest[::2], rest[1::2]))
if len(rest) % 2 or not all(flag.startswith("--") and not path.startswith("--") for flag, path in pairs):
    parser.error(f"expected --<stage> CSV pairs for the training curves, got: {' '.join(rest)}")
curves = {flag[2:]: Path(path) for flag, path in pairs}  # stage -> its training log

from posttrain.evaluation import headline, scorecard  # noqa: E402
from posttrain.io import atomic_dir, write_text_atomic  # noqa: E402
from posttrain.report import (alignment_tax, best_of_n_line, csv_columns, image, missing_inputs, pick_column,  # noqa: E402
                              plot_curve, plot_histogram, plot_scorecard, read_rows, reward_model_line, rl_section,
                              safety_held_out_section, scorecard_table, significance_section)

LINK = Path(os.path.relpath(args.images, args.out.parent))  # image links are relative to the markdown file

# 1. What to report, checked before anything is read.
starts = checkpoint_starts(parser, args)
if "rl" in args.checkpoints and args.rl_monitors is None:
    parser.error("--rl-monitors: required when rl is among the checkpoints")

inputs = {str(args.evaluations / f"{name}.json"): f"evaluation of checkpoint {name}" for name in args.checkpoints}
inputs |= {str(path): f"training curve {name}" for name, path in curves.items()}
inputs |= {str(args.reward_model): "reward model numbers", str(args.reward_scores): "reward model score histogram",
           str(args.best_of_n): "best-of-N numbers", str(args.compare): "intervals and paired tests (stage compare)"}
if "rl" in args.checkpoints:
    inputs[str(args.rl_monitors)] = "RL monitors, as rl is a checkpoint"
missing = missing_inputs(inputs)
if missing:
    sys.exit("report: missing input(s), nothing written:\n  " + "\n  ".join(missing))

# 2. Read everything.
headlines = {name: headline(json.loads((args.evaluations / f"{name}.json").read_text())) for name in args.checkpoints}
card = scorecard(headlines)
logs = {name: read_rows(path) for name, path in curves.items()}
specs = {name: COLUMNS.get(name, DEFAULT_COLUMNS) for name in curves}
columns = {name: [c for c in (pick_column(logs[name], spec) for spec in specs[name]) if c] for name in curves}
for name, path in curves.items():
    first = specs[name][0]
    if logs[name] and pick_column(logs[name], first) is None:
        if not set(first.split("|")) & set(csv_columns(path)):
            sys.exit(f"report: {path} has no column {first!r}, nothing written")
        logs[name] = []  # declared but never logged: the run ended before its first logging step
held_out = {"rl": args.rl_held_out, "safety": args.safety_held_out}
held_out_rows = {name: read_rows(path) for name, path in held_out.items()
                 if name in curves and logs[name] and path is not None and path.exists()}
for name, rows in held_out_rows.items():  # more panels on the stage's curves
    if rows:
        logs[name] = sorted(logs[name] + rows, key=lambda row: row["step"])
        columns[name] += [c for c in HELD_OUT_COLUMNS[name] if any(c in row for row in rows)]
reward_model = json.loads(args.reward_model.read_text())
best_of_n = json.loads(args.best_of_n.read_text())
compare = {name: row for name, row in json.loads(args.compare.read_text()).items() if name in args.checkpoints}
rl = json.loads(args.rl_monitors.read_text()) if "rl" in args.checkpoints else None

# 3. Charts, then the markdown that links them.
with atomic_dir(args.images) as out:
    plot_scorecard(card, out / "scorecard.png")
    plot_histogram(read_rows(args.reward_scores, key="bin"), ["chosen", "rejected"], out / "reward_model_scores.png",
                   title="Reward model scores of held-out pairs", xlabel="reward model score")
    for name, path in curves.items():
        if logs[name]:
            plot_curve(f"{name} ({path})", logs[name], columns[name], out / f"curve_{name}.png")

    sections = [
        "# Post-training report",
        f"Checkpoints in pipeline order: {' → '.join(args.checkpoints)}. Written by `stages/report.py` "
        "from the metrics the other stages wrote; `dvc repro` rewrites it.",
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
    if held_out_rows.get("safety"):
        sections += ["## Safety, held out while it trained", safety_held_out_section(held_out_rows["safety"])]
    sections.append("## Training curves")
    for name, path in curves.items():
        sections += [f"### {name}", image(f"{name} training curves", f"{LINK}/curve_{name}.png") if logs[name]
                     else f"_{path} logged no steps._"]
    markdown = "\n\n".join(sections) + "\n"
write_text_atomic(args.out, markdown)
print(f"report: {args.out} and {len(list(args.images.iterdir()))} charts in {args.images}/")
