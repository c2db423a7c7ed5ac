"""posttrain/profiles.py: overlays of params.yaml, merged, validated and written safely."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from posttrain.config import ParamsError, parse_params
from posttrain.profiles import PROFILES_DIR, deep_merge, profile_params

REPO = Path(__file__).resolve().parent.parent


def profiles_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "posttrain.profiles", *args], capture_output=True, text=True,
                          cwd=cwd, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_every_profile_merges_over_params_yaml_and_validates(name):
    merged = profile_params(name, REPO / "params.yaml")
    overlay = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())
    parse_params(merged, name)

    def leaves(tree, prefix=()):
        for key, value in tree.items():
            yield from leaves(value, (*prefix, key)) if isinstance(value, dict) else [((*prefix, key), value)]

    for path, value in leaves(overlay):  # every key of the overlay lands where it says
        node = merged
        for key in path:
            node = node[key]
        assert node == value, path


def test_deep_merge_keeps_the_keys_an_overlay_does_not_name():
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2}, "d": 3}


def test_out_writes_the_merged_params_over_the_file_it_read(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    done = profiles_cli("smoke", "--out", "params.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(params.read_text()) == profile_params("smoke", REPO / "params.yaml")
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]  # no temporary file left beside it


def test_an_emptied_params_file_is_one_line_that_says_how_to_restore_it(tmp_path):
    (tmp_path / "params.yaml").write_text("")  # what `python -m posttrain.profiles smoke > params.yaml` leaves
    done = profiles_cli("smoke", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "params.yaml: empty" in done.stderr and "> params.yaml" in done.stderr
    assert "git checkout params.yaml" in done.stderr


@pytest.mark.parametrize(("text", "message"), [("- a\n- b\n", "expected a mapping of sections"),
                                               ("a: [1,\n", "line 2: not valid YAML")])
def test_a_params_file_that_is_not_a_mapping_is_named(tmp_path, text, message):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=message):
        profile_params("smoke", tmp_path / "params.yaml")


def test_an_unknown_profile_lists_the_known_ones(tmp_path):
    done = profiles_cli("fast", "--params", str(REPO / "params.yaml"), cwd=tmp_path)
    assert done.returncode != 0 and "profile 'fast'" in done.stderr and "smoke" in done.stderr
    assert not (tmp_path / "params.yaml").exists()
