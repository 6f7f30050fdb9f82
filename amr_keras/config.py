"""Training settings: one dataclass, presets, validation, run names and JSON config files.

The scripts' command-line parser over these settings is ``amr_keras.parser``.

Precedence, lowest to highest: the preset (by default ``mnist_full`` for ``--dataset mnist``
and ``fast`` for every other dataset; see ``default_preset``; or ``official``),
a ``--config`` JSON file (e.g. ``best_hyperparameters.json`` from ``scripts/tune.py``),
then flags given on the command line.
"""

import dataclasses
import json
import os

from amr_keras.data import DATASETS, dataset_names, dataset_spec
from amr_keras.dsprites import RENDERER_VERSION
from amr_keras.mixers import check_mixer, mixer_names
from amr_keras.bvae import KL_REDUCTIONS
from amr_keras.classmix import MASK_PRIOR, check_class_mixing
from amr_keras.model import ACAI_GAMMA, ACAI_WEIGHT, RECON_LOSSES, check_acai_settings, check_recon_gan
from amr_keras.networks import ARCHS, BURGESS_CODE, BURGESS_SIZE, IMAGE_SIZES, input_size
from amr_keras.precision import PRECISIONS
from amr_keras.probe import PROBES

STRATEGIES = ("default", "mirrored", "multiworker")
# Adam's beta_1: the official AMR code's 0.5; the official beta-VAE scripts (exps/dsprite/bvae_*.sh) use 0.9.
AMR_BETA1, BVAE_BETA1 = 0.5, 0.9
# Datasets whose pixels changed once (a run records the version it trained on; older runs had version 1):
# dsprites_procedural's renderer was calibrated on real dSprites frames in version 2.
DATA_VERSIONS = {"dsprites_procedural": RENDERER_VERSION}
SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass
class Config:
    """Every setting of a training run. ``None`` fields are filled from the preset."""

    dataset: str = "mnist_sample"
    data_dir: str = None
    tfds_data_dir: str = None
    skip_bad_images: bool = False  # --dataset images: leave out undecodable files (counted) instead of stopping
    image_size: int = None  # --dataset images: side of the images and networks (networks.IMAGE_SIZES; None: 32)
    channels: int = None  # --dataset images: 3 (RGB) or 1 (grey); None: 3
    cache: bool = None  # --dataset images: hold the decoded images in memory (True) or read the files (False)
    attributes: str = None  # --dataset images: table of the images' attributes (None: the folder's own, if any)
    train_size: int = None
    preset: str = None  # None: default_preset(dataset)
    mixer: str = "mixup"
    k: int = 2
    lamb: float = None
    beta: float = 0.0
    recon: str = None  # None: the preset's, else "l1"
    acai_gamma: float = ACAI_GAMMA
    acai_weight: float = ACAI_WEIGHT
    recon_gan: bool = True
    # Class-conditional mixing (amr_keras.classmix): weight of the attribute losses (0: off), the mixer, and the
    # weight of the mask prior.
    cls: float = 0.0
    class_mixer: str = "informed"
    mask_prior: float = MASK_PRIOR
    lr: float = None
    d_lr: float = None
    probe_lr: float = None
    probe: str = "whiten"
    schedule: str = None
    batch_size: int = None
    epochs: int = None
    steps_per_epoch: int = None
    update_g_every: int = None
    depth: int = None
    code_channels: int = 2
    slope: float = None
    seed: int = 0
    out: str = None
    resume: bool = False
    strategy: str = "default"
    precision: str = "auto"
    jit_compile: bool = None
    linear_eval: bool = True
    export: bool = True
    epoch_figures: bool = False
    deterministic: bool = False
    checkpoint_every: float = None  # minutes between mid-epoch checkpoints (None: only at the end of each epoch)
    verbose: int = None
    arch: str = None  # None: the dataset's (DATASET_ARCHS)
    model: str = "amr"  # or "bvae" (amr_keras.bvae)
    beta_kl: float = None  # bvae only: weight of the KL term
    kl_reduction: str = None  # bvae only: "mean" (default; the official AMR code) or "sum" over the code values
    adam_beta1: float = None  # autoencoder and discriminator; None: 0.5 (the official AMR code), 0.9 for --model bvae
    score_epoch: str = None  # "best" (best validation probe accuracy; None: the preset's) or "last"
    # FactorVAE metric at the end of a dSprites run (amr_keras.disentanglement): votes of the majority-vote
    # classifier, held-out votes it is scored on, images per vote, the pruning of collapsed code values, and the
    # votes of the cheaper estimate logged every epoch (0: none).
    factorvae_votes: int = 800
    factorvae_eval_votes: int = 800
    factorvae_samples: int = 800
    factorvae_prune: float = 0.05
    factorvae_prune_relative: bool = False
    factorvae_curve_votes: int = None
    # Version of the dataset's pixels (set from the dataset, not a flag): a run is only resumed or recorded as
    # finished on the pixels it trained on.
    data_version: int = None


# Settings that define a run: a --resume folder must have been made with the same ones.
RUN_KEYS = ("dataset", "data_dir", "train_size", "preset", "mixer", "k", "lamb", "beta", "recon", "acai_gamma",
            "acai_weight", "recon_gan", "lr", "d_lr", "probe_lr", "probe", "schedule", "batch_size", "epochs",
            "steps_per_epoch", "update_g_every", "depth",
            "code_channels", "slope", "seed", "precision")

# Settings added with dSprites (Table 4): a run made before them had the acai networks and was an AMR.
RUN_KEYS = RUN_KEYS + ("arch", "model", "beta_kl")
# Settings added with the faithful Table 4 (official KL weight, calibrated renderer, the final model scored).
RUN_KEYS = RUN_KEYS + ("kl_reduction", "adam_beta1", "score_epoch", "data_version")
# Settings added with image folders at other sizes, and with class-conditional mixing.
RUN_KEYS = RUN_KEYS + ("image_size", "channels", "cls", "class_mixer", "mask_prior")
# Settings a dataset reads as it loads (DatasetSpec.options), and the Config fields that hold them.
DATA_OPTIONS = ("skip_bad_images", "image_size", "channels", "cache", "attributes")
MODELS = ("amr", "bvae")
SCORE_EPOCHS = ("best", "last")

# Default recipe for a few minutes on a CPU (departures from the reference are listed in docs/method.md).
# No XLA: with oneDNN on, the plain graph trains as fast at batch 16 on a 2-core CPU, starts 10 s sooner
# and takes 700 MiB less memory (results/bench_cpu_2core.jsonl); --jit-compile turns it on.
# lamb 100: with lamb 10 the adversarial terms win early and the decoder draws one generic digit for every code
# (on mnist_sample).
# Batch 16, lr 1e-3: at a fixed CPU budget more, smaller steps learn the code faster (post-hoc linear
# accuracy on validation after two epochs: 91.2% at batch 64, lr 5e-4; 95.0% at batch 16, lr 1e-3).
# Probe lr 1e-2: the probe's own optimizer, not the moving code, is what held it back at 2e-3 (a probe
# trained afresh on frozen final codes for the same 5 epochs: 92.5% test at 2e-3, 93.3% at 1e-2).
_FAST = dict(lamb=100.0, lr=1e-3, d_lr=1e-3, probe_lr=1e-2, schedule="cosine", batch_size=16,
             epochs=5, update_g_every=1, depth=16, slope=0.2, jit_compile=False)

PRESETS = {
    # Follows the reference code: Adam 1e-4 everywhere, constant rate, the
    # autoencoder updated every 5th step, LeakyReLU slope 0.01 (PyTorch default).
    "official": dict(lamb=10.0, lr=1e-4, d_lr=1e-4, probe_lr=1e-4, schedule="constant", batch_size=64,
                     epochs=20, update_g_every=5, depth=16, slope=0.01, jit_compile=False),
    "fast": _FAST,
    # `fast` on MNIST's full training split (50,000 images) within 200,000 training images per run on a CPU:
    # 4 epochs, and lamb 5, which the lamb sweep picked on validation (results/lamb_sweep_mnist.md: mixup's
    # post-hoc linear accuracy on validation, seeds 0 and 1, 94.70% at lamb 5, 94.18% at 10, 93.52% at 30;
    # at lamb 2 mixup stops reconstructing), and Table 1 at lamb 5 confirmed for every mixing row.
    # `scripts/reproduce.py --table 1` trains every row of Table 1 with it. Tables 2 and 3 were made at lamb
    # 10 (the preset's value then) and keep it (see amr_keras/tables/accuracy.py).
    "mnist_full": {**_FAST, "lamb": 5.0, "epochs": 4},
}

# dSprites (Table 4; the official exps/dsprite/): lamb 1 and the reconstruction summed over pixels (bce_sum),
# batch 64, the official Adam betas; the 64x64 networks of Burgess et al. with 32 filters. The official rate
# (1e-4, 500 epochs) is far beyond a CPU: lr 5e-4 with cosine decay and the autoencoder updated every step,
# as the fast preset departs from the official one (not tuned on dSprites). 6 epochs of the 60,000 training
# images (360,000 images seen): the budget of every row of Table 4 (amr_keras.tables.table4), an estimated 12 to 18
# minutes of training on a 2-core CPU with bfloat16 units (from the step cost of a few tiny steps, not measured).
# Every model is scored at its last epoch, as disentanglement_lib scores a model: the shape probe that picks the
# best epoch elsewhere is barely above chance on dSprites, so picking by it picks by noise. A FactorVAE estimate
# on 100 + 100 votes is logged every epoch (factorvae_estimate in log.csv) to show the curve.
PRESETS["dsprites"] = dict(lamb=1.0, recon="bce", lr=5e-4, d_lr=5e-4, probe_lr=1e-2, schedule="cosine", batch_size=64,
                           epochs=6, update_g_every=1, depth=32, slope=0.2, jit_compile=False, score_epoch="last",
                           factorvae_curve_votes=100)

# Each dataset names its default preset and networks in its registry entry (amr_keras.data.DatasetSpec). MNIST's
# full split (50,000 training images) wants a low lamb (5): there it keeps reconstructions sharp and raised the
# linear accuracies (see `mnist_full`), while on the 9,000-image mnist_sample lamb 10 already collapses the decoder
# within one epoch, so `fast` keeps lamb 100. dSprites gets the 64x64 burgess networks, every other dataset acai.
# The two views below are of the built-in datasets.
DATASET_PRESETS = {name: dataset_spec(name).preset for name in DATASETS if dataset_spec(name).preset != "fast"}
DATASET_ARCHS = {name: dataset_spec(name).arch for name in DATASETS if dataset_spec(name).arch != "acai"}


def default_arch(dataset):
    """The network family (``networks.ARCHS``) a run on ``dataset`` gets when none is named."""
    return dataset_spec(dataset).arch if dataset in dataset_names() else "acai"


def network_size(cfg):
    """Side of the images the networks of ``cfg`` take: ``cfg.image_size`` when set, else the dataset's (28 and
    32 give 32, dSprites 64)."""
    if cfg.image_size is not None:
        return cfg.image_size
    return input_size(dataset_spec(cfg.dataset).source_shape[0]) if cfg.dataset in dataset_names() else 32


def data_options(cfg):
    """The settings of ``cfg`` that its dataset reads as it loads (``load_dataset``'s keyword arguments)."""
    return {name: getattr(cfg, name) for name in DATA_OPTIONS}


def default_preset(dataset):
    """The preset a run on ``dataset`` gets when none is named (its registry entry's)."""
    return dataset_spec(dataset).preset if dataset in dataset_names() else "fast"


# Keys a --config file may set (the tuner writes a subset of them).
CONFIG_FILE_KEYS = tuple(f.name for f in dataclasses.fields(Config) if f.name not in ("out", "resume", "verbose"))


class ConfigError(ValueError):
    """A setting that is out of range or a malformed config file; the message says what is accepted."""


def validate(cfg):
    """Check every setting, raising ``ConfigError`` with what was wrong and what is accepted."""
    if cfg.dataset not in dataset_names():
        raise ConfigError(f"Unknown dataset {cfg.dataset!r}. Choose one of: {', '.join(dataset_names())}.")
    if cfg.mixer not in mixer_names():
        raise ConfigError(f"Unknown mixer {cfg.mixer!r}. Choose one of: {', '.join(mixer_names())}.")
    if cfg.preset not in PRESETS:
        raise ConfigError(f"Unknown preset {cfg.preset!r}. Choose one of: {', '.join(PRESETS)}.")
    if cfg.recon not in RECON_LOSSES:
        raise ConfigError(f"Unknown reconstruction loss {cfg.recon!r}. Choose one of: {', '.join(RECON_LOSSES)}.")
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"Unknown strategy {cfg.strategy!r}. Choose one of: {', '.join(STRATEGIES)}.")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision {cfg.precision!r}. Choose one of: {', '.join(PRECISIONS)}.")
    if cfg.probe not in PROBES:
        raise ConfigError(f"Unknown probe {cfg.probe!r}. Choose one of: {', '.join(PROBES)} (whiten: running "
                          "whitening and averaged weights, the default; batchnorm: the probe of older runs).")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"Unknown schedule {cfg.schedule!r}. Choose one of: {', '.join(SCHEDULES)}.")
    if not isinstance(cfg.k, int) or cfg.k < 2:
        raise ConfigError(f"k (codes per mix) must be an integer >= 2, got {cfg.k!r}.")
    for name in ("lamb", "lr", "d_lr", "probe_lr"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{name} must be a number > 0, got {value!r}.")
    if not isinstance(cfg.beta, (int, float)) or cfg.beta < 0:
        raise ConfigError(f"beta must be a number >= 0, got {cfg.beta!r}.")
    for name in ("acai_gamma", "acai_weight"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}.")
    try:
        check_mixer(cfg.mixer, cfg.k)
        check_acai_settings(cfg.mixer, cfg.acai_gamma, cfg.acai_weight)
        check_recon_gan(cfg.mixer, cfg.recon_gan)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    for name in ("batch_size", "epochs", "update_g_every", "depth"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}.")
    for name in ("train_size", "steps_per_epoch"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{name} must be an integer >= 1 (or left unset), got {value!r}.")
    if not isinstance(cfg.code_channels, int) or isinstance(cfg.code_channels, bool) or cfg.code_channels < 1:
        raise ConfigError(f"code_channels must be an integer >= 1 (the code is 4x4xC), got {cfg.code_channels!r}.")
    if cfg.mixer == "bernoulli" and cfg.code_channels < 2:
        raise ConfigError("--mixer bernoulli takes whole feature maps from each code: it needs --code-channels >= 2.")
    if cfg.train_size is not None and cfg.train_size < cfg.batch_size:
        raise ConfigError(f"train_size {cfg.train_size} is smaller than one batch ({cfg.batch_size} images): "
                          "raise --train-size or lower --batch-size.")
    if cfg.batch_size < cfg.k:
        raise ConfigError(f"batch_size ({cfg.batch_size}) must be at least k ({cfg.k}): mixes pair codes of one batch.")
    _validate_image_options(cfg)
    try:
        check_class_mixing(cfg.cls, cfg.class_mixer, cfg.mask_prior)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if cfg.cls > 0 and (cfg.mixer == "acai" or cfg.model != "amr"):
        raise ConfigError("--cls trains class-conditional mixes beside an AMR's own: use it with --model amr and a "
                          "mixer other than acai.")
    if cfg.data_dir is not None and not os.path.isdir(cfg.data_dir):
        raise ConfigError(f"--data-dir {cfg.data_dir!r} does not exist or is not a folder.")
    if cfg.dataset == "mnist_sample" and cfg.data_dir is not None:
        raise ConfigError("mnist_sample ships with the package: drop --data-dir, or use --dataset mnist with it.")
    _validate_arch_and_model(cfg)
    return cfg


def _validate_image_options(cfg):
    """The checks of --image-size and --channels."""
    if cfg.image_size is not None and (isinstance(cfg.image_size, bool) or cfg.image_size not in IMAGE_SIZES):
        raise ConfigError(f"--image-size takes {', '.join(map(str, IMAGE_SIZES))} (pixels a side), got "
                          f"{cfg.image_size!r}.")
    if cfg.channels is not None and (isinstance(cfg.channels, bool) or cfg.channels not in (1, 3)):
        raise ConfigError(f"--channels takes 1 (grey) or 3 (RGB), got {cfg.channels!r}.")
    taken = dataset_spec(cfg.dataset).options if cfg.dataset in dataset_names() else ()
    given = [name for name in ("image_size", "channels") if getattr(cfg, name) is not None and name not in taken]
    if cfg.cache is not None and "cache" not in taken:
        raise ConfigError(f"--{'' if cfg.cache else 'no-'}cache applies to --dataset images (the built-in datasets "
                          "are held in memory): leave it out.")
    if cfg.attributes is not None and "attributes" not in taken:
        raise ConfigError(f"--attributes applies to --dataset images (--dataset {cfg.dataset} has attributes of its "
                          "own: its factors or its class): leave it out.")
    if cfg.attributes is not None and not os.path.isfile(cfg.attributes):
        raise ConfigError(f"--attributes {cfg.attributes!r} does not exist or is not a file.")
    if given:
        flags = " and ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(f"{flags} {'sets' if len(given) == 1 else 'set'} the images of --dataset images; "
                          f"--dataset {cfg.dataset} has its own size and channels: leave {flags} out.")


def _validate_arch_and_model(cfg):
    """The checks of --arch, --model, --beta-kl and the FactorVAE settings."""
    if cfg.arch not in ARCHS:
        raise ConfigError(f"Unknown arch {cfg.arch!r}. Choose one of: {', '.join(ARCHS)}.")
    if cfg.arch == "burgess" and network_size(cfg) != BURGESS_SIZE:
        raise ConfigError(f"--arch burgess does not fit --dataset {cfg.dataset}: the burgess networks take 64x64 "
                          "images (dSprites, or --dataset images --image-size 64). Leave --arch out to get the "
                          "dataset's own.")
    if cfg.arch == "burgess" and cfg.code_channels != Config.code_channels:
        raise ConfigError(f"--code-channels sets the 4x4 code of --arch acai; the burgess code is flat "
                          f"({BURGESS_CODE} values): leave it out.")
    if cfg.model not in MODELS:
        raise ConfigError(f"Unknown model {cfg.model!r}. Choose one of: {', '.join(MODELS)}.")
    if cfg.model == "bvae":
        if cfg.arch != "burgess":
            raise ConfigError("--model bvae is built on the burgess networks: use it with a dSprites dataset.")
        if not isinstance(cfg.beta_kl, (int, float)) or isinstance(cfg.beta_kl, bool) or not cfg.beta_kl > 0:
            raise ConfigError(f"--model bvae needs --beta-kl B > 0 (weight of the KL term; the paper's baselines: "
                              f"100 and 110), got {cfg.beta_kl!r}.")
        if cfg.mixer != "none" or cfg.beta or not cfg.recon_gan:
            raise ConfigError("--model bvae has no mixing and no discriminator: leave out --mixer, --k, --beta and "
                              "--no-recon-gan.")
        if cfg.kl_reduction not in KL_REDUCTIONS:
            raise ConfigError(f"Unknown --kl-reduction {cfg.kl_reduction!r}. Choose one of: "
                              f"{', '.join(KL_REDUCTIONS)}.")
    elif cfg.beta_kl is not None or cfg.kl_reduction is not None:
        raise ConfigError("--beta-kl and --kl-reduction set the KL term of --model bvae: add --model bvae, or leave "
                          "them out.")
    if not isinstance(cfg.adam_beta1, (int, float)) or isinstance(cfg.adam_beta1, bool) or not 0 <= cfg.adam_beta1 < 1:
        raise ConfigError(f"adam_beta1 must be a number in [0, 1), got {cfg.adam_beta1!r}.")
    if cfg.score_epoch not in SCORE_EPOCHS:
        raise ConfigError(f"Unknown --score-epoch {cfg.score_epoch!r}. Choose one of: {', '.join(SCORE_EPOCHS)} "
                          "(best: the epoch of best validation probe accuracy; last: the final model).")
    for name in ("factorvae_votes", "factorvae_eval_votes", "factorvae_samples"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 2:
            raise ConfigError(f"{name} must be an integer >= 2, got {value!r}.")
    if cfg.checkpoint_every is not None and (not isinstance(cfg.checkpoint_every, (int, float))
                                             or isinstance(cfg.checkpoint_every, bool) or not cfg.checkpoint_every > 0):
        raise ConfigError(f"--checkpoint-every takes minutes > 0, got {cfg.checkpoint_every!r}.")
    value = cfg.factorvae_curve_votes
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value == 1:
        raise ConfigError(f"factorvae_curve_votes must be 0 (off) or an integer >= 2, got {value!r}.")
    if not isinstance(cfg.factorvae_prune, (int, float)) or isinstance(cfg.factorvae_prune, bool) \
            or cfg.factorvae_prune < 0:
        raise ConfigError(f"factorvae_prune must be a number >= 0, got {cfg.factorvae_prune!r}.")


def resolve(cfg):
    """Fill ``None`` fields from the preset and pick the output folder; returns a new, validated Config.

    No preset named (``preset=None``): the dataset's default, ``default_preset(cfg.dataset)``.
    """
    if cfg.preset is None:
        cfg = dataclasses.replace(cfg, preset=default_preset(cfg.dataset))
    if cfg.preset not in PRESETS:
        raise ConfigError(f"Unknown preset {cfg.preset!r}. Choose one of: {', '.join(PRESETS)}.")
    filled = {k: v for k, v in PRESETS[cfg.preset].items() if getattr(cfg, k) is None}
    cfg = dataclasses.replace(cfg, **filled)
    if cfg.recon is None:
        cfg = dataclasses.replace(cfg, recon="l1")
    if cfg.arch is None:
        cfg = dataclasses.replace(cfg, arch=default_arch(cfg.dataset))
    if cfg.model == "bvae" and cfg.mixer == Config.mixer and cfg.k == Config.k:
        cfg = dataclasses.replace(cfg, mixer="none")  # the default mixer means nothing to a beta-VAE
    if cfg.d_lr is None:
        cfg = dataclasses.replace(cfg, d_lr=cfg.lr)
    if cfg.model == "bvae" and cfg.kl_reduction is None:
        cfg = dataclasses.replace(cfg, kl_reduction="mean")
    if cfg.adam_beta1 is None:
        cfg = dataclasses.replace(cfg, adam_beta1=BVAE_BETA1 if cfg.model == "bvae" else AMR_BETA1)
    if cfg.score_epoch is None:
        cfg = dataclasses.replace(cfg, score_epoch="best")
    if cfg.factorvae_curve_votes is None:
        cfg = dataclasses.replace(cfg, factorvae_curve_votes=0)
    cfg = dataclasses.replace(cfg, data_version=DATA_VERSIONS.get(cfg.dataset))
    if cfg.out is None:
        cfg = dataclasses.replace(cfg, out=os.path.join("runs", default_run_name(cfg)))
    return validate(cfg)


def default_run_name(cfg, extra=""):
    """Run folder name from the settings that distinguish runs, e.g. ``mnist_sample-mixup-k2-lamb100-fast-s0``.

    ACAI runs with other than the default ``acai_gamma``/``acai_weight`` name them too,
    e.g. ``mnist_sample-acai-g0.2-w0.5-k2-lamb100-fast-s0``; so do a training subset
    (``mnist-n1000-mixup-...``), a code of other than 2 channels (``...-k2-c16-lamb10-...``) and a probe
    other than the default (``...-mnist_full-batchnorm-s0``); so does ``recon_gan`` off
    (``mnist-mixup-norecgan-k2-...``).

    Args:
        cfg: a Config whose ``lamb`` is set.
        extra: inserted after the preset, e.g. ``"-e2"`` gives ``mnist-none-k2-lamb10-mnist_full-e2-s0``.
    """
    data = cfg.dataset if cfg.train_size is None else f"{cfg.dataset}-n{cfg.train_size}"
    if cfg.image_size is not None:  # e.g. images-64px-mixup-k2-..., images-32px-grey-...
        data += f"-{cfg.image_size}px"
    if cfg.channels == 1:
        data += "-grey"
    if cfg.arch not in (None, default_arch(cfg.dataset)):
        data += f"-{cfg.arch}"
    if cfg.model == "bvae":  # e.g. dsprites_procedural-bvae-beta100-dsprites-s0
        probe = "" if cfg.probe == Config.probe else f"-{cfg.probe}"
        beta = "None" if cfg.beta_kl is None else f"{cfg.beta_kl:g}"  # None: refused by validate()
        kl = "-klsum" if cfg.kl_reduction == "sum" else ""
        return f"{data}-bvae-beta{beta}{kl}-{cfg.preset}{probe}{extra}-s{cfg.seed}"
    mixer = cfg.mixer
    if (cfg.acai_gamma, cfg.acai_weight) != (ACAI_GAMMA, ACAI_WEIGHT):
        mixer += f"-g{cfg.acai_gamma:g}-w{cfg.acai_weight:g}"
    code = "" if cfg.code_channels == Config.code_channels else f"-c{cfg.code_channels}"
    probe = "" if cfg.probe == Config.probe else f"-{cfg.probe}"
    if not cfg.recon_gan:
        mixer += "-norecgan"
    if cfg.cls > 0:  # e.g. dsprites_procedural-mixup-cls1-informed-k2-...
        mixer += f"-cls{cfg.cls:g}-{cfg.class_mixer}" + (f"-mp{cfg.mask_prior:g}" if cfg.mask_prior != MASK_PRIOR
                                                         else "")
    return f"{data}-{mixer}-k{cfg.k}{code}-lamb{cfg.lamb:g}-{cfg.preset}{probe}{extra}-s{cfg.seed}"


def settings_diff(cfg, saved, ignore=()):
    """How ``cfg`` departs from the settings of an existing run, key by key over ``RUN_KEYS``.

    A key absent from ``saved`` (a setting added after the run was made) counts as
    its default; ``data_dir`` is compared as a real path, so ``../data`` and
    ``/work/data`` name the same folder.

    Args:
        cfg: a resolved Config.
        saved: the run's ``config.json`` as a dict.
        ignore: keys left out of the comparison.

    Returns:
        A list of ``"key: run has X, now Y"`` strings, empty when the settings agree.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    diffs = []
    for key in RUN_KEYS:
        if key in ignore:
            continue
        ours, theirs = getattr(cfg, key), saved.get(key, defaults[key])
        if key == "data_dir" and ours is not None and theirs is not None:
            same = os.path.realpath(ours) == os.path.realpath(theirs)
        else:
            same = ours == theirs
        if not same:
            diffs.append(f"{key}: run has {theirs!r}, now {ours!r}")
    return diffs


def upgrade_legacy_settings(values):
    """Translate settings of older versions: ``mixed_precision`` (a bool) became ``precision``.

    Returns:
        A new dict; ``mixed_precision: true`` becomes ``precision: "mixed_float16"``, ``false`` becomes
        ``precision: "float32"`` (what such a run trained in), unless ``precision`` is already set.
    """
    values = dict(values)
    if "mixed_precision" in values:
        legacy = values.pop("mixed_precision")
        if values.get("precision") is None and legacy is not None:
            values["precision"] = "mixed_float16" if legacy else "float32"
    return values


def upgrade_run_settings(values):
    """The settings of a finished or started run (its ``config.json``, a ledger record) in today's terms:
    ``upgrade_legacy_settings``, ``probe: "batchnorm"`` for runs made before the probe was a setting
    (their probe was the batch-normalised one) and ``recon_gan: true`` for runs made before that was one."""
    values = upgrade_legacy_settings(values)
    values.setdefault("probe", "batchnorm")
    values.setdefault("arch", "acai")  # runs made before dSprites had the 32x32 networks
    # Runs made before these were settings: a beta-VAE summed its KL over the code values; every optimizer had
    # Adam's beta_1 0.5; the best-validation epoch was scored; dsprites_procedural had its first renderer.
    if values.get("model") == "bvae" and values.get("kl_reduction") is None:
        values["kl_reduction"] = "sum"
    if values.get("adam_beta1") is None:
        values["adam_beta1"] = AMR_BETA1
    if values.get("score_epoch") is None:
        values["score_epoch"] = "best"
    if values.get("data_version") is None and values.get("dataset") in DATA_VERSIONS:
        values["data_version"] = 1
    # Runs made before recon_gan was a setting had the term (a ledger line may hold null for it).
    if values.get("recon_gan") is None:
        values["recon_gan"] = True
    return values


def load_config_file(path):
    """Read a JSON settings file (a flat object of Config fields; tuner output also has a "values" key)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"Config file {path} does not exist.") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"Config file {path} is not valid JSON: {e}.") from e
    if isinstance(data, dict) and isinstance(data.get("values"), dict):
        data = data["values"]
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a JSON object of settings, got {type(data).__name__}.")
    data = upgrade_legacy_settings(data)
    unknown = sorted(set(data) - set(CONFIG_FILE_KEYS))
    if unknown:
        raise ConfigError(
            f"Config file {path} has unknown settings {unknown}. Accepted: {', '.join(CONFIG_FILE_KEYS)}."
        )
    types = {f.name: f.type for f in dataclasses.fields(Config)}
    for key, value in data.items():
        kind = types[key]
        ok = (
            value is None
            or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (kind is int and isinstance(value, int) and not isinstance(value, bool))
            or (kind is bool and isinstance(value, bool))
            or (kind is str and isinstance(value, str))
        )
        if not ok:
            raise ConfigError(f"Config file {path}: {key} must be {kind.__name__}, got {value!r}.")
    return data
