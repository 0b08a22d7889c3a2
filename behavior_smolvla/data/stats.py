"""Normalisation statistics of the state and action: stored per-episode statistics aggregated as lerobot does, or
exact statistics computed from the data."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BASIC_STATS = ("mean", "std", "min", "max")
QUANTILES = {"q01": 0.01, "q99": 0.99}
"""Quantiles computed when statistics come from the data (lerobot's QUANTILES normalisation uses q01/q99)."""

_QUANTILE_KEY = re.compile(r"^q\d\d$")

def aggregate_stats(per_episode: Sequence[Mapping[str, np.ndarray]], counts: Sequence[int]) -> dict[str, np.ndarray]:
    """Combine per-episode statistics of one feature.

    ``mean`` is count-weighted, ``std`` the pooled standard deviation (within- plus between-episode variance, exact),
    ``min``/``max`` the extremes. Quantiles (``qNN`` present in every episode) are count-weighted averages of the
    episodes' quantiles: an approximation (exact quantiles need the data), the same one lerobot's
    ``aggregate_stats`` makes.

    Args:
        per_episode: one ``{stat: array [D]}`` per episode with at least mean, std, min, max.
        counts: frames per episode.

    Returns:
        ``{stat: float32 [D]}``.
    """
    weights = np.asarray(counts, dtype=np.float64)[:, None]
    total = weights.sum()
    means = np.stack([np.asarray(s["mean"], np.float64).reshape(-1) for s in per_episode])
    stds = np.stack([np.asarray(s["std"], np.float64).reshape(-1) for s in per_episode])
    mean = (means * weights).sum(0) / total
    var = ((stds ** 2 + (means - mean) ** 2) * weights).sum(0) / total
    out = {
        "mean": mean,
        "std": np.sqrt(var),
        "min": np.min(np.stack([np.asarray(s["min"]).reshape(-1) for s in per_episode]), 0),
        "max": np.max(np.stack([np.asarray(s["max"]).reshape(-1) for s in per_episode]), 0),
    }
    quantile_keys = set.intersection(*({k for k in s if _QUANTILE_KEY.match(k)} for s in per_episode))
    for key in sorted(quantile_keys):
        values = np.stack([np.asarray(s[key], np.float64).reshape(-1) for s in per_episode])
        out[key] = (values * weights).sum(0) / total
    return {k: v.astype(np.float32) for k, v in out.items()}


def data_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Exact statistics of ``values`` ``[N, D]``: mean, std (population), min, max, q01, q99; float32 ``[D]``."""
    values64 = values.astype(np.float64)
    out = {
        "mean": values64.mean(0),
        "std": values64.std(0),
        "min": values64.min(0),
        "max": values64.max(0),
    }
    for key, q in QUANTILES.items():
        out[key] = np.quantile(values64, q, axis=0)
    return {k: v.astype(np.float32) for k, v in out.items()}


def stats_usable(stats: Mapping[str, Any], dim: int) -> bool:
    return all(k in stats and np.asarray(stats[k]).size == dim for k in BASIC_STATS)

