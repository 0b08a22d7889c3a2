"""behavior_smolvla.data.video on real files: the AV1 videos of the shared G1 datasets and small HEVC / H.264 files
written here with PyAV, whose frames carry their own index as a bar code so every decoded frame can be identified."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from behavior_smolvla.errors import VideoError
from behavior_smolvla.data.video import (
    DecoderCache,
    VideoFile,
    frame_index_for,
    frame_to_rgb,
    output_size,
    probe_video,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
V30_VIDEOS = DATA / "g1_inspire_v30" / "videos" / "observation.images.cam_high" / "chunk-000"
AV1_FILE = V30_VIDEOS / "file-000.mp4"
SIZE = 64  # test clips are SIZE x SIZE
BITS = 8


def bar_code(index: int) -> np.ndarray:
    """uint8 [SIZE, SIZE, 3]: eight vertical bars, bar b bright when bit b of ``index`` is set."""
    image = np.full((SIZE, SIZE, 3), 16, np.uint8)
    width = SIZE // BITS
    for bit in range(BITS):
        if (index >> bit) & 1:
            image[:, bit * width:(bit + 1) * width] = 235
    return image


def read_bar_code(image: np.ndarray) -> int:
    width = image.shape[1] // BITS
    return sum(1 << bit for bit in range(BITS) if image[:, bit * width:(bit + 1) * width].mean() > 128)


def write_clip(path: Path, frames: int, gop: int, codec: str = "libx265", pts: list[int] | None = None) -> Path:
    """Encode a bar-coded clip at 30 fps; libx265 with a fixed GOP, B-frames and open GOPs (x265's default, like
    BEHAVIOR's HEVC), or libx264. ``pts`` (in frames) lets a test leave holes in the timeline."""
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=30)
    stream.width = stream.height = SIZE
    stream.pix_fmt = "yuv420p"
    if codec == "libx265":
        stream.options = {"x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=3:log-level=none"}
    else:
        stream.options = {"g": str(gop), "bf": "2", "sc_threshold": "0"}
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(bar_code(i), format="rgb24")
        frame.pts = i if pts is None else pts[i]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def decode_all(path: Path, limit: int | None = None) -> np.ndarray:
    """The first ``limit`` (default: all) frames in presentation order, by plain sequential PyAV decoding (the
    reference)."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == limit:
                break
    return np.stack(frames)


@pytest.fixture(scope="module")
def hevc_clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clips") / "hevc_gop30.mp4", frames=150, gop=30)


def test_probe_reports_the_av1_files_of_the_shared_dataset():
    # The v3.0 copy was written by lerobot's converter: AV1 (libsvtav1), 640x480, 30 fps, lerobot's default
    # GOP of 2 frames; per file the frame count is the sum of its episodes' lengths in meta/episodes.
    expected_frames = {"file-000.mp4": 372 + 342 + 362, "file-001.mp4": 386 + 344 + 351, "file-002.mp4": 348 + 392}
    for name, frames in expected_frames.items():
        info = probe_video(V30_VIDEOS / name)
        assert (info.codec, info.width, info.height, info.fps, info.pix_fmt) == ("av1", 640, 480, 30.0, "yuv420p")
        assert info.frame_count == frames
        assert info.keyframe_interval == 2
        assert info.duration_s == pytest.approx(frames / 30, abs=1e-6)


def test_probe_measures_a_long_gop_from_the_packets(hevc_clip, tmp_path):
    info = probe_video(hevc_clip)
    assert (info.codec, info.width, info.height, info.frame_count, info.keyframe_interval) == ("hevc", 64, 64, 150, 30)
    one_keyframe = probe_video(write_clip(tmp_path / "one_gop.mp4", frames=40, gop=250, codec="libx264"))
    assert (one_keyframe.codec, one_keyframe.keyframe_interval) == ("h264", 40)


def test_random_access_returns_exactly_the_sequentially_decoded_frames():
    reference = decode_all(AV1_FILE, limit=200)
    rng = np.random.default_rng(0)
    wanted = rng.integers(0, len(reference), 40)
    video = VideoFile(AV1_FILE)
    for chunk in np.array_split(wanted, 8):  # unordered requests, duplicates possible, across several calls
        np.testing.assert_array_equal(video.read_frames(chunk), reference[chunk])
    # GOP 2: a read costs at most a keyframe plus the frame, or a short forward run (<= 2 GOPs).
    assert video.decoded_frames <= 4 * len(np.unique(wanted))
    assert video.read_frames([5, 5, 2]).shape == (3, 480, 640, 3)
    np.testing.assert_array_equal(video.read_frames([5, 5, 2]), reference[[5, 5, 2]])


def test_long_gop_open_gop_hevc_frames_are_exact(hevc_clip):
    reference = decode_all(hevc_clip)
    assert [read_bar_code(f) for f in reference] == list(range(150))
    video = VideoFile(hevc_clip)
    # Frames just before a keyframe are decoded after it in an open GOP: the seek must land one GOP earlier.
    wanted = [29, 30, 59, 58, 0, 149, 89, 90, 91, 1, 120, 119]
    frames = np.concatenate([video.read_frames([i]) for i in wanted])
    assert [read_bar_code(f) for f in frames] == wanted
    np.testing.assert_array_equal(frames, reference[wanted])


def test_forward_spans_decode_each_frame_once_without_reseeking(hevc_clip):
    video = VideoFile(hevc_clip)
    for i in range(150):
        assert read_bar_code(video.read_frames([i])[0]) == i
    assert (video.seeks, video.decoded_frames) == (1, 150)

    strided = VideoFile(hevc_clip)
    got = [read_bar_code(strided.read_frames([i])[0]) for i in range(40, 150, 3)]
    assert got == list(range(40, 150, 3))
    assert strided.seeks == 1  # one seek to the keyframe before 40 (frame 30), then forward only
    assert strided.decoded_frames == 148 - 30 + 1

    jumpy = VideoFile(hevc_clip)
    jumpy.read_frames([10])
    jumpy.read_frames([140])  # far ahead: seeking beats decoding four GOPs
    jumpy.read_frames([11])  # behind the decoder: must seek back
    assert jumpy.seeks == 3


def test_resize_at_decode_time():
    full = VideoFile(AV1_FILE).read_frames([100])[0]
    assert output_size(640, 480, 224) == (168, 224)
    assert output_size(480, 720, 224) == (224, 149)
    small = VideoFile(AV1_FILE, image_size=224).read_frames([100])
    assert small.shape == (1, 168, 224, 3) and small.dtype == np.uint8
    exact = VideoFile(AV1_FILE, image_size=(96, 128)).read_frames([100])
    assert exact.shape == (1, 96, 128, 3)
    # The resized frame is the full frame, downscaled: compare with torch's area downscale of the full frame.
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(full).permute(2, 0, 1)[None].float(), size=(96, 128), mode="area")[0].permute(1, 2, 0)
    assert np.abs(exact[0].astype(np.float32) - reference.numpy()).mean() < 3.0
    with pytest.raises(VideoError, match="image_size"):
        VideoFile(AV1_FILE, image_size=0).read_frames([0])


def test_one_conversion_pass_equals_pyav_and_survives_its_frame():
    """``frame_to_rgb`` with a reused swscale context gives exactly PyAV's own ``to_ndarray`` (shrinking, enlarging,
    native size), and ``VideoFile.frames`` returns views that stay valid after the decoder moved on."""
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    with av.open(str(AV1_FILE)) as container:
        for n, frame in zip(range(12), container.decode(video=0)):
            for h, w, interpolation in ((168, 224, "AREA"), (600, 800, "BILINEAR"), (480, 640, None)):
                mine = frame_to_rgb(frame, h, w, reformatter)
                kwargs = {} if interpolation is None else {"width": w, "height": h, "interpolation": interpolation}
                np.testing.assert_array_equal(mine, frame.to_ndarray(format="rgb24", **kwargs), err_msg=f"{n} {h}")
    video = VideoFile(AV1_FILE, image_size=224)
    views = video.frames([7, 3, 7])
    assert views[0] is views[2] and views[0].shape == (168, 224, 3) and views[0].dtype == np.uint8
    kept = [v.copy() for v in views]
    video.read_frames(range(8, 60))  # the decoder moves on and converts more frames
    for view, copy in zip(views, kept, strict=True):
        np.testing.assert_array_equal(view, copy)
    np.testing.assert_array_equal(np.stack(views), video.read_frames([7, 3, 7]))


def test_frame_index_of_a_timestamp_rounds_and_clamps():
    assert frame_index_for(0.0, 30, 100) == 0
    assert frame_index_for(0.49 / 30, 30, 100) == 0
    assert frame_index_for(0.51 / 30, 30, 100) == 1
    assert frame_index_for(12.4 + 0.0333333350718, 30, 1076) == 373  # float32 parquet timestamp + offset
    assert frame_index_for(100 / 30, 30, 100) == 99  # round(t * fps) == frame_count at the end of a file
    assert frame_index_for(-0.01, 30, 100) == 0
    video = VideoFile(AV1_FILE)
    assert video.frame_indices_for([0.0, 1075 / 30, 1076 / 30]).tolist() == [0, 1075, 1075]
    with pytest.raises(VideoError, match="outside"):
        video.read_timestamps([40.0])


def test_a_hole_in_the_timeline_is_an_error_not_a_neighbour(tmp_path):
    # 12 frames whose timestamps skip 5 (pts 0..4, 6..12): frame 5 does not exist.
    path = write_clip(tmp_path / "hole.mp4", frames=12, gop=4, codec="libx264", pts=[*range(5), *range(6, 13)])
    video = VideoFile(path)
    assert read_bar_code(video.read_frames([6])[0]) == 5  # the 6th encoded frame sits at frame index 6
    with pytest.raises(VideoError, match=r"hole\.mp4 has no frame 5") as excinfo:
        VideoFile(path).read_frames([5])
    assert "\n" not in str(excinfo.value)


def test_errors_name_the_file_in_one_line(tmp_path, hevc_clip):
    missing = tmp_path / "nope.mp4"
    for call in (lambda: probe_video(missing), lambda: VideoFile(missing).read_frames([0])):
        with pytest.raises(VideoError, match="nope.mp4 does not exist"):
            call()

    # The v2.1 files keep the moov atom at the end: a truncated copy cannot even be opened.
    v21_file = DATA / "g1_inspire_v21" / "videos" / "chunk-000" / "observation.images.cam_high" / "episode_000001.mp4"
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(v21_file.read_bytes()[: v21_file.stat().st_size // 2])
    for call in (lambda: probe_video(truncated), lambda: VideoFile(truncated).read_frames([0])):
        with pytest.raises(VideoError, match="truncated.mp4") as excinfo:
            call()
        assert "\n" not in str(excinfo.value)

    # The v3.0 files are faststart (moov first): the header survives and the missing packets must be noticed.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(AV1_FILE.read_bytes()[: AV1_FILE.stat().st_size // 2])
    with pytest.raises(VideoError, match="cut.mp4 is truncated"):
        probe_video(cut)
    video = VideoFile(cut)
    np.testing.assert_array_equal(video.read_frames([3]), VideoFile(AV1_FILE).read_frames([3]))  # intact start
    with pytest.raises(VideoError, match="cut.mp4") as excinfo:
        video.read_frames([1000])
    assert "\n" not in str(excinfo.value)

    garbage = tmp_path / "garbage.mp4"
    garbage.write_text("not a video\n")
    with pytest.raises(VideoError, match="garbage.mp4"):
        probe_video(garbage)


def test_pickled_video_file_reopens_in_the_new_owner(hevc_clip, tmp_path):
    video = VideoFile(hevc_clip, image_size=32)
    first = video.read_frames([3, 70])
    clone = pickle.loads(pickle.dumps(video))
    assert clone._container is None
    np.testing.assert_array_equal(clone.read_frames([3, 70]), first)
    assert video._container is not None  # the original stays usable
    np.testing.assert_array_equal(video.read_frames([70]), first[1:])


def test_decoder_cache_is_bounded_and_keyed_by_size(hevc_clip, tmp_path):
    copies = [shutil.copy(hevc_clip, tmp_path / f"c{i}.mp4") for i in range(3)]
    cache = DecoderCache(max_open=2)
    first = cache.get(copies[0])
    first.read_frames([0])
    assert cache.get(copies[0]) is first
    assert cache.get(copies[0], image_size=32) is not first
    cache.get(copies[1]).read_frames([0])
    assert len(cache) == 2 and first._container is None  # least recently used one was closed
    clone = pickle.loads(pickle.dumps(cache))
    assert len(clone) == 0
    cache.close()


def _read_in_child(video: VideoFile, cache: DecoderCache, path: Path, queue) -> None:
    queue.put((read_bar_code(video.read_frames([77])[0]), read_bar_code(cache.get(path).read_frames([78])[0])))


def test_decoders_opened_before_a_fork_are_left_to_the_parent(hevc_clip):
    import multiprocessing

    video = VideoFile(hevc_clip)  # FFmpeg's default threading: decoder threads that exist only in this process
    cache = DecoderCache()
    assert read_bar_code(video.read_frames([5])[0]) == 5
    assert read_bar_code(cache.get(hevc_clip).read_frames([6])[0]) == 6
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(video, cache, hevc_clip, queue))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == (77, 78)
    assert read_bar_code(video.read_frames([6])[0]) == 6  # the parent's decoder still works
