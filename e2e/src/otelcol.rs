//! A real OpenTelemetry Collector on a free loopback port, for the OTLP sink's tests: the
//! otlp receiver (OTLP/HTTP) feeding the contrib file exporter, which writes every request
//! it took as one line of OTLP JSON. The binary is built from the collector's Go modules
//! by `e2e/tools/build.sh otelcol` into `~/.cache/servicelog/tools/<OTELCOL_TOOLS_ID>/bin`
//! (the first [`Collector::start`] on a machine runs it).
//!
//! The output file is opened in append mode, so a collector stopped and started again
//! (the restart tests) keeps what it wrote before; [`Collector::records`] reads it all.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use serde_json::Value;

use crate::{
    EnvError,
    procs::{EnvDir, Proc, free_port, wait_for},
    tools,
};

/// The collector starts in well under a second here; a loaded CI machine is slower.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// A cold build (module downloads included) took 2.5-6.6 min here on 2 shared cores.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// What the collector logs once its pipelines run.
const READY_LINE: &str = "Everything is ready";

/// A running collector, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Collector {
    port: u16,
    dir: PathBuf,
    env: EnvDir,
    label: String,
    starts: usize,
    proc: Option<Proc>,
}

/// One LogRecord the collector wrote, with its resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Resource attributes, as plain JSON (see [`plain`]).
    pub resource: BTreeMap<String, Value>,
    pub scope: String,
    /// `severityNumber` (0 when absent).
    pub severity_number: i64,
    pub severity_text: String,
    /// The body as plain JSON (`Null` when absent).
    pub body: Value,
    pub attributes: BTreeMap<String, Value>,
    pub time_unix_nano: u64,
    pub observed_time_unix_nano: u64,
}

impl Collector {
    /// Writes a config under `env` (`<label>/`) and starts the collector on a free
    /// loopback port, waiting (bounded, named on timeout) until its pipelines run.
    ///
    /// Notable errors: [`EnvError::Missing`] when Go is not installed or the build
    /// failed; [`EnvError::Timeout`] / [`EnvError::Failed`] with the collector's last log
    /// lines when it does not come up.
    pub fn start(env: &EnvDir, label: &str) -> Result<Self, EnvError> {
        locate()?;
        let dir = env.join(label);
        fs::create_dir_all(&dir).map_err(|e| EnvError::io("creating the collector dir", e))?;
        let mut collector = Self {
            port: free_port()?,
            dir,
            env: env.clone(),
            label: label.to_owned(),
            starts: 0,
            proc: None,
        };
        collector.restart()?;
        Ok(collector)
    }

    /// Starts it again on the same port and output file (after [`Collector::stop`]).
    pub fn restart(&mut self) -> Result<(), EnvError> {
        self.stop();
        let config = self.dir.join("config.yaml");
        // No telemetry endpoint (several collectors run at once), the file exporter
        // appending and flushing often so tests see records soon.
        let text = format!(
            "receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:{port}\n\
             exporters:\n  file:\n    path: {out}\n    format: json\n    append: true\n    \
             flush_interval: 100ms\n\
             service:\n  telemetry:\n    metrics:\n      level: none\n    logs:\n      level: info\n  \
             pipelines:\n    logs:\n      receivers: [otlp]\n      exporters: [file]\n",
            port = self.port,
            out = self.output().display(),
        );
        fs::write(&config, text).map_err(|e| EnvError::io("writing the collector config", e))?;
        let mut cmd = Command::new(locate()?);
        cmd.arg("--config").arg(&config);
        self.starts += 1;
        let name = format!("{}-{}", self.label, self.starts);
        let mut proc = Proc::spawn(&name, cmd, &self.env)?;
        let what = format!(
            "the OpenTelemetry Collector to log {READY_LINE:?} (127.0.0.1:{})",
            self.port
        );
        let log = proc.log_path().to_owned();
        wait_for(&what, START_TIMEOUT, Duration::from_millis(50), || {
            if let Some(how) = proc.exited() {
                return Err(how);
            }
            Ok(fs::read_to_string(&log).is_ok_and(|text| text.contains(READY_LINE)))
        })
        .map_err(|e| e.with_log(&name, &proc.log_tail(30)))?;
        self.proc = Some(proc);
        Ok(())
    }

    /// SIGTERM (the exporter flushes), SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.stop(Duration::from_secs(10));
        }
    }

    /// `http://127.0.0.1:PORT`, the OTLP/HTTP endpoint (logs at `/v1/logs`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The file exporter's output: one OTLP JSON request per line.
    pub fn output(&self) -> PathBuf {
        self.dir.join("logs.json")
    }

    /// The last log lines of the running (or last) collector, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc
            .as_ref()
            .map_or_else(String::new, |p| p.log_tail(lines))
    }

    /// Every record written so far, in order. A last line still being written is left
    /// for the next call.
    pub fn records(&self) -> Vec<Record> {
        read_records(&self.output())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The records of a file exporter's JSON output.
pub fn read_records(path: &Path) -> Vec<Record> {
    let Ok(file) = fs::File::open(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        let Ok(request) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        for rl in array(&request, "resourceLogs") {
            let resource = attributes(&rl["resource"]["attributes"]);
            for sl in array(rl, "scopeLogs") {
                let scope = sl["scope"]["name"].as_str().unwrap_or_default().to_owned();
                for lr in array(sl, "logRecords") {
                    out.push(Record {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        severity_number: lr["severityNumber"].as_i64().unwrap_or(0),
                        severity_text: lr["severityText"].as_str().unwrap_or_default().to_owned(),
                        body: plain(&lr["body"]),
                        attributes: attributes(&lr["attributes"]),
                        time_unix_nano: nanos(&lr["timeUnixNano"]),
                        observed_time_unix_nano: nanos(&lr["observedTimeUnixNano"]),
                    });
                }
            }
        }
    }
    out
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// OTLP JSON writes 64-bit integers as strings.
fn nanos(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_u64().unwrap_or(0),
    }
}

fn attributes(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    (
                        kv["key"].as_str().unwrap_or_default().to_owned(),
                        plain(&kv["value"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An OTLP JSON AnyValue as plain JSON: `{"intValue":"7"}` → `7`, a kvlist → an object,
/// an empty value → null.
pub fn plain(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        return s.clone();
    }
    if let Some(b) = v.get("boolValue") {
        return b.clone();
    }
    if let Some(i) = v.get("intValue") {
        return match i {
            Value::String(s) => s.parse::<i64>().map_or(Value::Null, Value::from),
            i => i.clone(),
        };
    }
    if let Some(d) = v.get("doubleValue") {
        return d.clone();
    }
    if let Some(a) = v.get("arrayValue") {
        return Value::Array(array(a, "values").iter().map(plain).collect());
    }
    if let Some(kv) = v.get("kvlistValue") {
        return Value::Object(
            array(kv, "values")
                .iter()
                .map(|kv| {
                    (
                        kv["key"].as_str().unwrap_or_default().to_owned(),
                        plain(&kv["value"]),
                    )
                })
                .collect(),
        );
    }
    Value::Null
}

/// The collector binary, built by `e2e/tools/build.sh otelcol` when not cached yet (once
/// per test process; build.sh serialises builds across processes).
fn locate() -> Result<PathBuf, EnvError> {
    static BUILT: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .map_err(|_| EnvError::Poisoned)?;
    if let Some(path) = &*built {
        return Ok(path.clone());
    }
    let id = tools::version("OTELCOL_TOOLS_ID").unwrap_or("unknown");
    let bin = tools::cache_dir().join("tools").join(id).join("bin");
    let path = bin.join("otelcol");
    if !path.is_file() {
        build(&bin)?;
    }
    *built = Some(path.clone());
    Ok(path)
}

fn build(bin: &Path) -> Result<(), EnvError> {
    tools::build_set(
        "otelcol",
        "the OpenTelemetry Collector of the OTLP tests from its Go modules",
        &["otelcol"],
        bin,
        BUILD_TIMEOUT,
    )
}
