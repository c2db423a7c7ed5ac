"""Crash recovery (posttrain/resume.py): a training stage killed with SIGKILL mid-run
resumes from its last checkpoint on the rerun and ends where an uninterrupted run ends:
the same adapter, bit for bit, and the same metrics."""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import FAST, copy_with_crafted_pairs, run_stage, stage_command, stage_env, write_params
from posttrain.config import ResumeParams
from posttrain.resume import LEDGER, Checkpoints

EVERY = 3
# The RL runs sample with transformers' generate() (rl.vllm: false) here: it draws from
# torch's RNG, which the checkpoint holds, so a resumed run samples what the uninterrupted
# one sampled. vLLM's engine generator is not in the checkpoint: with rl.vllm a resumed run
# continues from the saved weights, optimiser and baseline, but draws other samples
# (test_rl_with_vllm_resumes_from_its_checkpoint).
RUNS = {  # stage -> (script, overrides): enough steps that a kill lands mid-run
    "sft": ("sft", {"sft": {**FAST, "max_steps": 45}}),
    "dpo": ("dpo", {"dpo": {**FAST, "max_steps": 30}}),
    "reward_model": ("reward_model", {"reward_model": {**FAST, "max_steps": 30}}),
    "rl_grpo": ("rl", {"rl": {"algorithm": "grpo", "vllm": False, "num_prompts": 4, "steps": 24, "prompts_per_step": 2,
                              "num_generations": 2, "micro_batches": 1, "max_new_tokens": 8, "learning_rate": 1e-2,
                              "reward": {"exact": 1.0, "format": 0.1, "length": 0.5}}}),
    "rl_reinforce_ema": ("rl", {"rl": {"algorithm": "reinforce_ema", "vllm": False, "num_prompts": 4, "steps": 24,
                                       "prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 8,
                                       "learning_rate": 1e-2, "reward": {"exact": 1.0, "format": 0.1, "length": 0.5}}}),
    "rl_ppo": ("rl", {"rl": {"algorithm": "ppo", "vllm": False, "num_prompts": 4, "steps": 24, "prompts_per_step": 2,
                             "num_generations": 2, "max_new_tokens": 8, "learning_rate": 1e-2, "beta": 0.1,
                             "reward": {"exact": 1.0, "format": 0.1, "length": 0.5}}}),
    # With its held-out monitor reading every 4 steps: the resumed run keeps the readings
    # from before the kill, which its checkpoint holds.
    "safety": ("safety", {"safety": {**FAST, "start": "sft", "max_steps": 16, "interpolation": 1.0,
                                     "eval_every_steps": 4, "sampling": {"max_new_tokens": 8},
                                     "replay": {"fraction": 0.25, "max_new_tokens": 8}}}),
}
OUTPUT = {"sft": "models/sft", "dpo": "models/dpo", "reward_model": "models/reward_model", "rl": "models/rl",
          "safety": "models/safety"}
# Metrics that differ between a resumed and an uninterrupted run by nature: wall-clock
# figures (any key ending in "seconds", "per_second" or "seconds_per_step", at any depth) and the step it resumed from.
def without_timing(metrics):
    if not isinstance(metrics, dict):
        return metrics
    return {k: without_timing(v) for k, v in metrics.items()
            if k != "resumed_from_step" and not k.endswith(("seconds", "per_second", "seconds_per_step"))}


def complete_checkpoints(root: Path, stage: str) -> list[int]:
    return sorted(int(p.parent.name.removeprefix("checkpoint-"))
                  for p in (root / ".posttrain/resume").glob(f"{stage}-*/checkpoint-*/{LEDGER}"))


def kill_after_first_checkpoint(root: Path, script: str, overrides: dict) -> int:
    """Start the stage, SIGKILL it as soon as a complete checkpoint exists; the step killed after."""
    write_params(root, overrides)
    process = subprocess.Popen(stage_command(script, params_file=root / "params.yaml"), cwd=root, env=stage_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not complete_checkpoints(root, script):
        assert process.poll() is None, f"{script} ended (rc {process.returncode}) before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode


@pytest.mark.parametrize("name", list(RUNS))
def test_killed_stage_resumes_to_the_same_adapter(name, sft_workspace, tmp_path):
    script, overrides = RUNS[name]
    overrides = {**overrides, "resume": {"every_steps": EVERY}}
    if script in ("dpo", "reward_model"):
        make = lambda path: copy_with_crafted_pairs(sft_workspace, path, n_train=24, n_held_out=4)  # noqa: E731
    else:
        make = lambda path: Path(shutil.copytree(sft_workspace, path))  # noqa: E731
    whole, killed = make(tmp_path / "whole"), make(tmp_path / "killed")

    run_stage(whole, script, overrides=overrides)
    assert not list((whole / ".posttrain/resume").glob(f"{script}-*")), "a finished stage keeps its checkpoints"

    output = killed / OUTPUT[script]
    before = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}
    assert kill_after_first_checkpoint(killed, script, overrides) == -signal.SIGKILL
    saved = complete_checkpoints(killed, script)
    steps = json.loads((whole / f"metrics/{script}.json").read_text())["steps"]
    assert saved and saved[-1] < steps, "killed after the end: nothing left to resume"
    assert {p: p.read_bytes() for p in output.rglob("*") if p.is_file()} == before, "the kill changed an output"

    rerun = run_stage(killed, script, overrides=overrides)
    resumed_at = saved[-1]
    assert f"{script}: resuming from step {resumed_at} " in rerun.stdout
    assert not list((killed / ".posttrain/resume").glob(f"{script}-*"))

    adapter = "adapter_model.safetensors"
    expected, got = load_file(whole / OUTPUT[script] / adapter), load_file(killed / OUTPUT[script] / adapter)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not expected[k].equal(got[k])]
    assert not different, f"resumed adapter differs from the uninterrupted one in {different[:3]}"
    expected_metrics = json.loads((whole / f"metrics/{script}.json").read_text())
    got_metrics = json.loads((killed / f"metrics/{script}.json").read_text())
    assert got_metrics["resumed_from_step"] == resumed_at and expected_metrics["resumed_from_step"] == 0
    assert without_timing(got_metrics) == without_timing(expected_metrics)


@pytest.mark.parametrize("algorithm", ["grpo", "reinforce_ema"])
def test_rl_with_vllm_resumes_from_its_checkpoint(algorithm, sft_workspace, tmp_path):
    """With vLLM sampling a killed rl stage still resumes from its last checkpoint and
    finishes every step; its samples after the resume are vLLM's new draws."""
    overrides = {"rl": {**RUNS[f"rl_{algorithm}"][1]["rl"], "vllm": True, "steps": 12},
                 "resume": {"every_steps": EVERY}}
    killed = Path(shutil.copytree(sft_workspace, tmp_path / "killed"))
    assert kill_after_first_checkpoint(killed, "rl", overrides) == -signal.SIGKILL
    saved = complete_checkpoints(killed, "rl")
    rerun = run_stage(killed, "rl", overrides=overrides)
    assert f"rl: resuming from step {saved[-1]} " in rerun.stdout
    metrics = json.loads((killed / "metrics/rl.json").read_text())
    assert metrics["resumed_from_step"] == saved[-1] and metrics["sampler"] == "vllm"
    rows = (killed / "metrics/rl/log.csv").read_text().splitlines()
    assert len(rows) == 1 + 12  # every step logged, those before the kill included


def test_checkpoint_without_its_ledger_is_not_resumed_from(tmp_path):
    checkpoints = Checkpoints("sft", tmp_path / "sft-abc", every_steps=2)
    for step, complete in [(2, True), (4, True), (6, False)]:  # a kill while saving step 6
        path = checkpoints.directory / f"checkpoint-{step}"
        path.mkdir(parents=True)
        if complete:
            (path / LEDGER).write_text(json.dumps({"step": step, "loss_sum": 1.0}))
    (checkpoints.directory / "checkpoint-8").mkdir()
    (checkpoints.directory / "checkpoint-8" / LEDGER).write_text('{"step": 8, "loss')  # cut mid-write
    assert checkpoints.latest() == (4, checkpoints.directory / "checkpoint-4")


def test_run_key_follows_params_examples_and_inputs(tmp_path):
    start = tmp_path / "adapter"
    start.mkdir()
    (start / "weights").write_bytes(b"one")
    cfg = ResumeParams(every_steps=2, dir=str(tmp_path / "resume"))
    key = Checkpoints.for_run(cfg, "dpo", {"params": {"dpo": {"beta": 0.1}}, "examples": [1]}, [start]).directory
    assert key == Checkpoints.for_run(cfg, "dpo", {"params": {"dpo": {"beta": 0.1}}, "examples": [1]},
                                      [start]).directory
    assert key != Checkpoints.for_run(cfg, "dpo", {"params": {"dpo": {"beta": 0.2}}, "examples": [1]},
                                      [start]).directory
    assert key != Checkpoints.for_run(cfg, "dpo", {"params": {"dpo": {"beta": 0.1}}, "examples": [2]},
                                      [start]).directory
    (start / "weights").write_bytes(b"two")
    assert key != Checkpoints.for_run(cfg, "dpo", {"params": {"dpo": {"beta": 0.1}}, "examples": [1]},
                                      [start]).directory


def test_finished_stage_removes_its_checkpoints_of_every_key(tmp_path):
    for key in ("sft-aaa", "sft-bbb", "dpo-ccc"):
        (tmp_path / key / "checkpoint-2").mkdir(parents=True)
    Checkpoints("sft", tmp_path / "sft-aaa", every_steps=2).remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo-ccc"]
