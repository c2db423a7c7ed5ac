"""Training tokens/s of stage `sft` against a plain TRL SFTTrainer script, same model,
data and settings, measured side by side in one run (A B A B ...), as a ratio.

    PYTHONPATH=. python bench/sft_throughput.py [--steps 10] [--rounds 2]

Run from the repository root after `dvc repro base prepare` (it reads models/base and
data/prepared/sft.jsonl). It writes params to a temporary copy, never to params.yaml.
Both sides count non-padding input tokens over the train() call only, so model
loading and dataset tokenisation are excluded from both.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--rounds", type=int, default=2)
args = parser.parse_args()

params = yaml.safe_load((REPO / "params.yaml").read_text())
sft = params["sft"]
# Same settings on both sides: system prompt of the model's template, no packing.
params["prompt"]["system"] = None
params["sft"].update(max_steps=args.steps, packing=False, quantization="none")

env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE", "MLFLOW_TRACKING_URI": "sqlite:///:memory:"}


def run_stage(workdir: Path) -> float:
    subprocess.run([sys.executable, str(REPO / "stages/sft.py")], cwd=workdir, env=env, check=True,
                   capture_output=True)
    return json.loads((workdir / "metrics/sft.json").read_text())["tokens_per_second"]


def run_plain(workdir: Path) -> float:
    out = subprocess.run([sys.executable, str(REPO / "bench/plain_trl_sft.py"), str(args.steps),
                          str(sft["batch_size"]), str(sft["max_length"])], cwd=workdir, env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_second"]


with tempfile.TemporaryDirectory() as tmp:
    workdir = Path(tmp)
    (workdir / "models").mkdir()
    (workdir / "models/base").symlink_to(REPO / "models/base")
    (workdir / "data").symlink_to(REPO / "data")
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    ratios = []
    for round_ in range(args.rounds):
        ours, plain = run_stage(workdir), run_plain(workdir)
        ratios.append(ours / plain)
        print(f"round {round_ + 1}: stage sft {ours:.1f} tok/s, plain TRL {plain:.1f} tok/s, ratio {ours / plain:.3f}")
    print(f"median ratio (stage / plain TRL): {statistics.median(ratios):.3f} over {args.rounds} rounds "
          f"of {args.steps} steps, batch {sft['batch_size']}")
