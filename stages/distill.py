"""Stage `distill`: a teacher trains a student checkpoint's adapter (knowledge distillation).

    PYTHONPATH=. python stages/distill.py --base models/base --student models/sft --teacher models/rl \
        --prompts data/prepared/rl.jsonl --out models/distill --metrics metrics/distill.json \
        --log metrics/distill/loss.csv

Reads params: seed, prompt, distill, generation. Off by default (distill.enabled: false):
OUT is then a copy of STUDENT, and METRICS says it is off. On: on the first distill.num_prompts GSM
prompts (PROMPTS), the STUDENT checkpoint's LoRA adapter learns from TEACHER (another
pipeline checkpoint) or from distill.teacher_model (a full model with the same
tokenizer), by distill.method (posttrain/distill.py):
- on_policy: the student samples and learns the teacher's next-token distributions on
  its own samples (TRL's DistillationTrainer; GKD);
- teacher_traces: the teacher samples (the generation engine) and the student is
  fine-tuned on those samples; the teacher's strict accuracy on them is reported.
Writes the adapter to OUT, the loss per step to LOG and METRICS. The student's gain
over its start comes from stage evaluate (add distill to pipeline.checkpoints). One process.
"""

from pathlib import Path

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, base="the base model (stage base)",
                       student="the adapter checkpoint that learns (models/<distill.student>)",
                       teacher="the checkpoint that teaches (models/<distill.teacher>)",
                       prompts="GSM prompts with answers, JSONL (stage prepare)", out="the adapter directory to write",
                       metrics="metrics JSON to write", log="per-step loss CSV to write")
params = load_params()
cfg = params.distill
if not cfg.enabled:  # the default: the student passes through
    from posttrain.adapter_sft import pass_through

    pass_through("distill", args.student, args.out, args.metrics, args.log,
                 {"student": args.student.name, "teacher": cfg.teacher_model or args.teacher.name})
    raise SystemExit(0)
if cfg.method == "teacher_traces":
    if cfg.teacher_model and not Path(cfg.teacher_model).is_dir():
        raise SystemExit(f"distill.teacher_model: {cfg.teacher_model!r} is not a local directory; teacher_traces "
                         "samples it with the generation engine (download it first, e.g. `hf download <id> "
                         "--local-dir <dir>`)")
    from posttrain.engine import exit_unless_available

    exit_unless_available(params.generation)

from posttrain import runtime, tracking  # noqa: E402
from posttrain.generation import gsm_messages  # noqa: E402
from posttrain.io import GSM_RECORD, read_jsonl, write_json  # noqa: E402
from posttrain.models import adapter_checkpoint  # noqa: E402
from posttrain.training import write_log_history  # noqa: E402

SECTIONS = ["seed", "prompt", "distill", "generation"]  # the params sections this stage reads

# What the stage was given, checked before torch loads and the MLflow run opens: a missing
# or damaged input is one line in a second, and leaves no failed run behind.
records = read_jsonl(args.prompts, GSM_RECORD)[: cfg.num_prompts]
base_dir, student_adapter = adapter_checkpoint(args.student, args.base, "distill.student")

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("distill", params, SECTIONS):
    teacher = cfg.teacher_model or args.teacher
    conversations = [gsm_messages(r["question"], params.prompt) for r in records]
    metrics = {"method": cfg.method, "student": args.student.name,
               "teacher": cfg.teacher_model or args.teacher.name, "prompts": len(records)}
    if cfg.method == "teacher_traces":
        from posttrain.adapter_sft import continue_sft
        from posttrain.engine import sample_groups
        from posttrain.generation import render_prompts
        from posttrain.gsm import grade
        from posttrain.models import load_tokenizer

        prompts = render_prompts(load_tokenizer(base_dir), conversations)
        groups, seconds = sample_groups(params.generation, teacher, base_dir, params.seed, prompts, cfg.sampling,
                                        cfg.samples_per_prompt, desc="teacher samples")
        traces = [(conversation, record, sample) for conversation, record, group in zip(conversations, records, groups)
                  for sample in group if sample.strip()]
        history, steps, run, too_long = continue_sft(
            params, cfg, "distill", [{"messages": c + [{"role": "assistant", "content": s}]} for c, _, s in traces],
            base_dir, student_adapter, args.out, "distill", SECTIONS)
        correct = sum(grade(sample, record["answer"]).strict_correct for _, record, sample in traces)
        metrics.update(teacher_samples=len(traces), teacher_sample_accuracy=round(correct / max(len(traces), 1), 4),
                       skipped_too_long=too_long, sampling_seconds=round(seconds, 1))
    else:
        from posttrain.distill import distill_on_policy

        history, steps, run = distill_on_policy(params, cfg, conversations, base_dir, student_adapter, teacher,
                                                args.out, SECTIONS)
    logged = write_log_history(history, args.log, ["loss"])
    metrics.update(steps=steps, train_loss=run.train_loss, final_loss=logged[-1]["loss"] if logged else None,
                   seconds=run.seconds, resumed_from_step=run.resumed_from_step)
    write_json(args.metrics, metrics)
    tracking.log_metrics(metrics)
    print(f"distill ({cfg.method}, teacher {metrics['teacher']}): {steps} steps, loss {run.train_loss}")
