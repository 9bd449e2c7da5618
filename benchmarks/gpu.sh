#!/usr/bin/env bash
# The GPU throughput suite in one command (sized for one NVIDIA H200 in <= 8 minutes):
#
#   bash benchmarks/gpu.sh                 # on a GPU machine, from any directory
#   bash benchmarks/gpu.sh --tiny          # the same code path at toy sizes, on CPU too (< 1 min)
#   PYTHON=/path/to/python bash benchmarks/gpu.sh --time-budget 10    # extra flags go to throughput.py
#
# Rows (benchmarks/throughput.py: GPU_SUITE): CNN 28x28 n=256; ResNet-20 GroupNorm n in {64, 256, 1024};
# VGG-11 GroupNorm n=16 (D-SGD and RelaySGD). Each row runs in its own process. Uses the machine's jax (and torch,
# if importable) as they are: nothing is installed; simdl is taken from this checkout through PYTHONPATH.
# Writes benchmarks/results/throughput-<device>-<date>-gpu.json, and copies it (with the table as .txt) to $OUT
# when that variable is set. Exit status: 0 with rows, 1 with none, 2 if there is no GPU (without --tiny) or a
# package simdl needs is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU: JAX allocates as it goes instead of taking 75% of the memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"

tiny=0
for a in "$@"; do if [ "$a" = "--tiny" ]; then tiny=1; fi; done

# One interpreter start for every check: jax and its devices, simdl's dependencies, torch.
SIMDL_GPU_SH_TINY="$tiny" "$PYTHON" - <<'EOF' || exit 2
import importlib.util
import os
import sys

try:
    import jax
except ImportError as err:
    sys.exit(f"gpu.sh: {sys.executable} cannot import jax ({err}); set PYTHON to an interpreter with jax (CUDA)")
devices = jax.devices()
print(f"python {sys.version.split()[0]} ({sys.executable}); jax {jax.__version__}; devices: {devices}")
if devices[0].platform != "gpu" and os.environ.get("SIMDL_GPU_SH_TINY") != "1":
    sys.exit(f"gpu.sh: no GPU: jax's first device is {devices[0]} (platform {devices[0].platform!r}). Install jax "
             "with CUDA (pip install 'simdl[cuda]') on a GPU machine, or run 'bash benchmarks/gpu.sh --tiny' for "
             "the toy-size CPU version of the suite.")
need = ("flax", "optax", "numpy", "networkx", "matplotlib", "tqdm", "orbax")
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu.sh: simdl needs these Python packages, missing here: {', '.join(missing)} "
             "(this script installs nothing)")
try:
    import torch
except ImportError:
    print("torch: not importable: no PyTorch columns")
else:
    print(f"torch {torch.__version__}: importable, CUDA available: {torch.cuda.is_available()}")
EOF

# Compilations shared by the row processes (the single-worker step of the JAX loop and of the FLOP count) are
# cached for this run only.
cache="$(mktemp -d "${TMPDIR:-/tmp}/simdl-jax-cache.XXXXXX")"
trap 'rm -rf "$cache"' EXIT
export JAX_COMPILATION_CACHE_DIR="$cache"

args=(--suite gpu)
if [ -n "${OUT:-}" ]; then args+=(--also-out "$OUT"); fi
"$PYTHON" "$here/throughput.py" "${args[@]}" "$@"
