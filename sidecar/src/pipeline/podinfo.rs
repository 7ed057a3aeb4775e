//! The pod's Kubernetes metadata for `_servicelog`: its labels, from the downward-API file
//! the webhook mounts (`SERVICELOG_POD_LABELS_FILE`), and the app container the sidecar
//! was injected for (`SERVICELOG_CONTAINERS`, when there is exactly one).
//!
//! The kubelet rewrites the labels file when the pod's labels change (an atomic swap of a
//! symlinked directory, which file watches see unreliably), so it is read at start and then
//! polled; a change bumps a generation that pipelines compare per run to re-render their
//! `_servicelog` member. Reading never stops the sidecar: a file that cannot be read or a
//! line that does not parse is logged and the labels read last stay in force.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

/// How often the labels file is read again.
pub const POLL: Duration = Duration::from_secs(5);

/// The pod's labels as last read, with a generation that changes when they do.
#[derive(Debug, Default)]
pub struct PodLabels {
    path: Option<PathBuf>,
    current: Mutex<Current>,
}

#[derive(Debug, Default)]
struct Current {
    generation: u64,
    /// The file's bytes, to notice a change without parsing.
    raw: Vec<u8>,
    labels: Arc<BTreeMap<String, String>>,
}

/// A line of the labels file that is not `key="value"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the pod labels file is not key=\"value\": {text:?}")]
pub struct LabelsError {
    pub line: usize,
    pub text: String,
}

impl PodLabels {
    /// Labels read from `path` (none without a path), read once now.
    pub fn new(path: Option<PathBuf>) -> Arc<PodLabels> {
        let labels = Arc::new(PodLabels {
            path,
            current: Mutex::default(),
        });
        labels.reload();
        labels
    }

    /// Reads the file again; true when the labels changed.
    pub fn reload(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let raw = match std::fs::read(path) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the pod labels file; keeping the labels read before");
                return false;
            }
        };
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.raw == raw && current.generation > 0 {
            return false;
        }
        let (labels, errors) = parse(&String::from_utf8_lossy(&raw));
        for e in errors {
            tracing::warn!(path = %path.display(), "{e}");
        }
        current.generation += 1;
        current.raw = raw;
        current.labels = Arc::new(labels);
        true
    }

    /// The generation (0 before anything was read) and the labels.
    pub fn snapshot(&self) -> (u64, Arc<BTreeMap<String, String>>) {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        (current.generation, current.labels.clone())
    }

    pub fn generation(&self) -> u64 {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// Polls the file every `every` on a thread of its own, for the life of the process;
    /// nothing to do without a file.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        if self.path.is_none() {
            return;
        }
        let labels = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("pod-labels".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    if labels.reload() {
                        tracing::info!("pod labels changed");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the pod labels watch; labels stay as read at start");
        }
    }
}

/// The downward API's labels file: one `key="value"` per line, the value quoted as Go's
/// `strconv.Quote` does. Lines that do not parse are returned as errors, the rest kept.
pub fn parse(text: &str) -> (BTreeMap<String, String>, Vec<LabelsError>) {
    let mut labels = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = line
            .split_once('=')
            .and_then(|(k, v)| Some((k, unquote(v)?)))
            .filter(|(k, _)| !k.is_empty());
        match parsed {
            Some((k, v)) => {
                labels.insert(k.to_string(), v);
            }
            None => errors.push(LabelsError {
                line: i + 1,
                text: line.chars().take(200).collect(),
            }),
        }
    }
    (labels, errors)
}

/// A Go double-quoted string literal's value.
fn unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let c = match chars.next()? {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'v' => '\x0b',
            '\\' => '\\',
            '"' => '"',
            '\'' => '\'',
            'x' => char::from(u8::from_str_radix(&take(&mut chars, 2)?, 16).ok()?),
            'u' => char::from_u32(u32::from_str_radix(&take(&mut chars, 4)?, 16).ok()?)?,
            'U' => char::from_u32(u32::from_str_radix(&take(&mut chars, 8)?, 16).ok()?)?,
            _ => return None,
        };
        out.push(c);
    }
    Some(out)
}

fn take(chars: &mut std::str::Chars<'_>, n: usize) -> Option<String> {
    let s: String = chars.take(n).collect();
    (s.len() == n).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_downward_api_labels_file_then_every_label_is_read() {
        let (labels, errors) = parse(
            "app=\"checkout\"\napp.kubernetes.io/name=\"shop\"\nempty=\"\"\nquoted=\"a \\\"b\\\" \\u00e9\\n\"\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(labels["app"], "checkout");
        assert_eq!(labels["app.kubernetes.io/name"], "shop");
        assert_eq!(labels["empty"], "");
        assert_eq!(labels["quoted"], "a \"b\" é\n");
    }

    #[test]
    fn given_a_malformed_line_then_it_is_reported_and_the_others_kept() {
        let (labels, errors) = parse("app=\"checkout\"\nbroken\ntier=\"web\nx=\"\\q\"\n");
        assert_eq!(labels.len(), 1);
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 3, 4]);
    }

    #[test]
    fn given_a_labels_file_when_it_changes_then_reload_bumps_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels");
        std::fs::write(&path, "app=\"checkout\"\n").unwrap();
        let labels = PodLabels::new(Some(path.clone()));
        let (g1, l1) = labels.snapshot();
        assert_eq!(g1, 1);
        assert_eq!(l1["app"], "checkout");
        assert!(!labels.reload(), "unchanged file, same generation");
        std::fs::write(&path, "app=\"checkout\"\ntrack=\"canary\"\n").unwrap();
        assert!(labels.reload());
        let (g2, l2) = labels.snapshot();
        assert_eq!(g2, 2);
        assert_eq!(l2["track"], "canary");
        std::fs::remove_file(&path).unwrap();
        assert!(!labels.reload(), "a missing file keeps what was read");
        assert_eq!(labels.snapshot().1["track"], "canary");
    }
}
