"""Profiles: small overlays of params.yaml (profiles/<name>.yaml) for other situations.

    python -m posttrain.profiles smoke > smoke-params.yaml

prints params.yaml with the profile merged over it. The tests use it to run the smoke
profile in a throw-away copy; for a one-off variation, `dvc exp run -S key=value` is
the better tool, since DVC then records the change with the experiment.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from posttrain.config import ParamsError, parse_params

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


def deep_merge(base: dict, overlay: dict) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def profile_params(name: str, params_file: str | Path = "params.yaml") -> dict:
    """params.yaml with profiles/<name>.yaml merged over it, validated."""
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ParamsError(f"profile {name!r}: no {path.name} in profiles/ (known: {known})")
    merged = deep_merge(yaml.safe_load(Path(params_file).read_text()), yaml.safe_load(path.read_text()) or {})
    parse_params(merged, f"{params_file} + {path.name}")
    return merged


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m posttrain.profiles NAME")
    try:
        print(yaml.safe_dump(profile_params(sys.argv[1]), sort_keys=False), end="")
    except ParamsError as exc:
        raise SystemExit(str(exc)) from None
