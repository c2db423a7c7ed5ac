"""Stage `report` on crafted metrics: the scorecard's values and deltas, the alignment
tax, every linked chart a real PNG, and a missing or broken input leaving no report."""

import csv
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from conftest import dvc_arguments, run_stage
from posttrain.evaluation import HEADLINE
from posttrain.report import delta, pick_column, read_rows, scorecard_table

PIPELINE = ["base", "sft", "dpo", "rl", "safety"]
# Crafted headline numbers per checkpoint, in HEADLINE order.
NUMBERS = {
    "base": (0.05, 0.20, 0.30, 0.10, 0.04),
    "sft": (0.40, 0.45, 0.95, 0.15, 0.08),
    "dpo": (0.47, 0.49, 0.97, 0.12, 0.06),
    "rl": (0.61, 0.62, 1.00, 0.11, 0.05),
    "safety": (0.57, 0.60, 0.99, 0.93, 0.21),
}
CURVE_FILES = {
    "sft": ("metrics/sft/loss.csv", ["loss", "learning_rate", "grad_norm"]),
    "reward_model": ("metrics/reward_model/loss.csv", ["loss", "accuracy", "margin"]),
    "dpo": ("metrics/dpo/loss.csv", ["loss", "rewards/accuracies", "rewards/margins"]),
    "rl": ("metrics/rl/log.csv", ["loss", "reward", "rewards/exact/mean", "completions/mean_length", "entropy"]),
    "safety": ("metrics/safety/loss.csv", ["loss", "rewards/accuracies", "rewards/margins"]),
}
REWARD_MODEL = {"train_pairs": 64, "held_out_pairs": 22, "held_out_accuracy": 0.7727, "held_out_mean_margin": 0.6257,
                "train_loss": 0.6001}
BEST_OF_N = {"n_problems": 100, "n_samples": 4, "reward_model_top_pick_accuracy": 0.59, "majority_vote_accuracy": 0.6,
             "greedy_accuracy": 0.62, "pass_at_n": 0.79, "policy": "sft"}
MONITOR = {"strict_accuracy": 0.25, "flexible_accuracy": 0.3, "flexible_minus_strict": 0.05,
           "mean_completion_words": 20.0, "distinct_2": 0.4}
RL = {"algorithm": "grpo", "start": "sft", "steps": 4, "seconds_per_step": 2.0, "first_step_reward": 0.3,
      "last_step_reward": 0.9, "monitors": {"first_step": MONITOR, "last_step": MONITOR,
                                            "change": {k: 0.0 for k in MONITOR}}}


def write_csv(path: Path, columns: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([columns, *rows])


def craft(root: Path, checkpoints=PIPELINE) -> Path:
    """metrics/ as the pipeline would leave it, for the checkpoints given."""
    (root / "metrics/eval").mkdir(parents=True, exist_ok=True)
    for name in checkpoints:
        strict, flexible, fmt, refusal, over = NUMBERS[name]
        evaluation = {"checkpoint": name,
                      "gsm": {"n": 100, "strict_accuracy": strict, "flexible_accuracy": flexible, "format_rate": fmt},
                      "safety": {"n_harmful": 27, "n_benign": 27, "refusal_rate": refusal, "over_refusal_rate": over}}
        (root / f"metrics/eval/{name}.json").write_text(json.dumps(evaluation))
    for name, (path, columns) in CURVE_FILES.items():
        if name in checkpoints or name == "reward_model":
            write_csv(root / path, ["step", *columns], [[s, *(1.0 / s + i for i in range(len(columns)))]
                                                        for s in (1, 2, 3, 4)])
    write_csv(root / "metrics/reward_model/scores.csv", ["bin", "chosen", "rejected"],
              [[-1.0, 0, 3], [-0.5, 1, 4], [0.0, 2, 2], [0.5, 4, 1], [1.0, 3, 0]])
    (root / "metrics/reward_model.json").write_text(json.dumps(REWARD_MODEL))
    (root / "metrics/best_of_n.json").write_text(json.dumps(BEST_OF_N))
    if "rl" in checkpoints:
        (root / "metrics/rl.json").write_text(json.dumps(RL))
    (root / "metrics/compare.json").write_text(json.dumps(crafted_compare(checkpoints)))
    return root


def crafted_compare(checkpoints) -> dict:
    """Stage compare's intervals and paired tests: the second checkpoint's accuracy gain
    is beyond noise, every other change within it."""
    card = {}
    for index, name in enumerate(checkpoints):
        strict, _, _, refusal, over = NUMBERS[name]
        card[name] = {"intervals": {key: {"value": value, "n": 100, "ci95_low": max(0, value - .09),
                                          "ci95_high": min(1, value + .09)}
                                    for key, value in (("strict_accuracy", strict), ("refusal_rate", refusal),
                                                       ("over_refusal_rate", over))}}
        if index:
            previous = NUMBERS[checkpoints[index - 1]]
            card[name]["paired_vs_previous"] = {
                key: {"delta": round(value - previous[k], 4), "n": 100, "ci95_low": -0.1, "ci95_high": 0.1,
                      "gained": 9, "lost": 3,
                      "p_value": 0.001 if (index, key) == (1, "strict_accuracy") else 0.4,
                      "significant": (index, key) == (1, "strict_accuracy")}
                for k, key, value in ((0, "strict_accuracy", strict), (3, "refusal_rate", refusal),
                                      (4, "over_refusal_rate", over))}
    return card


# report's options that are not a training curve (--<stage> CSV)
INPUT_OPTIONS = {"--checkpoints", "--start", "--evaluations", "--compare", "--reward-model", "--reward-scores",
                 "--best-of-n", "--rl-monitors", "--rl-held-out", "--safety-held-out", "--out", "--images"}


def report_arguments(checkpoints: list[str], curves: list[str] = (), start: list[str] = ()) -> list[str]:
    """dvc.yaml's arguments for report, with other checkpoints, curves and --start."""
    options, flag = {}, None
    for word in dvc_arguments("report"):
        if word.startswith("--"):
            flag = word
            options.setdefault(flag, [])
        else:
            options[flag].append(word)
    options["--checkpoints"] = list(checkpoints)
    del options["--start"]
    words = [word for flag, values in options.items()
             if flag in INPUT_OPTIONS or flag[2:] in curves for word in (flag, *values)]
    return words + [word for pair in start for word in ("--start", pair)]


def test_dvc_yaml_gives_report_every_checkpoint_and_every_curve():
    words = dvc_arguments("report")
    assert words[words.index("--checkpoints") + 1:][:len(PIPELINE)] == tuple(PIPELINE)
    for name, (path, _) in CURVE_FILES.items():
        assert words[words.index(f"--{name}") + 1] == path


def linked_images(root: Path) -> list[Path]:
    markdown = (root / "metrics/report.md").read_text()
    return [root / "metrics" / link for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)]


def assert_no_report(root: Path) -> None:
    assert not (root / "metrics/report.md").exists()
    assert not (root / "metrics/report").exists()
    assert not [p.name for p in (root / "metrics").iterdir() if ".tmp" in p.name]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    root = craft(tmp_path_factory.mktemp("report"))
    run_stage(root, "report")  # dvc.yaml's arguments: every checkpoint and curve, --start safety=rl
    return root


def test_scorecard_values_and_deltas(full_report):
    markdown = (full_report / "metrics/report.md").read_text()
    for index, name in enumerate(PIPELINE):
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        assert len(cells) == len(HEADLINE)
        for k, cell in enumerate(cells):
            value, previous, base = NUMBERS[name][k], NUMBERS[PIPELINE[max(index - 1, 0)]][k], NUMBERS["base"][k]
            numbers = [float(x) for x in re.findall(r"[+-]?\d+\.\d+", cell)]
            expected = [value] if index == 0 else [value, value - previous, value - base]
            assert numbers == pytest.approx(expected, abs=5e-4), (name, HEADLINE[k], cell)
            if index:
                assert "Δprev" in cell and "Δbase" in cell and cell.index("Δprev") < cell.index("Δbase")
    order = [markdown.index(f"| {name} |") for name in PIPELINE]
    assert order == sorted(order)


def test_alignment_tax_of_safety_against_its_start(full_report):
    markdown = (full_report / "metrics/report.md").read_text()
    line = next(line for line in markdown.splitlines() if line.startswith("- **safety**"))
    assert "**rl**" in line
    for label, k in (("strict accuracy", 0), ("over-refusal rate", 4), ("refusal rate", 3)):
        before, after = NUMBERS["rl"][k], NUMBERS["safety"][k]
        match = re.search(rf"(?<![-\w]){label} ([+-]\d+\.\d+) \((\d+\.\d+) → (\d+\.\d+)\)", line)
        assert match, (label, line)
        assert [float(x) for x in match.groups()] == pytest.approx([after - before, before, after], abs=5e-4)


def test_the_report_says_which_changes_are_real(full_report):
    markdown = (full_report / "metrics/report.md").read_text()
    section = markdown.split("## Which changes are real")[1].split("\n## ")[0]
    first, second = PIPELINE[0], PIPELINE[1]
    gain = NUMBERS[second][0] - NUMBERS[first][0]
    summary = f"Changes beyond noise (exact McNemar, p < 0.05): strict accuracy {second} vs {first} {gain:+.3f}."
    assert summary in section
    rows = [line for line in section.splitlines() if line.startswith(f"| {second} vs {first} |")]
    assert len(rows) == 3 and "**real**" in rows[0] and all("within noise" in row for row in rows[1:])
    assert sum("within noise" in line for line in section.splitlines()) == 3 * (len(PIPELINE) - 1) - 1


def test_other_numbers(full_report):
    markdown = (full_report / "metrics/report.md").read_text()
    assert f"{REWARD_MODEL['held_out_accuracy']:.3f}" in markdown
    assert f"pass@{BEST_OF_N['n_samples']} {BEST_OF_N['pass_at_n']:.3f}" in markdown
    assert f"{RL['first_step_reward']:.3f} → {RL['last_step_reward']:.3f}" in markdown


def test_every_linked_image_is_a_png_and_every_curve_is_linked(full_report):
    images = linked_images(full_report)
    names = {image.name for image in images}
    assert names == {"scorecard.png", "reward_model_scores.png", *(f"curve_{c}.png" for c in CURVE_FILES)}
    assert names == {p.name for p in (full_report / "metrics/report").iterdir()}  # nothing unlinked either
    for image in images:
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image
        with Image.open(image) as png:
            assert png.format == "PNG" and png.width >= 400 and png.height >= 250, (image, png.size)


def test_rl_held_out_accuracy_is_reported_and_drawn_beside_the_reward(tmp_path):
    root = craft(tmp_path)
    rl = {**RL, "held_out": {"prompts": 48, "accuracy_by_step": {"0": 0.5, "2": 0.4375, "4": 0.3958}}}
    (root / "metrics/rl.json").write_text(json.dumps(rl))
    write_csv(root / "metrics/rl/held_out.csv", ["step", "held_out_accuracy", "held_out_format_rate"],
              [[0, 0.5, 1.0], [2, 0.4375, 1.0], [4, 0.3958, 1.0]])
    run_stage(root, "report")
    markdown = (root / "metrics/report.md").read_text()
    assert "Held-out accuracy (48 rl prompts never trained on" in markdown
    assert "step 0: 0.500, step 2: 0.438, step 4: 0.396" in markdown
    assert (root / "metrics/report/curve_rl.png").exists()


def test_safety_held_out_readings_are_tabled_and_drawn_beside_its_curves(tmp_path):
    from matplotlib.image import imread

    root = craft(tmp_path)
    run_stage(root, "report")  # no held-out file yet: three panels, one row, no section
    plain_height = imread(root / "metrics/report/curve_safety.png").shape[0]
    assert "held out while it trained" not in (root / "metrics/report.md").read_text()
    write_csv(root / "metrics/safety/held_out.csv",
              ["step", "held_out_refusal_rate", "held_out_over_refusal_rate", "held_out_gsm_accuracy"],
              [[0, 0.0, 0.0, 0.5625], [2, 0.25, "", 0.5], [4, 0.5625, 0.125, 0.4375]])
    run_stage(root, "report")
    markdown = (root / "metrics/report.md").read_text()
    assert "## Safety, held out while it trained" in markdown
    assert "| step | refusal (harmful) | over-refusal (benign) | GSM strict accuracy |" in markdown
    assert "| 0 | 0.000 | 0.000 | 0.562 |" in markdown
    assert "| 2 | 0.250 | – | 0.500 |" in markdown  # a blank cell reads as not measured
    assert "| 4 | 0.562 | 0.125 | 0.438 |" in markdown
    # Three more panels: a second row of them.
    assert imread(root / "metrics/report/curve_safety.png").shape[0] == 2 * plain_height


def test_a_curve_is_drawn_for_each_log_given_and_only_those(tmp_path):
    root = craft(tmp_path, checkpoints=["base", "sft"])  # no dpo, rl, safety files at all
    run_stage(root, "report", *report_arguments(["base", "sft"], curves=["sft", "reward_model"]))
    names = {image.name for image in linked_images(root)}
    assert names == {"scorecard.png", "reward_model_scores.png", "curve_sft.png", "curve_reward_model.png"}
    markdown = (root / "metrics/report.md").read_text()
    assert "## RL" not in markdown and "Alignment tax" not in markdown


def test_a_new_stage_log_is_drawn_by_its_loss(tmp_path):
    # A stage the report was never told about: one --<stage> CSV and it has its curve.
    root = craft(tmp_path, checkpoints=["base", "sft"])
    write_csv(root / "metrics/kto/loss.csv", ["step", "loss", "kl"], [[1, 0.7, 0.0], [2, 0.5, 0.1]])
    run_stage(root, "report", *report_arguments(["base", "sft"]), "--kto", "metrics/kto/loss.csv")
    assert {image.name for image in linked_images(root)} == {"scorecard.png", "reward_model_scores.png",
                                                              "curve_kto.png"}
    assert "### kto" in (root / "metrics/report.md").read_text()


def test_a_stray_argument_is_one_line_and_writes_nothing(tmp_path):
    root = craft(tmp_path, checkpoints=["base", "sft"])
    result = run_stage(root, "report", *report_arguments(["base", "sft"]), "--kto", check=False)
    assert result.returncode != 0 and "--<stage> CSV" in result.stderr and "--kto" in result.stderr
    assert_no_report(root)


def test_a_log_with_no_steps_is_said_not_drawn(tmp_path):
    root = craft(tmp_path, checkpoints=["base", "sft"])
    write_csv(root / "metrics/sft/loss.csv", ["step", "loss"], [["", ""]])  # what a run that logged nothing leaves
    run_stage(root, "report", *report_arguments(["base", "sft"], curves=["sft"]))
    assert "metrics/sft/loss.csv logged no steps" in (root / "metrics/report.md").read_text()
    assert not (root / "metrics/report/curve_sft.png").exists()
    assert {image.name for image in linked_images(root)} == {"scorecard.png", "reward_model_scores.png"}


def test_a_run_too_short_to_log_its_loss_is_said_not_drawn(tmp_path):
    # One step with logging_steps 2: the trainer's final entry fills the reward columns, not the loss.
    root = craft(tmp_path, checkpoints=["base", "sft"])
    write_csv(root / "metrics/sft/loss.csv", ["step", "loss", "grad_norm"], [[1, "", 0.5]])
    run_stage(root, "report", *report_arguments(["base", "sft"], curves=["sft"]))
    assert "metrics/sft/loss.csv logged no steps" in (root / "metrics/report.md").read_text()
    assert not (root / "metrics/report/curve_sft.png").exists()


def test_a_log_without_its_main_column_fails(tmp_path):
    root = craft(tmp_path, checkpoints=["base", "sft"])
    write_csv(root / "metrics/sft/loss.csv", ["step", "grad_norm"], [[1, 0.5]])
    result = run_stage(root, "report", *report_arguments(["base", "sft"], curves=["sft"]), check=False)
    assert result.returncode != 0 and "metrics/sft/loss.csv" in result.stderr and "'loss'" in result.stderr
    assert_no_report(root)


@pytest.mark.parametrize("missing", ["metrics/safety/loss.csv", "metrics/eval/dpo.json",
                                     "metrics/reward_model/scores.csv", "metrics/rl.json"])
def test_missing_input_names_the_file_and_writes_nothing(tmp_path, missing):
    root = craft(tmp_path)
    (root / missing).unlink()
    result = run_stage(root, "report", check=False)
    assert result.returncode != 0
    assert missing in result.stderr
    assert_no_report(root)


def test_every_missing_input_is_named_at_once(tmp_path):
    root = craft(tmp_path)
    gone = ["metrics/eval/safety.json", "metrics/safety/loss.csv", "metrics/best_of_n.json"]
    for path in gone:
        (root / path).unlink()
    result = run_stage(root, "report", check=False)
    assert result.returncode != 0
    assert all(path in result.stderr for path in gone), result.stderr
    assert_no_report(root)


def test_failure_while_drawing_leaves_no_half_report(tmp_path):
    root = craft(tmp_path)
    write_csv(root / "metrics/reward_model/scores.csv", ["bin", "chosen", "rejected"], [[0.0, "many", 1]])
    result = run_stage(root, "report", check=False)
    assert result.returncode != 0 and "many" in result.stderr
    assert_no_report(root)


def test_start_must_name_checkpoints(tmp_path):
    root = craft(tmp_path)
    arguments = report_arguments(["base", "sft", "dpo", "rl"], start=["safety=rl"])
    result = run_stage(root, "report", *arguments, check=False)
    assert result.returncode != 0 and "safety=rl" in result.stderr
    assert_no_report(root)


def test_read_rows_skips_blank_cells_and_placeholder_rows(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,loss,kl\n1,0.5,\n2,0.25,0.1\n")
    assert read_rows(path) == [{"step": 1.0, "loss": 0.5}, {"step": 2.0, "loss": 0.25, "kl": 0.1}]
    path.write_text("step,loss\n,\n")  # a log that recorded no steps
    assert read_rows(path) == []


def test_pick_column_takes_the_first_alternative_present():
    rows = [{"step": 1.0, "reward_exact": 0.5}, {"step": 2.0, "kl": 0.1}]
    assert pick_column(rows, "rewards/exact/mean|reward_exact") == "reward_exact"
    assert pick_column(rows, "kl") == "kl"
    assert pick_column(rows, "entropy") is None


def test_delta_never_prints_negative_zero():
    assert delta(-0.0001) == "+0.000" and delta(-0.0) == "+0.000"
    assert delta(-0.25) == "-0.250" and delta(0.1) == "+0.100"


def test_scorecard_table_has_a_row_per_checkpoint_and_a_column_per_metric():
    card = {name: {**dict(zip(HEADLINE, NUMBERS[name])), "delta_vs_base": dict.fromkeys(HEADLINE, 0.0),
                   "delta_vs_previous": dict.fromkeys(HEADLINE, 0.0)} for name in ("base", "sft")}
    lines = scorecard_table(card).splitlines()
    assert lines[0] == "| checkpoint | " + " | ".join(HEADLINE) + " |"
    assert len(lines) == 4 and all(line.count("|") == len(HEADLINE) + 2 for line in lines)
