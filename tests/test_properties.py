"""Property-based tests (hypothesis) of pruning, permutations, lerp and greedy soups.

Every property is checked against an independent oracle: a NumPy re-implementation of
the documented rule or a closed form, never the library compared with itself. Shapes
come from small fixed sets so that each jitted program compiles once per run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import jax
import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ltjax import models
from ltjax.core import interpolation, masking, matching, pruning, soups

Tree = dict[str, dict[str, np.ndarray]]

SCOPES = st.sampled_from(pruning.SCOPES)
SEEDS = st.integers(0, 2**31 - 1)

# --------------------------------------------------------------------------- pruning

# Kernel shapes, and the few layouts (kernel shapes of Dense_0, Dense_1, ...) drawn from
# them: `topk.masks` compiles once per layout (global) and once per shape (layerwise).
KERNEL_SHAPES = ((4, 3), (6, 5), (2, 3, 2, 4))
LAYOUTS = ((1,), (0, 1), (2, 0), (0, 2, 1))

# Rationals k/q (read exactly by the library) and arbitrary floats.
FRACTIONS = st.one_of(
    st.integers(1, 10_000).flatmap(lambda q: st.integers(0, q - 1).map(lambda k: k / q)),
    st.floats(0.0, 1.0, exclude_max=True),
)
DENSITIES = st.one_of(
    st.integers(1, 10_000).flatmap(lambda q: st.integers(1, q).map(lambda k: k / q)),
    st.floats(0.0, 1.0, exclude_min=True),
)
# Share of weights alive in the existing masks: 1.0 is a fresh, all-True mask.
ALIVE = st.one_of(st.just(1.0), st.floats(0.0, 1.0))


def _params(layout: int, seed: int) -> Tree:
    """Dense layers whose entries have distinct magnitudes (a signed permutation of 1..N)."""
    shapes = []
    for i, s in enumerate(LAYOUTS[layout]):
        kernel = KERNEL_SHAPES[s]
        shapes += [(f"Dense_{i}", "kernel", kernel), (f"Dense_{i}", "bias", kernel[-1:])]
    total = sum(math.prod(shape) for _, _, shape in shapes)
    rng = np.random.default_rng(seed)
    values = (rng.permutation(total) + 1) * rng.choice([-1, 1], total)
    params: Tree = {}
    start = 0
    for layer, leaf, shape in shapes:
        size = math.prod(shape)
        params.setdefault(layer, {})[leaf] = values[start:start + size].reshape(shape).astype(
            np.float32)
        start += size
    return params


def _random_masks(params: Tree, alive: float, seed: int) -> Tree:
    """Masks keeping each entry (biases included) with probability ``alive``."""
    rng = np.random.default_rng(seed + 1)
    return {layer: {leaf: rng.random(np.shape(x)) < alive for leaf, x in leaves.items()}
            for layer, leaves in params.items()}


def _groups(params: Tree, scope: str) -> list[list[str]]:
    """The layers ranked together: all kernels ('global') or each kernel alone."""
    layers = sorted(params)
    return [layers] if scope == "global" else [[layer] for layer in layers]


def _documented_rational(share: float) -> Fraction:
    """``share`` read as the simplest rational that rounds to it (ltjax.core.topk.rational), as
    far as counts of at most 10^4 can tell: a rational of denominator <= 10^4 that rounds to
    the float is that one (two of them differ by more than the float's rounding interval);
    if none does, no m / n (n <= 10^4) lies between the float and it, so the float's own
    binary value gives the same ceil, floor and round of ``share * n``."""
    near = Fraction(share).limit_denominator(10_000)
    return near if float(near) == share else Fraction(share)


def _documented_ceil(fraction: float, count: int) -> int:
    """``ceil(fraction * count)`` in integer arithmetic, ``fraction`` read as the decimal (or
    the fraction) typed (:func:`_documented_rational`; pruning.py's module docstring)."""
    rate = _documented_rational(fraction)
    return -((-rate.numerator * count) // rate.denominator)


def _remove_smallest(params: Tree, masks: Tree, group: list[str], count: int,
                     ) -> dict[str, np.ndarray]:
    """NumPy oracle: the group's kernel masks without its ``count`` smallest-|w| alive entries."""
    magnitude = np.concatenate([np.abs(params[layer]["kernel"]).ravel() for layer in group])
    alive = np.concatenate([np.asarray(masks[layer]["kernel"]).ravel() for layer in group])
    candidates = np.flatnonzero(alive)
    alive[candidates[np.argsort(magnitude[candidates])[:count]]] = False
    out, start = {}, 0
    for layer in group:
        shape = params[layer]["kernel"].shape
        out[layer] = alive[start:start + math.prod(shape)].reshape(shape)
        start += math.prod(shape)
    return out


def _as_numpy(masks: Any) -> Tree:
    return jax.tree.map(np.asarray, masks)


def _assert_biases_unchanged(new: Tree, old: Tree) -> None:
    for layer in old:
        np.testing.assert_array_equal(new[layer]["bias"], old[layer]["bias"])


@settings(max_examples=200, deadline=None)
@given(layout=st.integers(0, len(LAYOUTS) - 1), seed=SEEDS, fraction=FRACTIONS, scope=SCOPES,
       alive=ALIVE)
def test_prune_removes_ceil_of_remaining_smallest_first(layout, seed, fraction, scope, alive):
    """Oracle: NumPy ranking of |w| among the alive weights of each group, and the
    documented count ``ceil(fraction * remaining)`` computed in integer arithmetic."""
    params = _params(layout, seed)
    masks = _random_masks(params, alive, seed)
    new = _as_numpy(pruning.prune(pruning.magnitude_scores(params), masks,
                                  masking.prunable(params), fraction=fraction, scope=scope))
    for group in _groups(params, scope):
        old_kept = sum(int(masks[layer]["kernel"].sum()) for layer in group)
        new_kept = sum(int(new[layer]["kernel"].sum()) for layer in group)
        removed = _documented_ceil(fraction, old_kept)
        assert old_kept - new_kept == removed, (group, old_kept)
        expected = _remove_smallest(params, masks, group, removed)
        for layer in group:
            kernel_new, kernel_old = new[layer]["kernel"], masks[layer]["kernel"]
            assert not np.any(kernel_new & ~kernel_old), f"{layer}: a pruned weight came back"
            np.testing.assert_array_equal(kernel_new, expected[layer], err_msg=layer)
    _assert_biases_unchanged(new, masks)


@settings(max_examples=200, deadline=None)
@given(layout=st.integers(0, len(LAYOUTS) - 1), seed=SEEDS,
       fractions=st.lists(FRACTIONS, min_size=1, max_size=4), scope=SCOPES)
def test_iterative_pruning_is_nested_and_keeps_the_largest(layout, seed, fractions, scope):
    """Oracle: the closed-form count ``n <- n - ceil(f * n)`` per level, and (the scores
    being the same at every level) the survivors are the group's ``n`` largest |w|."""
    params = _params(layout, seed)
    selection = masking.prunable(params)
    scores = pruning.magnitude_scores(params)
    masks = masking.ones_like(params)
    remaining = {tuple(g): sum(params[layer]["kernel"].size for layer in g)
                 for g in _groups(params, scope)}
    for fraction in fractions:
        previous = _as_numpy(masks)
        masks = pruning.prune(scores, masks, selection, fraction=fraction, scope=scope)
        current = _as_numpy(masks)
        for layer in params:
            assert not np.any(current[layer]["kernel"] & ~previous[layer]["kernel"]), layer
        remaining = {g: n - _documented_ceil(fraction, n) for g, n in remaining.items()}
    final = _as_numpy(masks)
    full = jax.tree.map(lambda x: np.ones(x.shape, bool), params)
    for group, n in remaining.items():
        total = sum(params[layer]["kernel"].size for layer in group)
        expected = _remove_smallest(params, full, list(group), total - n)
        for layer in group:
            np.testing.assert_array_equal(final[layer]["kernel"], expected[layer], err_msg=layer)
    _assert_biases_unchanged(final, full)


@settings(max_examples=200, deadline=None)
@given(layout=st.integers(0, len(LAYOUTS) - 1), seed=SEEDS, density=DENSITIES, scope=SCOPES,
       alive=ALIVE)
def test_prune_to_density_keeps_round_density_times_total(layout, seed, density, scope, alive):
    """Oracle: ``keep = round(density * total)`` per group, exact and half to even (Python's
    ``round`` of a Fraction; the density read as :func:`_documented_rational`) and the NumPy
    ranking of |w| among the alive weights; asking to keep more than the masks still have
    must raise."""
    params = _params(layout, seed)
    masks = _random_masks(params, alive, seed)
    groups = _groups(params, scope)
    keep = {tuple(g): round(_documented_rational(density)
                            * sum(params[layer]["kernel"].size for layer in g))
            for g in groups}
    kept = {tuple(g): sum(int(masks[layer]["kernel"].sum()) for layer in g) for g in groups}

    def call():
        return pruning.prune_to_density(pruning.magnitude_scores(params),
                                        masking.prunable(params), density=density,
                                        scope=scope, masks=masks)

    raises = any(keep[g] > kept[g] for g in keep)
    event(f"keeps more than the masks have: {raises}")
    if raises:
        with pytest.raises(ValueError, match="cannot prune to a higher density"):
            call()
        return
    new = _as_numpy(call())
    for group in groups:
        assert sum(int(new[layer]["kernel"].sum()) for layer in group) == keep[tuple(group)]
        expected = _remove_smallest(params, masks, group, kept[tuple(group)] - keep[tuple(group)])
        for layer in group:
            assert not np.any(new[layer]["kernel"] & ~masks[layer]["kernel"]), layer
            np.testing.assert_array_equal(new[layer]["kernel"], expected[layer], err_msg=layer)
    _assert_biases_unchanged(new, masks)


# --------------------------------------------------------------------------- permutations

MLP_WIDTHS = (8, 6)
MLP_INPUT = 5
MLP_MODEL = models.create("mlp", widths=MLP_WIDTHS, num_classes=3)
_mlp_params, _ = models.init(MLP_MODEL, jax.random.key(0), (MLP_INPUT,))
# Nonzero biases, so that a bias left unpermuted would change the outputs.
MLP_PARAMS: Tree = {layer: {"kernel": np.asarray(leaves["kernel"]),
                            "bias": np.linspace(-0.5, 0.5, leaves["bias"].size, dtype=np.float32)}
                    for layer, leaves in _mlp_params.items()}
MLP_SPEC = models.permutation_spec(MLP_MODEL, MLP_PARAMS)
MLP_SIZES = matching.check_spec(MLP_SPEC, MLP_PARAMS)
MLP_X = np.random.default_rng(0).normal(size=(16, MLP_INPUT)).astype(np.float32)
_mlp_apply = jax.jit(lambda params, x: MLP_MODEL.apply({"params": params}, x, train=False))


def _perms(seed: int) -> dict[str, np.ndarray]:
    perms = {name: np.asarray(p) for name, p in
             matching.random_perms(jax.random.key(seed), MLP_SIZES).items()}
    for name, p in perms.items():
        np.testing.assert_array_equal(np.sort(p), np.arange(MLP_SIZES[name]), err_msg=name)
    return perms


def _np_permute(params: Tree, perms: dict[str, np.ndarray]) -> Tree:
    """NumPy oracle: unit ``perm[i]`` of hidden layer ``i`` moves to position ``i`` (its
    kernel column, its bias entry, and the next kernel's row)."""
    depth = len(MLP_WIDTHS)
    out: Tree = {}
    for i in range(depth + 1):
        kernel, bias = params[f"Dense_{i}"]["kernel"], params[f"Dense_{i}"]["bias"]
        if i > 0:
            kernel = kernel[perms[f"Dense_{i - 1}"], :]
        if i < depth:
            kernel, bias = kernel[:, perms[f"Dense_{i}"]], bias[perms[f"Dense_{i}"]]
        out[f"Dense_{i}"] = {"kernel": kernel, "bias": bias}
    return out


def _np_forward(params: Tree, x: np.ndarray) -> np.ndarray:
    """NumPy oracle of the MLP in float64: Dense + ReLU per hidden layer, then Dense."""
    h = x.astype(np.float64)
    for i in range(len(MLP_WIDTHS) + 1):
        layer = params[f"Dense_{i}"]
        h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i < len(MLP_WIDTHS):
            h = np.maximum(h, 0.0)
    return h


def _assert_trees_equal(actual: Any, expected: Tree) -> None:
    for layer in expected:
        for leaf in expected[layer]:
            np.testing.assert_array_equal(np.asarray(actual[layer][leaf]), expected[layer][leaf],
                                          err_msg=f"{layer}/{leaf}")


@settings(max_examples=200, deadline=None)
@given(seed=SEEDS)
def test_permutation_matches_numpy_and_inverse_undoes_it(seed):
    """Oracles: NumPy indexing of the hidden units, and ``inverse(p)[p] == arange``;
    applying ``perms`` then ``inverse(perms)`` gives back the params bit for bit."""
    perms = _perms(seed)
    inverse = {name: np.asarray(p) for name, p in matching.inverse(perms).items()}
    for name, p in perms.items():
        np.testing.assert_array_equal(inverse[name][p], np.arange(p.size), err_msg=name)
    permuted = matching.apply_permutation(MLP_SPEC, perms, MLP_PARAMS)
    _assert_trees_equal(permuted, _np_permute(MLP_PARAMS, perms))
    restored = matching.apply_permutation(MLP_SPEC, matching.inverse(perms), permuted)
    _assert_trees_equal(restored, MLP_PARAMS)


@settings(max_examples=200, deadline=None)
@given(seed=SEEDS)
def test_permuting_hidden_units_keeps_the_outputs(seed):
    """Oracle: a float64 NumPy forward pass; the permuted net computes the same function
    (float64: up to summation order; the model's float32 apply: float32 tolerance)."""
    permuted = jax.tree.map(np.asarray, matching.apply_permutation(MLP_SPEC, _perms(seed),
                                                                   MLP_PARAMS))
    expected = _np_forward(MLP_PARAMS, MLP_X)
    np.testing.assert_allclose(_np_forward(permuted, MLP_X), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(_mlp_apply(permuted, MLP_X)), expected,
                               rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- lerp

# Bounded so that ``b - a`` stays finite in float32 (where it overflows, lerp(0, a, b) is
# NaN), and without subnormals (XLA:CPU flushes them to zero, so lerp(0, a, b) == 0 there).
LERP_SHAPES = {"w": (2, 3), "b": (4,)}
LERP_MAX = float(np.float32(1e37))
LERP_FLOATS = st.floats(-LERP_MAX, LERP_MAX, width=32, allow_subnormal=False)
LERP_TREES = st.fixed_dictionaries(
    {name: hnp.arrays(np.float32, shape, elements=LERP_FLOATS)
     for name, shape in LERP_SHAPES.items()})
ALPHAS = st.floats(0.0, 1.0)
EPS32 = float(np.finfo(np.float32).eps)
TINY32 = float(np.finfo(np.float32).tiny)


def _lerp(alpha: float, a: dict[str, np.ndarray], b: dict[str, np.ndarray],
          ) -> dict[str, np.ndarray]:
    return {name: np.asarray(x) for name, x in interpolation.lerp(alpha, a, b).items()}


def _assert_close(actual: np.ndarray, expected: np.ndarray, scale: np.ndarray, ulps: float,
                  ) -> None:
    """``|actual - expected| <= ulps * eps32 * scale + tiny32``, element by element."""
    error = np.abs(actual.astype(np.float64) - expected)
    bound = ulps * EPS32 * scale + TINY32
    assert np.all(error <= bound), (actual, expected, error.max())


@settings(max_examples=200, deadline=None)
@given(a=LERP_TREES, b=LERP_TREES)
def test_lerp_endpoints_are_exact_and_midpoint_is_the_mean(a, b):
    """Closed forms: ``lerp(0) == a`` and ``lerp(1) == b`` exactly; ``lerp(0.5)`` is the
    float64 mean ``(a + b) / 2`` within float32 rounding of ``|a| + |b|``."""
    start, end, middle = _lerp(0.0, a, b), _lerp(1.0, a, b), _lerp(0.5, a, b)
    for name in LERP_SHAPES:
        np.testing.assert_array_equal(start[name], a[name], err_msg=name)
        np.testing.assert_array_equal(end[name], b[name], err_msg=name)
        a64, b64 = a[name].astype(np.float64), b[name].astype(np.float64)
        _assert_close(middle[name], (a64 + b64) / 2, np.abs(a64) + np.abs(b64), 2)


@settings(max_examples=200, deadline=None)
@given(a=LERP_TREES, b=LERP_TREES, alpha=ALPHAS)
def test_lerp_of_identical_ends_is_exact_and_any_alpha_is_the_chord(a, b, alpha):
    """Closed forms: ``lerp(alpha, a, a) == a`` exactly; ``lerp(alpha, a, b)`` is the
    float64 ``(1 - alpha) a + alpha b`` (alpha rounded to float32, as the leaves) within
    float32 rounding."""
    alpha32 = float(np.float32(alpha))
    same, mixed = _lerp(alpha, a, a), _lerp(alpha, a, b)
    for name in LERP_SHAPES:
        np.testing.assert_array_equal(same[name], a[name], err_msg=name)
        a64, b64 = a[name].astype(np.float64), b[name].astype(np.float64)
        _assert_close(mixed[name], (1 - alpha32) * a64 + alpha32 * b64,
                      np.abs(a64) + np.abs(b64), 3)


# --------------------------------------------------------------------------- greedy soup

SOUP_SHAPES = {"w": (3,), "b": (2,)}
SOUP_DIM = sum(math.prod(s) for s in SOUP_SHAPES.values())
MARGIN = 1e-4  # score differences below this could flip under float32 rounding of the soup


def _vector(ingredient: Mapping[str, Any]) -> np.ndarray:
    return np.concatenate([np.asarray(ingredient[name], np.float64).ravel()
                           for name in SOUP_SHAPES])


def _ingredient(vector: np.ndarray) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for name, shape in SOUP_SHAPES.items():
        out[name] = vector[start:start + math.prod(shape)].reshape(shape).astype(np.float32)
        start += math.prod(shape)
    return out


def _distance_score(target: np.ndarray) -> Callable[[Any], float]:
    """The planted held-out score: minus the Euclidean distance to ``target``."""
    return lambda soup: -float(np.linalg.norm(_vector(soup) - target))


def _greedy_oracle(vectors: np.ndarray, score: Callable[[Any], float], strict: bool,
                   ) -> tuple[tuple[int, ...], list[int], float, float]:
    """NumPy greedy soup (Wortsman et al. 2022, Recipe 1): sort by score (ties by index),
    add an ingredient if the float64 mean with it scores ``>=`` (``>`` if strict).

    Returns the order, the members, their score and the smallest decision margin.
    """
    scores = [score(_ingredient(v)) for v in vectors]
    order = tuple(sorted(range(len(vectors)), key=lambda i: (-scores[i], i)))
    members, current, margin = [order[0]], scores[order[0]], math.inf
    for i in order[1:]:
        candidate = score(_ingredient(vectors[members + [i]].mean(axis=0)))
        margin = min(margin, abs(candidate - current))
        if candidate > current or (not strict and candidate == current):
            members.append(i)
            current = candidate
    return order, members, current, margin


@settings(max_examples=200, deadline=None)
@given(seed=SEEDS, num=st.integers(1, 8), strict=st.booleans(), known=st.booleans())
def test_greedy_soup_matches_numpy_greedy_rule(seed, num, strict, known):
    """Oracle: the NumPy greedy rule on float64 means, on a planted problem (ingredients
    are vectors, the held-out score minus the distance to a target); the soup never
    scores below its best ingredient."""
    rng = np.random.default_rng(seed)
    target = rng.normal(size=SOUP_DIM)
    vectors = rng.normal(size=(num, SOUP_DIM)).astype(np.float32).astype(np.float64)
    score = _distance_score(target)
    ingredients = [_ingredient(v) for v in vectors]
    accuracies = [score(t) for t in ingredients] if known else None
    result = soups.greedy_soup(ingredients, score, strict=strict, accuracies=accuracies)
    order, members, accuracy, margin = _greedy_oracle(vectors, score, strict)
    assert result.order == order
    assert score(result.soup) == result.accuracy
    assert result.accuracy >= score(ingredients[order[0]])
    assume(margin > MARGIN)  # otherwise float32 rounding may decide a near tie either way
    assert result.members == tuple(members)
    assert result.accuracy == pytest.approx(accuracy, abs=MARGIN / 10)


@settings(max_examples=200, deadline=None)
@given(seed=SEEDS, copies=st.integers(1, 6), poisons=st.integers(0, 5), strict=st.booleans())
def test_greedy_soup_tie_rule_on_planted_copies(seed, copies, poisons, strict):
    """Closed form: ``copies`` exact copies of the target (score 0, the maximum) and
    ``poisons`` ingredients at distance >= 1 from it. A copy added to a soup of copies
    ties (the soup is unchanged); a poison makes it strictly worse. So the members are
    all copies in index order (``>=``, the paper's Recipe 1) or the first copy only
    (``strict``, the reference code's ``>``), and the soup is exactly the target."""
    rng = np.random.default_rng(seed)
    target = rng.normal(size=SOUP_DIM).astype(np.float32).astype(np.float64)
    offsets = rng.normal(size=(poisons, SOUP_DIM))
    offsets *= rng.uniform(1.0, 3.0, size=(poisons, 1)) / np.linalg.norm(offsets, axis=1,
                                                                          keepdims=True)
    vectors = np.concatenate([np.repeat(target[None], copies, axis=0), target + offsets])
    position = rng.permutation(copies + poisons)  # ingredient position of each vector
    ingredients = [_ingredient(vectors[j]) for j in np.argsort(position)]
    copy_indices = tuple(int(i) for i in np.sort(position[:copies]))
    result = soups.greedy_soup(ingredients, _distance_score(target), strict=strict)
    assert result.members == (copy_indices[:1] if strict else copy_indices)
    assert result.accuracy == 0.0
    np.testing.assert_array_equal(_vector(result.soup), target)
