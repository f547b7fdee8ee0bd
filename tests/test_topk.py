"""ltjax.core.topk: exact counts and top-k masks against NumPy / Fraction oracles.

Oracles: counts by Python's ``fractions`` on the decimal typed (``Fraction(str(x))``);
masks by a sort of (value, position) pairs in plain Python or ``np.lexsort``; the
replaced implementations of each call site (the float rules, ``limit_denominator``,
``jnp.lexsort`` pruning, the 31-pass int32 bisection) rebuilt here to show that every
value the studies and tests use gives the same counts and the same masks.
"""

import math
import re
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax.core import topk

# --------------------------------------------------------------------------- rational


@pytest.mark.parametrize("text", ["0.3", "0.1", "0.2", "0.7", "0.35", "0.032", "0.005",
                                  "0.0001", "0.12345", "0.9999999", "1e-05", "0.5", "1",
                                  "0.333", "0.1234567"])
def test_rational_reads_the_decimal_typed(text):
    assert topk.rational(float(text)) == Fraction(text)


@pytest.mark.parametrize("q", [3, 6, 7, 9, 11, 24, 97, 1000, 9973])
def test_rational_reads_fractions_typed_as_floats_exactly(q):
    for k in range(0, q + 1, max(1, q // 50)):
        assert topk.rational(k / q) == Fraction(k, q)


@pytest.mark.parametrize("share, expected", [
    (np.float32(0.2), Fraction(1, 5)), (np.float32(1 / 3), Fraction(1, 3)),
    (jnp.float32(0.37), Fraction(37, 100)), (np.float16(0.3), Fraction(3, 10)),
    (jnp.bfloat16(0.2), Fraction(1, 5)), (np.float64(0.3), Fraction(3, 10)),
    (Fraction(2, 7), Fraction(2, 7)), (1, Fraction(1)), (0, Fraction(0)),
    (np.int64(1), Fraction(1)), (np.array(0.25), Fraction(1, 4)), (0.0, Fraction(0)),
])
def test_rational_of_numpy_jax_and_exact_inputs(share, expected):
    assert topk.rational(share) == expected


def test_rational_of_computed_floats_is_the_float_itself():
    for x in (1 - 0.7, 0.1 + 0.2, 0.8 ** 6, 5e-324, 0.5000000000000001):
        r = topk.rational(x)
        assert float(r) == x                                # it rounds back to x
        near = Fraction(x).limit_denominator(10_000)
        assert r != near or float(near) == x                # no snapping to a neighbour


def test_rational_is_the_simplest_fraction_that_rounds_to_the_float():
    gen = np.random.default_rng(0)
    for x in np.concatenate([gen.random(300), gen.random(100) ** 8]):
        r = topk.rational(float(x))
        assert float(r) == x
        # No fraction of smaller denominator rounds to x (limit_denominator(d) is the
        # closest with denominator <= d, so if it does not round to x, none does).
        if r.denominator > 1:
            smaller = Fraction(float(x)).limit_denominator(r.denominator - 1)
            assert float(smaller) != x


@pytest.mark.parametrize("bad", [True, "0.3", np.array([0.3]), math.nan, math.inf, -0.1,
                                 np.float32(-1.0), None])
def test_rational_refuses_non_shares(bad):
    with pytest.raises(ValueError, match="share"):
        topk.rational(bad)


def test_rational_refuses_traced_shares():
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(lambda s: topk.rational(s))(0.3)


# --------------------------------------------------------------------------- count

SHARES = ["0.3", "0.1", "0.2", "0.5", "0.7", "0.9", "0.25", "0.35", "0.45", "0.15", "0.05",
          "0.032", "0.01", "0.005", "0.99", "0.37", "0.0001", "0.8", "0.64", "0.512"]
ROUND = {"ceil": math.ceil, "floor": math.floor, "half_even": round}


@pytest.mark.parametrize("rounding", topk.ROUNDINGS)
def test_count_is_exact_on_decimals(rounding):
    ns = list(range(0, 400)) + [1000, 235200, 266200, 30000, 10**9 + 7]
    for text in SHARES:
        share = Fraction(text)
        for n in ns:
            assert topk.count(n, float(text), rounding=rounding) == ROUND[rounding](share * n)


@pytest.mark.parametrize("rounding", topk.ROUNDINGS)
def test_count_of_thirds_and_products_of_fifths(rounding):
    for share in [Fraction(1, 3), Fraction(2, 3)] + [Fraction(4, 5) ** k for k in range(8)] + [
            Fraction(1, 5) ** k for k in range(1, 6)]:
        for n in (0, 1, 3, 7, 9, 10, 99, 100, 625, 3125, 15625, 266200):
            want = ROUND[rounding](share * n)
            assert topk.count(n, share, rounding=rounding) == want  # a Fraction as it is
            if share.denominator <= 3125:                           # typed as the float
                assert topk.count(n, float(share), rounding=rounding) == want


def test_count_examples_of_every_call_site():
    assert topk.count(100, 0.3, rounding="ceil") == 30                # not ceil(30.000...04)
    assert topk.count(10, 0.3, rounding="ceil") == 3                  # KE's fit_count(10, 0.3)
    assert topk.count(235200, 0.1, rounding="ceil") == 23520
    assert topk.count(90, 0.7, rounding="floor") == 63                # int(90 * 0.7) == 62
    assert topk.count(90, 0.35, rounding="half_even") == 32           # round(0.35*90) == 31
    assert topk.count(10, 0.25, rounding="half_even") == 2            # 2.5: half to even
    assert topk.count(10, 0.35, rounding="half_even") == 4            # 3.5: half to even
    assert topk.count(3, 0.5, rounding="ceil") == 2


@pytest.mark.parametrize("rounding", topk.ROUNDINGS)
def test_count_of_arrays_traced_under_jit_and_vmap_matches_the_host(rounding):
    ns = np.arange(0, 3000, dtype=np.int32)
    for text in ("0.2", "0.3", "0.37", "0.35", "0.7", "0.0001", "0.9999"):
        fn = jax.jit(jax.vmap(lambda n, t=text: topk.count(n, float(t), rounding=rounding)))
        got = np.asarray(fn(jnp.asarray(ns)))
        want = [ROUND[rounding](Fraction(text) * int(n)) for n in ns]
        np.testing.assert_array_equal(got, want, err_msg=text)
    big = jnp.int32(2**31 - 1)  # no int32 overflow at the largest count
    assert int(jax.jit(lambda n: topk.count(n, 0.2, rounding=rounding))(big)) == ROUND[
        rounding](Fraction(1, 5) * (2**31 - 1))
    # a concrete scalar array is counted on the host, whatever its denominator
    assert topk.count(jnp.int32(10), 0.123456789, rounding=rounding) == ROUND[rounding](
        Fraction("0.123456789") * 10)


def test_count_refuses_bad_arguments():
    with pytest.raises(ValueError, match="rounding"):
        topk.count(10, 0.3, rounding="round")
    with pytest.raises(ValueError, match="n must be"):
        topk.count(-1, 0.3, rounding="ceil")
    with pytest.raises(ValueError, match="n must be"):
        topk.count(True, 0.3, rounding="ceil")
    with pytest.raises(ValueError, match="n must be"):
        topk.count(jnp.float32(3.0), 0.3, rounding="ceil")
    with pytest.raises(ValueError, match="too large"):
        jax.jit(lambda n: topk.count(n, 0.123456789, rounding="ceil"))(jnp.int32(10))


# --------------------------------------------------------------------------- replaced count rules

def test_count_keeps_the_replaced_rules_numbers_on_the_values_used():
    """The rules topk.count replaced give the same counts on the studies' and tests' values."""
    layer_sizes = [1000, 30000, 235200, 266200, 784, 688, 1024, 256, 128, 12, 30, 42, 48, 60,
                   90, 96, 100, 200, 300, 150, 50, 16, 32, 64, 2048, 320, 1728, 36864, 73728]
    ns = sorted(set(layer_sizes) | set(range(1, 200)))
    for n in ns:
        # pruning.prune: ceil of the fraction read with denominator <= 10^4 (IMP 0.2,
        # layer rates 0.1, tests 0.3 0.37 0.5 0.6 0.9, sanity's 1 - p for p = 0.1 .. 0.9).
        for f in (0.2, 0.1, 0.3, 0.37, 0.5, 0.6, 0.9, 0.8, 0.7, 0.4):
            old = -((-Fraction(f).limit_denominator(10_000) * n) // 1)
            assert topk.count(n, f, rounding="ceil") == old, (f, n)
        for p in (0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 0.9, 1.0):
            old = -((-Fraction(1.0 - p).limit_denominator(10_000) * n) // 1)
            assert topk.count(n, 1 - topk.rational(p), rounding="ceil") == old, (p, n)
        # supermasks.kept_count: ceil of Fraction(repr(density)).
        for d in (0.5, 0.3, 0.1, 0.25, 0.9, 0.05, 0.01, 0.2):
            assert topk.count(n, d, rounding="ceil") == math.ceil(Fraction(repr(d)) * n)
        # knowledge_evolution.fit_count: ceil(x * n - 1e-9).
        for sr in (0.5, 0.3, 0.25, 0.8, 0.75, 0.1, 0.6):
            assert topk.count(n, sr, rounding="ceil") == math.ceil(sr * n - 1e-9), (sr, n)
        # early_bird.channel_keep: int(N * ratio) (studies: MLP-BN 1024 / 256 / 128 channels,
        # ResNet-20's 688 and 784, tests: 1000 and sizes up to 8).
        for r in (0.3, 0.5, 0.1, 0.99):
            assert topk.count(n, r, rounding="floor") == int(n * r), (r, n)
        # pruning.prune_to_density / Zhou masks: round(d * n) on the float.
        for d in (0.1, 0.032, 0.01, 0.02, 0.2, 0.5, 0.25, 0.3, 0.05, 0.75):
            assert topk.count(n, d, rounding="half_even") == round(d * n), (d, n)
    for n in (1000, 1024, 256, 128, 688, 784) + tuple(range(1, 9)):
        assert topk.count(n, 0.7, rounding="floor") == int(n * 0.7), n
    # Where they differ, the float rule is the one that is off (the exact decimal):
    assert int(90 * 0.7) == 62 and topk.count(90, 0.7, rounding="floor") == 63
    assert round(0.35 * 90) == 31 and topk.count(90, 0.35, rounding="half_even") == 32
    assert round(0.035 * 300) == 11 and topk.count(300, 0.035, rounding="half_even") == 10
    assert Fraction(1e-5).limit_denominator(10_000) == 0
    assert topk.count(300, 1e-5, rounding="ceil") == 1                  # as OpenLTH's ceil


def test_prune_to_density_count_matches_the_float_round_on_computed_densities():
    # SynFlow's density ** (r / rounds) and IMP's 0.8 ** L, on the models' totals.
    totals = [266200, 235200, 30000, 1000, 270896, 14710464, 1199882]
    for d in [0.8 ** level for level in range(1, 30)] + [0.01 ** (r / 100) for r in
                                                           range(1, 101)]:
        for n in totals:
            assert topk.count(n, d, rounding="half_even") == round(d * n), (d, n)


# --------------------------------------------------------------------------- top-k masks


def _oracle(values, k, ties, alive=None):
    """Python sort of (value, position): the k highest alive, ties by position."""
    flat = np.asarray(values, np.float64).reshape(-1)
    alive = np.ones(flat.size, bool) if alive is None else np.asarray(alive).reshape(-1)
    ranked = []
    for i in np.flatnonzero(alive):
        v = flat[i]
        key = math.inf if math.isnan(v) else v
        rank_nan = 1 if math.isnan(v) else 0
        ranked.append(((rank_nan, key, -i if ties == "first" else i), i))
    ranked.sort(reverse=True)
    out = np.zeros(flat.size, bool)
    for _, i in ranked[:max(k, 0)]:
        out[i] = True
    return out.reshape(np.shape(values))


def _tied_values(seed, shape, signed=True, subnormal=True):
    gen = np.random.default_rng(seed)
    pool = np.array([0.0, -0.0, 1e-30, -1e-30, 0.25, -0.25, 0.5, 3.0, -3.0, 7e5, np.inf,
                     -np.inf, np.nan] + ([1e-45, -3e-45, 1e-40] if subnormal else []),
                    np.float32)
    if not signed:
        pool = np.abs(pool[np.isfinite(pool)])
    values = gen.choice(pool, shape)
    return np.where(gen.random(shape) < 0.6, values,
                    gen.normal(size=shape).astype(np.float32)).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", topk.TIES)
def test_mask_matches_the_oracle_with_ties_signs_zeros_infinities_and_nan(seed, ties):
    values = _tied_values(seed, (13, 7))
    alive = np.random.default_rng(seed + 9).random(values.shape) < 0.7
    fn = jax.jit(lambda v, k, a: topk.mask(v, k, ties=ties, alive=a))
    plain = jax.jit(lambda v, k: topk.mask(v, k, ties=ties))
    for k in (-1, 0, 1, 5, 30, 63, int(alive.sum()), int(alive.sum()) + 3, 91, 200):
        got = np.asarray(fn(jnp.asarray(values), k, jnp.asarray(alive)))
        np.testing.assert_array_equal(got, _oracle(values, k, ties, alive), err_msg=str(k))
        assert got.sum() == min(max(k, 0), int(alive.sum()))
        got = np.asarray(plain(jnp.asarray(values), k))
        np.testing.assert_array_equal(got, _oracle(values, k, ties), err_msg=str(k))
        np.testing.assert_array_equal(topk.host_mask(values, k, ties=ties), got)


def test_mask_with_traced_k_under_vmap_gives_each_row_its_own_count():
    values = jnp.asarray(_tied_values(0, (5, 40)))
    ks = jnp.array([0, 3, 17, 40, 41], jnp.int32)
    for ties in topk.TIES:
        got = np.asarray(jax.jit(jax.vmap(lambda v, k, t=ties: topk.mask(v, k, ties=t)))(
            values, ks))
        for row in range(5):
            np.testing.assert_array_equal(got[row], _oracle(values[row], int(ks[row]), ties))


def _program_size(fn, *shapes) -> tuple[int, int]:
    """(reductions, largest tensor's element count) of ``fn``'s StableHLO on ``shapes``."""
    text = jax.jit(fn).lower(*shapes).as_text()
    largest = max(math.prod(int(d) for d in dims.split("x") if d)
                  for dims in re.findall(r"tensor<((?:\d+x)*)\w+>", text))
    return text.count("stablehlo.reduce"), largest


def test_the_ranking_of_a_2m_weight_layer_under_vmap_is_one_pass_in_the_program():
    # Conv-4's Dense_0 (8192 x 256) for 4 edge-popup members: the 32 bisection passes are
    # one rolled loop (the unrolled 32 made the training program compile 2.6x longer,
    # issue #34.3), and no intermediate is larger than the members' scores.
    scores = jax.ShapeDtypeStruct((4, 8192, 256), jnp.float32)
    kept = jax.ShapeDtypeStruct((4,), jnp.int32)
    for ties in topk.TIES:
        reductions, largest = _program_size(
            jax.vmap(lambda s, k, t=ties: topk.mask(jnp.abs(s), k, ties=t)), scores, kept)
        assert reductions <= 4, reductions
        assert largest <= 4 * 8192 * 256, largest


def test_masks_rank_several_arrays_together_and_mask_each_alone():
    gen = np.random.default_rng(3)
    leaves = [gen.integers(-3, 4, s).astype(np.float32) for s in ((3, 4), (5,), (2, 3, 2))]
    alive = [gen.random(x.shape) < 0.8 for x in leaves]
    flat = np.concatenate([x.ravel() for x in leaves])
    flat_alive = np.concatenate([a.ravel() for a in alive])
    for ties in topk.TIES:
        for k in (0, 4, 11, 29, 40):
            got = topk.masks(leaves, k, ties=ties, alive=alive)
            want = _oracle(flat, k, ties, flat_alive)
            np.testing.assert_array_equal(np.concatenate([np.asarray(g).ravel() for g in got]),
                                          want)
            assert [g.shape for g in got] == [x.shape for x in leaves]
        # one array alone is the per-leaf mask
        for x, a in zip(leaves, alive, strict=True):
            np.testing.assert_array_equal(np.asarray(topk.masks([x], 5, ties=ties, alive=[a])[0]),
                                          np.asarray(topk.mask(x, 5, ties=ties, alive=a)))
    assert topk.masks([], 3) == []
    with pytest.raises(ValueError, match="alive"):
        topk.masks(leaves, 3, alive=alive[:2])


def test_ties_go_by_position_in_each_direction():
    v = jnp.array([0.3, 0.1, 0.3, 0.5, 0.3])
    np.testing.assert_array_equal(topk.mask(v, 2), [True, False, False, True, False])
    np.testing.assert_array_equal(topk.mask(v, 2, ties="last"), [False, False, False, True,
                                                                 True])
    np.testing.assert_array_equal(topk.mask(jnp.array([-0.0, 0.0, -0.0]), 1, ties="last"),
                                  [False, False, True])  # -0.0 == 0.0
    with pytest.raises(ValueError, match="ties"):
        topk.mask(v, 2, ties="lowest")
    with pytest.raises(ValueError, match="ties"):
        topk.host_mask(np.asarray(v), 2, ties="lowest")


@pytest.mark.parametrize("seed", range(3))
def test_host_mask_keeps_float64_resolution_and_matches_the_oracle(seed):
    gen = np.random.default_rng(seed)
    values = gen.random(500)                       # float64: collisions at float32
    values[::7] = values[3]                        # and real ties
    values[::11] = -0.0
    for ties in topk.TIES:
        for k in (0, 1, 77, 250, 499, 500, 600):
            np.testing.assert_array_equal(topk.host_mask(values, k, ties=ties),
                                          _oracle(values, k, ties))
    ints = gen.integers(0, 5, 50)
    np.testing.assert_array_equal(topk.host_mask(ints, 20), _oracle(ints, 20, "first"))


# --------------------------------------------------------------------------- replaced kernels

def _old_remove_lowest(scores, alive, num_remove):
    """pruning._remove_lowest as it was (jnp.lexsort: alive first, score, position)."""
    flat_scores = jnp.concatenate([jnp.asarray(s).reshape(-1).astype(jnp.float32)
                                   for s in scores])
    flat_alive = jnp.concatenate([jnp.asarray(a).reshape(-1) for a in alive])
    n = flat_scores.shape[0]
    order = jnp.lexsort((jnp.arange(n), flat_scores, ~flat_alive))
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return flat_alive & (rank >= num_remove)


def _old_top_k_mask(values, kept):
    """supermasks.top_k_mask as it was (31-pass bisection over int32 bit patterns)."""
    flat = values.reshape(-1).astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(flat, jnp.int32)
    kept = jnp.asarray(kept, jnp.int32)
    threshold = jnp.int32(0)
    for bit in range(30, -1, -1):
        candidate = threshold | jnp.int32(1 << bit)
        enough = jnp.sum(bits >= candidate, dtype=jnp.int32) >= kept
        threshold = jnp.where(enough, candidate, threshold)
    above, ties = bits > threshold, bits == threshold
    room = kept - jnp.sum(above, dtype=jnp.int32)
    return (above | (ties & (jnp.cumsum(ties, dtype=jnp.int32) <= room))).reshape(values.shape)


@pytest.mark.parametrize("seed", range(3))
def test_masks_equal_the_replaced_pruning_lexsort_bit_for_bit(seed):
    gen = np.random.default_rng(seed)
    # Subnormal scores aside: the old lexsort compared them as 0 on XLA's CPU (see below).
    scores = [_tied_values(seed, (6, 5), subnormal=False),
              gen.integers(-3, 4, (4, 3, 2)).astype(np.float32),
              np.abs(_tied_values(seed + 1, (17,), subnormal=False))]
    alive = [gen.random(s.shape) < 0.7 for s in scores]
    remaining = int(sum(a.sum() for a in alive))
    for num_remove in (-2, 0, 1, 7, remaining // 2, remaining - 1, remaining, remaining + 4):
        old = np.asarray(_old_remove_lowest(scores, alive, num_remove))
        new = topk.masks(scores, remaining - num_remove, ties="last", alive=alive)
        np.testing.assert_array_equal(np.concatenate([np.asarray(m).ravel() for m in new]), old)


@pytest.mark.parametrize("seed", range(3))
def test_mask_equals_the_replaced_supermask_bisection_on_non_negative_scores(seed):
    values = jnp.asarray(np.abs(_tied_values(seed, (37, 11), signed=False)))
    fn = jax.jit(lambda v, k: (_old_top_k_mask(v, k), topk.mask(v, k)))
    for kept in (0, 1, 5, 100, 203, 406, 407):
        old, new = fn(values, kept)
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


@pytest.mark.parametrize("seed", range(3))
def test_host_mask_equals_the_replaced_host_lexsorts(seed):
    gen = np.random.default_rng(seed)
    scores = np.round(gen.random(300) * 20) / 4 - 2.0       # many ties, both signs
    n = scores.size
    index = np.arange(n)
    # data_diet.select: lexsort((index, -scores)) / lexsort((index, scores)), a window.
    for mode, primary, ranked in (("hardest", -scores, scores), ("easiest", scores, -scores)):
        order = np.lexsort((index, primary))
        for offset, kept in ((0, 10), (5, 100), (37, 200), (0, 300), (299, 1)):
            old = np.sort(order[offset:offset + kept])
            window = (topk.host_mask(ranked, offset + kept) & ~topk.host_mask(ranked, offset))
            np.testing.assert_array_equal(np.flatnonzero(window), old, err_msg=mode)
    # early_bird.channel_keep: prune the int(N p) smallest |gamma|, earlier first.
    magnitude = np.abs(scores)
    for pruned in (0, 1, 90, 150, 299):
        old = np.ones(n, bool)
        old[np.lexsort((index, magnitude))[:pruned]] = False
        np.testing.assert_array_equal(topk.host_mask(magnitude, n - pruned, ties="last"), old)


def test_subnormal_scores_rank_by_value_where_a_cpu_sort_ties_them_with_zero():
    values = np.array([1e-45, 0.0, 3e-45, -0.0, -1e-45, 1e-40], np.float32)
    np.testing.assert_array_equal(np.asarray(topk.mask(values, 3)),
                                  [True, False, True, False, False, True])
    np.testing.assert_array_equal(np.asarray(topk.mask(values, 3)), _oracle(values, 3, "first"))
    np.testing.assert_array_equal(topk.host_mask(values, 3), _oracle(values, 3, "first"))
