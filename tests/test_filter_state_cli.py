"""`smolvla-filter-state`: --list, --map (name or file) with --json, --check-standard-track exit codes, per-dim dataset
stats, and one-line errors for bad input. The command runs in this process (``tests/cli_runner.py``) except for one
case per exit code (0, 1, 2), which run the installed console script in a real subprocess."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pyarrow.parquet as pq
from cli_runner import CliResult, run_in_process, run_subprocess

SHIPPED = {"identity", "identity-motion", "motion-only", "r1pro-2025-b1k23", "r1pro-2025-full", "r1pro-2025-legal32",
           "r1pro-2025-standard", "r1pro-2025-top32", "r1pro-2026-b1k25", "r1pro-2026-full"}


def cli(*args: str, subprocess: bool = False) -> CliResult:
    """Run ``smolvla-filter-state`` in this process, or (``subprocess``) the installed console script."""
    env = {"HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    if subprocess:
        return run_subprocess("smolvla-filter-state", list(args), env=env, timeout=120)
    return run_in_process("smolvla-filter-state", list(args), env=env)


def test_list_shows_every_shipped_map():
    proc = cli("--list", subprocess=True)
    assert proc.returncode == 0, proc.stderr
    for name in SHIPPED:
        assert name in proc.stdout
    rows = {r["name"]: r for r in json.loads(cli("--list", "--json").stdout)}
    assert set(rows) == SHIPPED
    assert rows["r1pro-2025-standard"]["output_dim"] == 217 and rows["r1pro-2025-standard"]["input_dim"] == 256
    assert rows["r1pro-2025-full"]["standard_track_legal"] is False
    assert rows["r1pro-2025-legal32"]["standard_track_legal"] is True
    assert rows["identity"]["layout"] == "any" and rows["identity"]["input_dim"] is None


def test_map_json_has_the_contract_keys():
    proc = cli("--map", "r1pro-2025-b1k23", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["name"] == "r1pro-2025-b1k23" and out["layout"] == "r1pro-2025"
    assert out["input_dim"] == 256 and out["output_dim"] == 23 and out["standard_track_legal"] is True
    # written from the reference table: base_qvel, trunk_qpos, left arm, left fingers (sum), right arm, right fingers
    assert out["source_indices"] == [253, 254, 255, 236, 237, 238, 239, *range(158, 165), 193, 194,
                                     *range(197, 204), 232, 233]
    assert out["names"][14] == "gripper_left_width" and out["names"][22] == "gripper_right_width"
    assert len(out["names"]) == 23 and out["standard_track_violations"] == []


def test_map_table_shows_sources_groups_and_flags():
    proc = cli("--map", "r1pro-2025-standard")
    assert proc.returncode == 0, proc.stderr
    assert "joint_qeffort.0" in proc.stdout and "unreliable" in proc.stdout
    assert "joint_qpos.6" in proc.stdout and "joint_qpos.5 " not in proc.stdout


def test_check_standard_track_exit_codes(tmp_path):
    legal = cli("--map", "r1pro-2025-legal32", "--check-standard-track")
    assert legal.returncode == 0 and "is legal" in legal.stdout
    illegal = cli("--map", "r1pro-2025-full", "--check-standard-track", subprocess=True)
    assert illegal.returncode == 1
    assert "39 forbidden dims" in illegal.stdout and "robot_pos.0..2 (140:143)" in illegal.stdout
    user = tmp_path / "with_pose.yaml"
    user.write_text("layout: r1pro-2025\nentries: [trunk_qpos, base_qpos]\n")
    proc = cli("--map", str(user), "--check-standard-track", "--json")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)  # stdout stays pure JSON; the verdict goes to stderr
    assert out["standard_track_legal"] is False
    assert out["standard_track_violations"] == ["base_qpos.0", "base_qpos.1", "base_qpos.2"]
    assert "base_qpos.0..2 (244:247)" in proc.stderr
    assert cli("--map", "identity", "--check-standard-track").returncode == 1  # legality undefined for `any`


def test_bad_map_file_and_unknown_name_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("layout: r1pro-2025\nentries:\n  - {block: arm_left_qpos, slice: '5:9'}\n")
    proc = cli("--map", str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and str(bad) in message and "out of range" in message
    proc = cli("--map", "top32", subprocess=True)
    assert proc.returncode == 2 and "unknown state map 'top32'" in proc.stderr and "r1pro-2025-top32" in proc.stderr
    proc = cli()
    assert proc.returncode == 2 and "--list" in proc.stderr


def test_dataset_stats_per_output_dim(synthetic_2025):
    from behavior_smolvla.data.meta import DatasetMeta

    meta = DatasetMeta.load(synthetic_2025)
    first = sorted(meta.episodes)[0]
    proc = cli("--map", "r1pro-2025-full", "--dataset", str(synthetic_2025), "--episodes", str(first), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["episodes"] == [first] and out["frames"] == meta.episodes[first].length
    info = meta.episodes[first]
    table = pq.read_table(info.data_path, columns=["observation.state"])
    raw = np.asarray(table.column("observation.state").to_pylist(), dtype=np.float64)[info.row_start:info.row_stop]
    for key, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
        np.testing.assert_allclose(out["stats"][key], fn(raw, axis=0), rtol=1e-4, atol=1e-5, err_msg=key)
    expected_constant = [out["names"][i] for i in np.flatnonzero(raw.std(axis=0) < 1e-6)]
    assert out["constant"] == expected_constant and "robot_pos.2" in expected_constant  # the robot stays on the floor
    assert out["unreliable"] == [f"joint_qeffort.{k}" for k in range(28)]
    table_proc = cli("--map", "r1pro-2025-full", "--dataset", str(synthetic_2025), "--episodes", str(first))
    assert table_proc.returncode == 0 and "constant" in table_proc.stdout and "unreliable" in table_proc.stdout


def test_dataset_picks_the_default_map_and_refuses_a_wrong_layout(synthetic_2025):
    proc = cli("--dataset", str(synthetic_2025), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["name"] == "r1pro-2025-top32"
    proc = cli("--map", "r1pro-2026-b1k25", "--dataset", str(synthetic_2025))
    assert proc.returncode == 2
    assert "r1pro-2026-b1k25" in proc.stderr and "has 256" in proc.stderr
    proc = cli("--map", "identity", "--dataset", str(synthetic_2025), "--episodes", "999999")
    assert proc.returncode == 2 and "999999" in proc.stderr


def test_velocity_map_over_a_dataset_describes_its_motion_dims(g1_v30):
    """identity-motion over the G1 at a frame stride of 3: 26 positions then 26 velocities over 3 frames (0.1 s),
    with stats of the velocities (rad/s), said in the JSON and in the table."""
    proc = cli("--map", "identity-motion", "--dataset", str(g1_v30), "--episodes", "0", "--frame-stride", "3",
               "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["output_dim"] == 52 and out["names"][26] == "kLeftShoulderPitch.vel"
    assert out["velocity"]["dims"] == out["names"][26:]
    assert (out["velocity"]["lag_steps"], out["velocity"]["lag_frames"]) == (1, 3)
    assert out["velocity"]["dt_s"] == pytest.approx(0.1) and out["timing"] == {"fps": 30.0, "frame_stride": 3}
    assert all(d["velocity_lag"] == 1 for d in out["dims"][26:])
    assert max(out["stats"]["std"][26:]) > 0.05  # the right arm moves: tenths of rad/s
    table = cli("--map", "identity-motion", "--dataset", str(g1_v30), "--episodes", "0", "--frame-stride", "3")
    assert table.returncode == 0 and "over 3 frames" in table.stdout and "0.1 s at 30 fps" in table.stdout
