//! What the process benchmarks share: the seeded generator, the transforms workload's line,
//! pinning to a core, the `BENCH_*` numbers, and reading what a run cost (`/usr/bin/time
//! -v`'s report, clock ticks, lines in an output).
//!
//! A file, not a crate: each bench includes it with `#[path]` (the agent's bench from the
//! sidecar's directory), so it is compiled into each bench on its own, and a bench that
//! uses only part of it leaves the rest unused — hence the `allow(dead_code)`.
#![allow(dead_code)]

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

/// SplitMix64: the same lines on every machine and run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The seed of the transforms workload (the agent's bench reads the same lines).
pub const SEED: u64 = 0x7a5f_0e11;

const MESSAGES: [&str; 8] = [
    "request served",
    "cache miss",
    "payment authorised",
    "cart updated",
    "session refreshed",
    "slow query",
    "upstream timeout",
    "receipt sent to customer",
];

/// Line `i` of the transforms workload (`shared/bench/WORKLOAD.md`'s shape: a JSON line of
/// about 200 bytes, debug 50 % / info 35 % / warn 10 % / error 5 %), without its newline,
/// and its level.
pub fn workload_line(rng: &mut Rng, i: u64) -> (&'static str, String) {
    let level = match rng.below(100) {
        0..50 => "debug",
        50..85 => "info",
        85..95 => "warn",
        _ => "error",
    };
    let line = format!(
        r#"{{"ts":"2026-11-24T10:{:02}:{:02}.{:06}Z","level":"{level}","service":"checkout","msg":"{}","user_id":{},"latency_ms":{},"path":"/api/v1/cart","status":200,"trace_id":"{:016x}"}}"#,
        (i / 60_000_000) % 60,
        (i / 1_000_000) % 60,
        i % 1_000_000,
        MESSAGES[rng.below(MESSAGES.len() as u64) as usize],
        rng.below(100_000),
        rng.below(2_000),
        rng.next(),
    );
    (level, line)
}

/// Counts a line of `level` into the lines the benches' rules send to (alerts, info):
/// warn and error, and info (debug is dropped).
pub fn tally(want: &mut (u64, u64), level: &str) {
    match level {
        "warn" | "error" => want.0 += 1,
        "info" => want.1 += 1,
        _ => {}
    }
}

/// `BENCH_<NAME>` as a number, or `default`.
pub fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The core to pin runs to (`taskset -c`): `BENCH_CPU`, by default the last core; `none`
/// or no `taskset` on the machine: not pinned.
pub fn pin() -> Option<String> {
    let has_taskset = Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match std::env::var("BENCH_CPU").ok() {
        Some(v) if v == "none" => None,
        _ if !has_taskset => {
            eprintln!("bench: taskset not found (util-linux); runs are not pinned");
            None
        }
        Some(v) => Some(v),
        None => Some(
            std::thread::available_parallelism()
                .map_or(0, |n| n.get() - 1)
                .to_string(),
        ),
    }
}

/// A number from `/usr/bin/time -v`'s report, by its label (`User time (seconds):`).
pub fn time_field(report: &str, name: &str) -> Option<f64> {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(name)?.trim().parse().ok())
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat`'s CPU times.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Lines in a file (0 when it is missing).
pub fn count_lines(path: &Path) -> u64 {
    fs::read(path)
        .map(|b| memchr::memchr_iter(b'\n', &b).count() as u64)
        .unwrap_or(0)
}

/// The median, the mean of the two middle values for an even count; `None` when empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}
