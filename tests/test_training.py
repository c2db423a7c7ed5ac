"""Small training helpers: the per-step CSVs that DVC plots read."""

import csv

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
