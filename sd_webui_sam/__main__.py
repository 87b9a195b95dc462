"""``python -m sd_webui_sam <command> ...``: a small dispatcher; each command lives in its own module.

    app        the Segment Anything panel as a standalone web app (sd_webui_sam.app)
    batch      segment a folder or a list of images (sd_webui_sam.batch)

Speed figures come from ./benchmark.sh (tools/benchmark.py), which needs the test oracles.
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

__all__ = ["COMMANDS", "main", "usage"]

#: command -> (module, one-line help). Each module has ``main(argv) -> int``; imported only when used.
COMMANDS = {
    "app": ("sd_webui_sam.app", "start the standalone panel on http://127.0.0.1:7860"),
    "batch": ("sd_webui_sam.batch", "segment many images from the command line"),
}


def usage() -> str:
    lines = ["usage: python -m sd_webui_sam <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "'python -m sd_webui_sam <command> --help' describes a command's options."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[command]
    if command == "batch" and any(arg == "--ray" or arg.startswith("--ray=") for arg in rest):
        module_name = "sd_webui_sam.batch_ray"  # the same batch on a Ray cluster (an optional extra)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        print(f"'{command}' is not available in this installation: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while torch and the rest load (seconds): nothing started yet
        print(f"\ninterrupted while '{command}' was starting; nothing was done", file=sys.stderr)
        return 130
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    status = main()
    ray_driver = sys.modules.get("sd_webui_sam.batch_ray")
    if ray_driver is not None:  # a Ray driver's status must not be Ray's finalisation's (see there)
        ray_driver.exit_process(status)
    sys.exit(status)
