"""Normalisation statistics of the state and action: stored per-episode statistics aggregated as lerobot does, or
exact statistics computed from the data."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
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
    """Whether stored statistics of one feature can normalise it: mean, std, min and max of ``dim`` finite numbers
    each (statistics computed by lerobot over rows holding a NaN are NaN, and would turn every loss NaN)."""
    try:
        values = [np.asarray(stats[k], dtype=np.float64) for k in BASIC_STATS]
    except (KeyError, TypeError, ValueError):
        return False
    return all(v.size == dim and np.isfinite(v).all() for v in values)



def episode_data_stats(meta: Any, episodes: Sequence[int]) -> Iterator[tuple[int, dict[str, dict[str, np.ndarray]]]]:
    """Exact statistics (:func:`data_stats`) of the state and action of each episode, read one parquet file at a time.

    Only the state and action columns are read, and only one data file is held in memory, so a pass over a whole
    release costs the parquet reads and no more memory than its largest file.

    Args:
        meta: a :class:`~behavior_smolvla.data.meta.DatasetMeta` loaded with its state and action keys.
        episodes: the episodes to read.

    Yields:
        ``(episode, {"observation.state": stats, "action": stats})`` in file order, each stats a dict of float32
        ``[D]`` arrays (mean, std, min, max, q01, q99) plus ``count`` (frames, int64 ``[1]``).

    Raises:
        DatasetError: a missing or unreadable data file, or rows that do not fit the metadata.
    """
    from behavior_smolvla.data.meta import ACTION_KEY, STATE_KEY, column_type_problem, read_parquet
    from behavior_smolvla.errors import DatasetError

    by_file: dict[Any, list[int]] = {}
    for ep in episodes:
        by_file.setdefault(meta.episodes[ep].data_path, []).append(int(ep))
    keys = {STATE_KEY: (meta.state_key, meta.state_dim), ACTION_KEY: (meta.action_key, meta.action_dim)}
    for path, eps in by_file.items():
        table = read_parquet(path, [meta.state_key, meta.action_key], "data file")
        arrays = {}
        for name, (column, dim) in keys.items():
            problem = column_type_problem(column, table.schema.field(column).type,
                                          (meta.features.get(column) or {}).get("dtype"))
            if problem:
                raise DatasetError(f"{path}: {problem}; fix the file or the feature's dtype in meta/info.json")
            values = table.column(column).combine_chunks()
            flat = values.flatten().to_numpy(zero_copy_only=False) if hasattr(values, "flatten") else \
                values.to_numpy(zero_copy_only=False)
            if flat.size != len(values) * dim:
                raise DatasetError(f"column {column!r} of {path} does not hold {dim} numbers per row as "
                                   "meta/info.json declares; fix the file or the feature's shape")
            arrays[name] = flat.reshape(len(values), dim)
        for ep in eps:
            info = meta.episodes[ep]
            if info.row_stop > table.num_rows:
                raise DatasetError(f"episode {ep} should be rows {info.row_start}-{info.row_stop - 1} of {path} but "
                                   f"the file has {table.num_rows} rows; the metadata and data disagree")
            out = {}
            for name, values in arrays.items():
                rows = values[info.row_start:info.row_stop]
                out[name] = {**data_stats(rows), "count": np.array([len(rows)], dtype=np.int64)}
            yield ep, out


def stream_stats(meta: Any, episodes: Sequence[int]) -> dict[str, dict[str, np.ndarray]]:
    """Statistics of the state and action over ``episodes``, recomputed from the data in one streaming pass
    (:func:`episode_data_stats` per episode, combined by :func:`aggregate_stats`).

    mean, std, min and max are exact (pooled over the episodes); q01/q99 are count-weighted averages of the
    episodes' exact quantiles, the approximation lerobot's ``aggregate_stats`` makes.

    Returns:
        ``{"observation.state": {stat: float32 [D]}, "action": {...}}``.
    """
    per: dict[str, list[dict[str, np.ndarray]]] = {}
    counts: list[int] = []
    for _, stats in episode_data_stats(meta, episodes):
        for name, s in stats.items():
            per.setdefault(name, []).append(s)
        counts.append(int(next(iter(stats.values()))["count"][0]))
    return {name: aggregate_stats(values, counts) for name, values in per.items()}


def compare_stats(stored: Mapping[str, Any], computed: Mapping[str, np.ndarray], rtol: float = 0.05,
                  atol: float = 1e-4) -> list[str]:
    """Where stored statistics of one feature disagree with ones computed from the data.

    A dim disagrees when its stored mean, std, min or max differs from the computed one by more than
    ``atol + rtol * scale`` (``scale`` = the computed max - min of that dim, in the feature's units), e.g. a stored
    std of 0 on a dim that moves. Tolerances allow float32 storage and lerobot's own sampling of long episodes.

    Returns:
        One short description per statistic that disagrees (``"std dim 3: stored 0, data 0.41"``), empty when
        they agree; a stored statistic of another length is reported as such.
    """
    scale = np.asarray(computed["max"], np.float64) - np.asarray(computed["min"], np.float64)
    out = []
    for key in BASIC_STATS:
        if key not in stored:
            continue
        s = np.asarray(stored[key], np.float64).reshape(-1)
        c = np.asarray(computed[key], np.float64).reshape(-1)
        if s.shape != c.shape:
            out.append(f"{key}: stored {s.size} values, data has {c.size} dims")
            continue
        bad = np.flatnonzero(~(np.abs(s - c) <= atol + rtol * scale))
        if len(bad):
            d = int(bad[0])
            more = f" (and {len(bad) - 1} more dims)" if len(bad) > 1 else ""
            out.append(f"{key} dim {d}: stored {s[d]:.4g}, data {c[d]:.4g}{more}")
    return out
