"""Safety prompt sets: harmful requests to refuse, benign look-alikes to answer, read,
validated and split into train and test by stage prepare (stage safety's pairs and
weight interpolation are in posttrain/safety.py, so prepare does not depend on them).

The built-in set (posttrain/resources/safety_prompts.jsonl) was written for this
project across several harm categories; `data.safety.source` may point at a user's
own JSONL file of the same shape:

    {"id": "...", "category": "weapons", "kind": "harmful" | "benign",
     "prompt": "...", "response": "a brief refusal, or a helpful answer"}
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from posttrain.errors import UserError
from posttrain.io import json_objects

BUILTIN = "builtin"
BUILTIN_PATH = Path(__file__).parent / "resources" / "safety_prompts.jsonl"
KINDS = ("harmful", "benign")
REQUIRED = ("id", "category", "kind", "prompt", "response")


class SafetyDataError(UserError, ValueError):
    pass


def read_safety_file(path: Path) -> list[dict]:
    """Every row, validated; a bad row is an error naming its line (this set is small and curated)."""
    rows, ids = [], set()
    for number, row in json_objects(path, SafetyDataError):
        where = f"{path}:{number}"
        missing = [key for key in REQUIRED if not isinstance(row.get(key), str) or not row[key].strip()]
        if missing:
            raise SafetyDataError(f"{where}: missing or empty field(s) {', '.join(missing)}")
        if row["kind"] not in KINDS:
            raise SafetyDataError(f"{where}: kind must be one of {KINDS}, got {row['kind']!r}")
        if row["id"] in ids:
            raise SafetyDataError(f"{where}: duplicate id {row['id']!r}")
        ids.add(row["id"])
        rows.append(row)
    for kind in KINDS:
        if not any(row["kind"] == kind for row in rows):
            raise SafetyDataError(f"{path}: has no {kind!r} prompts; both kinds are needed")
    return rows


def load_builtin_safety_prompts() -> list[dict]:
    return read_safety_file(BUILTIN_PATH)


def load_safety_prompts(source: str) -> list[dict]:
    if source == BUILTIN:
        return load_builtin_safety_prompts()
    path = Path(source)
    if not path.is_file():
        raise SafetyDataError(f"data.safety.source: {source} is not a file (or use 'builtin')")
    return read_safety_file(path)


def split_safety(rows: list[dict], test_fraction: float, seed: int,
                 held_out_subtypes: tuple[str, ...] = ()) -> tuple[list[dict], list[dict]]:
    """Stratified by (kind, category), so every category appears in both splits. Rows
    whose `subtype` is in held_out_subtypes all go to test, marked held_out_subtype,
    so the test shows whether refusal generalises to kinds of prompt never trained on.
    A source whose rows carry no subtype at all holds nothing out (prepare reports it);
    one that has subtypes must have every name asked for."""
    known = {row.get("subtype") for row in rows} - {None}
    unknown = [name for name in held_out_subtypes if name not in known]
    if known and unknown:
        raise SafetyDataError(f"data.safety.held_out_subtypes: {', '.join(unknown)} not among the prompts' "
                              f"subtypes ({', '.join(sorted(str(k) for k in known if k))})")
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    held_out = []
    for row in rows:
        if row.get("subtype") in held_out_subtypes:
            held_out.append(row | {"held_out_subtype": True})
        else:
            groups[(row["kind"], row["category"])].append(row)
    rng = random.Random(seed)
    train, test = [], []
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda r: r["id"])
        rng.shuffle(group)
        n_test = max(1, round(len(group) * test_fraction)) if len(group) > 1 else 0
        test += group[:n_test]
        train += group[n_test:]
    return train, test + sorted(held_out, key=lambda r: r["id"])


def held_out_split(rows: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(rows to train on, n rows held out): n // 2 harmful and the rest benign, chosen
    with the seed, so the held-out monitor reads both refusal and over-refusal. Both
    keep the file's order."""
    held: set[int] = set()
    for kind, count in (("harmful", n // 2), ("benign", n - n // 2)):
        indices = [i for i, row in enumerate(rows) if row["kind"] == kind]
        if count > len(indices):
            raise UserError(f"params.yaml: safety.held_out_prompts: {n} asks for {count} {kind} prompts, but the "
                            f"safety training set has {len(indices)}")
        held |= set(random.Random(f"{seed}-{kind}").sample(indices, count))
    return ([row for i, row in enumerate(rows) if i not in held],
            [row for i, row in enumerate(rows) if i in held])
