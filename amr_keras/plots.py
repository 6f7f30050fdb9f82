"""Figures: interpolation grids (mixup and Bernoulli mixes of two images) and reconstructions.

Every figure takes ``endpoints``: a loaded export (``amr_keras.export.load_export``)
or any object with the same methods on images in [0, 1] at the dataset's size,
such as ``amr_keras.export.Endpoints`` around an eager model (which
``InterpolationCallback`` uses during training). Images are drawn pixel for
pixel (``interpolation="nearest"``), grey ones with a fixed [0, 1] grey scale.

Figures are drawn on a fixed pixel grid, so their size depends only on the
number of rows and columns (see ``grid_pixel_size``): each image gets a
``CELL_PX`` square plus a ``CAPTION_PX`` caption line, with ``LEFT_PX`` for row
labels and ``TOP_PX`` for column titles.

Reference:
    C. Beckham et al. On Adversarial Mixup Resynthesis. NeurIPS 2019, Fig. 2.
"""

import os

import keras
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from amr_keras import data
from amr_keras.export import Endpoints, load_export, load_metadata

DEFAULT_ALPHAS = (0.2, 0.4, 0.5, 0.6, 0.8)
CELL_PX = 80
CAPTION_PX = 16
LEFT_PX = 110
TOP_PX = 30
PAD_PX = 3
DPI = 100
# Bernoulli captions list the channels taken from x2 for codes of up to this many channels, else count them.
MAX_LISTED_CHANNELS = 4


def grid_pixel_size(rows, cols):
    """``(width, height)`` in pixels of a figure with ``rows`` x ``cols`` images.

    ``width = LEFT_PX + cols * CELL_PX`` and
    ``height = TOP_PX + rows * (CELL_PX + CAPTION_PX)``; e.g. an interpolation
    grid of 6 pairs and 5 alphas (12 rows, 7 columns) is 670 x 1182.
    """
    return LEFT_PX + cols * CELL_PX, TOP_PX + rows * (CELL_PX + CAPTION_PX)


def _as_images(images, name):
    """float32 ``(N, H, W, 1 or 3)`` array in [0, 1], or a ValueError saying what is expected."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{name} must be a batch of images (N, H, W, 1 or 3); got shape {x.shape}.")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"{name} must be in [0, 1] (got values in [{x.min()}, {x.max()}]): divide uint8 images by 255."
        )
    return x.astype(np.float32)


class _Grid:
    """A figure of image cells at fixed pixel positions."""

    def __init__(self, rows, cols):
        self.rows, self.cols = rows, cols
        self.width, self.height = grid_pixel_size(rows, cols)
        self.fig = Figure(figsize=(self.width / DPI, self.height / DPI), dpi=DPI)
        FigureCanvasAgg(self.fig)

    def _box(self, row, col):
        """(left, bottom, width, height) of a cell's image, in figure fractions."""
        top = self.height - TOP_PX - row * (CELL_PX + CAPTION_PX) - CAPTION_PX
        left = LEFT_PX + col * CELL_PX + PAD_PX
        size = CELL_PX - 2 * PAD_PX
        return (left / self.width, (top - PAD_PX - size) / self.height, size / self.width, size / self.height)

    def image(self, row, col, img, caption=None):
        ax = self.fig.add_axes(self._box(row, col))
        if img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(np.clip(img, 0.0, 1.0), interpolation="nearest")
        ax.set_axis_off()
        if caption:
            ax.set_title(caption, fontsize=7, pad=2)

    def row_label(self, row, text):
        left, bottom, _, height = self._box(row, 0)
        self.fig.text((LEFT_PX - 8) / self.width, bottom + height / 2, text, ha="right", va="center", fontsize=9)

    def col_title(self, col, text):
        left, _, width, _ = self._box(0, col)
        self.fig.text(left + width / 2, 1 - (TOP_PX / 2) / self.height, text, ha="center", va="center", fontsize=9)

    def save(self, path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.fig.savefig(path, dpi=DPI)
        return os.fspath(path)


def bernoulli_masks(alphas, channels, pairs, seed=0):
    """Per-feature-map masks ``(pairs, len(alphas), channels)``: 1 where a code channel comes from x2.

    For each alpha, ``round(alpha * channels)`` channels come from x2, clipped
    to ``1 .. channels - 1`` so that every mask mixes both codes (with 2
    channels, every mask takes one channel from each); which channels is drawn
    with ``np.random.default_rng(seed)``, independently per pair and alpha.
    """
    rng = np.random.default_rng(seed)
    masks = np.zeros((pairs, len(alphas), channels), np.float32)
    for p in range(pairs):
        for j, alpha in enumerate(alphas):
            n = int(np.floor(alpha * channels + 0.5))
            if channels >= 2:
                n = min(max(n, 1), channels - 1)
            masks[p, j, rng.permutation(channels)[:n]] = 1.0
    return masks


def _mask_caption(mask):
    """``x2: 0,2`` (the code channels taken from x2), or ``x2: 5/16`` for many channels."""
    on = np.flatnonzero(mask)
    if len(mask) <= MAX_LISTED_CHANNELS:
        return "x2: " + (",".join(str(i) for i in on) if len(on) else "none")
    return f"x2: {len(on)}/{len(mask)}"


def interpolation_grid(endpoints, images_a, images_b, path, alphas=DEFAULT_ALPHAS, seed=0):
    """Draw mixup and Bernoulli mixes between pairs of images, two rows per pair.

    Columns are ``x1``, one mix per alpha, ``x2``; ``alpha`` is the position
    from x1 (0) to x2 (1):

    - mixup row: decode ``(1 - alpha) * f(x1) + alpha * f(x2)``;
    - Bernoulli row: decode a code whose feature maps come whole from ``f(x1)``
      or ``f(x2)``, about a fraction ``alpha`` of them from x2 (see
      ``bernoulli_masks``); each cell's caption names the code channels
      taken from x2 (``x2: 0,2``).

    The PNG is ``grid_pixel_size(2 * pairs, len(alphas) + 2)`` pixels.

    Args:
        endpoints: a loaded export or an object with the same ``encode``,
            ``mix`` and ``mix_alpha`` methods (e.g. ``export.Endpoints``).
        images_a: ``(pairs, H, W, C)`` images x1 in [0, 1] at the dataset's size.
        images_b: images x2, same shape.
        path: PNG file to write (folders are created).
        alphas: interpolation positions in [0, 1].
        seed: seed of the Bernoulli masks.

    Returns:
        ``path``.

    Example:
        >>> interpolation_grid(load_export("runs/mnist/export"), x[:6], x[6:12], "interp.png")
    """
    a, b = _as_images(images_a, "images_a"), _as_images(images_b, "images_b")
    if a.shape != b.shape or len(a) < 1:
        raise ValueError(f"images_a and images_b must be non-empty and of one shape; got {a.shape} and {b.shape}.")
    alphas = tuple(float(v) for v in alphas)
    if not alphas or min(alphas) < 0 or max(alphas) > 1:
        raise ValueError(f"alphas must be a non-empty list of values in [0, 1]; got {alphas}.")
    pairs, steps = len(a), len(alphas)
    channels = int(np.asarray(endpoints.encode(a[:1])).shape[-1])

    # One batch of pairs x alphas for each mixer; mixing (x2, x1) puts weight alpha on x2.
    x1 = np.repeat(a, steps, axis=0)
    x2 = np.repeat(b, steps, axis=0)
    alpha = np.tile(np.asarray(alphas, np.float32), pairs)
    mixup = np.asarray(endpoints.mix_alpha(x2, x1, alpha)).reshape(pairs, steps, *a.shape[1:])
    masks = bernoulli_masks(alphas, channels, pairs, seed)
    bern = np.asarray(endpoints.mix(x2, x1, masks.reshape(-1, channels))).reshape(pairs, steps, *a.shape[1:])

    grid = _Grid(2 * pairs, steps + 2)
    grid.col_title(0, "x1")
    for j, value in enumerate(alphas):
        grid.col_title(j + 1, f"α={value:g}")
    grid.col_title(steps + 1, "x2")
    for p in range(pairs):
        for r, (name, mixes) in enumerate((("mixup", mixup), ("Bernoulli", bern))):
            row = 2 * p + r
            grid.row_label(row, f"pair {p + 1}\n{name}")
            grid.image(row, 0, a[p])
            grid.image(row, steps + 1, b[p])
            for j in range(steps):
                grid.image(row, j + 1, mixes[p, j], _mask_caption(masks[p, j]) if r == 1 else None)
    return grid.save(path)


def reconstruction_grid(endpoints, images, path):
    """Draw originals (top row) above their reconstructions (bottom row).

    The PNG is ``grid_pixel_size(2, len(images))`` pixels.

    Args:
        endpoints: a loaded export or an object with a ``reconstruct`` method.
        images: ``(N, H, W, C)`` images in [0, 1] at the dataset's size.
        path: PNG file to write.

    Returns:
        ``path``.
    """
    x = _as_images(images, "images")
    if len(x) < 1:
        raise ValueError("reconstruction_grid needs at least one image.")
    rec = np.asarray(endpoints.reconstruct(x))
    grid = _Grid(2, len(x))
    grid.row_label(0, "original")
    grid.row_label(1, "reconstruction")
    for i in range(len(x)):
        grid.col_title(i, str(i + 1))
        grid.image(0, i, x[i])
        grid.image(1, i, rec[i])
    return grid.save(path)


class InterpolationCallback(keras.callbacks.Callback):
    """Write ``interpolations_epoch{N:03d}.png`` after each epoch (``N`` counts from 1, as Keras prints).

    Draws ``interpolation_grid`` from the model being trained, through
    ``export.Endpoints`` (the same pre- and post-processing as the export).

    Args:
        images_a: ``(pairs, H, W, C)`` fixed images x1 in [0, 1] at the dataset's size.
        images_b: fixed images x2, same shape.
        out_dir: folder of the PNGs (created).
        alphas: interpolation positions, as in ``interpolation_grid``.
        seed: seed of the Bernoulli masks (the same masks every epoch).

    Example:
        >>> cb = InterpolationCallback(x[:4] / 255.0, x[4:8] / 255.0, "runs/mnist/figures")
        >>> model.fit(train_ds, epochs=10, callbacks=[cb])
    """

    def __init__(self, images_a, images_b, out_dir, alphas=DEFAULT_ALPHAS, seed=0):
        super().__init__()
        self.images_a = _as_images(images_a, "images_a")
        self.images_b = _as_images(images_b, "images_b")
        self.out_dir = os.fspath(out_dir)
        self.alphas = tuple(alphas)
        self.seed = seed

    def on_epoch_end(self, epoch, logs=None):
        endpoints = Endpoints(self.model, self.images_a.shape[1:])
        path = os.path.join(self.out_dir, f"interpolations_epoch{epoch + 1:03d}.png")
        interpolation_grid(endpoints, self.images_a, self.images_b, path, self.alphas, self.seed)


def pick_pairs(images, pairs, seed=0):
    """``2 * pairs`` distinct images drawn with a fixed seed, as two float32 batches in [0, 1].

    Args:
        images: uint8 ``(N, H, W, C)`` images, N >= 2 * pairs.
        pairs: number of pairs.
        seed: seed of the draw.

    Returns:
        ``(images_a, images_b)``, each ``(pairs, H, W, C)``.
    """
    if int(pairs) != pairs or pairs < 1:
        raise ValueError(f"pairs must be a positive integer, got {pairs!r}.")
    if len(images) < 2 * pairs:
        raise ValueError(f"{pairs} pairs need {2 * pairs} images; only {len(images)} given.")
    idx = np.random.default_rng(seed).choice(len(images), 2 * pairs, replace=False)
    x = np.asarray(images[idx]).astype(np.float32) / 255.0  # images[idx] first: an ImageFiles reads those alone
    return x[:pairs], x[pairs:]


def make_figures(saved_model_dir, dataset=None, data_dir=None, pairs=6, out=None, seed=0):
    """Write ``interpolations.png`` and ``reconstructions.png`` of an export on dataset images.

    Args:
        saved_model_dir: folder written by ``export.export_model`` / ``export_run``.
        dataset: dataset name (default: the one in the export's ``metadata.json``).
        data_dir: folder of raw dataset files (see ``data.load_arrays``).
        pairs: number of image pairs (the reconstruction grid shows all ``2 * pairs`` images).
        out: output folder (default ``saved_model_dir/figures``).
        seed: seed of the choice of images and of the Bernoulli masks.

    Returns:
        ``(interpolations_path, reconstructions_path)``.
    """
    meta = load_metadata(saved_model_dir)
    dataset = dataset or meta.get("dataset")
    if not dataset:
        raise ValueError(f"{saved_model_dir}/metadata.json names no dataset: pass one (--dataset NAME).")
    expected = tuple(meta["image_shape"])
    # A dataset decoded at a size of one's choosing (an image folder) is decoded at the export's.
    taken = data.dataset_spec(dataset).options if dataset in data.dataset_names() else ()
    options = dict(image_size=expected[0], channels=expected[2]) if "image_size" in taken else {}
    arrays, _ = data.load_arrays(dataset, data_dir, **options)
    images = arrays["test" if "test" in arrays else "train"][0]
    if tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"The export takes {expected} images but {dataset!r} has {tuple(images.shape[1:])}: "
            "pass the dataset the model was trained on."
        )
    a, b = pick_pairs(images, pairs, seed)
    endpoints = load_export(saved_model_dir)
    out = os.fspath(out) if out is not None else os.path.join(os.fspath(saved_model_dir), "figures")
    interp = interpolation_grid(endpoints, a, b, os.path.join(out, "interpolations.png"), seed=seed)
    recon = reconstruction_grid(endpoints, np.concatenate([a, b]), os.path.join(out, "reconstructions.png"))
    return interp, recon


def accuracy_vs_train_size(records, path, title="Accuracy against training images"):
    """Line plot of accuracy against the training set's size, one line per method, error bars over seeds.

    One column per dataset; the top row is the post-hoc linear classifier, the bottom row the online
    probe. Test accuracy where the runs have it, else validation (said on the axis).

    Args:
        records: the ``rows`` of a table's JSON (``amr_keras.tables.accuracy.write_tables``): dicts with
            ``dataset``, ``mixer``, ``k``, ``train_size`` and ``runs`` (each with ``*_accuracy`` keys).
        path: the PNG to write.
        title: figure title.

    Returns:
        ``path``.
    """
    datasets = list(dict.fromkeys(r["dataset"] for r in records if r.get("runs")))
    metrics = (("post-hoc linear", "linear_eval_{}_accuracy"), ("online probe", None))
    fig = Figure(figsize=(4.2 * max(len(datasets), 1), 6.4), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, max(len(datasets), 1), squeeze=False)
    for col, dataset in enumerate(datasets):
        rows = [r for r in records if r["dataset"] == dataset and r.get("runs") and r.get("train_size")]
        split = "test" if any(run.get("test_probe_accuracy") is not None for r in rows for run in r["runs"]) else "val"
        for row, (label, key) in enumerate(metrics):
            ax = axes[row][col]
            key = key.format(split) if key else ("test_probe_accuracy" if split == "test" else
                                                 "best_val_probe_accuracy")
            for mixer, k in dict.fromkeys((r["mixer"], r["k"]) for r in rows):
                points = []
                for r in sorted((r for r in rows if (r["mixer"], r["k"]) == (mixer, k)), key=lambda r: r["train_size"]):
                    values = [100 * run[key] for run in r["runs"] if run.get(key) is not None]
                    if values:
                        points.append((r["train_size"], np.mean(values), np.std(values, ddof=1) if len(values) > 1
                                       else 0.0))
                if points:
                    x, y, err = zip(*points)
                    ax.errorbar(x, y, yerr=err, marker="o", capsize=3,
                                label=mixer if k == 2 or mixer == "none" else f"{mixer} k={k}")
            ax.set_xscale("log")
            sizes = sorted({r["train_size"] for r in rows})
            ax.set_xticks(sizes, [f"{n:,}" for n in sizes], fontsize=8)
            ax.minorticks_off()
            ax.set_title(f"{dataset}: {label}", fontsize=10)
            ax.set_xlabel("training images (N)")
            ax.set_ylabel(f"{split} accuracy (%)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"{title}\n(mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


# One heart in the middle of the image, scale 1, orientation 0 (dSprites grid cell), for the traversals.
TRAVERSAL_CELL = (2, 5, 0, 16, 16)


def code_traversals(model, image, codes_std, steps=7, span=2.0):
    """Decoded sweeps of every code value of ``model`` around the code of ``image``.

    Args:
        model: an ``amr_keras.model.AMR`` or ``amr_keras.bvae.BVAE`` with a flat code (``encode`` / ``decode``
            on [-1, 1] images; a beta-VAE's code is its posterior mean).
        image: one uint8 image ``(H, W, C)`` in [0, 255].
        codes_std: ``(D,)`` standard deviation of each code value over the dataset.
        steps: images per sweep.
        span: each value goes from ``-span`` to ``+span`` standard deviations around its value.

    Returns:
        float ``(D, steps, H, W, C)`` images in [0, 1]: row ``d`` sweeps code value ``d``.
    """
    code = np.asarray(model.encode(data.preprocess(image[None])))[0]
    offsets = np.linspace(-span, span, steps)
    codes = np.repeat(code[None, None], len(code), axis=0).repeat(steps, axis=1)
    for d in range(len(code)):
        codes[d, :, d] += offsets * codes_std[d]
    decoded = np.asarray(model.decode(codes.reshape(-1, len(code)).astype("float32")))
    return ((decoded + 1.0) / 2.0).clip(0.0, 1.0).reshape(len(code), steps, *decoded.shape[1:])


def traversal_figure(models, path, steps=7, span=2.0, std_images=1000, seed=0):
    """The standard disentanglement picture: per model, every code value swept from -span to +span std.

    Each panel is one model (a row of Table 4): one row per code value, ``steps`` columns, around the code of
    the same image (``TRAVERSAL_CELL`` of ``dsprites_procedural``); a value's standard deviation is taken
    over ``std_images`` random grid cells.

    Args:
        models: ``[(label, model), ...]``.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    from amr_keras.dsprites import ProceduralSource

    source = ProceduralSource()
    image = source.images([TRAVERSAL_CELL])[0]
    sample = source.images(source.sample_classes(np.random.default_rng(seed), std_images))
    fig = Figure(figsize=(max(2.6 * len(models), 5.0), 4.2), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, (label, model) in zip(axes, models):
        std = np.asarray(model.encode(data.preprocess(sample))).std(axis=0)
        grid = code_traversals(model, image, std, steps=steps, span=span)
        rows, cols, h, w = grid.shape[:4]
        mosaic = np.ones((rows * (h + 2), cols * (w + 2)))
        for r in range(rows):
            for c in range(cols):
                mosaic[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = grid[r, c, ..., 0]
        ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_yticks([(h + 2) * r + h / 2 for r in range(rows)], [f"z{r}" for r in range(rows)], fontsize=6)
        ax.set_xticks([(w + 2) * c + w / 2 for c in (0, cols // 2, cols - 1)], [f"{-span:g}σ", "0", f"+{span:g}σ"],
                      fontsize=6)
    fig.suptitle("Code traversals: each code value swept around one image (dSprites heart)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path
