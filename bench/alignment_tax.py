"""GSM alignment tax on extra held-out problems: greedy strict accuracy of two
checkpoints on generated problems that no prepared split contains, paired per problem.

    PYTHONPATH=. python bench/alignment_tax.py [--problems 300] [--before rl] [--after safety]

The pipeline's test split (100 problems by default) leaves about ±7 points of noise on
the difference between two checkpoints; this measures the same change on more problems,
from the same generator (params' data.synthetic with seed + 1), the same prompt, the
same decoding and the same verifier as evaluate. Run from the repository root after
`dvc repro` (reads models/ and data/prepared/). About 5 min per checkpoint per 300
problems on 2 CPU cores.
"""

import argparse
import json
from math import comb

from posttrain.config import load_params

parser = argparse.ArgumentParser()
parser.add_argument("--problems", type=int, default=300)
parser.add_argument("--before", default="rl")
parser.add_argument("--after", default="safety")
args = parser.parse_args()
params = load_params()
if params.data.source != "synthetic":
    raise SystemExit("bench/alignment_tax.py: needs data.source synthetic (it generates the extra problems)")

from posttrain import runtime  # noqa: E402
from posttrain.generation import generate, gsm_messages, render_prompts  # noqa: E402
from posttrain.gsm import grade  # noqa: E402
from posttrain.io import read_jsonl  # noqa: E402
from posttrain.models import checkpoint_dirs, load_causal_lm, load_tokenizer  # noqa: E402
from posttrain.synthetic import generate_problems  # noqa: E402

runtime.setup(params.runtime, params.seed)
syn, ev = params.data.synthetic, params.evaluate
seen = {r["question"] for split in ("sft", "rl", "test") for r in read_jsonl(f"data/prepared/{split}.jsonl")}
problems = [p for p in generate_problems(syn.num_problems, params.seed + 1, syn.min_steps, syn.max_steps,
                                         syn.operations, syn.max_number) if p["question"] not in seen]
problems = problems[: args.problems]
answers = [p["answer"].split("####")[-1].strip() for p in problems]

correct = {}
for name in (args.before, args.after):
    base_dir, adapter_dir = checkpoint_dirs(name)
    tokenizer = load_tokenizer(base_dir)
    model = load_causal_lm(base_dir, adapter_dir)
    prompts = render_prompts(tokenizer, [gsm_messages(p["question"], params.prompt) for p in problems])
    out = generate(model, tokenizer, prompts, ev.max_new_tokens, ev.batch_size, desc=name, stop_after_answer=True)
    correct[name] = [grade(c, a).strict_correct for c, a in zip(out.completions, answers)]

before, after = correct[args.before], correct[args.after]
lost = sum(b and not a for b, a in zip(before, after))
gained = sum(a and not b for b, a in zip(before, after))
# Exact McNemar test on the problems whose outcome changed.
n = lost + gained
p_value = min(1.0, 2 * sum(comb(n, i) for i in range(min(lost, gained) + 1)) / 2**n) if n else 1.0
print(json.dumps({"problems": len(problems), f"{args.before}_strict": round(sum(before) / len(problems), 4),
                  f"{args.after}_strict": round(sum(after) / len(problems), 4),
                  "change": round((sum(after) - sum(before)) / len(problems), 4),
                  "lost": lost, "gained": gained, "mcnemar_p": round(p_value, 3)}, indent=1))
