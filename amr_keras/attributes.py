"""Attributes of images beside their class label: groups of categorical values, one-hot per group.

A group is one categorical attribute (dSprites' shape: square, ellipse or heart; a face's "smiling": no or yes);
an image has one value of each group, stored as the value's index (an ``int64`` array ``N x G`` per split), and
``AttributeGroups.one_hot`` turns those indices into the concatenated one-hot vectors a network takes
(``sum(sizes)`` values). Where the data come from:

- **dSprites** (``dsprites``, ``dsprites_procedural``): its factors, coarsened where a factor is finer than an
  image can show (``DSPRITES_GROUPS``): shape (3 values), scale (its 6 values in halves: small 0.5-0.7, large
  0.8-1), x and y (their 32 positions in halves: the sprite's centre in the upper or lower half of the rows, the
  left or right half of the columns). Orientation is left out: the square repeats every quarter turn and the
  ellipse every half turn, so its 40 values are not all told apart by the pixels.
- **MNIST-like sets** (``mnist``, ``kmnist``, ``fashion_mnist``, ``mnist_sample``, ``svhn``, ``cifar10``): the
  class as one group.
- **An image folder** (``images``): a CSV beside the images (``amr_keras.images``), one group per column.

``load_dataset`` carries the attributes through the validation split and ``--train-size`` subsets
(``Splits.attributes``, ``DatasetInfo.attributes``).
"""

import dataclasses

import numpy as np

from amr_keras.sources import DataError


@dataclasses.dataclass(frozen=True)
class AttributeGroup:
    """One categorical attribute: its name and the names of its values (a value is stored as its index)."""

    name: str
    values: tuple

    def __post_init__(self):
        if len(self.values) < 2 or len(set(self.values)) != len(self.values):
            raise ValueError(f"attribute {self.name!r} needs two or more distinct values, got {self.values!r}.")

    @property
    def size(self):
        return len(self.values)


@dataclasses.dataclass(frozen=True)
class AttributeGroups:
    """The attribute groups of a dataset, in order.

    Example:
        >>> groups = AttributeGroups.of(shape=("square", "ellipse", "heart"), x=("upper", "lower"))
        >>> groups.one_hot(np.array([[2, 0]])).tolist()
        [[0.0, 0.0, 1.0, 1.0, 0.0]]
    """

    groups: tuple

    @classmethod
    def of(cls, **groups):
        """Groups from ``name=values`` keyword arguments, in the order given."""
        return cls(tuple(AttributeGroup(name, tuple(values)) for name, values in groups.items()))

    @classmethod
    def from_json(cls, entries):
        """Groups from ``to_json``'s list."""
        return cls(tuple(AttributeGroup(e["name"], tuple(e["values"])) for e in entries))

    def to_json(self):
        """``[{"name": ..., "values": [...]}, ...]`` (results.json, an export's metadata)."""
        return [{"name": g.name, "values": list(g.values)} for g in self.groups]

    @property
    def names(self):
        return tuple(g.name for g in self.groups)

    @property
    def sizes(self):
        return tuple(g.size for g in self.groups)

    @property
    def width(self):
        """Length of the concatenated one-hot vector."""
        return int(sum(self.sizes))

    def __len__(self):
        return len(self.groups)

    def describe(self):
        """e.g. ``shape (3), scale (2), x (2), y (2)``."""
        return ", ".join(f"{g.name} ({g.size})" for g in self.groups)

    def check(self, codes, what="attributes"):
        """``codes`` as an ``int64`` array ``N x G`` whose every value is an index of its group.

        Raises:
            DataError: another shape, or a value out of its group's range (named).
        """
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != len(self) or not np.issubdtype(codes.dtype, np.integer):
            raise DataError(f"{what}: expected integer codes of shape (N, {len(self)}) for the groups "
                            f"{self.describe()}, got {codes.dtype} {codes.shape}.")
        for i, group in enumerate(self.groups):
            bad = (codes[:, i] < 0) | (codes[:, i] >= group.size)
            if bad.any():
                raise DataError(f"{what}: attribute {group.name!r} takes 0 to {group.size - 1}, got "
                                f"{int(codes[bad, i][0])}.")
        return codes.astype(np.int64)

    def one_hot(self, codes):
        """``N x G`` value indices -> ``N x width`` float32, the groups' one-hot vectors side by side."""
        codes = self.check(codes)
        out = np.zeros((len(codes), self.width), np.float32)
        offset = 0
        for i, size in enumerate(self.sizes):
            out[np.arange(len(codes)), offset + codes[:, i]] = 1.0
            offset += size
        return out


# dSprites: shape whole, scale / x / y in halves, orientation left out (see the module's docstring).
DSPRITES_GROUPS = AttributeGroups.of(shape=("square", "ellipse", "heart"), scale=("small", "large"),
                                     x=("upper", "lower"), y=("left", "right"))


def dsprites_attributes(classes):
    """The ``DSPRITES_GROUPS`` codes of dSprites images from their factor classes ``N x 5`` (shape, scale 0-5,
    orientation 0-39, x 0-31, y 0-31)."""
    classes = np.asarray(classes)
    return np.stack([classes[:, 0], classes[:, 1] // 3, classes[:, 3] // 16, classes[:, 4] // 16],
                    axis=1).astype(np.int64)


def class_group(class_names):
    """One group, ``class``, whose values are ``class_names``: a dataset's labels as its attributes (their codes
    are the labels, one column)."""
    return AttributeGroups.of(**{"class": tuple(str(c) for c in class_names)})
