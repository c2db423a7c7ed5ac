"""Stage `preferences`: preference pairs by rejection sampling from the SFT policy.

    PYTHONPATH=. python stages/preferences.py

Reads params: seed, prompt, preferences, generation. Samples K completions per RL prompt from the
SFT checkpoint, grades each with the GSM verifier, and pairs a correct completion
(chosen) with an incorrect one (rejected) for the same prompt (STaR / ReST); groups
without contrast fall back as params say (posttrain/preferences.py). Writes
data/preferences/{train,held_out}.jsonl and metrics/preferences.json.
"""

import random
from collections import Counter

from posttrain.config import load_params

params = load_params()
from posttrain.engine import exit_unless_available, open_engine  # noqa: E402

exit_unless_available(params.generation)

from posttrain import runtime, tracking  # noqa: E402
from posttrain.generation import gsm_messages, render_prompts  # noqa: E402
from posttrain.gsm import grade  # noqa: E402
from posttrain.io import GSM_RECORD, atomic_dir, read_jsonl, write_json, write_jsonl  # noqa: E402
from posttrain.models import checkpoint_dirs, load_tokenizer  # noqa: E402
from posttrain.preferences import pairs_for_prompt, split_by_prompt  # noqa: E402

POLICY = "sft"
PROMPTS_FILE = "data/prepared/rl.jsonl"
OUT_DIR = "data/preferences"
METRICS_FILE = "metrics/preferences.json"
cfg = params.preferences

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("preferences", params, ["seed", "prompt", "preferences", "generation"]):
    records = read_jsonl(PROMPTS_FILE, GSM_RECORD)[: cfg.num_prompts]
    tokenizer = load_tokenizer(checkpoint_dirs(POLICY)[0])
    k = cfg.samples_per_prompt
    prompts = render_prompts(tokenizer, [gsm_messages(r["question"], params.prompt) for r in records])
    s = cfg.sampling
    with open_engine(params.generation, POLICY, params.seed, s.batch_size) as engine:
        out = engine.generate(prompts, s.max_new_tokens, s.temperature, s.top_p, samples_per_prompt=k,
                              stop_after_answer=True, desc="sampling")
    groups = [out.completions[i * k : (i + 1) * k] for i in range(len(records))]

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

    with atomic_dir(OUT_DIR) as tmp:
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
        "sampling_seconds": round(out.seconds, 1),
    }
    write_json(METRICS_FILE, metrics)
    tracking.log_metrics(metrics)
    print(f"preferences: {metrics['pairs']} pairs, by source {metrics['pairs_by_source']}, groups {metrics['groups']}")
