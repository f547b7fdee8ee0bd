"""Supermasks: exact top-k, straight-through gradients, frozen weights, the studies.

Edge-popup, Zhou et al.'s criteria and learned Bernoulli supermask, and DNW.
"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import supermask_lenet_digits
from ltjax import models
from ltjax.core import masking, rng, topk, tree
from ltjax.engine import executor as executor_lib
from ltjax.engine import optim
from ltjax.io import checkpoint, data, results
from ltjax.methods import supermasks
from ltjax.studies import supermask
from ltjax.studies.spec import RunSpec


def _np_top_k(values, kept):
    flat = np.asarray(values).reshape(-1)
    order = np.lexsort((np.arange(flat.size), -flat))  # largest first, ties by lower index
    mask = np.zeros(flat.size, bool)
    mask[order[:kept]] = True
    return mask.reshape(np.shape(values))


@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_mask_is_exact_with_ties_against_numpy(seed):
    rng_np = np.random.default_rng(seed)
    values = rng_np.choice(np.array([0.0, 1e-30, 0.25, 0.5, 3.0, 7e5], np.float32), (37, 11))
    values = np.where(rng_np.random(values.shape) < 0.5, values,
                      rng_np.random(values.shape).astype(np.float32))
    fn = jax.jit(topk.mask)
    for kept in (0, 1, 5, 100, 203, 406, 407):
        got = np.asarray(fn(jnp.asarray(values), kept))
        assert got.sum() == kept
        np.testing.assert_array_equal(got, _np_top_k(values, kept))


def test_kept_count_is_decimal_exact():
    assert supermasks.kept_count(100, 0.3) == 30
    assert supermasks.kept_count(10, 0.9) == 9
    assert supermasks.kept_count(3, 0.5) == 2
    assert supermasks.kept_count(235200, 0.1) == 23520
    with pytest.raises(ValueError, match="density"):
        supermasks.kept_count(10, 0.0)


def _params(key):
    k0, k1 = jax.random.split(key)
    return {"Dense_0": {"kernel": jax.random.normal(k0, (12, 8))},
            "Dense_1": {"bias": jnp.zeros(3), "kernel": jax.random.normal(k1, (8, 3))}}


def test_signed_constant_scores_and_straight_through_gradient():
    params = _params(jax.random.key(0))
    selection = masking.prunable(params)
    r = supermasks.edge_popup(selection, density=0.5)
    scores, frozen = r.init(params, jax.random.key(1))
    for name, fan_in in (("Dense_0", 12), ("Dense_1", 8)):
        w = np.asarray(frozen["weights"][name]["kernel"])
        np.testing.assert_array_equal(np.abs(w), np.float32(np.sqrt(2.0 / fan_in)))
        np.testing.assert_array_equal(np.sign(w), np.sign(np.asarray(params[name]["kernel"])))
        s = np.asarray(scores[name]["kernel"])
        assert np.abs(s).max() <= 1 / np.sqrt(fan_in) and np.abs(s).max() > 0.5 / np.sqrt(fan_in)
    assert int(frozen["kept"]["Dense_0"]["kernel"]) == 48
    np.testing.assert_array_equal(np.asarray(frozen["weights"]["Dense_1"]["bias"]), 0.0)

    def loss(p):
        return sum(jnp.sum(jnp.sin(3.0 * x) * (i + 2)) for i, x in enumerate(jax.tree.leaves(p)))

    effective = r.apply(scores, frozen, None, train=True)
    g = jax.grad(loss)(effective)
    grads = jax.grad(lambda s: loss(r.apply(s, frozen, None, train=True)))(scores)
    for name in ("Dense_0", "Dense_1"):
        s = np.asarray(scores[name]["kernel"])
        w = np.asarray(frozen["weights"][name]["kernel"])
        want = np.sign(s) * w * np.asarray(g[name]["kernel"])
        np.testing.assert_allclose(np.asarray(grads[name]["kernel"]), want, rtol=1e-6, atol=1e-7)
        mask = _np_top_k(np.abs(s), int(frozen["kept"][name]["kernel"]))
        np.testing.assert_array_equal(np.asarray(effective[name]["kernel"]), np.where(mask, w, 0))
    np.testing.assert_array_equal(np.asarray(grads["Dense_1"]["bias"]), 0.0)


def _config(**overrides):
    config = supermask_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32, 16), "use_bias": False}
    config.recipe.total_steps = config.training_steps = "2ep"
    config.eval_every = "2ep"
    config.checkpoint_every = "1ep"
    config.densities = (0.2, 0.6)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_study_trains_scores_only_with_exact_masks_and_reruns(tmp_path, sealed):
    config = _config()
    supermask.run_supermask(sealed(config, supermask.EdgePopupSpec), tmp_path, progress=False)
    first = (tmp_path / "results.csv").read_text()
    rows = results.read_csv(tmp_path / "results.csv")
    assert len(rows) == 2 * 2 * 2

    run_spec = RunSpec.from_config(config, progress=False)

    dataset, recipe, executor = run_spec.dataset, run_spec.recipe, run_spec.executor
    selection = masking.prunable(executor.abstract_params)
    ep = executor_lib.Executor(executor.model, dataset, recipe, reparam=supermasks.edge_popup(
        selection, weight_init="kaiming_normal"))
    init_keys = rng.init_and_noise(rng.replicate_keys(config.seed, 2))[0]
    plain = jax.device_get(ep.init(init_keys[np.array([0, 1] * 4)]))  # the model's init
    with checkpoint.Checkpointer(tmp_path / "checkpoints" / "edge_popup") as ckpt:
        final, _, meta = ckpt.restore(ckpt.steps()[-1], like_state=plain)
    # The study's start: one init program, each member with its own density and weight init.
    start = ep.init(init_keys[np.array([0, 1] * 4)], reparam_args=tree.stack([
        supermasks.edge_popup_args(executor.abstract_params, selection,
                                   density=t["target_density"], weight_init=t["weight_init"])
        for t in meta["members"]]))
    final, start = jax.device_get(final), jax.device_get(start)
    x = np.asarray(dataset.test.x, np.float64).reshape(len(dataset.test.y), -1)
    x = (x - np.asarray(dataset.mean, np.float64).reshape(-1)) / np.asarray(
        dataset.std, np.float64).reshape(-1)
    for m, tag in enumerate(meta["members"]):
        weights = tree.index(final.frozen["weights"], m)
        for a, b in zip(jax.tree.leaves(weights),
                        jax.tree.leaves(tree.index(start.frozen["weights"], m)), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # frozen, bitwise
        # The weights are the init or its signed constant (the init program of the plain
        # reparameterisation is another program: its draws may differ in the last bit,
        # never in sign).
        init = tree.index(plain.frozen["weights"], m)
        want = (supermasks.signed_constant(init, selection)
                if tag["weight_init"] == "signed_constant" else init)
        for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2 ** -20, atol=0)
        scores = tree.index(final.params, m)
        assert not np.array_equal(np.asarray(scores["Dense_0"]["kernel"]),
                                  np.asarray(tree.index(start.params, m)["Dense_0"]["kernel"]))
        # The network is W * top-k(|S|) with exactly ceil(density * n) kept per layer.
        h = x
        for layer in ("Dense_0", "Dense_1", "Dense_2"):
            s = np.asarray(scores[layer]["kernel"])
            kept = int(np.ceil(round(tag["target_density"] * s.size, 6)))
            mask = _np_top_k(np.abs(s), kept)
            assert mask.sum() == kept
            h = h @ np.where(mask, np.asarray(weights[layer]["kernel"], np.float64), 0.0)
            if layer != "Dense_2":
                h = np.maximum(h, 0)
        (row,) = [r for r in rows if float(r["density"]) == tag["target_density"]
                  and r["weight_init"] == tag["weight_init"]
                  and int(r["replicate"]) == tag["replicate"]]
        accuracy = np.mean(h.argmax(1) == np.asarray(dataset.test.y))
        assert float(row["test_accuracy"]) == pytest.approx(accuracy, abs=1.5 / len(h))
    assert (tmp_path / "plots" / "supermask.png").exists()

    supermask.run_supermask(config, tmp_path, progress=False)  # finished: same file
    assert (tmp_path / "results.csv").read_text() == first


@pytest.mark.parametrize("overrides, match", [
    ({"densities": (0.0, 0.5)}, "config.densities"),
    ({"densities": (0.5, 0.5)}, "repeats"),
    ({"weight_inits": ("xavier",)}, "config.weight_inits"),
    ({"method": "bernoulli", "init_prob": 1.5}, "init_prob must be a number in"),
])
def test_bad_config_is_refused_before_any_work(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        supermask.run_supermask(_config(**overrides), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


_NP_CRITERIA = {
    "large_final": lambda i, f: np.abs(f),
    "small_final": lambda i, f: -np.abs(f),
    "large_init": lambda i, f: np.abs(i),
    "small_init": lambda i, f: -np.abs(i),
    "magnitude_increase": lambda i, f: np.abs(f) - np.abs(i),
    "movement": lambda i, f: np.abs(f - i),
    "large_final_same_sign": lambda i, f: np.where(np.sign(i) == np.sign(f), np.abs(f), 0),
    "large_final_diff_sign": lambda i, f: np.where(np.sign(i) != np.sign(f), np.abs(f), 0),
    "magnitude_increase_same_sign": lambda i, f: np.where(np.sign(i) == np.sign(f),
                                                          np.abs(f) - np.abs(i), 0),
    "magnitude_increase_diff_sign": lambda i, f: np.where(np.sign(i) != np.sign(f),
                                                          np.abs(f) - np.abs(i), 0),
}


@pytest.mark.parametrize("criterion", sorted(supermasks.MASK_CRITERIA))
def test_zhou_criteria_keep_each_layers_top_scores(criterion):
    init, final = _params(jax.random.key(0)), _params(jax.random.key(1))
    selection = masking.prunable(init)
    masks = supermasks.criterion_masks(criterion, init, final, selection, density=0.25)
    for name in ("Dense_0", "Dense_1"):
        i, f = (np.asarray(t[name]["kernel"], np.float64) for t in (init, final))
        scores = _NP_CRITERIA[criterion](i, f)
        kept = round(0.25 * scores.size)
        mask = np.asarray(masks[name]["kernel"])
        assert mask.sum() == kept
        assert scores[mask].min() >= scores[~mask].max()
    assert np.asarray(masks["Dense_1"]["bias"]).all()


def test_zhou_study_evaluates_the_masked_untrained_init(tmp_path, monkeypatch, sealed):
    from experiments.configs import imp_lenet_digits
    from ltjax.studies import imp

    imp_config = imp_lenet_digits.get_config("quick")
    imp_config.model, imp_config.model_kwargs = "mlp", {"widths": (16,)}
    imp_config.levels, imp_config.controls = 0, ()
    imp.run_imp(imp_config, tmp_path / "imp", progress=False)
    config = imp_lenet_digits.get_config("quick")
    config.model, config.model_kwargs = "mlp", {"widths": (16,)}
    config.imp_workdir = str(tmp_path / "imp")
    config.criteria = ("large_final_same_sign",)
    config.densities = (0.3,)
    config.weight_inits = ("init", "signed_constant")
    evaluated = []  # the stacked params of every evaluate_params call, first the Zhou nets
    real = executor_lib.Executor.evaluate_params

    def evaluate_params(self, params, batch_stats, split):
        evaluated.append(jax.tree.map(np.asarray, jax.device_get(params)))
        return real(self, params, batch_stats, split)

    monkeypatch.setattr(executor_lib.Executor, "evaluate_params", evaluate_params)
    supermask.run_zhou(sealed(config, supermask.ZhouSpec), tmp_path / "zhou", progress=False)
    rows = results.read_csv(tmp_path / "zhou" / "results.csv")
    run_spec = RunSpec.from_config(config, progress=False)
    dataset, executor = run_spec.dataset, run_spec.executor
    init_keys = rng.init_and_noise(rng.replicate_keys(config.seed, 2))[0]
    start = executor.init(init_keys)
    with checkpoint.Checkpointer(tmp_path / "imp" / "checkpoints" / "level_00") as ckpt:
        final, _, _ = ckpt.restore(ckpt.steps()[-1], like_state=start)
    x = np.asarray(dataset.test.x, np.float64).reshape(len(dataset.test.y), -1)
    x = (x - np.asarray(dataset.mean, np.float64).reshape(-1)) / np.asarray(
        dataset.std, np.float64).reshape(-1)
    y = np.asarray(dataset.test.y)
    # The study's grid order: criterion x density x weight init x replicate.
    members = [(w, r) for w in ("init", "signed_constant") for r in range(2)]
    for m, (weight_init, rep) in enumerate(members):
        init = jax.tree.map(lambda t, r=rep: np.asarray(t[r], np.float64), start.params)
        trained = jax.tree.map(lambda t, r=rep: np.asarray(t[r], np.float64), final.params)
        h = x
        for layer in ("Dense_0", "Dense_1"):
            i, f = init[layer]["kernel"], trained[layer]["kernel"]
            score = np.where(np.sign(i) == np.sign(f), np.abs(f), 0.0).ravel()
            keep = np.zeros(score.size, bool)
            keep[np.argsort(-score, kind="stable")[: round(0.3 * score.size)]] = True
            # Zhou's signed constant (get_init_loss_train_lottery.py --exp signed_constant):
            # sign(w) * np.std of the layer's initial weights (population std, every entry).
            w = i if weight_init == "init" else np.sign(i) * np.std(i)
            kernel = np.where(keep.reshape(i.shape), w, 0.0)
            np.testing.assert_allclose(evaluated[0][layer]["kernel"][m], kernel, rtol=1e-6)
            np.testing.assert_array_equal(evaluated[0][layer]["bias"][m], init[layer]["bias"])
            h = h @ kernel + init[layer]["bias"]
            if layer == "Dense_0":
                h = np.maximum(h, 0)
        (row,) = [r for r in rows if r["method"] == "zhou" and int(r["replicate"]) == rep
                  and r["weight_init"] == weight_init]
        assert float(row["test_accuracy"]) == pytest.approx(np.mean(h.argmax(1) == y),
                                                            abs=1.5 / len(h))
        # The loss sees the constant's scale (the argmax of this zero-bias ReLU net does not).
        z = h - h.max(1, keepdims=True)
        loss = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y])
        assert float(row["test_loss"]) == pytest.approx(loss, rel=1e-4)
    # An IMP run whose level 0 saved no checkpoint: named, before the workdir (an IndexError
    # until 2026-12-07).
    shutil.copytree(tmp_path / "imp", tmp_path / "empty")
    for step in (tmp_path / "empty" / "checkpoints" / "level_00").iterdir():
        if step.name.isdigit():
            shutil.rmtree(step)
    config.imp_workdir = str(tmp_path / "empty")
    with pytest.raises(ValueError, match="has no finished level 0"):
        supermask.run_zhou(config, tmp_path / "zhou_empty", progress=False)
    assert not (tmp_path / "zhou_empty").exists()


# --------------------------------------------------------------------------- Bernoulli supermask


def _linear(key, fan_in=12, fan_out=8):
    """A linear model's params, with a logit per weight drawn away from 0 (varied sigmoid')."""
    k0, k1, k2, k3, k4 = jax.random.split(key, 5)
    params = {"Dense_0": {"bias": jax.random.normal(k0, (fan_out,)),
                          "kernel": jax.random.normal(k1, (fan_in, fan_out))}}
    x = np.asarray(jax.random.normal(k2, (5, fan_in)), np.float64)
    t = np.asarray(jax.random.normal(k3, (5, fan_out)), np.float64)
    logits = 1.5 * jax.random.normal(k4, (fan_in, fan_out))
    return params, x, t, logits


def _linear_loss(params, x, t):
    dense = params["Dense_0"]
    out = jnp.asarray(x, jnp.float32) @ dense["kernel"] + dense["bias"][None]
    return jnp.sum(out * jnp.asarray(t, jnp.float32))


def _np_sigmoid(m):
    return 1.0 / (1.0 + np.exp(-np.asarray(m, np.float64)))


def _np_draw(key, logits, leaf_index):
    """The documented draw: uniform(fold_in(key, i)) < sigmoid(m), recomputed here."""
    u = np.asarray(jax.random.uniform(jax.random.fold_in(key, leaf_index), logits.shape,
                                      jnp.float32))
    return u < np.asarray(jax.nn.sigmoid(logits))


def test_bernoulli_forward_is_the_sampled_mask_and_gradient_is_straight_through():
    params, x, t, m = _linear(jax.random.key(0))
    selection = masking.prunable(params)
    r = supermasks.bernoulli_supermask(selection)
    trainable, frozen = r.init(params, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(trainable["Dense_0"]["kernel"]), 0.0)  # p0 = 0.5
    trainable = {"Dense_0": {"bias": trainable["Dense_0"]["bias"], "kernel": m}}
    key = jax.random.key(2)
    kernel_index = tree.names(params).index("Dense_0/kernel")
    effective = r.apply(trainable, frozen, key, train=True)
    w = np.asarray(params["Dense_0"]["kernel"])
    mask = _np_draw(key, m, kernel_index)
    assert 0 < mask.sum() < mask.size
    got = np.asarray(effective["Dense_0"]["kernel"])
    np.testing.assert_array_equal(got, np.where(mask, w, 0.0))  # W * M, M exactly 0/1
    np.testing.assert_array_equal(np.asarray(effective["Dense_0"]["bias"]),
                                  np.asarray(params["Dense_0"]["bias"]))
    out = np.asarray(_linear_loss(effective, x, t))
    want = np.sum((x @ np.where(mask, w, 0.0) + np.asarray(params["Dense_0"]["bias"])) * t)
    np.testing.assert_allclose(out, want, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(supermasks.bernoulli_masks(
        trainable, frozen, selection, key)["Dense_0"]["kernel"]), mask)

    # dL/dm = W * dL/dW_eff * sigmoid(m) (1 - sigmoid(m)), dL/dW_eff = x^T t (closed form).
    grads = jax.grad(lambda tr: _linear_loss(r.apply(tr, frozen, key, train=True), x, t))(
        trainable)
    p = _np_sigmoid(m)
    np.testing.assert_allclose(np.asarray(grads["Dense_0"]["kernel"]),
                               w * (x.T @ t) * p * (1 - p), rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(grads["Dense_0"]["bias"]), 0.0)

    # A new step key draws a new mask; evaluation (key None) draws the member's fixed one.
    other = np.asarray(r.apply(trainable, frozen, jax.random.key(3), train=True)
                       ["Dense_0"]["kernel"])
    assert not np.array_equal(other != 0, mask)
    eval_key = jax.random.wrap_key_data(frozen["eval_key"])
    first = np.asarray(r.apply(trainable, frozen, None, train=False)["Dense_0"]["kernel"])
    np.testing.assert_array_equal(first, np.where(_np_draw(eval_key, m, kernel_index), w, 0.0))
    np.testing.assert_array_equal(
        first, np.asarray(r.apply(trainable, frozen, None, train=False)["Dense_0"]["kernel"]))


def test_bernoulli_dynamic_scaling_matches_its_closed_form():
    params, x, t, m = _linear(jax.random.key(4))
    selection = masking.prunable(params)
    r = supermasks.bernoulli_supermask(selection, dynamic_scaling=True)
    trainable, frozen = r.init(params, jax.random.key(1))
    trainable = {"Dense_0": {"bias": trainable["Dense_0"]["bias"], "kernel": m}}
    key = jax.random.key(5)
    mask = _np_draw(key, m, tree.names(params).index("Dense_0/kernel")).astype(np.float64)
    w = np.asarray(params["Dense_0"]["kernel"], np.float64)
    n, kept = mask.size, mask.sum()
    scale = n / kept
    effective = np.asarray(r.apply(trainable, frozen, key, train=True)["Dense_0"]["kernel"])
    np.testing.assert_allclose(effective, scale * w * mask, rtol=1e-6)
    # W_eff = (n / sum M) W M: dL/dM = c W G - (c / K) sum(G W M), G = x^T t.
    g = x.T @ t
    dmask = scale * w * g - scale / kept * np.sum(g * w * mask)
    p = _np_sigmoid(m)
    grads = jax.grad(lambda tr: _linear_loss(r.apply(tr, frozen, key, train=True), x, t))(
        trainable)
    np.testing.assert_allclose(np.asarray(grads["Dense_0"]["kernel"]), dmask * p * (1 - p),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("init_prob", [0.5, 0.2])
def test_bernoulli_init_keeps_a_binomial_share(init_prob):
    params = {"Dense_0": {"kernel": jax.random.normal(jax.random.key(0), (200, 100))},
              "Dense_1": {"kernel": jax.random.normal(jax.random.key(1), (100, 10))}}
    selection = masking.prunable(params)
    r = supermasks.bernoulli_supermask(selection, init_prob=init_prob)
    trainable, frozen = r.init(params, jax.random.key(2))
    for leaf in jax.tree.leaves(trainable):
        np.testing.assert_allclose(_np_sigmoid(leaf), init_prob, rtol=1e-6)  # one constant
    masks = supermasks.bernoulli_masks(trainable, frozen, selection)
    for name in ("Dense_0", "Dense_1"):
        kept, n = int(np.asarray(masks[name]["kernel"]).sum()), masks[name]["kernel"].size
        assert abs(kept - n * init_prob) <= 5 * np.sqrt(n * init_prob * (1 - init_prob))
    with pytest.raises(ValueError, match="init_prob"):
        supermasks.bernoulli_supermask(selection, init_prob=1.0)


def test_bernoulli_signed_constant_is_the_sign_times_the_layer_std():
    params = _params(jax.random.key(0))
    params["Dense_1"]["kernel"] = 0.05 * params["Dense_1"]["kernel"]  # a different std
    selection = masking.prunable(params)
    r = supermasks.bernoulli_supermask(selection, signed_constant=True)
    _, frozen = r.init(params, jax.random.key(1))
    for name in ("Dense_0", "Dense_1"):
        init = np.asarray(params[name]["kernel"])
        w = np.asarray(frozen["weights"][name]["kernel"])
        assert len(np.unique(np.abs(w))) == 1  # one constant per layer
        np.testing.assert_allclose(np.abs(w), np.std(init.astype(np.float64)), rtol=1e-6)
        np.testing.assert_array_equal(np.sign(w), np.sign(init))
    np.testing.assert_array_equal(np.asarray(frozen["weights"]["Dense_1"]["bias"]), 0.0)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _two_members(digits, reparam_fn, num_steps=4, weight_decay=0.01):
    model = models.create("mlp", widths=(16,))
    recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9,
                          weight_decay=weight_decay, batch_size=32)
    abstract = executor_lib.Executor(model, digits, recipe).abstract_params
    selection = masking.prunable(abstract)
    executor = executor_lib.Executor(model, digits, recipe, reparam=reparam_fn(selection))
    init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(0, 2))
    start = executor.init(init_keys)
    return executor, selection, start, noise_keys, num_steps


@pytest.mark.parametrize("kind", ["edge_popup", "dnw", "bernoulli"])
def test_members_of_one_init_program_take_their_own_reparam_arguments(digits, kind):
    """``Executor.init(keys, reparam_args=...)``: each member's density / weight init is a
    traced argument of one program, and gives the state a program of that member's
    fixed arguments gives (the oracle: the reparameterisation built with them)."""
    model = models.create("mlp", widths=(16,))
    recipe = optim.Recipe(batch_size=32)
    abstract = executor_lib.Executor(model, digits, recipe).abstract_params
    selection = masking.prunable(abstract)
    grid = [(0.3, "signed_constant"), (0.5, "kaiming_normal"), (0.05, "kaiming_normal")]
    if kind == "edge_popup":
        def build(d, w):
            return supermasks.edge_popup(selection, density=d, weight_init=w)

        def args_of(d, w):
            return supermasks.edge_popup_args(abstract, selection, density=d, weight_init=w)
    elif kind == "dnw":
        def build(d, w):
            return supermasks.dnw(selection, density=d)

        def args_of(d, w):
            return supermasks.dnw_args(abstract, selection, density=d)
    else:
        def build(d, w):
            return supermasks.bernoulli_supermask(selection,
                                                  signed_constant=w == "signed_constant")

        def args_of(d, w):
            return supermasks.bernoulli_args(signed_constant=w == "signed_constant")
    keys, _ = rng.init_and_noise(rng.replicate_keys(0, len(grid)))
    executor = executor_lib.Executor(model, digits, recipe, reparam=build(*grid[0]))
    together = jax.device_get(executor.init(
        keys, reparam_args=tree.stack([args_of(d, w) for d, w in grid])))
    for m, (d, w) in enumerate(grid):
        alone = jax.device_get(executor_lib.Executor(model, digits, recipe, reparam=build(
            d, w)).init(keys[m:m + 1]))
        for a, b in zip(jax.tree.leaves(tree.index(together, m)),
                        jax.tree.leaves(tree.index(alone, 0)), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2 ** -20, atol=0)
        if kind != "bernoulli":  # the kept counts by the exact rule, per member
            counts = tree.index(together.frozen["kept"], m)
            assert int(counts["Dense_0"]["kernel"]) == topk.count(64 * 16, d, rounding="ceil")
    with pytest.raises(ValueError, match="reparam_args must be stacked over the 3 members"):
        executor.init(keys, reparam_args=tree.stack([args_of(*grid[0])] * 2))


def test_bernoulli_trains_logits_only_under_the_executor(digits):
    executor, selection, start, noise_keys, num_steps = _two_members(
        digits, lambda s: supermasks.bernoulli_supermask(s, signed_constant=True))
    final, losses = executor.train(start, None, noise_keys, num_steps=num_steps)
    assert np.all(np.isfinite(np.asarray(losses)))
    start, final = jax.device_get(start), jax.device_get(final)
    for a, b in zip(jax.tree.leaves(start.frozen), jax.tree.leaves(final.frozen), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()  # weights, biases: bitwise
    np.testing.assert_array_equal(final.params["Dense_0"]["bias"], 0.0)  # placeholders
    assert not np.array_equal(final.params["Dense_0"]["kernel"], start.params["Dense_0"]["kernel"])
    first = executor.evaluate(final, "test")
    np.testing.assert_array_equal(first["accuracy"], executor.evaluate(final, "test")["accuracy"])
    np.testing.assert_array_equal(first["loss"], executor.evaluate(final, "test")["loss"])
    params = jax.device_get(executor.model_params(final))
    for member in range(2):
        masks = supermasks.bernoulli_masks(tree.index(final.params, member),
                                           tree.index(final.frozen, member), selection)
        weights = tree.index(final.frozen["weights"], member)
        for name in ("Dense_0", "Dense_1"):
            np.testing.assert_array_equal(
                params[name]["kernel"][member],
                np.where(np.asarray(masks[name]["kernel"]), weights[name]["kernel"], 0.0))
            np.testing.assert_array_equal(params[name]["bias"][member], weights[name]["bias"])


# --------------------------------------------------------------------------- DNW


def test_dnw_keeps_exactly_the_top_k_and_passes_the_gradient_to_every_weight():
    params, x, t, _ = _linear(jax.random.key(6))
    selection = masking.prunable(params)
    r = supermasks.dnw(selection, density=0.3)
    trainable, frozen = r.init(params, jax.random.key(0))
    kept = int(np.ceil(0.3 * 96))
    assert int(frozen["kept"]["Dense_0"]["kernel"]) == kept == 29
    effective = r.apply(trainable, frozen, None, train=True)
    w = np.asarray(params["Dense_0"]["kernel"])
    mask = _np_top_k(np.abs(w), kept)
    np.testing.assert_array_equal(np.asarray(effective["Dense_0"]["kernel"]),
                                  np.where(mask, w, 0.0))
    assert np.count_nonzero(np.asarray(effective["Dense_0"]["kernel"])) == kept
    grads = jax.grad(lambda p: _linear_loss(r.apply(p, frozen, None, train=True), x, t))(
        trainable)
    np.testing.assert_allclose(np.asarray(grads["Dense_0"]["kernel"]), x.T @ t, rtol=1e-5,
                               atol=1e-6)  # dL/dW = dL/dW_eff, masked-out entries too
    np.testing.assert_allclose(np.asarray(grads["Dense_0"]["bias"]), t.sum(0), rtol=1e-5)


def test_dnw_masked_out_weight_enters_the_top_k():
    params = {"Dense_0": {"kernel": jnp.array([[1.0], [0.9], [0.1], [0.05]])}}
    selection = masking.prunable(params)
    r = supermasks.dnw(selection, density=0.5)
    trainable, frozen = r.init(params, jax.random.key(0))

    def loss(p):  # pulls up the smallest weight, outside the top-2 at first
        return -4.0 * r.apply(p, frozen, None, train=True)["Dense_0"]["kernel"][3, 0]

    def in_use(p):
        return np.asarray(supermasks.supermask(p, frozen, selection)["Dense_0"]["kernel"][:, 0])

    np.testing.assert_array_equal(in_use(trainable), [True, True, False, False])
    assert float(loss(trainable)) == 0.0  # the planted weight is not in the forward pass
    step = jax.jit(lambda p: jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p)))
    for _ in range(3):
        trainable = step(trainable)
    np.testing.assert_allclose(np.asarray(trainable["Dense_0"]["kernel"][:, 0]),
                               [1.0, 0.9, 0.1, 1.25], rtol=1e-6)
    np.testing.assert_array_equal(in_use(trainable), [True, False, False, True])
    # Control: without the straight-through (plain W * M) the weight never moves.
    plain = jax.grad(lambda p: -4.0 * (p["Dense_0"]["kernel"] * jnp.asarray(
        [[1.0], [1.0], [0.0], [0.0]]))[3, 0])(params)
    assert float(plain["Dense_0"]["kernel"][3, 0]) == 0.0


def test_dnw_trains_every_weight_under_the_executor(digits):
    executor, selection, start, noise_keys, num_steps = _two_members(
        digits, lambda s: supermasks.dnw(s, density=0.25), weight_decay=0.0)
    # Member 1 at density 0.5: a member's kept counts are its own.
    half = supermasks.kept_counts(tree.index(start.params, 1), selection, 0.5)
    start = start.replace(frozen={"kept": jax.tree.map(
        lambda k, h: k.at[1].set(h), start.frozen["kept"], half)})
    final, losses = executor.train(start, None, noise_keys, num_steps=num_steps)
    assert np.all(np.isfinite(np.asarray(losses)))
    start_host, final_host = jax.device_get(start), jax.device_get(final)
    params = jax.device_get(executor.model_params(final))
    for member, density in ((0, 0.25), (1, 0.5)):
        for name in ("Dense_0", "Dense_1"):
            w0 = start_host.params[name]["kernel"][member]
            w = final_host.params[name]["kernel"][member]
            kept = int(np.ceil(density * w.size))
            # Out of the forward pass at the first and last step, and still trained (no decay;
            # some get no gradient: constant pixels, dead units).
            unused = ~_np_top_k(np.abs(w0), kept) & ~_np_top_k(np.abs(w), kept)
            assert np.mean(w[unused] != w0[unused]) > 0.5
            np.testing.assert_array_equal(params[name]["kernel"][member],
                                          np.where(_np_top_k(np.abs(w), kept), w, 0.0))
            assert np.count_nonzero(params[name]["kernel"][member]) == kept
            assert not np.array_equal(final_host.params[name]["bias"][member],
                                      start_host.params[name]["bias"][member])


@pytest.mark.parametrize("method", ["bernoulli", "dnw"])
def test_learned_study_rows_are_the_checkpointed_networks(tmp_path, method, sealed):
    config = _config(method=method)
    supermask.run_supermask(sealed(config, supermask.LearnedSpec), tmp_path, progress=False)
    first = (tmp_path / "results.csv").read_text()
    rows = results.read_csv(tmp_path / "results.csv")
    assert len(rows) == 2 * 2 and {r["method"] for r in rows} == {method}
    run_spec = RunSpec.from_config(config, progress=False)
    dataset, executor = run_spec.dataset, run_spec.executor
    selection = masking.prunable(executor.abstract_params)
    reparam = (supermasks.dnw(selection) if method == "dnw"
               else supermasks.bernoulli_supermask(selection))
    learned = executor.like(reparam=reparam)
    init_keys = rng.init_and_noise(rng.replicate_keys(config.seed, 2))[0]
    start = jax.device_get(learned.init(init_keys[np.array([0, 1, 0, 1])]))
    with checkpoint.Checkpointer(tmp_path / "checkpoints" / method) as ckpt:
        final, _, meta = ckpt.restore(ckpt.steps()[-1], like_state=start)
    final = jax.device_get(final)
    x = np.asarray(dataset.test.x, np.float64).reshape(len(dataset.test.y), -1)
    x = (x - np.asarray(dataset.mean, np.float64).reshape(-1)) / np.asarray(
        dataset.std, np.float64).reshape(-1)
    for m, tag in enumerate(meta["members"]):
        h, kept_all, size_all = x, 0, 0
        for layer in ("Dense_0", "Dense_1", "Dense_2"):
            if method == "dnw":
                w = np.asarray(final.params[layer]["kernel"][m], np.float64)
                keep = _np_top_k(np.abs(w), int(np.ceil(round(tag["target_density"] * w.size, 6))))
            else:
                w0 = np.asarray(start.frozen["weights"][layer]["kernel"][m], np.float64)
                w = np.asarray(final.frozen["weights"][layer]["kernel"][m], np.float64)
                np.testing.assert_allclose(  # frozen: the init or its signed layer std
                    w, np.sign(w0) * np.std(w0) if tag["weight_init"] == "signed_constant"
                    else w0, rtol=1e-6)
                logits = final.params[layer]["kernel"][m]
                key = jax.random.wrap_key_data(final.frozen["eval_key"][m])
                keep = _np_draw(key, logits, tree.names(start.params).index(f"{layer}/kernel"))
            kept_all, size_all = kept_all + keep.sum(), size_all + keep.size
            h = h @ np.where(keep, w, 0.0)
            if layer != "Dense_2":
                h = np.maximum(h, 0)
        (row,) = [r for r in rows if r["weight_init"] == tag["weight_init"]
                  and int(r["replicate"]) == tag["replicate"]
                  and (method == "bernoulli" or float(r["density"]) == tag["target_density"])]
        if method == "bernoulli":
            assert float(row["density"]) == pytest.approx(kept_all / size_all)
        accuracy = np.mean(h.argmax(1) == np.asarray(dataset.test.y))
        assert float(row["test_accuracy"]) == pytest.approx(accuracy, abs=1.5 / len(h))
    supermask.run_supermask(config, tmp_path, progress=False)  # finished: same file
    assert (tmp_path / "results.csv").read_text() == first
