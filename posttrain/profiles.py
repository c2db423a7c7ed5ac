"""Profiles: small overlays of params.yaml (profiles/<name>.yaml) for other situations.

    python -m posttrain.profiles smoke                       # print params.yaml with it merged
    python -m posttrain.profiles quick --out params.yaml     # or write it (atomically)

prints params.yaml with the profile merged over it (comments are not kept). Write it
with `--out`, not with `> params.yaml`: the shell empties the file before the module
reads it. The tests run the smoke profile in a throw-away copy; for a one-off variation,
`dvc exp run -S key=value` is the better tool, since DVC then records the change with the
experiment.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from posttrain.config import ParamsError, parse_params, read_params_mapping

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
    merged = deep_merge(read_params_mapping(params_file), read_params_mapping(path))
    parse_params(merged, f"{params_file} + {path.name}")
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m posttrain.profiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="a profile: profiles/<name>.yaml")
    parser.add_argument("--params", default="params.yaml", help="the params file to merge over (default params.yaml)")
    parser.add_argument("--out", help="write the merged params here (atomically) instead of printing them")
    args = parser.parse_args(argv)
    try:
        text = yaml.safe_dump(profile_params(args.name, args.params), sort_keys=False)
    except ParamsError as exc:
        raise SystemExit(str(exc)) from None
    if args.out:
        from posttrain.io import write_text_atomic

        write_text_atomic(args.out, text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
