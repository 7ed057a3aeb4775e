//! Issue #20's data-safety stories on the sink side, against the real binary: a sink on a
//! full disk replaced by a config change delivers what it could not write through the new
//! sink, without a restart; a disk buffer left by the previous version, with corrupt
//! records in it, is delivered at the next start without a giant allocation.

mod common;

use std::{fs, path::Path, thread, time::Duration};

use common::*;

/// Everything of one source to one file sink `out` at `out`; `buffer` is the sink's
/// `buffer:` value (or empty).
fn spec(logs: &Path, out: &Path, buffer: &str) -> String {
    let buffer = if buffer.is_empty() {
        String::new()
    } else {
        format!("\n    buffer: {buffer}")
    };
    format!(
        "sources:\n  - name: app\n    file: {{paths: [\"{logs}/*.log\"], format: json}}\n\
         sinks:\n  - name: out\n    file: {{path: \"{out}\"}}{buffer}\n\
         defaultTo: [out]\n",
        logs = logs.display(),
        out = out.display(),
    )
}

fn lines(seqs: std::ops::Range<u64>) -> Vec<String> {
    seqs.map(|i| line(i, "info")).collect()
}

/// Needs the file reader's half (it reads a failed batch again into the sinks in force,
/// commit 6e1dc23) as well as the sinks' (a sink left out of the config fails what it
/// could not write within `RETIRE_DEADLINE`, 5 s).
#[test]
fn given_a_file_sink_on_a_full_disk_when_the_config_moves_it_then_the_new_sink_gets_every_line_without_a_restart()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let config = s.path("servicelog.yaml");
    write_config(&config, &manifest(&spec(&logs, &a, "")));
    let mut sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);
    let app = logs.join("app.log");
    append(&app, &lines(0..100));
    wait_until(
        "the first 100 lines in a",
        Duration::from_secs(15),
        || count_lines(&a) >= 100,
        || sidecar.log_tail(),
    );

    // The disk under a fills: its path now leads to /dev/full, where every write fails
    // with ENOSPC. The sink looks at its path again within a second.
    let first = s.path("out/a.first.log");
    fs::rename(&a, &first).unwrap();
    std::os::unix::fs::symlink("/dev/full", &a).unwrap();
    thread::sleep(Duration::from_millis(1500));
    append(&app, &lines(100..200));
    let errors = r#"servicelog_sink_write_errors_total{sink="out"}"#;
    wait_until(
        "failed writes to be counted",
        Duration::from_secs(15),
        || sidecar.metric(errors).is_some_and(|n| n >= 2.0),
        || sidecar.log_tail(),
    );
    assert_eq!(count_lines(&b), 0);

    // The fix: the sink writes elsewhere. Its old build stops retrying 5 s later and gives
    // its batches up; the reader reads them again into the new build.
    let fixed = std::time::Instant::now();
    write_config(&config, &manifest(&spec(&logs, &b, "")));
    wait_until(
        "lines 100..200 in b, read again from the failed batches",
        Duration::from_secs(20),
        || count_lines(&b) >= 100,
        || format!("b={}\n{}", count_lines(&b), sidecar.log_tail()),
    );
    let took = fixed.elapsed();
    append(&app, &lines(200..300));
    wait_until(
        "lines 200..300 in b",
        Duration::from_secs(15),
        || count_lines(&b) >= 200,
        || sidecar.log_tail(),
    );
    thread::sleep(Duration::from_millis(300));
    sidecar.assert_running();
    assert_exactly_once(&[&first, &b], 300);
    eprintln!("the failed lines reached the new sink {took:?} after the config change");
    assert!(
        took < Duration::from_secs(12),
        "the failed lines took {took:?} to reach the new sink (deadline 5 s + a reread)"
    );
}

/// A record of the previous version's format (no checksums).
fn v1_record(data: &[u8]) -> Vec<u8> {
    let mut r = 0x534c_4231u32.to_le_bytes().to_vec();
    r.extend_from_slice(&(data.len() as u32).to_le_bytes());
    r.extend_from_slice(&(data.iter().filter(|c| **c == b'\n').count() as u64).to_le_bytes());
    r.extend_from_slice(data);
    r
}

/// A record of the current format (docs/architecture.md, "Disk buffer format").
fn v2_record(data: &[u8]) -> Vec<u8> {
    let mut h = 0x534c_4232u32.to_le_bytes().to_vec();
    h.extend_from_slice(&(data.len() as u32).to_le_bytes());
    h.extend_from_slice(&(data.iter().filter(|c| **c == b'\n').count() as u64).to_le_bytes());
    h.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(data);
    h
}

fn text(seqs: std::ops::Range<u64>) -> Vec<u8> {
    lines(seqs)
        .iter()
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect()
}

#[test]
fn given_a_disk_buffer_of_the_previous_version_with_corrupt_records_when_the_sidecar_starts_then_the_rest_is_delivered()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let out = s.path("out/out.log");
    let dir = s.state().join("buffers/out");
    fs::create_dir_all(&dir).unwrap();
    // Segment 1, the previous version's: two good records, then a header claiming 200 MiB
    // in a file of a few hundred bytes (a flipped bit in the length).
    let mut seg1 = v1_record(&text(0..2));
    seg1.extend(v1_record(&text(2..3)));
    seg1.extend(0x534c_4231u32.to_le_bytes());
    seg1.extend((200u32 << 20).to_le_bytes());
    seg1.extend(1u64.to_le_bytes());
    seg1.extend(text(1000..1001));
    fs::write(dir.join("0000000000000001.seg"), seg1).unwrap();
    // Segment 2, this version's: a good record, one whose data rotted, a good one.
    let mut seg2 = v2_record(&text(3..5));
    let mut rotten = v2_record(&text(2000..2001));
    let last = rotten.len() - 10;
    rotten[last] ^= 0x20;
    seg2.extend(rotten);
    seg2.extend(v2_record(&text(5..6)));
    fs::write(dir.join("0000000000000002.seg"), seg2).unwrap();

    let config = s.path("servicelog.yaml");
    write_config(&config, &manifest(&spec(&logs, &out, "{type: disk}")));
    let sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);
    wait_until(
        "the 6 good buffered lines in the sink",
        Duration::from_secs(15),
        || count_lines(&out) >= 6,
        || sidecar.log_tail(),
    );
    let corrupt = r#"servicelog_buffer_records_corrupt_total{sink="out"}"#;
    wait_until(
        "both corrupt records to be counted",
        Duration::from_secs(5),
        || sidecar.metric(corrupt) == Some(2.0),
        || format!("{:?}\n{}", sidecar.metric(corrupt), sidecar.log_tail()),
    );
    thread::sleep(Duration::from_millis(200));
    assert_exactly_once(&[&out], 6);
    let peak = fs::read_to_string(format!("/proc/{}/status", sidecar.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/<pid>/status");
    assert!(
        peak < 64 << 10,
        "peak RSS {peak} KiB: the 200 MiB length was allocated"
    );
}
