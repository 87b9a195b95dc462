"""Run by the WebUI (A1111 / Forge) in its own Python at every start-up.

Installs only what is missing, only as binary wheels (nothing is ever compiled), and under a
constraints file that pins the host's torch, torchvision, numpy and Pillow to the versions it
already has, so no dependency resolution can replace them.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile

#: (import name, pip requirement). Everything else we need ships with both hosts.
RUNTIME_REQUIREMENTS = (
    ("safetensors", "safetensors>=0.3"),
    ("cv2", "opencv-python-headless>=4.8,<5"),
    ("tqdm", "tqdm>=4.60"),
    ("pymatting", "pymatting>=1.1.16,<1.2"),   # soft edges; brings numba, llvmlite and scipy
)
#: Packages the host owns: never upgraded or downgraded by us.
HOST_PINNED = ("torch", "torchvision", "numpy", "Pillow", "gradio", "fastapi", "pydantic")


def missing_requirements(requirements=RUNTIME_REQUIREMENTS):
    return [spec for module, spec in requirements if importlib.util.find_spec(module) is None]


def host_constraints() -> list[str]:
    constraints = []
    for distribution in HOST_PINNED:
        try:
            constraints.append(f"{distribution}=={importlib.metadata.version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return constraints


def pip_install_command(specs, constraints_file: str) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--prefer-binary", "--only-binary=:all:",
            "-c", constraints_file, *specs]


def warm_up_pymatting() -> None:
    """numba compiles pymatting's kernels on its first import (about a minute of CPU) and caches
    them beside the package; doing it here keeps that wait out of the first soft cut-out."""
    print("[Segment Anything] compiling pymatting's kernels once, for soft edges (a minute or two)")
    subprocess.run([sys.executable, "-c", "import pymatting"], check=False)


def install_missing() -> int:
    specs = missing_requirements()
    if not specs:
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(host_constraints()) + "\n")
    try:
        print(f"[Segment Anything] installing {', '.join(specs)}")
        result = subprocess.run(pip_install_command(specs, constraints.name), check=False)
        if result.returncode != 0:
            print("[Segment Anything] could not install " + ", ".join(specs) +
                  "; install them into the WebUI's Python by hand. The extension reports what is missing when used.")
        elif any(spec.startswith("pymatting") for spec in specs):
            warm_up_pymatting()
        return result.returncode
    finally:
        os.unlink(constraints.name)


if __name__ == "__main__":
    install_missing()
