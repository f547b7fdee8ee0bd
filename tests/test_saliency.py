"""Pruning-at-initialisation scores against independent NumPy oracles.

SynFlow on a bias-free ReLU MLP has a closed form: with all weights positive the
ReLUs are the identity, so ``R = 1^T |W_0| ... |W_{L-1}| 1`` and
``S_l = |W_l| * outer(v_l, u_{l+1})``, ``v_l`` the forward product of ones and
``u_{l+1}`` the backward product from the output (layout ``x @ W``, W is [in, out]).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax.core import masking, pruning
from ltjax.methods import saliency


def _mlp_params(sizes, seed, scale=None):
    gen = np.random.default_rng(seed)
    return {f"Dense_{i}": {"kernel": (gen.normal(size=(a, b)) * (scale or np.sqrt(2 / a)))
                           .astype(np.float32)}
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False))}


def _forward(sizes):
    """A bias-free ReLU MLP on an all-ones input of batch 1."""

    def forward(params):
        x = jnp.ones((1, sizes[0]), jax.tree.leaves(params)[0].dtype)
        for i in range(len(sizes) - 1):
            x = x @ params[f"Dense_{i}"]["kernel"]
            if i < len(sizes) - 2:
                x = jax.nn.relu(x)
        return x

    return forward


def _synflow_oracle(params):
    """Closed-form SynFlow scores and R in NumPy float64."""
    ws = [np.abs(np.asarray(params[f"Dense_{i}"]["kernel"], np.float64))
          for i in range(len(params))]
    v = [np.ones(ws[0].shape[0])]
    for w in ws:
        v.append(v[-1] @ w)
    u = [np.ones(ws[-1].shape[1])]
    for w in reversed(ws):
        u.insert(0, w @ u[0])
    scores = {f"Dense_{i}": {"kernel": w * np.outer(v[i], u[i + 1])} for i, w in enumerate(ws)}
    return scores, float(v[-1].sum())


def _leaves(t):
    return [np.asarray(x) for x in jax.tree.leaves(t)]


def _top_k_masks(scores, k):
    """Keep the k highest entries of a tree of NumPy scores (distinct values)."""
    flat = np.concatenate([s.reshape(-1) for s in _leaves(scores)])
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(flat)[flat.size - k:]] = True
    out, start = [], 0
    for s in _leaves(scores):
        out.append(keep[start:start + s.size].reshape(s.shape))
        start += s.size
    return out


def _assert_masks(masks, expected):
    for got, want in zip(_leaves(masks), expected, strict=True):
        np.testing.assert_array_equal(got, want)


SIZES = [5, 4, 3, 2]
FORWARD = _forward(SIZES)  # one object: synflow_prune compiles once for it


def test_synflow_matches_closed_form_and_conserves_flow():
    params = _mlp_params(SIZES, seed=0)
    assert any((x < 0).any() for x in _leaves(params))
    oracle, r = _synflow_oracle(params)
    raw = saliency.synflow_scores(FORWARD, params, log=False)
    for got, want in zip(_leaves(raw), _leaves(oracle), strict=True):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-6)
        np.testing.assert_allclose(got.sum(), r, rtol=1e-6)  # conservation: each layer sums to R
    logs = saliency.synflow_scores(FORWARD, params)
    top = max(np.log(x).max() for x in _leaves(oracle))
    for got, want in zip(_leaves(logs), _leaves(oracle), strict=True):
        assert got.dtype == np.float32 and got.max() <= 0
        np.testing.assert_allclose(got, np.log(want) - top, atol=1e-5)


def test_synflow_is_invariant_to_sign_flips_and_scores_pruned_weights_zero():
    params = _mlp_params(SIZES, seed=1)
    flips = jax.tree.map(lambda x: np.where(np.random.default_rng(2).random(x.shape) < 0.5,
                                            -x, x), params)
    a = saliency.synflow_scores(FORWARD, params)
    b = saliency.synflow_scores(FORWARD, flips)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    masks = jax.tree.map(lambda x: np.random.default_rng(3).random(x.shape) < 0.7, params)
    scores = saliency.synflow_scores(FORWARD, masking.apply(params, masks))
    for s, m in zip(_leaves(scores), _leaves(masks), strict=True):
        assert np.all(s[~m] == -np.inf)


def test_synflow_survives_float32_overflow():
    sizes = [8] * 13  # 12 layers, |w| ~ 1e4: R ~ 1e60, far beyond float32
    params = _mlp_params(sizes, seed=4, scale=1e4)
    oracle, r = _synflow_oracle(params)
    assert r > 1e50
    forward = _forward(sizes)
    # In float32 the flow overflows, and the iterative loop refuses it.
    assert not np.all(np.isfinite(np.concatenate(
        [x.ravel() for x in _leaves(saliency.synflow_scores(forward, params,
                                                            dtype=jnp.float32, log=False))])))
    selection = masking.prunable(params)
    with pytest.raises(ValueError, match="overflowed float32"):
        saliency.synflow_prune(forward, params, selection, density=0.5, rounds=1,
                               dtype=jnp.float32)
    logs = saliency.synflow_scores(forward, params)
    top = max(np.log(x).max() for x in _leaves(oracle))
    for got, want in zip(_leaves(logs), _leaves(oracle), strict=True):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, np.log(want) - top, atol=1e-4)
    total = sum(x.size for x in _leaves(params))
    for density in (0.5, 0.1):
        masks = pruning.prune_to_density(logs, selection, density=density)
        _assert_masks(masks, _top_k_masks(oracle, round(density * total)))


def test_one_round_of_synflow_prune_is_single_shot():
    params = _mlp_params(SIZES, seed=5)
    selection = masking.prunable(params)
    masks = saliency.synflow_prune(FORWARD, params, selection, density=0.3, rounds=1)
    oracle, _ = _synflow_oracle(params)
    total = sum(x.size for x in _leaves(params))
    _assert_masks(masks, _top_k_masks(oracle, round(0.3 * total)))
    single = pruning.prune_to_density(saliency.synflow_scores(FORWARD, params),
                                      selection, density=0.3)
    _assert_masks(masks, _leaves(single))


def test_synflow_prune_rounds_exact_counts_never_revive():
    sizes = [20, 16, 12, 4]
    params = _mlp_params(sizes, seed=6)
    forward = _forward(sizes)
    selection = masking.prunable(params)
    total = masking.num_prunable(masking.ones_like(params), selection)
    density = 0.1
    # Two rounds by hand, each against the NumPy oracle of the masked net.
    oracle, _ = _synflow_oracle(params)
    first = _top_k_masks(oracle, round(density ** 0.5 * total))
    masked = jax.tree.map(lambda x, m: np.where(m, x, 0), params,
                          jax.tree.unflatten(jax.tree.structure(params), first))
    oracle2, _ = _synflow_oracle(masked)
    scores2 = jax.tree.map(lambda s, m: np.where(m, s, -np.inf), _leaves(oracle2), first)
    second = _top_k_masks(scores2, round(density * total))
    masks = saliency.synflow_prune(forward, params, selection, density=density, rounds=2)
    _assert_masks(masks, second)
    assert all(np.all(~b | a) for a, b in zip(first, second, strict=True))  # never revived
    # Many rounds from given masks: exact count, a subset of the start, layerwise too.
    start = jax.tree.map(lambda x: np.random.default_rng(7).random(x.shape) < 0.9, params)
    start["Dense_2"]["kernel"][:] = True
    for scope in ("global", "layerwise"):
        kept = saliency.synflow_prune(forward, params, selection, density=0.05, rounds=5,
                                      scope=scope, masks=start)
        for k, s in zip(_leaves(kept), _leaves(start), strict=True):
            assert np.all(~k | s)
        if scope == "global":
            assert int(masking.num_kept(kept, selection)) == round(0.05 * total)
        else:
            assert all(c == round(0.05 * n) for c, n in masking.counts(kept, selection).values())


def test_iterative_synflow_avoids_the_layer_collapse_of_single_shot():
    sizes = [64, 32, 8, 4]  # the wide first layer holds most weights, each with little flow
    params = _mlp_params(sizes, seed=8)
    selection = masking.prunable(params)
    forward = _forward(sizes)
    single = saliency.synflow_prune(forward, params, selection, density=0.02, rounds=1)
    iterative = saliency.synflow_prune(forward, params, selection, density=0.02, rounds=20)
    assert min(c for c, _ in masking.counts(single, selection).values()) == 0
    assert min(c for c, _ in masking.counts(iterative, selection).values()) > 0


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, "0.5", None])
def test_synflow_prune_rejects_bad_density(bad):
    params = _mlp_params(SIZES, seed=0)
    with pytest.raises(ValueError, match="density"):
        saliency.synflow_prune(FORWARD, params, masking.prunable(params), density=bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, True, "3"])
def test_synflow_prune_rejects_bad_rounds(bad):
    params = _mlp_params(SIZES, seed=0)
    with pytest.raises(ValueError, match="rounds"):
        saliency.synflow_prune(FORWARD, params, masking.prunable(params), density=0.5,
                               rounds=bad)


def test_synflow_rejects_bad_dtype_and_scope():
    params = _mlp_params(SIZES, seed=0)
    with pytest.raises(ValueError, match="dtype"):
        saliency.synflow_scores(FORWARD, params, dtype=jnp.int32)
    with pytest.raises(ValueError, match="scope"):
        saliency.synflow_prune(FORWARD, params, masking.prunable(params), density=0.5,
                               scope="local")


def _softmax_regression(seed, batch=12, dim=6, classes=4):
    gen = np.random.default_rng(seed)
    x = gen.normal(size=(batch, dim))
    y = np.eye(classes)[gen.integers(0, classes, batch)]
    params = {"Dense_0": {"kernel": gen.normal(size=(dim, classes)) * 0.5,
                          "bias": gen.normal(size=classes) * 0.1}}
    return x, y, params


def _cross_entropy(x, y):
    def loss_fn(params):
        logits = x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"][None, :]
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=-1))

    return loss_fn


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_snip_on_softmax_regression():
    x, y, params = _softmax_regression(9)
    p = _softmax(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    grad_w = x.T @ (p - y) / len(x)
    grad_b = (p - y).mean(axis=0)
    f32 = jax.tree.map(lambda a: a.astype(np.float32), (x, y, params))
    scores = saliency.snip_scores(_cross_entropy(f32[0], f32[1]), f32[2])
    np.testing.assert_allclose(scores["Dense_0"]["kernel"],
                               np.abs(params["Dense_0"]["kernel"] * grad_w), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(scores["Dense_0"]["bias"],
                               np.abs(params["Dense_0"]["bias"] * grad_b), rtol=1e-4, atol=1e-7)


def test_grasp_hessian_gradient_product_closed_form_and_finite_difference():
    x, y, params = _softmax_regression(10)
    with jax.enable_x64(True):
        loss_fn = _cross_entropy(jnp.asarray(x), jnp.asarray(y))
        p64 = jax.tree.map(jnp.asarray, params)
        selection = {"Dense_0": {"kernel": True, "bias": False}}
        grad_fn = jax.grad(loss_fn)
        eps = 1e-5
        for prunable in (None, selection):
            g = grad_fn(p64)
            if prunable is not None:
                g = {"Dense_0": {"kernel": g["Dense_0"]["kernel"],
                                 "bias": jnp.zeros_like(g["Dense_0"]["bias"])}}
            plus = grad_fn(jax.tree.map(lambda a, d: a + eps * d, p64, g))
            minus = grad_fn(jax.tree.map(lambda a, d: a - eps * d, p64, g))
            hg = jax.tree.map(lambda a, b: (a - b) / (2 * eps), plus, minus)
            scores = saliency.grasp_scores(loss_fn, p64, prunable=prunable)
            for s, theta, h in zip(_leaves(scores), _leaves(p64), _leaves(hg), strict=True):
                assert s.dtype == np.float64
                np.testing.assert_allclose(s, theta * h, rtol=1e-6, atol=1e-12)
    # NumPy closed form for the kernel with g zero on the bias: d grad_W along V = X^T dP / B,
    # dP = P * dZ - P * sum(P * dZ), dZ = X V.
    w, b = params["Dense_0"]["kernel"], params["Dense_0"]["bias"]
    p = _softmax(x @ w + b)
    v = x.T @ (p - y) / len(x)
    dz = x @ v
    dp = p * dz - p * (p * dz).sum(axis=1, keepdims=True)
    hv = x.T @ dp / len(x)
    np.testing.assert_allclose(scores["Dense_0"]["kernel"], w * hv, rtol=1e-9)
    assert (w * hv < 0).any() and (w * hv > 0).any()  # signed scores


def test_grasp_float32_keeps_the_highest():
    x, y, params = _softmax_regression(11)
    f32 = jax.tree.map(lambda a: a.astype(np.float32), (x, y, params))
    selection = {"Dense_0": {"kernel": True, "bias": False}}
    scores = saliency.grasp_scores(_cross_entropy(f32[0], f32[1]), f32[2], prunable=selection)
    masks = pruning.prune_to_density(scores, selection, density=0.25)
    kernel = np.asarray(scores["Dense_0"]["kernel"])
    _assert_masks({"k": masks["Dense_0"]["kernel"]}, _top_k_masks({"k": kernel}, 6))


def test_inverted_scores_keep_the_lowest_even_when_signed():
    gen = np.random.default_rng(12)
    scores = {"a": {"kernel": gen.normal(size=(6, 5)).astype(np.float32)},
              "b": {"kernel": gen.normal(size=(5, 4)).astype(np.float32)}}
    selection = masking.prunable(scores)
    k = round(0.3 * 50)
    masks = pruning.prune_to_density(pruning.inverted_scores(scores), selection, density=0.3)
    negated = jax.tree.map(lambda s: -s, scores)
    _assert_masks(masks, _top_k_masks(negated, k))
    flat = np.concatenate([s.ravel() for s in _leaves(scores)])
    kept = np.concatenate([m.ravel() for m in _leaves(masks)])
    np.testing.assert_array_equal(np.sort(flat[kept]), np.sort(flat)[:k])
    # The reference's 1 / v would keep different (positive, large) weights here.
    reciprocal = jax.tree.map(lambda s: 1 / s, scores)
    assert not np.array_equal(np.concatenate([m.ravel() for m in _top_k_masks(reciprocal, k)]),
                              kept)


def _inverted_synflow_oracle(params, density, rounds):
    """Inverted iterative SynFlow in NumPy: each round keeps the lowest closed-form flow of the
    surviving weights (equal scores: the later position kept, as pruning's ties)."""
    alive = [np.ones(x.shape, bool) for x in _leaves(params)]
    total = sum(a.size for a in alive)
    history = []
    for r in range(1, rounds + 1):
        masked = {f"Dense_{i}": {"kernel": np.where(a, params[f"Dense_{i}"]["kernel"], 0)}
                  for i, a in enumerate(alive)}
        flat = np.concatenate([s.ravel() for s in _leaves(_synflow_oracle(masked)[0])])
        live = np.concatenate([a.ravel() for a in alive])
        keep = round(density ** (r / rounds) * total)
        order = [i for i in np.lexsort((np.arange(flat.size), -flat)) if live[i]]
        kept = np.zeros(flat.size, bool)
        kept[order[len(order) - keep:]] = True  # the lowest flow, the later position on ties
        alive, start = [], 0
        for s in _leaves(params):
            alive.append(kept[start:start + s.size].reshape(s.shape))
            start += s.size
        history.append(alive)
    return history


def test_inverted_synflow_keeps_the_lowest_flow_in_every_round():
    params = _mlp_params(SIZES, seed=13)
    selection = masking.prunable(params)
    density, rounds = 0.3, 4
    history = _inverted_synflow_oracle(params, density, rounds)
    masks = saliency.synflow_prune(FORWARD, params, selection, density=density, rounds=rounds,
                                   invert=True)
    _assert_masks(masks, history[-1])
    total = sum(x.size for x in _leaves(params))
    assert int(masking.num_kept(masks, selection)) == round(density * total)
    # Every round rescores the net the previous one kept: not the one-shot inversion.
    one_shot = saliency.synflow_prune(FORWARD, params, selection, density=density, rounds=1,
                                      invert=True)
    (single,) = _inverted_synflow_oracle(params, density, 1)
    _assert_masks(one_shot, single)
    assert not all(np.array_equal(a, b) for a, b in zip(history[-1], single, strict=True))
    with pytest.raises(ValueError, match="invert"):
        saliency.synflow_prune(FORWARD, params, selection, density=0.5, invert="yes")
