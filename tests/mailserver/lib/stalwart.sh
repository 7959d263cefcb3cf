# shellcheck shell=bash
# tests/mailserver/lib/stalwart.sh -- Stalwart: the crates.io `stalwart-lite` crate inside the
# AGPL-3.0 wrapper binary tests/mailserver/stalwart-jmap/ (which serves the JMAP routes), SQLite
# storage, accounts in the config, JMAP push over EventSource and WebSocket. Sourced by
# tests/mailserver/mailserver.sh.
#
# The wrapper is its own crate outside the taskmail workspace; taskmail never links it. Its
# binary is cached under $CACHE_DIR/stalwart/bin/stalwart-jmap-<key>, key = stalwart-lite version +
# a hash of the wrapper's Cargo.toml, Cargo.lock and src/main.rs (+ profile + SW_PATCH_ID: two
# crates are patched at build time, see below), so only the first run pays the ~15-minute build.
# The data directory is reset on every `up` (fresh accounts).
#
# Mail authentication (STALWART_MAIL_AUTH, default hairpin; see lib/common.sh): real SPF, DKIM,
# DMARC and ARC against the local DNS of lib/dns.sh, DKIM signing of authenticated submissions
# (both domains), Authentication-Results with authserv-id mail.$MAIL_DOMAIN on the MX ports.

SW_SRC=$HARNESS_DIR/stalwart-jmap
SW_CACHE=$CACHE_DIR/stalwart
SW_DATA=$DATA_DIR/stalwart
SW_PIDFILE=$RUN_DIR/stalwart.pid
SW_ENV=$RUN_DIR/stalwart.env
SW_LOG=$LOG_DIR/stalwart.log

stalwart_version() {
    sed -n 's/^stalwart-lite = .*version = "=\{0,1\}\([0-9.]*\)".*/\1/p' "$SW_SRC/Cargo.toml"
}

# stalwart_profile debug|bench -> the cargo profile name
stalwart_profile() { case "$1" in bench) echo bench-server ;; *) echo dev ;; esac; }

# NOTE: the wrapper is built against patched copies of two crates of the lockfile, through a
# [patch.crates-io] in a build copy of the wrapper ($SW_CACHE/src; the wrapper in git is
# unchanged, and --locked still holds: only their lock entries become path dependencies):
# - mail-auth: stalwart-lite 0.16.0 enables its `test` feature, which replaces every DNS lookup
#   (TXT, MX, A, AAAA, PTR: SPF, DKIM, DMARC, iprev, even relay hosts) with a mock answering
#   NXDOMAIN. The patch compiles the mocks out (`any(test, feature = "test")` -> `test`).
# - stalwart-lite: outbound delivery refuses hosts that resolve to a loopback address ("host
#   resolves loopback address"); everything here is loopback, so the patch disables that one
#   check (crates/smtp/src/outbound/lookup.rs) to let the harness relay to its own MX port.
#   And its SMTP client leaves Nagle on: the final "." of a relayed message waited for the
#   receiver's 40 ms delayed ACK (45 ms per relayed message, measured); the patch sets
#   TCP_NODELAY on outbound connections (crates/smtp/src/outbound/client.rs).
# Bump SW_PATCH_ID when a patch changes: it is part of the binary's cache key.
SW_PATCH_ID="real-dns-loopback-relay-nodelay-v2"
SW_PATCHED_CRATES="mail-auth stalwart-lite"

# stalwart_lock_version NAME: the version of NAME in the wrapper's lockfile
stalwart_lock_version() {
    awk -v n="name = \"$1\"" '$0 == n { getline; gsub(/version = |"/, ""); print; exit }' "$SW_SRC/Cargo.lock"
}

# stalwart_patch_crate NAME: print the path of the patched copy of NAME (extracted from the
# cargo registry cache on first use; fetched first if missing).
stalwart_patch_crate() {
    local name=$1 ver dir crate f
    ver=$(stalwart_lock_version "$name")
    [ -n "$ver" ] || die "no $name in $SW_SRC/Cargo.lock"
    dir=$SW_CACHE/patched/$name-$ver
    if [ ! -f "$dir/.taskmail-$SW_PATCH_ID" ]; then
        crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "$name-$ver.crate" 2>/dev/null | head -1)
        if [ -z "$crate" ]; then
            (cd "$SW_SRC" && cargo fetch --locked --color never) >&2 || die "cargo fetch failed in $SW_SRC"
            crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "$name-$ver.crate" 2>/dev/null | head -1)
            [ -n "$crate" ] || die "$name-$ver.crate is not in the cargo registry cache after cargo fetch"
        fi
        rm -rf "$dir"
        mkdir -p "$SW_CACHE/patched"
        tar -xzf "$crate" -C "$SW_CACHE/patched"
        case "$name" in
            mail-auth)
                find "$dir/src" -name '*.rs' -exec sed -i 's/any(test, feature = "test")/test/g' {} +
                ! grep -rq 'feature = "test"' "$dir/src" \
                    || die "$name $ver: a 'feature = \"test\"' cfg survived the patch (see $dir/src)"
                ;;
            stalwart-lite)
                f=$dir/crates/smtp/src/outbound/lookup.rs
                sed -i 's/if remote_ips\.iter()\.any(|ip| ip\.is_loopback()) {/if false \&\& remote_ips.iter().any(|ip| ip.is_loopback()) {/' "$f"
                grep -q 'if false && remote_ips' "$f" || die "$name $ver: the loopback check in $f was not found"
                f=$dir/crates/smtp/src/outbound/client.rs
                sed -i -e 's/stream: TcpStream::connect(remote_addr)\.await?,/stream: { let s = TcpStream::connect(remote_addr).await?; s.set_nodelay(true)?; s },/' \
                    -e 's/stream: socket\.connect(remote_addr)\.await?,/stream: { let s = socket.connect(remote_addr).await?; s.set_nodelay(true)?; s },/' "$f"
                [ "$(grep -c 's.set_nodelay(true)?' "$f")" = 2 ] || die "$name $ver: the two connects in $f were not found"
                ;;
        esac
        touch "$dir/.taskmail-$SW_PATCH_ID"
        log "stalwart: $name $ver patched ($SW_PATCH_ID) in $dir"
    fi
    echo "$dir"
}

# stalwart_patched_src: print the path of a build copy of the wrapper that uses the patched crates
stalwart_patched_src() {
    local src=$SW_CACHE/src name patches="" names=""
    for name in $SW_PATCHED_CRATES; do
        patches="$patches$name = { path = \"$(stalwart_patch_crate "$name")\" }"$'\n'
        names="$names|$name"
    done
    rm -rf "$src"
    mkdir -p "$src"
    cp -r "$SW_SRC/src" "$src/src"
    { cat "$SW_SRC/Cargo.toml"; printf '\n# Added by tests/mailserver/lib/stalwart.sh (%s)\n[patch.crates-io]\n%s' \
        "$SW_PATCH_ID" "$patches"; } > "$src/Cargo.toml"
    # the same lockfile, the patched crates as path dependencies (no source, no checksum)
    awk -v names="${names#|}" 'BEGIN { split(names, a, "|"); for (i in a) want["name = \"" a[i] "\""] = 1 }
         /^\[\[package\]\]$/ { patched = 0 } ($0 in want) { patched = 1 }
         patched && /^(source|checksum) = / { next } { print }' "$SW_SRC/Cargo.lock" > "$src/Cargo.lock"
    echo "$src"
}

# stalwart_bin debug|bench -> path of the cached binary for the current wrapper sources
stalwart_bin() {
    local hash
    hash=$(cat "$SW_SRC/Cargo.toml" "$SW_SRC/Cargo.lock" "$SW_SRC/src/main.rs" \
        <(echo "profile=$(stalwart_profile "$1")") <(echo "patch=$SW_PATCH_ID") | sha256sum | cut -c1-12)
    echo "$SW_CACHE/bin/stalwart-jmap-$(stalwart_version)-$hash-$1"
}

# stalwart_build debug|bench: build the wrapper unless the cache has this exact binary.
stalwart_build() {
    local build=$1 bin profile t0 log_file pid n last rc src
    bin=$(stalwart_bin "$build")
    if [ -x "$bin" ]; then
        log "stalwart: cached binary $bin"
        return 0
    fi
    if ! command -v cargo > /dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    command -v cargo > /dev/null 2>&1 || die "cargo not found" "install the Rust toolchain (rustup), then rerun"
    command -v cc > /dev/null 2>&1 || apt_install build-essential
    pkg_installed pkg-config || [ "$(id -u)" != 0 ] || apt_install pkg-config
    profile=$(stalwart_profile "$build")
    mkdir -p "$SW_CACHE/bin"
    # one build at a time per cache dir (a second `up` waits for the first one's binary)
    exec 9> "$SW_CACHE/build.lock"
    if ! flock -n 9; then
        log "stalwart: another build holds $SW_CACHE/build.lock; waiting for it"
        flock 9
    fi
    if [ -x "$bin" ]; then
        log "stalwart: cached binary $bin (built while we waited)"
        exec 9>&-
        return 0
    fi
    log_file=$SW_CACHE/build-$build.log
    src=$(stalwart_patched_src)
    log "stalwart: building stalwart-lite $(stalwart_version) + JMAP wrapper, profile $profile, log $log_file" \
        "(cold, 2 cores: ~6-15 min debug, ~23 min bench; ~540 crates)"
    t0=$(now)
    last=$(date +%s)
    (
        cd "$src" || exit 1
        # NOTE: --locked: the lockfile is the one shipped inside the stalwart-lite .crate (with
        # the patched crates as path dependencies)
        CARGO_TARGET_DIR=$SW_CACHE/target exec cargo build --locked --profile "$profile" --color never
    ) > "$log_file" 2>&1 &
    pid=$!
    # progress: one line a minute while cargo works
    while kill -0 "$pid" 2> /dev/null; do
        sleep 2
        if [ $(( $(date +%s) - last )) -ge 60 ]; then
            last=$(date +%s)
            n=$(grep -c '^ *Compiling ' "$log_file" || true)
            log "stalwart: build running for $(secs_since "$t0")s, $n crates compiled so far"
        fi
    done
    rc=0
    wait "$pid" || rc=$?
    if [ "$rc" != 0 ]; then
        tail -40 "$log_file" >&2
        exec 9>&-
        die "stalwart build failed (exit $rc; log $log_file)" \
            "read the log; a missing system package is the usual cause (apt-get install build-essential pkg-config)"
    fi
    local out=$SW_CACHE/target/debug/stalwart-jmap
    [ "$profile" = dev ] || out=$SW_CACHE/target/$profile/stalwart-jmap
    cp "$out" "$bin.tmp"
    mv -f "$bin.tmp" "$bin"
    exec 9>&-
    log "stalwart: build done in $(secs_since "$t0")s -> $bin"
}

# stalwart_accounts: every account's address (login name), both domains
stalwart_accounts() {
    local u
    for u in $MAIL_USERS; do echo "$u@$MAIL_DOMAIN"; done
    for u in $OTHER_USERS; do echo "$u@$OTHER_DOMAIN"; done
}

# stalwart_authserv_id: the authserv-id of Stalwart's Authentication-Results (its hostname)
stalwart_authserv_id() { echo "mail.$MAIL_DOMAIN"; }

# stalwart_mail_auth_config: the [resolver], [auth.*], [signature.*] and queue-routing part of
# the config for STALWART_MAIL_AUTH (hairpin, local or off; see lib/common.sh).
stalwart_mail_auth_config() {
    local mx="local_port == $STALWART_SMTP_PORT || local_port == $STALWART_SMTP_ENFORCE_PORT"
    local d s signers="" hairpin="false"
    case "$STALWART_MAIL_AUTH" in
        off)
            cat <<EOF
# STALWART_MAIL_AUTH=off: no DNS-based checks (SPF/DKIM/DMARC/ARC/iprev) and no signing.
[auth.dkim]
verify = "disable"
sign = false
[auth.arc]
verify = "disable"
seal = false
[auth.spf.verify]
ehlo = "disable"
mail-from = "disable"
[auth.dmarc]
verify = "disable"
[auth.iprev]
verify = "disable"

EOF
            return 0
            ;;
        hairpin) hairpin="source == 'authenticated' && is_local_domain('*', rcpt_domain)" ;;
        local) ;;
        *) die "unknown STALWART_MAIL_AUTH=$STALWART_MAIL_AUTH" "use hairpin (default), local or off" ;;
    esac
    for s in $DKIM_SELECTORS; do signers="${signers:+$signers, }'$s-' + sender_domain"; done
    cat <<EOF
# STALWART_MAIL_AUTH=$STALWART_MAIL_AUTH: real mail authentication against the local DNS
# (tests/mailserver/lib/dns.sh, dnsmasq on $HOST:$DNS_PORT, the only resolver).
[resolver]
type = "custom"
custom = ["udp://$HOST:$DNS_PORT"]
try-tcp-on-error = true
timeout = "2s"
attempts = 2

# Inbound checks (SPF, DKIM, DMARC, ARC) on the MX ports only (an authenticated submission is the sender's own MSA:
# nothing to verify there). relaxed = record the verdict in Authentication-Results, never
# reject; DMARC is enforced (strict: p=reject -> "550 5.7.1") only on the second MX port
# $STALWART_SMTP_ENFORCE_PORT, so that a spoof on $STALWART_SMTP_PORT reaches the trust gate.
[auth.dkim]
verify = [{ if = "$mx", then = "relaxed" }, { else = "disable" }]
# DKIM-sign authenticated submissions from a local domain, one signature per selector
# ($DKIM_SELECTORS), d= the MAIL FROM domain (which Stalwart requires to be the login's).
sign = [{ if = "!is_empty(authenticated_as) && is_local_domain('*', sender_domain)", then = "[$signers]" }, { else = false }]
[auth.arc]
verify = [{ if = "$mx", then = "relaxed" }, { else = "disable" }]
seal = false
[auth.spf.verify]
ehlo = [{ if = "$mx", then = "relaxed" }, { else = "disable" }]
mail-from = [{ if = "$mx", then = "relaxed" }, { else = "disable" }]
[auth.dmarc]
verify = [{ if = "local_port == $STALWART_SMTP_ENFORCE_PORT", then = "strict" }, { if = "local_port == $STALWART_SMTP_PORT", then = "relaxed" }, { else = "disable" }]
# NOTE: no iprev: the resolver (hickory) answers PTR queries for 127.0.0.0/8 itself with
# "localhost" (our DNS is never asked), so iprev would pass a spoofer on 127.0.0.1 and fail the
# real senders on 127.0.0.2/127.0.0.3.
[auth.iprev]
verify = "disable"

# Trace headers on the MX ports (Stalwart's defaults name port 25 only). The authserv-id of
# Authentication-Results is server.hostname, $(stalwart_authserv_id).
[session.data.add-headers]
received = [{ if = "$mx", then = true }, { else = false }]
received-spf = [{ if = "$mx", then = true }, { else = false }]
auth-results = [{ if = "$mx", then = true }, { else = false }]
return-path = [{ if = "$mx", then = true }, { else = false }]

EOF
    for d in "$MAIL_DOMAIN" "$OTHER_DOMAIN"; do
        for s in $DKIM_SELECTORS; do
            cat <<EOF
[signature."$s-$d"]
algorithm = "$(if [ "$(dns_dkim_algo "$s")" = ed25519 ]; then echo ed25519-sha256; else echo rsa-sha256; fi)"
domain = "$d"
selector = "$s"
private-key = "%{file:$(dns_dkim_key "$d" "$s")}%"
headers = ["From", "To", "Cc", "Date", "Subject", "Message-ID", "In-Reply-To", "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"]
canonicalization = "relaxed/relaxed"
report = false

EOF
        done
    done
    if [ "$hairpin" != false ]; then
        cat <<EOF
# STALWART_MAIL_AUTH=hairpin: an authenticated submission to a local account leaves like mail to
# another server: DKIM-signed, relayed to this server's own MX port $STALWART_SMTP_PORT from the
# sending domain's address ($MAIL_DOMAIN $MAIL_SENDER_IP, $OTHER_DOMAIN $OTHER_SENDER_IP, each in
# its domain's SPF record) with EHLO out.<domain>, and verified there like any inbound mail.
# What arrives on the MX port is unauthenticated, so it is delivered locally (no loop).
[queue.strategy]
route = [{ if = "rcpt_domain == '$BOUNCE_DOMAIN'", then = "'refused'" }, { if = "$hairpin", then = "'hairpin'" }, { if = "is_local_domain('*', rcpt_domain)", then = "'local'" }, { else = "'mx'" }]
tls = [{ if = "rcpt_domain == '$BOUNCE_DOMAIN'", then = "'hairpin'" }, { if = "$hairpin", then = "'hairpin'" }, { if = "retry_num > 0 && last_error == 'tls'", then = "'invalid-tls'" }, { else = "'default'" }]
connection = [{ if = "sender_domain == '$MAIL_DOMAIN'", then = "'from-main'" }, { if = "sender_domain == '$OTHER_DOMAIN'", then = "'from-other'" }, { else = "'default'" }]

[queue.route.hairpin]
type = "relay"
address = "mail.$MAIL_DOMAIN"
port = $STALWART_SMTP_PORT
protocol = "smtp"
tls.implicit = false
tls.allow-invalid-certs = true
description = "Authenticated submissions to local accounts, through the MX port"

# $BOUNCE_DOMAIN (lib/common.sh): relayed to this server's own MX port, which refuses to relay
# it (550): a delivery that fails for good after the submission was accepted.
[queue.route.refused]
type = "relay"
address = "mail.$MAIL_DOMAIN"
port = $STALWART_SMTP_PORT
protocol = "smtp"
tls.implicit = false
tls.allow-invalid-certs = true
description = "The failing test domain $BOUNCE_DOMAIN, refused by the MX port"

[queue.tls.hairpin]
starttls = "disable"
dane = "disable"
mta-sts = "disable"
allow-invalid-certs = true
description = "Plain SMTP on loopback"

[queue.connection.from-main]
source-ips = ["$MAIL_SENDER_IP"]
ehlo-hostname = "out.$MAIL_DOMAIN"
timeout.connect = "10s"
description = "Outbound mail of $MAIL_DOMAIN"
[queue.connection.from-other]
source-ips = ["$OTHER_SENDER_IP"]
ehlo-hostname = "out.$OTHER_DOMAIN"
timeout.connect = "10s"
description = "Outbound mail of $OTHER_DOMAIN"

EOF
    fi
}

# stalwart_config: write $SW_DATA/config.toml (and reset the data directory)
stalwart_config() {
    local u
    rm -rf "${SW_DATA:?}/data"
    mkdir -p "$SW_DATA/data"
    {
        cat <<EOF
# Generated by tests/mailserver/mailserver.sh: Stalwart (stalwart-lite $(stalwart_version)) test server on
# loopback. Rewritten on every \`up\`; the data directory is reset too.
# Every key is local (this file is the whole configuration; nothing is read from or stored in
# the database's settings), which also keeps Stalwart from warning about each of them.
[config]
local-keys = ["*"]

[oauth]
key = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[server]
hostname = "mail.$MAIL_DOMAIN"

[server.listener.smtp]
bind = ["$HOST:$STALWART_SMTP_PORT"]
protocol = "smtp"

# A second MX port (no AUTH) on which DMARC is enforced (p=reject -> 550); see [auth.dmarc].
[server.listener.smtp-enforce]
bind = ["$HOST:$STALWART_SMTP_ENFORCE_PORT"]
protocol = "smtp"

[server.listener.submission]
bind = ["$HOST:$STALWART_SUBMISSION_PORT"]
protocol = "smtp"

[server.listener.imap]
bind = ["$HOST:$STALWART_IMAP_PORT"]
protocol = "imap"

[server.listener.http]
bind = ["$HOST:$STALWART_HTTP_PORT"]
protocol = "http"

# Loopback clients are never auto-banned (auth failures in tests are deliberate).
[server.auto-ban]
auth.rate = false
abuse.rate = false
loiter.rate = false
scan.rate = false

# Base of every URL in the JMAP session object (apiUrl, eventSourceUrl, websocket url).
[http]
url = "'http://$HOST:$STALWART_HTTP_PORT'"

[storage]
data = "sqlite"
fts = "sqlite"
blob = "sqlite"
lookup = "sqlite"
directory = "memory"

[store.sqlite]
type = "sqlite"
path = "$SW_DATA/data/stalwart.sqlite3"

[directory.memory]
type = "memory"
EOF
        for u in $(stalwart_accounts); do
            printf '\n[[directory.memory.principals]]\nname = "%s"\nclass = "individual"\nsecret = "%s"\nemail = ["%s"]\n' \
                "$u" "$MAIL_PASSWORD" "$u"
        done
        cat <<EOF

# Admin API (http://$HOST:$STALWART_HTTP_PORT/api/): admin / the test password.
[authentication.fallback-admin]
user = "admin"
secret = "$MAIL_PASSWORD"

# AUTH PLAIN/LOGIN without TLS (loopback only); required on every port except the MX ones.
[session.auth]
mechanisms = "[plain, login]"
directory = "'memory'"
require = "local_port != $STALWART_SMTP_PORT && local_port != $STALWART_SMTP_ENFORCE_PORT"
errors.wait = "100ms"

# Local recipients only: nothing is ever relayed off the box, except that an authenticated
# sender may submit to the failing test domain $BOUNCE_DOMAIN (routed back to the MX port,
# which refuses it).
[session.rcpt]
directory = "'memory'"
relay = [{ if = "!is_empty(authenticated_as) && rcpt_domain == '$BOUNCE_DOMAIN'", then = true }, { else = false }]
errors.wait = "100ms"

[session.data]
spam-filter = false
# default 10 messages per SMTP session (452 4.4.5): tests and benchmarks reuse sessions
limits.messages = 100000

[spam-filter]
enable = false
pyzor.enable = false

EOF
        stalwart_mail_auth_config
        cat <<EOF
[imap.auth]
allow-plain-text = true
[imap.rate-limit]
requests = false

# HTTP/JMAP limits: no per-account request rate (default 1000/1m), more concurrent requests
# per account (default 4) and uploads.
[http.rate-limit]
account = false
anonymous = false
[jmap.protocol.request]
max-concurrent = 64
[jmap.protocol.upload]
max-concurrent = 64

[email.folders.archive]
name = "Archive"

# Push coalescing window (PUSH_THROTTLE in the env file).
[jmap.event-source]
throttle = "$PUSH_THROTTLE"
[jmap.web-socket]
throttle = "$PUSH_THROTTLE"

[tracer.stdout]
type = "stdout"
level = "$STALWART_LOG_LEVEL"
ansi = false
enable = true

# NOTE: Stalwart downloads its spam-filter rules at first boot unless \`version.spam-filter\` is
# set, and in the same step it installs DEFAULT_SETTINGS (crates/common/src/manager/boot.rs),
# which override this file for that boot and include two inbound rate limiters:
# queue.limiter.inbound.ip (5 connections/s per IP) and queue.limiter.inbound.sender (25
# messages/h per sender domain and recipient). Setting the version skips both; the other
# defaults (queues, schedules, routes) follow, without those limiters.
[version]
spam-filter = "0.0.0-taskmail-test"

[queue.quota.size]
messages = 100000
size = 10737418240
enable = true

[queue.virtual.local]
threads-per-node = 25
description = "Local delivery queue"
[queue.virtual.remote]
threads-per-node = 50
description = "Remote delivery queue"
[queue.virtual.dsn]
threads-per-node = 5
description = "Delivery Status Notification delivery queue"
[queue.virtual.report]
threads-per-node = 5
description = "DMARC and TLS report delivery queue"

[queue.schedule.local]
queue-name = "local"
retry = ["2m", "5m", "10m", "15m", "30m", "1h", "2h"]
notify = ["1d", "3d"]
expire-type = "ttl"
expire = "3d"
description = "Local delivery schedule"
[queue.schedule.remote]
queue-name = "remote"
retry = ["2m", "5m", "10m", "15m", "30m", "1h", "2h"]
notify = ["1d", "3d"]
expire-type = "ttl"
expire = "3d"
description = "Remote delivery schedule"
[queue.schedule.dsn]
queue-name = "dsn"
retry = ["15m", "30m", "1h", "2h"]
expire-type = "attempts"
max-attempts = 10
description = "Delivery Status Notification delivery schedule"
[queue.schedule.report]
queue-name = "report"
retry = ["30m", "1h", "2h"]
expire-type = "attempts"
max-attempts = 8
description = "DMARC and TLS report delivery schedule"

[queue.tls.invalid-tls]
allow-invalid-certs = true
description = "Allow invalid TLS certificates"
[queue.tls.default]
allow-invalid-certs = false
description = "Default TLS settings"

[queue.route.local]
type = "local"
description = "Local delivery route"
[queue.route.mx]
type = "mx"
limits.multihomed = 2
limits.mx = 5
ip-lookup = "ipv4_then_ipv6"
description = "MX delivery route"

[queue.connection.default]
timeout.connect = "5m"
description = "Default connection settings"

[report.analysis]
addresses = ["postmaster@*"]
EOF
    } > "$SW_DATA/config.toml.tmp"
    mv -f "$SW_DATA/config.toml.tmp" "$SW_DATA/config.toml"
}

stalwart_stop() {
    stop_pidfile "$SW_PIDFILE" stalwart stalwart-jmap
    rm -f "$SW_ENV"
}

# stalwart_start debug|bench BIN: start BIN on the configuration (and data) in $SW_DATA, wait
# until it serves every port and account, write the env file. Sets `push`.
stalwart_start() {
    local build=$1 bin=$2 u
    echo "--- $(date -u +%FT%TZ) start $bin" >> "$SW_LOG"
    setsid "$bin" --config "$SW_DATA/config.toml" >> "$SW_LOG" 2>&1 < /dev/null &
    echo $! > "$SW_PIDFILE"
    if ! wait_ports 60 "$SW_PIDFILE" stalwart-jmap "$STALWART_HTTP_PORT" "$STALWART_SMTP_PORT" \
            "$STALWART_SUBMISSION_PORT" "$STALWART_IMAP_PORT" "$STALWART_SMTP_ENFORCE_PORT"; then
        tail -30 "$SW_LOG" >&2
        stalwart_stop
        die "stalwart did not start (log $SW_LOG)" "read the log; check that the ports are free"
    fi
    for u in $(stalwart_accounts); do
        jmap_session "$u" "$STALWART_HTTP_PORT" > /dev/null \
            || { tail -20 "$SW_LOG" >&2; die "stalwart: JMAP session for $u failed (log $SW_LOG)"; }
    done
    push=$(probe_push "worker@$MAIL_DOMAIN" "$STALWART_HTTP_PORT")
    write_env "$SW_ENV" \
        MAILSERVER=stalwart \
        "SERVER_VERSION=stalwart-lite $(stalwart_version)" \
        MAIL_DOMAIN="$MAIL_DOMAIN" \
        MAIL_PASSWORD="$MAIL_PASSWORD" \
        MAIL_USERS="$MAIL_USERS" \
        SMTP_HOST="$HOST" \
        SMTP_PORT="$STALWART_SMTP_PORT" \
        SUBMISSION_PORT="$STALWART_SUBMISSION_PORT" \
        IMAP_PORT="$STALWART_IMAP_PORT" \
        JMAP_PORT="$STALWART_HTTP_PORT" \
        JMAP_URL="http://$HOST:$STALWART_HTTP_PORT" \
        JMAP_SESSION_URL="http://$HOST:$STALWART_HTTP_PORT/.well-known/jmap" \
        JMAP_PUSH="$push" \
        PUSH_THROTTLE="$PUSH_THROTTLE" \
        OTHER_DOMAIN="$OTHER_DOMAIN" \
        OTHER_USERS="$OTHER_USERS" \
        MAIL_AUTH="$STALWART_MAIL_AUTH" \
        AUTHSERV_ID="$( [ "$STALWART_MAIL_AUTH" = off ] || stalwart_authserv_id)" \
        DNS_HOST="$HOST" \
        DNS_PORT="$( [ "$STALWART_MAIL_AUTH" = off ] || echo "$DNS_PORT")" \
        DKIM_SELECTORS="$( [ "$STALWART_MAIL_AUTH" = off ] || echo "$DKIM_SELECTORS")" \
        FOREIGN_DOMAIN="$( [ "$STALWART_MAIL_AUTH" = off ] || echo "$FOREIGN_DOMAIN")" \
        BOUNCE_DOMAIN="$( [ "$STALWART_MAIL_AUTH" = hairpin ] && echo "$BOUNCE_DOMAIN")" \
        SENDER_IP="$MAIL_SENDER_IP" \
        OTHER_SENDER_IP="$OTHER_SENDER_IP" \
        SMTP_ENFORCE_PORT="$STALWART_SMTP_ENFORCE_PORT" \
        STALWART_ADMIN="admin:$MAIL_PASSWORD" \
        STALWART_ADMIN_URL="http://$HOST:$STALWART_HTTP_PORT/api" \
        BUILD="$build" \
        BINARY="$bin" \
        CONFIG="$SW_DATA/config.toml" \
        PID="$(cat "$SW_PIDFILE")" \
        LOG="$SW_LOG"
}

# stalwart_restart: stop the running Stalwart and start it again on the same configuration and
# data directory (the mail stays): the "server restarted" fault. The DNS keeps running. Prints
# the seconds the server was away.
stalwart_restart() {
    local build bin t0
    if ! [ -s "$SW_DATA/config.toml" ] || ! [ -s "$SW_ENV" ]; then
        die "stalwart: not set up, nothing to restart" "bash tests/mailserver/mailserver.sh up stalwart"
    fi
    build=$(sed -n 's/^BUILD=//p' "$SW_ENV")
    bin=$(sed -n 's/^BINARY=//p' "$SW_ENV")
    [ -x "$bin" ] || bin=$(stalwart_bin "${build:-debug}")
    [ -x "$bin" ] || die "stalwart: binary $bin is missing" "bash tests/mailserver/mailserver.sh up stalwart"
    t0=$(now)
    stop_pidfile "$SW_PIDFILE" stalwart stalwart-jmap
    stalwart_start "${build:-debug}" "$bin"
    log "stalwart: restarted on the same data in $(secs_since "$t0")s (pid $(cat "$SW_PIDFILE"))"
}

# stalwart_up debug|bench
stalwart_up() {
    local build=${1:-debug} bin t0 t1 u push
    t0=$(now)
    # mutt tmux: the human's mail client in tests/human.rs, driven through tmux
    apt_install curl mutt tmux
    stalwart_build "$build"
    # the local DNS first: Stalwart reads its DKIM keys at boot and resolves through it
    [ "$STALWART_MAIL_AUTH" = off ] || dns_up
    bin=$(stalwart_bin "$build")
    # idempotent: a running Stalwart of ours is restarted (fresh data); anything else on our
    # ports is an error, never killed
    stalwart_stop
    for u in "$STALWART_SMTP_PORT:smtp" "$STALWART_SMTP_ENFORCE_PORT:smtp-enforce" "$STALWART_SUBMISSION_PORT:submission" \
             "$STALWART_IMAP_PORT:imap" "$STALWART_HTTP_PORT:http"; do
        port_free_or_die "${u%%:*}" "stalwart ${u#*:}"
    done
    mkdir -p "$RUN_DIR" "$LOG_DIR" "$SW_DATA"
    stalwart_config
    t1=$(now)
    log "stalwart: starting on $HOST (smtp $STALWART_SMTP_PORT, smtp-enforce $STALWART_SMTP_ENFORCE_PORT," \
        "submission $STALWART_SUBMISSION_PORT, imap $STALWART_IMAP_PORT, http $STALWART_HTTP_PORT)," \
        "mail auth $STALWART_MAIL_AUTH, log $SW_LOG"
    stalwart_start "$build" "$bin"
    log "stalwart: up in $(secs_since "$t1")s (total $(secs_since "$t0")s), push: ${push:-none}," \
        "mail auth: $STALWART_MAIL_AUTH, env $SW_ENV"
}

stalwart_status() {
    if pid_alive "$SW_PIDFILE" stalwart-jmap; then
        echo "stalwart: running (pid $(cat "$SW_PIDFILE")), env $SW_ENV"
    else
        echo "stalwart: stopped"
    fi
}
