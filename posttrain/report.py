"""The report card: markdown and charts over metrics the other stages wrote.

Tables and text are pure functions over already-loaded metrics (tested without a
plot); the `plot_*` functions draw one PNG each with matplotlib's Agg canvas, so no
display and no pyplot state is involved. The scorecard numbers and their deltas come
from posttrain.evaluation.scorecard, the same ones stage `compare` writes.
"""

from __future__ import annotations

import csv
from pathlib import Path

from posttrain.evaluation import HEADLINE, scorecard

# Higher is better for every headline number except this one.
LOWER_IS_BETTER = ("over_refusal_rate",)


def rate(value: float) -> str:
    return f"{value:.3f}"


def delta(value: float) -> str:
    """A signed change; a change that rounds to zero reads +0.000, never -0.000."""
    return f"{round(value, 3) + 0.0:+.3f}"


# --- inputs -----------------------------------------------------------------------

def missing_inputs(paths: dict[str, str]) -> list[str]:
    """'path (why it is needed)' for every path that does not exist."""
    return [f"{path} ({why})" for path, why in paths.items() if not Path(path).is_file()]


def read_rows(path: str | Path, key: str = "step") -> list[dict[str, float]]:
    """A CSV of numbers (a per-step log, a histogram) as rows keyed by column. Blank
    cells (a column not logged at that step) are left out of their row, and rows
    without `key` dropped: the placeholder row of a log that recorded no steps."""
    with open(path, newline="") as f:
        rows = [{column: float(value) for column, value in row.items() if value not in ("", None)}
                for row in csv.DictReader(f)]
    return [row for row in rows if key in row]


def csv_columns(path: str | Path) -> list[str]:
    """The header of a CSV: the columns a log declares, logged at some step or not."""
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def pick_column(rows: list[dict[str, float]], spec: str) -> str | None:
    """The first of the '|'-separated alternative column names that the log has."""
    present = {key for row in rows for key in row}
    return next((name for name in spec.split("|") if name in present), None)


def series(rows: list[dict[str, float]], column: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one column, over the steps that logged it."""
    logged = [row for row in rows if column in row]
    return [row["step"] for row in logged], [row[column] for row in logged]


# --- markdown ---------------------------------------------------------------------

def scorecard_table(card: dict[str, dict]) -> str:
    """One row per checkpoint in pipeline order; each cell the value and its change
    from the previous checkpoint and from base (the first row)."""
    lines = ["| checkpoint | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
    for index, (name, row) in enumerate(card.items()):
        if index == 0:
            cells = [rate(row[key]) for key in HEADLINE]
        else:
            cells = [f"{rate(row[key])} (Δprev {delta(row['delta_vs_previous'][key])}, "
                     f"Δbase {delta(row['delta_vs_base'][key])})" for key in HEADLINE]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TAX_METRICS = {"strict_accuracy": "strict accuracy", "refusal_rate": "refusal rate",
               "over_refusal_rate": "over-refusal rate"}


def alignment_tax(headlines: dict[str, dict[str, float]], checkpoint: str, start: str) -> str:
    """What a checkpoint changed against the one it was trained from: the capability it
    cost (strict accuracy) for the safety it bought (refusal, over-refusal)."""
    change = scorecard({start: headlines[start], checkpoint: headlines[checkpoint]})[checkpoint]["delta_vs_base"]
    parts = [f"{label} {delta(change[key])} ({rate(headlines[start][key])} → {rate(headlines[checkpoint][key])})"
             for key, label in TAX_METRICS.items()]
    return f"- **{checkpoint}** against its start **{start}**: " + "; ".join(parts) + "."


def significance_section(compare: dict) -> str:
    """Each tested rate with its n and 95% interval, and each change from the previous
    checkpoint (and from the start, where one is named) with its paired test, saying in
    words which changes are beyond the noise of the test set (stage compare's numbers)."""
    lines = ["| checkpoint | rate | value (95% CI, n) | change | change 95% CI | gained / lost | McNemar p | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    real = []
    for name, row in compare.items():
        for key, interval in row.get("intervals", {}).items():
            label = TAX_METRICS.get(key, key.replace("_", " "))
            low, high = interval["ci95_low"], interval["ci95_high"]
            shown = f"{rate(interval['value'])} ({rate(low)}–{rate(high)}, n={interval['n']})"
            for against in ("previous", "start"):
                change = row.get(f"paired_vs_{against}", {}).get(key)
                if change is None:
                    continue
                previous = list(compare)[list(compare).index(name) - 1]
                other = row["start"] if against == "start" else previous
                if against == "start" and other == previous:
                    continue  # the same comparison, already listed
                verdict = "**real**" if change["significant"] else "within noise"
                if change["significant"]:
                    real.append(f"{label} {name} vs {other} {delta(change['delta'])}")
                lines.append(f"| {name} vs {other} | {label} | {shown} | {delta(change['delta'])} | "
                             f"{delta(change['ci95_low'])} to {delta(change['ci95_high'])} | "
                             f"{change['gained']} / {change['lost']} | {change['p_value']:.3g} | {verdict} |")
    summary = ("Changes beyond noise (exact McNemar, p < 0.05): " + "; ".join(real) + ".") if real else (
        "No change between checkpoints is beyond the noise of the test sets (exact McNemar, p < 0.05).")
    return summary + "\n\n" + "\n".join(lines)


def reward_model_line(metrics: dict) -> str:
    return (f"Held-out pair accuracy **{rate(metrics['held_out_accuracy'])}** on {metrics['held_out_pairs']} pairs "
            f"(mean chosen − rejected margin {delta(metrics['held_out_mean_margin'])}); "
            f"trained on {metrics['train_pairs']} pairs, final train loss {rate(metrics['train_loss'])}.")


def best_of_n_line(metrics: dict) -> str:
    n = metrics["n_samples"]
    return (f"Policy **{metrics['policy']}**, {n} samples on each of {metrics['n_problems']} test problems "
            f"(strict accuracy): reward-model top pick **{rate(metrics['reward_model_top_pick_accuracy'])}**, "
            f"majority vote {rate(metrics['majority_vote_accuracy'])}, greedy {rate(metrics['greedy_accuracy'])}, "
            f"pass@{n} {rate(metrics['pass_at_n'])}.")


RL_MONITORS = {"strict_accuracy": "strict accuracy", "flexible_minus_strict": "flexible − strict (format gaming)",
               "mean_completion_words": "mean completion words (length drift)",
               "distinct_2": "distinct-2 (diversity; a fall is mode collapse)"}


def rl_section(metrics: dict) -> str:
    """The RL run in one line and its failure-mode monitors, first against last step."""
    monitors = metrics["monitors"]
    lines = [f"**{metrics['algorithm']}** from **{metrics['start']}**, {metrics['steps']} steps "
             f"({metrics['seconds_per_step']:.1f} s/step): mean reward {rate(metrics['first_step_reward'])} "
             f"→ {rate(metrics['last_step_reward'])}.", "",
             "| monitor (on the step's samples) | first step | last step | change |", "|---|---|---|---|"]
    for key, label in RL_MONITORS.items():
        lines.append(f"| {label} | {monitors['first_step'][key]:.3g} | {monitors['last_step'][key]:.3g} | "
                     f"{delta(monitors['change'][key])} |")
    held_out = metrics.get("held_out") or {}
    if held_out.get("accuracy_by_step"):  # reward rising while this falls: reward hacking
        by_step = ", ".join(f"step {step}: {rate(value)}" for step, value in held_out["accuracy_by_step"].items())
        lines += ["", f"Held-out accuracy ({held_out['prompts']} rl prompts never trained on, one sample each at "
                      f"the training temperature; drawn with the training curves): {by_step}."]
    return "\n".join(lines)


SAFETY_HELD_OUT = {"held_out_refusal_rate": "refusal (harmful)", "held_out_over_refusal_rate": "over-refusal (benign)",
                   "held_out_gsm_accuracy": "GSM strict accuracy"}


def safety_held_out_section(rows: list[dict]) -> str:
    """Stage safety's held-out monitor as a table, one row per reading."""
    keys = [k for k in SAFETY_HELD_OUT if any(k in row for row in rows)]
    lines = ["Greedy, on prompts the stage never trains on, of the adapter as trained (before any "
             "interpolation): refusal rising with over-refusal is refusing everything; GSM accuracy "
             "falling is the alignment tax accruing.", "",
             "| step | " + " | ".join(SAFETY_HELD_OUT[k] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row['step']:g} | " + " | ".join(rate(row[k]) if k in row else "–"
                                                          for k in keys) + " |")
    return "\n".join(lines)


def image(title: str, link: str) -> str:
    return f"![{title}]({link})"


# --- charts -----------------------------------------------------------------------

def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_scorecard(card: dict[str, dict], path: str | Path) -> None:
    """Grouped bars: one group per headline metric, one bar per checkpoint in order."""
    import matplotlib

    names = list(card)
    figure = _figure(11, 4.5)
    axes = figure.subplots()
    colours = matplotlib.colormaps["viridis"]
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        xs = [metric + (index - (len(names) - 1) / 2) * width for metric in range(len(HEADLINE))]
        values = [card[name][key] for key in HEADLINE]
        bars = axes.bar(xs, values, width, label=name, color=colours(index / max(len(names) - 1, 1) * 0.9))
        axes.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    axes.set_xticks(range(len(HEADLINE)),
                    [key + ("\n(lower is better)" if key in LOWER_IS_BETTER else "") for key in HEADLINE])
    axes.set_ylim(0, 1.08)
    axes.set_ylabel("rate")
    axes.set_title("Headline metrics per checkpoint, in pipeline order")
    figure.legend(title="checkpoint", loc="outside right upper")
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path)


def plot_curve(title: str, rows: list[dict[str, float]], columns: list[str], path: str | Path) -> None:
    """One panel per column against step, at most three panels a row."""
    from matplotlib.ticker import MaxNLocator

    per_row = min(len(columns), 3)
    n_rows = -(-len(columns) // per_row)
    figure = _figure(4.2 * per_row, 3.2 * n_rows)
    panels = figure.subplots(n_rows, per_row, squeeze=False).flatten()
    for axes, column in zip(panels, columns):
        steps, values = series(rows, column)
        axes.plot(steps, values, marker="o", markersize=3)
        axes.set_title(column, fontsize=10)
        axes.set_xlabel("step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    for axes in panels[len(columns):]:
        axes.set_visible(False)
    figure.suptitle(title)
    figure.savefig(path)


def histogram_mean(rows: list[dict[str, float]], column: str) -> float:
    """The mean score of a binned histogram (bin centres weighted by counts)."""
    total = sum(row[column] for row in rows)
    return sum(row["bin"] * row[column] for row in rows) / total if total else float("nan")


def plot_histogram(rows: list[dict[str, float]], columns: list[str], path: str | Path, title: str,
                   xlabel: str) -> None:
    """Overlaid count bars over shared bins, with each column's mean as a dashed line."""
    bins = [row["bin"] for row in rows]
    width = min((b - a for a, b in zip(bins, bins[1:])), default=1.0) or 1.0
    figure = _figure(7, 4)
    axes = figure.subplots()
    for index, column in enumerate(columns):
        colour = f"C{index}"
        axes.bar(bins, [row[column] for row in rows], width, alpha=0.5, color=colour, edgecolor=colour,
                 label=column)
        mean = histogram_mean(rows, column)
        axes.axvline(mean, color=colour, linestyle="--", label=f"{column} mean {mean:.2f}")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("count")
    axes.legend(loc="best", fontsize=9)
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path)
