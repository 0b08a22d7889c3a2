"""smolvla-inspect, run as a real subprocess (the installed console script) on the synthetic BEHAVIOR layouts and
the real G1 datasets, with ``--json`` parsed and checked against what was written; damaged copies get their
missing / unreadable files listed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from behavior_smolvla.synthetic import datasets as S
from behavior_smolvla.data.inspect import inspect_dataset, print_report

INSPECT = Path(sys.executable).parent / "smolvla-inspect"


def run_inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(INSPECT), *map(str, args)], capture_output=True, text=True, timeout=120)


def inspect_json(path: Path, expect_rc: int = 0) -> dict:
    proc = run_inspect(path, "--json")
    assert proc.returncode == expect_rc, proc.stderr
    return json.loads(proc.stdout)


def written_spec(root: Path) -> S.SyntheticSpec:
    return S.SyntheticSpec.from_json(json.loads((root / S.SPEC_FILE).read_text()))


def test_synthetic_2025(synthetic_2025):
    spec = written_spec(synthetic_2025)
    report = inspect_json(synthetic_2025)
    assert report["format"] == "v2.1" and report["fps"] == 30 and report["robot_type"] == "R1Pro"
    assert report["episodes"] == {"count": 4, "indices": "10, 20, 10010, 10020", "first": 10, "last": 10020,
                                  "contiguous": False}
    assert report["frames"]["total"] == sum(spec.lengths)
    assert report["frames"]["per_episode"] == {"min": 40, "mean": 49.5, "max": 60}
    assert [(t["task_index"], t["task"], t["episodes"], t["frames"]) for t in report["tasks"]] == [
        (0, S.task_strings(0)[1], 2, 40 + 52), (1, S.task_strings(1)[1], 2, 46 + 60)]
    assert report["features"]["observation.state"] == {"dtype": "float32", "shape": [256], "names": None}
    assert report["features"]["action"]["shape"] == [23]
    assert report["undeclared_columns"] == ["task_index"]
    assert set(report["other_features"]) == {"observation.cam_rel_poses", "observation.task_info"}
    assert report["data_files"] == {"count": 4, "checked": 4, "missing": 0}
    assert [c["key"] for c in report["cameras"]] == list(S.CAMERAS_2025.values())
    for cam in report["cameras"]:
        height, width = spec.image_size[S.camera_role(cam["key"], spec.layout)]
        assert (cam["height"], cam["width"]) == (height, width) == (cam["declared"]["height"],
                                                                    cam["declared"]["width"])
        assert cam["codec"] == "hevc" and cam["pix_fmt"] == "yuv420p" and cam["fps"] == 30
        # GOP 250 > every episode: one keyframe per file, so the interval is only bounded below.
        assert cam["keyframe_interval"] is None and cam["keyframe_interval_at_least"] == 60
        assert cam["single_keyframe_files"] == 4
        assert cam["frames"] == cam["expected_frames"] == report["frames"]["total"]
        assert (cam["files"], cam["probed"], cam["missing"]) == (4, 4, 0)
    assert report["problems"] == []


def test_keyframe_interval_is_the_gop_written(tmp_path):
    root = S.write_behavior_2025(tmp_path / "gop20", episodes=2, frames=[45, 61], tasks=1, image_size=32, gop=20)
    report = inspect_json(root)
    assert [c["keyframe_interval"] for c in report["cameras"]] == [20, 20, 20]
    assert [c["keyframe_intervals"] for c in report["cameras"]] == [[20]] * 3


def test_synthetic_2026(synthetic_2026):
    spec = written_spec(synthetic_2026)
    report = inspect_json(synthetic_2026)
    assert report["format"] == "v3.0"
    assert report["episodes"]["indices"] == "0-5" and report["episodes"]["contiguous"] is True
    assert report["frames"]["total"] == sum(spec.lengths)
    assert report["features"]["observation.state"]["shape"] == [61]
    assert report["undeclared_columns"] == []
    assert report["data_files"]["count"] == 4  # 2 tasks x 2 parquet files of <= 2 episodes
    by_key = {c["key"]: c for c in report["cameras"]}
    assert list(by_key) == list(S.CAMERAS_2026.values())
    assert [by_key[S.CAMERAS_2026[r]]["files"] for r in S.CAMERA_ROLES] == [4, 4, 2]
    for cam in report["cameras"]:
        assert cam["keyframe_interval"] == spec.gop == 8
        assert cam["codec"] == "hevc"
        assert cam["frames"] == cam["expected_frames"] == report["frames"]["total"]
    assert report["problems"] == []


def test_real_g1_v21(g1_v21):
    report = inspect_json(g1_v21)
    assert report["format"] == "v2.1"
    assert report["episodes"]["indices"] == "1-2, 4-5, 7-8, 10-11" and report["episodes"]["contiguous"] is False
    assert report["frames"]["total"] == 3027
    assert report["tasks"] == [{"task_index": 0, "task": "Pick up the yellow bottle on the table.", "episodes": 8,
                                "frames": 3027}]
    state = report["features"]["observation.state"]
    assert state["shape"] == [26] and len(state["names"]) == 26 and state["names"][0] == "kLeftShoulderPitch"
    (cam,) = report["cameras"]
    assert (cam["key"], cam["codec"], cam["width"], cam["height"]) == ("observation.images.cam_high", "av1", 640, 480)
    assert cam["frames"] == cam["expected_frames"] == 3027 and cam["files"] == 8
    assert isinstance(cam["keyframe_interval"], int) and cam["keyframe_interval"] >= 1
    assert report["problems"] == []


def test_real_g1_v30_and_rich_output(g1_v30):
    report = inspect_json(g1_v30)
    assert report["format"] == "v3.0" and report["episodes"]["indices"] == "0-7"
    assert report["frames"]["total"] == 2897
    (cam,) = report["cameras"]
    assert cam["files"] == 3 and cam["frames"] == 2897 and cam["codec"] == "av1"
    assert report["problems"] == []
    proc = run_inspect(g1_v30)
    assert proc.returncode == 0, proc.stderr
    for needle in ("v3.0", "0-7", "2897", "cam_high", "640x480", "av1", "no problems"):
        assert needle in proc.stdout, needle


def test_missing_and_damaged_files_are_listed(synthetic_2026, tmp_path):
    root = shutil.copytree(synthetic_2026, tmp_path / "damaged")
    head = S.CAMERAS_2026["head"]
    missing_mp4 = f"videos/{head}/chunk-001/file-001.mp4"
    truncated_mp4 = f"videos/{S.CAMERAS_2026['right_wrist']}/chunk-000/file-000.mp4"
    missing_parquet = "data/chunk-000/file-001.parquet"
    (root / missing_mp4).unlink()
    (root / missing_parquet).unlink()
    data = (root / truncated_mp4).read_bytes()
    (root / truncated_mp4).write_bytes(data[: len(data) // 2])

    report = inspect_json(root, expect_rc=1)
    problems = {(p["kind"], p["path"]) for p in report["problems"]}
    assert problems == {("missing", missing_mp4), ("missing", missing_parquet), ("unreadable", truncated_mp4)}
    by_key = {c["key"]: c for c in report["cameras"]}
    assert by_key[head]["missing"] == 1 and by_key[head]["probed"] == 3
    assert by_key[S.CAMERAS_2026["right_wrist"]]["probed"] == 1
    assert report["data_files"]["missing"] == 1
    detail = next(p["detail"] for p in report["problems"] if p["path"] == missing_mp4)
    assert "episode(s) 5" in detail

    console = Console(record=True, width=120)
    print_report(inspect_dataset(root), console)
    text = console.export_text()
    assert "problems (3)" in text and "file-001.mp4" in text and "unreadable" in text


def test_missing_dataset_folder_is_a_one_line_error(tmp_path):
    proc = run_inspect(tmp_path / "nowhere")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nowhere") in lines[0] and "error" in lines[0]
    assert proc.stdout == ""
