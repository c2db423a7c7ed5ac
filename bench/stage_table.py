"""Wall seconds and peak resident memory of every stage of one `dvc repro`: the README's
stage table, from a real run.

    PYTHONPATH=. python bench/stage_table.py                # the whole pipeline
    PYTHONPATH=. python bench/stage_table.py rl safety      # arguments go to `dvc repro`
    PYTHONPATH=. python bench/stage_table.py --json out.json -- -f evaluate

`dvc repro`'s output passes through. A stage's seconds run from its "Running stage" line
to the next one (or to the end); its memory is the largest resident set of any one
process under `dvc` while it ran (the stage's own process, with the vLLM engine it
starts in-process), sampled every `--every` seconds. Stages DVC skips as unchanged do
not appear.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time

STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def largest_rss(root) -> int:
    """Bytes: the largest resident set among `root` and its descendants (0 once all are gone)."""
    import psutil

    largest = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for process in processes:
        try:
            largest = max(largest, process.memory_info().rss)
        except psutil.Error:  # ended between the listing and the reading
            pass
    return largest


def run(repro_arguments: list[str], every: float, out=sys.stdout) -> tuple[int, list[dict]]:
    """Run `dvc repro ARGS`; returns its exit status and one row per stage that ran."""
    import psutil

    process = subprocess.Popen(["dvc", "repro", *repro_arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)
    root = psutil.Process(process.pid)
    rows: list[dict] = []
    lock = threading.Lock()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every):
            rss = largest_rss(root)
            with lock:
                if rows:
                    rows[-1]["peak_rss_bytes"] = max(rows[-1]["peak_rss_bytes"], rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in process.stdout:
        out.write(line)
        out.flush()
        match = STAGE_LINE.match(line)
        if match:
            now = time.monotonic()
            with lock:
                if rows:
                    rows[-1]["seconds"] = now - rows[-1].pop("started")
                rows.append({"stage": match.group(1), "started": now, "peak_rss_bytes": 0})
    returncode = process.wait()
    done.set()
    sampler.join()
    if rows:
        rows[-1]["seconds"] = time.monotonic() - rows[-1].pop("started")
    for row in rows:
        row["seconds"] = round(row["seconds"], 1)
    return returncode, rows


def table(rows: list[dict]) -> str:
    lines = ["| stage | s | peak RSS |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['seconds']:,.0f} | {r['peak_rss_bytes'] / 2**30:.1f} GiB |" for r in rows]
    total = sum(r["seconds"] for r in rows)
    peak = max((r["peak_rss_bytes"] for r in rows), default=0)
    lines.append(f"| **all {len(rows)} stages** | **{total:,.0f}** | **{peak / 2**30:.1f} GiB** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between memory samples")
    parser.add_argument("--json", help="also write the rows (stage, seconds, peak_rss_bytes) to this file")
    parser.add_argument("repro_arguments", nargs="*", help="passed to `dvc repro` (after -- if they start with -)")
    args = parser.parse_args(argv)
    returncode, rows = run(args.repro_arguments, args.every)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"returncode": returncode, "stages": rows}, handle, indent=2)
    if returncode:
        print(f"dvc repro exited with {returncode}", file=sys.stderr)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
