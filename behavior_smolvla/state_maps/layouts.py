"""R1Pro proprioception layouts: every dim of a robot's state vector named, with its body-part group, its BEHAVIOR
standard-track legality and whether its recorded values are reliable.

A layout is data (``kind: layout`` YAML in the ``behavior_smolvla.state_map_files`` package, ``state_maps/`` in a
checkout). Blocks (``name``, ``slice``) expand to one dim each, named ``<block>.<k>``; optional ``parts`` refine the
group / legality per index range. This module also reads the shipped YAML files (layouts and maps) for ``maps``.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from behavior_smolvla.errors import StateMapError

ANY_LAYOUT = "any"
"""The ``layout`` value of a map that applies to any state vector (its slices are resolved by ``StateMap.bind``)."""




@dataclass(frozen=True)
class LayoutDim:
    """One dim of a layout: ``index`` in the state vector, ``name`` (``<block>.<k>``), ``block``, ``group`` (body
    part: base, trunk, left_arm, ...), ``standard_track`` (allowed on the BEHAVIOR standard track) and ``unreliable``
    (a reason string when the release's values for this dim must not be trained on, else ``""``)."""

    index: int
    name: str
    block: str
    group: str
    standard_track: bool
    unreliable: str = ""


@dataclass(frozen=True)
class Layout:
    """A robot's state vector as named dims (loaded from a ``kind: layout`` YAML file).

    ``blocks`` maps a block name to its absolute ``(start, stop)`` index range; ``dims`` has ``state_dim`` entries.
    """

    name: str
    state_dim: int
    description: str
    source: str
    dims: tuple[LayoutDim, ...]
    blocks: dict[str, tuple[int, int]]
    path: str

    @property
    def names(self) -> list[str]:
        """Names of all dims, in index order."""
        return [d.name for d in self.dims]


def data_dir() -> Any:
    """The folder of the shipped YAML files (a ``Traversable``: a real folder for wheels and editable installs)."""
    try:
        return importlib.resources.files("behavior_smolvla.state_map_files")
    except ModuleNotFoundError:
        # A bare checkout on sys.path without `pip install -e .`: the package-dir mapping is not active.
        return Path(__file__).resolve().parents[1] / "state_maps"


def read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise StateMapError(f"{where}{line}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    if not isinstance(doc, dict):
        raise StateMapError(f"{where}: expected a YAML mapping with kind/name/entries, got {type(doc).__name__}")
    return doc


@functools.lru_cache(maxsize=1)
def shipped_docs() -> tuple[dict[str, tuple[dict[str, Any], str]], dict[str, tuple[dict[str, Any], str]]]:
    """(layouts, maps): name -> (parsed YAML, path) of every shipped file."""
    layouts: dict[str, tuple[dict[str, Any], str]] = {}
    maps: dict[str, tuple[dict[str, Any], str]] = {}
    for item in sorted(data_dir().iterdir(), key=lambda t: t.name):
        if not item.name.endswith((".yaml", ".yml")):
            continue
        where = str(item)
        doc = read_yaml(item.read_text(encoding="utf-8"), where)
        kind = doc.get("kind")
        target = {"layout": layouts, "map": maps}.get(kind)
        if target is None:
            raise StateMapError(f"{where}: 'kind' must be 'layout' or 'map', got {kind!r}")
        name = doc.get("name")
        if not isinstance(name, str) or not name:
            raise StateMapError(f"{where}: missing 'name'")
        if name in target:
            raise StateMapError(f"{where}: {kind} name {name!r} is also used by {target[name][1]}; rename one")
        target[name] = (doc, where)
    return layouts, maps


def list_layouts() -> list[str]:
    """Names of the shipped layouts (e.g. ``["r1pro-2025", "r1pro-2026"]``)."""
    return sorted(shipped_docs()[0])


@functools.lru_cache(maxsize=None)
def load_layout(name: str) -> Layout:
    """The shipped layout called ``name``. Raises :class:`StateMapError` when unknown or malformed."""
    layouts = shipped_docs()[0]
    if name not in layouts:
        known = ", ".join([*sorted(layouts), ANY_LAYOUT])
        raise StateMapError(f"unknown layout {name!r}: use one of {known}")
    doc, where = layouts[name]
    return _parse_layout(doc, where)


def check_keys(obj: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise StateMapError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def slice_indices(spec: Any, length: int, where: str) -> list[int]:
    """Indices selected by ``spec`` (``"a:b[:c]"``, an int, or a list of ints) in a range of ``length``.

    Unlike Python slicing, a bound past ``length`` is an error, not silently clipped: a map that asks for a dim the
    layout does not have is wrong, not short.
    """
    if isinstance(spec, bool):
        raise StateMapError(f"{where}: slice must be 'a:b', 'a:b:c', an int or a list of ints, got {spec!r}")
    if isinstance(spec, int):
        spec = [spec]
    if isinstance(spec, str) and ":" not in spec:
        try:
            spec = [int(spec)]
        except ValueError:
            raise StateMapError(f"{where}: slice {spec!r} is not 'a:b', 'a:b:c' or an int") from None
    if isinstance(spec, list):
        if not spec or not all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
            raise StateMapError(f"{where}: slice list must be non-empty ints, got {spec!r}")
        bad = [i for i in spec if not 0 <= i < length]
        if bad:
            raise StateMapError(f"{where}: index {bad[0]} is out of range 0..{length - 1}; fix the slice")
        return list(spec)
    if not isinstance(spec, str):
        raise StateMapError(f"{where}: slice must be 'a:b', 'a:b:c', an int or a list of ints, got {spec!r}")
    parts = spec.split(":")
    if len(parts) > 3:
        raise StateMapError(f"{where}: slice {spec!r} has more than two ':'")
    try:
        start, stop, step = (int(p) if p.strip() else None for p in (*parts, "")[:3])
    except ValueError:
        raise StateMapError(f"{where}: slice {spec!r} is not 'a:b' or 'a:b:c' with integer bounds") from None
    start = 0 if start is None else start
    stop = length if stop is None else stop
    step = 1 if step is None else step
    if start < 0 or stop < 0 or step <= 0:
        raise StateMapError(f"{where}: slice {spec!r} must use non-negative bounds and a positive step")
    if stop > length or start >= length:
        raise StateMapError(
            f"{where}: slice {spec!r} is out of range for {length} dims (valid bounds: 0..{length}); fix the slice"
        )
    if start >= stop:
        raise StateMapError(f"{where}: slice {spec!r} selects nothing; use start < stop")
    return list(range(start, stop, step))


def _parse_layout(doc: dict[str, Any], where: str) -> Layout:
    check_keys(doc, ("kind", "name", "state_dim", "description", "source", "blocks"), where)
    state_dim = doc.get("state_dim")
    if not isinstance(state_dim, int) or state_dim <= 0:
        raise StateMapError(f"{where}: 'state_dim' must be a positive int")
    dims: list[LayoutDim | None] = [None] * state_dim
    blocks: dict[str, tuple[int, int]] = {}
    for b, block in enumerate(doc.get("blocks") or []):
        bwhere = f"{where} blocks[{b}]"
        if not isinstance(block, dict):
            raise StateMapError(f"{bwhere}: expected a mapping with name/slice")
        check_keys(block, ("name", "slice", "group", "standard_track", "unreliable", "parts"), bwhere)
        name = block.get("name")
        if not isinstance(name, str) or not name or name in blocks:
            raise StateMapError(f"{bwhere}: needs a unique 'name', got {name!r}")
        indices = slice_indices(block.get("slice"), state_dim, bwhere)
        if indices != list(range(indices[0], indices[-1] + 1)):
            raise StateMapError(f"{bwhere}: a block slice must be contiguous ('a:b')")
        blocks[name] = (indices[0], indices[-1] + 1)
        n = len(indices)
        group = [block.get("group", name)] * n
        legal = [bool(block.get("standard_track", True))] * n
        for p, part in enumerate(block.get("parts") or []):
            pwhere = f"{bwhere} parts[{p}]"
            if not isinstance(part, dict):
                raise StateMapError(f"{pwhere}: expected a mapping with slice/group/standard_track")
            check_keys(part, ("slice", "group", "standard_track"), pwhere)
            for k in slice_indices(part.get("slice"), n, pwhere):
                group[k] = part.get("group", group[k])
                legal[k] = bool(part.get("standard_track", legal[k]))
        unreliable = str(block.get("unreliable") or "")
        for k, i in enumerate(indices):
            if dims[i] is not None:
                raise StateMapError(f"{bwhere}: dim {i} is already in block {dims[i].block}; blocks must not overlap")
            dims[i] = LayoutDim(i, f"{name}.{k}", name, str(group[k]), legal[k], unreliable)
    missing = [i for i, d in enumerate(dims) if d is None]
    if missing:
        raise StateMapError(f"{where}: dims {missing[0]}.. are in no block; blocks must cover 0:{state_dim}")
    return Layout(
        name=str(doc["name"]),
        state_dim=state_dim,
        description=" ".join(str(doc.get("description", "")).split()),
        source=" ".join(str(doc.get("source", "")).split()),
        dims=tuple(d for d in dims if d is not None),
        blocks=blocks,
        path=where,
    )


