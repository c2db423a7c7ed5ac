"""How much can RL gain? pass@k of checkpoints on the GSM test split: n sampled
completions per problem, the unbiased pass@k estimator (Chen et al. 2021) for every
power of two k <= n, beside the mean accuracy of one sample, the accuracy of the n
samples' majority answer (maj@n, self-consistency) and greedy accuracy.

    PYTHONPATH=. python bench/pass_at_k.py [--checkpoints sft rl] [--n 16] [--temperature 0.8]
        [--problems 500] [--split data/prepared/test.jsonl] [--json out.json] [--per-problem out.jsonl]

RL on a verifiable reward mostly sharpens what the policy already samples: a problem no
sample of n gets right gives GRPO no signal, so pass@k for a large k bounds what greedy
accuracy can gain (Yue et al. 2025, "Does reinforcement learning really incentivize
reasoning capacity in LLMs beyond the base model?"). What sharpening alone can reach is
nearer maj@n: the answer the policy already gives most often, made its greedy answer
(Wang et al. 2023 for self-consistency; Huang et al. 2025, "Self-improvement in language
models: the sharpening mechanism"). Same prompt, verifier, stop rule and
engine as stage evaluate; sampling at --temperature (rl.temperature by default), seeded.
Run from the repository root after `dvc repro` (reads params.yaml, models/,
data/prepared/test.jsonl and, for greedy accuracy, data/eval/<checkpoint>.jsonl). On 2 CPU
cores, 500 problems x 16 samples take ~15 min per checkpoint.
"""

import argparse
import json
import math
from collections import Counter
from pathlib import Path


def pass_at_k(n: int, correct: int, k: int) -> float:
    """The chance that k of n samples, drawn without replacement, hold a correct one,
    given that `correct` of the n are: 1 - C(n - c, k) / C(n, k)."""
    if not 0 <= correct <= n or not 1 <= k <= n:
        raise ValueError(f"pass@{k} of {correct} correct in {n} samples")
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


def majority_answer(answers: list[str | None]) -> str | None:
    """The answer given most often among the samples' strict answers (None: no `#### N`
    line, never a vote); a tie goes to the answer given first. None when no sample answered."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)


def summary(correct_counts: list[int], n: int, majority_correct: list[bool] | None = None) -> dict:
    """Mean one-sample accuracy and pass@k (k = 1, 2, 4, ... <= n) over problems, and
    maj@n when each problem's majority answer was graded."""
    problems = len(correct_counts)
    ks = [2**i for i in range(n.bit_length())]  # 1, 2, 4, ... up to n
    result = {"problems": problems, "samples_per_problem": n,
              "mean_sample_accuracy": round(sum(correct_counts) / (n * problems), 4),
              "pass_at": {k: round(sum(pass_at_k(n, c, k) for c in correct_counts) / problems, 4) for k in ks},
              "never_right": sum(c == 0 for c in correct_counts), "always_right": sum(c == n for c in correct_counts)}
    if majority_correct is not None:
        if len(majority_correct) != problems:
            raise ValueError(f"{len(majority_correct)} majority grades for {problems} problems")
        result["majority_accuracy"] = round(sum(majority_correct) / problems, 4)
    return result


def main() -> None:
    from posttrain.config import SamplingParams, load_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", default=["sft", "rl"], help="names under models/")
    parser.add_argument("--n", type=int, default=16, help="samples per problem")
    parser.add_argument("--temperature", type=float, help="default: rl.temperature")
    parser.add_argument("--problems", type=int, default=500, help="the first N problems of --split")
    parser.add_argument("--split", default="data/prepared/test.jsonl",
                        help="GSM problems, JSONL (stage prepare); data/prepared/rl.jsonl shows which RL prompts "
                             "give a group signal (right sometimes, not always)")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--per-problem", help="write one JSONL line per checkpoint and problem: id, samples right, "
                                              "majority answer and whether it is right")
    args = parser.parse_args()
    params = load_params()
    temperature = args.temperature if args.temperature is not None else params.rl.temperature

    from posttrain import runtime
    from posttrain.engine import sample_groups
    from posttrain.generation import gsm_messages, render_prompts
    from posttrain.gsm import grade, numbers_equal
    from posttrain.io import GSM_RECORD, read_jsonl, write_json, write_jsonl
    from posttrain.models import checkpoint_dirs, load_tokenizer

    runtime.setup(params.runtime, params.seed)
    problems = read_jsonl(args.split, GSM_RECORD)[: args.problems]
    base = f"models/{params.adapter_base}"
    sampling = SamplingParams(temperature=temperature, max_new_tokens=params.evaluate.max_new_tokens)
    results, rows = {}, []
    for name in args.checkpoints:
        tokenizer = load_tokenizer(checkpoint_dirs(f"models/{name}", base)[0])
        prompts = render_prompts(tokenizer, [gsm_messages(p["question"], params.prompt) for p in problems])
        samples, seconds = sample_groups(params.generation, f"models/{name}", base, params.seed, prompts,
                                         sampling, args.n, desc=f"{name} x{args.n}")
        grades = [[grade(s, p["answer"]) for s in group] for p, group in zip(problems, samples)]
        counts = [sum(g.strict_correct for g in group) for group in grades]
        majorities = [majority_answer([g.strict for g in group]) for group in grades]
        majority_correct = [numbers_equal(m, p["answer"]) for m, p in zip(majorities, problems)]
        result = {"temperature": temperature, **summary(counts, args.n, majority_correct),
                  "sampling_seconds": round(seconds, 1)}
        rows += [{"checkpoint": name, "id": p["id"], "right": c, "samples": args.n, "majority": m, "majority_right": r}
                 for p, c, m, r in zip(problems, counts, majorities, majority_correct)]
        graded = Path(f"data/eval/{name}.jsonl")
        if graded.exists():
            greedy = {r["id"]: r["strict_correct"] for r in read_jsonl(graded) if r["task"] == "gsm"}
            if all(p["id"] in greedy for p in problems):
                result["greedy_accuracy"] = round(sum(greedy[p["id"]] for p in problems) / len(problems), 4)
        results[name] = result
        print(json.dumps({name: result}), flush=True)
    if args.json:
        write_json(args.json, results)
    if args.per_problem:
        write_jsonl(args.per_problem, rows)


if __name__ == "__main__":  # vLLM starts its engine with spawn
    main()
