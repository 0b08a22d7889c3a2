#!/usr/bin/env bash
# Full-size GPU check (issue 12) for a short lease: one GPU, PyTorch preinstalled, no network, < 8 minutes.
#
#   1. installs the project and the packages the image lacks from wheels carried in .whl/ (see bench/README.md,
#      "gpu_check.sh") into a fresh venv layered over the interpreter's own packages (torch, CUDA);
#   2. bench/real_size.py --device cuda: the smolvla_base stand-in (built here, ~1.8 GB) fine-tuned in bf16 on
#      generated 512 px HEVC GOP-250 data: a batch-size sweep to the first out-of-memory, samples/s and
#      data_wait_frac with 8 DataLoader workers at the largest batch that fit, peak GPU memory, checkpoint
#      size / write / load, BehaviorPolicy.act latency p50/p95;
#   3. bench/serve.py --device cuda on the 1-step trainer checkpoint step 2 made: smolvla-serve over loopback;
#   4. writes $OUT/gpu_check.json (one object: both benchmarks' figures, versions, GPU, seconds per stage) next to
#      each stage's log. Every stage runs under its own timeout, so the summary is written even when one fails.
#
# Exits non-zero when any stage failed.
#
# Usage (repository root):  OUT=/some/folder bash bench/gpu_check.sh     (OUT defaults to outputs/gpu_check)
# Environment: PYTHON (default python3: the interpreter that has torch), WORK (default /tmp/gpu_check: venv,
# stand-in, data), MAX_BATCH (default 256), STEPS (default 8), DEVICE (default cuda).
#
# Rehearsal on a machine without a GPU:  DEVICE=cpu bash bench/gpu_check.sh   (or: bash bench/gpu_check.sh --rehearse)
# runs every stage on the CPU at its smallest size (real_size.py --smoke: the tiny backbone at 64 px; serve.py
# --smoke), with the wheels of .whl/ when they are there and otherwise with the project's .venv, so that the script
# is known to work before a GPU is lent (tests/test_bench.py runs it).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DEVICE=${DEVICE:-cuda}
if [ "${1:-}" = "--rehearse" ]; then DEVICE=cpu; fi
OUT=${OUT:-$REPO/outputs/gpu_check}
WORK=${WORK:-/tmp/gpu_check}
PYTHON=${PYTHON:-python3}
MAX_BATCH=${MAX_BATCH:-256}
STEPS=${STEPS:-8}
mkdir -p "$OUT" "$WORK"
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s)
STAGES=()
# A rehearsal's stages get 5x the time: a small, shared CPU machine is slower than the GPU machine's CPUs.
SLOW=1; if [ "$DEVICE" = cpu ]; then SLOW=5; fi
stage() {  # stage NAME TIMEOUT_S CMD...: run, log to $OUT/NAME.log, record rc and seconds
    local name=$1 limit=$(( $2 * SLOW )); shift 2
    local t=$(date +%s)
    echo "== $name (timeout ${limit}s)" >&2
    timeout "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.log"
    local rc=$?
    STAGES+=("$name:$rc:$(( $(date +%s) - t ))")
    echo "   rc $rc in $(( $(date +%s) - t )) s" >&2
    return $rc
}

# 1. install: a venv whose own site-packages (the carried wheels: lerobot 0.6.1, transformers 5.5.4, ...) come
# before the interpreter's (torch, CUDA and the rest, added by a .pth file), so nothing of the image is changed.
VENV=$WORK/venv
install() {
    rm -rf "$VENV"
    "$PYTHON" -m venv --without-pip "$VENV" || return 1
    local venv_site
    venv_site=$("$VENV/bin/python" -c "import site; print(site.getsitepackages()[0])")
    # addsitedir (not a bare path) so that the interpreter's own .pth files are processed too.
    "$PYTHON" -c "import site; print(''.join(f'import site; site.addsitedir({d!r})\n' for d in site.getsitepackages()))" \
        >"$venv_site/zz_base_env.pth"
    "$VENV/bin/python" -m pip install -q --no-index --no-deps --ignore-installed --no-compile --no-cache-dir \
        "$REPO"/.whl/*.whl
}
PY=$VENV/bin/python
if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
    stage install 60 install
elif [ "$DEVICE" = cpu ]; then  # a rehearsal without wheels: the project's .venv (else $PYTHON) as it is
    PY=$REPO/.venv/bin/python
    [ -x "$PY" ] || PY=$(command -v "$PYTHON")
    echo "rehearsal without .whl/: nothing installed, $PY used as it is" >"$OUT/install.log"
    STAGES+=("install:0:0")
else
    echo "no wheels in .whl/: see bench/README.md (gpu_check.sh) for the list to carry" >"$OUT/install.log"
    STAGES+=("install:1:0")
fi
stage imports 30 "$PY" -c "
import sys
import torch, av, websockets, lerobot, transformers, behavior_smolvla.cli, behavior_smolvla.policy.standin
from lerobot.policies.smolvla import SmolVLAPolicy
cuda = sys.argv[1] != 'cpu'
print(torch.__version__, transformers.__version__, lerobot.__version__, torch.cuda.get_device_name(0) if cuda else 'cpu')
assert torch.cuda.is_available() or not cuda, 'CUDA is not available'
" "$DEVICE"

# 2. the full-size model on the GPU (the stand-in and data are built under $WORK on the first run); rehearsal: the
# same stages at their smallest on the CPU.
if [ "$DEVICE" = cpu ]; then
    stage real_size 330 "$PY" bench/real_size.py --device cpu --smoke --json --root "$WORK/real_size" --serve-calls 2 \
        --keep-checkpoint
else
    stage real_size 330 "$PY" bench/real_size.py --device "$DEVICE" --json --root "$WORK/real_size" \
        --episodes 4 --frames 200 --steps "$STEPS" --warmup 2 --max-batch "$MAX_BATCH" --num-workers 8 \
        --ckpt-repeat 1 --serve-calls 20
fi

# 3. the policy server on the 1-step trainer checkpoint real_size.py made for its serving figures.
CKPT=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['serve_checkpoint'])" "$OUT/real_size.out" 2>/dev/null)
if [ -n "$CKPT" ] && [ "$DEVICE" = cpu ]; then
    stage serve 60 "$PY" bench/serve.py --checkpoint "$CKPT" --device cpu --smoke --json
elif [ -n "$CKPT" ]; then
    stage serve 60 "$PY" bench/serve.py --checkpoint "$CKPT" --device "$DEVICE" --requests 100 --chunk-requests 5 --json
else
    echo "no checkpoint from real_size: serve skipped" >"$OUT/serve.log"
    STAGES+=("serve:1:0")
fi

# 4. one JSON summary.
"$PYTHON" - "$OUT" "$(( $(date +%s) - T0 ))" "$DEVICE" "${STAGES[@]}" <<'EOF'
import json, subprocess, sys
from pathlib import Path

out, total, device, stages = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def last_json(name):
    try:
        lines = [l for l in (out / f"{name}.out").read_text().splitlines() if l.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
if device == "cpu":
    gpu = "none: rehearsal on the CPU (DEVICE=cpu)"
else:
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:
        gpu = f"nvidia-smi failed: {e}"
summary = {
    "gpu": gpu, "device": device, "rehearsal": device == "cpu", "total_s": total,
    "stages": {s.split(":")[0]: {"rc": int(s.split(":")[1]), "s": int(s.split(":")[2])} for s in stages},
    "versions": (out / "imports.out").read_text().strip() if (out / "imports.out").is_file() else None,
    "real_size": last_json("real_size"), "serve": last_json("serve"),
}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
rs = summary["real_size"] or {}
print(json.dumps({k: rs.get(k) for k in ("max_batch_size", "samples_per_s", "data_wait_frac", "peak_gpu_mib",
                                          "checkpoint_write_s", "checkpoint_verify_s", "checkpoint_load_s",
                                          "serve_p50_ms",
                                          "serve_p95_ms")} | {"total_s": total, "stages": summary["stages"]}))
failed = [name for name, stage in summary["stages"].items() if stage["rc"] != 0]
if failed:
    sys.exit(f"gpu_check: failed stage(s): {', '.join(failed)} (logs in {out})")
EOF
