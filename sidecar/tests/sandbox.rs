//! The file source stays in its directory: a symlink planted in a source's directory that
//! points elsewhere (`/etc/shadow`, a mounted Secret) is not read, whether it is there at
//! start or appears later, and whether it links a file or a directory; a symlink to a file
//! inside the directory still is. Against the real binary on a scratch directory.

mod common;

use std::{os::unix::fs::symlink, time::Duration};

use common::*;

const SECRET: &str = "TOP-SECRET root:$6$hash:19000:0:99999:7:::";
const REFUSED: &str = r#"servicelog_files_refused_total{source="app",reason="outside_directory"}"#;

#[test]
fn given_symlinks_out_of_the_source_directory_then_their_targets_never_reach_a_sink() {
    let s = Scratch::new();
    let logs = s.logs();
    // Outside the source's directory: a "shadow" file and a directory of secrets.
    let outside = s.path("etc");
    std::fs::create_dir_all(outside.join("secrets")).unwrap();
    let shadow = outside.join("shadow");
    std::fs::write(&shadow, format!("{SECRET}\n")).unwrap();
    std::fs::write(
        outside.join("secrets/token.log"),
        format!("{SECRET} token\n"),
    )
    .unwrap();
    // Inside it: a link to a file in a subdirectory the glob does not match by itself.
    std::fs::create_dir_all(logs.join("data")).unwrap();
    append(&logs.join("data/current.txt"), &[line(100, "info")]);
    symlink(logs.join("data/current.txt"), logs.join("current.log")).unwrap();
    // The planted links, there before the sidecar starts.
    symlink(&shadow, logs.join("shadow.log")).unwrap();
    symlink(outside.join("secrets"), logs.join("secrets")).unwrap();
    append(&logs.join("app.log"), &[line(0, "info"), line(1, "warn")]);

    let out = s.path("out/all.log");
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&format!(
            "sources:\n  - name: app\n    file: {{paths: [\"{logs}/**/*.log\"], format: json}}\n\
             sinks:\n  - name: all\n    file: {{path: \"{out}\"}}\n\
             defaultTo: [all]\n",
            logs = logs.display(),
            out = out.display(),
        )),
    );
    let mut sidecar = Sidecar::start(&s, &["--config-file", config.to_str().unwrap()], &[]);

    wait_until(
        "the app's lines and the inside link's line in the sink",
        Duration::from_secs(20),
        || seqs(&out).len() == 3,
        || format!("sink: {:?}\n{}", read_lines(&out), sidecar.log_tail()),
    );
    // Given one more link planted while running, when a few re-scans (every second) pass…
    symlink(&shadow, logs.join("late.log")).unwrap();
    append(&logs.join("app.log"), &[line(2, "info")]);
    wait_until(
        "the late link refused",
        Duration::from_secs(20),
        || sidecar.metric(REFUSED) == Some(3.0),
        || {
            format!(
                "{REFUSED} = {:?}\n{}",
                sidecar.metric(REFUSED),
                sidecar.log_tail()
            )
        },
    );
    std::thread::sleep(Duration::from_millis(2500));
    sidecar.assert_running();

    // …then the secret never reached the sink, the app's lines all did, and each refused
    // file was logged and counted once, not once per scan.
    let written = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        !written.contains("TOP-SECRET"),
        "a symlinked file outside the source directory was read:\n{written}"
    );
    let mut got = seqs(&out);
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 100], "sink: {written}");
    assert_eq!(
        sidecar.metric(REFUSED),
        Some(3.0),
        "shadow.log, secrets/token.log and late.log, each counted once"
    );
    let log = std::fs::read_to_string(&sidecar.log).unwrap_or_default();
    let warnings = log
        .lines()
        .filter(|l| l.contains("resolves outside its source's directory"))
        .count();
    assert_eq!(warnings, 3, "one warning per refused file:\n{log}");
}
