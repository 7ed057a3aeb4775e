//! The sidecar's own logs: `--log-format json` writes one JSON object per line, and a
//! ServiceLog's `spec.sidecar.logLevel` changes the level live, with the config, and back.

mod common;

use std::time::Duration;

use common::{Scratch, Sidecar, manifest, wait_until, write_config};

fn spec(dir: &str, level: Option<&str>) -> String {
    let sidecar = level
        .map(|l| format!("sidecar: {{logLevel: {l}}}\n"))
        .unwrap_or_default();
    format!(
        "sources: [{{name: app, file: {{paths: [\"{dir}/*.log\"], format: json}}}}]\n\
         sinks: [{{name: console, stdout: {{}}}}]\n\
         defaultTo: [console]\n{sidecar}"
    )
}

/// The JSON log lines of the sidecar's stderr; panics on a line that is not JSON.
fn json_lines(sidecar: &Sidecar) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&sidecar.log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"))
        })
        .collect()
}

fn config_in_force_at_debug(sidecar: &Sidecar) -> Vec<String> {
    json_lines(sidecar)
        .into_iter()
        .filter(|l| l["level"] == "DEBUG" && l["message"] == "config in force")
        .map(|l| l["hash"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn applied(sidecar: &Sidecar) -> usize {
    json_lines(sidecar)
        .iter()
        .filter(|l| l["message"] == "config applied")
        .count()
}

#[test]
fn given_json_logs_when_the_config_sets_the_log_level_then_it_changes_live_and_back() {
    let scratch = Scratch::new();
    let dir = scratch.logs();
    let config = scratch.path("servicelog.yaml");
    let dir = dir.display().to_string();
    write_config(&config, &manifest(&spec(&dir, None)));
    let sidecar = Sidecar::start(
        &scratch,
        &[
            "--config-file",
            config.to_str().expect("utf-8"),
            "--log-format",
            "json",
            "--log-level",
            "info",
        ],
        &[],
    );
    let timeout = Duration::from_secs(20);
    wait_until(
        "the first config",
        timeout,
        || applied(&sidecar) == 1,
        || sidecar.log_tail(),
    );
    assert!(
        config_in_force_at_debug(&sidecar).is_empty(),
        "debug lines at --log-level info:\n{}",
        sidecar.log_tail()
    );

    write_config(&config, &manifest(&spec(&dir, Some("debug"))));
    wait_until(
        "a debug line after spec.sidecar.logLevel: debug",
        timeout,
        || config_in_force_at_debug(&sidecar).len() == 1,
        || sidecar.log_tail(),
    );
    assert!(
        json_lines(&sidecar)
            .iter()
            .any(|l| l["message"] == "log level changed by the config" && l["level"] == "INFO"),
        "the change is not logged:\n{}",
        sidecar.log_tail()
    );

    // Back to the --log-level one when the config no longer sets it.
    write_config(&config, &manifest(&spec(&dir, None)));
    wait_until(
        "the third config",
        timeout,
        || applied(&sidecar) == 3,
        || sidecar.log_tail(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        config_in_force_at_debug(&sidecar).len(),
        1,
        "debug lines after the level went back to info:\n{}",
        sidecar.log_tail()
    );
}

#[test]
fn given_a_bad_log_format_then_the_sidecar_refuses_to_start_naming_the_choices() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_servicelog-sidecar"))
        .args(["--log-format", "yaml", "--config-file", "/nonexistent"])
        .output()
        .expect("running the sidecar");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("json or text"), "{stderr}");
}
