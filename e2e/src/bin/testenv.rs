//! `servicelog-testenv`: starts the test environment and keeps it up until SIGTERM or
//! Ctrl-C; `make testenv` runs it in the background and `make testenv-down` stops it.
//! Writes `target/testenv/env` (exports for a shell) and `target/testenv/testenv.pid`.
#![forbid(unsafe_code)]

use std::fs;

use anyhow::Context;
use servicelog_e2e::{TestEnv, base_dir};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let base = base_dir();
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let env_file = base.join("env");
    let _ = fs::remove_file(&env_file);
    servicelog_e2e::procs::reap_stale(&base);
    let env = tokio::task::spawn_blocking(|| TestEnv::start_in(base_dir().join("current")))
        .await
        .context("the start thread panicked")??;
    fs::write(base.join("testenv.pid"), std::process::id().to_string())
        .context("writing testenv.pid")?;
    fs::write(&env_file, env.env_file())
        .with_context(|| format!("writing {}", env_file.display()))?;
    println!(
        "testenv ready in {:.1}s: API server {}, ZooKeeper {}\n  source {}",
        env.started_in().as_secs_f64(),
        env.server(),
        env.zk_connect(),
        env_file.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("testenv: stopping");
    drop(env);
    let _ = fs::remove_file(env_file);
    let _ = fs::remove_file(base.join("testenv.pid"));
    Ok(())
}
