//! A real Apache Kafka broker (KRaft, one node that is broker and controller, no
//! ZooKeeper) on free loopback ports, for the Kafka sink's tests. Its jars are
//! `org.apache.kafka:kafka_2.13` and its runtime dependencies from Maven Central, fetched
//! once per version by `scripts/kafka.sh` into `~/.cache/servicelog/kafka/<version>/libs`
//! (the first [`Kafka::start`] on a machine runs it); the machine's Java 17 runs them.
//!
//! Tests get one shared broker from [`crate::TestEnv::kafka`]: started on first use in
//! the environment's directory and stopped with it. Topics are the tests' own (unique
//! names), so they can share it. A test that stops the broker ([`Kafka::stop`],
//! [`Kafka::restart`]) starts one of its own with [`Kafka::start`].
//!
//! Besides the plaintext listener ([`Kafka::bootstrap`]) the broker has a SASL_PLAINTEXT
//! one with the PLAIN mechanism ([`Kafka::sasl_bootstrap`]) that knows one user,
//! [`SASL_USER`] / [`SASL_PASSWORD`]; no authorizer, so that user may do anything.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    EnvError,
    procs::{EnvDir, Proc, free_port, wait_for},
    tools, workspace_dir,
};

/// A cold JVM formats and starts in about 4 s here; a loaded CI machine is slower.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// A cold fetch takes ~12 s here (Maven, 43 MiB); installing Maven first adds a minute.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// What the broker logs when both its controller and broker sides serve.
const READY_LINE: &str = "Kafka Server started";
/// Any 16 bytes, base64url: every broker formats its own fresh log directory.
const CLUSTER_ID: &str = "c2VydmljZWxvZ3Rlc3QxMg";
/// The one user of the SASL listener.
pub const SASL_USER: &str = "servicelog";
pub const SASL_PASSWORD: &str = "servicelog-test-secret";

/// A running single-node broker, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Kafka {
    port: u16,
    sasl_port: u16,
    dir: PathBuf,
    proc: Proc,
    started_in: Duration,
    /// What [`Kafka::restart`] runs again.
    env: EnvDir,
    name: String,
    classpath: String,
    properties: PathBuf,
}

impl Kafka {
    /// Formats a log directory under `env` (`<label>/`) and starts a broker on free
    /// loopback ports, waiting (bounded, named on timeout) until it serves. A port taken
    /// between choosing and binding is retried with new ports, twice.
    ///
    /// Notable errors: [`EnvError::Missing`] when Java is not installed or the fetch
    /// failed; [`EnvError::Timeout`] / [`EnvError::Failed`] with the broker's last log
    /// lines when it does not come up.
    pub fn start(env: &EnvDir, label: &str) -> Result<Self, EnvError> {
        let started = Instant::now();
        let libs = locate()?;
        let classpath = classpath(&libs)?;
        let mut last = None;
        for attempt in 0..3 {
            match Self::try_start(env, label, attempt, &classpath, started) {
                Ok(kafka) => return Ok(kafka),
                Err(e) if e.is_port_clash() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(EnvError::Failed {
            what: "Kafka".into(),
            detail: "could not start".into(),
        }))
    }

    fn try_start(
        env: &EnvDir,
        label: &str,
        attempt: usize,
        classpath: &str,
        started: Instant,
    ) -> Result<Self, EnvError> {
        let (port, controller_port, sasl_port) = (free_port()?, free_port()?, free_port()?);
        let name = if attempt == 0 {
            label.to_owned()
        } else {
            format!("{label}-try{attempt}")
        };
        let dir = env.join(&name);
        fs::create_dir_all(&dir).map_err(|e| EnvError::io("creating the Kafka dir", e))?;
        let properties = dir.join("server.properties");
        // Replication factors of 1 for the internal topics (the defaults of 3 cannot be
        // met by one broker); no rebalance delay so a consumer group forms at once;
        // flushes left to the OS as in production.
        let config = format!(
            "process.roles=broker,controller\nnode.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{controller_port}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port},\
             SASL_PLAINTEXT://127.0.0.1:{sasl_port}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}\n\
             controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,\
             SASL_PLAINTEXT:SASL_PLAINTEXT\n\
             sasl.enabled.mechanisms=PLAIN\n\
             listener.name.sasl_plaintext.plain.sasl.jaas.config=\
             org.apache.kafka.common.security.plain.PlainLoginModule required \
             user_{SASL_USER}=\"{SASL_PASSWORD}\";\n\
             log.dirs={}\nnum.partitions=1\nauto.create.topics.enable=false\n\
             offsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\nshare.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n",
            dir.join("data").display()
        );
        fs::write(&properties, config).map_err(|e| EnvError::io("writing server.properties", e))?;

        let format = java(classpath)
            .args(["kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c"])
            .arg(&properties)
            .output()
            .map_err(|e| EnvError::io("running Kafka's StorageTool", e))?;
        if !format.status.success() {
            return Err(EnvError::Failed {
                what: format!("formatting Kafka's log directory in {}", dir.display()),
                detail: String::from_utf8_lossy(&format.stderr).into_owned(),
            });
        }

        let proc = run(env, &name, classpath, &properties, port)?;
        Ok(Self {
            port,
            sasl_port,
            dir,
            proc,
            started_in: started.elapsed(),
            env: env.clone(),
            name,
            classpath: classpath.to_owned(),
            properties,
        })
    }

    /// Stops the broker (SIGTERM, SIGKILL after 15 s), keeping its data: clients see
    /// it go away until [`Kafka::restart`].
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(15));
    }

    /// Starts the stopped broker again on the same ports and data, waiting until it
    /// serves.
    ///
    /// Notable errors: as for [`Kafka::start`]; a port taken meanwhile fails it.
    pub fn restart(&mut self) -> Result<(), EnvError> {
        self.stop();
        self.proc = run(
            &self.env,
            &self.name,
            &self.classpath,
            &self.properties,
            self.port,
        )?;
        Ok(())
    }

    /// `127.0.0.1:PORT`, the bootstrap address clients are given.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The SASL_PLAINTEXT listener (mechanism PLAIN, [`SASL_USER`] / [`SASL_PASSWORD`]).
    pub fn sasl_bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.sasl_port)
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// How long [`Kafka::start`] took, the fetch (when it ran) included.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The broker's resident memory now, from `/proc/<pid>/status`.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.proc.pid()?)).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// The directory of its configuration and log segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's last log lines, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        // A controlled shutdown of one node takes a second or two; SIGKILL after 15 s.
        self.proc.stop(Duration::from_secs(15));
    }
}

/// Runs the broker of `properties` and waits (bounded, named on timeout) until it logs
/// [`READY_LINE`] once more than its log held before (a restart appends to it).
fn run(
    env: &EnvDir,
    name: &str,
    classpath: &str,
    properties: &Path,
    port: u16,
) -> Result<Proc, EnvError> {
    let log = env.join("logs").join(format!("{name}.log"));
    let ready = |text: &str| text.matches(READY_LINE).count();
    let before = fs::read_to_string(&log).map_or(0, |text| ready(&text));
    let mut cmd = java(classpath);
    cmd.arg("kafka.Kafka").arg(properties);
    let mut proc = Proc::spawn(name, cmd, env)?;
    let what = format!("the Kafka broker to log {READY_LINE:?} (127.0.0.1:{port})");
    wait_for(&what, START_TIMEOUT, Duration::from_millis(100), || {
        if let Some(how) = proc.exited() {
            return Err(how);
        }
        Ok(fs::read_to_string(&log).is_ok_and(|text| ready(&text) > before))
    })
    .map_err(|e| e.with_log(name, &proc.log_tail(30)))?;
    Ok(proc)
}

/// A small heap (the broker needs ~100 MiB for tests) and a JVM that starts fast.
fn java(classpath: &str) -> Command {
    let mut cmd = Command::new("java");
    cmd.args([
        "-Xms64m",
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true",
        "-cp",
        classpath,
    ]);
    cmd
}

/// The jars' directory, fetched by `scripts/kafka.sh` when not cached yet (it serialises
/// concurrent fetches and checks every file's sha1).
fn locate() -> Result<PathBuf, EnvError> {
    if Command::new("java").arg("-version").output().is_err() {
        return Err(EnvError::Missing {
            what: "java, which runs the Kafka broker".into(),
            hint: "apt-get install default-jre-headless (or run `make deps`)".into(),
        });
    }
    let version = tools::version("KAFKA_VERSION").unwrap_or("unknown");
    let cache = tools::cache_dir().join("kafka").join(version);
    if cache.join("complete").is_file() {
        return Ok(cache.join("libs"));
    }
    let script = workspace_dir().join("scripts/kafka.sh");
    fs::create_dir_all(&cache).map_err(|e| EnvError::io("creating the Kafka cache dir", e))?;
    let log_path = cache.join("fetch.log");
    let log = fs::File::create(&log_path)
        .map_err(|e| EnvError::io(format!("creating {}", log_path.display()), e))?;
    let mut fetch = Command::new("bash")
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| EnvError::io(format!("running {}", script.display()), e))?;
    let what = format!("scripts/kafka.sh to fetch Apache Kafka {version} from Maven Central");
    let waited = wait_for(
        &what,
        FETCH_TIMEOUT,
        Duration::from_millis(200),
        || match fetch.try_wait() {
            Ok(None) => Ok(false),
            Ok(Some(status)) if status.success() => Ok(true),
            Ok(Some(status)) => Err(format!("it exited with {status}")),
            Err(e) => Err(format!("it cannot be waited for: {e}")),
        },
    );
    if waited.is_err() {
        let _ = fetch.kill();
        let _ = fetch.wait();
    }
    waited.map_err(|e| e.with_log("scripts/kafka.sh", &crate::procs::log_tail(&log_path, 20)))?;
    if !cache.join("complete").is_file() {
        return Err(EnvError::Missing {
            what: format!("Apache Kafka {version} in {}", cache.display()),
            hint: format!(
                "scripts/kafka.sh did not complete; see {}",
                log_path.display()
            ),
        });
    }
    Ok(cache.join("libs"))
}

fn classpath(libs: &Path) -> Result<String, EnvError> {
    let mut jars: Vec<String> = fs::read_dir(libs)
        .map_err(|e| EnvError::io(format!("listing {}", libs.display()), e))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jar"))
        .map(|path| path.display().to_string())
        .collect();
    jars.sort();
    Ok(jars.join(":"))
}
