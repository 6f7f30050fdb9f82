"""Callbacks used by the training script: NaN guard, epoch timing, resumable and best-epoch checkpoints."""

import json
import math
import os
import time

import keras

from amr_keras.runfolder import fault_point, guarded_write, write_json_atomically


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the message names the loss and the step."""


class CheckpointError(RuntimeError):
    """Checkpoint files exist but none can be read; the message names each file and why."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stop training with a clear error as soon as any logged loss is NaN or infinite.

    Unlike ``TerminateOnNaN`` (which only looks at a ``loss`` key, absent here),
    it checks every metric and raises, so that no later callback saves the
    broken weights: the last checkpoint stays the last good one.

    Args:
        checkpoint_hint: optional function returning a sentence about the last good
            checkpoint (e.g. ``ResumableCheckpoint.last_good_hint``), added to the
            message. It is called when the error happens, so it tells what is on disk then.
    """

    def __init__(self, checkpoint_hint=None):
        super().__init__()
        self.checkpoint_hint = checkpoint_hint
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        bad = {}
        for name, value in (logs or {}).items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(value):
                bad[name] = value
        if not bad:
            return
        name, *others = bad
        value = bad[name]
        also = f"Also not finite: {', '.join(others)}. " if others else ""
        step = int(self.model.d_optimizer.iterations.numpy()) if getattr(self.model, "d_optimizer", None) else batch
        raise NonFiniteLossError(
            f"{name} became {value} at step {step} (epoch {self.epoch + 1}, batch {batch + 1}); training "
            f"stopped. {also}{self.checkpoint_hint() if self.checkpoint_hint else ''}{_nonfinite_advice(bad)}"
        )


def _nonfinite_advice(bad):
    """What to change when the logged values named in ``bad`` stopped being finite.

    The online probe sits behind a stop-gradient: when only its values diverged, the autoencoder and the
    discriminator were still finite, and their learning rates are not the cause.
    """
    if all(name.startswith("probe") for name in bad):
        return ("Only the online probe diverged (the autoencoder's and discriminator's losses were finite): "
                "try a lower --probe-lr, or --probe batchnorm.")
    return "Try a lower --lr or --lamb, or --precision float32."


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


class FactorVAECurve(keras.callbacks.Callback):
    """Add ``factorvae_estimate`` (a FactorVAE score on few votes) and ``factorvae_estimate_seconds`` to each
    epoch's logs, so that the score's course over training shows in ``log.csv`` and TensorBoard.

    Its draws (seed 1) are not those of the final score (seed 0). Placed before ``CSVLogger``.

    Args:
        encode: uint8 images -> codes (``amr_keras.disentanglement.image_encoder``).
        source: a ``amr_keras.dsprites.FactorSource``.
        votes: votes of the classifier, and as many held-out votes.
        samples: images per vote.
        prune_threshold, prune_relative: as for ``factorvae_score``.
    """

    def __init__(self, encode, source, votes=100, samples=200, prune_threshold=0.05, prune_relative=False):
        super().__init__()
        self.encode, self.source = encode, source
        self.settings = dict(votes=votes, eval_votes=votes, samples=samples, variance_samples=5000,
                             prune_threshold=prune_threshold, prune_relative=prune_relative, seed=1)

    def on_epoch_end(self, epoch, logs=None):
        from amr_keras.disentanglement import factorvae_score

        if logs is None:
            return
        t0 = time.perf_counter()
        logs["factorvae_estimate"] = factorvae_score(self.encode, self.source, **self.settings)["factorvae_score"]
        logs["factorvae_estimate_seconds"] = time.perf_counter() - t0


class ResumableCheckpoint(keras.callbacks.Callback):
    """Save the whole model (weights, optimizer states, step counters) at the end of every epoch, and the one before.

    ``last.keras`` + ``state.json`` (``{"epochs_done": N}``) hold the newest
    epoch, ``previous.keras`` + ``previous_state.json`` the epoch before, so a
    checkpoint damaged on disk costs one epoch: ``restore`` falls back to the
    previous one. Each file is written next to its final name and moved into
    place, so a run killed at any moment leaves whole files, and ``restore``
    pairs each model with its state even when a rotation was cut short.

    Not built on ``keras.callbacks.BackupAndRestore``, although it also keeps
    two backups (``double_checkpoint``) and can save mid-epoch (``save_freq``):
    it restores inside ``fit`` (``on_train_begin``) with ``load_weights`` into
    the model being trained, building only ``model.optimizer`` first, whereas
    AMR has three optimizers and no ``model.optimizer``; this training needs
    the epoch count before ``fit`` (to seed the data order, trim ``log.csv``
    and set the best-model threshold); it writes its backup in place (a kill
    while writing damages it), falls back without saying so, and by default
    deletes the backup when training ends. ``last.keras`` stays a whole model
    that ``keras.saving.load_model`` opens.

    Args:
        folder: where the checkpoint files go.
        create: create ``folder`` now (``False`` to read an existing one).
    """

    def __init__(self, folder, create=True):
        super().__init__()
        self.folder = folder
        self.restored_steps = 0
        if create:
            os.makedirs(folder, exist_ok=True)

    @property
    def model_path(self):
        return os.path.join(self.folder, "last.keras")

    @property
    def state_path(self):
        return os.path.join(self.folder, "state.json")

    @property
    def previous_model_path(self):
        return os.path.join(self.folder, "previous.keras")

    @property
    def previous_state_path(self):
        return os.path.join(self.folder, "previous_state.json")

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1)

    def save(self, epochs_done, steps_done=0):
        """Write the model as the newest checkpoint: after ``epochs_done`` epochs and ``steps_done`` training steps
        of the next one (a mid-epoch checkpoint, ``amr_keras.stopping``)."""
        tmp = os.path.join(self.folder, "last.tmp.keras")
        with guarded_write(self.model_path, tmp):
            self.model.save(tmp)
            fault_point("last.keras", tmp)
            # The newest checkpoint becomes the previous one: model first, then its state (see _slots).
            for src, dst in ((self.model_path, self.previous_model_path), (self.state_path, self.previous_state_path)):
                if os.path.exists(src):
                    os.replace(src, dst)
                    fault_point("last.keras:rotate")
            os.replace(tmp, self.model_path)
        state = {"epochs_done": epochs_done, **({"steps_done": int(steps_done)} if steps_done else {})}
        write_json_atomically(self.state_path, state)

    @classmethod
    def newest_complete(cls, folder):
        """``(model path, epochs done)`` of the newest checkpoint in ``folder`` whose model and state are both on
        disk (what ``restore`` would try first), or ``None``; reads the small state files only."""
        for model_path, state_path in cls(folder, create=False)._slots():
            try:
                with open(state_path) as f:
                    epochs = int(json.load(f)["epochs_done"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if os.path.exists(model_path):
                return model_path, epochs
        return None

    def epochs_done(self):
        """Finished epochs recorded with ``last.keras`` (0 when there is no checkpoint)."""
        return checkpoint_epochs(self.folder)

    def last_good_hint(self):
        """A sentence for error messages: the checkpoint to resume from, or that none exists yet."""
        if self.epochs_done():
            return f"The last good checkpoint is {self.model_path}. "
        return ("No checkpoint exists yet (the first is written at the end of epoch 1), so --resume has nothing to "
                f"continue: start the run again, with another --out or after deleting {os.path.dirname(self.folder)}. ")

    def _slots(self):
        """``(model, state)`` file pairs, newest first."""
        # Killed between the two moves of a rotation, previous.keras is the newest model and its
        # state is still state.json (last.keras is gone until the new model is moved in).
        cut_short = not os.path.exists(self.model_path) and os.path.exists(self.state_path)
        return [(self.model_path, self.state_path),
                (self.previous_model_path, self.state_path if cut_short else self.previous_state_path)]

    def restore(self, load):
        """Load the newest readable checkpoint: ``(model, epochs_done)``, or ``(None, 0)`` when there is none.

        When ``last.keras`` (or its state) cannot be read, falls back to
        ``previous.keras``: prints a note, and renames the unreadable files
        ``*.unreadable`` (so the next epoch's rotation keeps the good one).

        A mid-epoch checkpoint also sets ``restored_steps``: the training steps of epoch ``epochs_done + 1`` it
        holds (0 for a checkpoint written at the end of an epoch).

        Args:
            load: reads a model file, e.g. ``keras.saving.load_model``.

        Raises:
            CheckpointError: checkpoint files exist but none can be read.
        """
        self.restored_steps = 0
        problems, unreadable = [], []
        for model_path, state_path in self._slots():
            if not os.path.exists(model_path):
                continue
            if not os.path.exists(state_path) and not problems:
                # Written but never recorded (a kill between the model's move and its state's write): the
                # epoch did not finish saving, so the checkpoint before it is the newest.
                os.remove(model_path)
                continue
            what = state_path
            try:
                with open(state_path) as f:
                    state = json.load(f)
                epochs, steps = int(state["epochs_done"]), int(state.get("steps_done", 0))
                what = model_path
                model = load(model_path)
            except Exception as e:  # noqa: BLE001 (a damaged file fails in many ways: zip, JSON, HDF5, missing keys)
                cause = (str(e).strip().splitlines() or [""])[0]
                problems.append(f"{what} is unreadable ({type(e).__name__}: {cause})")
                unreadable += [p for p in (model_path, state_path) if os.path.exists(p)]
                continue
            if problems:
                for path in unreadable:
                    os.replace(path, path + ".unreadable")
                where = f"epoch {epochs}" + (f", step {steps} of epoch {epochs + 1}" if steps else "")
                print(f"note: {'; '.join(problems)}. Resuming from the previous epoch's checkpoint {model_path} "
                      f"({where}): what came after it is trained again. The unreadable files are kept as "
                      "*.unreadable.")
            self.restored_steps = steps
            return model, epochs
        if problems:
            raise CheckpointError(
                f"no readable checkpoint in {self.folder}: {'; '.join(problems)}. Restore a backup, or delete "
                f"{self.folder} to restart the run from the beginning."
            )
        return None, 0


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the model of the best-validation epoch in ``best.keras``, with its epoch in ``best.json``.

    Like ``keras.callbacks.ModelCheckpoint(save_best_only=True)``, and it also
    records which epoch the file holds (``{"epoch": N, "<monitor>": value}``)
    and keeps the best model it replaces as ``previous_best.keras`` +
    ``previous_best.json`` in ``backup_folder``. When a resumed run falls back
    to an earlier checkpoint, the epochs after it are trained again and their
    log rows dropped; a ``best.keras`` written by one of those discarded epochs
    would be scored under another epoch's name. :meth:`restore` finds the
    newest best model whose epoch was kept. Files are written next to their
    final names and moved into place, and each model is moved before its
    record, so a record never names a model that is not on disk.

    Args:
        path: ``best.keras``; its record is the same path with ``.json``.
        backup_folder: where the replaced best model goes (the checkpoint folder).
        monitor: the logged metric to maximise.
    """

    def __init__(self, path, backup_folder, monitor="val_probe_accuracy"):
        super().__init__()
        self.path, self.monitor = path, monitor
        self.record_path = os.path.splitext(path)[0] + ".json"
        self.previous_path = os.path.join(backup_folder, "previous_best.keras")
        self.previous_record_path = os.path.join(backup_folder, "previous_best.json")
        self.best = None  # (epoch, value) of the model in ``path``

    def _slots(self):
        """``(model, record)`` file pairs, newest first."""
        # Killed between the two moves of a rotation, previous_best.keras is the newest model and its
        # record is still best.json (best.keras is gone until the new model is moved in).
        cut_short = not os.path.exists(self.path) and os.path.exists(self.record_path)
        return [(self.path, self.record_path),
                (self.previous_path, self.record_path if cut_short else self.previous_record_path)]

    def _read(self, model_path, record_path):
        """``(epoch, value)`` of a slot whose model and record are both on disk, else ``None``."""
        if not os.path.exists(model_path):
            return None
        try:
            with open(record_path) as f:
                record = json.load(f)
            return int(record["epoch"]), float(record[self.monitor])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def restore(self, epochs_kept, log_rows=()):
        """Make ``best.keras`` the best model of the first ``epochs_kept`` epochs that is still on disk.

        Returns ``(epoch, value)`` of that model, or ``None`` when no kept
        epoch's model is left (the next epoch then saves one whatever its
        score). A ``best.keras`` with neither a record nor a replaced model
        beside it (a run folder written before records existed) is taken to
        hold the best epoch of ``log_rows``, the kept rows, as it did then.
        """
        self.best = None
        (newest, newest_record), (older, older_record) = self._slots()
        if (os.path.exists(newest) and not os.path.exists(newest_record) and not os.path.exists(older)
                and not os.path.exists(older_record)):
            values = [r.get(self.monitor, -math.inf) for r in log_rows]
            if values:
                self.best = (values.index(max(values)) + 1, float(max(values)))
                self._write_record(*self.best)
                return self.best
        found = self._read(newest, newest_record)
        if found is not None and found[0] <= epochs_kept:
            self.best = found
            return found
        discarded = (f"held epoch {found[0]}, which the resumed run trains again" if found is not None
                     else "was missing or had no readable record")
        kept = self._read(older, older_record)
        if kept is not None and kept[0] <= epochs_kept:
            os.replace(older, self.path)
            self._write_record(*kept)
            if older_record != self.record_path and os.path.exists(older_record):
                os.remove(older_record)
            print(f"note: {self.path} {discarded}; restored the best kept epoch ({kept[0]}) from {older}.")
            self.best = kept
            return kept
        for path in (self.path, self.record_path, older, self.previous_record_path):
            if os.path.exists(path):
                os.replace(path, path + ".discarded")
        if found is not None or kept is not None:
            print(f"note: {self.path} {discarded}, and no model of a kept epoch is left; the best of the epochs "
                  "trained from here on is kept instead (the old files are kept as *.discarded).")
        return None

    def _write_record(self, epoch, value):
        write_json_atomically(self.record_path, {"epoch": epoch, self.monitor: value})

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(f"BestCheckpoint monitors {self.monitor!r}, which the epoch's logs lack "
                           f"(they have: {', '.join(sorted(logs or {}))}). Pass validation data to fit().")
        value = float(value)
        if self.best is None or value > self.best[1]:
            self.save(epoch + 1, value)

    def save(self, epoch, value):
        """Write the model as the best one, of ``epoch`` (1-based) with ``value``; the replaced one is kept."""
        tmp = os.path.splitext(self.path)[0] + ".tmp.keras"
        with guarded_write(self.path, tmp):
            self.model.save(tmp)
            fault_point("best.keras", tmp)
            if self.best is not None and os.path.exists(self.path):
                os.replace(self.path, self.previous_path)
                fault_point("best.keras:rotate")
                os.replace(self.record_path, self.previous_record_path)
            os.replace(tmp, self.path)
        self._write_record(epoch, value)
        self.best = (epoch, value)


def checkpoint_epochs(folder):
    """Finished epochs of the ``ResumableCheckpoint`` in ``folder`` (0 when there is none); creates nothing."""
    state, model = os.path.join(folder, "state.json"), os.path.join(folder, "last.keras")
    if not os.path.exists(state) or not os.path.exists(model):
        return 0
    with open(state) as f:
        return int(json.load(f)["epochs_done"])
