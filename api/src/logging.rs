//! The two binaries' own logs: `--log-format` and `--log-level` (env twins
//! `SERVICELOG_LOG_FORMAT`, `SERVICELOG_LOG_LEVEL`), on stderr, and a level that can be
//! changed while running — the sidecar takes its ServiceLog's `spec.sidecar.logLevel` with
//! each config it applies, without a restart.

use std::{
    io::IsTerminal,
    str::FromStr,
    sync::{Mutex, OnceLock},
};

use tracing_subscriber::{
    EnvFilter, Layer, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

/// The environment twin of `--log-format`.
pub const FORMAT_ENV: &str = "SERVICELOG_LOG_FORMAT";
/// The environment twin of `--log-level`.
pub const LEVEL_ENV: &str = "SERVICELOG_LOG_LEVEL";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, fields flattened (for log pipelines).
    Json,
    /// Human-readable lines; colours only on a terminal.
    Text,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            _ => Err(format!("{s:?} is not a log format: json or text")),
        }
    }
}

/// Problems setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log level {level:?}: {message}")]
    Level { level: String, message: String },
    #[error("a logger is already installed")]
    Installed,
}

/// What [`set_level`] changes, and the level it goes back to.
struct Reloadable {
    handle: reload::Handle<EnvFilter, Registry>,
    base: String,
    current: Mutex<String>,
}

static RELOAD: OnceLock<Reloadable> = OnceLock::new();

fn filter(level: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| LogError::Level {
            level: level.to_owned(),
            message: e.to_string(),
        })
}

/// Whether `level` is a filter [`init`] and [`set_level`] accept (the operator checks the
/// level it passes to sidecars before injecting it).
pub fn check_level(level: &str) -> Result<(), LogError> {
    filter(level).map(drop)
}

/// Installs the process's logger: `format` (default JSON when stderr is not a terminal if
/// `json_when_piped`, else text), at `level` — `--log-level`, else `RUST_LOG`, else
/// `default_level` — a tracing filter such as `info` or `info,kube_runtime=warn`.
pub fn init(
    format: Option<LogFormat>,
    level: Option<&str>,
    default_level: &str,
    json_when_piped: bool,
) -> Result<(), LogError> {
    let terminal = std::io::stderr().is_terminal();
    let format = format.unwrap_or(if json_when_piped && !terminal {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
    let base = level
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|l| !l.is_empty()))
        .unwrap_or_else(|| default_level.to_owned());
    let (filter, handle) = reload::Layer::new(filter(&base)?);
    let output: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .json()
                .flatten_event(true),
        ),
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(terminal),
        ),
    };
    // The filter wraps the output so that a reload changes what is written.
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .try_init()
        .map_err(|_| LogError::Installed)?;
    let _ = RELOAD.set(Reloadable {
        handle,
        current: Mutex::new(base.clone()),
        base,
    });
    Ok(())
}

/// Logs at `level` from now on, or at the level the process started with when `None`.
/// Returns whether the level changed; a no-op before [`init`].
pub fn set_level(level: Option<&str>) -> Result<bool, LogError> {
    let Some(reload) = RELOAD.get() else {
        return Ok(false);
    };
    let wanted = level.unwrap_or(&reload.base);
    let mut current = reload
        .current
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *current == wanted {
        return Ok(false);
    }
    let new = filter(wanted)?;
    reload.handle.reload(new).map_err(|e| LogError::Level {
        level: wanted.to_owned(),
        message: e.to_string(),
    })?;
    wanted.clone_into(&mut current);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_bad_ones_name_the_choices() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        let err = "yaml".parse::<LogFormat>().unwrap_err();
        assert!(err.contains("json or text"), "{err}");
    }

    #[test]
    fn a_bad_level_is_an_error_naming_it() {
        let err = filter("info,=[").unwrap_err().to_string();
        assert!(err.contains("log level \"info,=[\""), "{err}");
    }
}
