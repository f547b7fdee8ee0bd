"""Git Re-Basin study: matching methods, naive vs matched paths, REPAIR, sparse re-basin."""

import chex
import jax
import ml_collections
import numpy as np
import pytest
import scipy.optimize

from experiments.configs import rebasin_mlp_digits
from ltjax import models
from ltjax.core import matching
from ltjax.io import results
from ltjax.studies import common, rebasin


def _config(**overrides):
    config = rebasin_mlp_digits.get_config("quick")
    config.model_kwargs = {"widths": (32,)}
    config.num_replicates = 2
    config.training_steps = "4ep"
    config.eval_every = "2ep"
    config.checkpoint_every = "2ep"
    config.num_alphas = 4
    config.alpha_chunk = 2  # chunks of as many nets as the 2 replicates: shared compiles
    config.sparse.density = 0.3
    config.sparse.training_steps = "2ep"
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.mark.parametrize("method", rebasin.METHODS)
def test_every_method_recovers_a_planted_permutation(method, planted_match):
    config = _config(method=method)
    config.matching.ste_steps = 2
    executor, spec, params, shuffled, dataset = planted_match(config)
    if method == "activation":
        # The whole training set by default, in chunks: the same moments as one pass.
        whole = rebasin.activation_moments(executor, spec, (params, {}), (shuffled, {}),
                                           num_examples=0, seed=0, chunk_size=500)
        once = rebasin.activation_moments(executor, spec, (params, {}), (shuffled, {}),
                                          num_examples=0, seed=0, chunk_size=len(dataset.train))
        assert float(whole["Dense_0"]["count"]) == len(dataset.train)
        chex.assert_trees_all_close(whole, once, rtol=1e-5)


def test_rebasin_end_to_end_and_resume(tmp_path, monkeypatch, drawn, sealed, on_training):
    config = _config()
    seen = []
    original_match = matching.weight_matching

    def spy(spec, params_a, params_b, **kwargs):
        seen.append((jax.device_get(params_a), jax.device_get(params_b)))
        return original_match(spec, params_a, params_b, **kwargs)

    monkeypatch.setattr(matching, "weight_matching", spy)
    summary = rebasin.run_rebasin(sealed(config, rebasin.RebasinSpec), tmp_path, progress=False)
    monkeypatch.setattr(matching, "weight_matching", original_match)
    rows = results.read_csv(tmp_path / "results.csv")
    assert len(rows) == 2 * 2 * 2  # variants x corrections x splits, one pair
    assert {(r["variant"], r["correction"], r["split"]) for r in rows} == {
        (v, c, s) for v in ("naive", "matched") for c in ("none", "repair")
        for s in ("train", "test")}
    by = {(r["variant"], r["correction"], r["split"]): r for r in summary["rows"]}
    for split in ("train", "test"):
        naive, matched = by["naive", "none", split], by["matched", "none", split]
        # Permuting model 1 changes no endpoint, and brings it closer to model 0.
        assert matched["accuracy_b"] == pytest.approx(naive["accuracy_b"], abs=1e-6)
        assert matched["loss_barrier_chord"] <= naive["loss_barrier_chord"]
        assert matched["loss_barrier_mean_ends"] <= naive["loss_barrier_mean_ends"]
        assert matched["error_barrier"] <= naive["error_barrier"]
        # REPAIR lowers the barrier of the naive path and leaves the endpoints alone.
        repaired = by["naive", "repair", split]
        assert repaired["loss_barrier_chord"] < naive["loss_barrier_chord"]
        assert repaired["loss_a"] == pytest.approx(naive["loss_a"], rel=1e-3)
    records = results.MetricsLog(tmp_path / "metrics.jsonl").read()
    path = [r for r in records if r["branch"] == "path"]
    assert len(path) == 2 * 2 * 2 * 4
    saved = results.read_json(tmp_path / "perms" / "pair_0-1.json")
    assert sorted(saved["perms"]) == ["Dense_0"]
    # One hidden layer: weight matching is one linear assignment, solved here by SciPy on
    # the similarity of the trained nets' incoming and outgoing weights (Ainsworth et al.
    # Eq. 3): unit perm[i] of model 1 faces unit i of model 0.
    (a, b), = seen
    similarity = (np.asarray(a["Dense_0"]["kernel"]).T @ np.asarray(b["Dense_0"]["kernel"])
                  + np.outer(a["Dense_0"]["bias"], b["Dense_0"]["bias"])
                  + np.asarray(a["Dense_1"]["kernel"]) @ np.asarray(b["Dense_1"]["kernel"]).T)
    rows_, cols = scipy.optimize.linear_sum_assignment(similarity, maximize=True)
    assert saved["perms"]["Dense_0"] == cols[np.argsort(rows_)].tolist()
    # Sparse re-basin: the ticket, then model 1 with the permuted and the naive mask.
    sparse = results.read_csv(tmp_path / "sparse_results.csv")
    assert [r["branch"] for r in sparse] == ["ticket", "permuted", "naive"]
    assert len({r["density"] for r in sparse}) == 1
    assert float(sparse[0]["density"]) == pytest.approx(0.3, abs=1e-3)
    assert {r["step"] for r in sparse} == {str(2 * (1437 // 60))}
    # The interpolation plot draws the logged paths; its legend names both loss barriers.
    matched_test = sorted((r for r in path if (r["variant"], r["correction"], r["split"])
                           == ("matched", "none", "test")), key=lambda r: r["alpha"])
    (label, (xs, ys)), = [(k[1], v) for k, v in drawn["interpolation.png"].items()
                          if k[0] == 0 and k[1].startswith("matched, test")]
    np.testing.assert_allclose(ys, [r["loss"] for r in matched_test], rtol=1e-6)
    row = by["matched", "none", "test"]
    assert f"chord {row['loss_barrier_chord']:.3f}" in label
    assert f"ends' mean {row['loss_barrier_mean_ends']:.3f}" in label
    sparse_curves = drawn["sparse_rebasin.png"]
    assert {k[1] for k in sparse_curves} >= {"ticket (model 0)", "permuted mask, model 1",
                                              "naive mask, model 1"}

    # Re-running trains and matches nothing: it reads everything back.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run must not train or match again")

    on_training(refuse)
    monkeypatch.setattr(matching, "weight_matching", refuse)
    again = rebasin.run_rebasin(config, tmp_path, progress=False)
    assert again == summary
    assert results.MetricsLog(tmp_path / "metrics.jsonl").read() == records


def test_permuted_mask_is_model_0_mask_in_model_1_basin():
    config = _config()
    dataset = common.build_dataset(config)
    model = common.build_model(config, dataset)
    params, _ = models.init(model, jax.random.key(0), dataset.input_shape)
    spec = models.permutation_spec(model, params)
    perms = matching.random_perms(jax.random.key(2), matching.check_spec(spec, params))
    mask = jax.tree.map(lambda p: p > 0, params)
    moved = matching.apply_permutation(spec, matching.inverse(perms), mask)
    # Aligning model 1 by perms puts the moved mask back onto model 0's units.
    chex.assert_trees_all_equal(matching.apply_permutation(spec, perms, moved), mask)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"config.method must be one of .* got 'sinkhorn'"):
        rebasin.run_rebasin(_config(method="sinkhorn"), tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()  # checked before anything is written
    with pytest.raises(ValueError, match="config.corrections"):
        rebasin.run_rebasin(_config(corrections=("none", "bn")), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="'reset' but mlp has no BatchNorm"):
        rebasin.run_rebasin(_config(corrections=("none,reset",)), tmp_path / "c",
                            progress=False)
    assert not (tmp_path / "c").exists()  # against the model, still before the workdir
    with pytest.raises(ValueError, match="num_replicates must be >= 2"):
        rebasin.run_rebasin(_config(num_replicates=1), tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="sparse.density"):
        config = _config()
        config.sparse.density = 1.0
        rebasin.run_rebasin(config, tmp_path / "e", progress=False)
    for value in ("many", "0", "-3"):
        with pytest.raises(ValueError, match="reset_batches must be an int >= 1 or 'epoch'"):
            rebasin.run_rebasin(_config(reset_batches=value), tmp_path / "f", progress=False)
    for value in (0, 2.5, True):
        with pytest.raises(ValueError, match="reset_batches must be an int >= 1 or 'epoch'"):
            common.batch_stats_reset(ml_collections.ConfigDict({"reset_batches": value}))
    with pytest.raises(ValueError, match="reset_augment must be True or False"):
        common.batch_stats_reset(ml_collections.ConfigDict({"reset_augment": "yes"}))
    assert not (tmp_path / "f").exists()
    assert common.batch_stats_reset(_config(reset_batches="epoch", reset_augment=True)) == {
        "num_batches": None, "augment": True}
    assert common.batch_stats_reset(_config(reset_batches="7")) == {"num_batches": 7,
                                                                    "augment": False}
    # A flag --config.corrections=none,repair arrives as ('none,repair',).
    assert rebasin.corrections_of(_config(corrections=("none, repair",))) == ("none", "repair")
