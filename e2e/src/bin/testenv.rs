//! `servicelog-testenv`: starts the test environment and keeps it up until SIGTERM or
//! Ctrl-C; `make testenv` runs it in the background and `make testenv-down` stops it.
//! Writes `target/testenv/env` (exports for a shell) and `target/testenv/testenv.pid`.
//!
//! With `SERVICELOG_TESTENV_KAFKA=1` it also starts a Kafka broker and `env` exports
//! `SERVICELOG_KAFKA_BOOTSTRAP`.
//!
//! `servicelog-testenv --cluster` (what `make cluster` runs) starts a cluster with a real
//! node instead, in `target/cluster/`: `env` there also exports
//! `SERVICELOG_CLUSTER_ZK_CONNECT` (ZooKeeper as pods reach it) and `CONTAINERD_ADDRESS`.
#![forbid(unsafe_code)]

use std::fs;

use anyhow::Context;
use servicelog_e2e::{TestEnv, base_dir, cluster_base_dir};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cluster = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--cluster") => true,
        Some(other) => {
            anyhow::bail!("unknown argument {other:?}; usage: servicelog-testenv [--cluster]")
        }
    };
    let base = if cluster {
        cluster_base_dir()
    } else {
        base_dir()
    };
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let env_file = base.join("env");
    let pid_file = base.join(if cluster {
        "cluster.pid"
    } else {
        "testenv.pid"
    });
    let _ = fs::remove_file(&env_file);
    servicelog_e2e::procs::reap_stale(&base);
    let dir = base.join("current");
    let env = tokio::task::spawn_blocking(move || {
        if cluster {
            TestEnv::start_cluster_in(dir)
        } else {
            TestEnv::start_in(dir)
        }
    })
    .await
    .context("the start thread panicked")??;
    // SERVICELOG_TESTENV_KAFKA=1 adds the Kafka broker (env: SERVICELOG_KAFKA_BOOTSTRAP).
    if std::env::var("SERVICELOG_TESTENV_KAFKA").is_ok_and(|v| v == "1") {
        let kafka = env.kafka().context("starting the Kafka broker")?;
        println!(
            "kafka ready in {:.1}s: {} ({} MiB resident)",
            kafka.started_in().as_secs_f64(),
            kafka.bootstrap(),
            kafka.rss_bytes().unwrap_or(0) / (1024 * 1024)
        );
    }
    fs::write(&pid_file, std::process::id().to_string())
        .with_context(|| format!("writing {}", pid_file.display()))?;
    fs::write(&env_file, env.env_file())
        .with_context(|| format!("writing {}", env_file.display()))?;
    match env.node() {
        None => println!(
            "testenv ready in {:.1}s: API server {}, ZooKeeper {}\n  source {}",
            env.started_in().as_secs_f64(),
            env.server(),
            env.zk_connect(),
            env_file.display()
        ),
        Some(node) => {
            println!(
                "cluster ready in {:.1}s (node {:.1}s): API server {}, ZooKeeper {} (pods: {})\n  \
                 network namespace {}\n  source {}",
                env.started_in().as_secs_f64(),
                node.started_in().as_secs_f64(),
                env.server(),
                env.zk_connect(),
                env.zk_connect_for_pods().unwrap_or_default(),
                node.netns().name(),
                env_file.display()
            );
            let memory: Vec<String> = node
                .memory()
                .into_iter()
                .map(|(name, bytes)| format!("{name} {} MiB", bytes / (1024 * 1024)))
                .collect();
            println!("  memory: {}", memory.join(", "));
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("testenv: stopping");
    drop(env);
    let _ = fs::remove_file(env_file);
    let _ = fs::remove_file(pid_file);
    Ok(())
}
