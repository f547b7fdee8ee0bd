"""Interpolation, barriers, soups and WiSE-FT under one name (kept for existing code).

The functions live in :mod:`ltjax.interpolation` (lerp, paths, barriers) and
:mod:`ltjax.soups` (uniform / greedy / learned soups, WiSE-FT); this module
re-exports them so ``averaging.lerp`` and ``averaging.uniform_soup`` keep working.
"""

from ltjax.interpolation import (
    error_barrier,
    evaluate_path,
    interpolate,
    lerp,
    loss_barrier,
)
from ltjax.soups import (
    GreedySoup,
    LearnedSoup,
    greedy_soup,
    layer_name,
    learned_soup,
    uniform_soup,
    wise_ft,
    wise_ft_sweep,
)

__all__ = ["GreedySoup", "LearnedSoup", "error_barrier", "evaluate_path", "greedy_soup",
           "interpolate", "layer_name", "learned_soup", "lerp", "loss_barrier", "uniform_soup",
           "wise_ft", "wise_ft_sweep"]
