//! The environment variables that decide where taskmail looks for its files, as a value.
//!
//! [`Env`] is passed in rather than read where needed, so that tests describe a home directory
//! without touching the process environment (`std::env::set_var` is banned by `clippy.toml`).
//!
//! Locations, highest precedence first:
//! - config file: `-c FILE`, then `$TASKMAIL_CONFIG`, then `$XDG_CONFIG_HOME/taskmail/config.toml`
//!   (`~/.config/taskmail/config.toml` when unset), then `/etc/taskmail/config.toml` for a process
//!   without a home directory;
//! - state directory: the `state-dir` key, then `$STATE_DIRECTORY` (set by systemd's
//!   `StateDirectory=`), then `$XDG_STATE_HOME/taskmail` (`~/.local/state/taskmail` when unset);
//! - user profiles: `$XDG_CONFIG_HOME/taskmail/profiles/{agents,servers}/NAME.toml`.

use std::path::{Path, PathBuf};

/// The environment values taskmail reads, captured once.
///
/// Empty values count as unset. Relative `XDG_*` values are ignored, as the XDG Base Directory
/// specification asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `$XDG_STATE_HOME`.
    pub xdg_state_home: Option<PathBuf>,
    /// `$STATE_DIRECTORY`, which systemd sets to a colon-separated list; the first entry is used.
    pub state_directory: Option<PathBuf>,
    /// `$TASKMAIL_CONFIG`.
    pub taskmail_config: Option<PathBuf>,
}

impl Env {
    /// Reads the five variables from the process environment.
    pub fn from_process() -> Env {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        Env {
            home: var("HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            xdg_state_home: var("XDG_STATE_HOME"),
            state_directory: var("STATE_DIRECTORY"),
            taskmail_config: var("TASKMAIL_CONFIG"),
        }
    }

    /// An environment with only a home directory, the usual case in tests.
    pub fn with_home(home: impl Into<PathBuf>) -> Env {
        Env {
            home: Some(home.into()),
            ..Env::default()
        }
    }

    /// `$XDG_CONFIG_HOME`, or `~/.config`.
    pub fn config_home(&self) -> Option<PathBuf> {
        absolute(self.xdg_config_home.as_deref())
            .or_else(|| self.home().map(|home| home.join(".config")))
    }

    /// `$XDG_STATE_HOME`, or `~/.local/state`.
    pub fn state_home(&self) -> Option<PathBuf> {
        absolute(self.xdg_state_home.as_deref())
            .or_else(|| self.home().map(|home| home.join(".local").join("state")))
    }

    /// The first absolute entry of `$STATE_DIRECTORY`.
    pub fn systemd_state_directory(&self) -> Option<PathBuf> {
        let value = self.state_directory.as_deref()?.to_str()?;
        value
            .split(':')
            .map(Path::new)
            .find(|path| path.is_absolute())
            .map(Path::to_path_buf)
    }

    /// The directory of user profiles, `$XDG_CONFIG_HOME/taskmail/profiles`.
    pub fn user_profile_dir(&self) -> Option<PathBuf> {
        self.config_home()
            .map(|dir| dir.join("taskmail").join("profiles"))
    }

    /// `$HOME`, if it is an absolute path.
    pub fn home(&self) -> Option<&Path> {
        self.home.as_deref().filter(|home| home.is_absolute())
    }

    /// Expands a leading `~/` (or a lone `~`) with the home directory.
    ///
    /// Returns `None` when the path starts with `~` and there is no home directory. `~user` forms
    /// are left alone: they are rare in a service config and would need the password database.
    pub fn expand_home(&self, path: &str) -> Option<PathBuf> {
        if path == "~" {
            return self.home().map(Path::to_path_buf);
        }
        match path.strip_prefix("~/") {
            Some(rest) => self.home().map(|home| home.join(rest)),
            None => Some(PathBuf::from(path)),
        }
    }
}

fn absolute(path: Option<&Path>) -> Option<PathBuf> {
    path.filter(|path| path.is_absolute())
        .map(Path::to_path_buf)
}

/// Where the config file is: `explicit` (from `-c`), else `$TASKMAIL_CONFIG`, else
/// `$XDG_CONFIG_HOME/taskmail/config.toml`, else `~/.config/taskmail/config.toml`.
///
/// A process with neither `$XDG_CONFIG_HOME` nor `$HOME` (a bare systemd service) gets
/// `/etc/taskmail/config.toml`. The file need not exist: the caller reports that.
pub fn locate(explicit: Option<&Path>, env: &Env) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Some(path) = &env.taskmail_config {
        return path.clone();
    }
    match env.config_home() {
        Some(dir) => dir.join("taskmail").join("config.toml"),
        None => PathBuf::from("/etc/taskmail/config.toml"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_location_precedence() {
        let mut env = Env::with_home("/home/ada");
        assert_eq!(
            locate(None, &env),
            PathBuf::from("/home/ada/.config/taskmail/config.toml")
        );
        env.xdg_config_home = Some(PathBuf::from("/xdg"));
        assert_eq!(
            locate(None, &env),
            PathBuf::from("/xdg/taskmail/config.toml")
        );
        env.taskmail_config = Some(PathBuf::from("/etc/tm.toml"));
        assert_eq!(locate(None, &env), PathBuf::from("/etc/tm.toml"));
        assert_eq!(
            locate(Some(Path::new("./mine.toml")), &env),
            PathBuf::from("./mine.toml")
        );
        assert_eq!(
            locate(None, &Env::default()),
            PathBuf::from("/etc/taskmail/config.toml")
        );
    }

    #[test]
    fn relative_xdg_values_are_ignored() {
        let env = Env {
            xdg_config_home: Some(PathBuf::from("relative")),
            xdg_state_home: Some(PathBuf::from("also/relative")),
            ..Env::with_home("/home/ada")
        };
        assert_eq!(env.config_home(), Some(PathBuf::from("/home/ada/.config")));
        assert_eq!(
            env.state_home(),
            Some(PathBuf::from("/home/ada/.local/state"))
        );
    }

    #[test]
    fn systemd_state_directory_takes_the_first_absolute_entry() {
        let env = Env {
            state_directory: Some(PathBuf::from("/var/lib/taskmail:/var/lib/other")),
            ..Env::default()
        };
        assert_eq!(
            env.systemd_state_directory(),
            Some(PathBuf::from("/var/lib/taskmail"))
        );
    }

    #[test]
    fn home_expansion() {
        let env = Env::with_home("/home/ada");
        assert_eq!(env.expand_home("~/x"), Some(PathBuf::from("/home/ada/x")));
        assert_eq!(env.expand_home("/abs"), Some(PathBuf::from("/abs")));
        assert_eq!(Env::default().expand_home("~/x"), None);
    }
}
