"""The AMR train step in PyTorch: the speed reference that ``scripts/bench.py --torch-ref`` compares against.

The official AMR code is PyTorch; this file repeats its 32x32 setting (Beckham et al., 2019: the ACAI networks
of depth 16, a 4x4x2 code, a spectrally normalised discriminator, mixing of k=2 codes, a linear probe on the
detached code) with the networks of ``amr_keras.networks`` written in PyTorch layer for layer, so that the two
frameworks time the same work. One iteration, as the official trainer runs it:

1. autoencoder: encode, decode, mix the codes with a shuffled partner, decode the mixes; loss
   ``lamb * L1(recon, x) + BCE(D(recon), real) + BCE(D(mix), real)``; its backward and Adam update on every
   ``--update-g-every``-th iteration only (the forward runs every iteration, as there);
2. discriminator: ``BCE(D(x), real) + BCE(D(recon), fake) + BCE(D(mix), fake)`` on detached fakes, every iteration;
3. probe: a linear classifier on the detached code, cross-entropy, every iteration;

Adam (lr 1e-4, betas 0.5 and 0.99, weight decay 1e-5) for each. Every loss is read back to Python after each
iteration, as the official trainer does for its logs. The data are fixed random batches (images in [-1, 1],
labels 0-9), cycled, so that making them is not timed.

Usage (``pip install -e ".[torch]"``):
    python benchmarks/torch_ref.py --batch-size 64 --update-g-every 5 --steps 50 --warmup 10 --repeats 3

It prints one JSON line: ``images_per_second`` (median over the repeats of images per second of timed
iterations), the rate of each repeat, the parameter counts and the settings.
"""

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

MIXERS = ("mixup", "bernoulli")


def _init(conv, slope=0.2):
    """Scaled normal of the official code (std = 1 / sqrt((1 + slope^2) * fan_in)), zero bias."""
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.normal_(conv.weight, std=(1.0 / ((1.0 + slope**2) * fan_in)) ** 0.5)
    nn.init.zeros_(conv.bias)
    return conv


def _conv(cin, cout, kernel, spectral=False):
    conv = _init(nn.Conv2d(cin, cout, kernel, padding=kernel // 2))
    # One power iteration per call, as the discriminator of amr_keras (keras SpectralNormalization).
    return nn.utils.parametrizations.spectral_norm(conv, n_power_iterations=1) if spectral else conv


def _stage(cin, cout, norm, spectral, slope):
    """conv3x3 -> [InstanceNorm] -> LeakyReLU."""
    layers = [_conv(cin, cout, 3, spectral)]
    if norm:
        layers.append(nn.InstanceNorm2d(cout, affine=True, eps=1e-5))
    layers.append(nn.LeakyReLU(slope))
    return layers


def encoder_body(colors=1, depth=16, scales=3, out_channels=2, norm=True, spectral=False, slope=0.2):
    """Pad 32 -> 34, 1x1 stem, ``scales`` x [2 stages, 2x2 average pooling] (34 -> 4), one stage, 3x3 to the code."""
    layers = [nn.ZeroPad2d(1), _conv(colors, depth, 1)]
    width = depth
    for s in range(scales):
        cin, width = width, depth << s
        layers += _stage(cin, width, norm, spectral, slope) + _stage(width, width, norm, spectral, slope)
        layers.append(nn.AvgPool2d(2))
    layers += _stage(width, depth << scales, norm, spectral, slope)
    layers.append(_conv(depth << scales, out_channels, 3, spectral))
    return nn.Sequential(*layers)


def decoder(colors=1, depth=16, scales=3, code_channels=2, slope=0.2):
    """The encoder mirrored: ``scales`` x [2 stages, nearest 2x upsampling] (4 -> 32), one stage, 3x3 to the image."""
    layers, width = [], code_channels
    for s in reversed(range(scales)):
        cin, width = width, depth << s
        layers += _stage(cin, width, True, False, slope) + _stage(width, width, True, False, slope)
        layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    layers += _stage(width, depth, True, False, slope)
    layers.append(_conv(depth, colors, 3))
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    """The encoder's body without normalisation, spectral norm on its 3x3 convolutions, averaged to one logit."""

    def __init__(self, colors=1, depth=16, scales=3, code_channels=2, slope=0.2):
        super().__init__()
        self.body = encoder_body(colors, depth, scales, code_channels, norm=False, spectral=True, slope=slope)

    def forward(self, x):
        return self.body(x).mean(dim=(1, 2, 3))


def mix(code, mixer):
    """Each code mixed with a shuffled partner from the batch: mixup (one weight per example, uniform) or
    Bernoulli (one mask value per example and feature map, drawn with a probability drawn once per batch)."""
    partner = code[torch.randperm(code.shape[0])]
    if mixer == "mixup":
        alpha = torch.rand(code.shape[0], 1, 1, 1)
    else:
        alpha = torch.bernoulli(torch.full((code.shape[0], code.shape[1], 1, 1), float(torch.rand(()))))
    return alpha * code + (1.0 - alpha) * partner


class ReferenceStep:
    """One AMR iteration (see the module's docstring) over an encoder, a decoder, a discriminator and a probe."""

    def __init__(self, encoder, decoder, discriminator, probe, mixer="mixup", lamb=10.0, update_g_every=5,
                 lr=1e-4, betas=(0.5, 0.99), weight_decay=1e-5):
        self.encoder, self.decoder, self.discriminator, self.probe = encoder, decoder, discriminator, probe
        self.mixer, self.lamb, self.update_g_every = mixer, lamb, update_g_every
        autoencoder = list(encoder.parameters()) + list(decoder.parameters())
        self.ae_opt, self.d_opt, self.probe_opt = (
            torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
            for params in (autoencoder, discriminator.parameters(), probe.parameters()))

    def __call__(self, x, y, iteration):
        real, fake = torch.ones(x.shape[0]), torch.zeros(x.shape[0])
        code = self.encoder(x)
        recon = self.decoder(code)
        mixed = self.decoder(mix(code, self.mixer))
        recon_loss = (recon - x).abs().mean()
        g_loss = (self.lamb * recon_loss + F.binary_cross_entropy_with_logits(self.discriminator(recon), real)
                  + F.binary_cross_entropy_with_logits(self.discriminator(mixed), real))
        if iteration % self.update_g_every == 0:
            self.ae_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            self.ae_opt.step()
        d_loss = (F.binary_cross_entropy_with_logits(self.discriminator(x), real)
                  + F.binary_cross_entropy_with_logits(self.discriminator(recon.detach()), fake)
                  + F.binary_cross_entropy_with_logits(self.discriminator(mixed.detach()), fake))
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        logits = self.probe(code.detach().flatten(1))
        probe_loss = F.cross_entropy(logits, y)
        self.probe_opt.zero_grad(set_to_none=True)
        probe_loss.backward()
        self.probe_opt.step()
        accuracy = (logits.argmax(1) == y).float().mean()
        return {name: value.item() for name, value in (("g_loss", g_loss), ("recon_loss", recon_loss),
                                                       ("d_loss", d_loss), ("probe_loss", probe_loss),
                                                       ("probe_accuracy", accuracy))}


def parameters(module):
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Time the AMR train step in PyTorch (one JSON line).")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--update-g-every", type=int, default=5, help="autoencoder update period (official default 5)")
    p.add_argument("--steps", type=int, default=50, help="timed iterations per repeat")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    p.add_argument("--repeats", type=int, default=1, help="timed blocks; the median rate is reported")
    p.add_argument("--mixer", choices=MIXERS, default="mixup")
    p.add_argument("--lamb", type=float, default=10.0, help="weight of the L1 reconstruction loss")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("batch_size", "update_g_every", "steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    encoder, dec, disc = encoder_body(), decoder(), Discriminator()
    probe = nn.Linear(32, 10)
    step = ReferenceStep(encoder, dec, disc, probe, mixer=args.mixer, lamb=args.lamb,
                         update_g_every=args.update_g_every)
    batches = [(torch.rand(args.batch_size, 1, 32, 32) * 2 - 1, torch.randint(0, 10, (args.batch_size,)))
               for _ in range(8)]
    iteration = 0
    for _ in range(args.warmup):
        step(*batches[iteration % len(batches)], iteration)
        iteration += 1
    rates, logs = [], {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            logs = step(*batches[iteration % len(batches)], iteration)
            iteration += 1
        rates.append(args.steps * args.batch_size / (time.perf_counter() - t0))
    print(json.dumps({
        "images_per_second": round(statistics.median(rates), 1),
        "images_per_second_per_repeat": [round(r, 1) for r in rates],
        "batch_size": args.batch_size, "update_g_every": args.update_g_every, "mixer": args.mixer,
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "threads": args.threads,
        "parameters": {"encoder": parameters(encoder), "decoder": parameters(dec), "discriminator": parameters(disc),
                       "probe": parameters(probe)},
        "last_losses": {k: round(v, 4) for k, v in logs.items()},
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
