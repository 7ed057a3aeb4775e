//! The routing benchmark of `shared/bench/WORKLOAD.md`, for the sidecar.
//!
//! Generates the workload (seeded, deterministic: 2,000,000 JSON lines of about 200 bytes,
//! level debug 50 % / info 35 % / warn 10 % / error 5 %), then runs the real
//! `servicelog-sidecar` binary with `--config-file` and `--exit-on-eof` under
//! `/usr/bin/time -v`: debug dropped, warn and error to the `alerts` file, info to the
//! `info` file, raw encoding. Each run must write exactly the input's lines of each level,
//! or the benchmark fails. Prints one JSON document on stdout (progress on stderr).
//!
//! `cargo bench -p servicelog-sidecar --bench routing` runs it in full (`BENCH_LINES`,
//! `BENCH_RUNS` and `BENCH_DIR` override the size, the run count (3) and the work
//! directory, `target/bench`). Under `cargo test` it is a smoke test: 20,000 lines, one
//! run, the same checks.

use std::{
    fs,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_servicelog-sidecar");
const SEED: u64 = 0x005e_411c_e106;

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

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Lines per level, in `LEVELS` order.
type Counts = [u64; 4];

fn generate(path: &Path, lines: u64) -> (Counts, u64) {
    let mut rng = Rng(SEED);
    let mut counts = [0u64; 4];
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
        counts[level] += 1;
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
        bytes += line.len() as u64;
        out.write_all(line.as_bytes())
            .expect("writing the workload");
    }
    out.flush().expect("writing the workload");
    (counts, bytes)
}

fn count_lines(path: &Path) -> u64 {
    fs::read(path)
        .map(|b| memchr::memchr_iter(b'\n', &b).count() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, Default)]
struct Run {
    wall_s: f64,
    user_s: f64,
    sys_s: f64,
    max_rss_kib: u64,
    alerts: u64,
    info: u64,
}

fn time_field(report: &str, name: &str) -> Option<f64> {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(name)?.trim().parse().ok())
}

fn run_once(dir: &Path, config: &Path) -> Run {
    let out = dir.join("out");
    let state = dir.join("state");
    let _ = fs::remove_dir_all(&out);
    let _ = fs::remove_dir_all(&state);
    fs::create_dir_all(&out).expect("creating the output dir");
    let report = dir.join("time.txt");
    let start = Instant::now();
    let status = Command::new("/usr/bin/time")
        .arg("-v")
        .arg("-o")
        .arg(&report)
        .arg(BIN)
        .arg("--config-file")
        .arg(config)
        .arg("--state-dir")
        .arg(&state)
        .args(["--metrics-addr", "127.0.0.1:0", "--exit-on-eof"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("running the sidecar under /usr/bin/time (apt-get install time)");
    let wall_s = start.elapsed().as_secs_f64();
    assert!(status.success(), "the sidecar failed: {status}");
    let report = fs::read_to_string(&report).expect("reading /usr/bin/time's report");
    Run {
        wall_s,
        user_s: time_field(&report, "User time (seconds):").unwrap_or(f64::NAN),
        sys_s: time_field(&report, "System time (seconds):").unwrap_or(f64::NAN),
        max_rss_kib: time_field(&report, "Maximum resident set size (kbytes):").unwrap_or(0.0)
            as u64,
        alerts: count_lines(&out.join("alerts.log")),
        info: count_lines(&out.join("info.log")),
    }
}

/// RSS of a sidecar that has applied its config and has nothing to read.
fn idle_rss_kib(dir: &Path) -> Option<u64> {
    let idle = dir.join("idle");
    let _ = fs::remove_dir_all(&idle);
    fs::create_dir_all(idle.join("logs")).ok()?;
    let config = idle.join("servicelog.yaml");
    fs::write(
        &config,
        config_yaml(&idle.join("logs/*.log"), &idle.join("out")),
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
    let status = fs::read_to_string(format!("/proc/{}/status", child.id())).ok();
    let _ = child.kill();
    let _ = child.wait();
    status?.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

fn config_yaml(glob: &Path, out: &Path) -> String {
    format!(
        "apiVersion: servicelog.io/v1alpha1\nkind: ServiceLog\nmetadata: {{name: bench}}\nspec:\n\
         \x20 sources:\n    - name: app\n      file: {{paths: [\"{glob}\"], format: json}}\n\
         \x20 sinks:\n    - name: alerts\n      file: {{path: \"{out}/alerts.log\"}}\n\
         \x20   - name: info\n      file: {{path: \"{out}/info.log\"}}\n\
         \x20 rules:\n    - name: drop-debug\n      when: {{level: {{below: info}}}}\n      action: drop\n\
         \x20   - name: alerts\n      when: {{level: {{atLeast: warn}}}}\n      to: [alerts]\n\
         \x20   - name: info\n      when: {{level: {{in: [info]}}}}\n      to: [info]\n",
        glob = glob.display(),
        out = out.display(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env_num = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let lines = env_num("BENCH_LINES", if full { 2_000_000 } else { 20_000 });
    let runs = env_num("BENCH_RUNS", if full { 3 } else { 1 }).max(1);
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/sidecar")
        });
    let dir = dir.join(if full { "full" } else { "smoke" });
    fs::create_dir_all(dir.join("input")).expect("creating the bench dir");
    let input = dir.join("input/app.log");
    eprintln!("bench: generating {lines} lines into {}", input.display());
    let (counts, bytes) = generate(&input, lines);
    let config = dir.join("servicelog.yaml");
    fs::write(
        &config,
        config_yaml(&dir.join("input/*.log"), &dir.join("out")),
    )
    .expect("writing the config");

    let mut results = Vec::new();
    for i in 0..runs {
        let r = run_once(&dir, &config);
        eprintln!(
            "bench: run {}: {:.2}s wall, {:.2}s cpu, {} KiB peak RSS",
            i + 1,
            r.wall_s,
            r.user_s + r.sys_s,
            r.max_rss_kib
        );
        assert_eq!(
            (r.alerts, r.info),
            (counts[2] + counts[3], counts[1]),
            "output line counts (alerts, info) must equal the input's (warn+error, info)"
        );
        results.push(r);
    }
    let idle = if full { idle_rss_kib(&dir) } else { None };

    let wall = median(results.iter().map(|r| r.wall_s).collect());
    let cpu = median(results.iter().map(|r| r.user_s + r.sys_s).collect());
    let rss = median(results.iter().map(|r| r.max_rss_kib as f64).collect());
    let runs_json: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            serde_json::json!({
                "wall_s": r.wall_s, "user_s": r.user_s, "sys_s": r.sys_s,
                "cpu_s": r.user_s + r.sys_s, "max_rss_kib": r.max_rss_kib,
                "lines_per_s": lines as f64 / r.wall_s,
                "lines_per_cpu_s": lines as f64 / (r.user_s + r.sys_s),
                "outputs": {"alerts": r.alerts, "info": r.info},
            })
        })
        .collect();
    let doc = serde_json::json!({
        "contender": "servicelog-sidecar",
        "workload": {
            "lines": lines, "bytes": bytes, "seed": SEED,
            "levels": {"debug": counts[0], "info": counts[1], "warn": counts[2], "error": counts[3]},
        },
        "expected": {"alerts": counts[2] + counts[3], "info": counts[1]},
        "runs": runs_json,
        "median": {
            "wall_s": wall, "cpu_s": cpu, "max_rss_kib": rss,
            "lines_per_s": lines as f64 / wall,
            "mib_per_s": bytes as f64 / wall / (1024.0 * 1024.0),
            "lines_per_cpu_s": lines as f64 / cpu,
        },
        "idle_rss_kib": idle,
        "outputs_ok": true,
    });
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
}
