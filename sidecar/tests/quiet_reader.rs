//! A quiet file reader sleeps until inotify says a file was written (or a second passes,
//! `TailerOptions::idle_poll`): an idle sidecar's reader wakes about once a second instead
//! of every 100 ms, and a line written after a quiet spell is read at once, not at the next
//! poll. The real sidecar binary with `--config-file`, a real file source and file sink.

mod common;

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use common::*;

/// How soon a line written to a quiet file is at the sink: the write wakes the reader, then
/// the sink's write and this test's 50 ms check, with room for a busy machine. Well under
/// the reader's idle sleep (`TailerOptions::idle_poll`, 1 s), which it would wait without
/// the wake-up.
const AT_ONCE: Duration = Duration::from_millis(500);

/// The sidecar on `app.log`, its first line (0) at the sink.
fn start(s: &Scratch) -> (Sidecar, std::path::PathBuf, std::path::PathBuf) {
    let logs = s.logs();
    let out = s.path("out/out.log");
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&format!(
            "sources:\n  - name: app\n    file: {{paths: [\"{logs}/*.log\"], format: json}}\n\
             sinks:\n  - name: out\n    file: {{path: \"{out}\"}}\n\
             defaultTo: [out]\n",
            logs = logs.display(),
            out = out.display(),
        )),
    );
    let sidecar = Sidecar::start(s, &["--config-file", config.to_str().expect("UTF-8")], &[]);
    let app = logs.join("app.log");
    append(&app, &[line(0, "info")]);
    wait_until(
        "the first line at the sink",
        Duration::from_secs(10),
        || count_lines(&out) >= 1,
        || sidecar.log_tail(),
    );
    (sidecar, app, out)
}

/// Voluntary context switches of the sidecar's `file-reader` thread (one per sleep it
/// wakes from, about).
fn reader_wakeups(pid: u32) -> u64 {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("listing the sidecar's threads");
    for task in tasks {
        let dir = task.expect("a thread's entry").path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "file-reader" {
            continue;
        }
        let status = fs::read_to_string(dir.join("status")).expect("the reader thread's status");
        return status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches in the reader thread's status");
    }
    panic!("the sidecar {pid} has no file-reader thread");
}

#[test]
fn given_a_file_quiet_for_seconds_when_a_line_is_written_then_it_is_read_at_once() {
    let s = Scratch::new();
    let (sidecar, app, out) = start(&s);
    // Several idle sleeps, each lines written at a different point of one.
    let mut took = Vec::new();
    for (seq, quiet_ms) in [(1, 2_300), (2, 1_650), (3, 1_100)] {
        thread::sleep(Duration::from_millis(quiet_ms));
        let written = Instant::now();
        append(&app, &[line(seq, "info")]);
        wait_until(
            &format!("line {seq}, written after {quiet_ms} ms of quiet, at the sink"),
            Duration::from_secs(10),
            || count_lines(&out) > seq as usize,
            || sidecar.log_tail(),
        );
        took.push(written.elapsed());
    }
    let worst = took.iter().max().copied().unwrap_or_default();
    assert!(
        worst <= AT_ONCE,
        "a line written to a quiet file took {worst:?} to reach the sink (all: {took:?}), more than {AT_ONCE:?}: is the reader woken by the write?"
    );
    assert_eq!(seqs(&out), vec![0, 1, 2, 3], "every line, once, in order");
}

#[test]
fn given_an_idle_sidecar_when_its_files_stay_quiet_then_the_reader_wakes_about_once_a_second() {
    let s = Scratch::new();
    let (sidecar, _, _) = start(&s);
    // Past the acks of the first line (while a batch waits for one it polls every 100 ms).
    thread::sleep(Duration::from_secs(2));
    let before = reader_wakeups(sidecar.pid());
    thread::sleep(Duration::from_secs(5));
    let wakeups = reader_wakeups(sidecar.pid()) - before;
    // About 5 at the 1 s idle sleep; the 100 ms poll it replaced woke 50 times in 5 s.
    assert!(
        wakeups <= 12,
        "the quiet reader woke {wakeups} times in 5 s (expected about 5 at the 1 s cap)"
    );
}

#[test]
fn given_a_file_no_glob_matches_written_often_beside_a_quiet_log_then_the_reader_wakes_no_more_than_the_poll_did()
 {
    let s = Scratch::new();
    let (sidecar, app, out) = start(&s);
    thread::sleep(Duration::from_secs(2));
    // A busy neighbour in the watched directory: every write of it is an inotify event.
    let neighbour = app.with_file_name("debug.txt");
    let before = reader_wakeups(sidecar.pid());
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        append(&neighbour, &["not a log line".into()]);
        thread::sleep(Duration::from_millis(5));
    }
    let wakeups = reader_wakeups(sidecar.pid()) - before;
    // The 100 ms poll woke it 50 times in 5 s; waking per write would be about 1,000.
    assert!(
        wakeups <= 70,
        "the reader woke {wakeups} times in 5 s while a file no glob matches was written every 5 ms"
    );
    // And its own file's lines still come.
    append(&app, &[line(1, "info")]);
    wait_until(
        "the line written after the neighbour's writes",
        Duration::from_secs(10),
        || count_lines(&out) >= 2,
        || sidecar.log_tail(),
    );
    assert_eq!(seqs(&out), vec![0, 1], "both lines, once, in order");
}
