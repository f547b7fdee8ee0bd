"""Small pre-LayerNorm transformers: a decoder-only one for token sequences, and a ViT.

:class:`Transformer` is the grokking model of Nanda et al. (2023), "Progress
measures for grokking via mechanistic interpretability" (1 layer, d_model 128,
4 heads of 32, d_mlp 512, ReLU, learned positions, untied unembedding), with
pre-LayerNorm blocks (``use_layer_norm=False`` gives Nanda's LayerNorm-free
residual stream). It reads int token ids ``[B, T]`` and returns the logits of
the **last position** ``[B, num_classes]``: the answer token, so the
classification loss on labels ``[B]`` trains it unchanged (Power et al. 2022's
and Minegishi et al. 2023's modular arithmetic, :func:`ltjax.io.data.modular_arithmetic`).

:class:`ViT` (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words")
reads NHWC images ``[B, H, W, C]``: non-overlapping ``patch_size`` patches,
linearly embedded, a class token (or mean pooling), learned positions, the
same blocks without the causal mask.

Parameter layout (both models; ``Block_i`` for ``i < num_layers``)::

    embed/embedding          [vocab, d]        token embedding (Transformer)
    patch_embed/embedding    [p*p*C, d], bias  patch embedding (ViT)
    cls_token/embedding      [d]               class token (ViT, pool='cls')
    pos_embed/embedding      [T, d]            learned positions
    Block_i/ln1/{scale,bias}  [d]
    Block_i/attn/query/kernel [d, H, hd], bias [H, hd]   (key, value alike)
    Block_i/attn/out/kernel   [H, hd, d], bias [d]
    Block_i/ln2/{scale,bias}  [d]
    Block_i/mlp_in/kernel     [d, d_mlp], bias [d_mlp]
    Block_i/mlp_out/kernel    [d_mlp, d], bias [d]
    ln_final/{scale,bias}     [d]
    unembed/kernel [d, C], bias [C]   (Transformer, untied) | head/... (ViT)

Pruning convention: the default selection (:func:`ltjax.core.masking.prunable`:
leaves named ``kernel``) holds the attention kernels (query, key, value,
out), the MLP kernels and the output layer (``unembed`` / ``head``, as every
other bundled model's classifier); embeddings (leaves named ``embedding``:
tokens, positions, patches, class token), LayerNorms and biases are never
selected. ``include``/``exclude`` narrow it among the kernels
(``exclude='unembed|head'`` leaves the output layer dense, ``include='mlp'``
prunes only the MLPs); to prune an embedding, build the bool tree by hand.

Heads are laid out on their own axis (``[d, H, hd]``) so that a
:class:`ltjax.core.matching.PermutationSpec` can permute heads and the dimensions
within a head separately (:func:`permutation_spec`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ltjax.core import matching
from ltjax.models import _validate

#: Kernels: LeCun normal (fan-in, truncated), Flax's default for dense layers.
kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
#: Embeddings (tokens, positions, patches' class token): N(0, 0.02^2), as GPT-2 and ViT.
embedding_init = nn.initializers.normal(stddev=0.02)

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False)}
POSITIONS = ("learned", "sinusoidal")
POOLS = ("cls", "mean")


def sinusoidal_positions(length: int, d_model: int) -> np.ndarray:
    """Vaswani et al. (2017) positions ``[length, d_model]``: sin on even, cos on odd features.

    Example:
        >>> from ltjax.models import transformer
        >>> transformer.sinusoidal_positions(4, 8).shape
        (4, 8)
    """
    pos = np.arange(length, dtype=np.float64)[:, None]
    freq = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2, dtype=np.float64) / d_model)
    table = np.zeros((length, d_model), np.float64)
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq)[:, : d_model // 2]
    return table.astype(np.float32)


class Learned(nn.Module):
    """A learned table of ``shape`` (param ``embedding``, N(0, 0.02^2)): positions, class token."""

    shape: tuple[int, ...]

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("embedding", embedding_init, self.shape)


class HeadPattern(nn.Module):
    """Identity on the attention probabilities ``[B, Tq, Tk, H]`` (heads last).

    A module of its own so that :func:`ltjax.models.activations` can capture
    what each head attends to: the activations of the ``'Block_i/heads'``
    permutation (a head's pattern does not depend on the permutations within
    heads or of the residual stream).
    """

    @nn.compact
    def __call__(self, probs: jax.Array) -> jax.Array:
        return probs


class Attention(nn.Module):
    """Multi-head self-attention with heads on their own kernel axis.

    ``query``/``key``/``value`` are ``DenseGeneral`` maps ``[d] -> [H, hd]``
    (kernels ``[d, H, hd]``), ``out`` maps ``[H, hd] -> [d]`` (kernel
    ``[H, hd, d]``); scores are scaled by ``1/sqrt(hd)``; ``causal`` masks
    future keys.
    """

    num_heads: int
    causal: bool
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, T, d] -> [B, T, d]``."""
        d = x.shape[-1]
        heads, head_dim = self.num_heads, d // self.num_heads

        def proj(name: str) -> jax.Array:
            return nn.DenseGeneral((heads, head_dim), use_bias=self.use_bias,
                                   kernel_init=kernel_init, name=name)(x)

        q, k, v = proj("query"), proj("key"), proj("value")  # [B, T, H, hd]
        scores = jnp.einsum("bqhd,bkhd->bqkh", q, k) * (1.0 / math.sqrt(head_dim))
        if self.causal:
            length = x.shape[1]
            mask = jnp.tril(jnp.ones((length, length), bool))[None, :, :, None]
            scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        probs = HeadPattern(name="pattern")(jax.nn.softmax(scores, axis=2))
        z = jnp.einsum("bqkh,bkhd->bqhd", probs, v)
        return nn.DenseGeneral(d, axis=(-2, -1), use_bias=self.use_bias,
                               kernel_init=kernel_init, name="out")(z)


class Block(nn.Module):
    """A pre-LayerNorm block: ``x + attn(ln1(x))``, then ``x + mlp_out(act(mlp_in(ln2(x))))``."""

    num_heads: int
    d_mlp: int
    causal: bool
    activation: str = "relu"
    use_bias: bool = True
    use_layer_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, T, d] -> [B, T, d]`` (the residual stream)."""
        def norm(name: str, h: jax.Array) -> jax.Array:
            return nn.LayerNorm(epsilon=1e-5, name=name)(h) if self.use_layer_norm else h

        x = x + Attention(self.num_heads, self.causal, self.use_bias, name="attn")(norm("ln1", x))
        h = nn.Dense(self.d_mlp, use_bias=self.use_bias, kernel_init=kernel_init,
                     name="mlp_in")(norm("ln2", x))
        h = ACTIVATIONS[self.activation](h)
        return x + nn.Dense(x.shape[-1], use_bias=self.use_bias, kernel_init=kernel_init,
                            name="mlp_out")(h)


def _check_common(model: Any) -> None:
    for field in ("num_layers", "d_model", "num_heads", "d_mlp", "num_classes"):
        _validate.positive_int(field, getattr(model, field))
    if model.d_model % model.num_heads:
        raise ValueError(f"d_model must be a multiple of num_heads, got d_model={model.d_model}, "
                         f"num_heads={model.num_heads}")
    if model.activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, "
                         f"got {model.activation!r}")
    _validate.boolean("use_bias", model.use_bias)
    _validate.boolean("use_layer_norm", model.use_layer_norm)


def _blocks(model: Any, x: jax.Array, *, causal: bool) -> jax.Array:
    for i in range(model.num_layers):
        x = Block(num_heads=model.num_heads, d_mlp=model.d_mlp, causal=causal,
                  activation=model.activation, use_bias=model.use_bias,
                  use_layer_norm=model.use_layer_norm, name=f"Block_{i}")(x)
    if model.use_layer_norm:
        x = nn.LayerNorm(epsilon=1e-5, name="ln_final")(x)
    return x


class Transformer(nn.Module):
    """Decoder-only transformer over token ids ``[B, T]``; logits of the last position.

    Token embedding (+ learned or sinusoidal positions), ``num_layers``
    pre-LayerNorm blocks with causal multi-head attention, a final
    LayerNorm, and the unembedding of the **last** position: logits
    ``[B, num_classes]``. Untied (``unembed``, a dense layer) by default;
    ``tie_embeddings=True`` reads logits off the token embedding
    (``x @ embedding.T``) and keeps its first ``num_classes`` entries (the
    answer tokens come first in the vocabulary, as in
    :func:`ltjax.io.data.modular_arithmetic`: numbers ``0..p-1``, then ``'='``).

    Inputs must be integer token ids: token datasets are not normalised
    (their ``mean``/``std`` are empty, and :func:`ltjax.io.data.normalize` then
    returns the ids unchanged); :func:`ltjax.models.init` builds int32 dummy
    tokens for this model (:attr:`input_dtype`). The sequence length is fixed
    by the input at init when positions are learned.

    Attributes:
        num_layers: blocks (fixed by the registry names ``transformer_1l`` / ``_2l``).
        d_model: residual width (128: Nanda et al.).
        num_heads: heads; ``d_model // num_heads`` dimensions each (4 of 32).
        d_mlp: MLP hidden width (512).
        num_classes: logits (the answer tokens).
        vocab_size: input vocabulary; None: ``num_classes + 1`` (the answers
            and ``'='``, the layout of :func:`ltjax.io.data.modular_arithmetic`).
        positions: ``'learned'`` (``pos_embed/embedding`` ``[T, d]``) or
            ``'sinusoidal'`` (fixed, no params: the residual stream then has
            no permutation symmetry, see :func:`permutation_spec`).
        activation: ``'relu'`` (Nanda et al.) or ``'gelu'``.
        tie_embeddings: unembed with the token embedding.
        use_bias: biases in attention and MLP layers.
        use_layer_norm: pre-LayerNorm blocks and a final LayerNorm (False:
            Nanda et al.'s LayerNorm-free model).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ltjax import models
        >>> from ltjax.models import transformer
        >>> model = transformer.Transformer(num_layers=1, num_classes=97)
        >>> params, _ = models.init(model, jax.random.key(0), (3,))
        >>> model.apply({"params": params}, jnp.zeros((5, 3), jnp.int32), train=False).shape
        (5, 97)
    """

    num_layers: int = 1
    d_model: int = 128
    num_heads: int = 4
    d_mlp: int = 512
    num_classes: int = 10
    vocab_size: int | None = None
    positions: str = "learned"
    activation: str = "relu"
    tie_embeddings: bool = False
    use_bias: bool = True
    use_layer_norm: bool = True

    has_batch_norm: ClassVar[bool] = False
    #: The dtype of the dummy input :func:`ltjax.models.init` builds.
    input_dtype: ClassVar[Any] = jnp.int32

    def __post_init__(self) -> None:
        _check_common(self)
        if self.vocab_size is not None:
            _validate.positive_int("vocab_size", self.vocab_size)
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        _validate.boolean("tie_embeddings", self.tie_embeddings)
        if self.tie_embeddings and self.vocab < self.num_classes:
            raise ValueError(
                f"tie_embeddings=True reads the num_classes={self.num_classes} logits off the "
                f"token embedding, so vocab_size must be >= num_classes, got {self.vocab}")
        super().__post_init__()

    @property
    def vocab(self) -> int:
        """The input vocabulary size (``vocab_size``, default ``num_classes + 1``)."""
        return self.vocab_size if self.vocab_size is not None else self.num_classes + 1

    def check_input_shape(self, input_shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless ``input_shape`` is one token sequence ``(T,)``."""
        if len(input_shape) != 1:
            raise ValueError(
                f"{type(self).__name__} is a sequence model: it takes token ids [B, T] "
                f"(input_shape (T,)), got input_shape {tuple(input_shape)}; images "
                f"(H, W, C) go to an image model such as 'vit_tiny'")

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits ``[B, num_classes]`` at the last position of tokens ``[B, T]`` (no dropout)."""
        del train  # no dropout
        if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(
                f"{type(self).__name__} takes integer token ids [B, T], got "
                f"{x.dtype}{list(x.shape)}; images go to an image model such as 'vit_tiny' "
                "(token datasets have empty mean/std so that data.normalize leaves them "
                "as integers)")
        embed = nn.Embed(self.vocab, self.d_model, embedding_init=embedding_init, name="embed")
        h = embed(x)
        length = x.shape[1]
        if self.positions == "learned":
            table = Learned((length, self.d_model), name="pos_embed")()
        else:
            table = jnp.asarray(sinusoidal_positions(length, self.d_model))
        h = h + table[None]
        h = _blocks(self, h, causal=True)[:, -1]
        if self.tie_embeddings:
            return embed.attend(h)[:, : self.num_classes]
        return nn.Dense(self.num_classes, use_bias=self.use_bias, kernel_init=kernel_init,
                        name="unembed")(h)


class ViT(nn.Module):
    """Vision transformer for NHWC images ``[B, H, W, C]`` (Dosovitskiy et al. 2021).

    Non-overlapping ``patch_size`` x ``patch_size`` patches (row-major,
    flattened ``[p, p, C]``) are embedded linearly (``patch_embed``), a
    learned class token is prepended (``pool='cls'``; ``'mean'``: none, the
    tokens are averaged), learned positions added, ``num_layers``
    pre-LayerNorm blocks (no mask) and a final LayerNorm; the class token's
    (or the mean) representation feeds ``head``. The default size
    (``vit_tiny``: 2 layers, d 64, 4 heads, MLP 128, patches of 4) trains on
    MNIST / digits on a CPU in minutes (one 2-core machine, Adam, batch 128,
    one seed, machine shared: digits 98 % test accuracy after 500 steps in
    ~20 s; MNIST ~470 examples/s with patches of 4, ~1500 with
    ``patch_size=7``, 16 patches, 90 % after 400 steps).

    ``num_layers``, ``d_model``, ``num_heads``, ``d_mlp``, ``activation``,
    ``use_bias`` and ``use_layer_norm`` are as :class:`Transformer`'s (GELU by default).

    Attributes:
        patch_size: side of a patch; must divide the image's height and width.
        num_classes: logits.
        pool: ``'cls'`` or ``'mean'``.

    Example:
        >>> import jax
        >>> from ltjax import models
        >>> from ltjax.models import transformer
        >>> model = transformer.ViT()
        >>> params, _ = jax.eval_shape(          # shapes only: nothing is computed
        ...     lambda key: models.init(model, key, (28, 28, 1)), jax.random.key(0))
        >>> params["pos_embed"]["embedding"].shape   # 49 patches + the class token
        (50, 64)
    """

    num_layers: int = 2
    d_model: int = 64
    num_heads: int = 4
    d_mlp: int = 128
    patch_size: int = 4
    num_classes: int = 10
    pool: str = "cls"
    activation: str = "gelu"
    use_bias: bool = True
    use_layer_norm: bool = True

    has_batch_norm: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_common(self)
        _validate.positive_int("patch_size", self.patch_size)
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        super().__post_init__()

    def check_input_shape(self, input_shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless ``input_shape`` is ``(H, W, C)`` with patches tiling it."""
        shape = tuple(input_shape)
        if len(shape) != 3:
            raise ValueError(
                f"{type(self).__name__} is an image model: it takes images [B, H, W, C] "
                f"(input_shape (H, W, C)), got input_shape {shape}; token sequences (T,) go "
                f"to a sequence model such as 'transformer_1l'")
        if shape[0] % self.patch_size or shape[1] % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide the image's height and "
                             f"width, got input_shape {shape}")

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits ``[B, num_classes]`` for images ``[B, H, W, C]`` (``train`` unused)."""
        del train  # no dropout
        if x.ndim != 4:
            raise ValueError(
                f"{type(self).__name__} takes images [B, H, W, C], got {x.dtype}{list(x.shape)}; "
                "token sequences [B, T] go to a sequence model such as 'transformer_1l'")
        self.check_input_shape(x.shape[1:])
        b, height, width, channels = x.shape
        p = self.patch_size
        patches = x.astype(jnp.float32).reshape(b, height // p, p, width // p, p, channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * channels)
        h = PatchEmbed(self.d_model, name="patch_embed")(patches)
        if self.pool == "cls":
            cls = Learned((self.d_model,), name="cls_token")()
            h = jnp.concatenate([jnp.broadcast_to(cls[None, None], (b, 1, self.d_model)), h], 1)
        table = Learned((h.shape[1], self.d_model), name="pos_embed")()
        h = _blocks(self, h + table[None], causal=False)
        h = h[:, 0] if self.pool == "cls" else jnp.mean(h, axis=1)
        return nn.Dense(self.num_classes, kernel_init=kernel_init, name="head")(h)


class PatchEmbed(nn.Module):
    """``[B, N, p*p*C] -> [B, N, d]``: ``x @ embedding + bias``.

    A linear map like a dense layer, but its weight is named ``embedding`` so
    the default pruning selection (leaves named ``kernel``) leaves it dense.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("embedding", kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return x @ weight + bias[None, None]


# ----------------------------------------------------------------------------- permutation specs


def _block_axes(model: Any, i: int, stream: str | None) -> tuple[dict, dict]:
    """Spec entries and activations of ``Block_i``, its residual axes carried by ``stream``."""
    block = f"Block_{i}"
    heads, qk, vo, hidden = (f"{block}/heads", f"{block}/qk", f"{block}/vo", f"{block}/mlp")
    axes: dict[str, tuple] = {}
    if model.use_layer_norm:
        for ln in ("ln1", "ln2"):
            axes[f"{block}/{ln}/scale"] = (stream,)
            axes[f"{block}/{ln}/bias"] = (stream,)
    for name, inner in (("query", qk), ("key", qk), ("value", vo)):
        axes[f"{block}/attn/{name}/kernel"] = (stream, heads, inner)
        if model.use_bias:
            axes[f"{block}/attn/{name}/bias"] = (heads, inner)
    axes[f"{block}/attn/out/kernel"] = (heads, vo, stream)
    axes[f"{block}/mlp_in/kernel"] = (stream, hidden)
    axes[f"{block}/mlp_out/kernel"] = (hidden, stream)
    if model.use_bias:
        axes[f"{block}/attn/out/bias"] = (stream,)
        axes[f"{block}/mlp_in/bias"] = (hidden,)
        axes[f"{block}/mlp_out/bias"] = (stream,)
    activations = {heads: (f"{block}/attn/pattern",),
                   qk: (f"{block}/attn/query", f"{block}/attn/key"),
                   vo: (f"{block}/attn/value",), hidden: (f"{block}/mlp_in",)}
    return axes, activations


def _spec(model: Any, stream: str | None, axes: dict[str, tuple]) -> matching.PermutationSpec:
    activations: dict[str, tuple[str, ...]] = {}
    for i in range(model.num_layers):
        block_axes, block_acts = _block_axes(model, i, stream)
        axes.update(block_axes)
        activations.update(block_acts)
    if model.use_layer_norm:
        axes["ln_final/scale"] = (stream,)
        axes["ln_final/bias"] = (stream,)
    if stream is not None:
        activations[stream] = tuple(f"Block_{i}" for i in range(model.num_layers))
    return matching.PermutationSpec(params=axes, activations=activations)


#: The name of the residual-stream permutation.
RESIDUAL = "residual"


def permutation_spec(model: Transformer, params: Any = None) -> matching.PermutationSpec:
    """Permutations of a :class:`Transformer`: the residual stream, and per block its heads,
    the dimensions within a head and the MLP's hidden units.

    - ``'residual'`` (``d_model``): one permutation shared by the token and
      position embeddings, every block's input projections (query, key,
      value, ``mlp_in``: input axis) and output projections (``out``,
      ``mlp_out``: output axis and bias), every LayerNorm's scale and bias,
      and the unembedding's input axis (the tied embedding's feature axis).
      LayerNorm's mean and variance over features do not depend on their
      order, so the function is unchanged up to summation order. With
      ``positions='sinusoidal'`` the fixed position table is not a param and
      cannot be permuted: the residual stream is then left unpermuted.
    - ``'Block_i/heads'`` (``num_heads``): heads as blocks, the head axis of
      the query, key, value and out kernels (and biases).
    - ``'Block_i/qk'`` (``head_dim``): query and key dimensions jointly
      (``q . k`` is unchanged), the last axis of both kernels.
    - ``'Block_i/vo'`` (``head_dim``): value dimensions and the out kernel's
      matching input dimensions jointly.
    - ``'Block_i/mlp'`` (``d_mlp``): the MLP's hidden units.

    Within-head permutations are **shared by the heads of a block**: a
    :class:`~ltjax.core.matching.PermutationSpec` gives each axis one permutation,
    and the kernels' ``[d, H, hd]`` layout permutes the head axis and the
    within-head axis separately. This is a subgroup of the full symmetry
    (each head may permute its own dimensions: ``H`` independent
    permutations, not expressible without per-block permutations in the
    spec); planted permutations of the subgroup are recovered exactly.

    Activations (:func:`ltjax.models.activations`, best with
    ``post_relu=False`` but for a ReLU MLP): ``Block_i/attn/pattern`` (the
    attention probabilities, heads last) for the heads, the query and key
    outputs for ``qk`` (heads folded into rows), the value outputs for
    ``vo``, ``mlp_in`` for the MLP, the block outputs for the residual stream.

    Args:
      model: the :class:`Transformer`.
      params: unused (the spec follows from the model's fields).

    Example:
        >>> from ltjax.models import transformer
        >>> spec = transformer.permutation_spec(transformer.Transformer(num_layers=1))
        >>> spec.params["Block_0/attn/query/kernel"]
        ('residual', 'Block_0/heads', 'Block_0/qk')
    """
    del params
    stream = RESIDUAL if model.positions == "learned" else None
    axes: dict[str, tuple] = {"embed/embedding": (None, stream)}
    if model.positions == "learned":
        axes["pos_embed/embedding"] = (None, stream)
    if not model.tie_embeddings:
        axes["unembed/kernel"] = (stream, None)
        if model.use_bias:
            axes["unembed/bias"] = (None,)
    return _spec(model, stream, axes)


def vit_permutation_spec(model: ViT, params: Any = None) -> matching.PermutationSpec:
    """Permutations of a :class:`ViT`: as :func:`permutation_spec`, the residual
    stream also carrying the patch embedding's output axis and bias, the class
    token and the head's input axis.

    Example:
        >>> from ltjax.models import transformer
        >>> transformer.vit_permutation_spec(transformer.ViT()).params["patch_embed/embedding"]
        (None, 'residual')
    """
    del params
    axes: dict[str, tuple] = {"patch_embed/embedding": (None, RESIDUAL),
                              "patch_embed/bias": (RESIDUAL,),
                              "pos_embed/embedding": (None, RESIDUAL),
                              "head/kernel": (RESIDUAL, None), "head/bias": (None,)}
    if model.pool == "cls":
        axes["cls_token/embedding"] = (RESIDUAL,)
    return _spec(model, RESIDUAL, axes)
