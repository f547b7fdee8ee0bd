"""The data diet's scores and selection against independent oracles.

EL2N against a NumPy forward pass; GraNd against the softmax-regression closed
form ``||grad|| = EL2N * sqrt(||x||^2 + 1)`` (the gradient of the loss for
``logits = x W + b`` is ``x (p - e_y)^T`` and ``p - e_y``) and against the
reference's ``jacrev`` of the per-example losses; forgetting against
hand-counted sequences and a replay of the reference's ``update_forget_stats``;
selection against planted orders and the reference's ``argsort`` windows;
Spearman against hand-ranked examples with ties and scipy; the noise
precision against hand-counted top sets.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax.methods import data_diet

N, D, H, C, R = 13, 5, 7, 4, 3


def _stacked_mlp(seed, members=R):
    """A ReLU MLP's params and a per-member input shift as 'batch_stats', stacked [R, ...]."""
    gen = np.random.default_rng(seed)
    params = {"Dense_0": {"kernel": gen.normal(size=(members, D, H)),
                          "bias": gen.normal(size=(members, H)) * 0.1},
              "Dense_1": {"kernel": gen.normal(size=(members, H, C)),
                          "bias": gen.normal(size=(members, C)) * 0.1}}
    stats = {"shift": gen.normal(size=(members, D)) * 0.5}
    cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)
    return cast(params), cast(stats)


def _mlp_logits(params, stats, x):
    h = jax.nn.relu((x - stats["shift"][None]) @ params["Dense_0"]["kernel"]
                    + params["Dense_0"]["bias"][None])
    return h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"][None]


def _data(seed, n=N, d=D):
    gen = np.random.default_rng(seed)
    return gen.normal(size=(n, d)).astype(np.float32), gen.integers(0, C, size=n)


def _member(tree, r):
    return jax.tree.map(lambda a: a[r], tree)


# --------------------------------------------------------------------------- EL2N


def _numpy_el2n(params, stats, x, y):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.maximum((x - np.asarray(stats["shift"], np.float64)) @ p["Dense_0"]["kernel"]
                   + p["Dense_0"]["bias"], 0.0)
    z = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return np.linalg.norm(probs - np.eye(C)[y], axis=1)


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 100])
def test_el2n_matches_numpy(chunk_size):
    params, stats = _stacked_mlp(0)
    x, y = _data(1)
    per_member = data_diet.el2n_per_member(_mlp_logits, params, stats, x, y, num_classes=C,
                                           chunk_size=chunk_size)
    expected = np.stack([_numpy_el2n(_member(params, r), _member(stats, r), x, y)
                         for r in range(R)])
    assert per_member.shape == (R, N)
    np.testing.assert_allclose(per_member, expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(expected) > 0.1  # the oracle is not trivially constant


def test_el2n_single_example_value():
    # softmax of equal logits over 2 classes: error (-0.5, 0.5), norm sqrt(0.5)
    out = data_diet.el2n(jnp.zeros((1, 2)), jnp.array([0]), num_classes=2)
    np.testing.assert_allclose(out, [np.sqrt(0.5)], rtol=1e-6)


# --------------------------------------------------------------------------- GraNd


def test_grand_softmax_regression_closed_form():
    gen = np.random.default_rng(2)
    params = {"w": jnp.asarray(gen.normal(size=(R, D, C)), jnp.float32),
              "b": jnp.asarray(gen.normal(size=(R, C)), jnp.float32)}
    x, y = _data(3)
    x = x * np.linspace(0.2, 3.0, N, dtype=np.float32)[:, None]  # spread the input norms
    logits_fn = lambda p, s, xb: xb @ p["w"] + p["b"][None]
    grand = data_diet.grand_per_member(logits_fn, params, {}, x, y, num_classes=C, chunk_size=5)
    el2n = data_diet.el2n_per_member(logits_fn, params, {}, x, y, num_classes=C, chunk_size=5)
    closed = np.asarray(el2n) * np.sqrt((x.astype(np.float64) ** 2).sum(axis=1) + 1.0)
    np.testing.assert_allclose(grand, closed, rtol=1e-5)
    # GraNd is not EL2N: the input norm matters
    assert not np.allclose(grand, el2n, rtol=1e-2)


def test_grand_matches_jacrev_on_mlp():
    params, stats = _stacked_mlp(4)
    x, y = _data(5)

    def jacrev_oracle(p, s):  # the reference's get_grad_norm_fn, on the whole batch
        def per_sample_loss(q):
            logits = _mlp_logits(q, s, jnp.asarray(x))
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(y)[:, None],
                                        axis=1)[:, 0]
        jac = jax.jacrev(per_sample_loss)(p)
        flat = jnp.concatenate([j.reshape(N, -1) for j in jax.tree.leaves(jac)], axis=1)
        return np.linalg.norm(np.asarray(flat, np.float64), axis=1)

    expected = np.stack([jacrev_oracle(_member(params, r), _member(stats, r)) for r in range(R)])
    for chunk_size in (1, 5, 64):
        got = data_diet.grand_per_member(_mlp_logits, params, stats, x, y, num_classes=C,
                                         chunk_size=chunk_size)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert np.ptp(expected) > 0.1


# --------------------------------------------------------------------------- members


@pytest.mark.parametrize("name", ["el2n", "grand"])
def test_mean_over_members_and_member_independence(name):
    params, stats = _stacked_mlp(6)
    x, y = _data(7)
    per_member_fn = getattr(data_diet, f"{name}_per_member")
    mean_fn = getattr(data_diet, f"{name}_scores")
    per_member = per_member_fn(_mlp_logits, params, stats, x, y, num_classes=C, chunk_size=6)
    mean = mean_fn(_mlp_logits, params, stats, x, y, num_classes=C, chunk_size=6)
    assert mean.shape == (N,)
    np.testing.assert_allclose(mean, np.asarray(per_member).mean(axis=0), rtol=1e-6)
    for r in range(R):  # member r alone gives its own row
        alone = per_member_fn(_mlp_logits, jax.tree.map(lambda a, r=r: a[r:r + 1], params),
                              jax.tree.map(lambda a, r=r: a[r:r + 1], stats), x, y,
                              num_classes=C, chunk_size=6)
        np.testing.assert_allclose(alone[0], per_member[r], rtol=1e-6)
    assert not np.allclose(per_member[0], per_member[1])  # members differ


def test_scores_refuse_bad_inputs():
    params, stats = _stacked_mlp(8)
    x, y = _data(9)
    call = lambda **kw: data_diet.el2n_scores(
        _mlp_logits, kw.pop("params", params), kw.pop("stats", stats), kw.pop("x", x),
        kw.pop("y", y), num_classes=kw.pop("num_classes", C), **kw)
    with pytest.raises(ValueError, match="x must have one row per label"):
        call(x=x[:-1])
    with pytest.raises(ValueError, match="y must be integer labels"):
        call(y=y.astype(np.float32))
    with pytest.raises(ValueError, match=r"y must lie in \[0, num_classes"):
        call(y=np.full(N, C))
    with pytest.raises(ValueError, match="chunk_size"):
        call(chunk_size=0)
    with pytest.raises(ValueError, match="params must be stacked"):
        call(params={**params, "Dense_1": _member(params["Dense_1"], 0)})
    with pytest.raises(ValueError, match="batch_stats must be stacked"):
        call(stats={"shift": stats["shift"][:2]})
    with pytest.raises(ValueError, match="num_classes=5"):
        call(num_classes=5)


# --------------------------------------------------------------------------- forgetting


def test_forgetting_counts_hand_written():
    # one row per example here, transposed to [T, N]; the state before the first row
    # counts as incorrect, so being correct at the first row is no event
    seqs = np.array([[0, 1, 1, 1, 1],   # learned once and kept: 0
                     [1, 0, 1, 0, 1],   # forgotten twice: 2
                     [0, 0, 0, 0, 0],   # never correct: inf
                     [0, 0, 0, 1, 0],   # forgotten at the end: 1
                     [1, 1, 1, 1, 1],   # correct from the first row: 0
                     [1, 0, 0, 0, 0]], bool).T  # [T=5, N=6]
    np.testing.assert_array_equal(data_diet.forgetting_counts(seqs),
                                  [0.0, 2.0, np.inf, 1.0, 0.0, 1.0])


def _reference_replay(correct, presented):
    """mansheej/data_diet forgetting.py: update per batch (idxs, accs), then save."""
    n = correct.shape[1]
    prev_accs = np.zeros(n, np.int32)
    num_forgets = np.zeros(n, float)
    never_correct = np.arange(n, dtype=np.int32)
    for accs_row, shown in zip(correct.astype(np.int32), presented, strict=True):
        idxs = np.flatnonzero(shown)
        accs = accs_row[idxs]
        num_forgets[idxs[prev_accs[idxs] > accs]] += 1
        prev_accs[idxs] = accs
        never_correct = np.setdiff1d(never_correct, idxs[accs.astype(bool)], True)
    scores = num_forgets.copy()
    scores[never_correct] = np.inf
    return scores


def test_forgetting_counts_match_reference_replay_with_batches():
    gen = np.random.default_rng(10)
    correct = gen.random((40, 30)) < 0.6
    presented = gen.random((40, 30)) < 0.3
    correct[:, 0] = False  # never correct
    correct[:, 1] = ~presented[:, 1]  # never correct when presented
    got = data_diet.forgetting_counts(correct, presented=presented)
    expected = _reference_replay(correct, presented)
    np.testing.assert_array_equal(got, expected)
    assert np.isinf(expected).any() and (expected[np.isfinite(expected)] > 1).any()
    # an entry that was not presented does not count, whatever it says
    np.testing.assert_array_equal(
        data_diet.forgetting_counts(correct | ~presented, presented=presented), expected)


def test_forgetting_counts_refuse_bad_inputs():
    with pytest.raises(ValueError, match="correct must be a bool array"):
        data_diet.forgetting_counts(np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="presented must be a bool array"):
        data_diet.forgetting_counts(np.zeros((3, 4), bool), presented=np.ones((3, 5), bool))


# --------------------------------------------------------------------------- selection


def _planted(n=50, seed=11):
    """Scores with a known order: rank[i] is example i's place from the easiest."""
    rank = np.random.default_rng(seed).permutation(n)
    return rank.astype(np.float32) * 0.1, rank


@pytest.mark.parametrize("kept", [1, 7, 50])
def test_select_hardest_and_easiest_planted(kept):
    scores, rank = _planted()
    hardest = data_diet.select(scores, kept, mode="hardest")
    easiest = data_diet.select(scores, kept, mode="easiest")
    assert hardest.dtype == np.int32 and hardest.shape == easiest.shape == (kept,)
    np.testing.assert_array_equal(hardest, np.sort(np.flatnonzero(rank >= 50 - kept)))
    np.testing.assert_array_equal(easiest, np.sort(np.flatnonzero(rank < kept)))


@pytest.mark.parametrize(("kept", "offset"), [(5, 0), (5, 3), (10, 40), (1, 49)])
def test_select_offset_semantics(kept, offset):
    scores, rank = _planted()
    n = len(scores)
    got = data_diet.select(scores, kept, mode="hardest", offset=offset)
    # skip the `offset` hardest (rank n-1 downwards), keep the next `kept`
    np.testing.assert_array_equal(
        got, np.sort(np.flatnonzero((rank < n - offset) & (rank >= n - offset - kept))))
    # the reference's window argsort()[o:o + kept] with o = n - kept - offset
    o = n - kept - offset
    np.testing.assert_array_equal(got, np.sort(np.argsort(scores)[o:o + kept]))
    # easiest with an offset is the reference's window at that offset
    np.testing.assert_array_equal(data_diet.select(scores, kept, mode="easiest", offset=offset),
                                  np.sort(np.argsort(scores)[offset:offset + kept]))


def test_select_ties_by_position_and_inf():
    scores = np.array([1.0, 2.0, 2.0, 2.0, 0.0, np.inf])
    np.testing.assert_array_equal(data_diet.select(scores, 3, mode="hardest"), [1, 2, 5])
    np.testing.assert_array_equal(data_diet.select(scores, 2, mode="hardest", offset=1), [1, 2])
    np.testing.assert_array_equal(data_diet.select(np.zeros(6), 2, mode="easiest"), [0, 1])
    np.testing.assert_array_equal(data_diet.select(np.zeros(6), 2, mode="hardest",
                                                   offset=3), [3, 4])


def test_select_random_seeded_without_repeats():
    scores, _ = _planted()
    a = data_diet.select(scores, 20, mode="random", key=jax.random.key(0))
    b = data_diet.select(scores, 20, mode="random", key=jax.random.key(0))
    c = data_diet.select(scores, 20, mode="random", key=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for s in (a, c):
        assert s.shape == (20,) and len(np.unique(s)) == 20
        assert s.min() >= 0 and s.max() < 50 and np.all(np.diff(s) > 0)
    assert not np.array_equal(a, data_diet.select(scores, 20, mode="hardest"))
    full = data_diet.select(scores, 50, mode="random", key=jax.random.key(2))
    np.testing.assert_array_equal(full, np.arange(50))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kept": 51}, "kept must be at most"),
    ({"kept": 0}, "kept must be an int >= 1"),
    ({"kept": 2.5}, "kept must be an int"),
    ({"offset": -1}, "offset must be an int >= 0"),
    ({"kept": 10, "offset": 41}, "offset \\+ kept"),
    ({"kept": 10, "offset": 41, "mode": "easiest"}, "offset \\+ kept"),
    ({"mode": "medium"}, "mode must be one of"),
    ({"mode": "random"}, "key must be a JAX key"),
])
def test_select_refuses_bad_inputs(kwargs, message):
    scores, _ = _planted()
    kwargs = {"kept": 5, **kwargs}
    kept = kwargs.pop("kept")
    with pytest.raises(ValueError, match=message):
        data_diet.select(scores, kept, **kwargs)


def test_select_refuses_bad_scores():
    with pytest.raises(ValueError, match="scores must be a 1-D"):
        data_diet.select(np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match="scores must not contain NaN"):
        data_diet.select(np.array([0.0, np.nan, 1.0]), 1)


# --------------------------------------------------------------------------- diagnostics


def test_spearman_hand_computed_with_ties():
    # a's ranks [1, 2.5, 2.5, 4] (the tie averaged), b's [1, 3, 2, 4]: centred
    # [-1.5, 0, 0, 1.5] and [-1.5, .5, -.5, 1.5]; 4.5 / sqrt(4.5 * 5).
    assert data_diet.spearman([1, 2, 2, 4], [10, 30, 20, 40]) == pytest.approx(
        4.5 / np.sqrt(22.5), abs=1e-12)
    # Three-way tie at the top, one reversed pair: ranks [1, 2, 4, 4, 4] and [2, 1, 3, 4, 5].
    ra, rb = np.array([1, 2, 4, 4, 4.0]) - 3, np.array([2, 1, 3, 4, 5.0]) - 3
    want = (ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb))  # 7 / sqrt(8 * 10)
    assert want == pytest.approx(7 / np.sqrt(80))
    assert data_diet.spearman([0.1, 0.3, 0.7, 0.7, 0.7], [5, 2, 6, 8, 9]) == pytest.approx(want)
    assert data_diet.spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)
    assert data_diet.spearman([3, 1, 2], [-30, -10, -20]) == pytest.approx(-1.0)
    assert np.isnan(data_diet.spearman([1, 1, 1], [1, 2, 3]))


def test_spearman_refuses_bad_arguments():
    with pytest.raises(ValueError, match="one length"):
        data_diet.spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        data_diet.spearman([1.0, float("nan")], [1, 2])


def test_noise_precision_hand_computed_and_ties_by_position():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.8, 0.0])
    # top 2: indices 0, 2 (the 0.8 tie goes to the lower index); corrupted {0, 4}.
    assert data_diet.noise_precision(scores, [0, 4]) == {
        "top": 2, "top_share": 2 / 6, "precision": 0.5, "recall": 0.5}
    found = data_diet.noise_precision(scores, np.array([4, 0]), top=3)  # 0, 2, 4
    assert found["precision"] == pytest.approx(2 / 3) and found["recall"] == 1.0
    with pytest.raises(ValueError, match="distinct indices"):
        data_diet.noise_precision(scores, [0, 0])
    with pytest.raises(ValueError, match="distinct indices"):
        data_diet.noise_precision(scores, [6])


def test_input_norms_match_a_loop():
    gen = np.random.default_rng(1)
    x = gen.integers(0, 256, (9, 2, 2, 3)).astype(np.uint8)
    mean, std = np.array([10.0, 20.0, 30.0]), np.array([2.0, 4.0, 8.0])
    want = [np.sqrt(sum(((float(v) - mean[c]) / std[c]) ** 2
                        for (_, _, c), v in np.ndenumerate(xi))) for xi in x]
    np.testing.assert_allclose(data_diet.input_norms(x, mean, std, chunk_size=4), want,
                               rtol=1e-5)
