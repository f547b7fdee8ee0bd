"""BatchNorm-only training and its controls: frozen bitwise, exact trainable counts, the study."""

import jax
import numpy as np
import pytest

from experiments.configs import bn_only_mlp_digits
from ltjax import batchnorm_only, checkpoint, models, results, rng, tree
from ltjax import executor as executor_lib
from ltjax.studies import bn_only, common


def _config(**overrides):
    config = bn_only_mlp_digits.get_config("quick")
    config.model_kwargs.widths = (32, 16)
    config.recipe.total_steps = config.training_steps = "2ep"
    config.eval_every = config.checkpoint_every = "1ep"
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_arms_train_exactly_their_parameters(tmp_path):
    config = _config()
    summary = bn_only.run_bn_only(config, tmp_path, progress=False)
    rows = [r for r in results.read_csv(tmp_path / "results.csv")
            if r["replicate"] not in ("mean", "std")]
    count = {r["arm"]: int(r["trainable_params"]) for r in rows}
    bn, head = 2 * (32 + 16), 16 * 10 + 10
    _, dataset, recipe, executor = common.setup(config, tmp_path)
    assert count == {"full": tree.count(executor.abstract_params), "batchnorm": bn,
                     "batchnorm_output": bn + head, "output": head, "random": bn}
    assert {r["arm"] for r in summary["rows"]} == set(bn_only.ARMS)

    init_keys = rng.init_and_noise(rng.replicate_keys(config.seed, 2))[0]
    start = executor.init(init_keys).params
    for arm, trained_prefixes in (("batchnorm", ("BatchNorm",)), ("output", ("Dense_2",)),
                                  ("random", ())):
        arm_executor = executor_lib.Executor(
            executor.model, dataset, recipe, reparam={
                "batchnorm": batchnorm_only.batchnorm_only(),
                "output": batchnorm_only.output_only("Dense_2"),
                "random": batchnorm_only.random_subset(bn)}[arm])
        like = arm_executor.init(init_keys)
        with checkpoint.Checkpointer(tmp_path / "checkpoints" / arm) as ckpt:
            final, _, _ = ckpt.restore(ckpt.steps()[-1], like_state=like)
        trained = jax.device_get(arm_executor.model_params(final))
        changed, chosen_count = 0, 0
        chosen = like.frozen["chosen"] if arm == "random" else None
        for name, before, after, pick in zip(
                tree.names(start), jax.tree.leaves(start), jax.tree.leaves(trained),
                jax.tree.leaves(chosen) if chosen is not None else [None] * len(tree.names(start)),
                strict=True):
            before, after = np.asarray(before), np.asarray(after)
            if name.startswith(trained_prefixes):
                assert not np.array_equal(before, after), (arm, name)
            elif arm != "random" or "BatchNorm" in name:  # frozen: bitwise unchanged
                np.testing.assert_array_equal(after, before, err_msg=f"{arm} {name}")
            if arm == "random":  # only chosen entries move
                pick = np.asarray(pick)
                assert not np.any((before != after) & ~pick), name
                changed += (before != after).reshape(2, -1).sum(axis=1)
                chosen_count += pick.reshape(2, -1).sum(axis=1)
        if arm == "random":  # exactly the count chosen per member, at different positions
            np.testing.assert_array_equal(chosen_count, [bn, bn])
            # (a chosen hidden bias before BatchNorm has zero gradient: it may not move)
            assert np.all(changed >= 0.8 * bn), changed
            first = np.asarray(chosen["Dense_0"]["kernel"])
            assert not np.array_equal(first[0], first[1])


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
    with pytest.raises(ValueError, match="arms"):
        bn_only.run_bn_only(_config(arms=("full", "bn")), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="no BatchNorm"):
        bn_only.run_bn_only(_config(model="mlp", model_kwargs={"widths": (8,)}),
                            tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
