"""Stage `rft`: rejection-sampling fine-tuning (STaR / ReST / expert iteration) of a checkpoint.

    PYTHONPATH=. python stages/rft.py --base models/base --start models/sft --prompts data/prepared/rl.jsonl \
        --out models/rft --metrics metrics/rft.json --log metrics/rft/loss.csv

Reads params: seed, prompt, rft, generation. Off by default (rft.enabled: false): OUT is
then a copy of START, and METRICS says it is off. On: for each of rft.rounds rounds, samples
rft.samples_per_prompt completions of the first rft.num_prompts GSM prompts (PROMPTS)
from the current adapter (START's in round 1), keeps up to rft.keep_per_prompt distinct
completions the verifier finds strictly correct, and continues SFT of the adapter on
them; the next round samples the adapter this one made. Nothing unverified is trained
on. Writes the last adapter to OUT, each round's yield (sample accuracy, pass@k on the
training prompts, samples kept) and training to METRICS, and every step's loss, with
its round, to LOG. The held-out accuracy comes from stage evaluate (add rft to
pipeline.checkpoints). One process.
"""

import shutil
import tempfile
from pathlib import Path

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, base="the base model (stage base)", start="the adapter checkpoint to improve",
                       prompts="GSM prompts with answers, JSONL (stage prepare)", out="the adapter directory to write",
                       metrics="metrics JSON to write", log="per-step loss CSV to write")
params = load_params()
if not params.rft.enabled:  # the default: the start checkpoint passes through
    from posttrain.adapter_sft import pass_through

    pass_through("rft", args.start, args.out, args.metrics, args.log, {"start": args.start.name})
    raise SystemExit(0)
from posttrain.engine import exit_unless_available, sample_groups  # noqa: E402

exit_unless_available(params.generation)

from posttrain import runtime, tracking  # noqa: E402
from posttrain.generation import gsm_messages, render_prompts  # noqa: E402
from posttrain.io import GSM_RECORD, atomic_dir, read_jsonl, write_json  # noqa: E402
from posttrain.models import adapter_checkpoint, load_tokenizer  # noqa: E402
from posttrain.adapter_sft import continue_sft  # noqa: E402
from posttrain.rft import sft_conversations, verified_samples  # noqa: E402
from posttrain.training import write_rows_csv  # noqa: E402

SECTIONS = ["seed", "prompt", "rft", "generation"]  # the params sections this stage reads
cfg = params.rft

# What the stage was given, checked before torch loads and the MLflow run opens: a missing
# or damaged input is one line in a second, and leaves no failed run behind.
records = read_jsonl(args.prompts, GSM_RECORD)[: cfg.num_prompts]
base_dir, adapter_dir = adapter_checkpoint(args.start, args.base)

runtime.setup(params.runtime, params.seed)
with tracking.stage_run("rft", params, SECTIONS), tempfile.TemporaryDirectory(prefix="rft-rounds-") as scratch:
    prompts = render_prompts(load_tokenizer(base_dir), [gsm_messages(r["question"], params.prompt) for r in records])

    current, rounds, losses, step_offset = adapter_dir, [], [], 0
    for number in range(1, cfg.rounds + 1):
        # A seed per round: the same adapter sampled twice would give the same samples.
        groups, seconds = sample_groups(params.generation, current, base_dir, params.seed + number, prompts,
                                        cfg.sampling, cfg.samples_per_prompt, desc=f"rft round {number}")
        kept, found = verified_samples(records, groups, cfg.keep_per_prompt)
        summary = {"round": number, **found.as_dict(), "sampling_seconds": round(seconds, 1)}
        print(f"rft round {number}: {found.correct_samples}/{found.samples} samples correct "
              f"({found.prompts_solved}/{found.prompts} prompts solved), training on {found.kept}")
        if kept:
            trained = Path(scratch) / f"round-{number}"
            history, steps, run, too_long = continue_sft(params, cfg, "rft", sft_conversations(kept, params.prompt),
                                                         base_dir, current, trained, f"rft-round-{number}", SECTIONS)
            losses += [{"step": step_offset + row["step"], "round": number, "loss": row["loss"]}
                       for row in history if "loss" in row]
            step_offset += steps
            current = trained
            summary.update(steps=steps, skipped_too_long=too_long, train_loss=run.train_loss,
                           train_seconds=run.seconds)
        else:  # nothing verified: the adapter goes on unchanged
            summary.update(steps=0, skipped_too_long=0, train_loss=None, train_seconds=0.0)
        rounds.append(summary)
        tracking.log_metrics({f"round.{key}": value for key, value in summary.items() if key != "round"}, step=number)

    if current == adapter_dir:
        raise SystemExit(f"rft: no round found a correct sample in {cfg.rounds} rounds of "
                         f"{cfg.samples_per_prompt} samples on {len(records)} prompts; nothing was trained "
                         "(raise rft.samples_per_prompt or start from a stronger checkpoint)")
    with atomic_dir(args.out) as out:
        shutil.copytree(current, out, dirs_exist_ok=True)
    write_rows_csv(args.log, losses)
    metrics = {"start": args.start.name, "rounds": rounds, "steps": step_offset,
               "examples": sum(r["kept"] for r in rounds),
               # each round's figure is of the policy that entered it (round 1: START's)
               "sample_accuracy_by_round": [r["sample_accuracy"] for r in rounds]}
    write_json(args.metrics, metrics)
    tracking.log_metrics({key: value for key, value in metrics.items() if key != "rounds"})
    print(f"rft: {len(rounds)} rounds, {metrics['examples']} verified examples, {metrics['steps']} steps; sample "
          f"accuracy entering each round {metrics['sample_accuracy_by_round']}")
