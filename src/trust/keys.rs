//! Agent key files: `<state-dir>/keys/<account>.key` (the secret) and
//! `<state-dir>/keys/<account>.pub` (the public key to give to peers).
//!
//! - `<account>.key`: one line, `taskmail-ed25519-seed:<base64url of the 32-byte seed>`, mode
//!   0600 from its creation (never world-readable, not even for an instant). A key file that
//!   others may read is refused, as ssh does.
//! - `<account>.pub`: one line, the public key's text form `ed25519:<base64url>`: exactly what
//!   a peer pins as `peer-key` and what pairing carries.
//!
//! The secret is never printed, logged or put in `--json` output; [`SigningKey`]'s `Debug`
//! shows the key id only.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::sign::{PublicKey, SigningKey};
use crate::config::Config;

/// The prefix of the secret key file's one line.
pub const SECRET_PREFIX: &str = "taskmail-ed25519-seed:";

/// Why a key file cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// `keys new` without `--force` over an existing key.
    #[error("cannot create a key for account '{account}': '{}' exists", .path.display())]
    Exists {
        /// The account.
        account: String,
        /// The existing secret key file.
        path: PathBuf,
    },
    /// The account name cannot be a file name.
    #[error("cannot use account name '{0}' as a key file name")]
    BadName(String),
    /// The secret key file can be read by others than its owner.
    #[error("cannot use key file '{}': others may read it (mode {mode:o})", .path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a key file.
    #[error("cannot read key file '{}': it is not a taskmail key", .path.display())]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// The operating system's random source failed.
    #[error("cannot generate a key: the system's random source failed ({0})")]
    Random(String),
    /// Reading or writing failed.
    #[error("cannot access key file '{}'", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

/// `<state-dir>/keys`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("keys")
}

/// `<state-dir>/keys/<account>.key`.
pub fn secret_path(state_dir: &Path, account: &str) -> PathBuf {
    dir(state_dir).join(format!("{account}.key"))
}

/// `<state-dir>/keys/<account>.pub`.
pub fn public_path(state_dir: &Path, account: &str) -> PathBuf {
    dir(state_dir).join(format!("{account}.pub"))
}

fn check_name(account: &str) -> Result<(), KeyFileError> {
    let ok = !account.is_empty()
        && !account.starts_with('.')
        && account
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(KeyFileError::BadName(account.to_owned()))
    }
}

/// A new key from the operating system's random source.
pub fn generate() -> Result<SigningKey, KeyFileError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyFileError::Random(e.to_string()))?;
    let key = SigningKey::from_seed(&seed);
    seed.fill(0);
    Ok(key)
}

/// Writes the key files of `account`; refuses to replace an existing key unless `force`.
/// The secret is written to a fresh 0600 file and renamed into place.
pub fn write(
    state_dir: &Path,
    account: &str,
    key: &SigningKey,
    force: bool,
) -> Result<(), KeyFileError> {
    check_name(account)?;
    let secret = secret_path(state_dir, account);
    if secret.exists() && !force {
        return Err(KeyFileError::Exists {
            account: account.to_owned(),
            path: secret,
        });
    }
    let keys = dir(state_dir);
    std::fs::create_dir_all(&keys).map_err(|source| KeyFileError::Io {
        path: keys.clone(),
        source,
    })?;
    let line = format!("{SECRET_PREFIX}{}\n", URL_SAFE_NO_PAD.encode(key.seed()));
    write_private(&secret, line.as_bytes())?;
    let public = public_path(state_dir, account);
    let text = format!("{}\n", key.public_key().to_text());
    let tmp = public.with_extension("pub.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &public))
        .map_err(|source| KeyFileError::Io {
            path: public,
            source,
        })
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("key.tmp");
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    std::fs::write(path, bytes).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The secret key of `account`, `None` when it has no key file.
pub fn load(state_dir: &Path, account: &str) -> Result<Option<SigningKey>, KeyFileError> {
    check_name(account)?;
    let path = secret_path(state_dir, account);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(KeyFileError::Io { path, source }),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path)
            .map_err(|source| KeyFileError::Io {
                path: path.clone(),
                source,
            })?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions { path, mode });
        }
    }
    let seed: [u8; 32] = text
        .trim()
        .strip_prefix(SECRET_PREFIX)
        .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or(KeyFileError::Format { path })?;
    Ok(Some(SigningKey::from_seed(&seed)))
}

/// The public key of `account` as its `.pub` file says, `None` when there is none.
pub fn load_public(state_dir: &Path, account: &str) -> Result<Option<PublicKey>, KeyFileError> {
    check_name(account)?;
    let path = public_path(state_dir, account);
    match std::fs::read_to_string(&path) {
        Ok(text) => PublicKey::parse(&text)
            .map(Some)
            .map_err(|_| KeyFileError::Format { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyFileError::Io { path, source }),
    }
}

/// The key outbound mail of `account` (a config account name) is signed with: its key file,
/// unless `accounts.NAME.sign = false`; `None` when it has no key.
pub fn signer(config: &Config, account: &str) -> Result<Option<SigningKey>, KeyFileError> {
    match config.account(account) {
        Some(a) if !a.sign => Ok(None),
        _ => load(config.state_dir(), account),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_load_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate().unwrap();
        write(dir.path(), "worker", &key, false).unwrap();
        let loaded = load(dir.path(), "worker").unwrap().unwrap();
        assert_eq!(loaded.seed(), key.seed());
        assert_eq!(
            load_public(dir.path(), "worker").unwrap().unwrap(),
            key.public_key()
        );
        let other = generate().unwrap();
        assert_ne!(other.seed(), key.seed());
        assert!(matches!(
            write(dir.path(), "worker", &other, false),
            Err(KeyFileError::Exists { .. })
        ));
        write(dir.path(), "worker", &other, true).unwrap();
        assert_eq!(
            load(dir.path(), "worker").unwrap().unwrap().seed(),
            other.seed()
        );
        assert!(load(dir.path(), "nobody").unwrap().is_none());
        assert!(matches!(
            load(dir.path(), "../x"),
            Err(KeyFileError::BadName(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn secret_is_private_and_a_readable_one_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", &generate().unwrap(), false).unwrap();
        let path = secret_path(dir.path(), "a");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load(dir.path(), "a"),
            Err(KeyFileError::Permissions { .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SigningKey::from_seed(&[7; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.public_key().key_id()));
        assert!(!shown.contains(&URL_SAFE_NO_PAD.encode([7u8; 32])));
    }
}
