"""Tests of ltjax.io.data: offline sources, splits, statistics and CIFAR augmentation."""

from __future__ import annotations

import os
import pathlib
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax.io import data


def _shared_dir() -> pathlib.Path | None:
    root = os.environ.get(data.DATA_DIR_ENV)
    return pathlib.Path(root) if root else None


def _shared_file(*parts: str) -> pathlib.Path:
    root = _shared_dir()
    path = root.joinpath(*parts) if root else None
    if path is None or not path.is_file():
        pytest.skip(f"offline data file {'/'.join(parts)} not found under ${data.DATA_DIR_ENV}")
    return path


@pytest.fixture(scope="module")
def mnist() -> data.Dataset:
    _shared_file("mnist", "mnist.npz")
    return data.load("mnist")


def _write(path: pathlib.Path, **arrays: np.ndarray) -> pathlib.Path:
    np.savez(path, **arrays)
    return path


def _toy_arrays(n: int, *, shape=(6, 6), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 3, n)


# ------------------------------------------------------------------------- MNIST


def test_mnist_from_cache(mnist):
    assert mnist.name == "mnist"
    assert mnist.input_shape == (28, 28, 1)
    assert mnist.train.x.shape == (60000, 28, 28, 1) and mnist.train.x.dtype == np.uint8
    assert mnist.train.y.shape == (60000,) and mnist.train.y.dtype == np.int32
    assert mnist.test.x.shape == (10000, 28, 28, 1) and len(mnist.test) == 10000
    assert mnist.validation is None
    assert mnist.num_classes == 10 and mnist.augment is None
    np.testing.assert_array_equal(mnist.train.y[:5], [5, 0, 4, 1, 9])
    assert mnist.mean.shape == mnist.std.shape == (1,)
    assert mnist.mean.dtype == mnist.std.dtype == np.float32
    assert abs(mnist.mean[0] - 0.1307 * 255) < 0.5
    assert abs(mnist.std[0] - 0.3081 * 255) < 0.5


def test_mnist_validation_carve(mnist):
    v = 5000
    ds = data.load("mnist", validation_size=v, validation_seed=3)
    assert ds.train.x.shape == (60000 - v, 28, 28, 1)
    assert ds.validation.x.shape == (v, 28, 28, 1) and ds.validation.y.dtype == np.int32
    assert ds.test.x.shape == (10000, 28, 28, 1)
    held = np.sort(np.random.default_rng(3).permutation(60000)[:v])
    kept = np.setdiff1d(np.arange(60000), held)
    np.testing.assert_array_equal(ds.validation.x, mnist.train.x[held])
    np.testing.assert_array_equal(ds.validation.y, mnist.train.y[held])
    np.testing.assert_array_equal(ds.train.x, mnist.train.x[kept])
    np.testing.assert_array_equal(ds.train.y, mnist.train.y[kept])
    # Statistics come from what stays in train.
    expected = mnist.train.x[kept].astype(np.float64).mean()
    np.testing.assert_allclose(ds.mean, [expected], rtol=1e-6)


def test_split_validation_indices():
    n = 100
    split = data.Split(np.arange(n)[:, None], np.arange(n, dtype=np.int32))
    train, val = data.split_validation(split, size=30, seed=0)
    again_train, again_val = data.split_validation(split, size=30, seed=0)
    _, other_val = data.split_validation(split, size=30, seed=1)
    np.testing.assert_array_equal(val.y, again_val.y)
    np.testing.assert_array_equal(train.y, again_train.y)
    assert not np.array_equal(val.y, other_val.y)
    assert len(train) == 70 and len(val) == 30
    assert np.intersect1d(train.y, val.y).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train.y, val.y])), np.arange(n))
    assert np.all(np.diff(train.y) > 0) and np.all(np.diff(val.y) > 0)
    np.testing.assert_array_equal(train.x[:, 0], train.y)
    assert data.split_validation(split, size=0, seed=0) == (split, None)


# -------------------------------------------------------------------------- tfds


def test_tfds_path_writes_cache(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    n = 7
    with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load("mnist", data_dir=tmp_path)
    assert ds.train.x.shape == (n, 28, 28, 1) and ds.train.x.dtype == np.uint8
    assert ds.test.x.shape == (n, 28, 28, 1) and ds.test.y.shape == (n,)
    assert ds.train.y.dtype == np.int32 and ds.num_classes == 10
    cache = tmp_path / "mnist" / "mnist.npz"
    assert cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == ["mnist.npz"]  # no temporary left
    again = data.load("mnist", data_dir=tmp_path)  # outside the mock: the cache
    for a, b in [(ds.train, again.train), (ds.test, again.test)]:
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(ds.mean, again.mean)


def test_missing_cache_offline_names_expected_path(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds, "data_source", offline)
    with pytest.raises(FileNotFoundError) as info:
        data.load("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar10" / "cifar10.npz") in message
    assert data.DATA_DIR_ENV in message
    # The extra is installed from the repository (ltjax is not on PyPI).
    assert "pip install -e '.[prepare]' in a clone of the ltjax repository" in message
    assert "ltjax[prepare]" not in message
    causes, error = [], info.value
    while error.__cause__ is not None:
        causes.append(error := error.__cause__)
    assert any(isinstance(c, ConnectionError) for c in causes)  # the original is chained
    assert not (tmp_path / "cifar10").exists()


def test_missing_cache_builds_with_tensorflow(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []

    def offline(name, **kwargs):
        calls.append(kwargs.get("download", True))
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds, "data_source", offline)
    monkeypatch.setattr(data, "_tensorflow_installed", lambda: True)
    with pytest.raises(FileNotFoundError, match="mnist.npz") as info:
        data.load("mnist", data_dir=tmp_path)
    assert calls == [False, True]  # the prepared copy first, then download and build
    assert isinstance(info.value.__cause__, ConnectionError)


def test_cifar_sample_is_not_cifar10(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    _shared_file("cifar10_first4000", "cifar10_train_first4000.npz")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds, "data_source", offline)
    with pytest.raises(FileNotFoundError, match="cifar10.npz"):
        data.load("cifar10")  # from $LTJAX_DATA_DIR: only the sample is there


# --------------------------------------------------------------- digits, mnist1d


def test_digits():
    ds = data.load("digits")
    assert len(ds.train) == 1437 and len(ds.test) == 360
    assert ds.input_shape == (8, 8, 1) and ds.train.x.dtype == np.uint8
    assert ds.train.x.max() <= 16 and ds.test.x.max() <= 16
    assert ds.num_classes == 10 and set(np.unique(ds.train.y)) == set(range(10))
    assert ds.mean.shape == (1,) and 0 < ds.mean[0] < 16
    again = data.load("digits", validation_size=0)
    np.testing.assert_array_equal(ds.train.x, again.train.x)
    np.testing.assert_array_equal(ds.test.y, again.test.y)


def test_mnist1d_offline_and_hygienic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The legacy global generators are what mnist1d reseeds.
    np.random.seed(123)  # noqa: NPY002
    random.seed(456)
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    ds = data.load("mnist1d", data_dir=tmp_path / "cache")
    after_np = np.random.get_state()  # noqa: NPY002
    assert after_np[0] == np_state[0]
    np.testing.assert_array_equal(after_np[1], np_state[1])
    assert after_np[2:] == np_state[2:]
    assert random.getstate() == py_state
    assert not list(tmp_path.glob("*.pkl"))
    assert ds.train.x.shape == (4000, 40) and ds.train.x.dtype == np.float32
    assert ds.test.x.shape == (1000, 40) and ds.test.y.dtype == np.int32
    assert ds.input_shape == (40,) and ds.mean.shape == ds.std.shape == (1,)
    assert ds.num_classes == 10 and ds.augment is None
    cached = data.load("mnist1d", data_dir=tmp_path / "cache")  # read back from the npz
    assert (tmp_path / "cache" / "mnist1d" / "mnist1d.npz").is_file()
    np.testing.assert_array_equal(ds.train.x, cached.train.x)
    np.testing.assert_array_equal(ds.test.y, cached.test.y)


# ------------------------------------------------------------------------- .npz


def test_npz_with_test_split(tmp_path):
    x, y = _toy_arrays(20)
    xt, yt = _toy_arrays(5, seed=1)
    path = _write(tmp_path / "toy.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    ds = data.load(path, validation_size=4)
    assert ds.input_shape == (6, 6, 1) and ds.augment is None
    assert len(ds.train) == 16 and len(ds.validation) == 4 and len(ds.test) == 5
    assert ds.num_classes == int(max(y.max(), yt.max())) + 1
    np.testing.assert_array_equal(ds.test.x[..., 0], xt)
    with pytest.raises(ValueError, match="test_size"):
        data.load(path, test_size=2)


def test_npz_without_test_split(tmp_path):
    x, y = _toy_arrays(20, shape=(32, 32, 3))
    path = _write(tmp_path / "train_only.npz", x_train=x, y_train=y)
    with pytest.raises(ValueError, match="x_test"):
        data.load(path)
    ds = data.load(str(path), test_size=6)
    assert len(ds.train) == 14 and len(ds.test) == 6 and ds.augment == "cifar"
    np.testing.assert_array_equal(ds.test.x, x[-6:])
    np.testing.assert_array_equal(ds.train.y, y[:-6])
    assert ds.mean.shape == (3,)
    with pytest.raises(ValueError, match="test_size"):
        data.load(path, test_size=20)


def test_cifar_sample():
    path = _shared_file("cifar10_first4000", "cifar10_train_first4000.npz")
    ds = data.load(path, test_size=400)
    assert ds.train.x.shape == (3600, 32, 32, 3) and ds.test.x.shape == (400, 32, 32, 3)
    assert ds.augment == "cifar" and ds.num_classes == 10
    np.testing.assert_array_equal(ds.train.y[:5], [6, 9, 9, 4, 1])
    assert ds.mean.shape == (3,) and np.all((ds.mean > 90) & (ds.mean < 140))


# ------------------------------------------------------------------- bad input


def test_unknown_name():
    with pytest.raises(ValueError, match="name must be one of"):
        data.load("imagenet")


def test_bad_sizes(tmp_path):
    x, y = _toy_arrays(10)
    path = _write(tmp_path / "toy.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(ValueError, match=r"validation_size.*10 examples"):
        data.load(path, validation_size=10)
    with pytest.raises(ValueError, match="validation_size"):
        data.load(path, validation_size=-1)
    with pytest.raises(ValueError, match="test_size"):
        data.load("digits", test_size=5)


def test_mismatched_lengths(tmp_path):
    x, y = _toy_arrays(10)
    path = _write(tmp_path / "bad.npz", x_train=x, y_train=y[:9], x_test=x, y_test=y)
    with pytest.raises(ValueError, match=r"x_train has 10 examples but y_train has 9.*bad\.npz"):
        data.load(path)


def test_non_finite_features_are_refused_at_load(tmp_path):
    x, y = _toy_arrays(10)
    x = x.astype(np.float32)
    x[3, 0] = np.nan
    path = _write(tmp_path / "nan.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(ValueError, match=r"x_train in .*nan\.npz has 1 examples with NaN"):
        data.load(path)


def test_sparse_labels_are_refused_not_turned_into_extra_classes(tmp_path):
    x, y = _toy_arrays(10)
    y = y.copy()
    y[4] = 255
    path = _write(tmp_path / "labels.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(ValueError, match=r"dense in \[0, C\).*largest is 255"):
        data.load(path)


def test_missing_npz_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        data.load(tmp_path / "nope.npz")


def test_wrong_file_in_named_slot(tmp_path):
    x, y = _toy_arrays(10, shape=(32, 32, 3))
    (tmp_path / "mnist").mkdir()
    _write(tmp_path / "mnist" / "mnist.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(ValueError, match="mnist train images must be uint8"):
        data.load("mnist", data_dir=tmp_path)


# ------------------------------------------------------------------ statistics


def test_channel_stats():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10000, 2, 2, 3), dtype=np.uint8)  # > one chunk
    mean, std = data.channel_stats(x)
    np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, x.reshape(-1, 3).std(0), rtol=1e-6)
    mean, std = data.channel_stats(np.ones((5, 4), np.float32))
    assert mean.shape == std.shape == (1,) and std[0] == pytest.approx(1e-8)


def test_normalize():
    x = jnp.arange(2 * 2 * 2 * 3, dtype=jnp.uint8).reshape(2, 2, 2, 3)
    mean, std = np.array([1.0, 2.0, 3.0], np.float32), np.array([2.0, 4.0, 8.0], np.float32)
    out = jax.jit(data.normalize)(x, mean, std)
    expected = (np.asarray(x, np.float32) - mean) / std
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    features = data.normalize(jnp.ones((4, 40)), np.zeros(1), np.full(1, 2.0))
    np.testing.assert_allclose(features, 0.5)


# ---------------------------------------------------------------- augmentation


def _oracle(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, pad: int) -> np.ndarray:
    _, h, w, _ = images.shape
    out = []
    for image, (dy, dx), flip in zip(images, offsets, flips, strict=True):
        crop = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))[dy : dy + h, dx : dx + w]
        out.append(crop[:, ::-1] if flip else crop)
    return np.stack(out)


@pytest.fixture(scope="module")
def patterns() -> np.ndarray:
    # Distinct values everywhere (offset by 1 so padding zeros are distinguishable).
    return (np.arange(16 * 32 * 32 * 3, dtype=np.float32).reshape(16, 32, 32, 3) % 997) + 1


def test_augment_matches_numpy_oracle(patterns):
    key = jax.random.key(0)
    out = np.asarray(data.augment_cifar(key, patterns))
    offsets, flips = data._crop_offsets_and_flips(key, len(patterns), 4)
    offsets, flips = np.asarray(offsets), np.asarray(flips)
    assert out.shape == patterns.shape and out.dtype == patterns.dtype
    assert offsets.min() >= 0 and offsets.max() <= 8
    assert 0 < flips.sum() < len(flips) and len({tuple(o) for o in offsets}) > 4
    np.testing.assert_array_equal(out, _oracle(patterns, offsets, flips, 4))


def test_augment_deterministic_and_transform_invariant(patterns):
    fn = data.augment_cifar
    a = fn(jax.random.key(1), patterns)
    np.testing.assert_array_equal(a, fn(jax.random.key(1), patterns))
    assert not np.array_equal(a, fn(jax.random.key(2), patterns))
    np.testing.assert_array_equal(a, jax.jit(fn)(jax.random.key(1), patterns))
    keys = jax.random.split(jax.random.key(3), 2)
    stacked = jnp.stack([patterns[:8], patterns[8:]])
    batched = jax.jit(jax.vmap(fn))(keys, stacked)
    for i in range(2):
        np.testing.assert_array_equal(batched[i], fn(keys[i], stacked[i]))


def test_augment_rejects_bad_shape():
    with pytest.raises(ValueError, match="images must be"):
        data.augment_cifar(jax.random.key(0), jnp.zeros((32, 32, 3)))


def test_altered_data_random_labels_rotations_and_blur():
    gen = np.random.default_rng(0)
    split = data.Split(gen.integers(0, 256, (50, 8, 8, 1), dtype=np.uint8),
                       gen.integers(0, 10, 50).astype(np.int32))
    # Random labels: exactly ceil(share * N) positions redrawn; exclude_true changes them all.
    moved = data.random_labels(split, share=0.3, num_classes=10, seed=1, exclude_true=True)
    assert int(np.sum(moved.y != split.y)) == 15
    again = data.random_labels(split, share=0.3, num_classes=10, seed=1, exclude_true=True)
    np.testing.assert_array_equal(moved.y, again.y)
    every = data.random_labels(split, share=1.0, num_classes=10, seed=2)
    assert every.y.min() >= 0 and every.y.max() < 10 and int(np.sum(every.y != split.y)) < 50
    # Rotations are np.rot90 exactly; four of them are the identity.
    task = data.rotation_task(split)
    assert task.x.shape == (200, 8, 8, 1)
    np.testing.assert_array_equal(task.y, np.repeat(np.arange(4), 50))
    np.testing.assert_array_equal(task.x[50:100], np.rot90(split.x, 1, axes=(1, 2)))
    four = split.x
    for _ in range(4):
        four = np.rot90(four, 1, axes=(1, 2))
    np.testing.assert_array_equal(four, split.x)
    # Blur: x1 is the identity, a constant image stays constant, block means are kept.
    np.testing.assert_array_equal(data.blur(split, factor=1).x, split.x)
    flat = data.Split(np.full((2, 8, 8, 1), 77, np.uint8), np.zeros(2, np.int32))
    np.testing.assert_array_equal(data.blur(flat, factor=4).x, flat.x)
    blurred = data.blur(split, factor=4)
    assert blurred.x.shape == split.x.shape and blurred.x.dtype == np.uint8
    assert abs(float(blurred.x.mean()) - float(split.x.mean())) < 2.0
    with pytest.raises(ValueError, match="factor"):
        data.blur(split, factor=3)


def test_synthetic_dataset_has_the_asked_shapes_and_stats():
    ds = data.synthetic((4, 4, 3), 50, augment="cifar", seed=1)
    assert ds.train.x.shape == (50, 4, 4, 3) and ds.train.x.dtype == np.uint8
    assert len(ds.test) == 50 and ds.augment == "cifar" and ds.input_shape == (4, 4, 3)
    assert ds.train.y.min() >= 0 and ds.train.y.max() < 10
    np.testing.assert_array_equal(ds.mean, [128.0] * 3)
    np.testing.assert_array_equal(data.synthetic((4, 4, 3), 50, seed=1).train.x, ds.train.x)


@pytest.fixture
def registry(monkeypatch):
    """Registrations last for the test only."""
    monkeypatch.setattr(data, "_REGISTERED", {})


def _blobs(seed=0, n=40):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n, 6, 6), dtype=np.uint8),
            "y_train": np.arange(n) % 4, "x_test": rng.integers(0, 256, (8, 6, 6), np.uint8),
            "y_test": np.arange(8) % 4}


def test_registered_arrays_load_by_name_like_a_file(registry, tmp_path):
    arrays = _blobs()
    assert data.register("blobs", **arrays) == "blobs"
    ds = data.load("blobs", validation_size=10, validation_seed=3)
    np.savez(tmp_path / "blobs.npz", **arrays)  # the same arrays as a file: the oracle
    from_file = data.load(tmp_path / "blobs.npz", validation_size=10, validation_seed=3)
    assert (ds.name, ds.num_classes, ds.input_shape, ds.augment) == ("blobs", 4, (6, 6, 1), None)
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(ds, split).x, getattr(from_file, split).x)
        np.testing.assert_array_equal(getattr(ds, split).y, getattr(from_file, split).y)
    np.testing.assert_array_equal(ds.mean, from_file.mean)
    data.register("blobs", **arrays)  # the same arrays again: a no-op (a rerun cell)
    assert data.registered_checksum("blobs") == data.registered_checksum(
        data.register("blobs_copy", **arrays))
    assert data.registered_checksum("digits") is None


@pytest.mark.parametrize(("name", "change", "message"), [
    ("mnist", {}, "new dataset name"),
    ("modular_add", {}, "new dataset name"),
    ("mine.npz", {}, "new dataset name"),
    ("blobs", {"y_train": np.arange(40) % 4 * 2}, "dense in"),  # labels 0, 2, 4, 6
    ("blobs", {"y_train": np.zeros(39, int)}, "y_train has 39"),
    ("blobs", {"augment": "flip"}, "augment must be"),
    ("blobs", {"augment": "cifar"}, r"\[N, 32, 32, 3\]"),
])
def test_register_refuses_reserved_names_and_bad_arrays(registry, name, change, message):
    with pytest.raises(ValueError, match=message):
        data.register(name, **{**_blobs(), **change})
    assert name not in data._REGISTERED


def test_other_arrays_under_a_registered_name_are_refused(registry, tmp_path):
    import ml_collections

    from ltjax.studies import common

    data.register("blobs", **_blobs(0))
    with pytest.raises(ValueError, match="already registered with other arrays"):
        data.register("blobs", **_blobs(1))
    # A workdir records the arrays' checksum: resuming it on other arrays is refused.
    config = ml_collections.ConfigDict({"dataset": "blobs", "seed": 0})
    common.prepare_workdir(tmp_path, config)
    saved = (tmp_path / "config.json").read_text()
    assert data.registered_checksum("blobs") in saved
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)  # the run has saved a step
    common.release_workdir_locks()
    data._REGISTERED.clear()
    data.register("blobs", **_blobs(1))  # a new process, other arrays, the same name
    with pytest.raises(ValueError, match="dataset_sha256"):
        common.prepare_workdir(tmp_path, config)


def test_eval_batch_size_is_the_smallest_batch_in_the_fewest_batches():
    # Oracle by search: among batch sizes <= max reading n in the fewest batches, the smallest.
    for n in (1, 7, 359, 360, 361, 999, 1000, 1001, 1137, 10_000, 55_000):
        for most in (1, 64, 128, 1000):
            fewest = min(-(-n // b) for b in range(1, most + 1))
            expected = min(b for b in range(1, most + 1) if -(-n // b) == fewest)
            size = data.eval_batch_size(n, most)
            assert size == expected, (n, most)
            assert 0 <= size * fewest - n < fewest  # less than one padded row per batch
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        data.eval_batch_size(10, 0)
