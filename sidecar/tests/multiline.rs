//! `multiline` on file sources against the real binary: stack traces become one event
//! each, the timeout completes the last one, and a crash in the middle of an event loses
//! and repeats nothing.

mod common;

use std::{fs, path::Path, thread, time::Duration};

use common::*;

/// One text source joining lines into events that start with `start`, to a raw and a json
/// file sink.
fn spec(logs: &Path, format: &str, start: &str, timeout: &str, raw: &Path, json: &Path) -> String {
    format!(
        "sources:\n  - name: app\n    file:\n      paths: [\"{logs}/*.log\"]\n      format: {format}\n\
         \x20     multiline: {{startPattern: '{start}', timeout: {timeout}}}\n\
         sinks:\n  - name: raw\n    file: {{path: \"{raw}\"}}\n\
         \x20 - name: json\n    file: {{path: \"{json}\", encoding: json}}\n\
         defaultTo: [raw, json]\n",
        logs = logs.display(),
        raw = raw.display(),
        json = json.display(),
    )
}

/// A Java-style log record: a dated head line, then an exception and its frames.
fn java_event(i: usize) -> String {
    format!(
        "2026-11-25 10:00:{s:02}.000 ERROR [main] c.e.Checkout - request {i} failed\n\
         java.lang.IllegalStateException: cart {i} is empty\n\
         \tat com.example.Checkout.pay(Checkout.java:42)\n\
         \tat com.example.Api.handle(Api.java:7)\n\
         Caused by: java.io.IOException: disk full\n\
         \tat com.example.Store.save(Store.java:99)\n\
         \t... 2 more\n",
        s = i % 60
    )
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    read_lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn given_java_stack_traces_when_written_then_each_record_is_one_event_and_the_timeout_completes_the_last()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let (raw, json) = (s.path("out/raw.log"), s.path("out/json.log"));
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&spec(
            &logs,
            "text",
            r"^\d{4}-\d{2}-\d{2} ",
            "2s",
            &raw,
            &json,
        )),
    );
    let sidecar = Sidecar::start(
        &s,
        &["--config-file", config.to_str().expect("a UTF-8 path")],
        &[],
    );

    let input: String = (0..3).map(java_event).collect();
    let app = logs.join("app.log");
    // Written in pieces, one of them ending mid-line: events and lines span reads.
    let cut = input.len() / 2 + 5;
    fs::write(&app, &input[..cut]).expect("writing the log");
    thread::sleep(Duration::from_millis(300));
    fs::OpenOptions::new()
        .append(true)
        .open(&app)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &input.as_bytes()[cut..]))
        .expect("appending the rest");

    wait_until(
        "the first two records",
        Duration::from_secs(10),
        || json_lines(&json).len() >= 2,
        || sidecar.log_tail(),
    );
    thread::sleep(Duration::from_millis(700));
    assert_eq!(
        json_lines(&json).len(),
        2,
        "the last record may still grow: it waits for its 2s timeout"
    );
    wait_until(
        "the timeout to complete the last record",
        Duration::from_secs(10),
        || json_lines(&json).len() >= 3,
        || sidecar.log_tail(),
    );
    assert_eq!(
        fs::read_to_string(&raw).expect("reading the raw sink"),
        input,
        "a raw sink writes each event's lines, so the records come out as they went in"
    );
    let events = json_lines(&json);
    assert_eq!(events.len(), 3);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["message"].as_str(),
            Some(java_event(i).trim_end_matches('\n')),
            "event {i} is the whole record, lines joined with \\n"
        );
        assert_eq!(e["_servicelog"]["source"], "app");
    }
    assert_eq!(
        sidecar.metric(r#"servicelog_events_in_total{source="app"}"#),
        Some(3.0),
        "events are counted, not lines"
    );
}

#[test]
fn given_json_lines_followed_by_plain_text_traces_then_the_first_line_routes_and_the_whole_record_is_delivered()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let (alerts, rest) = (s.path("out/alerts.log"), s.path("out/rest.log"));
    let config = s.path("servicelog.yaml");
    let yaml = format!(
        "sources:\n  - name: app\n    file:\n      paths: [\"{logs}/*.log\"]\n      format: json\n\
         \x20     multiline: {{startPattern: '^\\{{', maxLines: 4, timeout: 300ms}}\n\
         sinks:\n  - name: alerts\n    file: {{path: \"{alerts}\", encoding: json}}\n\
         \x20 - name: rest\n    file: {{path: \"{rest}\", encoding: json}}\n\
         rules:\n  - name: alerts\n    when: {{level: {{atLeast: error}}}}\n    to: [alerts]\n\
         defaultTo: [rest]\n",
        logs = logs.display(),
        alerts = alerts.display(),
        rest = rest.display(),
    );
    write_config(&config, &manifest(&yaml));
    let sidecar = Sidecar::start(
        &s,
        &["--config-file", config.to_str().expect("a UTF-8 path")],
        &[],
    );
    append(
        &logs.join("app.log"),
        &[
            r#"{"level":"error","msg":"boom"}"#.to_owned(),
            "java.lang.RuntimeException: boom".to_owned(),
            "\tat A.b(A.java:1)".to_owned(),
            "\tat A.c(A.java:2)".to_owned(),
            r#"{"level":"info","msg":"fine"}"#.to_owned(),
            "{".to_owned(),
            r#"  "level": "error","#.to_owned(),
            r#"  "msg": "pretty""#.to_owned(),
            "}".to_owned(),
            r#"{"level":"error","msg":"long"}"#.to_owned(),
            "\tat X.a(X.java:1)".to_owned(),
            "\tat X.b(X.java:2)".to_owned(),
            "\tat X.c(X.java:3)".to_owned(),
            "\tat X.d(X.java:4)".to_owned(),
        ],
    );
    wait_until(
        "every event",
        Duration::from_secs(10),
        || json_lines(&alerts).len() >= 3 && json_lines(&rest).len() >= 2,
        || sidecar.log_tail(),
    );
    thread::sleep(Duration::from_millis(500));
    let alerts = json_lines(&alerts);
    let rest = json_lines(&rest);
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    assert_eq!(
        alerts[0]["message"],
        "{\"level\":\"error\",\"msg\":\"boom\"}\njava.lang.RuntimeException: boom\n\tat A.b(A.java:1)\n\tat A.c(A.java:2)",
        "routed by its first line's level, delivered whole"
    );
    assert_eq!(
        (&alerts[1]["msg"], &alerts[1]["level"]),
        (&"pretty".into(), &"error".into()),
        "a pretty-printed object is read whole and written on one line"
    );
    assert_eq!(
        alerts[2]["message"],
        "{\"level\":\"error\",\"msg\":\"long\"}\n\tat X.a(X.java:1)\n\tat X.b(X.java:2)\n\tat X.c(X.java:3)",
        "maxLines (4) ends an event"
    );
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert_eq!(rest[0]["msg"], "fine");
    assert_eq!(
        rest[1]["message"], "\tat X.d(X.java:4)",
        "the line after maxLines starts an event of its own (a text event: no level), which the timeout completes"
    );
}

#[test]
fn given_sigkill_in_the_middle_of_an_event_then_a_restart_loses_nothing_and_repeats_nothing() {
    let s = Scratch::new();
    let logs = s.logs();
    let (raw, json) = (s.path("out/raw.log"), s.path("out/json.log"));
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&spec(&logs, "text", "^event ", "30s", &raw, &json)),
    );
    let args = ["--config-file", config.to_str().expect("a UTF-8 path")];
    let mut sidecar = Sidecar::start(&s, &args, &[]);
    let app = logs.join("app.log");
    let event = |i: usize| vec![format!("event {i}"), format!("  a {i}"), format!("  b {i}")];

    let mut first: Vec<String> = (0..200).flat_map(event).collect();
    first.extend(event(200).into_iter().take(2));
    append(&app, &first);
    wait_until(
        "events 0..200 (200 is still open)",
        Duration::from_secs(15),
        || json_lines(&json).len() >= 200,
        || sidecar.log_tail(),
    );
    // Let the checkpoint catch up with the acked batches (it is written every second).
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        json_lines(&json).len(),
        200,
        "event 200 is not complete yet"
    );
    sidecar.kill();

    let mut second = vec!["  b 200".to_owned()];
    second.extend((201..=210).flat_map(event));
    second.push("event 211".to_owned());
    append(&app, &second);
    let sidecar = Sidecar::start(&s, &args, &[]);
    wait_until(
        "events 200..=210 after the restart",
        Duration::from_secs(15),
        || json_lines(&json).len() >= 211,
        || sidecar.log_tail(),
    );
    thread::sleep(Duration::from_millis(300));
    let events: Vec<String> = json_lines(&json)
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    let want: Vec<String> = (0..=210).map(|i| event(i).join("\n")).collect();
    assert_eq!(
        events, want,
        "every event exactly once and whole, including the one the kill cut in two"
    );
}

#[test]
fn given_an_open_event_when_its_file_is_deleted_or_truncated_then_the_event_is_completed_without_waiting_for_the_timeout()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let (raw, json) = (s.path("out/raw.log"), s.path("out/json.log"));
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&spec(&logs, "text", "^event ", "1h", &raw, &json)),
    );
    let sidecar = Sidecar::start(
        &s,
        &["--config-file", config.to_str().expect("a UTF-8 path")],
        &[],
    );
    let (deleted, truncated) = (logs.join("deleted.log"), logs.join("truncated.log"));
    append(&deleted, &["event d1".into(), "  more d1".into()]);
    append(&truncated, &["event t1".into(), "  more t1".into()]);
    thread::sleep(Duration::from_millis(800));
    assert!(
        json_lines(&json).is_empty(),
        "both events are still open (timeout 1h)"
    );
    fs::remove_file(&deleted).expect("deleting a log");
    // copytruncate: the file is emptied and written again from the start.
    fs::write(&truncated, "event t2\n").expect("truncating a log");
    wait_until(
        "the open events of the deleted and the truncated file",
        Duration::from_secs(10),
        || json_lines(&json).len() >= 2,
        || sidecar.log_tail(),
    );
    let mut got: Vec<String> = json_lines(&json)
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    got.sort();
    assert_eq!(got, vec!["event d1\n  more d1", "event t1\n  more t1"]);
}
