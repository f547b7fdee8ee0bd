"""Configs you can discover: variants, data fields, flags, the docs' commands, layer rates.

Every file of ``experiments/configs`` is imported dynamically, so a new
config is covered without being listed here.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from absl import flags

from ltjax import cli, models
from ltjax.core import masking, pruning
from ltjax.io import data
from ltjax.studies import common

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIG_FILES = sorted(p for p in (ROOT / "experiments" / "configs").glob("*.py")
                      if p.name != "__init__.py")


def _module(path: pathlib.Path):
    return importlib.import_module(f"experiments.configs.{path.stem}")


def _spec(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


# --------------------------------------------------------------------------- variants


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_builds_each_variant_and_their_combination(path):
    module = _module(path)
    names = tuple(module.VARIANTS)
    default = module.get_config()
    assert module.get_config("") == default
    for name in names:
        assert module.get_config(name) != default, f"variant {name!r} changes nothing"
    if {"quick", "sample"} <= set(names):
        both = module.get_config("quick,sample")
        assert module.get_config("sample,quick") == both  # order-independent
        assert both not in (module.get_config("quick"), module.get_config("sample"), default)
    with pytest.raises(ValueError, match="unknown config variant") as raised:
        module.get_config("quick,no_such_variant")
    assert "no_such_variant" in str(raised.value)
    for name in names:  # the message lists the valid ones
        assert name in str(raised.value)


def test_every_study_has_a_cifar_sample_variant():
    studies = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if p.stem != "__init__")

    def study_of(stem: str) -> str:  # imp_lenet_digits -> imp; lenet_digits -> train
        return max([s for s in studies if stem.startswith(s + "_")], key=len, default="train")

    with_sample = set()
    for path in CONFIG_FILES:
        module = _module(path)
        if "sample" not in module.VARIANTS:
            continue
        config = module.get_config("sample")
        assert config.dataset.endswith("cifar10_train_first4000.npz") and config.test_size == 400
        model = models.create(config.model, **dict(config.model_kwargs))
        assert models.is_conv(jax.eval_shape(
            lambda k, m=model: models.init(m, k, (32, 32, 3)), jax.random.key(0))[0])
        quick = module.get_config("quick,sample")  # CPU-sized: at most 2 epochs of the sample
        length = quick.get("training_steps") or quick.pretrain.steps
        assert common.steps(length, 3600 // quick.recipe.batch_size) <= 2 * 3600 // 128, path
        with_sample.add(study_of(path.stem))
    # Grokking tickets train on modular arithmetic (token sequences) only: no image variant.
    expected = set(studies) - {"grokking_tickets"}
    assert with_sample == expected, sorted(expected - with_sample)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_has_the_data_fields(path):
    # The fields are ltjax.io.data.load's keyword arguments, plus the dataset itself.
    wanted = {"dataset"} | {n for n, p in inspect.signature(data.load).parameters.items()
                            if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert wanted == {"dataset", "data_dir", "validation_size", "validation_seed", "test_size"}
    config = _module(path).get_config()
    assert wanted <= set(config.keys()), sorted(wanted - set(config.keys()))
    assert config.test_size == 0 or config.dataset.endswith(".npz")


# --------------------------------------------------------------------------- flags


def _parse(*args: str) -> cli.Flags:
    return cli.parse_flags(["prog", *args])


def test_list_fields_take_commas_with_one_rule():
    digits = "experiments/configs/"
    got = _parse(f"--config={digits}stability_lenet_digits.py:quick",
                 "--config.rewind_steps=0it,100it", "--config.path_splits=test",
                 "--print_config").config
    assert got.rewind_steps == ("0it", "100it") and got.path_splits == ("test",)
    got = _parse(f"--config={digits}imp_lenet_digits.py", "--config.controls=reinit,oneshot",
                 "--config.ticket_learning_rates=1.2e-4,1.2e-3", "--print_config").config
    assert got.controls == ("reinit", "oneshot")
    assert got.ticket_learning_rates == (1.2e-4, 1.2e-3)
    got = _parse(f"--config={digits}supermask_lenet_digits.py", "--config.densities=0.1",
                 "--config.weight_inits=signed_constant", "--print_config").config
    assert got.densities == (0.1,) and got.weight_inits == ("signed_constant",)
    assert cli.parse_list("(1, 'a,b')") == (1, "a,b")
    assert cli.parse_list("reinit, 3,True") == ("reinit", 3, True)
    assert cli.parse_list("") == ()


def test_unknown_field_names_the_valid_ones_in_process():
    spec = "--config=experiments/configs/imp_lenet_digits.py:quick"
    with pytest.raises(flags.Error, match=r"did you mean 'pruning.fraction'\?") as raised:
        _parse(spec, "--config.pruning.fracton=0.5", "--workdir=/nonexistent")
    assert "exclude, fraction, include, layer_rates, preset, scope" in str(raised.value)
    with pytest.raises(flags.Error, match="'seed.x'.*no fields"):
        _parse(spec, "--config.seed.x=1", "--print_config")
    with pytest.raises(flags.Error, match="valid variants: quick, sample, imp_only"):
        _parse("--config=experiments/configs/imp_lenet_digits.py:quick,fast", "--print_config")
    with pytest.raises(flags.Error, match="--workdir is required"):
        _parse(spec)


def _run(*args: str, cwd=ROOT, timeout=60, module: bool = True) -> subprocess.CompletedProcess:
    """``python -m <args>`` (``module=False``: ``python <args>``) from the repository root."""
    env = dict(os.environ, LTJAX_DATA_DIR=os.environ.get("LTJAX_DATA_DIR", "../shared/data"))
    return subprocess.run([sys.executable, *(["-m"] if module else []), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_unknown_field_exits_with_a_short_message(tmp_path):
    out = _run("experiments.imp", "--config=experiments/configs/imp_lenet_digits.py:quick",
               "--config.pruning.rate=0.5", f"--workdir={tmp_path / 'w'}")
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "unknown config field 'pruning.rate'" in text
    assert "config.pruning has exclude, fraction, include, layer_rates, preset, scope" in text
    assert "Traceback" not in text and len(text.splitlines()) <= 3
    assert not (tmp_path / "w").exists()


def test_print_config_prints_the_resolved_config_and_writes_nothing(tmp_path):
    out = _run("experiments.stability",
               "--config=experiments/configs/stability_lenet_digits.py:quick,sample",
               "--config.rewind_steps=0it,10it", "--config.seed=3", "--print_config",
               f"--workdir={tmp_path / 'w'}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "rewind_steps = ('0it', '10it')" in lines and "seed = 3" in lines
    assert "model = 'resnet20'" in lines and "training_steps = '10it'" in lines  # both variants
    assert "recipe.batch_size = 128" in lines
    assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------- README


def _sections() -> list[str]:
    """The README's ``## `` sections, then each docs page as one section (a study's page is
    what its README section was before the docs site)."""
    pages = sorted((ROOT / "docs").rglob("*.md"))
    return re.split(r"\n(?=## )", README.read_text()) + [p.read_text() for p in pages]


def _commands(section: str) -> list[list[str]]:
    """Each ``python -m experiments.<x> ...`` of the section's bash blocks, as tokens."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if "python -m experiments." in line:
                tokens = shlex.split(line.split("#")[0])
                start = tokens.index("-m") + 1
                found.append(tokens[start:])
    return found


def _digits(commands: list[list[str]]) -> list[list[str]]:
    return [c for c in commands if any(a.startswith("--config=") and "_digits.py" in a
                                       for a in c)]


def _flag_sets(section: str) -> list[list[str]]:
    """The ``--config.*`` flags of each inline code span of the section's prose."""
    prose = re.sub(r"```.*?```", "", section, flags=re.S)
    sets = []
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if "--config." in span and "<" not in span:
            sets.append([t for t in shlex.split(span) if t.startswith("--config.")])
    return sets


def _readme_cases() -> list[tuple[list[str], list[str]]]:
    """(digits command, inline flags): each flag example applies to a digits command.

    The command is the first of the section's own digits commands, else of the
    README's, whose config has every field the flags name (a subsection may
    speak of another study's fields, e.g. IMP's under pruning at init).
    """
    sections = _sections()
    everywhere = [c for s in sections for c in _digits(_commands(s))]
    cases = []
    for section in sections[1:]:
        commands = _digits(_commands(section))
        cases += [(command, []) for command in commands]
        for flag_set in _flag_sets(section):
            fields = [f.removeprefix("--config.").partition("=")[0] for f in flag_set]
            base = next((c for c in commands + everywhere if all(
                cli.unknown_field(_base_config(c), f) is None for f in fields)), None)
            assert base is not None, f"README: no digits config has the fields of {flag_set}"
            for alternative in _alternatives(flag_set):
                cases.append((base, alternative))
    return cases


def _base_config(command: list[str]) -> ml_collections.ConfigDict:
    return _parse(*[a for a in command if a.startswith("--config=")], "--print_config").config


def _alternatives(flag_set: list[str]) -> list[list[str]]:
    """``--config.scope=global|layerwise`` -> one flag set per alternative; no value: kept."""
    out = [[]]
    for flag in flag_set:
        name, sep, value = flag.partition("=")
        choices = value.split("|") if sep else [None]
        out = [o + ([f"{name}={c}"] if c is not None else [name]) for o in out for c in choices]
    return out


def test_readme_digits_commands_and_flag_examples_parse_and_fit():
    cases = _readme_cases()
    assert len(cases) >= 30  # the README's digits commands and their sections' flag examples
    modules = {c[0] for c, _ in cases}
    assert {"experiments.imp", "experiments.stability", "experiments.train"} <= modules
    fitted = 0
    for command, extra in cases:
        module, args = command[0], command[1:]
        assert importlib.util.find_spec(module) is not None, module
        valued = [a for a in extra if "=" in a]  # a flag without a value: its field exists
        try:
            config = _parse(*args, *valued, "--print_config").config
        except flags.Error as e:
            raise AssertionError(f"README: {shlex.join(command + extra)}: {e}") from None
        # The step fields a study checks against the run's length must fit the digits run.
        ks = [v for a in valued if a.split("=")[0] in ("--config.rewind_step",
                                                        "--config.rewind_steps")
              for v in cli.parse_list(a.split("=", 1)[1])]
        if ks:
            dataset = common.build_dataset(config)
            per_epoch = len(dataset.train) // config.recipe.batch_size
            end = common.steps(config.training_steps, per_epoch)
            for k in ks:
                assert 0 <= common.steps(k, per_epoch) < end, (
                    f"README: {shlex.join(command + extra)}: {k} is past the run's {end} steps")
            fitted += 1
    assert fitted >= 2  # IMP's rewind_step and stability's rewind_steps examples


def test_readme_supermask_digits_command_runs_as_written(tmp_path):
    commands = [c for s in _sections() for c in _digits(_commands(s))
                if c[0] == "experiments.supermask"]
    assert len(commands) == 1
    command = [re.sub(r"^--workdir=.*", f"--workdir={tmp_path / 'sm'}", a) for a in commands[0]]
    out = _run(*command, timeout=120)  # about 8 s
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "sm" / "results.csv").exists()


# --------------------------------------------------------------------------- layer rates


def _abstract(name: str, shape: tuple[int, ...], **kwargs):
    model = models.create(name, **kwargs)
    return jax.eval_shape(lambda k: models.init(model, k, shape), jax.random.key(0))[0]


@pytest.mark.parametrize("name,kwargs,shape,output", [
    ("lenet_300_100", {}, (28, 28, 1), "Dense_2"),
    ("mlp", {"widths": (8,) * 11}, (8, 8, 1), "Dense_11"),  # 'Dense_11' < 'Dense_2' as text
    ("mlp_bn", {"widths": (8, 8)}, (8, 8, 1), "Dense_2"),
    ("conv4", {}, (32, 32, 3), "Dense_2"),
    ("vgg11", {}, (32, 32, 3), "Dense_0"),
    ("resnet20", {}, (32, 32, 3), "fc"),
])
def test_output_layer_and_the_default_rate_of_each_model(name, kwargs, shape, output):
    params = _abstract(name, shape, **kwargs)
    assert models.output_layer(params) == output
    # The output layer is the one whose kernel maps to the 10 classes.
    assert params[output]["kernel"].shape[-1] == 10
    pruning_config = _module(ROOT / "experiments/configs/imp_lenet_mnist.py").get_config().pruning
    selection = masking.prunable(params)
    assert common.layer_rates(pruning_config, params, selection) == {f"^{output}/": 0.1}
    # An output layer left dense has no rate (the default must not fail there).
    dense_output = masking.prunable(params, exclude=f"^{output}/")
    assert common.layer_rates(pruning_config, params, dense_output) == {}


def test_conv10_fc20_preset_rates_and_counts():
    # Conv-2's layout, small: two conv kernels, two hidden dense layers, the output layer.
    shapes = {"Conv_0": (3, 3, 3, 4), "Conv_1": (3, 3, 4, 4), "Dense_0": (64, 16),
              "Dense_1": (16, 16), "Dense_2": (16, 10)}
    keys = jax.random.split(jax.random.key(0), len(shapes))
    params = {name: {"kernel": jax.random.normal(k, shape), "bias": np.zeros(shape[-1])}
              for k, (name, shape) in zip(keys, shapes.items(), strict=True)}
    selection = masking.prunable(params)
    config = ml_collections.ConfigDict({"layer_rates": "@output:0.1", "preset": "conv10_fc20"})
    rates = common.layer_rates(config, params, selection)
    assert rates == {"^Conv_0/kernel$": 0.1, "^Conv_1/kernel$": 0.1, "^Dense_0/kernel$": 0.2,
                     "^Dense_1/kernel$": 0.2, "^Dense_2/kernel$": 0.2, "^Dense_2/": 0.1}
    masks = pruning.prune(pruning.magnitude_scores(params), masking.ones_like(params), selection,
                          fraction=0.5, scope="global", layer_rates=rates)
    for layer, rate in [("Conv_0", 0.1), ("Conv_1", 0.1), ("Dense_0", 0.2), ("Dense_1", 0.2),
                        ("Dense_2", 0.1)]:  # the output layer's own rate wins over the preset
        n = params[layer]["kernel"].size
        removed = n - int(np.sum(masks[layer]["kernel"]))
        assert removed == int(np.ceil(rate * n)), layer
    with pytest.raises(ValueError, match="unknown pruning preset 'openlth'; presets: conv10_fc20"):
        pruning.preset_rates(params, selection, preset="openlth")


def test_a_config_value_error_is_one_line_naming_the_field(tmp_path, capsys):
    from ltjax.studies import dense, imp

    proc = _run("experiments.train", "--config=experiments/configs/lenet_digits.py:quick",
                f"--workdir={tmp_path}/w", "--config.recipe.learning_rate=-0.1", timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "config error: config.recipe: learning_rate must be finite and > 0, got -0.1")
    assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()
    for run_fn, config, field, value, message in (
            (dense.run_dense, "lenet_digits.py:quick", "training_steps", "500",
             "config error: config.training_steps='500': steps must be an int or a string"),
            (imp.run_imp, "imp_lenet_digits.py:quick", "pruning.fraction", 2.0,
             "config error: config.pruning: fraction must be a number in [0, 1), got 2.0")):
        config = cli.load_config(str(ROOT / "experiments/configs" / config))
        node, _, name = field.rpartition(".")
        setattr(config[node] if node else config, name, value)
        with pytest.raises(SystemExit) as stop, cli.one_line_errors(str(tmp_path)):
            run_fn(config, tmp_path / "w", progress=False)
        assert stop.value.code == 2
        assert capsys.readouterr().err.startswith(message)
        assert not (tmp_path / "w").exists()


def test_a_config_of_another_study_or_a_misspelt_path_is_named(tmp_path):
    proc = _run("experiments.imp", "--config=experiments/configs/prune_at_init_lenet_digits.py",
                f"--workdir={tmp_path}/w")
    assert proc.returncode == 1 and "is a config of experiments.prune_at_init, not of " \
        "experiments.imp: run python -m experiments.prune_at_init" in proc.stderr
    with pytest.raises(ValueError, match="did you mean .*configs/imp_lenet_digits.py"):
        cli.load_config(str(ROOT / "experiments/configs/imp_lenet_digit.py"))
    assert cli.config_study("experiments/configs/supermask_zhou_lenet_mnist.py") == \
        "supermask"
    assert cli.config_study("experiments/configs/resnet20_cifar10.py:sample") == "train"
    assert cli.config_study(str(tmp_path / "imp_mine.py")) is None  # a user's own
    assert "--print_config" in cli.FLAGS_HELP


def test_ctrl_c_and_errors_after_work_say_what_to_do(tmp_path, capsys):
    from ltjax.studies import common

    with pytest.raises(SystemExit) as stop, cli.one_line_errors("runs/x"):
        raise KeyboardInterrupt
    assert stop.value.code == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    with pytest.raises(ValueError, match="inside"), cli.one_line_errors("runs/x"):
        common.prepare_workdir(tmp_path, cli.load_config(
            str(ROOT / "experiments/configs/lenet_digits.py")))
        raise ValueError("inside the run: a bug keeps its traceback")
    common.release_workdir_locks()


def test_a_compile_is_said_only_when_the_persistent_cache_did_not_serve_it():
    said: list[str] = []
    cli.report_slow_compiles(said.append, threshold=0.0)
    try:
        def never_cached_before(x):  # a constant no other test compiles
            return jax.numpy.cos(x) * 0.318309886 + 0.5772156649

        x = jax.numpy.arange(5.0)
        jax.jit(never_cached_before)(x).block_until_ready()
        assert "compiled jit(never_cached_before) in 0 s (not in the compilation cache; " \
               "the next run reads it)" in said
        said.clear()
        jax.clear_caches()  # as a new process: the program must come from the disk cache
        jax.jit(never_cached_before)(x).block_until_ready()
        assert not [line for line in said if "never_cached_before" in line]
        cli.report_slow_compiles(said.append, threshold=3600.0)
        jax.clear_caches()
        jax.jit(lambda y: y * 2.718281828 + 1.41421356)(x).block_until_ready()  # fast: unsaid
        assert not said
    finally:  # the listeners stay for the process: silence them for the next tests
        cli.report_slow_compiles(lambda line: None, threshold=float("inf"))


def test_the_ltjax_command_is_python_m_experiments(tmp_path, capsys):
    # `ltjax <study> ...` (console_main, as the installed script calls it) writes the same
    # files and says the same as `python -m experiments.<study> ...`.
    from importlib import metadata

    (script,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "ltjax"]
    assert script.value == "ltjax.cli:console_main"
    flags_ = ["--config=experiments/configs/lenet_digits.py:quick", "--config.num_replicates=1",
              "--config.training_steps=4it", "--config.eval_every=2it",
              "--config.checkpoint_every=2it"]
    command = ("-c", "from ltjax import cli; cli.console_main()")
    by_module = _run("experiments.train", *flags_, f"--workdir={tmp_path / 'm'}")
    by_command = _run(*command, "train", *flags_, f"--workdir={tmp_path / 'c'}", module=False)
    assert by_module.returncode == by_command.returncode == 0, by_command.stderr[-2000:]
    for name in ("results.csv", "metrics.jsonl"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "m" / name).read_bytes()
    assert by_command.stdout.replace(str(tmp_path / "c"), "W") == by_module.stdout.replace(
        str(tmp_path / "m"), "W")
    wrong = _run(*command, "imp", "--config=experiments/configs/lenet_digits.py:quick",
                 f"--workdir={tmp_path / 'x'}", module=False)
    assert wrong.returncode == 1 and "is a config of experiments.train" in wrong.stderr
    with pytest.raises(SystemExit) as typo:  # refused before any module runs: in-process
        cli.console_main(["ipm"])
    assert typo.value.code == 2 and "no study 'ipm'; did you mean 'imp'?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as listing:
        cli.console_main([])
    assert listing.value.code == 2 and "studies: bn_only, data_diet," in capsys.readouterr().out
