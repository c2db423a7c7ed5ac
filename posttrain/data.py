"""GSM data: read a source, normalise each record, report what was skipped, split.

A source is read as (origin, line number, raw object) triples so that every skipped
record can be reported as `train.jsonl:17: no '#### N' final-answer line`.
Normalised records, as written to data/prepared/*.jsonl:

    {"id": "train-17", "question": "...", "reasoning": "...", "answer": "72",
     "solution": "<reasoning>\n#### 72"}

plus "templates": "seen" | "held_out" on generated problems (posttrain/synthetic.py).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.config import DataParams
from posttrain.errors import UserError
from posttrain.gsm import AnswerFormatError, parse_reference
from posttrain.io import looks_like_path

SYNTHETIC_SOURCE = "synthetic"
SPLITS = ("train", "test")


class DataError(UserError, ValueError):
    pass


@dataclass
class RawRecord:
    origin: str  # file name, or "hub:<id>/<split>", or "synthetic"
    line: int  # 1-based line (or row) number within origin
    split: str  # "train" or "test" as the source labels it
    obj: object


@dataclass
class ParseReport:
    total: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[str] = field(default_factory=list)  # "file:line: reason", first few

    MAX_EXAMPLES = 20

    def skip(self, raw: RawRecord, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(f"{raw.origin}:{raw.line}: {reason}")

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
NOT_UTF8 = "not UTF-8"


def iter_jsonl(path: Path, split: str) -> Iterator[RawRecord]:
    """Records of a JSONL file, one per non-blank line. The file is read as bytes and
    each line decoded on its own, so a line that is not UTF-8 is one malformed record
    (reported with its line number) rather than the end of the stage. A UTF-8 byte-order
    mark is accepted; lines end in \n, \r\n or \r, as in Python's text mode."""
    with open(path, "rb") as f:
        number = 0
        for chunk in f:
            # bytes.splitlines splits on \n, \r\n and \r: the same lines as text mode.
            for data in chunk.splitlines():
                number += 1
                if number == 1:
                    if data.startswith(UTF16_BOMS):
                        raise DataError(f"data.source: {path} is UTF-16 encoded; save it as UTF-8 "
                                        "(one JSON object per line)")
                    data = data.removeprefix(UTF8_BOM)
                try:
                    line = data.decode("utf-8")
                except UnicodeDecodeError:
                    obj: object = _InvalidJson(NOT_UTF8, json=False)
                else:
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        obj = _InvalidJson(str(exc.msg))
                yield RawRecord(origin=str(path), line=number, split=split, obj=obj)


@dataclass
class _InvalidJson:
    message: str
    json: bool = True  # False: the line is not even text (the message says why)


def iter_source(params: DataParams, seed: int) -> Iterator[RawRecord]:
    """Raw records of `data.source`: synthetic, a local directory, or a hub dataset id."""
    source = params.source
    if source == SYNTHETIC_SOURCE:
        from posttrain.synthetic import generate_problems

        s = params.synthetic
        shape = (s.min_steps, s.max_steps, s.operations, s.max_number)
        problems = generate_problems(s.num_problems, seed, *shape, "seen", s.held_out_fraction)
        for number, problem in enumerate(problems, start=1):
            yield RawRecord(origin="synthetic", line=number, split="train", obj=problem)
        # Problems phrased only with held-out templates: test records, never trained on.
        held_out = s.held_out_test_problems(params.split.test)
        for number, problem in enumerate(generate_problems(held_out, seed, *shape, "held_out", s.held_out_fraction),
                                         start=len(problems) + 1):
            yield RawRecord(origin="synthetic", line=number, split="test", obj=problem)
    elif Path(source).expanduser().is_dir():
        directory = Path(source).expanduser()
        files = {split: directory / f"{split}.jsonl" for split in SPLITS}
        if not files["train"].is_file():
            raise DataError(f"data.source: {source} has no train.jsonl (GSM8K format: question, answer)")
        for split, path in files.items():
            if path.is_file():  # test.jsonl is optional: the test split is then carved from train
                yield from iter_jsonl(path, split)
    elif Path(source).expanduser().exists():
        raise DataError(f"data.source: {source} is a file; point it at a directory holding train.jsonl")
    elif looks_like_path(source):
        raise DataError(
            f"data.source: {source} does not exist (a local data directory holding train.jsonl must exist; "
            "a hub id looks like org/name)"
        )
    else:
        from datasets import load_dataset  # a hub id such as openai/gsm8k (needs internet)

        dataset = load_dataset(source, "main")
        for split in SPLITS:
            if split in dataset:
                for number, row in enumerate(dataset[split], start=1):
                    yield RawRecord(origin=f"hub:{source}/{split}", line=number, split=split, obj=row)


def normalise(raw: RawRecord) -> dict | str:
    """A normalised record, or the reason it cannot be used."""
    obj = raw.obj
    if isinstance(obj, _InvalidJson):
        return f"invalid JSON ({obj.message})" if obj.json else obj.message
    if not isinstance(obj, dict):
        return "not a JSON object"
    for key in ("question", "answer"):
        if key not in obj:
            return f"missing field '{key}'"
        if not isinstance(obj[key], str):
            return f"field '{key}' is not a string"
    question = " ".join(obj["question"].split())
    if not question:
        return "empty question"
    try:
        reference = parse_reference(obj["answer"])
    except AnswerFormatError as exc:
        return str(exc)
    record = {
        "id": f"{Path(raw.origin).stem}-{raw.line}",
        "question": question,
        "reasoning": reference.reasoning,
        "answer": reference.answer,
        "solution": reference.solution,
    }
    # The generator tags which phrasings wrote the problem (seen in training or held out);
    # evaluate reports accuracy per tag.
    if isinstance(obj.get("templates"), str):
        record["templates"] = obj["templates"]
    return record


@dataclass
class PreparedGSM:
    sft: list[dict]
    rl: list[dict]
    test: list[dict]
    report: ParseReport
    duplicates: int


def prepare_gsm(params: DataParams, seed: int) -> PreparedGSM:
    """Read, normalise, deduplicate and split the GSM source; raise DataError on failure."""
    report = ParseReport()
    by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    duplicates = 0
    for raw in iter_source(params, seed):
        report.total += 1
        record = normalise(raw)
        if isinstance(record, str):
            report.skip(raw, record)
            continue
        # A question seen twice would leak between splits: keep the first only.
        if record["question"] in seen:
            duplicates += 1
            continue
        seen.add(record["question"])
        by_split[raw.split].append(record)

    if report.total == 0:
        raise DataError(f"data.source: {params.source} holds no records")
    bad_fraction = report.skipped_total / report.total
    if bad_fraction > params.max_bad_fraction:
        shown = "; ".join(report.examples[:5])
        raise DataError(
            f"data.max_bad_fraction: {report.skipped_total} of {report.total} records are malformed "
            f"({bad_fraction:.1%} > {params.max_bad_fraction:.1%}), e.g. {shown}"
        )

    rng = random.Random(seed)
    train, test_pool = by_split["train"], by_split["test"]
    rng.shuffle(train)
    rng.shuffle(test_pool)
    split = params.split
    if params.source == SYNTHETIC_SOURCE:
        # The generator wrote only the held-out-template share of the test split; the
        # rest is seen-template problems held out of train.
        seen_share = split.test - len(test_pool)
        test_pool, train = test_pool + train[:seen_share], train[seen_share:]
        rng.shuffle(test_pool)
    elif not test_pool:  # no separate test file: hold out the first part of train
        test_pool, train = train[: split.test], train[split.test :]
    if len(test_pool) < split.test:
        raise DataError(f"data.split.test: {split.test} wanted, the source has {len(test_pool)} test records")
    if len(train) < split.sft + split.rl:
        raise DataError(
            f"data.split: sft + rl = {split.sft + split.rl} wanted, the source has {len(train)} usable "
            "training records left"
        )
    return PreparedGSM(
        sft=train[: split.sft],
        rl=train[split.sft : split.sft + split.rl],
        test=test_pool[: split.test],
        report=report,
        duplicates=duplicates,
    )
