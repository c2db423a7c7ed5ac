"""Small file helpers: outputs appear whole or not at all.

DVC caches whatever a stage leaves at an output path, so a stage that dies half way
must not leave a half-written file or directory there. Everything is written to a
temporary sibling first and renamed into place, which is atomic on one filesystem.

Under `accelerate launch` only the main process (RANK 0) writes outputs: two processes
replacing the same path race, so the helpers here refuse to write on any other rank.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from posttrain.errors import UserError


def _main_process_only(path: Path) -> None:
    rank = os.environ.get("RANK", "0")
    if rank != "0":
        raise RuntimeError(f"{path}: written by process RANK={rank}; only the main process (RANK 0) writes "
                           "outputs (guard the write with trainer.accelerator.is_main_process)")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block succeeds."""
    path = Path(path)
    _main_process_only(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    _main_process_only(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, data: object) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows atomically; return how many."""
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


GSM_RECORD = ("id", "question", "answer", "solution")  # data/prepared/{sft,rl,test}.jsonl
PAIR = ("question", "chosen", "rejected")  # data/preferences/*.jsonl
SAFETY_PROMPT = ("id", "category", "kind", "prompt", "response")  # data/prepared/safety_*.jsonl


class UpstreamOutputError(UserError):
    """A file an earlier stage wrote is missing or damaged."""


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """The records of a JSONL file an earlier stage wrote, each an object with the
    `required` keys; a missing or damaged file is one line naming it (and the line) and
    how to restore it, not a traceback."""
    path = Path(path)
    restore = f"restore it with `dvc checkout {path}` or rebuild it with `dvc repro`"
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UpstreamOutputError(f"{path} is missing (an earlier stage writes it); {restore}") from None
    records = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise UpstreamOutputError(f"{path}:{number}: not UTF-8; {restore}") from None
        except json.JSONDecodeError as exc:
            raise UpstreamOutputError(f"{path}:{number}: not valid JSON ({exc.msg}); {restore}") from None
        missing = [key for key in required if not isinstance(record, dict) or key not in record]
        if missing:
            raise UpstreamOutputError(f"{path}:{number}: record lacks {', '.join(missing)}; {restore}")
        records.append(record)
    return records


def looks_like_path(source: str) -> bool:
    """Whether a `*.source` value that does not exist was meant as a local path rather
    than a hub id. Hub ids are `name` or `org/name`; a path starts with `/`, `./`, `../`
    or `~`, ends with a separator, uses a backslash, or has more than one `/`."""
    return (source.startswith(("/", "./", "../", "~", ".\\", "..\\")) or source in (".", "..")
            or source.endswith(("/", "\\")) or "\\" in source or source.count("/") > 1)
