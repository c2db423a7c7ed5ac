"""The generation engine against transformers generate(), one run each, side by side.

    PYTHONPATH=. python bench/generation.py [--checkpoint models/sft] [--base DIR] [--problems 200]
        [--dtypes float32 bfloat16]

Run from the repository root (or any pipeline workspace) after `dvc repro sft`: it reads that
directory's params.yaml, models/ and data/prepared/test.jsonl.
Same prompts and settings as stage evaluate's GSM half (greedy, evaluate.max_new_tokens,
stop once the `#### N` line is complete), each engine in its own fresh process with
the stage's thread count. Prints, per engine: start-up seconds (model load, and for
vLLM the merge and engine start), generation seconds, tokens/s, the ratio to hf, and
how many completions are identical to hf's and how many are graded the same.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from posttrain.config import load_params

REPO = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, sys, time
from posttrain import runtime
from posttrain.config import GenerationParams, load_params
from posttrain.engine import open_engine
from posttrain.generation import gsm_messages, render_prompts
from posttrain.gsm import grade
from posttrain.io import read_jsonl
from posttrain.models import checkpoint_dirs, load_tokenizer

engine_name, dtype, checkpoint, base, n, out = sys.argv[1:7]
params = load_params()
threads = runtime.setup(params.runtime, params.seed)
problems = read_jsonl("data/prepared/test.jsonl")[: int(n)]
tokenizer = load_tokenizer(checkpoint_dirs(checkpoint, base)[0])
prompts = render_prompts(tokenizer, [gsm_messages(p["question"], params.prompt) for p in problems])
cfg = params.generation.model_copy(update={"engine": engine_name, "dtype": dtype})
with open_engine(cfg, checkpoint, base, params.seed, params.evaluate.batch_size) as engine:
    result = engine.generate(prompts, params.evaluate.max_new_tokens, 0.0, 1.0, stop_after_answer=True)
json.dump({"startup_seconds": engine.startup_seconds, "seconds": result.seconds, "threads": threads,
           "tokens": sum(result.completion_tokens), "completions": result.completions,
           "correct": [grade(c, p["answer"]).strict_correct for c, p in zip(result.completions, problems)]},
          open(out, "w"))
"""


def run(engine: str, dtype: str, checkpoint: str, base: str, problems: int, scratch: Path) -> dict:
    out = scratch / f"{engine}-{dtype}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE",
           "MLFLOW_TRACKING_URI": "sqlite:///:memory:"}
    worker = subprocess.run([sys.executable, "-c", WORKER, engine, dtype, checkpoint, base, str(problems), str(out)],
                            cwd=Path.cwd(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if worker.returncode != 0:  # the worker's own last lines say why (a missing checkpoint, no vLLM, ...)
        last_lines = "\n".join(worker.stderr.splitlines()[-5:])
        sys.exit(f"bench/generation.py: the {engine} {dtype} run failed:\n{last_lines}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default="models/sft", help="a pipeline checkpoint directory")
    parser.add_argument("--base", help="the model its adapter is on (default: models/<adapter_base> of params.yaml)")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"], help="vLLM's; none: hf alone")
    args = parser.parse_args()
    base = args.base or f"models/{load_params().adapter_base}"  # where dvc.yaml builds the adapters
    with tempfile.TemporaryDirectory() as scratch:
        reference = run("hf", "float32", args.checkpoint, base, args.problems, Path(scratch))
        rows = [("hf", "float32", reference)]
        rows += [("vllm", dtype, run("vllm", dtype, args.checkpoint, base, args.problems, Path(scratch)))
                 for dtype in args.dtypes]
    base_rate = reference["tokens"] / reference["seconds"]
    print(f"checkpoint {args.checkpoint}, {args.problems} GSM test problems, greedy, "
          f"{reference['threads']} threads")
    print(f"{'engine':<16}{'start s':>9}{'gen s':>8}{'tok/s':>8}{'vs hf':>7}{'identical':>11}{'same grade':>12}"
          f"{'accuracy':>10}")
    for engine, dtype, result in rows:
        rate = result["tokens"] / result["seconds"]
        identical = sum(a == b for a, b in zip(result["completions"], reference["completions"]))
        same = sum(a == b for a, b in zip(result["correct"], reference["correct"]))
        print(f"{engine + ' ' + dtype:<16}{result['startup_seconds']:>9.1f}{result['seconds']:>8.1f}{rate:>8.1f}"
              f"{rate / base_rate:>6.2f}x{identical:>7}/{len(reference['completions'])}"
              f"{same:>8}/{len(reference['correct'])}{sum(result['correct']) / len(result['correct']):>10.3f}")


if __name__ == "__main__":
    main()
