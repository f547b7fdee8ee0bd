"""Pretraining on altered data before IMP (Frankle, Schwab & Morcos 2020, Section 5), and the
IMP mask distances: data oracles (NumPy, planted answers), the study end to end, resume."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import imp_lenet_digits
from ltjax.core import masking, rng
from ltjax.io import data, results
from ltjax.studies import common, early_phase, imp


def _split(n=40, dtype=np.uint8, seed=0):
    gen = np.random.default_rng(seed)
    x = gen.integers(0, 256, (n, 8, 8, 1)).astype(dtype)
    return data.Split(x, gen.integers(0, 10, n).astype(np.int32))


def test_random_labels_change_exactly_the_share():
    split = _split(200)
    for share in (0.0, 0.25, 0.5, 1.0):
        moved = data.random_labels(split, share=share, num_classes=10, seed=3, exclude_true=True)
        assert int(np.sum(moved.y != split.y)) == math.ceil(share * 200)
        np.testing.assert_array_equal(moved.x, split.x)
    # Without exclude_true, redrawn labels may hit the true one: at most the share changes,
    # and about 1/C of the redrawn ones keep it.
    moved = data.random_labels(split, share=1.0, num_classes=10, seed=3)
    assert 0.8 * 200 <= int(np.sum(moved.y != split.y)) < 200
    assert set(np.unique(moved.y)) <= set(range(10))


def test_rotation_per_image_is_rot90_exactly():
    split = _split(64)
    task = data.rotation_task(split, seed=5)
    np.testing.assert_array_equal(task.y, np.random.default_rng(5).integers(0, 4, 64))
    assert len(task) == 64 and set(np.unique(task.y)) == {0, 1, 2, 3}
    for n in range(64):
        np.testing.assert_array_equal(task.x[n], np.rot90(split.x[n], task.y[n], axes=(0, 1)))
        np.testing.assert_array_equal(task.x[n], np.asarray(jnp.rot90(split.x[n], task.y[n])))
        # rotating back by the label recovers the image; four quarter turns are the identity
        np.testing.assert_array_equal(np.rot90(task.x[n], 4 - task.y[n]), split.x[n])
    np.testing.assert_array_equal(data.rotation_task(split, seed=5).x, task.x)


def test_blur_oracles():
    split = _split(6, np.float32)
    # nearest: NumPy block means repeated back; a 4x4-block image is returned unchanged
    blocks = split.x.reshape(6, 2, 4, 2, 4, 1).mean(axis=(2, 4))
    oracle = np.repeat(np.repeat(blocks, 4, axis=1), 4, axis=2)
    np.testing.assert_allclose(data.blur(split, factor=4, method="nearest").x, oracle, rtol=1e-6)
    blocky = data.Split(oracle.astype(np.float32), split.y)
    np.testing.assert_allclose(data.blur(blocky, factor=4, method="nearest").x, blocky.x,
                               rtol=1e-6)
    for method in data.BLUR_METHODS:
        constant = data.Split(np.full((2, 8, 8, 1), 3.25, np.float32), np.zeros(2, np.int32))
        np.testing.assert_allclose(data.blur(constant, factor=4, method=method).x, 3.25,
                                   rtol=1e-6)
        np.testing.assert_array_equal(data.blur(split, factor=1, method=method).x, split.x)
    # bilinear interpolates between block centres: a blocky image is smoothed, its mean kept
    smooth = data.blur(blocky, factor=4).x
    assert not np.allclose(smooth, blocky.x) and abs(smooth.mean() - blocky.x.mean()) < 1.0
    with pytest.raises(ValueError, match="method"):
        data.blur(split, factor=4, method="cubic")


def test_altered_dataset_alters_what_it_says():
    ds = data.load("digits")
    rot = data.altered_dataset(ds, kind="rotation", seed=1)
    assert rot.num_classes == 4 and rot.augment is None and len(rot.train) == len(ds.train)
    np.testing.assert_array_equal(rot.train.x, data.rotation_task(ds.train, seed=1).x)
    np.testing.assert_array_equal(rot.test.y, data.rotation_task(ds.test, seed=2).y)
    np.testing.assert_array_equal(rot.mean, ds.mean)
    labels = data.altered_dataset(ds, kind="random_labels", share=0.5, exclude_true=True)
    assert int(np.sum(labels.train.y != ds.train.y)) == math.ceil(0.5 * len(ds.train))
    assert labels.test is ds.test and labels.num_classes == 10  # the real task's test
    blurred = data.altered_dataset(ds, kind="blur", blur_factor=4)
    np.testing.assert_array_equal(blurred.test.x, data.blur(ds.test, factor=4).x)
    with pytest.raises(ValueError, match="kind"):
        data.altered_dataset(ds, kind="jigsaw")


def test_with_fresh_head_and_mask_distances_on_planted_trees():
    pretrained = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
                  "Dense_1": {"kernel": jnp.ones((2, 4)), "bias": jnp.ones(4)}}
    fresh = {"Dense_0": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)},
             "Dense_1": {"kernel": jnp.zeros((2, 10)), "bias": jnp.zeros(10)}}
    out = imp.with_fresh_head(pretrained, fresh)
    assert out["Dense_0"]["kernel"] is pretrained["Dense_0"]["kernel"]
    assert out["Dense_1"]["kernel"] is fresh["Dense_1"]["kernel"]
    assert out["Dense_1"]["bias"] is fresh["Dense_1"]["bias"]
    # Hamming and IoU of hand-made masks [S=2]; the never-pruned bias is ignored.
    a = {"w": jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool), "b": jnp.array([[1], [0]], bool)}
    b = {"w": jnp.array([[1, 0, 1, 0], [1, 1, 1, 1]], bool), "b": jnp.array([[0], [1]], bool)}
    got = imp.mask_distances(a, b, {"w": True, "b": False})
    np.testing.assert_array_equal(got["hamming"], [2, 0])
    np.testing.assert_allclose(got["hamming_share"], [0.5, 0.0])
    np.testing.assert_allclose(got["iou"], [1 / 3, 1.0], rtol=1e-6)


def _config(kind="rotation", **overrides):
    config = imp_lenet_digits.get_config(f"quick,pretrain_{kind}")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32, 16)}
    config.controls = ()
    config.levels = 1
    config.training_steps = "2ep"
    config.eval_every = "1ep"
    config.checkpoint_every = "1ep"
    config.pretrain.steps = "2ep"
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_imp_rewinds_to_the_rotation_pretrained_state(tmp_path):
    config = _config()
    imp.run_imp(config, tmp_path, progress=False)
    dataset = common.build_dataset(config)
    recipe = common.build_recipe(config, dataset)
    executor = common.build_executor(config, common.build_model(config, dataset), dataset,
                                     recipe)
    init_keys, _ = rng.init_and_noise(rng.replicate_keys(config.seed, 2))
    init = executor.init(init_keys)
    altered, steps = imp.pretrain_dataset(config, dataset)
    pre_executor = executor.like(model=common.build_model(config, altered), dataset=altered)
    pre, _, _ = common.finished_segment(pre_executor, tmp_path / "checkpoints" / "pretrain_altered",
                                     end=steps, log=results.MetricsLog(tmp_path / "metrics.jsonl"),
                                     member_tags=[{"replicate": r} for r in range(2)],
                                     masks=False)
    assert int(np.asarray(pre.step)[0]) == steps == 36
    assert pre.params["Dense_2"]["kernel"].shape == (2, 16, 4)  # the 4-way rotation head
    # The pretrained body differs from the init it started from.
    assert not np.allclose(pre.params["Dense_0"]["kernel"], init.params["Dense_0"]["kernel"])
    expected = init.replace(params=imp.with_fresh_head(pre.params, init.params, leading_axes=1))
    np.testing.assert_array_equal(expected.params["Dense_2"]["kernel"],
                                  init.params["Dense_2"]["kernel"])
    records = results.MetricsLog(tmp_path / "metrics.jsonl").read()

    def start_loss(level):
        return [r["loss"] for r in sorted(records, key=lambda r: r["replicate"])
                if (r["level"], r["branch"], r["step"], r["split"]) == (level, "imp", 0, "test")]

    # Level 0 (the dense run) and level 1 (the ticket) both start from the pretrained state.
    np.testing.assert_allclose(start_loss(0), executor.evaluate(expected, "test")["loss"],
                               rtol=1e-6)
    _, masks, _ = common.finished_segment(
        executor, tmp_path / "checkpoints" / "level_01", end=36,
        log=results.MetricsLog(tmp_path / "metrics.jsonl"),
        member_tags=[{"branch": "imp", "replicate": r} for r in range(2)])
    masked = expected.replace(params=masking.apply(expected.params, masks))
    np.testing.assert_allclose(start_loss(1), executor.evaluate(masked, "test", masks)["loss"],
                               rtol=1e-6)
    # The pretext task's records are kept apart from the real task's table.
    pretext = [r for r in records if r["branch"] == "pretrain_altered"]
    assert {r["pretext"] for r in pretext} == {"rotation"}
    assert max(r["step"] for r in pretext) == 36
    assert {r["branch"] for r in results.read_csv(tmp_path / "results.csv")} == {"imp"}
    # Mask distances between levels 0 (all kept) and 1: the pruned weights, IoU = density.
    rows = [{k: float(v) for k, v in r.items()}
            for r in results.read_csv(tmp_path / "mask_distance.csv")]
    assert len(rows) == 2 and {r["level"] for r in rows} == {1.0}
    total = masking.num_prunable(executor.abstract_params, masking.prunable(
        executor.abstract_params))
    for row in rows:
        assert row["hamming"] == round((1 - row["density"]) * total) > 0
        assert row["iou"] == pytest.approx(row["density"], rel=1e-6)


class _Killed(Exception):
    pass


def test_killed_pretraining_resumes_to_the_same_results(tmp_path, on_training):
    config = _config("random_labels", levels=0)
    config.pretrain.share = 0.5
    config.pretrain.exclude_true = True
    imp.run_imp(config, tmp_path / "straight", progress=False)
    calls = []

    def dies(call):
        calls.append(1)
        if len(calls) == 2:  # the pretraining's second epoch (its first is checkpointed)
            raise _Killed

    on_training(dies)
    with pytest.raises(_Killed):
        imp.run_imp(config, tmp_path / "resumed", progress=False)
    on_training(None)
    imp.run_imp(config, tmp_path / "resumed", progress=False)
    assert (results.read_csv(tmp_path / "resumed" / "results.csv")
            == results.read_csv(tmp_path / "straight" / "results.csv"))
    assert (results.MetricsLog(tmp_path / "resumed" / "metrics.jsonl").read()
            == results.MetricsLog(tmp_path / "straight" / "metrics.jsonl").read())


@pytest.mark.parametrize(("field", "value", "match"), [
    ("kind", "jigsaw", "config.pretrain.kind"),
    ("share", 1.5, "config.pretrain.share"),
    ("steps", "0it", "config.pretrain.steps"),
    ("blur_factor", 3, "config.pretrain.blur_factor"),
    ("blur_method", "cubic", "config.pretrain.blur_method"),
    ("seed", -1, "config.pretrain.seed"),
])
def test_bad_pretrain_settings_are_refused_before_the_workdir(tmp_path, field, value, match):
    config = _config("blur")
    setattr(config.pretrain, field, value)
    with pytest.raises(ValueError, match=match):
        imp.run_imp(config, tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


def test_early_phase_refuses_a_pretrain_block():
    from experiments import configs
    from experiments.configs import early_phase_lenet_digits

    config = early_phase_lenet_digits.get_config("quick")
    configs.add_pretrain(config, ("pretrain_blur",), steps="1ep")
    with pytest.raises(ValueError, match="config.pretrain.kind"):
        early_phase.run_early_phase(config, "/nonexistent/never_written", progress=False)
    with pytest.raises(ValueError, match="at most one"):
        configs.add_pretrain(config, ("pretrain_blur", "pretrain_rotation"), steps="1ep")
    assert jax.tree.leaves(config.pretrain.to_dict())  # the block is there


def test_studies_reading_an_imp_run_refuse_a_pretrained_one(tmp_path):
    # The stability, early-phase, supermask and prune-at-init studies start from weights
    # that were never pretrained: a pretrained IMP run's masks do not belong to them.
    from experiments.configs import stability_lenet_digits
    from ltjax.studies import imp_runs

    config = stability_lenet_digits.get_config("quick")
    theirs = common.to_dict(config)
    (tmp_path / "plain").mkdir()
    results.write_json(tmp_path / "plain" / "config.json", theirs)
    assert imp_runs.check_imp_compatible(config, tmp_path / "plain") == theirs
    (tmp_path / "pretrained").mkdir()
    results.write_json(tmp_path / "pretrained" / "config.json",
                       {**theirs, "pretrain": {"kind": "rotation", "steps": "1ep"}})
    with pytest.raises(ValueError, match="pretrained on altered data .pretrain.kind='rotation'"):
        imp_runs.check_imp_compatible(config, tmp_path / "pretrained")
    # An IMP run with the block but no pretraining (kind '') is a plain one.
    results.write_json(tmp_path / "pretrained" / "config.json",
                       {**theirs, "pretrain": {"kind": "", "steps": ""}})
    imp_runs.check_imp_compatible(config, tmp_path / "pretrained")
