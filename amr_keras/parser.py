"""The command-line parser of the scripts: every ``Config`` field as a flag, and ``config_from_args``.

Precedence, lowest to highest: the preset, a ``--config`` JSON file (e.g. ``best_hyperparameters.json`` from
``scripts/tune.py``), then the flags given on the command line (their defaults are None, so that a given flag can
be told from an absent one).
"""

import argparse

from amr_keras.bvae import KL_REDUCTIONS
from amr_keras.classmix import CLASS_MIXERS, MASK_PRIOR
from amr_keras.config import (MODELS, PRESETS, SCHEDULES, SCORE_EPOCHS, STRATEGIES, Config, load_config_file,
                              resolve)
from amr_keras.data import dataset_names
from amr_keras.losses import ACAI_GAMMA, ACAI_WEIGHT, RECON_LOSSES
from amr_keras.mixers import mixer_names
from amr_keras.networks import ARCHS, IMAGE_SIZES
from amr_keras.precision import PRECISIONS
from amr_keras.probe import PROBES

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` only where a flag has a default of its own: the flags of ``Config`` fields default to
    None (the preset's value, which each help text names) and would all say ``(default: None)``."""

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(description="Train AMR."):
    """The argument parser of scripts/fit.py (defaults are None so that explicit flags can be told apart)."""
    p = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=dataset_names(),
                   help="dataset (default mnist_sample, shipped with the package); dsprites (official .npz in "
                        "--data-dir, or tfds) and dsprites_procedural (the same factor grid rendered in code, "
                        "not the official pixels) are labelled by their shape factor for the probe")
    d.add_argument("--data-dir", help="folder with the official raw files (offline); otherwise tensorflow-datasets")
    d.add_argument("--tfds-data-dir", help="where tensorflow-datasets keeps its data")
    d.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="--dataset images: leave out the files that cannot be decoded (counted in results.json's "
                        "source) instead of stopping with an error that names the first")
    d.add_argument("--image-size", type=int, choices=IMAGE_SIZES,
                   help="--dataset images: side the images are resized to (after a centre crop to a square), and "
                        "the networks take (default 32; 64 and 128 add one downsampling block per doubling)")
    d.add_argument("--channels", type=int, choices=(1, 3),
                   help="--dataset images: 3 (RGB, default) or 1 (grey)")
    d.add_argument("--attributes", metavar="FILE",
                   help="--dataset images: a table of the images' attributes (a CSV: file, then one column per "
                        "attribute; or CelebA's list_attr_celeba.txt); default: DIR/attributes.csv or "
                        "DIR/list_attr_celeba.txt when there is one")
    d.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help="--dataset images: hold the decoded images in memory (--cache) or read them from their files "
                        "every epoch (--no-cache); default: in memory when they take at most 1 GiB")
    d.add_argument("--train-size", type=int,
                   help="train on a fixed subset of this many training images (drawn once, stratified by class, "
                        "the same for every seed); validation and test unchanged")
    m = p.add_argument_group("method")
    m.add_argument("--preset", choices=tuple(PRESETS),
                   help="base settings: fast, official, or mnist_full (fast with lamb 5, 4 epochs); "
                        "default mnist_full for --dataset mnist (the 50,000-image split), fast otherwise")
    m.add_argument("--cls", type=float,
                   help="weight of the class-conditional mixing's attribute losses (default 0: off); mixes that "
                        "take each attribute group from one image or the other, judged by an attribute head on "
                        "the discriminator (amr_keras.classmix)")
    m.add_argument("--class-mixer", choices=CLASS_MIXERS,
                   help="informed (default: the mask sees which image supplies each group and both images' "
                        "attributes) or official (the released ClassMixer: the mask sees the asked attributes)")
    m.add_argument("--mask-prior", type=float,
                   help=f"weight of the mask prior mean((sum(mask) - C/2)^2) (default {MASK_PRIOR:g})")
    m.add_argument("--mixer", choices=mixer_names(),
                   help="how codes are mixed (default mixup); acai: mixup of pairs judged by ACAI's critic")
    m.add_argument("--k", type=int, help="codes per mix (default 2; acai: 2 only)")
    m.add_argument("--lamb", type=float, help="weight of the reconstruction loss")
    m.add_argument("--beta", type=float, help="weight of the consistency loss (default 0: off)")
    m.add_argument("--recon", choices=RECON_LOSSES,
                   help="reconstruction loss (default: the preset's, l1; dsprites: bce, binary cross-entropy "
                        "of the decoder's logits summed over pixels)")
    m.add_argument("--acai-gamma", type=float,
                   help=f"--mixer acai: ACAI's critic sees gamma*x + (1-gamma)*x_rec, in [0, 1) "
                        f"(default {ACAI_GAMMA:g}: plain reconstructions; the ACAI paper: 0.2)")
    m.add_argument("--acai-weight", type=float,
                   help=f"--mixer acai: weight of the autoencoder's ACAI regulariser, >= 0 "
                        f"(default {ACAI_WEIGHT:g}; the ACAI paper: 0.5)")
    m.add_argument("--no-recon-gan", dest="recon_gan", action="store_false", default=None,
                   help="drop the adversarial term on reconstructions (the official code's disable_g_recon): the "
                        "discriminator then judges images and mixes only; mixup and bernoulli only")
    m.add_argument("--model", choices=MODELS,
                   help="amr (default) or bvae: the beta-VAE baseline of Table 4 (no discriminator, no mixing; "
                        "the probe and every code read the posterior mean), with --beta-kl")
    m.add_argument("--beta-kl", type=float, help="--model bvae: weight of the KL term (the paper: 100 and 110)")
    m.add_argument("--kl-reduction", choices=KL_REDUCTIONS,
                   help="--model bvae: the KL averaged over the code values (mean, default: the official AMR code, "
                        "so --beta-kl 100 is the paper's beta 100) or summed over them (sum: Higgins et al.'s "
                        "beta, e.g. 4)")
    m.add_argument("--arch", choices=ARCHS,
                   help="networks: acai (32x32, 4x4xC code) or burgess (64x64 dSprites, flat 10-value code); "
                        "default: burgess for dSprites, acai otherwise")
    m.add_argument("--depth", type=int, help="channels of the first scale of every network (burgess: filters "
                                             "of every convolution)")
    m.add_argument("--code-channels", type=int,
                   help="feature maps of the 4x4 code (default 2: 32 values; 16: the paper's 256-value code)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, help="learning rate of the autoencoder (the discriminator has its own, --d-lr; "
                                            "default: the preset's)")
    o.add_argument("--d-lr", type=float, help="learning rate of the discriminator")
    o.add_argument("--probe-lr", type=float, help="learning rate of the linear probe")
    o.add_argument("--adam-beta1", type=float,
                   help="Adam's beta_1 of the autoencoder and the discriminator (default 0.5 as the official AMR "
                        "code; 0.9 for --model bvae, as its official scripts); the probe keeps 0.5")
    o.add_argument("--probe", choices=PROBES,
                   help="online linear probe: whiten (default: running whitening of the code, averaged weights) "
                        "or batchnorm (batch-normalised code, last weights: the probe of older runs)")
    o.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule of autoencoder and discriminator")
    o.add_argument("--batch-size", type=int, help="global batch size")
    o.add_argument("--epochs", type=int, help="training epochs")
    o.add_argument("--steps-per-epoch", type=int,
                   help="training steps between validations (default: one pass over the training images); "
                        "with --train-size it keeps the budget in steps fixed whatever the subset's size")
    o.add_argument("--update-g-every", type=int, help="update the autoencoder every this many steps")
    o.add_argument("--seed", type=int, help="seed of weights, data order and mixing (default 0)")
    r = p.add_argument_group("run")
    r.add_argument("--out", help="output folder (default runs/<dataset>-<mixer>-k<k>-lamb<lamb>-<preset>-s<seed>)")
    r.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --out from its last checkpoint")
    r.add_argument("--config", help="JSON file of settings (e.g. best_hyperparameters.json of scripts/tune.py)")
    r.add_argument("--strategy", choices=STRATEGIES, help="tf.distribute strategy (multiworker reads TF_CONFIG)")
    r.add_argument("--precision", choices=PRECISIONS,
                   help="compute precision (default auto: mixed_bfloat16 where the CPU or GPU has bfloat16 units, "
                        "else float32); variables, losses and the probe stay float32")
    r.add_argument("--mixed-precision", dest="precision", action="store_const", const="mixed_float16", default=None,
                   help="the same as --precision mixed_float16")
    r.add_argument("--jit-compile", action="store_true", default=None,
                   help="compile the train step with XLA (off in both presets)")
    r.add_argument("--no-jit-compile", dest="jit_compile", action="store_false", default=None,
                   help="run the train step without XLA")
    r.add_argument("--no-linear-eval", dest="linear_eval", action="store_false", default=None,
                   help="skip the post-hoc linear evaluation at the end (the export then has no classify_linear)")
    r.add_argument("--no-export", dest="export", action="store_false", default=None,
                   help="skip the SavedModel export and figures at the end")
    r.add_argument("--epoch-figures", action="store_true", default=None,
                   help="write an interpolation figure every epoch")
    r.add_argument("--deterministic", action="store_true", default=None,
                   help="TensorFlow's deterministic ops: the same seed gives the same weights bit for bit, and a run "
                        "stopped and resumed ends as the uninterrupted one (slower; see docs/troubleshooting.md)")
    r.add_argument("--checkpoint-every", type=float, metavar="MINUTES",
                   help="also write the resumable checkpoint every this many minutes within an epoch (default: at "
                        "the end of each epoch only; Ctrl-C and SIGTERM always write one before stopping)")
    r.add_argument("--verbose", type=int, choices=(0, 1, 2), help="Keras progress output (default: bar on a terminal)")
    r.add_argument("--factorvae-votes", type=int,
                   help="dSprites: votes that train the FactorVAE metric's majority-vote classifier (default 800)")
    r.add_argument("--factorvae-eval-votes", type=int,
                   help="dSprites: held-out votes the FactorVAE metric is scored on (default 800)")
    r.add_argument("--factorvae-samples", type=int,
                   help="dSprites: images per FactorVAE vote, L (default 800, as the official code)")
    r.add_argument("--factorvae-prune", type=float,
                   help="dSprites: FactorVAE drops code values whose standard deviation over the data is below this "
                        "(default 0.05, disentanglement_lib's convention)")
    r.add_argument("--factorvae-prune-relative", action="store_true", default=None,
                   help="dSprites: --factorvae-prune is a fraction of the largest standard deviation, not an "
                        "absolute value")
    r.add_argument("--factorvae-curve-votes", type=int,
                   help="dSprites: votes (and as many held-out ones) of the FactorVAE estimate logged every epoch "
                        "(factorvae_estimate in log.csv; default 100 for dSprites, 0: off)")
    r.add_argument("--score-epoch", choices=SCORE_EPOCHS,
                   help="which model the run's results score: best (the epoch of best validation probe accuracy; "
                        "the default) or last (the final model; the dsprites preset's)")
    return p


def config_from_args(argv=None):
    """Parse ``argv`` into a resolved, validated ``Config`` (preset < --config file < explicit flags)."""
    args = vars(build_parser().parse_args(argv))
    values = {}
    config_path = args.pop("config")
    if config_path:
        values.update(load_config_file(config_path))
    values.update({k: v for k, v in args.items() if v is not None})
    return resolve(Config(**values))
