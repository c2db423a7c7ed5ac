"""What the stages that save a LoRA adapter share about its files.

(posttrain/training.py: save_adapter applies it for every stage that saves through a
trainer; sft, rl's own loop and safety's interpolation call it before they save.)
"""

from __future__ import annotations


def sort_target_modules(model) -> None:
    """PEFT keeps each adapter's target modules as a set and saves it in hash order, which
    changes with every interpreter's hash seed: sorted, the saved config (and so the
    checkpoint's DVC hash) is the same on every run, and an unchanged stage's rerun
    leaves the stages after it cached."""
    for config in getattr(model, "peft_config", {}).values():
        if isinstance(config.target_modules, set):
            config.target_modules = sorted(config.target_modules)
