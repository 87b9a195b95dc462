#!/usr/bin/env bash
# Set up both host stacks (first run only) and run the whole test suite under each:
#   A1111 1.6-1.10: torch 2.1.2, gradio 3.41.2, fastapi 0.94, pydantic 1
#   Forge 2:        torch 2.3.1, gradio 4.40.0, fastapi 0.104.1, pydantic 2
# then the real-host tests: the extension inside a real A1111 1.10.1 and a real Forge 2, each
# set up once in webui-hosts/ by tools/hosts/setup_host.sh and started on 127.0.0.1, one after the other.
# Extra arguments go to pytest: ./test.sh -k predictor
# SAM_REAL_HOSTS=0 skips the real-host tests; SAM_REAL_HOSTS_ONLY=a1111 (or forge) runs one host.
#
# Why the phases overlap: set-up is mostly single-threaded pip work and the unit suites spend much
# of their time waiting on servers, browsers and subprocesses, so on a 2-core machine running them
# side by side nearly halves the wall time. Each background job writes its own log under
# test-artifacts/logs/, printed whole when the job is awaited, so the output reads in order.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$root"
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
logs="$root/test-artifacts/logs"
mkdir -p "$logs"
status=0
ran_tests=no
timings=()
declare -A job_pid

# start NAME COMMAND...: run COMMAND in the background, its output in $logs/NAME.log and its own
# duration in $logs/NAME.seconds (measured by the job, not by whoever awaits it).
start() {
    local name=$1 log
    shift
    log=$(log_of "$name")
    rm -f "$log.seconds"
    ( began=$SECONDS; rc=0; "$@" || rc=$?; echo "$((SECONDS - began))" >"$log.seconds"; exit $rc ) >"$log.log" 2>&1 &
    job_pid[$name]=$!
}
log_of() { echo "$logs/$(echo "$1" | tr -cs 'a-zA-Z0-9' '-' | sed 's/-$//')"; }
# await NAME: wait for the job, print its log, note its time; returns the job's exit status.
await() {
    local name=$1 rc=0 log seconds
    log=$(log_of "$name")
    wait "${job_pid[$name]}" || rc=$?
    seconds=$(cat "$log.seconds" 2>/dev/null || true)
    seconds=${seconds:-?}
    echo "=== $name (exit $rc, ${seconds}s)"
    [ "$rc" = 0 ] || echo "    disk now: $(disk_note)"
    cat "$log.log"
    timings+=("$name: ${seconds}s, exit $rc")
    return $rc
}
# record RC of a pytest run: pytest's 5 (nothing collected: -k/-m deselected every test of a run)
# fails only when no run ran tests.
record() { case "$1" in 0) ran_tests=yes ;; 5) ;; *) ran_tests=yes; status=$1 ;; esac; }

# unit_tests STACK [pytest args]: the whole suite under one stack's venv. Two suites run at once,
# so each gets one compute thread (two threads each would oversubscribe two cores) and its own
# temporary root (pytest prunes old roots, which must not be the other run's).
unit_tests() {
    local stack=$1
    shift
    # tests/real_hosts deselects itself without SAM_REAL_HOSTS=1
    OMP_NUM_THREADS=1 SAM_REAL_HOSTS= SAM_TEST_STACK=$stack "$root/.venv/$stack/bin/python" -m pytest -q \
        -p no:cacheprovider --durations=15 --basetemp="${TMPDIR:-/tmp}/sd-webui-sam-tests-$stack" "$@" tests
}
hosts_wanted() {
    for host in a1111 forge; do
        case ",${SAM_REAL_HOSTS_ONLY:-a1111,forge}," in *",$host,"*) echo "$host" ;; esac
    done
}
setup_hosts() {
    local host
    for host in $(hosts_wanted); do
        "$root/tools/hosts/setup_host.sh" "$host"
    done
}

# disk_note: free space where the environments, the test temporaries and the logs go. A full disk
# shows up as a cut log and an odd exit status, so it is printed at the start and at the end.
disk_note() { df -h --output=avail,target "$root" "${TMPDIR:-/tmp}" | awk 'NR > 1 {printf "%s free on %s; ", $1, $2} END {print ""}'; }
echo "=== disk: $(disk_note)"
began=$SECONDS
# Set-up: the SAM 2 oracle (Meta's sam2, torch >= 2.5.1, in its own venv; its tests must not skip)
# and both stacks' venvs at once. Debian packages are installed first, once, since two apt-gets
# cannot run side by side.
"$root/tools/setup_env.sh" --debian-packages
start "set-up of the SAM 2 oracle venv" "$root/tools/setup_oracle_env.sh"
start "set-up of the a1111 test venv" "$root/tools/setup_env.sh" a1111 --with-tests
start "set-up of the forge test venv" "$root/tools/setup_env.sh" forge --with-tests
oracle_ok=yes
await "set-up of the SAM 2 oracle venv" || { status=1; oracle_ok=no; }
export SAM_REQUIRE_ORACLES=1
suites=()
for stack in a1111 forge; do
    if await "set-up of the $stack test venv" && [ "$oracle_ok" = yes ]; then
        start "unit tests on the $stack stack" unit_tests "$stack" "$@"
        suites+=("$stack")
    else
        status=1
    fi
done
real_hosts=${SAM_REAL_HOSTS:-1}
if [ "$real_hosts" != 0 ]; then
    # the hosts' own venvs (first run only) build while the unit suites run
    start "set-up of the real hosts" setup_hosts
fi
for stack in "${suites[@]}"; do
    rc=0
    await "unit tests on the $stack stack" || rc=$?
    record "$rc"
done
if [ "$real_hosts" != 0 ]; then
    if await "set-up of the real hosts"; then
        echo "=== real-host tests ($(hosts_wanted | tr '\n' ' ')one after the other)"
        rc=0
        host_began=$SECONDS
        SAM_REAL_HOSTS=1 "$root/.venv/a1111/bin/python" -m pytest -q -p no:cacheprovider "$@" tests/real_hosts || rc=$?
        record "$rc"
        timings+=("real-host tests (start-ups included): $((SECONDS - host_began))s, exit $rc")
    else
        status=1
    fi
fi
printf '%s\n' "=== timings (jobs overlap; the whole command took $((SECONDS - began))s)" "${timings[@]}"
echo "=== disk at the end: $(disk_note)"
[ "$status" != 0 ] || [ "$ran_tests" = yes ] || status=5
exit $status
