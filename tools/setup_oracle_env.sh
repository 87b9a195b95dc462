#!/usr/bin/env bash
# Create (or bring up to date) the test-only environment of the SAM 2 oracle: Meta's `sam2`
# package needs torch >= 2.5.1, newer than either host stack's torch, so it runs in its own
# venv (.venv/sam2-oracle) that the host-stack tests call through a subprocess
# (tools/sam2_oracle.py). Product code never imports it. A stamp makes a second run a no-op.
#   tools/setup_oracle_env.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv/sam2-oracle"
python=${ORACLE_PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3

stamp_input=$(cat "$root/tools/setup_oracle_env.sh" | sha256sum | cut -c1-16)
stamp="$venv/.stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_input" ]; then
    exit 0
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
echo "Setting up the SAM 2 oracle environment in $venv (the first time downloads PyTorch 2.5.1)..."
# torch with its own dependencies; everything else without, to keep the set-up short:
# sam2 imports hydra (its package __init__), iopath (the Hiera trunk) and torchvision (transforms).
"${pip[@]}" install torch==2.5.1 numpy==1.26.4 "Pillow>=9.5,<11"
"${pip[@]}" install --no-deps torchvision==0.20.1 hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 \
    iopath==0.1.10 portalocker tqdm pyyaml packaging wheel setuptools
# The sdist's build needs torch; SAM2_BUILD_CUDA=0 skips its optional CUDA extension.
SAM2_BUILD_CUDA=0 "${pip[@]}" install --no-deps --no-build-isolation sam2==1.1.0
"$venv/bin/python" -c 'import sam2, torch; from sam2.sam2_image_predictor import SAM2ImagePredictor; print("sam2 oracle ready, torch", torch.__version__)'
echo "$stamp_input" > "$stamp"
