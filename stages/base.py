"""Stage `base`: resolve model.source into a normal Hugging Face directory.

    PYTHONPATH=. python stages/base.py --out models/base --metrics metrics/base.json

Reads params: seed, model, runtime, tracking. The packaged SmolLM2 GGUF is dequantised
here once, so no later stage pays for it.
"""

import time

from posttrain.config import load_params, stage_arguments

args = stage_arguments(__doc__, out="the model directory to write", metrics="metrics JSON to write")
params = load_params()  # fails fast, before torch is imported

from posttrain import runtime, tracking  # noqa: E402
from posttrain.io import atomic_dir, write_json  # noqa: E402
from posttrain.models import (  # noqa: E402
    ModelSourceError, check_model_source, count_parameters, resolve_base, save_checkpoint)

SECTIONS = ["seed", "model"]  # the params sections this stage reads
# A missing package or directory is one line before torch loads and the MLflow run opens.
check_model_source(params.model.source)
runtime.setup(params.runtime, params.seed)
with tracking.stage_run("base", params, SECTIONS):
    started = time.perf_counter()
    try:
        model, tokenizer = resolve_base(params.model, params.seed)
    except ModelSourceError as exc:
        raise SystemExit(str(exc)) from None
    with atomic_dir(args.out) as tmp:
        save_checkpoint(model, tokenizer, tmp)
    metrics = {
        "source": params.model.source,
        "architecture": model.config.architectures[0] if model.config.architectures else type(model).__name__,
        "parameters": count_parameters(model),
        "vocab_size": len(tokenizer),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.metrics, metrics)
    tracking.log_metrics({"parameters": metrics["parameters"], "seconds": metrics["seconds"]})
    print(f"base: {metrics['source']} -> {args.out} ({metrics['parameters']:,} parameters, {metrics['seconds']} s)")
