"""Permutation specs and Git Re-Basin matching: invariance, planted permutations, a NumPy oracle."""

import dataclasses
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from flax import linen as nn

from ltjax import models
from ltjax.core import masking, matching, pruning, tree

# name, create kwargs, input shape: one of each bundled architecture, small where free
# (ResNet-8 is the ResNet-20 code with one block per stage; specs of every registered
# name are checked below without running them).
MODELS = [
    ("mlp", {"widths": (32, 16, 8)}, (8,)),
    ("mlp_bn", {"widths": (16, 8)}, (8,)),
    ("conv4", {}, (16, 16, 3)),
    ("vgg11", {}, (32, 32, 3)),
    ("resnet8", {"width": 4}, (16, 16, 3)),
]


def _create(name, **kwargs):
    if name == "resnet8":
        return models.ResNet(depth=8, **kwargs)
    return models.create(name, **kwargs)


def _rng(key):
    """A NumPy generator seeded by a JAX key (test noise without compiling a program)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())


def _randomized(tree, key, scale=1.0):
    """Every leaf replaced by noise (so BN scales, biases and statistics all carry signal)."""
    gen = _rng(key)
    return jax.tree.map(lambda x: jnp.asarray(
        scale * gen.uniform(0.5, 1.5, x.shape) if x.ndim == 1
        else np.asarray(x) + 0.1 * gen.standard_normal(x.shape), jnp.float32), tree)


def _setup(name, kwargs, shape, seed=0):
    model = _create(name, **kwargs)
    params, stats = models.init(model, jax.random.key(seed), shape)
    params = _randomized(params, jax.random.key(seed + 100))
    stats = _randomized(stats, jax.random.key(seed + 200))
    spec = models.permutation_spec(model, params, stats)
    return model, params, stats, spec


def _noisy(tree, level, key):
    """``leaf + level * std(leaf) * N(0, 1)``: the noise level is relative to each leaf's spread."""
    gen = _rng(key)
    return jax.tree.map(lambda x: jnp.asarray(
        np.asarray(x) + level * np.std(np.asarray(x)) * gen.standard_normal(x.shape),
        jnp.float32), tree)


@pytest.mark.parametrize("name", models.NAMES)
def test_every_registered_model_has_a_spec_that_fits(name):
    kwargs = {"widths": (20, 10)} if name in ("mlp", "mlp_bn") else {}
    kwargs.update({"width": 4} if name.startswith("resnet") else {})
    model = models.create(name, **kwargs)
    shape = (28, 28, 1) if name in ("mlp", "lenet_300_100", "mlp_bn") else (32, 32, 3)
    if name.startswith("transformer"):  # token ids [B, T] (tests/test_transformer.py)
        shape = (3,)
    params, stats = jax.eval_shape(lambda k: models.init(model, k, shape), jax.random.key(0))
    spec = models.permutation_spec(model, params, stats)
    sizes = matching.check_spec(spec, params, stats)
    assert sizes and set(spec.activations) == set(sizes)
    if name == "resnet20":  # the stream of a stage: bn_init (stage 0) and its 3 block outputs
        assert spec.activations["residual_0"] == ("bn_init", "Block_0", "Block_1", "Block_2")
        assert spec.activations["residual_2"] == ("Block_6", "Block_7", "Block_8")


# The MLPs and the ResNet with scipy, the MLP with optax (the solvers agree on random
# matrices: test_solvers_agree_on_a_random_matrix). Conv-4's and VGG-11's specs are
# checked by permutation invariance (test_invariants.py) and matched at full size in
# benchmarks/matching.py; their planted runs cost ~45 s of the suite.
_PLANTED = [m for m in MODELS if m[0] in ("mlp", "mlp_bn", "resnet8")]


@pytest.mark.parametrize("name,kwargs,shape,solver",
                         [(*m, "scipy") for m in _PLANTED] + [(*MODELS[0], "optax")],
                         ids=[f"{m[0]}-scipy" for m in _PLANTED] + [f"{MODELS[0][0]}-optax"])
def test_weight_matching_recovers_a_planted_permutation(name, kwargs, shape, solver):
    _, params, _, spec = _setup(name, kwargs, shape, seed=1)
    sizes = matching.check_spec(spec, params)
    planted = matching.random_perms(jax.random.key(11), sizes)
    params_b = _noisy(matching.apply_permutation(spec, planted, params), 0.1, jax.random.key(12))
    result = matching.weight_matching(spec, params, params_b, seed=0, solver=solver)
    expected = matching.inverse(planted)
    for perm in sizes:
        np.testing.assert_array_equal(result.perms[perm], expected[perm], err_msg=perm)
    aligned = matching.apply_permutation(spec, result.perms, params_b)
    value = sum(float(jnp.vdot(a, b)) for a, b in zip(
        jax.tree.leaves(params), jax.tree.leaves(aligned), strict=True))
    assert result.objective == pytest.approx(value, rel=1e-5)


def _oracle_weight_matching(spec, params_a, params_b, seed, max_iter=100):
    """Algorithm 1 of Git Re-Basin in float64 NumPy, every similarity recomputed each time."""
    flat_a = {p: np.asarray(x, np.float64) for p, x in zip(
        tree.names(params_a), jax.tree.leaves(params_a), strict=True)}
    flat_b = {p: np.asarray(x, np.float64) for p, x in zip(
        tree.names(params_b), jax.tree.leaves(params_b), strict=True)}
    sizes = matching.check_spec(spec, params_a)
    perms = {k: np.arange(n) for k, n in sizes.items()}
    names = list(spec.names)
    rng = np.random.default_rng([seed, 0])
    for _ in range(max_iter):
        progress = False
        for index in rng.permutation(len(names)):
            name = names[index]
            n = sizes[name]
            similarity = np.zeros((n, n))
            for path, axis in spec.perm_to_axes[name]:
                w_a, w_b = flat_a[path], flat_b[path]
                for other, entry in enumerate(spec.params[path]):
                    if entry is not None and other != axis:
                        assert isinstance(entry, str)  # no repeated axes in the oracle's models
                        w_b = np.take(w_b, perms[entry], axis=other)
                w_a = np.moveaxis(w_a, axis, 0).reshape(n, -1)
                w_b = np.moveaxis(w_b, axis, 0).reshape(n, -1)
                similarity += w_a @ w_b.T
            _, cols = scipy.optimize.linear_sum_assignment(similarity, maximize=True)
            old = similarity[np.arange(n), perms[name]].sum()
            new = similarity[np.arange(n), cols].sum()
            if new > old + 1e-12:
                perms[name] = cols
                progress = True
        if not progress:
            break
    return perms


@pytest.mark.parametrize("name,kwargs,shape", [
    ("mlp", {"widths": (48, 48, 48)}, (20,)), ("resnet8", {"width": 8}, (16, 16, 3))])
def test_weight_matching_equals_a_numpy_oracle_of_algorithm_1(name, kwargs, shape):
    # Independent random models: many sweeps, so the cached / incremental
    # similarity terms are exercised and must give the oracle's answer.
    model = _create(name, **kwargs)
    params_a, _ = models.init(model, jax.random.key(0), shape)
    params_b, _ = models.init(model, jax.random.key(1), shape)
    params_a = _randomized(params_a, jax.random.key(2))
    params_b = _randomized(params_b, jax.random.key(3))
    spec = models.permutation_spec(model, params_a)
    result = matching.weight_matching(spec, params_a, params_b, seed=5)
    assert result.iterations > 2
    expected = _oracle_weight_matching(spec, params_a, params_b, seed=5)
    for perm in spec.names:
        np.testing.assert_array_equal(result.perms[perm], expected[perm], err_msg=perm)


def test_restarts_escape_a_bad_optimum_on_resnet20_width_4():
    # At noise 2.5x each leaf's std, the single descent with seed 1 gets stuck
    # (no permutation recovered); other sweep orders recover all of them.
    model = models.create("resnet20", width=64)  # width 4x the standard 16
    params, _ = models.init(model, jax.random.key(0), (32, 32, 3))
    spec = models.permutation_spec(model, params)
    sizes = matching.check_spec(spec, params)
    planted = matching.random_perms(jax.random.key(101), sizes)
    # The noise of the planted case drawn by JAX (op by op, nothing to compile but small ops).
    permuted = matching.apply_permutation(spec, planted, params)
    leaves, treedef = jax.tree.flatten(permuted)
    keys = jax.random.split(jax.random.key(201), len(leaves))
    params_b = jax.tree.unflatten(treedef, [x + 2.5 * jnp.std(x) * jax.random.normal(k, x.shape)
                                            for x, k in zip(leaves, keys, strict=True)])
    expected = matching.inverse(planted)

    def recovered(result):
        return sum(np.array_equal(result.perms[k], expected[k]) for k in sizes)

    single = matching.weight_matching(spec, params, params_b, seed=1)
    best = matching.weight_matching(spec, params, params_b, seed=1, restarts=3)
    assert recovered(single) == 0
    assert recovered(best) == len(sizes)
    assert best.objective > single.objective
    assert best.objectives[0] == pytest.approx(single.objective)


def test_matching_is_deterministic_and_masks_stay_aligned():
    _, params, _, spec = _setup("mlp", {"widths": (24, 24)}, (10,))
    _, params_b, _, _ = _setup("mlp", {"widths": (24, 24)}, (10,), seed=3)
    first = matching.weight_matching(spec, params, params_b, seed=4, restarts=2)
    again = matching.weight_matching(spec, params, params_b, seed=4, restarts=2)
    chex.assert_trees_all_equal(first.perms, again.perms)
    assert first.objective == again.objective

    masks = pruning.prune(params_b, masking.ones_like(params_b), fraction=0.5,
                          prunable=masking.prunable(params_b))
    params_p = matching.apply_permutation(spec, first.perms, params_b)
    masks_p = matching.apply_permutation(spec, first.perms, masks)
    chex.assert_trees_all_equal(masking.apply(params_p, masks_p),
                                matching.apply_permutation(spec, first.perms,
                                                           masking.apply(params_b, masks)))
    selection = masking.prunable(params_b)
    assert float(masking.density(masks_p, selection)) == float(masking.density(masks, selection))


def test_tolerance_stops_earlier_with_a_close_objective():
    model = models.create("mlp", widths=(64, 64, 64))
    params_a, _ = models.init(model, jax.random.key(0), (32,))
    params_b, _ = models.init(model, jax.random.key(1), (32,))
    spec = models.permutation_spec(model, params_a)
    exact = matching.weight_matching(spec, params_a, params_b, seed=0)
    loose = matching.weight_matching(spec, params_a, params_b, seed=0, tolerance=1e-2)
    assert loose.iterations < exact.iterations
    assert loose.objective >= 0.95 * exact.objective


def test_activation_matching_recovers_a_permuted_copy():
    model, params, _, spec = _setup("conv2", {}, (8, 8, 3))
    perms = matching.random_perms(jax.random.key(5), matching.check_spec(spec, params))
    params_b = matching.apply_permutation(spec, perms, params)
    x = jax.random.normal(jax.random.key(6), (128, 8, 8, 3))
    raw_a = models.activations(model, spec, {"params": params}, x, post_relu=False)
    raw_b = models.activations(model, spec, {"params": params_b}, x, post_relu=False)
    result = matching.activation_matching(spec, raw_a, raw_b)
    chex.assert_trees_all_equal(result.perms, matching.inverse(perms))
    # Post-ReLU (the default): a unit dead on every input (a fifth of the dense units
    # here) is indistinguishable from another, and every live unit is matched.
    acts_a = models.activations(model, spec, {"params": params}, x)
    acts_b = models.activations(model, spec, {"params": params_b}, x)
    result = matching.activation_matching(spec, acts_a, acts_b)
    for name, expected in matching.inverse(perms).items():
        z = np.asarray(acts_a[name][0]).reshape(-1, acts_a[name][0].shape[-1])
        live = z.max(0) > 0
        assert live.sum() > 0.7 * live.size
        np.testing.assert_array_equal(np.asarray(result.perms[name])[live],
                                      np.asarray(expected)[live])


def test_activations_are_post_relu_and_similarities_match_numpy():
    model, params, _, spec = _setup("mlp", {"widths": (6, 5)}, (4,))
    x = jax.random.normal(jax.random.key(3), (40, 4))
    acts = models.activations(model, spec, {"params": params}, x)
    w0, b0 = np.asarray(params["Dense_0"]["kernel"]), np.asarray(params["Dense_0"]["bias"])
    hidden = np.maximum(np.asarray(x) @ w0 + b0, 0.0)  # NumPy forward pass, post-ReLU
    np.testing.assert_allclose(np.asarray(acts["Dense_0"][0]), hidden, rtol=1e-5, atol=1e-6)
    raw = models.activations(model, spec, {"params": params}, x, post_relu=False)
    assert np.any(np.asarray(raw["Dense_0"][0]) < 0)
    # Similarities of A's and B's units: E[A^T B] and Pearson's r, with a dead unit.
    a = np.abs(np.asarray(jax.random.normal(jax.random.key(4), (50, 3))))
    b = np.abs(np.asarray(jax.random.normal(jax.random.key(5), (50, 3))))
    b[:, 2] = 0.0  # a dead ReLU
    moments = matching.activation_moments({"u": a[:20]}, {"u": b[:20]})
    moments = matching.add_moments(moments, matching.activation_moments({"u": a[20:]},
                                                                        {"u": b[20:]}))["u"]
    np.testing.assert_allclose(matching.similarity_of(moments, "inner"), a.T @ b / 50,
                               rtol=1e-5)
    with np.errstate(invalid="ignore", divide="ignore"):  # the dead unit's column is nan
        expected = np.corrcoef(a.T, b.T)[:3, 3:]
    expected[:, 2] = 0.0  # defined as 0 where a unit never varies
    np.testing.assert_allclose(matching.similarity_of(moments, "pearson"), expected,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="similarity must be one of"):
        matching.similarity_of(moments, "cosine")


def test_pearson_activation_matching_recovers_a_permuted_copy():
    model, params, _, spec = _setup("mlp", {"widths": (12, 10)}, (5,))
    perms = matching.random_perms(jax.random.key(7), matching.check_spec(spec, params))
    params_b = matching.apply_permutation(spec, perms, params)
    x = jax.random.normal(jax.random.key(6), (200, 5))
    acts_a = models.activations(model, spec, {"params": params}, x)
    acts_b = models.activations(model, spec, {"params": params_b}, x)
    result = matching.activation_matching(spec, acts_a, acts_b, similarity="pearson")
    chex.assert_trees_all_equal(result.perms, matching.inverse(perms))


def test_merge_many_aligns_permuted_copies():
    _, params, _, spec = _setup("mlp", {"widths": (16, 16)}, (6,))
    sizes = matching.check_spec(spec, params)
    copies = [params] + [
        _noisy(matching.apply_permutation(spec, matching.random_perms(jax.random.key(i), sizes),
                                          params), 0.05, jax.random.key(50 + i))
        for i in (1, 2)]
    merged, perms = matching.merge_many(spec, copies, seed=0)
    # All copies end in one common frame (model 0 may move too): they agree up to
    # the noise, and the merge is their mean.
    aligned = [matching.apply_permutation(spec, p, c) for p, c in zip(perms, copies, strict=True)]
    for other in aligned[1:]:
        chex.assert_trees_all_close(other, aligned[0], atol=0.25)
    chex.assert_trees_all_close(merged, jax.tree.map(lambda *xs: sum(xs) / 3, *aligned),
                                atol=1e-6)
    chex.assert_trees_all_close(merged, aligned[0], atol=0.15)


def test_ste_matching_keeps_a_planted_permutation():
    _, params, _, spec = _setup("mlp", {"widths": (16, 16)}, (6,))
    sizes = matching.check_spec(spec, params)
    planted = matching.random_perms(jax.random.key(9), sizes)
    params_b = _noisy(matching.apply_permutation(spec, planted, params), 0.05, jax.random.key(8))
    x = jax.random.normal(jax.random.key(1), (5, 32, 6))
    y = jax.random.randint(jax.random.key(2), (5, 32), 0, 10)
    model = models.create("mlp", widths=(16, 16))

    def loss_fn(p, batch):
        logits = model.apply({"params": p}, batch[0], train=False)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch[1][:, None], 1))

    batches = list(zip(x, y, strict=True))
    result = matching.ste_matching(spec, params, params_b, loss_fn, batches, learning_rate=1e-3)
    assert len(result.history) == 5 and np.all(np.isfinite(result.history))
    chex.assert_trees_all_equal(result.perms, matching.inverse(planted))
    # The reference's rule keeps the projection of the lowest loss. Planted: the
    # projections come in a known order and batch t's loss is planted[t].
    projections = [matching.random_perms(jax.random.key(20 + t), sizes) for t in range(6)]
    calls = iter(range(6))
    original = matching.weight_matching

    def planted_projection(*args, **kwargs):
        result = original(*args, **kwargs)
        return dataclasses.replace(result, perms=projections[next(calls)])

    losses = jnp.array([5.0, 1.0, 3.0, 0.5, 2.0])

    def planted_loss(p, batch):
        return batch + 0.0 * sum(jnp.sum(leaf) for leaf in jax.tree.leaves(p))

    with mock.patch.object(matching, "weight_matching", planted_projection):
        best = matching.ste_matching(spec, params, params_b, planted_loss, list(losses),
                                     optimizer="sgd", learning_rate=1e-2)
    chex.assert_trees_all_equal(best.perms, projections[3])  # the step of loss 0.5
    np.testing.assert_allclose(best.history, losses)
    calls = iter(range(6))
    with mock.patch.object(matching, "weight_matching", planted_projection):
        last = matching.ste_matching(spec, params, params_b, planted_loss, list(losses),
                                     optimizer="sgd", learning_rate=1e-2, keep="last")
    chex.assert_trees_all_equal(last.perms, projections[5])  # the final proxy's projection
    with pytest.raises(ValueError, match="optimizer must be"):
        matching.ste_matching(spec, params, params_b, loss_fn, batches, optimizer="lion")


def test_solvers_agree_on_a_random_matrix():
    similarity = jax.random.normal(jax.random.key(0), (40, 40))
    np.testing.assert_array_equal(matching.solve_assignment(similarity, "scipy"),
                                  matching.solve_assignment(similarity, "optax"))


def test_bad_input_gives_clear_errors():
    with pytest.raises(TypeError, match="the key first"):  # the order before 2026-12-07
        matching.random_perms({"h": 3}, jax.random.key(0))
    model, params, stats, spec = _setup("vgg11", {}, (32, 32, 3))
    bad = dict(spec.params)
    del bad["Conv_3/bias"]
    with pytest.raises(ValueError, match=r"Conv_3/bias.*no entry"):
        matching.check_spec(matching.PermutationSpec(params=bad), params)
    extra = {**spec.params, "Conv_99/kernel": (None, "Conv_0")}
    with pytest.raises(ValueError, match=r"Conv_99/kernel.*not leaves of the params"):
        matching.check_spec(matching.PermutationSpec(params=extra), params)
    wrong = {**spec.params, "Conv_1/bias": ("Conv_2",)}  # 64 entries under a 128-unit permutation
    with pytest.raises(ValueError, match=r"'Conv_2' acts on axes of inconsistent sizes"):
        matching.check_spec(matching.PermutationSpec(params=wrong), params)
    with pytest.raises(ValueError, match=r"spec batch_stats paths"):
        matching.check_spec(spec, params, {})
    with pytest.raises(ValueError, match="params_b must have the pytree structure"):
        matching.weight_matching(spec, params, {"Dense_0": params["Dense_0"]})
    mlp, mlp_params, _, mlp_spec = _setup("mlp", {"widths": (8,)}, (4,))
    with pytest.raises(ValueError, match="solver must be one of"):
        matching.weight_matching(mlp_spec, mlp_params, mlp_params, solver="lapjv")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        matching.weight_matching(mlp_spec, mlp_params, mlp_params, seed=-1)
    with pytest.raises(ValueError, match="perms must have one entry per permutation"):
        matching.apply_permutation(mlp_spec, {}, mlp_params)
    with pytest.raises(TypeError, match="no permutation spec for"):
        models.permutation_spec(nn.Dense(3), mlp_params)


# --- Permutations are checked before they are applied (issue #12, item 5) ---------------------


def _small_mlp():
    """A 4 -> 8 -> 6 -> 10 MLP: permutations 'Dense_0' (8 units) and 'Dense_1' (6 units)."""
    model = models.create("mlp", widths=(8, 6))
    params, _ = models.init(model, jax.random.key(0), (4,))
    params = _randomized(params, jax.random.key(1))
    return params, models.permutation_spec(model, params)


_GOOD = {"Dense_0": np.array([3, 0, 7, 1, 6, 2, 5, 4], np.int32),
         "Dense_1": np.array([5, 3, 1, 0, 2, 4], np.int32)}

# (perm name, planted bad value, the message it must give)
_BAD_PERMS = {
    "all-zero": ("Dense_0", np.zeros(8, np.int32),
                 r"perms\['Dense_0'\] is not a permutation of range\(8\) \(it permutes axis \d "
                 r"of 'Dense_0/(bias|kernel)'\): repeated \[0 \(8x\)\]; missing \[1, 2, 3, 4, 5, "
                 r"\.\.\.\]"),
    "duplicate": ("Dense_1", np.array([5, 3, 1, 1, 2, 4], np.int32),
                  r"perms\['Dense_1'\] is not a permutation of range\(6\) .*'Dense_1/.*"
                  r"repeated \[1 \(2x\)\]; missing \[0\]"),
    "out-of-range": ("Dense_1", np.array([5, 3, 1, 0, 2, 6], np.int32),
                     r"perms\['Dense_1'\] is not a permutation of range\(6\) .*"
                     r"out of range \[6\]; missing \[4\]"),
    "negative": ("Dense_0", np.array([3, 0, 7, 1, 6, 2, 5, -1], np.int32),
                 r"perms\['Dense_0'\] .*out of range \[-1\]; missing \[4\]"),
    "too-short": ("Dense_0", np.arange(7, dtype=np.int32),
                  r"perms\['Dense_0'\] has length 7, expected 8: it permutes axis \d of "
                  r"'Dense_0/(bias|kernel)'"),
    "too-long": ("Dense_1", np.arange(8, dtype=np.int32),
                 r"perms\['Dense_1'\] has length 8, expected 6: it permutes axis \d of 'Dense_1/"),
    "float": ("Dense_0", np.arange(8, dtype=np.float32),
              r"perms\['Dense_0'\] must have an integer dtype, got float32 \(it permutes axis "
              r"\d of 'Dense_0/"),
    "bool": ("Dense_1", np.ones(6, bool),
             r"perms\['Dense_1'\] must have an integer dtype, got bool"),
    "stacked": ("Dense_0", np.stack([_GOOD["Dense_0"]] * 2),
                r"perms\['Dense_0'\] must have shape \[n\], got \(2, 8\)"),
}


@pytest.mark.parametrize("case", list(_BAD_PERMS))
def test_apply_permutation_refuses_a_bad_permutation_and_names_it(case):
    params, spec = _small_mlp()
    name, bad, message = _BAD_PERMS[case]
    perms = {**_GOOD, name: bad}
    with mock.patch.object(matching, "_apply_permutation") as work:
        with pytest.raises(ValueError, match=message):
            matching.apply_permutation(spec, perms, params)
        with pytest.raises(ValueError, match=message):  # the same for masks
            matching.apply_permutation(spec, perms, masking.ones_like(params))
        work.assert_not_called()  # refused before any work
    # The other entry points that take perms give the same message.
    with pytest.raises(ValueError, match=message):
        matching.objective(spec, params, params, perms)
    with pytest.raises(ValueError, match=message.replace("perms", "init_perms", 1)):
        matching.weight_matching(spec, params, params, init_perms=perms)
    with pytest.raises(ValueError, match=message):
        matching.check_perms(spec, perms, params)


@pytest.mark.parametrize("case", ["all-zero", "duplicate", "out-of-range", "float", "stacked"])
def test_inverse_refuses_a_bad_permutation(case):
    name, bad, _ = _BAD_PERMS[case]
    with pytest.raises(ValueError, match=rf"perms\['{name}'\] (is not a permutation|must have)"):
        matching.inverse({**_GOOD, name: bad})


def test_stacked_perms_are_checked_row_by_row_before_a_vmap():
    params, spec = _small_mlp()
    stacked = {k: np.stack([v, v, v]) for k, v in _GOOD.items()}
    stacked_params = jax.tree.map(lambda x: jnp.stack([x] * 3), params)
    matching.check_perms(spec, stacked, stacked_params, leading_axes=1)  # valid: no error
    stacked["Dense_1"] = stacked["Dense_1"].copy()
    stacked["Dense_1"][2, :2] = 0  # row 2: [0, 0, 1, 0, 2, 4]
    with pytest.raises(ValueError, match=r"perms\['Dense_1'\]\[2\] is not a permutation of "
                                         r"range\(6\) .*repeated \[0 \(3x\)\]; missing \[3, 5\]"):
        matching.check_perms(spec, stacked, stacked_params, leading_axes=1)


def test_a_valid_permutation_applies_eagerly_under_jit_and_under_vmap():
    params, spec = _small_mlp()
    p0, p1 = _GOOD["Dense_0"], _GOOD["Dense_1"]
    w = {k: {n: np.asarray(v) for n, v in layer.items()} for k, layer in params.items()}
    expected = {  # perm[i] = j: unit j of the original moves to position i
        "Dense_0": {"kernel": w["Dense_0"]["kernel"][:, p0], "bias": w["Dense_0"]["bias"][p0]},
        "Dense_1": {"kernel": w["Dense_1"]["kernel"][p0][:, p1], "bias": w["Dense_1"]["bias"][p1]},
        "Dense_2": {"kernel": w["Dense_2"]["kernel"][p1], "bias": w["Dense_2"]["bias"]},
    }
    as_lists = {k: v.tolist() for k, v in _GOOD.items()}  # Python ints are integers too
    for perms in (_GOOD, {k: jnp.asarray(v) for k, v in _GOOD.items()}, as_lists):
        chex.assert_trees_all_equal(matching.apply_permutation(spec, perms, params), expected)
    jitted = jax.jit(lambda perms, t: matching.apply_permutation(spec, perms, t))
    chex.assert_trees_all_equal(jitted(_GOOD, params), expected)
    # Under jit the perms are traced: the shape is still checked, the values cannot be.
    with pytest.raises(ValueError, match=r"perms\['Dense_0'\] has length 7, expected 8"):
        jitted({**_GOOD, "Dense_0": np.arange(7, dtype=np.int32)}, params)
    # vmap over stacked perms [S, n] and trees [S, ...]: member s gets its own permutation.
    second = matching.random_perms(jax.random.key(3), matching.check_spec(spec, params))
    stacked_perms = {k: jnp.stack([_GOOD[k], second[k]]) for k in _GOOD}
    stacked = jax.vmap(lambda perms, t: matching.apply_permutation(spec, perms, t))(
        stacked_perms, jax.tree.map(lambda x: jnp.stack([x, x]), params))
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x[0], stacked), expected)
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x[1], stacked),
                                matching.apply_permutation(spec, second, params))
    # inverse undoes it.
    chex.assert_trees_all_close(
        matching.apply_permutation(spec, matching.inverse(_GOOD), expected), params)


def test_permutation_spec_of_your_own_module_points_to_a_hand_written_spec():
    class TwoLayer(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.relu(nn.Dense(5)(x))
            return nn.Dense(3)(x)

    module = TwoLayer()
    params = module.init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
    with pytest.raises(TypeError) as info:
        models.permutation_spec(module, params)
    message = str(info.value)
    assert "no permutation spec for TwoLayer" in message
    assert "ltjax.core.matching.PermutationSpec" in message
    assert "Your own model, dataset or permutation spec" in message
    # The spec the message shows is the one this module needs.
    shown = message.split("e.g. ", 1)[1].split(", and check it", 1)[0]
    spec = eval(shown, {"PermutationSpec": matching.PermutationSpec})  # noqa: S307
    assert matching.check_spec(spec, params) == {"h": 5}
