"""Experiment entry points (``python -m experiments.<name>``).

:func:`run_main` is every entry point's ``main``: the ``--config`` and
``--workdir`` flags, quiet logging, the allocator tuning
(:func:`tune_allocator`), JAX's persistent compilation cache
(:func:`use_compilation_cache`), the CPU device count, the study, its
printed summary. :func:`use_cpu_devices` (called there once the config is read)
gives XLA one CPU device per core, up to the number of replicates, so the
executor runs one seed per core; a single seed keeps one device, whose
intra-op threads then use every core (benchmarks/train_throughput.py).
"""

import ctypes
import os
import sys


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
    """
    if "LTJAX_COMPILATION_CACHE" in os.environ:
        return os.environ["LTJAX_COMPILATION_CACHE"] or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ltjax", "jax")


def use_compilation_cache(directory: str | None = None, *, min_compile_seconds: float = 0.5,
                          ) -> str | None:
    """Turn on JAX's persistent compilation cache (programs compiled once per machine).

    A second run of the same study, or a resumed one, loads its programs from
    ``directory`` (default :func:`compilation_cache_dir`) instead of compiling
    them again. Returns the folder, or None when turned off.

    Example:
        >>> use_compilation_cache("/tmp/jax-cache")
        '/tmp/jax-cache'
    """
    import jax

    directory = directory or compilation_cache_dir()
    if not directory:
        return None
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


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


def run_main(run_fn, report_fn, *, replicates_fn=lambda config: config.num_replicates) -> None:
    """Parse ``--config`` and ``--workdir``, run ``run_fn(config, workdir)``, then ``report_fn``.

    Args:
      run_fn: the study, e.g. ``ltjax.studies.imp.run_imp``.
      report_fn: ``fn(summary)`` printing the study's summary.
      replicates_fn: ``fn(config)``: how many seeds train at once (sets
        :func:`use_cpu_devices`).

    Example:
        >>> if __name__ == "__main__":
        ...     experiments.run_main(dense.run_train, report)
    """
    from absl import app, flags, logging
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", None, "A config file (experiments/configs).")
    workdir = flags.DEFINE_string("workdir", None, "Where results and checkpoints go.")
    flags.mark_flags_as_required(["config", "workdir"])
    tune_allocator()  # before JAX allocates anything

    def main(argv):
        del argv
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        use_compilation_cache()
        use_cpu_devices(replicates_fn(config.value))
        report_fn(run_fn(config.value, workdir.value))

    app.run(main)

