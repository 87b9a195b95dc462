"""Start and stop a real WebUI host (set up by tools/hosts/setup_host.sh) on 127.0.0.1, on the CPU.

    python -m tools.hosts.host setup a1111|forge
    python -m tools.hosts.host link a1111|forge     (extensions/sd-webui-segment-anything)
    python -m tools.hosts.host start a1111|forge [--port N] [--log FILE] [-- extra WebUI flags]
    python -m tools.hosts.host stop a1111|forge
    python -m tools.hosts.host run a1111|forge [...]      (in the foreground until Ctrl-C)

In Python: ``start_host(name, ...)`` returns a ``RunningHost`` (``base_url``, ``log_path``,
``log_text()``, ``stop()``). The host runs in its own process group; ``stop()`` sends SIGTERM to
the whole group and SIGKILL after a grace period. Standard library only, so that any Python
(the test venvs' included) can drive it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
#: Not a dot-folder: gradio refuses to serve any file whose path has a part starting with "."
#: (A1111's own scripts and ours answer 403 from under .hosts/).
HOSTS_DIR = Path(os.environ.get("SAM_HOSTS_DIR", ROOT / "webui-hosts"))
HOST_NAMES = ("a1111", "forge")
EXTENSION_DIR_NAME = "sd-webui-segment-anything"
#: Names that identify our extension in a console log.
EXTENSION_MARKERS = ("sd_webui_sam", "segment_anything", EXTENSION_DIR_NAME)

_COMMON_FLAGS = [
    "--skip-prepare-environment", "--skip-install", "--skip-torch-cuda-test", "--skip-version-check",
    "--skip-python-version-check", "--no-download-sd-model", "--disable-nan-check", "--no-hashing",
    "--no-half", "--no-half-vae", "--precision", "full", "--use-cpu", "all", "--api",
]
HOST_FLAGS: Dict[str, List[str]] = {
    "a1111": _COMMON_FLAGS,
    "forge": _COMMON_FLAGS + ["--always-cpu", "--skip-google-blockly"],
}


def webui_dir(name: str) -> Path:
    return HOSTS_DIR / name / "webui"


def host_python(name: str) -> Path:
    return HOSTS_DIR / name / "venv" / "bin" / "python"


def link_extension(name: str) -> Path:
    """extensions/sd-webui-segment-anything: a folder of links to this checkout's top-level entries.

    Not one link to the checkout itself: the WebUI reads an extension folder that has ``.git``
    as a git clone and reports a traceback when it has no ``origin`` remote (a checkout made by
    ``git clone`` has one; this working copy need not). Refreshed at every start, so entries added
    to the checkout since the set-up are there too.
    """
    target = webui_dir(name) / "extensions" / EXTENSION_DIR_NAME
    if target.is_symlink() or target.is_file():
        target.unlink()
    target.mkdir(parents=True, exist_ok=True)
    wanted = {entry.name: entry for entry in ROOT.iterdir()
              if not entry.name.startswith(".") and entry.name not in ("test-artifacts", "__pycache__", HOSTS_DIR.name)}
    for existing in target.iterdir():
        if existing.is_symlink() and (existing.name not in wanted or existing.resolve() != wanted[existing.name]):
            existing.unlink()
    for entry_name, entry in wanted.items():
        link = target / entry_name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(entry)
    return target


def our_script_names() -> List[str]:
    return sorted(path.name for path in (ROOT / "scripts").glob("*.py"))


def setup_host(name: str, log=None) -> float:
    """Run tools/hosts/setup_host.sh (a no-op once done); returns the seconds it took."""
    started = time.monotonic()
    subprocess.run([str(ROOT / "tools" / "hosts" / "setup_host.sh"), name], check=True,
                   stdout=log, stderr=subprocess.STDOUT if log else None)
    return time.monotonic() - started


def host_env(name: str) -> Dict[str, str]:
    env = dict(os.environ)
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "SAM_TEST_STACK", "COMMANDLINE_ARGS"):
        env.pop(key, None)
    env.update({
        "HF_HOME": str(HOSTS_DIR / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "DO_NOT_TRACK": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PATH": f"{host_python(name).parent}{os.pathsep}{env.get('PATH', '')}",
    })
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0, auth: Optional[tuple] = None):
    """(status, body bytes); status 0 when nothing answers."""
    request = urllib.request.Request(url)
    if auth:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


class HostStartError(RuntimeError):
    pass


@dataclass
class RunningHost:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path
    args: List[str]
    startup_seconds: float = 0.0
    _log_file: object = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webui_dir(self) -> Path:
        return webui_dir(self.name)

    @property
    def python(self) -> Path:
        return host_python(self.name)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def startup_profile(self, wait: float = 60.0) -> dict:
        """The host's own start-up timer (``/internal/profile-startup``): {"total", "records"}.

        A1111 fills it in only after the server already answers (webui.py sets
        ``timer.startup_record`` once launch returns), so until then the route says null: poll."""
        deadline = time.monotonic() + wait
        while True:
            status, body = http_get(self.base_url + "/internal/profile-startup")
            profile = json.loads(body) if status == 200 and body else None
            if profile or time.monotonic() > deadline or not self.alive():
                return profile or {}
            time.sleep(1.0)

    def extension_seconds(self) -> Dict[str, float]:
        """Start-up timer records that name our extension (script loads, callbacks): {record: s}."""
        records = self.startup_profile().get("records") or {}
        scripts = our_script_names()
        return {key: value for key, value in records.items()
                if any(marker in key for marker in EXTENSION_MARKERS) or key.rsplit("/", 1)[-1] in scripts}

    def stop(self, grace: float = 20.0) -> Optional[int]:
        stop_group(self.process, grace)
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return self.process.returncode


def stop_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the process group, then SIGKILL to it after ``grace`` seconds."""
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        group = process.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            # the leader is gone; make sure nothing of the group survives it
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        except subprocess.TimeoutExpired:
            continue


def start_host(name: str, port: Optional[int] = None, extra_args: Sequence[str] = (),
               log_path: Optional[Path] = None, timeout: float = 900.0) -> RunningHost:
    """Start the host and wait until it serves: the log has the "Startup time" line the WebUI
    prints once every app_started callback ran, then ``/internal/ping`` answers."""
    if name not in HOST_NAMES:
        raise ValueError(f"unknown host {name!r}")
    python = host_python(name)
    if not python.exists():
        raise HostStartError(f"{name} is not set up: run tools/hosts/setup_host.sh {name}")
    link_extension(name)
    port = port or free_port()
    log_path = Path(log_path or ROOT / "test-artifacts" / "real_hosts" / f"{name}-{port}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args = [str(python), "launch.py", *HOST_FLAGS[name], "--port", str(port), *extra_args]
    log_file = open(log_path, "w", encoding="utf-8")
    log_file.write("$ " + " ".join(args) + "\n")
    log_file.flush()
    started = time.monotonic()
    process = subprocess.Popen(args, cwd=webui_dir(name), env=host_env(name), stdin=subprocess.DEVNULL,
                               stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    host = RunningHost(name, port, process, log_path, args, _log_file=log_file)
    pinged_at = None
    try:
        while True:
            if process.poll() is not None:
                raise HostStartError(f"{name} exited with {process.returncode} during start-up; "
                                     f"log {log_path}:\n{tail(host.log_text())}")
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise HostStartError(f"{name} did not start within {timeout:.0f}s; log {log_path}:\n"
                                     f"{tail(host.log_text())}")
            # No request before the host says it has started: A1111 adds its middleware after
            # gradio already serves, and a request in between makes Starlette build the stack, so
            # A1111 exits with "Cannot add middleware after an application has started". The ping
            # alone is the fallback for a host whose log never says so.
            started_up = "Startup time:" in host.log_text()
            if started_up or elapsed > timeout / 2:
                status, _ = http_get(host.base_url + "/internal/ping", timeout=5)
                if status == 200:
                    pinged_at = pinged_at or time.monotonic()
                    if started_up or time.monotonic() - pinged_at > 120:
                        break
            time.sleep(1.0)
    except BaseException:
        host.stop()
        raise
    host.startup_seconds = time.monotonic() - started
    return host


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


_EXCEPTION_CONTINUATIONS = ("Traceback", "During handling", "The above exception", "File ", "^", "~")


def tracebacks(log: str) -> List[str]:
    """Every Python traceback in a console log, each with the two lines before it (where the
    WebUI says what failed, e.g. "*** Error loading script: x.py") and its exception line."""
    lines = log.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if "Traceback (most recent call last)" not in line:
            index += 1
            continue
        indent = len(line) - len(line.lstrip())
        end = index + 1
        while end < len(lines):
            current = lines[end]
            stripped = current.strip()
            current_indent = len(current) - len(current.lstrip())
            if stripped and current_indent <= indent and not stripped.startswith(_EXCEPTION_CONTINUATIONS):
                end += 1  # the exception line
                break
            end += 1
        blocks.append("\n".join(lines[max(0, index - 2):end]))
        index = end
    return blocks


def extension_tracebacks(log: str) -> List[str]:
    return [block for block in tracebacks(log) if any(marker in block for marker in EXTENSION_MARKERS)]


def startup_total(log: str) -> Optional[float]:
    """The total of the WebUI's "Startup time: 52.3s (...)" line."""
    match = re.search(r"Startup time: ([0-9.]+)s", log)
    return float(match.group(1)) if match else None


def _pid_file(name: str) -> Path:
    return HOSTS_DIR / name / "server.pid"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("setup", "link", "start", "stop", "run"))
    parser.add_argument("host", choices=HOST_NAMES)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--log", default=None)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.epilog = "Flags after -- go to the WebUI."
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.command == "setup":
        print(f"{args.host} set up in {setup_host(args.host):.0f}s")
        return 0
    if args.command == "link":
        print(link_extension(args.host))
        return 0
    if args.command == "stop":
        pid_file = _pid_file(args.host)
        if not pid_file.exists():
            print(f"{args.host}: no pid file")
            return 1
        group = int(pid_file.read_text())  # the leader of its own session: its pid is the group's id
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.5)
        pid_file.unlink()
        return 0
    host = start_host(args.host, args.port, extra, args.log, args.timeout)
    print(f"{args.host} serves {host.base_url} (started in {host.startup_seconds:.0f}s, log {host.log_path})",
          flush=True)
    if args.command == "start":
        _pid_file(args.host).write_text(str(host.process.pid))
        return 0
    try:
        host.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
