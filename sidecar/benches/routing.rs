//! The routing benchmark of `shared/bench/WORKLOAD.md`: the sidecar against rsyslog and
//! syslog-ng, side by side in one run.
//!
//! Generates the workload (seeded, deterministic: 2,000,000 JSON lines of about 200 bytes,
//! level debug 50 % / info 35 % / warn 10 % / error 5 %), then runs each contender on it,
//! interleaved (sidecar, syslog-ng, rsyslog, sidecar, …) so the machine's drift hits all
//! alike, each pinned to one core (`taskset -c`): debug dropped, warn and error to an
//! `alerts` file, info to an `info` file, each output line the input line unchanged.
//!
//! - the sidecar: the real `servicelog-sidecar` with `--config-file` and `--exit-on-eof`
//!   under `/usr/bin/time -v` (CPU and peak RSS from its report);
//! - syslog-ng (`file()` + `json-parser()` + filters → `file()`) and rsyslog (`imfile` +
//!   `mmjsonparse` + a ruleset → `omfile`), from the configs in `bench/*.conf.in`, run in
//!   the foreground; done when both outputs hold exactly the expected bytes, then CPU
//!   (utime + stime) and peak RSS (VmHWM) are read from `/proc/<pid>` before they are
//!   stopped.
//!
//! - `servicelog-sidecar-http`: the same sidecar and rules, but the two sinks are `http`
//!   sinks (`encoding: json_lines`, default batching but a 200 ms `batch.timeout` so the
//!   last batch does not idle a second before the exit) POSTing to a receiver in this
//!   process on 127.0.0.1 (hyper, not pinned, on the other core), which counts the lines
//!   and bytes per path. Every line must arrive once, as the input line with
//!   `_servicelog` spliced in (bytes = input bytes + that member per line). Reported as
//!   `file_to_http`: its lines per CPU-second ÷ the file → file sidecar's, same run
//!   (issue #7's target: ≥ 0.7).
//!
//! - `servicelog-sidecar-kafka`: the same sidecar and rules, the two sinks `kafka` sinks
//!   (defaults: no compression, 512 KiB batches, 100 ms) to a real broker
//!   (`servicelog-e2e`'s [`Kafka`], KRaft, one node, on the other core), a fresh
//!   one-partition topic per sink and run. Every line must be a record once, its value the
//!   input line (record counts and value bytes read back). Reported as `file_to_kafka`:
//!   its lines per CPU-second ÷ the file → file sidecar's, same run (issue #21's target:
//!   ≥ 0.6). The broker's own CPU is not counted, as the http receiver's is not.
//!
//! Every run's outputs are counted line by line and must equal the input's counts per
//! level. A sidecar run that does not fails the benchmark; a contender's is reported as a
//! failed run (its median is over its good runs). Prints one JSON document on stdout
//! (progress on stderr): per contender its runs and medians, and the sidecar's ratios to
//! each contender.
//!
//! `cargo bench -p servicelog-sidecar --bench routing` runs it in full. Environment:
//! `BENCH_LINES`, `BENCH_RUNS` (3), `BENCH_DIR` (`target/bench/sidecar`), `BENCH_CPU` (the
//! core to pin to; default the last one; `none` to not pin), `BENCH_CONTENDERS`
//! (comma-separated subset of
//! `servicelog-sidecar,servicelog-sidecar-http,servicelog-sidecar-kafka,syslog-ng,rsyslog`,
//! plus `servicelog-sidecar-disk` and `servicelog-sidecar-disk-sync`, the file sinks behind
//! disk buffers without and with `sync: batch`, not run by default), `BENCH_SYSLOG_NG`
//! (the binary; default `syslog-ng` on PATH), `BENCH_RSYSLOG_DIR` (a root holding
//! `usr/sbin/rsyslogd` and `usr/lib/*/rsyslog/`: `scripts/bench.sh` unpacks Debian's
//! package into `~/.cache/servicelog/contenders/rsyslog`, as it conflicts with syslog-ng;
//! default that, else `/`). A contender that is not installed is reported unavailable.
//! Under `cargo test` it is a smoke test: 20,000 lines, one run of each, the same checks.

#[path = "support/mod.rs"]
mod support;

use std::{
    fs,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{Rng, clock_ticks, count_lines, env_num, time_field};

const BIN: &str = env!("CARGO_BIN_EXE_servicelog-sidecar");
const SEED: u64 = 0x005e_411c_e106;

/// A contender that stops making progress for this long has failed its run.
const STALL: Duration = Duration::from_secs(30);
/// Upper bound on one contender run.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
const POLL: Duration = Duration::from_millis(20);

const SIDECAR: &str = "servicelog-sidecar";
const SIDECAR_HTTP: &str = "servicelog-sidecar-http";
const SIDECAR_KAFKA: &str = "servicelog-sidecar-kafka";
/// File sinks behind disk buffers, without and with `sync: batch`.
const SIDECAR_DISK: &str = "servicelog-sidecar-disk";
const SIDECAR_DISK_SYNC: &str = "servicelog-sidecar-disk-sync";
const SYSLOG_NG: &str = "syslog-ng";
const RSYSLOG: &str = "rsyslog";

/// Issue #6's targets.
const TARGET_RATIO_SYSLOG_NG: f64 = 5.0;
const TARGET_IDLE_RSS_MIB: f64 = 8.0;
const TARGET_LOAD_RSS_MIB: f64 = 32.0;
/// Issue #7's target: file → http within 70 % of file → file, per CPU-second.
const TARGET_HTTP_VS_FILE: f64 = 0.7;
/// Issue #21's target: file → Kafka within 60 % of file → file, per CPU-second.
const TARGET_KAFKA_VS_FILE: f64 = 0.6;

const MESSAGES: [&str; 20] = [
    "request served",
    "cache miss",
    "cache hit",
    "user logged in",
    "user logged out",
    "payment authorized",
    "payment declined",
    "item added to cart",
    "item removed from cart",
    "checkout started",
    "checkout completed",
    "inventory reserved",
    "inventory released",
    "session refreshed",
    "rate limit near",
    "upstream slow",
    "retrying request",
    "connection reset",
    "config reloaded",
    "health check ok",
];
const PATHS: [&str; 10] = [
    "/api/v1/cart",
    "/api/v1/cart/items",
    "/api/v1/checkout",
    "/api/v1/payment",
    "/api/v1/user",
    "/api/v1/session",
    "/api/v1/inventory",
    "/api/v1/search",
    "/healthz",
    "/metrics",
];
const LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];

/// The generated input and what each output must hold.
struct Workload {
    input: PathBuf,
    lines: u64,
    bytes: u64,
    /// Lines per level, in `LEVELS` order.
    counts: [u64; 4],
    /// Bytes per level, newlines included.
    level_bytes: [u64; 4],
}

impl Workload {
    /// Lines of (alerts, info).
    fn expected_lines(&self) -> (u64, u64) {
        (self.counts[2] + self.counts[3], self.counts[1])
    }

    /// Bytes of (alerts, info).
    fn expected_bytes(&self) -> (u64, u64) {
        (
            self.level_bytes[2] + self.level_bytes[3],
            self.level_bytes[1],
        )
    }
}

fn generate(path: &Path, lines: u64) -> Workload {
    let mut rng = Rng(SEED);
    let mut counts = [0u64; 4];
    let mut level_bytes = [0u64; 4];
    let mut out = BufWriter::with_capacity(
        1 << 20,
        fs::File::create(path).expect("creating the workload file"),
    );
    let mut bytes = 0u64;
    let mut line = String::with_capacity(256);
    for i in 0..lines {
        let roll = rng.below(100);
        let level = match roll {
            0..50 => 0,
            50..85 => 1,
            85..95 => 2,
            _ => 3,
        };
        let status = match rng.below(100) {
            0..90 => 200,
            90..93 => 201,
            93..95 => 400,
            95..97 => 404,
            97..99 => 500,
            _ => 503,
        };
        let micros = i * 137;
        line.clear();
        use std::fmt::Write as _;
        let _ = write!(
            line,
            r#"{{"ts":"2026-11-24T{:02}:{:02}:{:02}.{:06}Z","level":"{}","service":"checkout","msg":"{}","user_id":{},"latency_ms":{},"path":"{}","status":{},"trace_id":"{:016x}"}}"#,
            10 + (micros / 3_600_000_000) % 14,
            (micros / 60_000_000) % 60,
            (micros / 1_000_000) % 60,
            micros % 1_000_000,
            LEVELS[level],
            MESSAGES[rng.below(MESSAGES.len() as u64) as usize],
            rng.below(100_000),
            rng.below(2_000),
            PATHS[rng.below(PATHS.len() as u64) as usize],
            status,
            rng.next(),
        );
        line.push('\n');
        counts[level] += 1;
        level_bytes[level] += line.len() as u64;
        bytes += line.len() as u64;
        out.write_all(line.as_bytes())
            .expect("writing the workload");
    }
    out.flush().expect("writing the workload");
    Workload {
        input: path.to_owned(),
        lines,
        bytes,
        counts,
        level_bytes,
    }
}

fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last `n` lines of a log file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The core every contender is pinned to, if any.
#[derive(Clone, Copy)]
struct Pin(Option<usize>);

impl Pin {
    fn from_env() -> Self {
        Self(support::pin().map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("BENCH_CPU must be a core number or `none`, not {v:?}"))
        }))
    }

    fn command(self, program: &Path) -> Command {
        match self.0 {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

#[derive(Clone, Debug)]
enum Kind {
    /// The sidecar with file sinks; `buffer` is their `buffer:` (empty: the default).
    Sidecar {
        buffer: &'static str,
    },
    SidecarHttp,
    SidecarKafka,
    SyslogNg {
        bin: PathBuf,
    },
    Rsyslog {
        bin: PathBuf,
        moddir: PathBuf,
    },
}

#[derive(Clone, Debug)]
struct Contender {
    name: &'static str,
    kind: Kind,
    version: String,
}

fn first_line(mut cmd: Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn find_syslog_ng() -> Result<Contender, String> {
    let bin = match std::env::var_os("BENCH_SYSLOG_NG") {
        Some(b) => PathBuf::from(b),
        None => on_path("syslog-ng")
            .ok_or("syslog-ng is not installed (apt-get install syslog-ng-core)")?,
    };
    let mut cmd = Command::new(&bin);
    cmd.arg("--version");
    let version = first_line(cmd).ok_or_else(|| format!("{} does not run", bin.display()))?;
    Ok(Contender {
        name: SYSLOG_NG,
        kind: Kind::SyslogNg { bin },
        version,
    })
}

fn find_rsyslog() -> Result<Contender, String> {
    let cache = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/servicelog/contenders/rsyslog"));
    let root = std::env::var_os("BENCH_RSYSLOG_DIR")
        .map(PathBuf::from)
        .or_else(|| cache.filter(|c| c.join("usr/sbin/rsyslogd").is_file()))
        .unwrap_or_else(|| PathBuf::from("/"));
    let bin = root.join("usr/sbin/rsyslogd");
    if !bin.is_file() {
        return Err(format!(
            "{} not found (scripts/bench.sh unpacks Debian's rsyslog into ~/.cache/servicelog/contenders/rsyslog)",
            bin.display()
        ));
    }
    let moddir = fs::read_dir(root.join("usr/lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("rsyslog"))
        .find(|d| d.join("imfile.so").is_file() && d.join("mmjsonparse.so").is_file())
        .ok_or_else(|| {
            format!(
                "no rsyslog module dir with imfile.so and mmjsonparse.so under {}/usr/lib",
                root.display()
            )
        })?;
    let mut cmd = Command::new(&bin);
    cmd.arg("-v");
    let version = first_line(cmd)
        .ok_or_else(|| format!("{} does not run", bin.display()))?
        .trim_end_matches("compiled with:")
        .trim()
        .to_owned();
    Ok(Contender {
        name: RSYSLOG,
        kind: Kind::Rsyslog { bin, moddir },
        version,
    })
}

/// One run of one contender.
#[derive(Debug, Clone, Default)]
struct Run {
    wall_s: f64,
    user_s: f64,
    sys_s: f64,
    max_rss_kib: u64,
    alerts: u64,
    info: u64,
    /// Why the run does not count, if it does not.
    error: Option<String>,
}

impl Run {
    fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }

    fn to_json(&self, w: &Workload) -> Value {
        json!({
            "ok": self.error.is_none(),
            "error": self.error,
            "wall_s": self.wall_s, "user_s": self.user_s, "sys_s": self.sys_s,
            "cpu_s": self.cpu_s(), "max_rss_kib": self.max_rss_kib,
            "lines_per_s": w.lines as f64 / self.wall_s,
            "lines_per_cpu_s": w.lines as f64 / self.cpu_s(),
            "outputs": {"alerts": self.alerts, "info": self.info},
        })
    }
}

/// Empties `<dir>/<name>` and returns it with its `out` and `work` subdirectories made.
fn fresh_dir(dir: &Path, name: &str) -> PathBuf {
    let run = dir.join("runs").join(name);
    let _ = fs::remove_dir_all(&run);
    fs::create_dir_all(run.join("out")).expect("creating the output dir");
    fs::create_dir_all(run.join("work")).expect("creating the work dir");
    run
}

/// Lines and bytes of each output must be the input's, level by level.
fn check_outputs(run: &mut Run, w: &Workload, out: &Path) {
    let want = w.expected_lines();
    let bytes = (
        file_size(&out.join("alerts.log")),
        file_size(&out.join("info.log")),
    );
    if run.error.is_some() {
        return;
    }
    run.error = if (run.alerts, run.info) != want {
        Some(format!(
            "output line counts (alerts, info) = ({}, {}), expected (warn+error, info) = {want:?}",
            run.alerts, run.info
        ))
    } else if bytes != w.expected_bytes() {
        Some(format!(
            "output sizes (alerts, info) = {bytes:?} bytes, expected {:?}: lines were changed",
            w.expected_bytes()
        ))
    } else {
        None
    };
}

fn run_sidecar(dir: &Path, name: &str, buffer: &str, w: &Workload, pin: Pin) -> Run {
    let run_dir = fresh_dir(dir, name);
    let out = run_dir.join("out");
    let config = run_dir.join("servicelog.yaml");
    fs::write(&config, config_yaml(&w.input, &out, buffer)).expect("writing the sidecar's config");
    let report = run_dir.join("time.txt");
    let start = Instant::now();
    let status = pin
        .command(Path::new("/usr/bin/time"))
        .arg("-v")
        .arg("-o")
        .arg(&report)
        .arg(BIN)
        .arg("--config-file")
        .arg(&config)
        .arg("--state-dir")
        .arg(run_dir.join("work"))
        .args(["--metrics-addr", "127.0.0.1:0", "--exit-on-eof"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("running the sidecar under /usr/bin/time (apt-get install time)");
    let wall_s = start.elapsed().as_secs_f64();
    let report = fs::read_to_string(&report).expect("reading /usr/bin/time's report");
    let mut run = Run {
        wall_s,
        user_s: time_field(&report, "User time (seconds):").unwrap_or(f64::NAN),
        sys_s: time_field(&report, "System time (seconds):").unwrap_or(f64::NAN),
        max_rss_kib: time_field(&report, "Maximum resident set size (kbytes):").unwrap_or(0.0)
            as u64,
        alerts: count_lines(&out.join("alerts.log")),
        info: count_lines(&out.join("info.log")),
        error: (!status.success()).then(|| format!("the sidecar failed: {status}")),
    };
    check_outputs(&mut run, w, &out);
    run
}

/// The pod and namespace the http runs claim, in each line's `_servicelog`.
const POD: &str = "bench-0";
const NAMESPACE: &str = "bench";

/// The sidecar with its two sinks as http json_lines sinks to `rx`.
fn run_sidecar_http(dir: &Path, w: &Workload, pin: Pin, rx: &receiver::Receiver) -> Run {
    let run_dir = fresh_dir(dir, SIDECAR_HTTP);
    let config = run_dir.join("servicelog.yaml");
    let base = format!("http://127.0.0.1:{}", rx.port);
    let yaml = config_yaml(&w.input, Path::new("/unused"), "")
        .replace(
            "file: {path: \"/unused/alerts.log\"}",
            &format!("http: {{url: \"{base}/alerts\", batch: {{timeout: 200ms}}}}"),
        )
        .replace(
            "file: {path: \"/unused/info.log\"}",
            &format!("http: {{url: \"{base}/info\", batch: {{timeout: 200ms}}}}"),
        );
    assert!(
        yaml.contains("/alerts\"") && yaml.contains("/info\""),
        "{yaml}"
    );
    fs::write(&config, yaml).expect("writing the sidecar's config");
    rx.reset();
    let report = run_dir.join("time.txt");
    let start = Instant::now();
    let status = pin
        .command(Path::new("/usr/bin/time"))
        .arg("-v")
        .arg("-o")
        .arg(&report)
        .arg(BIN)
        .arg("--config-file")
        .arg(&config)
        .arg("--state-dir")
        .arg(run_dir.join("work"))
        .args(["--pod-name", POD, "--pod-namespace", NAMESPACE])
        .args(["--metrics-addr", "127.0.0.1:0", "--exit-on-eof"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("running the sidecar under /usr/bin/time (apt-get install time)");
    let wall_s = start.elapsed().as_secs_f64();
    let report = fs::read_to_string(&report).expect("reading /usr/bin/time's report");
    let got = rx.counts();
    let mut run = Run {
        wall_s,
        user_s: time_field(&report, "User time (seconds):").unwrap_or(f64::NAN),
        sys_s: time_field(&report, "System time (seconds):").unwrap_or(f64::NAN),
        max_rss_kib: time_field(&report, "Maximum resident set size (kbytes):").unwrap_or(0.0)
            as u64,
        alerts: got.alerts.0,
        info: got.info.0,
        error: (!status.success()).then(|| format!("the sidecar failed: {status}")),
    };
    // Each line arrives as itself with `,"_servicelog":{…}` spliced before its last `}`.
    let meta = format!(
        ",\"_servicelog\":{{\"source\":\"app\",\"pod\":\"{POD}\",\"namespace\":\"{NAMESPACE}\"}}"
    )
    .len() as u64;
    let (want_lines, want_bytes) = (w.expected_lines(), w.expected_bytes());
    let want_bytes = (
        want_bytes.0 + want_lines.0 * meta,
        want_bytes.1 + want_lines.1 * meta,
    );
    if run.error.is_none() {
        run.error = if (got.alerts.0, got.info.0) != want_lines {
            Some(format!(
                "lines received (alerts, info) = ({}, {}), expected {want_lines:?}",
                got.alerts.0, got.info.0
            ))
        } else if (got.alerts.1, got.info.1) != want_bytes {
            Some(format!(
                "bytes received (alerts, info) = ({}, {}), expected {want_bytes:?}",
                got.alerts.1, got.info.1
            ))
        } else if got.bad > 0 {
            Some(format!(
                "{} requests were not what a json_lines sink sends",
                got.bad
            ))
        } else {
            None
        };
    }
    run
}

/// The sidecar with its two sinks as kafka sinks to `broker`, each to a topic of its own.
fn run_sidecar_kafka(dir: &Path, w: &Workload, pin: Pin, broker: &kafka::Broker) -> Run {
    let run_dir = fresh_dir(dir, SIDECAR_KAFKA);
    let config = run_dir.join("servicelog.yaml");
    let (alerts, info) = broker.topics();
    let bootstrap = broker.bootstrap();
    let yaml = config_yaml(&w.input, Path::new("/unused"), "")
        .replace(
            "file: {path: \"/unused/alerts.log\"}",
            &format!("kafka: {{brokers: [\"{bootstrap}\"], topic: {alerts}}}"),
        )
        .replace(
            "file: {path: \"/unused/info.log\"}",
            &format!("kafka: {{brokers: [\"{bootstrap}\"], topic: {info}}}"),
        );
    assert!(yaml.contains(&alerts) && yaml.contains(&info), "{yaml}");
    fs::write(&config, yaml).expect("writing the sidecar's config");
    let report = run_dir.join("time.txt");
    let start = Instant::now();
    let status = pin
        .command(Path::new("/usr/bin/time"))
        .arg("-v")
        .arg("-o")
        .arg(&report)
        .arg(BIN)
        .arg("--config-file")
        .arg(&config)
        .arg("--state-dir")
        .arg(run_dir.join("work"))
        .args(["--pod-name", POD, "--pod-namespace", NAMESPACE])
        .args(["--metrics-addr", "127.0.0.1:0", "--exit-on-eof"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("running the sidecar under /usr/bin/time (apt-get install time)");
    let wall_s = start.elapsed().as_secs_f64();
    let report = fs::read_to_string(&report).expect("reading /usr/bin/time's report");
    let (got_alerts, got_info) = (broker.read(&alerts), broker.read(&info));
    let mut run = Run {
        wall_s,
        user_s: time_field(&report, "User time (seconds):").unwrap_or(f64::NAN),
        sys_s: time_field(&report, "System time (seconds):").unwrap_or(f64::NAN),
        max_rss_kib: time_field(&report, "Maximum resident set size (kbytes):").unwrap_or(0.0)
            as u64,
        alerts: got_alerts.0,
        info: got_info.0,
        error: (!status.success()).then(|| format!("the sidecar failed: {status}")),
    };
    // Each record's value is an input line without its newline.
    let (want_lines, want_bytes) = (w.expected_lines(), w.expected_bytes());
    let want_bytes = (want_bytes.0 - want_lines.0, want_bytes.1 - want_lines.1);
    if run.error.is_none() {
        run.error = if (got_alerts.0, got_info.0) != want_lines {
            Some(format!(
                "records (alerts, info) = ({}, {}), expected {want_lines:?}",
                got_alerts.0, got_info.0
            ))
        } else if (got_alerts.1, got_info.1) != want_bytes {
            Some(format!(
                "value bytes (alerts, info) = ({}, {}), expected {want_bytes:?}",
                got_alerts.1, got_info.1
            ))
        } else {
            None
        };
    }
    run
}

/// The broker of the kafka runs, and a client to create and read its topics.
mod kafka {
    use std::{
        cell::Cell,
        path::Path,
        process::Child,
        time::{Duration, Instant},
    };

    use rskafka::client::{
        Client, ClientBuilder,
        partition::{OffsetAt, UnknownTopicHandling},
    };
    use servicelog_e2e::{kafka::Kafka, procs::EnvDir};

    const WAIT: Duration = Duration::from_secs(120);

    pub struct Broker {
        kafka: Kafka,
        client: Client,
        rt: tokio::runtime::Runtime,
        run: Cell<u32>,
        _watchdog: Child,
        _env: EnvDir,
    }

    impl Broker {
        /// Starts a broker in `dir`; the reason if it cannot.
        pub fn start(dir: &Path) -> Result<Self, String> {
            let env = EnvDir::create(dir.to_owned()).map_err(|e| e.to_string())?;
            let watchdog = env.spawn_watchdog().map_err(|e| e.to_string())?;
            let kafka = Kafka::start(&env, "kafka").map_err(|e| e.to_string())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let client = rt
                .block_on(ClientBuilder::new(vec![kafka.bootstrap()]).build())
                .map_err(|e| format!("connecting to the broker: {e}"))?;
            Ok(Self {
                kafka,
                client,
                rt,
                run: Cell::new(0),
                _watchdog: watchdog,
                _env: env,
            })
        }

        pub fn bootstrap(&self) -> String {
            self.kafka.bootstrap()
        }

        /// Two new one-partition topics, (alerts, info).
        pub fn topics(&self) -> (String, String) {
            let n = self.run.get() + 1;
            self.run.set(n);
            let names = (format!("alerts-{n}"), format!("info-{n}"));
            let controller = self
                .client
                .controller_client()
                .expect("a controller client");
            for topic in [&names.0, &names.1] {
                self.rt
                    .block_on(controller.create_topic(topic.as_str(), 1, 1, 10_000))
                    .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));
            }
            names
        }

        /// The records of `topic` and the sum of their values' lengths.
        pub fn read(&self, topic: &str) -> (u64, u64) {
            self.rt.block_on(async {
                let pc = self
                    .client
                    .partition_client(topic, 0, UnknownTopicHandling::Retry)
                    .await
                    .unwrap_or_else(|e| panic!("a client for {topic}: {e}"));
                let end = pc
                    .get_offset(OffsetAt::Latest)
                    .await
                    .unwrap_or_else(|e| panic!("the end offset of {topic}: {e}"));
                let (mut records, mut bytes, mut offset) = (0u64, 0u64, 0i64);
                let deadline = Instant::now() + WAIT;
                while offset < end {
                    assert!(
                        Instant::now() < deadline,
                        "reading {topic} up to {end} took over {WAIT:?}"
                    );
                    let (batch, _) = pc
                        .fetch_records(offset, 1..8_000_000, 500)
                        .await
                        .unwrap_or_else(|e| panic!("fetching {topic} at {offset}: {e}"));
                    for r in batch {
                        records += 1;
                        bytes += r.record.value.map_or(0, |v| v.len() as u64);
                        offset = r.offset + 1;
                    }
                }
                (records, bytes)
            })
        }
    }
}

/// The receiver of the http runs: HTTP/1.1 on 127.0.0.1, counting lines and bytes per
/// path (`/alerts`, `/info`), answering 204.
mod receiver {
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex},
    };

    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;

    #[derive(Debug, Default, Clone, Copy)]
    pub struct Counts {
        /// (lines, bytes)
        pub alerts: (u64, u64),
        pub info: (u64, u64),
        /// Requests with the wrong content type or a body not ending in a newline.
        pub bad: u64,
    }

    pub struct Receiver {
        pub port: u16,
        counts: Arc<Mutex<Counts>>,
        _thread: std::thread::JoinHandle<()>,
    }

    impl Receiver {
        pub fn start() -> Self {
            let listener =
                std::net::TcpListener::bind("127.0.0.1:0").expect("binding the receiver");
            listener
                .set_nonblocking(true)
                .expect("a nonblocking listener");
            let port = listener
                .local_addr()
                .expect("the receiver's address")
                .port();
            let counts = Arc::new(Mutex::new(Counts::default()));
            let c = counts.clone();
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the receiver");
                rt.block_on(serve(listener, c));
            });
            Self {
                port,
                counts,
                _thread: thread,
            }
        }

        pub fn reset(&self) {
            *self.counts.lock().expect("the receiver's counts") = Counts::default();
        }

        pub fn counts(&self) -> Counts {
            *self.counts.lock().expect("the receiver's counts")
        }
    }

    async fn serve(listener: std::net::TcpListener, counts: Arc<Mutex<Counts>>) {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counts = counts.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| receive(req, counts.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn receive(
        req: Request<hyper::body::Incoming>,
        counts: Arc<Mutex<Counts>>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        let json_lines = req
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/x-ndjson");
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let lines = memchr::memchr_iter(b'\n', &body).count() as u64;
        let mut c = counts.lock().expect("the receiver's counts");
        if !json_lines || body.last() != Some(&b'\n') {
            c.bad += 1;
        }
        let slot = if path == "/alerts" {
            &mut c.alerts
        } else {
            &mut c.info
        };
        slot.0 += lines;
        slot.1 += body.len() as u64;
        drop(c);
        Ok(Response::builder()
            .status(204)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default())
    }
}

/// A contender daemon, stopped (TERM, then KILL) on drop.
struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of a live process (all its threads), in seconds.
fn proc_cpu(pid: u32, ticks_per_s: f64) -> Option<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / ticks_per_s, stime / ticks_per_s))
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

fn render(template: &str, vars: &[(&str, &Path)]) -> String {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../bench")
            .join(template),
    )
    .unwrap_or_else(|e| panic!("reading bench/{template}: {e}"));
    vars.iter().fold(text, |t, (k, v)| {
        t.replace(&format!("@{k}@"), &v.display().to_string())
    })
}

/// Runs a daemon contender until both outputs hold exactly the expected bytes.
fn run_daemon(c: &Contender, dir: &Path, w: &Workload, pin: Pin, ticks: f64) -> Run {
    let run_dir = fresh_dir(dir, c.name);
    let (out, work) = (run_dir.join("out"), run_dir.join("work"));
    let vars = [
        ("INPUT", w.input.as_path()),
        ("OUT", out.as_path()),
        ("WORK", work.as_path()),
    ];
    let log = run_dir.join("daemon.log");
    let conf = run_dir.join("daemon.conf");
    let mut cmd = match &c.kind {
        Kind::SyslogNg { bin } => {
            fs::write(&conf, render("syslog-ng.conf.in", &vars)).expect("writing the config");
            let mut cmd = pin.command(bin);
            cmd.args(["-F", "--no-caps", "-f"])
                .arg(&conf)
                .arg("-R")
                .arg(work.join("syslog-ng.persist"))
                .arg("-p")
                .arg(work.join("syslog-ng.pid"))
                .arg("-c")
                .arg(work.join("syslog-ng.ctl"));
            cmd
        }
        Kind::Rsyslog { bin, moddir } => {
            fs::write(&conf, render("rsyslog.conf.in", &vars)).expect("writing the config");
            let mut cmd = pin.command(bin);
            cmd.arg("-n")
                .arg("-M")
                .arg(moddir)
                .arg("-f")
                .arg(&conf)
                .arg("-i")
                .arg(work.join("rsyslogd.pid"));
            cmd
        }
        Kind::Sidecar { .. } | Kind::SidecarHttp | Kind::SidecarKafka => {
            unreachable!("the sidecar is not run as a daemon")
        }
    };
    let log_file = fs::File::create(&log).expect("creating the daemon's log");
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("cloning the log's handle"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", c.name));
    let mut daemon = Daemon { child };
    let pid = daemon.child.id();
    let (alerts, info) = (out.join("alerts.log"), out.join("info.log"));
    let want = w.expected_bytes();
    let mut last = (u64::MAX, u64::MAX);
    let mut last_change = Instant::now();
    let error = loop {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            break Some(format!(
                "{} exited early ({status}); its log:\n{}",
                c.name,
                tail(&log, 20)
            ));
        }
        let sizes = (file_size(&alerts), file_size(&info));
        if sizes == want {
            break None;
        }
        if sizes.0 > want.0 || sizes.1 > want.1 {
            break Some(format!(
                "{} wrote more than expected: (alerts, info) bytes = {sizes:?}, expected {want:?}",
                c.name
            ));
        }
        if sizes != last {
            last = sizes;
            last_change = Instant::now();
        } else if last_change.elapsed() > STALL {
            break Some(format!(
                "timed out waiting for {} to write {want:?} bytes to (alerts, info): stuck at {sizes:?} for {STALL:?}; its log:\n{}",
                c.name,
                tail(&log, 20)
            ));
        }
        if start.elapsed() > RUN_TIMEOUT {
            break Some(format!(
                "timed out after {RUN_TIMEOUT:?} waiting for {} to write {want:?} bytes to (alerts, info): at {sizes:?}",
                c.name
            ));
        }
        std::thread::sleep(POLL);
    };
    let wall_s = start.elapsed().as_secs_f64();
    let (user_s, sys_s) = proc_cpu(pid, ticks).unwrap_or((f64::NAN, f64::NAN));
    let max_rss_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    drop(daemon);
    let mut run = Run {
        wall_s,
        user_s,
        sys_s,
        max_rss_kib,
        alerts: count_lines(&alerts),
        info: count_lines(&info),
        error,
    };
    check_outputs(&mut run, w, &out);
    run
}

/// RSS of a sidecar that has applied its config and has nothing to read.
fn idle_rss_kib(dir: &Path) -> Option<u64> {
    let idle = dir.join("idle");
    let _ = fs::remove_dir_all(&idle);
    fs::create_dir_all(idle.join("logs")).ok()?;
    let config = idle.join("servicelog.yaml");
    fs::write(
        &config,
        config_yaml(&idle.join("logs/*.log"), &idle.join("out"), ""),
    )
    .ok()?;
    let mut child = Command::new(BIN)
        .arg("--config-file")
        .arg(&config)
        .arg("--state-dir")
        .arg(idle.join("state"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_secs(2));
    let rss = proc_status_kib(child.id(), "VmRSS:");
    let _ = child.kill();
    let _ = child.wait();
    rss
}

fn config_yaml(input: &Path, out: &Path, buffer: &str) -> String {
    let buffer = if buffer.is_empty() {
        String::new()
    } else {
        format!("\n      buffer: {buffer}")
    };
    format!(
        "apiVersion: servicelog.io/v1alpha1\nkind: ServiceLog\nmetadata: {{name: bench}}\nspec:\n\
         \x20 sources:\n    - name: app\n      file: {{paths: [\"{input}\"], format: json}}\n\
         \x20 sinks:\n    - name: alerts\n      file: {{path: \"{out}/alerts.log\"}}{buffer}\n\
         \x20   - name: info\n      file: {{path: \"{out}/info.log\"}}{buffer}\n\
         \x20 rules:\n    - name: drop-debug\n      when: {{level: {{below: info}}}}\n      action: drop\n\
         \x20   - name: alerts\n      when: {{level: {{atLeast: warn}}}}\n      to: [alerts]\n\
         \x20   - name: info\n      when: {{level: {{in: [info]}}}}\n      to: [info]\n",
        input = input.display(),
        out = out.display(),
    )
}

/// Medians over the good runs, or `None` if there is none.
fn medians(runs: &[Run], w: &Workload) -> Option<Value> {
    let good: Vec<&Run> = runs.iter().filter(|r| r.error.is_none()).collect();
    if good.is_empty() {
        return None;
    }
    let m = |f: &dyn Fn(&Run) -> f64| {
        support::median(good.iter().map(|r| f(r)).collect()).unwrap_or(f64::NAN)
    };
    let (wall, cpu) = (m(&|r| r.wall_s), m(&Run::cpu_s));
    let rss = m(&|r| r.max_rss_kib as f64);
    Some(json!({
        "runs": good.len(),
        "wall_s": wall, "cpu_s": cpu, "user_s": m(&|r| r.user_s), "sys_s": m(&|r| r.sys_s),
        "max_rss_kib": rss, "max_rss_mib": rss / 1024.0,
        "lines_per_s": m(&|r| w.lines as f64 / r.wall_s),
        "mib_per_s": m(&|r| w.bytes as f64 / r.wall_s / (1024.0 * 1024.0)),
        "lines_per_cpu_s": m(&|r| w.lines as f64 / r.cpu_s()),
    }))
}

fn ratio(a: &Value, b: &Value, key: &str) -> Value {
    match (a[key].as_f64(), b[key].as_f64()) {
        (Some(x), Some(y)) if y > 0.0 => json!(x / y),
        _ => Value::Null,
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let lines = env_num("BENCH_LINES", if full { 2_000_000 } else { 20_000 });
    let runs = env_num("BENCH_RUNS", if full { 3 } else { 1 }).max(1);
    let wanted: Vec<String> = std::env::var("BENCH_CONTENDERS")
        .unwrap_or_else(|_| {
            format!("{SIDECAR},{SIDECAR_HTTP},{SIDECAR_KAFKA},{SYSLOG_NG},{RSYSLOG}")
        })
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/sidecar")
        });
    let dir = dir.join(if full { "full" } else { "smoke" });
    fs::create_dir_all(dir.join("input")).expect("creating the bench dir");
    let dir = dir.canonicalize().expect("resolving the bench dir");
    let pin = Pin::from_env();
    let ticks = clock_ticks();

    let mut contenders = Vec::new();
    let mut unavailable = serde_json::Map::new();
    let sidecar_version = {
        let mut cmd = Command::new(BIN);
        cmd.arg("--version");
        first_line(cmd).unwrap_or_default()
    };
    for name in &wanted {
        let found = match name.as_str() {
            SIDECAR => Ok(Contender {
                name: SIDECAR,
                kind: Kind::Sidecar { buffer: "" },
                version: sidecar_version.clone(),
            }),
            SIDECAR_DISK => Ok(Contender {
                name: SIDECAR_DISK,
                kind: Kind::Sidecar {
                    buffer: "{type: disk}",
                },
                version: sidecar_version.clone(),
            }),
            SIDECAR_DISK_SYNC => Ok(Contender {
                name: SIDECAR_DISK_SYNC,
                kind: Kind::Sidecar {
                    buffer: "{type: disk, sync: batch}",
                },
                version: sidecar_version.clone(),
            }),
            SIDECAR_HTTP => Ok(Contender {
                name: SIDECAR_HTTP,
                kind: Kind::SidecarHttp,
                version: sidecar_version.clone(),
            }),
            SIDECAR_KAFKA => Ok(Contender {
                name: SIDECAR_KAFKA,
                kind: Kind::SidecarKafka,
                version: sidecar_version.clone(),
            }),
            SYSLOG_NG => find_syslog_ng(),
            RSYSLOG => find_rsyslog(),
            other => panic!(
                "BENCH_CONTENDERS: unknown contender {other:?} (known: {SIDECAR}, {SIDECAR_HTTP}, {SIDECAR_KAFKA}, {SIDECAR_DISK}, {SIDECAR_DISK_SYNC}, {SYSLOG_NG}, {RSYSLOG})"
            ),
        };
        match found {
            Ok(c) => contenders.push(c),
            Err(why) => {
                eprintln!("bench: {name} is unavailable: {why}");
                unavailable.insert(
                    name.clone(),
                    json!({"status": "unavailable", "reason": why}),
                );
            }
        }
    }

    let input = dir.join("input/app.log");
    eprintln!("bench: generating {lines} lines into {}", input.display());
    let w = generate(&input, lines);
    eprintln!(
        "bench: {} bytes; expecting (alerts, info) = {:?} lines; pinned to core {:?}",
        w.bytes,
        w.expected_lines(),
        pin.0
    );

    let receiver = contenders
        .iter()
        .any(|c| matches!(c.kind, Kind::SidecarHttp))
        .then(receiver::Receiver::start);
    let broker = if contenders
        .iter()
        .any(|c| matches!(c.kind, Kind::SidecarKafka))
    {
        eprintln!("bench: starting a Kafka broker");
        match kafka::Broker::start(&dir.join("kafka")) {
            Ok(b) => Some(b),
            Err(why) => {
                eprintln!("bench: {SIDECAR_KAFKA} is unavailable: {why}");
                contenders.retain(|c| !matches!(c.kind, Kind::SidecarKafka));
                unavailable.insert(
                    SIDECAR_KAFKA.to_owned(),
                    json!({"status": "unavailable", "reason": why}),
                );
                None
            }
        }
    } else {
        None
    };
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); contenders.len()];
    for i in 0..runs {
        for (c, results) in contenders.iter().zip(results.iter_mut()) {
            let r = match c.kind {
                Kind::Sidecar { buffer } => run_sidecar(&dir, c.name, buffer, &w, pin),
                Kind::SidecarHttp => match &receiver {
                    Some(rx) => run_sidecar_http(&dir, &w, pin, rx),
                    None => unreachable!("the receiver starts when the http contender is wanted"),
                },
                Kind::SidecarKafka => match &broker {
                    Some(b) => run_sidecar_kafka(&dir, &w, pin, b),
                    None => unreachable!("kafka contenders are dropped when no broker starts"),
                },
                _ => run_daemon(c, &dir, &w, pin, ticks),
            };
            eprintln!(
                "bench: run {} {:<18} {:>7.2}s wall {:>7.2}s cpu {:>9.0} lines/cpu-s {:>7} KiB peak RSS  {}",
                i + 1,
                c.name,
                r.wall_s,
                r.cpu_s(),
                w.lines as f64 / r.cpu_s(),
                r.max_rss_kib,
                r.error.as_deref().unwrap_or("ok"),
            );
            if matches!(
                c.kind,
                Kind::Sidecar { .. } | Kind::SidecarHttp | Kind::SidecarKafka
            ) {
                assert!(r.error.is_none(), "the sidecar's run failed: {:?}", r.error);
            }
            results.push(r);
        }
    }
    let idle = if full && wanted.iter().any(|n| n == SIDECAR) {
        idle_rss_kib(&dir)
    } else {
        None
    };

    let mut by_name = serde_json::Map::new();
    let mut med = std::collections::BTreeMap::new();
    for (c, runs) in contenders.iter().zip(&results) {
        let m = medians(runs, &w);
        let failed = runs.iter().filter(|r| r.error.is_some()).count();
        if let Some(m) = &m {
            med.insert(c.name, m.clone());
        }
        by_name.insert(
            c.name.to_owned(),
            json!({
                "status": if failed == 0 { "ok" } else { "failed" },
                "failed_runs": failed,
                "version": c.version,
                "runs": runs.iter().map(|r| r.to_json(&w)).collect::<Vec<_>>(),
                "median": m,
            }),
        );
    }
    by_name.extend(unavailable);

    let mut ratios = serde_json::Map::new();
    if let Some(ours) = med.get(SIDECAR) {
        for (name, theirs) in med.iter().filter(|(n, _)| !n.starts_with(SIDECAR)) {
            ratios.insert(
                (*name).to_owned(),
                json!({
                    "lines_per_cpu_s": ratio(ours, theirs, "lines_per_cpu_s"),
                    "lines_per_s": ratio(ours, theirs, "lines_per_s"),
                    "max_rss": ratio(ours, theirs, "max_rss_kib"),
                }),
            );
        }
    }
    let file_to_http = match (med.get(SIDECAR_HTTP), med.get(SIDECAR)) {
        (Some(http), Some(file)) => json!({
            "lines_per_cpu_s": ratio(http, file, "lines_per_cpu_s"),
            "lines_per_s": ratio(http, file, "lines_per_s"),
            "max_rss": ratio(http, file, "max_rss_kib"),
        }),
        _ => Value::Null,
    };
    let http_ratio = file_to_http["lines_per_cpu_s"].as_f64();
    let file_to_kafka = match (med.get(SIDECAR_KAFKA), med.get(SIDECAR)) {
        (Some(kafka), Some(file)) => json!({
            "lines_per_cpu_s": ratio(kafka, file, "lines_per_cpu_s"),
            "lines_per_s": ratio(kafka, file, "lines_per_s"),
            "max_rss": ratio(kafka, file, "max_rss_kib"),
        }),
        _ => Value::Null,
    };
    let kafka_ratio = file_to_kafka["lines_per_cpu_s"].as_f64();
    // What `sync: batch` costs a disk-buffered sink: its figures ÷ `sync: none`'s.
    let disk_sync = match (med.get(SIDECAR_DISK_SYNC), med.get(SIDECAR_DISK)) {
        (Some(sync), Some(none)) => json!({
            "lines_per_cpu_s": ratio(sync, none, "lines_per_cpu_s"),
            "lines_per_s": ratio(sync, none, "lines_per_s"),
            "cpu_s": ratio(sync, none, "cpu_s"),
        }),
        _ => Value::Null,
    };
    let load_rss_mib = med.get(SIDECAR).and_then(|m| m["max_rss_mib"].as_f64());
    let ratio_ng = ratios
        .get(SYSLOG_NG)
        .and_then(|r| r["lines_per_cpu_s"].as_f64());
    let idle_mib = idle.map(|k| k as f64 / 1024.0);
    let doc = json!({
        "workload": {
            "lines": w.lines, "bytes": w.bytes, "seed": SEED,
            "levels": {"debug": w.counts[0], "info": w.counts[1], "warn": w.counts[2], "error": w.counts[3]},
        },
        "expected": {"alerts": w.expected_lines().0, "info": w.expected_lines().1},
        "pinned_cpu": pin.0,
        "runs_per_contender": runs,
        "contenders": by_name,
        "ratios": ratios,
        "file_to_http": file_to_http,
        "file_to_kafka": file_to_kafka,
        "disk_sync_vs_none": disk_sync,
        "idle_rss_kib": idle,
        "targets": {
            "lines_per_cpu_s_vs_syslog_ng": {"target": TARGET_RATIO_SYSLOG_NG, "measured": ratio_ng,
                "met": ratio_ng.map(|r| r >= TARGET_RATIO_SYSLOG_NG)},
            "idle_rss_mib": {"target": TARGET_IDLE_RSS_MIB, "measured": idle_mib,
                "met": idle_mib.map(|m| m < TARGET_IDLE_RSS_MIB)},
            "load_rss_mib": {"target": TARGET_LOAD_RSS_MIB, "measured": load_rss_mib,
                "met": load_rss_mib.map(|m| m < TARGET_LOAD_RSS_MIB)},
            "http_vs_file_lines_per_cpu_s": {"target": TARGET_HTTP_VS_FILE, "measured": http_ratio,
                "met": http_ratio.map(|r| r >= TARGET_HTTP_VS_FILE)},
            "kafka_vs_file_lines_per_cpu_s": {"target": TARGET_KAFKA_VS_FILE, "measured": kafka_ratio,
                "met": kafka_ratio.map(|r| r >= TARGET_KAFKA_VS_FILE)},
        },
    });
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
}
