"""The policy server's wire format: msgpack with numpy arrays, as the BEHAVIOR evaluator speaks it.

The evaluator (OmniGibson ``eval.py`` with ``policy=websocket``) and openpi-style clients use the openpi
msgpack-numpy convention (``omnigibson/learning/utils/network_utils.py``):

* an array travels as the map ``{b"__ndarray__": True, b"data": <raw bytes, C order>, b"dtype": "<f4",
  b"shape": [...]}``;
* a numpy scalar as ``{b"__npgeneric__": True, b"data": <Python value>, b"dtype": "<i8"}``;
* everything else is plain msgpack (``use_bin_type``: Python ``bytes`` are msgpack bin, ``str`` is msgpack str).

The reference client decodes replies with ``b"__ndarray__" in obj``, so :func:`packb` writes those map keys as
bytes; :func:`unpackb` accepts them as bytes or str, and turns every bytes map key into str so that the observation
``{b"robot_r1::proprio": ...}`` and ``{"robot_r1::proprio": ...}`` read the same. Arrays never go through pickle:
object, void (structured) and datetime dtypes are refused both ways.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from behavior_smolvla.errors import ObservationError

__all__ = ["ARRAY_KINDS", "packb", "unpackb"]

ARRAY_KINDS = "biufcUS"
"""numpy dtype kinds that may travel (bool, ints, floats, complex, fixed-width strings): plain bytes, no pickle."""
_SCALAR_KINDS = "biufUS"  # a scalar travels as its Python value, and msgpack has no complex type

_ND = "__ndarray__"
_NP = "__npgeneric__"


def _encode(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy arrays and scalars -> the bytes-keyed maps of the convention."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ARRAY_KINDS:
            raise ObservationError(f"cannot send a numpy array of dtype {obj.dtype}: only {ARRAY_KINDS!r} kinds travel "
                                   "(never pickle); convert it to a numeric array")
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in _SCALAR_KINDS:
            raise ObservationError(f"cannot send a numpy scalar of dtype {obj.dtype}; convert it to a numeric value")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialise {type(obj).__name__} with msgpack")


def packb(obj: Any) -> bytes:
    """Encode a message (dicts, lists, numbers, str, bytes, numpy arrays and scalars) as msgpack bytes.

    Raises:
        ObservationError: an array or scalar of a refused dtype (object, void, datetime; complex scalars).
        TypeError: a value msgpack cannot represent (e.g. a torch tensor: convert it with ``.numpy()`` first).
    """
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def _dtype(value: Any, where: str) -> np.dtype:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if not isinstance(text, str):
        raise ObservationError(f"{where}: dtype must be a numpy dtype string like '<f4', got {value!r}")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise ObservationError(f"{where}: {text!r} is not a numpy dtype string (e.g. '<f4', '|u1')") from None
    if dtype.kind not in ARRAY_KINDS or dtype.hasobject:
        raise ObservationError(f"{where}: dtype {text!r} is refused (only {ARRAY_KINDS!r} kinds; never pickle)")
    return dtype


def _decode_array(obj: dict[Any, Any]) -> np.ndarray:
    dtype = _dtype(obj.get("dtype"), "__ndarray__ map")
    shape = obj.get("shape")
    data = obj.get("data")
    if not isinstance(shape, list | tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ObservationError(f"__ndarray__ map: shape must be a list of non-negative ints, got {shape!r}")
    if not isinstance(data, bytes):
        raise ObservationError(f"__ndarray__ map: data must be msgpack bin (bytes), got {type(data).__name__}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ObservationError(f"__ndarray__ map: {len(data)} data bytes for shape {list(shape)} of {dtype.str} "
                               f"(needs {expected}); the sender's array was truncated or mislabelled")
    # Read-only view of the message buffer: no copy for large images.
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_map(obj: dict[Any, Any]) -> Any:
    """msgpack ``object_hook``: bytes keys -> str, then the array and scalar maps -> numpy values."""
    if any(isinstance(k, bytes) for k in obj):
        obj = {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if obj.get(_ND) is True:
        return _decode_array(obj)
    if obj.get(_NP) is True:
        dtype = _dtype(obj.get("dtype"), "__npgeneric__ map")
        if dtype.kind not in _SCALAR_KINDS:
            raise ObservationError(f"__npgeneric__ map: dtype {dtype.str!r} is refused for a scalar")
        try:
            return dtype.type(obj.get("data"))
        except (TypeError, ValueError, OverflowError):
            raise ObservationError(f"__npgeneric__ map: {obj.get('data')!r} is not a {dtype.str} value") from None
    return obj


def unpackb(data: bytes) -> Any:
    """Decode a msgpack message; array maps become read-only numpy arrays, scalar maps numpy scalars.

    Map keys may be str or bytes (bytes keys are decoded as UTF-8 to str); msgpack str values stay str and bin
    values stay bytes.

    Raises:
        ObservationError: not valid msgpack (truncated, trailing bytes), or an array map with a refused dtype
            (object, void, datetime), a bad shape, or a data length that does not match shape x itemsize.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ObservationError(f"expected a binary msgpack frame, got {type(data).__name__}; send bytes, not text")
    try:
        return msgpack.unpackb(data, object_hook=_decode_map, raw=False, strict_map_key=False)
    except ObservationError:
        raise
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())[:200] or "malformed"
        raise ObservationError(f"the message is not valid msgpack ({type(exc).__name__}: {detail}); "
                               "encode it with msgpack") from None
