"""Mid-training: corpora read as documents, mixed at the domain share asked, only the layers asked trained,
the held-out domain loss falls, and the later stages build on the model it makes."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, dvc_arguments, run_stage, write_params
from posttrain.errors import UserError
from posttrain.midtrain import (general_tokens_needed, read_corpus, split_held_out, take_tokens,
                                train_only_last_layers)


def test_jsonl_documents_are_text_fields_or_problems_with_their_solutions(tmp_path):
    corpus = tmp_path / "domain.jsonl"
    corpus.write_text('{"text": "  Ohm\'s law relates current and voltage. "}\n'
                      "\n"
                      '{"question": "What is 2 + 3?", "solution": "2 + 3 = 5\\n#### 5", "id": "p1"}\n'
                      '{"content": ""}\n'
                      '{"question": "Half of 8?", "answer": "4"}\n')
    documents, empty = read_corpus(corpus)
    assert documents == ["Ohm's law relates current and voltage.", "What is 2 + 3?\n\n2 + 3 = 5\n#### 5",
                         "Half of 8?\n\n4"]
    assert empty == 1


def test_text_documents_are_paragraphs(tmp_path):
    corpus = tmp_path / "notes.txt"
    corpus.write_text("First paragraph,\nstill the first.\n\n\n\nSecond one.\n\n   \n\nThird.\n")
    documents, empty = read_corpus(corpus)
    assert documents == ["First paragraph,\nstill the first.", "Second one.", "Third."]
    assert empty == 2


@pytest.mark.parametrize("line, message", [
    ("{not json", "domain.jsonl:2: not valid JSON"),
    ('["a list"]', "domain.jsonl:2: expected a JSON object, got list"),
    ('{"title": "no text"}', "domain.jsonl:2: a record needs a text field"),
])
def test_a_malformed_record_names_its_file_and_line(line, message, tmp_path):
    corpus = tmp_path / "domain.jsonl"
    corpus.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(UserError, match=message):
        read_corpus(corpus)


def test_other_files_are_refused_by_name(tmp_path):
    (tmp_path / "corpus.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="corpus.csv: a corpus is a .jsonl file"):
        read_corpus(tmp_path / "corpus.csv")
    with pytest.raises(UserError, match="missing.jsonl: no such corpus file"):
        read_corpus(tmp_path / "missing.jsonl")


def test_the_general_share_is_sized_so_the_domain_makes_up_the_share_asked():
    assert general_tokens_needed(300, 0.3) == 700
    assert general_tokens_needed(300, 0.5) == 300
    assert general_tokens_needed(300, 1.0) == 0
    documents = [f"doc {i}" for i in range(10)]
    lengths = [100] * 10
    taken, tokens = take_tokens(documents, lengths, 350, seed=1)
    assert tokens == 400 and len(taken) == 4 and len(set(taken)) == 4  # whole documents, until the count is met
    assert take_tokens(documents, lengths, 350, seed=1) == (taken, tokens)  # seeded
    assert take_tokens(documents, lengths, 5000, seed=1)[1] == 1000  # a short corpus gives all it has


def test_held_out_documents_are_never_in_training():
    documents = [f"doc {i}" for i in range(20)]
    train, held_out = split_held_out(documents, 0.1, seed=3)
    assert len(held_out) == 2 and len(train) == 18 and not set(train) & set(held_out)
    assert sorted(train + held_out) == sorted(documents)
    with pytest.raises(UserError, match="1 document"):
        split_held_out(["only one"], 0.1, seed=3)


def test_only_the_last_layers_and_final_norm_train():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=100))
    everything = sum(p.numel() for p in model.parameters())
    assert train_only_last_layers(model, None) == everything
    trainable = train_only_last_layers(model, 1)
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("model.layers.2.", "model.norm.")) for n in names)
    assert trainable == sum(p.numel() for p in model.model.layers[2].parameters()) + model.model.norm.weight.numel()
    with pytest.raises(UserError, match="midtrain.train_layers: 4 exceeds the model's 3 decoder layers"):
        train_only_last_layers(model, 4)


GENERAL = "\n\n".join(f"Paragraph {i} about rivers, hills and the weather of the valley, day {i}." for i in range(60))
MIDTRAIN = {"enabled": True, "general": "general.txt", "domain_share": 0.5, "max_domain_documents": 40,
            "held_out_share": 0.1, "max_length": 64, "learning_rate": 3e-3, "warmup_ratio": 0.0,
            "lr_scheduler": "constant", "max_steps": 12, "batch_size": 4, "logging_steps": 1}


def test_midtraining_learns_the_domain_and_trains_only_the_layers_asked(workspace):
    (workspace / "general.txt").write_text(GENERAL)
    run_stage(workspace, "midtrain", overrides={"midtrain": {**MIDTRAIN, "train_layers": 1}})
    metrics = json.loads((workspace / "metrics/midtrain.json").read_text())
    assert metrics["steps"] == 12 and metrics["general_documents"] > 0
    assert 0.4 <= metrics["domain_share"] <= 0.6  # whole documents: about the share asked
    assert metrics["held_out_documents"] == {"domain": 4, "general": 6}
    assert metrics["domain_loss_after"] < metrics["domain_loss_before"]  # text it never trained on

    base = load_file(workspace / "models/base/model.safetensors")
    trained = load_file(workspace / "models/midtrain/model.safetensors")
    last = max(int(name.split(".")[2]) for name in base if name.startswith("model.layers."))
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    assert changed and all(n.startswith((f"model.layers.{last}.", "model.norm.")) for n in changed)
    assert (workspace / "models/midtrain/tokenizer.json").is_file()
    log = (workspace / "metrics/midtrain/loss.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and len(log) == 13


def test_later_stages_build_on_the_midtrained_model(workspace):
    (workspace / "general.txt").write_text(GENERAL)
    run_stage(workspace, "midtrain", overrides={"midtrain": MIDTRAIN})
    overrides = {"midtrain": MIDTRAIN, "adapter_base": "midtrain"}
    write_params(workspace, overrides)
    assert dvc_arguments("sft", workspace / "params.yaml")[:2] == ("--base", "models/midtrain")
    run_stage(workspace, "sft", overrides=overrides)
    adapter = json.loads((workspace / "models/sft/adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "models/midtrain"


def test_building_on_midtrain_while_it_is_off_is_one_line(workspace):
    result = run_stage(workspace, "sft", overrides={"adapter_base": "midtrain", "midtrain": {"enabled": False}},
                       check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "params.yaml: adapter_base: midtrain needs midtrain.enabled: true (off, models/midtrain is a copy of "
        "models/base)")


def test_no_general_corpus_is_named_in_one_line(workspace):
    result = run_stage(workspace, "midtrain", overrides={"midtrain": {**MIDTRAIN, "general": "no/such/corpus.jsonl"}},
                       check=False)
    assert result.returncode != 0 and "no/such/corpus.jsonl: no such corpus file" in result.stderr
    assert not (workspace / "models/midtrain").exists() and not (workspace / "metrics/midtrain.json").exists()


def test_the_repository_wires_every_later_stage_to_adapter_base():
    """Every stage after midtrain names its base model models/${adapter_base}; only base, prepare and midtrain
    read models/base itself."""
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        text = json.dumps(stage)
        if name in ("base", "midtrain"):
            assert "${adapter_base}" not in text
        elif "models/" in text and name not in ("compare", "report", "prepare"):
            assert "models/base" not in text.replace("models/${adapter_base}", ""), name
            assert "models/${adapter_base}" in text, name
