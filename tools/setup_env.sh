#!/usr/bin/env bash
# Create (or bring up to date) the virtual environment of one host stack.
#   tools/setup_env.sh a1111|forge [--with-tests]
#   tools/setup_env.sh --debian-packages   (only what apt installs: python3-venv, chromium)
# The environment lives in .venv/<stack>; a stamp of the requirement files makes a second run
# a no-op. Nothing here compiles product code; only the GroundingDINO test oracle builds a
# small CPU extension of its own.
set -euo pipefail

stack=${1:?usage: tools/setup_env.sh a1111|forge [--with-tests]}
with_tests=${2:-}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv/$stack"
python=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_ensure() {
    local missing=()
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "Installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}"
    fi
}

if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_ensure python3-venv
fi
if [ "$with_tests" = "--with-tests" ] || [ "$stack" = "--debian-packages" ]; then
    command -v chromium >/dev/null 2>&1 || apt_ensure chromium
fi
# test.sh installs the Debian packages first, alone (two apt-gets cannot run side by side),
# then sets up the stacks in parallel.
[ "$stack" != "--debian-packages" ] || exit 0

stamp_input=$(cat "$root/requirements/$stack.txt" "$root/requirements/common.txt" "$root/requirements/test.txt" "$root/requirements/ray.txt" "$root/tools/setup_env.sh" | sha256sum | cut -c1-16)
stamp="$venv/.stamp-${with_tests:-runtime}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_input" ]; then
    exit 0
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
echo "Setting up the $stack environment in $venv (the first time downloads PyTorch, a few minutes)..."
"${pip[@]}" install -r "$root/requirements/$stack.txt"
if [ "$with_tests" = "--with-tests" ]; then
    # Pillow is pinned again so that no test tool upgrades the host's pin.
    pillow=$("$venv/bin/python" -c 'import PIL; print(PIL.__version__)')
    "${pip[@]}" install -r "$root/requirements/test.txt" "Pillow==$pillow"
    # Numerical oracles: reference implementations we compare against, never imported by
    # product code (pycocotools checks our COCO RLE, psd-tools reads back our PSD files; its
    # Pillow>=10.3 pin is metadata only: reading works on the hosts' Pillow 9.5).
    "${pip[@]}" install --no-deps segment-anything==1.0 segment-anything-hq==0.3 mobilesam-mirror==1.0.0 pycocotools==2.0.11 psd-tools==1.26.0
    # Ray (batch on a cluster, optional): the host's numpy, Pillow and pydantic are held as pinned.
    held=$("$venv/bin/python" -c 'import numpy, pydantic; print(f"numpy=={numpy.__version__} pydantic=={pydantic.VERSION}")')
    "${pip[@]}" install -r "$root/requirements/ray.txt" $held "Pillow==$pillow"
    "$venv/bin/python" -c 'import groundingdino' >/dev/null 2>&1 || \
        "${pip[@]}" install --no-deps --no-build-isolation groundingdino-py==0.4.0
fi
echo "$stamp_input" > "$stamp"
