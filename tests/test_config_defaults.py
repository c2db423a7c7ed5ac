"""One set of defaults: posttrain/config.py's defaults are the values params.yaml documents.

params.yaml lists every knob with its comment; the schema's defaults must be the same
values, so that a key left out of a params file means what params.yaml says it means.
"""

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from posttrain.config import Params

REPO = Path(__file__).resolve().parent.parent


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _required_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys the schema has no default for (a required section is walked into)."""
    keys = []
    for name, field in model.model_fields.items():
        if not field.is_required():
            continue
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys.extend(_required_keys(field.annotation, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _nest(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _same(a: object, b: object) -> bool:
    # 1 == 1.0 is the same default (YAML writes `epochs: 1` for a float), but True is not 1.
    return a == b and isinstance(a, bool) == isinstance(b, bool)


@pytest.fixture(scope="module")
def documented() -> dict[str, object]:
    return _flatten(yaml.safe_load((REPO / "params.yaml").read_text()))


@pytest.fixture(scope="module")
def required() -> list[str]:
    return _required_keys(Params)


@pytest.fixture(scope="module")
def schema(documented, required) -> dict[str, object]:
    # Params built from defaults alone, except the keys that have none: those (data.split)
    # must be given, and are taken from params.yaml. Validation runs as for a real file.
    given = _nest({key: documented[key] for key in required if key in documented})
    return _flatten(Params.model_validate(given).model_dump())


def test_params_yaml_has_every_schema_key(schema, documented):
    missing = sorted(set(schema) - set(documented))
    assert not missing, f"schema keys absent from params.yaml (document them): {', '.join(missing)}"


def test_schema_has_every_params_yaml_key(schema, documented):
    unknown = sorted(set(documented) - set(schema))
    assert not unknown, f"params.yaml keys absent from posttrain/config.py: {', '.join(unknown)}"


def test_schema_defaults_are_the_documented_defaults(schema, documented):
    disagree = [
        f"{key}: config.py {schema[key]!r} != params.yaml {documented[key]!r}"
        for key in sorted(set(schema) & set(documented))
        if not _same(schema[key], documented[key])
    ]
    assert not disagree, f"{len(disagree)} default(s) disagree:\n" + "\n".join(disagree)


def test_only_data_split_has_no_default(required):
    # A key without a default must be set in every params file; keep that list deliberate.
    assert sorted(required) == ["data.split.rl", "data.split.sft", "data.split.test"]
