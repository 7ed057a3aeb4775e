//! The sidecar with `--config-file`: routing, live rule changes, shutdown, crashes and
//! rotation, against the real binary and real files.

mod common;

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use common::*;

/// DESIGN.md's rules, with file sinks for alerts and for the default.
fn design_spec(logs: &Path, alerts: &Path, rest: &Path, encoding: &str) -> String {
    format!(
        "sources:\n  - name: app\n    file: {{paths: [\"{logs}/*.log\"], format: json}}\n\
         sinks:\n  - name: alerts\n    file: {{path: \"{alerts}\", encoding: {encoding}}}\n\
         \x20 - name: rest\n    file: {{path: \"{rest}\", encoding: {encoding}}}\n\
         rules:\n  - name: drop-debug\n    when: {{level: {{below: info}}}}\n    action: drop\n\
         \x20 - name: alerts\n    when: {{level: {{atLeast: warn}}}}\n    to: [alerts]\n\
         defaultTo: [rest]\n",
        logs = logs.display(),
        alerts = alerts.display(),
        rest = rest.display(),
    )
}

/// Routes everything of one source to one file sink.
fn one_sink_spec(logs: &Path, glob: &str, sink: &str, out: &Path) -> String {
    format!(
        "sources:\n  - name: app\n    file: {{paths: [\"{logs}/{glob}\"], format: json}}\n\
         sinks:\n  - name: {sink}\n    file: {{path: \"{out}\"}}\n\
         defaultTo: [{sink}]\n",
        logs = logs.display(),
        out = out.display(),
    )
}

#[test]
fn given_the_design_rules_when_lines_are_written_then_each_reaches_the_sink_its_rule_chose() {
    let s = Scratch::new();
    let logs = s.logs();
    let (alerts, rest) = (s.path("out/alerts.log"), s.path("out/rest.log"));
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&design_spec(&logs, &alerts, &rest, "raw")),
    );
    let mut sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);

    let app = logs.join("app.log");
    let input = vec![
        line(0, "debug"),
        line(1, "info"),
        line(2, "warn"),
        line(3, "ERROR"),
        "this line is not json".to_owned(),
        line(5, "warning"),
    ];
    append(&app, &input);
    wait_until(
        "3 alerts and 2 default lines",
        Duration::from_secs(15),
        || count_lines(&alerts) >= 3 && count_lines(&rest) >= 2,
        || sidecar.log_tail(),
    );
    assert_eq!(
        read_lines(&alerts),
        vec![input[2].clone(), input[3].clone(), input[5].clone()]
    );
    assert_eq!(
        read_lines(&rest),
        vec![input[1].clone(), input[4].clone()],
        "info and the unparsable line (a text event) go to defaultTo, unchanged"
    );

    wait_until(
        "the metrics to count the six lines",
        Duration::from_secs(5),
        || sidecar.metric(r#"servicelog_events_in_total{source="app"}"#) == Some(6.0),
        || {
            sidecar
                .http_get("/metrics")
                .map(|r| r.1)
                .unwrap_or_default()
        },
    );
    assert_eq!(
        sidecar.metric(r#"servicelog_events_dropped_total{rule="drop-debug",reason="rule"}"#),
        Some(1.0)
    );
    assert_eq!(
        sidecar.metric(r#"servicelog_events_out_total{sink="alerts"}"#),
        Some(3.0)
    );
    assert_eq!(
        sidecar.metric(r#"servicelog_events_out_total{sink="rest"}"#),
        Some(2.0)
    );
    assert_eq!(
        sidecar.metric(r#"servicelog_config_applied_total{result="ok"}"#),
        Some(1.0)
    );
    let read: usize = input.iter().map(|l| l.len() + 1).sum();
    assert_eq!(
        sidecar.metric(r#"servicelog_source_read_bytes_total{source="app"}"#),
        Some(read as f64),
        "the bytes read, newlines included"
    );
    let sent: usize = [2, 3, 5, 1, 4].iter().map(|&i| input[i].len() + 1).sum();
    wait_until(
        "the sinks' bytes",
        Duration::from_secs(5),
        || {
            sidecar
                .metric(r#"servicelog_sink_sent_bytes_total{sink="alerts"}"#)
                .unwrap_or(0.0)
                + sidecar
                    .metric(r#"servicelog_sink_sent_bytes_total{sink="rest"}"#)
                    .unwrap_or(0.0)
                == sent as f64
        },
        || {
            sidecar
                .http_get("/metrics")
                .map(|r| r.1)
                .unwrap_or_default()
        },
    );
    assert!(
        sidecar
            .metric(r#"servicelog_sink_request_duration_seconds_count{sink="alerts"}"#)
            .is_some_and(|n| n >= 1.0),
        "no write of the alerts sink timed"
    );
    assert_eq!(sidecar.http_get("/readyz").map(|r| r.0), Some(200));
    assert_eq!(sidecar.http_get("/healthz").map(|r| r.0), Some(200));

    // A line is only routed once its newline is there.
    fs::OpenOptions::new()
        .append(true)
        .open(&app)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line(6, "info").as_bytes()))
        .expect("writing a partial line");
    thread::sleep(Duration::from_millis(600));
    assert_eq!(
        count_lines(&rest),
        2,
        "a partial line must be held until its newline"
    );
    append(&app, &[String::new()]);
    wait_until(
        "the completed line",
        Duration::from_secs(5),
        || count_lines(&rest) == 3,
        || sidecar.log_tail(),
    );
    assert_eq!(read_lines(&rest)[2], line(6, "info"));
    sidecar.assert_running();
}

#[test]
fn given_json_encoding_then_events_carry_their_fields_and_servicelog_metadata() {
    let s = Scratch::new();
    let logs = s.logs();
    let (alerts, rest) = (s.path("out/alerts.log"), s.path("out/rest.log"));
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&design_spec(&logs, &alerts, &rest, "json")),
    );
    let sidecar = Sidecar::start(
        &s,
        &[
            "--config-file",
            config.to_str().unwrap(),
            "--pod-name",
            "checkout-1",
            "--pod-namespace",
            "shop",
        ],
        &[],
    );
    append(
        &logs.join("app.log"),
        &[line(1, "error"), "plain text".to_owned()],
    );
    wait_until(
        "one alert and one default line",
        Duration::from_secs(15),
        || count_lines(&alerts) == 1 && count_lines(&rest) == 1,
        || sidecar.log_tail(),
    );
    let alert: serde_json::Value =
        serde_json::from_str(&read_lines(&alerts)[0]).expect("alerts holds JSON");
    assert_eq!(alert["seq"], 1);
    assert_eq!(alert["level"], "error");
    assert_eq!(
        alert["_servicelog"],
        serde_json::json!({"source": "app", "pod": "checkout-1", "namespace": "shop"})
    );
    let text: serde_json::Value =
        serde_json::from_str(&read_lines(&rest)[0]).expect("rest holds JSON");
    assert_eq!(text["message"], "plain text");
    assert_eq!(text["_servicelog"]["source"], "app");
}

#[test]
fn given_100k_lines_being_written_when_the_rule_changes_then_every_line_arrives_exactly_once_split_at_one_point()
 {
    const N: u64 = 100_000;
    let s = Scratch::new();
    let logs = s.logs();
    let (a, b) = (s.path("out/a.log"), s.path("out/b.log"));
    let config = s.path("servicelog.yaml");
    // Both sinks exist in both configs; only the rule changes, so sink A keeps running.
    let spec = |to: &str| {
        format!(
            "sources:\n  - name: app\n    file: {{paths: [\"{logs}/*.log\"], format: json}}\n\
             sinks:\n  - name: a\n    file: {{path: \"{a}\"}}\n  - name: b\n    file: {{path: \"{b}\"}}\n\
             rules:\n  - name: all\n    to: [{to}]\n",
            logs = logs.display(),
            a = a.display(),
            b = b.display(),
        )
    };
    write_config(&config, &manifest(&spec("a")));
    let sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);

    let app = logs.join("app.log");
    let writer = thread::spawn(move || {
        // ~4 s of steady writing in small bursts.
        for burst in 0..(N / 500) {
            let lines: Vec<String> = (burst * 500..(burst + 1) * 500)
                .map(|i| line(i, "info"))
                .collect();
            append(&app, &lines);
            thread::sleep(Duration::from_millis(20));
        }
    });
    wait_until(
        "sink a to get some lines",
        Duration::from_secs(15),
        || count_lines(&a) > 10_000,
        || sidecar.log_tail(),
    );
    write_config(&config, &manifest(&spec("b")));
    writer.join().expect("the writer thread");
    wait_until(
        "all 100k lines across a and b",
        Duration::from_secs(30),
        || count_lines(&a) + count_lines(&b) >= N as usize,
        || {
            format!(
                "a={} b={}\n{}",
                count_lines(&a),
                count_lines(&b),
                sidecar.log_tail()
            )
        },
    );
    thread::sleep(Duration::from_millis(300));
    assert_exactly_once(&[&a, &b], N);
    let (sa, sb) = (seqs(&a), seqs(&b));
    assert!(
        !sb.is_empty(),
        "the new rule never took effect: b is empty\n{}",
        sidecar.log_tail()
    );
    let split = sa.len() as u64;
    assert_eq!(
        sa,
        (0..split).collect::<Vec<_>>(),
        "a must hold a prefix, in order"
    );
    assert_eq!(
        sb,
        (split..N).collect::<Vec<_>>(),
        "b must hold the rest, in order"
    );
}

#[test]
fn given_a_config_file_edit_that_does_not_validate_then_the_old_rules_stay() {
    let s = Scratch::new();
    let logs = s.logs();
    let out = s.path("out/out.log");
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&one_sink_spec(&logs, "*.log", "out", &out)),
    );
    let sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);
    append(&logs.join("app.log"), &[line(0, "info")]);
    wait_until(
        "the first line",
        Duration::from_secs(15),
        || count_lines(&out) == 1,
        || sidecar.log_tail(),
    );

    let bad = one_sink_spec(&logs, "*.log", "out", &out)
        .replace("defaultTo: [out]", "defaultTo: [nowhere]");
    write_config(&config, &manifest(&bad));
    wait_until(
        "the bad config to be rejected",
        Duration::from_secs(10),
        || sidecar.metric(r#"servicelog_config_applied_total{result="error"}"#) == Some(1.0),
        || sidecar.log_tail(),
    );
    append(&logs.join("app.log"), &[line(1, "info")]);
    wait_until(
        "the second line, by the old rules",
        Duration::from_secs(10),
        || count_lines(&out) == 2,
        || sidecar.log_tail(),
    );
    assert!(
        fs::read_to_string(&sidecar.log)
            .unwrap_or_default()
            .contains("nowhere"),
        "the log must name the problem"
    );
}

#[test]
fn given_sigterm_then_the_sidecar_flushes_checkpoints_and_exits_and_a_restart_neither_loses_nor_repeats()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let out = s.path("out/out.log");
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&one_sink_spec(&logs, "*.log", "out", &out)),
    );
    let app = logs.join("app.log");
    append(
        &app,
        &(0..20_000).map(|i| line(i, "info")).collect::<Vec<_>>(),
    );
    let mut sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);
    wait_until(
        "some lines",
        Duration::from_secs(15),
        || count_lines(&out) > 0,
        || sidecar.log_tail(),
    );
    let (took, status) = sidecar.terminate(Duration::from_secs(12));
    assert!(
        status.success(),
        "exit status {status}\n{}",
        sidecar.log_tail()
    );
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert!(
        s.state().join("checkpoints.json").exists(),
        "no checkpoint written"
    );

    append(
        &app,
        &(20_000..30_000)
            .map(|i| line(i, "info"))
            .collect::<Vec<_>>(),
    );
    let sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);
    wait_until(
        "all 30k lines",
        Duration::from_secs(20),
        || count_lines(&out) >= 30_000,
        || sidecar.log_tail(),
    );
    thread::sleep(Duration::from_millis(300));
    assert_exactly_once(&[&out], 30_000);
}

#[test]
fn given_sigkill_under_load_then_a_restart_loses_nothing_and_repeats_only_the_unacknowledged_tail()
{
    const N: u64 = 60_000;
    let s = Scratch::new();
    let logs = s.logs();
    let out = s.path("out/out.log");
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&one_sink_spec(&logs, "*.log", "out", &out)),
    );
    let app = logs.join("app.log");
    let mut sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);
    let writer = {
        let app = app.clone();
        thread::spawn(move || {
            for burst in 0..(N / 300) {
                append(
                    &app,
                    &(burst * 300..(burst + 1) * 300)
                        .map(|i| line(i, "info"))
                        .collect::<Vec<_>>(),
                );
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    wait_until(
        "a third of the lines",
        Duration::from_secs(20),
        || count_lines(&out) > (N / 3) as usize,
        || sidecar.log_tail(),
    );
    sidecar.kill();
    let before_restart = count_lines(&out);
    thread::sleep(Duration::from_millis(300));
    let sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);
    writer.join().expect("the writer thread");
    let enough = || {
        let c = seq_counts(&[&out]);
        (0..N).all(|s| c.contains_key(&s))
    };
    wait_until(
        "every line after the restart",
        Duration::from_secs(30),
        enough,
        || sidecar.log_tail(),
    );
    let got = seqs(&out);
    let counts = seq_counts(&[&out]);
    let dups: Vec<u64> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        counts.values().all(|c| *c <= 2),
        "a line appeared more than twice"
    );
    // Duplicates are one contiguous run: what was written but not yet checkpointed when
    // the process died, bounded by the in-flight batches plus one checkpoint interval.
    if let (Some(first), Some(last)) = (dups.first(), dups.last()) {
        assert_eq!(
            dups.len() as u64,
            last - first + 1,
            "duplicates are not one contiguous run: {dups:?}"
        );
        // In flight: at most the sink's buffer (the 2 MiB default) and two read chunks;
        // not yet written to the checkpoint file: at most `WRITE_BYTES` (1 MiB).
        let bound = (1 << 20) + (2 << 20) + 2 * 256 * 1024;
        let line_len = line(N / 2, "info").len() + 1;
        assert!(
            dups.len() * line_len <= bound,
            "{} duplicates ({} bytes): more than in-flight batches plus one checkpoint interval ({bound} bytes; the sink had {before_restart} lines at the kill)",
            dups.len(),
            dups.len() * line_len
        );
    }
    assert_eq!(got.len(), N as usize + dups.len());
}

#[test]
fn given_rotation_by_rename_under_load_then_no_line_is_lost_or_repeated() {
    const N: u64 = 40_000;
    let s = Scratch::new();
    let logs = s.logs();
    let out = s.path("out/out.log");
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&one_sink_spec(&logs, "*.log", "out", &out)),
    );
    let sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);
    let app = logs.join("app.log");
    let bursts = N / 400;
    for burst in 0..bursts {
        append(
            &app,
            &(burst * 400..(burst + 1) * 400)
                .map(|i| line(i, "info"))
                .collect::<Vec<_>>(),
        );
        if burst % 20 == 19 && burst + 1 < bursts {
            // Like logrotate's default: rename, then the application opens a new file.
            let rotated = logs.join(format!("app.log.{}", burst / 20));
            fs::rename(&app, rotated).expect("rotating by rename");
        }
        thread::sleep(Duration::from_millis(40));
    }
    wait_until(
        "all lines across rotations",
        Duration::from_secs(30),
        || count_lines(&out) >= N as usize,
        || format!("{} lines so far\n{}", count_lines(&out), sidecar.log_tail()),
    );
    thread::sleep(Duration::from_millis(500));
    assert_exactly_once(&[&out], N);
}

#[test]
fn given_rotation_by_copytruncate_then_no_line_is_lost() {
    const N: u64 = 40_000;
    let s = Scratch::new();
    let logs = s.logs();
    let out = s.path("out/out.log");
    let config = s.path("servicelog.yaml");
    // The glob is the live file only, as with logrotate's copies.
    write_config(
        &config,
        &manifest(&one_sink_spec(&logs, "app.log", "out", &out)),
    );
    let sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);
    let app = logs.join("app.log");
    let mut rotations = 0;
    for burst in 0..(N / 400) {
        append(
            &app,
            &(burst * 400..(burst + 1) * 400)
                .map(|i| line(i, "info"))
                .collect::<Vec<_>>(),
        );
        if burst % 20 == 19 {
            // copytruncate loses whatever no reader took between the copy and the
            // truncation — for any reader. logrotate's window is short; here the writer
            // waits until the sidecar has read what was written, then copies and truncates
            // while the application keeps its file open (O_APPEND).
            let written = (burst + 1) * 400;
            wait_until(
                "the sidecar to catch up before copytruncate",
                Duration::from_secs(15),
                || count_lines(&out) as u64 >= written,
                || sidecar.log_tail(),
            );
            fs::copy(&app, logs.join(format!("app.log.{rotations}"))).expect("copying");
            fs::OpenOptions::new()
                .write(true)
                .open(&app)
                .and_then(|f| f.set_len(0))
                .expect("truncating");
            rotations += 1;
        }
        thread::sleep(Duration::from_millis(5));
    }
    wait_until(
        "all lines across copytruncates",
        Duration::from_secs(30),
        || count_lines(&out) >= N as usize,
        || format!("{} lines so far\n{}", count_lines(&out), sidecar.log_tail()),
    );
    thread::sleep(Duration::from_millis(500));
    assert_exactly_once(&[&out], N);
    assert!(rotations >= 4);
}

#[test]
fn given_a_file_deleted_while_open_then_its_remaining_lines_and_partial_last_line_are_routed() {
    let s = Scratch::new();
    let logs = s.logs();
    let out = s.path("out/out.log");
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&one_sink_spec(&logs, "*.log", "out", &out)),
    );
    let app = logs.join("app.log");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&app)
        .expect("opening");
    std::io::Write::write_all(&mut f, format!("{}\n", line(0, "info")).as_bytes()).expect("write");
    let sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);
    wait_until(
        "the first line",
        Duration::from_secs(15),
        || count_lines(&out) == 1,
        || sidecar.log_tail(),
    );
    fs::remove_file(&app).expect("deleting");
    // The application still writes to its open handle, and ends without a newline.
    std::io::Write::write_all(
        &mut f,
        format!("{}\n{}", line(1, "info"), line(2, "info")).as_bytes(),
    )
    .expect("write");
    drop(f);
    let start = Instant::now();
    wait_until(
        "the deleted file's last lines",
        Duration::from_secs(15),
        || count_lines(&out) == 3,
        || sidecar.log_tail(),
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_exactly_once(&[&out], 3);
}

#[test]
fn given_a_stdout_sink_then_routed_lines_appear_on_the_sidecar_stdout_unchanged() {
    let s = Scratch::new();
    let logs = s.logs();
    let config = s.path("servicelog.yaml");
    let spec = format!(
        "sources:\n  - name: app\n    file: {{paths: [\"{logs}/*.log\"], format: logfmt}}\n\
         sinks:\n  - name: console\n    stdout: {{}}\n\
         rules:\n  - name: drop-debug\n    when: {{level: {{below: info}}}}\n    action: drop\n\
         defaultTo: [console]\n",
        logs = logs.display(),
    );
    write_config(&config, &manifest(&spec));
    let sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);
    let input = [
        "level=debug msg=hidden",
        "level=info msg=\"shown one\"",
        "no pairs here at all",
    ]
    .map(str::to_owned);
    append(&logs.join("app.log"), &input);
    wait_until(
        "two lines on stdout",
        Duration::from_secs(15),
        || count_lines(&sidecar.stdout) == 2,
        || sidecar.log_tail(),
    );
    assert_eq!(
        read_lines(&sidecar.stdout),
        vec![input[1].clone(), input[2].clone()]
    );
}
