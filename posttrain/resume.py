"""Crash recovery for the training stages: resumable checkpoints outside DVC's outputs.

A training stage killed mid-run (SIGKILL, out of memory, a lost machine) starts again
from its last checkpoint on the next `dvc repro`, not from step 0. Checkpoints live in
resume.dir (default .posttrain/resume/, git-ignored, not a DVC output), one directory
per stage and *run key*: a hash of everything that shapes the result - the stage, its
params sections, the training examples, the files of the checkpoint it starts from,
the code (posttrain/ and the stage script), the library versions, the torch threads and
the processes. A rerun that differs in any of them gets another key and starts from
step 0. A stage that finishes removes its checkpoints.

TRL's trainers checkpoint through transformers' Trainer (weights, optimiser, scheduler,
RNG states, data position); resuming them ends with the same adapter as an
uninterrupted run (tests/test_resume.py). A checkpoint counts once its LossLedger file
is written, the last thing saved, so a kill during a save falls back to the one before.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from posttrain.config import ResumeParams

LEDGER = "posttrain_loss_ledger.json"  # written last into each checkpoint: marks it complete
KEEP = 2  # checkpoints kept: the newest may be cut short by a kill during its save
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate")


def _hash_path(digest, path: Path) -> None:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)


def code_files() -> list[Path]:
    """The library package and the running stage script."""
    files = sorted(Path(__file__).resolve().parent.glob("*.py"))
    script = Path(sys.argv[0])
    return files + ([script] if script.suffix == ".py" and script.is_file() else [])


def run_key(stage: str, material: dict, inputs: list[str | Path]) -> str:
    """Hash of what shapes a training run's result. material: JSON-able (params sections,
    training examples); inputs: files or directories whose bytes count (start checkpoint)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    digest = hashlib.sha256()
    context = {"stage": stage, "threads": torch.get_num_threads(),
               "processes": int(os.environ.get("WORLD_SIZE", "1")),
               "versions": {name: installed(name) for name in LIBRARIES}}
    digest.update(json.dumps({**context, **material}, sort_keys=True, default=str).encode())
    for path in [*map(Path, inputs), *code_files()]:
        if path.exists():
            _hash_path(digest, path)
    return digest.hexdigest()[:16]


@dataclass
class Checkpoints:
    """Where one training run keeps its resumable checkpoints."""

    stage: str
    directory: Path
    every_steps: int  # 0: checkpointing off (the directory still holds the trainer's scratch)

    @classmethod
    def for_run(cls, cfg: ResumeParams, stage: str, material: dict, inputs: list[str | Path]) -> Checkpoints:
        return cls(stage, Path(cfg.dir) / f"{stage}-{run_key(stage, material, inputs)}", cfg.every_steps)

    def trainer_arguments(self) -> dict:
        """transformers TrainingArguments for saving here every every_steps steps."""
        if not self.every_steps:
            return {"output_dir": str(self.directory), "save_strategy": "no"}
        return {"output_dir": str(self.directory), "save_strategy": "steps", "save_steps": self.every_steps,
                "save_total_limit": KEEP, "save_only_model": False}

    def complete(self) -> list[tuple[int, Path]]:
        """(step, directory) of every complete checkpoint, oldest first."""
        found = []
        for path in self.directory.glob("checkpoint-*"):
            step = path.name.removeprefix("checkpoint-")
            if step.isdigit() and (path / LEDGER).is_file():
                try:
                    json.loads((path / LEDGER).read_text())
                except ValueError:
                    continue
                found.append((int(step), path))
        return sorted(found)

    def latest(self) -> tuple[int, Path] | None:
        found = self.complete()
        return found[-1] if found else None

    def remove(self) -> None:
        """Delete this stage's checkpoints, of this run and of runs with other keys."""
        for path in self.directory.parent.glob(f"{self.stage}-*"):
            shutil.rmtree(path, ignore_errors=True)


def ledger_callback(trainer, offset: float, sidecar=None):
    """A TrainerCallback that writes, into each checkpoint it follows, the sum of the
    per-step training losses so far (transformers' train_loss after a resume averages
    only the steps of that call; with this sum the whole run's mean is recovered) and
    sidecar.state_dict(): state of ours the trainer does not save (JSON-able)."""
    from transformers import TrainerCallback

    class LossLedger(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / LEDGER
                # Trainer drains the per-step loss into _total_loss_scalar at each log;
                # _tr_loss holds what was added since.
                loss_sum = offset + trainer._total_loss_scalar + float(trainer._tr_loss.item())
                tmp = path.with_suffix(".tmp")
                ledger = {"step": state.global_step, "loss_sum": loss_sum,
                          "sidecar": sidecar.state_dict() if sidecar is not None else None}
                tmp.write_text(json.dumps(ledger))
                os.replace(tmp, path)
            return control

    return LossLedger()


def load_trained_adapter(model, checkpoint: Path) -> None:
    """Load a checkpoint's trained adapter into the model's active adapter. transformers'
    Trainer resumes a PEFT model holding several adapters (TRL's DPO keeps a frozen `ref`
    copy of the start) by loading only the adapters saved in subdirectories: the trained
    one, saved at the checkpoint's root, would silently stay at its starting weights."""
    weights = checkpoint / "adapter_model.safetensors"
    if not weights.is_file() or not hasattr(model, "active_adapter"):
        return
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    loaded = set_peft_model_state_dict(model, load_file(weights), adapter_name=model.active_adapter)
    if loaded.unexpected_keys:
        raise RuntimeError(f"{weights}: weights the model does not have: {loaded.unexpected_keys[:3]}")


def fast_forward_sampler(trainer, epochs: int) -> None:
    """Advance a sampler's own random generator past the epochs a resumed run skips.
    TRL's GRPO/RLOO sampler (RepeatSampler) draws one permutation per epoch from a local
    generator; transformers skips finished epochs without iterating the sampler, so a run
    resumed in epoch 2 would see epoch 0's prompt order again. (transformers' own
    samplers are reseeded per epoch by accelerate and need nothing.)"""
    import torch

    make_sampler = trainer._get_train_sampler

    def sampler(*args, **kwargs):
        made = make_sampler(*args, **kwargs)
        generator = getattr(made, "generator", None)
        if isinstance(generator, torch.Generator) and getattr(made, "shuffle", False):
            for _ in range(epochs):
                torch.randperm(made.num_samples, generator=generator)
        return made

    trainer._get_train_sampler = sampler


@dataclass
class TrainingRun:
    """What train() returns: the trainer's output plus what a resume changes."""

    train_loss: float  # mean per-step loss over the whole run, resumed or not
    resumed_from_step: int  # 0 when the run started fresh
    seconds: float  # this process's training time (a resumed run: since the resume)


def train(trainer, checkpoints: Checkpoints, sidecar=None) -> TrainingRun:
    """trainer.train(), resumed from the newest complete checkpoint of this run if any.
    sidecar: an object with state_dict() / load_state_dict() saved with each checkpoint."""
    import time

    latest = checkpoints.latest()
    step, offset = 0, 0.0
    if latest:
        step, path = latest
        ledger = json.loads((path / LEDGER).read_text())
        offset = ledger["loss_sum"]
        if sidecar is not None:
            sidecar.load_state_dict(ledger["sidecar"])
        load_trained_adapter(trainer.model, path)
        epoch = json.loads((path / "trainer_state.json").read_text())["epoch"]
        fast_forward_sampler(trainer, math.floor(epoch + 1e-9))
        print(f"{checkpoints.stage}: resuming from step {step} ({path}): an earlier run with the same key "
              "stopped there", flush=True)
    if checkpoints.every_steps:
        trainer.add_callback(ledger_callback(trainer, offset, sidecar))
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(latest[1]) if latest else None)
    seconds = time.perf_counter() - started
    steps = trainer.state.global_step
    ran = steps - step
    loss = (offset + result.training_loss * ran) / steps if steps else result.training_loss
    return TrainingRun(round(loss, 4), step, round(seconds, 1))
