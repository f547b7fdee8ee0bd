"""The command line of the studies: what every ``python -m experiments.<study>`` runs.

Each entry point in ``experiments/`` is a few lines: its ``main`` is :func:`run_main`,
which parses the ``--config``, ``--workdir`` and ``--print_config`` flags
(:func:`parse_flags`: an unknown field is refused with the valid ones, list fields take
``a,b``), the multi-process flags (``--distributed``, ``--coordinator_address``,
``--num_processes``, ``--process_id``: :func:`ltjax.io.distributed.initialize`),
``--tensorboard`` (a TensorBoard mirror of the workdir, :mod:`ltjax.io.tensorboard`), then
sets up quiet logging, the allocator tuning (:func:`tune_allocator`), JAX's persistent
compilation cache (:func:`use_compilation_cache`) and the CPU device count, runs the study
and prints its summary. :func:`use_cpu_devices` (called there once the config is read)
gives XLA one CPU device per core, up to the number of replicates, so the executor runs
one seed per core; a single seed keeps one device, whose intra-op threads then use every
core (benchmarks/train_throughput.py).

The library itself never reads flags: this module is the only one that does, and it sits
above the studies. Tests and notebooks use its parts directly:

    >>> from ltjax import cli
    >>> cli.parse_list("0it,100it")
    ('0it', '100it')
"""
from __future__ import annotations

import ast
import contextlib
import ctypes
import dataclasses
import difflib
import importlib.util
import os
import pathlib
import re
import runpy
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def tune_allocator() -> None:
    """Tune glibc's allocator (``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0``, no trimming).

    Call before JAX allocates anything: XLA:CPU then stops page-faulting a
    fresh scratch buffer at every conv step (1.15x on ResNet-20, FACTS.md);
    freed memory is kept by the process rather than returned to the OS.
    Does nothing off Linux/glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc's mallopt parameters
    libc.mallopt(m_arena_max, 1)
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def compilation_cache_dir() -> str | None:
    """Where :func:`use_compilation_cache` keeps compiled programs.

    ``$LTJAX_COMPILATION_CACHE`` if set (an empty value turns the cache off),
    else ``$XDG_CACHE_HOME/ltjax/jax`` or ``~/.cache/ltjax/jax``.

    Example:
        >>> from unittest import mock
        >>> from ltjax import cli
        >>> with mock.patch.dict("os.environ", {"LTJAX_COMPILATION_CACHE": "/tmp/jax-cache"}):
        ...     cli.compilation_cache_dir()
        '/tmp/jax-cache'
    """
    if "LTJAX_COMPILATION_CACHE" in os.environ:
        return os.environ["LTJAX_COMPILATION_CACHE"] or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ltjax", "jax")


def use_compilation_cache(directory: str | None = None, *,
                          min_compile_seconds: float | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache (programs compiled once per machine).

    A second run of the same study, or a resumed one, loads its programs from
    ``directory`` (default :func:`compilation_cache_dir`) instead of compiling
    them again. Programs that compile faster than ``min_compile_seconds``
    (default ``$LTJAX_COMPILATION_CACHE_MIN_SECONDS``, else 0.5) are not kept:
    0 keeps every program (a digits IMP run restarts in 7.1 s instead of
    10 s), at the cost of many small files. Returns the folder, or None when
    turned off.

    Example:
        ``cli.use_compilation_cache("/tmp/jax-cache")`` returns ``'/tmp/jax-cache'``;
        an empty ``$LTJAX_COMPILATION_CACHE`` turns the cache off:

        >>> from unittest import mock
        >>> from ltjax import cli
        >>> with mock.patch.dict("os.environ", {"LTJAX_COMPILATION_CACHE": ""}):
        ...     print(cli.use_compilation_cache())
        None
    """
    import jax

    directory = directory or compilation_cache_dir()
    if not directory:
        return None
    if min_compile_seconds is None:
        min_compile_seconds = float(os.environ.get("LTJAX_COMPILATION_CACHE_MIN_SECONDS", 0.5))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


#: A compilation at least this long (seconds) that the persistent cache did not serve is said.
SLOW_COMPILE_SECONDS = 2.0
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch's
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_compile_state = threading.local()
_compile_report: dict = {}  # 'say' and 'threshold' of report_slow_compiles, once registered


def report_slow_compiles(say: Callable[[str], None] | None = None, *,
                         threshold: float = SLOW_COMPILE_SECONDS) -> None:
    """Say each compilation that took ``threshold`` seconds or more and was not a cache hit.

    A line such as ``compiled jit(train_program) in 41 s (not in the compilation
    cache; the next run reads it)`` appears only when a program was really
    compiled (a first run, a new config), never for one the persistent cache
    served. The listeners (JAX's monitoring events: a cache hit marks the
    compile that follows it) are registered once per process; a later call
    changes where the lines go and the threshold.

    Args:
      say: where the lines go (default: ``tqdm.write``, beside the progress bars).
      threshold: the shortest compile said, in seconds.
    """
    import jax
    import tqdm

    first = not _compile_report
    _compile_report.update(say=say or tqdm.tqdm.write, threshold=threshold)
    if not first:
        return

    def hit(event: str, **kwargs: Any) -> None:
        if event == _CACHE_HIT_EVENT:
            _compile_state.hit = True

    def compiled(event: str, seconds: float, **kwargs: Any) -> None:
        if event != _COMPILE_EVENT:
            return
        was_hit, _compile_state.hit = getattr(_compile_state, "hit", False), False
        if not was_hit and seconds >= _compile_report["threshold"]:
            cached = jax.config.jax_compilation_cache_dir is not None
            _compile_report["say"](
                f"compiled {kwargs.get('fun_name', 'a program')} in {seconds:.0f} s"
                + (" (not in the compilation cache; the next run reads it)" if cached else ""))

    jax.monitoring.register_event_listener(hit)
    jax.monitoring.register_event_duration_secs_listener(compiled)


def use_cpu_devices(num_replicates: int) -> None:
    """One CPU device per core, at most ``num_replicates``; call before JAX computes anything.

    Does nothing when ``XLA_FLAGS`` already sets a device count or the
    backend is up. On GPU/TPU hosts it only affects the (unused) CPU platform.
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    import jax

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        jax.config.update("jax_num_cpu_devices", max(1, min(cores or 1, num_replicates)))
    except RuntimeError:  # the backend is already initialised: keep what it has
        pass


def parse_list(text: str) -> tuple:
    """A list-valued (tuple) config flag's value: one rule for every list field.

    A Python literal is taken as written (``'(1, 2)'``, ``'1e-4,1e-3'``,
    ``"'a,b'"``); otherwise the text is split at commas and each item is a
    number or ``True``/``False``/``None`` if it reads as one, else a string:
    ``--config.rewind_steps=0it,100it`` gives ``('0it', '100it')`` and
    ``--config.controls=reinit,oneshot`` gives ``('reinit', 'oneshot')``. An
    empty value gives ``()``.

    Example:
        >>> from ltjax import cli
        >>> cli.parse_list("0it,100it"), cli.parse_list("0.1"), cli.parse_list("reinit,3")
        (('0it', '100it'), (0.1,), ('reinit', 3))
    """
    text = text.strip()
    if not text:
        return ()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return tuple(_item(item.strip()) for item in text.split(",") if item.strip())
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _item(text: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, (int, float, bool, type(None))) else text


def _list_parser() -> Any:
    """The flag parser of tuple fields (:func:`parse_list`), registered with ml_collections."""
    from ml_collections.config_flags import tuple_parser

    class ListParser(tuple_parser.TupleParser):
        def parse(self, argument: Any) -> tuple:
            if isinstance(argument, str):
                return parse_list(argument)
            if isinstance(argument, list):  # a repeated flag: --config.x=a --config.x=b
                return tuple(v for a in argument for v in self.parse(a))
            return super().parse(argument)

    return ListParser()


def load_config(spec: str) -> Any:
    """The config of ``--config=<file>.py[:<variants>]``: ``get_config(<variants>)`` of the file.

    Raises:
      ValueError: the file is missing or has no ``get_config``, or
        ``get_config`` refuses the variants (its message lists the valid ones).
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        names = [n for n in os.listdir(folder) if n.endswith(".py")] if os.path.isdir(
            folder) else []
        close = difflib.get_close_matches(os.path.basename(path), names, n=3)
        hint = f"; did you mean {', '.join(os.path.join(folder, c) for c in close)}?" if (
            close) else ""
        raise ValueError(f"no config file {path!r}{hint}")
    module_spec = importlib.util.spec_from_file_location("_ltjax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config()")
    return module.get_config(*([arg] if ":" in spec else []))


def unknown_field(config: Any, field: str) -> str | None:
    """Why ``--config.<field>`` names no field of ``config``, or None when it does.

    The message names the field, lists the valid fields at the level where it
    fails (sorted) and suggests a close match (:mod:`difflib`) if there is one.

    Example:
        >>> import ml_collections
        >>> from ltjax import cli
        >>> config = ml_collections.ConfigDict({"pruning": {"fraction": 0.2, "scope": "global"}})
        >>> print(cli.unknown_field(config, "pruning.fracton"))
        unknown config field 'pruning.fracton': config.pruning has fraction, scope;
        did you mean 'pruning.fraction'?
        >>> print(cli.unknown_field(config, "pruning.fraction"))
        None
    """
    node, parts = config, field.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(["config", *parts[:depth]])
        if not hasattr(node, "keys"):
            return (f"unknown config field {field!r}: {where} is {node!r} "
                    f"({type(node).__name__}), it has no fields")
        keys = sorted(str(k) for k in node.keys())
        if part not in keys:
            close = difflib.get_close_matches(part, keys, n=1)
            hint = f"; did you mean {'.'.join([*parts[:depth], close[0]])!r}?" if close else ""
            return (f"unknown config field {field!r}: {where} has "
                    f"{', '.join(keys) or 'no fields'}{hint}")
        node = node[part]
    return None


def format_config(config: Any, prefix: str = "") -> str:
    """``config`` as one ``field = value`` line per leaf, each line a ``--config.<field>`` flag.

    Example:
        >>> import ml_collections
        >>> from ltjax import cli
        >>> config = ml_collections.ConfigDict({"pruning": {"fraction": 0.2}, "seed": 0})
        >>> print(cli.format_config(config))
        pruning.fraction = 0.2
        seed = 0
    """
    lines = []
    for key in sorted(config.keys()):
        value = config[key]
        if hasattr(value, "keys"):
            lines.append(format_config(value, f"{prefix}{key}."))
        else:
            lines.append(f"{prefix}{key} = {value!r}")
    return "\n".join(line for line in lines if line)


#: The bundled configs, ``experiments/configs`` of the repository (a checkout or an
#: editable install; a wheel installs ``experiments`` beside ``ltjax``).
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"


def studies() -> tuple[str, ...]:
    """The studies the ``ltjax`` command runs: the entry modules ``experiments/<study>.py``.

    Example:
        >>> from ltjax import cli
        >>> "imp" in cli.studies() and "train" in cli.studies()
        True
    """
    return tuple(sorted(p.stem for p in CONFIGS.parent.glob("*.py") if p.stem != "__init__"))


def console_main(argv: Sequence[str] | None = None) -> None:
    """The ``ltjax`` command: ``ltjax <study> [flags]`` is ``python -m experiments.<study>
    [flags]`` (the same flags, output, files and exit codes).

    ``ltjax`` alone or ``ltjax --help`` lists the studies; an unknown study exits 2 with
    the closest name.

    Args:
      argv: the arguments after ``ltjax`` (default ``sys.argv[1:]``).

    Example:
        A shell runs ``ltjax imp --config=experiments/configs/imp_lenet_digits.py:quick
        --workdir=runs/imp_q``; from Python, ``cli.console_main(["imp", "--config=...",
        "--workdir=..."])``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    names = studies()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: ltjax <study> --config=<file>[:variants] --workdir=<folder> [flags]\n"
              f"studies: {', '.join(names)}\n"
              "`ltjax <study> --help` lists a study's flags; the same runs as "
              "`python -m experiments.<study>`.")
        raise SystemExit(0 if argv else 2)
    study = argv[0]
    if study not in names:
        close = difflib.get_close_matches(study, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"ltjax: no study {study!r}{hint} (one of {', '.join(names)})", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [f"ltjax {study}", *argv[1:]]  # argv[0] becomes the module's file, as -m
    runpy.run_module(f"experiments.{study}", run_name="__main__", alter_sys=True)


def config_study(spec: str) -> str | None:
    """The entry point (``experiments.<study>``) a bundled config file belongs to.

    Bundled configs are named ``<study>_<model>_<data>.py`` (dense training:
    ``<model>_<data>.py``, entry ``train``); a config file outside
    ``experiments/configs`` belongs to no study in particular (None).

    Example:
        >>> from ltjax import cli
        >>> cli.config_study(f"{cli.CONFIGS}/prune_at_init_lenet_digits.py:quick")
        'prune_at_init'
        >>> cli.config_study(f"{cli.CONFIGS}/lenet_digits.py"), cli.config_study("mine/imp_x.py")
        ('train', None)
    """
    path = pathlib.Path(spec.partition(":")[0]).resolve()
    if path.parent != CONFIGS:
        return None
    longest_first = sorted(studies(), key=len, reverse=True)
    return next((study for study in longest_first if path.stem.startswith(f"{study}_")),
                "train")


@dataclasses.dataclass(frozen=True)
class Flags:
    """The parsed command line of an entry point (:func:`parse_flags`)."""

    config: Any
    workdir: str | None
    print_config: bool
    config_spec: str
    #: ``jax.distributed.initialize``'s arguments when the run spans several processes
    #: (``--distributed`` or any of its three flags), else None.
    distributed: dict | None = None
    #: ``--tensorboard``: mirror the workdir's metrics, config and figures to
    #: ``<workdir>/tensorboard/`` at the end of the run (:mod:`ltjax.io.tensorboard`).
    tensorboard: bool = False


_CONFIG_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=\s]+)")


def _check_argv(argv: Sequence[str]) -> None:
    """Refuse a bad config file or variant and unknown fields before absl parses ``argv``."""
    from absl import flags

    spec = None
    for i, arg in enumerate(argv):
        if re.match(r"^--?config=", arg):
            spec = arg.split("=", 1)[1]
        elif arg in ("--config", "-config") and i + 1 < len(argv):
            spec = argv[i + 1]
    if spec is None:
        return  # absl reports the missing required --config
    try:
        config = load_config(spec)
    except (ValueError, TypeError) as e:
        raise flags.Error(f"--config={spec}: {e}") from None
    for arg in argv:
        match = _CONFIG_OVERRIDE.match(arg)
        if match:
            message = unknown_field(config, match.group(1))
            if message:
                raise flags.Error(f"{message} (--config={spec})")


def define_flags(flag_values: Any = None, *, argv: Sequence[str] | None = None) -> Callable:
    """Define ``--config``, ``--workdir`` and ``--print_config`` on ``flag_values``.

    Args:
      flag_values: an ``absl.flags.FlagValues``; default the global ``FLAGS``.
      argv: the command line the config flag reads its overrides from (default
        ``sys.argv`` at parse time).

    Returns:
      ``parse(argv) -> Flags``: checks ``argv`` (:func:`unknown_field`, the
      config's variants), parses it and checks that ``--workdir`` is given
      unless ``--print_config`` is. Errors are ``absl.flags.Error`` with a
      short message.
    """
    from absl import flags
    from ml_collections import config_flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    config_flags.register_flag_parser_for_type(tuple, _list_parser())
    config = config_flags.DEFINE_config_file(
        "config", None, "A config file (experiments/configs), optionally :variant[,variant].",
        flag_values=flag_values, sys_argv=None if argv is None else list(argv))
    workdir = flags.DEFINE_string("workdir", None, "Where results and checkpoints go.",
                                  flag_values=flag_values)
    print_config = flags.DEFINE_boolean(
        "print_config", False, "Print the resolved config (variants and overrides applied), "
        "one 'field = value' line each, and exit; writes nothing.", flag_values=flag_values)
    flags.mark_flag_as_required("config", flag_values=flag_values)
    tensorboard = flags.DEFINE_boolean(
        "tensorboard", False, "Also write <workdir>/tensorboard/ (scalars per member, the "
        "config, the figures; rebuilt from metrics.jsonl at the end of the run) for "
        "`tensorboard --logdir`. Needs pip install 'ltjax[tensorboard]'.",
        flag_values=flag_values)
    multi = flags.DEFINE_boolean(
        "distributed", False, "Run as one process of a multi-process (multi-host) run: "
        "jax.distributed.initialize, with what the three flags below do not give auto-detected "
        "on a known cluster (Cloud TPU pod, SLURM, Open MPI). Start the same command in every "
        "process.", flag_values=flag_values)
    address = flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (implies --distributed; default "
        "$JAX_COORDINATOR_ADDRESS or auto-detected).", flag_values=flag_values)
    count = flags.DEFINE_integer("num_processes", None, "Processes in the run (implies "
                                 "--distributed; default auto-detected).", lower_bound=1,
                                 flag_values=flag_values)
    index = flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes"
                                 "-1 (implies --distributed; default auto-detected).",
                                 lower_bound=0, flag_values=flag_values)
    join_timeout = flags.DEFINE_integer(
        "distributed_timeout", 300, "Seconds a multi-process run waits for every process to "
        "join; then JAX aborts with DEADLINE_EXCEEDED.", lower_bound=1, flag_values=flag_values)

    def parse(argv: Sequence[str]) -> Flags:
        _check_argv(argv)
        flag_values(list(argv))
        if not print_config.value and not workdir.value:
            raise flags.Error("--workdir is required (or --print_config to only show the config)")
        given = {"coordinator_address": address.value, "num_processes": count.value,
                 "process_id": index.value}
        if (count.value is not None and index.value is not None
                and index.value >= count.value):
            raise flags.Error(f"--process_id={index.value} must be below "
                              f"--num_processes={count.value}")
        multi_process = multi.value or any(v is not None for v in given.values())
        if tensorboard.value and not print_config.value:
            from ltjax.io import tensorboard as tensorboard_lib

            try:  # before any work: a missing writer is a flag error, not a late traceback
                tensorboard_lib.require()
            except ImportError as err:
                raise flags.Error(f"--tensorboard: {err}") from None
        return Flags(config=config.value, workdir=workdir.value, print_config=print_config.value,
                     config_spec=config_flags.get_config_filename(flag_values["config"]),
                     distributed={**given, "timeout_s": join_timeout.value}
                     if multi_process else None, tensorboard=tensorboard.value)

    return parse


def parse_flags(argv: Sequence[str]) -> Flags:
    """Parse an entry point's command line (``argv[0]`` the program) on fresh flags.

    What :func:`run_main` does before running the study, for tests and
    notebooks.

    Raises:
      absl.flags.Error: an unknown field, a bad variant or value, no ``--workdir``.

    Example:
        >>> from ltjax import cli
        >>> flags = cli.parse_flags(["train", f"--config={cli.CONFIGS}/lenet_digits.py:quick",
        ...                          "--config.seed=3", "--print_config"])
        >>> flags.config.seed, flags.workdir, flags.distributed
        (3, None, None)
    """
    from absl import flags

    return define_flags(flags.FlagValues(), argv=argv)(argv)


FLAGS_HELP = """
Flags:
  --config=<file>.py[:variant,...]  the config (experiments/configs); :quick for a smoke run
  --config.<field>=<value>          override any field (lists: a,b)
  --workdir=<folder>                results and checkpoints; rerun the same command to resume
  --print_config                    print the resolved config, one field per line, and exit
  --tensorboard                     also write <workdir>/tensorboard/ (needs ltjax[tensorboard])
  --distributed                     one process of a multi-process run (see --helpfull)
  --helpfull                        every flag
"""


def run_main(run_fn: Callable[..., Any], report_fn: Callable[[Any], None], *,
             replicates_fn: Callable[[Any], int] = lambda config: config.num_replicates,
             ) -> None:
    """Parse the flags, run ``run_fn(config, workdir)``, then ``report_fn``.

    Flags: ``--config=<file>.py[:variant,...]`` with ``--config.<field>=<value>``
    overrides, ``--workdir``, ``--print_config`` (print the resolved config and
    exit without touching the workdir), ``--tensorboard`` (also write
    ``<workdir>/tensorboard/``, :mod:`ltjax.io.tensorboard`), and for a multi-process run
    ``--distributed`` / ``--coordinator_address`` / ``--num_processes`` /
    ``--process_id`` (:func:`ltjax.io.distributed.initialize`; every process runs
    the same command, process 0 writes the files and prints, the others show
    no progress). An unknown field, variant or bad value ends with a
    one-paragraph message, not a traceback.

    Args:
      run_fn: the study, e.g. ``ltjax.studies.imp.run_imp``.
      report_fn: ``fn(summary)`` printing the study's summary.
      replicates_fn: ``fn(config)``: how many seeds train at once (sets
        :func:`use_cpu_devices`).

    Example:
        ``experiments/train.py``, whole but for its docstring:

        >>> from ltjax import cli
        >>> from ltjax.studies import dense
        >>> def report(summary):
        ...     for split, metrics in summary["final"].items():
        ...         print(split, metrics["accuracy"])
        >>> if __name__ == "__main__":
        ...     cli.run_main(dense.run_dense, report)
    """
    from absl import app, logging
    from absl import flags as absl_flags

    parse = define_flags()
    parsed: list[Flags] = []
    main_module = sys.modules["__main__"]  # absl's --help prints its docstring
    main_module.__doc__ = (main_module.__doc__ or "").rstrip() + "\n" + FLAGS_HELP
    tune_allocator()  # before JAX allocates anything

    main_spec = getattr(main_module, "__spec__", None)
    entry = (main_spec.name.rpartition(".")[2] if main_spec is not None
             and main_spec.name.startswith("experiments.") else None)

    def flags_parser(argv: list[str]) -> list[str]:
        try:
            parsed.append(parse(argv))
            belongs = config_study(parsed[-1].config_spec)
            if entry is not None and belongs is not None and belongs != entry:
                raise absl_flags.Error(
                    f"--config={parsed[-1].config_spec} is a config of experiments.{belongs}, "
                    f"not of experiments.{entry}: run python -m experiments.{belongs}")
        except absl_flags.Error as e:  # as absl's own parser: a message, no traceback
            print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
            print("Pass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
            sys.exit(1)
        return argv[:1]

    def main(argv):
        del argv
        flags = parsed[-1]
        if flags.print_config:
            print(f"# --config={flags.config_spec}")
            print(format_config(flags.config))
            return
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        if flags.tensorboard:  # the switch every study_entry reads (ltjax.io.tensorboard.ENV)
            from ltjax.io import tensorboard

            os.environ[tensorboard.ENV] = "1"
        use_compilation_cache()
        report_slow_compiles()
        use_cpu_devices(replicates_fn(flags.config))
        if flags.distributed is None:
            with one_line_errors(flags.workdir):
                summary = run_fn(flags.config, flags.workdir)
            report_fn(summary)
            print(closing_lines(flags.workdir) + _tensorboard_line(flags))
            return
        from ltjax.io import distributed

        distributed.initialize(**flags.distributed)
        writer = distributed.is_writer()
        with one_line_errors(flags.workdir):
            summary = run_fn(flags.config, flags.workdir,
                             **({} if writer else {"progress": False}))
        distributed.sync("end of run")  # every file is written before anyone reads them
        if writer:
            report_fn(summary)
            print(closing_lines(flags.workdir) + _tensorboard_line(flags))

    app.run(main, flags_parser=flags_parser)


def _tensorboard_line(flags: Flags) -> str:
    """The closing hint of a ``--tensorboard`` run: how to look at it."""
    logdir = os.path.join(flags.workdir, "tensorboard")
    return f"\nview it: tensorboard --logdir {logdir}" if flags.tensorboard else ""


@contextlib.contextmanager
def one_line_errors(workdir: str | None) -> Iterator[None]:
    """What a run that stops says: one line and an exit code, not a traceback.

    - a ``ValueError``/``TypeError`` raised before any workdir was written (a
      config value the study refuses, or a workdir of another config):
      ``config error: <message>``, exit 2;
    - another run holding the workdir (:class:`ltjax.studies.common.WorkdirBusyError`):
      ``error: ...``, exit 2;
    - a full or read-only disk (:func:`storage_error`): ``error: ...``, exit 1;
    - Ctrl-C: where it stopped and that the same command resumes, exit 130.

    Anything else keeps its traceback. ``LTJAX_TRACEBACK=1`` shows the traceback
    of every error too.
    """
    from ltjax.studies import common

    before = common.workdirs_prepared()
    verbose = os.environ.get("LTJAX_TRACEBACK", "") not in ("", "0")
    try:
        yield
    except KeyboardInterrupt:
        print(f"\ninterrupted: {workdir} keeps every checkpoint saved so far; rerun the same "
              "command to resume", file=sys.stderr)
        sys.exit(130)
    except common.WorkdirBusyError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, TypeError) as err:
        if common.workdirs_prepared() != before or verbose:
            raise
        print(f"config error: {err} (LTJAX_TRACEBACK=1 shows where)", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 (orbax wraps disk errors in its own)
        message = storage_error(err)
        if message is None or verbose:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def storage_error(err: BaseException) -> str | None:
    """A one-line message for a run stopped by its disk (full, read-only), else None.

    Orbax reports a full disk inside its own error text (``RESOURCE_EXHAUSTED ...
    No space left on device``); the chain of causes is searched too.

    Example:
        >>> from ltjax import cli
        >>> cli.storage_error(OSError(28, "No space left on device", "runs/x/log"))[:50]
        'no space left on device while writing runs/x/log; '
    """
    import errno

    seen = err
    while seen is not None:
        number = getattr(seen, "errno", None)
        path = getattr(seen, "filename", None)
        if number == errno.ENOSPC or "No space left on device" in str(seen):
            return (f"no space left on device{f' while writing {path}' if path else ''}; "
                    "free space and rerun the same command to resume")
        if number in (errno.EROFS, errno.EACCES):
            return (f"cannot write {path or 'the workdir'} ({os.strerror(number)}); make the "
                    "workdir writable (or use another --workdir) and rerun to resume")
        seen = seen.__cause__ or seen.__context__
    return None


def closing_lines(workdir: str | os.PathLike) -> str:
    """What a finished run says last: its warnings (if any) and the files it wrote.

    Example:
        >>> import pathlib
        >>> import tempfile
        >>> from ltjax import cli
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     workdir = pathlib.Path(tmp, "digits")
        ...     for name in ("config.json", "results.csv", "plots/learning_curve.png",
        ...                  "checkpoints/46/state"):
        ...         (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        ...         (workdir / name).touch()
        ...     print(cli.closing_lines(workdir))
        wrote .../digits: config.json, results.csv, plots/learning_curve.png, checkpoints/
    """
    from ltjax.studies import common

    root = pathlib.Path(workdir)
    lines = [f"WARNING: {w['message']}" for w in common.read_warnings(root)]
    if lines:
        lines.append(f"({len(lines)} warning(s), kept in {root / 'warnings.jsonl'})")
    files = sorted(p.name for p in root.iterdir()
                   if p.is_file() and not p.name.startswith(".")) if root.is_dir() else []
    plots = sorted(f"plots/{p.name}" for p in (root / "plots").glob("*.png"))
    folders = [f"{p.name}/" for p in sorted(root.iterdir())
               if p.is_dir() and p.name != "plots"] if root.is_dir() else []
    lines.append(f"wrote {root}: {', '.join(files + plots + folders)}")
    return "\n".join(lines)
