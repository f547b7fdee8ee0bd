"""Tests for ltjax.models: registry, parameter counts, names, shapes, materialize."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ltjax import models
from ltjax.core import matching, tree

CIFAR = (32, 32, 3)
MNIST = (28, 28, 1)
BN_MODELS = ("mlp_bn", "vgg11", "vgg13", "vgg16", "vgg19", "resnet20", "resnet32", "resnet56")
CONV_MODELS = ("conv2", "conv4", "conv6", *BN_MODELS[1:])
# Sequence models: int token ids [B, T] (tests/test_transformer.py covers them in depth).
TOKEN_MODELS = ("transformer_1l", "transformer_2l")
TOKENS = (3,)


def _shape_for(name: str) -> tuple[int, ...]:
    if name in TOKEN_MODELS:
        return TOKENS
    return MNIST if name in ("mlp", "lenet_300_100", "mlp_bn") else CIFAR


def _inputs(name: str, batch: int) -> jax.Array:
    """Ones of the model's input shape: images/features, or token ids for the transformers."""
    if name in TOKEN_MODELS:
        return jnp.ones((batch, *TOKENS), jnp.int32)
    return jnp.ones((batch, *_shape_for(name)), jnp.float32)


def _create(name: str, **kwargs) -> nn.Module:
    if name in ("mlp", "mlp_bn"):
        kwargs.setdefault("widths", (32, 16))
    return models.create(name, **kwargs)


def _abstract_init(model: nn.Module, shape: tuple[int, ...]):
    return jax.eval_shape(lambda k: models.init(model, k, shape), jax.random.key(0))


def _random_variables(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> dict:
    """Variables of ``model`` filled with NumPy random numbers (He-normal kernels).

    Much cheaper than ``models.init`` here: on XLA:CPU every threefry draw in
    the jitted init compiles separately (~0.3 s each, ~10 s for a ResNet-20).
    """
    params, stats = _abstract_init(model, shape)
    rng = np.random.default_rng(seed)

    def fill(name, leaf):
        if name.endswith("kernel"):
            scale = math.sqrt(2 / math.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0, scale, leaf.shape), jnp.float32)
        if name.endswith("scale") or name.endswith("var"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        return jnp.asarray(rng.normal(0, 0.1, leaf.shape), jnp.float32)

    variables = {"params": tree.map_with_name(fill, params)}
    if stats:
        variables["batch_stats"] = tree.map_with_name(fill, stats)
    return variables


def _kernel_count(params) -> int:
    return sum(
        math.prod(leaf.shape)
        for name, leaf in zip(tree.names(params), jax.tree.leaves(params), strict=True)
        if name.endswith("kernel")
    )


def _resnet_kernels(depth: int, width: int, num_classes: int = 10, in_channels: int = 3) -> int:
    """Independent count: conv kernels (incl. projection shortcuts) + output kernel."""
    n = (depth - 2) // 6
    total = 9 * in_channels * width
    channels = width
    for stage in range(3):
        out = width * 2**stage
        for index in range(n):
            total += 9 * channels * out + 9 * out * out
            if stage > 0 and index == 0:
                total += channels * out
            channels = out
    return total + channels * num_classes


# ----------------------------------------------------------------------------- registry


def test_names():
    assert models.NAMES == (
        "mlp", "lenet_300_100", "mlp_bn", "conv2", "conv4", "conv6", "vgg11", "vgg13", "vgg16",
        "vgg19", "resnet20", "resnet32", "resnet56", "transformer_1l", "transformer_2l",
        "vit_tiny",
    )


def test_unknown_name_raises_value_error_listing_names():
    with pytest.raises(ValueError, match="resnet18") as info:
        models.create("resnet18")
    for name in models.NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "kwargs", "words"),
    [
        ("resnet20", {"widht": 32}, ["widht", "width"]),
        ("resnet20", {"depth": 32}, ["depth", "fixed"]),
        ("lenet_300_100", {"widths": (10,)}, ["widths", "fixed"]),
        ("lenet_300_100", {"materialize_inputs": True}, ["materialize_inputs"]),
        ("vgg16", {"width": 2}, ["width"]),
        ("mlp", {}, ["widths"]),
    ],
)
def test_bad_kwargs_raise_type_error_naming_them(name, kwargs, words):
    with pytest.raises(TypeError) as info:
        models.create(name, **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("name", "kwargs", "word"),
    [
        ("resnet20", {"width": 0}, "width"),
        ("resnet20", {"num_classes": 0}, "num_classes"),
        ("mlp", {"widths": (10, -1)}, "widths"),
        ("mlp", {"widths": 10}, "widths"),
        ("conv2", {"materialize_inputs": 1}, "materialize_inputs"),
    ],
)
def test_bad_values_raise_value_error_naming_them(name, kwargs, word):
    with pytest.raises(ValueError, match=word):
        models.create(name, **kwargs)


def test_bad_depth_on_classes():
    with pytest.raises(ValueError, match="depth"):
        models.ResNet(depth=21)
    with pytest.raises(ValueError, match="depth"):
        models.VGG(depth=12)
    with pytest.raises(ValueError, match="depth"):
        models.ConvN(depth=3)


def test_kwargs_are_forwarded():
    model = models.create("resnet32", num_classes=100, width=64, materialize_inputs=True)
    assert (model.depth, model.width, model.num_classes, model.materialize_inputs) == (
        32, 64, 100, True)
    assert models.create("mlp", widths=[512, 512, 512]).widths == (512, 512, 512)
    assert models.create("lenet_300_100").widths == (300, 100)


def test_is_conv_and_has_batch_norm():
    for name in models.NAMES:
        model = _create(name)
        params, batch_stats = _abstract_init(model, _shape_for(name))
        assert models.is_conv(params) == (name in CONV_MODELS), name
        assert models.has_batch_norm(model) == (name in BN_MODELS), name
        assert models.has_batch_norm(batch_stats) == (name in BN_MODELS), name
        variables = {"params": params, "batch_stats": batch_stats}
        assert models.has_batch_norm(variables) == (name in BN_MODELS), name
    stacked = {"Dense_0": {"kernel": jnp.zeros((4, 3, 5, 7))}}  # 4 seeds of an MLP kernel
    assert models.is_conv(stacked)
    assert not models.is_conv(stacked, leading_axes=1)


# ----------------------------------------------------------------------------- counts


def test_pinned_prunable_counts():
    lenet, _ = _abstract_init(models.create("lenet_300_100"), MNIST)
    assert _kernel_count(lenet) == 266_200
    resnet20, _ = _abstract_init(models.create("resnet20"), CIFAR)
    assert _kernel_count(resnet20) == 270_896
    vgg16, _ = _abstract_init(models.create("vgg16"), CIFAR)
    assert _kernel_count(vgg16) == 14_715_584


def test_conv_n_counts_match_lth_paper():
    # Frankle & Carbin (2019), Figure 2: all weights / conv weights.
    counts = {}
    for name in ("conv2", "conv4", "conv6"):
        params, _ = _abstract_init(models.create(name), CIFAR)
        conv = sum(leaf.size for n, leaf in zip(tree.names(params), jax.tree.leaves(params),
                                                strict=True) if n.startswith("Conv"))
        counts[name] = (tree.count(params), conv)
    assert counts == {
        "conv2": (4_301_642, 38_720),
        "conv4": (2_425_930, 260_160),
        "conv6": (2_262_602, 1_145_408),
    }
    def sig2(x: float) -> float:
        return float(f"{x:.2g}")
    assert sig2(counts["conv2"][0]) == 4.3e6 and sig2(counts["conv2"][1]) == 3.9e4
    assert sig2(counts["conv4"][0]) == 2.4e6 and sig2(counts["conv4"][1]) == 2.6e5
    # The paper prints 1.7M for Conv-6, which its own architecture does not give
    # (16 * 256 flattened features -> 256 alone is 1.05M); its conv count matches.
    assert sig2(counts["conv6"][1]) == 1.1e6


@pytest.mark.parametrize(("name", "width"),
                         [("resnet20", 32), ("resnet20", 64), ("resnet32", 16), ("resnet56", 16)])
def test_resnet_counts_scale(name, width):
    params, _ = _abstract_init(models.create(name, width=width), CIFAR)
    depth = int(name.removeprefix("resnet"))
    assert _kernel_count(params) == _resnet_kernels(depth, width)
    if width == 32:  # about 4x ResNet-20's 270,896
        assert 3.9 < _kernel_count(params) / 270_896 < 4.0


def test_mlp_count_and_num_classes():
    params, _ = _abstract_init(models.create("mlp", widths=(512, 512, 512), num_classes=7),
                               (40,))
    assert _kernel_count(params) == 40 * 512 + 2 * 512 * 512 + 512 * 7
    assert params["Dense_3"]["kernel"].shape == (512, 7)


# ----------------------------------------------------------------------------- names, init

_LENET_KEYS = jax.random.split(jax.random.key(0), 2)


@pytest.fixture(scope="module")
def lenet_init():
    return models.init(models.create("lenet_300_100"), _LENET_KEYS[1], MNIST)


def test_lenet_names_are_stable(lenet_init):
    params, batch_stats = lenet_init
    assert tree.names(params) == [
        "Dense_0/bias", "Dense_0/kernel", "Dense_1/bias", "Dense_1/kernel",
        "Dense_2/bias", "Dense_2/kernel",
    ]
    assert batch_stats == {}
    assert type(params) is dict and type(params["Dense_0"]) is dict


def test_vgg_and_resnet_names():
    params, stats = _abstract_init(models.create("vgg11"), CIFAR)
    expected = {f"Conv_{i}/{p}" for i in range(8) for p in ("kernel", "bias")}
    expected |= {f"BatchNorm_{i}/{p}" for i in range(8) for p in ("scale", "bias")}
    expected |= {"Dense_0/kernel", "Dense_0/bias"}
    assert set(tree.names(params)) == expected
    expected_stats = {f"BatchNorm_{i}/{s}" for i in range(8) for s in ("mean", "var")}
    assert set(tree.names(stats)) == expected_stats

    params, stats = _abstract_init(models.create("resnet20"), CIFAR)
    names = tree.names(params)
    top = {"conv_init/kernel", "bn_init/scale", "bn_init/bias", "fc/kernel", "fc/bias"}
    assert top <= set(names)
    for i in range(9):
        for p in ("conv1/kernel", "conv2/kernel", "bn1/scale", "bn2/bias"):
            assert f"Block_{i}/{p}" in names
    assert sorted(n for n in names if "shortcut" in n) == [
        "Block_3/shortcut_bn/bias", "Block_3/shortcut_bn/scale", "Block_3/shortcut_conv/kernel",
        "Block_6/shortcut_bn/bias", "Block_6/shortcut_bn/scale", "Block_6/shortcut_conv/kernel",
    ]
    assert params["Block_3"]["shortcut_conv"]["kernel"].shape == (1, 1, 16, 32)
    assert params["Block_3"]["conv1"]["kernel"].shape == (3, 3, 16, 32)
    assert "bias" not in params["conv_init"] and "bias" not in params["Block_0"]["conv1"]
    assert "Block_0/bn1/mean" in tree.names(stats)
    # The output kernel is the last kernel leaf in tree order, in every model.
    for name in models.NAMES:
        p, _ = _abstract_init(_create(name), _shape_for(name))
        kernels = [n for n in tree.names(p) if n.endswith("kernel")]
        assert kernels[-1] in ("fc/kernel", "Dense_0/kernel", "Dense_2/kernel", "unembed/kernel",
                               "head/kernel"), name


def test_init_values_and_vmap(lenet_init):
    params, _ = lenet_init
    kernel = params["Dense_0"]["kernel"]
    np.testing.assert_allclose(np.std(kernel), math.sqrt(2 / 784), rtol=0.02)  # He normal
    assert np.all(params["Dense_0"]["bias"] == 0)
    stacked, _ = jax.vmap(lambda k: models.init(models.create("lenet_300_100"), k, MNIST))(
        _LENET_KEYS)
    assert stacked["Dense_0"]["kernel"].shape == (2, 784, 300)
    assert not np.array_equal(stacked["Dense_0"]["kernel"][0], kernel)
    jax.tree.map(np.testing.assert_array_equal, tree.index(stacked, 1), params)


def test_batch_norm_init_values():
    # One ResNet block: a full ResNet init compiles ~20 threefry draws (slow on CPU).
    block = models.resnet.Block(features=32, strides=2)
    params, stats = models.init(block, jax.random.key(1), (8, 8, 16))
    for bn in ("bn1", "bn2", "shortcut_bn"):
        assert np.all(params[bn]["scale"] == 1) and np.all(params[bn]["bias"] == 0)
        assert np.all(stats[bn]["mean"] == 0) and np.all(stats[bn]["var"] == 1)
    assert set(params) == {"conv1", "bn1", "conv2", "bn2", "shortcut_conv", "shortcut_bn"}
    np.testing.assert_allclose(np.std(params["conv1"]["kernel"]), math.sqrt(2 / (9 * 16)),
                               rtol=0.05)


# ----------------------------------------------------------------------------- forward

_ABSTRACT_ONLY = ("vgg13", "vgg16", "vgg19", "resnet32", "resnet56")


@pytest.mark.parametrize("name", models.NAMES)
def test_forward_shapes(name):
    model = _create(name, num_classes=7)
    shape = _shape_for(name)
    x = _inputs(name, 3)
    if name in _ABSTRACT_ONLY:  # compile time: shapes only
        params, stats = _abstract_init(model, shape)
        variables = {"params": params, "batch_stats": stats}
        logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
        assert logits.shape == (3, 7) and logits.dtype == jnp.float32
        out, updates = jax.eval_shape(
            lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
        assert out.shape == (3, 7)
        assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(stats)
        return
    variables = _random_variables(model, shape)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert logits.shape == (3, 7) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    if models.has_batch_norm(model):
        out, updates = jax.jit(
            lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
        assert out.shape == (3, 7)
        new_stats, old_stats = updates["batch_stats"], variables["batch_stats"]
        assert jax.tree.structure(new_stats) == jax.tree.structure(old_stats)
        differ = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_stats, old_stats)
        assert all(jax.tree.leaves(differ))
    else:
        assert not models.has_batch_norm(variables)


def test_mlp_accepts_feature_vectors():
    model = models.create("mlp", widths=(8,), num_classes=3)
    variables = _random_variables(model, (40,))
    assert model.apply(variables, jnp.ones((5, 40)), train=True).shape == (5, 3)


# ----------------------------------------------------------------------------- materialize


def _loss_and_grads(model, variables, x, y):
    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                      x, train=True, mutable=["batch_stats"])
        onehot = jax.nn.one_hot(y, logits.shape[-1])
        return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)), (logits, updates)

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])


def _conds(fn, *args) -> int:
    """The ``lax.cond`` in ``fn``'s program: one per materialised input (and its transpose)."""
    return str(jax.make_jaxpr(fn)(*args)).count("cond[")


def _assert_close_across_programs(got, want, *, depth: int, terms: int) -> None:
    """Leaf by leaf ``|got - want| <= 2 depth sqrt(terms) eps32 max|want|``.

    With and without materialised inputs are two programs (the identity ``lax.cond`` moves
    XLA:CPU's fusion boundaries): each sum may be added up in another order. Two orders of
    an n-term float32 sum differ by ~sqrt(n) ulps of its scale (a random walk of roundings);
    the forward and backward passes run 2 * depth such sums in sequence, n <= ``terms``.
    """
    eps = float(np.finfo(np.float32).eps)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=0,
                                   atol=2 * depth * math.sqrt(terms) * eps * np.abs(b).max())


def test_materialize_inputs_keeps_the_numbers_resnet():
    plain = models.create("resnet20", width=4, materialize_inputs=False)
    fast = models.create("resnet20", width=4, materialize_inputs=True)
    variables = _random_variables(plain, CIFAR)
    assert jax.tree.structure(_abstract_init(fast, CIFAR)) == jax.tree.structure(
        _abstract_init(plain, CIFAR))
    x = jax.random.normal(jax.random.key(1), (2, *CIFAR))
    y = jnp.array([3, 5])
    (loss_a, (logits_a, upd_a)), grads_a = _loss_and_grads(plain, variables, x, y)
    (loss_b, (logits_b, upd_b)), grads_b = _loss_and_grads(fast, variables, x, y)
    # The option reaches the program: a cond per conv input, none without it.
    with_params = lambda m: lambda p: _loss_and_grads(  # noqa: E731
        m, {**variables, "params": p}, x, y)
    assert _conds(with_params(fast), variables["params"]) > 0 == _conds(
        with_params(plain), variables["params"])
    # 20 layers; the longest sums (weight gradients, BatchNorm statistics) run over the
    # batch's 2 x 32 x 32 positions: 1,810 ulps of each leaf's scale (measured under the
    # legacy emitters, which do not keep the bits: <= 30).
    close = functools.partial(_assert_close_across_programs, depth=20, terms=2 * 32 * 32)
    close(logits_b, logits_a)
    close(loss_b, loss_a)
    close(upd_b, upd_a)
    close(grads_b, grads_a)
    assert float(jnp.abs(grads_a["Block_3"]["shortcut_conv"]["kernel"]).sum()) > 0
    eval_a = jax.jit(lambda v: plain.apply(v, x, train=False))(variables)
    eval_b = jax.jit(lambda v: fast.apply(v, x, train=False))(variables)
    assert _conds(lambda v: fast.apply(v, x, train=False), variables) > 0
    close(eval_b, eval_a)


def test_materialize_inputs_keeps_the_numbers_conv2():
    plain = models.create("conv2", materialize_inputs=False)
    fast = models.create("conv2", materialize_inputs=True)
    params = _random_variables(plain, (16, 16, 3))["params"]
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))

    def loss(model):
        return lambda p: jnp.sum(model.apply({"params": p}, x, train=True) ** 2)

    assert _conds(loss(fast), params) > 0 == _conds(loss(plain), params)
    (loss_a, grads_a), (loss_b, grads_b) = (jax.jit(jax.value_and_grad(loss(m)))(params)
                                            for m in (plain, fast))
    # 2 convs and 3 dense layers; the longest sum is Dense_0's fan-in, 8 x 8 x 64.
    close = functools.partial(_assert_close_across_programs, depth=5, terms=8 * 8 * 64)
    close(loss_b, loss_a)
    close(grads_b, grads_a)


def test_batch_norm_mlp_init_options():
    uniform = models.create("mlp_bn", widths=(2048,), bn_init="uniform")
    params, stats = models.init(uniform, jax.random.key(0), (8,))
    gamma = np.asarray(params["BatchNorm_0"]["scale"])
    # U[0, 1]: mean 1/2 within 4 standard errors (std 1/sqrt(12) per draw), all in [0, 1).
    assert abs(gamma.mean() - 0.5) < 4 / math.sqrt(12 * gamma.size)
    assert gamma.min() >= 0.0 and gamma.max() < 1.0
    assert np.all(params["BatchNorm_0"]["bias"] == 0) and np.all(stats["BatchNorm_0"]["var"] == 1)
    ones, _ = models.init(models.create("mlp_bn", widths=(4,)), jax.random.key(0), (8,))
    assert np.all(ones["BatchNorm_0"]["scale"] == 1)
    with pytest.raises(ValueError, match="bn_init"):
        models.create("mlp_bn", widths=(4,), bn_init="zeros")


class _UserMLP(nn.Module):
    """A user's own module: not one of the bundled classes."""

    hidden: int = 32
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


def test_a_registered_model_runs_the_imp_study_with_its_controls(tmp_path, monkeypatch):
    from experiments.configs import imp_lenet_digits
    from ltjax.io import results
    from ltjax.studies import imp

    for private in ("_REGISTRY", "_SPECS"):  # registration lasts for this test only
        monkeypatch.setattr(models, private, dict(getattr(models, private)))
    monkeypatch.setattr(models, "NAMES", models.NAMES)
    models.register("user_mlp", _UserMLP, permutation_spec=lambda model, params: (
        matching.PermutationSpec(params={
            "Dense_0/kernel": (None, "h"), "Dense_0/bias": ("h",),
            "Dense_1/kernel": ("h", None), "Dense_1/bias": (None,)})))
    assert "user_mlp" in models.NAMES and isinstance(models.create("user_mlp"), _UserMLP)
    params, _ = models.init(models.create("user_mlp"), jax.random.key(0), (8, 8, 1))
    assert models.permutation_spec(models.create("user_mlp"), params).names == ("h",)

    config = imp_lenet_digits.get_config("quick")
    config.model, config.model_kwargs = "user_mlp", {"hidden": 32}
    config.levels, config.controls = 1, ("reinit",)
    config.training_steps, config.eval_every, config.checkpoint_every = "1ep", "1ep", "1ep"
    imp.run_imp(config, tmp_path, progress=False)
    rows = results.read_csv(tmp_path / "results.csv")
    assert {(r["level"], r["branch"]) for r in rows} == {("0", "imp"), ("1", "imp"),
                                                         ("1", "reinit")}
    # Level 1 prunes ceil(20 %) of the hidden kernel (64 x 32) and ceil(10 %) of the output
    # kernel (32 x 10: '@output' is the user's last dense layer); biases are not pruned.
    expected = (64 * 32 - math.ceil(0.2 * 64 * 32) + 320 - 32) / (64 * 32 + 320)
    assert all(float(r["density"]) == pytest.approx(expected, abs=1e-6)
               for r in rows if r["level"] == "1")

    with pytest.raises(ValueError, match="already registered"):
        models.register("user_mlp", _UserMLP)
    with pytest.raises(TypeError, match="num_classes"):
        models.register("no_classes", nn.Dense)
    with pytest.raises(TypeError, match="depth"):
        models.register("fixed_wrong", _UserMLP, fixed={"depth": 3})
