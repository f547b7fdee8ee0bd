"""BatchNorm-only training and its controls: frozen bitwise, exact trainable counts, the study."""

import jax
import numpy as np
import pytest

from experiments.configs import bn_only_mlp_digits
from ltjax import models
from ltjax.core import rng, tree
from ltjax.engine import executor as executor_lib
from ltjax.io import checkpoint, results
from ltjax.methods import batchnorm_only
from ltjax.studies import bn_only
from ltjax.studies.spec import RunSpec


def _config(**overrides):
    config = bn_only_mlp_digits.get_config("quick")
    config.model_kwargs.widths = (32, 16)
    config.recipe.total_steps = config.training_steps = "2ep"
    config.eval_every = config.checkpoint_every = "1ep"
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _restored(config, workdir, arm):
    """``arm``'s start params, fresh init state, restored final state and executor (2 members)."""
    run_spec = RunSpec.from_config(config, progress=False)
    dataset, recipe, executor = run_spec.dataset, run_spec.recipe, run_spec.executor
    init_keys = rng.init_and_noise(rng.replicate_keys(config.seed, 2))[0]
    arm_executor = executor_lib.Executor(
        executor.model, dataset, recipe,
        reparam=bn_only.arm_reparams(executor.abstract_params,
                                     random_control=bn_only.random_control(config))[arm])
    like = arm_executor.init(init_keys)
    with checkpoint.Checkpointer(workdir / "checkpoints" / arm) as ckpt:
        final, _, _ = ckpt.restore(ckpt.steps()[-1], like_state=like)
    return executor.init(init_keys).params, like, final, arm_executor


def _column_counts(chosen) -> dict:
    """NumPy oracle: chosen entries per (member, output channel) of every leaf (last axis)."""
    return {name: np.asarray(c).reshape(2, -1, np.shape(c)[-1]).sum(axis=1)
            for name, c in zip(tree.names(chosen), jax.tree.leaves(chosen), strict=True)}


def test_arms_train_exactly_their_parameters(tmp_path, sealed):
    config = _config()
    summary = bn_only.run_bn_only(sealed(config, bn_only.BnOnlySpec), tmp_path, progress=False)
    rows = results.read_csv(tmp_path / "results.csv")
    count = {r["arm"]: int(r["trainable_params"]) for r in rows}
    bn, head = 2 * (32 + 16), 16 * 10 + 10
    run_spec = RunSpec.from_config(config, progress=False)
    executor = run_spec.executor
    assert count == {"full": tree.count(executor.abstract_params), "batchnorm": bn,
                     "batchnorm_output": bn + head, "output": head, "random": bn}
    assert {r["arm"] for r in summary["rows"]} == set(bn_only.ARMS)

    # A global draw beside it: the same count, anywhere outside BatchNorm.
    global_dir = tmp_path / "global"
    global_config = _config(random_control="global", arms=("random",))
    bn_only.run_bn_only(global_config, global_dir, progress=False)
    for workdir, arm, trained_prefixes in (
            (tmp_path, "batchnorm", ("BatchNorm",)), (tmp_path, "output", ("Dense_2",)),
            (tmp_path, "random", ()), (global_dir, "random", ())):
        start, like, final, arm_executor = _restored(
            global_config if workdir == global_dir else config, workdir, arm)
        trained = jax.device_get(arm_executor.model_params(final))
        changed, chosen_count = 0, 0
        chosen = jax.device_get(final.frozen["chosen"]) if arm == "random" else None
        for name, before, after, pick in zip(
                tree.names(start), jax.tree.leaves(start), jax.tree.leaves(trained),
                jax.tree.leaves(chosen) if chosen is not None else [None] * len(tree.names(start)),
                strict=True):
            before, after = np.asarray(before), np.asarray(after)
            if name.startswith(trained_prefixes):
                assert not np.array_equal(before, after), (arm, name)
            elif arm != "random" or "BatchNorm" in name:  # frozen: bitwise unchanged
                np.testing.assert_array_equal(after, before, err_msg=f"{arm} {name}")
            if arm == "random":  # only chosen entries move, bit for bit
                pick = np.asarray(pick)
                assert not np.any((before != after) & ~pick), name
                changed += (before != after).reshape(2, -1).sum(axis=1)
                chosen_count += pick.reshape(2, -1).sum(axis=1)
        if arm == "random":  # exactly the count chosen per member, at different positions
            np.testing.assert_array_equal(chosen_count, [bn, bn])
            # the trained masks are the ones a fresh init draws (deterministic per seed)
            jax.tree.map(np.testing.assert_array_equal, chosen,
                         jax.device_get(like.frozen["chosen"]))
            first = np.asarray(chosen["Dense_0"]["kernel"])
            assert not np.array_equal(first[0], first[1])
            columns = _column_counts(chosen)
            hidden = {"Dense_0/kernel", "Dense_1/kernel"}
            if workdir == tmp_path:  # per channel: 2 in every hidden output channel, 0 elsewhere
                # (a chosen weight of an always-blank digits pixel has zero gradient)
                assert np.all(changed >= 0.9 * bn), changed
                for name, counts in columns.items():
                    np.testing.assert_array_equal(counts, 2 if name in hidden else 0, name)
            else:  # global: not 2 per channel (a hidden bias before BatchNorm may not move)
                assert np.all(changed >= 0.8 * bn), changed
                assert not all(np.all(counts == (2 if name in hidden else 0))
                               for name, counts in columns.items())


def _draw(control, params, keys):
    """The chosen masks of ``control`` for each of ``keys`` (stacked), on the host."""
    init = jax.jit(jax.vmap(control.init, in_axes=(None, 0)))
    return jax.device_get(init(params, keys)[1]["chosen"])


def test_per_channel_draw_counts_determinism_and_uniformity():
    for name, kwargs, shape, per_channel in (("mlp_bn", dict(widths=(7, 5)), (6,), 1),
                                             ("mlp_bn", dict(widths=(7, 5)), (6,), 3),
                                             ("resnet20", dict(width=4), (32, 32, 3), 2)):
        model = models.create(name, **kwargs)
        abstract = jax.eval_shape(lambda k, m=model, s=shape: models.init(m, k, s)[0],
                                  jax.random.key(0))
        params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
        output = batchnorm_only.output_layer(params)
        control = batchnorm_only.random_per_channel(
            per_channel, exclude=f"{batchnorm_only.BATCHNORM_PATTERN}|^{output}/")
        keys = rng.replicate_keys(3, 3)
        chosen = _draw(control, params, keys)
        total = 0
        for path, c in zip(tree.names(chosen), jax.tree.leaves(chosen), strict=True):
            c = np.asarray(c)
            counts = c.reshape(3, -1, c.shape[-1]).sum(axis=1)  # per member and channel
            layer = path.endswith("kernel") and not path.startswith(output + "/")
            np.testing.assert_array_equal(counts, per_channel if layer else 0, path)
            total += c[0].sum()
        # every hidden layer (shortcut convs too) feeds a BatchNorm: BatchNorm's count per channel
        bn = batchnorm_only.trainable_count(batchnorm_only.batchnorm_only(), params)
        assert total == per_channel * bn // 2, (name, per_channel)
        kernels = [np.asarray(c) for path, c in zip(tree.names(chosen), jax.tree.leaves(chosen),
                                                      strict=True) if path.endswith("kernel")]
        assert not all(np.array_equal(k[0], k[1]) for k in kernels)  # members differ
        if name == "mlp_bn":  # deterministic per key; a member's draw ignores the others
            fewer, again = _draw(control, params, keys[1:]), _draw(control, params, keys)
            for c, f, a in zip(jax.tree.leaves(chosen), jax.tree.leaves(fewer),
                               jax.tree.leaves(again), strict=True):
                np.testing.assert_array_equal(np.asarray(c)[1:], f)
                np.testing.assert_array_equal(c, a)
    # uniform over a channel's fan-in: each of 6 inputs is chosen with probability 2/6
    params = {"Dense_0": {"kernel": np.zeros((6, 4), np.float32)}}
    chosen = _draw(batchnorm_only.random_per_channel(2), params,
                   rng.replicate_keys(0, 3000))["Dense_0"]["kernel"]
    np.testing.assert_allclose(chosen.mean(axis=0), 1 / 3, atol=0.04)
    # channels are drawn independently: the same pair in two channels 1 time in 15
    same = np.all(chosen[:, :, 0] == chosen[:, :, 1], axis=1).mean()
    assert abs(same - 1 / 15) < 0.03, same


def test_gamma_share_and_output_layer_and_bad_input(tmp_path):
    params = {"BatchNorm_0": {"scale": np.array([0.001, -0.02, 0.5, 1.0]), "bias": np.zeros(4)},
              "Dense_0": {"kernel": np.zeros((3, 4)), "bias": np.zeros(4)},
              "Dense_1": {"kernel": np.zeros((4, 2)), "bias": np.zeros(2)}}
    assert float(batchnorm_only.gamma_share_below(params, 0.01)) == 0.25
    assert float(batchnorm_only.gamma_share_below(params, 0.05)) == 0.5
    assert batchnorm_only.output_layer(params) == "Dense_1"
    model = models.create("resnet20", width=4)
    abstract = jax.eval_shape(lambda k: models.init(model, k, (32, 32, 3))[0], jax.random.key(0))
    assert batchnorm_only.output_layer(abstract) == "fc"
    # ResNet batch norms (bn1, bn2, shortcut_bn, bn_init) are all BatchNorm parameters.
    n_bn = sum(np.size(x) for name, x in zip(tree.names(abstract), jax.tree.leaves(abstract),
                                              strict=True) if "bn" in name.split("/")[-2])
    assert batchnorm_only.trainable_count(batchnorm_only.batchnorm_only(), abstract) == n_bn
    with pytest.raises(ValueError, match="count"):
        batchnorm_only.random_subset(0)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="per_channel"):
            batchnorm_only.random_per_channel(bad)
    with pytest.raises(ValueError, match="per_channel=4 is more than the 3 entries"):
        batchnorm_only.random_per_channel(4).init(params, jax.random.key(0))
    with pytest.raises(ValueError, match="no kernel"):
        batchnorm_only.random_per_channel(1, exclude="Dense").init(params, jax.random.key(0))
    with pytest.raises(ValueError, match="config.random_control"):
        bn_only.run_bn_only(_config(random_control="layerwise"), tmp_path / "c",
                            progress=False)
    with pytest.raises(ValueError, match="arms"):
        bn_only.run_bn_only(_config(arms=("full", "bn")), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="no BatchNorm"):
        bn_only.run_bn_only(_config(model="mlp", model_kwargs={"widths": (8,)}),
                            tmp_path / "b", progress=False)
    assert not any((tmp_path / d).exists() for d in "abc")
