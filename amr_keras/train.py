"""Train one AMR run from a ``Config``: data, model, callbacks, resume, final scores, export.

``scripts/fit.py`` is a thin wrapper over :func:`run`.
"""

import contextlib
import csv
import dataclasses
import json
import math
import os
import shlex
import shutil
import sys

import keras
import numpy as np
import tensorflow as tf

import amr_keras.bvae  # noqa: F401  (registers BVAE, so that --resume can load its checkpoints)
from amr_keras import callbacks as cbs
from amr_keras.config import ConfigError, data_options, network_size, resolve, settings_diff, upgrade_run_settings
from amr_keras.data import dataset_spec, load_dataset, train_pipeline
from amr_keras.metrics import score_run
from amr_keras.model import AMR, _multi_worker, default_optimizer
from amr_keras.networks import build_arch, build_burgess_decoder, build_burgess_encoder
from amr_keras.precision import (compute_dtype, cpu_info, native_bfloat16, op_determinism_restored, precision_scope,
                                  resolve_precision)
from amr_keras.runfolder import (LOCK_NAME, FolderLock, RunWriteError, describe_os_error, failed_path, fault_point,
                                 guarded_write, is_write_failure, remove_quietly, write_json_atomically)
from amr_keras.stopping import GracefulStop, StopSignals, signal_name


def make_strategy(name):
    """The ``tf.distribute`` strategy called ``name`` (default, mirrored, multiworker)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if not tf.config.list_physical_devices("GPU"):
            print("warning: --strategy mirrored found no GPU: it trains with one replica on the CPU. Check the "
                  "GPU driver and that TensorFlow was installed with CUDA (pip install -e \".[cuda]\").",
                  file=sys.stderr)
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError(
                "--strategy multiworker needs the TF_CONFIG environment variable describing the cluster "
                "(see docs/scaling.md)."
            )
        check_tf_config(os.environ["TF_CONFIG"])
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"Unknown strategy {name!r}. Choose one of: default, mirrored, multiworker.")


def check_tf_config(text):
    """Raise ``ConfigError`` naming what is wrong with a ``TF_CONFIG`` value (JSON with cluster and task)."""
    example = ('e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
               '"index": 0}}')
    try:
        conf = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e}); {example}.") from e
    if not isinstance(conf, dict):
        raise ConfigError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task', {example}.")
    cluster, task = conf.get("cluster"), conf.get("task")
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(v, list) and v and all(isinstance(a, str) and ":" in a for a in v) for v in cluster.values()):
        raise ConfigError(f"TF_CONFIG 'cluster' must map job names to lists of 'host:port' addresses, {example}.")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ConfigError(f"TF_CONFIG 'task' must name a job of the cluster ({', '.join(cluster)}) as 'type', "
                          f"{example}.")
    index = task.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task["type"]]):
        raise ConfigError(
            f"TF_CONFIG 'task' index must be an integer from 0 to {len(cluster[task['type']]) - 1} "
            f"(the position of this machine in cluster[{task['type']!r}]), got {index!r}."
        )


def make_optimizers(cfg, steps_per_epoch):
    """(autoencoder, discriminator, probe) optimizers for ``cfg``; the schedule spans the whole run."""
    total = cfg.epochs * steps_per_epoch

    def rate(lr, steps):
        if cfg.schedule == "cosine":
            return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, steps))
        return lr

    beta_1 = 0.5 if cfg.adam_beta1 is None else cfg.adam_beta1
    ae = default_optimizer(rate(cfg.lr, math.ceil(total / cfg.update_g_every)), name="ae_adam", beta_1=beta_1)
    d = default_optimizer(rate(cfg.d_lr, total), name="d_adam", beta_1=beta_1)
    # The probe keeps a constant rate so that it can follow the code to the end.
    probe = default_optimizer(cfg.probe_lr, name="probe_adam")
    return ae, d, probe


def build_model(cfg, colors, num_classes, steps_per_epoch, attribute_groups=None):
    """Networks + AMR (or the beta-VAE of ``--model bvae``) + optimizers for ``cfg``, compiled (call inside the
    strategy's scope). ``attribute_groups``: the data's (``DatasetInfo.attributes``), for ``cfg.cls > 0``."""
    if cfg.model == "bvae":
        from amr_keras.bvae import BVAE

        model = BVAE(build_burgess_encoder(colors, cfg.depth, heads=2), build_burgess_decoder(colors, cfg.depth),
                     num_classes=num_classes, beta_kl=cfg.beta_kl, recon=cfg.recon, seed=cfg.seed, probe=cfg.probe,
                     kl_reduction=cfg.kl_reduction)
        ae, _, probe = make_optimizers(cfg, steps_per_epoch)
        model.compile(ae_optimizer=ae, probe_optimizer=probe, jit_compile=cfg.jit_compile)
        return model
    enc, dec, disc = build_arch(cfg.arch, colors=colors, depth=cfg.depth, code_channels=cfg.code_channels,
                                slope=cfg.slope, image_size=network_size(cfg))
    model = AMR(enc, dec, disc, num_classes=num_classes, mixer=cfg.mixer, k=cfg.k, lamb=cfg.lamb, beta=cfg.beta,
                recon=cfg.recon, update_g_every=cfg.update_g_every, seed=cfg.seed, acai_gamma=cfg.acai_gamma,
                acai_weight=cfg.acai_weight, probe=cfg.probe, recon_gan=cfg.recon_gan, cls_weight=cfg.cls,
                class_mixer=cfg.class_mixer, mask_prior=cfg.mask_prior,
                attribute_groups=attribute_groups if cfg.cls > 0 else None)
    ae, d, probe = make_optimizers(cfg, steps_per_epoch)
    model.compile(ae_optimizer=ae, d_optimizer=d, probe_optimizer=probe, jit_compile=cfg.jit_compile)
    return model


def read_log(path):
    """Rows of a CSVLogger file as dicts of floats (empty list when absent).

    Reading stops at a row that does not parse (a line torn by a kill while it was written): the rows after it
    belong to no checkpoint, and ``run`` drops them on resume.
    """
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append({k: float(v) for k, v in row.items() if k is not None and v not in ("", None)})
            except (TypeError, ValueError):
                break
    return rows


def _check_resume(cfg, out):
    """Check that ``out`` holds a run made with ``cfg``'s settings; return ``cfg`` with its precision decided.

    ``precision="auto"`` takes the run's own precision, so a run resumed on
    another machine continues in the precision it started with.
    """
    saved_path = os.path.join(out, "config.json")
    if not os.path.exists(saved_path):
        raise ConfigError(f"--resume: {out} holds no run (no config.json). Start it without --resume.")
    with open(saved_path) as f:
        saved = upgrade_run_settings(json.load(f))
    if saved.get("precision"):
        saved["precision"] = resolve_precision(saved["precision"])
        if cfg.precision == "auto":
            cfg = dataclasses.replace(cfg, precision=saved["precision"])
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision))
    diffs = settings_diff(cfg, saved)
    if diffs:
        raise ConfigError(
            f"--resume: {out} was trained with other settings ({'; '.join(diffs)}). "
            "Resume with the same settings, or start a new run with another --out."
        )
    return cfg


def worker_folder(strategy, out):
    """Where this worker writes: ``out`` on the chief (or a single machine), ``out/.worker-N`` elsewhere.

    Every worker of a ``MultiWorkerMirroredStrategy`` must run the same saves
    (they may read variables collectively), so the other workers save into a
    private folder, removed at the end of the run. The chief owns (locks) the
    run folder, each other worker its own folder.
    """
    if strategy.extended.should_checkpoint:
        return out
    return os.path.join(out, f".worker-{strategy.cluster_resolver.task_id}")


def prepare_worker_folder(folder, out, resume):
    """Empty a non-chief worker's folder (its lock file stays) and, on ``--resume``, copy the chief's config,
    log and checkpoints into it (the run folder must then be on a file system that every worker sees)."""
    for name in os.listdir(folder):
        if name != LOCK_NAME:
            path = os.path.join(folder, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    for name in ("config.json", "log.csv", "best.keras", "best.json", "checkpoint") if resume else ():
        src = os.path.join(out, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(folder, name))
        elif os.path.exists(src):
            shutil.copy2(src, folder)




RESUME_HINT = "continue with the same command and --resume"


def _stop_line(signum, out, resume_hint):
    """The line of a stop outside the training steps (loading, validation, the final scores)."""
    newest = cbs.ResumableCheckpoint.newest_complete(os.path.join(out, "checkpoint"))
    if newest is None:
        return f"stopped before the first checkpoint ({signal_name(signum)}): nothing to continue; start the run again"
    return f"stopped ({signal_name(signum)}): checkpoint {newest[0]} (epoch {newest[1]}); {resume_hint}"


def run(cfg, argv=None, resume_hint=RESUME_HINT):
    """Train, pick the best-validation epoch, score it, and write the run folder.

    Writes into ``cfg.out``: ``config.json``, ``log.csv`` (one row per epoch),
    ``logs/`` (TensorBoard), ``checkpoint/last.keras`` and ``previous.keras`` (every epoch, for
    ``--resume``), ``best.keras`` + ``best.json`` (the epoch of best validation probe accuracy),
    ``results.json``, ``export/`` (SavedModel; with ``classify_linear``, the
    classifier fitted by the post-hoc linear evaluation, unless ``cfg.linear_eval``
    is off) and ``interpolations.png``.

    SIGINT and SIGTERM stop the run with a checkpoint (``amr_keras.stopping``): ``RunStopped`` is raised, its
    message the one line to print.

    Args:
        cfg: a ``Config`` (resolved here if it still has preset fields unset).
        argv: the command line, recorded in the results.
        resume_hint: how to continue after a stop, for the line of ``RunStopped``.

    Returns:
        The results dict (also in ``results.json``).

    Raises:
        amr_keras.stopping.RunStopped: a SIGINT or SIGTERM stopped the run.
    """
    cfg = resolve(cfg)
    # Before any other TensorFlow op: MultiWorkerMirroredStrategy configures the runtime.
    strategy = make_strategy(cfg.strategy)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {replicas} replicas of the strategy.")
    if cfg.batch_size // replicas < cfg.k:
        raise ConfigError(
            f"Each of the {replicas} replicas gets {cfg.batch_size // replicas} images, fewer than k={cfg.k}: "
            "raise --batch-size."
        )
    if cfg.jit_compile and replicas > 1 and not tf.config.list_physical_devices("GPU"):
        # XLA has no collective operations on CPUs: a replicated step cannot be compiled.
        print(f"note: {replicas} CPU replicas of --strategy {cfg.strategy}: training without XLA (--jit-compile).")
        cfg = dataclasses.replace(cfg, jit_compile=False)
    out = worker_folder(strategy, cfg.out)
    created, owned = not os.path.isdir(out), False
    signals = StopSignals(lambda signum: _stop_line(signum, out, resume_hint))
    # Across workers a checkpoint is written by all of them together, so one worker cannot save alone on its own
    # signal: a multi-worker run keeps the default handlers (a signal ends the process; --resume continues from
    # the last epoch's checkpoint).
    handlers = contextlib.nullcontext() if _multi_worker(strategy) else signals.installed()
    try:
        with FolderLock(out), handlers, op_determinism_restored():
            owned = True
            if out != cfg.out:
                prepare_worker_folder(out, cfg.out, cfg.resume)
            results = _train(cfg, strategy, out, argv, signals, resume_hint)
    except BaseException as e:
        if created and owned and not os.path.exists(os.path.join(out, "config.json")):
            shutil.rmtree(out, ignore_errors=True)  # a start that failed leaves no folder behind
        if is_write_failure(e):
            raise RunWriteError(_write_failure_message(e, cfg, out)) from e
        raise
    if out != cfg.out:
        shutil.rmtree(out, ignore_errors=True)
    return results


def _write_failure_message(e, cfg, out):
    """What could not be written, what is intact, and how to go on."""
    path = failed_path(e, out)
    ckpt = cbs.ResumableCheckpoint.newest_complete(os.path.join(out, "checkpoint"))
    if os.path.exists(os.path.join(out, "results.json")):
        kept = "The run's results.json from before is intact."
    elif ckpt is None:
        kept = "No checkpoint was written yet (the first is written at the end of epoch 1)."
    else:
        kept = f"The last complete checkpoint, {ckpt[0]} (epoch {ckpt[1]}), is intact."
    again = (f"continue with the same command and --resume (--out {cfg.out})" if ckpt is not None
             else "start the run again")
    return (f"could not write {path} ({describe_os_error(_os_cause(e))}). {kept} Partial files were removed. Free "
            f"some space (or make {out} writable), then {again}.")


def _os_cause(e):
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def _train(cfg, strategy, out, argv, signals, resume_hint):
    """``run``'s work, in a folder this process owns."""
    replicas = strategy.num_replicas_in_sync
    clean_temporaries(out)
    ckpt_dir = os.path.join(out, "checkpoint")
    asked_precision = cfg.precision
    if cfg.resume:
        cfg = _check_resume(cfg, out)
    elif os.path.exists(os.path.join(out, "config.json")):
        raise ConfigError(f"{out} already holds a run. Pass --resume to continue it, or choose another --out.")
    else:
        cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision))
    if asked_precision == "auto" and not cfg.resume:
        print(f"precision: {cfg.precision} (auto: {native_bfloat16()[1]}; --precision float32 to change it)")
    if cfg.deterministic:
        # Deterministic kernels (and the seeds below): a resumed run ends as the uninterrupted one.
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.seed)
    splits = load_dataset(cfg.dataset, data_dir=cfg.data_dir, batch_size=cfg.batch_size, seed=cfg.seed,
                          tfds_data_dir=cfg.tfds_data_dir, eval_batch_size=max(cfg.batch_size, 256),
                          train_size=cfg.train_size, with_attributes=cfg.cls > 0, **data_options(cfg))
    # Written once the settings and the data are known to be good, so a failed start leaves no run behind.
    os.makedirs(out, exist_ok=True)
    write_json_atomically(os.path.join(out, "config.json"), dataclasses.asdict(cfg), indent=2)
    info = splits.info
    steps = cfg.steps_per_epoch or info.num_train // cfg.batch_size
    ckpt = cbs.ResumableCheckpoint(ckpt_dir)
    log_path = os.path.join(out, "log.csv")

    with precision_scope(cfg.precision):
        with strategy.scope():
            # The newest readable checkpoint (last.keras, else previous.keras), or none.
            model, initial_epoch = ckpt.restore(keras.saving.load_model) if cfg.resume else (None, 0)
            if model is not None:
                model.jit_compile = cfg.jit_compile  # the checkpoint's own setting otherwise
            else:
                model = build_model(cfg, info.colors, info.num_classes, steps, attribute_groups=info.attributes)
        if cfg.resume and initial_epoch == 0:
            print(f"--resume: no finished epoch in {ckpt_dir}; starting from the beginning.")
        if cfg.resume:
            # Drop log rows of epochs after the checkpoint (a crash between the two writes, or a fallback).
            rows = read_log(log_path)[:initial_epoch]
            _rewrite_log(log_path, rows)
        else:
            rows = []
            if os.path.exists(log_path):
                os.remove(log_path)
        best_path = os.path.join(out, "best.keras")
        best_ckpt = cbs.BestCheckpoint(best_path, ckpt_dir)
        if cfg.resume:
            best_ckpt.restore(initial_epoch, rows)
        callbacks = [
            cbs.NonFiniteLossGuard(ckpt.last_good_hint),
            cbs.EpochTimer(cfg.batch_size),
            *_factorvae_curve(cfg, model),
            best_ckpt,
            None,  # the CSVLogger of each fit (below)
            keras.callbacks.TensorBoard(os.path.join(out, "logs")),
            ckpt,
        ]
        if cfg.epoch_figures:
            from amr_keras.plots import InterpolationCallback

            pairs = _figure_pairs(splits, 6, cfg.seed)
            callbacks.append(InterpolationCallback(pairs[0], pairs[1], os.path.join(out, "figures")))
        verbose = cfg.verbose if cfg.verbose is not None else (1 if sys.stdout.isatty() else 2)
        # A checkpoint written mid-epoch (a stop, --checkpoint-every) holds the steps of the next epoch it did.
        steps_done = ckpt.restored_steps if cfg.resume and initial_epoch < cfg.epochs else 0
        if steps_done:
            print(f"--resume: continuing epoch {initial_epoch + 1} at step {steps_done + 1} of {steps}.")
        every = None if cfg.checkpoint_every is None else 60.0 * cfg.checkpoint_every
        if every and _multi_worker(strategy):
            # Each worker's timer runs on its own, but a checkpoint is written by all workers together.
            print("note: --checkpoint-every is not supported across workers; checkpoints are written at the end of "
                  "each epoch.")
            every = None
        while initial_epoch < cfg.epochs:
            # A resumed mid-epoch checkpoint: first the rest of its epoch, then the other epochs in a second fit.
            end = initial_epoch + 1 if steps_done else cfg.epochs
            train_ds = train_pipeline(*splits.arrays["train"], cfg.batch_size, seed=cfg.seed,
                                      start_step=initial_epoch * steps + steps_done,
                                      attributes=splits.attributes["train"] if cfg.cls > 0 else None)
            stopper = GracefulStop(signals, ckpt, steps, first_step=steps_done, checkpoint_every=every,
                                   resume_hint=resume_hint)
            fit_callbacks = [keras.callbacks.CSVLogger(log_path, append=os.path.exists(log_path)) if c is None else c
                             for c in callbacks] + [stopper]
            # shuffle=False: train_ds is already shuffled per epoch (seeded); Keras ignores the flag for
            # datasets but warns when it is left at True.
            model.fit(train_ds, steps_per_epoch=steps - steps_done, epochs=end, initial_epoch=initial_epoch,
                      validation_data=splits.val, callbacks=fit_callbacks, verbose=verbose, shuffle=False)
            initial_epoch, steps_done = end, 0

        # Score the best-validation epoch (or, with score_epoch "last", the final model); the test split is used
        # once, here.
        rows = read_log(log_path)
        if cfg.score_epoch == "last" or not info.labelled:  # unlabelled: no validation accuracy to pick by
            scored_epoch = len(rows)  # the model fit left, or the last checkpoint's when resumed after the end
        else:
            scored_epoch = _load_best(model, best_ckpt, best_path, rows)
        test_acc = None
        if splits.test is not None and info.labelled:
            test_acc = float(model.evaluate(splits.test, verbose=0, return_dict=True)["probe_accuracy"])
        results = {
            "dataset": cfg.dataset,
            "source": info.source,
            "image_shape": list(info.image_shape), "num_classes": info.num_classes,
            **({"class_names": list(info.class_names)} if info.class_names else {}),
            "image_size": cfg.image_size, "channels": cfg.channels,
            "attribute_groups": info.attributes.to_json() if info.attributes else None,
            "cls": cfg.cls, "class_mixer": cfg.class_mixer, "mask_prior": cfg.mask_prior,
            "num_train": info.num_train, "num_val": info.num_val, "num_test": info.num_test,
            "train_size": cfg.train_size, "code_channels": cfg.code_channels, "steps_per_epoch": steps,
            "mixer": cfg.mixer, "k": cfg.k, "lamb": cfg.lamb, "acai_gamma": cfg.acai_gamma,
            "acai_weight": cfg.acai_weight, "recon_gan": cfg.recon_gan, "preset": cfg.preset, "lr": cfg.lr,
            "d_lr": cfg.d_lr, "probe_lr": cfg.probe_lr, "probe": cfg.probe, "schedule": cfg.schedule,
            "batch_size": cfg.batch_size,
            "update_g_every": cfg.update_g_every, "depth": cfg.depth, "seed": cfg.seed,
            "arch": cfg.arch, "model": cfg.model, "beta_kl": cfg.beta_kl, "kl_reduction": cfg.kl_reduction,
            "adam_beta1": cfg.adam_beta1, "data_version": cfg.data_version, "recon": cfg.recon,
            "precision": cfg.precision, "compute_dtype": compute_dtype(model), "deterministic": cfg.deterministic,
            "epochs": len(rows),
            "score_epoch": cfg.score_epoch,
            "best_epoch": scored_epoch,  # the epoch whose model every score below is taken on
            "best_val_probe_accuracy": rows[scored_epoch - 1]["val_probe_accuracy"] if info.labelled else None,
            "labelled": info.labelled,
            "test_probe_accuracy": test_acc,
            "train_seconds": round(sum(r.get("epoch_seconds", 0.0) for r in rows), 2),
            "images_per_second": round(steps * cfg.batch_size * len(rows)
                                       / max(sum(r.get("epoch_seconds", 0.0) for r in rows), 1e-9), 1),
            "images_per_second_after_first_epoch": (
                round(float(np.median([r["images_per_second"] for r in rows[1:]])), 1) if len(rows) > 1 else None),
            "replicas": replicas,
            "cpu_model": cpu_info()["model"],  # speeds depend on it
            "command": " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv)),
        }
        # Post-hoc metrics (amr_keras.metrics: the linear evaluation, FactorVAE on dSprites, any registered one);
        # without the linear evaluation the export has no classify_linear.
        # Without labels there is nothing for the post-hoc classifiers to learn.
        scores, context = score_run(cfg if info.labelled else dataclasses.replace(cfg, linear_eval=False), model,
                                    splits)
        results.update(scores)
        classifier = context.get("classifier")
        if cfg.export:
            _export_and_draw(model, splits, results, out, cfg.seed, classifier)
        # Written last: a run folder with results.json is complete (export and figure included).
        write_json_atomically(os.path.join(out, "results.json"), results, indent=2)
    return results


def _load_best(model, best_ckpt, best_path, rows):
    """Load the best-validation epoch's weights into ``model``; returns that epoch."""
    if best_ckpt.best is None:
        # Resumed after the last epoch with no best.keras of a kept epoch left: the last epoch stands in.
        print(f"note: no best-epoch model of a kept epoch is left; scoring the last epoch ({len(rows)}).")
        best_ckpt.set_model(model)
        best_ckpt.save(len(rows), rows[-1]["val_probe_accuracy"])
    best_epoch = best_ckpt.best[0]  # the epoch whose weights best.keras holds
    top_epoch = int(np.argmax([r["val_probe_accuracy"] for r in rows])) + 1
    if rows[top_epoch - 1]["val_probe_accuracy"] > rows[best_epoch - 1]["val_probe_accuracy"]:
        print(f"note: epoch {top_epoch} had the best validation accuracy, but its weights were lost with a "
              f"discarded checkpoint; scoring epoch {best_epoch}, the best epoch whose weights are kept.")
    model.load_weights(best_path)
    return best_epoch


def clean_temporaries(out):
    """Remove what a process killed while writing left behind (temporary files and folders of whole-file writes)."""
    for folder in (out, os.path.join(out, "checkpoint")):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if ".tmp" in name or name in ("export.old",):
                path = os.path.join(folder, name)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else remove_quietly(path)


def _factorvae_curve(cfg, model):
    """``[FactorVAECurve]`` for a dSprites run with ``factorvae_curve_votes``, else ``[]``."""
    if not dataset_spec(cfg.dataset).factors or not cfg.factorvae_curve_votes:
        return []
    from amr_keras.data import preprocess
    from amr_keras.disentanglement import image_encoder
    from amr_keras.dsprites import factor_source

    source, _ = factor_source(cfg.dataset, cfg.data_dir, cfg.tfds_data_dir)
    return [cbs.FactorVAECurve(image_encoder(model.encode, preprocess), source, votes=cfg.factorvae_curve_votes,
                               prune_threshold=cfg.factorvae_prune, prune_relative=cfg.factorvae_prune_relative)]


def _figure_pairs(splits, n, seed):
    """``n`` fixed pairs of images in [0, 1] (source size) from the test split, else validation, else training:
    the first with ``2 * n`` images (a small folder of one's own may have fewer in test and validation)."""
    from amr_keras.plots import pick_pairs

    for name in ("test", "val", "train"):
        if name in splits.arrays and len(splits.arrays[name][0]) >= 2 * n:
            return pick_pairs(splits.arrays[name][0], n, seed)
    images = splits.arrays["train"][0]
    return pick_pairs(images, max(1, len(images) // 2), seed)


def _export_and_draw(model, splits, results, out, seed, classifier):
    from amr_keras.export import export_model, load_export
    from amr_keras.plots import interpolation_grid

    # Each written next to its final name and moved into place: a kill leaves the old export or the new one.
    export_dir = os.path.join(out, "export")
    tmp_dir, old_dir = export_dir + ".tmp", export_dir + ".old"
    with guarded_write(export_dir, tmp_dir):
        export_model(model, tmp_dir, tuple(results["image_shape"]), metadata=results, linear_head=classifier)
        fault_point("export", tmp_dir)
        if os.path.exists(export_dir):
            os.replace(export_dir, old_dir)
        os.replace(tmp_dir, export_dir)
    shutil.rmtree(old_dir, ignore_errors=True)
    figure = os.path.join(out, "interpolations.png")
    tmp_figure = os.path.join(out, "interpolations.tmp.png")
    a, b = _figure_pairs(splits, 6, seed)
    with guarded_write(figure, tmp_figure):
        interpolation_grid(load_export(export_dir), a, b, tmp_figure)
        fault_point("interpolations.png", tmp_figure)
        os.replace(tmp_figure, figure)


def _rewrite_log(path, rows):
    if not rows:
        if os.path.exists(path):
            os.remove(path)
        return
    keys = list(rows[0])
    tmp = path + ".tmp"  # replaced whole: other workers may be copying it (see worker_folder)
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch"] + [k for k in keys if k != "epoch"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "epoch": int(row["epoch"])})
    os.replace(tmp, path)
