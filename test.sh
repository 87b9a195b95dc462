#!/usr/bin/env bash
# Set up both host stacks (first run only) and run the whole test suite under each:
#   A1111 1.6-1.10: torch 2.1.2, gradio 3.41.2, fastapi 0.94, pydantic 1
#   Forge 2:        torch 2.3.1, gradio 4.40.0, fastapi 0.104.1, pydantic 2
# then the real-host tests: the extension inside a real A1111 1.10.1 and a real Forge 2, each
# set up once in webui-hosts/ by tools/hosts/setup_host.sh and started on 127.0.0.1, one after the other.
# Extra arguments go to pytest: ./test.sh -k predictor
# SAM_REAL_HOSTS=0 skips the real-host tests; SAM_REAL_HOSTS_ONLY=a1111 (or forge) runs one host.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$root"
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
status=0
ran_tests=no
# pytest's 5 (nothing collected: -k/-m deselected every test of a run) fails only when no run ran tests
record() { case "$1" in 0) ran_tests=yes ;; 5) ;; *) ran_tests=yes; status=$1 ;; esac; }
timings=()
phase_start=$SECONDS
phase_done() { timings+=("$1: $((SECONDS - phase_start))s"); echo "=== $1 took $((SECONDS - phase_start))s"; phase_start=$SECONDS; }
# The SAM 2 oracle (Meta's sam2, torch >= 2.5.1) runs in its own venv; its tests must not skip.
"$root/tools/setup_oracle_env.sh"
phase_done "set-up of the SAM 2 oracle venv"
export SAM_REQUIRE_ORACLES=1
for stack in a1111 forge; do
    "$root/tools/setup_env.sh" "$stack" --with-tests
    phase_done "set-up of the $stack test venv"
    echo "=== tests on the $stack stack"
    # tests/real_hosts deselects itself without SAM_REAL_HOSTS=1
    rc=0
    SAM_REAL_HOSTS= SAM_TEST_STACK=$stack "$root/.venv/$stack/bin/python" -m pytest -q -p no:cacheprovider "$@" tests || rc=$?
    record "$rc"
    phase_done "unit tests on the $stack stack"
done
if [ "${SAM_REAL_HOSTS:-1}" != 0 ]; then
    echo "=== real-host tests (A1111 1.10.1, then Forge 2; set-up of each host on the first run)"
    for host in a1111 forge; do
        case ",${SAM_REAL_HOSTS_ONLY:-a1111,forge}," in *",$host,"*) ;; *) continue ;; esac
        "$root/tools/hosts/setup_host.sh" "$host" || status=$?
        phase_done "set-up of the $host host (webui-hosts/$host)"
    done
    rc=0
    SAM_REAL_HOSTS=1 "$root/.venv/a1111/bin/python" -m pytest -q -p no:cacheprovider "$@" tests/real_hosts || rc=$?
    record "$rc"
    phase_done "real-host tests (start-ups included)"
fi
printf '%s\n' "=== timings" "${timings[@]}"
[ "$status" != 0 ] || [ "$ran_tests" = yes ] || status=5
exit $status
