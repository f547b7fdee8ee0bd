"""The data-diet study end to end on digits: the subsets it trains are the scores' own."""

import numpy as np
import pytest

from experiments.configs import data_diet_lenet_digits
from ltjax import results, train
from ltjax.studies import data_diet


def test_study_trains_each_mode_on_its_scored_subset_and_reruns(tmp_path, monkeypatch):
    config = data_diet_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32,)}
    seen = []
    original = train.Executor.train

    def spy(self, state, masks, noise_keys, *, num_steps, hparams=None, **kwargs):
        if kwargs.get("subsets") is not None:
            seen.append(np.asarray(kwargs["subsets"]))
        return original(self, state, masks, noise_keys, num_steps=num_steps, hparams=hparams,
                        **kwargs)

    monkeypatch.setattr(train.Executor, "train", spy)
    summary = data_diet.run_data_diet(config, tmp_path, progress=False)
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
    per = [r for r in rows if r["replicate"] not in ("mean", "std")]
    assert {(r["kept"], r["mode"]) for r in per} == {("1.0", "full"), ("0.5", "hardest"),
                                                      ("0.5", "random"), ("0.5", "easiest")}
    acc = {m: np.mean([float(r["test_accuracy"]) for r in per if r["mode"] == m])
           for m in ("hardest", "random", "easiest")}
    assert acc["easiest"] < acc["random"]  # the paper's finding, by a wide margin on digits
    assert summary["num_replicates"] == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(train.Executor, "train", no_training)
    data_diet.run_data_diet(config, tmp_path, progress=False)
    assert results.read_csv(tmp_path / "results.csv") == rows
    bad = data_diet_lenet_digits.get_config("quick")
    bad.kept = (1.5,)
    with pytest.raises(ValueError, match=r"config.kept must be shares in \(0, 1\)"):
        data_diet.run_data_diet(bad, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
