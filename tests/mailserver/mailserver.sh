#!/usr/bin/env bash
# tests/mailserver/mailserver.sh -- taskmail's own real-mail-server harness.
#
# Installs, configures and starts two real mail servers on 127.0.0.1, from the package
# registries alone, side by side on separate ports:
#   stalwart  stalwart-lite 0.16.0 (crates.io) in the AGPL wrapper tests/mailserver/stalwart-jmap:
#             SMTP, submission, IMAP, JMAP with push over EventSource and WebSocket
#   cyrus     Cyrus IMAP 3.6 + Postfix 3.7 (Debian packages): submission with SASL AUTH, LMTP
#             delivery, IMAP, JMAP without push, Xapian search
#   dns       dnsmasq (Debian's dnsmasq-base) on 127.0.0.1:1053, started with Stalwart: SPF, DKIM
#             and DMARC records of example.test and other.test for Stalwart's real mail
#             authentication (STALWART_MAIL_AUTH=hairpin|local|off, see lib/common.sh)
# Accounts dispatcher, worker, worker2, human, outsider @example.test, one password; on Stalwart
# also agent, boss @other.test (a second local domain).
#
# Usage:
#   mailserver.sh up stalwart|cyrus|all      install what is missing, (re)start, write the env file
#   mailserver.sh stop [stalwart|cyrus|all]  stop what `up` started, by PID (default: all);
#                                            stopping Stalwart stops the DNS too
#   mailserver.sh restart [stalwart|cyrus|all]  stop and start again on the same data (mail
#                                            kept; the DNS and syslog keep running): a fault
#                                            for tests/server_faults.rs
#   mailserver.sh status
#   mailserver.sh env [stalwart|cyrus]       print the env file path(s)
#   mailserver.sh build stalwart [--bench]   build (or find in the cache) the Stalwart binary;
#                                            --bench: the optimised `bench-server` profile
#   mailserver.sh install [stalwart|cyrus|all]  only install packages / build, start nothing
#
# `up stalwart --bench` serves from the bench build. Settings (all env-overridable) are at the
# top of tests/mailserver/lib/common.sh: ports, MAIL_DOMAIN, MAIL_PASSWORD, PUSH_THROTTLE and
# the directories TASKMAIL_MAILSERVER_DIR (env and PID files, /run/taskmail-mailserver),
# TASKMAIL_MAILSERVER_DATA (data and logs, /var/lib/taskmail-mailserver) and TASKMAIL_CACHE_DIR
# (built binaries, ~/.cache/taskmail-mailserver).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
# The servers started here outlive this script: they must not inherit the caller's open files
# (a lock a test runner holds, such as `flock LOCK bash mailserver.sh up`, would stay held by
# Stalwart forever; a pipe a CI step reads would never close). Close every descriptor above 2.
for fd_path in "/proc/$$/fd"/*; do
    fd=${fd_path##*/}
    if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
done
unset fd fd_path

HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$HARNESS_DIR/lib/common.sh"
# shellcheck source=lib/dns.sh
. "$HARNESS_DIR/lib/dns.sh"
# shellcheck source=lib/stalwart.sh
. "$HARNESS_DIR/lib/stalwart.sh"
# shellcheck source=lib/cyrus.sh
. "$HARNESS_DIR/lib/cyrus.sh"

usage() {
    sed -n '/^# Usage:/,/^# shellcheck/p' "${BASH_SOURCE[0]}" | grep -v '^# shellcheck' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# which WORD DEFAULT: stalwart, cyrus or all
which_servers() {
    case "${1:-$2}" in
        stalwart) echo stalwart ;;
        cyrus) echo cyrus ;;
        all) echo "cyrus stalwart" ;;
        *) log "unknown server '${1:-}': expected stalwart, cyrus or all"; usage ;;
    esac
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    up)
        [ $# -ge 1 ] || usage
        servers=$(which_servers "$1" all)
        build=debug
        [ "${2:-}" = "--bench" ] && build=bench
        ensure_dirs
        t0=$(now)
        # Cyrus first: its install is quick, so a broken apt shows before a 15-minute build
        for s in $servers; do
            if [ "$s" = stalwart ]; then stalwart_up "$build"; else cyrus_up; fi
        done
        log "up ($servers) done in $(secs_since "$t0")s; env files:$(for s in $servers; do printf ' %s' "$RUN_DIR/$s.env"; done)"
        ;;
    stop)
        servers=$(which_servers "${1:-}" all)
        # in parallel: each server takes a few seconds to shut down cleanly
        pids=""
        for s in $servers; do
            if [ "$s" = stalwart ]; then { stalwart_stop; dns_stop; } & else cyrus_stop & fi
            pids="$pids $!"
        done
        rc=0
        for p in $pids; do wait "$p" || rc=1; done
        exit "$rc"
        ;;
    restart)
        servers=$(which_servers "${1:-}" all)
        for s in $servers; do
            if [ "$s" = stalwart ]; then stalwart_restart; else cyrus_restart; fi
        done
        ;;
    status)
        stalwart_status
        dns_status
        cyrus_status
        ;;
    env)
        if [ $# -ge 1 ]; then
            echo "$RUN_DIR/$(which_servers "$1" stalwart).env"
        else
            echo "$RUN_DIR/stalwart.env"
            echo "$RUN_DIR/cyrus.env"
        fi
        ;;
    build)
        [ "${1:-}" = stalwart ] || usage
        build=debug
        [ "${2:-}" = "--bench" ] && build=bench
        stalwart_build "$build"
        stalwart_bin "$build"
        ;;
    install)
        for s in $(which_servers "${1:-}" all); do
            if [ "$s" = stalwart ]; then
                apt_install curl "${DNS_PACKAGES[@]}"
                stalwart_build debug
            else
                apt_install "${CY_PACKAGES[@]}"
            fi
        done
        ;;
    -h|--help|help) usage ;;
    *) usage ;;
esac
