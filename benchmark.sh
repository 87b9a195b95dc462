#!/usr/bin/env bash
# Set up the A1111 stack with the reference implementations (first run only) and print the
# speed figures of tools/benchmark.py. Arguments select sections: ./benchmark.sh click masks
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$root/tools/setup_env.sh" a1111 --with-tests
"$root/tools/setup_oracle_env.sh"  # Meta's sam2 (torch >= 2.5.1) for the sam2 section
cd "$root"
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
exec "$root/.venv/a1111/bin/python" tools/benchmark.py "$@"
