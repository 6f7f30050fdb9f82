"""Post-hoc metrics: what a finished run is scored by besides its online probe, one registry entry each.

A metric is a :class:`MetricSpec`: when it ``applies`` to a run's settings, :func:`amr_keras.train.run` calls
its ``compute`` on the scored model (the epoch ``results.json`` names) after training, and writes the fields it
returns into ``results.json``. Its ``keys`` are the fields that the ledger of finished runs
(``OUT/finished_runs.jsonl``, ``amr_keras.tables.ledger``) keeps, so a table rebuilt where the run folders are
gone still has them.

Built in: ``linear_eval`` (logistic regression and k-NN on the frozen codes, ``amr_keras.evaluate``; its
classifier goes on to the export's ``classify_linear`` endpoint) and ``factorvae`` (the FactorVAE score and the
official AMR code's function, ``amr_keras.disentanglement``, on datasets labelled by dSprites' factors).

Example, a metric of one more field:
    >>> import numpy as np
    >>> from amr_keras.evaluate import encode_arrays
    >>> def code_norm(cfg, model, splits, context):
    ...     codes = encode_arrays(model.encode, splits.arrays["val"][0][:256])  # uint8 in, codes (256, D) out
    ...     return {"val_code_norm": float(np.mean(np.linalg.norm(codes, axis=-1)))}
    >>> register_metric(MetricSpec("code_norm", code_norm, keys=("val_code_norm",)))
"""

import dataclasses
import time
from collections.abc import Callable

from amr_keras.data import dataset_spec
from amr_keras.registry import Registry


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One post-hoc metric.

    Attributes:
        name: its name (``metric_names()``).
        compute: ``compute(cfg, model, splits, context) -> dict`` of ``results.json`` fields: ``cfg`` the run's
            ``Config``, ``model`` the scored model, ``splits`` the run's data (``splits.arrays[split]`` is
            ``(uint8 images at the source size, labels)``; ``amr_keras.evaluate.encode_arrays`` encodes them);
            ``context`` a dict shared by the metrics of one
            run, where a metric may leave what a later step uses (``context["classifier"]``: the export's
            linear classifier).
        keys: the fields of ``results.json`` it writes that tables read (kept in the ledger).
        applies: ``applies(cfg) -> bool``: whether the run is scored by it (default: every run).
        summary: one line for the docs.
    """

    name: str
    compute: Callable
    keys: tuple = ()
    applies: Callable = lambda cfg: True
    summary: str = ""


_METRICS = Registry("metric")


def register_metric(spec, replace=False):
    """Add ``spec`` (a ``MetricSpec``) to the registry; runs started afterwards are scored by it.

    Raises:
        ValueError: a metric of that name is registered (unless ``replace``), or ``compute`` is not callable.
    """
    if not isinstance(spec, MetricSpec) or not callable(spec.compute) or not callable(spec.applies):
        raise ValueError("register_metric takes a MetricSpec whose compute and applies are callables.")
    return _METRICS.register(spec, replace)


def metric_names():
    """Names of the registered metrics, in registration order (the order they run in)."""
    return _METRICS.names()


def metric_spec(name):
    """The registered ``MetricSpec`` called ``name``.

    Raises:
        ValueError: no metric of that name; the message lists them.
    """
    return _METRICS.spec(name)


def result_keys():
    """Every registered metric's ``keys``, in order, each once: the ledger keeps these fields."""
    return tuple(dict.fromkeys(key for spec in _METRICS.values() for key in spec.keys))


def score_run(cfg, model, splits):
    """The fields of every registered metric that applies to ``cfg``, and the context they left.

    Returns:
        ``(fields, context)``: the merged ``results.json`` fields (each metric's wall time as
        ``NAME_seconds``) and the shared context dict (``context.get("classifier")``).
    """
    fields, context = {}, {}
    for spec in _METRICS.values():
        if not spec.applies(cfg):
            continue
        t0 = time.perf_counter()
        fields.update(spec.compute(cfg, model, splits, context))
        fields[f"{spec.name}_seconds"] = round(time.perf_counter() - t0, 1)
    return fields, context


# --------------------------------------------------------------------------- built-in metrics
def _linear_eval(cfg, model, splits, context):
    from amr_keras.evaluate import evaluate_codes

    scores, context["classifier"] = evaluate_codes(model.encode, splits.arrays, seed=cfg.seed,
                                                   return_classifier=True)
    return scores


def _factorvae(cfg, model, splits, context):
    """The FactorVAE score and the official AMR code's score on ``cfg``'s dSprites (the same draws, seed 0, for
    every run)."""
    from amr_keras.data import preprocess
    from amr_keras.disentanglement import factorvae_score, image_encoder
    from amr_keras.dsprites import factor_source

    source, _ = factor_source(cfg.dataset, cfg.data_dir, cfg.tfds_data_dir)
    return factorvae_score(image_encoder(model.encode, preprocess), source, votes=cfg.factorvae_votes,
                           eval_votes=cfg.factorvae_eval_votes, samples=cfg.factorvae_samples,
                           prune_threshold=cfg.factorvae_prune, prune_relative=cfg.factorvae_prune_relative,
                           seed=0, official=True)


register_metric(MetricSpec(
    "linear_eval", _linear_eval,
    keys=("linear_eval_val_accuracy", "linear_eval_test_accuracy", "knn_val_accuracy", "knn_test_accuracy",
          "linear_eval_l2", "linear_eval_converged"),
    applies=lambda cfg: bool(cfg.linear_eval),
    summary="logistic regression (L2 picked on validation) and 10-NN on the frozen codes",
))
register_metric(MetricSpec(
    "factorvae", _factorvae,
    keys=("factorvae_score", "factorvae_train_score", "factorvae_per_factor", "factorvae_assignment",
          "factorvae_active_dims", "factorvae_official_score", "factorvae_official_per_factor", "factorvae_seconds"),
    applies=lambda cfg: dataset_spec(cfg.dataset).factors,
    summary="the FactorVAE score (Kim & Mnih) and the official AMR code's function, on dSprites' factors",
))
