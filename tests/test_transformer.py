"""The transformers of ltjax.models: NumPy oracles of the forward pass, causality, the
prunable convention, permutation invariance, planted weight matching and bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from ltjax import models
from ltjax.core import masking, matching, rng, tree
from ltjax.engine import executor, optim
from ltjax.io import data

# Tiny sizes: d 8, 2 heads of 4, MLP 16; tokens of a vocabulary of 7 (6 answers + '=').
TINY = {"d_model": 8, "num_heads": 2, "d_mlp": 16, "num_classes": 6}
IMAGE = (8, 8, 2)


def _filled(abstract, seed: int):
    """Every leaf from NumPy: kernels N(0, 1/fan_in), LayerNorm scales in [0.5, 1.5], the rest
    N(0, 0.3)."""
    gen = np.random.default_rng(seed)

    def fill(name, leaf):
        if name.endswith("scale"):
            return jnp.asarray(gen.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        if name.endswith("kernel"):
            # query/key/value kernels [d, H, hd] read d inputs; the others all but the last axis
            qkv = name.split("/")[-2] in ("query", "key", "value")
            fan_in = leaf.shape[0] if qkv else math.prod(leaf.shape[:-1])
            return jnp.asarray(gen.normal(0, 1 / math.sqrt(fan_in), leaf.shape), jnp.float32)
        return jnp.asarray(gen.normal(0, 0.3, leaf.shape), jnp.float32)

    return tree.map_with_name(fill, abstract)


def _params(model, shape, seed=0):
    abstract, _ = jax.eval_shape(lambda k: models.init(model, k, shape), jax.random.key(0))
    return _filled(abstract, seed)


def _tokens(model, batch, length, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, model.vocab, (batch, length)),
                       jnp.int32)


def _images(batch, shape=IMAGE, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, *shape)), jnp.float32)


# ----------------------------------------------------------------------------- NumPy oracle


def _np(p):
    return {k: _np(v) for k, v in p.items()} if isinstance(p, dict) else np.asarray(p, np.float64)


def _ln(x, p, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _act(name, x):
    return np.maximum(x, 0) if name == "relu" else 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))


def _attention_one_head(x, p, h, causal):
    """One head ``h`` of one sequence ``x`` [T, d] -> its contribution [T, d] to the output."""
    q = x @ p["query"]["kernel"][:, h, :] + p["query"]["bias"][h]
    k = x @ p["key"]["kernel"][:, h, :] + p["key"]["bias"][h]
    v = x @ p["value"]["kernel"][:, h, :] + p["value"]["bias"][h]
    scores = q @ k.T / np.sqrt(q.shape[-1])
    if causal:
        scores = np.where(np.tril(np.ones_like(scores)) > 0, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return (weights @ v) @ p["out"]["kernel"][h]


def _block(x, p, *, heads, causal, activation, layer_norm):
    h = _ln(x, p["ln1"]) if layer_norm else x
    x = x + sum(_attention_one_head(h, p["attn"], i, causal) for i in range(heads)) \
        + p["attn"]["out"]["bias"]
    h = _ln(x, p["ln2"]) if layer_norm else x
    h = _act(activation, h @ p["mlp_in"]["kernel"] + p["mlp_in"]["bias"])
    return x + h @ p["mlp_out"]["kernel"] + p["mlp_out"]["bias"]


def _oracle_transformer(model, params, tokens):
    p = _np(params)
    out = []
    for seq in np.asarray(tokens):
        x = p["embed"]["embedding"][seq]
        if model.positions == "learned":
            x = x + p["pos_embed"]["embedding"]
        else:
            t = np.arange(len(seq))[:, None]
            i = np.arange(model.d_model)[None, :]
            angle = t / 10000 ** ((i - i % 2) / model.d_model)
            x = x + np.where(i % 2 == 0, np.sin(angle), np.cos(angle))
        for layer in range(model.num_layers):
            x = _block(x, p[f"Block_{layer}"], heads=model.num_heads, causal=True,
                       activation=model.activation, layer_norm=model.use_layer_norm)
        last = _ln(x, p["ln_final"])[-1] if model.use_layer_norm else x[-1]
        if model.tie_embeddings:
            out.append((p["embed"]["embedding"] @ last)[: model.num_classes])
        else:
            out.append(last @ p["unembed"]["kernel"] + p["unembed"]["bias"])
    return np.stack(out)


def _oracle_vit(model, params, images):
    p = _np(params)
    s = model.patch_size
    out = []
    for image in np.asarray(images, np.float64):
        rows, cols = image.shape[0] // s, image.shape[1] // s
        patches = np.stack([image[i * s:(i + 1) * s, j * s:(j + 1) * s].reshape(-1)
                            for i in range(rows) for j in range(cols)])
        x = patches @ p["patch_embed"]["embedding"] + p["patch_embed"]["bias"]
        if model.pool == "cls":
            x = np.concatenate([p["cls_token"]["embedding"][None], x])
        x = x + p["pos_embed"]["embedding"]
        for layer in range(model.num_layers):
            x = _block(x, p[f"Block_{layer}"], heads=model.num_heads, causal=False,
                       activation=model.activation, layer_norm=True)
        x = _ln(x, p["ln_final"])
        pooled = x[0] if model.pool == "cls" else x.mean(0)
        out.append(pooled @ p["head"]["kernel"] + p["head"]["bias"])
    return np.stack(out)


@pytest.mark.parametrize("kwargs", [
    {"num_layers": 1},
    {"num_layers": 2, "activation": "gelu"},
    {"num_layers": 1, "positions": "sinusoidal", "tie_embeddings": True},
    {"num_layers": 2, "use_layer_norm": False, "vocab_size": 9},
], ids=["1l", "2l-gelu", "sinusoidal-tied", "no-layer-norm"])
def test_transformer_matches_a_numpy_oracle(kwargs):
    model = models.Transformer(**TINY, **kwargs)
    params = _params(model, (5,))
    tokens = _tokens(model, 4, 5)
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, tokens)
    assert logits.shape == (4, TINY["num_classes"]) and logits.dtype == jnp.float32
    expected = _oracle_transformer(model, params, tokens)
    assert np.std(expected) > 0.1
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_matches_a_numpy_oracle(pool):
    model = models.ViT(num_layers=2, d_model=8, num_heads=2, d_mlp=16, patch_size=4,
                       num_classes=5, pool=pool)
    params = _params(model, IMAGE)
    assert params["pos_embed"]["embedding"].shape == (4 + (pool == "cls"), 8)
    images = _images(3)
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, images)
    expected = _oracle_vit(model, params, images)
    assert np.std(expected) > 0.1
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_attention_is_causal():
    # The residual stream at position t after every block does not depend on later tokens.
    model = models.Transformer(num_layers=2, **TINY)
    params = _params(model, (6,))
    tokens = _tokens(model, 1, 6)
    changed = tokens.at[0, 4:].set((tokens[0, 4:] + 1) % model.vocab)

    def stream(x):
        _, state = model.apply({"params": params}, x, train=False, mutable=["intermediates"],
                               capture_intermediates=lambda m, _: "/".join(m.path) == "Block_1")
        return np.asarray(state["intermediates"]["Block_1"]["__call__"][0])

    before, after = stream(tokens), stream(changed)
    np.testing.assert_array_equal(before[:, :4], after[:, :4])
    assert not np.allclose(before[:, 4:], after[:, 4:])


# ----------------------------------------------------------------------------- registry


def test_registry_names_sizes_and_kwargs():
    one = models.create("transformer_1l", num_classes=97)
    two = models.create("transformer_2l", num_classes=97)
    assert (one.num_layers, one.d_model, one.num_heads, one.d_mlp) == (1, 128, 4, 512)
    assert two.num_layers == 2 and one.vocab == 98  # 97 answers and '='
    params, stats = models.init(one, jax.random.key(0), (3,))
    assert stats == {}
    assert params["embed"]["embedding"].shape == (98, 128)
    assert params["Block_0"]["attn"]["query"]["kernel"].shape == (128, 4, 32)
    assert params["Block_0"]["attn"]["out"]["kernel"].shape == (4, 32, 128)
    assert models.output_layer(params) == "unembed"
    assert models.create("vit_tiny", num_layers=4, patch_size=7).num_layers == 4
    vit, _ = jax.eval_shape(lambda k: models.init(models.create("vit_tiny"), k, (28, 28, 1)),
                            jax.random.key(0))
    assert models.output_layer(vit) == "head"
    assert not models.is_conv(vit) and not models.has_batch_norm(models.create("vit_tiny"))
    with pytest.raises(TypeError, match="num_layers.*fixed"):
        models.create("transformer_1l", num_layers=3)


@pytest.mark.parametrize(("name", "kwargs", "word"), [
    ("transformer_1l", {"d_model": 10}, "num_heads"),
    ("transformer_1l", {"positions": "rotary"}, "positions"),
    ("transformer_1l", {"activation": "tanh"}, "activation"),
    ("transformer_1l", {"vocab_size": 0}, "vocab_size"),
    ("transformer_1l", {"tie_embeddings": True, "vocab_size": 5}, "vocab_size"),
    ("vit_tiny", {"pool": "max"}, "pool"),
    ("vit_tiny", {"patch_size": 0}, "patch_size"),
])
def test_bad_values_raise_value_error_naming_them(name, kwargs, word):
    with pytest.raises(ValueError, match=word):
        models.create(name, **kwargs)


def test_prunable_convention():
    params = _params(models.Transformer(num_layers=1, **TINY), (3,))
    selected = {n for n, s in zip(tree.names(params), jax.tree.leaves(masking.prunable(params)),
                                  strict=True) if s}
    assert selected == {f"Block_0/attn/{m}/kernel" for m in ("query", "key", "value", "out")} | {
        "Block_0/mlp_in/kernel", "Block_0/mlp_out/kernel", "unembed/kernel"}
    # Overridable among the kernels: the output layer left dense, or only the MLPs.
    dense_head = masking.prunable(params, exclude="^unembed/")
    assert not dense_head["unembed"]["kernel"] and dense_head["Block_0"]["mlp_in"]["kernel"]
    only_mlp = masking.prunable(params, include="mlp_")
    assert sum(jax.tree.leaves(only_mlp)) == 2
    vit = _params(models.ViT(num_layers=1, d_model=8, num_heads=2, d_mlp=16), IMAGE)
    selected = {n for n, s in zip(tree.names(vit), jax.tree.leaves(masking.prunable(vit)),
                                  strict=True) if s}
    assert "patch_embed/embedding" not in selected and "head/kernel" in selected
    assert not any("embedding" in n or "ln" in n or n.endswith("bias") for n in selected)


# ----------------------------------------------------------------------------- permutations


def _non_identity_perms(sizes, start=0):
    for seed in range(start, start + 20):
        perms = matching.random_perms(jax.random.key(seed), sizes)
        if all(not np.array_equal(p, np.arange(p.size)) for p in perms.values()):
            return perms
    raise AssertionError("no key moved every permutation")


_INVARIANCE = [
    ("transformer", {"num_layers": 2, **TINY}, (5,)),
    ("transformer", {"num_layers": 1, "activation": "gelu", "tie_embeddings": True, **TINY},
     (5,)),
    ("transformer", {"num_layers": 1, "use_layer_norm": False, "use_bias": False, **TINY},
     (5,)),
    ("transformer", {"num_layers": 1, "positions": "sinusoidal", **TINY}, (5,)),
    ("vit", {"num_layers": 2, "d_model": 8, "num_heads": 2, "d_mlp": 16}, IMAGE),
    ("vit", {"num_layers": 1, "d_model": 8, "num_heads": 2, "d_mlp": 16, "pool": "mean"}, IMAGE),
]


@pytest.mark.parametrize("kind,kwargs,shape", _INVARIANCE,
                         ids=["2l", "tied-gelu", "no-ln-no-bias", "sinusoidal", "vit", "vit-mean"])
def test_permuted_params_give_the_same_logits(kind, kwargs, shape):
    model = models.Transformer(**kwargs) if kind == "transformer" else models.ViT(**kwargs)
    params = _params(model, shape)
    spec = models.permutation_spec(model, params)
    sizes = matching.check_spec(spec, params)
    expected_names = {f"Block_{i}/{k}" for i in range(kwargs["num_layers"])
                      for k in ("heads", "qk", "vo", "mlp")}
    if kwargs.get("positions") != "sinusoidal":
        expected_names.add("residual")  # fixed sinusoidal positions pin the stream
    assert set(sizes) == expected_names and set(spec.activations) == expected_names
    perms = _non_identity_perms(sizes)
    x = _tokens(model, 3, shape[0]) if kind == "transformer" else _images(3)
    apply = jax.jit(lambda p: model.apply({"params": p}, x, train=False))
    before = np.asarray(apply(params))
    permuted = matching.apply_permutation(spec, perms, params)
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(permuted), jax.tree.leaves(params), strict=True))
    after = np.asarray(apply(permuted))
    assert np.std(before) > 0.1
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())


def test_activations_name_captured_modules():
    model = models.Transformer(num_layers=1, **TINY)
    params = _params(model, (5,))
    spec = models.permutation_spec(model, params)
    acts = models.activations(model, spec, {"params": params}, _tokens(model, 2, 5),
                              post_relu=False)
    assert acts["Block_0/heads"][0].shape == (2, 5, 5, 2)  # [B, Tq, Tk, H]
    assert [a.shape for a in acts["Block_0/qk"]] == [(2, 5, 2, 4)] * 2
    assert acts["residual"][0].shape == (2, 5, 8)


def _noisy(params, level, key):
    """``leaf + level * std(leaf) * N(0, 1)`` drawn by NumPy (no program to compile)."""
    gen = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
    return jax.tree.map(lambda x: jnp.asarray(
        np.asarray(x) + level * np.std(np.asarray(x)) * gen.standard_normal(x.shape),
        jnp.float32), params)


@pytest.mark.parametrize("kind,kwargs,shape", [
    ("transformer", {"num_layers": 2, "d_model": 32, "num_heads": 4, "d_mlp": 64,
                     "num_classes": 11}, (4,)),
    ("vit", {"num_layers": 2, "d_model": 32, "num_heads": 4, "d_mlp": 64}, IMAGE),
], ids=["transformer_2l", "vit"])
def test_weight_matching_recovers_a_planted_permutation(kind, kwargs, shape):
    model = models.Transformer(**kwargs) if kind == "transformer" else models.ViT(**kwargs)
    params = _params(model, shape, seed=1)
    spec = models.permutation_spec(model, params)
    sizes = matching.check_spec(spec, params)
    planted = matching.random_perms(jax.random.key(11), sizes)
    params_b = _noisy(matching.apply_permutation(spec, planted, params), 0.1, jax.random.key(12))
    result = matching.weight_matching(spec, params, params_b, seed=0, restarts=4)
    expected = matching.inverse(planted)
    for name in sizes:
        np.testing.assert_array_equal(result.perms[name], expected[name], err_msg=name)


# ----------------------------------------------------------------------------- bad input


def test_sequence_model_given_images_and_image_model_given_tokens():
    transformer = models.create("transformer_1l", **{k: TINY[k] for k in ("d_model", "d_mlp")})
    vit = models.create("vit_tiny")
    with pytest.raises(ValueError, match=r"token ids \[B, T\].*input_shape \(28, 28, 1\)"):
        models.init(transformer, jax.random.key(0), (28, 28, 1))
    with pytest.raises(ValueError, match=r"images \[B, H, W, C\].*input_shape \(3,\)"):
        models.init(vit, jax.random.key(0), (3,))
    with pytest.raises(ValueError, match="patch_size=4 must divide"):
        models.init(vit, jax.random.key(0), (10, 10, 1))
    params, _ = models.init(transformer, jax.random.key(0), (3,))
    with pytest.raises(ValueError, match="integer token ids"):  # normalised floats
        transformer.apply({"params": params}, jnp.zeros((2, 3), jnp.float32), train=False)
    with pytest.raises(ValueError, match="integer token ids"):
        transformer.apply({"params": params}, jnp.zeros((2, 3, 1, 1), jnp.int32), train=False)
    vit_params, _ = jax.eval_shape(lambda k: models.init(vit, k, (8, 8, 1)), jax.random.key(0))
    with pytest.raises(ValueError, match="images"):
        jax.eval_shape(lambda p: vit.apply({"params": p}, jnp.zeros((2, 3), jnp.int32),
                                           train=False), vit_params)


def test_a_permutation_spec_for_another_model_is_rejected():
    transformer = models.Transformer(num_layers=1, **TINY)
    params = _params(transformer, (3,))
    vit = models.ViT(num_layers=1, d_model=8, num_heads=2, d_mlp=16)
    vit_params = _params(vit, IMAGE)
    spec = models.permutation_spec(transformer, params)
    with pytest.raises(ValueError, match="no entry in the permutation spec"):
        models.permutation_spec(transformer, vit_params)
    with pytest.raises(ValueError, match="no entry in the permutation spec"):
        matching.weight_matching(spec, vit_params, vit_params)
    two = models.Transformer(num_layers=2, **TINY)
    with pytest.raises(ValueError, match="not leaves of the params"):
        matching.weight_matching(models.transformer.permutation_spec(two), params, params)
    wider = _params(models.Transformer(num_layers=1, **{**TINY, "d_mlp": 32}), (3,))
    with pytest.raises(ValueError, match="params_b"):  # same names, other shapes
        matching.weight_matching(spec, params, wider)


# ----------------------------------------------------------------------------- training


def test_executor_trains_the_transformer_on_modular_tokens():
    # The data path hands int tokens to the model (empty mean/std: not normalised).
    dataset = data.modular_arithmetic(op="add", p=11, train_share=0.5, seed=0)
    model = models.create("transformer_1l", num_classes=dataset.num_classes, d_model=16,
                          num_heads=2, d_mlp=32)
    recipe = optim.Recipe(optimizer="adamw", learning_rate=3e-3, weight_decay=0.1,
                          batch_size=30)
    ex = executor.Executor(model, dataset, recipe)
    init_keys, noise_keys = rng.init_and_noise(rng.replicate_keys(0, 2))
    state = ex.init(init_keys)
    first = ex.evaluate(state, "train")["loss"]
    state, _ = ex.train(state, None, noise_keys, num_steps=150)
    metrics = ex.evaluate(state, "train")
    assert np.all(metrics["loss"] < first - 0.5)
    assert np.all(metrics["accuracy"] > 0.5)
