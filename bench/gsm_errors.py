"""Why a checkpoint's GSM answers are wrong: each wrong test answer sorted by what went
wrong, on seen and on held-out phrasings, and how often each operation's equations are false.

    PYTHONPATH=. python bench/gsm_errors.py [--checkpoints sft rl] [--test data/prepared/test.jsonl] [--json out]

Reads stage evaluate's graded completions (data/eval/<checkpoint>.jsonl) and the test
split's reference reasoning; runs no model, so it takes a second. A wrong answer is
- "no answer line": no `#### N` line (the strict parser finds nothing);
- "arithmetic slip": the reference's steps (the same operations on the same numbers of the
  problem, in order) with at least one false equation ("3 * 15 = 42");
- "set-up": other steps: an operation missed, added or changed, or a number the problem
  did not ask to use (a distractor), whatever the arithmetic;
- "answer line": the reference's steps, every equation true, and still a wrong `#### N`.
Which kind dominates says which method can help: RL on a verifiable reward sharpens what
the policy samples on the prompts it trains on (the rl split: seen phrasings only, by
data.synthetic.held_out_fraction), while set-up errors on held-out phrasings are a reading
failure that only different training text addresses. Problems whose reference reasoning
has no equation the parser reads are counted apart ("unparsed reference").
"""

import argparse
import json
from collections import Counter, defaultdict

from posttrain import errors
from posttrain.equations import Equation, equations
from posttrain.gsm import extract_strict
from posttrain.io import GSM_RECORD, read_jsonl, write_json

KINDS = ("right", "no answer line", "arithmetic slip", "set-up", "answer line")


def same_steps(got: list[Equation], reference: list[Equation]) -> bool:
    """The same operations on the same numbers, step by step. A step's first operand
    after the first step is the result carried from the step before, so it is not
    compared: an arithmetic slip upstream changes it without changing the set-up."""
    if [e.operators for e in got] != [e.operators for e in reference]:
        return False
    return all(g.operands[1:] == r.operands[1:] and (i > 0 or g.operands[0] == r.operands[0])
               for i, (g, r) in enumerate(zip(got, reference)))


def classify(completion: str, strict_correct: bool, reference_steps: list[Equation]) -> str:
    """The kind of a graded completion, against the reference reasoning's equations."""
    if strict_correct:
        return "right"
    if extract_strict(completion) is None:
        return "no answer line"
    got = equations(completion)
    if not same_steps(got, reference_steps):
        return "set-up"
    return "arithmetic slip" if not all(e.true for e in got) else "answer line"


def operation_slips(completions: list[str]) -> dict[str, dict]:
    """Per operator (single-operation equations) and result size: equations written, false."""
    counts = defaultdict(Counter)
    for completion in completions:
        for e in equations(completion):
            if len(e.operators) != 1 or e.true_result is None:
                continue
            key = f"{e.operators[0]} ({'>= 100' if abs(e.true_result) >= 100 else '< 100'})"
            counts[key]["written"] += 1
            counts[key]["false"] += not e.true
    return {key: {**c, "false_share": round(c["false"] / c["written"], 3)} for key, c in sorted(counts.items())}


def analyse(graded: list[dict], references: dict[str, dict]) -> dict:
    rows = [r for r in graded if r.get("task", "gsm") == "gsm"]
    by_phrasing: dict[str, Counter] = defaultdict(Counter)
    unparsed = 0
    for r in rows:
        reference_steps = equations(references[r["id"]]["reasoning"])
        if not reference_steps:
            unparsed += 1
            continue
        by_phrasing[r.get("templates") or "all"][classify(r["completion"], r["strict_correct"], reference_steps)] += 1
    return {"problems": len(rows), "unparsed_reference": unparsed,
            "by_phrasing": {tag: {kind: counts[kind] for kind in KINDS} for tag, counts in sorted(by_phrasing.items())},
            "operations": operation_slips([r["completion"] for r in rows])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", default=["sft", "rl"], help="names under data/eval/")
    parser.add_argument("--test", default="data/prepared/test.jsonl", help="the test split (stage prepare)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    errors.install()  # a missing or damaged input is one line, not a traceback
    references = {r["id"]: r for r in read_jsonl(args.test, GSM_RECORD)}
    results = {}
    for name in args.checkpoints:
        graded = read_jsonl(f"data/eval/{name}.jsonl")
        missing = [r["id"] for r in graded if r.get("task", "gsm") == "gsm" and r["id"] not in references]
        if missing:
            raise SystemExit(f"data/eval/{name}.jsonl: {len(missing)} problems are not in {args.test} "
                             f"(first: {missing[0]}); evaluate and prepare ran on different splits")
        results[name] = analyse(graded, references)
        print(json.dumps({name: results[name]}), flush=True)
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
