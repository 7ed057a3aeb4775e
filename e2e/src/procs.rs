//! Child processes of a test environment: started with their output in a log file, their
//! PIDs in `<env>/pids`, and stopped by PID — on drop, and by a watchdog when the process
//! that owns the environment dies without dropping it (a panic with `panic = abort`, a
//! killed test binary, the process-wide shared environment that is never dropped). An
//! environment with a node (`<env>/node.env`) also has its pods, mounts, cgroups and network
//! namespace removed then, by `e2e/tools/node-down.sh`.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::EnvError;

/// The directory of one environment: data dirs, logs, certificates, the PID list.
#[derive(Clone, Debug)]
pub struct EnvDir {
    path: PathBuf,
    pids: Arc<Mutex<BTreeMap<u32, String>>>,
}

impl EnvDir {
    /// Creates `path` afresh and records this process as its owner.
    pub fn create(path: PathBuf) -> Result<Self, EnvError> {
        if path.exists() {
            node_down(&path);
            if let Some(mount) = mount_under(&path) {
                return Err(EnvError::Failed {
                    what: format!("removing {}", path.display()),
                    detail: format!("{mount} is still mounted there; unmount it first"),
                });
            }
            fs::remove_dir_all(&path)
                .map_err(|e| EnvError::io(format!("removing {}", path.display()), e))?;
        }
        fs::create_dir_all(path.join("logs"))
            .map_err(|e| EnvError::io(format!("creating {}", path.display()), e))?;
        fs::write(path.join("owner"), std::process::id().to_string())
            .map_err(|e| EnvError::io("writing the owner file", e))?;
        let dir = Self {
            path,
            pids: Arc::default(),
        };
        dir.write_pids()?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, part: impl AsRef<Path>) -> PathBuf {
        self.path.join(part)
    }

    fn write_pids(&self) -> Result<(), EnvError> {
        let pids = self.pids.lock().map_err(|_| EnvError::Poisoned)?;
        let text: String = pids.keys().map(|pid| format!("{pid}\n")).collect();
        let tmp = self.path.join("pids.tmp");
        fs::write(&tmp, text).map_err(|e| EnvError::io("writing the PID list", e))?;
        fs::rename(&tmp, self.path.join("pids"))
            .map_err(|e| EnvError::io("writing the PID list", e))
    }

    fn add_pid(&self, pid: u32, name: &str) -> Result<(), EnvError> {
        self.pids
            .lock()
            .map_err(|_| EnvError::Poisoned)?
            .insert(pid, name.to_owned());
        self.write_pids()
    }

    fn remove_pid(&self, pid: u32) {
        if let Ok(mut pids) = self.pids.lock() {
            pids.remove(&pid);
        }
        let _ = self.write_pids();
    }

    /// Starts a shell watchdog that, once this process is gone, stops every PID in the
    /// list (TERM, then KILL) and tears down a node if the environment has one. It is
    /// detached from us by design: it must outlive us.
    pub fn spawn_watchdog(&self) -> Result<Child, EnvError> {
        let script = r#"
owner="$1"; pids="$2"; env="$3"; node_down="$4"
while kill -0 "$owner" 2>/dev/null; do sleep 0.5; done
[ -f "$pids" ] || exit 0
for p in $(cat "$pids"); do kill -TERM "$p" 2>/dev/null; done
sleep 3
for p in $(cat "$pids"); do kill -KILL "$p" 2>/dev/null; done
[ -f "$env/node.env" ] && bash "$node_down" "$env" all
exit 0
"#;
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("servicelog-testenv-watchdog")
            .arg(std::process::id().to_string())
            .arg(self.join("pids"))
            .arg(&self.path)
            .arg(crate::workspace_dir().join("e2e/tools/node-down.sh"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| EnvError::Spawn {
                what: "watchdog (sh)".into(),
                reason: e.to_string(),
            })
    }
}

/// A running component.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    dir: EnvDir,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `<env>/logs/<name>.log`.
    pub fn spawn(name: &str, cmd: Command, dir: &EnvDir) -> Result<Self, EnvError> {
        Self::spawn_inner(name, cmd, dir, false)
    }

    /// Like [`Proc::spawn`], but stdout (the data a program emits, e.g. a stdout sink)
    /// goes to `<env>/logs/<name>.stdout` and only stderr to the log.
    pub fn spawn_split(name: &str, cmd: Command, dir: &EnvDir) -> Result<Self, EnvError> {
        Self::spawn_inner(name, cmd, dir, true)
    }

    fn spawn_inner(
        name: &str,
        mut cmd: Command,
        dir: &EnvDir,
        split: bool,
    ) -> Result<Self, EnvError> {
        let log = dir.join("logs").join(format!("{name}.log"));
        let open = |path: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| EnvError::io(format!("opening {}", path.display()), e))
        };
        let err = open(&log)?;
        let out = if split {
            open(&dir.join("logs").join(format!("{name}.stdout")))?
        } else {
            err.try_clone()
                .map_err(|e| EnvError::io("duplicating a log handle", e))?
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| EnvError::Spawn {
                what: format!("{name} ({:?})", cmd.get_program()),
                reason: e.to_string(),
            })?;
        dir.add_pid(child.id(), name)?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log,
            dir: dir.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Where stdout goes: the log, or `<name>.stdout` for [`Proc::spawn_split`].
    pub fn stdout_path(&self) -> PathBuf {
        let split = self.log.with_extension("stdout");
        if split.exists() {
            split
        } else {
            self.log.clone()
        }
    }

    /// `Some(description)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            None => Some("was stopped".into()),
            Some(Ok(Some(status))) => Some(format!("exited with {status}")),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(format!("cannot be waited for: {e}")),
        }
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        if matches!(child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        self.dir.remove_pid(pid);
    }

    /// SIGKILL at once: a crash, for fault tests.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            self.dir.remove_pid(pid);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The last `lines` lines of a file (reads at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `check` every `every` until it says ready, or fails naming `what` it waited for.
/// `check` returns `Err` to give up at once (e.g. the process exited).
pub fn wait_for(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Result<(), EnvError> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(detail) => {
                return Err(EnvError::Failed {
                    what: what.to_owned(),
                    detail,
                });
            }
        }
        if start.elapsed() >= timeout {
            return Err(EnvError::Timeout {
                what: what.to_owned(),
                waited: timeout,
                detail: String::new(),
            });
        }
        thread::sleep(every);
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; a start that then finds it taken
/// retries with another).
pub fn free_port() -> Result<u16, EnvError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| EnvError::io("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| EnvError::io("finding a free port", e))
}

/// Stops what a killed run left behind under `base`: every environment whose owner process
/// is gone has its recorded processes (still naming that environment in their command line)
/// killed and its directory removed.
pub fn reap_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(owner) = fs::read_to_string(dir.join("owner"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let pids = fs::read_to_string(dir.join("pids")).unwrap_or_default();
        let needle = dir.to_string_lossy().into_owned();
        for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                eprintln!(
                    "testenv: stopping pid {pid} left by a killed run in {}",
                    dir.display()
                );
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        node_down(&dir);
        // A mount left there (a pod's volume can be a bind mount of a host directory) must
        // not be deleted through.
        if let Some(mount) = mount_under(&dir) {
            eprintln!(
                "testenv: leaving {} in place: {mount} is still mounted there",
                dir.display()
            );
            continue;
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Tears down the node of the environment in `dir`, if it has one (see `node-down.sh`).
fn node_down(dir: &Path) {
    if dir.join("node.env").exists() {
        let _ = Command::new("bash")
            .arg(crate::workspace_dir().join("e2e/tools/node-down.sh"))
            .arg(dir)
            .arg("all")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A mount point at or under `dir`, if any.
pub fn mount_under(dir: &Path) -> Option<String> {
    let dir = dir.to_string_lossy();
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    crate::node::mount_points()
        .into_iter()
        .find(|m| *m == dir || m.starts_with(&prefix))
}
