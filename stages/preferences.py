"""Stage `preferences`: preference pairs by rejection sampling from the SFT policy.

    PYTHONPATH=. python stages/preferences.py --base models/base --policy models/sft \
        --prompts data/prepared/rl.jsonl --out data/preferences --metrics metrics/preferences.json

Reads params: seed, prompt, preferences, generation. Samples K completions per RL prompt from the
POLICY checkpoint (SFT), grades each with the GSM verifier, and pairs a correct completion
(chosen) with an incorrect one (rejected) for the same prompt (STaR / ReST); groups
without contrast fall back as params say (posttrain/preferences.py). Writes
OUT/{train,held_out}.jsonl and METRICS.
"""

import random
from collections import Counter

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, base="the base model (stage base)", policy="the checkpoint to sample",
                       prompts="GSM prompts, JSONL (stage prepare)", out="directory of the pairs to write",
                       metrics="metrics JSON to write")
params = load_params()
from posttrain.engine import exit_unless_available, sample_groups  # noqa: E402

exit_unless_available(params.generation)

from posttrain import runtime, tracking  # noqa: E402
from posttrain.generation import gsm_messages, render_prompts  # noqa: E402
from posttrain.gsm import grade  # noqa: E402
from posttrain.io import GSM_RECORD, atomic_dir, read_jsonl, write_json, write_jsonl  # noqa: E402
from posttrain.models import checkpoint_dirs, load_tokenizer  # noqa: E402
from posttrain.preferences import pairs_for_prompt, split_by_prompt  # noqa: E402

SECTIONS = ["seed", "prompt", "preferences", "generation"]  # the params sections this stage reads
cfg = params.preferences

# What the stage was given, checked before torch loads and the MLflow run opens: a missing
# or damaged input is one line in a second, and leaves no failed run behind.
records = read_jsonl(args.prompts, GSM_RECORD)[: cfg.num_prompts]
policy_base_dir = checkpoint_dirs(args.policy, args.base)[0]

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("preferences", params, SECTIONS):
    tokenizer = load_tokenizer(policy_base_dir)
    k = cfg.samples_per_prompt
    prompts = render_prompts(tokenizer, [gsm_messages(r["question"], params.prompt) for r in records])
    groups, sampling_seconds = sample_groups(params.generation, args.policy, args.base, params.seed, prompts,
                                             cfg.sampling, k, desc="sampling")

    rng = random.Random(params.seed)
    pairs, group_kinds = [], Counter()
    for record, samples in zip(records, groups):
        n_correct = sum(grade(sample, record["answer"]).strict_correct for sample in samples)
        group_kinds["all_correct" if n_correct == k else "all_wrong" if n_correct == 0 else "mixed"] += 1
        pairs += pairs_for_prompt(record, samples, cfg.when_all_wrong, cfg.when_all_correct, rng)
    train, held_out = split_by_prompt(pairs, cfg.held_out_fraction, params.seed)
    if not train or not held_out:
        raise SystemExit(f"preferences: only {len(pairs)} pairs from {len(records)} prompts; raise "
                         "preferences.num_prompts or samples_per_prompt, or allow the fallbacks")

    with atomic_dir(args.out) as tmp:
        write_jsonl(tmp / "train.jsonl", [p.as_dict() for p in train])
        write_jsonl(tmp / "held_out.jsonl", [p.as_dict() for p in held_out])
    all_samples = [sample for group in groups for sample in group]
    metrics = {
        "prompts": len(records),
        "samples": len(all_samples),
        "sample_strict_accuracy": round(sum(grade(c, r["answer"]).strict_correct for r, g in zip(records, groups)
                                            for c in g) / len(all_samples), 4),
        "groups": dict(group_kinds),
        "pairs": {"train": len(train), "held_out": len(held_out)},
        "pairs_by_source": dict(Counter(p.source for p in pairs)),
        "sampling_seconds": round(sampling_seconds, 1),
    }
    write_json(args.metrics, metrics)
    tracking.log_metrics(metrics)
    print(f"preferences: {metrics['pairs']} pairs, by source {metrics['pairs_by_source']}, groups {metrics['groups']}")
