#!/usr/bin/env bash
# Set up both host stacks (first run only) and run the whole test suite under each:
#   A1111 1.6-1.10: torch 2.1.2, gradio 3.41.2, fastapi 0.94, pydantic 1
#   Forge 2:        torch 2.3.1, gradio 4.40.0, fastapi 0.104.1, pydantic 2
# Extra arguments go to pytest: ./test.sh -k predictor
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$root"
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
status=0
for stack in a1111 forge; do
    "$root/tools/setup_env.sh" "$stack" --with-tests
    echo "=== tests on the $stack stack"
    SAM_TEST_STACK=$stack "$root/.venv/$stack/bin/python" -m pytest -q -p no:cacheprovider "$@" tests || status=$?
done
exit $status
