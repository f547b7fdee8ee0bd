"""Bad inputs to the library's public functions are refused with a message naming them.

One test per case of issue #35 (item 6 and the library part of item 12): each of these
silently broadcast, extrapolated, chose by position or failed with a bare JAX error before
the shared checks (``tree.check_same_structure``, ``tree.check_finite``,
``masking.check`` / ``masking.check_bool``, ``interpolation.check_alpha``). Then one
hypothesis property per function family, against NumPy oracles, and checks that the
value checks stay out of the way under jit / vmap / grad tracing.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltjax.core import masking, pruning, tree
from ltjax.methods import early_bird, subspaces, supsup
from ltjax.methods import knowledge_evolution as ke

NAN = float("nan")
SEL = {"k": True}


def _bool(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape) < 0.5)


# --------------------------------------------------------------------------- masking distances

@pytest.mark.parametrize("fn", [masking.hamming, masking.overlap, masking.iou])
@pytest.mark.parametrize("shape_b", [(300,), (1, 300)])
def test_mask_distances_refuse_a_leaf_that_would_broadcast(fn, shape_b):
    # (300,) or (1, 300) against (64, 300) used to broadcast: hamming gave 19200 for all-True
    a = {"k": jnp.ones((64, 300), bool)}
    b = {"k": jnp.ones(shape_b, bool)}
    with pytest.raises(ValueError, match=r"masks_b\['k'\] has shape .*expected \(64, 300\)"):
        fn(a, b, SEL)


def test_iou_of_non_broadcastable_shapes_is_a_value_error_naming_the_leaf():
    with pytest.raises(ValueError, match=r"masks_b\['k'\] has shape \(4,\).*\(3,\)"):
        masking.iou({"k": jnp.ones(3, bool)}, {"k": jnp.ones(4, bool)}, SEL)


def test_mask_distances_refuse_non_bool_masks():
    a = {"k": jnp.ones(3, bool)}
    with pytest.raises(ValueError, match=r"masks_a\['k'\] must be bool, got float32"):
        masking.hamming({"k": jnp.ones(3)}, a, SEL)
    with pytest.raises(ValueError, match=r"masks_b\['k'\] must be bool, got float32"):
        masking.overlap(a, {"k": jnp.ones(3)}, SEL)


# --------------------------------------------------------------------------- supsup

def test_superpose_refuses_a_task_mask_leaf_that_would_broadcast():
    weights = {"k": jnp.ones((64, 300))}
    masks = {"k": jnp.ones((2, 300), bool)}          # [T, 300] for a (64, 300) kernel
    with pytest.raises(ValueError, match=r"masks\['k'\] has shape \(2, 300\).*64, 300"):
        supsup.superpose(weights, masks, jnp.ones(2), prunable=SEL)


def test_superpose_refuses_alphas_of_the_wrong_task_count():
    weights = {"k": jnp.ones((4, 3))}
    masks = {"k": jnp.ones((2, 4, 3), bool)}
    with pytest.raises(ValueError, match=r"alphas must have shape \(2,\).*got \(3,\)"):
        supsup.superpose(weights, masks, jnp.ones(3), prunable=SEL)


def test_superpose_refuses_leaves_with_different_task_counts():
    weights = {"a": jnp.ones((4, 3)), "b": jnp.ones((3, 2))}
    masks = {"a": jnp.ones((2, 4, 3), bool), "b": jnp.ones((3, 3, 2), bool)}
    with pytest.raises(ValueError, match=r"masks\['b'\] has 3 tasks.*masks\['a'\] has 2"):
        supsup.superpose(weights, masks, jnp.ones(2), prunable={"a": True, "b": True})


# --------------------------------------------------------------------------- subspaces

def test_subspace_point_refuses_a_point_whose_leaf_would_broadcast():
    p, q = {"k": jnp.ones((64, 300))}, {"k": jnp.ones((300,))}
    with pytest.raises(ValueError, match=r"trainable\['point_1'\]\['k'\] has shape \(300,\)"):
        subspaces.subspace_point({"point_0": p, "point_1": q}, 0.5, kind="line")


@pytest.mark.parametrize("alpha", [1.5, -0.5, NAN, math.inf])
@pytest.mark.parametrize("kind", ["line", "curve"])
def test_subspace_point_refuses_alpha_outside_the_unit_interval(alpha, kind):
    p = {"k": jnp.ones((2, 3))}
    trainable = {name: p for name in subspaces.point_names(kind)}
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        subspaces.subspace_point(trainable, alpha, kind=kind)


@pytest.mark.parametrize("weights", [[0.5, 0.7, -0.2], [0.2, 0.2, 0.2], [NAN, 0.5, 0.5]])
def test_subspace_point_refuses_simplex_weights_off_the_simplex(weights):
    trainable = {f"point_{i}": {"k": jnp.ones(2)} for i in range(3)}
    with pytest.raises(ValueError, match="alpha"):
        subspaces.subspace_point(trainable, np.array(weights, np.float32), kind="simplex")


def test_point_params_refuses_alphas_outside_the_unit_interval():
    trainable = {"point_0": {"k": jnp.zeros(2)}, "point_1": {"k": jnp.ones(2)}}
    with pytest.raises(ValueError, match=r"alphas must lie in \[0, 1\]"):
        subspaces.point_params(trainable, jnp.array([0.0, 1.5]), kind="line")


def test_subspace_point_of_two_models_names_the_difference():
    p = {"Dense_0": {"kernel": jnp.ones((3, 2))}}
    q = {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 2))}}
    with pytest.raises(ValueError, match=r"trainable\['point_1'\] must have the pytree "
                                         r"structure of trainable\['point_0'\].*Dense_0/kernel"):
        subspaces.subspace_point({"point_0": p, "point_1": q}, 0.5, kind="line")


# --------------------------------------------------------------------------- knowledge evolution

def test_ke_reinit_refuses_float_masks():
    params = {"k": jnp.ones((4, 3))}
    fresh = {"k": jnp.zeros((4, 3))}
    with pytest.raises(ValueError, match=r"masks\['k'\] must be bool, got float32"):
        ke.ke_reinit(params, {"k": jnp.full((4, 3), 0.5)}, fresh)


# --------------------------------------------------------------------------- pruning

@pytest.mark.parametrize("fn", [
    lambda s: pruning.prune_to_density(s, SEL, density=0.1),
    lambda s: pruning.prune(s, masking.ones_like(s), SEL, fraction=0.5),
    lambda s: pruning.prune_to_match(s, {"k": jnp.arange(6) < 3}, SEL),
])
def test_pruning_refuses_nan_scores_naming_the_leaf(fn):
    with pytest.raises(ValueError, match=r"scores\['k'\] has 6 NaN entries"):
        fn({"k": jnp.full((6,), jnp.nan)})


def test_pruning_keeps_accepting_infinite_scores():
    # SynFlow's log scores are -inf where S == 0, and inverted_scores turns them into +inf
    scores = {"k": jnp.array([-jnp.inf, 1.0, jnp.inf, 0.5])}
    kept = pruning.prune_to_density(scores, SEL, density=0.5)["k"]
    np.testing.assert_array_equal(np.asarray(kept), [False, True, True, False])


@pytest.mark.parametrize("density", [np.float32(0.5), np.float64(0.5), np.array(0.5),
                                     jnp.float32(0.5)])
def test_prune_to_density_accepts_numpy_and_jax_real_scalars(density):
    scores = {"k": jnp.arange(8.0)}
    got = pruning.prune_to_density(scores, SEL, density=density)["k"]
    np.testing.assert_array_equal(np.asarray(got), np.arange(8) >= 4)


@pytest.mark.parametrize("density", [True, NAN, 0.0, 1.5, np.array([0.5]), "0.5"])
def test_prune_to_density_refuses_bad_densities(density):
    with pytest.raises(ValueError, match=r"density must be a number in \(0, 1\]"):
        pruning.prune_to_density({"k": jnp.arange(8.0)}, SEL, density=density)


# --------------------------------------------------------------------------- early-bird

@pytest.mark.parametrize("bad", [NAN, math.inf])
def test_channel_keep_refuses_non_finite_gammas(bad):
    with pytest.raises(ValueError, match="gammas has 1 non-finite"):
        early_bird.channel_keep(np.array([bad, 0.1, 0.2, 0.3]), 0.5)


@pytest.mark.parametrize("threshold", [NAN, math.inf, -0.1, 1.5])
def test_emergence_epoch_refuses_bad_thresholds(threshold):
    m = np.array([True, False])
    with pytest.raises(ValueError, match=r"threshold must be a finite number in \[0, 1\]"):
        early_bird.emergence_epoch([m] * 6, threshold=threshold)


@pytest.mark.parametrize("window", [1, 0, -3, 2.0, True])
def test_emergence_epoch_and_window_distances_refuse_windows_below_two(window):
    m = np.array([True, False])
    with pytest.raises(ValueError, match=r"window must be an integer >= 2"):
        early_bird.emergence_epoch([m] * 6, window=window)
    with pytest.raises(ValueError, match=r"window must be an integer >= 2"):
        early_bird.window_distances([m] * 6, window=window)


def test_emergence_epoch_window_two_compares_consecutive_masks():
    a, b = np.array([True, False]), np.array([False, True])
    assert early_bird.emergence_epoch([a, b, b], window=2) == 2
    assert early_bird.emergence_epoch([a, b, a], window=2) is None


# --------------------------------------------------------------------------- tree.stack

def test_stack_of_two_models_names_the_difference():
    a = {"Dense_0": {"kernel": jnp.ones((3, 2))}}
    b = {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 2))}}
    with pytest.raises(ValueError, match=r"trees\[1\] must have the pytree structure of "
                                         r"trees\[0\].*Dense_0/kernel"):
        tree.stack([a, b])


def test_stack_of_different_shapes_names_the_leaf_and_both_shapes():
    with pytest.raises(ValueError, match=r"trees\[2\]\['a/k'\] has shape \(3,\), "
                                         r"expected \(2,\)"):
        tree.stack([{"a": {"k": jnp.ones(2)}}] * 2 + [{"a": {"k": jnp.ones(3)}}])


# --------------------------------------------------------------------------- under tracing

def test_checks_stay_out_of_the_way_under_tracing():
    # value checks (NaN, alpha range) are skipped on tracers; shape checks are static
    a, b = {"k": _bool((5, 4), 1)}, {"k": _bool((5, 4), 2)}
    got = jax.jit(jax.vmap(lambda x, y: masking.hamming(x, y, SEL)))(
        {"k": a["k"][None]}, {"k": b["k"][None]})
    assert int(got[0]) == int(np.sum(np.asarray(a["k"]) ^ np.asarray(b["k"])))
    scores = {"k": jnp.arange(8.0)}
    kept = jax.jit(lambda s: pruning.prune_to_density(s, SEL, density=0.5))(scores)["k"]
    np.testing.assert_array_equal(np.asarray(kept), np.arange(8) >= 4)
    trainable = {"point_0": {"k": jnp.zeros(2)}, "point_1": {"k": jnp.ones(2)}}
    path = subspaces.point_params(trainable, jnp.array([0.0, 0.25, 1.0]), kind="line")["k"]
    np.testing.assert_allclose(np.asarray(path[:, 0]), [0.0, 0.25, 1.0])
    weights, masks = {"k": jnp.ones((4, 3))}, {"k": jnp.ones((2, 4, 3), bool)}
    grad = jax.grad(lambda al: jnp.sum(supsup.superpose(weights, masks, al, prunable=SEL)["k"]))(
        jnp.ones(2))
    np.testing.assert_allclose(np.asarray(grad), [12.0, 12.0])
    with pytest.raises(ValueError, match=r"masks_b\['k'\] has shape"):  # static: still checked
        jax.jit(lambda x, y: masking.iou(x, y, SEL))({"k": jnp.ones(3, bool)},
                                                      {"k": jnp.ones(4, bool)})


# --------------------------------------------------------------------------- properties

SHAPES = ((3,), (2, 3), (3, 2), (1, 3), (2, 1, 3), (4,))


def _masks(shapes, seed):
    rng = np.random.default_rng(seed)
    return {f"L{i}": {"kernel": rng.random(s) < 0.5} for i, s in enumerate(shapes)}


@settings(max_examples=60, deadline=None)
@given(shapes=st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3),
       data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_mask_distances_refuse_differing_shapes_and_match_numpy_otherwise(shapes, data, seed):
    other = data.draw(st.lists(st.sampled_from(SHAPES), min_size=len(shapes),
                               max_size=len(shapes)))
    a, b = _masks(shapes, seed), _masks(other, seed + 1)
    selection = {k: {"kernel": True} for k in a}
    first = next((i for i, (s, o) in enumerate(zip(shapes, other, strict=True)) if s != o), None)
    fns = (masking.hamming, masking.overlap, masking.iou)
    if first is not None:
        for fn in fns:
            with pytest.raises(ValueError, match=rf"masks_b\['L{first}/kernel'\] has shape "
                                                 rf"\({', '.join(map(str, other[first]))},?\)"):
                fn(a, b, selection)
        return
    xa = np.concatenate([a[k]["kernel"].ravel() for k in a])
    xb = np.concatenate([b[k]["kernel"].ravel() for k in b])
    inter, union = int(np.sum(xa & xb)), int(np.sum(xa | xb))
    assert int(masking.hamming(a, b, selection)) == int(np.sum(xa != xb))
    assert int(masking.overlap(a, b, selection)) == inter
    np.testing.assert_allclose(float(masking.iou(a, b, selection)),
                               inter / union if union else 1.0, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from(((2, 3), (3, 2), (4,))), mask_shape=st.sampled_from(
    ((2, 3), (3,), (1, 3), (2, 1), (3, 2), (4,), (1, 4))), tasks=st.integers(1, 3),
       num_alphas=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_superpose_refuses_mismatches_and_matches_numpy_otherwise(shape, mask_shape, tasks,
                                                                   num_alphas, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    m = rng.random((tasks, *mask_shape)) < 0.5
    alphas = rng.random(num_alphas).astype(np.float32)
    call = lambda: supsup.superpose({"k": w}, {"k": m}, alphas, prunable=SEL)  # noqa: E731
    if mask_shape != shape:
        with pytest.raises(ValueError, match=r"masks\['k'\] has shape"):
            call()
    elif num_alphas != tasks:
        with pytest.raises(ValueError, match=rf"alphas must have shape \({tasks},\)"):
            call()
    else:
        want = w * np.tensordot(alphas, m.astype(np.float32), axes=1)
        np.testing.assert_allclose(np.asarray(call()["k"]), want, rtol=1e-6, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(("line", "curve")),
       alpha=st.one_of(st.floats(-2.0, 3.0), st.just(NAN), st.just(math.inf)),
       seed=st.integers(0, 2**31 - 1))
def test_subspace_point_refuses_alphas_outside_and_matches_numpy_inside(kind, alpha, seed):
    rng = np.random.default_rng(seed)
    names = subspaces.point_names(kind)
    points = {n: {"k": rng.standard_normal((2, 3)).astype(np.float32)} for n in names}
    if not 0.0 <= alpha <= 1.0:
        with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
            subspaces.subspace_point(points, alpha, kind=kind)
        return
    a = np.float32(alpha)
    coeffs = [1 - a, a] if kind == "line" else [(1 - a) ** 2, a ** 2, 2 * a * (1 - a)]
    want = sum(c * points[n]["k"] for c, n in zip(coeffs, names, strict=True))
    got = np.asarray(subspaces.subspace_point(points, alpha, kind=kind)["k"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from((np.bool_, np.float32, np.int32, np.uint8)),
       seed=st.integers(0, 2**31 - 1))
def test_ke_reinit_takes_bool_masks_only_and_matches_numpy_where(dtype, seed):
    rng = np.random.default_rng(seed)
    params = {"k": rng.standard_normal((3, 4)).astype(np.float32)}
    fresh = {"k": rng.standard_normal((3, 4)).astype(np.float32)}
    mask = (rng.random((3, 4)) < 0.5).astype(dtype)
    if dtype is not np.bool_:
        with pytest.raises(ValueError, match=r"masks\['k'\] must be bool"):
            ke.ke_reinit(params, {"k": mask}, fresh)
        return
    got = np.asarray(ke.ke_reinit(params, {"k": mask}, fresh)["k"])
    np.testing.assert_array_equal(got, np.where(mask, params["k"], fresh["k"]))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_nan=st.integers(0, 3),
       density=st.sampled_from((0.25, 0.5, np.float32(0.5), np.float64(0.75), 1.0)))
def test_prune_to_density_refuses_nan_and_keeps_the_top_scores_otherwise(seed, num_nan, density):
    rng = np.random.default_rng(seed)
    scores = rng.permutation(12).astype(np.float32)
    scores[rng.choice(12, num_nan, replace=False)] = np.nan
    call = lambda: pruning.prune_to_density(  # noqa: E731
        {"k": scores.reshape(3, 4), "b": np.full(4, np.nan, np.float32)},
        {"k": True, "b": False}, density=density)
    if num_nan:
        with pytest.raises(ValueError, match=rf"scores\['k'\] has {num_nan} NaN entries"):
            call()
        return
    keep = round(float(density) * 12)
    want = np.zeros(12, bool)
    want[np.argsort(-scores, kind="stable")[:keep]] = True
    out = call()
    np.testing.assert_array_equal(np.asarray(out["k"]).ravel(), want)
    assert np.asarray(out["b"]).all()        # a NaN score off the selection is never read


@settings(max_examples=60, deadline=None)
@given(gammas=st.lists(st.one_of(st.floats(-10, 10), st.just(NAN), st.just(-math.inf)),
                       min_size=1, max_size=8),
       ratio=st.floats(0.0, 1.0, exclude_max=True))
def test_channel_keep_refuses_non_finite_and_prunes_the_smallest_otherwise(gammas, ratio):
    g = np.array(gammas)
    bad = int(np.sum(~np.isfinite(g)))
    if bad:
        with pytest.raises(ValueError, match=rf"gammas has {bad} non-finite"):
            early_bird.channel_keep(g, ratio)
        return
    keep = early_bird.channel_keep(g, ratio)
    pruned = int(g.size * ratio)
    assert int(np.sum(~keep)) == pruned
    order = sorted(range(g.size), key=lambda i: (abs(g[i]), i))
    np.testing.assert_array_equal(np.flatnonzero(~keep), np.sort(order[:pruned]))


@settings(max_examples=60, deadline=None)
@given(window=st.integers(-1, 5),
       threshold=st.one_of(st.floats(-0.5, 1.5), st.just(NAN),
                           st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])),  # = some k / 4
       history=st.lists(st.lists(st.booleans(), min_size=4, max_size=4), max_size=7))
def test_emergence_epoch_refuses_bad_arguments_and_matches_the_definition(window, threshold,
                                                                         history):
    masks = [np.array(h) for h in history]
    if window < 2:
        with pytest.raises(ValueError, match="window must be an integer >= 2"):
            early_bird.emergence_epoch(masks, window=window, threshold=threshold)
        return
    if not 0.0 <= threshold <= 1.0:
        with pytest.raises(ValueError, match="threshold must be a finite number"):
            early_bird.emergence_epoch(masks, window=window, threshold=threshold)
        return
    # The reference's rule: emerged unless some distance is > threshold.
    want = next((e for e in range(window - 1, len(masks))
                 if all(np.mean(masks[e] != masks[e - j]) <= threshold
                        for j in range(1, window))), None)
    assert early_bird.emergence_epoch(masks, window=window, threshold=threshold) == want


@settings(max_examples=60, deadline=None)
@given(shapes=st.lists(st.sampled_from(SHAPES), min_size=2, max_size=4),
       rename=st.booleans())
def test_stack_refuses_differing_trees_and_stacks_matching_ones(shapes, rename):
    trees = [{"a": {"k": np.full(s, i, np.float32)}} for i, s in enumerate(shapes)]
    if rename:  # the last tree names its layer differently (shapes all equal)
        trees = [{"a": {"k": np.zeros(shapes[0], np.float32)}} for _ in shapes]
        trees[-1] = {"b": trees[-1]["a"]}
        with pytest.raises(ValueError, match=rf"trees\[{len(shapes) - 1}\] must have the "
                                             r"pytree structure of trees\[0\]"):
            tree.stack(trees)
        return
    first = next((i for i, s in enumerate(shapes) if s != shapes[0]), None)
    if first is not None:
        with pytest.raises(ValueError, match=rf"trees\[{first}\]\['a/k'\] has shape"):
            tree.stack(trees)
        return
    got = np.asarray(tree.stack(trees)["a"]["k"])
    np.testing.assert_array_equal(got, np.stack([t["a"]["k"] for t in trees]))
