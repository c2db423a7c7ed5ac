"""Stage `best_of_n`: test-time scaling with N samples per held-out problem.

    PYTHONPATH=. python stages/best_of_n.py --base models/base --policy models/sft \
        --greedy data/eval/sft.jsonl --test data/prepared/test.jsonl \
        --reward-model models/reward_model --reward-start models/sft --metrics metrics/best_of_n.json

Reads params: seed, prompt, best_of_n, generation. Samples N completions per test problem from
the POLICY checkpoint (best_of_n.policy) and reports the strict accuracy of (a) the
reward model's top-scored sample, (b) a majority vote over the extracted answers,
(c) greedy decoding (from that checkpoint's evaluation, GREEDY), and pass@N as the
ceiling. Writes METRICS.
"""

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, base="the base model (stage base)",
                       policy="the checkpoint to sample (models/<best_of_n.policy>)",
                       greedy="that checkpoint's graded evaluation, JSONL (stage evaluate)",
                       test="the GSM test problems, JSONL (stage prepare)",
                       reward_model="the reward adapter and score head (stage reward_model)",
                       reward_start="the checkpoint the reward model was trained on (models/<reward_model.start>)",
                       metrics="metrics JSON to write")
params = load_params()
from posttrain.engine import exit_unless_available, sample_groups  # noqa: E402

exit_unless_available(params.generation)

from posttrain import runtime, tracking  # noqa: E402
from posttrain.reward_model import best_of_n_metrics, score_texts  # noqa: E402
from posttrain.generation import gsm_messages, render_prompts  # noqa: E402
from posttrain.io import GSM_RECORD, read_jsonl, write_json  # noqa: E402
from posttrain.models import checkpoint_dirs, load_reward_model, load_tokenizer  # noqa: E402

SECTIONS = ["seed", "prompt", "best_of_n", "generation"]  # the params sections this stage reads
cfg = params.best_of_n

# What the stage was given, checked before torch loads and the MLflow run opens: a missing
# or damaged input is one line in a second, and leaves no failed run behind.
problems = read_jsonl(args.test, GSM_RECORD)[: cfg.limit]
greedy = {row["id"]: row["strict_correct"] for row in read_jsonl(args.greedy)
          if row["task"] == "gsm"}
if missing := [p["id"] for p in problems if p["id"] not in greedy]:
    raise SystemExit(f"best_of_n.limit: {len(missing)} of its {len(problems)} problems have no greedy result in "
                     f"{args.greedy} (evaluate.gsm_limit is smaller); lower best_of_n.limit")
policy_base_dir = checkpoint_dirs(args.policy, args.base)[0]
reward_base, reward_init = checkpoint_dirs(args.reward_start, args.base)

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("best_of_n", params, SECTIONS):
    tokenizer = load_tokenizer(policy_base_dir)
    conversations = [gsm_messages(p["question"], params.prompt) for p in problems]
    prompts = render_prompts(tokenizer, conversations)
    samples, sampling_seconds = sample_groups(params.generation, args.policy, args.base, params.seed, prompts,
                                              cfg.sampling, cfg.n, desc=f"best-of-{cfg.n}")

    reward_model = load_reward_model(reward_base, reward_init, args.reward_model, tokenizer.pad_token_id)
    flat = score_texts(reward_model, tokenizer, [c + [{"role": "assistant", "content": s}]
                                                 for c, group in zip(conversations, samples) for s in group])
    scores = [flat[i * cfg.n : (i + 1) * cfg.n] for i in range(len(problems))]
    metrics = best_of_n_metrics([p["answer"] for p in problems], samples, scores,
                                [greedy[p["id"]] for p in problems])
    metrics.update(policy=cfg.policy, sampling_seconds=round(sampling_seconds, 1))
    write_json(args.metrics, metrics)
    tracking.log_metrics(metrics)
    print(f"best_of_n ({cfg.policy}, N={cfg.n}): reward-model pick {metrics['reward_model_top_pick_accuracy']}, "
          f"majority vote {metrics['majority_vote_accuracy']}, greedy {metrics['greedy_accuracy']}, "
          f"pass@N {metrics['pass_at_n']}")
