"""The input contract (``PolicyInputs``): resolved once, saved in every checkpoint, used unchanged by evaluation and
serving; checkpoints written before it existed still load; the package has no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import yaml

from behavior_smolvla import inputs as inputs_module
from behavior_smolvla.data.meta import DatasetMeta
from behavior_smolvla.errors import CheckpointError
from behavior_smolvla.inputs import INPUTS_VERSION, PolicyInputs
from behavior_smolvla.r1pro import EVALUATOR_RGB_KEYS

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_V0 = REPO / "tests" / "fixtures" / "checkpoint_v0"


def _observation(rng: np.random.Generator, proprio_dim: int = 256) -> dict:
    obs = {"robot_r1::proprio": rng.normal(0, 0.3, proprio_dim).astype(np.float32),
           "task_id": np.array([0], dtype=np.int64)}
    for key in EVALUATOR_RGB_KEYS.values():
        obs[key] = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    return obs


# --- resolution and the saved section --------------------------------------------------------------------------


def test_resolve_defaults_and_round_trip(synthetic_2025, synthetic_2026, g1_v30):
    from behavior_smolvla.config import DataConfig, PolicyConfig

    cases = {synthetic_2025: ("r1pro-2025-top32", ["observation.images.rgb.head", "observation.images.rgb.left_wrist",
                                                   "observation.images.rgb.right_wrist"]),
             synthetic_2026: ("r1pro-2026-b1k25", ["observation.rgb.zed_link_camera_0",
                                                   "observation.rgb.left_realsense_link_camera_0",
                                                   "observation.rgb.right_realsense_link_camera_0"]),
             g1_v30: ("identity", ["observation.images.cam_high"])}
    for root, (state_map, cameras) in cases.items():
        meta = DatasetMeta.load(root)
        inputs = PolicyInputs.resolve(meta, DataConfig(image_size=64, frame_stride=3), PolicyConfig(chunk_size=10))
        assert inputs.state_map.name == state_map and list(inputs.cameras) == cameras
        assert (inputs.image_size, inputs.chunk_size, inputs.n_action_steps, inputs.frame_stride) == (64, 10, 10, 3)
        assert inputs.state_dim == meta.state_dim and inputs.action_dim == meta.action_dim
        saved = yaml.safe_load(yaml.safe_dump({"inputs": inputs.to_dict()}))
        assert saved["inputs"]["version"] == INPUTS_VERSION
        assert PolicyInputs.from_train_config(saved, "test") == inputs
        # the readers derive from it: the training view at the stride, the evaluation view at every frame
        ds = inputs.dataset(meta, list(meta.episodes)[:1])
        ev = inputs.eval_dataset(meta, list(meta.episodes)[:1])
        assert ds.chunk_size == 10 and ds.frame_stride == 3 and ev.chunk_size == 28 and ev.frame_stride == 1
        assert ds.state_map == inputs.state_map and ds.cameras == list(inputs.cameras)


def test_a_newer_or_damaged_inputs_section_is_refused(synthetic_2025):
    from behavior_smolvla.config import DataConfig, PolicyConfig

    inputs = PolicyInputs.resolve(DatasetMeta.load(synthetic_2025), DataConfig(), PolicyConfig())
    newer = {**inputs.to_dict(), "version": INPUTS_VERSION + 1}
    with pytest.raises(CheckpointError, match=f"inputs version {INPUTS_VERSION + 1}"):
        PolicyInputs.from_train_config({"inputs": newer}, "RUN/train_config.yaml")
    broken = {k: v for k, v in inputs.to_dict().items() if k != "cameras"}
    with pytest.raises(CheckpointError, match="RUN/train_config.yaml.*incomplete"):
        PolicyInputs.from_train_config({"inputs": broken}, "RUN/train_config.yaml")
    with pytest.raises(CheckpointError, match="no 'inputs' section"):
        PolicyInputs.from_train_config({"something": 1}, "RUN/train_config.yaml")


# --- the saved contract is what evaluation and serving read ----------------------------------------------------


@pytest.fixture(scope="module")
def demo_checkpoint(demo_short_run) -> Path:
    return demo_short_run


@pytest.mark.slow
def test_eval_and_serve_read_the_saved_contract_not_the_defaults(demo_checkpoint, monkeypatch, tmp_path):
    """After training, the default resolution changes (other cameras, another state map): the loaded policy, the
    evaluator and the server still read exactly what the checkpoint was trained on, and never resolve anything."""
    from behavior_smolvla.evaluation.engine import evaluate_checkpoints
    from behavior_smolvla.policy.checkpoint import load_train_config, resolve_checkpoint
    from behavior_smolvla.serving.policy import load_policy

    saved = PolicyInputs.from_train_config(load_train_config(resolve_checkpoint(demo_checkpoint)), "saved")
    obs = _observation(np.random.default_rng(0))
    before = load_policy(demo_checkpoint, device="cpu", noise_seed=0).act_chunk(obs, 4)

    def changed(*_args, **_kwargs):
        raise AssertionError("a default was resolved again after training")

    monkeypatch.setattr(inputs_module, "default_cameras", changed)
    monkeypatch.setattr(inputs_module, "default_state_map_for", changed)
    monkeypatch.setattr(inputs_module.PolicyInputs, "resolve", classmethod(changed))

    policy = load_policy(demo_checkpoint, device="cpu", noise_seed=0)
    assert policy.model.inputs == saved
    assert policy.spec.state_map == saved.state_map and policy.spec.cameras == list(saved.cameras)
    assert policy.spec.image_size == saved.image_size
    np.testing.assert_array_equal(policy.act_chunk(obs, 4), before)
    data = load_train_config(resolve_checkpoint(demo_checkpoint))["dataset"]
    report = evaluate_checkpoints([demo_checkpoint], data["path"], data["val_episodes"], output_dir=tmp_path,
                                  max_frames=4, device="cpu", progress=False)
    assert report["chunk_size"] == saved.chunk_size and report["chunk_stride"] == saved.frame_stride


# --- checkpoints written before the contract ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def v0_backbone(tmp_path_factory) -> Path:
    """The tiny VLM checkpoint_v0 was trained with, rebuilt (it holds no weights: config and tokenizer only)."""
    from behavior_smolvla.policy.backbone import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("v0") / "tiny_vlm", image_size=32)


def test_checkpoint_from_before_the_contract_serves_the_same_actions(v0_backbone, tmp_path, caplog):
    import shutil

    from behavior_smolvla.policy.inference import Inference
    from behavior_smolvla.serving.policy import load_policy

    reference = np.load(CHECKPOINT_V0 / "reference.npz")
    obs = {"robot_r1::proprio": reference["proprio"],
           **{key: reference[role] for role, key in EVALUATOR_RGB_KEYS.items()}}
    # a copy: the "unverified" line is said once per checkpoint folder and process
    v0 = shutil.copytree(CHECKPOINT_V0, tmp_path / "checkpoint_v0", symlinks=True)
    # the reference was recorded with one seeded draw (the default before zero noise)
    with caplog.at_level("WARNING"):
        policy = load_policy(v0, device="cpu", noise_seed=0, vlm_model=str(v0_backbone),
                             inference=Inference(noise="sample", num_samples=1))
    # written before checkpoints had manifests: it loads, with one line saying it is unverified
    unverified = [r.getMessage() for r in caplog.records if "unverified" in r.getMessage()]
    assert len(unverified) == 1 and str(v0 / "checkpoints" / "000002") in unverified[0], unverified
    inputs = policy.model.inputs
    assert inputs.state_map.name == "r1pro-2025-top32" and inputs.state_dim == 256 and inputs.chunk_size == 4
    assert inputs.state_key == "observation.state" and inputs.image_size == 32
    np.testing.assert_allclose(policy.act_chunk(obs, 4), reference["action_chunk"], rtol=0, atol=1e-6)


def test_checkpoint_from_before_the_contract_evaluates(v0_backbone, tmp_path):
    from behavior_smolvla.synthetic.datasets import write_behavior_2025
    from behavior_smolvla.evaluation.engine import evaluate_checkpoints

    # the dataset it was trained on, written again with the same settings (tests/fixtures/checkpoint_v0/README.md)
    data = write_behavior_2025(tmp_path / "data", episodes=2, frames=[30, 30], tasks=1, codec="libx264", gop=250,
                               seed=0, image_size={r: (32, 32) for r in ("head", "left_wrist", "right_wrist")})
    report = evaluate_checkpoints([CHECKPOINT_V0], data, "20", output_dir=tmp_path / "eval", max_frames=6,
                                  device="cpu", progress=False, vlm_model=str(v0_backbone))
    assert report["frames_evaluated"] == 6 and report["chunk_size"] == 4
    assert np.isfinite(report["predictors"]["policy"]["first_action_mae"]["mean"])


# --- the package's import graph --------------------------------------------------------------------------------


def _imports(path: Path, module: str) -> set[str]:
    """Every ``behavior_smolvla`` module a file imports, at module level or inside functions."""
    package = module.rsplit(".", 1)[0] if not path.name == "__init__.py" else module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("behavior_smolvla")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("behavior_smolvla"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def test_no_import_cycles():
    root = REPO / "behavior_smolvla"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {m: {d for d in _imports(p, m) if d in modules and d != m} for m, p in modules.items()}
    # Packages are not edges of their own: `from behavior_smolvla.policy import checkpoint` names the module.
    graph = {m: {d for d in deps if modules[d].name != "__init__.py"} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
