"""Safety prompt sets: harmful requests to refuse, benign look-alikes to answer.

The built-in set (posttrain/resources/safety_prompts.jsonl) was written for this
project across several harm categories; `data.safety.source` may point at a user's
own JSONL file of the same shape:

    {"id": "...", "category": "weapons", "kind": "harmful" | "benign",
     "prompt": "...", "response": "a brief refusal, or a helpful answer"}
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

BUILTIN = "builtin"
BUILTIN_PATH = Path(__file__).parent / "resources" / "safety_prompts.jsonl"
KINDS = ("harmful", "benign")
REQUIRED = ("id", "category", "kind", "prompt", "response")


class SafetyDataError(ValueError):
    pass


def read_safety_file(path: Path) -> list[dict]:
    """Every row, validated; a bad row is an error naming its line (this set is small and curated)."""
    rows, ids = [], set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SafetyDataError(f"{where}: invalid JSON ({exc.msg})") from None
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


def split_safety(rows: list[dict], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Stratified by (kind, category), so every category appears in both splits."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["kind"], row["category"])].append(row)
    rng = random.Random(seed)
    train, test = [], []
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda r: r["id"])
        rng.shuffle(group)
        n_test = max(1, round(len(group) * test_fraction)) if len(group) > 1 else 0
        test += group[:n_test]
        train += group[n_test:]
    return train, test
