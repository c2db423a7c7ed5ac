"""Stage `tool_sft`: SFT with a calculator tool, and the test solved with and without it.

    PYTHONPATH=. python stages/tool_sft.py --base models/base --start models/sft --train data/prepared/sft.jsonl \
        --test data/prepared/test.jsonl --out models/tool_sft --metrics metrics/tool_sft.json \
        --log metrics/tool_sft/loss.csv --graded data/tool_sft/graded.jsonl

Reads params: seed, prompt, tool_sft, generation. Off by default (tool_sft.enabled: false):
OUT is then a copy of START, and METRICS says it is off. On:
1. the reference solutions of TRAIN (the first tool_sft.num_examples) become
   tool-calling conversations (posttrain/tool_use.py): each arithmetic step the
   calculator confirms ends an assistant turn with a <tool_call>, and the tool's result
   comes back in the next turn;
2. START's adapter continues SFT on them, with the loss on the assistant turns (calls
   included) and none on the tool's results;
3. the first tool_sft.eval_problems problems of TEST are solved greedily three ways:
   by OUT with the tool in the loop (at most tool_sft.max_calls calls), by OUT without
   it (the plain prompt evaluate uses), and by START without it. METRICS gets each one's
   strict accuracy with its interval, the tool's use (calls per problem, the share of
   calls the tool could run, problems with a call), and the paired change of the first
   two against START's (exact McNemar on the same problems). GRADED holds every problem's
   transcripts.
Writes the adapter to OUT and every step's loss to LOG. One process.
"""

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, base="the base model (stage base)",
                       start="the adapter checkpoint that learns the tool (models/<tool_sft.start>)",
                       train="GSM problems with reference solutions, JSONL (stage prepare: the sft split)",
                       test="GSM test problems, JSONL (stage prepare)", out="the adapter directory to write",
                       metrics="metrics JSON to write", log="per-step loss CSV to write",
                       graded="every test problem's transcripts and grades, JSONL to write")
params = load_params()
cfg = params.tool_sft
if not cfg.enabled:  # the default: the start checkpoint passes through
    from posttrain.adapter_sft import pass_through
    from posttrain.io import write_jsonl

    pass_through("tool_sft", args.start, args.out, args.metrics, args.log, {"start": args.start.name})
    write_jsonl(args.graded, [])
    raise SystemExit(0)
from posttrain.engine import exit_unless_available, open_engine  # noqa: E402

exit_unless_available(params.generation)

from posttrain import runtime, tracking  # noqa: E402
from posttrain.adapter_sft import continue_sft  # noqa: E402
from posttrain.generation import gsm_messages, render_prompts  # noqa: E402
from posttrain.gsm import grade  # noqa: E402
from posttrain.io import GSM_RECORD, read_jsonl, write_json, write_jsonl  # noqa: E402
from posttrain.models import adapter_checkpoint, load_tokenizer  # noqa: E402
from posttrain.stats import paired_change, rate_summary  # noqa: E402
from posttrain.tool_use import (  # noqa: E402
    CALL, solve_with_tool, tool_chat_template, tool_conversation, tool_schemas, tool_use_summary)
from posttrain.training import write_rows_csv  # noqa: E402

SECTIONS = ["seed", "prompt", "tool_sft", "generation"]  # the params sections this stage reads

# What the stage was given, checked before torch loads and the MLflow run opens: a missing
# or damaged input is one line in a second, and leaves no failed run behind.
train = read_jsonl(args.train, GSM_RECORD)[: cfg.num_examples]
test = read_jsonl(args.test, GSM_RECORD)[: cfg.eval_problems]
base_dir, adapter_dir = adapter_checkpoint(args.start, args.base)

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("tool_sft", params, SECTIONS):
    # 1-2. Tool-calling conversations, and SFT on their assistant turns.
    built = [tool_conversation(record, params.prompt) for record in train]
    conversations = [{"messages": messages} for messages, _ in built]
    tokenizer = load_tokenizer(base_dir)
    history, steps, run, too_long = continue_sft(params, cfg, "tool_sft", conversations, base_dir, adapter_dir,
                                                 args.out, "tool_sft", SECTIONS,
                                                 chat_template=tool_chat_template(tokenizer, training=True),
                                                 tools=tool_schemas())
    write_rows_csv(args.log, [{"step": row["step"], "loss": row["loss"]} for row in history if "loss" in row])

    # 3. The test, three ways, greedy.
    plain_prompts = render_prompts(tokenizer, [gsm_messages(r["question"], params.prompt) for r in test])
    # Without the tool, the same token budget as the whole tool loop (generation stops at the answer line).
    with open_engine(params.generation, args.out, args.base, params.seed) as engine:
        transcripts, tool_seconds = solve_with_tool(engine, tokenizer, [r["question"] for r in test], params.prompt,
                                                    cfg.max_calls, cfg.max_new_tokens, desc="tool_sft with the tool")
        without = engine.generate(plain_prompts, cfg.max_new_tokens * (cfg.max_calls + 1), stop_after_answer=True,
                                  desc="tool_sft without the tool").completions
    with open_engine(params.generation, args.start, args.base, params.seed) as engine:
        start_plain = engine.generate(plain_prompts, cfg.max_new_tokens * (cfg.max_calls + 1), stop_after_answer=True,
                                      desc=f"{args.start.name} without the tool").completions

    graded = []
    for record, transcript, plain, start_text in zip(test, transcripts, without, start_plain, strict=True):
        graded.append({"id": record["id"], "question": record["question"], "reference": record["answer"],
                       "with_tool": transcript.text, "calls": transcript.calls, "valid_calls": transcript.valid_calls,
                       "tool_errors": transcript.errors,
                       "with_tool_correct": grade(transcript.text, record["answer"]).strict_correct,
                       "without_tool": plain, "without_tool_correct": grade(plain, record["answer"]).strict_correct,
                       "start": start_text, "start_correct": grade(start_text, record["answer"]).strict_correct})
    start_correct = {g["id"]: g["start_correct"] for g in graded}
    with_tool = {g["id"]: g["with_tool_correct"] for g in graded}
    without_tool = {g["id"]: g["without_tool_correct"] for g in graded}
    write_jsonl(args.graded, graded)
    metrics = {
        "start": args.start.name,
        "examples": len(conversations) - too_long, "skipped_too_long": too_long,
        "calls_per_example": round(sum(calls for _, calls in built) / max(1, len(built)), 3),
        "steps": steps, "train_loss": run.train_loss, "train_seconds": run.seconds,
        "with_tool": {**tool_use_summary(transcripts, list(with_tool.values())),
                      "seconds": round(tool_seconds, 1),
                      "vs_start_without_tool": paired_change(start_correct, with_tool)},
        "without_tool": {"strict_accuracy": rate_summary(list(without_tool.values())),
                         # a call written with no tool to answer it
                         "problems_with_calls": round(sum(bool(CALL.search(g["without_tool"])) for g in graded)
                                                      / max(1, len(graded)), 4),
                         "vs_start_without_tool": paired_change(start_correct, without_tool)},
        "start_without_tool": {"strict_accuracy": rate_summary(list(start_correct.values()))},
    }
    write_json(args.metrics, metrics)
    tracking.log_metrics(metrics)
    print(f"tool_sft: {metrics['examples']} conversations ({metrics['calls_per_example']} calls each), {steps} steps; "
          f"strict accuracy on {len(test)} test problems: with the tool "
          f"{metrics['with_tool']['strict_accuracy']['value']:.3f} ({metrics['with_tool']['calls_per_problem']} "
          f"calls each, validity {metrics['with_tool']['tool_call_validity']}), without "
          f"{metrics['without_tool']['strict_accuracy']['value']:.3f}, {args.start.name} without "
          f"{metrics['start_without_tool']['strict_accuracy']['value']:.3f}")
