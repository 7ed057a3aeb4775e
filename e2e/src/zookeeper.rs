//! A real ZooKeeper (Debian's `zookeeper` package, 3.8) on free loopback ports: one
//! standalone server, or a three-node ensemble for tests that kill a member. For a cluster
//! with a node it runs inside the node's network namespace, where pods reach it, and the
//! host reaches it through a loopback forward on the same port number.
//!
//! [`ZooKeeper::start_tls`] adds a `secureClientPort` (Netty, PEM key and trust stores)
//! with a CA and certificates made for the test ([`ZkPki`]); the plain port stays, for
//! the test's own client.

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
/// Jars the Netty connection factory (TLS) needs that Debian's zookeeper.jar manifest
/// does not list, and a logger binding so a TLS server's log says why it refused a client.
const TLS_JARS: &str = "/usr/share/java/netty-codec.jar:/usr/share/java/slf4j-simple.jar";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A CA made for the test, a server certificate it signed for 127.0.0.1 and localhost
/// (key and certificate in one PEM file, ZooKeeper's PEM key store), a client certificate
/// for mutual TLS, and a second CA that signed neither, for the wrong-CA case. The files
/// are in `dir`.
#[derive(Clone, Debug)]
pub struct ZkPki {
    pub ca: PathBuf,
    pub server: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub wrong_ca: PathBuf,
}

impl ZkPki {
    pub fn create(dir: &Path) -> Result<Self, EnvError> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let cert_err = |e: rcgen::Error| EnvError::Cert(e.to_string());
        let new_ca = |name: &str| -> Result<CertifiedIssuer<'static, KeyPair>, EnvError> {
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(cert_err)?)
                .map_err(cert_err)
        };
        let ca = new_ca("servicelog test ZooKeeper CA")?;
        let wrong = new_ca("servicelog test, another CA")?;
        let leaf = |names: Vec<String>| -> Result<(String, String), EnvError> {
            let key = KeyPair::generate().map_err(cert_err)?;
            let cert = CertificateParams::new(names)
                .map_err(cert_err)?
                .signed_by(&key, &ca)
                .map_err(cert_err)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()])?;
        let (client_cert, client_key) = leaf(vec!["servicelog-client".into()])?;
        fs::create_dir_all(dir).map_err(|e| EnvError::io("creating the TLS dir", e))?;
        let write = |name: &str, content: &str| -> Result<PathBuf, EnvError> {
            let path = dir.join(name);
            fs::write(&path, content).map_err(|e| EnvError::io("writing a TLS file", e))?;
            Ok(path)
        };
        Ok(Self {
            ca: write("ca.pem", &ca.pem())?,
            server: write("server.pem", &format!("{server_key}{server_cert}"))?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client-key.pem", &client_key)?,
            wrong_ca: write("wrong-ca.pem", &wrong.pem())?,
        })
    }
}

/// One server of the ensemble.
#[derive(Debug)]
struct Node {
    id: usize,
    label: String,
    client_port: u16,
    /// The `secureClientPort`, when started with TLS.
    secure_port: Option<u16>,
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
        Self::start_placed(env, label, size, None, None)
    }

    /// Starts a standalone server that also serves TLS on a `secureClientPort`, with the
    /// server certificate of `pki`. Client certificates are verified when presented
    /// (`ssl.clientAuth=want`): signed by `pki`'s CA or refused.
    pub fn start_tls(env: &EnvDir, label: &str, pki: &ZkPki) -> Result<Self, EnvError> {
        Self::start_placed(env, label, 1, None, Some(pki))
    }

    /// Starts a standalone server inside `netns`, listening on every address there (pods
    /// reach it at the node's IP), with a forward from the same port on the host's
    /// loopback, so [`ZooKeeper::connect_string`] works from the host as usual.
    pub fn start_in_netns(env: &EnvDir, label: &str, netns: &Netns) -> Result<Self, EnvError> {
        Self::start_placed(env, label, 1, Some(netns), None)
    }

    fn start_placed(
        env: &EnvDir,
        label: &str,
        size: usize,
        netns: Option<&Netns>,
        tls: Option<&ZkPki>,
    ) -> Result<Self, EnvError> {
        check_installed()?;
        if tls.is_some()
            && let Some(missing) = TLS_JARS.split(':').find(|jar| !Path::new(jar).exists())
        {
            return Err(EnvError::Missing {
                what: format!("{missing}, which ZooKeeper's TLS needs"),
                hint: "apt-get install libnetty-java libslf4j-java".into(),
            });
        }
        let mut last = None;
        for attempt in 0..3 {
            match Self::try_start(env, label, size, attempt, netns, tls) {
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
        tls: Option<&ZkPki>,
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
            let secure_port = match tls {
                Some(pki) => {
                    let port = free_port()?;
                    // Unknown keys become `zookeeper.*` system properties, which is where
                    // ZooKeeper reads the connection factory and its TLS settings.
                    cfg.push_str(&format!(
                        "secureClientPort={port}\nsecureClientPortAddress={listen}\n\
                         serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
                         ssl.keyStore.location={}\nssl.keyStore.type=PEM\n\
                         ssl.trustStore.location={}\nssl.trustStore.type=PEM\n\
                         ssl.clientAuth=want\n",
                        pki.server.display(),
                        pki.ca.display()
                    ));
                    Some(port)
                }
                None => None,
            };
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
                secure_port,
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
        .arg(if node.secure_port.is_some() {
            format!("{CONF_DIR}:{JAR}:{TLS_JARS}")
        } else {
            format!("{CONF_DIR}:{JAR}")
        })
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

    /// `host:port,…` of every server's `secureClientPort` (servers started with
    /// [`ZooKeeper::start_tls`]).
    pub fn secure_connect_string(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| n.secure_port)
            .map(|port| format!("127.0.0.1:{port}"))
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

    /// Server `index`'s process id, while it runs (for the bench's RSS figures).
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.nodes[index].proc.as_ref().and_then(Proc::pid)
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
