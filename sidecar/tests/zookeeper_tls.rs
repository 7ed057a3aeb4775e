//! The sidecar over TLS to a real ZooKeeper (`secureClientPort`, a CA and certificates
//! made for the test): with the right CA it applies and acks its config and routes; with
//! the wrong CA it acks nothing and its log says the handshake failed, naming the CA file.

mod common;

use std::{
    process::Child,
    time::{Duration, Instant},
};

use common::*;
use servicelog_api::{pod::env, wire::InstanceState};
use servicelog_e2e::{
    procs::{self, EnvDir},
    zookeeper::{ZkPki, ZooKeeper},
};

const POD: &str = "checkout-tls-1";
const WAIT: Duration = Duration::from_secs(30);

/// A standalone ZooKeeper with a `secureClientPort`, stopped on drop (and by a watchdog if
/// the test process dies).
struct TlsZk {
    zk: ZooKeeper,
    pki: ZkPki,
    _watchdog: Child,
    _dir: EnvDir,
}

impl TlsZk {
    fn start(label: &str) -> Self {
        let base = servicelog_e2e::base_dir();
        procs::reap_stale(&base);
        let dir = EnvDir::create(base.join(servicelog_e2e::unique_name(&format!("tls-{label}"))))
            .expect("creating the ZooKeeper environment dir");
        let watchdog = dir.spawn_watchdog().expect("starting the watchdog");
        let pki = ZkPki::create(&dir.join("pki")).unwrap_or_else(|e| panic!("making the CA: {e}"));
        let zk = ZooKeeper::start_tls(&dir, label, &pki)
            .unwrap_or_else(|e| panic!("starting ZooKeeper with TLS: {e}"));
        Self {
            zk,
            pki,
            _watchdog: watchdog,
            _dir: dir,
        }
    }
}

impl Drop for TlsZk {
    fn drop(&mut self) {
        self.zk.stop(0);
        let _ = self._watchdog.kill();
        let _ = self._watchdog.wait();
    }
}

fn spec(logs: &std::path::Path, out: &std::path::Path) -> String {
    format!(
        "sources:\n  - name: app\n    file: {{paths: [\"{}/*.log\"], format: json}}\n\
         sinks:\n  - name: out\n    file: {{path: \"{}\"}}\n\
         rules:\n  - name: all\n    to: [out]\n",
        logs.display(),
        out.display()
    )
}

fn sidecar(s: &Scratch, zk: &TlsZk, config: &str, tls: &[(&str, String)]) -> Sidecar {
    let connect = zk.zk.secure_connect_string();
    let mut envs: Vec<(&str, &str)> = vec![
        (env::ZK_CONNECT, &connect),
        (env::CONFIG_ZNODE, config),
        (env::POD_NAME, POD),
        (env::POD_NAMESPACE, "shop"),
    ];
    envs.extend(tls.iter().map(|(k, v)| (*k, v.as_str())));
    Sidecar::start(s, &["--zk-connect-timeout=2s"], &envs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_zookeeper_serving_tls_and_the_right_ca_then_the_sidecar_applies_acks_and_routes() {
    let zk = TlsZk::start("sidecar-tls");
    let s = Scratch::new();
    let (logs, out) = (s.logs(), s.path("out/all.log"));
    let root = format!("/{}", servicelog_e2e::unique_name("t"));
    let config = format!("{root}/namespaces/shop/checkout/config");
    let instance_path = format!("{root}/namespaces/shop/checkout/instances/{POD}");
    // The test's own client uses the plain port.
    let client = zk_client(&zk.zk.connect_string()).await;
    let first = envelope(1, &spec(&logs, &out));
    publish(&client, &config, &first).await;

    let sidecar = sidecar(
        &s,
        &zk,
        &config,
        &[
            (env::ZK_TLS_CA_FILE, zk.pki.ca.display().to_string()),
            (
                env::ZK_TLS_CERT_FILE,
                zk.pki.client_cert.display().to_string(),
            ),
            (
                env::ZK_TLS_KEY_FILE,
                zk.pki.client_key.display().to_string(),
            ),
        ],
    );
    let start = Instant::now();
    loop {
        if let Some((record, _)) = instance(&client, &instance_path).await
            && record.hash == first.hash
            && record.state == InstanceState::Ok
        {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "no ok ack of {} at {instance_path} after {WAIT:?}\n{}",
            first.hash,
            sidecar.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    append(
        &logs.join("app.log"),
        &(0..5).map(|i| line(i, "info")).collect::<Vec<_>>(),
    );
    let start = Instant::now();
    while count_lines(&out) < 5 {
        assert!(
            start.elapsed() < WAIT,
            "{} has {} of 5 lines after {WAIT:?}\n{}",
            out.display(),
            count_lines(&out),
            sidecar.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sidecar
            .log_tail()
            .contains("establish session to tcp+tls://"),
        "the session should say it is over TLS:\n{}",
        sidecar.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_wrong_ca_then_the_sidecar_acks_nothing_and_says_the_tls_handshake_failed_naming_the_ca_file()
 {
    let zk = TlsZk::start("sidecar-wrong-ca");
    let s = Scratch::new();
    let (logs, out) = (s.logs(), s.path("out/all.log"));
    let root = format!("/{}", servicelog_e2e::unique_name("t"));
    let config = format!("{root}/namespaces/shop/checkout/config");
    let client = zk_client(&zk.zk.connect_string()).await;
    publish(&client, &config, &envelope(1, &spec(&logs, &out))).await;

    let wrong = zk.pki.wrong_ca.display().to_string();
    let sidecar = sidecar(&s, &zk, &config, &[(env::ZK_TLS_CA_FILE, wrong.clone())]);
    let start = Instant::now();
    loop {
        let log = sidecar.log_tail();
        if log.contains("cannot reach ZooKeeper") {
            assert!(
                log.contains("not signed by that CA") && log.contains(&wrong),
                "the failure should name the TLS handshake and the CA file {wrong}:\n{log}"
            );
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "no 'cannot reach ZooKeeper' in the sidecar's log after {WAIT:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let instances = format!("{root}/namespaces/shop/checkout/instances/{POD}");
    assert!(
        instance(&client, &instances).await.is_none(),
        "a sidecar that cannot verify the server must not have acked"
    );
}

#[test]
fn given_tls_settings_that_cannot_work_then_the_sidecar_refuses_to_start_naming_them() {
    let s = Scratch::new();
    for (envs, want) in [
        (
            vec![(env::ZK_CONNECT, "tcp+tls://127.0.0.1:1")],
            env::ZK_TLS_CA_FILE,
        ),
        (
            vec![
                (env::ZK_CONNECT, "127.0.0.1:1"),
                (env::ZK_TLS_CA_FILE, "/ca.pem"),
                (env::ZK_TLS_KEY_FILE, "/key.pem"),
            ],
            "only the key is given",
        ),
    ] {
        let out = std::process::Command::new(BIN)
            .arg("--state-dir")
            .arg(s.state())
            .envs(envs.iter().copied())
            .env(env::CONFIG_ZNODE, "/t/namespaces/shop/checkout/config")
            .output()
            .expect("running the sidecar");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{envs:?} must not start:\n{stderr}");
        assert!(
            stderr.contains(want),
            "{envs:?}: expected {want:?} in:\n{stderr}"
        );
    }
}
