"""SFT: which tokens carry labels, truncation that keeps the answer, and the stage
itself on the tiny model (LoRA, QLoRA 4-bit on CPU, and a Mixture-of-Experts model)."""

import copy
import csv
import functools
import json

import pytest
from safetensors import safe_open

from posttrain.chat_template import mark_assistant_turns
from posttrain.models import CHATML_TEMPLATE, packaged_gguf_path, tiny_corpus, train_tiny_tokenizer
from posttrain.training import fit_to_length

from conftest import run_stage

SOLUTION = "Mia has 7 + 5 = 12 stickers.\n#### 12"
CONVERSATION = [
    {"role": "system", "content": "Answer with steps."},
    {"role": "user", "content": "Mia has 7 stickers and finds 5 more. How many now?"},
    {"role": "assistant", "content": SOLUTION},
]
MULTI_TURN = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "#### 4"},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "#### 6"},
]


@functools.cache
def plain_smollm2_tokenizer():
    """SmolLM2-135M-Instruct's own tokenizer and chat template, from the packaged GGUF."""
    from transformers import AutoTokenizer

    gguf = packaged_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def smollm2_tokenizer():
    tokenizer = copy.deepcopy(plain_smollm2_tokenizer())
    tokenizer.chat_template = mark_assistant_turns(tokenizer.chat_template)  # what stage `base` does
    return tokenizer


def tiny_tokenizer():
    tokenizer = train_tiny_tokenizer(1024, tiny_corpus(0))
    tokenizer.chat_template = mark_assistant_turns(CHATML_TEMPLATE)
    return tokenizer


@pytest.fixture(scope="module", params=["smollm2", "tiny"])
def tokenizer(request):
    return smollm2_tokenizer() if request.param == "smollm2" else tiny_tokenizer()


def trl_labels(tokenizer, messages, tmp_path):
    """input_ids and labels exactly as TRL's SFTTrainer builds them for training."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, LlamaConfig
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1))
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, use_cpu=True, bf16=False,
                     report_to=[], max_length=512)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"messages": messages}]))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    return batch["input_ids"][0].tolist(), batch["labels"][0].tolist()


def test_labels_cover_assistant_content_and_end_of_turn_only(tokenizer, tmp_path):
    ids, labels = trl_labels(tokenizer, CONVERSATION, tmp_path)
    labelled = [i for i, label in zip(ids, labels) if label != -100]
    unlabelled = [i for i, label in zip(ids, labels) if label == -100]
    # Every labelled token is trained on its own id (no shifting or masking surprises).
    assert all(label in (-100, i) for i, label in zip(ids, labels))
    # Exactly the answer and the end-of-turn token that teaches the model to stop...
    assert tokenizer.decode(labelled) == SOLUTION + "<|im_end|>"
    assert labelled[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    # ...and none of the system prompt, the user turn or the assistant header.
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(unlabelled) == prompt + "\n"
    assert "Answer with steps." in prompt and "Mia has 7 stickers" in prompt


def test_every_assistant_turn_is_labelled_in_a_multi_turn_conversation(tokenizer, tmp_path):
    ids, labels = trl_labels(tokenizer, MULTI_TURN, tmp_path)
    labelled_text = tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])
    assert labelled_text == "#### 4<|im_end|>#### 6<|im_end|>"


def test_marked_template_renders_exactly_like_the_original():
    tokenizer, plain = smollm2_tokenizer(), plain_smollm2_tokenizer()
    assert tokenizer.chat_template != plain.chat_template  # it was rewritten...
    for messages in (CONVERSATION, MULTI_TURN, CONVERSATION[1:2]):
        for add in (False, True):
            assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add) == \
                plain.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)  # ...not changed


def test_fit_to_length_shortens_the_question_and_keeps_the_answer():
    tokenizer = tiny_tokenizer()
    long_question = " ".join(["Mia counts her stickers again."] * 40) + " How many now?"
    conversation = [{"role": "user", "content": long_question}, {"role": "assistant", "content": SOLUTION}]
    fitted = fit_to_length(tokenizer, conversation, 96)
    ids = tokenizer.apply_chat_template(fitted, tokenize=True, return_dict=True)["input_ids"]
    assert len(ids) <= 96
    assert fitted[-1]["content"] == SOLUTION
    assert fitted[0]["content"].endswith("How many now?") and fitted[0]["content"].startswith("...")
    assert fit_to_length(tokenizer, conversation, 10) is None  # the answer alone does not fit


def read_loss(workdir):
    with open(workdir / "metrics/sft/loss.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f) if row["loss"]]


TRAIN_FAST = {"sft": {"learning_rate": 1e-2, "max_steps": 16, "batch_size": 8, "logging_steps": 1,
                      "warmup_ratio": 0.0, "lr_scheduler": "constant"}}


def test_sft_stage_trains_a_lora_adapter(workspace):
    run_stage(workspace, "sft", overrides={**TRAIN_FAST, "sft": {**TRAIN_FAST["sft"], "merge": True}})
    losses = read_loss(workspace)
    assert len(losses) == 16
    # it learned something: from about ln(vocab) at random init to clearly below it
    assert sum(losses[-4:]) / 4 < losses[0] - 0.3, losses
    metrics = json.loads((workspace / "metrics/sft.json").read_text())
    assert metrics["steps"] == 16 and metrics["tokens_per_second"] > 0
    assert metrics["trainable_parameters"] > 0  # counted before the merge folds the adapter in
    assert (workspace / "models/sft/adapter_config.json").is_file()
    assert (workspace / "models/sft/merged/model.safetensors").is_file()


def test_qlora_4bit_trains_on_cpu(workspace):
    run_stage(workspace, "sft", overrides={"sft": {**TRAIN_FAST["sft"], "quantization": "4bit"}})
    losses = read_loss(workspace)
    assert len(losses) == 16 and all(loss == loss for loss in losses)  # no NaN
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    config = json.loads((workspace / "models/sft/adapter_config.json").read_text())
    assert config["r"] == 16


def test_moe_model_gets_lora_on_attention_and_experts_with_router_frozen(tiny_workspace, tmp_path):
    workdir = tmp_path / "moe"
    workdir.mkdir()
    (workdir / "data").symlink_to(tiny_workspace / "data")
    moe = {"model": {"tiny": {"architecture": "qwen2_moe", "num_experts": 4, "num_experts_per_token": 2}}}
    run_stage(workdir, "base", overrides=moe)
    lora = {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "dropout": 0.0,
            "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}
    run_stage(workdir, "sft", overrides={**moe, "sft": {**TRAIN_FAST["sft"], "max_steps": 4, "lora": lora}})
    with safe_open(workdir / "models/sft/adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any("experts" in k for k in keys), keys
    assert any("q_proj" in k for k in keys), keys
    assert not any(".mlp.gate." in k for k in keys), "the router must not be adapted"
    assert len(read_loss(workdir)) == 4


def test_safety_share_mixes_curated_safety_answers_into_the_sft_data(workspace):
    from posttrain.io import read_jsonl

    run_stage(workspace, "sft", overrides={"sft": {**TRAIN_FAST["sft"], "max_steps": 2, "safety_share": 0.2},
                                           "safety": {"held_out_prompts": 4}})
    metrics = json.loads((workspace / "metrics/sft.json").read_text())
    gsm = len(read_jsonl(workspace / "data/prepared/sft.jsonl"))
    safety = len(read_jsonl(workspace / "data/prepared/safety_train.jsonl"))
    wanted = round(gsm * 0.2 / 0.8)  # a fifth of the whole mix
    assert metrics["safety_examples"] == min(wanted, safety - 4) > 0
    assert metrics["examples"] == gsm - metrics["skipped_too_long"] + metrics["safety_examples"]


def test_safety_share_never_trains_on_the_prompts_stage_safety_holds_out(workspace, capsys):
    """Stage safety's held-out monitor reads prompts no stage trained on: sft's safety
    mix leaves out exactly those held_out_split holds out, even when it asks for all."""
    from posttrain.io import SAFETY_PROMPT, read_jsonl
    from posttrain.safety_data import held_out_split

    rows = read_jsonl(workspace / "data/prepared/safety_train.jsonl", SAFETY_PROMPT)
    train, held = held_out_split(rows, 6, seed=42)
    assert len(held) == 6 and not {r["id"] for r in held} & {r["id"] for r in train}
    run_stage(workspace, "sft", overrides={"sft": {**TRAIN_FAST["sft"], "max_steps": 2, "safety_share": 0.95},
                                           "safety": {"held_out_prompts": 6}})
    metrics = json.loads((workspace / "metrics/sft.json").read_text())
    assert metrics["safety_examples"] == len(rows) - 6  # every safety prompt but the held-out ones
