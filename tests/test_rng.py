"""Key derivation: replicate independence, stable named streams."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from ltjax.core import rng


def test_replicate_keys_do_not_depend_on_count():
    small = jax.random.key_data(rng.replicate_keys(3, 2))
    large = jax.random.key_data(rng.replicate_keys(3, 8))
    np.testing.assert_array_equal(small, large[:2])
    shifted = jax.random.key_data(rng.replicate_keys(3, 2, start=4))
    np.testing.assert_array_equal(shifted, large[4:6])


def test_replicate_key_is_fold_in_of_index():
    keys = rng.replicate_keys(7, 3)
    expected = jax.random.key_data(jax.random.fold_in(jax.random.key(7), 2))
    np.testing.assert_array_equal(jax.random.key_data(keys[2]), expected)


def test_streams_differ_and_are_stable_across_processes():
    keys = rng.replicate_keys(0, 2)
    init, noise = rng.init_and_noise(keys)
    assert not np.array_equal(jax.random.key_data(init), jax.random.key_data(noise))
    # The same name gives the same salt in a fresh interpreter (Python's string hash would not).
    code = "from ltjax.core import rng; print(rng.stable_hash('noise'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "random", "PATH": ""})
    assert int(out.stdout.strip()) == rng.stable_hash("noise")
    one = rng.stream(keys[1], "noise")
    np.testing.assert_array_equal(jax.random.key_data(one), jax.random.key_data(noise[1]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_replicates"):
        rng.replicate_keys(0, 0)
    with pytest.raises(TypeError, match="name"):
        rng.stable_hash(3)
