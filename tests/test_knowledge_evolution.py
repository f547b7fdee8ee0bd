"""Knowledge Evolution: KELS counts, slim = zeroed dense, the re-initialisation, the study."""

import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import knowledge_evolution_lenet_digits
from ltjax import models
from ltjax.core import masking, rng, tree
from ltjax.io import checkpoint, data, results
from ltjax.methods import knowledge_evolution as ke
from ltjax.studies import knowledge_evolution as study
from ltjax.studies.spec import RunSpec


def _init(model, shape, seed=0):
    return models.init(model, jax.random.key(seed), shape)


@pytest.mark.parametrize("split_rate", [0.5, 0.3, 0.25, 1.0])
def test_kels_counts_follow_the_formula_first_layer_and_classifier_whole(split_rate):
    model = models.ResNet(depth=8, width=4, num_classes=7)
    params, _ = _init(model, (8, 8, 3))
    masks = ke.kels_masks(model, params, split_rate=split_rate)
    c = lambda n: math.ceil(round(split_rate * n, 9))  # noqa: E731, an independent ceil(sr n)
    for name, leaf, mask in zip(tree.names(params), jax.tree.leaves(params),
                                jax.tree.leaves(masks), strict=True):
        shape = leaf.shape
        if "bn" in name:  # BatchNorm: never reset
            assert mask.all(), name
        elif name == "conv_init/kernel":  # all 3 inputs
            assert mask.sum() == 9 * 3 * c(shape[3])
            assert mask[:, :, :, :c(shape[3])].all()
        elif name.endswith("kernel") and len(shape) == 4:
            kh, kw, ci, co = shape
            assert mask.sum() == kh * kw * c(ci) * c(co), name
            assert mask[:, :, :c(ci), :c(co)].all(), name  # the first units, a block
        elif name == "fc/kernel":  # all 7 outputs
            assert mask.sum() == c(shape[0]) * 7 and mask[:c(shape[0])].all()
        elif name == "fc/bias":
            assert mask.all()
    mlp = models.create("lenet_300_100")
    params, _ = _init(mlp, (28, 28, 1))
    m = ke.kels_masks(mlp, params, split_rate=split_rate)
    assert m["Dense_0"]["kernel"].sum() == 784 * c(300)
    assert m["Dense_1"]["kernel"].sum() == c(300) * c(100)
    assert m["Dense_2"]["kernel"].sum() == c(100) * 10
    assert m["Dense_0"]["bias"].sum() == c(300) and m["Dense_2"]["bias"].all()
    assert ke.fit_count(10, 0.3) == 3  # not ceil(3.0000000000000004) = 4


def _dyadic(tree_, seed, scale=8.0, low=-3, high=4):
    """Small multiples of 1/scale: every sum of products is exact in float32 (order-free)."""
    gen = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (gen.integers(low, high, x.shape) / scale).astype(np.float32),
                        tree_)


def _cross_program_atol(params, logits):
    """How far two XLA programs' float32 logits of one net may differ: rounding, not a bug.

    The slim net and the masked dense net are different programs (other shapes), and
    XLA:CPU picks their kernels by shape and by the machine's CPU features: each sum of
    products may be added up in another order. Two orders of an n-term float32 sum differ
    by ~sqrt(n) ulps (eps = 2**-23) of its scale (a random walk of roundings; n ulps at
    worst); ``len(kernels)`` such sums (BatchNorm's few elementwise ops each) run in
    sequence. So: depth * sqrt(longest fan-in) * eps * max|logit| (ResNet-8: 10 kernels,
    fan-in 3 * 3 * 16: 120 ulps; the BatchNorm MLP: 24). Measured: <= 1.4 ulps here, 0.7 on
    issue #29's machine. With random weights, two output channels of any kernel swapped
    or any BatchNorm statistic taken from another channel (a slicing bug) moves the logits
    by >= 2,900 ulps; the planted bugs below by >= 28,000.
    """
    kernels = [k for name, k in zip(tree.names(params), jax.tree.leaves(params), strict=True)
               if name.endswith("kernel")]
    fan_in = max(math.prod(k.shape[:-1]) for k in kernels)
    return len(kernels) * math.sqrt(fan_in) * np.finfo(np.float32).eps * np.abs(logits).max()


@pytest.mark.parametrize("name, kwargs, shape", [
    ("lenet_300_100", {}, (8, 8, 1)),
    ("mlp_bn", {"widths": (12, 10)}, (8, 8, 1)),
    ("resnet", {"depth": 8, "width": 4}, (8, 8, 3)),
])
def test_slim_logits_equal_the_dense_logits_with_the_reset_part_zeroed(name, kwargs, shape):
    model = models.ResNet(**kwargs) if name == "resnet" else models.create(name, **kwargs)
    params, stats = _init(model, shape)
    params = _dyadic(params, 1)
    gen = np.random.default_rng(2)
    stats = jax.tree.map(lambda s: s + gen.uniform(size=s.shape).astype(np.float32), stats)
    masks = ke.kels_masks(model, params, split_rate=0.5)
    slim, slim_params, slim_stats = ke.extract_slim(model, params, stats, split_rate=0.5,
                                                    input_shape=shape)
    assert type(slim) is type(model)
    want_widths = {"lenet_300_100": (150, 50), "mlp_bn": (6, 5)}.get(name)
    assert (slim.widths == want_widths) if want_widths else slim.width == 2
    x = jnp.asarray(_dyadic(np.zeros((16, *shape)), 3, scale=4.0))
    dense_fn = jax.jit(lambda p: model.apply({"params": p, "batch_stats": stats}, x,
                                             train=False))
    slim_fn = jax.jit(lambda p, s: slim.apply({"params": p, "batch_stats": s}, x,
                                              train=False))
    got = np.asarray(slim_fn(slim_params, slim_stats))
    want = np.asarray(dense_fn(masking.apply(params, masks)))
    if jax.tree.leaves(stats):  # BatchNorm's statistics are not dyadic: two programs' rounding
        np.testing.assert_allclose(got, want, rtol=0, atol=_cross_program_atol(params, want))
    else:  # dyadic weights and inputs: every product and partial sum (multiples of 2**-11
        np.testing.assert_array_equal(got, want)  # below 2**5) is exact, in whatever order
    assert not np.allclose(dense_fn(params), got)  # without the zeroing: differs
    # Random float weights: equal up to rounding.
    params = jax.tree.map(lambda p: p + gen.normal(size=p.shape).astype(np.float32), params)
    _, slim_params, _ = ke.extract_slim(model, params, stats, split_rate=0.5, input_shape=shape)
    want = np.asarray(dense_fn(masking.apply(params, masks)))
    atol = _cross_program_atol(params, want)
    np.testing.assert_allclose(slim_fn(slim_params, slim_stats), want, rtol=0, atol=atol)
    assert tree.count(slim_params) == sum(
        int(np.size(leaf)) for leaf in jax.tree.leaves(_init(slim, shape)[0]))
    # The tolerance still catches a slicing bug: two output channels of the first kernel
    # swapped, or the first BatchNorm's channel 0 given channel 1's mean.
    leaves, treedef = jax.tree.flatten(jax.tree.map(np.array, slim_params))
    first = next(i for i, n in enumerate(tree.names(slim_params)) if n.endswith("kernel"))
    leaves[first][..., [0, 1]] = leaves[first][..., [1, 0]]
    swapped = slim_fn(jax.tree.unflatten(treedef, leaves), slim_stats)
    assert not np.allclose(swapped, want, rtol=0, atol=atol)
    if slim_stats:
        stat_leaves, stat_def = jax.tree.flatten(jax.tree.map(np.array, slim_stats))
        assert tree.names(slim_stats)[0].endswith("mean")
        stat_leaves[0][0] = stat_leaves[0][1]
        wrong_stat = slim_fn(slim_params, jax.tree.unflatten(stat_def, stat_leaves))
        assert not np.allclose(wrong_stat, want, rtol=0, atol=atol)


def test_slim_resnet_needs_stages_that_split_alike():
    assert ke.slim_model(models.create("resnet20", width=16), split_rate=0.5).width == 8
    with pytest.raises(ValueError, match="not a registry ResNet"):
        ke.slim_model(models.create("resnet20", width=16), split_rate=0.4)  # 7, 13, 26
    with pytest.raises(ValueError, match="no slim net of VGG"):
        ke.slim_model(models.create("vgg11"), split_rate=0.5)


def test_ke_reinit_keeps_the_fit_part_bitwise_resets_from_fresh_and_not_bn():
    model = models.create("mlp_bn", widths=(400, 300))
    params, stats = _init(model, (8, 8, 1))
    trained = jax.tree.map(lambda p: p + 0.01 * jax.random.normal(jax.random.key(5), p.shape),
                           params)
    masks = ke.kels_masks(model, trained, split_rate=0.5)
    fresh = ke.reset_draw(jax.random.key(9), trained)
    out = ke.ke_reinit(trained, masks, fresh)
    for name, new, old, f, m in zip(tree.names(out), jax.tree.leaves(out),
                                    jax.tree.leaves(trained), jax.tree.leaves(fresh),
                                    jax.tree.leaves(masks), strict=True):
        new, old, f, m = map(np.asarray, (new, old, f, m))
        assert np.array_equal(new[m], old[m]), name  # bitwise
        assert np.array_equal(new[~m], f[~m]), name
        if "BatchNorm" in name:
            assert m.all() and np.array_equal(new, old)
    reset = np.asarray(out["Dense_1"]["kernel"])[~np.asarray(masks["Dense_1"]["kernel"])]
    assert reset.size == 400 * 300 - 200 * 150
    assert (np.asarray(out["Dense_0"]["bias"])[200:] == 0).all()  # a reset bias restarts at 0


@pytest.mark.parametrize("name, kwargs, shape", [
    ("lenet_300_100", {}, (28, 28, 1)),
    ("conv2", {}, (32, 32, 3)),
])
def test_reset_draw_is_torch_kaiming_uniform_sqrt5(name, kwargs, shape):
    # The oracle, torch's kaiming_uniform_(a=sqrt(5)) written out: gain sqrt(2 / (1 + 5)),
    # std gain / sqrt(fan_in), bound sqrt(3) std = 1 / sqrt(fan_in), fan_in = C_in (dense)
    # or kh * kw * C_in (conv): every axis of a Flax kernel but the last.
    model = models.create(name, **kwargs)
    params, _ = _init(model, shape)
    draw = ke.reset_draw(jax.random.key(4), params)
    assert jax.tree.structure(draw) == jax.tree.structure(params)
    for leaf_name, d, p in zip(tree.names(draw), jax.tree.leaves(draw), jax.tree.leaves(params),
                               strict=True):
        d = np.asarray(d)
        assert d.shape == p.shape and d.dtype == p.dtype, leaf_name
        if not leaf_name.endswith("kernel"):
            assert (d == 0).all(), leaf_name
            continue
        fan_in = math.prod(p.shape[:-1])
        bound = math.sqrt(3) * math.sqrt(2 / (1 + 5)) / math.sqrt(fan_in)
        assert np.abs(d).max() <= bound, leaf_name
        if d.size >= 10_000:
            assert d.std() == pytest.approx(bound / math.sqrt(3), rel=0.02), leaf_name
            # Uniform: each tenth of [-bound, bound] holds a tenth of the entries.
            counts = np.histogram(d, bins=10, range=(-bound, bound))[0] / d.size
            assert np.abs(counts - 0.1).max() < 0.01, leaf_name
    again = ke.reset_draw(jax.random.key(4), params)
    other = ke.reset_draw(jax.random.key(5), params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(draw),
                                                     jax.tree.leaves(again), strict=True))
    assert not any(np.array_equal(a, b) for n, a, b in zip(
        tree.names(draw), jax.tree.leaves(draw), jax.tree.leaves(other), strict=True)
        if n.endswith("kernel"))


def test_wels_masks_are_bernoulli_on_kernels_only_and_seeded():
    model = models.create("lenet_300_100")
    params, _ = _init(model, (28, 28, 1))
    a = ke.wels_masks(params, jax.random.key(0), split_rate=0.3)
    b = ke.wels_masks(params, jax.random.key(0), split_rate=0.3)
    c = ke.wels_masks(params, jax.random.key(1), split_rate=0.3)
    kernel = np.asarray(a["Dense_0"]["kernel"])
    assert abs(kernel.mean() - 0.3) < 0.01 and 0 < kernel.sum() < kernel.size
    assert np.asarray(a["Dense_0"]["bias"]).all()
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                     strict=True))
    assert not np.array_equal(np.asarray(c["Dense_0"]["kernel"]), kernel)
    with pytest.raises(ValueError, match="split_rate"):
        ke.wels_masks(params, jax.random.key(0), split_rate=0.0)


def _config(**overrides):
    config = knowledge_evolution_lenet_digits.get_config("quick")
    config.model_kwargs.widths = (16, 8)
    config.training_steps = "60it"
    config.eval_every = "60it"
    config.checkpoint_every = "30it"
    config.recipe.total_steps = "60it"
    config.generations = 2
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


class _Killed(Exception):
    pass


def test_study_table_matches_an_independent_replay_and_resumes_exactly(tmp_path, on_training,
                                                                       sealed):
    config = _config()
    summary = study.run_knowledge_evolution(sealed(config, study.KnowledgeEvolutionSpec),
                                            tmp_path / "run", progress=False)
    rows = results.read_csv(tmp_path / "run" / "results.csv")
    assert list(rows[0]) == ["generation", "replicate", *study.FIELDS]
    members = list(rows)
    assert [(int(r["generation"]), int(r["replicate"])) for r in members] == [
        (g, r) for g in (1, 2) for r in (0, 1)]
    assert {int(r["slim_params"]) for r in members} == {8 * 64 + 8 + 4 * 8 + 4 + 4 * 10 + 10}
    assert len(summary["rows"]) == 2
    assert (tmp_path / "run" / "plots" / "knowledge_evolution.png").stat().st_size > 0

    # An independent replay from the library and the executor: the two replicates'
    # generations by hand, the slim nets sliced by hand.
    run_spec = RunSpec.from_config(config, progress=False)
    dataset, executor = run_spec.dataset, run_spec.executor
    init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(config.seed, 2))
    model = executor.model
    masks = ke.kels_masks(model, executor.abstract_params, split_rate=0.5)
    slim = models.create("mlp", widths=(8, 4), num_classes=10)
    x = data.normalize(dataset.test.x, dataset.mean, dataset.std)
    state = executor.init(init_keys)
    for g in (1, 2):
        if g > 1:
            reinit_keys = ke.generation_keys(init_keys, "ke_reinit", g)
            # The reset part restarts from the reference's draw (checked against its
            # oracle above) from the documented key, not from a fresh init of the model.
            params = tree.stack([ke.ke_reinit(tree.index(state.params, r), masks, ke.reset_draw(
                reinit_keys[r], tree.index(state.params, r))) for r in range(2)])
            state = executor.shard(state.replace(
                step=jnp.zeros((2,), jnp.int32), params=params,
                opt_state=executor.fresh_opt_state(params)))
        noise = noise_keys if g == 1 else ke.generation_keys(noise_keys, "knowledge_evolution", g)
        state, _ = executor.train(state, None, noise, num_steps=60)
        for r in range(2):
            one = jax.tree.map(np.asarray, tree.index(jax.device_get(state.params), r))
            sliced = {"Dense_0": {"kernel": one["Dense_0"]["kernel"][:, :8],
                                  "bias": one["Dense_0"]["bias"][:8]},
                      "Dense_1": {"kernel": one["Dense_1"]["kernel"][:8, :4],
                                  "bias": one["Dense_1"]["bias"][:4]},
                      "Dense_2": {"kernel": one["Dense_2"]["kernel"][:4],
                                  "bias": one["Dense_2"]["bias"]}}
            slim_acc = float(np.mean(np.argmax(slim.apply({"params": sliced}, x, train=False), -1)
                                     == dataset.test.y))
            dense_acc = float(np.mean(np.argmax(model.apply({"params": one}, x, train=False),
                                                -1) == dataset.test.y))
            (row,) = [m for m in members if (int(m["generation"]), int(m["replicate"])) == (g, r)]
            # Op by op here, the executor's eval program there: the logits may differ in the
            # last bits, so an argmax near-tie may fall either way: one example's worth.
            tie = 1.5 / len(dataset.test.y)
            assert float(row["slim_test_accuracy"]) == pytest.approx(slim_acc, abs=tie)
            assert float(row["dense_test_accuracy"]) == pytest.approx(dense_acc, abs=tie)
    slim_g = [float(r["slim_test_accuracy"]) for r in members if int(r["replicate"]) == 1]
    assert slim_g[0] < slim_g[-1]  # the slim net improves over generations

    # Killed in generation 2, resumed: the same table.
    calls = []

    def dies(call):
        calls.append(1)
        if len(calls) == 4:  # generation 1: 2 calls; generation 2: the second call
            raise _Killed

    on_training(dies)
    with pytest.raises(_Killed):
        study.run_knowledge_evolution(config, tmp_path / "resumed", progress=False)
    on_training(None)
    study.run_knowledge_evolution(config, tmp_path / "resumed", progress=False)
    assert ((tmp_path / "resumed" / "results.csv").read_text()
            == (tmp_path / "run" / "results.csv").read_text())


def test_wels_mask_survives_the_checkpoint_round_trip(tmp_path, monkeypatch):
    config = _config(split="wels", split_rate=0.7, num_replicates=1,
                     training_steps="30it", eval_every="30it", checkpoint_every="30it")
    config.recipe.total_steps = "30it"
    study.run_knowledge_evolution(config, tmp_path, progress=False)
    run_spec = RunSpec.from_config(config, progress=False)
    executor = run_spec.executor
    like = executor.abstract_members(1)[1]
    saved = study.load_split_masks(tmp_path / "checkpoints" / "split_masks", like)
    drawn = ke.wels_masks(executor.abstract_params,
                          rng.stream(rng.replicate_keys(config.seed, 1), "wels")[0],
                          split_rate=0.7)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(drawn), strict=True):
        assert np.array_equal(np.asarray(a)[0], np.asarray(b))
    kernel = np.asarray(saved["Dense_1"]["kernel"])
    assert 0 < kernel.sum() < kernel.size
    rows = [r for r in results.read_csv(tmp_path / "results.csv") if r["replicate"] == "0"]
    assert int(rows[0]["slim_params"]) == sum(int(np.sum(m)) for m in jax.tree.leaves(saved))
    # A resumed run uses the saved mask, not a new draw: change the draw, get the same table.
    first = (tmp_path / "results.csv").read_text()
    with checkpoint.Checkpointer(tmp_path / "checkpoints" / "generation_02") as ckpt:
        assert ckpt.steps() == [30]
    shutil.rmtree(tmp_path / "checkpoints" / "generation_02")
    monkeypatch.setattr(ke, "wels_masks", lambda *a, **k: pytest.fail("mask drawn again"))
    study.run_knowledge_evolution(config, tmp_path, progress=False)
    assert (tmp_path / "results.csv").read_text() == first


@pytest.mark.parametrize("overrides, match", [
    ({"split": "both"}, "config.split"),
    ({"split_rate": 0.0}, "config.split_rate"),
    ({"split_rate": 1.5}, "config.split_rate"),
    ({"generations": 0}, "config.generations"),
    ({"model": "conv2", "model_kwargs": {}}, "config.model='conv2'"),
])
def test_bad_config_is_refused_before_the_workdir_exists(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        study.run_knowledge_evolution(_config(**overrides), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
