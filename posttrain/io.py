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


def json_objects(path: str | Path, error: type[Exception] = UserError, fix: str = "",
                 missing: str = ": no such file") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file: the one reader of
    every JSONL the pipeline or its user gives it. Any fault is `error` in one line that
    names the file and line, followed by `fix` (what to do about it): the file missing
    (`missing` follows its name), UTF-16 text, a line that is not UTF-8, not JSON
    or not an object. A UTF-8 byte-order mark (spreadsheet and Windows editor exports) is
    accepted; lines end in \n, \r\n or \r."""
    path = Path(path)
    suffix = f"; {fix}" if fix else ""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise error(f"{path}{missing}{suffix}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(f"{path}: UTF-16 text; save it as UTF-8 (one JSON object per line){suffix}")
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{path}:{number}: not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
                        f"{suffix or '; save the file as UTF-8'}") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{number}: not valid JSON ({exc.msg}){suffix}") from None
        if not isinstance(record, dict):
            raise error(f"{path}:{number}: expected a JSON object, got {type(record).__name__}{suffix}")
        yield number, record


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """The records of a JSONL file an earlier stage wrote, each an object with the
    `required` keys; a missing or damaged file is one line naming it (and the line) and
    how to restore it, not a traceback."""
    restore = f"restore it with `dvc checkout {path}` or rebuild it with `dvc repro`"
    records = []
    for number, record in json_objects(path, UpstreamOutputError, restore,
                                       missing=" is missing (an earlier stage writes it)"):
        lacking = [key for key in required if key not in record]
        if lacking:
            raise UpstreamOutputError(f"{path}:{number}: record lacks {', '.join(lacking)}; {restore}")
        records.append(record)
    return records


def looks_like_path(source: str) -> bool:
    """Whether a `*.source` value that does not exist was meant as a local path rather
    than a hub id. Hub ids are `name` or `org/name`; a path starts with `/`, `./`, `../`
    or `~`, ends with a separator, uses a backslash, or has more than one `/`."""
    return (source.startswith(("/", "./", "../", "~", ".\\", "..\\")) or source in (".", "..")
            or source.endswith(("/", "\\")) or "\\" in source or source.count("/") > 1)
