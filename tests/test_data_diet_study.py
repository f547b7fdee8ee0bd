"""The data-diet study end to end on digits: the subsets it trains are the scores' own.

Label noise against the clean labels and a NumPy top-k precision from
``scores.npz``; GraNd at initialisation's Spearman with ``||x||`` against scipy
and a NumPy input norm.
"""

import math

import numpy as np
import pytest
from scipy import stats

from experiments.configs import data_diet_lenet_digits, data_diet_lenet_mnist
from ltjax.io import data, results
from ltjax.studies import data_diet


def test_study_trains_each_mode_on_its_scored_subset_and_reruns(tmp_path, on_training, sealed):
    config = data_diet_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32,)}
    seen = []

    def spy(call):
        if call.kwargs.get("subsets") is not None:
            seen.append(np.asarray(call.kwargs["subsets"]))

    on_training(spy)
    summary = data_diet.run_data_diet(sealed(config, data_diet.DataDietSpec), tmp_path,
                                      progress=False)
    scores = np.load(tmp_path / "scores.npy")
    n = 1437  # digits' training split
    assert scores.shape == (n,) and np.all(scores >= 0) and np.all(scores <= np.sqrt(2))
    size = round(0.5 * n)
    # Members: hardest x 2 replicates, random x 2, easiest x 2 (config order).
    subsets = seen[0]
    assert subsets.shape == (6, size) and all(np.array_equal(s, seen[0]) for s in seen)
    order = np.argsort(-scores, kind="stable")
    for r in (0, 1):
        assert set(subsets[r]) == set(order[:size])  # the highest EL2N
        assert set(subsets[4 + r]) == set(order[-size:])  # the lowest
        assert len(set(subsets[2 + r])) == size
    assert not np.array_equal(np.sort(subsets[2]), np.sort(subsets[3]))  # its own draw each
    rows = results.read_csv(tmp_path / "results.csv")
    per = list(rows)
    assert {(r["kept"], r["mode"]) for r in per} == {("1.0", "full"), ("0.5", "hardest"),
                                                      ("0.5", "random"), ("0.5", "easiest")}
    acc = {m: np.mean([float(r["test_accuracy"]) for r in per if r["mode"] == m])
           for m in ("hardest", "random", "easiest")}
    assert acc["easiest"] < acc["random"]  # the paper's finding, by a wide margin on digits
    assert summary["num_replicates"] == 2

    def no_training(call):
        raise AssertionError("a finished run must not train again")

    on_training(no_training)
    data_diet.run_data_diet(config, tmp_path, progress=False)
    assert results.read_csv(tmp_path / "results.csv") == rows
    bad = data_diet_lenet_digits.get_config("quick")
    bad.kept = (1.5,)
    with pytest.raises(ValueError, match=r"config.kept must be shares in \(0, 1\)"):
        data_diet.run_data_diet(bad, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def _small(**fields):
    """The existing test's shapes (the compiled programs are shared), with ``fields`` set."""
    config = data_diet_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32,)}
    for name, value in fields.items():
        setattr(config, name, value)
    return config


def test_label_noise_corrupts_an_exact_share_and_precision_matches_numpy(tmp_path, on_training,
                                                                       sealed):
    trained_labels, tested_labels = [], []

    def spy(call):
        trained_labels.append(np.asarray(call.executor.dataset.train.y))
        tested_labels.append(np.asarray(call.executor.dataset.test.y))

    on_training(spy)
    config = _small(label_noise=0.2, label_noise_seed=5)
    summary = data_diet.run_data_diet(sealed(config, data_diet.DataDietSpec), tmp_path,
                                      progress=False)
    clean = data.load("digits")
    saved = np.load(tmp_path / "scores.npz")
    labels, scores = saved["labels"], saved["scores"]
    n = len(clean.train.y)
    corrupted = np.flatnonzero(labels != clean.train.y)  # every corrupted label is wrong
    assert corrupted.size == math.ceil(0.2 * n) == 288  # the exact share
    np.testing.assert_array_equal(saved["corrupted"], corrupted)
    np.testing.assert_array_equal(scores, np.load(tmp_path / "scores.npy"))
    assert all(np.array_equal(y, labels) for y in trained_labels)  # scored and trained noisy
    # Precision of the top 20 % (ties by position), independently of the study.
    top = np.lexsort((np.arange(n), -scores))[:corrupted.size]
    precision = np.isin(top, corrupted).mean()
    row, = results.read_csv(tmp_path / "noise.csv")
    assert row["score"] == "el2n" and float(row["noise_share"]) == 0.2
    assert int(row["num_corrupted"]) == 288
    assert float(row["top_share"]) == pytest.approx(288 / n)
    assert float(row["precision"]) == pytest.approx(precision, abs=1e-12)
    assert float(row["recall_at_top"]) == pytest.approx(precision, abs=1e-12)
    assert summary["noise"]["precision"] == pytest.approx(precision, abs=1e-12)
    assert precision > 0.3  # EL2N after one epoch (11 steps) beats chance (0.2) already
    assert not (tmp_path / "score_stats.csv").exists()
    # The test set keeps its labels (accuracy is the real task's); the corruption is seeded.
    assert all(np.array_equal(y, clean.test.y) for y in tested_labels)
    again, where = data_diet.with_label_noise(clean, share=0.2, seed=5)
    np.testing.assert_array_equal(again.train.y, labels)
    np.testing.assert_array_equal(where, corrupted)
    np.testing.assert_array_equal(again.test.y, clean.test.y)
    np.testing.assert_array_equal(again.train.x, clean.train.x)
    other, _ = data_diet.with_label_noise(clean, share=0.2, seed=6)
    assert not np.array_equal(other.train.y, labels)


@pytest.mark.parametrize("fields, message", [
    ({"label_noise": 1.5}, r"config.label_noise must be a share in \[0, 1\], got 1.5"),
    ({"label_noise": -0.1}, r"config.label_noise must be a share in \[0, 1\]"),
    ({"label_noise": 0.1, "label_noise_seed": -1}, r"config.label_noise_seed must be an int"),
])
def test_bad_label_noise_is_refused_before_the_workdir(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        data_diet.run_data_diet(_small(**fields), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_grand_at_init_reports_spearman_with_the_input_norm(tmp_path):
    config = _small(score="grand", score_step="0it")
    summary = data_diet.run_data_diet(config, tmp_path, progress=False)
    saved = np.load(tmp_path / "scores.npz")
    clean = data.load("digits")
    x = clean.train.x.reshape(len(clean.train.x), -1).astype(np.float64)
    mean = np.broadcast_to(clean.mean, clean.train.x.shape[1:]).reshape(-1)
    std = np.broadcast_to(clean.std, clean.train.x.shape[1:]).reshape(-1)
    norms = np.sqrt((((x - mean) / std) ** 2).sum(1))
    np.testing.assert_allclose(saved["input_norm"], norms, rtol=1e-4)
    assert saved["corrupted"].size == 0
    np.testing.assert_array_equal(saved["labels"], clean.train.y)
    row, = results.read_csv(tmp_path / "score_stats.csv")
    want = stats.spearmanr(saved["scores"], saved["input_norm"]).statistic
    # float32 norms may order a near-tie differently from float64 ones
    assert want == pytest.approx(stats.spearmanr(saved["scores"], norms).statistic, abs=1e-4)
    assert row["score"] == "grand" and int(row["score_step"]) == 0
    assert float(row["spearman_input_norm"]) == pytest.approx(want, abs=1e-12)
    assert summary["score_stats"]["spearman_input_norm"] == pytest.approx(want, abs=1e-12)
    assert want > 0.3  # Kirsch 2023: GraNd at init tracks ||x|| (0.51 here)
    assert not (tmp_path / "noise.csv").exists()


def test_noise_and_grand_init_variants_compose_with_quick():
    noisy = data_diet_lenet_mnist.get_config("quick,noise")
    assert (noisy.label_noise, noisy.score, noisy.score_step) == (0.1, "el2n", "100it")
    assert data_diet_lenet_mnist.get_config("noise").score_step == "2ep"  # the calibration
    grand = data_diet_lenet_mnist.get_config("grand_init,quick")
    assert (grand.label_noise, grand.score, grand.score_step) == (0.0, "grand", "0it")
    assert set(data_diet_lenet_mnist.VARIANTS) == {"quick", "noise", "grand_init"}
