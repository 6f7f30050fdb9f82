"""Stop and go: Ctrl-C (SIGINT) and a preemption signal (SIGTERM) end a run with a checkpoint and one line.

While a run trains, ``StopSignals`` catches both signals. Inside ``fit``'s training steps a signal is recorded,
the step in flight finishes, ``GracefulStop`` writes a mid-epoch checkpoint (weights, optimizer states, the mixing
draws' seed state, and the epoch and step it stopped at: the data position) and raises ``RunStopped``; the
scripts print its one line and exit with 130 (SIGINT) or 143 (SIGTERM), as a shell reports a process ended by
that signal. ``--resume`` then continues from that very batch (``amr_keras.train``). A signal during the
validation pass stops after the epoch's own checkpoint; one outside ``fit`` (loading data, the final scores)
stops at once, the run's checkpoints as they are; a second signal while a checkpoint is written stops at once,
and the previous complete checkpoint stays (every checkpoint file is written whole, then moved into place).

``GracefulStop`` also writes the same checkpoint every ``checkpoint_every`` seconds (``--checkpoint-every``
minutes), for epochs long enough that losing one hurts.

Example:
    >>> signals = StopSignals()
    >>> with signals.installed():
    ...     model.fit(ds, epochs=3, callbacks=[ckpt, GracefulStop(signals, ckpt, steps_per_epoch)])
"""

import contextlib
import signal
import threading
import time

import keras

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class RunStopped(BaseException):  # noqa: N818 (it is a stop, not an error)
    """A run was stopped by a signal; the message is the one line to print.

    A ``BaseException``, as ``KeyboardInterrupt``: handlers of ``Exception`` (KerasTuner's around each trial, for
    one) let it through.

    Attributes:
        signum: the signal.
        exit_code: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self):
        return EXIT_CODES.get(self.signum, 128 + int(self.signum))


def signal_name(signum):
    return signal.Signals(signum).name


class StopSignals:
    """SIGINT and SIGTERM handlers for one run.

    While ``deferring`` (``GracefulStop`` sets it during the training steps) the first signal is only recorded in
    ``pending``; otherwise, and for any second signal, the handler raises ``RunStopped`` at once with the line
    ``describe(signum)`` gives.

    Args:
        describe: signal -> the line for a stop outside the training steps.
    """

    def __init__(self, describe=None):
        self.describe = describe or (lambda signum: f"stopped ({signal_name(signum)})")
        self.pending = None
        self.deferring = False

    def _handle(self, signum, frame):
        if self.deferring and self.pending is None:
            self.pending = signum
            return
        raise RunStopped(signum, self.describe(signum))

    @contextlib.contextmanager
    def installed(self):
        """Install the handlers (main thread only: elsewhere Python cannot, and this does nothing), restore the
        previous ones on exit."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class GracefulStop(keras.callbacks.Callback):
    """Turn a recorded signal into a checkpoint and ``RunStopped``; write mid-epoch checkpoints on a timer.

    Place it after the ``ResumableCheckpoint`` (and every other callback that writes at the end of an epoch).

    Args:
        signals: the run's ``StopSignals``.
        checkpoint: the run's ``amr_keras.callbacks.ResumableCheckpoint``.
        steps_per_epoch: training steps of a full epoch.
        first_step: steps of the first epoch already done before this ``fit`` (a run resumed mid-epoch).
        checkpoint_every: seconds between mid-epoch checkpoints (``None``: none).
        resume_hint: how to continue, for the line (e.g. "continue with the same command and --resume").
    """

    def __init__(self, signals, checkpoint, steps_per_epoch, first_step=0, checkpoint_every=None,
                 resume_hint="continue with the same command and --resume"):
        super().__init__()
        self.signals, self.checkpoint = signals, checkpoint
        self.steps_per_epoch, self.first_step = steps_per_epoch, first_step
        self.checkpoint_every, self.resume_hint = checkpoint_every, resume_hint
        self.epoch, self.offset, self.saved_at = 0, first_step, time.monotonic()
        self._first_epoch = None
        self.mid_epoch_saves = 0

    def on_train_begin(self, logs=None):
        self.signals.deferring = True
        self.saved_at = time.monotonic()

    def on_train_end(self, logs=None):
        self.signals.deferring = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self._first_epoch is None:
            self._first_epoch = epoch
        self.offset = self.first_step if epoch == self._first_epoch else 0

    def on_train_batch_end(self, batch, logs=None):
        step = self.offset + batch + 1
        if step >= self.steps_per_epoch:
            return  # the epoch's own checkpoint comes next (after validation)
        if self.signals.pending is not None:
            self._save(step)
            self.signals.deferring = False
            raise RunStopped(self.signals.pending, self.line(self.epoch + 1, step, self.signals.pending))
        if self.checkpoint_every and time.monotonic() - self.saved_at >= self.checkpoint_every:
            self._save(step)
            self.mid_epoch_saves += 1

    def on_epoch_end(self, epoch, logs=None):
        self.saved_at = time.monotonic()
        if self.signals.pending is not None:
            self.signals.deferring = False
            raise RunStopped(self.signals.pending, self.line(epoch + 1, None, self.signals.pending))

    def _save(self, step):
        self.checkpoint.save(self.epoch, steps_done=step)
        self.saved_at = time.monotonic()

    def line(self, epoch, step, signum):
        """``stopped at epoch E, step S (SIGTERM): checkpoint PATH; continue with ...`` (``step`` ``None``: at the
        end of epoch E)."""
        where = f"after epoch {epoch}" if step is None else f"at epoch {epoch}, step {step}"
        return (f"stopped {where} ({signal_name(signum)}): checkpoint {self.checkpoint.model_path}; "
                f"{self.resume_hint}")
