#!/usr/bin/env bash
# tests/run.sh -- the README's test command: the whole test suite against real mail servers.
#
#   bash tests/run.sh [extra cargo test arguments]
#
# 1. installs what is missing and starts Stalwart and Cyrus+Postfix on 127.0.0.1
#    (tests/mailserver/mailserver.sh up all; the first run builds Stalwart, ~6-15 minutes),
# 2. makes target/mcp-venv (the Python MCP SDK, for tests/mcp.rs) if missing,
# 3. runs TASKMAIL_REQUIRE_SERVERS=1 cargo test --all-targets --no-fail-fast "$@" (a missing
#    server fails the tests),
# 4. stops the servers this run started (servers that were already up are left running),
# and exits with cargo's exit code. Needs root (Debian packages, Cyrus and Postfix).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
HARNESS=tests/mailserver/mailserver.sh

log() { printf '[tests/run.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
elapsed() { echo $(( $(date +%s) - $1 ))s; }

# what is running before we start anything: only the others are ours to stop
already_up=$(bash "$HARNESS" status 2>/dev/null | awk -F: '$2 ~ /running/ { print $1 }' | tr '\n' ' ')
started=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$? s
    case "$started" in
        *cyrus*stalwart*) bash "$HARNESS" stop all || log "stopping the servers failed" ;;
        *) for s in $started; do bash "$HARNESS" stop "$s" || log "stopping $s failed"; done ;;
    esac
    exit "$rc"
}
trap cleanup EXIT

t0=$(date +%s)
log "starting the mail servers (already running: ${already_up:-none})"
for s in cyrus stalwart; do
    case " $already_up " in *" $s "*) ;; *) started="$started $s" ;; esac
done
bash "$HARNESS" up all
log "mail servers up in $(elapsed "$t0")"

# tests/mcp.rs drives `taskmail mcp` with a real MCP client: the official Python SDK (PyPI
# `mcp`) in a venv under target/ (Debian's python3 needs python3-venv for `-m venv`).
VENV=target/mcp-venv
if ! "$VENV/bin/python" -c 'import mcp.client.stdio' 2> /dev/null; then
    t2=$(date +%s)
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" 2> /dev/null; then
        rm -rf "$VENV"
        log "installing python3-venv"
        apt-get install -y -q python3-venv > /dev/null || { apt-get update -q > /dev/null && apt-get install -y -q python3-venv > /dev/null; }
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet mcp
    log "MCP client venv ready in $(elapsed "$t2")"
fi

t1=$(date +%s)
# --no-fail-fast: one failing test binary does not hide the others' results
log "TASKMAIL_REQUIRE_SERVERS=1 cargo test --all-targets --no-fail-fast $*"
rc=0
TASKMAIL_REQUIRE_SERVERS=1 cargo test --all-targets --no-fail-fast "$@" || rc=$?
log "cargo test exited $rc after $(elapsed "$t1") (total $(elapsed "$t0"))"
exit "$rc"
