"""Where in the network stage safety's update lives: the update kept in some modules only.

    PYTHONPATH=. python bench/safety_parts.py --trained OUT/safety --out-dir OUT/parts \
        [--start models/rl] [--base models/base] [--parts attention mlp lower upper]

writes one adapter per part, start + (trained - start) in that part's LoRA modules and
start alone elsewhere; each is then a checkpoint for `stages/evaluate.py --checkpoint`.
`--trained` is the safety update as trained (a run at `safety.interpolation: 1`; the
stage's own output is already interpolated). The parts:
- attention: q/k/v/o projections; mlp: gate/up/down projections;
- lower / upper: the first / second half of the decoder layers.
If refusal came from one part and the arithmetic it costs from another, keeping only the
first would refuse without the tax; the README (Safety) has what it measured.

The adapters are exact: interpolate_adapter's stacked form (rank 2r) holds the start's
and the trained update's factors apart, so each module's share of each is set on its own.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
LAYER = re.compile(r"\.layers\.(\d+)\.")
PARTS = {
    "attention": lambda layer, module, layers: module in ATTENTION,
    "mlp": lambda layer, module, layers: module not in ATTENTION,
    "lower": lambda layer, module, layers: layer < layers // 2,
    "upper": lambda layer, module, layers: layer >= layers // 2,
}
# interpolate_adapter's weight for the stacked adapter rescaled below: any value strictly
# between 0 and 1 keeps both factors (at 0 or 1 one of them would be zeroed for good).
STACKED_AT = 0.5


def module_of(key: str) -> tuple[int, str]:
    """(layer, projection) of a LoRA tensor's name."""
    layer = LAYER.search(key)
    if layer is None:
        raise ValueError(f"{key}: no decoder layer in the name")
    return int(layer.group(1)), key.split(".lora_")[0].rsplit(".", 1)[1]


def write_parts(base: str, start: str, trained: str, parts: dict, out_dir: str | Path) -> dict:
    """For each named rule keep(layer, module, layers) in parts, out_dir/<name> holds
    start + keep * (trained - start), module by module. The stacked adapter is built once
    (one model load) and each part rescales its factors. Returns, per part, the count of
    LoRA modules that keep the update and of those that do not."""
    from safetensors.torch import load_file, save_file

    from posttrain.io import atomic_dir
    from posttrain.safety import interpolate_adapter

    rank = json.loads((Path(start) / "adapter_config.json").read_text())["r"]
    counts = {}
    with tempfile.TemporaryDirectory() as scratch:
        stacked = Path(scratch) / "stacked"
        interpolate_adapter(base, start, trained, STACKED_AT, stacked)
        tensors = load_file(stacked / "adapter_model.safetensors")
        names = [key for key in tensors if ".lora_A." in key]
        layers = 1 + max(module_of(key)[0] for key in names)
        for key in names:
            if tensors[key].shape[0] != 2 * rank:
                raise ValueError(f"{key}: {tensors[key].shape[0]} rows, expected the stacked 2 x {rank}")
        for part, keep in parts.items():
            rescaled, counts[part] = dict(tensors), {"kept": 0, "start": 0}
            for key in names:
                # PEFT's stacking scales lora_A: rows [0, r) are the start's, times (1 - w);
                # rows [r, 2r) the trained adapter's, times w.
                weight = 1.0 if keep(*module_of(key), layers) else 0.0
                factors = tensors[key].clone()
                factors[:rank] *= (1 - weight) / (1 - STACKED_AT)
                factors[rank:] *= weight / STACKED_AT
                rescaled[key] = factors.contiguous()
                counts[part]["kept" if weight else "start"] += 1
            with atomic_dir(Path(out_dir) / part) as out:
                shutil.copytree(stacked, out, dirs_exist_ok=True)
                save_file(rescaled, Path(out) / "adapter_model.safetensors", metadata={"format": "pt"})
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trained", required=True, help="the safety adapter as trained (interpolation 1)")
    parser.add_argument("--start", default="models/rl", help="the adapter safety started from")
    parser.add_argument("--base", default="models/base", help="the model the adapters are on")
    parser.add_argument("--out-dir", required=True, help="one adapter per part is written under it")
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=sorted(PARTS))
    args = parser.parse_args()
    for name in ("trained", "start"):
        if not (Path(getattr(args, name)) / "adapter_config.json").is_file():
            raise SystemExit(f"bench/safety_parts.py: --{name} {getattr(args, name)}: no adapter_config.json there")
    counts = write_parts(args.base, args.start, args.trained, {part: PARTS[part] for part in args.parts}, args.out_dir)
    for part, count in counts.items():
        print(f"{part}: the update kept in {count['kept']} LoRA modules, the start's in {count['start']}"
              f" -> {Path(args.out_dir) / part}")


if __name__ == "__main__":
    main()
