#!/usr/bin/env bash
# One-step setup on a fresh machine: a virtual environment in .venv with torch and the project.
#
#   ./setup.sh                          CPU-only torch (small wheel, no CUDA packages)
#   TORCH="torch" ./setup.sh            the registry's default torch (CUDA build on Linux x86-64)
#   TORCH="torch --index-url https://download.pytorch.org/whl/rocm6.4" ./setup.sh   AMD ROCm
#
# torch is installed first, on purpose: a plain `torch` requirement pulls several GB of
# CUDA packages, which a CPU-only machine does not need.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}

"$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --upgrade pip
# shellcheck disable=SC2086
python -m pip install $TORCH
python -m pip install -e ".[dev]"
# Weights of the "fcpe" and "crepe" F0 estimators (only their asset files are read). --no-deps:
# their torchaudio requirement would install a CUDA build that breaks `import transformers`.
python -m pip install --no-deps torchfcpe==0.0.4 torchcrepe==0.0.24

# The Discord bot needs libopus (Debian/Ubuntu: libopus0) to encode voice.
if ! ldconfig -p 2>/dev/null | grep -q libopus; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get install -y libopus0 || (apt-get update && apt-get install -y libopus0)
    else
        echo "note: install libopus (Debian/Ubuntu: sudo apt-get install libopus0) to use the Discord bot" >&2
    fi
fi
echo "ready: . .venv/bin/activate"
