"""Stage `best_of_n`: test-time scaling with N samples per held-out problem.

    PYTHONPATH=. python stages/best_of_n.py

Reads params: seed, prompt, best_of_n, generation. Samples N completions per test problem from
the policy checkpoint (best_of_n.policy) and reports the strict accuracy of (a) the
reward model's top-scored sample, (b) a majority vote over the extracted answers,
(c) greedy decoding (from that checkpoint's evaluation), and pass@N as the ceiling.
Writes metrics/best_of_n.json.
"""

from posttrain.config import load_params

params = load_params()
from posttrain.engine import exit_unless_available, open_engine  # noqa: E402

exit_unless_available(params.generation)

from posttrain import runtime, tracking  # noqa: E402
from posttrain.evaluation import best_of_n_metrics, score_texts  # noqa: E402
from posttrain.generation import gsm_messages, render_prompts  # noqa: E402
from posttrain.io import GSM_RECORD, read_jsonl, write_json  # noqa: E402
from posttrain.models import checkpoint_dirs, load_reward_model, load_tokenizer  # noqa: E402

REWARD_INIT_CHECKPOINT = "sft"  # the reward model's backbone (see stages/reward_model.py)
METRICS_FILE = "metrics/best_of_n.json"
cfg = params.best_of_n

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("best_of_n", params, ["seed", "prompt", "best_of_n", "generation"]):
    problems = read_jsonl("data/prepared/test.jsonl", GSM_RECORD)[: cfg.limit]
    greedy = {row["id"]: row["strict_correct"] for row in read_jsonl(f"data/eval/{cfg.policy}.jsonl")
              if row["task"] == "gsm"}
    if missing := [p["id"] for p in problems if p["id"] not in greedy]:
        raise SystemExit(f"best_of_n.limit: {len(missing)} of its {len(problems)} problems have no greedy result in "
                         f"data/eval/{cfg.policy}.jsonl (evaluate.gsm_limit is smaller); lower best_of_n.limit")
    tokenizer = load_tokenizer(checkpoint_dirs(cfg.policy)[0])
    conversations = [gsm_messages(p["question"], params.prompt) for p in problems]
    prompts = render_prompts(tokenizer, conversations)
    s = cfg.sampling
    with open_engine(params.generation, cfg.policy, params.seed, s.batch_size) as engine:
        out = engine.generate(prompts, s.max_new_tokens, s.temperature, s.top_p, samples_per_prompt=cfg.n,
                              stop_after_answer=True, desc=f"best-of-{cfg.n}")
    samples = [out.completions[i * cfg.n : (i + 1) * cfg.n] for i in range(len(problems))]

    reward_base, reward_init = checkpoint_dirs(REWARD_INIT_CHECKPOINT)
    reward_model = load_reward_model(reward_base, reward_init, "models/reward_model", tokenizer.pad_token_id)
    flat = score_texts(reward_model, tokenizer, [c + [{"role": "assistant", "content": s}]
                                                 for c, group in zip(conversations, samples) for s in group])
    scores = [flat[i * cfg.n : (i + 1) * cfg.n] for i in range(len(problems))]
    metrics = best_of_n_metrics([p["answer"] for p in problems], samples, scores,
                                [greedy[p["id"]] for p in problems])
    metrics.update(policy=cfg.policy, sampling_seconds=round(out.seconds, 1))
    write_json(METRICS_FILE, metrics)
    tracking.log_metrics(metrics)
    print(f"best_of_n ({cfg.policy}, N={cfg.n}): reward-model pick {metrics['reward_model_top_pick_accuracy']}, "
          f"majority vote {metrics['majority_vote_accuracy']}, greedy {metrics['greedy_accuracy']}, "
          f"pass@N {metrics['pass_at_n']}")
