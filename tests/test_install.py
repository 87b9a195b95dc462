"""install.py must never touch the host's torch stack and never compile anything."""
import subprocess

import install


def test_nothing_is_installed_when_everything_is_present(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    assert install.install_missing() == 0
    assert calls == []


def test_missing_package_is_installed_as_a_wheel_under_the_hosts_pins(monkeypatch):
    recorded = {}

    def fake_run(command, check):
        constraints_file = command[command.index("-c") + 1]
        with open(constraints_file) as handle:
            recorded["constraints"] = handle.read().split()
        recorded["command"] = command

        class Result:
            returncode = 0

        return Result()

    monkeypatch.setattr(install, "RUNTIME_REQUIREMENTS", (("surely_not_installed_pkg", "surely-not-installed-pkg>=1"),))
    monkeypatch.setattr(install, "missing_requirements", lambda: ["surely-not-installed-pkg>=1"])
    monkeypatch.setattr(subprocess, "run", fake_run)
    assert install.install_missing() == 0
    command = recorded["command"]
    assert "--only-binary=:all:" in command
    assert command[-1] == "surely-not-installed-pkg>=1"
    assert not any(part.startswith("torch") for part in command)
    import torch

    pinned_torch = [line for line in recorded["constraints"] if line.startswith("torch==")]
    assert pinned_torch == [f"torch=={torch.__version__.split('+')[0]}"] or pinned_torch == [f"torch=={torch.__version__}"]


def test_missing_requirements_detects_absent_modules():
    assert install.missing_requirements((("surely_not_installed_pkg", "x"), ("json", "y"))) == ["x"]


def test_installing_pymatting_compiles_its_kernels_right_away(monkeypatch):
    commands = []

    class Result:
        returncode = 0

    monkeypatch.setattr(install, "missing_requirements", lambda: ["pymatting>=1.1.16,<1.2"])
    monkeypatch.setattr(subprocess, "run", lambda command, check: commands.append(command) or Result())
    assert install.install_missing() == 0
    assert commands[0][-1] == "pymatting>=1.1.16,<1.2" and "--only-binary=:all:" in commands[0]
    assert commands[1][1:] == ["-c", "import pymatting"]
