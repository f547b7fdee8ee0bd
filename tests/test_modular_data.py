"""ltjax.io.data.modular_arithmetic: exact enumeration against Python arithmetic, seeded splits,
names through data.load, token normalisation and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax.io import data

_PYTHON = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
}


def _rows(split):
    return [tuple(int(v) for v in row) + (int(y),) for row, y in zip(split.x, split.y,
                                                                     strict=True)]


@pytest.mark.parametrize("op,p,share", [("add", 97, 0.3), ("sub", 7, 0.5), ("mul", 10, 0.4),
                                        ("div", 13, 0.35)])
def test_every_pair_once_disjoint_splits_exact_sizes_python_labels(op, p, share):
    ds = data.modular_arithmetic(op=op, p=p, train_share=share, seed=3)
    train, test = _rows(ds.train), _rows(ds.test)
    pairs = [(a, b) for a in range(p) for b in range(1 if op == "div" else 0, p)]
    seen = sorted((a, b) for a, b, _, _ in train + test)
    assert seen == pairs  # every pair exactly once, train and test disjoint
    assert len(train) == round(share * len(pairs)) and len(test) == len(pairs) - len(train)
    for a, b, eq, y in train + test:
        assert eq == p  # the '=' token
        if op == "div":
            assert (y * b) % p == a and 0 <= y < p  # y = a / b: y * b == a (mod p)
        else:
            assert y == _PYTHON[op](a, b, p)
    assert ds.train.x.dtype == np.int32 and ds.train.y.dtype == np.int32
    assert ds.input_shape == (3,) and ds.num_classes == p
    assert ds.mean.shape == (0,) and ds.std.shape == (0,) and ds.augment is None
    assert ds.validation is None
    assert ds.name == f"modular_{op}:p={p},train_share={share},seed=3"


def test_the_split_is_seeded():
    a = data.modular_arithmetic(p=11, seed=0)
    again = data.modular_arithmetic(p=11, seed=0)
    other = data.modular_arithmetic(p=11, seed=1)
    np.testing.assert_array_equal(a.train.x, again.train.x)
    assert not np.array_equal(a.train.x, other.train.x)
    assert len(a.train) == len(other.train) == round(0.3 * 121)


def test_load_by_name_with_options_and_validation():
    ds = data.load("modular_mul:p=11, train_share=0.5 ,seed=2", validation_size=10,
                   validation_seed=1)
    direct = data.modular_arithmetic(op="mul", p=11, train_share=0.5, seed=2)
    assert len(ds.validation) == 10 and len(ds.train) == len(direct.train) - 10
    np.testing.assert_array_equal(ds.test.x, direct.test.x)
    assert sorted(_rows(ds.train) + _rows(ds.validation)) == sorted(_rows(direct.train))
    default = data.load("modular_add")
    assert default.num_classes == 97 and len(default.train) + len(default.test) == 97 ** 2
    assert default.name == "modular_add:p=97,train_share=0.3,seed=0"


def test_normalize_leaves_tokens_as_ints_and_still_normalises_images():
    ds = data.modular_arithmetic(p=5)
    tokens = jax.jit(data.normalize)(ds.train.x, ds.mean, ds.std)
    assert tokens.dtype == jnp.int32
    np.testing.assert_array_equal(tokens, ds.train.x)
    images = data.normalize(jnp.full((2, 2, 2, 1), 3, jnp.uint8), np.ones(1), np.full(1, 2.0))
    assert images.dtype == jnp.float32
    np.testing.assert_allclose(images, 1.0)


@pytest.mark.parametrize("kwargs,words", [
    ({"op": "div", "p": 96}, ["prime", "p=96"]),
    ({"op": "div", "p": 1}, ["p must be an int >= 2"]),
    ({"p": 1}, ["p must be an int >= 2"]),
    ({"p": 9.0}, ["p must be an int"]),
    ({"op": "pow"}, ["op must be one of", "div"]),
    ({"train_share": 0.0}, ["train_share", "(0, 1)"]),
    ({"train_share": 1.0}, ["train_share", "(0, 1)"]),
    ({"train_share": -0.2}, ["train_share", "(0, 1)"]),
    ({"train_share": 1.5}, ["train_share", "(0, 1)"]),
    ({"train_share": True}, ["train_share"]),
    ({"train_share": 0.01, "p": 5}, ["non-empty"]),  # round(0.25) = 0 train pairs
    ({"seed": -1}, ["seed"]),
])
def test_bad_input_raises_value_errors_naming_what_was_expected(kwargs, words):
    with pytest.raises(ValueError) as raised:
        data.modular_arithmetic(**kwargs)
    for word in words:
        assert word in str(raised.value)


def test_composite_p_is_fine_where_no_inverse_is_needed():
    assert data.modular_arithmetic(op="mul", p=96, train_share=0.5).num_classes == 96


@pytest.mark.parametrize("name,word", [
    ("modular_pow", "modular_div"),
    ("modular_add:q=3", "keys ('p', 'train_share', 'seed')"),
    ("modular_add:p", "key=value"),
    ("modular_add:p=x", "p must be an int"),
    ("modular_add:train_share=2", "(0, 1)"),
    ("modular_div:p=12", "prime"),
    ("mnist_modular", "modular_add"),  # the unknown-name message lists the tasks
])
def test_bad_names_through_load(name, word):
    with pytest.raises(ValueError) as raised:
        data.load(name)
    assert word in str(raised.value)


def test_test_size_is_refused_for_modular_tasks():
    with pytest.raises(ValueError, match="test_size"):
        data.load("modular_add", test_size=10)
