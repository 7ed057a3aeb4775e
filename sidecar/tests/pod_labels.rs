//! Kubernetes metadata against the real binary: the pod's labels from a downward-API
//! labels file, and its one app container, in `_servicelog` of `json` sinks' lines; a
//! change of the file reaches the lines written after it.

mod common;

use std::{fs, path::Path, time::Duration};

use common::*;
use serde_json::{Value, json};

fn json_lines(path: &Path) -> Vec<Value> {
    read_lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn given_a_labels_file_when_events_are_written_then_json_lines_carry_the_pods_labels_as_they_change()
 {
    let s = Scratch::new();
    let logs = s.logs();
    let out = s.path("out/json.log");
    let labels = s.path("podinfo/labels");
    fs::create_dir_all(labels.parent().unwrap()).expect("podinfo dir");
    // As the kubelet writes it: sorted keys, Go-quoted values.
    fs::write(
        &labels,
        "app=\"checkout\"\napp.kubernetes.io/version=\"1.4.2\"\nservicelog.io/injected=\"checkout\"",
    )
    .expect("writing the labels file");
    let config = s.path("servicelog.yaml");
    write_config(
        &config,
        &manifest(&format!(
            "sources: [{{name: app, file: {{paths: [\"{logs}/*.log\"], format: json}}}}]\n\
             sinks: [{{name: out, file: {{path: \"{out}\", encoding: json}}}}]\n\
             defaultTo: [out]\n",
            logs = logs.display(),
            out = out.display(),
        )),
    );
    let sidecar = Sidecar::start(
        &s,
        &["--config-file", config.to_str().expect("a UTF-8 path")],
        &[
            ("SERVICELOG_POD_LABELS_FILE", labels.to_str().unwrap()),
            ("SERVICELOG_CONTAINERS", "web"),
            ("POD_NAME", "checkout-7d9f"),
            ("POD_NAMESPACE", "shop"),
        ],
    );
    let app = logs.join("app.log");
    append(&app, &[line(1, "info")]);
    wait_until(
        "the first line in the json sink",
        Duration::from_secs(20),
        || count_lines(&out) == 1,
        || sidecar.log_tail(),
    );
    assert_eq!(
        json_lines(&out)[0]["_servicelog"],
        json!({"source":"app","pod":"checkout-7d9f","namespace":"shop","container":"web",
               "labels":{"app":"checkout","app.kubernetes.io/version":"1.4.2",
                         "servicelog.io/injected":"checkout"}})
    );

    // kubectl label pod … track=canary: the kubelet rewrites the file.
    fs::write(
        &labels,
        "app=\"checkout\"\napp.kubernetes.io/version=\"1.4.2\"\nservicelog.io/injected=\"checkout\"\ntrack=\"canary\"",
    )
    .expect("rewriting the labels file");
    let mut seq = 1;
    wait_until(
        "a line written after the labels changed to carry track=canary (polled every 5 s)",
        Duration::from_secs(30),
        || {
            seq += 1;
            append(&app, &[line(seq, "info")]);
            std::thread::sleep(Duration::from_millis(500));
            json_lines(&out)
                .last()
                .is_some_and(|l| l["_servicelog"]["labels"]["track"] == "canary")
        },
        || sidecar.log_tail(),
    );
    assert_eq!(
        json_lines(&out)[0]["_servicelog"]["labels"].get("track"),
        None,
        "lines written before the change keep the labels they had"
    );
}
