"""Thread sizing: processes that run at once split the cores instead of fighting over them."""

import pytest

from posttrain import runtime
from posttrain.config import RuntimeParams
from posttrain.errors import UserError


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
    with pytest.raises(UserError, match="POSTTRAIN_THREADS"):
        runtime.thread_count(RuntimeParams())


def test_bf16_falls_back_to_float32_where_the_cpu_has_no_native_bf16(monkeypatch, capsys):
    """On an AVX2-only CPU bf16 is emulated (50x slower than fp32): asked-for bf16 becomes
    fp32 there, said once; where bf16 is native it is kept; fp32 stays fp32."""
    from posttrain import runtime

    monkeypatch.setattr(runtime, "_told", set())
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    assert runtime.use_bf16(True, "sft.bf16") is False
    assert runtime.use_bf16(True, "sft.bf16") is False
    assert runtime.generation_dtype("bfloat16") == "float32"
    assert runtime.generation_dtype("float32") == "float32"
    assert capsys.readouterr().out.count("sft.bf16: this CPU has no native bf16") == 1
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    assert runtime.use_bf16(True, "sft.bf16") is True and runtime.use_bf16(False, "sft.bf16") is False
    assert runtime.generation_dtype("bfloat16") == "bfloat16"
