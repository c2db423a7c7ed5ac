"""Bad user input ends in one line naming the key or file:line and what to do, and
leaves existing outputs alone: data.source paths, encodings, model.source paths."""

import json

import pytest

from posttrain.config import DataParams, ModelParams
from posttrain.data import DataError, prepare_gsm
from posttrain.io import looks_like_path
from posttrain.models import ModelSourceError, resolve_base

GOOD = {"question": "Tom has 2 apples and buys 3 more. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}


def good_lines(n):
    return [json.dumps({**GOOD, "question": f"{GOOD['question']} (#{i})"}).encode() for i in range(n)]


def params(source, max_bad_fraction=0.5):
    return DataParams(source=str(source), split={"sft": 10, "rl": 5, "test": 5}, max_bad_fraction=max_bad_fraction)


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("source", ["./models/mine", "/data/llama", "~/no-such-x", "../x", "a/b/c", "org/name/",
                                    ".\\models\\mine"])
def test_path_like_sources_are_paths(source):
    assert looks_like_path(source)


@pytest.mark.parametrize("source", ["Qwen/Qwen2.5-0.5B-Instruct", "openai/gsm8k", "gpt2", "smollm2", "tiny"])
def test_hub_ids_are_not_paths(source):
    assert not looks_like_path(source)


@pytest.mark.parametrize("source", ["./no/such/model", "/no/such/llama", "~/no-such-model-dir-xyz"])
def test_missing_model_directory_is_one_line(source):
    with pytest.raises(ModelSourceError) as caught:
        resolve_base(ModelParams(source=source), seed=0)
    assert str(caught.value) == (
        f"model.source: {source} does not exist (a local model directory must exist; a hub id looks like org/name)")


@pytest.mark.parametrize("source", ["./no/such/data", "/no/such/gsm", "~/no-such-data-dir-xyz", "data/gsm/raw"])
def test_missing_data_directory_is_one_line(source):
    with pytest.raises(DataError) as caught:
        prepare_gsm(params(source), seed=0)
    assert str(caught.value) == (
        f"data.source: {source} does not exist (a local data directory holding train.jsonl must exist; "
        "a hub id looks like org/name)")


def test_non_utf8_lines_are_malformed_records_with_file_and_line(tmp_path):
    lines = good_lines(30)
    lines.insert(3, b'{"question": "caf\xe9 \xff", "answer": "#### 5"}')  # latin-1, line 4
    (tmp_path / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    before = snapshot(tmp_path)
    gsm = prepare_gsm(params(tmp_path), seed=0)
    assert gsm.report.total == 31 and gsm.report.skipped_total == 1
    assert gsm.report.skipped == {"not UTF-8": 1}
    assert gsm.report.examples == [f"{tmp_path / 'train.jsonl'}:4: not UTF-8"]
    assert len(gsm.sft) + len(gsm.rl) + len(gsm.test) == 20
    assert snapshot(tmp_path) == before


def test_non_utf8_lines_count_towards_max_bad_fraction(tmp_path):
    lines = good_lines(30) + [b"\xff\xfe\x00garbage", b'{"question": "\xe9"}']
    (tmp_path / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as caught:
        prepare_gsm(params(tmp_path, max_bad_fraction=0.05), seed=0)
    path = tmp_path / "train.jsonl"
    assert str(caught.value) == (
        "data.max_bad_fraction: 2 of 32 records are malformed (6.2% > 5.0%), "
        f"e.g. {path}:31: not UTF-8; {path}:32: not UTF-8")
    assert "\n" not in str(caught.value)
    assert snapshot(tmp_path) == before


def test_utf16_file_is_one_line(tmp_path):
    text = "\n".join(line.decode() for line in good_lines(30)) + "\n"
    (tmp_path / "train.jsonl").write_bytes(text.encode("utf-16"))
    with pytest.raises(DataError) as caught:
        prepare_gsm(params(tmp_path), seed=0)
    assert str(caught.value) == (
        f"data.source: {tmp_path / 'train.jsonl'} is UTF-16 encoded; save it as UTF-8 (one JSON object per line)")


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_bom_and_any_line_ending_are_accepted(tmp_path, newline):
    (tmp_path / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + newline.join(good_lines(30)) + newline)
    before = snapshot(tmp_path)
    gsm = prepare_gsm(params(tmp_path), seed=0)
    assert gsm.report.total == 30 and gsm.report.skipped_total == 0
    assert snapshot(tmp_path) == before


def test_bom_first_record_is_kept(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(good_lines(20)) + b"\r\n")
    gsm = prepare_gsm(DataParams(source=str(tmp_path), split={"sft": 10, "rl": 5, "test": 5}), seed=0)
    ids = {r["id"] for r in gsm.sft + gsm.rl + gsm.test}
    assert "train-1" in ids and len(ids) == 20


def test_base_stage_with_missing_model_directory_exits_with_one_line(tmp_path):
    from conftest import run_stage

    (tmp_path / "models").mkdir()
    result = run_stage(tmp_path, "base", overrides={"model": {"source": "./models/mine"}}, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "model.source: ./models/mine does not exist (a local model directory must exist; a hub id looks like org/name)")
    assert not (tmp_path / "models/base").exists() and not (tmp_path / "metrics").exists()


@pytest.mark.parametrize("stage, args, damage, message", [
    ("evaluate@sft", [], "truncate",
     "checkpoint 'sft': models/sft/adapter_model.safetensors is truncated or corrupt"),
    ("dpo", [], "delete",
     "checkpoint 'sft': models/sft/adapter_model.safetensors is missing; restore it with `dvc checkout models/sft` "
     "or rebuild it with `dvc repro sft`"),
])
def test_a_broken_upstream_checkpoint_stops_a_stage_in_one_line(sft_workspace, tmp_path, stage, args, damage,
                                                                 message):
    import shutil

    from conftest import copy_with_crafted_pairs, run_stage

    root = copy_with_crafted_pairs(sft_workspace, tmp_path / "ws", n_train=4)
    weights = root / "models/sft/adapter_model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        weights.unlink()
    (root / "metrics/eval").mkdir(parents=True, exist_ok=True)
    before = {p: p.read_bytes() for p in (root / "metrics").rglob("*") if p.is_file()}
    shutil.rmtree(root / "models/dpo", ignore_errors=True)
    result = run_stage(root, stage, *args, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-500:]
    assert {p: p.read_bytes() for p in (root / "metrics").rglob("*") if p.is_file()} == before
    assert not (root / "models/dpo").exists()
