//! Where settings that are not in the connection string come from: the
//! environment, the home directory and the name of the OS user.
//!
//! Behind a trait so that the resolution rules can be tested without
//! touching the process environment.

#[cfg(test)]
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The outside world as libpq sees it.
pub(crate) trait Env {
    /// An environment variable, if set (an empty value is a value, as in libpq).
    fn var(&self, name: &str) -> Option<String>;

    /// The name of the OS user this process runs as (libpq asks
    /// `getpwuid(geteuid())`, not `$USER`).
    fn os_user(&self) -> Option<String>;

    /// The home directory: `$HOME`, or the OS user's entry if that is unset
    /// or empty (libpq's `pqGetHomeDirectory`).
    fn home(&self) -> Option<PathBuf> {
        match self.var("HOME") {
            Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
            _ => self.os_user_home(),
        }
    }

    /// The OS user's home directory from the user database.
    fn os_user_home(&self) -> Option<PathBuf>;
}

/// The real process environment.
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn os_user(&self) -> Option<String> {
        os_user().map(|u| u.name)
    }

    fn os_user_home(&self) -> Option<PathBuf> {
        os_user().map(|u| u.dir)
    }
}

fn os_user() -> Option<nix::unistd::User> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
}

/// A fixed environment, for tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct FixedEnv {
    pub(crate) vars: BTreeMap<String, String>,
    pub(crate) user: Option<String>,
}

#[cfg(test)]
impl FixedEnv {
    pub(crate) fn new(vars: &[(&str, &str)]) -> FixedEnv {
        FixedEnv {
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            user: Some("osuser".into()),
        }
    }
}

#[cfg(test)]
impl Env for FixedEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn os_user(&self) -> Option<String> {
        self.user.clone()
    }

    fn os_user_home(&self) -> Option<PathBuf> {
        None
    }
}
