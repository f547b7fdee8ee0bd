"""Datasets as in-memory NumPy arrays, normalisation and CIFAR augmentation.

``load(name)`` returns a :class:`Dataset` of host arrays (uint8 images as
stored, int32 labels) with the train split's per-channel mean/std; the
training code moves them to the device once and normalises/augments there.

Sources are chosen by name and never silently substituted:

- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: an ``.npz`` cache
  ``<data dir>/<name>/<name>.npz`` (keys ``x_train, y_train, x_test, y_test``);
  if it is missing, ``tensorflow_datasets.data_source`` (TF-free reading, tfds'
  own data dir: ``TFDS_DATA_DIR`` or ``~/tensorflow_datasets``) and the cache
  is written. The data dir is the ``data_dir`` argument, else the environment
  variable ``LTJAX_DATA_DIR``, else ``~/.cache/ltjax``.
- ``digits``: scikit-learn's 1797 real 8x8 digits (shipped with it, offline).
- ``mnist1d``: generated offline by the ``mnist1d`` package (Greydanus 2020),
  cached as ``<data dir>/mnist1d/mnist1d.npz``.
- any path ending in ``.npz`` with the keys above (``test_size`` carves a test
  split from a file that has none).
- ``modular_add``, ``modular_sub``, ``modular_mul``, ``modular_div``: ``a op b
  mod p`` as token sequences ``[a, b, '=']``, built in memory
  (:func:`modular_arithmetic`), options after a colon:
  ``'modular_add:p=113,train_share=0.4,seed=1'``. Token datasets are not
  normalised (empty ``mean``/``std``: :func:`normalize` returns the int ids).

Example:
    >>> from ltjax.io import data
    >>> ds = data.load("digits", validation_size=100)    # scikit-learn's digits: no download
    >>> ds.input_shape, len(ds.train), len(ds.validation), len(ds.test)
    ((8, 8, 1), 1337, 100, 360)

    MNIST, CIFAR-10 and the others are read from ``$LTJAX_DATA_DIR`` (prepared once,
    not run here): ``data.load("mnist", validation_size=5000)`` has 55000, 5000 and
    10000 examples of shape ``(28, 28, 1)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import logging
import math
import operator
import os
import pathlib
import random
import tempfile
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.core import topk

NAMES: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10", "cifar100", "digits", "mnist1d")

DATA_DIR_ENV = "LTJAX_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/ltjax"
NPZ_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")

# Named datasets read through tfds: (one example's shape, number of classes).
_TFDS_SPECS: dict[str, tuple[tuple[int, ...], int]] = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
}
_CIFAR_SHAPE = (32, 32, 3)
_DIGITS_TEST_SIZE = 360
_STD_FLOOR = 1e-8
_STATS_CHUNK = 4096

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset, as stored on the host.

    Attributes:
      x: examples ``[N, ...]``: uint8 images ``[N, H, W, C]`` or float32
        features ``[N, D]``.
      y: int32 labels ``[N]``.

    Example:
        >>> import numpy as np
        >>> from ltjax.io import data
        >>> s = data.Split(np.zeros((3, 8, 8, 1), np.uint8), np.arange(3, dtype=np.int32))
        >>> len(s), s
        (3, Split(x=uint8[3, 8, 8, 1], y=int32[3]))
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self):
        if np.ndim(self.y) != 1:
            raise ValueError(f"Split.y must be 1-D labels [N], got shape {np.shape(self.y)}")
        if len(self.x) != len(self.y):
            raise ValueError(
                f"Split.x has {len(self.x)} examples but Split.y has {len(self.y)} labels"
            )

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"Split(x={_describe(self.x)}, y={_describe(self.y)})"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset with its train statistics and augmentation recipe.

    Attributes:
      name: the name (or ``.npz`` path) it was loaded from.
      train: the training split (without the validation examples).
      validation: examples held out of the original train split, or None.
      test: the test split.
      num_classes: number of classes.
      mean: float32 per-channel mean of ``train.x`` (shape ``[C]``), or a
        single global value (shape ``[1]``) for feature vectors, or empty
        (shape ``[0]``) for token ids, which :func:`normalize` leaves as they are.
      std: float32 standard deviation, same shape as ``mean``, floored at 1e-8.
      augment: ``'cifar'`` (pad-4 random crop + horizontal flip, see
        :func:`augment_cifar`) or None.

    Example:
        >>> from ltjax.io import data
        >>> ds = data.load("digits")
        >>> ds.input_shape, ds.num_classes, ds.mean.shape
        ((8, 8, 1), 10, (1,))
    """

    name: str
    train: Split
    validation: Split | None
    test: Split
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    augment: str | None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(28, 28, 1)`` or ``(40,)``."""
        return tuple(self.train.x.shape[1:])


# --------------------------------------------------------------------------- load


def load(
    name: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    validation_size: int = 0,
    validation_seed: int = 0,
    test_size: int = 0,
) -> Dataset:
    """Loads a dataset by name, or from an ``.npz`` file.

    Validation examples are carved from the train split: the first
    ``validation_size`` indices of
    ``np.random.default_rng(validation_seed).permutation(len(train))`` go to
    validation (kept in their original relative order), the rest stay in
    train in their original order. Mean and std are computed on what remains
    in train.

    Fixed splits: ``digits`` is shuffled with ``np.random.default_rng(0)`` and
    its last 360 examples are the test split (1437 train); ``mnist1d`` uses
    the package's own 4000/1000 split.

    Args:
      name: one of :data:`NAMES`, a modular arithmetic task
        ``'modular_<op>[:p=..,train_share=..,seed=..]'`` (:func:`modular_arithmetic`,
        its defaults for the options left out), or a path ending in ``.npz`` holding
        ``x_train, y_train`` and ``x_test, y_test`` (uint8 images
        ``[N, H, W]`` or ``[N, H, W, C]``, or features ``[N, D]``; integer
        labels ``[N]``).
      data_dir: folder of the ``.npz`` caches ``<data_dir>/<name>/<name>.npz``;
        default ``$LTJAX_DATA_DIR``, else ``~/.cache/ltjax``.
      validation_size: how many train examples to hold out (0: none).
      validation_seed: seed of the held-out choice.
      test_size: only for an ``.npz`` file without a test split: its last
        ``test_size`` train examples become the test split.

    Returns:
      The :class:`Dataset`.

    Raises:
      ValueError: unknown name or bad arguments or contents.
      FileNotFoundError: the data is neither cached nor obtainable from tfds.

    Example:
        >>> from ltjax.io import data
        >>> ds = data.load("digits", validation_size=200, validation_seed=1)
        >>> ds.augment, len(ds.train), len(ds.validation), len(ds.test)
        (None, 1237, 200, 360)

        An ``.npz`` file (not run here): ``data.load("cifar10_train_first4000.npz",
        test_size=400)`` gives ``ds.augment == 'cifar'`` and 3600 / 400 examples.
    """
    validation_size = _as_int(validation_size, "validation_size")
    validation_seed = _as_int(validation_seed, "validation_seed")
    test_size = _as_int(test_size, "test_size")
    if test_size < 0:
        raise ValueError(f"test_size must be >= 0, got {test_size}")

    if isinstance(name, str) and name.startswith(MODULAR_PREFIX):
        if test_size:
            raise ValueError(f"test_size applies only to an .npz file without a test split; "
                             f"{name!r} has its own test split, got test_size={test_size}")
        dataset = modular_arithmetic(**_modular_options(name))
        train, validation = split_validation(dataset.train, size=validation_size,
                                             seed=validation_seed)
        return dataclasses.replace(dataset, train=train, validation=validation)
    if isinstance(name, str) and name in _REGISTERED:
        if test_size:
            raise ValueError(f"test_size applies only to an .npz file without a test split; "
                             f"the registered {name!r} has its own, got test_size={test_size}")
        train, test, augment, _ = _REGISTERED[name]
        num_classes = _dense_num_classes(train, test, source=f"the registered {name!r}")
        label = name
    elif isinstance(name, os.PathLike) or str(name).endswith(".npz"):
        path = pathlib.Path(name).expanduser()
        train, test = _read_npz_file(path, test_size=test_size)
        num_classes = _dense_num_classes(train, test, source=str(path))
        augment = "cifar" if train.x.shape[1:] == _CIFAR_SHAPE else None
        label = str(name)
    elif name in NAMES:
        if test_size:
            raise ValueError(
                f"test_size applies only to an .npz file without a test split; {name!r} has a "
                f"fixed test split, got test_size={test_size}"
            )
        root = _data_root(data_dir)
        if name == "digits":
            train, test = _digits()
            num_classes, augment = 10, None
        elif name == "mnist1d":
            train, test = _mnist1d(root)
            num_classes, augment = 10, None
        else:
            shape, num_classes = _TFDS_SPECS[name]
            train, test = _named_npz(name, root)
            _check_named(name, train, test, shape=shape, num_classes=num_classes)
            augment = "cifar" if name.startswith("cifar") else None
        label = name
    else:
        raise ValueError(
            f"name must be one of {NAMES}, a modular arithmetic task "
            f"{tuple(MODULAR_PREFIX + op for op in MODULAR_OPS)} (options after ':', e.g. "
            f"'modular_add:p=97,train_share=0.3,seed=0') or a path ending in '.npz', "
            f"got {name!r}"
        )

    train, validation = split_validation(train, size=validation_size, seed=validation_seed)
    for split_name, split in (("train", train), ("test", test)):
        if len(split) == 0:
            raise ValueError(f"the {split_name} split of {label!r} is empty")
    classes = np.unique(train.y)
    if classes.size < 2:  # a one-class model "learns" it perfectly: nothing to measure
        raise ValueError(f"the train split of {label!r} has {classes.size} class(es) "
                         f"({classes.tolist()}); a classification task needs at least 2")
    mean, std = channel_stats(train.x)
    return Dataset(
        name=label,
        train=train,
        validation=validation,
        test=test,
        num_classes=num_classes,
        mean=mean,
        std=std,
        augment=augment,
    )


def _dense_num_classes(train: Split, test: Split, *, source: str) -> int:
    """The class count of integer labels that must be dense in ``[0, C)`` in train."""
    num_classes = int(max(train.y.max(initial=-1), test.y.max(initial=-1))) + 1
    missing = sorted(set(range(num_classes)) - set(np.unique(train.y).tolist()))
    if missing:  # e.g. one label 255 among 0..9 would make a 256-class model
        raise ValueError(
            f"labels in {source} must be dense in [0, C): the largest is {num_classes - 1} but "
            f"the train split has no example of class(es) {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''} ({len(missing)} missing)")
    return num_classes


#: Datasets registered by :func:`register`: name -> (train, test, augment, checksum).
_REGISTERED: dict[str, tuple[Split, Split, str | None, str]] = {}


def register(name: str, *, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
             y_test: np.ndarray, augment: str | None = None) -> str:
    """Make arrays in memory a named dataset: every study can then train on them.

    After ``register("my_data", x_train=..., ...)``, ``config.dataset =
    "my_data"`` runs any study on those arrays (validation carved by the
    config's ``validation_size``, statistics, checkpoints and tables as for a
    bundled dataset) and :func:`load` returns them. The arrays are checked as an
    ``.npz`` file's are: uint8 images ``[N, H, W]`` or ``[N, H, W, C]``, or
    float features ``[N, D]``; integer labels dense in ``[0, C)``. A workdir
    records their checksum (:func:`registered_checksum`): resuming it on other
    arrays under the same name is refused. Registration lasts for the Python
    process; registering the same arrays again is a no-op (a notebook cell rerun).

    Args:
      name: the dataset's name: not a bundled one (:data:`NAMES`), not a
        modular arithmetic task, not an ``.npz`` path.
      x_train: the training examples ``[N, ...]``.
      y_train: their integer labels ``[N]``.
      x_test: the test examples ``[M, ...]``.
      y_test: their integer labels ``[M]``.
      augment: ``'cifar'`` (pad-4 random crop + flip for 32x32x3 images) or None.

    Returns:
      ``name``, for ``config.dataset``.

    Raises:
      ValueError: a reserved name, one registered with other arrays, bad arrays
        or an unknown ``augment``.

    Example:
        >>> import numpy as np
        >>> from ltjax.io import data
        >>> rng = np.random.default_rng(0)
        >>> name = data.register("doc_blobs", x_train=rng.normal(size=(60, 5)).astype("f4"),
        ...                      y_train=np.arange(60) % 3, x_test=np.ones((9, 5), "f4"),
        ...                      y_test=np.arange(9) % 3)
        >>> ds = data.load(name, validation_size=10)
        >>> ds.num_classes, len(ds.train), len(ds.validation), ds.input_shape
        (3, 50, 10, (5,))
    """
    if not isinstance(name, str) or not name or name in NAMES or name.startswith(
            MODULAR_PREFIX) or name.endswith(".npz") or "/" in name:
        raise ValueError(f"name must be a new dataset name (not one of {NAMES}, not "
                         f"'{MODULAR_PREFIX}...', not a path), got {name!r}")
    if augment not in (None, "cifar"):
        raise ValueError(f"augment must be None or 'cifar', got {augment!r}")
    arrays = {"x_train": np.asarray(x_train), "y_train": np.asarray(y_train),
              "x_test": np.asarray(x_test), "y_test": np.asarray(y_test)}
    source = f"the arrays registered as {name!r}"
    train, test = _splits_from_arrays(arrays, source=source)
    if augment == "cifar" and train.x.shape[1:] != _CIFAR_SHAPE:
        raise ValueError(f"augment='cifar' needs images [N, 32, 32, 3], got "
                         f"{list(train.x.shape)}")
    _dense_num_classes(train, test, source=source)
    checksum = _checksum(train, test, augment)
    if name in _REGISTERED and _REGISTERED[name][3] != checksum:
        raise ValueError(f"dataset {name!r} is already registered with other arrays; "
                         "register these under a new name")
    _REGISTERED[name] = (train, test, augment, checksum)
    return name


def registered_checksum(name: Any) -> str | None:
    """The SHA-256 of a registered dataset's arrays (None for any other name).

    Example:
        >>> from ltjax.io import data
        >>> data.registered_checksum("digits") is None
        True
    """
    entry = _REGISTERED.get(name) if isinstance(name, str) else None
    return None if entry is None else entry[3]


def _checksum(train: Split, test: Split, augment: str | None) -> str:
    digest = hashlib.sha256(repr(augment).encode())
    for array in (train.x, train.y, test.x, test.y):
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def split_validation(split: Split, *, size: int, seed: int) -> tuple[Split, Split | None]:
    """Holds ``size`` examples of ``split`` out, chosen by ``seed``.

    The first ``size`` indices of ``np.random.default_rng(seed).permutation(N)``
    (sorted) form the held-out split; the rest keep their original order.

    Example:
        >>> import numpy as np
        >>> from ltjax.io import data
        >>> s = data.Split(np.arange(10)[:, None], np.arange(10, dtype=np.int32))
        >>> train, val = data.split_validation(s, size=3, seed=0)
        >>> len(train), len(val)
        (7, 3)
    """
    n = len(split)
    if size == 0:
        return split, None
    if not 0 < size < n:
        raise ValueError(
            f"validation_size must be in [0, {n}) (the train split has {n} examples), got {size}"
        )
    held = np.sort(np.random.default_rng(seed).permutation(n)[:size])
    keep = np.ones(n, dtype=bool)
    keep[held] = False
    kept = np.flatnonzero(keep)
    return Split(split.x[kept], split.y[kept]), Split(split.x[held], split.y[held])


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float32 mean and std of ``x``: per channel for images, global for features.

    Images ``[N, H, W, C]`` give shape ``[C]``; features ``[N, D]`` give one
    value of shape ``[1]`` (a per-feature std would blow up constant
    features). Computed in float64, two passes in chunks, std floored at 1e-8.

    Example:
        >>> import numpy as np
        >>> from ltjax.io import data
        >>> mean, std = data.channel_stats(np.full((2, 4, 4, 3), 7, np.uint8))
        >>> mean.tolist(), std.dtype
        ([7.0, 7.0, 7.0], dtype('float32'))
    """
    if x.ndim == 4:
        axes, keep = (0, 1, 2), x.shape[-1]
    elif x.ndim == 2:
        axes, keep = (0, 1), 1
    else:
        raise ValueError(f"x must be images [N, H, W, C] or features [N, D], got {x.shape}")
    count = x.size // keep
    total = np.zeros(keep, np.float64)
    for chunk in _chunks(x):
        total += chunk.sum(axis=axes, dtype=np.float64).reshape(keep)
    mean = total / max(count, 1)
    sq = np.zeros(keep, np.float64)
    for chunk in _chunks(x):
        centred = chunk.astype(np.float64) - (mean if x.ndim == 4 else mean[0])
        sq += np.square(centred).sum(axis=axes).reshape(keep)
    std = np.maximum(np.sqrt(sq / max(count, 1)), _STD_FLOOR)
    return mean.astype(np.float32), std.astype(np.float32)


# ------------------------------------------------------------- shifted copies


_SHIFT_CHUNK = 4096


def rotate(split: Split, *, degrees: float | tuple[float, float], seed: int = 0) -> Split:
    """A copy of ``split`` with every image rotated about its centre (a distribution shift).

    Counter-clockwise as displayed (``degrees=90`` is ``np.rot90`` over the
    height and width axes), bilinear, same size, zeros where the rotated image
    has no source pixel; uint8 images are rounded back to uint8. A pure
    function of its arguments: the same call gives the same arrays.

    Args:
      split: images ``[N, H, W, C]``.
      degrees: one angle for every image, or a range ``(low, high)``: image
        ``n`` gets the n-th draw of ``np.random.default_rng(seed).uniform(low, high, N)``.
      seed: seed of the per-image angles (unused for a single angle).

    Returns:
      The rotated :class:`Split` (labels unchanged).

    Example:
        >>> from ltjax.io import data
        >>> ds = data.synthetic((8, 8, 1), 6, num_classes=3)      # 6 random 8 x 8 images
        >>> shifted = data.rotate(ds.test, degrees=30.0)           # e.g. a rotated MNIST test set
        >>> varied = data.rotate(ds.train, degrees=(-45, 45), seed=0)
        >>> shifted.x.shape, shifted.x.dtype
        ((6, 8, 8, 1), dtype('uint8'))
    """
    if split.x.ndim != 4:
        raise ValueError(f"rotate needs images [N, H, W, C], got shape {split.x.shape}")
    n, h, w, _ = split.x.shape
    if np.ndim(degrees) == 0:
        angles = np.full(n, float(degrees))
    else:
        low, high = (float(d) for d in degrees)
        if not low <= high:
            raise ValueError(f"degrees must be an angle or a range (low, high) with low <= high, "
                             f"got {degrees}")
        angles = np.random.default_rng(seed).uniform(low, high, n)
    if not np.all(np.isfinite(angles)):
        raise ValueError(f"degrees must be finite, got {degrees}")
    rows, cols = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2,
                             indexing="ij")
    out = np.empty(split.x.shape, np.float32)
    for start in range(0, n, _SHIFT_CHUNK):
        stop = min(n, start + _SHIFT_CHUNK)
        theta = np.deg2rad(angles[start:stop])[:, None, None]
        cos, sin = np.cos(theta), np.sin(theta)
        # Output pixel (r, c) reads the source at the inverse rotation of its offset.
        src_r = (h - 1) / 2 + rows * cos + cols * sin
        src_c = (w - 1) / 2 + cols * cos - rows * sin
        out[start:stop] = _bilinear(split.x[start:stop].astype(np.float32), src_r, src_c)
    return Split(_like(out, split.x), split.y.copy())


def _bilinear(images: np.ndarray, src_r: np.ndarray, src_c: np.ndarray) -> np.ndarray:
    """``images[n, src_r, src_c, :]`` ``[N, H, W, C]`` by bilinear interpolation, 0 outside."""
    n, h, w, _ = images.shape
    r0, c0 = np.floor(src_r), np.floor(src_c)
    fr, fc = (src_r - r0)[..., None], (src_c - c0)[..., None]
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    batch = np.arange(n)[:, None, None]
    out = np.zeros(images.shape, np.float32)
    for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                           (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        r, c = r0 + dr, c0 + dc
        inside = ((r >= 0) & (r < h) & (c >= 0) & (c < w))[..., None]
        pixels = images[batch, np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)]
        out += np.where(inside, weight * pixels, 0.0).astype(np.float32)
    return out


def add_noise(split: Split, *, std: float, seed: int = 0) -> Split:
    """A copy of ``split`` plus Gaussian noise of ``std`` (in the stored units), seeded.

    uint8 images are rounded and clipped to [0, 255]; float features are not clipped.

    Example:
        >>> from ltjax.io import data
        >>> ds = data.synthetic((8, 8, 1), 6, num_classes=3)      # 6 random 8 x 8 images
        >>> noisy = data.add_noise(ds.test, std=64.0, seed=0)  # pixels are 0..255
        >>> noisy.x.dtype, bool((noisy.y == ds.test.y).all())
        (dtype('uint8'), True)
    """
    if not (np.isfinite(std) and std >= 0):
        raise ValueError(f"std must be finite and >= 0, got {std}")
    noise = np.random.default_rng(seed).normal(0.0, std, split.x.shape)
    return Split(_like(split.x.astype(np.float64) + noise, split.x), split.y.copy())


def synthetic(shape: tuple[int, ...], num_examples: int, *, num_classes: int = 10,
              augment: str | None = None, seed: int = 0) -> Dataset:
    """Random uint8 images of ``shape`` with random labels: a dataset of real shapes for speed.

    For benchmarks (speed does not depend on pixel values): train has
    ``num_examples`` examples, test the first ``min(1000, num_examples)``;
    mean 128 and std 64 per channel.

    Example:
        >>> from ltjax.io import data
        >>> ds = data.synthetic((32, 32, 3), 2000, augment="cifar")
        >>> len(ds.train), len(ds.test), ds.mean.tolist()
        (2000, 1000, [128.0, 128.0, 128.0])
    """
    gen = np.random.default_rng(seed)
    train = Split(x=gen.integers(0, 256, (num_examples, *shape), dtype=np.uint8),
                  y=gen.integers(0, num_classes, num_examples).astype(np.int32))
    test = Split(x=train.x[:1000], y=train.y[:1000])
    return Dataset(name="synthetic", train=train, validation=None, test=test,
                   num_classes=num_classes, mean=np.full(shape[-1], 128.0, np.float32),
                   std=np.full(shape[-1], 64.0, np.float32), augment=augment)


def random_labels(split: Split, *, share: float, num_classes: int, seed: int = 0,
                  exclude_true: bool = False) -> Split:
    """A copy of ``split`` with ``ceil(share * N)`` labels redrawn (pretraining on altered data).

    Frankle, Schwab & Morcos 2020, Section 5 (open_lth's random-labels
    transform): the positions are ``ceil(N * share)`` distinct examples drawn
    with ``np.random.default_rng(seed)``; each gets a label drawn uniformly from
    all ``num_classes`` classes (so about ``1 / C`` keep their true label, as the
    reference) or, with ``exclude_true``, from the ``C - 1`` other classes.

    Example:
        >>> from ltjax.io import data
        >>> ds = data.synthetic((8, 8, 1), 6, num_classes=3)      # 6 random 8 x 8 images
        >>> shuffled = data.random_labels(ds.train, share=1.0, num_classes=3, seed=0)
        >>> shuffled.y.shape, bool((shuffled.x == ds.train.x).all())
        ((6,), True)
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    n = len(split.y)
    gen = np.random.default_rng(seed)
    positions = gen.choice(n, math.ceil(n * share), replace=False)
    labels = split.y.copy()
    if exclude_true:
        offsets = gen.integers(1, num_classes, positions.size)
        labels[positions] = (split.y[positions] + offsets) % num_classes
    else:
        labels[positions] = gen.integers(0, num_classes, positions.size)
    return Split(split.x.copy(), labels.astype(split.y.dtype))


def rotation_task(split: Split, *, seed: int | None = None) -> Split:
    """The 4-way rotation-prediction task: images rotated by ``np.rot90`` exactly, label = k.

    Self-supervised pretraining (Gidaris et al. 2018; Frankle, Schwab & Morcos
    2020, Section 5): the label is the rotation's index ``k`` (4 classes), the
    image is ``np.rot90(x, k)`` over the height and width axes, exactly (open_lth's
    ``RandomRotation(label * 90)`` samples an angle in ``+-90 k`` instead).

    Args:
      split: square images ``[N, H, H, C]``.
      seed: None: every image at all four rotations, ``4N`` examples ordered
        rotation-major ``[x rot 0, x rot 90, x rot 180, x rot 270]``. An int:
        ``N`` examples, image ``n`` rotated by the n-th draw of
        ``np.random.default_rng(seed).integers(0, 4, N)`` (open_lth's form: one
        rotation per image).

    Returns:
      The pretext :class:`Split` (labels in ``0..3``; train it with a 4-class head).

    Example:
        >>> from ltjax.io import data
        >>> ds = data.synthetic((8, 8, 1), 6, num_classes=3)      # 6 random 8 x 8 images
        >>> pretext = data.rotation_task(ds.train)          # 4N images, labels 0..3
        >>> len(pretext), sorted(set(pretext.y.tolist()))
        (24, [0, 1, 2, 3])
        >>> one_each = data.rotation_task(ds.train, seed=0)  # N images, one rotation each
        >>> len(one_each)
        6
    """
    if split.x.ndim != 4 or split.x.shape[1] != split.x.shape[2]:
        raise ValueError(f"rotation_task needs square images [N, H, H, C], got {split.x.shape}")
    if seed is None:
        images = np.concatenate([np.rot90(split.x, k, axes=(1, 2)) for k in range(4)])
        labels = np.repeat(np.arange(4, dtype=split.y.dtype), len(split.y))
        return Split(np.ascontiguousarray(images), labels)
    labels = np.random.default_rng(seed).integers(0, 4, len(split.y)).astype(split.y.dtype)
    images = np.empty_like(split.x)
    for k in range(4):
        chosen = labels == k
        images[chosen] = np.rot90(split.x[chosen], k, axes=(1, 2))
    return Split(images, labels)


#: The upsampling methods of :func:`blur`.
BLUR_METHODS = ("bilinear", "nearest")


def blur(split: Split, *, factor: int, method: str = "bilinear") -> Split:
    """A copy of ``split`` downsampled by ``factor`` (area mean) and upsampled back.

    Frankle, Schwab & Morcos 2020, Section 5's blurred pretraining data (x4).
    Height and width must be multiples of ``factor``; ``factor=1`` is the
    identity. The down step is an exact block mean; the up step is
    ``jax.image.resize`` with ``method`` (``'bilinear'``, or ``'nearest'``:
    each block filled with its mean, so an image constant on ``factor x factor``
    blocks is returned unchanged). PIL's resize, as the reference, also
    antialiases.

    Example:
        >>> from ltjax.io import data
        >>> ds = data.synthetic((8, 8, 1), 6, num_classes=3)      # 6 random 8 x 8 images
        >>> blurred = data.blur(ds.train, factor=4)
        >>> blocky = data.blur(ds.train, factor=4, method="nearest")
        >>> blurred.x.shape, blocky.x.dtype
        ((6, 8, 8, 1), dtype('uint8'))
    """
    if split.x.ndim != 4:
        raise ValueError(f"blur needs images [N, H, W, C], got shape {split.x.shape}")
    n, h, w, c = split.x.shape
    if not (isinstance(factor, int) and factor >= 1 and h % factor == 0 and w % factor == 0):
        raise ValueError(f"factor must be a positive integer dividing the image size {h}x{w}, "
                         f"got {factor!r}")
    if method not in BLUR_METHODS:
        raise ValueError(f"method must be one of {BLUR_METHODS}, got {method!r}")
    if factor == 1:
        return Split(split.x.copy(), split.y.copy())
    x = split.x.astype(np.float32)
    small = x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
    out = np.empty(x.shape, np.float32)
    for start in range(0, n, _SHIFT_CHUNK):
        chunk = small[start:start + _SHIFT_CHUNK]
        out[start:start + len(chunk)] = np.asarray(jax.image.resize(
            chunk, (len(chunk), h, w, c), method=method))
    return Split(_like(out, split.x), split.y.copy())


#: The kinds of :func:`altered_dataset`.
ALTERED_KINDS = ("random_labels", "rotation", "blur")


def altered_dataset(dataset: Dataset, *, kind: str, share: float = 1.0,
                    exclude_true: bool = False, blur_factor: int = 4,
                    blur_method: str = "bilinear", seed: int = 0) -> Dataset:
    """The dataset of a pretraining on altered data (Frankle, Schwab & Morcos 2020, Section 5).

    ``'random_labels'``: the training labels of :func:`random_labels` (``share``,
    ``exclude_true``, ``seed``); validation and test keep their true labels, so
    their accuracy is the real task's. ``'rotation'``: every split becomes the
    4-way :func:`rotation_task` (one rotation per image, seeds ``seed``,
    ``seed + 1``, ``seed + 2`` for train, test and validation), 4 classes, no
    augmentation (a horizontal flip would turn a 90-degree rotation into a
    flipped 270-degree one); its test split measures the pretext task only.
    ``'blur'``: every split blurred by :func:`blur` with ``blur_factor`` (``blur_method``).
    The mean and std stay the real data's, so inputs are normalised as in the
    real task.

    Example:
        >>> from ltjax.io import data
        >>> ds = data.synthetic((8, 8, 1), 6, num_classes=3)      # 6 random 8 x 8 images
        >>> pretext = data.altered_dataset(ds, kind="rotation", seed=0)
        >>> pretext.num_classes, len(pretext.train) == len(ds.train)
        (4, True)
    """
    if kind not in ALTERED_KINDS:
        raise ValueError(f"kind must be one of {ALTERED_KINDS}, got {kind!r}")
    if kind == "random_labels":
        return dataclasses.replace(dataset, name=f"{dataset.name} (random labels)",
                                   train=random_labels(dataset.train, share=share,
                                                       num_classes=dataset.num_classes,
                                                       seed=seed, exclude_true=exclude_true))
    if kind == "rotation":
        def alter(split, offset):
            return rotation_task(split, seed=seed + offset)
        extra = {"num_classes": 4, "augment": None}
    else:
        def alter(split, offset):
            return blur(split, factor=blur_factor, method=blur_method)
        extra = {}
    return dataclasses.replace(
        dataset, name=f"{dataset.name} ({kind})", train=alter(dataset.train, 0),
        test=alter(dataset.test, 1),
        validation=None if dataset.validation is None else alter(dataset.validation, 2), **extra)


def _like(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``values`` in ``reference``'s dtype (integers: rounded and clipped to its range)."""
    if np.issubdtype(reference.dtype, np.integer):
        info = np.iinfo(reference.dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(reference.dtype)
    return values.astype(reference.dtype)


# ------------------------------------------------------------------ on-device ops


def normalize(x: jax.Array, mean: jax.Array | np.ndarray, std: jax.Array | np.ndarray) -> jax.Array:
    """``(x - mean) / std`` in float32, with ``mean``/``std`` on the trailing axes.

    Broadcasts explicitly, so it works under ``jax_numpy_rank_promotion='raise'``.
    Jittable. Empty ``mean`` and ``std`` (shape ``[0]``, a token dataset's,
    :func:`modular_arithmetic`) return ``x`` unchanged, in its own dtype: token
    ids must reach the embedding lookup as integers. This is the one hook
    through which the executor, evaluation and the studies normalise inputs.

    Example:
        >>> import jax.numpy as jnp
        >>> from ltjax.io import data
        >>> ds = data.load("digits")
        >>> xb = data.normalize(jnp.asarray(ds.train.x[:128]), ds.mean, ds.std)
        >>> xb.shape, xb.dtype
        ((128, 8, 8, 1), dtype('float32'))
    """
    if math.prod(np.shape(mean)) == 0 and math.prod(np.shape(std)) == 0:
        return jnp.asarray(x)  # token ids (empty mean/std): not normalised, dtype kept
    x = jnp.asarray(x).astype(jnp.float32)
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    lead = (1,) * (x.ndim - mean.ndim)
    return (x - mean.reshape(lead + mean.shape)) / std.reshape(lead + std.shape)


def augment_cifar(key: jax.Array, images: jax.Array, *, pad: int = 4) -> jax.Array:
    """Random crop of the zero-padded image and random horizontal flip.

    The standard CIFAR augmentation of He et al. 2016 ("Deep Residual
    Learning", Sec. 4.2: pad 4 pixels, random 32x32 crop, horizontal flip),
    per example. Padding is with zeros of whatever is passed: pass
    unnormalised images (then :func:`normalize`) to pad with black, as
    torchvision's ``RandomCrop(32, padding=4)`` does. Deterministic in ``key``;
    jittable and vmappable (e.g. over a seed axis of keys and images).

    Args:
      key: a PRNG key.
      images: ``[B, H, W, C]``.
      pad: pixels of zero padding on each side.

    Returns:
      Augmented images, same shape and dtype as ``images``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.io import data
        >>> out = data.augment_cifar(jax.random.key(0), jnp.zeros((8, 32, 32, 3)))
        >>> out.shape
        (8, 32, 32, 3)
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    pad = _as_int(pad, "pad")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    b, h, w, c = images.shape
    offsets, flips = _crop_offsets_and_flips(key, b, pad)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        zero = jnp.zeros((), offset.dtype)
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], zero), (h, w, c))

    cropped = jax.vmap(crop)(padded, offsets)
    return jnp.where(flips.reshape(b, 1, 1, 1), cropped[:, :, ::-1, :], cropped)


def _crop_offsets_and_flips(key: jax.Array, batch: int, pad: int) -> tuple[jax.Array, jax.Array]:
    """Crop corners ``[B, 2]`` (row, col in ``0..2*pad``) and flips ``[B]`` of a key."""
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1, dtype=jnp.int32)
    flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
    return offsets, flips


# ----------------------------------------------------------------------- sources


def _data_root(data_dir: str | os.PathLike | None) -> pathlib.Path:
    """``data_dir``, else ``$LTJAX_DATA_DIR``, else ``~/.cache/ltjax``."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return pathlib.Path(data_dir).expanduser()


def _cache_path(root: pathlib.Path, name: str) -> pathlib.Path:
    return root / name / f"{name}.npz"


def _named_npz(name: str, root: pathlib.Path) -> tuple[Split, Split]:
    """mnist / fashion_mnist / cifar10 / cifar100: the npz cache, else tfds (then cached)."""
    path = _cache_path(root, name)
    if path.is_file():
        return _read_npz_file(path, test_size=0)
    try:
        arrays = _read_tfds(name)
    except Exception as e:  # offline, DatasetNotFoundError, download errors, no TF...
        raise FileNotFoundError(_missing_message(name, path, e)) from e
    try:
        _write_npz(path, arrays)
    except OSError as e:
        _log.warning("could not write the cache %s (%s); continuing without it", path, e)
    return _splits_from_arrays(arrays, source=f"tfds {name!r}")


def _missing_message(name: str, path: pathlib.Path, error: Exception) -> str:
    return (
        f"{name!r} is not cached at {path} and tensorflow_datasets could not provide it "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}).\n"
        f"Put an .npz file with keys {', '.join(NPZ_KEYS)} (uint8 images, integer labels) at\n"
        f"  {path}\n"
        f"or point {DATA_DIR_ENV} (or data_dir=) at a folder laid out as "
        f"<dir>/{name}/{name}.npz.\n"
        f"On a machine with a network, load({name!r}) fetches it with tensorflow_datasets and "
        f"writes that file; building it needs TensorFlow, which ltjax's 'prepare' extra "
        f"installs (ltjax is not on PyPI): pip install -e '.[prepare]' in a clone of the "
        f"ltjax repository."
    )


def _read_tfds(name: str) -> dict[str, np.ndarray]:
    """Reads the train and test splits with ``tfds.data_source`` (no TensorFlow needed).

    Tries the prepared copy first; builds it (download + prepare, which needs
    TensorFlow) only when TensorFlow is installed, since without it the build
    fails anyway, after minutes of download retries when offline.
    """
    import tensorflow_datasets as tfds

    try:
        sources = {s: tfds.data_source(name, split=s, download=False) for s in ("train", "test")}
    except Exception as first:
        if not _tensorflow_installed():
            raise RuntimeError(
                f"tfds has no prepared array_record copy of {name!r} and TensorFlow, needed to "
                f"build one, is not installed"
            ) from first
        sources = {s: tfds.data_source(name, split=s) for s in ("train", "test")}
    arrays = {}
    for split, source in sources.items():
        # One index at a time: batched __getitems__ fails under tfds.testing.mock_data.
        examples = [source[i] for i in range(len(source))]
        arrays[f"x_{split}"] = np.stack([np.asarray(e["image"], np.uint8) for e in examples])
        arrays[f"y_{split}"] = np.asarray([e["label"] for e in examples], np.int64)
    return arrays


def _tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _digits() -> tuple[Split, Split]:
    """scikit-learn's 8x8 digits, shuffled with ``default_rng(0)``, last 360 are test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.images).astype(np.uint8)[..., None]
    y = np.asarray(bunch.target).astype(np.int32)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    cut = len(y) - _DIGITS_TEST_SIZE
    return Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:])


def _mnist1d(root: pathlib.Path) -> tuple[Split, Split]:
    """MNIST-1D (Greydanus 2020) with default args, generated offline and cached."""
    path = _cache_path(root, "mnist1d")
    if path.is_file():
        return _read_npz_file(path, test_size=0)
    # Imported lazily: the package imports matplotlib.pyplot.
    from mnist1d.data import get_dataset_args, make_dataset

    # Never mnist1d's get_dataset: it downloads and writes ./mnist1d_data.pkl.
    with _preserved_global_rng():  # make_dataset reseeds numpy and random with 42
        raw = make_dataset(get_dataset_args())
    arrays = {
        "x_train": np.asarray(raw["x"], np.float32),
        "y_train": np.asarray(raw["y"], np.int64),
        "x_test": np.asarray(raw["x_test"], np.float32),
        "y_test": np.asarray(raw["y_test"], np.int64),
    }
    try:
        _write_npz(path, arrays)
    except OSError as e:  # only a speed-up: regenerating gives the same arrays
        _log.info("not caching mnist1d at %s: %s", path, e)
    return _splits_from_arrays(arrays, source="mnist1d")


@contextlib.contextmanager
def _preserved_global_rng() -> Iterator[None]:
    """Restores numpy's and ``random``'s global generator states on exit."""
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


# -------------------------------------------------------------------- npz files


def _read_npz_file(path: pathlib.Path, *, test_size: int) -> tuple[Split, Split]:
    """Train and test splits of an npz file; ``test_size`` carves test from train."""
    if not path.is_file():
        raise FileNotFoundError(f"no such .npz file: {path}")
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        missing = [k for k in ("x_train", "y_train") if k not in keys]
        if missing:
            raise ValueError(f"{path} lacks the keys {missing} (expected {list(NPZ_KEYS)})")
        has_test = [k for k in ("x_test", "y_test") if k in keys]
        if len(has_test) == 1:
            raise ValueError(f"{path} has {has_test[0]!r} but not its pair; expected both")
        if has_test and test_size:
            raise ValueError(
                f"test_size={test_size} carves a test split from train, but {path} already "
                f"has x_test/y_test; use test_size=0"
            )
        if not has_test and not test_size:
            raise ValueError(
                f"{path} lacks the keys ['x_test', 'y_test']; pass test_size=K to use the last "
                f"K train examples as the test split"
            )
        arrays = {k: f[k] for k in NPZ_KEYS if k in keys}
    if not has_test:
        n = len(arrays["y_train"])
        _check_pair(arrays, "train", source=str(path))
        if not 0 < test_size < n:
            raise ValueError(
                f"test_size must be in (0, {n}) ({path} has {n} train examples), got {test_size}"
            )
        cut = n - test_size
        x, y = arrays.pop("x_train"), arrays.pop("y_train")
        arrays.update(x_train=x[:cut], y_train=y[:cut], x_test=x[cut:], y_test=y[cut:])
    return _splits_from_arrays(arrays, source=str(path))


def _splits_from_arrays(arrays: dict[str, np.ndarray], *, source: str) -> tuple[Split, Split]:
    """Checked train and test :class:`Split` s: channel axis added, labels int32."""
    splits = []
    for split in ("train", "test"):
        _check_pair(arrays, split, source=source)
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 3:  # grayscale images [N, H, W] -> [N, H, W, 1]
            x = x[..., None]
        if x.ndim not in (2, 4):
            raise ValueError(
                f"x_{split} in {source} must be images [N, H, W(, C)] or features [N, D], "
                f"got shape {x.shape}"
            )
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"y_{split} in {source} must be integer labels [N], got {y.dtype}{list(y.shape)}"
            )
        if y.size and y.min() < 0:
            raise ValueError(f"y_{split} in {source} has negative labels (min {y.min()})")
        if np.issubdtype(x.dtype, np.floating):
            bad = int(np.sum(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)))
            if bad:
                raise ValueError(f"x_{split} in {source} has {bad} examples with NaN or inf "
                                 "values; clean the file")
        splits.append(Split(x, y.astype(np.int32)))
    train, test = splits
    if train.x.shape[1:] != test.x.shape[1:]:
        raise ValueError(
            f"x_train and x_test in {source} differ in example shape: "
            f"{train.x.shape[1:]} vs {test.x.shape[1:]}"
        )
    return train, test


def _check_pair(arrays: dict[str, np.ndarray], split: str, *, source: str) -> None:
    nx, ny = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
    if nx != ny:
        raise ValueError(
            f"x_{split} has {nx} examples but y_{split} has {ny} labels in {source}"
        )


def _check_named(
    name: str, train: Split, test: Split, *, shape: tuple[int, ...], num_classes: int
) -> None:
    """Guards against a wrong file in a named cache slot."""
    for split_name, split in (("train", train), ("test", test)):
        if split.x.shape[1:] != shape or split.x.dtype != np.uint8:
            raise ValueError(
                f"{name} {split_name} images must be uint8 [N, {', '.join(map(str, shape))}], "
                f"got {split.x.dtype}{list(split.x.shape)}"
            )
        if len(split) and split.y.max() >= num_classes:
            raise ValueError(
                f"{name} {split_name} labels must be < {num_classes}, got {split.y.max()}"
            )


def _write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``arrays`` to ``path`` atomically (temporary file, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------- helpers


def _chunks(x: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(x), _STATS_CHUNK):
        yield x[start : start + _STATS_CHUNK]


def _as_int(value: int, argument: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{argument} must be an int, got {type(value).__name__}") from None


def _describe(a: np.ndarray) -> str:
    return f"{np.asarray(a).dtype}[{', '.join(map(str, np.shape(a)))}]"


# ------------------------------------------------------------------ modular arithmetic

MODULAR_PREFIX = "modular_"
#: The operations of :func:`modular_arithmetic`.
MODULAR_OPS: tuple[str, ...] = ("add", "sub", "mul", "div")
_MODULAR_OPTIONS = {"p": int, "train_share": float, "seed": int}


def is_prime(n: int) -> bool:
    """Whether the int ``n`` is prime (trial division).

    Example:
        >>> from ltjax.io import data
        >>> data.is_prime(97), data.is_prime(96), data.is_prime(1)
        (True, False, False)
    """
    if n < 2:
        return False
    return all(n % k for k in range(2, math.isqrt(n) + 1))


def modular_arithmetic(*, op: str = "add", p: int = 97, train_share: float = 0.3,
                       seed: int = 0) -> Dataset:
    """``a op b mod p`` for every pair, as token sequences ``[a, b, '=']`` -> the answer.

    The algorithmic task of Power et al. (2022), "Grokking", as Nanda et al.
    (2023) and Minegishi et al. (2023, "Grokking Tickets") train it: tokens
    ``0..p-1`` are the numbers and ``p`` is ``'='`` (vocabulary ``p + 1``,
    :class:`ltjax.models.Transformer`'s default); the label is the answer
    ``0..p-1`` (``num_classes = p``), predicted at the last position. One
    dataset per operation, so there is no operation token.

    Pairs: every ``(a, b)`` in ``[0, p)^2`` (``p^2`` of them), except for
    ``'div'`` where ``b`` runs over ``1..p-1`` (``a / b = a * b^(p-2) mod p``,
    so ``p`` must be prime). ``train_share`` of them (:func:`ltjax.core.topk.count`,
    half to even), the first indices of ``np.random.default_rng(seed).permutation(pairs)``, form the
    train split and the rest the test split, each in ``(a, b)`` order. Built in
    memory, no download; ``mean``/``std`` are empty so :func:`normalize`
    leaves the int32 tokens as they are.

    Args:
      op: ``'add'`` (``a + b``), ``'sub'`` (``a - b``), ``'mul'`` (``a * b``)
        or ``'div'`` (``a * b^-1``, prime ``p``).
      p: the modulus, >= 2 (97 in the papers).
      train_share: the train share of the pairs, in (0, 1) (0.3 in Nanda et al.).
      seed: a non-negative int choosing the train pairs.

    Returns:
      A :class:`Dataset` named ``'modular_<op>:p=..,train_share=..,seed=..'``
      with int32 ``x`` ``[N, 3]`` and int32 labels.

    Raises:
      ValueError: an unknown ``op``, ``p`` < 2 or not prime for ``'div'``,
        ``train_share`` outside (0, 1) or leaving a split empty, a bad ``seed``.

    Example:
        >>> from ltjax.io import data
        >>> ds = data.modular_arithmetic(op="add", p=97, train_share=0.3, seed=0)
        >>> len(ds.train), len(ds.test), ds.train.x[0].tolist(), ds.num_classes
        (2823, 6586, [0, 1, 97], 97)
    """
    if op not in MODULAR_OPS:
        raise ValueError(f"op must be one of {MODULAR_OPS}, got {op!r}")
    if isinstance(p, bool) or not isinstance(p, int | np.integer) or p < 2:
        raise ValueError(f"p must be an int >= 2, got {p!r}")
    p = int(p)
    if op == "div" and not is_prime(p):
        raise ValueError(f"op='div' needs a prime p (every b in 1..p-1 must have an inverse "
                         f"mod p), got p={p}")
    if (isinstance(train_share, bool) or not isinstance(train_share, int | float | np.floating)
            or not 0 < train_share < 1):
        raise ValueError(f"train_share must be a number in (0, 1) (the train share of the "
                         f"pairs), got {train_share!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    a, b = (g.reshape(-1) for g in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    if op == "div":
        a, b = a[b > 0], b[b > 0]
    if op == "add":
        y = (a + b) % p
    elif op == "sub":
        y = (a - b) % p
    elif op == "mul":
        y = (a * b) % p
    else:
        inverse = np.array([pow(int(v), p - 2, p) for v in range(p)])
        y = (a * inverse[b]) % p
    pairs = len(a)
    count = topk.count(pairs, train_share, rounding="half_even")
    if not 0 < count < pairs:
        raise ValueError(f"train_share={train_share} gives {count} of the {pairs} pairs to "
                         "train: both splits must be non-empty")
    chosen = np.zeros(pairs, bool)
    chosen[np.random.default_rng(int(seed)).permutation(pairs)[:count]] = True
    x = np.stack([a, b, np.full(pairs, p)], axis=1).astype(np.int32)
    y = y.astype(np.int32)
    return Dataset(
        name=f"{MODULAR_PREFIX}{op}:p={p},train_share={float(train_share)},seed={int(seed)}",
        train=Split(x[chosen], y[chosen]), validation=None, test=Split(x[~chosen], y[~chosen]),
        num_classes=p, mean=np.zeros((0,), np.float32), std=np.zeros((0,), np.float32),
        augment=None)


def _modular_options(name: str) -> dict:
    """``'modular_add:p=113,seed=1'`` -> ``{'op': 'add', 'p': 113, 'seed': 1}``."""
    head, _, tail = name.partition(":")
    options: dict = {"op": head.removeprefix(MODULAR_PREFIX)}
    if options["op"] not in MODULAR_OPS:
        raise ValueError(f"unknown modular arithmetic task {head!r}: expected one of "
                         f"{tuple(MODULAR_PREFIX + op for op in MODULAR_OPS)}")
    for item in filter(None, (part.strip() for part in tail.split(","))):
        key, eq, value = (part.strip() for part in item.partition("="))
        if key not in _MODULAR_OPTIONS or not eq:
            raise ValueError(f"{name!r}: options are key=value pairs with keys "
                             f"{tuple(_MODULAR_OPTIONS)}, got {item!r}")
        try:
            options[key] = _MODULAR_OPTIONS[key](value)
        except ValueError:
            kind = "an int" if _MODULAR_OPTIONS[key] is int else "a number"
            raise ValueError(f"{name!r}: {key} must be {kind}, got {value!r}") from None
    return options


# --------------------------------------------------------------------------- on device


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["x", "y", "mean", "std"], meta_fields=["num_examples", "augment"],
)
@dataclasses.dataclass(frozen=True)
class DeviceSplit:
    """A split's arrays as the jitted code reads them (a pytree).

    Attributes:
      x: examples as stored, padded with zero rows to ``pad_to`` (see
        :func:`device_split`).
      y: int32 labels, padded likewise.
      mean: per-channel mean for :func:`normalize`.
      std: per-channel std for :func:`normalize`.
      num_examples: the real (unpadded) number of examples (static).
      augment: the dataset's augmentation name or None (static).
    """

    x: jax.Array
    y: jax.Array
    mean: jax.Array
    std: jax.Array
    num_examples: int
    augment: str | None


def eval_batch_size(num_examples: int, max_batch_size: int) -> int:
    """Rows per evaluation batch: ``num_examples`` in as few batches as ``max_batch_size``
    allows, each as small as that allows (the padding is below one row per batch).

    Padding to a multiple of ``max_batch_size`` itself would evaluate 1000 rows for
    a 360-example split; this evaluates 360. Splits whose size is a multiple of
    ``max_batch_size`` (MNIST's 10,000 test images in batches of 1000) keep it.

    Raises:
      ValueError: ``num_examples`` or ``max_batch_size`` below 1.

    Example:
        >>> from ltjax.io import data
        >>> data.eval_batch_size(360, 1000), data.eval_batch_size(10_000, 1000)
        (360, 1000)
        >>> data.eval_batch_size(1137, 1000)      # 2 batches of 569 (1 padded row)
        569
    """
    if num_examples < 1 or max_batch_size < 1:
        raise ValueError(f"num_examples and max_batch_size must be >= 1, got {num_examples} "
                         f"and {max_batch_size}")
    num_batches = -(-num_examples // max_batch_size)
    return -(-num_examples // num_batches)


def device_split(split: Split, dataset: Dataset, *, pad_to: int = 1) -> DeviceSplit:
    """``split`` of ``dataset`` as a :class:`DeviceSplit`, rows padded to a multiple of ``pad_to``.

    The arrays are still host arrays; ``jax.device_put`` the result to place it.

    Example:
        >>> import jax
        >>> from ltjax.io import data
        >>> ds = data.load("digits")
        >>> test = jax.device_put(data.device_split(ds.test, ds, pad_to=100))
        >>> test.x.shape, test.num_examples            # padded to a multiple of 100
        ((400, 8, 8, 1), 360)
    """
    if len(split) == 0:
        raise ValueError(f"the split of {dataset.name!r} is empty")
    padded = -(-len(split) // pad_to) * pad_to
    extra = padded - len(split)
    x = np.concatenate([split.x, np.zeros((extra, *split.x.shape[1:]), split.x.dtype)])
    y = np.concatenate([split.y, np.zeros((extra,), split.y.dtype)])
    return DeviceSplit(
        x=x, y=y.astype(np.int32), mean=np.asarray(dataset.mean, np.float32),
        std=np.asarray(dataset.std, np.float32), num_examples=len(split),
        augment=dataset.augment,
    )


def epoch_permutation(order_key: jax.Array, epoch: jax.Array | int, num_examples: int) -> jax.Array:
    """The order in which epoch ``epoch`` visits the examples: a permutation of ``num_examples``.

    Example:
        >>> import jax
        >>> from ltjax.io import data
        >>> data.epoch_permutation(jax.random.key(0), 3, 10).shape
        (10,)
    """
    return jax.random.permutation(jax.random.fold_in(order_key, epoch), num_examples)


def batch_indices(
    order_key: jax.Array, start_step: jax.Array | int, *, num_steps: int, num_examples: int,
    batch_size: int,
) -> jax.Array:
    """Example indices of steps ``start_step .. start_step + num_steps - 1``, ``[T, B]`` int32.

    Each epoch is a fresh permutation of the examples (from ``order_key`` and
    the epoch number), cut into ``num_examples // batch_size`` batches; the
    last ``num_examples % batch_size`` examples of each epoch's order are
    dropped (as a loader with ``drop_last=True``). Step ``t`` always gets the
    same batch, whatever chunk it is computed in, so training resumes at any
    step. Jittable; ``start_step`` may be traced, the rest is static.

    Example:
        >>> import jax
        >>> from ltjax.io import data
        >>> idx = data.batch_indices(jax.random.key(0), 0, num_steps=5, num_examples=100,
        ...                          batch_size=10)
        >>> idx.shape
        (5, 10)
    """
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size={batch_size} is larger than the split ({num_examples} examples)"
        )
    steps_per_epoch = num_examples // batch_size
    start_step = jnp.asarray(start_step, jnp.int32)
    first_epoch = start_step // steps_per_epoch
    perms = jax.vmap(lambda e: epoch_permutation(order_key, e, num_examples))(
        first_epoch + jnp.arange(window_epochs(num_steps, steps_per_epoch), dtype=jnp.int32)
    )
    return batch_indices_in(perms, start_step, num_steps=num_steps, batch_size=batch_size)


def window_epochs(num_steps: int, steps_per_epoch: int) -> int:
    """How many epochs a window of ``num_steps`` steps can touch (from the epoch of its start).

    Example:
        >>> from ltjax.io import data
        >>> data.window_epochs(50, 916), data.window_epochs(2000, 916)
        (2, 4)
    """
    return num_steps // steps_per_epoch + 2


def batch_indices_in(perms: jax.Array, start_step: jax.Array | int, *, num_steps: int,
                     batch_size: int, first_epoch: jax.Array | int | None = None) -> jax.Array:
    """:func:`batch_indices` from the epochs' permutations ``[E, n]`` (E: :func:`window_epochs`).

    ``perms[e]`` is :func:`epoch_permutation` of epoch ``first_epoch + e``
    (default ``first_epoch``: the start step's, ``start_step // steps_per_epoch``;
    a later one's window lies inside a longer window's permutations). A caller
    that trains in many short calls computes each epoch's permutation once and
    hands the window's in (the executor does: a permutation of 55,000 examples
    costs tens of milliseconds).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax.io import data
        >>> key = jax.random.key(0)
        >>> perms = jnp.stack([data.epoch_permutation(key, e, 100) for e in (1, 2)])
        >>> bool((data.batch_indices_in(perms, 12, num_steps=3, batch_size=10)
        ...       == data.batch_indices(key, 12, num_steps=3, num_examples=100,
        ...                             batch_size=10)).all())
        True
    """
    num_examples = perms.shape[-1]
    steps_per_epoch = num_examples // batch_size
    start_step = jnp.asarray(start_step, jnp.int32)
    if first_epoch is None:
        first_epoch = start_step // steps_per_epoch
    steps = start_step + jnp.arange(num_steps, dtype=jnp.int32)
    epoch = steps // steps_per_epoch - first_epoch
    offset = (steps % steps_per_epoch) * batch_size
    columns = offset[:, None] + jnp.arange(batch_size, dtype=jnp.int32)[None, :]
    return perms[epoch[:, None], columns].astype(jnp.int32)
