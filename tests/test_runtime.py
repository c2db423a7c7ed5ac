"""Thread sizing: processes that run at once split the cores instead of fighting over them."""

import pytest

from posttrain import runtime
from posttrain.config import RuntimeParams


@pytest.fixture()
def four_cores(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 4)
    for name in ("POSTTRAIN_THREADS", "LOCAL_WORLD_SIZE", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_lone_stage_uses_every_core(four_cores):
    four_cores.setattr(runtime, "queue_workers", lambda: 3)  # workers elsewhere do not count outside the queue
    assert runtime.thread_count(RuntimeParams()) == 4


def test_ranks_of_one_launch_split_the_cores(four_cores):
    four_cores.setenv("LOCAL_WORLD_SIZE", "2")
    assert runtime.thread_count(RuntimeParams()) == 2


def test_queued_experiments_split_the_cores_between_workers(four_cores, tmp_path):
    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    four_cores.setenv("DVC_ROOT", str(repo))
    four_cores.chdir(copy)
    four_cores.setattr(runtime, "queue_workers", lambda: 2)
    assert runtime.in_queued_experiment()
    assert runtime.thread_count(RuntimeParams()) == 2
    four_cores.setattr(runtime, "queue_workers", lambda: 8)
    assert runtime.thread_count(RuntimeParams()) == 1  # never zero


def test_explicit_settings_win(four_cores):
    four_cores.setenv("LOCAL_WORLD_SIZE", "2")
    four_cores.setenv("POSTTRAIN_THREADS", "3")
    assert runtime.thread_count(RuntimeParams()) == 3
    assert runtime.thread_count(RuntimeParams(threads=1)) == 1
    four_cores.setenv("POSTTRAIN_THREADS", "many")
    with pytest.raises(SystemExit, match="POSTTRAIN_THREADS"):
        runtime.thread_count(RuntimeParams())
