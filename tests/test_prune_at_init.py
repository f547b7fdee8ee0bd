"""The pruning-at-init study: members, masks against NumPy oracles, ablations, resume, bad input."""

import shutil

import jax
import numpy as np
import pytest

from experiments.configs import prune_at_init_lenet_digits
from ltjax import checkpoint, masking, results, rng, tree
from ltjax.studies import common, prune_at_init


def _config(**overrides):
    config = prune_at_init_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (32, 16)}
    config.training_steps = "2ep"
    config.eval_every = "1ep"
    config.checkpoint_every = "1ep"
    config.densities = (0.25,)
    config.synflow_rounds = 3
    config.score_examples = 50
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    config = _config()
    workdir = tmp_path_factory.mktemp("pai")
    summary = prune_at_init.run_prune_at_init(config, workdir, progress=False)
    return config, workdir, summary


def _member_masks(workdir, like_params, num_members):
    with checkpoint.Checkpointer(workdir / "checkpoints" / "pruned") as ckpt:
        like = jax.tree.map(lambda x: np.ones((num_members, *x.shape), bool), like_params)
        _, masks, meta = ckpt.restore(ckpt.steps()[-1], like_state=None, like_masks=like)
    return masks, meta["members"]


def _top_k(scores_by_layer, keep):
    """NumPy oracle: global top-``keep`` (ties by position, later kept), as flat index sets."""
    flat = np.concatenate([s.ravel() for s in scores_by_layer])
    order = np.lexsort((np.arange(flat.size), flat))  # ascending score, then position
    kept = np.zeros(flat.size, bool)
    kept[order[flat.size - keep:]] = True
    return kept


def test_members_masks_and_ablations_match_oracles(study):
    config, workdir, summary = study
    rows = results.read_csv(workdir / "results.csv")
    per_rep = [r for r in rows if r["replicate"] not in ("mean", "std")]
    expected = {(m, a) for m in config.methods
                for a in prune_at_init.ablations_of(m, config.ablations)}
    assert {(r["method"], r["ablation"]) for r in per_rep if r["method"] != "dense"} == expected
    assert ("random", "shuffle") not in expected and ("synflow", "invert") not in expected

    _, dataset, recipe, executor = common.setup(config, workdir)
    keys = rng.replicate_keys(config.seed, config.num_replicates)
    params0 = executor.init(rng.init_and_noise(keys)[0]).params
    selection = masking.prunable(jax.tree.map(lambda x: x[0], params0))
    total = masking.num_prunable(jax.tree.map(lambda x: x[0], params0), selection)
    keep = round(0.25 * total)
    for r in per_rep:
        if r["method"] != "dense":  # exact counts
            assert float(r["kept_density"]) == pytest.approx(keep / total, abs=1e-7)

    masks, members = _member_masks(workdir, jax.tree.map(lambda x: x[0], params0),
                                   len(per_rep) - config.num_replicates)
    index = {(m["method"], m["ablation"], m["replicate"]): i for i, m in enumerate(members)}
    prunable_leaves = [i for i, s in enumerate(jax.tree.leaves(selection)) if s]

    def flat(tree_, member):
        leaves = jax.tree.leaves(tree_)
        return np.concatenate([np.asarray(leaves[i][member]).ravel() for i in prunable_leaves])

    def layer_counts(member):
        leaves = jax.tree.leaves(masks)
        return [int(np.asarray(leaves[i][member]).sum()) for i in prunable_leaves]

    for rep in range(config.num_replicates):
        magnitude = np.abs(flat(params0, rep))
        np.testing.assert_array_equal(flat(masks, index["magnitude", "none", rep]),
                                      _top_k([magnitude], keep))
        np.testing.assert_array_equal(flat(masks, index["magnitude", "invert", rep]),
                                      _top_k([-magnitude], keep))
        for method in ("magnitude", "snip", "grasp", "synflow", "oneshot"):
            base = layer_counts(index[method, "none", rep])
            assert layer_counts(index[method, "shuffle", rep]) == base, method
            np.testing.assert_array_equal(flat(masks, index[method, "reinit", rep]),
                                          flat(masks, index[method, "none", rep]))
            assert not np.array_equal(flat(masks, index[method, "shuffle", rep]),
                                      flat(masks, index[method, "none", rep]))

    # The one-shot ticket: magnitude of the trained dense net (its checkpoint), kept at theta_0.
    with checkpoint.Checkpointer(workdir / "checkpoints" / "dense") as ckpt:
        dense, _, _ = ckpt.restore(ckpt.steps()[-1], like_state=executor.init(
            rng.init_and_noise(keys)[0]))
    for rep in range(config.num_replicates):
        np.testing.assert_array_equal(flat(masks, index["oneshot", "none", rep]),
                                      _top_k([np.abs(flat(dense.params, rep))], keep))

    layers = results.read_csv(workdir / "layer_densities.csv")
    assert {r["layer"] for r in layers} == {n for n, s in zip(
        tree.names(selection), jax.tree.leaves(selection), strict=True) if s}
    assert (workdir / "plots" / "prune_at_init.png").exists()
    assert {r["method"] for r in summary["rows"]} == set(config.methods) | {"dense"}


class _Killed(Exception):
    pass


def test_killed_run_resumes_to_identical_results(study, tmp_path, monkeypatch):
    config, straight, _ = study
    from ltjax import executor as executor_lib

    original = executor_lib.Executor.train
    calls = []

    def dies(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the pruned members' second epoch (the first is checkpointed)
            raise _Killed
        return original(self, *args, **kwargs)

    monkeypatch.setattr(executor_lib.Executor, "train", dies)
    with pytest.raises(_Killed):
        prune_at_init.run_prune_at_init(config, tmp_path, progress=False)
    monkeypatch.setattr(executor_lib.Executor, "train", original)
    prune_at_init.run_prune_at_init(config, tmp_path, progress=False)
    for name in ("results.csv", "layer_densities.csv"):
        assert (tmp_path / name).read_text() == (straight / name).read_text(), name


@pytest.mark.parametrize("overrides, match", [
    ({"methods": ("snip", "obd")}, "config.methods"),
    ({"ablations": ("shuffle",)}, "include 'none'"),
    ({"densities": (0.1, 0.0)}, "config.densities"),
    ({"densities": (1.5,)}, "config.densities"),
    ({"synflow_rounds": 0}, "config.synflow_rounds"),
    ({"score_examples": 0}, "config.score_examples"),
    ({"score_examples": 10**6}, "config.score_examples"),
    ({"methods": ("imp",)}, "imp_workdir"),
    ({"scope": "blockwise"}, "config.scope"),
])
def test_bad_config_is_refused_before_any_work(tmp_path, overrides, match):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        prune_at_init.run_prune_at_init(_config(**overrides), workdir, progress=False)
    assert not workdir.exists()


def test_imp_tickets_come_from_the_imp_workdir_level_nearest_each_density(study, tmp_path):
    from experiments.configs import imp_lenet_digits
    from ltjax.studies import imp

    config, _, _ = study
    imp_config = imp_lenet_digits.get_config("quick")
    for key in ("model", "model_kwargs", "validation_size", "seed", "num_replicates"):
        setattr(imp_config, key, config[key])
    imp_config.controls = ()
    imp_config.training_steps = imp_config.eval_every = imp_config.checkpoint_every = "1ep"
    imp.run_imp(imp_config, tmp_path / "imp", progress=False)
    imp_rows = [r for r in results.read_csv(tmp_path / "imp" / "results.csv")
                if r["replicate"] == "0"]
    level_density = {int(r["level"]): float(r["density"]) for r in imp_rows}

    pai = _config(methods=("imp",), ablations=("none", "reinit"), densities=(0.8, 0.7),
                  imp_workdir=str(tmp_path / "imp"))
    prune_at_init.run_prune_at_init(pai, tmp_path / "pai", progress=False)
    rows = [r for r in results.read_csv(tmp_path / "pai" / "results.csv")
            if r["method"] == "imp" and r["replicate"] not in ("mean", "std")]
    for r in rows:  # 0.8 -> level 1 (80 %), 0.7 -> level 2 (64 %, nearer in log scale)
        level = 1 if float(r["density"]) == 0.8 else 2
        assert float(r["kept_density"]) == pytest.approx(level_density[level], abs=1e-7)

    like = jax.tree.map(lambda x: np.ones((2, *x.shape), bool), _member_params(pai))
    with checkpoint.Checkpointer(tmp_path / "imp" / "checkpoints" / "level_02") as ckpt:
        _, imp_masks, _ = ckpt.restore(ckpt.steps()[-1], like_state=None, like_masks=like)
    masks, members = _member_masks(tmp_path / "pai", _member_params(pai), len(members_of(pai)))
    for m, tag in enumerate(members):
        if tag["target_density"] == 0.7:
            for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(imp_masks), strict=True):
                np.testing.assert_array_equal(np.asarray(a[m]), np.asarray(b[tag["replicate"]]))

    other = _config(methods=("imp",), imp_workdir=str(tmp_path / "imp"), seed=5)
    with pytest.raises(ValueError, match="differs in"):
        prune_at_init.run_prune_at_init(other, tmp_path / "other", progress=False)

    # 0.1 is far below the run's last level (64 %): refused, not trained as 64 %.
    far = _config(methods=("imp",), densities=(0.1,), imp_workdir=str(tmp_path / "imp"))
    with pytest.raises(ValueError, match="more than half a pruning step away"):
        prune_at_init.run_prune_at_init(far, tmp_path / "far", progress=False)
    # A half-finished IMP run (its last level missing, or short of the end) is refused
    # before the workdir is written.
    shutil.copytree(tmp_path / "imp", tmp_path / "half")
    level_2 = tmp_path / "half" / "checkpoints" / "level_02"
    last = max(int(p.name) for p in level_2.iterdir() if p.name.isdigit())
    shutil.rmtree(level_2 / str(last))
    half = _config(methods=("imp",), densities=(0.8,), imp_workdir=str(tmp_path / "half"))
    for _ in range(2):
        with pytest.raises(ValueError, match="has not finished: level 2 of 2"):
            prune_at_init.run_prune_at_init(half, tmp_path / "pai_half", progress=False)
        assert not (tmp_path / "pai_half").exists()
        shutil.rmtree(level_2, ignore_errors=True)  # then missing altogether


def _member_params(config):
    dataset = common.build_dataset(config)
    executor = common.build_executor(config, common.build_model(config, dataset), dataset,
                                     common.build_recipe(config, dataset))
    return executor.abstract_params


def members_of(config):
    return [(m, a, r) for _ in config.densities for m in config.methods
            for a in prune_at_init.ablations_of(m, config.ablations)
            for r in range(config.num_replicates)]
