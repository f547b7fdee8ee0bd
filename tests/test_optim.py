"""optim: every optimiser x decay mode x schedule against a NumPy oracle; groups; members."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ltjax.engine import optim

STEPS = 3


def _schedule_oracle(kind: str, t: int) -> float:
    """The learning-rate multiplier by hand for the recipes of ``_recipe``."""
    if kind == "constant":
        return 1.0
    if kind == "drops":  # drops at 1 and 2 by 0.5
        return 0.5 ** sum(t >= s for s in (1, 2))
    if kind == "warmup":  # 4 steps of linear warm-up, then a drop at 2 (during warm-up)
        return min(1.0, t / 4) * (0.1 if t >= 2 else 1.0)
    if kind == "cosine":  # warm-up 1, cosine to 0 at 5
        return t / 1 if t < 1 else 0.5 * (1 + math.cos(math.pi * (t - 1) / 4))
    raise AssertionError(kind)


def _recipe(optimizer, mode, kind, **kw):
    sched = {"constant": {}, "drops": dict(lr_drop_steps=(1, 2), lr_drop_factor=0.5),
             "warmup": dict(warmup_steps=4, lr_drop_steps=(2,)),
             "cosine": dict(schedule="cosine", warmup_steps=1, total_steps=5)}[kind]
    return optim.Recipe(optimizer=optimizer, weight_decay_mode=mode, learning_rate=0.1,
                        weight_decay=0.05, **sched, **kw)


def _oracle(recipe, kind, p0, grads, masks):
    """Float64 NumPy: coupled decay, direction, decoupled decay, minus lr; pruned held at 0.

    RMSProp as ``torch.optim.RMSprop``'s step written out (defaults alpha 0.99,
    eps 1e-8 added to the square root, buffer ``b = mu b + g / avg``)."""
    p = np.where(masks, p0, 0.0).astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    b = np.zeros_like(p)
    out = []
    for t, g in enumerate(grads):
        g = np.where(masks, g, 0.0).astype(np.float64)
        wd = recipe.weight_decay
        if recipe.weight_decay_mode == "coupled":
            g = g + wd * p
        if recipe.optimizer in ("adam", "adamw"):
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            d = (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(v / (1 - 0.999 ** (t + 1))) + 1e-8)
        elif recipe.optimizer == "rmsprop":
            v = 0.99 * v + 0.01 * g * g
            d = g / (np.sqrt(v) + 1e-8)
            if recipe.momentum:
                b = recipe.momentum * b + d
                d = b
        elif recipe.momentum:
            m = recipe.momentum * m + g
            d = g + recipe.momentum * m if recipe.nesterov else m
        else:
            d = g
        if recipe.weight_decay_mode == "decoupled":
            d = d + wd * p
        p = np.where(masks, p - recipe.learning_rate * _schedule_oracle(kind, t) * d, 0.0)
        out.append(p.copy())
    return out


CASES = [(o, mode, kind) for (o, mode), kind in itertools.product(
    [("sgd", "coupled"), ("sgd", "decoupled"), ("sgd_momentum", "coupled"),
     ("sgd_nesterov", "coupled"), ("sgd_momentum", "decoupled"), ("adam", "coupled"),
     ("adam", "decoupled"), ("adamw", None), ("rmsprop", "coupled"),
     ("rmsprop", "decoupled"), ("rmsprop_momentum", "coupled")],
    ["constant", "drops", "warmup", "cosine"])]


@pytest.mark.parametrize("name,mode,kind", CASES)
def test_first_steps_match_numpy(name, mode, kind):
    optimizer = name.split("_")[0]
    extra = {"sgd_momentum": dict(momentum=0.9), "rmsprop_momentum": dict(momentum=0.9),
             "sgd_nesterov": dict(momentum=0.9, nesterov=True)}.get(name, {})
    recipe = _recipe(optimizer, mode, kind, **extra)
    rs = np.random.default_rng(0)
    p0 = rs.normal(size=(4, 5)).astype(np.float32)
    grads = [rs.normal(size=(4, 5)).astype(np.float32) for _ in range(STEPS)]
    masks = rs.random((4, 5)) < 0.7
    expected = _oracle(recipe, kind, p0, grads, masks)

    params = {"w": jnp.where(masks, p0, 0.0)}
    jmasks = {"w": jnp.asarray(masks)}
    state = optim.make_optimizer(recipe).init(params)
    for t, g in enumerate(grads):
        tx = optim.make_optimizer(recipe, learning_rate=optim.learning_rate_at(recipe, t),
                                  masks=jmasks)
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params["w"], expected[t], rtol=2e-5, atol=1e-7)
        assert np.all(np.asarray(params["w"])[~masks] == 0.0)


def test_plain_sgd_has_an_update():
    """Regression: optax.chain() of nothing raised 'not enough values to unpack'."""
    recipe = optim.Recipe(optimizer="sgd", learning_rate=0.5)
    params = {"w": jnp.ones(3)}
    tx = optim.make_optimizer(recipe)
    updates, _ = tx.update({"w": jnp.full(3, 2.0)}, tx.init(params), params)
    np.testing.assert_array_equal(updates["w"], np.full(3, -1.0))


def test_schedule_values_and_rewind():
    recipe = optim.Recipe(learning_rate=0.1, warmup_steps=10, lr_drop_steps=(20, 30))
    got = [float(optim.learning_rate_at(recipe, s)) for s in (0, 5, 10, 19, 20, 29, 30)]
    np.testing.assert_allclose(got, [0.0, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6)
    # A per-member peak scales the whole schedule.
    np.testing.assert_allclose(float(optim.learning_rate_at(recipe, 25, peak=0.3)), 0.03,
                               rtol=1e-6)
    cosine = optim.Recipe(learning_rate=1.0, schedule="cosine", warmup_steps=0, total_steps=8)
    np.testing.assert_allclose([float(optim.learning_rate_at(cosine, s)) for s in (0, 4, 8)],
                               [1.0, 0.5, 0.0], atol=1e-6)


def test_frozen_group_is_bitwise_unchanged_and_groups_decay():
    recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.1)
    params = {"a": jnp.arange(1.0, 5.0), "b": jnp.arange(1.0, 5.0), "c": jnp.arange(1.0, 5.0)}
    labels = {"a": optim.FROZEN, "b": optim.DEFAULT, "c": "scores"}
    tx = optim.make_optimizer(recipe, labels=labels, group_decay={"scores": 0.0})
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    for _ in range(3):
        updates, state = tx.update(zero, state, params)
        params = optax.apply_updates(params, updates)
    assert np.asarray(params["a"]).tobytes() == np.arange(1.0, 5.0, dtype=np.float32).tobytes()
    np.testing.assert_array_equal(params["c"], np.arange(1.0, 5.0))  # no decay in its group
    assert np.all(np.asarray(params["b"]) < np.arange(1.0, 5.0))  # decayed with momentum
    with pytest.raises(ValueError, match="group_decay"):
        optim.make_optimizer(recipe, labels={"a": "mystery"})


def test_labels_by_path():
    params = {"BatchNorm_0": {"scale": 1.0, "bias": 0.0}, "Dense_0": {"kernel": 1.0}}
    labels = optim.labels_by_path(params, {optim.FROZEN: r"^(?!BatchNorm)"})
    assert labels == {"BatchNorm_0": {"scale": "default", "bias": "default"},
                      "Dense_0": {"kernel": "frozen"}}
    with pytest.raises(ValueError, match=r"'Conv_9' names no leaf"):
        optim.labels_by_path(params, {optim.FROZEN: "Conv_9"})


def test_member_hparams_validation():
    recipe = optim.Recipe(learning_rate=0.1, weight_decay=1e-4)
    hp = optim.member_hparams(recipe, 3, learning_rate=[0.1, 0.2, 0.3])
    np.testing.assert_allclose(hp.learning_rate, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(hp.weight_decay, [1e-4] * 3)
    with pytest.raises(ValueError, match=r"learning_rate must have one value per member"):
        optim.member_hparams(recipe, 3, learning_rate=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"learning_rate must be > 0.*-0.1"):
        optim.member_hparams(recipe, 2, learning_rate=[0.1, -0.1])
    with pytest.raises(ValueError, match=r"weight_decay must be >= 0"):
        optim.member_hparams(recipe, 2, weight_decay=[0.0, -1e-4])
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        optim.member_hparams(recipe, 1, label_smoothing=[1.0])


def test_recipe_rejects_bad_settings():
    with pytest.raises(ValueError, match="optimizer"):
        optim.Recipe(optimizer="lion")
    with pytest.raises(ValueError, match="adamw"):
        optim.Recipe(optimizer="adamw", weight_decay_mode="coupled")
    with pytest.raises(ValueError, match="weight_decay_mode"):
        optim.Recipe(weight_decay_mode="sometimes")
    with pytest.raises(ValueError, match="total_steps"):
        optim.Recipe(schedule="cosine", warmup_steps=10, total_steps=10)
    with pytest.raises(ValueError, match="nesterov"):
        optim.Recipe(optimizer="adam", nesterov=True)
    with pytest.raises(ValueError, match="lr_drop_steps"):
        optim.Recipe(lr_drop_steps=(10, 10))
    with pytest.raises(ValueError, match="weight_decay"):
        optim.Recipe(weight_decay=float("nan"))
    with pytest.raises(ValueError, match="lr_drop_factor"):
        optim.Recipe(lr_drop_factor=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        optim.Recipe(learning_rate=float("inf"))


def test_momentum_from_dense_training_does_not_revive_pruned_weights():
    """Dense steps fill the momentum buffer; after pruning, the carried buffer must not move a
    pruned weight, and kept weights follow the heavy-ball recursion (NumPy oracle)."""
    recipe = optim.Recipe(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.01)
    rs = np.random.default_rng(1)
    p = rs.normal(size=(6,)).astype(np.float32)
    grads = [rs.normal(size=(6,)).astype(np.float32) for _ in range(4)]
    masks = np.array([True, False, True, True, False, True])
    params, state = {"w": jnp.asarray(p)}, optim.make_optimizer(recipe).init({"w": p})
    ref_p, ref_v = p.astype(np.float64), np.zeros(6)
    for t, g in enumerate(grads):
        pruned = t >= 2
        if pruned and t == 2:  # prune: pruned weights set to zero, the optimiser state kept
            params = {"w": jnp.where(masks, params["w"], 0.0)}
            ref_p = np.where(masks, ref_p, 0.0)
        tx = optim.make_optimizer(recipe, masks={"w": jnp.asarray(masks)} if pruned else None)
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        g64 = np.where(masks, g, 0.0) if pruned else g.astype(np.float64)
        ref_v = 0.9 * ref_v + g64 + 0.01 * ref_p
        step = np.where(masks, ref_v, 0.0) if pruned else ref_v
        ref_p = ref_p - 0.1 * step
        np.testing.assert_allclose(params["w"], ref_p, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(params["w"])[~masks] == 0.0)


def test_rmsprop_is_torchs_eps_outside_the_root_not_optax_default():
    """First RMSProp step of a tiny gradient, by hand: torch's ``g / (sqrt(0.01 g^2) + eps)``
    is ~10 (the ~10x first step of RMSProp); optax's default ``g / sqrt(0.1 g^2 + eps)``
    is ~0.03 for g = 1e-5."""
    recipe = optim.Recipe(optimizer="rmsprop", learning_rate=1.0)
    params = {"w": jnp.zeros(2)}
    g = np.array([1e-5, -3.0], np.float32)
    tx = optim.make_optimizer(recipe)
    updates, _ = tx.update({"w": jnp.asarray(g)}, tx.init(params), params)
    want = -g / (np.sqrt(0.01 * g.astype(np.float64) ** 2) + 1e-8)
    np.testing.assert_allclose(updates["w"], want, rtol=1e-5)
    assert abs(float(updates["w"][0])) > 9.0
