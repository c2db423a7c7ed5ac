"""The bad-input battery: what a user gets wrong (params, data files, safety files,
model directories) and what goes missing or gets damaged between stages, each run
through the real stage script as `dvc repro` runs it. Every case must end in exactly
one line on stderr - naming the key, file (and line) or checkpoint, and what to do -
with no traceback, a failing exit status, and every existing output unchanged."""

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import copy_with_crafted_pairs, stage_command, stage_env, write_params

SAFETY_BUILTIN = Path(__file__).resolve().parent.parent / "posttrain/resources/safety_prompts.jsonl"
APPENDED_LINE = len(SAFETY_BUILTIN.read_bytes().splitlines()) + 1  # a bad row added after the builtin set
GSM_LINE = {"question": "Tom has 2 apples and buys 3 more. How many?", "answer": "2 + 3 = 5\n#### 5"}


@dataclass
class Case:
    script: str  # dvc.yaml stage name (`evaluate@sft`): its script and arguments
    expected: str  # the whole of stderr, one line
    overrides: dict = field(default_factory=dict)
    fault: Callable[[Path], None] | None = None  # damages the workspace before the run


def remove(relative):
    def fault(root):
        path = root / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return fault


def write(relative, data: bytes):
    def fault(root):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return fault


def cut(relative, keep: int):
    def fault(root):
        (root / relative).write_bytes((root / relative).read_bytes()[:keep])
    return fault


def raw_params(text: str):
    return write("params.yaml", text.encode())


def gsm_file(lines: list[bytes]):
    return write("mydata/train.jsonl", b"\n".join(lines) + b"\n")


HEAVY_MODULES = ("torch", "mlflow")  # transformers, TRL, PEFT, datasets and vLLM import torch
GOOD_GSM = [json.dumps({**GSM_LINE, "question": f"{GSM_LINE['question']} #{i}"}).encode() for i in range(200)]
RESTORE = "restore it with `dvc checkout {0}` or rebuild it with `dvc repro`"
CHECKPOINT = "restore it with `dvc checkout models/{0}` or rebuild it with `dvc repro {0}`"

CASES = {
    # params.yaml: checked before any heavy import
    "unknown section": Case("sft", "params.yaml: trainer: unknown key (misspelt, or not a knob of this version)",
                            {"trainer": {"lr": 1}}),
    "misspelt key": Case("sft", "params.yaml: sft.learning_rat: unknown key (misspelt, or not a knob of this version)",
                         {"sft": {"learning_rat": 0.1}}),
    "wrong type": Case("sft", "params.yaml: sft.batch_size: Input should be a valid integer, unable to parse string "
                              "as an integer (got 'four')", {"sft": {"batch_size": "four"}}),
    "negative learning rate": Case("dpo", "params.yaml: dpo.learning_rate: Input should be greater than 0 (got -0.001)",
                                   {"dpo": {"learning_rate": -1e-3}}),
    "zero batch": Case("reward_model", "params.yaml: reward_model.batch_size: Input should be greater than 0 (got 0)",
                       {"reward_model": {"batch_size": 0}}),
    "unknown algorithm": Case("rl", "params.yaml: rl.algorithm: Input should be 'grpo', 'dr_grpo', 'dapo', 'gspo', "
                                    "'rloo', 'reinforce_ema' or 'ppo' (got 'a2c')", {"rl": {"algorithm": "a2c"}}),
    "lora rank 0": Case("sft", "params.yaml: sft.lora.r: Input should be greater than 0 (got 0)",
                        {"sft": {"lora": {"r": 0}}}),
    "string seed": Case("sft", "params.yaml: seed: Input should be a valid integer, unable to parse string as an "
                               "integer (got 'abc')", {"seed": "abc"}),
    "temperature": Case("evaluate@sft", "params.yaml: evaluate.temperature: Input should be greater than or equal to 0 "
                                    "(got -1.0)", {"evaluate": {"temperature": -1.0}}),
    "top_p above 1": Case("preferences", "params.yaml: preferences.sampling.top_p: Input should be less than or "
                                         "equal to 1 (got 1.5)", {"preferences": {"sampling": {"top_p": 1.5}}}),
    "interpolation": Case("safety", "params.yaml: safety.interpolation: Input should be less than or equal to 1 "
                                    "(got 1.5)", {"safety": {"interpolation": 1.5}}),
    "negative checkpoint interval": Case("sft", "params.yaml: resume.every_steps: Input should be greater than or "
                                                "equal to 0 (got -1)", {"resume": {"every_steps": -1}}),
    "split larger than data": Case("prepare", "params.yaml: data: split sizes sft+rl+test = 2100 need 2075 "
                                              "seen-phrasing problems (the 25 held-out-phrasing test problems come "
                                              "on top), more than synthetic.num_problems = 120",
                                   {"data": {"split": {"sft": 2000, "rl": 50, "test": 50}}}),
    "yaml syntax": Case("sft", "params.yaml: line 4: not valid YAML: expected ',' or ']', but got '<stream end>'",
                        fault=raw_params("seed: 1\ndata:\n  split: [1, 2\n")),
    "empty params": Case("sft", "params.yaml: empty (a shell redirect such as `> params.yaml` empties a file before "
                         "it is read; `git checkout params.yaml` restores a committed one)", fault=raw_params("")),
    # data files (data.source, data.safety.source)
    "missing data directory": Case("prepare", "prepare: data.source: ./no/such/data does not exist (a local data "
                                              "directory holding train.jsonl must exist; a hub id looks like org/name)",
                                   {"data": {"source": "./no/such/data"}}),
    "too many malformed lines": Case(
        "prepare", "prepare: data.max_bad_fraction: 3 of 203 records are malformed (1.5% > 1.0%), e.g. "
        "mydata/train.jsonl:201: not UTF-8; mydata/train.jsonl:202: invalid JSON (Expecting property name enclosed in "
        "double quotes); mydata/train.jsonl:203: missing field 'answer'",
        {"data": {"source": "mydata", "split": {"sft": 100, "rl": 50, "test": 40}}},
        gsm_file(GOOD_GSM + [b'{"question": "caf\xe9"}', b"{not json", b'{"question": "What is 2+2?"}'])),
    "utf-16 data file": Case("prepare", "prepare: data.source: mydata/train.jsonl is UTF-16 encoded; save it as UTF-8 "
                                        "(one JSON object per line)",
                             {"data": {"source": "mydata"}},
                             write("mydata/train.jsonl", b"\n".join(GOOD_GSM).decode().encode("utf-16"))),
    "missing safety file": Case("prepare", "prepare: data.safety.source: no/such/safety.jsonl is not a file (or use "
                                           "'builtin')", {"data": {"safety": {"source": "no/such/safety.jsonl"}}}),
    "safety file not utf-8": Case(
        "prepare", f"prepare: s.jsonl:{APPENDED_LINE}: not UTF-8 (byte 0xe9 at column 12); save the file as UTF-8",
        {"data": {"safety": {"source": "s.jsonl"}}},
        write("s.jsonl", SAFETY_BUILTIN.read_bytes() + b'{"id": "caf\xe9"}\n')),
    "safety row missing a field": Case(
        "prepare", f"prepare: s.jsonl:{APPENDED_LINE}: missing or empty field(s) category, kind, prompt, response",
        {"data": {"safety": {"source": "s.jsonl"}}}, write("s.jsonl", SAFETY_BUILTIN.read_bytes() + b'{"id": "x"}\n')),
    "safety file of one kind": Case(
        "prepare", "prepare: s.jsonl: has no 'benign' prompts; both kinds are needed",
        {"data": {"safety": {"source": "s.jsonl"}}},
        write("s.jsonl", b"".join(line + b"\n" for line in SAFETY_BUILTIN.read_bytes().splitlines()
                                 if b'"harmful"' in line))),
    # model directories (model.source)
    "missing model directory": Case("base", "model.source: ./no/such/model does not exist (a local model directory "
                                            "must exist; a hub id looks like org/name)",
                                    {"model": {"source": "./no/such/model"}}),
    "model directory without config": Case("base", "model.source: mymodel is a path but has no config.json",
                                           {"model": {"source": "mymodel"}}, write("mymodel/README.md", b"hi")),
    # upstream outputs: missing or damaged between stages
    "missing sft adapter": Case("dpo", "checkpoint 'sft': models/sft/adapter_model.safetensors is missing; "
                                + CHECKPOINT.format("sft"), fault=remove("models/sft/adapter_model.safetensors")),
    "truncated sft adapter": Case("evaluate@sft", "checkpoint 'sft': models/sft/adapter_model.safetensors is "
                                  "truncated or corrupt (invalid header); " + CHECKPOINT.format("sft"),
                                  fault=cut("models/sft/adapter_model.safetensors", 12)),
    "sft checkpoint directory gone": Case("rl", "checkpoint 'sft': models/sft does not exist; "
                                          + CHECKPOINT.format("sft"), fault=remove("models/sft")),
    "base config missing": Case("evaluate@sft", "checkpoint 'sft': models/base/config.json is missing; "
                                + CHECKPOINT.format("base"), fault=remove("models/base/config.json")),
    "start checkpoint never built": Case("safety", "checkpoint 'rl': models/rl does not exist; "
                                         + CHECKPOINT.format("rl"), {"safety": {"start": "rl"}}),
    "missing preference pairs": Case("dpo", "data/preferences/train.jsonl is missing (an earlier stage writes it); "
                                     + RESTORE.format("data/preferences/train.jsonl"),
                                     fault=remove("data/preferences")),
    "preference pairs cut mid-line": Case("reward_model", "data/preferences/held_out.jsonl:1: not valid JSON "
                                          "(Unterminated string starting at); "
                                          + RESTORE.format("data/preferences/held_out.jsonl"),
                                          fault=cut("data/preferences/held_out.jsonl", 300)),
    "pair without its rejected side": Case("dpo", "data/preferences/train.jsonl:1: record lacks rejected; "
                                           + RESTORE.format("data/preferences/train.jsonl"),
                                           fault=write("data/preferences/train.jsonl",
                                                       b'{"question": "q", "chosen": "a"}\n')),
    "missing prepared split": Case("sft", "data/prepared/sft.jsonl is missing (an earlier stage writes it); "
                                   + RESTORE.format("data/prepared/sft.jsonl"),
                                   fault=remove("data/prepared/sft.jsonl")),
    "base model gone before sft": Case("sft", "checkpoint 'base': models/base does not exist; "
                                       + CHECKPOINT.format("base"), fault=remove("models/base")),
    "IFEval prompt without its instruction ids": Case(
        "evaluate@sft", "ifeval.jsonl:2: lacks instruction_id_list (an IFEval record has key, prompt, "
        "instruction_id_list and kwargs)", {"evaluate": {"instructions": {"prompts": 4, "source": "ifeval.jsonl"}}},
        write("ifeval.jsonl", b'{"key": 1, "prompt": "Hi.", "instruction_id_list": ["punctuation:no_comma"]}\n'
                              b'{"key": 2, "prompt": "Hi."}\n')),
    "rl split gone before preferences": Case("preferences", "data/prepared/rl.jsonl is missing (an earlier stage "
                                             "writes it); " + RESTORE.format("data/prepared/rl.jsonl"),
                                             fault=remove("data/prepared/rl.jsonl")),
    "greedy results gone before best_of_n": Case("best_of_n", "data/eval/sft.jsonl is missing (an earlier stage "
                                                 "writes it); " + RESTORE.format("data/eval/sft.jsonl")),
    "rl asks for more prompts than the split holds": Case(
        "rl", "rl: num_prompts + held_out_prompts = 10002 exceed the 24 prompts of data/prepared/rl.jsonl "
        "(data.split.rl)", {"rl": {"num_prompts": 10000, "held_out_prompts": 2}}),
    "safety prompts gone before safety": Case("safety", "data/prepared/safety_train.jsonl is missing (an earlier "
                                              "stage writes it); " + RESTORE.format("data/prepared/safety_train.jsonl"),
                                              {"safety": {"start": "sft"}},
                                              fault=remove("data/prepared/safety_train.jsonl")),
    "missing test split": Case("evaluate@sft", "data/prepared/test.jsonl is missing (an earlier stage writes it); "
                               + RESTORE.format("data/prepared/test.jsonl"), fault=remove("data/prepared/test.jsonl")),
}


def outputs(root: Path) -> dict:
    return {p: p.read_bytes() for d in ("models", "data", "metrics") for p in sorted((root / d).rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def heavy_imports_blocked(tmp_path_factory) -> Path:
    """A directory to put first on PYTHONPATH: importing torch or mlflow from it fails.
    Every case runs with it first: a stage must check what it was given before it loads
    torch, transformers and TRL or opens its MLflow run (10-15 s), so that bad input is one
    line in a second and leaves no failed run behind in MLflow."""
    root = tmp_path_factory.mktemp("blocked")
    for module in HEAVY_MODULES:
        (root / module).mkdir()
        (root / module / "__init__.py").write_text(f"raise ImportError('{module} was imported before the inputs "
                                                   "were checked')\n")
    return root


@pytest.fixture(scope="module")
def battery_workspace(sft_workspace, tmp_path_factory):
    """tiny base model, prepared data, an SFT adapter, preference pairs, and an MLflow store."""
    return copy_with_crafted_pairs(sft_workspace, tmp_path_factory.mktemp("battery") / "ws", n_train=8, n_held_out=4)


def test_the_battery_is_large():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_ends_in_one_line_and_changes_nothing(name, battery_workspace, heavy_imports_blocked, tmp_path):
    case = CASES[name]
    root = Path(shutil.copytree(battery_workspace, tmp_path / "ws"))
    write_params(root, case.overrides)
    if case.fault:
        case.fault(root)
    before = outputs(root)
    command = stage_command(case.script, params_file=root / "params.yaml")
    env = stage_env()
    env["PYTHONPATH"] = f"{heavy_imports_blocked}:{env['PYTHONPATH']}"
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip() == case.expected  # the whole of stderr: one line
    assert outputs(root) == before, "a failed stage changed an existing output"


def test_cases_that_edit_params_keep_them_valid_yaml():
    for case in CASES.values():
        yaml.safe_dump(case.overrides)
