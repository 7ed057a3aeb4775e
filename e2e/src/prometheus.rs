//! A real Prometheus on a free loopback port, for the dashboard and alert tests: it scrapes
//! the targets a test names (a real operator's and real sidecars' `/metrics`) every second,
//! evaluates rule files every second, and answers PromQL through its HTTP API. The binaries
//! (`prometheus`, `promtool`) are built from Prometheus' Go module by
//! `e2e/tools/build.sh prometheus` into `~/.cache/servicelog/tools/<PROMETHEUS_TOOLS_ID>/bin`
//! (the first [`Prometheus::start`] or [`promtool`] on a machine runs it).
//!
//! Targets are static: the labels a test gives each one stand in for what the Prometheus
//! Operator's ServiceMonitor and PodMonitor would attach (`namespace`, `pod`, `container`),
//! so queries written for a cluster run unchanged.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
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

/// Prometheus is ready in about a second here; a loaded CI machine is slower.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// A cold build took ~9.5 min here on 2 cores shared with four other builds.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);
/// One API call; queries over a few minutes of a few series answer in milliseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One scrape target: `address` (`host:port`, scraped at `/metrics`) with `labels` set on
/// every series it exposes.
#[derive(Clone, Debug)]
pub struct Target {
    pub job: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
}

impl Target {
    /// A target on 127.0.0.1:`port` with `labels` (`(name, value)` pairs).
    pub fn local(job: &str, port: u16, labels: &[(&str, &str)]) -> Self {
        Self {
            job: job.to_owned(),
            address: format!("127.0.0.1:{port}"),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

/// One series of a query's answer: its labels and its value as Prometheus wrote it
/// (`"NaN"` and `"+Inf"` included).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: String,
}

/// One alert of `/api/v1/alerts`.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub name: String,
    /// `pending` or `firing`.
    pub state: String,
    pub labels: BTreeMap<String, String>,
}

/// A running Prometheus, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Prometheus {
    port: u16,
    proc: Proc,
    agent: ureq::Agent,
}

impl Prometheus {
    /// Writes a config scraping `targets` and loading `rule_files` under `env`
    /// (`<label>/`), starts Prometheus on a free loopback port and waits (bounded, named on
    /// timeout) until `/-/ready` answers 200. A port taken between choosing and binding it
    /// is retried with another.
    ///
    /// Notable errors: [`EnvError::Missing`] when Go is not installed or the build failed;
    /// [`EnvError::Timeout`] / [`EnvError::Failed`] with Prometheus' last log lines when
    /// it does not come up (a rule file that does not load, for one).
    pub fn start(
        env: &EnvDir,
        label: &str,
        targets: &[Target],
        rule_files: &[PathBuf],
    ) -> Result<Self, EnvError> {
        let binary = locate("prometheus")?;
        let dir = env.join(label);
        fs::create_dir_all(&dir).map_err(|e| EnvError::io("creating the Prometheus dir", e))?;
        let config = dir.join("prometheus.yml");
        fs::write(&config, config_text(targets, rule_files))
            .map_err(|e| EnvError::io("writing the Prometheus config", e))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into();
        let mut last = None;
        for attempt in 1..=3 {
            let port = free_port()?;
            let mut cmd = Command::new(&binary);
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"));
            let name = format!("{label}-{attempt}");
            let mut proc = Proc::spawn(&name, cmd, env)?;
            let what = format!("Prometheus /-/ready on 127.0.0.1:{port}");
            let ready = wait_for(&what, START_TIMEOUT, Duration::from_millis(100), || {
                if let Some(how) = proc.exited() {
                    return Err(how);
                }
                Ok(agent
                    .get(format!("http://127.0.0.1:{port}/-/ready"))
                    .call()
                    .is_ok_and(|r| r.status() == 200))
            })
            .map_err(|e| e.with_log(&name, &proc.log_tail(30)));
            match ready {
                Ok(()) => return Ok(Self { port, proc, agent }),
                Err(e) if e.is_port_clash() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(EnvError::Failed {
            what: "Prometheus".into(),
            detail: "could not start".into(),
        }))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// Evaluates `expr` now (`/api/v1/query`) and returns the series of a vector answer
    /// (a scalar answer is one sample without labels).
    ///
    /// Notable errors: [`EnvError::Failed`] with Prometheus' own message when the
    /// expression does not parse or cannot be evaluated.
    pub fn query(&self, expr: &str) -> Result<Vec<Sample>, EnvError> {
        let what = format!("the Prometheus query {expr:?}");
        let data = self.api(&what, "/api/v1/query", &[("query", expr)])?;
        let result = &data["result"];
        match data["resultType"].as_str() {
            Some("vector") => Ok(result
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|s| Sample {
                    labels: string_map(&s["metric"]),
                    value: s["value"][1].as_str().unwrap_or_default().to_owned(),
                })
                .collect()),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: result[1].as_str().unwrap_or_default().to_owned(),
            }]),
            other => Err(EnvError::Failed {
                what,
                detail: format!("answered a {other:?}, not an instant vector: {data}"),
            }),
        }
    }

    /// The alerts the rule manager holds now, pending and firing.
    pub fn alerts(&self) -> Result<Vec<Alert>, EnvError> {
        let data = self.api("the alerts", "/api/v1/alerts", &[])?;
        Ok(data["alerts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let labels = string_map(&a["labels"]);
                Alert {
                    name: labels.get("alertname").cloned().unwrap_or_default(),
                    state: a["state"].as_str().unwrap_or_default().to_owned(),
                    labels,
                }
            })
            .collect())
    }

    /// Every rule's expression as loaded (`/api/v1/rules`), by rule name: what the rule
    /// files hold after Prometheus parsed them.
    pub fn rules(&self) -> Result<BTreeMap<String, String>, EnvError> {
        let data = self.api("the rules", "/api/v1/rules", &[])?;
        let mut out = BTreeMap::new();
        for group in data["groups"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            for rule in group["rules"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                out.insert(
                    rule["name"].as_str().unwrap_or_default().to_owned(),
                    rule["query"].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
        Ok(out)
    }

    /// Waits until every target was scraped successfully at least once, failing with each
    /// target's state (and last scrape error) on timeout.
    pub fn wait_scraped(&self, timeout: Duration) -> Result<(), EnvError> {
        let mut last = String::new();
        wait_for(
            "Prometheus to scrape every target successfully",
            timeout,
            Duration::from_millis(200),
            || {
                let data = self
                    .api("the targets", "/api/v1/targets", &[("state", "active")])
                    .map_err(|e| e.to_string())?;
                let targets = data["activeTargets"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                last = targets
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {}: {} {}",
                            t["labels"]["job"].as_str().unwrap_or_default(),
                            t["scrapeUrl"].as_str().unwrap_or_default(),
                            t["health"].as_str().unwrap_or_default(),
                            t["lastError"].as_str().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                Ok(!targets.is_empty() && targets.iter().all(|t| t["health"] == "up"))
            },
        )
        .map_err(|e| e.with_log("Prometheus' targets", &last))
    }

    /// Polls `expr` until it returns at least one series, returning them.
    pub fn wait_for_data(&self, expr: &str, timeout: Duration) -> Result<Vec<Sample>, EnvError> {
        let mut found = Vec::new();
        wait_for(
            &format!("the Prometheus query {expr:?} to return data"),
            timeout,
            Duration::from_millis(250),
            || {
                found = self.query(expr).map_err(|e| e.to_string())?;
                Ok(!found.is_empty())
            },
        )?;
        Ok(found)
    }

    /// GETs `path` with `params` and returns the `data` of a `"status": "success"` answer.
    fn api(&self, what: &str, path: &str, params: &[(&str, &str)]) -> Result<Value, EnvError> {
        let failed = |detail: String| EnvError::Failed {
            what: what.to_owned(),
            detail,
        };
        let mut request = self.agent.get(format!("{}{path}", self.url()));
        for (k, v) in params {
            request = request.query(*k, *v);
        }
        let mut response = request.call().map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| failed(format!("reading the answer: {e}")))?;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|e| failed(format!("HTTP {status}, not JSON ({e}): {body}")))?;
        if answer["status"] != "success" {
            return Err(failed(format!(
                "HTTP {status}, {}: {}",
                answer["errorType"].as_str().unwrap_or("error"),
                answer["error"].as_str().unwrap_or(&body)
            )));
        }
        Ok(answer["data"].clone())
    }
}

/// Runs `promtool check rules` on `file`: its report on success, and on failure
/// [`EnvError::Failed`] with promtool's output (which names the rule and the problem).
pub fn check_rules(file: &Path) -> Result<String, EnvError> {
    let out = Command::new(locate("promtool")?)
        .args(["check", "rules"])
        .arg(file)
        .output()
        .map_err(|e| EnvError::io("running promtool", e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(EnvError::Failed {
            what: format!("promtool check rules {}", file.display()),
            detail: text,
        })
    }
}

/// The configuration: every target scraped each second, rules evaluated each second (tests
/// wait seconds, not minutes, for data and alerts).
fn config_text(targets: &[Target], rule_files: &[PathBuf]) -> String {
    let mut text = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
    );
    if !rule_files.is_empty() {
        text.push_str("rule_files:\n");
        for f in rule_files {
            let _ = writeln!(text, "  - {}", json_string(&f.to_string_lossy()));
        }
    }
    text.push_str("scrape_configs:\n");
    let mut jobs: BTreeMap<&str, Vec<&Target>> = BTreeMap::new();
    for t in targets {
        jobs.entry(t.job.as_str()).or_default().push(t);
    }
    for (job, targets) in jobs {
        let _ = writeln!(text, "  - job_name: {}", json_string(job));
        text.push_str("    static_configs:\n");
        for t in targets {
            // JSON strings are YAML flow scalars: no quoting rules of our own.
            let labels: Vec<String> = t
                .labels
                .iter()
                .map(|(k, v)| format!("{}: {}", json_string(k), json_string(v)))
                .collect();
            let _ = writeln!(
                text,
                "      - targets: [{}]\n        labels: {{{}}}",
                json_string(&t.address),
                labels.join(", ")
            );
        }
    }
    text
}

fn json_string(s: &str) -> String {
    Value::from(s).to_string()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// `name` (prometheus or promtool), built by `e2e/tools/build.sh prometheus` when not
/// cached yet (once per test process; build.sh serialises builds across processes).
fn locate(name: &str) -> Result<PathBuf, EnvError> {
    static BUILT: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .map_err(|_| EnvError::Poisoned)?;
    if let Some(bin) = &*built {
        return Ok(bin.join(name));
    }
    let id = tools::version("PROMETHEUS_TOOLS_ID").unwrap_or("unknown");
    let bin = tools::cache_dir().join("tools").join(id).join("bin");
    if !(bin.join("prometheus").is_file() && bin.join("promtool").is_file()) {
        build(&bin)?;
    }
    *built = Some(bin.clone());
    Ok(bin.join(name))
}

fn build(bin: &Path) -> Result<(), EnvError> {
    tools::build_set(
        "prometheus",
        "Prometheus and promtool of the dashboard and alert tests from their Go module",
        &["prometheus", "promtool"],
        bin,
        BUILD_TIMEOUT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_targets_of_two_jobs_when_configured_then_each_job_lists_its_targets_with_their_labels()
    {
        let text = config_text(
            &[
                Target::local("sidecars", 2, &[("namespace", "shop"), ("pod", "a")]),
                Target::local("operator", 1, &[("pod", "op")]),
                Target::local("sidecars", 3, &[("pod", "b")]),
            ],
            &[PathBuf::from("/r/a b.yaml")],
        );
        let config: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
        assert_eq!(config["rule_files"][0], "/r/a b.yaml");
        assert_eq!(config["scrape_configs"][0]["job_name"], "operator");
        let sidecars = &config["scrape_configs"][1];
        assert_eq!(sidecars["job_name"], "sidecars");
        assert_eq!(sidecars["static_configs"][0]["targets"][0], "127.0.0.1:2");
        assert_eq!(sidecars["static_configs"][0]["labels"]["namespace"], "shop");
        assert_eq!(sidecars["static_configs"][1]["labels"]["pod"], "b");
    }
}
