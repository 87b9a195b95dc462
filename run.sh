#!/usr/bin/env bash
# Set up (first run only) and start the standalone Segment Anything app on http://127.0.0.1:7860
# Any flag is passed on: ./run.sh --port 7861 --model-dir ~/sam-models
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$root/tools/setup_env.sh" a1111
cd "$root"
exec "$root/.venv/a1111/bin/python" -m sd_webui_sam app "$@"
