//! Ids Berth makes and the checks names pass before they become paths.
use rand::RngCore;

use crate::error::{Error, Result};

/// A new random id: 64 hex characters, as containerd makes them.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Longest name Kubernetes allows (a DNS subdomain).
pub const MAX_NAME: usize = 253;

/// Checks a metadata name or namespace: non-empty, at most 253 bytes, no `/`
/// and no NUL (it becomes part of keys and may be shown in paths). Dots, as
/// Kubernetes pod names have, are fine; `.` and `..` alone are not.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME {
        return Err(Error::invalid(format!("{what} is {} bytes long; at most {MAX_NAME} are allowed", name.len())));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(Error::invalid(format!("{what} {name:?} must not contain '/' or a NUL byte")));
    }
    if name == "." || name == ".." {
        return Err(Error::invalid(format!("{what} must not be {name:?}")));
    }
    Ok(())
}

/// Checks an id a client passed in before it is used in a path.
pub fn check_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(Error::not_found(format!("{what} {id:?} does not exist")));
    }
    Ok(())
}

/// Joins a relative log path to its directory, refusing any path that would
/// leave it (absolute, or climbing with `..`).
pub fn log_path(dir: &str, rel: &str) -> Result<std::path::PathBuf> {
    use std::path::{Component, Path};
    if dir.is_empty() || rel.is_empty() {
        return Err(Error::invalid("log path needs both log_directory and log_path"));
    }
    if !Path::new(dir).is_absolute() {
        return Err(Error::invalid(format!("log_directory {dir:?} must be an absolute path")));
    }
    if rel.contains('\0') || dir.contains('\0') {
        return Err(Error::invalid("log path must not contain a NUL byte"));
    }
    let mut depth: i32 = 0;
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err(Error::invalid(format!("log_path {rel:?} leaves the log directory")));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Error::invalid(format!("log_path {rel:?} must be relative to log_directory")))
            }
        }
    }
    if depth == 0 {
        return Err(Error::invalid(format!("log_path {rel:?} names no file")));
    }
    Ok(Path::new(dir).join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("name", "web.example-1").is_ok());
        assert!(check_name("name", "").is_err());
        assert!(check_name("name", "a/b").is_err());
        assert!(check_name("name", "a\0b").is_err());
        assert!(check_name("name", &"x".repeat(254)).is_err());
        assert!(check_name("name", &"x".repeat(253)).is_ok());
    }

    #[test]
    fn log_paths() {
        assert_eq!(
            log_path("/var/log/pods/x", "c/0.log").unwrap(),
            std::path::PathBuf::from("/var/log/pods/x/c/0.log")
        );
        assert!(log_path("/l", "../x.log").is_err());
        assert!(log_path("/l", "a/../../x.log").is_err());
        assert!(log_path("/l", "/etc/passwd").is_err());
        assert!(log_path("/l", "a/../b.log").is_ok());
        assert!(log_path("rel", "b.log").is_err());
    }

    #[test]
    fn ids_are_hex() {
        let id = new_id();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
