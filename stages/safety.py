"""Stage `safety`: refusal alignment by DPO, on top of a trained checkpoint.

    PYTHONPATH=. python -m posttrain.launch stages/safety.py --base models/base --start models/rl \
        --prompts data/prepared/safety_train.jsonl --gsm-prompts data/prepared/rl.jsonl \
        --gsm-pairs data/preferences/train.jsonl --out models/safety --pairs data/safety/pairs.jsonl \
        --metrics metrics/safety.json --log metrics/safety/loss.csv --held-out-log metrics/safety/held_out.csv

Reads params: seed, prompt, safety, generation, launch. From the START checkpoint
(models/<safety.start>, RL by default):
1. sample the start policy on the safety training prompts (PROMPTS), classify each
   completion (posttrain/refusal.py) as refusal, partial or compliance, and build pairs
   (posttrain/safety.py): harmful prompt -> curated brief refusal over the policy's
   complying completion; benign look-alike -> curated helpful answer over a refusal
   (the policy's own, else the curated refusal of a harmful prompt of its category:
   the same words rejected here that the harmful pairs choose, so what the model
   learns is which requests to refuse);
2. with safety.replay.fraction above 0, mix in that share of GSM pairs: the start
   policy's own samples on GSM training prompts (GSM_PROMPTS, on-policy), graded by the
   verifier, or stage preferences' pairs (GSM_PAIRS), so the refusals do not cost the
   arithmetic (params.yaml);
3. with safety.everyday.prompts above 0, ask the start policy that many everyday
   requests (WikiHow how-to titles, or a file of them), greedily, and choose each
   compliant answer of its own (one cut at the token budget shortened to its last
   complete sentence) over a curated refusal, so it learns which requests to refuse
   rather than to refuse;
4. shuffle them together;
5. continue the start adapter with DPO plus safety.sft_weight times an NLL loss on the
   chosen side (the start policy as reference; measured, the NLL term is what teaches
   the refusals: params.yaml), reading a held-out
   slice while it trains (safety.held_out_prompts of PROMPTS and the last
   safety.held_out_gsm_prompts of GSM_PROMPTS, none of them trained on): greedy refusal,
   over-refusal and strict GSM accuracy before step 1 and every safety.eval_every_steps,
   to HELD_OUT_LOG and MLflow, beside the DPO reward in LOG: a model that learns to refuse
   everything, or pays for its refusals in arithmetic, shows it while it trains;
6. save it to OUT; with safety.interpolation below 1, save start + interpolation *
   (trained - start) instead: weight-space interpolation, less forgetting for fewer
   new refusals (the trained adapter itself only passes through a temporary directory).
Writes the adapter to OUT, the training mix to PAIRS, METRICS, the DPO log to LOG and
the held-out readings to HELD_OUT_LOG.
`evaluate@safety` then measures refusal, over-refusal and GSM accuracy of what OUT
holds; `compare` reports the change from the start checkpoint (the alignment tax).
Under `accelerate launch` the main process samples and builds the mix and sends it to
the others, every process trains on it, and the main process alone writes.
"""

import random
import tempfile
from collections import Counter
from pathlib import Path

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, base="the base model (stage base)",
                       start="the adapter checkpoint to align (models/<safety.start>), also the DPO reference",
                       prompts="the safety training prompts, JSONL (stage prepare)",
                       gsm_prompts="GSM prompts to replay on-policy, JSONL (stage prepare; replay.source on_policy)",
                       gsm_pairs="GSM pairs to replay, JSONL (stage preferences; replay.source preferences)",
                       out="the adapter directory to write", pairs="the training mix, JSONL to write",
                       metrics="metrics JSON to write", log="per-step DPO log CSV to write",
                       held_out_log="held-out refusal, over-refusal and GSM accuracy per step, CSV to write")
params = load_params()
from posttrain.engine import exit_unless_available, open_engine  # noqa: E402

exit_unless_available(params.generation)

from posttrain import runtime, tracking  # noqa: E402
from posttrain.dpo import train_dpo  # noqa: E402
from posttrain.errors import UserError  # noqa: E402
from posttrain.generation import chat_messages, gsm_messages, render_prompts  # noqa: E402
from posttrain.gsm import grade  # noqa: E402
from posttrain.io import GSM_RECORD, PAIR, SAFETY_PROMPT, read_jsonl, write_json, write_jsonl  # noqa: E402
from posttrain.models import checkpoint_dirs, load_tokenizer  # noqa: E402
from posttrain.preferences import preference_example  # noqa: E402
from posttrain.refusal import classify_refusal  # noqa: E402
from posttrain.safety import (  # noqa: E402
    GSM_REPLAY, everyday_pairs, everyday_requests, held_out_monitor, interpolate_adapter, on_policy_replay_pairs,
    replay_count, safety_example, safety_pairs, sampled_behaviour, training_mix)
from posttrain.safety_data import held_out_split  # noqa: E402
from posttrain.training import broadcast_from_main, process_state, write_rows_csv  # noqa: E402

SECTIONS = ["seed", "prompt", "safety", "generation"]  # the params sections this stage reads
cfg = params.safety

# What the stage was given, checked before torch loads and the MLflow run opens: a missing
# or damaged input is one line in a second, and leaves no failed run behind.
base_dir, start_adapter = checkpoint_dirs(args.start, args.base)
# The held-out slice, never trained on: safety prompts left out of the pairs, and the
# tail of the rl split (rl's own held-out slice) left out of the replay.
rows, held_out_rows = held_out_split(read_jsonl(args.prompts, SAFETY_PROMPT), cfg.held_out_prompts, params.seed)
gsm_records = read_jsonl(args.gsm_prompts, GSM_RECORD) if cfg.replay.source == "on_policy" or \
    cfg.held_out_gsm_prompts else []
if cfg.held_out_gsm_prompts > len(gsm_records):
    raise UserError(f"params.yaml: safety.held_out_gsm_prompts: {cfg.held_out_gsm_prompts} exceeds the "
                    f"{len(gsm_records)} prompts of {args.gsm_prompts}")
held_out_gsm = gsm_records[len(gsm_records) - cfg.held_out_gsm_prompts:] if cfg.held_out_gsm_prompts else []
gsm_records = gsm_records[: len(gsm_records) - cfg.held_out_gsm_prompts]
# replay.source preferences: stage preferences' pairs (on_policy samples them here instead)
gsm_pairs = read_jsonl(args.gsm_pairs, PAIR) if cfg.replay.source != "on_policy" else []
everyday = everyday_requests(cfg.everyday.source, cfg.everyday.prompts, params.seed)

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("safety", params, SECTIONS):
    state = process_state()
    tokenizer = load_tokenizer(base_dir)
    built = None
    if state.is_main_process:  # under `accelerate launch`, one process samples and builds the mix
        s = cfg.sampling
        # The engine is closed before training: its memory and threads go back to DPO.
        with open_engine(params.generation, args.start, args.base, params.seed, s.batch_size) as engine:

            def sample(messages: list, k: int, max_new_tokens: int, desc: str, **kwargs):
                """k sampled completions per conversation, grouped per conversation."""
                out = engine.generate(render_prompts(tokenizer, messages), max_new_tokens, s.temperature, s.top_p,
                                      desc=desc, samples_per_prompt=k, **kwargs)
                return [out.completions[i * k : (i + 1) * k] for i in range(len(messages))], out.seconds

            # 1. What the start policy does with the safety training prompts today.
            samples, sampling_seconds = sample([chat_messages(row["prompt"], params.prompt) for row in rows],
                                               cfg.samples_per_prompt, s.max_new_tokens, f"sampling {cfg.start}")
            verdicts = [[classify_refusal(c) for c in group] for group in samples]
            pairs, already = safety_pairs(rows, samples, verdicts, params.seed)
            if cfg.max_pairs is not None:  # a seeded subset, leaving room for the replay share of max_pairs
                random.Random(params.seed).shuffle(pairs)
                pairs = pairs[: max(1, round(cfg.max_pairs * (1 - cfg.replay.fraction)))]

            # 2. GSM pairs to replay, making up replay.fraction of the mix.
            r = cfg.replay
            if r.source == "on_policy":  # the start policy's own solutions (posttrain/safety.py says why)
                records = list(gsm_records)
                random.Random(params.seed).shuffle(records)
                records = records[: replay_count(len(pairs), r.fraction, len(records))]  # at most one pair each
                gsm_samples, gsm_seconds = sample(
                    [gsm_messages(rec["question"], params.prompt) for rec in records], r.samples_per_prompt,
                    r.max_new_tokens, f"sampling {cfg.start} on GSM", stop_after_answer=True)
                replay = on_policy_replay_pairs(records, gsm_samples, params.seed)
                graded = [grade(c, rec["answer"]).strict_correct
                          for rec, group in zip(records, gsm_samples) for c in group]
                replay_metrics = {"prompts": len(records), "sampling_seconds": round(gsm_seconds, 1),
                                  "start_policy_sample_strict_accuracy": round(sum(graded) / max(1, len(graded)), 4)}
            else:  # stage preferences' pairs, sampled from the SFT policy
                n_replay = replay_count(len(pairs), r.fraction, len(gsm_pairs))
                replay = [{**p, "source": GSM_REPLAY, "replay_kind": p["source"]}
                          for p in random.Random(params.seed).sample(gsm_pairs, n_replay)]
                replay_metrics = {}
            replay_metrics = {"source": r.source, **replay_metrics,
                              "pairs_by_kind": dict(Counter(p["replay_kind"] for p in replay))}

            # 3. Everyday requests, answered as the start policy answers them today.
            everyday_metrics, helpful = {"prompts": len(everyday)}, []
            if everyday:
                e = cfg.everyday
                answered = engine.generate(render_prompts(tokenizer, [chat_messages(q, params.prompt)
                                                                      for q in everyday]),
                                           e.max_new_tokens, 0.0, desc=f"answering everyday requests ({cfg.start})")
                helpful, left_out = everyday_pairs(everyday, answered.completions,
                                                   [n < e.max_new_tokens for n in answered.completion_tokens],
                                                   rows, params.seed)
                everyday_metrics |= {"source": e.source, "pairs": len(helpful), **left_out,
                                     "sampling_seconds": round(answered.seconds, 1)}

        # 4. Safety, replay and everyday pairs, shuffled together (max_pairs: everyday pairs come on top
        # of the room left for the replay, so the cut drops a seeded sample of every source).
        mix = training_mix(pairs, replay, helpful, cfg.max_pairs, params.seed)
        built = {"mix": mix, "behaviour": sampled_behaviour(rows, verdicts), "already": already,
                 "replay": replay_metrics, "everyday": everyday_metrics, "sampling_seconds": round(sampling_seconds, 1)}
    built = broadcast_from_main(built)  # every process now holds the same mix
    mix = built["mix"]

    # 5. DPO from the start checkpoint, on every process; 6. the checkpoint OUT holds.
    examples = [preference_example(p, params.prompt) if p["source"] == GSM_REPLAY else safety_example(p, params.prompt)
                for p in mix]

    def log_reading(step: int, reading: dict) -> None:
        tracking.log_metrics(reading, step=step)
        print(f"safety step {step}: held-out " + ", ".join(f"{k.removeprefix('held_out_')} {v:.3f}"
                                                             for k, v in reading.items()))

    monitors = [held_out_monitor(
        tokenizer, held_out_rows, render_prompts(tokenizer, [chat_messages(r["prompt"], params.prompt)
                                                             for r in held_out_rows]), cfg.sampling.max_new_tokens,
        held_out_gsm, render_prompts(tokenizer, [gsm_messages(r["question"], params.prompt) for r in held_out_gsm]),
        cfg.replay.max_new_tokens, cfg.eval_every_steps, cfg.sampling.batch_size, log_reading,
    )] if held_out_rows or held_out_gsm else []
    with tempfile.TemporaryDirectory(prefix="safety-trained-") as scratch:
        trained = args.out if cfg.interpolation == 1 else Path(scratch) / "adapter"
        result = train_dpo(params, cfg, args.start, args.base, examples, trained, args.log, "safety", SECTIONS,
                           cfg.sft_weight, callbacks=monitors)
        if result.main_process and cfg.interpolation < 1:
            interpolate_adapter(base_dir, start_adapter, trained, cfg.interpolation, args.out)
    if not result.main_process:
        raise SystemExit(0)  # trained its share; the main process writes

    write_jsonl(args.pairs, mix)
    held_out = monitors[0].rows if monitors else []
    write_rows_csv(args.held_out_log, held_out)  # drawn beside LOG's reward
    metrics = {
        "start": cfg.start,
        # sampled at safety.sampling.temperature, so noisier than evaluate's greedy figures
        "start_policy_on_train_prompts": built["behaviour"],
        "pairs": len(mix),
        "pairs_by_source": dict(Counter(p["source"] for p in mix)),
        **built["already"],
        # The training log's figures: of the adapter as trained, before any interpolation
        # (evaluate@safety measures the saved one).
        "steps": result.steps,
        "train_loss": result.train_loss,
        "final_reward_accuracy": result.final_reward_accuracy,
        "final_reward_margin": result.final_reward_margin,
        # Of the adapter as trained (greedy, before any interpolation), every eval_every_steps.
        "held_out": {"safety_prompts": len(held_out_rows), "gsm_prompts": len(held_out_gsm),
                     "by_step": {row["step"]: {k: v for k, v in row.items() if k != "step"} for row in held_out}},
        "interpolation": cfg.interpolation,
        "replay": built["replay"],
        "everyday": built["everyday"],
        "sampling_seconds": built["sampling_seconds"],
        "seconds": result.seconds,  # training, the held-out monitor's readings included
        "held_out_seconds": round(monitors[0].seconds, 1) if monitors else 0.0,
        "resumed_from_step": result.resumed_from_step,
        "processes": result.processes,
    }
    write_json(args.metrics, metrics)
    tracking.log_metrics(metrics)
    print(f"safety: {metrics['pairs']} pairs {metrics['pairs_by_source']}, {result.steps} steps, "
          f"loss {result.train_loss} ({result.seconds} s)")
