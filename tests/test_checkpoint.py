"""Checkpoint round trip, sharding kept, damaged steps skipped."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ltjax import checkpoint, train


def _state(num=4):
    mesh = Mesh(np.array(jax.devices()[:2]), ("seed",))
    sharding = NamedSharding(mesh, P("seed"))
    params = {"Dense_0": {"kernel": jnp.arange(num * 6, dtype=jnp.float32).reshape(num, 2, 3),
                          "bias": jnp.ones((num, 3))}}
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.trace(0.9))
    state = train.TrainState(step=jnp.full((num,), 5, jnp.int32), params=params,
                             batch_stats={}, opt_state=jax.vmap(tx.init)(params))
    masks = jax.tree.map(lambda x: x > 3.0, params)
    return jax.device_put((state, masks), sharding)


def test_round_trip_keeps_values_dtypes_and_sharding(tmp_path):
    state, masks = _state()
    with checkpoint.Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(5, state=state, masks=masks, meta={"level": 2})
        with pytest.raises(ValueError, match="already exists"):
            ckpt.save(5, state=state, masks=masks)
    with checkpoint.Checkpointer(tmp_path / "ck") as ckpt:
        step, got_state, got_masks, meta = ckpt.restore_latest(like_state=state,
                                                               like_masks=masks)
    assert step == 5 and meta == {"level": 2}
    for a, b in zip(jax.tree.leaves((state, masks)), jax.tree.leaves((got_state, got_masks)),
                    strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b.sharding == a.sharding
    assert isinstance(got_state, train.TrainState)


def test_damaged_latest_step_falls_back(tmp_path):
    state, masks = _state()
    with checkpoint.Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(1, state=state, masks=masks, meta={"n": 1})
        ckpt.save(2, state=state, masks=masks, meta={"n": 2})
    for root, _, files in os.walk(tmp_path / "ck" / "2"):
        for name in files:
            if "state" in root:
                os.remove(os.path.join(root, name))
    with checkpoint.Checkpointer(tmp_path / "ck") as ckpt:
        step, _, _, meta = ckpt.restore_latest(like_state=state, like_masks=masks)
    assert step == 1 and meta == {"n": 1}


def test_empty_directory_restores_nothing(tmp_path):
    state, _ = _state()
    with checkpoint.Checkpointer(tmp_path / "none") as ckpt:
        assert ckpt.restore_latest(like_state=state) is None
