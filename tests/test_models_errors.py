"""A missing, incomplete or corrupt checkpoint in models/ is one CheckpointError line
naming the checkpoint, the file and how to get it back; nothing on disk changes."""

import json

import pytest
from safetensors import safe_open

from posttrain.models import CheckpointError, adapter_checkpoint, checkpoint_dirs, safetensors_problem

HINT = "restore it with `dvc checkout models/{d}` or rebuild it with `dvc repro {d}`"


def write_safetensors(path, n=4):
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * (4 * n))


def full_model(directory):
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    write_safetensors(directory / "model.safetensors")


def adapter(directory):
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text("{}")
    write_safetensors(directory / "adapter_model.safetensors")


@pytest.fixture()
def models(tmp_path, monkeypatch):
    """models/base (full), models/sft (adapter), models/merged (full), cwd = tmp_path."""
    monkeypatch.chdir(tmp_path)
    full_model(tmp_path / "models/base")
    adapter(tmp_path / "models/sft")
    full_model(tmp_path / "models/merged")
    return tmp_path / "models"


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(name, before, root):
    with pytest.raises(CheckpointError) as caught:
        checkpoint_dirs(f"models/{name}", "models/base")
    message = str(caught.value)
    assert "\n" not in message
    assert snapshot(root) == before
    return message


def test_valid_checkpoints_resolve_as_before(models):
    from pathlib import Path

    assert checkpoint_dirs("models/base", "models/base") == (Path("models/base"), None)
    assert checkpoint_dirs("models/sft", "models/base") == (Path("models/base"), Path("models/sft"))
    assert checkpoint_dirs("models/merged", "models/base") == (Path("models/merged"), None)
    assert checkpoint_dirs(models / "sft", models / "base") == (models / "base", models / "sft")


def test_helper_files_are_valid_safetensors(models):
    with safe_open(models / "sft/adapter_model.safetensors", "np") as f:
        assert list(f.keys()) == ["w"]


def test_missing_adapter_weights(models):
    (models / "sft/adapter_model.safetensors").unlink()
    message = one_line_error("sft", snapshot(models), models)
    assert message == f"checkpoint 'sft': models/sft/adapter_model.safetensors is missing; {HINT.format(d='sft')}"


def test_adapter_cut_in_its_header(models):
    path = models / "sft/adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    message = one_line_error("sft", snapshot(models), models)
    assert message == ("checkpoint 'sft': models/sft/adapter_model.safetensors is truncated or corrupt "
                       f"(invalid header); {HINT.format(d='sft')}")


def test_adapter_cut_in_its_data(models):
    path = models / "sft/adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-6])
    message = one_line_error("sft", snapshot(models), models)
    assert message == ("checkpoint 'sft': models/sft/adapter_model.safetensors is truncated or corrupt "
                       f"(data cut short: 10 of 16 bytes); {HINT.format(d='sft')}")


def test_adapter_that_is_not_safetensors(models):
    (models / "sft/adapter_model.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    message = one_line_error("sft", snapshot(models), models)
    assert message == ("checkpoint 'sft': models/sft/adapter_model.safetensors is truncated or corrupt "
                       f"(invalid header); {HINT.format(d='sft')}")


def test_missing_checkpoint_directory(models):
    message = one_line_error("dpo", snapshot(models), models)
    assert message == f"checkpoint 'dpo': models/dpo does not exist; {HINT.format(d='dpo')}"


def test_directory_with_neither_adapter_nor_model(models):
    (models / "rl").mkdir()
    (models / "rl/notes.txt").write_text("half written")
    message = one_line_error("rl", snapshot(models), models)
    assert message == f"checkpoint 'rl': models/rl holds neither an adapter nor a model; {HINT.format(d='rl')}"


def test_full_model_with_truncated_weights(models):
    path = models / "merged/model.safetensors"
    path.write_bytes(path.read_bytes()[:-1])
    message = one_line_error("merged", snapshot(models), models)
    assert message == ("checkpoint 'merged': models/merged/model.safetensors is truncated or corrupt "
                       f"(data cut short: 15 of 16 bytes); {HINT.format(d='merged')}")


def test_adapter_on_a_missing_base_names_the_base(models):
    import shutil

    shutil.rmtree(models / "base")
    message = one_line_error("sft", snapshot(models), models)
    assert message == f"checkpoint 'sft': models/base does not exist; {HINT.format(d='base')}"
    assert one_line_error("base", snapshot(models), models) == (
        f"checkpoint 'base': models/base does not exist; {HINT.format(d='base')}")


@pytest.mark.parametrize("cut", [0, 7, 8, 30, -1, "+1"])
def test_header_check_agrees_with_the_safetensors_loader(tmp_path, cut):
    path = tmp_path / "w.safetensors"
    write_safetensors(path)
    data = path.read_bytes()
    path.write_bytes(data + b"x" if cut == "+1" else data[:cut])
    with pytest.raises(Exception):
        with safe_open(path, "np") as f:
            f.keys()
    assert safetensors_problem(path) is not None


def test_sharded_model_with_a_missing_shard(models):
    (models / "merged/model.safetensors").rename(models / "merged/model-00001-of-00002.safetensors")
    (models / "merged/model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    message = one_line_error("merged", snapshot(models), models)
    assert message == ("checkpoint 'merged': models/merged/model-00002-of-00002.safetensors is missing; "
                       f"{HINT.format(d='merged')}")


def test_a_stage_that_continues_an_adapter_refuses_a_full_model_by_name(models):
    assert adapter_checkpoint(models / "sft", models / "base") == (models / "base", models / "sft")
    with pytest.raises(CheckpointError, match="^checkpoint 'merged' holds no LoRA adapter to continue training "
                                              r"\(distill.student\)$"):
        adapter_checkpoint(models / "merged", models / "base", "distill.student")
    with pytest.raises(CheckpointError, match="^checkpoint 'base' holds no LoRA adapter to continue training$"):
        adapter_checkpoint(models / "base", models / "base")
    with pytest.raises(CheckpointError, match="models/gone does not exist"):
        adapter_checkpoint(models / "gone", models / "base")
