//! An http sink's credentials, read from the Secret its `credentialsSecretRef` names.
//!
//! The webhook mounts that Secret at `<credentials dir>/<sink>/` (the dir is
//! `$SERVICELOG_CREDENTIALS_DIR`, default [`DEFAULT_DIR`]); each key is a file:
//! - `username` + `password`: `Authorization: Basic …`;
//! - `token`: `Authorization: Bearer …`;
//! - `header.<Name>`: the header `<Name>`.
//!
//! Other keys are ignored, and so is one trailing newline of each value (`kubectl create
//! secret --from-file` keeps the file's). The kubelet replaces a mounted Secret's files when
//! the Secret changes, so they are read again every [`REFRESH`] and after a 401 or 403.
//! Values are never logged nor put in an error: errors name the path and the key.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ureq::http::{HeaderName, HeaderValue};

/// How often the mounted files are read again.
pub const REFRESH: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "credentials directory {dir} does not exist: the Secret named by credentialsSecretRef is \
         mounted there by the webhook when the pod is created, so a pod created before the \
         Secret was named needs a restart"
    )]
    Missing { dir: PathBuf },
    #[error(
        "credentials directory {dir} holds none of username + password, token or header.<Name> \
         (is it the right Secret?)"
    )]
    Empty { dir: PathBuf },
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{dir}: {present} is set without {missing}")]
    HalfBasic {
        dir: PathBuf,
        present: &'static str,
        missing: &'static str,
    },
    #[error("{dir}: both username + password and token are set; keep one")]
    TwoAuthorizations { dir: PathBuf },
    #[error("{path}: not a valid HTTP header {what}")]
    BadHeader { path: PathBuf, what: &'static str },
}

/// The headers the mounted Secret makes, re-read as it changes.
#[derive(Debug)]
pub struct Credentials {
    dir: PathBuf,
    headers: Vec<(HeaderName, HeaderValue)>,
    read_at: Instant,
}

impl Credentials {
    /// Reads `dir`; fails when it is missing or holds none of the known keys.
    pub fn load(dir: &Path) -> Result<Self, CredentialsError> {
        Ok(Self {
            dir: dir.to_owned(),
            headers: read_headers(dir)?,
            read_at: Instant::now(),
        })
    }

    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// Reads the files again if [`REFRESH`] has passed since the last read.
    pub fn refresh_if_due(&mut self, sink: &str) {
        if self.read_at.elapsed() >= REFRESH {
            self.reload(sink);
        }
    }

    /// Reads the files again; true when the headers changed. A directory that became
    /// unreadable or empty keeps the headers read before (and says so in the log).
    pub fn reload(&mut self, sink: &str) -> bool {
        self.read_at = Instant::now();
        match read_headers(&self.dir) {
            Ok(headers) if headers != self.headers => {
                tracing::info!(sink, dir = %self.dir.display(), "credentials changed; using the new ones");
                self.headers = headers;
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(sink, error = %e, "re-reading credentials; keeping the ones read before");
                false
            }
        }
    }
}

fn read_headers(dir: &Path) -> Result<Vec<(HeaderName, HeaderValue)>, CredentialsError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CredentialsError::Missing {
                dir: dir.to_owned(),
            });
        }
        Err(e) => {
            return Err(CredentialsError::Read {
                path: dir.to_owned(),
                message: e.to_string(),
            });
        }
    };
    let mut keys: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        // The kubelet's `..data` link and timestamped dirs.
        .filter(|k| !k.starts_with('.'))
        .collect();
    keys.sort();
    let read = |key: &str| -> Result<Option<String>, CredentialsError> {
        let path = dir.join(key);
        match fs::read(&path) {
            Ok(bytes) => {
                let mut text = String::from_utf8(bytes).map_err(|_| CredentialsError::Read {
                    path: path.clone(),
                    message: "not UTF-8".to_owned(),
                })?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                Ok(Some(text))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CredentialsError::Read {
                path,
                message: e.to_string(),
            }),
        }
    };
    let value = |key: &str, text: &str| {
        HeaderValue::from_str(text).map_err(|_| CredentialsError::BadHeader {
            path: dir.join(key),
            what: "value",
        })
    };

    let mut headers = Vec::new();
    let has = |k: &str| keys.iter().any(|x| x == k);
    let basic = match (has("username"), has("password")) {
        (true, true) => match (read("username")?, read("password")?) {
            (Some(user), Some(pass)) => Some(format!(
                "Basic {}",
                base64(format!("{user}:{pass}").as_bytes())
            )),
            _ => None,
        },
        (true, false) => {
            return Err(CredentialsError::HalfBasic {
                dir: dir.to_owned(),
                present: "username",
                missing: "password",
            });
        }
        (false, true) => {
            return Err(CredentialsError::HalfBasic {
                dir: dir.to_owned(),
                present: "password",
                missing: "username",
            });
        }
        (false, false) => None,
    };
    let bearer = match has("token") {
        true => read("token")?.map(|t| format!("Bearer {}", t.trim())),
        false => None,
    };
    match (basic, bearer) {
        (Some(_), Some(_)) => {
            return Err(CredentialsError::TwoAuthorizations {
                dir: dir.to_owned(),
            });
        }
        (Some(auth), None) => {
            headers.push((ureq::http::header::AUTHORIZATION, value("password", &auth)?))
        }
        (None, Some(auth)) => {
            headers.push((ureq::http::header::AUTHORIZATION, value("token", &auth)?))
        }
        (None, None) => {}
    }
    for key in &keys {
        let Some(name) = key.strip_prefix("header.") else {
            continue;
        };
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| CredentialsError::BadHeader {
                path: dir.join(key),
                what: "name",
            })?;
        if let Some(text) = read(key)? {
            headers.push((name, value(key, &text)?));
        }
    }
    if headers.is_empty() {
        return Err(CredentialsError::Empty {
            dir: dir.to_owned(),
        });
    }
    for (_, v) in &mut headers {
        v.set_sensitive(true);
    }
    Ok(headers)
}

/// Standard base64 with padding (RFC 4648), for Basic auth.
fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for (k, v) in files {
            fs::write(dir.path().join(k), v).expect("writing a credentials file");
        }
        dir
    }

    fn rendered(c: &Credentials) -> Vec<(String, String)> {
        c.headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect()
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "base64({input:?})");
        }
    }

    #[test]
    fn given_username_and_password_then_basic_auth_without_the_trailing_newline() {
        let d = dir_with(&[("username", "loki\n"), ("password", "s3cret\n")]);
        let c = Credentials::load(d.path()).expect("credentials");
        assert_eq!(
            rendered(&c),
            vec![(
                "authorization".to_owned(),
                format!("Basic {}", base64(b"loki:s3cret"))
            )]
        );
    }

    #[test]
    fn given_a_token_and_headers_then_bearer_and_the_headers() {
        let d = dir_with(&[
            ("token", "abc.def\n"),
            ("header.X-Scope-OrgID", "tenant-1"),
            ("ca.crt", "ignored"),
        ]);
        // The kubelet's layout: the keys are links into a timestamped dir.
        fs::create_dir(d.path().join("..2026_11_25")).expect("mkdir");
        let c = Credentials::load(d.path()).expect("credentials");
        assert_eq!(
            rendered(&c),
            vec![
                ("authorization".to_owned(), "Bearer abc.def".to_owned()),
                ("x-scope-orgid".to_owned(), "tenant-1".to_owned()),
            ]
        );
    }

    #[test]
    fn given_no_directory_or_no_known_key_then_an_error_naming_the_path() {
        let d = dir_with(&[("ca.crt", "x")]);
        let missing = d.path().join("nope");
        let err = Credentials::load(&missing).expect_err("a missing dir fails");
        assert_eq!(
            err,
            CredentialsError::Missing {
                dir: missing.clone()
            }
        );
        assert!(err.to_string().contains("restart"), "{err}");
        assert_eq!(
            Credentials::load(d.path()).expect_err("no known key fails"),
            CredentialsError::Empty {
                dir: d.path().to_owned()
            }
        );
    }

    #[test]
    fn given_half_or_double_auth_or_a_bad_header_then_an_error_without_the_value() {
        let d = dir_with(&[("username", "u")]);
        assert!(matches!(
            Credentials::load(d.path()),
            Err(CredentialsError::HalfBasic { .. })
        ));
        let d = dir_with(&[("username", "u"), ("password", "p"), ("token", "t")]);
        assert!(matches!(
            Credentials::load(d.path()),
            Err(CredentialsError::TwoAuthorizations { .. })
        ));
        let d = dir_with(&[("header.X-Key", "line1\nsecret-part\n")]);
        let err = Credentials::load(d.path()).expect_err("a value with a newline fails");
        assert!(!err.to_string().contains("secret-part"), "{err}");
    }

    #[test]
    fn given_a_changed_secret_then_reload_picks_it_up() {
        let d = dir_with(&[("token", "one")]);
        let mut c = Credentials::load(d.path()).expect("credentials");
        assert!(!c.reload("t"), "unchanged files are no change");
        fs::write(d.path().join("token"), "two").expect("rewriting the token");
        assert!(c.reload("t"));
        assert_eq!(rendered(&c)[0].1, "Bearer two");
        fs::remove_file(d.path().join("token")).expect("removing the token");
        assert!(!c.reload("t"), "an emptied dir keeps the old credentials");
        assert_eq!(rendered(&c)[0].1, "Bearer two");
    }
}
