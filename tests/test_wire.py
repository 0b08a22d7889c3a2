"""The msgpack-numpy wire format of the policy server, against an evaluator-style codec written here.

The reference below follows the convention the BEHAVIOR evaluator uses (openpi's msgpack-numpy: array maps with
bytes keys, recognised by ``b"__ndarray__" in obj``); it is an independent oracle, not the module under test.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from behavior_smolvla.errors import ObservationError
from behavior_smolvla.serving.wire import packb, unpackb


def _evaluator_encode(obj):
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _evaluator_decode(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def evaluator_packb(obj) -> bytes:
    return msgpack.packb(obj, default=_evaluator_encode)


def evaluator_unpackb(data: bytes):
    return msgpack.unpackb(data, object_hook=_evaluator_decode)


ARRAYS = [
    np.arange(23, dtype=np.float32),
    np.arange(12, dtype=np.float64).reshape(3, 4),
    np.random.default_rng(0).integers(0, 255, (2, 5, 7, 4), dtype=np.uint8),
    np.array([[7]], dtype=np.int64),
    np.array(3.5, dtype=np.float32),  # 0-d
    np.zeros((0, 23), dtype=np.float32),  # empty
    np.array([True, False]),
    np.arange(6, dtype=">i4"),  # big-endian: the dtype string carries the byte order
    np.array([1 + 2j], dtype=np.complex64),
    np.array(["pick", "place"]),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype.str}{list(a.shape)}")
def test_arrays_round_trip_exactly(array):
    out = unpackb(packb({"x": array}))["x"]
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_non_contiguous_array_is_sent_in_c_order():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    view = base[:, ::2].T  # neither C- nor F-contiguous
    np.testing.assert_array_equal(unpackb(packb(view)), view)


def test_numpy_scalars_round_trip():
    message = {"i": np.int64(-5), "f": np.float32(0.25), "b": np.bool_(True), "u": np.uint8(200)}
    out = unpackb(packb(message))
    for key, value in message.items():
        assert type(out[key]) is type(value) and out[key] == value


def test_evaluator_messages_with_bytes_keys_decode():
    """The evaluator packs observations with str keys and bytes-keyed array maps; openpi clients may use bytes keys
    for the outer map too: both read the same."""
    proprio = np.linspace(-1, 1, 256, dtype=np.float32)
    image = np.full((1, 8, 6, 4), 9, dtype=np.uint8)
    for outer in (str, lambda k: k.encode()):
        message = {outer("robot_r1::proprio"): proprio, outer("robot_r1::robot_r1:zed_link:Camera:0::rgb"): image,
                   outer("task_id"): np.array([3], dtype=np.int64), outer("__action_chunk_size__"): 4}
        out = unpackb(evaluator_packb(message))
        assert set(out) == {"robot_r1::proprio", "robot_r1::robot_r1:zed_link:Camera:0::rgb", "task_id",
                            "__action_chunk_size__"}
        np.testing.assert_array_equal(out["robot_r1::proprio"], proprio)
        np.testing.assert_array_equal(out["robot_r1::robot_r1:zed_link:Camera:0::rgb"], image)
        assert out["task_id"].dtype == np.int64 and out["__action_chunk_size__"] == 4


def test_str_keyed_array_maps_decode():
    raw = msgpack.packb({"a": {"__ndarray__": True, "data": np.arange(3, dtype="<f4").tobytes(), "dtype": "<f4",
                               "shape": [3]}, "s": {"__npgeneric__": True, "data": 7, "dtype": "<i8"}})
    out = unpackb(raw)
    np.testing.assert_array_equal(out["a"], np.arange(3, dtype=np.float32))
    assert out["s"] == np.int64(7) and isinstance(out["s"], np.int64)


def test_replies_use_the_evaluators_bytes_keys():
    reply = {"action": np.arange(23, dtype=np.float32)[None], "server_timing": {"infer_ms": 1.5}}
    data = packb(reply)
    plain = msgpack.unpackb(data)  # no hook: the array map as it travels
    assert set(plain["action"]) == {b"__ndarray__", b"data", b"dtype", b"shape"}
    decoded = evaluator_unpackb(data)  # exactly how the evaluator reads replies
    assert decoded["action"].dtype == np.float32 and decoded["action"].shape == (1, 23)
    np.testing.assert_array_equal(decoded["action"], reply["action"])
    assert decoded["server_timing"] == {"infer_ms": 1.5}


@pytest.mark.parametrize("value", [np.array([object()], dtype=object), np.zeros(2, dtype="i4,f4"),
                                   np.array(["2020-01-01"], dtype="datetime64[D]")])
def test_refused_dtypes_are_not_sent(value):
    with pytest.raises(ObservationError, match="dtype"):
        packb({"x": value})


@pytest.mark.parametrize("dtype", ["|O", "|V8", "<M8[D]", "not-a-dtype"])
def test_refused_dtypes_are_not_read(dtype):
    """An object-dtype map is refused before any buffer is interpreted: nothing is ever unpickled."""
    raw = msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": dtype, b"shape": [1]})
    with pytest.raises(ObservationError, match="dtype"):
        unpackb(raw)


def test_malformed_messages_raise_one_line_errors():
    good = packb({"x": np.arange(4, dtype=np.float32)})
    cases = {
        "truncated": good[:-3],
        "trailing bytes": good + b"\x00",
        "invalid byte": b"\xc1",
        "wrong data length": msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 12, b"dtype": "<f4",
                                            b"shape": [4]}),
        "bad shape": msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}),
        "data not bytes": msgpack.packb({b"__ndarray__": True, b"data": "text", b"dtype": "<f4", b"shape": [1]}),
    }
    for name, data in cases.items():
        with pytest.raises(ObservationError) as info:
            unpackb(data)
        assert "\n" not in str(info.value), name
    with pytest.raises(ObservationError, match="binary"):
        unpackb("a text frame")
