"""State maps: shipped layouts and maps against the R1Pro index tables, apply/stats/legality, errors, packaging.

The expected indices and names below are written from the tables in ``shared/reference/behavior_r1pro.md`` (and
BEHAVIOR-1K's PROPRIOCEPTION_INDICES), never derived from the implementation or the YAML files.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from behavior_smolvla.errors import StateMapError
from behavior_smolvla.state_maps.layouts import list_layouts, load_layout
from behavior_smolvla.state_maps.maps import (
    StateMap,
    default_state_map,
    list_state_maps,
    load_state_map,
    standard_track_map,
)

REPO = Path(__file__).resolve().parents[1]

# The 2025 table: (name, start, stop).
TABLE_2025 = [
    ("joint_qpos", 0, 28), ("joint_qpos_sin", 28, 56), ("joint_qpos_cos", 56, 84), ("joint_qvel", 84, 112),
    ("joint_qeffort", 112, 140), ("robot_pos", 140, 143), ("robot_ori_cos", 143, 146), ("robot_ori_sin", 146, 149),
    ("robot_2d_ori", 149, 150), ("robot_2d_ori_cos", 150, 151), ("robot_2d_ori_sin", 151, 152),
    ("robot_lin_vel", 152, 155), ("robot_ang_vel", 155, 158), ("arm_left_qpos", 158, 165),
    ("arm_left_qpos_sin", 165, 172), ("arm_left_qpos_cos", 172, 179), ("arm_left_qvel", 179, 186),
    ("eef_left_pos", 186, 189), ("eef_left_quat", 189, 193), ("gripper_left_qpos", 193, 195),
    ("gripper_left_qvel", 195, 197), ("arm_right_qpos", 197, 204), ("arm_right_qpos_sin", 204, 211),
    ("arm_right_qpos_cos", 211, 218), ("arm_right_qvel", 218, 225), ("eef_right_pos", 225, 228),
    ("eef_right_quat", 228, 232), ("gripper_right_qpos", 232, 234), ("gripper_right_qvel", 234, 236),
    ("trunk_qpos", 236, 240), ("trunk_qvel", 240, 244), ("base_qpos", 244, 247), ("base_qpos_sin", 247, 250),
    ("base_qpos_cos", 250, 253), ("base_qvel", 253, 256),
]
FORBIDDEN_2025 = [*range(0, 6), *range(28, 34), *range(56, 62), *range(140, 152), *range(244, 253)]
TABLE_2026 = [
    ("base_qvel", 0, 3), ("arm_left_qpos", 3, 10), ("arm_left_qvel", 10, 17), ("eef_left_pos", 17, 20),
    ("eef_left_quat", 20, 24), ("gripper_left_qpos", 24, 26), ("gripper_left_qvel", 26, 28),
    ("arm_right_qpos", 28, 35), ("arm_right_qvel", 35, 42), ("eef_right_pos", 42, 45), ("eef_right_quat", 45, 49),
    ("gripper_right_qpos", 49, 51), ("gripper_right_qvel", 51, 53), ("trunk_qpos", 53, 57), ("trunk_qvel", 57, 61),
]


def names_of(table):
    return [f"{name}.{k}" for name, start, stop in table for k in range(stop - start)]


def block(table, name, part=None):
    """(indices, names) of a block of a table, optionally a block-relative range."""
    start, stop = next((s, e) for n, s, e in table if n == name)
    ks = list(range(stop - start)) if part is None else list(part)
    return [start + k for k in ks], [f"{name}.{k}" for k in ks]


def selection(table, *parts):
    idx, names = [], []
    for part in parts:
        i, n = block(table, *part) if isinstance(part, tuple) else block(table, part)
        idx += i
        names += n
    return idx, names


# ------------------------------------------------------------------------------------------------ layouts


def test_layout_2025_matches_the_table():
    layout = load_layout("r1pro-2025")
    assert layout.state_dim == 256 and layout.names == names_of(TABLE_2025)
    assert {n: (s, e) for n, s, e in TABLE_2025} == layout.blocks
    assert [d.index for d in layout.dims if not d.standard_track] == FORBIDDEN_2025
    assert [d.index for d in layout.dims if d.unreliable] == list(range(112, 140))
    assert layout.dims[161].name == "arm_left_qpos.3"
    # Joint order inside joint_qpos (PROPRIO_QPOS_INDICES): base 0:6, torso 6:10, arms interleaved, fingers.
    groups = [layout.dims[i].group for i in range(28)]
    assert groups[0:6] == ["base"] * 6 and groups[6:10] == ["trunk"] * 4
    assert groups[10:24:2] == ["left_arm"] * 7 and groups[11:24:2] == ["right_arm"] * 7
    assert groups[24:26] == ["left_gripper"] * 2 and groups[26:28] == ["right_gripper"] * 2
    assert layout.dims[84].standard_track and layout.dims[84].group == "base"  # base joint velocity: allowed


def test_layout_2026_matches_the_table():
    layout = load_layout("r1pro-2026")
    assert layout.state_dim == 61 and layout.names == names_of(TABLE_2026)
    assert all(d.standard_track and not d.unreliable for d in layout.dims)
    assert list_layouts() == ["r1pro-2025", "r1pro-2026"]


# ------------------------------------------------------------------------------------------- shipped maps


def expected_maps():
    t25, t26 = TABLE_2025, TABLE_2026
    b1k23_idx, b1k23_names = selection(t25, "base_qvel", "trunk_qpos", "arm_left_qpos")
    b1k23_idx += [193, 194]
    b1k23_names += ["gripper_left_width"]
    i, n = block(t25, "arm_right_qpos")
    b1k23_idx += i + [232, 233]
    b1k23_names += n + ["gripper_right_width"]
    standard_idx = [i for i in range(256) if i not in FORBIDDEN_2025]
    all_names = names_of(t25)
    return {
        "r1pro-2025-top32": selection(
            t25, "arm_left_qpos", ("arm_left_qvel", range(2)), "eef_left_pos", "gripper_left_qpos",
            "arm_right_qpos", ("arm_right_qvel", range(2)), "eef_right_pos", "gripper_right_qpos", "trunk_qpos"),
        "r1pro-2025-standard": (standard_idx, [all_names[i] for i in standard_idx]),
        "r1pro-2025-b1k23": (b1k23_idx, b1k23_names),
        "r1pro-2025-full": (list(range(256)), all_names),
        "r1pro-2026-b1k25": selection(
            t26, "base_qvel", "trunk_qpos", "arm_left_qpos", "gripper_left_qpos", "arm_right_qpos",
            "gripper_right_qpos"),
        "r1pro-2026-full": (list(range(61)), names_of(t26)),
    }


@pytest.mark.parametrize("name", sorted(expected_maps()))
def test_shipped_map_dims_and_names(name):
    idx, names = expected_maps()[name]
    m = load_state_map(name)
    assert m.source_indices == idx
    assert m.names == names
    assert m.input_dim == (256 if "2025" in name else 61)
    assert m.description and "ource" in m.description  # every map cites its source


def test_top32_is_32_ascending_and_legal():
    m = load_state_map("r1pro-2025-top32")
    assert m.output_dim == 32 and m.source_indices == sorted(m.source_indices)
    assert m.is_standard_track_legal()


def test_standard_excludes_exactly_the_forbidden_dims():
    m = load_state_map("r1pro-2025-standard")
    assert m.output_dim == 217 and m.source_indices == sorted(m.source_indices)
    excluded = sorted(set(range(256)) - set(m.source_indices))
    assert excluded == [*range(0, 6), *range(28, 34), *range(56, 62), *range(140, 152), *range(244, 253)]
    assert m.is_standard_track_legal()
    assert standard_track_map(256).name == "r1pro-2025-standard"
    assert standard_track_map(61).name == "r1pro-2026-full"
    with pytest.raises(StateMapError, match="no standard-track map for a 40-dim"):
        standard_track_map(40)


def test_b1k23_is_in_action_order_with_gripper_width_sums():
    m = load_state_map("r1pro-2025-b1k23")
    assert m.output_dim == 23
    widths = [d for d in m.dims if d.reduce == "sum"]
    # action layout: base 0:3, torso 3:7, left arm 7:14, left gripper 14, right arm 15:22, right gripper 22
    assert [(d.index, d.sources) for d in widths] == [(14, (193, 194)), (22, (232, 233))]
    assert m.is_standard_track_legal()


def test_legal32_is_legal_and_includes_base_qvel():
    m = load_state_map("r1pro-2025-legal32")
    assert m.output_dim == 32 and m.is_standard_track_legal()
    assert not set(m.source_indices) & set(FORBIDDEN_2025)
    assert {253, 254, 255} <= set(m.source_indices)
    assert not any(d.unreliable for d in m.dims)
    assert len(set(m.names)) == 32


def test_full_is_illegal_and_flags_unreliable_efforts():
    m = load_state_map("r1pro-2025-full")
    assert not m.is_standard_track_legal()
    assert [d.sources[0] for d in m.standard_track_violations()] == FORBIDDEN_2025
    assert [d.index for d in m.dims if d.unreliable] == list(range(112, 140))


def test_list_and_defaults():
    names = [m.name for m in list_state_maps()]
    assert names == sorted(names)
    assert set(names) == {*expected_maps(), "r1pro-2025-legal32", "identity", "identity-motion", "motion-only"}
    assert default_state_map(256).name == "r1pro-2025-top32"
    assert default_state_map(61).name == "r1pro-2026-b1k25"
    ident = default_state_map(26)
    assert ident.name == "identity" and ident.output_dim == 26 and ident.source_indices == list(range(26))
    with pytest.raises(StateMapError, match="no default state map for a 40-dim"):
        default_state_map(40)


def test_identity_binds_to_any_dim_and_uses_state_names():
    ident = load_state_map("identity")
    assert ident.input_dim is None and ident.output_dim is None and not ident.is_standard_track_legal()
    bound = ident.bind(3, ["a", "b", "c"])
    assert bound.names == ["a", "b", "c"] and bound.input_dim == 3
    assert ident.bind(2).names == ["state.0", "state.1"]
    with pytest.raises(StateMapError, match="call .bind"):
        ident.apply(np.zeros((1, 3)))


# ------------------------------------------------------------------------------------------ apply / stats


def test_apply_numpy_and_torch_select_and_sum():
    m = load_state_map("r1pro-2025-b1k23")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 256))  # float64 in, float32 out
    before = x.copy()
    y = m.apply(x)
    assert y.dtype == np.float32 and y.shape == (2, 5, 23)
    np.testing.assert_array_equal(x, before)
    expected = np.concatenate([x[..., 253:256], x[..., 236:240], x[..., 158:165], x[..., 193:194] + x[..., 194:195],
                               x[..., 197:204], x[..., 232:233] + x[..., 233:234]], axis=-1).astype(np.float32)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    t = torch.from_numpy(x.astype(np.float32))
    yt = m.apply(t)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32 and yt.shape == (2, 5, 23)
    np.testing.assert_allclose(yt.numpy(), expected, rtol=1e-6, atol=1e-6)
    # a map without reductions is a pure gather: values identical, not approximately equal
    top = load_state_map("r1pro-2025-top32")
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(top.apply(x32), x32[..., top.source_indices])
    assert top.apply(x32[0, 0]).shape == (32,)
    with pytest.raises(StateMapError, match=r"expects observation.state \[..., 256\]"):
        top.apply(np.zeros((4, 61)))


def exact_stats(values):
    v = np.asarray(values, dtype=np.float64)
    out = {"mean": v.mean(0), "std": v.std(0), "min": v.min(0), "max": v.max(0),
           "q01": np.quantile(v, 0.01, axis=0), "q99": np.quantile(v, 0.99, axis=0)}
    return {k: a.astype(np.float32) for k, a in out.items()}


@pytest.mark.parametrize("name", ["r1pro-2025-b1k23", "r1pro-2025-legal32", "r1pro-2025-top32"])
def test_map_stats_equal_stats_of_mapped_data(name):
    m = load_state_map(name)
    raw = np.random.default_rng(1).uniform(0, 0.05, size=(300, 256)).astype(np.float32)
    stats = {**exact_stats(raw), "count": np.array([300])}
    mapped = m.map_stats(stats, raw_state=raw)
    direct = exact_stats(m.apply(raw))
    assert set(mapped) == {*direct, "count"} and mapped["count"].tolist() == [300]
    for key in direct:
        assert mapped[key].dtype == np.float32 and mapped[key].shape == (m.output_dim,)
        np.testing.assert_allclose(mapped[key], direct[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_map_stats_of_sum_entries_needs_samples_except_for_the_mean():
    m = load_state_map("r1pro-2025-b1k23")
    raw = np.random.default_rng(2).normal(size=(50, 256))
    stats = exact_stats(raw)
    with pytest.raises(StateMapError, match=r"\(gripper_left_width, gripper_right_width\): pass raw_state"):
        m.map_stats(stats)
    mean_only = m.map_stats({"mean": stats["mean"]})
    np.testing.assert_allclose(mean_only["mean"][14], stats["mean"][193] + stats["mean"][194], rtol=1e-6)
    # plain maps never need samples
    assert load_state_map("r1pro-2025-top32").map_stats(stats)["std"].shape == (32,)


def test_to_dict_round_trip_is_self_contained():
    for m in list_state_maps():
        d = m.to_dict()
        for key in ("name", "layout", "input_dim", "output_dim", "source_indices", "names", "standard_track_legal"):
            assert key in d
        again = StateMap.from_dict(json.loads(json.dumps(d)))
        assert again == m and again.is_standard_track_legal() == m.is_standard_track_legal()
        assert yaml.safe_load(yaml.safe_dump(d)) == d
    bound = load_state_map("identity").bind(4)
    assert StateMap.from_dict(bound.to_dict()).source_indices == [0, 1, 2, 3]
    m = load_state_map("r1pro-2025-legal32")
    x = np.random.default_rng(3).normal(size=(3, 256)).astype(np.float32)
    np.testing.assert_array_equal(StateMap.from_dict(m.to_dict()).apply(x), m.apply(x))


# ------------------------------------------------------------------------------------------------ errors


def write_map(tmp_path, text, name="my_map.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def one_line_error(fn, *args, match):
    with pytest.raises(StateMapError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_user_map_file_works_like_a_name(tmp_path):
    path = write_map(tmp_path, """
kind: map
name: arms-only
layout: r1pro-2025
description: "both arms' joint positions (source: the 2025 table)"
entries:
  - arm_left_qpos
  - {block: arm_right_qpos, name: right}
  - {slice: "253:256"}
  - {name: both_grippers, slice: [193, 194, 232, 233], reduce: sum}
""")
    m = load_state_map(path)
    assert m.name == "arms-only" and m.output_dim == 7 + 7 + 3 + 1
    assert m.names[7:9] == ["right.0", "right.1"] and m.names[14:17] == ["base_qvel.0", "base_qvel.1", "base_qvel.2"]
    assert m.source_indices[-4:] == [193, 194, 232, 233]
    assert load_state_map(str(path)) == m


def test_errors_are_one_line_and_name_the_file_and_fix(tmp_path):
    msg = one_line_error(load_state_map, "r1pro-2025-top33", match="unknown state map 'r1pro-2025-top33'")
    assert "r1pro-2025-top32" in msg and "identity" in msg  # lists the known maps
    bad_index = write_map(tmp_path, "kind: map\nlayout: r1pro-2025\nentries:\n  - {slice: '250:260'}\n")
    msg = one_line_error(load_state_map, bad_index, match="out of range")
    assert str(bad_index) in msg and "fix the slice" in msg
    bad_rel = write_map(tmp_path, "layout: r1pro-2025\nentries:\n  - {block: trunk_qpos, slice: 4}\n", "rel.yaml")
    one_line_error(load_state_map, bad_rel, match=r"rel.yaml entries\[0\]: index 4 is out of range 0..3")
    dup = write_map(tmp_path, "layout: r1pro-2025\nentries: [trunk_qpos, {slice: '237'}]\n", "dup.yaml")
    msg = one_line_error(load_state_map, dup, match="output name 'trunk_qpos.1' is used twice")
    assert "dup.yaml" in msg and "different 'name'" in msg
    unknown_layout = write_map(tmp_path, "layout: r1pro-2024\nentries: [trunk_qpos]\n", "lay.yaml")
    msg = one_line_error(load_state_map, unknown_layout, match="unknown layout 'r1pro-2024'")
    assert "lay.yaml" in msg and "r1pro-2025" in msg and "any" in msg
    unknown_block = write_map(tmp_path, "layout: r1pro-2026\nentries: [joint_qpos]\n", "blk.yaml")
    one_line_error(load_state_map, unknown_block, match="layout r1pro-2026 has no block 'joint_qpos'")
    no_name = write_map(tmp_path, "layout: r1pro-2025\nentries: [{block: gripper_left_qpos, reduce: sum}]\n", "s.yaml")
    one_line_error(load_state_map, no_name, match="needs a 'name'")
    bad_reduce = write_map(tmp_path, "layout: r1pro-2025\nentries: [{slice: '0:2', name: x, reduce: max}]\n", "r.yaml")
    one_line_error(load_state_map, bad_reduce, match="unknown reduce 'max'")
    typo = write_map(tmp_path, "layout: r1pro-2025\nentries: [{blok: trunk_qpos}]\n", "typo.yaml")
    one_line_error(load_state_map, typo, match="unknown key")
    broken = write_map(tmp_path, "layout: [unclosed\n", "broken.yaml")
    one_line_error(load_state_map, broken, match="broken.yaml line .*not valid YAML")
    one_line_error(load_state_map, tmp_path / "missing.yaml", match="missing.yaml does not exist")


def test_state_dim_mismatch_names_the_map_and_the_fix():
    msg = one_line_error(load_state_map("r1pro-2026-b1k25").bind, 256,
                         match="'r1pro-2026-b1k25' .* is for layout r1pro-2026 with 61 state dims, but the dataset's "
                               "observation.state has 256")
    assert "r1pro-2026-b1k25.yaml" in msg and "r1pro-2025-top32" in msg
    ident_slice = StateMap.from_dict({"name": "first8", "layout": "any", "entries": [{"slice": "0:8"}]})
    one_line_error(ident_slice.bind, 6, match="out of range for 6 dims")


# ----------------------------------------------------------------------------------------- with a dataset


def read_raw_state(root: Path, meta, episodes) -> dict[int, np.ndarray]:
    """observation.state [T, D] per episode, read straight from the parquet files (pyarrow, no project code)."""
    out = {}
    for ep in episodes:
        info = meta.episodes[ep]
        table = pq.read_table(info.data_path, columns=["observation.state"])
        rows = np.asarray(table.column("observation.state").to_pylist(), dtype=np.float32)
        out[ep] = rows[info.row_start:info.row_stop]
    return out


def test_dataset_samples_are_mapped_states(synthetic_2025):
    from behavior_smolvla.data.dataset import BehaviorDataset
    from behavior_smolvla.synthetic.datasets import load_ground_truth

    truth = load_ground_truth(synthetic_2025)
    ds = BehaviorDataset(synthetic_2025, cameras=[], chunk_size=2, state_map=load_state_map("r1pro-2025-b1k23").bind(256))
    assert ds.state_names == expected_maps()["r1pro-2025-b1k23"][1]
    for i in (0, len(ds) // 2, len(ds) - 1):
        sample = ds[i]
        ep, t = int(sample["episode_index"]), int(sample["frame_index"])
        raw = truth[ep].state[t]
        expected = np.concatenate([raw[253:256], raw[236:240], raw[158:165], [raw[193] + raw[194]], raw[197:204],
                                   [raw[232] + raw[233]]]).astype(np.float32)
        state = np.asarray(sample["observation.state"])
        assert state.dtype == np.float32 and state.shape == (23,)
        np.testing.assert_allclose(state, expected, rtol=1e-6, atol=1e-7)
    # The synthetic robot reaches its torso/arm targets exactly: in action order, mapped state[t + 1] equals
    # action[t] on the torso and arm dims. This only holds if the map picked the right source dims.
    ep = truth[ds.episodes[0]]
    mapped = load_state_map("r1pro-2025-b1k23").apply(ep.state)
    joints = [*range(3, 14), *range(15, 22)]
    np.testing.assert_allclose(mapped[1:, joints], ep.action[:-1, joints], atol=1e-5)
    width = mapped[:, [14, 22]]
    assert width.min() >= -1e-6 and width.max() <= 0.1 + 1e-6  # two fingers of 0..0.05 m each


def test_dataset_stats_of_the_mapped_state_equal_direct_stats(synthetic_2025):
    from behavior_smolvla.data.dataset import BehaviorDataset
    from behavior_smolvla.data.meta import DatasetMeta

    meta = DatasetMeta.load(synthetic_2025)
    for name in ("r1pro-2025-b1k23", "r1pro-2025-legal32", "r1pro-2025-standard"):
        m = load_state_map(name)
        ds = BehaviorDataset(synthetic_2025, cameras=[], chunk_size=1, state_map=load_state_map(name).bind(256))
        raw = np.concatenate(list(read_raw_state(synthetic_2025, meta, ds.episodes).values()))
        direct = exact_stats(m.apply(raw))
        stats = ds.stats["observation.state"]
        for key in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(stats[key], direct[key], rtol=1e-4, atol=1e-5, err_msg=f"{name} {key}")
    # one episode: every stat, quantiles included, equals the direct computation
    first = sorted(meta.episodes)[0]
    ds = BehaviorDataset(synthetic_2025, episodes=[first], cameras=[], chunk_size=1, state_map=load_state_map("r1pro-2025-b1k23").bind(256))
    direct = exact_stats(load_state_map("r1pro-2025-b1k23").apply(read_raw_state(synthetic_2025, meta, [first])[first]))
    for key, value in direct.items():
        np.testing.assert_allclose(ds.stats["observation.state"][key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_2026_dataset_samples_are_mapped_states(synthetic_2026):
    from behavior_smolvla.data.dataset import BehaviorDataset
    from behavior_smolvla.synthetic.datasets import load_ground_truth

    truth = load_ground_truth(synthetic_2026)
    ds = BehaviorDataset(synthetic_2026, cameras=[], chunk_size=1, state_map=load_state_map("r1pro-2026-b1k25").bind(61))
    for i in (0, len(ds) - 1):
        sample = ds[i]
        raw = truth[int(sample["episode_index"])].state[int(sample["frame_index"])]
        # 2026 table: base_qvel 0:3, trunk_qpos 53:57, arm_left_qpos 3:10, gripper_left_qpos 24:26,
        # arm_right_qpos 28:35, gripper_right_qpos 49:51
        expected = raw[[0, 1, 2, 53, 54, 55, 56, *range(3, 10), 24, 25, *range(28, 35), 49, 50]]
        np.testing.assert_array_equal(np.asarray(sample["observation.state"]), expected)
    ep = truth[ds.episodes[0]]
    mapped = load_state_map("r1pro-2026-b1k25").apply(ep.state)
    # torso and arms reach their targets exactly: mapped state[t + 1] == action[t] on those dims
    np.testing.assert_allclose(mapped[1:, 3:14], ep.action[:-1, 3:14], atol=1e-5)
    np.testing.assert_allclose(mapped[1:, 16:23], ep.action[:-1, 15:22], atol=1e-5)


def test_dataset_with_the_wrong_layout_is_refused(synthetic_2025):
    from behavior_smolvla.data.dataset import BehaviorDataset

    with pytest.raises(StateMapError, match="for layout r1pro-2026 with 61 state dims, but the dataset's "
                                            "observation.state has 256"):
        BehaviorDataset(synthetic_2025, cameras=[], state_map=load_state_map("r1pro-2026-b1k25").bind(256))


# ------------------------------------------------------------------------------------------------ packaging


def test_yaml_files_ship_in_the_wheel_and_load_from_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md", "behavior_smolvla", "state_maps"):
        if (REPO / item).is_dir():
            shutil.copytree(REPO / item, src / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif (REPO / item).exists():
            shutil.copy(REPO / item, src / item)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("*.whl")
    shipped = sorted(p.name for p in (REPO / "state_maps").glob("*.yaml"))
    with zipfile.ZipFile(wheel) as z:
        in_wheel = sorted(Path(n).name for n in z.namelist()
                          if n.startswith("behavior_smolvla/state_map_files/") and n.endswith(".yaml"))
        assert in_wheel == shipped
        target = tmp_path / "site"
        z.extractall(target)
    # Import from the unpacked wheel only (cwd elsewhere, no editable finder), then list and load every map.
    code = ("import json, behavior_smolvla.state_maps.maps as s; "
            "print(json.dumps([s.__file__, [(m.name, m.output_dim) for m in s.list_state_maps()]]))")
    # -S: no site processing, so the checkout's editable-install finder is not active; numpy/yaml come from the
    # venv's site-packages appended after the unpacked wheel.
    site_packages = Path(np.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(site_packages)])}
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout
    module_file, maps = json.loads(out)
    assert module_file.startswith(str(target))
    assert dict(maps)["r1pro-2025-standard"] == 217 and len(maps) == len(list_state_maps())


# ------------------------------------------------------------------------------------------------ velocity entries


def test_velocity_entries_parse_name_and_keep_the_layout_facts(tmp_path):
    """``velocity: {lag: k}`` entries: names ``<position>.vel`` (or the entry's name), the sources' group, legality
    and reliability; identity-motion doubles any state."""
    motion = load_state_map("identity-motion")
    assert motion.layout == "any" and motion.has_velocity and not motion.is_bound
    g1_names = [f"j{i}" for i in range(26)]
    bound = motion.bind(26, g1_names, fps=30, frame_stride=3)
    assert bound.output_dim == 52 and bound.names == g1_names + [f"{n}.vel" for n in g1_names]
    assert bound.source_indices == [*range(26), *range(26)]
    assert (bound.velocity_lag, bound.lag_frames, bound.velocity_dt, bound.timing) == (1, 3, 0.1, (30.0, 3))
    assert bound.describe_dim(bound.dims[30]) == "d(4)/dt over 3 frames" and bound.describe_dim(bound.dims[4]) == "4"
    only = load_state_map("motion-only").bind(26, g1_names, fps=30, frame_stride=3)  # the velocities, no positions
    assert only.names == [f"{n}.vel" for n in g1_names] and only.source_indices == list(range(26))
    assert [d.velocity_lag for d in only.dims] == [1] * 26 and only.velocity_dt == bound.velocity_dt

    path = write_map(tmp_path, """
layout: r1pro-2026
entries:
  - arm_left_qpos
  - {block: arm_left_qpos, velocity: {lag: 2}}
  - {block: gripper_left_qpos, reduce: sum, name: gripper_left_width_vel, velocity: {lag: 2}}
""")
    m = load_state_map(path)
    left, left_names = block(TABLE_2026, "arm_left_qpos")
    assert m.names == left_names + [f"{n}.vel" for n in left_names] + ["gripper_left_width_vel"]
    assert m.source_indices == left + left + [24, 25]
    assert m.velocity_lag == 2 and m.timing is None and m.is_standard_track_legal()
    assert {m.dims[i].group for i in range(7, 15)} == {"left_arm", "left_gripper"}
    assert [d.velocity_lag for d in m.dims] == [0] * 7 + [2] * 8 and m.dims[14].reduce == "sum"
    # Without a velocity entry nothing changes: no timing is kept, the saved form is the one before velocities.
    plain = load_state_map("r1pro-2026-b1k25")
    assert plain.bind(61, fps=30, frame_stride=3) is plain and "timing" not in plain.to_dict()
    assert all("velocity_lag" not in d for d in plain.to_dict()["dims"])


def test_apply_with_previous_is_the_difference_over_dt():
    """v = (m(x) - m(previous)) / (lag * frame_stride / fps), numpy and torch alike; positions untouched."""
    path_map = StateMap.from_dict({"name": "t", "layout": "any", "entries": [
        {"slice": "0:3"}, {"slice": [0, 2], "velocity": {"lag": 2}}, {"slice": "1:3", "name": "w", "reduce": "sum",
                                                                      "velocity": {"lag": 2}}]})
    m = path_map.bind(3, fps=15.0, frame_stride=3)  # 2 steps x 3 frames at 15 fps: dt = 0.4 s
    assert m.names == ["state.0", "state.1", "state.2", "state.0.vel", "state.2.vel", "w"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5, 3)).astype(np.float32)
    prev = rng.normal(size=(4, 5, 3)).astype(np.float32)
    dt = 6 / 15.0
    expected = np.concatenate([x, (x[..., [0, 2]] - prev[..., [0, 2]]) / dt,
                               ((x[..., 1] + x[..., 2]) - (prev[..., 1] + prev[..., 2]))[..., None] / dt], axis=-1)
    out = m.apply(x, prev)
    assert out.dtype == np.float32 and out.shape == (4, 5, 6)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(m.apply(x, x)[..., 3:], 0.0)  # no motion: zero velocity
    np.testing.assert_array_equal(m.apply(torch.from_numpy(x), torch.from_numpy(prev)).numpy(), out)
    x_copy = x.copy()
    m.apply(x, prev)
    np.testing.assert_array_equal(x, x_copy)  # inputs never modified
    msg = one_line_error(m.apply, x, match=r"velocity dims: apply\(x, previous\) needs the raw state 6 frames earlier")
    assert "got none" in msg
    one_line_error(m.apply, x, prev[:1], match="shaped like x")
    one_line_error(path_map.bind(3).apply, x, prev, match="bind it with the dataset's fps and the frame stride")
    with pytest.raises(StateMapError, match="fps > 0 and an integer frame_stride >= 1") as info:
        path_map.bind(3, fps=30, frame_stride=0)
    assert "\n" not in str(info.value)


def test_velocity_stats_and_round_trip():
    """map_stats: positions from the stored stats, velocities from (raw, previous) samples; to_dict keeps the timing
    and from_dict gives an equal map."""
    m = load_state_map("identity-motion").bind(3, fps=30, frame_stride=2)
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(200, 3)).astype(np.float32)
    prev = np.concatenate([raw[:2], raw[:-2]])  # lag 2 frames, clamped at the first row
    stored = {**exact_stats(raw), "count": np.array([200])}
    stats = m.map_stats(stored, raw_state=raw, previous=prev)
    direct = exact_stats(m.apply(raw, prev))
    for key in ("mean", "std", "min", "max", "q01", "q99"):
        np.testing.assert_array_equal(stats[key][:3], stored[key])
        np.testing.assert_allclose(stats[key][3:], direct[key][3:], rtol=1e-5, atol=1e-6)
    assert stats["count"].tolist() == [200]
    one_line_error(m.map_stats, stored, raw, match="has velocity entries .* pass raw_state and previous")
    saved = json.loads(json.dumps(m.to_dict()))
    assert saved["timing"] == {"fps": 30.0, "frame_stride": 2} and saved["dims"][3]["velocity_lag"] == 1
    again = StateMap.from_dict(saved)
    assert again == m and again.lag_frames == 2
    np.testing.assert_array_equal(again.apply(raw, prev), m.apply(raw, prev))


@pytest.mark.parametrize(("velocity", "needle"), [
    ("{lag: 0}", "velocity lag 0 must be an integer >= 1"),
    ("{lag: -2}", "velocity lag -2 must be an integer >= 1"),
    ("{lag: 1.5}", "velocity lag 1.5 must be an integer >= 1"),
    ("{lag: true}", "velocity lag True must be an integer >= 1"),
    ("{lag: one}", "velocity lag 'one' must be an integer >= 1"),
    ("3", "'velocity' must be a mapping such as {lag: 1}"),
    ("{lag: 1, every: 2}", "unknown key"),
])
@pytest.mark.parametrize("layout", ["any", "r1pro-2026"])
def test_bad_velocity_lag_is_one_line_naming_the_file_and_entry(tmp_path, velocity, needle, layout):
    path = write_map(tmp_path, f"layout: {layout}\nentries:\n  - {{slice: '0:3'}}\n"
                               f"  - {{slice: '3:5', velocity: {velocity}}}\n", "lagged.yaml")
    msg = one_line_error(load_state_map, path, match=re.escape(needle))
    assert "lagged.yaml entries[1]" in msg


def test_velocity_entries_share_one_lag(tmp_path):
    path = write_map(tmp_path, "layout: any\nentries:\n  - {slice: '0:2', velocity: {lag: 1}}\n"
                               "  - {slice: '2:4', velocity: {lag: 2}}\n", "two.yaml")
    msg = one_line_error(load_state_map, path, match=r"velocity entries use lags \[1, 2\]")
    assert "two.yaml" in msg
