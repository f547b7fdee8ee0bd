"""SupSup: superposition, the entropy gradient, task inference, permuted tasks, the study."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import supsup_lenet_digits, supsup_lenet_mnist
from ltjax import models
from ltjax.core import masking
from ltjax.io import data, results
from ltjax.methods import supsup
from ltjax.studies import supsup as supsup_study


def _mlp_apply(params, x):
    """A bias-free 2-layer MLP written by hand (independent of flax)."""
    h = jax.nn.relu(x @ params["Dense_0"]["kernel"])
    return h @ params["Dense_1"]["kernel"]


def _problem(seed=0, num_tasks=4, sizes=(12, 9, 5)):
    rng_np = np.random.default_rng(seed)
    weights = {f"Dense_{i}": {"kernel": jnp.asarray(rng_np.standard_normal((a, b)), jnp.float32)}
               for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))}
    masks = jax.tree.map(lambda w: jnp.asarray(rng_np.random((num_tasks, *w.shape)) < 0.5),
                         weights)
    x = jnp.asarray(rng_np.standard_normal((16, sizes[0])), jnp.float32)
    prunable = jax.tree.map(lambda _: True, weights)
    return weights, masks, x, prunable


def test_one_hot_superposition_is_the_task_network_exactly():
    weights, masks, x, prunable = _problem()
    for i in range(4):
        params = supsup.superpose(weights, masks, jax.nn.one_hot(i, 4), prunable=prunable)
        task_net = jax.tree.map(lambda w, m, i=i: np.where(np.asarray(m[i]), np.asarray(w), 0.0),
                                weights, masks)
        for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(task_net), strict=True):
            np.testing.assert_array_equal(np.asarray(got), want)
        np.testing.assert_array_equal(np.asarray(_mlp_apply(params, x)),
                                      np.asarray(_mlp_apply(task_net, x)))
    # alphas that are not one-hot mix the masks: not the task network
    mixed = supsup.superpose(weights, masks, jnp.full(4, 0.25), prunable=prunable)
    assert not np.array_equal(np.asarray(mixed["Dense_0"]["kernel"]),
                              np.where(np.asarray(masks["Dense_0"]["kernel"][0]),
                                       np.asarray(weights["Dense_0"]["kernel"]), 0.0))


def test_superpose_leaves_unmasked_leaves_alone():
    weights, masks, _, _ = _problem()
    prunable = {"Dense_0": {"kernel": True}, "Dense_1": {"kernel": False}}
    out = supsup.superpose(weights, masks, jnp.full(4, 0.25), prunable=prunable)
    np.testing.assert_array_equal(out["Dense_1"]["kernel"], weights["Dense_1"]["kernel"])


@pytest.mark.parametrize("first_only", [False, True])
def test_entropy_gradient_is_the_inner_product_with_each_masked_net(first_only):
    weights, masks, x, prunable = _problem(seed=1)
    alphas = jnp.array([0.1, 0.4, 0.2, 0.3])
    got = supsup.entropy_gradient(_mlp_apply, weights, masks, x, prunable=prunable,
                                  first_only=first_only, alphas=alphas)
    # independently: the gradient of H w.r.t. the effective weights, then <G, W * M_i>
    w_eff = jax.tree.map(lambda w, m: w * jnp.tensordot(alphas, m.astype(jnp.float32), 1),
                         weights, masks)

    def entropy_of(params):
        logits = _mlp_apply(params, x[:1] if first_only else x)
        p = jax.nn.softmax(logits)
        return -jnp.mean(jnp.sum(p * jnp.log(p), axis=-1))

    grads = jax.grad(entropy_of)(w_eff)
    want = sum(np.einsum("ab,tab->t", np.asarray(g, np.float64),
                         np.asarray(w, np.float64) * np.asarray(m, np.float64))
               for g, w, m in zip(jax.tree.leaves(grads), jax.tree.leaves(weights),
                                  jax.tree.leaves(masks), strict=True))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)
    assert np.ptp(want) > 1e-3  # the tasks differ: a constant gradient would fail
    default = supsup.entropy_gradient(_mlp_apply, weights, masks, x, prunable=prunable,
                                      first_only=first_only)
    at_quarter = supsup.entropy_gradient(_mlp_apply, weights, masks, x, prunable=prunable,
                                         first_only=first_only, alphas=jnp.full(4, 0.25))
    np.testing.assert_array_equal(np.asarray(default), np.asarray(at_quarter))


def test_entropy_matches_numpy():
    logits = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(float(supsup.entropy(jnp.asarray(logits))),
                               float(np.mean(-np.sum(p * np.log(p), axis=1))), rtol=1e-6)


def _planted(num_tasks=6, dim=40, classes=10, per_task=512, seed=0):
    """Softmax regression ``x @ (W * M_i)``: task i's inputs lean on its own masked columns."""
    rng_np = np.random.default_rng(seed)
    w = np.sign(rng_np.standard_normal((dim, classes))).astype(np.float32) / np.sqrt(dim)
    masks = rng_np.random((num_tasks, dim, classes)) < 0.5
    xs, ys = [], []
    for i in range(num_tasks):
        net = w * masks[i]
        c = rng_np.integers(0, classes, per_task)
        x = rng_np.standard_normal((per_task, dim)).astype(np.float32) * 0.5
        x += 3.0 * net[:, c].T / np.linalg.norm(net[:, c].T, axis=1, keepdims=True)
        xs.append(x)
        ys.append(np.argmax(x @ net, axis=1))  # labels from the task's own masked net
    return ({"Dense_0": {"kernel": jnp.asarray(w)}}, {"Dense_0": {"kernel": jnp.asarray(masks)}},
            xs, ys)


def test_planted_one_shot_inference_recovers_the_task():
    weights, masks, xs, _ = _planted()
    prunable = {"Dense_0": {"kernel": True}}

    def apply_fn(params, x):
        return x @ params["Dense_0"]["kernel"]

    @jax.jit
    def infer(x, masks):
        one = supsup.infer_task(apply_fn, weights, masks, x, prunable=prunable)
        first = supsup.infer_task(apply_fn, weights, masks, x, prunable=prunable,
                                  first_only=True)
        both = supsup.infer_task_binary(apply_fn, weights, masks, x, prunable=prunable)
        return one, first, both

    num_tasks = len(xs)
    hits = {"one": [], "first": [], "binary": [], "rolled": []}
    rolled = jax.tree.map(lambda m: jnp.roll(m, 1, axis=0), masks)
    for i, x in enumerate(xs):
        for batch in np.split(x, 4):  # batches of 128
            one, first, both = jax.device_get(infer(jnp.asarray(batch), masks))
            hits["one"].append(one == i)
            hits["first"].append(first == i)
            hits["binary"].append(both == i)
            # the answer follows the masks: task i's masks now sit at index i + 1
            hits["rolled"].append(jax.device_get(infer(jnp.asarray(batch), rolled))[0]
                                  == (i + 1) % num_tasks)
    assert np.mean(hits["one"]) >= 0.95, hits
    assert np.mean(hits["binary"]) >= 0.95, hits
    assert np.mean(hits["rolled"]) >= 0.95, hits
    assert np.mean(hits["first"]) > 2.0 / num_tasks  # one example: weaker, far above chance


def test_binary_inference_follows_the_reference_loop():
    weights, masks, x, prunable = _problem(seed=3, num_tasks=5)
    grad = supsup.entropy_gradient(_mlp_apply, weights, masks, x, prunable=prunable)
    one = int(supsup.infer_task(_mlp_apply, weights, masks, x, prunable=prunable))
    assert one == int(np.argmin(np.asarray(grad)))
    both = int(supsup.infer_task_binary(_mlp_apply, weights, masks, x, prunable=prunable))
    # an oracle of the reference's loop (adaptors.se_binary_minimization), in NumPy
    alive = np.ones(5, bool)
    for _ in range(int(np.floor(np.log2(5))) + 1):
        if alive.sum() == 1:
            break
        alphas = np.where(alive, 1.0 / alive.sum(), 0.0).astype(np.float32)
        g = np.asarray(supsup.entropy_gradient(_mlp_apply, weights, masks, x, prunable=prunable,
                                               alphas=jnp.asarray(alphas)))
        median = np.sort(g[alive])[(alive.sum() - 1) // 2]
        alive &= g <= median
    assert alive.sum() == 1 and both == int(np.nonzero(alive)[0][0])


def test_threshold_masks_are_scores_at_least_zero_and_the_ste_is_the_identity():
    scores = {"Dense_0": {"kernel": jnp.array([[-0.5, 0.0, 0.25], [1e-9, -1e-9, 2.0]])},
              "Dense_0b": {"bias": jnp.zeros(3)}}
    weights = {"Dense_0": {"kernel": jnp.array([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])},
               "Dense_0b": {"bias": jnp.array([0.1, 0.2, 0.3])}}
    prunable = {"Dense_0": {"kernel": True}, "Dense_0b": {"bias": False}}
    masks = supsup.task_masks(scores, prunable)
    np.testing.assert_array_equal(masks["Dense_0"]["kernel"],
                                  [[False, True, True], [True, False, True]])
    np.testing.assert_array_equal(masks["Dense_0b"]["bias"], [True] * 3)
    r = supsup.task_supermask(prunable)
    frozen = {"weights": weights, "kept": None}
    params = r.apply(scores, frozen, None, train=True)
    np.testing.assert_array_equal(params["Dense_0"]["kernel"],
                                  np.where(np.asarray(scores["Dense_0"]["kernel"]) >= 0,
                                           np.asarray(weights["Dense_0"]["kernel"]), 0.0))
    np.testing.assert_array_equal(params["Dense_0b"]["bias"], weights["Dense_0b"]["bias"])
    upstream = jnp.arange(6.0).reshape(2, 3) - 2.0

    def loss(s):
        return jnp.sum(r.apply(s, frozen, None, train=True)["Dense_0"]["kernel"] * upstream)

    grad = jax.grad(loss)(scores)["Dense_0"]["kernel"]
    np.testing.assert_allclose(grad, np.asarray(weights["Dense_0"]["kernel"]) * upstream)


def test_top_k_task_masks_keep_exact_counts_and_match_edge_popups_forward():
    rng_np = np.random.default_rng(0)
    scores = {"k": jnp.asarray(rng_np.standard_normal((10, 7)), jnp.float32)}
    masks = supsup.task_masks(scores, {"k": True}, kind="top_k", density=0.3)
    assert int(masks["k"].sum()) == 21
    flat = np.abs(np.asarray(scores["k"])).ravel()
    np.testing.assert_array_equal(np.asarray(masks["k"]).ravel(), flat >= np.sort(flat)[-21])
    with pytest.raises(ValueError, match="kind must be one of"):
        supsup.task_masks(scores, {"k": True}, kind="median")


def test_pixel_permutations_are_seeded_permutations_and_task_0_is_permuted():
    key = jax.random.key(7)
    perms = np.asarray(supsup.pixel_permutations(key, 5, 784))
    assert perms.shape == (5, 784) and perms.dtype == np.int32
    for p in perms:
        np.testing.assert_array_equal(np.sort(p), np.arange(784))
    assert not np.array_equal(perms[0], np.arange(784))  # the reference permutes task 0 too
    assert len({p.tobytes() for p in perms}) == 5
    np.testing.assert_array_equal(np.asarray(supsup.pixel_permutations(key, 5, 784)), perms)
    np.testing.assert_array_equal(np.asarray(supsup.pixel_permutations(key, 2, 784)), perms[:2])
    other = np.asarray(supsup.pixel_permutations(jax.random.key(8), 5, 784))
    assert not np.array_equal(other, perms)
    first = np.asarray(supsup.pixel_permutations(key, 5, 784, identity_first=True))
    np.testing.assert_array_equal(first[0], np.arange(784))
    np.testing.assert_array_equal(first[1:], perms[1:])


def test_permute_pixels_and_the_wrapper_permute_positions_as_numpy():
    rng_np = np.random.default_rng(0)
    x = rng_np.standard_normal((3, 4, 5, 2)).astype(np.float32)
    perm = rng_np.permutation(20)
    want = x.reshape(3, 20, 2)[:, perm].reshape(x.shape)
    np.testing.assert_array_equal(np.asarray(supsup.permute_pixels(jnp.asarray(x),
                                                                   jnp.asarray(perm))), want)
    with pytest.raises(ValueError, match="positions"):
        supsup.permute_pixels(jnp.asarray(x), jnp.arange(19))
    inner = models.create("lenet_300_100", use_bias=False)
    wrapped = supsup.PermutedInput(model=inner)
    params, _ = models.init(wrapped, jax.random.key(0), (4, 5, 2))
    assert set(params) == {"model", "permutation"}
    np.testing.assert_array_equal(params["permutation"], np.arange(20, dtype=np.float32))
    params = {**params, "permutation": jnp.asarray(perm, jnp.float32)}
    got = wrapped.apply({"params": params}, jnp.asarray(x), train=False)
    np.testing.assert_array_equal(
        np.asarray(got), np.asarray(inner.apply({"params": params["model"]}, jnp.asarray(want),
                                                train=False)))
    selection = masking.prunable(params)
    assert not selection["permutation"]


def test_digits_quick_study_end_to_end_and_rerun_leaves_results_unchanged(tmp_path, sealed):
    config = sealed(supsup_lenet_digits.get_config("quick"), supsup_study.SupSupSpec)
    summary = supsup_study.run_supsup(config, tmp_path, progress=False)
    rows = results.read_csv(tmp_path / "results.csv")
    columns = ("task", "replicate", "test_accuracy", "inferred_task_accuracy",
               "inferred_task_accuracy_first", "inferred_task_accuracy_binary")
    assert all(c in rows[0] for c in columns)
    members = list(rows)
    assert sorted(int(r["task"]) for r in members) == [0, 1, 2]
    for r in members:
        assert float(r["test_accuracy"]) > 0.85
        assert float(r["inferred_task_accuracy"]) >= 2 / 3
        if float(r["inferred_task_accuracy"]) == 1.0:
            # two paths agree: the executor's member (wrapper + reparam, its own frozen tree)
            # and the inference's superposition of the shared weights with a one-hot alpha
            assert abs(float(r["inferred_test_accuracy"]) - float(r["test_accuracy"])) < 1e-6
    assert summary["overall"]["test_accuracy"] > 0.9
    assert summary["output_size"] == 100  # 100 outputs, labels 0..9, as the reference
    assert (tmp_path / "plots" / "supsup.png").exists()
    before = (tmp_path / "results.csv").read_bytes()
    supsup_study.run_supsup(config, tmp_path, progress=False)
    assert (tmp_path / "results.csv").read_bytes() == before


def test_study_refuses_bad_fields_before_any_work(tmp_path):
    config = supsup_lenet_digits.get_config("quick")
    config.mask = "median"
    with pytest.raises(ValueError, match="config.mask"):
        supsup_study.run_supsup(config, tmp_path / "a", progress=False)
    config = supsup_lenet_digits.get_config("quick")
    config.num_tasks = 0
    with pytest.raises(ValueError, match="config.num_tasks"):
        supsup_study.run_supsup(config, tmp_path / "b", progress=False)
    config = supsup_lenet_digits.get_config("quick")
    config.output_size = 5  # fewer outputs than the 10 labels
    with pytest.raises(ValueError, match="config.output_size"):
        supsup_study.run_supsup(config, tmp_path / "c", progress=False)
    assert not any((tmp_path / d).exists() for d in "abc")


class _Linear(nn.Module):
    """``x @ kernel``, bias-free: 12 outputs for 10 labels (2 superfluous)."""

    outputs: int = 12

    @nn.compact
    def __call__(self, x, *, train):
        del train
        return nn.Dense(self.outputs, use_bias=False)(x)


def _entropy_grad_oracle(x, w, masks):
    """NumPy ``dH/dalpha`` at ``alpha = 1/T`` of ``x @ (W * sum alpha_i M_i)``, H over every
    output: ``dH/dz = -p (log p + H)`` per row, then ``<x^T dH/dz, W * M_i>``."""
    z = x @ (w * masks.mean(0))
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    p = np.exp(log_p)
    h = -(p * log_p).sum(1, keepdims=True)
    dz = -p * (log_p + h) / len(x)
    return np.einsum("bd,bo,tdo->t", x, dz, w * masks)


def test_superfluous_outputs_count_in_inference_and_accuracy_as_the_reference():
    """12 outputs, labels 0..9 (the reference's output_size > classes): the entropy of
    one-shot inference is over all 12 outputs and a prediction is the argmax over all 12, so
    an argmax on output 10 or 11 is wrong (``adaptors.py``: ``output.argmax(dim=1)``).
    Against a NumPy oracle; the planted superfluous columns change both answers."""
    rs = np.random.default_rng(3)
    num_tasks, dim, outputs, num, batch = 3, 6, 12, 40, 8
    w = rs.standard_normal((dim, outputs)).astype(np.float32)
    w[:, 10:] *= 2.5  # superfluous outputs large enough to matter
    masks = rs.random((num_tasks, dim, outputs)) < 0.5
    perms = np.stack([rs.permutation(dim) for _ in range(num_tasks)])
    x = rs.standard_normal((num, dim)).astype(np.float32)
    y = np.argmax(x @ w[:, :10], axis=1)  # labels 0..9 only
    got = supsup_study.infer_tasks(
        _Linear(), {"Dense_0": {"kernel": jnp.asarray(w)}},
        {"Dense_0": {"kernel": jnp.asarray(masks)}}, x, y, perms,
        prunable={"Dense_0": {"kernel": True}}, batch_size=batch, binary=False)
    w64, m64 = w.astype(np.float64), masks.astype(np.float64)
    differs_from_first_ten, argmax_on_superfluous = 0, 0
    for t, perm in enumerate(perms):
        xt = x[:, perm].astype(np.float64)
        hits, correct = [], 0
        for b in range(0, num, batch):
            xb, yb = xt[b:b + batch], y[b:b + batch]
            task = int(np.argmin(_entropy_grad_oracle(xb, w64, m64)))
            ten = int(np.argmin(_entropy_grad_oracle(xb, w64[:, :10], m64[:, :, :10])))
            differs_from_first_ten += task != ten
            hits.append(task == t)
            pred = np.argmax(xb @ (w64 * m64[task]), axis=1)
            correct += int(np.sum(pred == yb))
            argmax_on_superfluous += int(np.sum(pred >= 10))
        assert got[t]["inferred_task_accuracy"] == pytest.approx(np.mean(hits))
        assert got[t]["inferred_test_accuracy"] == pytest.approx(correct / num)
        assert got[t]["inferred_task_accuracy_binary"] is None
    # the plant bites: over the first 10 outputs only, both answers would differ
    assert differs_from_first_ten > 0 and argmax_on_superfluous > 0


def test_study_model_has_output_size_outputs_labels_stay_the_datasets():
    """The study builds ``config.output_size`` outputs (the MNIST config: 100, the
    reference's GNu ``output_size``); unset, the dataset's classes; fewer is refused."""
    assert supsup_lenet_mnist.get_config().output_size == 100
    config = supsup_lenet_digits.get_config("quick")
    assert config.output_size == 100  # inherited from the MNIST config
    dataset = data.load("digits")
    assert dataset.num_classes == 10 and int(np.max(dataset.train.y)) == 9
    model = supsup_study.build_model(config, dataset)
    params, _ = models.init(model, jax.random.key(0), dataset.input_shape)
    x = jnp.zeros((2, *dataset.input_shape))
    assert model.apply({"params": params}, x, train=False).shape == (2, 100)
    assert supsup_study.output_size({"output_size": None}, dataset) == 10
    assert supsup_study.output_size({}, dataset) == 10
    for bad in (9, 10.0, True):
        with pytest.raises(ValueError, match="config.output_size"):
            supsup_study.output_size({"output_size": bad}, dataset)
