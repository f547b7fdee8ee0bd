"""The pruning-at-init study: members, masks against NumPy oracles, ablations, resume, bad input."""

import contextlib
import io
import re
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import sealed_after_spec

from experiments.configs import prune_at_init_lenet_digits
from ltjax.core import masking, pruning, rng, tree
from ltjax.io import checkpoint, results
from ltjax.methods import saliency, sanity
from ltjax.studies import common, prune_at_init
from ltjax.studies.spec import RunSpec


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
    with (contextlib.redirect_stdout(io.StringIO()) as said,  # the study's progress lines
          sealed_after_spec(config, prune_at_init.PruneAtInitSpec) as sealed):
        summary = prune_at_init.run_prune_at_init(sealed, workdir, progress=True)
    return config, workdir, {**summary, "said": said.getvalue()}


def test_every_scoring_step_says_what_it_did_and_its_time(study):
    config, _, summary = study
    lines = summary["said"].splitlines()
    timed = re.compile(r"^(.*): (\d+\.\d) s$")
    steps = [m.group(1) for m in map(timed.match, lines) if m]
    assert steps[0] == (f"scores at init (magnitude, SNIP, GraSP, |GraSP|) on "
                        f"{config.score_examples} examples x{config.num_replicates}")
    corrupted = list(dict.fromkeys(m.split("@")[1] for m in config.methods if "@" in m))
    assert corrupted  # the config scores on corrupted batches too
    assert steps[1:] == [
        *(f"scores at init on {c.replace('_', ' ')} (SNIP, GraSP) x{config.num_replicates}"
          for c in corrupted),
        *(f"{method} masks at 25 % density x{config.num_replicates}"
          for method in config.methods)]


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


@pytest.fixture(scope="module")
def members(study):
    """The study's executor, init, dense net and member masks, read back once."""
    config, workdir, _ = study
    run_spec = RunSpec.from_config(config, progress=False)
    dataset, executor = run_spec.dataset, run_spec.executor
    keys = rng.replicate_keys(config.seed, config.num_replicates)
    state0 = executor.init(rng.init_and_noise(keys)[0])
    one = jax.tree.map(lambda x: x[0], state0.params)
    with checkpoint.Checkpointer(workdir / "checkpoints" / "dense") as ckpt:
        dense, _, _ = ckpt.restore(ckpt.steps()[-1], like_state=state0)
    rows = [r for r in results.read_csv(workdir / "results.csv")
            if r["method"] != "dense"]
    masks, tags = _member_masks(workdir, one, len(rows))
    selection = masking.prunable(one)
    return types.SimpleNamespace(
        dataset=dataset, executor=executor, keys=keys, state0=state0, dense=dense,
        rows=rows, masks=masks, selection=selection,
        index={(m["method"], m["ablation"], m["replicate"]): i for i, m in enumerate(tags)},
        keep=round(0.25 * masking.num_prunable(one, selection)),
        prunable_leaves=[i for i, s in enumerate(jax.tree.leaves(selection)) if s])


def _flat(members, tree_, member=None):
    """The prunable leaves of ``tree_`` (of stacked ``tree_[member]``) as one flat array."""
    leaves = jax.tree.leaves(tree_)
    return np.concatenate([np.asarray(leaves[i] if member is None else leaves[i][member]).ravel()
                           for i in members.prunable_leaves])


def test_members_masks_and_ablations_match_oracles(study, members):
    config, workdir, summary = study
    expected = {(m, a) for m in config.methods
                for a in prune_at_init.ablations_of(m, config.ablations)}
    assert {(r["method"], r["ablation"]) for r in members.rows} == expected
    assert ("random", "shuffle") not in expected and ("synflow", "invert") in expected
    assert {a for m, a in expected if m == "lr_rewinding"} == {"none"}

    selection, keep, index = members.selection, members.keep, members.index
    total = masking.num_prunable(jax.tree.map(lambda x: x[0], members.state0.params), selection)
    for r in members.rows:  # exact counts
        assert float(r["kept_density"]) == pytest.approx(keep / total, abs=1e-7)

    def flat(tree_, member):
        return _flat(members, tree_, member)

    def layer_counts(member):
        leaves = jax.tree.leaves(members.masks)
        return [int(np.asarray(leaves[i][member]).sum()) for i in members.prunable_leaves]

    masks, params0 = members.masks, members.state0.params
    for rep in range(config.num_replicates):
        magnitude = np.abs(flat(params0, rep))
        np.testing.assert_array_equal(flat(masks, index["magnitude", "none", rep]),
                                      _top_k([magnitude], keep))
        np.testing.assert_array_equal(flat(masks, index["magnitude", "invert", rep]),
                                      _top_k([-magnitude], keep))
        for method in ("magnitude", "snip", "grasp", "grasp_abs", "synflow", "oneshot_lth"):
            base = layer_counts(index[method, "none", rep])
            assert layer_counts(index[method, "shuffle", rep]) == base, method
            np.testing.assert_array_equal(flat(masks, index[method, "reinit", rep]),
                                          flat(masks, index[method, "none", rep]))
            assert not np.array_equal(flat(masks, index[method, "shuffle", rep]),
                                      flat(masks, index[method, "none", rep]))

    # The one-shot ticket and LR rewinding: magnitude of the trained dense net (its checkpoint).
    for rep in range(config.num_replicates):
        for method in ("oneshot_lth", "lr_rewinding"):
            np.testing.assert_array_equal(flat(masks, index[method, "none", rep]),
                                          _top_k([np.abs(flat(members.dense.params, rep))], keep))

    layers = results.read_csv(workdir / "layer_densities.csv")
    assert {r["layer"] for r in layers} == {n for n, s in zip(
        tree.names(selection), jax.tree.leaves(selection), strict=True) if s}
    assert (workdir / "plots" / "prune_at_init.png").exists()
    assert {r["method"] for r in summary["rows"]} == set(config.methods) | {"dense"}


def _snip_and_grasp(model, selection, grasp_temperature):
    """Jitted ``(params, x, y) -> (SNIP, GraSP scores)``: the saliency functions called
    directly on the flax model in eval mode (GraSP at its temperature, prunable g)."""

    def loss(p, x, y, temperature):
        logits = model.apply({"params": p}, x, train=False) / temperature
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def snip_and_grasp(p, x, y):
        return (saliency.snip_scores(lambda q: loss(q, x, y, 1.0), p),
                saliency.grasp_scores(lambda q: loss(q, x, y, grasp_temperature), p,
                                      prunable=selection))

    return snip_and_grasp


def test_score_masks_are_the_saliency_functions_on_the_same_init_and_batch(study, members):
    """SNIP, GraSP, |GraSP| and SynFlow (and their inversions) as the study wires them, against
    the saliency functions called directly: the flax model in eval mode, GraSP's temperature
    and prunable g, the scoring batch of the stream ``score_batch``, SynFlow on ones."""
    config, _, _ = study
    dataset, model, selection = members.dataset, members.executor.model, members.selection
    snip_and_grasp = _snip_and_grasp(model, selection, config.grasp_temperature)

    ones = jnp.ones((1, *dataset.input_shape))
    forward = lambda p: model.apply({"params": p}, ones, train=False)  # noqa: E731
    batch_keys = rng.stream(members.keys, "score_batch")
    for rep in range(config.num_replicates):
        rows = np.asarray(jax.random.choice(batch_keys[rep], len(dataset.train),
                                            (config.score_examples,), replace=False))
        x = (dataset.train.x[rows].astype(np.float32) - dataset.mean) / dataset.std
        p = jax.tree.map(lambda a, rep=rep: a[rep], members.state0.params)
        snip, grasp = (_flat(members, s) for s in snip_and_grasp(p, x, dataset.train.y[rows]))
        for method, scores in (("snip", snip), ("grasp", grasp), ("grasp_abs", np.abs(grasp))):
            for ablation, sign in (("none", 1), ("invert", -1)):
                np.testing.assert_array_equal(
                    _flat(members, members.masks, members.index[method, ablation, rep]),
                    _top_k([sign * scores], members.keep), (method, ablation))
        for ablation in ("none", "invert"):
            direct = saliency.synflow_prune(forward, p, selection, density=0.25,
                                            rounds=config.synflow_rounds, scope=config.scope,
                                            invert=ablation == "invert")
            np.testing.assert_array_equal(
                _flat(members, members.masks, members.index["synflow", ablation, rep]),
                _flat(members, direct), ablation)


def test_su_sanity_checks_corrupted_scores_and_random_tickets(study, members):
    """Su et al. 2020: SNIP / GraSP on the scoring batch corrupted by the stream
    ``score_corruption`` are the saliency functions on that batch (sanity.corrupt_batch), and
    the random tickets keep the smart-ratio count of each layer (Dense_2 at 30 %)."""
    config, _, _ = study
    dataset, model, selection, index = (members.dataset, members.executor.model,
                                        members.selection, members.index)
    snip_and_grasp = _snip_and_grasp(model, selection, config.grasp_temperature)

    batch_keys = rng.stream(members.keys, "score_batch")
    corrupt_keys = rng.stream(members.keys, "score_corruption")
    one = jax.tree.map(lambda a: a[0], members.state0.params)
    sizes = [int(np.size(a)) for a, s in zip(jax.tree.leaves(one), jax.tree.leaves(selection),
                                             strict=True) if s]  # Dense_0, 1, 2: forward order
    targets = np.array(pruning.smart_ratio_densities(sizes, 0.25)) * sizes
    for rep in range(config.num_replicates):
        rows = np.asarray(jax.random.choice(batch_keys[rep], len(dataset.train),
                                            (config.score_examples,), replace=False))
        p = jax.tree.map(lambda a, rep=rep: a[rep], members.state0.params)
        for corruption in ("random_labels", "random_pixels"):
            x, y = sanity.corrupt_batch(corrupt_keys[rep], dataset.train.x[rows],
                                        dataset.train.y[rows], corruption=corruption,
                                        num_classes=dataset.num_classes)
            x = (np.asarray(x, np.float32) - dataset.mean) / dataset.std
            for method, scores in zip(("snip", "grasp"), snip_and_grasp(p, x, y), strict=True):
                got = _flat(members, members.masks, index[f"{method}@{corruption}", "none", rep])
                np.testing.assert_array_equal(got, _top_k([_flat(members, scores)],
                                                          members.keep), (method, corruption))
                assert not np.array_equal(got, _flat(members, members.masks,
                                                     index[method, "none", rep]))
        leaves = jax.tree.leaves(members.masks)
        counts = [int(np.asarray(leaves[i][index["smart_ratio", "none", rep]]).sum())
                  for i in members.prunable_leaves]
        assert sum(counts) == members.keep and counts[-1] == round(0.3 * sizes[-1])
        assert all(np.floor(t) <= c <= np.ceil(t) for c, t in zip(counts, targets, strict=True))
    assert not np.array_equal(*(_flat(members, members.masks, index["smart_ratio", "none", r])
                                for r in range(2)))


def test_lr_rewinding_retrains_the_pruned_trained_weights_from_step_0(study, members):
    """LR rewinding starts from theta_T masked (its step-0 record is theta_T's), the one-shot
    ticket from theta_0 with the same mask, and both train the full budget."""
    config, workdir, _ = study
    executor, num = members.executor, config.num_replicates
    lr_members = [members.index["lr_rewinding", "none", r] for r in range(num)]
    lr_masks = jax.tree.map(lambda x: np.asarray(x)[lr_members], members.masks)
    end = common.steps(config.training_steps, executor.steps_per_epoch)
    records = [r for r in results.MetricsLog(workdir / "metrics.jsonl").read()
               if r.get("split") == "test" and r.get("ablation") == "none"]
    for method, start in (("lr_rewinding", members.dense), ("oneshot_lth", members.state0)):
        want = executor.evaluate_params(masking.apply(start.params, lr_masks), start.batch_stats,
                                        "test")["loss"]
        for rep in range(num):
            steps = {r["step"]: r["loss"] for r in records
                     if r["method"] == method and r["replicate"] == rep}
            assert min(steps) == 0 and max(steps) == end, method
            assert steps[0] == pytest.approx(float(want[rep]), rel=1e-5), (method, rep)


class _Killed(Exception):
    pass


def test_killed_run_resumes_to_identical_results(study, tmp_path, on_training):
    config, straight, _ = study

    calls = []

    def dies(call):
        calls.append(1)
        if len(calls) == 4:  # the pruned members' second epoch (the first is checkpointed)
            raise _Killed

    on_training(dies)
    with pytest.raises(_Killed):
        prune_at_init.run_prune_at_init(config, tmp_path, progress=False)
    on_training(None)
    prune_at_init.run_prune_at_init(config, tmp_path, progress=False)
    for name in ("results.csv", "layer_densities.csv"):
        assert (tmp_path / name).read_text() == (straight / name).read_text(), name


@pytest.mark.parametrize("overrides, match", [
    ({"methods": ("snip", "obd")}, "config.methods"),
    ({"methods": ("oneshot", "snip")}, "'oneshot' is now 'oneshot_lth'"),
    ({"methods": ("oneshot", "obd")}, r"unknown: \['oneshot', 'obd'\]"),
    ({"ablations": ("shuffle",)}, "include 'none'"),
    ({"densities": (0.1, 0.0)}, "config.densities"),
    ({"densities": (1.5,)}, "config.densities"),
    ({"synflow_rounds": 0}, "config.synflow_rounds"),
    ({"score_examples": 0}, "config.score_examples"),
    ({"score_examples": 10**6}, "config.score_examples"),
    ({"methods": ("imp",)}, "imp_workdir"),
    ({"scope": "blockwise"}, "config.scope"),
    ({"methods": ("smart_ratio",), "densities": (1.0,)}, "config.densities has 1, which "
                                                         "method 'smart_ratio' cannot reach"),
    ({"methods": ("smart_ratio",), "scope": "layerwise"}, "smart_ratio.*config.scope"),
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
    with sealed_after_spec(pai, prune_at_init.PruneAtInitSpec) as sealed:
        prune_at_init.run_prune_at_init(sealed, tmp_path / "pai", progress=False)
    rows = [r for r in results.read_csv(tmp_path / "pai" / "results.csv")
            if r["method"] == "imp"]
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
    assert not (tmp_path / "far").exists()  # refused before the workdir (after it until today)
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
