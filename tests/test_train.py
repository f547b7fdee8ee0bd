"""The executor: vmap == per-seed, replicate independence, masks, strategies, sharding."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ltjax import models
from ltjax.core import masking, rng, tree
from ltjax.engine import executor as executor_lib
from ltjax.engine import optim, train
from ltjax.io import data


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _recipe(**kw):
    base = dict(optimizer="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4,
                batch_size=32)
    base.update(kw)
    return optim.Recipe(**base)


def _keys(n, seed=0):
    return rng.init_and_noise(rng.replicate_keys(seed, n))


def _single_run(executor, init_key, noise_key, masks, num_steps):
    """One replicate trained by train_steps directly, outside the executor (the oracle)."""
    state = train.init_state(executor.model, executor.recipe, init_key,
                             executor.dataset.input_shape)
    if masks is not None:
        state = state.replace(params=masking.apply(state.params, masks))
    arrays = jax.device_put(data.device_split(executor.dataset.train, executor.dataset))
    fn = jax.jit(functools.partial(train.train_steps, executor.model, executor.recipe,
                                   num_steps=num_steps))
    state, losses = fn(arrays, state, masks, noise_key)
    return state, losses


def test_vmapped_replicates_equal_single_runs(digits):
    model = models.create("mlp", widths=(32, 16))
    executor = executor_lib.Executor(model, digits, _recipe(), steps_per_call=7)
    init_keys, noise_keys = _keys(4)
    state = executor.init(init_keys)
    state, _ = executor.train(state, None, noise_keys, num_steps=20)
    assert executor.strategy == "scan_vmap"
    for i in (0, 3):
        single, _ = _single_run(executor, init_keys[i], noise_keys[i], None, 20)
        chex.assert_trees_all_close(tree.index(state.params, i), single.params, rtol=1e-6,
                                    atol=1e-7)
        assert int(state.step[i]) == 20


def test_epoch_permutations_kept_between_calls_give_the_documented_batches(digits):
    """The executor computes each epoch's permutation once and keeps it for the next call:
    the window it hands a call gives exactly data.batch_indices' batches (the oracle),
    whatever other keys, subsets and steps came between; and training in short calls
    interleaved with other members' calls ends bitwise where one long call ends."""
    model = models.create("mlp", widths=(8,))
    executor = executor_lib.Executor(model, digits, _recipe(batch_size=64), steps_per_call=3)
    per_epoch = len(digits.train) // 64  # 22 steps
    init_a, noise_a = _keys(2)
    init_b, noise_b = _keys(2, seed=5)
    a, b = executor.init(init_a), executor.init(init_b)
    for start, num in ((0, 3), (15, 3), (16, 40), (50, 1), (3, 2)):  # back and forth
        for keys, name, n in ((noise_a, "a", len(digits.train)), (noise_b, "b", 500)):
            window = executor._window_perms(keys, (name, 2, 1), n, start, num)
            got = data.batch_indices_in(jnp.stack(window, axis=1)[1], start, num_steps=num,
                                        batch_size=64)
            want = data.batch_indices(rng.stream(keys[1], "order"), start, num_steps=num,
                                      num_examples=n, batch_size=64)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    subsets = np.tile(np.arange(300, dtype=np.int32), (2, 1))
    for _ in range(16):  # 48 steps in calls of 3: across two epoch boundaries
        a, _ = executor.train(a, None, noise_a, num_steps=3)
        b, _ = executor.train(b, None, noise_b, num_steps=2, subsets=subsets)
    whole = executor_lib.Executor(model, digits, _recipe(batch_size=64), steps_per_call=48)
    alone, _ = whole.train(whole.init(init_a), None, noise_a, num_steps=48)
    assert int(a.step[0]) == 48 > 2 * per_epoch
    for x, y in zip(jax.tree.leaves(jax.device_get(a.params)),
                    jax.tree.leaves(jax.device_get(alone.params)), strict=True):
        np.testing.assert_array_equal(x, y)


def test_pruned_weights_stay_zero_with_momentum_and_decay(digits):
    model = models.create("mlp", widths=(32,))
    executor = executor_lib.Executor(model, digits, _recipe(learning_rate=0.1, weight_decay=1e-2))
    init_keys, noise_keys = _keys(2)
    state = executor.init(init_keys)
    # Train dense first so the momentum buffers are non-zero everywhere, then prune.
    state, _ = executor.train(state, None, noise_keys, num_steps=5)
    masks = jax.tree.map(lambda p: jax.random.bernoulli(jax.random.key(1), 0.5, p.shape),
                         state.params)
    state, _ = executor.train(state, masks, noise_keys, num_steps=10)
    for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks), strict=True):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
        assert np.any(np.asarray(p)[np.asarray(m)] != 0.0)


def test_new_mask_does_not_retrace(digits, monkeypatch):
    traces = []
    original = train.train_steps

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "train_steps", counting)
    executor_lib.clear_shared_programs()  # programs an earlier test's equal executor built
    model = models.create("mlp", widths=(16,))
    executor = executor_lib.Executor(model, digits, _recipe(), steps_per_call=5)
    init_keys, noise_keys = _keys(2)
    state = executor.init(init_keys)
    for level in range(3):
        masks = jax.tree.map(
            lambda p, lv=level: jax.random.bernoulli(jax.random.key(lv), 0.8 ** (lv + 1),
                                                     p.shape), state.params)
        state, _ = executor.train(state, masks, noise_keys, num_steps=10)
    assert len(traces) == 1

    # The same property for the single-replicate function, with chex.
    arrays = jax.device_put(data.device_split(digits.train, digits))
    one = train.init_state(model, executor.recipe, init_keys[0], digits.input_shape)
    def one_replicate(arrays, state, masks, key):
        return original(model, executor.recipe, arrays, state, masks, key, num_steps=3)

    fn = jax.jit(chex.assert_max_traces(one_replicate, n=1))
    for level in range(3):
        masks = jax.tree.map(lambda p, lv=level: jnp.arange(p.size).reshape(p.shape) % 3 != lv,
                             one.params)
        fn(arrays, one, masks, noise_keys[0])


def test_strategies_give_the_same_numbers(digits):
    model = models.create("conv2", num_classes=10)
    init_keys, noise_keys = _keys(2)
    finals = {}
    for strategy in ("scan_vmap", "unrolled_loop"):
        executor = executor_lib.Executor(model, digits, _recipe(batch_size=16), strategy=strategy,
                                  steps_per_call=3, eval_batch_size=100)
        state = executor.init(init_keys)
        state, losses = executor.train(state, None, noise_keys, num_steps=6)
        finals[strategy] = (state, losses, executor.evaluate(state, "test"))
    chex.assert_trees_all_close(finals["scan_vmap"][0].params, finals["unrolled_loop"][0].params,
                                rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(finals["scan_vmap"][2]["accuracy"],
                               finals["unrolled_loop"][2]["accuracy"], atol=1e-6)


def test_auto_strategy_picks_per_model_and_backend(digits):
    dense = executor_lib.Executor(models.create("mlp", widths=(8,)), digits, _recipe())
    conv = executor_lib.Executor(models.create("conv2"), digits, _recipe())
    assert dense.strategy == "scan_vmap"
    assert conv.strategy == ("unrolled_loop" if jax.default_backend() == "cpu" else "scan_vmap")
    abstract_conv = jax.eval_shape(lambda: {"Conv_0": {"kernel": jnp.zeros((3, 3, 1, 4))}})
    assert executor_lib.choose_strategy(abstract_conv, "gpu") == "scan_vmap"
    assert executor_lib.choose_strategy(abstract_conv, "cpu") == "unrolled_loop"


def test_sharded_over_four_devices_matches_one_device(digits):
    assert len(jax.devices()) == 4
    model = models.create("mlp", widths=(32,))
    init_keys, noise_keys = _keys(4)
    outs = []
    for devices in (jax.devices(), jax.devices()[:1]):
        executor = executor_lib.Executor(model, digits, _recipe(), devices=devices)
        state = executor.init(init_keys)
        assert len(state.params["Dense_0"]["kernel"].sharding.device_set) == len(devices)
        state, _ = executor.train(state, None, noise_keys, num_steps=12)
        outs.append((state, executor.evaluate(state, "test")))
    chex.assert_trees_all_close(outs[0][0].params, outs[1][0].params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outs[0][1]["loss"], outs[1][1]["loss"], rtol=1e-6)


def test_evaluate_matches_numpy(digits):
    model = models.create("mlp", widths=(16,))
    # 360 rows: padded
    executor = executor_lib.Executor(model, digits, _recipe(), eval_batch_size=100)
    state = executor.init(_keys(2)[0])
    got = executor.evaluate(state, "test")
    for r in range(2):
        params = tree.index(state.params, r)
        x = (digits.test.x.astype(np.float32) - digits.mean) / digits.std
        logits = np.asarray(model.apply({"params": params}, jnp.asarray(x), train=False))
        logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                                                                            keepdims=True))
        logp -= logits.max(1, keepdims=True)
        loss = -logp[np.arange(len(x)), digits.test.y].mean()
        acc = (logits.argmax(1) == digits.test.y).mean()
        np.testing.assert_allclose(got["loss"][r], loss, rtol=1e-4)
        np.testing.assert_allclose(got["accuracy"][r], acc, atol=1e-6)


def test_learning_rate_schedule():
    recipe = optim.Recipe(learning_rate=0.1, warmup_steps=10, lr_drop_steps=(20, 30))
    got = [float(optim.learning_rate_at(recipe, s)) for s in (0, 5, 10, 19, 20, 29, 30)]
    np.testing.assert_allclose(got, [0.0, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6)


def test_adam_step_matches_closed_form(digits):
    """First Adam step moves each weight by lr * g / (|g| + eps) = ~lr * sign(g)."""
    model = models.create("mlp", widths=(8,))
    recipe = optim.Recipe(optimizer="adam", learning_rate=1e-3, batch_size=16)
    state = train.init_state(model, recipe, jax.random.key(0), digits.input_shape)
    arrays = jax.device_put(data.device_split(digits.train, digits))
    new, _ = train.train_steps(model, recipe, arrays, state, None, jax.random.key(1), num_steps=1)
    idx = data.batch_indices(rng.stream(jax.random.key(1), "order"), 0, num_steps=1,
                             num_examples=len(digits.train), batch_size=16)[0]
    x = data.normalize(arrays.x[idx], arrays.mean, arrays.std)

    def loss(p):
        logits = model.apply({"params": p}, x, train=False)
        return train.cross_entropy(logits, arrays.y[idx]).mean()

    grads = jax.grad(loss)(state.params)
    expected = jax.tree.map(lambda p, g: p - 1e-3 * g / (jnp.abs(g) + 1e-8), state.params, grads)
    chex.assert_trees_all_close(new.params, expected, rtol=1e-5, atol=1e-7)


def test_recompute_batch_stats_is_mean_of_batch_statistics():
    """Closed form: a BatchNorm on raw inputs gets the mean of the batch means/variances."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)

    images = jax.random.normal(jax.random.key(2), (3, 16, 4, 4, 5)) * 2.0 + 1.0
    net = Net()
    variables = net.init(jax.random.key(0), images[0], train=False)
    stats = train.recompute_batch_stats(net, variables["params"], variables["batch_stats"], images)
    flat = np.asarray(images).reshape(3, -1, images.shape[-1])
    np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], flat.mean(1).mean(0), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(stats["BatchNorm_0"]["var"], flat.var(1).mean(0), rtol=1e-4,
                               atol=1e-6)


def test_batchnorm_model_trains_under_executor(digits):
    model = models.ResNet(depth=8, width=4)  # every BatchNorm kind of the ResNets, compiles fast
    executor = executor_lib.Executor(model, digits, _recipe(batch_size=16), eval_batch_size=120)
    init_keys, noise_keys = _keys(2)
    state = executor.init(init_keys)
    before = state.batch_stats
    state, losses = executor.train(state, None, noise_keys, num_steps=2)
    assert np.all(np.isfinite(losses))
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, state.batch_stats)
    assert all(jax.tree.leaves(changed))
    reset = executor.recompute_batch_stats(state, num_batches=2)
    chex.assert_trees_all_equal(reset.params, state.params)
    # Member 1's statistics, as train.recompute_batch_stats computes them (closed form
    # above) on the documented batches: data.batch_indices of key(0), normalised in NumPy.
    index = data.batch_indices(jax.random.key(0), 0, num_steps=2,
                               num_examples=len(digits.train), batch_size=16)
    images = (digits.train.x[np.asarray(index)].astype(np.float32) - digits.mean) / digits.std
    member = tree.index(state.params, 1)
    expected = train.recompute_batch_stats(model, member, tree.index(state.batch_stats, 1),
                                           jnp.asarray(images))
    chex.assert_trees_all_close(tree.index(reset.batch_stats, 1), expected, rtol=1e-4,
                                atol=1e-5)
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.batch_stats,
                         reset.batch_stats)
    assert all(jax.tree.leaves(moved))


class _InputNorm(nn.Module):
    """BatchNorm over the raw (normalised) input channels, then a linear head."""

    @nn.compact
    def __call__(self, x, *, train):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _toy_cifar(num: int = 64) -> data.Dataset:
    rand = np.random.default_rng(0)
    x = rand.integers(0, 256, (num, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(num) % 10).astype(np.int32)
    flat = x.reshape(-1, 3).astype(np.float64)
    return data.Dataset(name="toy", train=data.Split(x, y), validation=None,
                        test=data.Split(x[:16], y[:16]), num_classes=10,
                        mean=flat.mean(0).astype(np.float32), std=flat.std(0).astype(np.float32),
                        augment="cifar")


def test_batch_stats_reset_over_an_augmented_epoch_matches_numpy():
    """REPAIR's reset: the cumulative average over one augmented pass of the training set."""
    dataset = _toy_cifar()
    model = _InputNorm()
    executor = executor_lib.Executor(model, dataset, _recipe(batch_size=16), eval_batch_size=16)
    state = executor.init(_keys(1)[0])
    params, stats = state.params, state.batch_stats

    def numpy_stats(batches):  # per-channel mean and biased variance, averaged over batches
        flat = [((b - dataset.mean) / dataset.std).reshape(-1, 3) for b in batches]
        return (np.mean([f.mean(0) for f in flat], 0), np.mean([f.var(0) for f in flat], 0))

    key = jax.random.key(3)
    index = np.asarray(data.batch_indices(key, 0, num_steps=4, num_examples=64, batch_size=16))
    assert sorted(index.ravel().tolist()) == list(range(64))  # an epoch: every example once
    plain = [dataset.train.x[i].astype(np.float32) for i in index]
    augmented = [np.asarray(data.augment_cifar(jax.random.fold_in(rng.stream(key, "augment"), i),
                                               jnp.asarray(b))) for i, b in enumerate(plain)]
    for augment, batches in ((False, plain), (True, augmented)):
        got = executor.recomputed_batch_stats(params, stats, num_batches=None, key=key,
                                              augment=augment)["BatchNorm_0"]
        mean, var = numpy_stats(batches)
        np.testing.assert_allclose(np.asarray(got["mean"][0]), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(got["var"][0]), var, rtol=1e-4, atol=1e-5)
    # Unaugmented, one epoch is the whole training set: its mean is exactly 0 after
    # normalising by the train statistics.
    np.testing.assert_allclose(numpy_stats(plain)[0], 0.0, atol=1e-5)
    assert not np.allclose(numpy_stats(augmented)[0], 0.0, atol=1e-3)
    with pytest.raises(ValueError, match="num_batches"):
        executor.recomputed_batch_stats(params, stats, num_batches=0)


def test_batchnorm_path_of_an_odd_number_of_alphas_evaluates_on_many_devices(digits):
    """11 interpolated BatchNorm nets, statistics recomputed (placed on fewer devices than the
    params): the path's metrics are each alpha's own, evaluated alone."""
    from ltjax.core import interpolation, tree

    model = models.create("mlp_bn", widths=(8,))
    executor = executor_lib.Executor(model, digits, _recipe(batch_size=32))
    state = executor.init(_keys(2)[0])
    ends = [(tree.index(state.params, i), tree.index(state.batch_stats, i)) for i in (0, 1)]

    def recompute(t):
        return t[0], executor.recomputed_batch_stats(t[0], t[1], num_batches=2)

    alphas = np.linspace(0, 1, 11)
    curve = interpolation.evaluate_path(lambda t: executor.evaluate_params(*t, "test"), *ends,
                                        alphas, recompute_fn=recompute)
    for i in (0, 4, 10):
        alone = recompute(interpolation.interpolate(jnp.asarray(alphas[i:i + 1]), *ends))
        expected = executor.evaluate_params(*alone, "test")
        assert curve["accuracy"][i] == pytest.approx(float(expected["accuracy"][0]), abs=1e-6)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(digits):
    model = models.create("mlp", widths=(8,))
    with pytest.raises(ValueError, match="batch_size"):
        executor_lib.Executor(model, digits, _recipe(batch_size=10_000))
    with pytest.raises(ValueError, match="optimizer"):
        optim.Recipe(optimizer="lion")
    with pytest.raises(ValueError, match="strategy"):
        executor_lib.Executor(model, digits, _recipe(), strategy="fast")
    with pytest.raises(ValueError, match="steps"):
        train.parse_steps("12 epochs", steps_per_epoch=10)
    assert train.parse_steps("3ep", steps_per_epoch=10) == 30
    assert train.parse_steps("500it", steps_per_epoch=10) == 500

    executor = executor_lib.Executor(model, digits, _recipe())
    init_keys, noise_keys = _keys(2)
    state = executor.init(init_keys)
    bad_masks = {"Dense_0": {"kernel": jnp.ones((2, 64, 8), bool)}}
    with pytest.raises(ValueError, match="masks"):
        executor.train(state, bad_masks, noise_keys, num_steps=1)
    wrong_shape = masking.ones_like(state.params)
    wrong_shape["Dense_0"]["kernel"] = jnp.ones((2, 64, 9), bool)
    with pytest.raises(ValueError, match=r"masks\['Dense_0/kernel'\]"):
        executor.train(state, wrong_shape, noise_keys, num_steps=1)
    with pytest.raises(ValueError, match="noise_keys"):
        executor.train(state, None, noise_keys[:1], num_steps=1)


def test_nan_loss_raises(digits):
    model = models.create("mlp", widths=(8,))
    executor = executor_lib.Executor(model, digits, _recipe(learning_rate=1e30, momentum=0.0),
                              steps_per_call=5)
    init_keys, noise_keys = _keys(2)
    state = executor.init(init_keys)
    with pytest.raises(FloatingPointError, match="NaN"):
        executor.train(state, None, noise_keys, num_steps=50)


@pytest.mark.default_emitters
def test_adding_members_changes_no_member_bit_for_bit(digits):
    """Member r's trained params and losses are the same bytes for S = 1, 2, 3, 4, 5, 8.

    The default block of 1 runs every member through one block program whatever S is
    (S = 1 on 1 device, 3 over 3 devices, 5 as 8 with 3 dummies over 4); a block of 2 is
    exact across S too. One vmap of all local members (``member_block=None``) agrees to a
    tolerance only.
    """
    model = models.create("mlp", widths=(16,))
    executors = {block: executor_lib.Executor(model, digits, _recipe(), steps_per_call=6,
                                       member_block=block) for block in ("auto", 2, None)}
    assert executors["auto"].member_block == 1 and executors[None].member_block is None
    runs = {}
    for num, block in ((1, "auto"), (2, "auto"), (3, "auto"), (4, "auto"), (5, "auto"),
                       (8, "auto"), (1, 2), (3, 2), (8, None)):
        executor = executors[block]
        assert executor.padded_size(num) == {(5, "auto"): 8, (1, 2): 2, (3, 2): 6}.get(
            (num, block), num)
        init_keys, noise_keys = _keys(num)
        state, losses = executor.train(executor.init(init_keys), None, noise_keys,
                                       num_steps=6)
        assert losses.shape == (num,) and state.step.shape == (num,)
        test_loss = executor.evaluate(state, "test")["loss"] if num in (1, 8) else None
        runs[num, block] = (jax.device_get(state.params), losses, test_loss)

    def same_bytes(a, b, member):
        return all(x.tobytes() == y.tobytes() for x, y in zip(
            jax.tree.leaves(tree.index(a, member)), jax.tree.leaves(tree.index(b, member)),
            strict=True))

    for (num, block), (params, losses, _) in runs.items():
        solo_params, solo_losses, _ = runs[1, "auto" if block is None else block]
        if block is None:  # a vmap of 2 per device: the last bits may move
            chex.assert_trees_all_close(tree.index(params, 0), tree.index(solo_params, 0),
                                        rtol=1e-5, atol=1e-6)
            continue
        assert same_bytes(params, solo_params, 0) and losses[0] == solo_losses[0], (num, block)
    assert runs[8, "auto"][2][0] == runs[1, "auto"][2][0]  # the test loss too
    # Member 2 is the same bytes whether 3, 4, 5 or 8 run.
    for num in (4, 5, 8):
        assert same_bytes(runs[num, "auto"][0], runs[3, "auto"][0], 2), num
    with pytest.raises(ValueError, match="member_block must be an int >= 1"):
        executor_lib.Executor(model, digits, _recipe(), member_block=0)


def test_member_subsets_train_on_exactly_those_examples(digits):
    """A member's subset trains as a dataset made of those examples would (the data diet)."""
    import dataclasses

    model = models.create("mlp", widths=(16,))
    executor = executor_lib.Executor(model, digits, _recipe(), steps_per_call=7)
    init_keys, noise_keys = _keys(3)
    start = executor.init(init_keys)
    n = len(digits.train)
    rng_np = np.random.default_rng(0)
    subsets = np.stack([rng_np.permutation(n)[:300] for _ in range(3)])
    # The identity subset is the whole split.
    whole, whole_loss = executor.train(start, None, noise_keys, num_steps=20)
    ident, ident_loss = executor.train(start, None, noise_keys, num_steps=20,
                                       subsets=np.tile(np.arange(n), (3, 1)))
    chex.assert_trees_all_close(ident.params, whole.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ident_loss, whole_loss, rtol=1e-6)
    # Members 1 and 2 train on 300 examples: as on a dataset of exactly those (same
    # normalisation), each in its own run.
    mixed, _ = executor.train(executor.init(init_keys), None, noise_keys, num_steps=20,
                              subsets=subsets)
    for r in (1, 2):
        sub = subsets[r]
        small = dataclasses.replace(digits, train=data.Split(digits.train.x[sub],
                                                             digits.train.y[sub]))
        alone = executor_lib.Executor(model, small, _recipe(), steps_per_call=7)
        solo, _ = alone.train(alone.init(init_keys[r:r + 1]), None, noise_keys[r:r + 1],
                              num_steps=20)
        chex.assert_trees_all_close(tree.index(mixed.params, r), tree.index(solo.params, 0),
                                    rtol=1e-5, atol=1e-6)
    for bad, message in ((subsets[:2], r"shape \(3, n\)"),
                         (subsets.astype(float), "integer indices"),
                         (np.full((3, 300), n), r"index the training split \[0, 1437\)"),
                         (subsets[:, :10], "smaller than a batch")):
        with pytest.raises(ValueError, match=message):
            executor.train(start, None, noise_keys, num_steps=1, subsets=bad)
