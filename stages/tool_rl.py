"""Stage `tool_rl`: GRPO with the calculator tool in the loop (TRL's GRPOTrainer `tools=`).

    PYTHONPATH=. python stages/tool_rl.py --base models/base --start models/tool_sft \
        --prompts data/prepared/rl.jsonl --test data/prepared/test.jsonl --out models/tool_rl \
        --metrics metrics/tool_rl.json --log metrics/tool_rl/log.csv --graded data/tool_rl/graded.jsonl

Reads params: seed, prompt, tool_rl, generation. Off by default (tool_rl.enabled: false):
OUT is then a copy of START, and METRICS says it is off. On:
1. START's adapter (tool_sft by default: a checkpoint that learnt the call format) trains
   with GRPO on the first tool_rl.num_prompts prompts of PROMPTS, the calculator offered.
   TRL samples each completion as a conversation: it parses every <tool_call> the model
   writes, runs the calculator, feeds the result back and lets the model go on, up to
   tool_rl.max_calls tool turns and tool_rl.max_completion_length tokens in all. The
   reward is the GSM verifier's, as stage rl's, on the whole conversation (tool_rl.reward:
   exact, format, length); the tool's results are masked out of the loss (TRL's tool mask).
2. The first tool_rl.eval_problems problems of TEST are solved greedily with the tool by
   OUT and by START (posttrain/tool_use.py solve_with_tool, the format SFT taught and TRL
   parses). METRICS gets each one's strict accuracy with its interval and tool use, and
   the paired change (exact McNemar on the same problems). GRADED holds the transcripts.
Writes the adapter to OUT and each step's reward, tool-call frequency and failure rate to
LOG. One process; samples with transformers' generate (TRL's vLLM weight sync is not
wired for tools here).
"""

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, base="the base model (stage base)",
                       start="the adapter checkpoint to train (models/<tool_rl.start>)",
                       prompts="GSM prompts, JSONL (stage prepare: the rl split)",
                       test="GSM test problems, JSONL (stage prepare)", out="the adapter directory to write",
                       metrics="metrics JSON to write", log="per-step reward and tool-use CSV to write",
                       graded="every test problem's transcripts and grades, JSONL to write")
params = load_params()
cfg = params.tool_rl
if not cfg.enabled:  # the default: the start checkpoint passes through
    from posttrain.adapter_sft import pass_through
    from posttrain.io import write_jsonl

    pass_through("tool_rl", args.start, args.out, args.metrics, args.log, {"start": args.start.name},
                 log_header="step,reward")
    write_jsonl(args.graded, [])
    raise SystemExit(0)
from posttrain.engine import exit_unless_available, open_engine  # noqa: E402

exit_unless_available(params.generation)

from posttrain import resume, runtime, tracking  # noqa: E402
from posttrain.gsm import grade  # noqa: E402
from posttrain.io import GSM_RECORD, read_jsonl, write_json, write_jsonl  # noqa: E402
from posttrain.models import adapter_checkpoint, load_tokenizer  # noqa: E402
from posttrain.stats import paired_change  # noqa: E402
from posttrain.tool_use import (  # noqa: E402
    solve_with_tool, tool_grpo_trainer, tool_use_summary)
from posttrain.training import (  # noqa: E402
    checkpoints_for, load_base_for_training, save_adapter, trainer_arguments_basic, write_rows_csv)

SECTIONS = ["seed", "prompt", "tool_rl", "generation"]  # the params sections this stage reads

# What the stage was given, checked before torch loads and the MLflow run opens: a missing
# or damaged input is one line in a second, and leaves no failed run behind.
records = read_jsonl(args.prompts, GSM_RECORD)[: cfg.num_prompts]
test = read_jsonl(args.test, GSM_RECORD)[: cfg.eval_problems]
base_dir, adapter_dir = adapter_checkpoint(args.start, args.base)

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("tool_rl", params, SECTIONS):
    from peft import PeftModel

    # 1. GRPO, the tool in the loop.
    tokenizer = load_tokenizer(base_dir)
    policy = PeftModel.from_pretrained(load_base_for_training(base_dir, "none"), adapter_dir, is_trainable=True)
    checkpoints = checkpoints_for("tool_rl", params, SECTIONS, records, [base_dir, adapter_dir])
    trainer = tool_grpo_trainer(policy, tokenizer, records, params.prompt, cfg, trainer_arguments_basic(
        params, checkpoints, cfg.learning_rate, cfg.steps, cfg.logging_steps, cfg.max_grad_norm, cfg.bf16))
    run = resume.train(trainer, checkpoints)
    save_adapter(trainer, args.out, checkpoints, selected_adapters=["default"])
    log_keys = {"reward": "reward", "tools/call_frequency": "calls_per_completion",
                "tools/failure_frequency": "call_failure_rate", "completions/mean_length": "completion_length"}
    history = [{"step": entry["step"], **{name: round(entry[key], 4) for key, name in log_keys.items() if key in entry}}
               for entry in trainer.state.log_history if "reward" in entry]
    write_rows_csv(args.log, history)

    # 2. The test with the tool, by OUT and by START, greedy.
    questions = [r["question"] for r in test]
    solved = {}
    for name, checkpoint in (("tool_rl", args.out), ("start", args.start)):
        with open_engine(params.generation, checkpoint, args.base, params.seed) as engine:
            solved[name] = solve_with_tool(engine, tokenizer, questions, params.prompt, cfg.max_calls,
                                           cfg.max_new_tokens, desc=f"{checkpoint.name} with the tool")[0]
    graded = []
    for record, trained, start in zip(test, solved["tool_rl"], solved["start"], strict=True):
        graded.append({"id": record["id"], "question": record["question"], "reference": record["answer"],
                       "tool_rl": trained.text, "tool_rl_calls": trained.calls,
                       "tool_rl_correct": grade(trained.text, record["answer"]).strict_correct,
                       "start": start.text, "start_calls": start.calls,
                       "start_correct": grade(start.text, record["answer"]).strict_correct})
    write_jsonl(args.graded, graded)
    correct = {way: {g["id"]: g[f"{way}_correct"] for g in graded} for way in ("tool_rl", "start")}
    metrics = {
        "start": args.start.name,
        "steps": trainer.state.global_step,
        "resumed_from_step": run.resumed_from_step,
        "seconds": round(run.seconds, 1),
        "first_step_reward": history[0].get("reward") if history else None,
        "last_step_reward": history[-1].get("reward") if history else None,
        "with_tool": {**tool_use_summary(solved["tool_rl"], list(correct["tool_rl"].values())),
                      "vs_start_with_tool": paired_change(correct["start"], correct["tool_rl"])},
        "start_with_tool": tool_use_summary(solved["start"], list(correct["start"].values())),
    }
    write_json(args.metrics, metrics)
    tracking.log_metrics(metrics)
    print(f"tool_rl: {metrics['steps']} GRPO steps in {metrics['seconds']} s, reward {metrics['first_step_reward']} "
          f"-> {metrics['last_step_reward']}; strict accuracy with the tool on {len(test)} test problems: "
          f"{metrics['with_tool']['strict_accuracy']['value']:.3f} against {args.start.name}'s "
          f"{metrics['start_with_tool']['strict_accuracy']['value']:.3f}")
