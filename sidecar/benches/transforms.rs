//! What transforms cost: the real sidecar routing `shared/bench/WORKLOAD.md`'s shape of
//! workload (seeded JSON lines of about 200 bytes, debug 50 % / info 35 % / warn 10 % /
//! error 5 %) file → file, with the routing benchmark's rules (debug dropped, warn and
//! error to `alerts`, info to `info`), once as they are (`none`) and once with three
//! transforms on both routing rules (`transforms`):
//!
//! ```yaml
//! transform:
//!   - {set: {field: env, value: prod}}
//!   - {rename: {from: user_id, to: user.id}}   # into a new nested object
//!   - {redact: {pattern: email}}               # the message searched on every event
//! ```
//!
//! Runs are interleaved (none, transforms, none, …) and pinned to one core (`taskset`),
//! each under `/usr/bin/time -v` for its CPU seconds; the figure is CPU time per input line,
//! median of the runs, and the ratio transforms ÷ none (issue #21's target: ≤ 1.5). Every
//! run's outputs are counted (they must hold the expected lines per level), and a
//! transformed run's lines must carry the changes.
//!
//! `cargo bench -p servicelog-sidecar --bench transforms` runs it in full (1,000,000 lines,
//! 3 runs each); under `cargo test` it is a smoke test (20,000 lines, one run each).
//! Environment: `BENCH_LINES`, `BENCH_RUNS`, `BENCH_DIR` (`target/bench/transforms`),
//! `BENCH_CPU` (the core; default the last one; `none` to not pin). Prints one JSON
//! document on stdout, progress on stderr.

#[path = "support/mod.rs"]
mod support;

use std::{
    fs,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use serde_json::{Value, json};
use support::{Rng, SEED, count_lines, env_num, median, pin, tally, time_field, workload_line};

const BIN: &str = env!("CARGO_BIN_EXE_servicelog-sidecar");
const TARGET_RATIO: f64 = 1.5;

const TRANSFORMS: &str = "\n      transform:\n        - {set: {field: env, value: prod}}\n        - {rename: {from: user_id, to: user.id}}\n        - {redact: {pattern: email}}";

/// Writes the workload; returns the lines expected in (alerts, info).
fn generate(path: &Path, lines: u64) -> (u64, u64) {
    let mut rng = Rng(SEED);
    let mut out = BufWriter::new(fs::File::create(path).expect("creating the workload"));
    let mut want = (0, 0);
    for i in 0..lines {
        let (level, line) = workload_line(&mut rng, i);
        tally(&mut want, level);
        writeln!(out, "{line}").expect("writing the workload");
    }
    out.flush().expect("writing the workload");
    want
}

fn config(input: &Path, out: &Path, transforms: &str) -> String {
    format!(
        "apiVersion: servicelog.io/v1alpha1\nkind: ServiceLog\nmetadata: {{name: bench}}\nspec:\n\
         \x20 sources:\n    - name: app\n      file: {{paths: [\"{input}\"], format: json}}\n\
         \x20 sinks:\n    - name: alerts\n      file: {{path: \"{out}/alerts.log\"}}\n\
         \x20   - name: info\n      file: {{path: \"{out}/info.log\"}}\n\
         \x20 rules:\n    - name: drop-debug\n      when: {{level: {{below: info}}}}\n      action: drop\n\
         \x20   - name: alerts\n      when: {{level: {{atLeast: warn}}}}\n      to: [alerts]{transforms}\n\
         \x20   - name: info\n      when: {{level: {{in: [info]}}}}\n      to: [info]{transforms}\n",
        input = input.display(),
        out = out.display(),
    )
}

/// One run: its CPU seconds, or why it does not count.
fn run(
    dir: &Path,
    name: &str,
    input: &Path,
    want: (u64, u64),
    cpu: Option<&str>,
) -> Result<f64, String> {
    let run_dir = dir.join("runs").join(name);
    let _ = fs::remove_dir_all(&run_dir);
    let out = run_dir.join("out");
    fs::create_dir_all(&out).expect("creating the run's dir");
    let transforms = if name == "transforms" { TRANSFORMS } else { "" };
    let conf = run_dir.join("servicelog.yaml");
    fs::write(&conf, config(input, &out, transforms)).expect("writing the config");
    let report = run_dir.join("time.txt");
    let mut cmd = match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg("/usr/bin/time");
            cmd
        }
        None => Command::new("/usr/bin/time"),
    };
    let status = cmd
        .arg("-v")
        .arg("-o")
        .arg(&report)
        .arg(BIN)
        .arg("--config-file")
        .arg(&conf)
        .arg("--state-dir")
        .arg(run_dir.join("state"))
        .args(["--metrics-addr", "127.0.0.1:0", "--exit-on-eof"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| {
            format!("running the sidecar under /usr/bin/time (apt-get install time): {e}")
        })?;
    if !status.success() {
        return Err(format!("the sidecar failed: {status}"));
    }
    let report = fs::read_to_string(&report).map_err(|e| format!("time's report: {e}"))?;
    let cpu_s = time_field(&report, "User time (seconds):").unwrap_or(f64::NAN)
        + time_field(&report, "System time (seconds):").unwrap_or(f64::NAN);
    let got = (
        count_lines(&out.join("alerts.log")),
        count_lines(&out.join("info.log")),
    );
    if got != want {
        return Err(format!(
            "outputs (alerts, info) hold {got:?} lines, expected {want:?}"
        ));
    }
    if name == "transforms" {
        let first = fs::read_to_string(out.join("info.log"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
            .unwrap_or_default();
        let v: Value = serde_json::from_str(&first).map_err(|e| format!("{e}: {first}"))?;
        if v["env"] != "prod" || !v["user"]["id"].is_number() || v.get("user_id").is_some() {
            return Err(format!("a transformed line lacks the changes: {first}"));
        }
    }
    Ok(cpu_s)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let lines = env_num("BENCH_LINES", if full { 1_000_000 } else { 20_000 });
    let runs = env_num("BENCH_RUNS", if full { 3 } else { 1 }).max(1);
    let dir = std::env::var_os("BENCH_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/transforms"),
        PathBuf::from,
    );
    fs::create_dir_all(&dir).expect("creating the bench dir");
    // Specs take normalised paths only.
    let dir = fs::canonicalize(&dir).expect("resolving the bench dir");
    let input = dir.join("workload.log");
    let want = generate(&input, lines);
    let cpu = pin();
    let mut cpu_s: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut errors = Vec::new();
    let names = ["none", "transforms"];
    let start = Instant::now();
    for r in 0..runs {
        for (i, name) in names.iter().enumerate() {
            eprintln!("bench: transforms: run {}/{runs}, {name}", r + 1);
            match run(&dir, name, &input, want, cpu.as_deref()) {
                Ok(s) => cpu_s[i].push(s),
                Err(e) => {
                    eprintln!("bench: {name}: {e}");
                    errors.push(format!("{name}: {e}"));
                }
            }
        }
    }
    let summary = |runs: &[f64]| {
        let m = median(runs.to_vec());
        json!({
            "runs_cpu_s": runs,
            "median": m.map(|m| json!({
                "cpu_s": m,
                "ns_per_line": m * 1e9 / lines as f64,
                "lines_per_cpu_s": lines as f64 / m,
            })),
        })
    };
    let ratio = match (median(cpu_s[1].clone()), median(cpu_s[0].clone())) {
        (Some(t), Some(n)) if n > 0.0 => Some(t / n),
        _ => None,
    };
    let doc = json!({
        "status": if errors.is_empty() { "ok" } else { "failed" },
        "errors": errors,
        "lines": lines,
        "runs": runs,
        "pinned_cpu": cpu,
        "transforms_per_rule": ["set env=prod", "rename user_id → user.id", "redact email in the message"],
        "none": summary(&cpu_s[0]),
        "transforms": summary(&cpu_s[1]),
        "cost_per_line_ratio": ratio,
        "target": {"max_ratio": TARGET_RATIO, "met": ratio.map(|r| r <= TARGET_RATIO)},
        "elapsed_s": start.elapsed().as_secs_f64(),
    });
    println!("{doc:#}");
    if !errors.is_empty() {
        std::process::exit(1);
    }
}
