//! A real ZooKeeper (Debian's `zookeeper` package, 3.8) on free loopback ports: one
//! standalone server, or a three-node ensemble for tests that kill a member. For a cluster
//! with a node it runs inside the node's network namespace, where pods reach it, and the
//! host reaches it through a loopback forward on the same port number.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    EnvError,
    node::{Forward, Netns},
    procs::{EnvDir, Proc, free_port, wait_for},
};

const JAR: &str = "/usr/share/java/zookeeper.jar";
const CONF_DIR: &str = "/etc/zookeeper/conf";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One server of the ensemble.
#[derive(Debug)]
struct Node {
    id: usize,
    label: String,
    client_port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
    // Declared after `proc`: the server stops before its forward. Held, never read.
    _forward: Option<Forward>,
}

/// A running ZooKeeper server or ensemble.
#[derive(Debug)]
pub struct ZooKeeper {
    label: String,
    nodes: Vec<Node>,
    env: EnvDir,
    netns: Option<Netns>,
}

impl ZooKeeper {
    /// Starts `size` servers (1 = standalone) and waits until they serve. A port taken
    /// between choosing and binding is retried with new ports, twice.
    /// `label` names its directories and logs (`<label>-<id>`), so one environment can
    /// hold several.
    pub fn start(env: &EnvDir, label: &str, size: usize) -> Result<Self, EnvError> {
        Self::start_placed(env, label, size, None)
    }

    /// Starts a standalone server inside `netns`, listening on every address there (pods
    /// reach it at the node's IP), with a forward from the same port on the host's
    /// loopback, so [`ZooKeeper::connect_string`] works from the host as usual.
    pub fn start_in_netns(env: &EnvDir, label: &str, netns: &Netns) -> Result<Self, EnvError> {
        Self::start_placed(env, label, 1, Some(netns))
    }

    fn start_placed(
        env: &EnvDir,
        label: &str,
        size: usize,
        netns: Option<&Netns>,
    ) -> Result<Self, EnvError> {
        check_installed()?;
        let mut last = None;
        for attempt in 0..3 {
            match Self::try_start(env, label, size, attempt, netns) {
                Ok(zk) => return Ok(zk),
                Err(e) if e.is_port_clash() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(EnvError::Failed {
            what: "ZooKeeper".into(),
            detail: "could not start".into(),
        }))
    }

    fn try_start(
        env: &EnvDir,
        label: &str,
        size: usize,
        attempt: usize,
        netns: Option<&Netns>,
    ) -> Result<Self, EnvError> {
        let listen = if netns.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let mut ports = Vec::new();
        for _ in 0..size {
            ports.push((free_port()?, free_port()?, free_port()?));
        }
        let servers: String = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer, election))| {
                format!("server.{}=127.0.0.1:{peer}:{election}\n", i + 1)
            })
            .collect();
        let mut nodes = Vec::new();
        for (i, (client, _, _)) in ports.iter().enumerate() {
            let id = i + 1;
            let dir = env.join(format!("{label}-{id}-try{attempt}"));
            fs::create_dir_all(dir.join("data"))
                .map_err(|e| EnvError::io("creating the ZooKeeper data dir", e))?;
            fs::write(dir.join("data/myid"), format!("{id}\n"))
                .map_err(|e| EnvError::io("writing myid", e))?;
            // Short ticks keep session-expiry tests fast; forceSync=no because test data
            // need not survive a power cut (fsync dominated latency); maxClientCnxns=0 because the
            // default 60 per address breaks tests with many sessions from 127.0.0.1.
            let mut cfg = format!(
                "tickTime=500\ninitLimit=20\nsyncLimit=10\nminSessionTimeout=1000\nmaxSessionTimeout=60000\n\
                 dataDir={}\nclientPort={client}\nclientPortAddress={listen}\nmaxClientCnxns=0\n\
                 admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,stat,mntr,cons,wchs\n\
                 autopurge.purgeInterval=0\nforceSync=no\n",
                dir.join("data").display()
            );
            if size > 1 {
                cfg.push_str(&servers);
                cfg.push_str("standaloneEnabled=false\n");
            }
            fs::write(dir.join("zoo.cfg"), cfg).map_err(|e| EnvError::io("writing zoo.cfg", e))?;
            let label = format!("{label}-{id}");
            let forward = match netns {
                Some(ns) => Some(ns.forward(env, &label, *client, ("127.0.0.1", *client))?),
                None => None,
            };
            nodes.push(Node {
                id,
                label,
                client_port: *client,
                dir,
                proc: None,
                _forward: forward,
            });
        }
        let mut zk = Self {
            label: label.to_owned(),
            nodes,
            env: env.clone(),
            netns: netns.cloned(),
        };
        for i in 0..size {
            zk.spawn_node(i)?;
        }
        for i in 0..size {
            zk.wait_serving(i)?;
        }
        Ok(zk)
    }

    fn spawn_node(&mut self, index: usize) -> Result<(), EnvError> {
        let node = &mut self.nodes[index];
        let mut cmd = match &self.netns {
            Some(ns) => ns.command("java"),
            None => Command::new("java"),
        };
        cmd.args([
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.root.logger=INFO,CONSOLE",
            "-Dzookeeper.console.threshold=INFO",
        ])
        .arg(format!("-Dzookeeper.log.dir={}", node.dir.display()))
        .arg("-cp")
        .arg(format!("{CONF_DIR}:{JAR}"))
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(node.dir.join("zoo.cfg"));
        node.proc = Some(Proc::spawn(&node.label, cmd, &self.env)?);
        Ok(())
    }

    fn wait_serving(&mut self, index: usize) -> Result<(), EnvError> {
        let node = &mut self.nodes[index];
        let port = node.client_port;
        let what = format!("ZooKeeper server {} to serve on 127.0.0.1:{port}", node.id);
        let proc = node.proc.as_mut();
        let result = match proc {
            None => {
                return Err(EnvError::Failed {
                    what,
                    detail: "it is stopped".into(),
                });
            }
            Some(proc) => wait_for(&what, START_TIMEOUT, Duration::from_millis(100), || {
                if let Some(how) = proc.exited() {
                    return Err(how);
                }
                Ok(four_letter(port, "srvr").is_ok_and(|r| r.contains("Mode: ")))
            }),
        };
        result.map_err(|e| {
            let tail = self.nodes[index]
                .proc
                .as_ref()
                .map(|p| p.log_tail(30))
                .unwrap_or_default();
            e.with_log(&self.nodes[index].label, &tail)
        })
    }

    /// `host:port,host:port` of every server (stopped ones included, as a client would
    /// be configured).
    pub fn connect_string(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The connect string as pods see it (the node's IP), when the server runs inside a
    /// node's network namespace.
    pub fn connect_string_for_pods(&self) -> Option<String> {
        let netns = self.netns.as_ref()?;
        Some(
            self.nodes
                .iter()
                .map(|n| format!("{}:{}", netns.node_ip(), n.client_port))
                .collect::<Vec<_>>()
                .join(","),
        )
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    pub fn client_port(&self, index: usize) -> u16 {
        self.nodes[index].client_port
    }

    /// Stops server `index` (SIGTERM).
    pub fn stop(&mut self, index: usize) {
        if let Some(mut p) = self.nodes[index].proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Kills server `index` (SIGKILL).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut p) = self.nodes[index].proc.take() {
            p.kill();
        }
    }

    /// Starts server `index` again on the same port and data, and waits until it serves.
    pub fn restart(&mut self, index: usize) -> Result<(), EnvError> {
        self.stop(index);
        self.spawn_node(index)?;
        self.wait_serving(index)
    }

    /// Whether server `index` answers `ruok`.
    pub fn is_serving(&self, index: usize) -> bool {
        four_letter(self.nodes[index].client_port, "ruok").is_ok_and(|r| r == "imok")
    }

    /// The server's log, for failure messages.
    pub fn log_tail(&self, index: usize, lines: usize) -> String {
        crate::procs::log_tail(
            &self
                .env
                .join("logs")
                .join(format!("{}.log", self.nodes[index].label)),
            lines,
        )
    }

    pub fn data_dir(&self, index: usize) -> &Path {
        &self.nodes[index].dir
    }
}

fn check_installed() -> Result<(), EnvError> {
    if !Path::new(JAR).exists() {
        return Err(EnvError::Missing {
            what: format!("ZooKeeper ({JAR})"),
            hint: "apt-get install zookeeper (or run `make deps`)".into(),
        });
    }
    if Command::new("java").arg("-version").output().is_err() {
        return Err(EnvError::Missing {
            what: "java".into(),
            hint: "apt-get install default-jre-headless (or run `make deps`)".into(),
        });
    }
    Ok(())
}

/// Sends a ZooKeeper four-letter command and returns the reply.
pub fn four_letter(port: u16, command: &str) -> std::io::Result<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(command.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// A client session to `connect`, retried (5 s an attempt) for up to 30 s while the
/// server comes up.
pub async fn connect(connect: &str) -> Result<zookeeper_client::Client, EnvError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            zookeeper_client::Client::connect(connect),
        )
        .await
        {
            Ok(Ok(c)) => return Ok(c),
            other if std::time::Instant::now() > deadline => {
                return Err(EnvError::Failed {
                    what: format!("connecting to ZooKeeper at {connect} for 30s"),
                    detail: format!("{other:?}"),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
