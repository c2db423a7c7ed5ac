"""How much can RL gain? pass@k of checkpoints on the GSM test split: n sampled
completions per problem, the unbiased pass@k estimator (Chen et al. 2021) for every
power of two k <= n, beside the mean accuracy of one sample and greedy accuracy.

    PYTHONPATH=. python bench/pass_at_k.py [--checkpoints sft rl] [--n 16] [--temperature 0.8]
        [--problems 500] [--json out.json]

RL on a verifiable reward mostly sharpens what the policy already samples: a problem no
sample of n gets right gives GRPO no signal, so pass@k for a large k bounds what greedy
accuracy can gain (Yue et al. 2025, "Does reinforcement learning really incentivize
reasoning capacity in LLMs beyond the base model?"). Same prompt, verifier, stop rule and
engine as stage evaluate; sampling at --temperature (rl.temperature by default), seeded.
Run from the repository root after `dvc repro` (reads params.yaml, models/,
data/prepared/test.jsonl and, for greedy accuracy, data/eval/<checkpoint>.jsonl). On 2 CPU
cores, 500 problems x 16 samples take ~15 min per checkpoint.
"""

import argparse
import json
import math
from pathlib import Path


def pass_at_k(n: int, correct: int, k: int) -> float:
    """The chance that k of n samples, drawn without replacement, hold a correct one,
    given that `correct` of the n are: 1 - C(n - c, k) / C(n, k)."""
    if not 0 <= correct <= n or not 1 <= k <= n:
        raise ValueError(f"pass@{k} of {correct} correct in {n} samples")
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


def summary(correct_counts: list[int], n: int) -> dict:
    """Mean one-sample accuracy and pass@k (k = 1, 2, 4, ... <= n) over problems."""
    problems = len(correct_counts)
    ks = [2**i for i in range(n.bit_length())]  # 1, 2, 4, ... up to n
    return {"problems": problems, "samples_per_problem": n,
            "mean_sample_accuracy": round(sum(correct_counts) / (n * problems), 4),
            "pass_at": {k: round(sum(pass_at_k(n, c, k) for c in correct_counts) / problems, 4) for k in ks},
            "never_right": sum(c == 0 for c in correct_counts), "always_right": sum(c == n for c in correct_counts)}


def main() -> None:
    from posttrain.config import SamplingParams, load_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", default=["sft", "rl"], help="names under models/")
    parser.add_argument("--n", type=int, default=16, help="samples per problem")
    parser.add_argument("--temperature", type=float, help="default: rl.temperature")
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    params = load_params()
    temperature = args.temperature if args.temperature is not None else params.rl.temperature

    from posttrain import runtime
    from posttrain.engine import sample_groups
    from posttrain.generation import gsm_messages, render_prompts
    from posttrain.gsm import grade
    from posttrain.io import GSM_RECORD, read_jsonl
    from posttrain.models import checkpoint_dirs, load_tokenizer

    runtime.setup(params.runtime, params.seed)
    problems = read_jsonl("data/prepared/test.jsonl", GSM_RECORD)[: args.problems]
    base = f"models/{params.adapter_base}"
    sampling = SamplingParams(temperature=temperature, max_new_tokens=params.evaluate.max_new_tokens)
    results = {}
    for name in args.checkpoints:
        tokenizer = load_tokenizer(checkpoint_dirs(f"models/{name}", base)[0])
        prompts = render_prompts(tokenizer, [gsm_messages(p["question"], params.prompt) for p in problems])
        samples, seconds = sample_groups(params.generation, f"models/{name}", base, params.seed, prompts,
                                         sampling, args.n, desc=f"{name} x{args.n}")
        counts = [sum(grade(s, p["answer"]).strict_correct for s in group) for p, group in zip(problems, samples)]
        result = {"temperature": temperature, **summary(counts, args.n), "sampling_seconds": round(seconds, 1)}
        graded = Path(f"data/eval/{name}.jsonl")
        if graded.exists():
            greedy = {r["id"]: r["strict_correct"] for r in read_jsonl(graded) if r["task"] == "gsm"}
            if all(p["id"] in greedy for p in problems):
                result["greedy_accuracy"] = round(sum(greedy[p["id"]] for p in problems) / len(problems), 4)
        results[name] = result
        print(json.dumps({name: result}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":  # vLLM starts its engine with spawn
    main()
