#!/bin/sh
# Offcut's benchmark on a machine with an accelerator: raw ONNX Runtime inference against Offcut end
# to end (real sidecar, plug-in client, both transports), cold start and sidecar memory, with the
# execution provider forced, so a silent fall-back to the CPU is an error instead of a fast-looking
# table. rembg and the batch comparison are left out (rembg is not needed here).
#
#   bench/gpu.sh                          # CUDA, u2netp and IS-Net fp16, 1/4/16/64 MP
#   bench/gpu.sh --sizes 4,16 --repeats 9 # any bench/run.py option can follow
#   OFFCUT_PROVIDER=DmlExecutionProvider bench/gpu.sh
#
# Needs: a Python (PYTHON, default python3) with onnxruntime-gpu (or -directml), numpy, Pillow,
# pyzmq and msgpack; the model files in OFFCUT_MODELS_DIR (default /var/cache/offcut/models).
# Prints the Markdown table; add --out FILE to keep it, --json FILE for the raw numbers.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PROVIDER=${OFFCUT_PROVIDER:-CUDAExecutionProvider}
export OFFCUT_MODELS_DIR="${OFFCUT_MODELS_DIR:-/var/cache/offcut/models}"
"$PY" - "$PROVIDER" <<'PYEOF'
import sys
import onnxruntime as ort
want = sys.argv[1]
have = ort.get_available_providers()
print(f"onnxruntime {ort.__version__} ({ort.get_device()}); providers: {', '.join(have)}", file=sys.stderr)
if want not in have:
    sys.exit(f"bench/gpu.sh: {want} is not available in this onnxruntime; install onnxruntime-gpu "
             "(CUDA) or onnxruntime-directml, or set OFFCUT_PROVIDER.")
PYEOF
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
exec "$PY" bench/run.py --no-rembg --no-batch --provider "$PROVIDER" --out - "$@"
