//! `make images` and `docker/Dockerfile` describe the same three images: for each of the
//! operator, the sidecar and the node agent, the archive in `target/images/` (built by
//! `scripts/images.sh build`, which `make test` runs first) has the Dockerfile stage's
//! user, entrypoint, command, exposed ports and labels, the binary the stage copies, and
//! the distroless files the binary relies on (the nonroot user in /etc/passwd, the CA
//! certificates), under the chart's default image reference.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use servicelog_e2e::workspace_dir;

/// One stage of the Dockerfile, as far as it shapes the image.
#[derive(Debug, Default)]
struct Stage {
    user: Option<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    exposed: Vec<String>,
    labels: BTreeMap<String, String>,
    copied: Vec<String>,
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// `key="value" key2="value two"` pairs of a LABEL instruction.
fn label_pairs(args: &str) -> BTreeMap<String, String> {
    let mut pairs = BTreeMap::new();
    let mut rest = args.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let after = after.trim_start();
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').unwrap_or(quoted.len());
                (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
            }
            None => after.split_once(' ').unwrap_or((after, "")),
        };
        pairs.insert(key.trim().to_owned(), value.to_owned());
        rest = tail.trim_start();
    }
    pairs
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not an exec-form array: {args}: {e}"))
}

/// The stage `FROM … AS <name>` of docker/Dockerfile.
fn dockerfile_stage(name: &str) -> Stage {
    let path = workspace_dir().join("docker/Dockerfile");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut stage: Option<Stage> = None;
    for instruction in instructions(&text) {
        let (op, args) = instruction
            .split_once(' ')
            .unwrap_or((instruction.as_str(), ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            if stage.is_some() {
                break;
            }
            if args.split_whitespace().last() == Some(name) {
                stage = Some(Stage::default());
            }
            continue;
        }
        let Some(s) = stage.as_mut() else { continue };
        match op.as_str() {
            "USER" => s.user = Some(args.trim().to_owned()),
            "ENTRYPOINT" => s.entrypoint = Some(exec_form(args)),
            "CMD" => s.cmd = Some(exec_form(args)),
            "EXPOSE" => s
                .exposed
                .extend(args.split_whitespace().map(|p| format!("{p}/tcp"))),
            "LABEL" => s.labels.extend(label_pairs(args)),
            "COPY" => {
                if let Some(dest) = args.split_whitespace().last() {
                    s.copied.push(dest.to_owned());
                }
            }
            _ => {}
        }
    }
    stage.unwrap_or_else(|| panic!("docker/Dockerfile has no stage `AS {name}`"))
}

fn archive(name: &str) -> PathBuf {
    let path = workspace_dir().join(format!("target/images/servicelog-{name}.tar"));
    assert!(
        path.is_file(),
        "{} is missing: run `make images-build` (make test does)",
        path.display()
    );
    path
}

fn tar_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(member)
        .output()
        .unwrap_or_else(|e| panic!("running tar: {e}"));
    assert!(
        out.status.success(),
        "tar -xOf {} {member}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn json_member(archive: &Path, member: &str) -> Value {
    serde_json::from_slice(&tar_member(archive, member))
        .unwrap_or_else(|e| panic!("{member} in {} is not JSON: {e}", archive.display()))
}

fn blob_path(digest: &Value) -> String {
    let digest = digest.as_str().expect("a digest string");
    format!(
        "blobs/sha256/{}",
        digest.strip_prefix("sha256:").unwrap_or(digest)
    )
}

/// The archive's reference, image config and layer file listing (`tar -tv` lines).
struct Image {
    reference: String,
    config: Value,
    layer: PathBuf,
}

fn read_image(name: &str) -> Image {
    let archive = archive(name);
    let index = json_member(&archive, "index.json");
    let entry = &index["manifests"][0];
    let reference = entry["annotations"]["io.containerd.image.name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let manifest = json_member(&archive, &blob_path(&entry["digest"]));
    let config = json_member(&archive, &blob_path(&manifest["config"]["digest"]));
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    assert_eq!(layers.len(), 1, "one layer expected: {manifest}");
    let layer = std::env::temp_dir().join(format!(
        "servicelog-image-{name}-{}.tar",
        std::process::id()
    ));
    std::fs::write(
        &layer,
        tar_member(&archive, &blob_path(&layers[0]["digest"])),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", layer.display()));
    Image {
        reference,
        config,
        layer,
    }
}

impl Image {
    /// `path → (mode string, owner)` of every file in the layer.
    fn files(&self) -> BTreeMap<String, (String, String)> {
        let out = Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&self.layer)
            .output()
            .unwrap_or_else(|e| panic!("running tar: {e}"));
        assert!(out.status.success(), "tar -tvf {}", self.layer.display());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let path = fields
                    .get(5)?
                    .trim_start_matches("./")
                    .trim_end_matches('/');
                Some((
                    format!("/{path}"),
                    ((*fields.first()?).to_owned(), (*fields.get(1)?).to_owned()),
                ))
            })
            .collect()
    }

    fn file(&self, path: &str) -> String {
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(&self.layer)
            .arg(format!(".{path}"))
            .output()
            .unwrap_or_else(|e| panic!("running tar: {e}"));
        assert!(out.status.success(), "{path} is not in the image's layer");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.layer);
    }
}

fn chart_app_version() -> String {
    let path = workspace_dir().join("charts/servicelog/Chart.yaml");
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
    )
    .expect("Chart.yaml is YAML");
    chart["appVersion"]
        .as_str()
        .expect("Chart.yaml has appVersion")
        .to_owned()
}

fn strings(value: &Value) -> Option<Vec<String>> {
    value.as_array().map(|a| {
        a.iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect()
    })
}

fn same_image(name: &str) {
    let stage = dockerfile_stage(name);
    let image = read_image(name);
    let config = &image.config["config"];

    assert_eq!(
        image.reference,
        format!(
            "ghcr.io/servicelog/servicelog-{name}:{}",
            chart_app_version()
        ),
        "the archive is not named by the chart's default reference"
    );
    assert_eq!(
        config["User"].as_str(),
        stage.user.as_deref(),
        "{name}: user differs from the Dockerfile's USER"
    );
    assert_eq!(
        strings(&config["Entrypoint"]),
        stage.entrypoint,
        "{name}: entrypoint differs from the Dockerfile's"
    );
    assert_eq!(
        strings(&config["Cmd"]),
        stage.cmd,
        "{name}: command differs from the Dockerfile's CMD"
    );
    let mut ports: Vec<String> = config["ExposedPorts"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    ports.sort();
    let mut expected = stage.exposed.clone();
    expected.sort();
    assert_eq!(ports, expected, "{name}: exposed ports differ from EXPOSE");
    let labels: BTreeMap<String, String> = config["Labels"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(labels, stage.labels, "{name}: labels differ from LABEL");

    // The files: what the stage copies, executable; the distroless files it relies on.
    let files = image.files();
    assert!(!stage.copied.is_empty(), "{name}: the stage copies nothing");
    for copied in &stage.copied {
        let (mode, owner) = files.get(copied).unwrap_or_else(|| {
            panic!("{name}: {copied} (COPY in the Dockerfile) is not in the image")
        });
        assert!(
            mode.starts_with("-rwx") && mode.ends_with('x'),
            "{name}: {copied} is not executable by everyone: {mode}"
        );
        assert_eq!(owner, "0/0", "{name}: {copied} is not owned by root");
    }
    let entry = stage.entrypoint.as_ref().and_then(|e| e.first()).cloned();
    assert!(
        entry.as_ref().is_some_and(|e| stage.copied.contains(e)),
        "{name}: the entrypoint {entry:?} is not the copied binary"
    );
    let user = stage.user.as_deref().unwrap_or_default();
    let uid = user.split(':').next().unwrap_or_default();
    let passwd = image.file("/etc/passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some(uid) && l.starts_with("nonroot:")),
        "{name}: /etc/passwd has no nonroot user with uid {uid}:\n{passwd}"
    );
    let group = image.file("/etc/group");
    assert!(
        group.lines().any(|l| l.split(':').nth(2) == Some(uid)),
        "{name}: /etc/group has no group {uid}:\n{group}"
    );
    let certs = image.file("/etc/ssl/certs/ca-certificates.crt");
    assert!(
        certs.matches("BEGIN CERTIFICATE").count() > 10,
        "{name}: the CA certificates are missing"
    );
    let tmp = files.get("/tmp").map(|(m, _)| m.as_str());
    assert_eq!(
        tmp,
        Some("drwxrwxrwt"),
        "{name}: /tmp is not world-writable"
    );
    assert!(
        image.config["config"]["Env"].as_array().is_some_and(|e| e
            .iter()
            .any(|v| v == "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")),
        "{name}: SSL_CERT_FILE is not set as in distroless"
    );
}

#[test]
fn given_the_dockerfile_when_the_operator_image_is_built_without_docker_then_both_describe_the_same_image()
 {
    same_image("operator");
}

#[test]
fn given_the_dockerfile_when_the_sidecar_image_is_built_without_docker_then_both_describe_the_same_image()
 {
    same_image("sidecar");
}

#[test]
fn given_the_dockerfile_when_the_agent_image_is_built_without_docker_then_both_describe_the_same_image()
 {
    same_image("agent");
}

#[test]
fn given_a_dockerfile_label_spanning_lines_when_parsed_then_each_pair_is_read() {
    let text = "FROM x AS a\nLABEL a.b=\"one two\" \\\n      c=\"three\"\nUSER 1:1\n# EXPOSE 1\nEXPOSE 80 443\n";
    let joined = instructions(text);
    assert_eq!(joined.len(), 4, "{joined:?}");
    let labels = label_pairs(joined[1].trim_start_matches("LABEL "));
    assert_eq!(labels.get("a.b").map(String::as_str), Some("one two"));
    assert_eq!(labels.get("c").map(String::as_str), Some("three"));
}
