"""Seconds per RL step of stage rl (rl.algorithm=grpo) against a plain TRL GRPOTrainer
script with the same model and config, one run each, as a ratio.

    PYTHONPATH=. python bench/rl_step_time.py [--steps 3]

Run from the repository root after `dvc repro sft` (reads models/base, models/sft and
data/prepared/rl.jsonl). Both sides time the train() call only.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()

params = yaml.safe_load((REPO / "params.yaml").read_text())
rl = params["rl"]
rl.update(algorithm="grpo", start="sft", steps=args.steps, beta=0.0)
params["prompt"]["system"] = None
env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE", "MLFLOW_TRACKING_URI": "sqlite:///:memory:"}

with tempfile.TemporaryDirectory() as tmp:
    workdir = Path(tmp)
    (workdir / "models").mkdir()
    for name in ("base", "sft"):
        (workdir / "models" / name).symlink_to(REPO / "models" / name)
    (workdir / "data").symlink_to(REPO / "data")
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, str(REPO / "stages/rl.py")], cwd=workdir, env=env, check=True, capture_output=True)
    ours = json.loads((workdir / "metrics/rl.json").read_text())["seconds_per_step"]
    out = subprocess.run([sys.executable, str(REPO / "bench/plain_trl_grpo.py"), str(args.steps),
                          str(rl["prompts_per_step"]), str(rl["num_generations"]), str(rl["max_new_tokens"])],
                         cwd=workdir, env=env, check=True, capture_output=True, text=True)
    plain = json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_step"]
print(f"stage rl (grpo): {ours:.1f} s/step, plain TRL GRPOTrainer: {plain:.1f} s/step, "
      f"ratio {ours / plain:.3f} ({args.steps} steps, {rl['prompts_per_step']} prompts x "
      f"{rl['num_generations']} generations, {rl['max_new_tokens']} new tokens)")
