# shellcheck shell=bash disable=SC2034  # settings are used by the files that source this one
# tests/mailserver/lib/common.sh -- settings and helpers shared by the Stalwart and Cyrus parts of
# the harness. Sourced by tests/mailserver/mailserver.sh; not meant to be run on its own.
#
# Everything here binds 127.0.0.1 only. The only network this harness uses is the package
# registries (apt, crates.io through cargo).

# ---------------------------------------------------------------- settings (env-overridable)
HOST=127.0.0.1
MAIL_DOMAIN=${MAIL_DOMAIN:-example.test}
MAIL_PASSWORD=${MAIL_PASSWORD:-test-password}
MAIL_USERS=${MAIL_USERS:-"dispatcher worker worker2 human outsider"}
# A second local domain with its own accounts (Stalwart only), same password.
OTHER_DOMAIN=${OTHER_DOMAIN:-other.test}
OTHER_USERS=${OTHER_USERS:-"agent boss"}

# Mail authentication on Stalwart (STALWART_MAIL_AUTH):
#   hairpin  (default) real SPF/DKIM/DMARC/ARC (not iprev) against the local DNS (lib/dns.sh):
#            authenticated submissions are DKIM-signed and handed to the server's own MX port
#            from the sending domain's address, so that they arrive verified like mail from
#            another server
#   local    the same checks and signing, but authenticated submissions to local accounts are
#            delivered directly (as a single production Stalwart does: no Authentication-Results)
#   off      no DNS, no checks, no signing (the harness before mail authentication)
STALWART_MAIL_AUTH=${STALWART_MAIL_AUTH:-hairpin}
# The local authoritative DNS (dnsmasq) on $HOST, UDP and TCP.
DNS_PORT=${DNS_PORT:-1053}
# Loopback source addresses of outbound mail per domain: the only addresses in each domain's
# SPF record (test clients connect from 127.0.0.1, which is in no SPF record).
MAIL_SENDER_IP=${MAIL_SENDER_IP:-127.0.0.2}
OTHER_SENDER_IP=${OTHER_SENDER_IP:-127.0.0.3}
# A domain not hosted here whose SPF record authorizes 127.0.0.1 (an attacker's own domain).
FOREIGN_DOMAIN=${FOREIGN_DOMAIN:-elsewhere.test}
# A domain whose mail the submission servers accept from an authenticated sender and whose
# delivery then fails for good (a refused RCPT at the next hop): the failing recipient of the
# monitor-fact tests (tests/monitor.rs). Stalwart relays it to its own MX port, which refuses
# to relay it; Postfix hands it to Cyrus's LMTP, which has no such mailbox.
BOUNCE_DOMAIN=${BOUNCE_DOMAIN:-bounce.test}
# DKIM selectors of each domain; the name says the algorithm (ed25519* or else RSA-2048).
DKIM_SELECTORS=${DKIM_SELECTORS:-"ed25519 rsa2048"}

# Both servers run at the same time, each on its own ports.
STALWART_SMTP_PORT=${STALWART_SMTP_PORT:-2525}
STALWART_SUBMISSION_PORT=${STALWART_SUBMISSION_PORT:-5587}
STALWART_IMAP_PORT=${STALWART_IMAP_PORT:-1143}
STALWART_HTTP_PORT=${STALWART_HTTP_PORT:-8080}
# A second MX port (no AUTH) where Stalwart enforces DMARC (`strict`: p=reject -> 550); the
# main MX port only reports (`relaxed`), so that a spoof reaches the worker's trust gate.
STALWART_SMTP_ENFORCE_PORT=${STALWART_SMTP_ENFORCE_PORT:-2527}
CYRUS_SMTP_PORT=${CYRUS_SMTP_PORT:-2526}
CYRUS_SUBMISSION_PORT=${CYRUS_SUBMISSION_PORT:-5588}
CYRUS_IMAP_PORT=${CYRUS_IMAP_PORT:-1144}
CYRUS_HTTP_PORT=${CYRUS_HTTP_PORT:-8081}
CYRUS_LMTP_PORT=${CYRUS_LMTP_PORT:-2003}
# Coalescing window of Stalwart's push channels (jmap.{event-source,web-socket}.throttle).
PUSH_THROTTLE=${PUSH_THROTTLE:-10ms}
STALWART_LOG_LEVEL=${STALWART_LOG_LEVEL:-info}

# env files, PID files and "who started what" markers
RUN_DIR=${TASKMAIL_MAILSERVER_DIR:-/run/taskmail-mailserver}
# server data, generated configs, logs (Cyrus mail persists here; Stalwart's is reset on `up`)
DATA_DIR=${TASKMAIL_MAILSERVER_DATA:-/var/lib/taskmail-mailserver}
# built Stalwart binaries and their shared cargo target dir
CACHE_DIR=${TASKMAIL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/taskmail-mailserver}
LOG_DIR=$DATA_DIR/log

# ---------------------------------------------------------------- logging
log() { printf '[mailserver %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {  # die MESSAGE [FIX]
    log "ERROR: $1"
    [ -n "${2:-}" ] && log "  fix: $2"
    exit 1
}
now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ensure_dirs: create the state directories, or fail naming the fix.
ensure_dirs() {
    local d
    for d in "$RUN_DIR" "$DATA_DIR" "$LOG_DIR"; do
        if ! mkdir -p "$d" 2>/dev/null || ! [ -w "$d" ]; then
            die "cannot write to $d" \
                "run as root, or point TASKMAIL_MAILSERVER_DIR and TASKMAIL_MAILSERVER_DATA at writable directories"
        fi
    done
}

# ---------------------------------------------------------------- processes (by PID only)
# pid_alive PIDFILE [CMDLINE-SUBSTRING]: the PID in PIDFILE runs, and (if given) its command
# line contains the substring, so that a recycled PID is never mistaken for ours.
pid_alive() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' < "$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ -z "${2:-}" ] && return 0
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# descendants PID: every PID below PID in the process tree (read from /proc; no procps needed).
descendants() {
    local -A kids=()
    local f s pid rest queue=("$1") p c
    for f in /proc/[0-9]*/stat; do
        { s=$(< "$f"); } 2>/dev/null || continue
        pid=${s%% *}
        rest=${s##*) }        # after "pid (comm) ": "STATE PPID ..."
        rest=${rest#* }
        kids[${rest%% *}]+=" $pid"
    done
    while [ ${#queue[@]} -gt 0 ]; do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        for c in ${kids[$p]:-}; do
            echo "$c"
            queue+=("$c")
        done
    done
}

# kill_pids SECONDS PID...: TERM, wait up to SECONDS, then KILL whatever is left.
kill_pids() {
    local grace=$1 pid deadline left
    shift
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    deadline=$(( $(date +%s) + grace ))
    while :; do
        left=""
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left="$left $pid"; done
        [ -z "$left" ] && return 0
        [ "$(date +%s)" -ge "$deadline" ] && break
        sleep 0.1
    done
    log "still running after ${grace}s, sending KILL:$left"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
}

# stop_pidfile PIDFILE NAME CMDLINE-SUBSTRING: stop the process recorded in PIDFILE and every
# process it spawned (collected before the signal), then remove PIDFILE.
stop_pidfile() {
    local pid kids
    if pid_alive "$1" "$3"; then
        pid=$(tr -dc '0-9' < "$1")
        kids=$(descendants "$pid")
        log "stopping $2 (pid $pid)"
        # shellcheck disable=SC2086
        kill_pids 15 "$pid"
        # children that outlived their parent (they were ours: collected above)
        local k left=""
        for k in $kids; do kill -0 "$k" 2>/dev/null && left="$left $k"; done
        # shellcheck disable=SC2086
        [ -n "$left" ] && kill_pids 5 $left
    elif [ -s "$1" ]; then
        log "$2: stale pid file $1 (process gone), removing it"
    fi
    rm -f "$1"
}

# ---------------------------------------------------------------- ports and HTTP
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# wait_ports SECONDS PIDFILE CMDLINE PORT...: wait until every port accepts connections; fail early
# if the server process died.
wait_ports() {
    local secs=$1 pidfile=$2 cmd=$3 p deadline
    shift 3
    deadline=$(( $(date +%s) + secs ))
    for p in "$@"; do
        until port_open "$p"; do
            # NOTE: only "the process is gone" ends the wait early; its command line is not
            # checked here, because right after the fork it still reads "bash" until the exec
            # (a race that made a restart fail now and then).
            [ -n "$pidfile" ] && ! pid_alive "$pidfile" && return 1
            [ "$(date +%s)" -ge "$deadline" ] && { log "port $HOST:$p not listening after ${secs}s"; return 1; }
            sleep 0.1
        done
    done
    # the ports are up: they must be served by the process we started
    [ -z "$pidfile" ] || pid_alive "$pidfile" "$cmd"
}

# port_free_or_die PORT WHAT: refuse to start when something else already holds the port.
port_free_or_die() {
    if port_open "$1"; then
        die "$HOST:$1 ($2) is already in use by another process" \
            "stop it, or choose other ports (see the *_PORT variables in tests/mailserver/lib/common.sh)"
    fi
}

# jmap_session USER PORT: print the JMAP session JSON (Basic auth, following the redirect).
jmap_session() {
    curl -sS -f -L --max-time 10 -u "$1:$MAIL_PASSWORD" "http://$HOST:$2/.well-known/jmap"
}

# probe_push USER PORT: print the push kinds the server really offers ("eventsource websocket",
# one of them, or nothing), found from the session object and an HTTP probe, not from its name.
probe_push() {
    local session es code kinds=""
    session=$(jmap_session "$1" "$2") || return 1
    es=$(printf '%s' "$session" | sed -n 's/.*"eventSourceUrl"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
    if [ -n "$es" ]; then
        case "$es" in http://*|https://*) ;; /*) es="http://$HOST:$2$es" ;; *) es="http://$HOST:$2/$es" ;; esac
        es=${es//\{types\}/*}; es=${es//\{closeafter\}/no}; es=${es//\{ping\}/0}
        # an event stream stays open: read only the status line and headers, then give up after 1 s
        code=$(curl -s -o /dev/null -D - --max-time 1 -u "$1:$MAIL_PASSWORD" -H 'Accept: text/event-stream' "$es" \
            2>/dev/null | tr -d '\r' | awk 'tolower($1) == "content-type:" { ct = tolower($2) } /^HTTP\// { st = $2 }
                                         END { print st " " ct }' || true)
        case "$code" in "200 text/event-stream"*) kinds="eventsource" ;; esac
    fi
    if printf '%s' "$session" | grep -q '"urn:ietf:params:jmap:websocket"'; then
        kinds="${kinds:+$kinds }websocket"
    fi
    printf '%s' "$kinds"
}

# ---------------------------------------------------------------- packages
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# apt_install PKG...: install only what is missing, without starting any service.
apt_install() {
    local missing="" p t0 made_policy=0
    for p in "$@"; do pkg_installed "$p" || missing="$missing $p"; done
    [ -z "$missing" ] && return 0
    [ "$(id -u)" = 0 ] || die "missing Debian packages:$missing" "run as root, or: sudo apt-get install$missing"
    t0=$(now)
    log "apt-get install:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # keep packages from starting their services (Postfix, Cyrus) on install; an existing
    # policy-rc.d (e.g. Docker's) is left alone
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# written by taskmail tests/mailserver for the duration of apt-get install\nexit 101\n' \
            > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    # Postfix: no system configuration (the harness runs its own instance)
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
    mkdir -p "$LOG_DIR"
    local ok=0
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]; then
        apt-get update -q > "$LOG_DIR/apt.log" 2>&1 || true
    fi
    # shellcheck disable=SC2086
    if apt-get install -y -q --no-install-recommends $missing >> "$LOG_DIR/apt.log" 2>&1; then
        ok=1
    elif apt-get update -q >> "$LOG_DIR/apt.log" 2>&1 \
        && apt-get install -y -q --no-install-recommends $missing >> "$LOG_DIR/apt.log" 2>&1; then
        ok=1
    fi
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ "$ok" != 1 ]; then
        tail -30 "$LOG_DIR/apt.log" >&2
        die "apt-get install failed (log: $LOG_DIR/apt.log)" "check the apt sources, then rerun: apt-get install$missing"
    fi
    log "apt-get install done in $(secs_since "$t0")s"
}

# write_env FILE KEY=VALUE...: write a KEY=VALUE env file (shell-sourceable; values with spaces are
# double-quoted) atomically.
write_env() {
    local file=$1 kv
    shift
    {
        echo "# generated by tests/mailserver/mailserver.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ); do not edit"
        for kv in "$@"; do
            case "${kv#*=}" in
                *[[:space:]]*|'') printf '%s="%s"\n' "${kv%%=*}" "${kv#*=}" ;;
                *) printf '%s\n' "$kv" ;;
            esac
        done
    } > "$file.tmp"
    mv -f "$file.tmp" "$file"
}
