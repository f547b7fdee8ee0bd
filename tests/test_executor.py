"""The executor's members and reparameterisations, and its runtime (programs, transfers)."""

import dataclasses
import functools
import gc
import math
import weakref

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from ltjax import models
from ltjax.core import masking, rng, tree
from ltjax.engine import executor as executor_lib
from ltjax.engine import optim, train
from ltjax.engine import reparam as reparam_lib
from ltjax.io import data

LR = 0.1


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def arrays(digits):
    return jax.device_put(data.device_split(digits.train, digits))


def _keys(n, seed=0):
    return rng.init_and_noise(rng.replicate_keys(seed, n))


def _batch(arrays, noise_key, step, batch_size):
    idx = data.batch_indices(rng.stream(noise_key, "order"), step, num_steps=1,
                             num_examples=arrays.y.shape[0], batch_size=batch_size)[0]
    return data.normalize(arrays.x[idx], arrays.mean, arrays.std), arrays.y[idx]


def _param_grads(model, params, x, y):
    def loss(p):
        return train.cross_entropy(model.apply({"params": p}, x, train=False), y).mean()

    return jax.grad(loss)(params)


def _one_step(model, recipe, arrays, state, noise_key, reparam, masks=None):
    fn = jax.jit(functools.partial(train.train_steps, model, recipe, num_steps=1,
                                   reparam=reparam))
    return fn(arrays, state, masks, noise_key)[0]


# --------------------------------------------------------------------------- toy reparams


def _topk_mask(scores, density=0.5):
    """Top-k of |scores| per leaf, ties by position (exact count)."""
    flat = jnp.abs(scores).ravel()
    k = math.ceil(density * flat.size)
    order = jnp.argsort(-flat, stable=True)
    return jnp.zeros(flat.size, bool).at[order[:k]].set(True).reshape(scores.shape)


def edge_popup_toy():
    """Frozen random weights, trainable scores, straight-through top-k mask."""

    def init(params, key):
        keys = jax.random.split(key, len(jax.tree.leaves(params)))
        leaves = [jax.random.normal(k, p.shape) for k, p in
                  zip(keys, jax.tree.leaves(params), strict=True)]
        return jax.tree.unflatten(jax.tree.structure(params), leaves), params

    def apply(scores, weights, key, *, train):
        def one(s, w):
            m = _topk_mask(s).astype(s.dtype)
            return w * (m + s - jax.lax.stop_gradient(s))  # forward m, gradient 1

        return jax.tree.map(one, scores, weights)

    return reparam_lib.Reparam(name="edge_popup_toy", init=init, apply=apply,
                               trainable_masks=lambda masks, t: masks)


def str_toy(s_init=-2.0):
    """sign(w) relu(|w| - sigmoid(s)), one trainable threshold per leaf, its own group."""

    def init(params, key):
        return {"w": params, "s": jax.tree.map(lambda _: jnp.float32(s_init), params)}, {}

    def apply(t, frozen, key, *, train):
        return jax.tree.map(lambda w, s: jnp.sign(w) * jax.nn.relu(jnp.abs(w) - jax.nn.sigmoid(s)),
                            t["w"], t["s"])

    def labels(t):
        return {"w": jax.tree.map(lambda _: optim.DEFAULT, t["w"]),
                "s": jax.tree.map(lambda _: "thresholds", t["s"])}

    return reparam_lib.Reparam(name="str_toy", init=init, apply=apply, labels=labels,
                               group_decay={"thresholds": 0.0})


def line_toy(penalty=0.3):
    """Two endpoints mixed by alpha ~ U[0, 1] per step; midpoint in evaluation; a penalty."""

    def init(params, key):
        keys = jax.random.split(key, len(jax.tree.leaves(params)))
        other = [p + 0.1 * jax.random.normal(k, p.shape) for k, p in
                 zip(keys, jax.tree.leaves(params), strict=True)]
        other = jax.tree.unflatten(jax.tree.structure(params), other)
        return jax.tree.map(lambda a, b: jnp.stack([a, b]), params, other), {}

    def apply(ends, frozen, key, *, train):
        alpha = jax.random.uniform(key) if train else 0.5
        return jax.tree.map(lambda e: (1 - alpha) * e[0] + alpha * e[1], ends)

    def pen(ends, key):
        del key  # the step's key: this toy penalty does not draw
        return 0.5 * penalty * sum(jnp.sum((e[1] - e[0]) ** 2) for e in jax.tree.leaves(ends))

    return reparam_lib.Reparam(
        name="line_toy", init=init, apply=apply, penalty=pen,
        trainable_masks=lambda masks, t: jax.tree.map(lambda m: jnp.stack([m, m]), masks))


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(16)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(10)(nn.relu(x))


# --------------------------------------------------------------------------- closed forms


def _previous_train_steps(model, recipe, arrays, state, masks, noise_key, *, num_steps):
    """``train.train_steps`` as it was before reparameterisations and optim (the oracle)."""
    parts = [optax.add_decayed_weights(recipe.weight_decay),
             optax.trace(decay=recipe.momentum, nesterov=recipe.nesterov)]
    tx = optax.chain(*parts)
    indices = data.batch_indices(rng.stream(noise_key, "order"), state.step, num_steps=num_steps,
                                 num_examples=arrays.y.shape[0], batch_size=recipe.batch_size)
    remask = (lambda t: t) if masks is None else (lambda t: masking.apply(t, masks))
    state = state.replace(params=remask(state.params))

    def loss_fn(params, batch_stats, x, y):
        logits, new_stats = train._forward(model, params, batch_stats, x, train=True)
        return train.cross_entropy(logits, y).mean(), new_stats

    def step_fn(state, batch_index):
        x = data.normalize(arrays.x[batch_index], arrays.mean, arrays.std)
        y = arrays.y[batch_index]
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, x, y)
        grads = remask(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        lr = recipe.learning_rate * jnp.power(jnp.float32(recipe.lr_drop_factor), 0)
        params = jax.tree.map(lambda p, u: p - (lr * u).astype(p.dtype), state.params, updates)
        params = remask(params)
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                             opt_state=opt_state), loss

    return jax.lax.scan(step_fn, state, indices)


@pytest.mark.parametrize("masked", [False, True])
def test_identity_reproduces_the_previous_step(digits, arrays, masked):
    """The library's step and this oracle are two programs: equal up to float32 rounding
    (XLA:CPU may order each sum, and contract multiply-adds into FMAs, differently: masked,
    the update's select sits between the multiply by -lr and the add). 5 steps whose sums
    run over <= 64 terms move each weight by a few ulps: rtol 1e-6 is 8 ulps (eps = 2**-23),
    atol 1e-8 is ~100 ulps of a step's update (lr 0.1 x |grad| ~ 1e-2)."""
    model = models.create("mlp", widths=(16,))
    recipe = optim.Recipe(optimizer="sgd", learning_rate=LR, momentum=0.9, weight_decay=5e-4,
                          batch_size=32)
    state = train.init_state(model, recipe, jax.random.key(3), digits.input_shape)
    old_state = state.replace(opt_state=optax.chain(
        optax.add_decayed_weights(5e-4), optax.trace(decay=0.9)).init(state.params))
    masks = jax.tree.map(lambda p: jax.random.bernoulli(jax.random.key(5), 0.6, p.shape),
                         state.params) if masked else None
    noise_key = jax.random.key(4)
    expected, old_losses = jax.jit(functools.partial(_previous_train_steps, model, recipe,
                                                     num_steps=5))(
        arrays, old_state, masks, noise_key)
    got, losses = jax.jit(functools.partial(train.train_steps, model, recipe, num_steps=5,
                                            reparam=reparam_lib.identity()))(
        arrays, state, masks, noise_key)
    np.testing.assert_allclose(losses, old_losses, rtol=1e-6)
    chex.assert_trees_all_close(got.params, expected.params, rtol=1e-6, atol=1e-8)
    if masked:
        for p, m in zip(jax.tree.leaves(got.params), jax.tree.leaves(masks), strict=True):
            assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)


def test_edge_popup_toy_gradient_is_weights_times_param_gradient(digits, arrays):
    model = models.create("mlp", widths=(16,))
    recipe = optim.Recipe(optimizer="sgd", learning_rate=LR, batch_size=32)
    reparam = edge_popup_toy()
    state = train.init_state(model, recipe, jax.random.key(0), digits.input_shape,
                             reparam=reparam)
    noise = jax.random.key(1)
    new = _one_step(model, recipe, arrays, state, noise, reparam)
    params = reparam.apply(state.params, state.frozen, None, train=True)
    g = _param_grads(model, params, *_batch(arrays, noise, 0, 32))
    expected = jax.tree.map(lambda s, w, gp: s - LR * w * gp, state.params, state.frozen, g)
    chex.assert_trees_all_close(new.params, expected, rtol=1e-5, atol=1e-6)
    # The frozen weights did not move; the forward pass is exactly W * topk(|S|).
    for a, b in zip(jax.tree.leaves(new.frozen), jax.tree.leaves(state.frozen), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    kernel = params["Dense_0"]["kernel"]
    assert int(jnp.sum(kernel != 0)) == math.ceil(0.5 * kernel.size)


def test_str_toy_gradients_match_closed_form(digits, arrays):
    model = models.create("mlp", widths=(16,))
    recipe = optim.Recipe(optimizer="sgd", learning_rate=LR, weight_decay=0.01, batch_size=32)
    reparam = str_toy()
    state = train.init_state(model, recipe, jax.random.key(0), digits.input_shape,
                             reparam=reparam)
    noise = jax.random.key(1)
    new = _one_step(model, recipe, arrays, state, noise, reparam)
    w, s = state.params["w"], state.params["s"]
    params = reparam.apply(state.params, {}, None, train=True)
    g = _param_grads(model, params, *_batch(arrays, noise, 0, 32))
    sig = jax.tree.map(jax.nn.sigmoid, s)
    alive = jax.tree.map(lambda w_, sg: (jnp.abs(w_) > sg).astype(jnp.float32), w, sig)
    grad_w = jax.tree.map(lambda g_, a: g_ * a, g, alive)
    grad_s = jax.tree.map(lambda g_, w_, a, sg: -sg * (1 - sg) * jnp.sum(g_ * jnp.sign(w_) * a),
                          g, w, alive, sig)
    # Coupled decay 0.01 on the weights ("default" group), none on the thresholds.
    exp_w = jax.tree.map(lambda w_, gw: w_ - LR * (gw + 0.01 * w_), w, grad_w)
    exp_s = jax.tree.map(lambda s_, gs: s_ - LR * gs, s, grad_s)
    chex.assert_trees_all_close(new.params["w"], exp_w, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(new.params["s"], exp_s, rtol=1e-4, atol=1e-7)
    assert any(float(jnp.mean(a)) < 1 for a in jax.tree.leaves(alive))  # some are cut


def test_line_toy_gradients_with_penalty_match_closed_form(digits, arrays):
    model = models.create("mlp", widths=(16,))
    recipe = optim.Recipe(optimizer="sgd", learning_rate=LR, batch_size=32)
    reparam = line_toy(penalty=0.3)
    state = train.init_state(model, recipe, jax.random.key(0), digits.input_shape,
                             reparam=reparam)
    noise = jax.random.key(1)
    new = _one_step(model, recipe, arrays, state, noise, reparam)
    alpha = jax.random.uniform(rng.step_key(rng.stream(noise, "reparam"), 0))
    params = jax.tree.map(lambda e: (1 - alpha) * e[0] + alpha * e[1], state.params)
    g = _param_grads(model, params, *_batch(arrays, noise, 0, 32))

    def expected(e, g_):
        d = e[1] - e[0]
        return jnp.stack([e[0] - LR * ((1 - alpha) * g_ - 0.3 * d),
                          e[1] - LR * (alpha * g_ + 0.3 * d)])

    chex.assert_trees_all_close(new.params, jax.tree.map(expected, state.params, g), rtol=1e-5,
                                atol=1e-6)


def test_batchnorm_only_freezes_everything_else_bitwise(digits):
    model = BNNet()
    recipe = optim.Recipe(optimizer="sgd", learning_rate=LR, momentum=0.9, weight_decay=0.1,
                          batch_size=32)
    executor = executor_lib.Executor(model, digits, recipe,
                                     reparam=reparam_lib.freeze(r"^(?!BatchNorm)"))
    init_keys, noise_keys = _keys(2)
    state = executor.init(init_keys)
    before = jax.device_get(state.params)
    state, _ = executor.train(state, None, noise_keys, num_steps=4)
    after = jax.device_get(state.params)
    for name in ("Dense_0", "Dense_1"):
        for leaf in ("kernel", "bias"):
            assert after[name][leaf].tobytes() == before[name][leaf].tobytes()
    assert not np.array_equal(after["BatchNorm_0"]["scale"], before["BatchNorm_0"]["scale"])


# --------------------------------------------------------------------------- under the executor


def test_masks_compose_with_a_reparameterisation_and_resume_is_exact(digits):
    model = models.create("mlp", widths=(16,))
    recipe = optim.Recipe(optimizer="sgd", learning_rate=LR, momentum=0.9, batch_size=32)
    executor = executor_lib.Executor(model, digits, recipe, reparam=line_toy(), steps_per_call=2)
    init_keys, noise_keys = _keys(2)
    masks = jax.vmap(lambda k: jax.tree.map(
        lambda p: jax.random.bernoulli(k, 0.5, p.shape), executor.abstract_params))(
            jax.random.split(jax.random.key(7), 2))
    start = executor.init(init_keys, masks)
    once, _ = executor.train(start, masks, noise_keys, num_steps=6)
    half, _ = executor.train(start, masks, noise_keys, num_steps=4)
    twice, _ = executor.train(half, masks, noise_keys, num_steps=2)
    for a, b in zip(jax.tree.leaves(once.params), jax.tree.leaves(twice.params), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    params = executor.model_params(once, masks)
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks), strict=True):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
    midpoint = jax.tree.map(lambda e, m: jnp.where(m, 0.5 * e[:, 0] + 0.5 * e[:, 1], 0.0),
                            once.params, masks)
    # Exact: halving is exact, so both midpoints round once (FMA or not), and both go
    # through the executor's one eval program.
    np.testing.assert_array_equal(executor.evaluate(once, "test", masks)["loss"],
                                  executor.evaluate_params(midpoint, {}, "test")["loss"])


def test_members_equal_their_solo_runs(digits):
    """A 3 x 2 grid of learning rates x weight decays as one program; member r == alone."""
    model = models.create("mlp", widths=(16,))
    recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9, batch_size=32)
    executor = executor_lib.Executor(model, digits, recipe)
    lrs, wds = [0.2, 0.2, 0.05, 0.05, 0.01, 0.01], [0.0, 0.01] * 3
    init_keys, noise_keys = _keys(6)
    init_keys = jnp.stack([init_keys[0]] * 6)  # one init: only the recipes differ
    hp = optim.member_hparams(recipe, 6, learning_rate=lrs, weight_decay=wds,
                              label_smoothing=[0.0, 0.0, 0.0, 0.1, 0.0, 0.0])
    grid, _ = executor.train(executor.init(init_keys), None, noise_keys, num_steps=8, hparams=hp)
    finals = [np.asarray(jax.device_get(grid.params["Dense_0"]["kernel"][r])) for r in range(6)]
    assert len({f.tobytes() for f in finals}) == 6  # every recipe moved differently
    for r in (0, 3, 5):
        solo_recipe = optim.Recipe(optimizer="sgd", learning_rate=lrs[r], momentum=0.9,
                                   weight_decay=wds[r], batch_size=32,
                                   label_smoothing=float(hp.label_smoothing[r]))
        solo_executor = executor_lib.Executor(model, digits, solo_recipe)
        solo, _ = solo_executor.train(solo_executor.init(init_keys[r:r + 1]), None,
                                      noise_keys[r:r + 1], num_steps=8)
        chex.assert_trees_all_close(tree.index(grid.params, r), tree.index(solo.params, 0),
                                    rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"learning_rate must have one value per member, "
                                         r"shape \(6,\)"):
        executor.train(grid, None, noise_keys, num_steps=1,
                       hparams=optim.member_hparams(recipe, 5))
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        executor.train(grid, None, noise_keys, num_steps=1, hparams=hp.replace(
            learning_rate=np.array([0.1, -0.1, 0.1, 0.1, 0.1, 0.1], np.float32)))


def test_zero_smoothing_members_ignore_the_recipe_smoothing(digits):
    """Members with label smoothing 0 train without smoothing even if the recipe has some."""
    model = models.create("mlp", widths=(16,))
    smoothed = optim.Recipe(optimizer="sgd", learning_rate=0.1, batch_size=32, label_smoothing=0.2)
    plain = optim.Recipe(optimizer="sgd", learning_rate=0.1, batch_size=32)
    init_keys, noise_keys = _keys(2)
    outs = []
    for recipe, hp in ((smoothed, optim.member_hparams(smoothed, 2, label_smoothing=[0.0, 0.0])),
                       (plain, None), (smoothed, None)):
        executor = executor_lib.Executor(model, digits, recipe)
        outs.append(executor.train(executor.init(init_keys), None, noise_keys, num_steps=3,
                                   hparams=hp)[0].params)
    chex.assert_trees_all_close(outs[0], outs[1], rtol=1e-6, atol=1e-7)
    assert not np.allclose(outs[0]["Dense_0"]["kernel"], outs[2]["Dense_0"]["kernel"])


def test_reparam_that_does_not_fit_is_refused(digits):
    model = models.create("mlp", widths=(16,))
    recipe = optim.Recipe(batch_size=32)
    wrong = reparam_lib.Reparam(
        name="wrong", init=lambda p, k: (p, {}),
        apply=lambda t, f, k, *, train: {"Dense_0": t["Dense_0"]})
    with pytest.raises(ValueError, match=r"reparam 'wrong'.*structure"):
        executor_lib.Executor(model, digits, recipe, reparam=wrong)
    with pytest.raises(ValueError, match="names no leaf"):
        executor_lib.Executor(model, digits, recipe, reparam=reparam_lib.freeze("BatchNorm"))
    unlabelled = reparam_lib.Reparam(
        name="groups", init=lambda p, k: (p, {}), apply=lambda t, f, k, *, train: t,
        labels=lambda t: jax.tree.map(lambda _: "scores", t))
    with pytest.raises(ValueError, match=r"labels \['scores'\] have no group_decay"):
        executor_lib.Executor(model, digits, recipe, reparam=unlabelled)
    misplaced = reparam_lib.Reparam(
        name="masks", init=lambda p, k: (p, {}), apply=lambda t, f, k, *, train: t,
        trainable_masks=lambda masks, t: {"Dense_0": masks["Dense_0"]})
    with pytest.raises(ValueError, match=r"reparam 'masks': trainable_masks"):
        executor_lib.Executor(model, digits, recipe, reparam=misplaced)


# --------------------------------------------------------------------------- runtime


def test_deleted_executor_is_collected(digits):
    model = models.create("mlp", widths=(8,))
    executor = executor_lib.Executor(model, digits, optim.Recipe(batch_size=32))
    init_keys, noise_keys = _keys(2)
    state, _ = executor.train(executor.init(init_keys), None, noise_keys, num_steps=2)
    executor.evaluate(state, "test")
    ref = weakref.ref(executor)
    del executor
    gc.collect()
    assert ref() is None


def test_equal_executors_share_programs_and_each_reads_its_own_data(digits, monkeypatch):
    # Two datasets of one shape with other pixels and labels: an executor of each, equal
    # otherwise, share the programs (one trace of the training and eval functions), and
    # each trains and evaluates on its own data: the numbers of a program built for it alone.
    rolled = dataclasses.replace(digits, train=data.Split(digits.train.x[::-1],
                                                          digits.train.y[::-1]),
                                 test=data.Split(digits.test.x[::-1], (digits.test.y + 1) % 10))
    model, recipe = models.create("mlp", widths=(8,)), optim.Recipe(batch_size=32)
    init_keys, noise_keys = _keys(2)

    def run(dataset):
        executor = executor_lib.Executor(model, dataset, recipe, steps_per_call=3)
        state, _ = executor.train(executor.init(init_keys), None, noise_keys, num_steps=3)
        return jax.tree.leaves(state.params), executor.evaluate(state, "test")

    executor_lib.clear_shared_programs()
    alone = run(rolled)  # built for the rolled dataset, nothing shared
    executor_lib.clear_shared_programs()
    traces = {"train": 0, "eval": 0}
    for name, module, attr in (("train", train, "train_steps"), ("eval", train, "evaluate")):
        original = getattr(module, attr)
        monkeypatch.setattr(module, attr, lambda *a, _n=name, _f=original, **k: (
            traces.__setitem__(_n, traces[_n] + 1), _f(*a, **k))[1])
    first = run(digits)
    shared = run(rolled)
    assert traces == {"train": 1, "eval": 1}
    for a, b in zip(alone[0], shared[0], strict=True):
        np.testing.assert_array_equal(a, b)  # one program, so bit for bit
    np.testing.assert_array_equal(alone[1]["loss"], shared[1]["loss"])
    assert not np.array_equal(first[1]["loss"], shared[1]["loss"])  # the data differ
    # Another recipe is another program.
    other = executor_lib.Executor(model, digits, optim.Recipe(batch_size=32, learning_rate=0.05),
                                  steps_per_call=3)
    other.train(other.init(init_keys), None, noise_keys, num_steps=3)
    assert traces["train"] == 2


def test_dense_and_masked_share_one_program(digits, monkeypatch):
    traces = []
    original = train.train_steps
    monkeypatch.setattr(train, "train_steps", lambda *a, **k: traces.append(1) or original(*a, **k))
    executor_lib.clear_shared_programs()  # programs an earlier test's equal executor built
    model = models.create("mlp", widths=(8,))
    executor = executor_lib.Executor(model, digits, optim.Recipe(batch_size=32),
                                     steps_per_call=2)
    init_keys, noise_keys = _keys(2)
    state, _ = executor.train(executor.init(init_keys), None, noise_keys, num_steps=2)
    masks = jax.tree.map(lambda p: p != 0, state.params)
    executor.train(state, masks, noise_keys, num_steps=2)
    assert len(traces) == 1


def test_losses_stay_on_device_between_chunks(digits, monkeypatch):
    model = models.create("mlp", widths=(8,))
    executor = executor_lib.Executor(model, digits, optim.Recipe(batch_size=32),
                                     steps_per_call=1)
    init_keys, noise_keys = _keys(2)
    state = executor.init(init_keys)
    executor.train(state, None, noise_keys, num_steps=1)  # compile
    calls = []
    real = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: calls.append(1) or real(x))
    with jax.transfer_guard_device_to_host("disallow"):
        for num_steps in (2, 7):
            calls.clear()
            _, losses = executor.train(state, None, noise_keys, num_steps=num_steps)
            # Twice per call, never per chunk: the start step and the keys (which pick the
            # epochs' permutations), then the losses.
            assert len(calls) == 2 and losses.shape == (2,)


def test_model_is_not_replaced(digits):
    model = models.create("conv2")
    executor = executor_lib.Executor(model, digits, optim.Recipe(batch_size=16),
                                     strategy="unrolled_loop")
    assert executor.model is model
    with pytest.raises(ValueError, match="materialize_inputs"):
        executor_lib.Executor(models.create("mlp", widths=(8,)), digits,
                              optim.Recipe(batch_size=16), materialize_inputs=True)


def test_train_and_evaluate_is_train_then_evaluate_per_interval_in_one_transfer(
        digits, monkeypatch):
    # 3 members (padded to 4 on 4 devices), their own subsets and learning rates, intervals of
    # 7 steps crossing epochs (subsets of 600: 18 steps per epoch): the oracle is train() for
    # 7 steps, then evaluate(), per interval.
    model = models.create("mlp", widths=(16,))
    recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9, batch_size=32)
    executor = executor_lib.Executor(model, digits, recipe)
    init_keys, noise_keys = _keys(3)
    start = executor.init(init_keys)
    subsets = np.stack([np.random.default_rng(r).permutation(len(digits.train))[:600]
                        for r in range(3)])
    hparams = optim.member_hparams(recipe, 3, learning_rate=[0.1, 0.05, 0.02])
    kwargs = dict(hparams=hparams, subsets=subsets)
    state, losses, metrics = executor.train_and_evaluate(
        start, None, noise_keys, num_intervals=4, interval=7, splits=["test", "train"], **kwargs)
    assert losses.shape == (4, 3) and metrics["train"]["accuracy"].shape == (4, 3)
    oracle, want_losses = start, []
    want = {s: {"loss": [], "accuracy": []} for s in ("test", "train")}
    for _ in range(4):
        oracle, loss = executor.train(oracle, None, noise_keys, num_steps=7, **kwargs)
        want_losses.append(loss)
        for split in want:
            for k, v in executor.evaluate(oracle, split).items():
                want[split][k].append(v)
    # Two programs (one trains, one trains and evaluates): equal to float32 rounding of 28
    # steps of a 16-unit MLP; an accuracy may move by one example (an argmax near-tie).
    assert np.asarray(state.step).tolist() == [28] * 3
    chex.assert_trees_all_close(state.params, oracle.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses, np.stack(want_losses), rtol=1e-5)
    for split, values in want.items():
        np.testing.assert_allclose(metrics[split]["loss"], np.stack(values["loss"]), rtol=1e-5)
        n = len(getattr(digits, split).y)
        assert np.abs(metrics[split]["accuracy"] - np.stack(values["accuracy"])).max() <= (
            1.5 / n)
    assert not np.allclose(metrics["test"]["loss"][0], metrics["test"]["loss"][-1])

    # Two transfers per call however many intervals: the start step and keys (which pick the
    # epochs' permutations), then the losses and metrics together.
    executor.train_and_evaluate(start, None, noise_keys, num_intervals=4, interval=7,
                                splits=["test", "train"])  # compile
    calls, real = [], jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: calls.append(1) or real(x))
    with jax.transfer_guard_device_to_host("disallow"):
        executor.train_and_evaluate(start, None, noise_keys, num_intervals=4, interval=7,
                                    splits=["test", "train"])
    assert len(calls) == 2

    with pytest.raises(ValueError, match="num_intervals must be an int >= 1, got 0"):
        executor.train_and_evaluate(start, None, noise_keys, num_intervals=0, interval=7,
                                    splits=["test"])
    with pytest.raises(ValueError, match="split must be one of .* got .validation."):
        executor.train_and_evaluate(start, None, noise_keys, num_intervals=1, interval=7,
                                    splits=["validation"])
