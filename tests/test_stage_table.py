"""bench/stage_table.py: per-stage seconds and peak memory of a real `dvc repro`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "stage_table.py"


def test_each_stage_gets_its_own_seconds_and_the_memory_its_process_held(tmp_path):
    hold = "import time; block = bytearray({size}); block[::4096] = b'x' * len(block[::4096]); time.sleep({seconds})"
    stages = {  # DVC runs them in this order: light depends on heavy's output
        "heavy": {"cmd": f'python -c "{hold.format(size=400 * 2**20, seconds=2.5)}" && echo h > heavy.txt',
                  "outs": ["heavy.txt"]},
        "light": {"cmd": f'python -c "{hold.format(size=0, seconds=1.5)}" && echo l > light.txt',
                  "deps": ["heavy.txt"], "outs": ["light.txt"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)

    result = subprocess.run([sys.executable, str(SCRIPT), "--every", "0.2", "--json", "rows.json"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "Running stage 'heavy'" in result.stdout  # dvc's own output passes through
    rows = {row["stage"]: row for row in json.loads((tmp_path / "rows.json").read_text())["stages"]}
    assert list(rows) == ["heavy", "light"]
    assert rows["heavy"]["seconds"] >= 2.5 and rows["light"]["seconds"] >= 1.5
    assert rows["heavy"]["peak_rss_bytes"] >= 400 * 2**20
    assert rows["light"]["peak_rss_bytes"] < 200 * 2**20  # the first stage's memory is not carried over
    assert "| heavy |" in result.stdout and "| **all 2 stages** |" in result.stdout


def test_a_failing_repro_keeps_its_exit_status(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"broken": {"cmd": "exit 3"}}}))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)

    result = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)

    assert result.returncode != 0
    assert "dvc repro exited with" in result.stderr
