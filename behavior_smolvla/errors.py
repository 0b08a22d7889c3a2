"""The project's exception types.

Every error a user can cause (a missing file, a wrong dimension, an unknown key or flag) is raised as a
:class:`BehaviorSmolVLAError` subclass whose message is ONE line that names the file, key or flag at fault and says
what to do. The CLI prints such errors without a traceback and exits with code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path


class BehaviorSmolVLAError(Exception):
    """Base class: a one-line, user-actionable error (names the file/key/flag and the fix)."""


class DatasetError(BehaviorSmolVLAError):
    """A LeRobot dataset folder is missing, malformed or inconsistent (info.json, parquet, episodes, cameras)."""


class CacheError(DatasetError):
    """A numeric cache entry (``--cache-dir``) is damaged and cannot be rebuilt where it is; the message names the
    folder to delete."""


class VideoError(DatasetError):
    """A video file is missing, truncated, undecodable, or lacks the frame a timestamp asks for."""


class StateMapError(BehaviorSmolVLAError):
    """A state map (name or YAML file) is unknown, malformed, or does not fit the dataset's state."""


class ConfigError(BehaviorSmolVLAError):
    """A configuration file or command-line flag is invalid (unknown key, missing required value, conflict)."""


class CheckpointError(BehaviorSmolVLAError):
    """A checkpoint or run folder is missing, incomplete, or not one of this project's."""


class PolicyLoadError(BehaviorSmolVLAError):
    """A pretrained policy or VLM backbone cannot be loaded (hub unreachable offline, bad folder)."""


class ObservationError(BehaviorSmolVLAError):
    """An observation sent to a served policy is malformed: undecodable msgpack, a refused array dtype, a missing
    key, or a value of the wrong shape or dtype (the policy server answers it as an error string and keeps serving)."""


class PolicyOutputError(BehaviorSmolVLAError):
    """A policy predicted unusable actions (NaN/inf). Served: nothing is sent to the client but this error (the
    policy server answers it as an error string and keeps serving). Evaluated: no score is reported."""


def unwrap_worker_error(exc: BaseException) -> BaseException:
    """The one-line project error inside an exception re-raised from a DataLoader worker.

    torch re-raises a worker's exception in the main process as the same type whose message is
    ``"Caught <Type> in DataLoader worker process N.\\nOriginal Traceback (most recent call last): ..."``, so the
    one-line message ends up after ~30 lines of worker traceback. This returns a new exception of the same type
    holding only the original message (its last ``<module>.<Type>: message`` line); any other exception is
    returned unchanged.
    """
    text = str(exc)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return exc
    kind = type(exc)
    prefixes = (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: ")
    for line in reversed(text.splitlines()):
        for prefix in prefixes:
            if line.startswith(prefix):
                try:
                    return kind(line[len(prefix):])
                except TypeError:  # a subclass with another constructor: keep the original
                    return exc
    return exc


def read_text_file(path: str | os.PathLike, what: str, error: type[BehaviorSmolVLAError]) -> str:
    """The text of a file a user points to (UTF-8), or a one-line ``error`` naming ``what`` (e.g. ``"--config
    x.yaml"``) when it cannot be read or is not text: random bytes or a binary file would otherwise surface as a
    ``UnicodeDecodeError`` traceback from whichever parser reads it next."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{what}: cannot read it ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what}: not a UTF-8 text file (undecodable byte at offset {exc.start}); pass the right file or "
                    "re-download it") from None
