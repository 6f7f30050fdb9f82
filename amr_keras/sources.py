"""What every data source shares: its error, the offline advice, the network check and the split seed.

``amr_keras.data`` (the dataset registry and pipelines) and the per-source modules (``amr_keras.dsprites``)
both import this module and nothing of each other's back, so the package's import graph has no circle.
"""

import socket

# Seed of the fixed train / validation (and, for dSprites, test) carving of every dataset.
SPLIT_SEED = 1234

OFFLINE_HELP = (
    "To run offline, pass --data-dir DIR with the official raw files "
    "(IDX .gz for MNIST/Fashion-MNIST/KMNIST, kmnist-*.npz, SVHN train_32x32.mat/test_32x32.mat, "
    "CIFAR-10 cifar-10-python.tar.gz or its extracted cifar-10-batches-py/), "
    "or use --dataset mnist_sample (real MNIST images shipped with the package)."
)


class DataError(ValueError):
    """Data that cannot be read or reached; the message says why and what to do."""


def network_available(host="storage.googleapis.com", port=443, timeout=3.0):
    """Whether tensorflow-datasets' download server can be reached (a refused download is then a real error)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False
