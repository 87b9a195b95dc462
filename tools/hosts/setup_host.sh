#!/usr/bin/env bash
# Unpack one real WebUI host for the real-host tests, with its own venv and its real pins:
#   tools/hosts/setup_host.sh a1111|forge
# Everything goes to webui-hosts/ (ignored): webui-hosts/<host>/webui (the host tree, with this
# extension linked into extensions/), webui-hosts/<host>/venv, webui-hosts/models (one random-weight SD 1.5
# checkpoint shared by both hosts) and webui-hosts/hf (an offline Hugging Face cache with the CLIP
# tokenizer A1111 asks for). A stamp makes a second run a no-op.
# Host sources: the archives in ../shared/hosts (SAM_HOSTS_SRC); where they are absent the
# upstream repositories are cloned at the commits listed in tools/hosts/MANIFEST.tsv.
# Nothing is downloaded except packages from PyPI.
set -euo pipefail

host=${1:?usage: tools/hosts/setup_host.sh a1111|forge}
case "$host" in a1111|forge) ;; *) echo "unknown host: $host" >&2; exit 2 ;; esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/tools/hosts"
hosts_dir=${SAM_HOSTS_DIR:-$root/webui-hosts}
src=${SAM_HOSTS_SRC:-$root/../shared/hosts}
manifest="$here/MANIFEST.tsv"
work="$hosts_dir/$host"
webui="$work/webui"
venv="$work/venv"
python=${SAM_HOST_PYTHON:-/root/.pyenv/versions/3.11.7/bin/python}
[ -x "$python" ] || python=$(command -v python3.11 || command -v python3)

if [ "$host" = a1111 ]; then
    torch_pins=(torch==2.1.2 torchvision==0.16.2)
    repositories=(stable-diffusion-webui-assets stable-diffusion-stability-ai generative-models k-diffusion BLIP)
else
    torch_pins=(torch==2.3.1 torchvision==0.18.1)
    repositories=(stable-diffusion-webui-assets huggingface_guess BLIP)
fi

stamp_input=$(cat "$here/setup_host.sh" "$here/build_checkpoint.py" "$here/make_hf_cache.py" "$manifest" | sha256sum | cut -c1-16)
stamp="$work/.stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_input" ] && [ -x "$venv/bin/python" ]; then
    exit 0
fi
started=$SECONDS
phase() { echo "[setup_host $host] $* (+$((SECONDS - started))s)"; }
mkdir -p "$work" "$hosts_dir/src"

# unpack NAME DEST: the archive NAME.tar.gz from $src, else a clone at the manifest's commit.
unpack() {
    local name=$1 dest=$2 url commit
    rm -rf "$dest"
    mkdir -p "$dest"
    if [ -f "$src/$name.tar.gz" ]; then
        tar xzf "$src/$name.tar.gz" -C "$dest"
    else
        read -r url commit < <(awk -F'\t' -v n="$name" '$1 == n {print $2, $3}' "$manifest")
        [ -n "${commit:-}" ] || { echo "$name is neither in $src nor in $manifest" >&2; exit 1; }
        phase "cloning $url at $commit"
        git -C "$dest" init -q
        git -C "$dest" fetch -q --depth 1 "$url" "$commit"
        git -C "$dest" checkout -q FETCH_HEAD
    fi
}

# 1. The host tree: unpacked again only when its sources changed, and never under a running host.
archives=("$host-webui")
for name in "${repositories[@]}"; do archives+=("$host-repositories-$name"); done
[ "$host" = forge ] || archives+=(a1111-extension-sd-webui-controlnet)
tree_stamp_input=$(for name in "${archives[@]}"; do
    grep -P "^$name\t" "$manifest"; [ -f "$src/$name.tar.gz" ] && stat -c '%s %Y' "$src/$name.tar.gz"
done | sha256sum | cut -c1-16)
if [ "$(cat "$webui/.sam-tree-stamp" 2>/dev/null)" != "$tree_stamp_input" ]; then
    for cwd in /proc/[0-9]*/cwd; do
        if [ "$(readlink "$cwd" 2>/dev/null)" = "$webui" ]; then
            echo "a process runs in $webui (pid $(basename "$(dirname "$cwd")")); stop it before the tree is unpacked again" >&2
            exit 1
        fi
    done
    phase "unpacking the $host tree into $webui"
    unpack "$host-webui" "$webui"
    for name in "${repositories[@]}"; do
        unpack "$host-repositories-$name" "$webui/repositories/$name"
    done
    if [ "$host" = a1111 ]; then
        unpack a1111-extension-sd-webui-controlnet "$webui/extensions/sd-webui-controlnet"
    fi
    echo "$tree_stamp_input" > "$webui/.sam-tree-stamp"
fi
"$python" "$here/host.py" link "$host" >/dev/null  # refreshed again at every start
[ -d "$hosts_dir/src/openai-clip" ] || unpack openai-clip "$hosts_dir/src/openai-clip"
# The checkpoint builder uses the LDM classes of Stability's repository (both venvs can import it).
[ -d "$hosts_dir/src/stable-diffusion-stability-ai" ] || \
    unpack a1111-repositories-stable-diffusion-stability-ai "$hosts_dir/src/stable-diffusion-stability-ai"

# 2. The venv, with the host's pins. The constraints hold torch, numpy, Pillow and protobuf at the
# host's versions whatever an extension's requirements ask for (mediapipe 0.10.9 still has
# mediapipe.solutions, which controlnet_aux needs; opencv releases from 4.12 want numpy 2).
constraints="$work/constraints.txt"
printf '%s\n' "${torch_pins[@]}" numpy==1.26.2 Pillow==9.5.0 protobuf==3.20.0 mediapipe==0.10.9 \
    'opencv-python<4.12' 'opencv-contrib-python<4.12' 'opencv-python-headless<4.12' > "$constraints"
if [ "$host" = a1111 ]; then
    printf '%s\n' 'pydantic<=1.10.17' controlnet_aux==0.0.9 >> "$constraints"
fi
pip_stamp="$venv/.stamp-pip-$(cat "$constraints" "$webui/requirements_versions.txt" | sha256sum | cut -c1-16)"
if [ ! -f "$pip_stamp" ]; then
    phase "creating $venv with $("$python" --version) (first time: downloads PyTorch from PyPI, a few minutes)"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
    "${pip[@]}" install -c "$constraints" "${torch_pins[@]}"
    phase "installing $webui/requirements_versions.txt"
    "${pip[@]}" install -c "$constraints" -r "$webui/requirements_versions.txt"
    # What the launchers install besides requirements_versions.txt (its "prepare environment"
    # step, skipped at start): CLIP; soft inpainting needs joblib.
    # (wheel: setuptools 69 builds CLIP without build isolation only with it)
    "${pip[@]}" install -c "$constraints" wheel
    "${pip[@]}" install -c "$constraints" --no-build-isolation "$hosts_dir/src/openai-clip" joblib
    if [ "$host" = a1111 ]; then
        phase "installing the requirements of Mikubill's ControlNet"
        "${pip[@]}" install -c "$constraints" -r "$webui/extensions/sd-webui-controlnet/requirements.txt" onnxruntime
    else
        phase "installing the requirements of Forge's built-in ControlNet and preprocessors"
        "${pip[@]}" install -c "$constraints" -r "$webui/extensions-builtin/sd_forge_controlnet/requirements.txt"
    fi
    "${pip[@]}" check || phase "pip check reports conflicts (above); the host's own pins win"
    touch "$pip_stamp"
fi

# 3. One random-weight SD 1.5 checkpoint (original key layout, fp16), built once, shared.
checkpoint="$hosts_dir/models/sd15-random-fp16.safetensors"
mkdir -p "$hosts_dir/models"
(
    flock 9  # the other host's set-up may be building it right now
    if [ ! -f "$checkpoint" ]; then
        phase "building the random-weight SD 1.5 checkpoint $checkpoint"
        "$venv/bin/python" "$here/build_checkpoint.py" \
            --ldm "$hosts_dir/src/stable-diffusion-stability-ai" --out "$checkpoint"
    fi
) 9> "$hosts_dir/models/.lock"
mkdir -p "$webui/models/Stable-diffusion"
ln -sfn "$checkpoint" "$webui/models/Stable-diffusion/sd15-random-fp16.safetensors"

# 4. The offline CLIP tokenizer (A1111 loads openai/clip-vit-large-patch14 by name).
phase "writing the offline Hugging Face cache in $hosts_dir/hf"
"$venv/bin/python" "$here/make_hf_cache.py" --clip "$hosts_dir/src/openai-clip" --hf-home "$hosts_dir/hf"

echo "$stamp_input" > "$stamp"
phase "done"
