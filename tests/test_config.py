"""params.yaml validation: one line naming the key, no traceback, before heavy imports."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import dvc_arguments
from posttrain.config import ParamsError, parse_params, read_params

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_shipped_params_are_valid(raw):
    params = parse_params(raw)
    assert params.model.source == "smollm2"
    assert params.data.source == "synthetic"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["evaluate"].update(batch_sise=8), "params.yaml: evaluate.batch_sise: unknown key"),
        (lambda r: r.update(trainer={}), "params.yaml: trainer: unknown key"),
        (lambda r: r["evaluate"].update(batch_size="big"), "params.yaml: evaluate.batch_size: Input should be a valid integer"),
        (lambda r: r["data"]["split"].update(test=-5), "params.yaml: data.split.test: Input should be greater than 0 (got -5)"),
        (lambda r: r["evaluate"].update(temperature=-1.0), "params.yaml: evaluate.temperature: Input should be greater than or equal to 0"),
        (lambda r: r["data"]["split"].update(sft=5000), "params.yaml: data: split sizes sft+rl+test"),
        (lambda r: r["data"]["synthetic"].update(operations=["pow"]), "params.yaml: data.synthetic.operations.0: Input should be"),
        (lambda r: r["data"]["synthetic"].update(min_steps=3, max_steps=2), "params.yaml: data.synthetic: max_steps (2) is below min_steps (3)"),
        (lambda r: r["prompt"].update(instruction="Solve it."), "params.yaml: prompt: instruction must contain the placeholder {question}"),
        (lambda r: r["data"].pop("split"), "params.yaml: data.split: required key is missing"),
        (lambda r: r["safety"].update(interpolation=0), "params.yaml: safety.interpolation: Input should be greater than 0"),
        (lambda r: r["rl"].update(micro_batches=3), "params.yaml: rl: micro_batches: 3 does not divide a step's 16 completions"),
        (lambda r: r["safety"].update(objective="kto"), "params.yaml: safety: sft_weight must be 0 with objective kto"),
        (lambda r: r["dpo"].update(objective="orpo", sft_weight=0.5), "params.yaml: dpo: sft_weight must be 0 with objective orpo"),
        (lambda r: r["dpo"].update(objective="ipo"), "params.yaml: dpo.objective: Input should be 'dpo', 'kto', 'orpo' or 'simpo'"),
        (lambda r: r["safety"].update(interpolation=1.5), "params.yaml: safety.interpolation: Input should be less than or equal to 1"),
    ],
)
def test_bad_values_name_the_key(raw, edit, message):
    edit(raw)
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("algorithm", ["reinforce_ema", "ppo"])
def test_micro_batches_binds_only_the_trl_algorithms(raw, algorithm):
    """reinforce_ema and ppo run their own loops over a step's completions: an odd count
    with the default micro_batches is valid for them (and for grpo it names the key)."""
    raw["rl"].update(algorithm=algorithm, prompts_per_step=3, num_generations=3)
    assert parse_params(raw).rl.micro_batches == 4
    raw["rl"].update(algorithm="grpo")
    with pytest.raises(ParamsError, match="rl: micro_batches: 4 does not divide a step's 9 completions"):
        parse_params(raw)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\ndata:\n  split: [1, 2\n")
    with pytest.raises(ParamsError, match=r"params.yaml: line \d+: not valid YAML"):
        read_params(path)


def test_stage_exits_with_one_line_and_no_traceback_before_importing_torch(tmp_path, raw):
    raw["data"]["split"]["rl"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    # The probe fails if torch was imported before the params check rejected the file.
    script = str(REPO / "stages" / "prepare.py")
    probe = (
        "import sys, runpy\n"
        f"sys.argv = {[script, *dvc_arguments('prepare')]!r}\n"
        "try:\n"
        f"    runpy.run_path({script!r}, run_name='__main__')\n"
        "finally:\n"
        "    print('torch imported' if 'torch' in sys.modules else 'torch not imported', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["params.yaml: data.split.rl: Input should be greater than 0 (got 0)", "torch not imported"]
