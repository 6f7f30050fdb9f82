"""BestCheckpoint: best.keras always holds the epoch its record names, and never an epoch a resume trained again."""

import json
import os

import pytest

from amr_keras.callbacks import BestCheckpoint


class FakeModel:
    """Stands in for a keras.Model: ``save`` writes the name of the epoch being trained."""

    def __init__(self):
        self.epoch = None

    def save(self, path):
        with open(path, "w") as f:
            f.write(f"model {self.epoch}")


@pytest.fixture
def run(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    return tmp_path


def make(run):
    cb = BestCheckpoint(str(run / "best.keras"), str(run / "checkpoint"))
    cb.set_model(FakeModel())
    return cb


def train(cb, values, first_epoch=0):
    for epoch, value in enumerate(values, start=first_epoch):
        cb.model.epoch = epoch + 1
        cb.on_epoch_end(epoch, {"val_probe_accuracy": value})


def held(run):
    with open(run / "best.json") as f:
        record = json.load(f)
    return (run / "best.keras").read_text(), record["epoch"], record["val_probe_accuracy"]


def test_saves_only_improvements_and_records_the_epoch(run):
    cb = make(run)
    train(cb, [0.5, 0.7, 0.6, 0.7])
    assert held(run) == ("model 2", 2, 0.7)  # a tie does not replace the earlier epoch
    assert (run / "checkpoint" / "previous_best.keras").read_text() == "model 1"
    assert cb.best == (2, 0.7)


def test_restore_drops_a_best_model_of_a_discarded_epoch(run, capsys):
    train(make(run), [0.5, 0.6, 0.9])
    # A fallback kept 2 epochs: best.keras holds epoch 3, which is trained again.
    cb = make(run)
    assert cb.restore(2) == (2, 0.6)
    assert held(run) == ("model 2", 2, 0.6)
    assert "held epoch 3, which the resumed run trains again; restored the best kept epoch (2)" in capsys.readouterr().out
    # Epoch 3 again, worse than epoch 2 this time: epoch 2 stays the one scored.
    train(cb, [0.55], first_epoch=2)
    assert held(run) == ("model 2", 2, 0.6)
    train(cb, [0.65], first_epoch=3)
    assert held(run) == ("model 4", 4, 0.65)


def test_restore_keeps_a_best_model_of_a_kept_epoch(run, capsys):
    train(make(run), [0.5, 0.9, 0.6])
    cb = make(run)
    assert cb.restore(2) == (2, 0.9) and held(run) == ("model 2", 2, 0.9)
    assert capsys.readouterr().out == ""
    train(cb, [0.8], first_epoch=2)  # the threshold is the kept best
    assert held(run) == ("model 2", 2, 0.9)


def test_restore_with_no_kept_model_left_starts_over(run, capsys):
    train(make(run), [0.5])
    cb = make(run)
    assert cb.restore(0) is None
    assert not (run / "best.keras").exists() and (run / "best.keras.discarded").exists()
    assert "no model of a kept epoch is left" in capsys.readouterr().out
    train(cb, [0.1])  # whatever its score, the next epoch is saved
    assert held(run) == ("model 1", 1, 0.1)


def test_restore_pairs_models_and_records_after_a_save_cut_short(run):
    train(make(run), [0.5, 0.6])  # best.keras = epoch 2, previous_best = epoch 1
    ckpt = run / "checkpoint"
    # Killed after best.keras (epoch 2) became previous_best.keras, before its record followed it.
    os.replace(run / "best.keras", ckpt / "previous_best.keras")
    assert make(run).restore(5) == (2, 0.6) and held(run) == ("model 2", 2, 0.6)
    # Killed after the new model was moved in (epoch 3), before its record was written.
    cb = make(run)
    cb.restore(5)
    train(cb, [0.7], first_epoch=2)
    os.remove(run / "best.json")
    assert make(run).restore(3) == (2, 0.6) and held(run) == ("model 2", 2, 0.6)


def test_restore_of_a_run_folder_without_records_takes_the_best_logged_epoch(run):
    (run / "best.keras").write_text("model 2")
    rows = [{"val_probe_accuracy": 0.5}, {"val_probe_accuracy": 0.8}, {"val_probe_accuracy": 0.7}]
    assert make(run).restore(3, rows) == (2, 0.8) and held(run) == ("model 2", 2, 0.8)


def test_a_missing_metric_is_named(run):
    with pytest.raises(ValueError, match="monitors 'val_probe_accuracy', which the epoch's logs lack"):
        make(run).on_epoch_end(0, {"probe_accuracy": 0.5})
