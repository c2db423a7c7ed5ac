"""Stage `safety`: refusal alignment by DPO, on top of a trained checkpoint.

    PYTHONPATH=. python -m posttrain.launch stages/safety.py

Reads params: seed, prompt, safety, launch. From the `safety.start` checkpoint (RL by default):
1. sample the start policy on the safety training prompts and classify each completion
   (posttrain/refusal.py) as refusal, partial or compliance;
2. build pairs (posttrain/safety.py): harmful prompt -> curated brief refusal over the
   policy's complying completion; benign look-alike -> curated helpful answer over a
   refusal (the policy's own, else a stock one);
3. mix in a replay share of GSM preference pairs so math does not regress;
4. continue the start adapter with DPO, the start policy as reference.
Writes the adapter to models/safety/, the pairs to data/safety/pairs.jsonl,
metrics/safety.json and the DPO log to metrics/safety/loss.csv. `evaluate@safety`
then measures refusal, over-refusal and GSM accuracy; `compare` reports the change
from the start checkpoint (the alignment tax). Under `accelerate launch` the main
process samples and builds the pairs, every process trains, the main process writes.
"""

import random
from collections import Counter

from posttrain.config import load_params

params = load_params()

from posttrain import runtime, tracking  # noqa: E402
from posttrain.dpo import train_dpo  # noqa: E402
from posttrain.generation import chat_messages, generate, render_prompts  # noqa: E402
from posttrain.io import read_jsonl, write_json, write_jsonl  # noqa: E402
from posttrain.models import checkpoint_dirs, load_causal_lm, load_tokenizer  # noqa: E402
from posttrain.preferences import preference_example  # noqa: E402
from posttrain.refusal import classify_refusal  # noqa: E402
from posttrain.safety import (  # noqa: E402
    GSM_REPLAY, replay_count, safety_example, safety_pairs, sampled_behaviour)
from posttrain.training import process_state  # noqa: E402

SAFETY_PROMPTS = "data/prepared/safety_train.jsonl"
GSM_PAIRS = "data/preferences/train.jsonl"
OUT_DIR = "models/safety"
PAIRS_FILE = "data/safety/pairs.jsonl"
METRICS_FILE = "metrics/safety.json"
LOSS_PLOT = "metrics/safety/loss.csv"
cfg = params.safety

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("safety", params, ["seed", "prompt", "safety"]):
    state = process_state()
    if state.is_main_process:  # under `accelerate launch`, one process samples and builds the pairs
        # 1. What the start policy does with the training prompts today.
        rows = read_jsonl(SAFETY_PROMPTS)
        base_dir, adapter_dir = checkpoint_dirs(cfg.start)
        tokenizer = load_tokenizer(base_dir)
        policy = load_causal_lm(base_dir, adapter_dir)
        k, s = cfg.samples_per_prompt, cfg.sampling
        prompts = render_prompts(tokenizer, [chat_messages(row["prompt"], params.prompt) for row in rows])
        out = generate(policy, tokenizer, [p for p in prompts for _ in range(k)], s.max_new_tokens, s.batch_size,
                       s.temperature, s.top_p, desc=f"sampling {cfg.start}")
        samples = [out.completions[i * k : (i + 1) * k] for i in range(len(rows))]
        verdicts = [[classify_refusal(c) for c in group] for group in samples]
        del policy

        # 2-3. Safety pairs, plus replayed GSM pairs, shuffled together.
        pairs, already = safety_pairs(rows, samples, verdicts, params.seed)
        gsm_pairs = read_jsonl(GSM_PAIRS)
        n_replay = replay_count(len(pairs), cfg.replay_fraction, len(gsm_pairs))
        replay = [{**p, "source": GSM_REPLAY} for p in random.Random(params.seed).sample(gsm_pairs, n_replay)]
        mix = pairs + replay
        random.Random(params.seed).shuffle(mix)
        mix = mix[: cfg.max_pairs]
        if all(p["source"] == GSM_REPLAY for p in mix):
            raise SystemExit("safety: no safety pairs to train on: the start policy refused every harmful prompt "
                             "and no benign prompt was given; nothing to align")
        write_jsonl(PAIRS_FILE, mix)
    state.wait_for_everyone()

    # 4. DPO from the start checkpoint, on every process.
    mix = read_jsonl(PAIRS_FILE)
    examples = [preference_example(p, params.prompt) if p["source"] == GSM_REPLAY else safety_example(p, params.prompt)
                for p in mix]
    result = train_dpo(params, cfg, cfg.start, examples, OUT_DIR, LOSS_PLOT, cfg.sft_weight)
    if not result.main_process:
        raise SystemExit(0)  # trained its share; the main process writes

    metrics = {
        "start": cfg.start,
        # sampled at safety.sampling.temperature, so noisier than evaluate's greedy figures
        "start_policy_on_train_prompts": sampled_behaviour(rows, verdicts),
        "pairs": len(mix),
        "pairs_by_source": dict(Counter(p["source"] for p in mix)),
        **already,
        "steps": result.steps,
        "train_loss": result.train_loss,
        "final_reward_accuracy": result.final_reward_accuracy,
        "final_reward_margin": result.final_reward_margin,
        "sampling_seconds": round(out.seconds, 1),
        "seconds": result.seconds,
        "processes": result.processes,
    }
    write_json(METRICS_FILE, metrics)
    tracking.log_metrics(metrics)
    print(f"safety: {metrics['pairs']} pairs {metrics['pairs_by_source']}, {result.steps} steps, "
          f"loss {result.train_loss} ({result.seconds} s)")
