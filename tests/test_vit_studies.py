"""IMP, instability and re-basin on a ViT, each from its ``:quick`` config (digits).

Each test runs one study end to end on the one-block ViT of the ``:quick``
variants and checks it against an oracle that does not go through the code
under test: exact kept counts computed from the parameter shapes (IMP), a
planted pair of identical copies (instability), a planted permutation and
the permutation invariance of the matched endpoint (re-basin).
"""

import math

import jax
import pytest

from experiments.configs import imp_vit_digits, rebasin_vit_digits, stability_vit_digits
from ltjax import models
from ltjax.core import matching
from ltjax.io import results
from ltjax.studies import common, imp, rebasin, stability


def _shapes(config) -> dict[str, tuple[int, ...]]:
    dataset = common.build_dataset(config)
    model = common.build_model(config, dataset)
    params = jax.eval_shape(lambda k: models.init(model, k, dataset.input_shape),
                            jax.random.key(0))[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def test_imp_on_a_vit_prunes_the_kernels_globally_with_the_head_at_half_rate(tmp_path):
    config = imp_vit_digits.get_config("quick")
    imp.run_imp(config, tmp_path, progress=False)
    shapes = _shapes(config)
    # The ViT's pruning convention: kernels (attention q/k/v/out, MLP, head) only; the
    # patch embedding, class token, positions, LayerNorms and biases stay dense.
    kernels = {name: math.prod(s) for name, s in shapes.items() if name.endswith("/kernel")}
    assert {n.rsplit("/", 2)[-2] for n in kernels} == {"query", "key", "value", "out",
                                                       "mlp_in", "mlp_out", "head"}
    head = kernels.pop("head/kernel")
    body = sum(kernels.values())
    expected = {0: 1.0}
    for level in (1, 2):  # global 20 % of the body, the head on its own at 10 %
        body -= math.ceil(0.2 * body)
        head -= math.ceil(0.1 * head)
        expected[level] = (body + head) / (sum(kernels.values()) + math.prod(
            shapes["head/kernel"]))
    rows = results.read_csv(tmp_path / "results.csv")
    assert {(int(r["level"]), r["branch"]) for r in rows} == {
        (0, "imp"), (1, "imp"), (1, "reinit"), (2, "imp"), (2, "reinit")}
    for r in rows:  # the reinit control has the ticket's masks, hence its density
        assert float(r["density"]) == pytest.approx(expected[int(r["level"])], rel=1e-6)
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0


def test_instability_of_two_identical_vit_copies_is_zero(tmp_path, monkeypatch):
    config = stability_vit_digits.get_config("quick")
    original = stability.copy_noise_keys

    def same_noise(keys, num_copies):  # every copy gets copy 0's SGD noise
        copies = original(keys, num_copies)
        return jax.numpy.repeat(copies[::num_copies], num_copies)

    monkeypatch.setattr(stability, "copy_noise_keys", same_noise)
    stability.run_stability(config, tmp_path, progress=False)
    rows = results.read_csv(tmp_path / "results.csv")
    assert {(r["k"], r["split"]) for r in rows} == {("0", "train"), ("0", "test")}
    for r in rows:  # identical endpoints: a flat path (Frankle et al. 2020's barrier is 0)
        assert float(r["accuracy_a"]) == float(r["accuracy_b"])
        assert float(r["instability"]) == 0.0


def test_rebasin_on_a_vit_recovers_a_planted_permutation_and_keeps_the_endpoint(
        tmp_path, planted_match):
    config = rebasin_vit_digits.get_config("quick")
    _, spec, params, _, _ = planted_match(config)

    summary = rebasin.run_rebasin(config, tmp_path, progress=False)
    by = {(r["variant"], r["split"]): r for r in summary["rows"]}
    assert set(by) == {(v, s) for v in ("naive", "matched") for s in ("train", "test")}
    for split in ("train", "test"):  # permuting model 1 changes none of its outputs
        naive, matched = by["naive", split], by["matched", split]
        assert matched["loss_b"] == pytest.approx(naive["loss_b"], rel=1e-5)
        assert matched["accuracy_b"] == pytest.approx(naive["accuracy_b"], abs=1e-6)
        assert matched["loss_a"] == pytest.approx(naive["loss_a"], rel=1e-6)
    saved = results.read_json(tmp_path / "perms" / "pair_0-1.json")["perms"]
    sizes = matching.check_spec(spec, params)
    assert sorted(saved) == sorted(sizes)
    for name, perm in saved.items():
        assert sorted(perm) == list(range(sizes[name])), name
    assert sizes["residual"] == imp_vit_digits.QUICK_VIT["d_model"]  # the stream is permuted
