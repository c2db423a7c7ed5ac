"""Stage `midtrain`: continued pre-training of the full base model on a domain corpus mixed with general text.

    PYTHONPATH=. python stages/midtrain.py --base models/base --domain data/prepared/sft.jsonl \
        --out models/midtrain --metrics metrics/midtrain.json --log metrics/midtrain/loss.csv

Reads params: seed, midtrain, generation (for general: replay), runtime, tracking. Off by
default (midtrain.enabled: false): OUT is a copy of BASE. On: the first
midtrain.max_domain_documents documents of DOMAIN (.jsonl: text, or GSM problems with their
solutions; .txt: paragraphs) are mixed with general text (midtrain.general: the base
model's own samples, a local file or a hub dataset) so that the domain is
midtrain.domain_share of the training tokens; a held-out share of each corpus is never
trained on. Next-token prediction on every token of the mix, packed into
midtrain.max_length sequences, trains every weight of the model (or only its last
midtrain.train_layers decoder layers) with TRL's SFTTrainer. Writes the full model to OUT
(with adapter_base: midtrain every later stage builds on it), the loss per step to LOG,
and METRICS: the mix as built, and the held-out loss of each corpus before and after
(domain learnt, general kept). One process.
"""

import math
from pathlib import Path

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, base="the base model (stage base)",
                       domain="the domain corpus, .jsonl or .txt", out="the model directory to write",
                       metrics="metrics JSON to write", log="per-step loss CSV to write")
params = load_params()
cfg = params.midtrain
from posttrain.models import checkpoint_dirs, load_tokenizer  # noqa: E402

checkpoint_dirs(args.base, args.base)  # a missing or damaged base is one line, on or off
if not cfg.enabled:  # the default: the base model passes through
    from posttrain.adapter_sft import pass_through

    pass_through("midtrain", args.base, args.out, args.metrics, args.log, {})
    raise SystemExit(0)
REPLAY = cfg.general == "replay"
if REPLAY:
    from posttrain.engine import exit_unless_available

    exit_unless_available(params.generation)

from posttrain import resume, runtime, tracking  # noqa: E402
from posttrain.errors import UserError  # noqa: E402
from posttrain.io import atomic_dir, write_json  # noqa: E402
from posttrain.midtrain import (  # noqa: E402
    general_tokens_needed, read_corpus, split_held_out, take_tokens, train_only_last_layers)
from posttrain.training import checkpoints_for, load_base_for_training, trainer_arguments, write_log_history  # noqa: E402

domain, empty_domain = read_corpus(args.domain)  # a bad corpus fails here, before the heavy imports

SECTIONS = ["seed", "midtrain", "generation"]  # the params this stage reads


def replay_documents(tokenizer, tokens_wanted: int) -> tuple[list[str], float]:
    """The base model's own samples, begun from the replay prompt, until they hold about
    tokens_wanted tokens; and the seconds the sampling took."""
    from posttrain.engine import open_engine

    prompt = cfg.replay.prompt or tokenizer.bos_token or tokenizer.eos_token
    documents, tokens, seconds = [], 0, 0.0
    with open_engine(params.generation, args.base, args.base, params.seed, cfg.replay.batch_size) as engine:
        mean_length = cfg.replay.max_new_tokens / 2  # a first guess; measured after the first round
        for _ in range(4):  # samples that end early make a round fall short; a few rounds top it up
            count = math.ceil((tokens_wanted - tokens) / max(mean_length, 1) * 1.1)
            out = engine.generate([prompt] * count, cfg.replay.max_new_tokens, cfg.replay.temperature,
                                  cfg.replay.top_p, desc="midtrain replay")
            documents += [prompt + text for text in out.completions if text.strip()]
            tokens += sum(out.completion_tokens)
            mean_length = sum(out.completion_tokens) / max(len(out.completion_tokens), 1)
            seconds += out.seconds
            if tokens >= tokens_wanted:
                break
    return documents, seconds


def hub_documents(token_count, tokens_wanted: int) -> list[str]:
    """Documents streamed from the hub dataset's train split (its `text` field)."""
    from datasets import load_dataset

    try:
        stream = load_dataset(cfg.general, split="train", streaming=True)
        documents, tokens = [], 0
        for row in stream:
            text = row.get("text") if isinstance(row, dict) else None
            if isinstance(text, str) and text.strip():
                documents.append(text.strip())
                tokens += token_count(text)
                if tokens >= tokens_wanted:
                    break
    except Exception as error:  # offline, no such dataset, no text field: one line, not a traceback
        raise UserError(f"midtrain.general: {cfg.general!r} is not replay, a .jsonl/.txt file, or a hub dataset "
                        f"whose train split has a text field ({type(error).__name__}: {error})") from None
    return documents


runtime.setup(params.runtime, params.seed)
with tracking.stage_run("midtrain", params, SECTIONS):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(args.base, padding_side="right")

    def token_count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + the eos that ends it

    domain = domain[: cfg.max_domain_documents]
    domain_train, domain_held_out = split_held_out(domain, cfg.held_out_share, params.seed)
    domain_tokens = sum(token_count(d) for d in domain_train)

    general_train, general_held_out, general_tokens, empty_general, replay_seconds = [], [], 0, 0, None
    if cfg.domain_share < 1:
        wanted = general_tokens_needed(domain_tokens, cfg.domain_share)
        with_held_out = math.ceil(wanted / (1 - cfg.held_out_share))
        if REPLAY:
            general, replay_seconds = replay_documents(tokenizer, with_held_out)
        elif Path(cfg.general).suffix in (".jsonl", ".txt") or Path(cfg.general).exists():
            general, empty_general = read_corpus(cfg.general)
        else:
            general = hub_documents(token_count, with_held_out)
        general_train, general_held_out = split_held_out(general, cfg.held_out_share, params.seed)
        general_train, general_tokens = take_tokens(general_train, [token_count(d) for d in general_train],
                                                    wanted, params.seed)
        if general_tokens < wanted:
            print(f"midtrain: midtrain.general holds {general_tokens} training tokens of the {wanted} that make the "
                  f"domain {cfg.domain_share} of the mix; the domain is "
                  f"{domain_tokens / (domain_tokens + general_tokens):.2f} of it")
    share = domain_tokens / (domain_tokens + general_tokens)

    model = load_base_for_training(args.base, "none")
    trainable = train_only_last_layers(model, cfg.train_layers)
    held_out = {"domain": Dataset.from_list([{"text": d} for d in domain_held_out])}
    if general_held_out:
        held_out["general"] = Dataset.from_list([{"text": d} for d in general_held_out])
    mix = [{"text": d} for d in domain_train + general_train]
    checkpoints = checkpoints_for("midtrain", params, SECTIONS, mix, [args.base])
    config = SFTConfig(
        **trainer_arguments(params, cfg, checkpoints),
        dataset_text_field="text",
        max_length=cfg.max_length,
        # Continued pre-training: documents joined by the eos token and cut into full
        # sequences; bfd packing's document-aware attention needs FlashAttention.
        packing=True,
        packing_strategy="wrapped",
        eval_packing=False,  # each held-out document alone: its loss does not depend on its neighbours
        per_device_eval_batch_size=cfg.batch_size,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(mix), eval_dataset=held_out,
                         processing_class=tokenizer)
    before = trainer.evaluate()
    run = resume.train(trainer, checkpoints)
    after = trainer.evaluate()

    with atomic_dir(args.out) as out:
        trainer.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    checkpoints.remove()

    history = write_log_history(trainer.state.log_history, args.log, ["loss", "learning_rate", "grad_norm"])
    metrics = {
        "enabled": True,
        "domain_documents": len(domain_train),
        "domain_tokens": domain_tokens,
        "general_documents": len(general_train),
        "general_tokens": general_tokens,
        "domain_share": round(share, 4),
        "skipped_empty_documents": empty_domain + empty_general,
        "held_out_documents": {name: len(rows) for name, rows in held_out.items()},
        "replay_seconds": replay_seconds,
        "steps": trainer.state.global_step,
        "train_loss": run.train_loss,
        "trainable_parameters": trainable,
        "seconds": run.seconds,
        "resumed_from_step": run.resumed_from_step,
    }
    for name in held_out:  # the mean token loss on text no step trained on
        metrics[f"{name}_loss_before"] = round(before[f"eval_{name}_loss"], 4)
        metrics[f"{name}_loss_after"] = round(after[f"eval_{name}_loss"], 4)
    write_json(args.metrics, metrics)
    tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    print(f"midtrain: {metrics['steps']} steps on {domain_tokens} domain + {general_tokens} general tokens "
          f"(domain {share:.2f}); held-out domain loss {metrics['domain_loss_before']} -> "
          f"{metrics['domain_loss_after']}" + (f", general {metrics['general_loss_before']} -> "
                                                f"{metrics['general_loss_after']}" if general_held_out else "")
          + f"; {metrics['seconds']} s")
