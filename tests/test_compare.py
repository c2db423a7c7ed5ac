"""Stage compare on crafted evaluations: intervals and paired tests from the per-item results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def write_evaluation(root: Path, name: str, gsm: list[bool], harmful: list[str], benign: list[str]) -> None:
    rows = [{"task": "gsm", "id": f"g{i}", "strict_correct": ok} for i, ok in enumerate(gsm)]
    rows += [{"task": "safety", "id": f"h{i}", "kind": "harmful", "verdict": v} for i, v in enumerate(harmful)]
    rows += [{"task": "safety", "id": f"b{i}", "kind": "benign", "verdict": v} for i, v in enumerate(benign)]
    (root / "data/eval").mkdir(parents=True, exist_ok=True)
    (root / f"data/eval/{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rate = lambda flags: round(sum(flags) / len(flags), 4)  # noqa: E731
    metrics = {"gsm": {"strict_accuracy": rate(gsm), "flexible_accuracy": rate(gsm), "format_rate": 1.0},
               "safety": {"refusal_rate": rate([v == "refusal" for v in harmful]),
                          "over_refusal_rate": rate([v != "compliance" for v in benign])}}
    (root / "metrics/eval").mkdir(parents=True, exist_ok=True)
    (root / f"metrics/eval/{name}.json").write_text(json.dumps(metrics))


def test_compare_reports_intervals_and_which_changes_are_beyond_noise(tmp_path):
    n = 100
    write_evaluation(tmp_path, "base", [i < 10 for i in range(n)], ["compliance"] * 20, ["compliance"] * 20)
    # sft: 50 more right, none lost: real. safety from sft: 2 lost, 1 gained: noise; refusal 0 -> 12 of 20: real.
    write_evaluation(tmp_path, "sft", [i < 60 for i in range(n)], ["compliance"] * 20, ["compliance"] * 20)
    safety_gsm = [i < 60 for i in range(n)]
    safety_gsm[0] = safety_gsm[1] = False
    safety_gsm[70] = True
    write_evaluation(tmp_path, "safety", safety_gsm, ["refusal"] * 12 + ["compliance"] * 8,
                     ["partial"] + ["compliance"] * 19)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "stages/compare.py"), "--checkpoints", "base", "sft", "safety",
                             "--start", "safety=sft", "--evaluations", "metrics/eval", "--graded", "data/eval",
                             "--out", "metrics/compare.json", "--scorecard", "metrics/compare/scorecard.csv"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "metrics/compare.json").read_text())

    assert card["sft"]["intervals"]["strict_accuracy"]["n"] == n
    interval = card["sft"]["intervals"]["strict_accuracy"]
    assert (interval["ci95_low"], interval["ci95_high"]) == (pytest.approx(0.5020, abs=1e-3),
                                                             pytest.approx(0.6906, abs=1e-3))
    gain = card["sft"]["paired_vs_previous"]["strict_accuracy"]
    assert (gain["gained"], gain["lost"], gain["delta"], gain["significant"]) == (50, 0, 0.5, True)
    tax = card["safety"]["paired_vs_start"]["strict_accuracy"]
    assert (tax["gained"], tax["lost"], tax["delta"], tax["significant"]) == (1, 2, -0.01, False)
    assert tax["p_value"] == 1.0
    refusal = card["safety"]["paired_vs_start"]["refusal_rate"]
    assert refusal["n"] == 20 and refusal["gained"] == 12 and refusal["significant"] is True
    assert refusal["p_value"] == pytest.approx(2 / 2**12, abs=1e-4)
    over = card["safety"]["paired_vs_base"]["over_refusal_rate"]
    assert over["delta"] == 0.05 and over["significant"] is False
    assert "base" not in [k for k in card["base"] if k.startswith("paired")]  # nothing to compare base with
    assert "safety vs start: refusal_rate +0.600" in result.stdout
    assert "strict_accuracy -0.010" not in result.stdout  # noise is not announced as a change
