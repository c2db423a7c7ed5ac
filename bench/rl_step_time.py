"""Seconds per RL step of stage rl (rl.algorithm=grpo), sampling with vLLM (rl.vllm: true,
the default) and with transformers' generate() (rl.vllm: false), against a plain TRL
GRPOTrainer script with the same model and config (transformers' generate()), one run each.

    PYTHONPATH=. python bench/rl_step_time.py [--steps 3]

Run from the repository root after `dvc repro sft` (reads models/base, models/sft and
data/prepared/rl.jsonl). The stage's figure is the median of TRL's per-step `step_time`
after the first step (the first includes vLLM's warm-up); the stage's seconds_per_step
(start-up included) is printed beside it.
"""

import argparse
import csv
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
    stage = {}
    for vllm in (True, False):
        rl["vllm"] = vllm
        (workdir / "params.yaml").write_text(yaml.safe_dump(params))
        subprocess.run([sys.executable, str(REPO / "stages/rl.py")], cwd=workdir, env=env, check=True,
                       capture_output=True)
        with open(workdir / "metrics/rl/log.csv") as f:
            step_times = [float(row["step_time"]) for row in csv.DictReader(f)][1:]
        stage[vllm] = (statistics.median(step_times),
                       json.loads((workdir / "metrics/rl.json").read_text())["seconds_per_step"])
    out = subprocess.run([sys.executable, str(REPO / "bench/plain_trl_grpo.py"), str(args.steps),
                          str(rl["prompts_per_step"]), str(rl["num_generations"]), str(rl["max_new_tokens"])],
                         cwd=workdir, env=env, check=True, capture_output=True, text=True)
    plain = json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_step"]
print(f"{args.steps} steps, {rl['prompts_per_step']} prompts x {rl['num_generations']} generations, "
      f"{rl['max_new_tokens']} new tokens")
for vllm, label in ((True, "vLLM"), (False, "transformers generate()")):
    step, with_startup = stage[vllm]
    print(f"stage rl (grpo), {label}: {step:.1f} s/step after the first ({with_startup:.1f} with start-up); "
          f"{plain / step:.2f}x plain TRL")
print(f"plain TRL GRPOTrainer (transformers generate()): {plain:.1f} s/step")
