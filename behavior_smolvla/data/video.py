"""Everything PyAV: probing video files and decoding frames (random access and sequential spans).

A frame is decoded here and nowhere else. Frames are addressed by their *frame index* in the file: the decoded
frame whose presentation time ``pts * time_base`` is nearest ``index / fps``, i.e. ``round(pts * time_base * fps)``.
LeRobot datasets store frames on that grid (one frame every ``1 / fps`` seconds from 0), so a dataset timestamp
``t`` (seconds) is frame ``round(t * fps)`` (:func:`frame_index_for`).

Decoders are not fork-safe (FFmpeg keeps threads and file handles), so :class:`VideoFile` opens its container
lazily in the process that first reads from it and drops it when pickled; a DataLoader worker therefore opens its
own. torchcodec is not used: it needs a system FFmpeg that these machines lack, while PyAV ships its own.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from behavior_smolvla.errors import VideoError

ImageSize = int | tuple[int, int] | None
"""Requested frame size: ``None`` keeps the file's size, ``(H, W)`` is exact (pixels), an int ``S`` scales the
longer side to ``S`` pixels and the shorter one to keep the aspect ratio (rounded, at least 1)."""

# Swscale's area filter averages every source pixel that falls into a destination pixel, so a 3x downscale
# (720 -> 224) does not alias the way a 2-tap bilinear kernel would; its cost is close to bilinear.
# Passed to swscale as ints: PyAV resolves a name through its enum on every call (~25 us a frame in cProfile).
_DOWNSCALE_INTERPOLATION = int(Interpolation.AREA.value)
_UPSCALE_INTERPOLATION = int(Interpolation.BILINEAR.value)


def frame_to_rgb(frame: av.VideoFrame, out_height: int, out_width: int,
                 reformatter: VideoReformatter | None = None) -> np.ndarray:
    """A decoded frame as uint8 RGB ``[out_height, out_width, 3]``: swscale's area filter when shrinking, bilinear
    when enlarging, no resize when the size already matches. The one conversion the reader (and the policy server,
    which must feed the model exactly what training saw) uses: one swscale pass, scale and colour conversion at once.

    Args:
        frame: a decoded frame (any pixel format FFmpeg converts; the releases' is yuv420p).
        out_height, out_width: output size in pixels.
        reformatter: a ``VideoReformatter`` to reuse. Its swscale context is kept between calls with the same
            input and output (PyAV's ``to_ndarray`` builds and frees a context for every frame: ~10% of the
            conversion's CPU at 720 -> 224 px). Pass one per decoder; None uses a fresh one.

    Returns:
        uint8 ``[out_height, out_width, 3]``, a view of the converted frame's memory (no copy; it keeps that frame
        alive). Rows may be padded in memory (``strides[0]`` >= ``3 * out_width``); values equal PyAV's
        ``frame.to_ndarray(format="rgb24", width=..., height=..., interpolation=...)``.
    """
    if reformatter is None:
        reformatter = VideoReformatter()
    if (out_height, out_width) == (frame.height, frame.width):
        rgb = reformatter.reformat(frame, format="rgb24")
    else:
        downscale = out_height * out_width < frame.height * frame.width
        rgb = reformatter.reformat(frame, out_width, out_height, "rgb24",
                                   interpolation=_DOWNSCALE_INTERPOLATION if downscale else _UPSCALE_INTERPOLATION)
    plane = rgb.planes[0]
    # the plane's rows are line_size bytes apart (FFmpeg pads them for SIMD): view the useful 3 * width of each
    rows = np.frombuffer(plane, dtype=np.uint8).reshape(rgb.height, plane.line_size)
    return rows[:, :3 * rgb.width].reshape(rgb.height, rgb.width, 3)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` measures about a video file.

    Attributes:
        path: the file.
        codec: codec name as FFmpeg names the format (``"hevc"``, ``"av1"``, ``"h264"``), not the decoder.
        width, height: frame size in pixels, as stored.
        fps: frames per second (the stream's average rate).
        frame_count: number of video packets with a timestamp, counted by demuxing the whole file.
        duration_s: stream duration in seconds (``frame_count / fps`` when the container does not say).
        keyframe_interval: median distance in frames between consecutive keyframes, measured from the packets;
            ``frame_count`` when the file has a single keyframe.
        pix_fmt: pixel format of the decoded frames (``"yuv420p"``).
    """

    path: Path
    codec: str
    width: int
    height: int
    fps: float
    frame_count: int
    duration_s: float
    keyframe_interval: int
    pix_fmt: str | None


def frame_index_for(timestamp_s: float, fps: float, frame_count: int) -> int:
    """Frame index of a timestamp: ``round(timestamp_s * fps)`` clamped to ``[0, frame_count - 1]``.

    The clamp absorbs the known end-of-file trap where rounding a last-frame timestamp gives ``frame_count``.
    Halves round up (``floor(x + 0.5)``), independent of Python's round-half-to-even.

    Args:
        timestamp_s: time in seconds from the start of the file.
        fps: the file's frames per second.
        frame_count: number of frames in the file (> 0).

    Returns:
        int frame index.
    """
    index = math.floor(timestamp_s * fps + 0.5)
    return min(max(index, 0), frame_count - 1)


def output_size(width: int, height: int, image_size: ImageSize) -> tuple[int, int]:
    """``(H, W)`` in pixels of a ``width`` x ``height`` frame resized per :data:`ImageSize` semantics.

    Raises:
        VideoError: for a non-positive or malformed ``image_size``.
    """
    if image_size is None:
        return height, width
    if isinstance(image_size, bool):
        raise VideoError(f"image_size={image_size!r} is not a size: use an int (longer side) or (height, width)")
    if isinstance(image_size, int | np.integer):
        side = int(image_size)
        if side <= 0:
            raise VideoError(f"image_size={image_size!r} must be positive")
        if width >= height:
            return max(1, round(height * side / width)), side
        return side, max(1, round(width * side / height))
    if isinstance(image_size, Sequence) and len(image_size) == 2:
        out_h, out_w = (int(v) for v in image_size)
        if out_h <= 0 or out_w <= 0:
            raise VideoError(f"image_size={tuple(image_size)!r} must be positive (height, width)")
        return out_h, out_w
    raise VideoError(f"image_size={image_size!r} is not a size: use an int (longer side) or (height, width)")


def _open(path: Path) -> av.container.InputContainer:
    """Open ``path`` for reading; every failure becomes a one-line :class:`VideoError` naming the file."""
    if not path.is_file():
        hint = f"; {path.parent} does not exist" if not path.parent.is_dir() else ""
        raise VideoError(f"video file {path} does not exist{hint}")
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        raise VideoError(
            f"cannot open video {path} (truncated or not a video: {_one_line(exc)}); re-download or re-encode it"
        ) from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream")
    return container


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _stream_fps(stream, path: Path) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise VideoError(f"{path} does not state a frame rate; re-encode it with a constant frame rate")
    return float(rate)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Measure a video file by demuxing all its packets (no decoding).

    Args:
        path: an mp4 (or any container FFmpeg reads) with at least one video stream; the first one is probed.

    Returns:
        :class:`VideoInfo`.

    Raises:
        VideoError: the file is missing, cannot be opened, fails while demuxing, has no packets, or holds fewer
            packets than its header declares (a truncated file).
    """
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps = _stream_fps(stream, path)
        ctx = stream.codec_context
        declared = int(stream.frames or 0)
        pts: list[int] = []
        keyframe_pts: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.pts is None:  # the demuxer's end-of-stream flush packet
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keyframe_pts.append(packet.pts)
        except av.FFmpegError as exc:
            raise VideoError(f"video {path} is unreadable after {len(pts)} packets ({_one_line(exc)}); "
                             "it is probably truncated: re-download it") from None
        if not pts:
            raise VideoError(f"video {path} holds no video packets; re-download or re-encode it")
        if declared and len(pts) < declared:
            raise VideoError(f"video {path} is truncated: it holds {len(pts)} of the {declared} frames its header "
                             "declares; re-download it")
        frame_count = len(pts)
        # Keyframe distances are measured in presentation order, which is the frame-index order.
        order = {p: i for i, p in enumerate(sorted(pts))}
        key_positions = sorted(order[p] for p in keyframe_pts)
        gaps = np.diff(key_positions)
        keyframe_interval = int(statistics.median(gaps.tolist())) if len(gaps) else frame_count
        if stream.duration is not None and stream.time_base is not None:
            duration_s = float(stream.duration * stream.time_base)
        else:
            duration_s = frame_count / fps
        return VideoInfo(
            path=path,
            codec=ctx.codec.canonical_name if hasattr(ctx.codec, "canonical_name") else ctx.codec.name,
            width=int(ctx.width),
            height=int(ctx.height),
            fps=fps,
            frame_count=frame_count,
            duration_s=duration_s,
            keyframe_interval=keyframe_interval,
            pix_fmt=ctx.pix_fmt,
        )
    finally:
        container.close()


@dataclass(frozen=True)
class DecodeCheck:
    """Result of :func:`verify_video` for one file.

    Attributes:
        path: the file.
        frames: frames decoded without error.
        first_bad_frame: index (decode order = frame index for these files) of the first frame that failed or is
            missing, or None when every frame decoded.
        reason: one line saying what failed (None when intact).
    """

    path: Path
    frames: int
    first_bad_frame: int | None
    reason: str | None


def verify_video(path: str | os.PathLike, expected_frames: int | None = None, threads: int = 1) -> DecodeCheck:
    """Decode every frame of the first video stream of ``path`` (no conversion to RGB) and report the first bad one.

    A frame is bad when FFmpeg reports an error while demuxing or decoding it (``err_detect`` is set to ``explode``
    so that a corrupt slice fails instead of being concealed), or when the file ends before ``expected_frames`` (or
    the frame count its header declares) frames were decoded.

    Args:
        path: the video file.
        expected_frames: frames the dataset's metadata says the file holds (sum over the episodes stored in it);
            None = trust the header.
        threads: FFmpeg decoding threads (1 when files are checked in parallel).

    Returns:
        :class:`DecodeCheck`; never raises for a damaged file (a file that cannot be opened is bad at frame 0).
    """
    path = Path(path)
    try:
        container = _open(path)
    except VideoError as exc:
        return DecodeCheck(path, 0, 0, str(exc))
    frames = 0
    try:
        stream = container.streams.video[0]
        stream.thread_count = max(1, int(threads))
        stream.codec_context.options = {"err_detect": "explode"}
        declared = int(stream.frames or 0)
        try:
            for packet in container.demux(stream):
                for _ in packet.decode():
                    frames += 1
        except (av.FFmpegError, ValueError) as exc:
            return DecodeCheck(path, frames, frames, f"decoding failed ({_one_line(exc)})")
        wanted = expected_frames if expected_frames is not None else declared
        if wanted and frames < wanted:
            return DecodeCheck(path, frames, frames, f"ends after {frames} of {wanted} frames (truncated)")
        return DecodeCheck(path, frames, None, None)
    finally:
        container.close()


_FORK_ORPHANS: list = []
"""FFmpeg objects inherited through fork, kept referenced for the life of the child process. Freeing one there
would close a decoder whose worker threads only exist in the parent (the child waits for them forever); fork children
end with ``os._exit`` (multiprocessing, DataLoader workers), so nothing here is ever freed."""


class VideoFile:
    """Frames of one video file, decoded on demand with a reused, forward-moving decoder.

    The container is opened lazily in the process that first reads (never pickled: ``__getstate__`` drops it),
    so a ``VideoFile`` can be built in the parent and used inside DataLoader workers.

    Reads are random access (seek to the keyframe at or before the first needed frame, decode forward), but the
    decoder position is kept between calls: when the next needed frame lies ahead of the last decoded one by at
    most two GOPs, decoding simply continues, so sequential spans decode every frame at most once and seek only
    once. The GOP length is ``keyframe_interval`` when given, else learnt from the keyframes seen while decoding.

    Args:
        path: the video file.
        image_size: :data:`ImageSize` of the returned frames; resizing happens in swscale at decode time.
        keyframe_interval: the file's keyframe interval in frames (from :func:`probe_video`), if known.
        threads: FFmpeg decoder threads; 0 lets FFmpeg choose (about one per core). With several DataLoader
            workers on few cores, 1 avoids oversubscription.

    Attributes:
        seeks, decoded_frames: how many seeks and frame decodes this object has done (locality diagnostics).
        fps, frame_count, width, height, out_height, out_width: known once the file is open (see :meth:`info`).

    Raises (from reads):
        VideoError: missing / truncated / undecodable file, or a requested frame the file lacks.
    """

    def __init__(self, path: str | os.PathLike, image_size: ImageSize = None, keyframe_interval: int | None = None,
                 threads: int = 0):
        self.path = Path(path)
        self.image_size = image_size
        self.threads = int(threads)
        self._gop_hint = int(keyframe_interval) if keyframe_interval else None
        self.seeks = 0
        self.decoded_frames = 0
        self._reset_state()

    # -- lifecycle -------------------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._container = None
        self._stream = None
        self._frames: Iterator | None = None  # live decode generator, positioned after self._last_index
        self._last_index: int | None = None
        self._last_frame = None
        self._last_key_index: int | None = None
        self._gop = self._gop_hint or 1
        self._pid: int | None = None
        self._reformatter: VideoReformatter | None = None  # one swscale context for all this file's frames

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_container", "_stream", "_frames", "_last_frame", "_reformatter"):
            state[key] = None
        state["_last_index"] = None
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _abandon_inherited(self) -> None:
        """Forget FFmpeg state opened by another process (fork parent) without freeing it here."""
        if self._container is not None:
            _FORK_ORPHANS.append((self._container, self._stream, self._frames, self._last_frame, self._reformatter))
        self._reset_state()

    def close(self) -> None:
        """Close the container (a later read reopens it)."""
        if self._container is not None and self._pid != os.getpid():
            self._abandon_inherited()
            return
        if self._container is not None:
            self._frames = None
            self._last_frame = None
            self._container.close()
        self._reset_state()

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the av module may already be gone
            pass

    def _ensure_open(self) -> None:
        if self._container is not None and self._pid == os.getpid():
            return
        # A container inherited through fork belongs to the parent: forget it, never touch it.
        self._abandon_inherited()
        container = _open(self.path)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = self.threads
        self.fps = _stream_fps(stream, self.path)
        declared = int(stream.frames or 0)
        if declared <= 0 and stream.duration is not None:
            declared = round(float(stream.duration * stream.time_base) * self.fps)
        if declared <= 0:
            container.close()
            raise VideoError(f"{self.path} does not declare its frame count; remux it to mp4")
        self.frame_count = declared
        self.width = int(stream.codec_context.width)
        self.height = int(stream.codec_context.height)
        self.out_height, self.out_width = output_size(self.width, self.height, self.image_size)
        self._index_scale = float(stream.time_base) * self.fps
        self._reformatter = VideoReformatter()
        self._container, self._stream, self._pid = container, stream, os.getpid()

    def info(self) -> tuple[float, int, int, int]:
        """``(fps, frame_count, height, width)`` of the file as stored (opens it if needed)."""
        self._ensure_open()
        return self.fps, self.frame_count, self.height, self.width

    # -- decoding --------------------------------------------------------------------------------------------

    def _index_of(self, pts: int) -> int:
        return math.floor(pts * self._index_scale + 0.5)

    def _seek(self, frame_index: int) -> None:
        # The highest pts that still rounds to frame_index; the demuxer lands on the keyframe at or before it, so a
        # keyframe AT frame_index is found (the lowest such pts would land a whole GOP earlier and decode it).
        target = math.ceil((frame_index + 0.5) / self._index_scale) - 1
        try:
            self._container.seek(max(target, 0), stream=self._stream, backward=True, any_frame=False)
            self.seeks += 1
        except av.FFmpegError as exc:
            raise VideoError(f"cannot seek to frame {frame_index} in {self.path} ({_one_line(exc)})") from None
        self._frames = self._container.decode(self._stream)
        self._last_index = None
        self._last_frame = None
        self._last_key_index = None  # keyframe distances are only measured within one forward run

    def _next_frame(self, wanted: int):
        try:
            frame = next(self._frames)
        except StopIteration:
            self._frames = None
            raise VideoError(
                f"{self.path} ends before frame {wanted} (its header declares {self.frame_count} frames): "
                "the file is truncated; re-download it") from None
        except av.FFmpegError as exc:
            self._frames = None
            raise VideoError(f"cannot decode {self.path} near frame {wanted} ({_one_line(exc)}); "
                             "the file is damaged or truncated: re-download it") from None
        self.decoded_frames += 1
        return frame

    def _decode_to(self, target: int) -> None:
        """Leave the decoder's last frame at index ``target``, continuing forward or seeking."""
        if self._last_index == target and self._last_frame is not None:
            return
        ahead = (self._frames is not None and self._last_index is not None
                 and self._last_index < target <= self._last_index + 2 * self._gop)
        seek_from = target
        if not ahead:
            self._seek(seek_from)
        first_after_seek = not ahead
        while True:
            frame = self._next_frame(target)
            if frame.pts is None:
                continue
            index = self._index_of(frame.pts)
            if frame.key_frame:
                if self._last_key_index is not None and index > self._last_key_index:
                    self._gop = max(self._gop, index - self._last_key_index)
                self._last_key_index = index
            elif self._last_key_index is not None:
                self._gop = max(self._gop, index - self._last_key_index + 1)
            if first_after_seek and index > target:
                # The keyframe found is past the target (e.g. reordered B-frames around an open GOP): back off.
                if seek_from <= 0:
                    raise VideoError(f"{self.path} has no frame {target} (the first frame decoded is {index}); "
                                     "its timestamps do not start at 0")
                seek_from = max(0, seek_from - 2 * max(self._gop, 8))
                self._seek(seek_from)
                continue
            first_after_seek = False
            if self._last_index is not None and index <= self._last_index:
                continue  # a duplicate timestamp: keep the first frame of that index
            self._last_index, self._last_frame = index, frame
            if index == target:
                return
            if index > target:
                raise VideoError(
                    f"{self.path} has no frame {target} ({target / self.fps:.4f} s): the nearest decoded frames "
                    f"are more than half a frame away; the video's timestamps do not match the dataset")

    def frames(self, frame_indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Decode frames by index, without copying them into one array (the training sampler's path).

        Args:
            frame_indices: frame indices in any order, duplicates allowed; each is clamped to
                ``[0, frame_count - 1]``.

        Returns:
            One uint8 ``[H, W, 3]`` RGB array per requested index, in the requested order, ``(H, W)`` per
            ``image_size``: each a view of its converted frame (see :func:`frame_to_rgb`; duplicates share one).

        Raises:
            VideoError: missing / truncated / undecodable file, or a frame the file does not hold (no frame whose
                timestamp is within half a frame of ``index / fps``).
        """
        self._ensure_open()
        wanted = np.clip(np.asarray(frame_indices, dtype=np.int64).reshape(-1), 0, self.frame_count - 1)
        converted: dict[int, np.ndarray] = {}
        for target in np.unique(wanted).tolist():  # ascending: one forward pass over the span
            self._decode_to(target)
            converted[target] = frame_to_rgb(self._last_frame, self.out_height, self.out_width, self._reformatter)
        return [converted[target] for target in wanted.tolist()]

    def read_frames(self, frame_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode frames by index into one array.

        Args:
            frame_indices: frame indices in any order, duplicates allowed; each is clamped to
                ``[0, frame_count - 1]``.

        Returns:
            uint8 array ``[N, H, W, 3]`` (RGB) in the requested order, ``(H, W)`` per ``image_size``.

        Raises:
            VideoError: as :meth:`frames`.
        """
        self._ensure_open()
        frames = self.frames(frame_indices)
        if not frames:
            return np.empty((0, self.out_height, self.out_width, 3), dtype=np.uint8)
        return np.stack(frames)

    def read_timestamps(self, timestamps_s: Sequence[float] | np.ndarray) -> np.ndarray:
        """Decode the frames at timestamps (seconds from the file's start), see :func:`frame_index_for`.

        Returns:
            uint8 ``[N, H, W, 3]``.

        Raises:
            VideoError: a timestamp more than one frame outside the file, or as :meth:`read_frames`.
        """
        self._ensure_open()
        return self.read_frames(self.frame_indices_for(timestamps_s))

    def frame_indices_for(self, timestamps_s: Sequence[float] | np.ndarray) -> np.ndarray:
        """int64 frame indices of timestamps (seconds); more than one frame outside the file raises VideoError."""
        self._ensure_open()
        ts = np.asarray(timestamps_s, dtype=np.float64).reshape(-1)
        raw = np.floor(ts * self.fps + 0.5)
        bad = (raw < -1) | (raw > self.frame_count)
        if bad.any():
            raise VideoError(
                f"timestamp {ts[bad][0]:.4f} s is outside {self.path} (0 to {(self.frame_count - 1) / self.fps:.4f} "
                "s); the dataset's video offsets (from_timestamp) do not match this file")
        return np.clip(raw, 0, self.frame_count - 1).astype(np.int64)


class DecoderCache:
    """Per-process LRU of open :class:`VideoFile` objects keyed by ``(path, image_size)``.

    After a fork the inherited entries belong to the parent and are dropped unclosed (closing them would act on
    the parent's FFmpeg state); pickling drops them too, so a cache held by a Dataset travels to workers empty.

    Args:
        max_open: most files kept open; the least recently used one is closed beyond that.
        threads: passed to each :class:`VideoFile`.
    """

    def __init__(self, max_open: int = 32, threads: int = 0):
        self.max_open = int(max_open)
        self.threads = int(threads)
        self._files: OrderedDict[tuple[Path, ImageSize], VideoFile] = OrderedDict()
        self._pid = os.getpid()

    def get(self, path: str | os.PathLike, image_size: ImageSize = None,
            keyframe_interval: int | None = None) -> VideoFile:
        """The cached :class:`VideoFile` for ``path`` at ``image_size`` (created on first use)."""
        if self._pid != os.getpid():
            _FORK_ORPHANS.append(self._files)  # the parent's decoders: see _FORK_ORPHANS
            self._files = OrderedDict()
            self._pid = os.getpid()
        size_key = tuple(image_size) if isinstance(image_size, Sequence) else image_size
        key = (Path(path), size_key)
        video = self._files.get(key)
        if video is None:
            video = VideoFile(path, image_size, keyframe_interval=keyframe_interval, threads=self.threads)
            self._files[key] = video
            while len(self._files) > self.max_open:
                _, old = self._files.popitem(last=False)
                old.close()
        else:
            self._files.move_to_end(key)
        return video

    def close(self) -> None:
        """Close every file this process opened."""
        if self._pid == os.getpid():
            for video in self._files.values():
                video.close()
        else:
            _FORK_ORPHANS.append(self._files)
        self._files = OrderedDict()

    def __len__(self) -> int:
        return len(self._files)

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open, "threads": self.threads, "_files": OrderedDict(), "_pid": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()
