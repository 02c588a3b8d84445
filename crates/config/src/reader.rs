//! A small walker over a parsed TOML table that collects every problem with its key path.
//!
//! Hand-written instead of `#[serde(deny_unknown_fields)]` because serde stops at the first
//! error, and `keyward config check` must report every problem at once, each with its full key
//! path (`key_store[0].credentials[1].secret_access_key`). Every key a section reads is marked;
//! whatever is left at [`Section::finish`] is an unknown key and is reported as an error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use toml::{Table, Value};

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing; the file works as written.
    Warning,
    /// The file loads and keyward runs, but real AWS KMS will refuse it (e.g. a 40-character
    /// secret). `config check` reports it as an error.
    KmsIncompatible,
    /// The file cannot be used.
    Invalid,
}

/// One problem, with the key path it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// Dotted key path, arrays as `name[i]`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::KmsIncompatible | Severity::Invalid => "error",
        };
        if self.path.is_empty() {
            write!(f, "{level}: {}", self.message)
        } else {
            write!(f, "{level}: {}: {}", self.path, self.message)
        }
    }
}

/// Collected problems.
#[derive(Debug, Default)]
pub struct Problems {
    pub list: Vec<Problem>,
}

impl Problems {
    pub fn push(
        &mut self,
        severity: Severity,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.list.push(Problem {
            severity,
            path: path.into(),
            message: message.into(),
        });
    }
    pub fn invalid(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Invalid, path, message);
    }
    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, path, message);
    }
    /// Whether any problem makes the file unusable.
    pub fn has_invalid(&self) -> bool {
        self.list.iter().any(|p| p.severity == Severity::Invalid)
    }
}

/// Join a parent path and a key.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// One TOML table being read, remembering which keys were consumed.
pub struct Section<'a> {
    path: String,
    table: &'a Table,
    used: BTreeSet<&'a str>,
    base_dir: &'a Path,
}

impl<'a> Section<'a> {
    pub fn new(path: impl Into<String>, table: &'a Table, base_dir: &'a Path) -> Self {
        Self {
            path: path.into(),
            table,
            used: BTreeSet::new(),
            base_dir,
        }
    }

    /// This section's own path.
    pub fn here(&self) -> &str {
        &self.path
    }

    /// The path of a key in this section.
    pub fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Whether the key is present (marks it used).
    pub fn has(&mut self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// The raw value (marks it used).
    pub fn raw(&mut self, key: &str) -> Option<&'a Value> {
        let (k, v) = self.table.get_key_value(key)?;
        self.used.insert(k.as_str());
        Some(v)
    }

    fn typed<T>(
        &mut self,
        key: &str,
        p: &mut Problems,
        want: &str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Option<T> {
        let v = self.raw(key)?;
        match f(v) {
            Some(t) => Some(t),
            None => {
                p.invalid(
                    self.key_path(key),
                    format!("expected {want}, found {}", v.type_str()),
                );
                None
            }
        }
    }

    pub fn string(&mut self, key: &str, p: &mut Problems) -> Option<String> {
        self.typed(key, p, "a string", |v| v.as_str().map(str::to_string))
    }

    /// A required string: reports it missing.
    pub fn required_string(&mut self, key: &str, p: &mut Problems) -> Option<String> {
        if !self.table.contains_key(key) {
            p.invalid(self.key_path(key), "required key is missing");
            return None;
        }
        self.string(key, p)
    }

    pub fn bool(&mut self, key: &str, p: &mut Problems) -> Option<bool> {
        self.typed(key, p, "true or false", Value::as_bool)
    }

    pub fn integer(&mut self, key: &str, p: &mut Problems) -> Option<i64> {
        self.typed(key, p, "an integer", Value::as_integer)
    }

    pub fn string_list(&mut self, key: &str, p: &mut Problems) -> Option<Vec<String>> {
        let path = self.key_path(key);
        let arr = self.typed(key, p, "an array of strings", Value::as_array)?;
        let mut out = Vec::new();
        for (i, v) in arr.iter().enumerate() {
            match v.as_str() {
                Some(s) => out.push(s.to_string()),
                None => p.invalid(
                    format!("{path}[{i}]"),
                    format!("expected a string, found {}", v.type_str()),
                ),
            }
        }
        Some(out)
    }

    /// A path, resolved relative to the configuration file's directory.
    pub fn path(&mut self, key: &str, p: &mut Problems) -> Option<PathBuf> {
        let s = self.string(key, p)?;
        if s.is_empty() {
            p.invalid(self.key_path(key), "empty path");
            return None;
        }
        Some(self.base_dir.join(s))
    }

    pub fn required_path(&mut self, key: &str, p: &mut Problems) -> Option<PathBuf> {
        if !self.table.contains_key(key) {
            p.invalid(self.key_path(key), "required key is missing");
            return None;
        }
        self.path(key, p)
    }

    /// A sub-table.
    pub fn table(&mut self, key: &str, p: &mut Problems) -> Option<Section<'a>> {
        let path = self.key_path(key);
        let base = self.base_dir;
        let t = self.typed(key, p, "a table", Value::as_table)?;
        Some(Section::new(path, t, base))
    }

    /// An array of tables (`[[key]]`), each with its indexed path.
    pub fn tables(&mut self, key: &str, p: &mut Problems) -> Vec<Section<'a>> {
        let path = self.key_path(key);
        let base = self.base_dir;
        let Some(arr) = self.typed(key, p, "an array of tables", Value::as_array) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, v) in arr.iter().enumerate() {
            match v.as_table() {
                Some(t) => out.push(Section::new(format!("{path}[{i}]"), t, base)),
                None => p.invalid(
                    format!("{path}[{i}]"),
                    format!("expected a table, found {}", v.type_str()),
                ),
            }
        }
        out
    }

    /// A secret given inline as `key`, as a file path `key_file`, or as an environment variable
    /// name `key_env`: exactly one of the three. The value never appears in a problem message.
    pub fn secret(&mut self, key: &str, p: &mut Problems, required: bool) -> Option<SecretString> {
        let file_key = format!("{key}_file");
        let env_key = format!("{key}_env");
        let present: Vec<&str> = [key, file_key.as_str(), env_key.as_str()]
            .into_iter()
            .filter(|k| self.table.contains_key(*k))
            .collect();
        if present.len() > 1 {
            for k in &present {
                self.raw(k);
            }
            p.invalid(
                self.key_path(key),
                format!("give only one of {key}, {file_key}, {env_key}"),
            );
            return None;
        }
        if let Some(s) = self.string(key, p) {
            return Some(SecretString::from(s));
        }
        if let Some(path) = self.path(&file_key, p) {
            // As for the master key file: a secret others may read is an error.
            if let Some(problem) = std::fs::metadata(&path)
                .ok()
                .and_then(|m| not_private(&path, &m))
            {
                p.invalid(self.key_path(&file_key), problem);
            }
            return match std::fs::read_to_string(&path) {
                Ok(s) => Some(SecretString::from(
                    s.trim_end_matches(['\n', '\r']).to_string(),
                )),
                Err(e) => {
                    p.invalid(
                        self.key_path(&file_key),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            };
        }
        if let Some(var) = self.string(&env_key, p) {
            return match std::env::var(&var) {
                Ok(s) => Some(SecretString::from(s)),
                Err(_) => {
                    p.invalid(
                        self.key_path(&env_key),
                        format!("environment variable {var} is not set (or not UTF-8)"),
                    );
                    None
                }
            };
        }
        if required && present.is_empty() {
            p.invalid(
                self.key_path(key),
                format!("required: give {key}, {file_key} or {env_key}"),
            );
        }
        None
    }

    /// Report every key that was not read as unknown.
    pub fn finish(self, p: &mut Problems) {
        for k in self.table.keys() {
            if !self.used.contains(k.as_str()) {
                p.invalid(join(&self.path, k), "unknown key");
            }
        }
    }
}

/// The problem with a file that holds a secret (a master key, a SigV4 secret) when its mode
/// lets group or others read or write it; `None` when only the owner can.
pub(crate) fn not_private(f: &Path, m: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = m.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is readable or writable by group or others (mode {:o}): chmod 600",
            f.display(),
            mode & 0o777
        )
    })
}
