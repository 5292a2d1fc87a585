//! Connection service files (`pg_service.conf`), read as libpq's
//! `parseServiceInfo` reads them.
//!
//! The user's file (`PGSERVICEFILE`, else `~/.pg_service.conf`) is searched
//! first; if the service is not there, the system file
//! (`$PGSYSCONFDIR/pg_service.conf`, else Debian's
//! `/etc/postgresql-common/pg_service.conf`). A missing file is skipped. An
//! entry fills only the keywords the connection string left unset.

use std::path::{Path, PathBuf};

use super::SettingsError;
use super::conninfo::Options;
use super::env::Env;
use super::keywords;

/// Where Debian's libpq looks for the system-wide service file.
const SYSCONFDIR: &str = "/etc/postgresql-common";

/// Fills `options` from the entry for `service`.
///
/// # Errors
///
/// The service is in neither file, or its entry has a line libpq would
/// reject (the message names the file and line, never a value).
pub(crate) fn apply(
    options: &mut Options,
    service: &str,
    env: &dyn Env,
) -> Result<(), SettingsError> {
    let user_file = match env.var("PGSERVICEFILE") {
        Some(file) => Some(PathBuf::from(file)),
        None => env.home().map(|home| home.join(".pg_service.conf")),
    };
    let system_dir = env
        .var("PGSYSCONFDIR")
        .unwrap_or_else(|| SYSCONFDIR.to_owned());
    let system_file = Path::new(&system_dir).join("pg_service.conf");
    for file in user_file.iter().chain([&system_file]) {
        let Ok(text) = std::fs::read(file) else {
            continue;
        };
        if apply_file(options, service, file, &String::from_utf8_lossy(&text))? {
            return Ok(());
        }
    }
    Err(SettingsError::new(format!(
        "definition of service \"{service}\" not found"
    )))
}

/// Applies the group named `service` from one file's text; whether it was found.
fn apply_file(
    options: &mut Options,
    service: &str,
    file: &Path,
    text: &str,
) -> Result<bool, SettingsError> {
    let mut in_group = false;
    let mut found = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_matches(|c: char| c.is_ascii_whitespace());
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            if in_group {
                // The end of the wanted group.
                return Ok(true);
            }
            in_group = rest
                .strip_prefix(service)
                .is_some_and(|r| r.starts_with(']'));
            found |= in_group;
            continue;
        }
        if !in_group {
            continue;
        }
        let syntax_error = || {
            SettingsError::new(format!(
                "syntax error in service file \"{}\", line {}",
                file.display(),
                n + 1
            ))
        };
        let (key, value) = line.split_once('=').ok_or_else(syntax_error)?;
        if key == "service" {
            return Err(SettingsError::new(format!(
                "nested service specifications not supported in service file \"{}\", line {}",
                file.display(),
                n + 1
            )));
        }
        let keyword = keywords::lookup(key).ok_or_else(syntax_error)?;
        options.set_default(keyword, value.to_owned());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comment
[other]
host=elsewhere

  [mine]
host=db.example
port=5433
user=alice

[later]
user=bob
";

    #[test]
    fn fills_only_unset_keywords_of_its_own_group() {
        let mut options = Options::default();
        options.set("user", "explicit".into());
        let found = apply_file(&mut options, "mine", Path::new("f"), FILE).expect("valid");
        assert!(found);
        assert_eq!(options.get("host"), Some("db.example"));
        assert_eq!(options.get("port"), Some("5433"));
        assert_eq!(options.get("user"), Some("explicit"));
    }

    #[test]
    fn missing_group_is_not_found() {
        let mut options = Options::default();
        assert!(!apply_file(&mut options, "min", Path::new("f"), FILE).expect("valid"));
        assert!(options == Options::default(), "nothing was set");
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let mut options = Options::default();
        let e = apply_file(&mut options, "s", Path::new("f"), "[s]\nhost = x\n")
            .expect_err("blank before = is not a keyword");
        assert_eq!(e.to_string(), "syntax error in service file \"f\", line 2");
        let e =
            apply_file(&mut options, "s", Path::new("f"), "[s]\nservice=t\n").expect_err("nested");
        assert!(e.to_string().contains("nested"), "{e}");
    }

    #[test]
    fn user_file_wins_and_unknown_service_is_an_error() {
        let dir = std::env::temp_dir().join(format!("pgtx-service-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let user_file = dir.join("user.conf");
        std::fs::write(&user_file, "[s]\nport=1111\n").expect("write");
        std::fs::write(
            dir.join("pg_service.conf"),
            "[s]\nport=2222\nhost=h\n[t]\nport=3333\n",
        )
        .expect("write");
        let env = super::super::env::FixedEnv::new(&[
            ("PGSERVICEFILE", user_file.to_str().expect("utf-8")),
            ("PGSYSCONFDIR", dir.to_str().expect("utf-8")),
        ]);
        let mut options = Options::default();
        apply(&mut options, "s", &env).expect("found");
        assert_eq!(options.get("port"), Some("1111"));
        assert_eq!(
            options.get("host"),
            None,
            "the system file is not read once found"
        );
        let mut options = Options::default();
        apply(&mut options, "t", &env).expect("found in the system file");
        assert_eq!(options.get("port"), Some("3333"));
        let e = apply(&mut Options::default(), "nope", &env).expect_err("unknown");
        assert_eq!(e.to_string(), "definition of service \"nope\" not found");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
