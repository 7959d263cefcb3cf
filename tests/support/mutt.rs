//! The human's mail client in tests: Debian's `mutt`, driven through `tmux`.
//!
//! A human reply is only tested for real if the mail client itself writes it
//! (`shared/mailservers.md`, "The human's mail client in tests"). [`Mutt`] runs mutt 2.x in a
//! detached tmux session with a private muttrc: mutt reads the INBOX over IMAP, the test presses
//! keys with `tmux send-keys` and reads the screen with `tmux capture-pane`, mutt's `editor` is a
//! small script that puts the human's text above the quote, and mutt sends over SMTP
//! submission. In-Reply-To, References, the `Re:` subject, the attribution, the quoting,
//! format=flowed and the signature all come from mutt, not from the test.
//!
//! ```ignore
//! let mutt = Mutt::new(&server, &server.account("human"));
//! let timings = mutt.reply(&help_message_id, "Use the blue one.");   // or a subject
//! let timings = mutt.compose("worker@example.test", "Lunch?", "At noon?");
//! ```
//!
//! Every step waits for a screen with a deadline and fails loudly with the captured screen. Each
//! [`Mutt`] has its own temp dir (muttrc, editor script, signature, tmux socket) and its own tmux
//! server (`tmux -L`), killed on drop. Everything talks to 127.0.0.1 only. The calls block: from
//! async tests, wrap them in `tokio::task::block_in_place`.

use std::{
    fmt,
    fs::OpenOptions,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::{Account, Server};

/// What installs the tools when they are missing.
pub(crate) const INSTALL_HINT: &str = "apt-get install mutt tmux";
/// The human's display name (mutt's `realname`).
pub(crate) const REALNAME: &str = "Hana Human";
/// The human's signature; mutt appends it below `-- ` (`sig_dashes`).
pub(crate) const SIGNATURE: &str = "Hana Human\nOperations desk, example.test";
/// The width at which the editor script breaks long lines when `text_flowed` is on.
pub(crate) const TEXT_WIDTH: usize = 72;

/// How long mutt may take to show one expected screen.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the screen is captured while waiting.
const POLL: Duration = Duration::from_millis(50);
/// The tmux session that runs mutt.
const SESSION: &str = "mutt";
/// Our `status_format` starts with this: the index is on screen.
const INDEX_MARK: &str = "tm-index";
/// Our `compose_format`: the compose menu is on screen.
const COMPOSE_MARK: &str = "tm-compose";
/// Messages on mutt's bottom line that mean the step failed (mutt 2.2 wording).
const FAILURES: [&str; 12] = [
    "Login failed",
    "authentication failed",
    "Authentication failed",
    "SMTP session failed",
    "Could not send the message",
    "Could not connect",
    "No authenticators available",
    "No messages matched criteria",
    "Error in pattern",
    "Error opening terminal",
    "Error sending message",
    "Mailbox is empty",
];

/// mutt as one account of one server. See the module documentation.
#[derive(Debug)]
pub(crate) struct Mutt {
    dir: tempfile::TempDir,
    /// The tmux socket name (`tmux -L`, under `TMUX_TMPDIR` = `dir`).
    socket: String,
    /// `mutt as human@example.test on stalwart (...)`, for messages.
    label: String,
    /// Is `text_flowed` on? Then the editor script breaks long lines as a flowed-aware editor
    /// does (vim with `textwidth=72` and `formatoptions+=w`).
    flowed: AtomicBool,
}

/// How long the parts of one mutt run took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    /// From starting tmux to mutt showing the INBOX index.
    pub(crate) index: Duration,
    /// From starting tmux to mutt reporting "Mail sent.".
    pub(crate) sent: Duration,
    /// From starting tmux to mutt having quit.
    pub(crate) total: Duration,
}

impl fmt::Display for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "index shown after {} ms, \"Mail sent.\" after {} ms, mutt quit after {} ms",
            self.index.as_millis(),
            self.sent.as_millis(),
            self.total.as_millis()
        )
    }
}

impl Mutt {
    /// The tools that are not installed (`mutt`, `tmux`); empty when both are.
    pub(crate) fn missing_tools() -> Vec<&'static str> {
        [("mutt", "-v"), ("tmux", "-V")]
            .into_iter()
            .filter(|(tool, flag)| {
                !Command::new(tool)
                    .arg(flag)
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .map(|(tool, _)| tool)
            .collect()
    }

    /// A private mutt setup for `account` on `server`: muttrc, editor script, signature and a
    /// tmux config in a new temp dir. Nothing runs until [`Mutt::reply`] or [`Mutt::compose`].
    pub(crate) fn new(server: &Server, account: &Account) -> Mutt {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let label = format!("mutt as {} on {}", account.email, server.label());
        let dir = tempfile::Builder::new()
            .prefix("taskmail-mutt-")
            .tempdir()
            .unwrap_or_else(|e| panic!("{label}: cannot create a temp dir: {e}"));
        let socket = format!(
            "taskmail-mutt-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mutt = Mutt {
            dir,
            socket,
            label,
            flowed: AtomicBool::new(true),
        };
        mutt.write_file("editor.sh", EDITOR_SCRIPT, 0o755);
        mutt.write_file("signature", &format!("{SIGNATURE}\n"), 0o644);
        mutt.write_file("tmux.conf", TMUX_CONF, 0o644);
        mutt.write_file("muttrc", &muttrc(server, account, mutt.dir.path()), 0o600);
        mutt
    }

    /// Appends `set NAME='VALUE'` to the muttrc (read again at every run), e.g.
    /// `mutt.set("text_flowed", "no")` or `mutt.set("attribution", "* %n <%a> [%{%Y-%m-%d}]:")`.
    pub(crate) fn set(&self, name: &str, value: &str) {
        if name == "text_flowed" {
            self.flowed
                .store(matches!(value, "yes" | "on"), Ordering::Relaxed);
        }
        let path = self.path("muttrc");
        let mut file = OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: cannot open {}: {e}", self.label, path.display()));
        writeln!(file, "set {name}={}", quote(value))
            .unwrap_or_else(|e| panic!("{}: cannot write {}: {e}", self.label, path.display()));
    }

    /// The muttrc, for failure messages and reports (it holds the test password).
    pub(crate) fn muttrc(&self) -> String {
        std::fs::read_to_string(self.path("muttrc")).unwrap_or_default()
    }

    /// Replies to one message of the INBOX with `text` above the quote: starts mutt, limits the
    /// index to the message (`~i` when the argument looks like a Message-ID, with or without
    /// angle brackets, else `~s` on the subject), presses `r`, lets the editor script type the
    /// text, sends with `y`, waits for "Mail sent." and quits. Panics with the screen on any
    /// failure or timeout, or if the pattern matches no message or more than one.
    pub(crate) fn reply(&self, subject_or_message_id: &str, text: &str) -> Timings {
        self.prepare_text(text);
        let t0 = Instant::now();
        let run = self.start();
        let index = t0.elapsed();
        run.limit_to(&pattern_for(subject_or_message_id));
        run.keys(&["r"]);
        run.wait("the compose menu of the reply", |s| {
            s.contains(COMPOSE_MARK)
        });
        let sent = run.send(t0);
        run.quit();
        Timings {
            index,
            sent,
            total: t0.elapsed(),
        }
    }

    /// Writes a new mail with `m`: types `to` and `subject` at mutt's prompts, lets the editor
    /// script type `text` (mutt adds the signature), sends and quits.
    pub(crate) fn compose(&self, to: &str, subject: &str, text: &str) -> Timings {
        self.prepare_text(text);
        let t0 = Instant::now();
        let run = self.start();
        let index = t0.elapsed();
        run.keys(&["m"]);
        run.wait("the To: prompt", |s| last_line(s).trim_end() == "To:");
        run.literal(to);
        run.keys(&["Enter"]);
        run.wait("the Subject: prompt", |s| {
            last_line(s).trim_end() == "Subject:"
        });
        run.literal(subject);
        run.keys(&["Enter"]);
        run.wait("the compose menu of the new mail", |s| {
            s.contains(COMPOSE_MARK)
        });
        let sent = run.send(t0);
        run.quit();
        Timings {
            index,
            sent,
            total: t0.elapsed(),
        }
    }

    /// Writes what the editor script will "type": `text`, with lines longer than
    /// [`TEXT_WIDTH`] broken at spaces (each broken line keeping its trailing space, the RFC 3676
    /// soft break) when `text_flowed` is on.
    fn prepare_text(&self, text: &str) {
        let typed = typed_text(text, self.flowed.load(Ordering::Relaxed));
        self.write_file("typed.txt", &typed, 0o644);
    }

    /// Starts tmux with mutt on the INBOX and waits for the index.
    fn start(&self) -> Run<'_> {
        let run = Run { mutt: self };
        // NOTE: a server left over from an earlier run of this Mutt (a panic mid-run) goes first
        let _ = self.tmux().arg("kill-server").output();
        let muttrc = self.path("muttrc");
        let conf = self.path("tmux.conf");
        let out = self
            .tmux()
            .arg("-f")
            .arg(&conf)
            .args(["new-session", "-d", "-s", SESSION, "-x", "200", "-y", "50"])
            .args(["mutt", "-n", "-F"])
            .arg(&muttrc)
            .output()
            .unwrap_or_else(|e| panic!("{}: cannot run tmux ({INSTALL_HINT}): {e}", self.label));
        assert!(
            out.status.success(),
            "{}: tmux new-session failed: {}",
            self.label,
            String::from_utf8_lossy(&out.stderr)
        );
        run.wait("the INBOX index", |s| s.contains(INDEX_MARK));
        run
    }

    /// `tmux -L <socket>` with the environment mutt runs in (tmux hands its own environment to
    /// the session it starts).
    fn tmux(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-L")
            .arg(&self.socket)
            .env("TMUX_TMPDIR", self.dir.path())
            .env("HOME", self.dir.path())
            .env("LC_ALL", "C.UTF-8")
            .env("TERM", "screen")
            .env_remove("TMUX")
            .env_remove("MUTT")
            .env_remove("MAIL")
            .env_remove("EMAIL");
        cmd
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_file(&self, name: &str, content: &str, mode: u32) {
        let path = self.path(name);
        std::fs::write(&path, content)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)))
            .unwrap_or_else(|e| panic!("{}: cannot write {}: {e}", self.label, path.display()));
    }
}

impl Drop for Mutt {
    fn drop(&mut self) {
        // NOTE: only our own tmux server, by its socket; the temp dir goes with `self.dir`
        let _ = self.tmux().arg("kill-server").output();
    }
}

/// One running mutt (a tmux server with one session).
struct Run<'a> {
    mutt: &'a Mutt,
}

impl Run<'_> {
    /// `tmux send-keys` with key names (`Enter`, `Escape`, `r`...).
    fn keys(&self, keys: &[&str]) {
        self.tmux_ok(&["send-keys", "-t", SESSION], keys);
    }

    /// `tmux send-keys -l`: `text` typed literally.
    fn literal(&self, text: &str) {
        self.tmux_ok(&["send-keys", "-t", SESSION, "-l", "--"], &[text]);
    }

    fn tmux_ok(&self, args: &[&str], more: &[&str]) {
        let out = self
            .mutt
            .tmux()
            .args(args)
            .args(more)
            .output()
            .unwrap_or_else(|e| panic!("{}: tmux {args:?}: {e}", self.mutt.label));
        if !out.status.success() {
            panic!(
                "{}: tmux {args:?} {more:?} failed: {}\nscreen:\n{}",
                self.mutt.label,
                String::from_utf8_lossy(&out.stderr),
                self.screen()
            );
        }
    }

    /// The visible screen (`capture-pane -p`), one line per terminal row.
    fn screen(&self) -> String {
        self.mutt
            .tmux()
            .args(["capture-pane", "-p", "-t", SESSION])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("(capture-pane failed: {e})"))
    }

    /// Has mutt exited (the pane stays, dead, thanks to `remain-on-exit`)?
    fn dead(&self) -> bool {
        self.mutt
            .tmux()
            .args(["display-message", "-p", "-t", SESSION, "#{pane_dead}"])
            .output()
            .map(|o| !o.status.success() || String::from_utf8_lossy(&o.stdout).trim() == "1")
            .unwrap_or(true)
    }

    /// Polls the screen until `done` holds and returns it; panics with the screen if mutt
    /// reports a failure, exits, or [`STEP_TIMEOUT`] passes.
    fn wait(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            let bottom = last_line(&screen);
            if let Some(failure) = FAILURES.iter().find(|f| bottom.contains(*f)) {
                panic!(
                    "{}: mutt reported '{failure}' while waiting for {what}; screen:\n{screen}",
                    self.mutt.label
                );
            }
            if self.dead() {
                panic!(
                    "{}: mutt exited while waiting for {what}; screen:\n{screen}\nmuttrc:\n{}",
                    self.mutt.label,
                    self.mutt.muttrc()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: timed out after {STEP_TIMEOUT:?} waiting for {what}; screen:\n{screen}",
                    self.mutt.label
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// `l` (limit) to `pattern`; exactly one message must match.
    fn limit_to(&self, pattern: &str) {
        self.keys(&["l"]);
        self.wait("the limit prompt", |s| {
            last_line(s).starts_with("Limit to messages matching:")
        });
        self.literal(pattern);
        self.keys(&["Enter"]);
        let marker = format!("limit:{pattern}]");
        let screen = self.wait(&format!("the index limited to {pattern}"), |s| {
            s.contains(&marker)
        });
        let shown = screen
            .lines()
            .find(|l| l.contains(INDEX_MARK))
            .and_then(|l| l.split("shown:").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(
            shown, "1",
            "{}: {pattern} must match exactly one message of the INBOX; screen:\n{screen}",
            self.mutt.label
        );
    }

    /// `y` in the compose menu; returns when mutt says "Mail sent." or is back in the index
    /// (time since `t0`). A failed send stays in the compose menu and shows an error.
    fn send(&self, t0: Instant) -> Duration {
        self.keys(&["y"]);
        // NOTE: new mail arriving right after the send replaces "Mail sent." on the bottom line
        // with "New mail in this mailbox."; being back in the index means sent as well
        self.wait("\"Mail sent.\"", |s| {
            last_line(s).contains("Mail sent.")
                || (s.contains(INDEX_MARK) && !s.contains(COMPOSE_MARK))
        });
        t0.elapsed()
    }

    /// `q` in the index, until mutt has exited. mutt does not quit when new mail arrived while
    /// it closed the mailbox (it shows "New mail in this mailbox." and stays): `q` is pressed
    /// again, at most once a second, while the index shows and no question is asked. "Error
    /// saving flags. Close anyway?" is answered `y`: the mail is sent by then, and only the
    /// flags of the human's copy are lost.
    fn quit(&self) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut answered = false;
        let mut pressed: Option<Instant> = None;
        while !self.dead() {
            let screen = self.screen();
            let bottom = last_line(&screen).trim_end();
            if bottom.contains("Close anyway?") {
                if !answered {
                    eprintln!(
                        "{}: mutt asked '{bottom}' on quit; answering yes",
                        self.mutt.label
                    );
                    self.keys(&["y"]);
                    answered = true;
                }
            } else if screen.contains(INDEX_MARK)
                && !bottom.ends_with(':')
                && !bottom.ends_with('?')
                && pressed.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                if pressed.is_some() {
                    eprintln!(
                        "{}: mutt still runs after 'q' ('{bottom}'); pressing 'q' again",
                        self.mutt.label
                    );
                }
                self.keys(&["q"]);
                pressed = Some(Instant::now());
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: mutt did not quit within {STEP_TIMEOUT:?}; screen:\n{screen}",
                    self.mutt.label
                );
            }
            std::thread::sleep(POLL);
        }
        let _ = self.mutt.tmux().arg("kill-server").output();
    }
}

/// The editor mutt runs on the draft (`$editor FILE`): the prepared text, a blank line, then
/// the draft as mutt wrote it (attribution, quote, signature; leading blank lines dropped, as a
/// person typing on the draft's first line would).
const EDITOR_SCRIPT: &str = r#"#!/bin/sh
# mutt's $editor in taskmail's tests (tests/support/mutt.rs): the human "types" typed.txt
# above what mutt put in the draft (attribution and quote, signature), like a top-poster.
set -eu
draft=$1
here=$(dirname "$0")
{
    cat "$here/typed.txt"
    if grep -q . "$draft"; then
        printf '\n'
        sed '/./,$!d' "$draft"
    fi
} > "$draft.typed"
cat "$draft.typed" > "$draft"
rm -f "$draft.typed"
"#;

/// tmux: keep a dead pane (its last screen explains a crash), no status bar, a terminal type
/// every Debian has.
const TMUX_CONF: &str = "set -g remain-on-exit on\nset -g status off\nset -g default-terminal screen\nset -g history-limit 0\n";

/// The private muttrc.
fn muttrc(server: &Server, account: &Account, dir: &Path) -> String {
    let user = userinfo(&account.email);
    let host = &server.smtp_host;
    let dir = dir.display();
    let settings: Vec<(&str, String)> = vec![
        // IMAP, no TLS on loopback
        ("imap_user", account.email.clone()),
        ("imap_pass", account.password.clone()),
        (
            "folder",
            format!("imap://{user}@{host}:{}/", server.imap_port),
        ),
        (
            "spoolfile",
            format!("imap://{user}@{host}:{}/INBOX", server.imap_port),
        ),
        ("ssl_starttls", "no".into()),
        ("ssl_force_tls", "no".into()),
        // NOTE: Stalwart answers pipelined commands out of order (two UID STOREs on quit), which
        // made mutt report "Error saving flags"; one command at a time avoids it
        ("imap_pipeline_depth", "0".into()),
        ("imap_idle", "no".into()),
        ("imap_check_subscribed", "no".into()),
        // SMTP submission, AUTH as the account
        (
            "smtp_url",
            format!("smtp://{user}@{host}:{}/", server.submission_port),
        ),
        ("smtp_pass", account.password.clone()),
        ("from", account.email.clone()),
        ("realname", REALNAME.into()),
        ("use_from", "yes".into()),
        ("hostname", server.domain.clone()),
        // writing
        ("editor", format!("{dir}/editor.sh")),
        ("edit_headers", "no".into()),
        ("abort_unmodified", "no".into()),
        ("attribution", "On %d, %n wrote:".into()),
        ("text_flowed", "yes".into()),
        ("include", "yes".into()),
        ("fast_reply", "yes".into()),
        ("reply_to", "yes".into()),
        ("askcc", "no".into()),
        ("askbcc", "no".into()),
        ("recall", "no".into()),
        ("postpone", "no".into()),
        ("signature", format!("{dir}/signature")),
        ("sig_dashes", "yes".into()),
        ("charset", "utf-8".into()),
        ("send_charset", "us-ascii:utf-8".into()),
        // no copies, no caches, no waiting
        ("record", String::new()),
        ("copy", "no".into()),
        ("header_cache", String::new()),
        ("message_cachedir", String::new()),
        ("tmpdir", dir.to_string()),
        ("sort", "date".into()),
        ("mail_check", "1".into()),
        ("timeout", "1".into()),
        ("sleep_time", "0".into()),
        ("mark_old", "no".into()),
        ("wait_key", "no".into()),
        ("beep", "no".into()),
        // screens the test recognises
        (
            "status_format",
            format!("-- {INDEX_MARK} [msgs:%m shown:%M limit:%V] --"),
        ),
        ("compose_format", format!("-- {COMPOSE_MARK} --")),
    ];
    let mut out = format!(
        "# taskmail tests: mutt as {} on {} (written by tests/support/mutt.rs)\n",
        account.email,
        server.label()
    );
    for (name, value) in settings {
        out.push_str(&format!("set {name}={}\n", quote(&value)));
    }
    out
}

/// A muttrc value in single quotes (no interpretation inside); a `'` closes the quote, adds
/// `"'"` and reopens it, as mutt joins adjacent quoted parts into one token.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\"'\"'"))
}

/// The user part of an IMAP/SMTP URL (`human%40example.test`).
fn userinfo(user: &str) -> String {
    user.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The limit pattern for a Message-ID (`~i`) or a subject (`~s`): the value as a literal regex
/// in single quotes (mutt does not unescape inside them).
fn pattern_for(subject_or_message_id: &str) -> String {
    let value = subject_or_message_id.trim();
    let id = value.trim_start_matches('<').trim_end_matches('>');
    let is_id = id.contains('@') && !id.contains(char::is_whitespace);
    let (op, value) = if is_id { ("~i", id) } else { ("~s", value) };
    let mut regex = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            // NOTE: a quote cannot be escaped inside single quotes; any character matches it
            '\'' => regex.push('.'),
            '\\' | '.' | '[' | ']' | '(' | ')' | '*' | '+' | '?' | '{' | '}' | '|' | '^' | '$' => {
                regex.push('\\');
                regex.push(c);
            }
            _ => regex.push(c),
        }
    }
    format!("{op} '{regex}'")
}

/// What the editor script types for `text` (LF line ends, one final line end): lines longer
/// than [`TEXT_WIDTH`] are broken after a space when `flowed`, so that every broken line ends
/// with a space (an RFC 3676 soft line break).
pub(crate) fn typed_text(text: &str, flowed: bool) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / TEXT_WIDTH + 1);
    for line in text.lines() {
        if !flowed || line.chars().count() <= TEXT_WIDTH {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut current = String::new();
        for word in line.split_inclusive(' ') {
            let width = current.chars().count() + word.trim_end().chars().count();
            if !current.is_empty() && width > TEXT_WIDTH {
                out.push_str(&current);
                out.push('\n');
                current.clear();
            }
            current.push_str(word);
        }
        out.push_str(&current);
        out.push('\n');
    }
    out
}

/// The bottom row of a captured screen: mutt's message and prompt line.
fn last_line(screen: &str) -> &str {
    screen.lines().last().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{pattern_for, quote, typed_text, userinfo};

    #[test]
    fn patterns_escape_regex_characters() {
        assert_eq!(pattern_for("<01J@example.test>"), r"~i '01J@example\.test'");
        assert_eq!(
            pattern_for("[AAMP Result] Task 1 (x)"),
            r"~s '\[AAMP Result\] Task 1 \(x\)'"
        );
        assert_eq!(pattern_for("it's"), "~s 'it.s'");
    }

    #[test]
    fn muttrc_values_are_quoted() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r#"'it'"'"'s'"#);
        assert_eq!(userinfo("human@example.test"), "human%40example.test");
    }

    #[test]
    fn flowed_typing_breaks_long_lines_after_a_space() {
        let long = "word ".repeat(40);
        let long = long.trim_end();
        let typed = typed_text(&format!("short\n\n{long}"), true);
        let lines: Vec<&str> = typed.lines().collect();
        assert_eq!(lines[..2], ["short", ""]);
        assert!(lines[2..].iter().all(|l| l.len() <= super::TEXT_WIDTH + 1));
        assert!(lines[2..lines.len() - 1].iter().all(|l| l.ends_with(' ')));
        assert!(!lines[lines.len() - 1].ends_with(' '));
        assert_eq!(lines[2..].concat(), long);
        assert_eq!(typed_text(long, false), format!("{long}\n"));
    }
}
