"""GSM alignment tax on extra held-out problems: greedy strict accuracy of two
checkpoints on generated problems that no prepared split contains, paired per problem.

    PYTHONPATH=. python bench/alignment_tax.py [--problems 300] [--before rl] [--after safety]

The pipeline's test split (500 problems by default) leaves ±3-4 points of noise on the
difference between two checkpoints (compare's paired intervals); this measures the same change on more problems,
from the same generator (params' data.synthetic with seed + 1), the same prompt, the
same decoding and the same verifier as evaluate. Run from the repository root after
`dvc repro` (reads models/ and data/prepared/). About 5 min per checkpoint per 300
problems on 2 CPU cores.
"""

import argparse
import json

from posttrain.config import load_params

parser = argparse.ArgumentParser()
parser.add_argument("--problems", type=int, default=300)
parser.add_argument("--before", default="rl")
parser.add_argument("--after", default="safety")
parser.add_argument("--base", help="the model the checkpoints' adapters are on (default: models/<adapter_base>)")
args = parser.parse_args()
params = load_params()
if params.data.source != "synthetic":
    raise SystemExit("bench/alignment_tax.py: needs data.source synthetic (it generates the extra problems)")

from posttrain import runtime  # noqa: E402
from posttrain.generation import generate, gsm_messages, render_prompts  # noqa: E402
from posttrain.gsm import grade  # noqa: E402
from posttrain.io import read_jsonl  # noqa: E402
from posttrain.models import checkpoint_dirs, load_causal_lm, load_tokenizer  # noqa: E402
from posttrain.stats import paired_change, rate_summary  # noqa: E402
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
    base_dir, adapter_dir = checkpoint_dirs(f"models/{name}", args.base or f"models/{params.adapter_base}")
    tokenizer = load_tokenizer(base_dir)
    model = load_causal_lm(base_dir, adapter_dir)
    prompts = render_prompts(tokenizer, [gsm_messages(p["question"], params.prompt) for p in problems])
    out = generate(model, tokenizer, prompts, ev.max_new_tokens, ev.batch_size, desc=name, stop_after_answer=True)
    correct[name] = [grade(c, a).strict_correct for c, a in zip(out.completions, answers)]

before, after = correct[args.before], correct[args.after]
change = paired_change(dict(enumerate(before)), dict(enumerate(after)))  # exact McNemar, as compare
print(json.dumps({"problems": len(problems), f"{args.before}_strict": rate_summary(before),
                  f"{args.after}_strict": rate_summary(after), "change": change}, indent=1))
