"""Invariants of DESIGN.md section 5 checked against independent oracles.

Each test compares the library with something it did not compute itself: a
NumPy re-implementation, a hand-computed value, a planted answer, or the same
quantity obtained another way (a solo run, an uninterrupted run).

- masked Adam / AdamW keep pruned weights exactly zero (invariant 2);
- IMP's ``rewind_optimizer``: a level starts from the stored step-k optimiser
  state, or from a fresh (all-zero) one;
- an IMP level starts from exactly ``masks * theta_k``, with the masks of a
  NumPy layerwise magnitude-pruning oracle;
- replicate independence and masked/dense parity under ``'unrolled_loop'``
  (invariant 3);
- ``data.batch_indices``: epochs are permutations with the documented
  drop-last rule, and the order does not depend on chunking;
- IMP replicate r does not depend on S (invariant 3);
- a kill between the metrics append and the checkpoint save resumes to
  byte-identical files (invariant 6);
- permutation invariance (eval, train, BatchNorm statistics) of every
  registered model name (invariant 4).
"""

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import imp_lenet_digits
from ltjax import models
from ltjax.core import matching, rng, tree
from ltjax.engine import executor as executor_lib
from ltjax.engine import optim, train
from ltjax.io import checkpoint, data, results
from ltjax.studies import common, imp

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _keys(n, seed=0):
    return rng.init_and_noise(rng.replicate_keys(seed, n))


def _leaves(tree_):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree_))]


def _random_masks(abstract_params, num, seed, density=0.5):
    """Stacked bool masks ``[num, ...]`` from NumPy (planted, not from the library)."""
    gen = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(gen.random((num, *p.shape)) < density),
                        abstract_params)


# --------------------------------------------------------------------------- 1. masked Adam(W)


@pytest.fixture(scope="module")
def executors(digits):
    """MLPs on digits under ``'unrolled_loop'`` with both members on one device (the Python
    loop over members), Adam with coupled decay and AdamW; shared by tests 1 and 4. The
    strategy is forced: it, not the model, is under test (test_train compares strategies
    on a conv net)."""
    model = models.create("mlp", widths=(16,))
    out = {}
    for optimizer, weight_decay in (("adam", 1e-2), ("adamw", 1e-1)):
        recipe = optim.Recipe(optimizer=optimizer, learning_rate=1e-2,
                              weight_decay=weight_decay, batch_size=32)
        out[optimizer] = executor_lib.Executor(model, digits, recipe, strategy="unrolled_loop",
                                               devices=jax.devices()[:1])
    return out


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_masked_adam_keeps_pruned_weights_exactly_zero(executors, optimizer):
    """Adam's moments of a pruned weight come from dense training (non-zero), and the
    decay is > 0 (coupled for Adam, decoupled for AdamW), yet pruned weights stay exactly
    0.0 while the kept weights move."""
    executor = executors[optimizer]
    assert executor.recipe.weight_decay > 0
    assert executor.recipe.weight_decay_mode == {"adam": "coupled", "adamw": "decoupled"}[
        optimizer]
    init_keys, noise_keys = _keys(2)
    state, _ = executor.train(executor.init(init_keys), None, noise_keys, num_steps=3)
    masks = _random_masks(executor.abstract_params, 2, seed=1)
    # Prune as IMP does (pruned weights start at zero) but keep the dense optimiser state.
    start = state.replace(params=jax.tree.map(lambda p, m: jnp.where(m, p, 0.0),
                                              state.params, masks))
    after, _ = executor.train(start, masks, noise_keys, num_steps=5)
    for p0, p, m in zip(_leaves(start.params), _leaves(after.params), _leaves(masks),
                        strict=True):
        assert np.all(p[~m] == 0.0)  # exactly zero, not merely small
        assert np.mean(p[m] != p0[m]) > 0.95  # and training did move the kept weights


# --------------------------------------------------------------------------- IMP runs (shared)


def _imp_config(**overrides):
    """IMP on digits: a 64-16-8-10 MLP, 2 levels (dense + one pruned), 6 steps each,
    rewind to step 2, eval and checkpoint every 2 steps, no controls."""
    config = imp_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (16, 8)}
    config.controls = ()
    config.levels = 1
    config.training_steps = "6it"
    config.rewind_step = "2it"
    config.eval_every = "2it"
    config.checkpoint_every = "2it"
    config.validation_size = 0  # one evaluation split: fewer programs to compile
    # The pruning the NumPy oracle of test 3 re-implements, spelled out here.
    config.pruning.fraction = 0.2
    config.pruning.scope = "layerwise"
    config.pruning.layer_rates = "Dense_2:0.1"
    config.pruning.include = config.pruning.exclude = ""
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


REWIND_STEP = 2


def _recording_segment(calls):
    """``common.train_segment`` that records each segment's start state, masks and result."""
    original = common.train_segment

    def recording(executor, *, state, masks, **kwargs):
        out = original(executor, state=state, masks=masks, **kwargs)
        calls.append({"tags": dict(kwargs["tags"]), "start": jax.device_get(state),
                      "masks": None if masks is None else jax.device_get(masks),
                      "end": jax.device_get(out[0])})
        return out

    return recording


@pytest.fixture(scope="module")
def imp_runs(tmp_path_factory):
    """Three IMP runs, their segments recorded: S=2 (fresh optimiser), S=1 (fresh) and
    S=1 with ``rewind_optimizer=True`` (the S=1 runs share compiled programs)."""
    root = tmp_path_factory.mktemp("imp_runs")
    runs = {}
    variants = {"s2": dict(num_replicates=2), "s1": dict(num_replicates=1),
                "s1_rewind_opt": dict(num_replicates=1, rewind_optimizer=True)}
    for name, overrides in variants.items():
        calls = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(common, "train_segment", _recording_segment(calls))
            imp.run_imp(_imp_config(**overrides), root / name, progress=False)
        segments = {}
        for call in calls:
            key = (call["tags"]["level"], call["tags"]["branch"]) if "branch" in call["tags"] \
                else (call["tags"]["level"], "imp")
            assert key not in segments, key
            segments[key] = call
        runs[name] = {"dir": root / name, "segments": segments}
    return runs


def _theta_k(run):
    pretrain = run["segments"][0, "pretrain"]
    assert int(np.asarray(pretrain["end"].step).reshape(-1)[0]) == REWIND_STEP
    return pretrain["end"]


# --------------------------------------------------------------------------- 2. rewind_optimizer


def test_rewind_optimizer_restores_the_step_k_state_else_a_fresh_one(imp_runs):
    """Adam's state at step k (count k, non-zero moments) vs a fresh one (all zeros)."""
    for name, rewinds in (("s1_rewind_opt", True), ("s1", False), ("s2", False)):
        run = imp_runs[name]
        stored = _leaves(_theta_k(run).opt_state)
        assert any(np.any(x != 0) for x in stored)  # the step-k state is not a fresh one
        for level in (0, 1):
            begun = _leaves(run["segments"][level, "imp"]["start"].opt_state)
            assert len(begun) == len(stored)
            if rewinds:
                for a, b in zip(begun, stored, strict=True):
                    assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (name, level)
            else:  # fresh Adam: step count 0, first and second moments 0
                assert all(np.all(x == 0) for x in begun), (name, level)
    # The count of Adam's step-k state is k (hand value), the fresh one's 0.
    counts = [x for x in _leaves(_theta_k(imp_runs["s1"]).opt_state)
              if np.issubdtype(x.dtype, np.integer)]
    assert counts and all(np.all(c == REWIND_STEP) for c in counts)


# --------------------------------------------------------------------------- 3. level start


def _numpy_layerwise_masks(params, previous_masks):
    """OpenLTH-style layerwise magnitude pruning, in NumPy: each kernel loses
    ``ceil(rate * remaining)`` of its remaining weights (rate 0.2, output layer 0.1),
    the smallest |w| first, ties by flat index; biases are never pruned."""
    out = {}
    for layer, leaves in params.items():
        out[layer] = {}
        for leaf, w in leaves.items():
            m = np.asarray(previous_masks[layer][leaf])
            if leaf != "kernel":
                out[layer][leaf] = np.ones_like(m)
                continue
            rate = 0.1 if layer == "Dense_2" else 0.2
            flat_w, flat_m = np.abs(np.asarray(w)).ravel(), m.ravel()
            remaining = np.flatnonzero(flat_m)
            cut = math.ceil(rate * remaining.size)
            order = remaining[np.argsort(flat_w[remaining], kind="stable")]
            new = flat_m.copy()
            new[order[:cut]] = False
            out[layer][leaf] = new.reshape(m.shape)
    return out


def test_imp_level_starts_from_masks_times_theta_k(imp_runs):
    run = imp_runs["s2"]
    theta_k = _theta_k(run)
    level0, level1 = run["segments"][0, "imp"], run["segments"][1, "imp"]
    for level, seg in ((0, level0), (1, level1)):
        start = seg["start"]
        assert np.all(np.asarray(start.step) == REWIND_STEP)  # the schedule resumes at k
        for w, m, p in zip(_leaves(theta_k.params), _leaves(seg["masks"]),
                           _leaves(start.params), strict=True):
            expected = np.where(m, w, np.float32(0.0))
            assert p.tobytes() == expected.tobytes(), level
    assert all(np.all(m) for m in _leaves(level0["masks"]))  # level 0 is dense
    # Level 1's masks: the NumPy oracle applied to level 0's trained weights.
    for r in range(2):
        final0 = tree.index(level0["end"].params, r)
        expected = _numpy_layerwise_masks(final0, tree.index(level0["masks"], r))
        got = tree.index(level1["masks"], r)
        for e, g in zip(jax.tree.leaves(expected), _leaves(got), strict=True):
            np.testing.assert_array_equal(g, e)
    kept = sum(int(np.sum(m)) for m in _leaves(tree.index(level1["masks"], 0)))
    assert kept < sum(m.size for m in _leaves(tree.index(level1["masks"], 0)))


# --------------------------------------------------------------------------- 6. S independence


def test_imp_replicate_does_not_depend_on_num_replicates(imp_runs):
    # Masks and accuracies exact: an MLP under 'scan_vmap' runs every member through one
    # block program (member_block 1) whatever S is, so replicate 0 computes the same bits.
    one, two = imp_runs["s1"], imp_runs["s2"]
    for key in ((0, "pretrain"), (0, "imp"), (1, "imp")):
        a, b = one["segments"][key], two["segments"][key]
        if a["masks"] is not None:  # masks: bit for bit
            for x, y in zip(_leaves(tree.index(a["masks"], 0)), _leaves(tree.index(b["masks"], 0)),
                            strict=True):
                np.testing.assert_array_equal(x, y)
        for x, y in zip(_leaves(tree.index(a["end"].params, 0)),
                        _leaves(tree.index(b["end"].params, 0)), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=str(key))

    def replicate0(run):
        rows = [r for r in _records(run["dir"]) if r["replicate"] == 0]
        return {(r.get("level"), r.get("branch"), r["step"], r["split"]): r for r in rows}

    a, b = replicate0(one), replicate0(two)
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        assert a[key]["density"] == b[key]["density"], key
        if a[key]["accuracy"] is not None:
            assert a[key]["accuracy"] == b[key]["accuracy"], key
        np.testing.assert_allclose(a[key]["loss"], b[key]["loss"], rtol=1e-5, err_msg=str(key))
    csv_one = [r for r in _read_csv(one["dir"]) if r["replicate"] == "0"]
    csv_two = [r for r in _read_csv(two["dir"]) if r["replicate"] == "0"]
    assert [(r["level"], r["density"], r["test_accuracy"]) for r in csv_one] == [
        (r["level"], r["density"], r["test_accuracy"]) for r in csv_two]


def _records(workdir):
    return results.MetricsLog(pathlib.Path(workdir) / "metrics.jsonl").read()


def _read_csv(workdir):
    return results.read_csv(pathlib.Path(workdir) / "results.csv")


# --------------------------------------------------------------------------- 7. kill and resume


class _Killed(Exception):
    pass


def test_kill_between_metrics_append_and_checkpoint_save_resumes_identically(
        imp_runs, tmp_path, monkeypatch, on_training):
    """Save #3 is level 0's final one (saves: pretrain 2; level 0: 4, 6; level 1: 4, 6): the
    step-6 records are in metrics.jsonl, checkpoint 6 is not. The resumed run must drop
    them, retrain 4 -> 6 only (from the restored step-4 params and Adam state), and end
    with the uninterrupted run's files, byte for byte. (The S=1 ``rewind_optimizer`` run
    is the reference: its programs are compiled already.)"""
    config = _imp_config(num_replicates=1, rewind_optimizer=True)
    straight = imp_runs["s1_rewind_opt"]["dir"]
    workdir = tmp_path / "killed"
    original_save = checkpoint.Checkpointer.save
    saves = []

    def dies_on_third_save(self, step, **kwargs):
        saves.append(step)
        if len(saves) == 3:
            level0 = [r for r in _records(workdir)
                      if r.get("level") == 0 and r.get("branch") == "imp"]
            assert max(r["step"] for r in level0) == 6  # appended before the save
            raise _Killed
        return original_save(self, step, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", dies_on_third_save)
    with pytest.raises(_Killed):
        imp.run_imp(config, workdir, progress=False)
    assert saves == [2, 4, 6]
    assert not (workdir / "results.csv").exists()
    monkeypatch.setattr(checkpoint.Checkpointer, "save", original_save)

    trained = []
    on_training(lambda call: trained.append(call.num_steps))
    imp.run_imp(config, workdir, progress=False)
    assert trained == [2, 2, 2]  # level 0: 4 -> 6; level 1: 2 -> 4 -> 6
    for name in ("config.json", "metrics.jsonl", "results.csv"):
        assert (workdir / name).read_bytes() == (straight / name).read_bytes(), name
    assert sorted(p.name for p in (workdir / "plots").iterdir()) == sorted(
        p.name for p in (straight / "plots").iterdir())


# --------------------------------------------------------------------------- 4. unrolled_loop


NUM_UNROLLED_STEPS = 3


def test_unrolled_loop_member_does_not_depend_on_what_trains_beside_it(executors):
    """Member 0 beside a member that differs in everything == member 0 alone.

    Under ``'unrolled_loop'`` S = 2 and S = 1 are two programs (two unrolled members vs one;
    XLA:CPU's legacy emitters give other last bits): equal up to float32 rounding. 3 Adam
    steps of a 64-16-10 MLP, sums over <= 64 terms: rtol 1e-6 (8 ulps), atol 1e-7, as the
    other solo comparisons here (measured under the legacy emitters: 1 ulp). The 3 steps
    move the weights by ~3e-2: a member given its neighbour's learning rate (3x) or masks
    would differ by about that much."""
    unrolled = executors["adam"]
    assert unrolled.strategy == "unrolled_loop" and unrolled.mesh(2).size == 1
    init_keys, noise_keys = _keys(2)
    # Member 1 differs in everything a member may: its masks and learning rate.
    masks = _random_masks(unrolled.abstract_params, 2, seed=3)
    masks = jax.tree.map(lambda m: m.at[0].set(True), masks)
    hparams = optim.member_hparams(unrolled.recipe, 2, learning_rate=[1e-2, 3e-2])
    pair, pair_loss = unrolled.train(unrolled.init(init_keys, masks), masks, noise_keys,
                                     num_steps=NUM_UNROLLED_STEPS, hparams=hparams)
    solo, solo_loss = unrolled.train(unrolled.init(init_keys[:1]), None, noise_keys[:1],
                                     num_steps=NUM_UNROLLED_STEPS)
    for a, b in zip(_leaves(tree.index(pair.params, 0)), _leaves(tree.index(solo.params, 0)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(pair_loss[0], solo_loss[0], rtol=1e-6)
    assert not np.allclose(_leaves(pair.params)[0][1], _leaves(pair.params)[0][0])


def test_unrolled_loop_all_true_masks_equal_dense_training(executors, digits):
    """All-True masks under the executor == the unmasked step, run outside the executor."""
    unrolled = executors["adam"]
    init_keys, noise_keys = _keys(2, seed=5)
    ones = jax.tree.map(lambda p: jnp.ones((2, *p.shape), bool), unrolled.abstract_params)
    masked, _ = unrolled.train(unrolled.init(init_keys, ones), ones, noise_keys,
                               num_steps=NUM_UNROLLED_STEPS)
    arrays = jax.device_put(data.device_split(digits.train, digits))
    step = jax.jit(lambda s, k: train.train_steps(
        unrolled.model, unrolled.recipe, arrays, s, None, k, num_steps=NUM_UNROLLED_STEPS,
        unroll=True)[0])
    for r in range(2):
        dense = step(train.init_state(unrolled.model, unrolled.recipe, init_keys[r],
                                      digits.input_shape), noise_keys[r])
        for a, b in zip(_leaves(tree.index(masked.params, r)), _leaves(dense.params),
                        strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- 5. batch_indices


@functools.partial(jax.jit, static_argnames=("num_steps", "num_examples", "batch_size"))
def _batch_indices(key, start, *, num_steps, num_examples, batch_size):
    """``data.batch_indices`` jitted (a traced start step, as a jitted train call sees it)."""
    return data.batch_indices(key, start, num_steps=num_steps, num_examples=num_examples,
                              batch_size=batch_size)


@pytest.mark.parametrize("num_examples,batch_size", [(100, 10), (103, 10)],
                         ids=["no_remainder", "remainder_3"])
def test_batch_indices_epochs_are_permutations_with_drop_last(num_examples, batch_size):
    key = jax.random.key(11)
    per_epoch = num_examples // batch_size
    kept = per_epoch * batch_size
    num_epochs = 4
    idx = np.asarray(_batch_indices(key, 0, num_steps=num_epochs * per_epoch,
                                    num_examples=num_examples, batch_size=batch_size))
    assert idx.shape == (num_epochs * per_epoch, batch_size) and idx.dtype == np.int32
    orders = jax.vmap(lambda e: data.epoch_permutation(key, e, num_examples))(
        jnp.arange(num_epochs))
    seen = set()
    for e in range(num_epochs):
        epoch = idx[e * per_epoch:(e + 1) * per_epoch].ravel()
        # Distinct examples of the split; exactly num_examples % batch_size left out.
        assert len(set(epoch.tolist())) == kept
        assert epoch.min() >= 0 and epoch.max() < num_examples
        if kept == num_examples:
            np.testing.assert_array_equal(np.sort(epoch), np.arange(num_examples))
        # The documented rule: the epoch's order, its last num_examples % batch_size dropped.
        order = np.asarray(orders[e])
        np.testing.assert_array_equal(np.sort(order), np.arange(num_examples))
        np.testing.assert_array_equal(epoch, order[:kept])
        seen |= set(epoch.tolist())
    assert not np.array_equal(idx[:per_epoch], idx[per_epoch:2 * per_epoch])  # fresh orders
    if kept < num_examples:  # which examples are dropped changes between epochs
        assert len(seen) > kept


def test_batch_indices_do_not_depend_on_chunking():
    key = jax.random.key(11)
    kw = dict(num_examples=103, batch_size=10)  # 10 steps per epoch, 3 dropped
    total = 40  # the window of the test above (its program is reused)
    full = np.asarray(_batch_indices(key, 0, num_steps=total, **kw))
    head = np.asarray(_batch_indices(key, 0, num_steps=total // 2, **kw))
    tail = np.asarray(_batch_indices(key, total // 2, num_steps=total // 2, **kw))
    np.testing.assert_array_equal(np.concatenate([head, tail]), full)
    # Many chunks, from the start and from mid-epoch: one step per call (the unrolled
    # strategy's chunks) and 7 steps, whose chunks straddle epoch boundaries.
    for chunk in (1, 7):
        for first in (0, 5):
            pieces = [np.asarray(_batch_indices(key, s, num_steps=chunk, **kw))
                      for s in range(first, total - chunk + 1, chunk)]
            np.testing.assert_array_equal(np.concatenate(pieces),
                                          full[first:first + chunk * len(pieces)],
                                          err_msg=f"chunk={chunk} first={first}")


# --------------------------------------------------------------------------- 8. permutations


def _smallest(name):
    """The smallest model and input each registered name allows (VGG needs 32 x 32)."""
    kwargs = {"widths": (8, 6)} if name in ("mlp", "mlp_bn") else {}
    if name.startswith("resnet"):
        kwargs["width"] = 4
    if name in ("mlp", "lenet_300_100", "mlp_bn"):
        shape = (8,)
    elif name.startswith("transformer"):  # token ids [B, T]
        kwargs.update(d_model=8, num_heads=2, d_mlp=16)
        shape = (4,)
    elif name.startswith("vgg"):
        shape = (32, 32, 3)
    else:
        shape = (8, 8, 3)
    return models.create(name, **kwargs), shape


def _numpy_filled(abstract, seed):
    """Every leaf from NumPy (He-normal kernels; BN scales and variances in [0.5, 1.5])."""
    gen = np.random.default_rng(seed)

    def fill(name, leaf):
        if name.endswith("kernel"):
            scale = math.sqrt(2 / math.prod(leaf.shape[:-1]))
            return jnp.asarray(scale * gen.standard_normal(leaf.shape, np.float32))
        if name.endswith(("scale", "var")):
            return jnp.asarray(gen.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        return jnp.asarray(gen.normal(0, 0.1, leaf.shape), jnp.float32)

    return tree.map_with_name(fill, abstract)


@pytest.mark.parametrize("name", models.NAMES)
def test_every_registered_model_is_permutation_invariant(name):
    """Eval and train mode outputs unchanged, BatchNorm running statistics after the
    train-mode pass (what a train step stores) permuted, for every registered name.

    Run op by op (``jax.disable_jit``): the primitives' compiled kernels are shared by all
    13 models, where jitting compiles each model's program anew (~2x slower here)."""
    model, shape = _smallest(name)
    abstract_params, abstract_stats = jax.eval_shape(
        lambda k: models.init(model, k, shape), jax.random.key(0))
    params = _numpy_filled(abstract_params, 0)
    stats = _numpy_filled(abstract_stats, 1)
    spec = models.permutation_spec(model, params, stats)
    sizes = matching.check_spec(spec, params, stats)
    for seed in range(10):  # every permutation moves something (size-4 ones may not)
        perms = matching.random_perms(jax.random.key(seed), sizes)
        if all(not np.array_equal(p, np.arange(p.size)) for p in perms.values()):
            break
    else:
        raise AssertionError("no key gave non-identity permutations")
    batch = 1 if name.startswith("vgg") else 2  # VGG: 32 x 32 inputs at full width
    x = jnp.asarray(np.random.default_rng(2).normal(size=(batch, *shape)), jnp.float32)
    if name.startswith("transformer"):
        x = jnp.asarray(np.random.default_rng(2).integers(0, model.vocab, (batch, *shape)),
                        jnp.int32)

    def run(params, stats):
        variables = {"params": params, **({"batch_stats": stats} if stats else {})}
        evaluated = model.apply(variables, x, train=False)
        if not stats:
            return evaluated, model.apply(variables, x, train=True), {}
        trained, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return evaluated, trained, updates["batch_stats"]

    with jax.disable_jit():
        evaluated, trained, new_stats = jax.device_get(run(params, stats))
        p_evaluated, p_trained, p_new_stats = jax.device_get(run(
            matching.apply_permutation(spec, perms, params),
            matching.apply_permutation(spec, perms, stats)))
        expected = jax.device_get(matching.apply_permutation(spec, perms, new_stats))
    scale = float(np.max(np.abs(evaluated)))
    assert float(np.std(evaluated)) > 1e-3 * scale  # a live network
    np.testing.assert_allclose(p_evaluated, evaluated, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(p_trained, trained, rtol=1e-4,
                               atol=1e-5 * float(np.max(np.abs(trained))))
    assert models.has_batch_norm(model) == bool(new_stats)
    # The running statistics of the permuted net are the permuted statistics.
    for got, want, before in zip(jax.tree.leaves(p_new_stats), jax.tree.leaves(expected),
                                 _leaves(stats), strict=True):
        assert not np.array_equal(want, before)  # the pass moved them
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
