"""Perturbations of rewound subnetworks (Frankle, Schwab & Morcos 2020) against their oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax.core import masking
from ltjax.methods import perturbations


def _setup(seed=0, density=0.6):
    k = jax.random.split(jax.random.key(seed), 6)
    params = {"Conv_0": {"bias": jax.random.normal(k[0], (4,)),
                         "kernel": jax.random.normal(k[1], (3, 3, 2, 4))},
              "Dense_0": {"bias": jax.random.normal(k[2], (5,)),
                          "kernel": jax.random.normal(k[3], (40, 5))}}
    masks = jax.tree.map(lambda x, kk: jax.random.uniform(kk, x.shape) < density, params,
                         {"Conv_0": {"bias": k[4], "kernel": k[4]},
                          "Dense_0": {"bias": k[5], "kernel": k[5]}})
    masks = {name: {"bias": jnp.ones_like(layer["bias"], bool), "kernel": masks[name]["kernel"]}
             for name, layer in masks.items()}
    return masking.apply(params, masks), masks


def _kernels(tree):
    return {name: np.asarray(layer["kernel"]) for name, layer in tree.items()}


def _biases_unchanged(new, old):
    for name in old:
        np.testing.assert_array_equal(np.asarray(new[name]["bias"]), np.asarray(old[name]["bias"]))


@pytest.mark.parametrize("within", ["layer", "channel"])
@pytest.mark.parametrize("same_sign", [False, True])
def test_shuffle_keeps_sorted_values_mask_and_signs(within, same_sign):
    params, masks = _setup()
    out = perturbations.shuffle_weights(jax.random.key(1), params, masks, within=within,
                                        same_sign=same_sign)
    _biases_unchanged(out, params)
    moved = 0
    for name, w in _kernels(params).items():
        m = np.asarray(masks[name]["kernel"])
        new = _kernels(out)[name]
        assert (new[~m] == 0).all()  # pruned stay exactly zero
        groups = [np.ones(m.shape, bool)] if within == "layer" else [
            np.arange(w.shape[-1]) == c for c in range(w.shape[-1])]
        for g in groups:
            g = np.broadcast_to(g, m.shape) & m
            np.testing.assert_array_equal(np.sort(new[g]), np.sort(w[g]))
        if same_sign:
            np.testing.assert_array_equal(np.sign(new), np.sign(w))
        moved += int(np.sum(new[m] != w[m]))
    assert moved > 0.5 * sum(int(np.asarray(masks[n]["kernel"]).sum()) for n in masks)


def test_recombine_identity_and_signs_magnitudes():
    params, masks = _setup()
    other, _ = _setup(seed=3, density=1.0)
    same = perturbations.recombine(params, masks, signs=params, magnitudes=params)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    out = perturbations.recombine(params, masks, signs=params, magnitudes=other)
    _biases_unchanged(out, params)
    for name, w in _kernels(params).items():
        m = np.asarray(masks[name]["kernel"])
        new = _kernels(out)[name]
        np.testing.assert_array_equal(np.abs(new[m]), np.abs(_kernels(other)[name][m]))
        np.testing.assert_array_equal(np.sign(new[m]), np.sign(w[m]))
        assert (new[~m] == 0).all()


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_flip_signs_flips_exactly_round_share_kept(share):
    params, masks = _setup()
    out = jax.jit(lambda k, p, m: perturbations.flip_signs(k, p, m, share=share))(
        jax.random.key(2), params, masks)
    _biases_unchanged(out, params)
    for name, w in _kernels(params).items():
        m = np.asarray(masks[name]["kernel"])
        new = _kernels(out)[name]
        np.testing.assert_array_equal(np.abs(new), np.abs(w))
        assert int(np.sum(np.sign(new) != np.sign(w))) == round(share * int(m.sum()))
        assert (new[~m] == 0).all()


def test_gaussian_noise_identity_at_zero_and_measured_std():
    params, masks = _setup()
    stds = perturbations.he_normal_stds(params)
    assert stds["Conv_0"]["kernel"] == pytest.approx(np.sqrt(2 / 18))
    assert stds["Dense_0"]["kernel"] == pytest.approx(np.sqrt(2 / 40))
    same = perturbations.gaussian_noise(jax.random.key(0), params, masks, scale=0.0, stds=stds)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    big = {"Dense_0": {"kernel": jnp.ones((300, 200))}}
    big_masks = {"Dense_0": {"kernel": jax.random.uniform(jax.random.key(4), (300, 200)) < 0.5}}
    big = masking.apply(big, big_masks)
    big_stds = perturbations.he_normal_stds(big)
    out = perturbations.gaussian_noise(jax.random.key(5), big, big_masks, scale=2.0,
                                       stds=big_stds)
    m = np.asarray(big_masks["Dense_0"]["kernel"])
    noise = (np.asarray(out["Dense_0"]["kernel"]) - 1.0)[m] / big_stds["Dense_0"]["kernel"]
    assert np.std(noise) == pytest.approx(2.0, abs=4 * 2.0 / np.sqrt(m.sum()))
    assert (np.asarray(out["Dense_0"]["kernel"])[~m] == 0).all()
    eff = float(perturbations.effective_std(out, big, big_masks))
    assert eff == pytest.approx(np.std(noise * big_stds["Dense_0"]["kernel"]), rel=1e-4)


def test_effective_std_against_numpy_and_same_key_same_output():
    params, masks = _setup()
    out = perturbations.shuffle_weights(jax.random.key(7), params, masks)
    diffs = np.concatenate([(_kernels(out)[n] - w)[np.asarray(masks[n]["kernel"])]
                            for n, w in _kernels(params).items()])
    assert float(perturbations.effective_std(out, params, masks)) == pytest.approx(
        np.std(diffs), rel=1e-5)
    again = perturbations.shuffle_weights(jax.random.key(7), params, masks)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(perturbations.effective_std(params, params, masks)) == 0.0


def test_bad_arguments_are_refused():
    params, masks = _setup()
    with pytest.raises(ValueError, match="share"):
        perturbations.flip_signs(jax.random.key(0), params, masks, share=1.5)
    with pytest.raises(ValueError, match="within"):
        perturbations.shuffle_weights(jax.random.key(0), params, masks, within="row")
    with pytest.raises(ValueError, match="scale"):
        perturbations.gaussian_noise(jax.random.key(0), params, masks, scale=-1.0,
                                     stds=perturbations.he_normal_stds(params))
    with pytest.raises(ValueError, match="masks"):
        perturbations.flip_signs(jax.random.key(0), params, {"Conv_0": masks["Conv_0"]},
                                 share=0.5)


@pytest.mark.parametrize("kernel_init", ["he_normal", "glorot_normal"])
def test_init_stds_measure_the_models_own_initialiser(kernel_init):
    """He normal: sqrt(2 / fan_in); Glorot (truncated normal, variance scaled): sqrt(2 / (fan_in
    + fan_out)); biases are not measured (0)."""
    from ltjax import models

    model = models.create("mlp", num_classes=10, widths=(40, 20), kernel_init=kernel_init)
    stds = perturbations.init_stds(lambda key: models.init(model, key, (8, 8, 1))[0],
                                   jax.random.key(3), draws=64)
    shapes = {"Dense_0": (64, 40), "Dense_1": (40, 20), "Dense_2": (20, 10)}
    for name, (fan_in, fan_out) in shapes.items():
        expected = np.sqrt(2 / fan_in if kernel_init == "he_normal" else 2 / (fan_in + fan_out))
        assert stds[name]["kernel"] == pytest.approx(expected, rel=4 / np.sqrt(2 * 64 * fan_in
                                                                                * fan_out))
        assert stds[name]["bias"] == 0.0
    with pytest.raises(ValueError, match="draws"):
        perturbations.init_stds(lambda key: {}, jax.random.key(0), draws=1)
