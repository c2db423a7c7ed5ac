"""Small training helpers: the per-step CSVs that DVC plots read."""

import csv
import types

from posttrain.training import write_log_history, write_rows_csv


def test_rows_with_keys_appearing_later_keep_every_column(tmp_path):
    path = tmp_path / "log.csv"
    write_rows_csv(path, [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.7, "kl": 0.01}])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"step": "1", "reward": "0.5", "kl": ""}, {"step": "2", "reward": "0.7", "kl": "0.01"}]


def test_log_history_keeps_training_steps_and_drops_the_summary(tmp_path):
    history = [{"step": 5, "loss": 1.2, "learning_rate": 1e-3}, {"step": 10, "loss": 0.8, "learning_rate": 5e-4},
               {"step": 10, "train_loss": 1.0, "train_runtime": 3.0}]
    rows = write_log_history(history, tmp_path / "loss.csv", ["loss", "learning_rate"])
    assert [r["step"] for r in rows] == [5, 10]
    assert (tmp_path / "loss.csv").read_text().splitlines()[0] == "step,loss,learning_rate"


def _tiny_causal_lm():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def test_the_fused_lm_head_scores_only_labelled_positions_on_cpu_with_the_same_result(monkeypatch):
    """TRL's fused LM head (SFT, DPO, GRPO, RLOO) projects every position on CPU unless
    patched; patched, it projects only those with a label, and the loss, the per-token
    log-probs and the gradients stay what they were."""
    import torch
    import trl.trainer.utils as trl_utils
    from trl.kernels import chunked_logprob
    from trl.trainer.utils import add_fused_lm_head

    from posttrain.training import score_only_labelled_positions_on_cpu

    model = _tiny_causal_lm()
    add_fused_lm_head(model)
    input_ids = torch.randint(0, 97, (3, 12))
    labels = input_ids.clone()
    labels[:, :7] = -100  # a prompt: no loss there
    labels[2, 10:] = -100  # padding at the end of one row

    projected_rows = []
    original_apply = trl_utils._ChunkedLogProbFunction.apply

    def counting_apply(hidden, *args):
        projected_rows.append(hidden.shape[0])
        return original_apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", types.SimpleNamespace(apply=counting_apply))

    def run():
        model.zero_grad()
        out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out.loss.detach(), out.log_probs.detach(), model.model.layers[0].mlp.up_proj.weight.grad.clone()

    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)  # TRL as shipped
    every = run()
    score_only_labelled_positions_on_cpu()
    score_only_labelled_positions_on_cpu()  # idempotent
    compact = run()
    assert projected_rows == [3 * 11, int((labels[:, 1:] != -100).sum())]  # 33 positions, then the 12 labelled
    assert torch.allclose(every[0], compact[0], atol=1e-6)
    assert torch.allclose(every[1], compact[1], atol=1e-6)
    assert torch.allclose(every[2], compact[2], atol=1e-6)


FRAGMENTED_HEAP = """
import os, sys
import psutil
sys.path.insert(0, os.getcwd())
from posttrain.training import release_freed_memory

rss = lambda: psutil.Process().memory_info().rss
# Blocks of a training step's sizes, each followed by a small one that stays: once the big
# ones are freed, the heap is full of holes and none of them lies at its top.
big, kept = [], []
for i in range(400):
    big.append(bytearray(1_000_000 + 4096 * i))
    kept.append(bytearray(1024))  # above pymalloc's 512 bytes: from the same C heap
del big
freed = rss()
assert release_freed_memory()
print(freed - rss())
"""


def test_release_freed_memory_gives_the_heap_holes_back(tmp_path):
    """What the training stages call after each step: memory freed inside the C heap goes
    back to the system, not only what lies at its top (glibc's malloc_trim)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "heap.py"
    script.write_text(FRAGMENTED_HEAP)
    # Below this size glibc serves blocks from its heap (the threshold a long-running
    # process reaches by itself once it has freed a few large blocks).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20)}
    out = subprocess.run([sys.executable, str(script)], cwd=Path(__file__).resolve().parent.parent, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) > 300 * 2**20  # of the ~1 GB freed, most leaves the process
