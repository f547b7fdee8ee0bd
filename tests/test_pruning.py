"""Pruning against an independent NumPy oracle; masks and their comparisons; rewinding."""

import fractions
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax.core import masking, pruning, rewinding, tree

SHAPES = {"Conv_0": {"kernel": (3, 3, 2, 4), "bias": (4,)},
          "Dense_0": {"kernel": (36, 10), "bias": (10,)},
          "Dense_1": {"kernel": (10, 5), "bias": (5,)},
          "BatchNorm_0": {"scale": (4,), "bias": (4,)}}


def _random_tree(seed, *, ties=False):
    gen = np.random.default_rng(seed)

    def leaf(shape):
        if ties:  # few distinct values: many ties
            return gen.integers(-3, 4, shape).astype(np.float32)
        return gen.normal(size=shape).astype(np.float32)

    return jax.tree.map(leaf, SHAPES, is_leaf=lambda x: isinstance(x, tuple))


def _random_masks(seed, params, keep=0.7):
    gen = np.random.default_rng(seed)
    return jax.tree.map(lambda p: gen.random(p.shape) < keep, params)


def _oracle_prune(scores, masks, selection, fraction, groups):
    """Remove ceil(fraction * remaining) lowest scores per group; ties by (leaf, flat index)."""
    names = tree.names(scores)
    s_leaves = [np.asarray(x) for x in jax.tree.leaves(scores)]
    m_leaves = [np.asarray(x).copy() for x in jax.tree.leaves(masks)]
    for group, rate in groups:
        idx = [names.index(n) for n in group]
        alive = [(float(s_leaves[i].reshape(-1)[j]), i, j)
                 for i in idx for j in np.flatnonzero(m_leaves[i].reshape(-1))]
        k = math.ceil(fractions.Fraction(str(rate)) * len(alive))  # exact decimal
        for _, i, j in sorted(alive)[:k]:
            flat = m_leaves[i].reshape(-1)
            flat[j] = False
            m_leaves[i] = flat.reshape(m_leaves[i].shape)
    return jax.tree.unflatten(jax.tree.structure(masks), m_leaves)


def _assert_masks_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


KERNELS = ["Conv_0/kernel", "Dense_0/kernel", "Dense_1/kernel"]


def test_prunable_default_is_kernels_only():
    params = _random_tree(0)
    selection = masking.prunable(params)
    assert [n for n, f in zip(tree.names(params), jax.tree.leaves(selection), strict=True)
            if f] == KERNELS
    only_dense = masking.prunable(params, include="Dense", exclude="Dense_1")
    assert [n for n, f in zip(tree.names(params), jax.tree.leaves(only_dense), strict=True)
            if f] == ["Dense_0/kernel"]
    with pytest.raises(ValueError, match="no prunable"):
        masking.prunable(params, include="BatchNorm")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.37])
def test_global_pruning_matches_oracle(seed, ties, fraction):
    params = _random_tree(seed, ties=ties)
    masks = _random_masks(seed + 100, params)
    selection = masking.prunable(params)
    scores = pruning.magnitude_scores(params)
    got = jax.jit(lambda s, m: pruning.prune(s, m, selection, fraction=fraction))(scores, masks)
    expected = _oracle_prune(scores, masks, selection, fraction, [(KERNELS, fraction)])
    _assert_masks_equal(got, expected)
    before = int(masking.num_kept(masks, selection))
    after = int(masking.num_kept(got, selection))
    assert before - after == math.ceil(fractions.Fraction(str(fraction)) * before)
    # non-prunable leaves untouched
    np.testing.assert_array_equal(got["Conv_0"]["bias"], masks["Conv_0"]["bias"])


def test_removed_weights_are_exactly_the_smallest():
    params = _random_tree(5)
    selection = masking.prunable(params)
    masks = pruning.prune(pruning.magnitude_scores(params), masking.ones_like(params), selection,
                          fraction=0.3)
    kept, removed = [], []
    for name, p, m in zip(tree.names(params), jax.tree.leaves(params), jax.tree.leaves(masks),
                          strict=True):
        if name in KERNELS:
            kept += list(np.abs(p[np.asarray(m)]))
            removed += list(np.abs(p[~np.asarray(m)]))
    assert max(removed) <= min(kept)


def test_layerwise_and_layer_rates_match_oracle():
    params = _random_tree(1, ties=True)
    masks = _random_masks(7, params)
    selection = masking.prunable(params)
    scores = pruning.magnitude_scores(params)
    got = pruning.prune(scores, masks, selection, fraction=0.2, scope="layerwise",
                        layer_rates={"Dense_1": 0.1})
    expected = _oracle_prune(scores, masks, selection, 0.2, [
        (["Dense_1/kernel"], 0.1), (["Conv_0/kernel"], 0.2), (["Dense_0/kernel"], 0.2)])
    _assert_masks_equal(got, expected)
    # Global scope with an override: the overridden layer on its own, the rest together.
    got = pruning.prune(scores, masks, selection, fraction=0.2, scope="global",
                        layer_rates={"Dense_1": 0.1})
    expected = _oracle_prune(scores, masks, selection, 0.2, [
        (["Dense_1/kernel"], 0.1), (["Conv_0/kernel", "Dense_0/kernel"], 0.2)])
    _assert_masks_equal(got, expected)


def test_densities_follow_point_eight_to_the_level():
    params = _random_tree(2)
    selection = masking.prunable(params)
    masks = masking.ones_like(params)
    total = masking.num_prunable(masks, selection)
    kept = total
    for _level in range(1, 8):
        masks = pruning.prune(pruning.magnitude_scores(params), masks, selection, fraction=0.2)
        kept -= math.ceil(kept / 5)
        assert int(masking.num_kept(masks, selection)) == kept
    assert abs(float(masking.density(masks, selection)) - 0.8**7) < 7 / total


def test_openlth_sparse_global_removes_one_more():
    """The documented difference: OpenLTH's threshold rule removes k + 1 (no ties here)."""
    params = _random_tree(3)
    selection = masking.prunable(params)
    ours = pruning.prune(pruning.magnitude_scores(params), masking.ones_like(params), selection,
                         fraction=0.2)
    vector = np.concatenate([np.abs(np.asarray(params[n.split("/")[0]]["kernel"])).ravel()
                             for n in KERNELS])
    k = math.ceil(0.2 * vector.size)
    threshold = np.sort(vector)[k]
    openlth_removed = int(np.sum(vector <= threshold))
    ours_removed = vector.size - int(masking.num_kept(ours, selection))
    assert (ours_removed, openlth_removed) == (k, k + 1)


def test_vmapped_pruning_equals_per_replicate():
    stacked = tree.stack([_random_tree(s) for s in range(3)])
    masks = tree.stack([_random_masks(s, _random_tree(s)) for s in range(3)])
    selection = masking.prunable(_random_tree(0))
    fn = jax.jit(jax.vmap(lambda p, m: pruning.prune(pruning.magnitude_scores(p), m, selection,
                                                     fraction=0.2, scope="global")))
    got = fn(stacked, masks)
    for r in range(3):
        one = pruning.prune(pruning.magnitude_scores(tree.index(stacked, r)),
                            tree.index(masks, r), selection, fraction=0.2)
        _assert_masks_equal(tree.index(got, r), one)


def test_prune_to_density_and_match():
    params = _random_tree(4)
    selection = masking.prunable(params)
    scores = pruning.magnitude_scores(params)
    total = masking.num_prunable(masking.ones_like(params), selection)
    oneshot = pruning.prune_to_density(scores, selection, density=0.25)
    assert int(masking.num_kept(oneshot, selection)) == round(0.25 * total)
    expected = _oracle_prune(scores, masking.ones_like(params), selection,
                             fractions.Fraction(total - round(0.25 * total), total),
                             [(KERNELS, fractions.Fraction(total - round(0.25 * total), total))])
    _assert_masks_equal(oneshot, expected)
    layer = pruning.prune_to_density(scores, selection, density=0.5, scope="layerwise")
    for name, (kept, size) in masking.counts(layer, selection).items():
        assert kept == round(0.5 * size), name
    ticket = _random_masks(9, params, keep=0.3)
    matched = pruning.prune_to_match(scores, ticket, selection, scope="layerwise")
    assert masking.counts(matched, selection).keys() == masking.counts(ticket, selection).keys()
    for name in KERNELS:
        assert masking.counts(matched, selection)[name] == masking.counts(ticket, selection)[name]


def test_random_pruning_keeps_counts():
    params = _random_tree(6)
    selection = masking.prunable(params)
    ticket = pruning.prune(pruning.magnitude_scores(params), masking.ones_like(params), selection,
                           fraction=0.6, scope="layerwise")
    layerwise = pruning.random_prune_like(jax.random.key(0), ticket, selection)
    assert masking.counts(layerwise, selection) == masking.counts(ticket, selection)
    assert int(masking.hamming(layerwise, ticket, selection)) > 0
    spread = pruning.random_prune_like(jax.random.key(0), ticket, selection, scope="global")
    assert int(masking.num_kept(spread, selection)) == int(masking.num_kept(ticket, selection))
    again = pruning.random_prune_like(jax.random.key(0), ticket, selection)
    _assert_masks_equal(again, layerwise)


def test_mask_comparisons():
    params = _random_tree(0)
    selection = masking.prunable(params)
    a = _random_masks(1, params, 0.5)
    b = _random_masks(2, params, 0.5)
    flat = [(np.asarray(x), np.asarray(y)) for n, x, y in zip(
        tree.names(a), jax.tree.leaves(a), jax.tree.leaves(b), strict=True) if n in KERNELS]
    inter = sum(int(np.sum(x & y)) for x, y in flat)
    union = sum(int(np.sum(x | y)) for x, y in flat)
    assert int(masking.overlap(a, b, selection)) == inter
    assert int(masking.hamming(a, b, selection)) == union - inter
    np.testing.assert_allclose(float(masking.iou(a, b, selection)), inter / union, rtol=1e-6)
    assert float(masking.iou(a, a, selection)) == 1.0
    densities = masking.layer_densities(a, selection)
    assert set(densities) == set(KERNELS)


def test_rewind_restores_step_k_values_exactly():
    params_k = _random_tree(0)
    masks = _random_masks(3, params_k)
    rewound = rewinding.rewind(params_k, masks)
    for p, m, r in zip(jax.tree.leaves(params_k), jax.tree.leaves(masks),
                       jax.tree.leaves(rewound), strict=True):
        np.testing.assert_array_equal(np.asarray(r)[m], p[m])
        assert np.all(np.asarray(r)[~m] == 0.0)
    fresh = _random_tree(99)
    reinit = rewinding.rewind(fresh, masks)
    for p, m, r in zip(jax.tree.leaves(params_k), jax.tree.leaves(masks),
                       jax.tree.leaves(reinit), strict=True):
        assert np.all((np.asarray(r) != 0) <= m)
        if m.any():
            assert not np.array_equal(np.asarray(r)[m], p[m])


def test_bad_inputs():
    params = _random_tree(0)
    selection = masking.prunable(params)
    scores = pruning.magnitude_scores(params)
    ones = masking.ones_like(params)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            pruning.prune(scores, ones, selection, fraction=bad)
    for bad in (0.0, 1.2):
        with pytest.raises(ValueError, match="density"):
            pruning.prune_to_density(scores, selection, density=bad)
    half = pruning.prune_to_density(scores, selection, density=0.5)
    with pytest.raises(ValueError, match="higher density"):
        pruning.prune_to_density(scores, selection, density=0.8, masks=half)
    with pytest.raises(ValueError, match="masks"):
        pruning.prune(scores, {"Dense_0": ones["Dense_0"]}, selection, fraction=0.2)
    with pytest.raises(ValueError, match="scope"):
        pruning.prune(scores, ones, selection, fraction=0.2, scope="per_neuron")
    with pytest.raises(ValueError, match="layer_rates"):
        pruning.prune(scores, ones, selection, fraction=0.2, layer_rates={"Dense_9": 0.1})
    with pytest.raises(ValueError, match="masks"):
        rewinding.rewind(params, {"x": jnp.ones(3, bool)})


def test_masks_of_the_wrong_shape_or_dtype_are_refused_naming_the_leaf():
    params = {"Dense_0": {"kernel": jnp.ones((64, 300))}}
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        masking.apply(params, {"Dense_0": {"kernel": jnp.ones((300,), bool)}})  # no broadcast
    with pytest.raises(ValueError, match="must be bool"):
        masking.apply(params, {"Dense_0": {"kernel": jnp.full((64, 300), 0.5)}})
    selection = masking.prunable(params)
    with pytest.raises(ValueError, match="must be bool"):
        pruning.prune(params, {"Dense_0": {"kernel": jnp.ones((64, 300), jnp.int32)}},
                      selection, fraction=0.2)
    # NumPy and JAX scalars are numbers too.
    masks = masking.ones_like(params)
    a = pruning.prune(params, masks, selection, fraction=np.float32(0.25))
    b = pruning.prune(params, masks, selection, fraction=jnp.float32(0.25))
    assert int(masking.num_kept(a, selection)) == int(masking.num_kept(b, selection)) == 14400


# Su et al. 2020's random tickets: the smart ratio (reference pruner/SmartRatio.py).

def _smart_ratio_oracle(sizes, density, last=0.3):
    """NumPy: p_l = min(1, c * ((L-l+1)^2 + (L-l+1))) for l < L, p_L = last, c by bisection."""
    sizes = np.asarray(sizes, np.float64)
    depth = len(sizes)
    weight = np.array([k * k + k for k in range(depth, 1, -1)], float)  # k = L - l + 1
    goal = density * sizes.sum() - last * sizes[-1]
    lo, hi = 0.0, 1.0 / weight.min()
    for _ in range(200):
        c = (lo + hi) / 2
        lo, hi = (c, hi) if (np.minimum(1, c * weight) * sizes[:-1]).sum() < goal else (lo, c)
    return np.append(np.minimum(1, c * weight), last)


@pytest.mark.parametrize("sizes, density", [
    ([432, 4608, 9216, 9216, 640], 0.1),  # a conv net: no layer clipped
    ([432, 4608, 9216, 9216, 640], 0.02),
    ([235200, 30000, 1000], 0.032),  # LeNet-300-100
    ([100, 50, 400, 20], 0.6),  # the first layer clipped at 1
])
def test_smart_ratio_densities_match_the_papers_formula(sizes, density):
    got = np.array(pruning.smart_ratio_densities(sizes, density))
    want = _smart_ratio_oracle(sizes, density)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert np.dot(got, sizes) == pytest.approx(density * sum(sizes), rel=1e-12)  # exact total
    free = got[:-1] < 1
    ratio = got[:-1] / np.array([k * k + k for k in range(len(sizes), 1, -1)])
    np.testing.assert_allclose(ratio[free], ratio[free][0], rtol=1e-12)  # one constant c
    if density == 0.6:
        assert got[0] == 1.0 and got[1] < 1


@pytest.mark.parametrize("sizes, density, match", [
    ([1000, 10], 0.001, "outside the smart ratio's range"),  # the last layer alone keeps more
    ([100, 10], 1.0, "outside the smart ratio's range"),
    ([100], 0.5, "at least two layers"),
    ([100, 10], 0.0, "density must be"),
])
def test_smart_ratio_densities_refuse_what_they_cannot_reach(sizes, density, match):
    with pytest.raises(ValueError, match=match):
        pruning.smart_ratio_densities(sizes, density)


def test_smart_ratio_prune_keeps_the_counts_in_forward_order():
    """Names out of forward order (``b_in`` is the input layer); counts by largest remainder of
    the oracle's exact targets, adding up to round(density * total); biases kept."""
    key = jax.random.key(0)
    params = {"a_out": {"kernel": jnp.ones((16, 10)), "bias": jnp.ones(10)},
              "b_in": {"kernel": jnp.ones((64, 40)), "bias": jnp.ones(40)},
              "c_mid": {"kernel": jnp.ones((40, 16)), "bias": jnp.ones(16)}}
    selection = masking.prunable(params)

    def forward(p):
        h = jnp.ones(64) @ p["b_in"]["kernel"] + p["b_in"]["bias"]
        h = h @ p["c_mid"]["kernel"] + p["c_mid"]["bias"]
        return h @ p["a_out"]["kernel"] + p["a_out"]["bias"]

    layers = pruning.forward_order(forward, params, selection)
    assert layers == ("b_in/kernel", "c_mid/kernel", "a_out/kernel")
    sizes = [2560, 640, 160]
    targets = _smart_ratio_oracle(sizes, 0.1) * sizes  # 336 in all
    counts = np.floor(targets + 1e-9).astype(int)
    extra = 336 - counts.sum()
    counts[np.argsort(-(targets - counts), kind="stable")[:extra]] += 1
    masks = jax.jit(lambda k: pruning.smart_ratio_prune(
        k, params, selection, density=0.1, layers=layers))(key)
    got = [int(masks[n]["kernel"].sum()) for n in ("b_in", "c_mid", "a_out")]
    assert got == counts.tolist() and sum(got) == 336 and got[2] == 48
    assert all(bool(masks[n]["bias"].all()) for n in params)
    other = pruning.smart_ratio_prune(jax.random.key(1), params, selection, density=0.1,
                                      layers=layers)
    assert not np.array_equal(other["b_in"]["kernel"], masks["b_in"]["kernel"])
    with pytest.raises(ValueError, match="layers must name each prunable leaf"):
        pruning.smart_ratio_prune(key, params, selection, density=0.1, layers=layers[:2])
