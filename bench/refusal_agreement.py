"""How well does the refusal judge agree with labelled completions? By model style and prompt kind.

    PYTHONPATH=. python bench/refusal_agreement.py [TABLE.jsonl ...] [--split held_out] [--show 20]

Each table row is {"text": completion, "label": "refusal" | "partial" | "compliance",
"style": model family, optional "prompt_kind" ("safe:..." / "unsafe:...") and "split"}.
Default tables: the two shipped with the project, `posttrain/resources/refusal_labels.jsonl`
(486 completions, no prompts) and `refusal_labels_prompted.jsonl` (857 completions with
their prompts in 17 model styles; its "held_out" rows were never read while the rules were
tuned, so `--split held_out` is the honest figure). Point it at your own human-labelled
table (XSTest's, say) to see how far to trust the refusal rates in `metrics/eval/`.

Prints, per table: 3-way agreement; binary agreement with precision and recall of
"refusal" (full refusals only, as `safety.refusal_rate` counts them); the same per style
and per prompt kind; the confusion counts; and with --show the first N disagreements.
Needs only the standard library and `posttrain.refusal`.
"""

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from posttrain.refusal import REFUSAL, classify_refusal

RESOURCES = Path(__file__).resolve().parents[1] / "posttrain" / "resources"
DEFAULT_TABLES = [RESOURCES / "refusal_labels.jsonl", RESOURCES / "refusal_labels_prompted.jsonl"]


class Tally:
    def __init__(self):
        self.n = self.three_way = self.binary = self.tp = self.fp = self.fn = 0

    def add(self, label: str, got: str) -> None:
        said, truth = got == REFUSAL, label == REFUSAL
        self.n += 1
        self.three_way += got == label
        self.binary += said == truth
        self.tp += said and truth
        self.fp += said and not truth
        self.fn += truth and not said

    def line(self, name: str) -> str:
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")
        return (f"  {name:26} n={self.n:4d}  3-way {self.three_way / self.n:.3f}  "
                f"binary {self.binary / self.n:.3f}  precision {precision:.2f}  recall {recall:.2f}")


def parse_row(line: str, where: str) -> dict:
    """One table row; a bad one stops the run with one line naming file and line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise SystemExit(f"{where}: not JSON ({error.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "label" not in row:
        raise SystemExit(f"{where}: a row needs 'text' (a string) and 'label'")
    return row


def load(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [parse_row(line, f"{path}:{number}") for number, line in enumerate(lines, 1) if line.strip()]


def report(path: Path, split: str | None, show: int) -> None:
    rows = [row for row in load(path) if split is None or row.get("split") == split]
    if not rows:
        print(f"{path}: no rows" + (f" with split {split!r}" if split else ""))
        return
    total, by_style, by_kind = Tally(), defaultdict(Tally), defaultdict(Tally)
    confusion, misses = Counter(), []
    for row in rows:
        got = classify_refusal(row["text"])
        total.add(row["label"], got)
        by_style[row.get("style", "?")].add(row["label"], got)
        if "prompt_kind" in row:
            by_kind[row["prompt_kind"].split(":")[0]].add(row["label"], got)
        if got != row["label"]:
            confusion[f"{row['label']} read as {got}"] += 1
            misses.append((row, got))
    print(f"{path}" + (f" (split {split})" if split else ""))
    print(total.line("all"))
    for name, tally in sorted(by_kind.items()):
        print(tally.line(f"{name} prompts"))
    for name, tally in sorted(by_style.items()):
        print(tally.line(name))
    print("  disagreements: " + (", ".join(f"{k} {v}" for k, v in confusion.most_common()) or "none"))
    for row, got in misses[:show]:
        print(f"    [{row.get('style', '?')}] labelled {row['label']}, read as {got}: {row['text'][:160]!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tables", nargs="*", type=Path, default=DEFAULT_TABLES)
    parser.add_argument("--split", default=None, help="only rows with this split (tables that have one)")
    parser.add_argument("--show", type=int, default=0, help="print the first N disagreements")
    args = parser.parse_args()
    for table in args.tables:
        report(table, args.split, args.show)
