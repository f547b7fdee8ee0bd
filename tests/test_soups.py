"""Soups and WiSE-FT: NumPy oracles, a greedy oracle over set accuracies, the study end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ltjax import models
from ltjax.core import interpolation, soups, tree
from ltjax.engine import executor as executor_lib
from ltjax.engine import optim, train
from ltjax.io import data


def _tree(seed, scale=1.0):
    gen = np.random.default_rng(seed)
    return {"Dense_0": {"kernel": jnp.asarray(scale * gen.normal(size=(4, 3)), jnp.float32),
                        "bias": jnp.asarray(gen.normal(size=(3,)), jnp.float32)},
            "Dense_1": {"kernel": jnp.asarray(gen.normal(size=(3, 2)), jnp.float32),
                        "bias": jnp.asarray(gen.normal(size=(2,)), jnp.float32)},
            "step": jnp.asarray(seed, jnp.int32)}


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------ uniform


def test_uniform_soup_of_identical_models_is_that_model():
    one = _tree(3)
    _assert_equal(soups.uniform_soup([one] * 7), one)
    _assert_equal(soups.uniform_soup(tree.stack([one] * 5), stacked=True), one)
    _assert_equal(soups.uniform_soup([one] * 3, weights=[0.2, 5.0, 1.3]), one)


def test_uniform_soup_matches_numpy_mean():
    trees = [_tree(s) for s in range(5)]
    soup = soups.uniform_soup(trees)
    stacked = soups.uniform_soup(tree.stack(trees), stacked=True)
    weights = np.array([1.0, 0.0, 2.0, 0.5, 3.0])
    weighted = soups.uniform_soup(trees, weights=weights)
    for path in (("Dense_0", "kernel"), ("Dense_1", "bias")):
        leaves = np.stack([np.asarray(t[path[0]][path[1]], np.float64) for t in trees])
        np.testing.assert_allclose(soup[path[0]][path[1]], leaves.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stacked[path[0]][path[1]], leaves.mean(0), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(weighted[path[0]][path[1]],
                                   np.average(leaves, axis=0, weights=weights), rtol=1e-5,
                                   atol=1e-6)
    assert int(soup["step"]) == 0  # non-float leaves: the first ingredient's
    assert int(weighted["step"]) == 0
    assert int(soups.uniform_soup(trees, weights=[0, 1, 1, 1, 1])["step"]) == 1


# ------------------------------------------------------------------------ greedy


def _one_hot_ingredients(num):
    """Ingredient i is e_i: a soup's nonzero entries name its members."""
    return [{"id": jnp.zeros(num, jnp.float32).at[i].set(1.0)} for i in range(num)]


def _members_of(soup):
    return frozenset(np.flatnonzero(np.asarray(soup["id"]) > 0).tolist())


def _greedy_oracle(accuracy_of, num, strict):
    """Wortsman et al.'s Recipe 1 over sets, written independently of ltjax."""
    singles = [accuracy_of(frozenset([i])) for i in range(num)]
    order = sorted(range(num), key=lambda i: (-singles[i], i))
    members, best = [order[0]], singles[order[0]]
    for i in order[1:]:
        acc = accuracy_of(frozenset(members + [i]))
        if acc > best or (not strict and acc == best):
            members.append(i)
            best = acc
    return members, best, order


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("strict", [False, True])
def test_greedy_soup_matches_oracle_and_never_loses_to_best(seed, strict):
    num = 6
    gen = np.random.default_rng(seed)
    table = {}

    def accuracy_of(members):  # a controlled held-out accuracy for every subset
        if members not in table:  # coarse values make ties frequent
            table[members] = float(gen.integers(5, 10)) / 10
        return table[members]

    calls = []

    def evaluate_fn(soup):
        calls.append(1)
        return accuracy_of(_members_of(soup))

    ingredients = _one_hot_ingredients(num)
    result = soups.greedy_soup(ingredients, evaluate_fn, strict=strict)
    members, best, order = _greedy_oracle(accuracy_of, num, strict)
    assert list(result.members) == members
    assert result.accuracy == best
    assert list(result.order) == order
    assert result.accuracy >= accuracy_of(frozenset([order[0]]))
    assert result.members[0] == order[0]
    assert _members_of(result.soup) == frozenset(members)
    assert len(calls) == num + (num - 1)
    # History: every candidate once, accepted exactly the members.
    assert [h["ingredient"] for h in result.history] == order
    assert [h["ingredient"] for h in result.history if h["accepted"]] == members
    # The soup is bit for bit the uniform soup of its members, in order.
    _assert_equal(result.soup, soups.uniform_soup([ingredients[i] for i in members]))
    # Known accuracies skip the K single evaluations and change nothing.
    calls.clear()
    singles = [accuracy_of(frozenset([i])) for i in range(num)]
    again = soups.greedy_soup(tree.stack(ingredients), evaluate_fn, stacked=True,
                                  strict=strict, accuracies=singles)
    assert again.members == result.members and len(calls) == num - 1


def test_greedy_strict_and_non_strict_differ_on_ties():
    acc = {frozenset([0]): 0.9, frozenset([1]): 0.8, frozenset([0, 1]): 0.9,
           frozenset([0, 1, 2]): 0.95, frozenset([2]): 0.7, frozenset([0, 2]): 0.85}
    ingredients = _one_hot_ingredients(3)
    loose = soups.greedy_soup(ingredients, lambda s: acc[_members_of(s)])
    strict = soups.greedy_soup(ingredients, lambda s: acc[_members_of(s)], strict=True)
    assert loose.members == (0, 1, 2) and loose.accuracy == 0.95  # paper: >= keeps the tie
    assert strict.members == (0,) and strict.accuracy == 0.9  # code: > drops it


def test_greedy_applies_recompute_fn_to_candidates():
    ingredients = [_tree(s) for s in range(3)]
    seen = []

    def recompute(t):
        return {**t, "step": jnp.asarray(-1, jnp.int32)}

    def evaluate_fn(t):
        seen.append(int(t["step"]))
        return 0.5

    result = soups.greedy_soup(ingredients, evaluate_fn, accuracies=[0.5, 0.5, 0.5],
                                   recompute_fn=recompute)
    assert seen == [-1, -1] and result.members == (0, 1, 2)
    assert int(result.soup["step"]) == -1


# ------------------------------------------------------------------------ learned


def _linear_problem():
    """Softmax regression; ingredient 0 solves it, the others are noise."""
    gen = np.random.default_rng(0)
    x = gen.normal(size=(256, 5)).astype(np.float32)
    true = gen.normal(size=(5, 3)).astype(np.float32) * 3
    y = np.argmax(x @ true, axis=1).astype(np.int32)
    good = {"Dense_0": {"kernel": jnp.asarray(true), "bias": jnp.zeros(3)},
            "Dense_1": {"scale": jnp.ones(3)}}
    bad = [jax.tree.map(lambda v, s=s: v + jnp.asarray(
        np.random.default_rng(s).normal(size=v.shape) * 4, jnp.float32), good)
        for s in (1, 2, 3)]

    def loss_fn(params, batch, scale):
        bx, by = batch
        logits = bx @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"][None]
        logits = logits * params["Dense_1"]["scale"][None]
        return optax.softmax_cross_entropy_with_integer_labels(scale * logits, by).mean()

    return [good] + bad, loss_fn, (jnp.asarray(x), jnp.asarray(y))


def test_learned_soup_weights_are_normalised_per_tensor_and_mix_like_numpy():
    ingredients, loss_fn, heldout = _linear_problem()
    result = soups.learned_soup(ingredients, loss_fn, heldout, num_steps=60,
                                    learning_rate=0.1)
    names = ["Dense_0/bias", "Dense_0/kernel", "Dense_1/scale"]
    assert sorted(result.weights) == names  # one weight vector per tensor (the reference's)
    for weights in result.weights.values():
        assert weights.shape == (4,)
        assert np.all(weights >= 0)
        assert weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert result.weights["Dense_0/kernel"][0] > 0.5  # it found the good ingredient
    assert result.losses[-1] < 0.5 * result.losses[0]
    for name in names:
        layer, leaf = name.split("/")
        stacked = np.stack([np.asarray(t[layer][leaf], np.float64) for t in ingredients])
        expected = np.tensordot(result.weights[name].astype(np.float64), stacked, axes=1)
        np.testing.assert_allclose(result.soup[layer][leaf], expected, rtol=1e-5, atol=1e-5)
    # The temperature was learned: the held-out loss at the final weights and scale
    # (NumPy) is the loss the fit reached, and below the same soup's at scale 1.
    def numpy_loss(scale):
        x, y = (np.asarray(v) for v in heldout)
        soup = result.soup
        logits = (x @ np.asarray(soup["Dense_0"]["kernel"]) + np.asarray(soup["Dense_0"]["bias"])
                  ) * np.asarray(soup["Dense_1"]["scale"]) * scale
        logits = logits - logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -log_p[np.arange(len(y)), y].mean()

    assert result.temperature != 1.0
    assert numpy_loss(result.temperature) < numpy_loss(1.0)
    fixed = soups.learned_soup(ingredients, loss_fn, heldout, num_steps=5, temperature=False)
    assert fixed.temperature == 1.0
    # One weight vector per layer, or for the whole model; minibatches; stacked input.
    per_layer = soups.learned_soup(ingredients, loss_fn, heldout, granularity="layer",
                                       num_steps=5)
    assert sorted(per_layer.weights) == ["Dense_0", "Dense_1"]
    whole = soups.learned_soup(tree.stack(ingredients), loss_fn, heldout, stacked=True,
                                   granularity="model", num_steps=5, batch_size=32)
    assert list(whole.weights) == ["all"] and whole.losses.shape == (5,)
    assert whole.weights["all"].sum() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="granularity must be one of"):
        soups.learned_soup(ingredients, loss_fn, heldout, granularity="unit")


# ------------------------------------------------------------------------ WiSE-FT


def test_wise_ft_endpoints_are_exact_and_head_is_kept():
    theta_0, theta_1 = _tree(0), _tree(1)
    assert int(soups.wise_ft(1.0, theta_0, theta_1)["step"]) == 0  # non-floats: theta_0's
    del theta_0["step"], theta_1["step"]
    _assert_equal(soups.wise_ft(0.0, theta_0, theta_1), theta_0)
    _assert_equal(soups.wise_ft(1.0, theta_0, theta_1), theta_1)
    mid = soups.wise_ft(0.25, theta_0, theta_1)
    np.testing.assert_allclose(mid["Dense_0"]["kernel"],
                               0.75 * np.asarray(theta_0["Dense_0"]["kernel"])
                               + 0.25 * np.asarray(theta_1["Dense_0"]["kernel"]), rtol=1e-6)
    for alpha in (0.0, 0.4, 1.0):
        kept = soups.wise_ft(alpha, theta_0, theta_1, keep_head="Dense_1")
        _assert_equal(kept["Dense_1"], theta_1["Dense_1"])
        _assert_equal(kept["Dense_0"], interpolation.lerp(alpha, theta_0, theta_1)["Dense_0"])

    # The sweep is evaluate_path over wise_ft (a small tree: few shapes to compile).
    theta_0 = {"body": theta_0["Dense_0"]["kernel"], "head": theta_0["Dense_1"]["bias"]}
    theta_1 = {"body": theta_1["Dense_0"]["kernel"], "head": theta_1["Dense_1"]["bias"]}

    def evaluate(stacked):  # any function of the weights, per stacked tree
        return {"value": jnp.sum(stacked["body"], axis=(1, 2)) + jnp.sum(stacked["head"] ** 2,
                                                                         axis=1)}

    alphas = np.linspace(0, 1, 5)
    for head in (None, "head"):
        curve = soups.wise_ft_sweep(evaluate, theta_0, theta_1, alphas, keep_head=head)
        expected = evaluate(tree.stack([soups.wise_ft(a, theta_0, theta_1, keep_head=head)
                                        for a in alphas]))["value"]
        # Exact: the same ops on the same shapes, op by op, on bitwise-equal lerps.
        np.testing.assert_array_equal(curve["value"], expected)
    assert curve["value"][0] != float(evaluate(tree.stack([theta_0]))["value"][0])
    # A stack of 1, not 5: other reduce programs, which may add the 12 + 2 terms in another
    # order: within 14 ulps (eps32) of the sum of their magnitudes.
    magnitude = float(jnp.sum(jnp.abs(theta_1["body"])) + jnp.sum(theta_1["head"] ** 2))
    assert curve["value"][-1] == pytest.approx(
        float(evaluate(tree.stack([theta_1]))["value"][0]),
        rel=0, abs=14 * float(np.finfo(np.float32).eps) * magnitude)


# ------------------------------------------------------------------------ bad input


def test_bad_inputs_name_the_argument():
    a, b = _tree(0), _tree(1)
    other = {"Dense_0": a["Dense_0"]}
    with pytest.raises(ValueError, match=r"ingredients\[1\]"):
        soups.uniform_soup([a, other])
    wrong = jax.tree.map(lambda x: x, b)
    wrong["Dense_1"]["kernel"] = jnp.zeros((3, 5))
    with pytest.raises(ValueError, match=r"ingredients\[2\]\['Dense_1/kernel'\]"):
        soups.greedy_soup([a, b, wrong], lambda t: 0.5)
    with pytest.raises(ValueError, match="ingredients is empty"):
        soups.uniform_soup([])
    with pytest.raises(ValueError, match="ingredients is empty"):
        soups.greedy_soup([], lambda t: 0.5)
    with pytest.raises(ValueError, match="ingredients is empty"):
        soups.uniform_soup({"w": jnp.zeros((0, 3))}, stacked=True)
    with pytest.raises(TypeError, match="stacked=True"):
        soups.uniform_soup(a)
    with pytest.raises(ValueError, match="weights"):
        soups.uniform_soup([a, b], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="weights"):
        soups.uniform_soup([a, b], weights=[1.0])
    with pytest.raises(ValueError, match="alpha must lie in"):
        soups.wise_ft(1.5, a, b)
    with pytest.raises(ValueError, match="alpha must lie in"):
        soups.wise_ft(-0.1, a, b)
    with pytest.raises(ValueError, match="alphas must lie in"):
        soups.wise_ft_sweep(lambda t: {}, a, b, [0.0, 1.2])
    with pytest.raises(ValueError, match="keep_head"):
        soups.wise_ft(0.5, a, b, keep_head="Conv_")
    with pytest.raises(ValueError, match="tree_b"):
        soups.wise_ft(0.5, a, other)
    # An empty held-out split: NaN accuracy (0/0) or no rows.
    with pytest.raises(ValueError, match="held-out"):
        soups.greedy_soup([a, b], lambda t: float("nan"))
    with pytest.raises(ValueError, match="accuracies"):
        soups.greedy_soup([a, b], lambda t: 0.5, accuracies=[0.5])
    ingredients, loss_fn, (x, y) = _linear_problem()
    with pytest.raises(ValueError, match="heldout is empty"):
        soups.learned_soup(ingredients, loss_fn, (x[:0], y[:0]))
    with pytest.raises(ValueError, match="heldout"):
        soups.learned_soup(ingredients, loss_fn, (x, y[:10]))
    with pytest.raises(ValueError, match="batch_size"):
        soups.learned_soup(ingredients, loss_fn, (x, y), batch_size=1000)


# ------------------------------------------------------------------------ shifted data


def test_rotation_matches_rot90_and_a_scipy_oracle():
    from scipy import ndimage

    gen = np.random.default_rng(0)
    images = gen.integers(0, 256, size=(6, 9, 9, 2)).astype(np.uint8)
    split = data.Split(images, np.arange(6, dtype=np.int32))
    np.testing.assert_array_equal(data.rotate(split, degrees=0.0).x, images)
    np.testing.assert_array_equal(data.rotate(split, degrees=90.0).x,
                                  np.rot90(images, k=1, axes=(1, 2)))
    floats = data.Split(images.astype(np.float32), split.y)
    varied = data.rotate(floats, degrees=(-40, 40), seed=3)
    angles = np.deg2rad(np.random.default_rng(3).uniform(-40, 40, 6))
    centre = np.arange(9) - 4.0
    rows, cols = np.meshgrid(centre, centre, indexing="ij")
    for n, theta in enumerate(angles):  # scipy's bilinear map with zero padding
        src = [4 + rows * np.cos(theta) + cols * np.sin(theta),
               4 + cols * np.cos(theta) - rows * np.sin(theta)]
        for ch in range(2):
            expected = ndimage.map_coordinates(images[n, ..., ch].astype(np.float64), src,
                                               order=1, mode="grid-constant", cval=0.0)
            np.testing.assert_allclose(varied.x[n, ..., ch], expected, atol=1e-3)
    again = data.rotate(floats, degrees=(-40, 40), seed=3)
    np.testing.assert_array_equal(again.x, varied.x)
    np.testing.assert_array_equal(varied.y, split.y)
    noisy = data.add_noise(split, std=300.0, seed=1)
    assert noisy.x.dtype == np.uint8 and set(np.unique(noisy.x)) <= set(range(256))
    np.testing.assert_array_equal(noisy.x, data.add_noise(split, std=300.0, seed=1).x)
    assert not np.array_equal(noisy.x, data.add_noise(split, std=300.0, seed=2).x)
    with pytest.raises(ValueError, match="images"):
        data.rotate(data.Split(np.zeros((2, 5), np.float32), np.zeros(2, np.int32)), degrees=1.0)
    with pytest.raises(ValueError, match="std"):
        data.add_noise(split, std=-1.0)


# ------------------------------------------------------------------------ ensemble logits


def test_predict_params_agrees_with_evaluate():
    dataset = data.load("digits", validation_size=100)
    model = models.create("mlp", widths=(16,))
    recipe = optim.Recipe(optimizer="adam", learning_rate=1e-3, batch_size=32)
    executor = executor_lib.Executor(model, dataset, recipe, eval_batch_size=64)
    gen = np.random.default_rng(0)  # 3 random replicates (no init or training to compile)
    params = {"Dense_0": {"kernel": gen.normal(size=(3, 64, 16)) / 8, "bias": gen.normal(
        size=(3, 16))}, "Dense_1": {"kernel": gen.normal(size=(3, 16, 10)) / 4,
                                   "bias": np.zeros((3, 10))}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    logits = executor.predict_params(params, {}, "validation")
    assert logits.shape == (3, 100, 10)
    metrics = executor.evaluate_params(params, {}, "validation")
    labels = dataset.validation.y
    accuracy = (logits.argmax(-1) == labels).mean(-1)
    np.testing.assert_allclose(accuracy, metrics["accuracy"], atol=1e-6)
    loss = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), labels[None, :, None],
                               axis=-1).mean((1, 2))
    np.testing.assert_allclose(loss, metrics["loss"], rtol=1e-4)


# ------------------------------------------------------------------------ the study


def _study_config(**overrides):
    from experiments.configs import soups_lenet_digits

    config = soups_lenet_digits.get_config("quick")
    config.model = "mlp"
    config.model_kwargs = {"widths": (16,)}
    config.wise_ft.head = "Dense_1"
    # One group with the pretraining recipe on clean data: pretraining and fine-tuning share
    # one compiled training program (compiling it is most of this test's time).
    config.pretrain.rotation = 0.0
    config.recipe.augment = False
    config.finetune.learning_rate = (config.recipe.learning_rate,)
    config.finetune.label_smoothing = (0.0,)
    config.wise_ft.num_alphas = 4  # = the 4 ingredients: one evaluation program for both
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_finetune_grid_groups_static_recipes_and_orders_ingredients():
    from experiments.configs import soups_lenet_mnist
    from ltjax.studies import soups

    config = soups_lenet_mnist.get_config()
    dataset = data.load("digits")  # only its augmentation and size matter here
    base = optim.Recipe(optimizer="adam", learning_rate=1.2e-3, batch_size=60)
    groups, ingredients = soups.finetune_grid(config, base, 100, dataset)
    assert len(groups) == 3 * 2 * 2 and len(ingredients) == 3 * 2 * 2 * 2 * 2
    assert [g.ends for g in groups] == [(100, 300)] * 12
    first = ingredients[:4]
    assert [(i["epochs"], i["data_order"]) for i in first] == [
        ("1ep", 0), ("1ep", 1), ("3ep", 0), ("3ep", 1)]
    assert groups[1].recipe.label_smoothing == 0.1 and groups[2].recipe.weight_decay == 0.1
    assert groups[4].recipe.learning_rate == 3e-4 and groups[4].recipe.optimizer == "adamw"
    # The paper's schedule: linear warm-up to the peak, cosine decay to 0 at the end of
    # each run (its own length: 100 or 300 steps).
    recipe = groups[4].recipe
    assert (recipe.schedule, recipe.warmup_steps) == ("cosine", 50)
    for end in (100, 300):
        run = soups.run_recipe(recipe, end)
        assert run.total_steps == end
        lr = [float(optim.learning_rate_at(run, t)) for t in (25, 50, (50 + end) // 2, end)]
        assert lr == pytest.approx([1.5e-4, 3e-4, 1.5e-4, 0.0], abs=2e-6)
    with pytest.raises(ValueError, match="longer than its warm-up"):
        soups.run_recipe(recipe, 50)
    assert {(i["group"], i["learning_rate"]) for i in ingredients} == {
        (g.index, g.recipe.learning_rate) for g in groups}
    config.finetune.augment = (False, True)
    with pytest.raises(ValueError, match="finetune.augment"):
        soups.finetune_grid(config, base, 100, dataset)
    config.finetune.augment = (False,)
    config.finetune.epochs = ("1ep", "100it")
    with pytest.raises(ValueError, match="finetune.epochs"):
        soups.finetune_grid(config, base, 100, dataset)


def test_soups_study_end_to_end_and_resume(tmp_path, monkeypatch, drawn, sealed, on_training):
    import shutil

    from ltjax.io import results
    from ltjax.studies import soups

    config = sealed(_study_config(), soups.SoupsSpec)  # no config read after the spec
    summary = soups.run_soups(config, tmp_path / "a", progress=False)
    rows = results.read_csv(tmp_path / "a" / "results.csv")
    models_ = [r["model"] for r in rows]
    assert models_.count("ingredient") == 4  # 1 group x 2 epochs x 2 data orders
    for name in ("pretrained", "uniform", "greedy", "learned", "ensemble"):
        assert name in models_
    assert [r["model"] for r in results.read_csv(tmp_path / "a" / "summary.csv")] == [
        "pretrained", "ingredients_best", "ingredients_worst", "ingredients_mean",
        *soups.SOUPS]
    by = {r["model"]: r for r in summary["rows"]}
    ingredients = [r for r in rows if r["model"] == "ingredient"]
    best_val = max(float(r["validation_accuracy"]) for r in ingredients)
    assert by["ingredients_best"]["validation_accuracy"] == pytest.approx(best_val)
    # The greedy soup is never below its first (best) ingredient on held-out data.
    assert by["greedy"]["validation_accuracy"] >= best_val - 1e-6
    records = results.MetricsLog(tmp_path / "a" / "metrics.jsonl").read()
    steps = [r for r in records if r.get("branch") == "greedy_step"]
    assert len(steps) == 4 and steps[0]["accepted"]
    assert [s["ingredient"] for s in steps if s["accepted"]] == [
        int(m) for m in by["greedy"]["members"].split()]
    weights = [r for r in records if r.get("branch") == "learned_weights"]
    assert {w["layer"] for w in weights} == {"Dense_0/kernel", "Dense_0/bias",
                                             "Dense_1/kernel", "Dense_1/bias"}
    # Each length is its own run from theta_0: the 2-epoch run logs its first epoch too
    # (a continuation of the 1-epoch run would start logging at step 36).
    starts = {}
    for r in records:
        if r.get("branch") == "finetune":
            starts[r["end"]] = min(starts.get(r["end"], r["step"]), r["step"])
    assert starts == {18: 18, 36: 18}
    assert all(sum(w["weights"]) == pytest.approx(1.0, abs=1e-5) for w in weights)
    # WiSE-FT endpoints are exactly the pretrained model and the fine-tune.
    evals = {(r["model"], r["ingredient"], r["split"]): r["accuracy"] for r in records
             if r.get("branch") == "eval"}
    wise = [r for r in records if r.get("branch") == "wise_ft" and r["head"] == "interpolate"]
    assert len(wise) == 4 * 3 * 4  # ingredients x splits x alphas
    for r in wise:
        if r["alpha"] == 0.0:
            assert r["accuracy"] == evals[("pretrained", None, r["split"])]
        if r["alpha"] == 1.0:
            assert r["accuracy"] == evals[("ingredient", r["ingredient"], r["split"])]
    wise_rows = results.read_csv(tmp_path / "a" / "wise_ft.csv")
    assert len(wise_rows) == 4 * 2  # tidy: one row per fine-tune and head mode
    for mean in results.read_csv(tmp_path / "a" / "wise_ft_summary.csv"):
        mine = [float(r["best_shifted_accuracy"]) for r in wise_rows if r["head"] == mean["head"]]
        assert mean["stat"] == "mean" and len(mine) == 4
        assert float(mean["best_shifted_accuracy"]) == pytest.approx(np.mean(mine), abs=1e-12)
    assert (tmp_path / "a" / "plots" / "soups.png").exists()  # a scatter plot
    # The WiSE-FT plot's bold line is the mean over fine-tunes of (test, shifted) per alpha.
    xs, ys = drawn["wise_ft.png"][0, "mean over fine-tunes"]
    first = [r for r in records if r.get("branch") == "wise_ft" and r["head"] == wise[0]["head"]]
    for values, split in ((xs, "test"), (ys, "shifted")):
        by_alpha = {}
        for r in first:
            if r["split"] == split:
                by_alpha.setdefault(r["alpha"], []).append(r["accuracy"])
        np.testing.assert_allclose(values, [100 * np.mean(by_alpha[a]) for a in sorted(by_alpha)],
                                   rtol=1e-6)

    # Killed late in fine-tuning and in the evaluations: the last fine-tune segment has
    # no checkpoint and no records, the greedy soup and the WiSE-FT curves from the third
    # fine-tune on are missing (their checkpoints and records; the third's records were
    # logged, its checkpoint not yet saved). The same call resumes, training only that
    # segment, to the same files, and evaluates only what is missing, once.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    last = max((tmp_path / "b" / "checkpoints" / "finetune_augment_0").iterdir())
    shutil.rmtree(last)
    end = int(last.name.split("_")[1])
    checkpoints = tmp_path / "b" / "checkpoints"
    shutil.rmtree(checkpoints / "evals" / "greedy")
    for folder in (checkpoints / "wise_ft").iterdir():
        if int(folder.name.split("_")[1]) >= 2:
            shutil.rmtree(folder)
    log = results.MetricsLog(tmp_path / "b" / "metrics.jsonl")
    log.keep_only(lambda r: not (
        (r.get("branch") == "finetune" and r["end"] == end)
        or r.get("branch") == "greedy_step" or r.get("model") == "greedy"
        or (r.get("branch") == "wise_ft" and r["ingredient"] >= 3)))
    calls = []
    on_training(lambda call: calls.append((int(np.asarray(call.state.step)[0]),
                                           call.num_steps)))
    resumed = soups.run_soups(config, tmp_path / "b", progress=False)
    # Only the killed run, the 2-epoch one, trains again: from theta_0, an epoch per call.
    assert calls == [(0, end // 2), (end // 2, end // 2)]
    assert resumed == summary
    for name in ("results.csv", "summary.csv", "wise_ft.csv", "wise_ft_summary.csv"):
        assert results.read_csv(tmp_path / "a" / name) == results.read_csv(tmp_path / "b" / name)

    def key(r):
        return sorted((k, str(v)) for k, v in r.items())

    assert sorted(map(key, log.read())) == sorted(map(key, records))


def test_study_bad_inputs(tmp_path):
    from ltjax.studies import soups

    with pytest.raises(ValueError, match="validation_size"):
        soups.run_soups(_study_config(validation_size=0), tmp_path / "a", progress=False)
    config = _study_config()
    config.wise_ft.head = "Dense_7"
    with pytest.raises(ValueError, match="wise_ft.head"):
        soups.run_soups(config, tmp_path / "b", progress=False)
    config = _study_config()
    config.shift.kind = "blur"
    with pytest.raises(ValueError, match="shift.kind"):
        soups.run_soups(config, tmp_path / "c", progress=False)
    config = _study_config()
    config.pretrain.rotation = -10.0
    with pytest.raises(ValueError, match="pretrain.rotation"):
        soups.run_soups(config, tmp_path / "d", progress=False)
    config = _study_config()
    config.pretrain.workdir = str(tmp_path / "no_dense_run")
    with pytest.raises(ValueError, match="pretrain.workdir"):
        soups.run_soups(config, tmp_path / "e", progress=False)
    config = _study_config()  # a cosine warm-up past the shorter run (18 steps), not the 36
    config.finetune.schedule, config.finetune.warmup = "cosine", "25it"
    with pytest.raises(ValueError, match=r"finetune.warmup \(25 steps\) must be shorter"):
        soups.run_soups(config, tmp_path / "f", progress=False)
    # Every field is checked before the workdir is written (the grid, the shift, WiSE-FT's
    # head and the pretraining were checked after it until 2026-12-07; a warm-up longer
    # than a shorter run than the longest was refused after the pretraining).
    assert not any((tmp_path / name).exists() for name in "abcdef")


def test_pretrained_model_loads_from_a_dense_workdir(tmp_path):
    from experiments.configs import lenet_digits
    from ltjax.io import checkpoint, results
    from ltjax.studies import common, soups

    # A dense-training workdir as experiments.train leaves it: config.json and a stacked
    # TrainState [S] at its last step (random weights stand in for trained ones).
    dense_config = lenet_digits.get_config("quick")
    dense_config.model, dense_config.model_kwargs = "mlp", {"widths": (16,)}
    dense_config.validation_size = 300
    results.write_json(tmp_path / "config.json", common.to_dict(dense_config))
    gen = np.random.default_rng(0)
    params = {"Dense_0": {"kernel": gen.normal(size=(2, 64, 16)), "bias": gen.normal(size=(2, 16))},
              "Dense_1": {"kernel": gen.normal(size=(2, 16, 10)), "bias": gen.normal(size=(2, 10))}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    recipe = optim.Recipe(optimizer="adam", learning_rate=1.2e-3, batch_size=60)
    state = train.TrainState(step=jnp.full((2,), 36, jnp.int32), params=params, batch_stats={},
                             opt_state=jax.vmap(optim.make_optimizer(recipe).init)(params))
    with checkpoint.Checkpointer(tmp_path / "checkpoints") as ckpt:
        ckpt.save(18, state=jax.tree.map(jnp.zeros_like, state))
        ckpt.save(36, state=state)
    dataset = data.load("digits", validation_size=300)
    config = _study_config()
    source = soups.pretrained_run_config(config, tmp_path, 1)
    assert source["validation_size"] == 300
    loaded, batch_stats = soups.load_pretrained(source, dataset, tmp_path, 1)
    _assert_equal(loaded, tree.index(params, 1))
    assert batch_stats == {}
    with pytest.raises(ValueError, match="no finished checkpoint"):
        soups.load_pretrained(source, dataset, tmp_path / "nothing", 0)
    config.model_kwargs = {"widths": (8,)}
    with pytest.raises(ValueError, match="model_kwargs"):
        soups.pretrained_run_config(config, tmp_path, 0)
    with pytest.raises(ValueError, match="pretrain.replicate"):
        soups.pretrained_run_config(_study_config(), tmp_path, 2)
    with pytest.raises(ValueError, match="no run"):
        soups.pretrained_run_config(_study_config(), tmp_path / "nothing", 0)
