"""STR (Kusupati et al. 2020): the soft threshold, its reparameterisation and the export.

Oracles: NumPy float64 for the forward pass and the closed-form gradients
``dL/dW = g 1[|W| > sigmoid(s)]``, ``dL/ds = -sigmoid'(s) sum_active sign(W) g``
(a linear loss ``sum(c * W_hat)`` makes ``g = c``), and a hand-written SGD step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ltjax import models
from ltjax.core import masking, tree
from ltjax.engine import optim
from ltjax.engine import reparam as reparam_lib
from ltjax.methods.soft_threshold import (
    THRESHOLD_LABEL,
    calibrate_weight_decay,
    learned_densities,
    learned_sparsity,
    soft_threshold,
    sparse_masks,
    sparse_weights,
    str_reparam,
)


def _sigmoid(s):
    return 1.0 / (1.0 + np.exp(-np.float64(s)))


def _np_soft_threshold(w, s):
    w = np.asarray(w, np.float64)
    return np.sign(w) * np.maximum(np.abs(w) - _sigmoid(s), 0.0)


def _params(seed=0):
    """A kernel at the top, one nested two levels down, a bias and a norm scale."""
    k = jax.random.split(jax.random.key(seed), 4)
    return {
        "Dense_0": {"kernel": jax.random.normal(k[0], (6, 5)),
                    "bias": jax.random.normal(k[1], (5,))},
        "Block_0": {"Dense_0": {"kernel": jax.random.normal(k[2], (5, 4))}},
        "LayerNorm_0": {"scale": jax.random.normal(k[3], (4,))},
    }


def _coeffs(params, seed=1):
    """Fixed cotangents ``c`` for the linear loss ``sum(c * params)``."""
    keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params)))
    leaves = [jax.random.normal(k, p.shape) for k, p in
              zip(keys, jax.tree.leaves(params), strict=True)]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


def _linear_loss(r, c):
    def loss(t):
        out = r.apply(t, {}, None, train=True)
        return sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(c),
                                                   strict=True))
    return loss


KERNELS = (("Dense_0", "kernel"), ("Block_0", "Dense_0", "kernel"))


def _get(t, keys):
    for k in keys:
        t = t[k]
    return t


def _closed_form(w, s, c):
    """(dL/dW, dL/ds) of ``sum(c * soft_threshold(w, s))`` in float64."""
    w, c = np.asarray(w, np.float64), np.asarray(c, np.float64)
    sig = _sigmoid(s)
    active = np.abs(w) > sig
    return c * active, -sig * (1 - sig) * np.sum(np.sign(w) * c * active)


# --------------------------------------------------------------------------- the function


def test_forward_matches_numpy():
    w = jax.random.normal(jax.random.key(0), (7, 9))
    for s in (-2.0, 0.0, 0.7):
        got = soft_threshold(w, jnp.float32(s))
        assert got.dtype == jnp.float32 and got.shape == w.shape
        expected = _np_soft_threshold(w, s)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(got) == 0, expected == 0)
        assert 0 < np.mean(expected == 0) < 1   # some cut, some kept
    assert soft_threshold(w.astype(jnp.bfloat16), -1.0).dtype == jnp.bfloat16


def test_gradients_match_closed_form():
    w = jax.random.normal(jax.random.key(2), (8, 5))
    c = jax.random.normal(jax.random.key(3), (8, 5))
    for s in (-1.5, 0.3):
        assert np.min(np.abs(np.abs(np.asarray(w, np.float64)) - _sigmoid(s))) > 1e-4  # no ties
        gw, gs = jax.grad(lambda w_, s_: jnp.sum(c * soft_threshold(w_, s_)), argnums=(0, 1))(
            w, jnp.float32(s))
        exp_w, exp_s = _closed_form(w, s, c)
        np.testing.assert_array_equal(np.asarray(gw), exp_w.astype(np.float32))  # c or 0
        np.testing.assert_allclose(float(gs), exp_s, rtol=1e-5)


def test_reparam_gradients_match_closed_form_leaf_by_leaf():
    params = _params()
    prunable = masking.prunable(params)
    r = str_reparam(prunable, s_init=-0.5)
    t, frozen = r.init(params, jax.random.key(0))
    assert frozen == {}
    c = _coeffs(params)
    grads = jax.grad(_linear_loss(r, c))(t)
    for keys in KERNELS:
        exp_w, exp_s = _closed_form(_get(params, keys), -0.5, _get(c, keys))
        np.testing.assert_array_equal(np.asarray(_get(grads["params"], keys)), exp_w)
        np.testing.assert_allclose(float(_get(grads["thresholds"], keys)), exp_s, rtol=1e-5)
    # Non-prunable leaves pass through: their gradient is c itself.
    for keys in (("Dense_0", "bias"), ("LayerNorm_0", "scale")):
        np.testing.assert_array_equal(np.asarray(_get(grads["params"], keys)),
                                      np.asarray(_get(c, keys)))


def test_s_minus_3200_is_the_identity_exactly():
    s = jnp.float32(-3200.0)
    assert float(jax.nn.sigmoid(s)) == 0.0
    assert float(jax.grad(jax.nn.sigmoid)(s)) == 0.0
    w = jax.random.normal(jax.random.key(4), (6, 3))
    c = jax.random.normal(jax.random.key(5), (6, 3))
    assert np.asarray(soft_threshold(w, s)).tobytes() == np.asarray(w).tobytes()
    gw, gs = jax.grad(lambda w_, s_: jnp.sum(c * soft_threshold(w_, s_)), argnums=(0, 1))(w, s)
    assert float(gs) == 0.0
    assert np.asarray(gw).tobytes() == np.asarray(c).tobytes()
    # Through the reparameterisation: the model's params are the weights, bit for bit.
    params = _params()
    r = str_reparam(masking.prunable(params), s_init=-3200.0)
    out = r.apply(r.init(params, jax.random.key(0))[0], {}, None, train=False)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(params), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_at_or_below_the_threshold_is_exactly_zero_and_export_mask_is_nonzero():
    s = 0.4
    sig = np.float32(jax.nn.sigmoid(jnp.float32(s)))   # the float32 threshold itself
    below = np.nextafter(sig, np.float32(0))
    above = np.nextafter(sig, np.float32(1))
    row = np.array([sig, -sig, below, -below, 0.0, above, -above, 2.0], np.float32)
    got = np.asarray(soft_threshold(jnp.asarray(row), jnp.float32(s)))
    np.testing.assert_array_equal(got[:5], 0.0)
    assert np.all(got[5:] != 0) and np.array_equal(np.sign(got[5:]), np.sign(row[5:]))
    # The export: exact zeros, masks == (W_hat != 0) on kernels, all-True elsewhere.
    params = _params()
    prunable = masking.prunable(params)
    r = str_reparam(prunable, s_init=s)
    t, _ = r.init(params, jax.random.key(0))
    weights = sparse_weights(t, prunable)
    ticket = sparse_masks(t, prunable)
    kept = total = 0
    for keys in KERNELS:
        expected = _np_soft_threshold(_get(params, keys), s)
        np.testing.assert_allclose(np.asarray(_get(weights, keys)), expected, rtol=1e-6,
                                   atol=1e-7)
        np.testing.assert_array_equal(np.asarray(_get(ticket, keys)), expected != 0)
        np.testing.assert_array_equal(np.asarray(_get(ticket, keys)),
                                      np.asarray(_get(weights, keys)) != 0)
        density = learned_densities(t, prunable)["/".join(keys)]
        assert density == pytest.approx(np.mean(expected != 0))
        kept, total = kept + np.sum(expected != 0), total + expected.size
    assert 0 < kept < total
    assert set(learned_densities(t, prunable)) == {"/".join(k) for k in KERNELS}
    assert learned_sparsity(t, prunable) == pytest.approx(1 - kept / total)
    for keys in (("Dense_0", "bias"), ("LayerNorm_0", "scale")):
        assert np.all(np.asarray(_get(ticket, keys)))
        assert np.asarray(_get(weights, keys)).tobytes() == np.asarray(
            _get(params, keys)).tobytes()


# --------------------------------------------------------------------------- the optimiser


@pytest.mark.parametrize("threshold_decay", [None, 0.3])
def test_one_sgd_step_matches_hand_computation(threshold_decay):
    lr, member_wd = 0.1, 0.05
    params = _params()
    prunable = masking.prunable(params)
    r = str_reparam(prunable, s_init=-0.5, threshold_decay=threshold_decay)
    t, _ = r.init(params, jax.random.key(0))
    labels = r.labels(t)
    want = optim.DEFAULT if threshold_decay is None else THRESHOLD_LABEL
    assert set(jax.tree.leaves(labels["thresholds"])) == {want}
    assert set(jax.tree.leaves(labels["params"])) == {optim.DEFAULT}
    # The recipe's decay (0.01) is not the member's (0.05): the thresholds must use the latter.
    recipe = optim.Recipe(optimizer="sgd", learning_rate=lr, weight_decay=0.01)
    tx = optim.make_optimizer(recipe, learning_rate=lr, weight_decay=member_wd, labels=labels,
                              group_decay=r.group_decay)
    c = _coeffs(params)
    grads = jax.grad(_linear_loss(r, c))(t)
    updates, _ = tx.update(grads, tx.init(t), t)
    new = optax.apply_updates(t, updates)
    s_decay = member_wd if threshold_decay is None else threshold_decay
    for keys in KERNELS:
        w = np.asarray(_get(params, keys), np.float64)
        exp_gw, exp_gs = _closed_form(w, -0.5, _get(c, keys))
        np.testing.assert_allclose(np.asarray(_get(new["params"], keys)),
                                   w - lr * (exp_gw + member_wd * w), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(_get(new["thresholds"], keys)),
                                   -0.5 - lr * (exp_gs + s_decay * -0.5), rtol=1e-5)
    b = np.asarray(params["Dense_0"]["bias"], np.float64)
    np.testing.assert_allclose(np.asarray(new["params"]["Dense_0"]["bias"]),
                               b - lr * (np.asarray(c["Dense_0"]["bias"]) + member_wd * b),
                               rtol=1e-5, atol=1e-7)


def test_at_minus_3200_the_threshold_moves_by_weight_decay_only():
    lr, wd = 0.1, 0.02
    params = _params()
    r = str_reparam(masking.prunable(params), s_init=-3200.0, threshold_decay=wd)
    t, _ = r.init(params, jax.random.key(0))
    grads = jax.grad(_linear_loss(r, _coeffs(params)))(t)
    assert all(float(g) == 0.0 for g in jax.tree.leaves(grads["thresholds"]))
    tx = optim.make_optimizer(optim.Recipe(optimizer="sgd", learning_rate=lr), labels=r.labels(t),
                              group_decay=r.group_decay)
    new = optax.apply_updates(t, tx.update(grads, tx.init(t), t)[0])
    for s in jax.tree.leaves(new["thresholds"]):
        assert float(s) == pytest.approx(-3200.0 * (1 - lr * wd), rel=1e-6)


def test_imp_masks_compose():
    params = _params()
    prunable = masking.prunable(params)
    masks = jax.tree.map(lambda p, f: jax.random.bernoulli(jax.random.key(9), 0.5, p.shape)
                         if f else jnp.ones(p.shape, bool), params, prunable)
    r = str_reparam(prunable, s_init=-1.0, threshold_decay=0.1)
    t, _ = r.init(params, jax.random.key(0))
    tm = r.trainable_masks(masks, t)
    assert tm["params"] is masks
    assert all(bool(m) and m.shape == () for m in jax.tree.leaves(tm["thresholds"]))
    # As train.train_steps does: mask the trainable tree, masked forward, masked update.
    t = masking.apply(t, tm)
    recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.1)
    tx = optim.make_optimizer(recipe, labels=r.labels(t), group_decay=r.group_decay, masks=tm)
    opt_state = tx.init(t)
    c = _coeffs(params)

    def loss(t_):
        out = masking.apply(r.apply(t_, {}, None, train=True), masks)
        return sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(c),
                                                   strict=True))

    start = t
    for _ in range(3):
        updates, opt_state = tx.update(jax.grad(loss)(t), opt_state, t)
        t = optax.apply_updates(t, updates)
    exported = sparse_weights(t, prunable)
    for keys in KERNELS:
        off = ~np.asarray(_get(masks, keys))
        assert off.any()
        assert np.all(np.asarray(_get(t["params"], keys))[off] == 0.0)
        assert np.all(np.asarray(_get(exported, keys))[off] == 0.0)
        assert not np.asarray(_get(sparse_masks(t, prunable), keys))[off].any()
        # The threshold stays trainable under the masks.
        assert float(_get(t["thresholds"], keys)) != float(_get(start["thresholds"], keys))
    # Masks given at export act too (an unmasked trainable tree).
    fresh, _ = r.init(params, jax.random.key(0))
    masked = sparse_weights(fresh, prunable, masks=masks)
    for keys in KERNELS:
        assert np.all(np.asarray(_get(masked, keys))[~np.asarray(_get(masks, keys))] == 0.0)


# --------------------------------------------------------------------------- protocol, errors


def test_fits_the_reparam_protocol_of_a_model():
    model = models.create("mlp", widths=(16,))
    abstract = jax.eval_shape(lambda k: models.init(model, k, (8, 8, 1))[0], jax.random.key(0))
    prunable = masking.prunable(abstract)
    r = str_reparam(prunable, s_init=-3200.0, threshold_decay=1e-4)
    trainable, frozen = reparam_lib.check(r, abstract)
    assert frozen == {}
    # One threshold per prunable layer (first and classifier included), named by its path.
    assert tree.names(trainable["thresholds"]) == [
        n for n, f in zip(tree.names(abstract), jax.tree.leaves(prunable), strict=True) if f]
    assert len(jax.tree.leaves(trainable["thresholds"])) == 2
    assert r.group_decay == {THRESHOLD_LABEL: 1e-4}
    assert str_reparam(prunable, s_init=-5.0).group_decay == {}


def test_bad_input_raises_naming_the_argument():
    params = _params()
    prunable = masking.prunable(params)
    for bad in (float("nan"), float("inf"), 1e39, "a", True):
        with pytest.raises(ValueError, match="s_init"):
            str_reparam(prunable, s_init=bad)
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="threshold_decay"):
            str_reparam(prunable, s_init=-1.0, threshold_decay=bad)
    with pytest.raises(ValueError, match="prunable"):
        str_reparam(jax.tree.map(lambda _: False, prunable), s_init=-1.0)
    with pytest.raises(ValueError, match="prunable"):
        str_reparam(params, s_init=-1.0)   # arrays, not bools
    with pytest.raises(ValueError, match="prunable"):
        str_reparam(prunable, s_init=-1.0).init({"Dense_0": params["Dense_0"]}, None)
    with pytest.raises(ValueError, match="s must be a scalar"):
        soft_threshold(jnp.ones((2, 2)), jnp.zeros(2))
    with pytest.raises(ValueError, match="trainable"):
        sparse_weights(params, prunable)


def test_calibrate_weight_decay_finds_a_planted_decay():
    # A planted monotone response: sparsity = 1 - exp(-wd / 1e-3); 0.9 at wd = 2.3026e-3.
    calls = []

    def sparsities_at(wds):
        calls.append(len(wds))
        return 1.0 - np.exp(-np.asarray(wds) / 1e-3)

    decay, history = calibrate_weight_decay(
        sparsities_at, 0.9, low=1e-5, high=1e-1, points=5, rounds=6)
    assert calls == [5] * 6 and len(history) == 30
    assert decay == pytest.approx(1e-3 * np.log(10.0), rel=0.02)
    with pytest.raises(ValueError, match="target"):
        calibrate_weight_decay(sparsities_at, 1.0, low=1e-5, high=1e-1)
    with pytest.raises(ValueError, match="low and high"):
        calibrate_weight_decay(sparsities_at, 0.5, low=1e-1, high=1e-5)
    with pytest.raises(ValueError, match="one sparsity per decay"):
        calibrate_weight_decay(lambda w: [0.5], 0.5, low=1e-5, high=1e-1)
