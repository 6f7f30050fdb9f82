"""Callbacks used by the training script: NaN guard, epoch timing, resumable checkpoints."""

import json
import math
import os
import time

import keras


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the message names the loss and the step."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stop training with a clear error as soon as any logged loss is NaN or infinite.

    Unlike ``TerminateOnNaN`` (which only looks at a ``loss`` key, absent here),
    it checks every metric and raises, so that no later callback saves the
    broken weights: the last checkpoint stays the last good one.

    Args:
        checkpoint_hint: text naming the last good checkpoint, added to the message.
    """

    def __init__(self, checkpoint_hint=""):
        super().__init__()
        self.checkpoint_hint = checkpoint_hint
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(value):
                step = int(self.model.d_optimizer.iterations.numpy()) if getattr(self.model, "d_optimizer", None) else batch
                raise NonFiniteLossError(
                    f"{name} became {value} at step {step} (epoch {self.epoch + 1}, batch {batch + 1}); training "
                    f"stopped. {self.checkpoint_hint}Try a lower --lr or --lamb, or --precision float32."
                )


class EpochTimer(keras.callbacks.Callback):
    """Add ``epoch_seconds`` (training batches only) and ``images_per_second`` to each epoch's logs.

    Placed before ``CSVLogger``, the values end up in the CSV log, so a resumed
    run can sum the time of all its epochs.

    Args:
        batch_size: global batch size, to count images.
    """

    def __init__(self, batch_size):
        super().__init__()
        self.batch_size = batch_size
        self._start = None
        self._last = None
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()
        self._batches += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self._last is None:
            return
        seconds = self._last - self._start
        logs["epoch_seconds"] = seconds
        logs["images_per_second"] = self._batches * self.batch_size / max(seconds, 1e-9)


class ResumableCheckpoint(keras.callbacks.Callback):
    """Save the whole model (weights, optimizer states, step counters) at the end of every epoch.

    The file is written next to its final name and moved into place, so a run
    killed at any moment leaves the previous checkpoint whole. ``state.json``
    records the number of finished epochs.

    Args:
        folder: where ``last.keras`` and ``state.json`` go.
    """

    def __init__(self, folder):
        super().__init__()
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    @property
    def model_path(self):
        return os.path.join(self.folder, "last.keras")

    @property
    def state_path(self):
        return os.path.join(self.folder, "state.json")

    def on_epoch_end(self, epoch, logs=None):
        tmp = os.path.join(self.folder, "last.tmp.keras")
        self.model.save(tmp)
        os.replace(tmp, self.model_path)
        tmp_state = self.state_path + ".tmp"
        with open(tmp_state, "w") as f:
            json.dump({"epochs_done": epoch + 1}, f)
        os.replace(tmp_state, self.state_path)

    def epochs_done(self):
        """Finished epochs recorded in the folder (0 when there is no checkpoint)."""
        return checkpoint_epochs(self.folder)


def checkpoint_epochs(folder):
    """Finished epochs of the ``ResumableCheckpoint`` in ``folder`` (0 when there is none); creates nothing."""
    state, model = os.path.join(folder, "state.json"), os.path.join(folder, "last.keras")
    if not os.path.exists(state) or not os.path.exists(model):
        return 0
    with open(state) as f:
        return int(json.load(f)["epochs_done"])
