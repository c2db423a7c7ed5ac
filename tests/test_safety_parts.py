"""bench/safety_parts.py: the safety update kept in some LoRA modules only, exactly."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "safety_parts.py"
spec = importlib.util.spec_from_file_location("safety_parts", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)  # the script's work is behind its __main__ guard


@pytest.mark.parametrize(("key", "expected"), [
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", (0, "q_proj")),
    ("base_model.model.model.layers.17.mlp.down_proj.lora_A.weight", (17, "down_proj")),
])
def test_module_of_reads_layer_and_projection(key, expected):
    assert bench.module_of(key) == expected


def test_module_of_refuses_a_name_without_a_layer():
    with pytest.raises(ValueError, match="lm_head"):
        bench.module_of("base_model.model.lm_head.lora_A.weight")


@pytest.fixture()
def adapters(tiny_workspace, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from posttrain.models import load_causal_lm

    base_dir = tiny_workspace / "models/base"

    def random_adapter(path, seed):
        torch.manual_seed(seed)
        model = get_peft_model(load_causal_lm(base_dir), LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
        for name, parameter in model.named_parameters():
            if "lora_" in name:  # B starts at zero: make both factors non-trivial
                torch.nn.init.normal_(parameter, std=0.05)
        model.save_pretrained(path)

    random_adapter(tmp_path / "start", seed=0)
    random_adapter(tmp_path / "trained", seed=1)
    return base_dir, tmp_path / "start", tmp_path / "trained"


def merged(base_dir, adapter):
    from posttrain.models import load_causal_lm

    return load_causal_lm(base_dir, adapter).merge_and_unload().state_dict()


@pytest.mark.parametrize("part", sorted(bench.PARTS))
def test_each_part_holds_the_trained_weights_there_and_the_start_elsewhere(adapters, tmp_path, part):
    import torch

    from posttrain.models import load_causal_lm

    base_dir, start_dir, trained_dir = adapters
    layers = load_causal_lm(base_dir).config.num_hidden_layers
    # All parts from one stacked adapter: each must come out as if written alone.
    counts = bench.write_parts(base_dir, start_dir, trained_dir, bench.PARTS, tmp_path)[part]
    base = load_causal_lm(base_dir).state_dict()
    start, trained = merged(base_dir, start_dir), merged(base_dir, trained_dir)
    got = merged(base_dir, tmp_path / part)
    adapted = [key for key in base if not torch.equal(start[key], base[key])]
    assert adapted and counts["kept"] and counts["start"]
    kept = 0
    for key in base:
        if key in adapted:
            layer, module = int(key.split(".layers.")[1].split(".")[0]), key.split(".")[-2]
            if bench.PARTS[part](layer, module, layers):
                expected, kept = trained[key], kept + 1
            else:
                expected = start[key]
        else:
            expected = base[key]
        torch.testing.assert_close(got[key], expected, atol=1e-5, rtol=1e-4)
    assert kept == counts["kept"]  # one merged weight per LoRA module
    assert json.loads((tmp_path / part / "adapter_config.json").read_text())["r"] == 8


def test_the_command_writes_one_adapter_per_part_and_names_a_missing_adapter(adapters, tmp_path):
    base_dir, start_dir, trained_dir = adapters
    run = [sys.executable, str(SCRIPT), "--base", str(base_dir), "--start", str(start_dir), "--out-dir",
           str(tmp_path / "parts")]
    done = subprocess.run([*run, "--trained", str(trained_dir), "--parts", "attention", "upper"],
                          capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["attention", "upper"]
    assert "attention: the update kept in" in done.stdout
    missing = subprocess.run([*run, "--trained", str(tmp_path / "nowhere")], capture_output=True, text=True, cwd=REPO,
                             env={"PYTHONPATH": str(REPO)})
    assert missing.returncode != 0 and "--trained" in missing.stderr and "nowhere" in missing.stderr
    assert not (tmp_path / "parts" / "lower").exists()
