"""Mid-training (continued pre-training): what stage midtrain reads, mixes and freezes.

A domain corpus is mixed with general text so that the domain makes up a set share of
the training tokens (typical mixes are 15-50% domain): the general share keeps the model
from forgetting what it knew. Plain next-token prediction on every token, full weights
(optionally only the last few decoder layers), before any adapter is trained.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from posttrain.errors import UserError
from posttrain.io import json_objects

# JSONL fields read as a document's text, first match wins: plain text, or a GSM-format
# problem with its worked solution (the project's own data as a domain corpus).
TEXT_FIELDS = ("text", "content")
PROBLEM_FIELDS = (("question", "solution"), ("question", "answer"))


def read_corpus(path: str | Path) -> tuple[list[str], int]:
    """The documents of a corpus file and how many records were skipped as empty.

    .jsonl: one document per line, its `text` (or `content`) field, or a GSM-format
    record (question with solution or answer) written as the question, a blank line and
    the worked answer. .txt: documents separated by blank lines. A line that is not a
    JSON object, or an object with none of those fields, is an error naming the file and
    line: a corpus with the wrong shape is not silently read as nothing."""
    path = Path(path)
    if path.suffix == ".txt":
        try:
            paragraphs = path.read_text(encoding="utf-8").split("\n\n")
        except (FileNotFoundError, IsADirectoryError):
            raise UserError(f"{path}: no such corpus file") from None
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                            "save the file as UTF-8") from None
        documents = [p.strip() for p in paragraphs if p.strip()]
        return documents, len(paragraphs) - len(documents)
    if path.suffix != ".jsonl":
        raise UserError(f"{path}: a corpus is a .jsonl file (one document per line) or a .txt file "
                        "(documents separated by blank lines)")
    documents, empty = [], 0
    for number, record in json_objects(path, missing=": no such corpus file"):
        text = document_text(record)
        if text is None:
            raise UserError(f"{path}:{number}: a record needs a text field ({' or '.join(TEXT_FIELDS)}) "
                            "or question with solution or answer")
        if text.strip():
            documents.append(text.strip())
        else:
            empty += 1
    return documents, empty


def document_text(record: dict) -> str | None:
    for field in TEXT_FIELDS:
        if isinstance(record.get(field), str):
            return record[field]
    for question, answer in PROBLEM_FIELDS:
        if isinstance(record.get(question), str) and isinstance(record.get(answer), str):
            return f"{record[question].strip()}\n\n{record[answer].strip()}"
    return None


def general_tokens_needed(domain_tokens: int, domain_share: float) -> int:
    """General-text tokens that make domain_tokens the given share of the mix."""
    return math.ceil(domain_tokens * (1 - domain_share) / domain_share)


def take_tokens(documents: list[str], lengths: list[int], wanted: int, seed: int) -> tuple[list[str], int]:
    """A seeded sample of whole documents holding about `wanted` tokens (the first that
    reaches it is kept: a document is never cut), and the tokens it holds."""
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    taken, tokens = [], 0
    for index in order:
        if tokens >= wanted:
            break
        taken.append(documents[index])
        tokens += lengths[index]
    return taken, tokens


def split_held_out(documents: list[str], share: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held out): a seeded share of the documents, at least one, kept out of
    training to measure the loss on text the model did not see."""
    if len(documents) < 2:
        raise UserError(f"a corpus of {len(documents)} document(s) leaves nothing to hold out; midtrain needs two "
                        "or more documents in each corpus")
    shuffled = documents[:]
    random.Random(seed).shuffle(shuffled)
    held = max(1, round(len(shuffled) * share))
    return shuffled[held:], shuffled[:held]


def decoder_layers(model):
    """The model's stack of decoder layers (Llama, Qwen2, Mistral, Mixtral, ... keep it at
    model.model.layers)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise UserError(f"midtrain.train_layers: {type(model).__name__} keeps no decoder layers at model.layers; "
                        "set midtrain.train_layers: null to train every weight")
    return layers


def train_only_last_layers(model, count: int | None) -> int:
    """Freeze every weight but those of the last `count` decoder layers and the final norm
    (count None: everything trains, embeddings included). Returns the trainable count."""
    if count is not None:
        layers = decoder_layers(model)
        if count > len(layers):
            raise UserError(f"midtrain.train_layers: {count} exceeds the model's {len(layers)} decoder layers")
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        trained = list(layers[len(layers) - count:])
        norm = getattr(model.model, "norm", None)
        for module in trained + ([norm] if norm is not None else []):
            for parameter in module.parameters():
                parameter.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
