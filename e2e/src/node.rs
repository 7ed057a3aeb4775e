//! A real one-node cluster for `make cluster` and the node tests: containerd, runc and the
//! CNI plugins from Debian, kubelet, kube-scheduler, kube-controller-manager and kube-proxy
//! built from `k8s.io/kubernetes`, and CoreDNS from its module, all inside a network
//! namespace of their own with the control plane and ZooKeeper (see
//! [`crate::TestEnv::start_cluster`]).
//!
//! Nothing changes the host's network: the namespace holds a veth pair (both ends) that
//! carries the node's IP, the pods' bridge, and kube-proxy's rules. The host reaches the
//! API server and ZooKeeper through loopback forwards ([`Forward`]). What lives outside the
//! namespace — the pods' cgroups, their mounts, their network namespaces, the sysctls the
//! kubelet sets — is recorded in `<env>/node.env` and removed by `e2e/tools/node-down.sh`,
//! on drop or by the watchdog when the owning process died.

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{
    EnvError,
    control_plane::{ControlPlane, NETNS_APISERVER_PORT},
    procs::{EnvDir, Proc, wait_for},
    tools::Tools,
    workspace_dir,
};

/// The node's name (its `Node` object and its hostname for the kubelet and kube-proxy).
pub const NODE_NAME: &str = "servicelog-node";
/// The node's IP inside its namespace: where pods reach the API server and ZooKeeper.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// The pods' subnet on the node's bridge (host-local IPAM).
pub const POD_SUBNET: &str = "10.244.0.0/24";
/// The cluster's pod range, as kube-proxy uses it to tell pod traffic from other traffic.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The Service range, the same as the control plane's `--service-cluster-ip-range`.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kube-dns` Service IP that the kubelet writes into pods' resolv.conf.
pub const DNS_SERVICE_IP: &str = "10.96.0.10";
/// The sandbox image every pod starts with (a static pause binary).
pub const PAUSE_IMAGE: &str = "servicelog.test/pause:1";
/// A static busybox with its applets (sh, sleep, nslookup, wget, httpd, ...), for tests.
pub const BUSYBOX_IMAGE: &str = "servicelog.test/busybox:1";

const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(120);
const COMPONENT_TIMEOUT: Duration = Duration::from_secs(60);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the machine's values of [`KUBELET_SYSCTLS`] are kept while any node runs
/// (`sysctls`, written by the first node) with one file per running node (`users/<netns>`,
/// holding its environment's directory); the last node's teardown restores the values.
/// Machine-wide because the settings are: a node started while another runs would
/// otherwise record the first kubelet's values as the ones to restore.
const SYSCTL_STATE: &str = "/run/servicelog-node";
/// Kernel sysctls the kubelet sets (`setupKernelTunables`); restored at teardown.
const KUBELET_SYSCTLS: [&str; 6] = [
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
];

/// A network namespace of the environment: a handle to start processes in it and to
/// forward host loopback ports into it. It is deleted by [`NetnsGuard`].
#[derive(Clone, Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates the namespace `<name>` with loopback up, the node's IP on one end of a veth
    /// pair whose both ends stay inside (this kernel has no `dummy` links), a default route
    /// through it (so locally started connections to Service IPs have a route for
    /// kube-proxy's DNAT), forwarding, and bridged traffic through iptables. Records it in
    /// `<env>/node.env` first, so a killed run's teardown finds it.
    pub fn create(env: &EnvDir, name: &str) -> Result<NetnsGuard, EnvError> {
        check_root()?;
        let run_netns_mounted = mounted("/run/netns");
        record(
            env,
            &[
                ("NETNS", name.to_owned()),
                (
                    "RUN_NETNS_WAS_UNMOUNTED",
                    if run_netns_mounted { "" } else { "1" }.to_owned(),
                ),
            ],
        )?;
        run("ip", &["netns", "add", name])?;
        let guard = NetnsGuard {
            netns: Self {
                name: name.to_owned(),
                path: PathBuf::from("/run/netns").join(name),
            },
            env: env.path().to_owned(),
            run_netns_was_unmounted: !run_netns_mounted,
        };
        let ip = format!("{NODE_IP}/24");
        for args in [
            &[
                "-n", name, "link", "add", "sl0", "type", "veth", "peer", "name", "sl1",
            ][..],
            &["-n", name, "addr", "add", &ip, "dev", "sl0"],
            &["-n", name, "link", "set", "lo", "up"],
            &["-n", name, "link", "set", "sl0", "up"],
            &["-n", name, "link", "set", "sl1", "up"],
            &["-n", name, "route", "add", "default", "dev", "sl0"],
        ] {
            run("ip", args)?;
        }
        // Per-namespace sysctls: these change nothing outside it.
        let mut sysctl = guard.netns.command("sysctl");
        sysctl.args([
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            "net.bridge.bridge-nf-call-iptables=1",
        ]);
        check_output("sysctl in the node's namespace", sysctl)?;
        Ok(guard)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node's IP inside the namespace.
    pub fn node_ip(&self) -> Ipv4Addr {
        NODE_IP
    }

    /// `program` started inside the namespace. `nsenter --net`, not `ip netns exec`: the
    /// latter also gives the process a mount namespace of its own, and the kubelet's volume
    /// mounts would then be invisible to runc.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Forwards `127.0.0.1:<host_port>` on the host to `target` inside the namespace: a
    /// socat in the namespace serves a Unix socket in `<env>/fwd/` (Unix sockets live in
    /// the file system, not in a network namespace) and a socat on the host listens on the
    /// port and connects each client to that socket.
    pub fn forward(
        &self,
        env: &EnvDir,
        name: &str,
        host_port: u16,
        target: (&str, u16),
    ) -> Result<Forward, EnvError> {
        let dir = env.join("fwd");
        fs::create_dir_all(&dir).map_err(|e| EnvError::io("creating the forward dir", e))?;
        let socket = dir.join(format!("{name}.sock"));
        let mut cmd = self.command("socat");
        cmd.arg(format!(
            "UNIX-LISTEN:{},fork,unlink-early,mode=600",
            socket.display()
        ))
        .arg(format!("TCP:{}:{}", target.0, target.1));
        let mut inner = Proc::spawn(&format!("fwd-{name}-in"), cmd, env)?;
        let what = format!("the forward's socket {} in the namespace", socket.display());
        wait_for(&what, FORWARD_TIMEOUT, Duration::from_millis(20), || {
            if let Some(how) = inner.exited() {
                return Err(how);
            }
            Ok(socket.exists())
        })
        .map_err(|e| e.with_log("socat", &inner.log_tail(10)))?;

        let mut cmd = Command::new("socat");
        cmd.arg(format!(
            "TCP-LISTEN:{host_port},bind=127.0.0.1,fork,reuseaddr"
        ))
        .arg(format!("UNIX-CONNECT:{}", socket.display()));
        let mut outer = Proc::spawn(&format!("fwd-{name}"), cmd, env)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], host_port));
        let what = format!("the forward from 127.0.0.1:{host_port} to {name} to listen");
        wait_for(&what, FORWARD_TIMEOUT, Duration::from_millis(20), || {
            if let Some(how) = outer.exited() {
                return Err(how);
            }
            Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        })
        .map_err(|e| e.with_log("socat", &outer.log_tail(10)))?;
        Ok(Forward {
            _outer: outer,
            _inner: inner,
            host_port,
        })
    }

    /// Whether `http://<addr><path>` answers 200 to a GET from inside the namespace. socat
    /// speaks the HTTP/1.0 request: Debian's static busybox `wget` crashes here.
    pub fn http_ok(&self, addr: &str, path: &str) -> bool {
        use std::io::Write;
        let mut cmd = self.command("socat");
        cmd.args(["-T", "2", "-", &format!("TCP:{addr}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let Ok(mut child) = cmd.spawn() else {
            return false;
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = write!(stdin, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        }
        child.wait_with_output().is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .is_some_and(|status| status.split(' ').nth(1) == Some("200"))
        })
    }
}

/// A loopback port of the host forwarded into a namespace; stopped on drop.
#[derive(Debug)]
pub struct Forward {
    // The host side first: no client is accepted once the namespace side is gone.
    _outer: Proc,
    _inner: Proc,
    host_port: u16,
}

impl Forward {
    pub fn host_port(&self) -> u16 {
        self.host_port
    }
}

/// Owns a [`Netns`]: on drop, stops whatever still runs in it and deletes it (and undoes
/// `/run/netns` becoming a mount point, when it was not one before and is now empty).
#[derive(Debug)]
pub struct NetnsGuard {
    netns: Netns,
    env: PathBuf,
    run_netns_was_unmounted: bool,
}

impl NetnsGuard {
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(workspace_dir().join("e2e/tools/node-down.sh"))
            .arg(&self.env)
            .arg("all")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns.name])
            .stderr(Stdio::null())
            .status();
        let empty = fs::read_dir("/run/netns").is_ok_and(|mut d| d.next().is_none());
        if self.run_netns_was_unmounted && empty && mounted("/run/netns") {
            let _ = Command::new("umount").arg("/run/netns").status();
            let _ = fs::remove_dir("/run/netns");
        }
    }
}

/// The node's binaries (`e2e/tools/build.sh node`): kubelet, kube-scheduler,
/// kube-controller-manager, kube-proxy, coredns, pause.
#[derive(Clone, Debug)]
pub struct NodeTools {
    bin: PathBuf,
}

impl NodeTools {
    /// `SERVICELOG_NODE_TOOLS_BIN` if set, else the cache directory named after
    /// `NODE_TOOLS_ID` in `e2e/tools/VERSIONS`.
    ///
    /// Notable errors: [`EnvError::Missing`] naming the command that builds them.
    pub fn locate() -> Result<Self, EnvError> {
        let bin = match std::env::var_os("SERVICELOG_NODE_TOOLS_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => crate::tools::cache_dir()
                .join("tools")
                .join(crate::tools::version("NODE_TOOLS_ID").unwrap_or("unknown"))
                .join("bin"),
        };
        for name in [
            "kubelet",
            "kube-scheduler",
            "kube-controller-manager",
            "kube-proxy",
            "coredns",
            "pause",
        ] {
            if !bin.join(name).is_file() {
                return Err(EnvError::Missing {
                    what: format!("{name} in {}", bin.display()),
                    hint:
                        "run `make cluster-tools` (builds the node's binaries once, ~15 min cold)"
                            .into(),
                });
            }
        }
        for (program, package) in [
            ("containerd", "containerd"),
            ("runc", "runc"),
            ("ctr", "containerd"),
            ("socat", "socat"),
            ("nsenter", "util-linux"),
            ("iptables", "iptables"),
            ("conntrack", "conntrack"),
            ("busybox", "busybox-static"),
        ] {
            if !on_path(program) {
                return Err(EnvError::Missing {
                    what: program.into(),
                    hint: format!(
                        "apt-get install {package} (or `bash scripts/deps.sh node`, which `make cluster` runs)"
                    ),
                });
            }
        }
        if !Path::new("/usr/lib/cni/bridge").exists() {
            return Err(EnvError::Missing {
                what: "the CNI plugins in /usr/lib/cni".into(),
                hint:
                    "apt-get install containernetworking-plugins (or `bash scripts/deps.sh node`)"
                        .into(),
            });
        }
        Ok(Self { bin })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

/// The node's processes. Field order is drop order: the components that act on the node
/// first, then the kubelet, then containerd; the pods themselves go in `teardown`.
#[derive(Debug)]
pub struct Node {
    coredns: Proc,
    kube_proxy: Proc,
    scheduler: Proc,
    controller_manager: Proc,
    kubelet: Proc,
    containerd: Proc,
    // Held for its drop, after every process above has stopped.
    _teardown: Teardown,
    dir: PathBuf,
    netns: Netns,
    containerd_sock: PathBuf,
    started_in: Duration,
}

impl Node {
    /// Starts the node inside `netns` against `control_plane` (already running there),
    /// imports the test images, and waits until the `Node` is Ready, the `default`
    /// ServiceAccount exists (the controller-manager works), CoreDNS is ready and
    /// kube-proxy is healthy. Each wait is bounded and named on timeout, with the
    /// component's log.
    pub fn start(
        env: &EnvDir,
        tools: &Tools,
        node_tools: &NodeTools,
        netns: &Netns,
        control_plane: &ControlPlane,
    ) -> Result<Self, EnvError> {
        let started = Instant::now();
        let dir = env.join("node");
        for sub in ["cni/net.d", "cni/ipam", "images", "kubelet", "pod-logs"] {
            fs::create_dir_all(dir.join(sub))
                .map_err(|e| EnvError::io(format!("creating {}", dir.join(sub).display()), e))?;
        }
        let containerd_sock = dir.join("containerd.sock");
        // The namespace's name is unique to this environment: it names the cgroup too.
        let cgroup = netns.name().to_owned();
        let created_var_log_containers = !Path::new("/var/log/containers").exists();
        let state = vec![
            ("CGROUP".to_owned(), cgroup.clone()),
            (
                "CONTAINERD_SOCK".to_owned(),
                containerd_sock.display().to_string(),
            ),
            (
                "CREATED_VAR_LOG_CONTAINERS".to_owned(),
                if created_var_log_containers { "1" } else { "" }.to_owned(),
            ),
        ];
        record(env, &state)?;
        register_sysctl_user(netns.name(), env.path())?;
        // From here on, a failed start is cleaned up like a stopped node.
        let teardown = Teardown {
            env: env.path().to_owned(),
        };
        create_cgroup(&cgroup)?;

        let kubeconfig = dir.join("kubeconfig");
        control_plane.write_kubeconfig_for(
            &kubeconfig,
            &format!("https://{}:{NETNS_APISERVER_PORT}", netns.node_ip()),
        )?;
        let pki = control_plane.pki_dir();

        let containerd = start_containerd(env, netns, &dir, &containerd_sock)?;
        load_test_images(node_tools, &dir, &containerd_sock)
            .map_err(|e| e.with_log("containerd", &containerd.log_tail(20)))?;

        write_cni_config(&dir)?;
        let kubelet = {
            let config = kubelet_config(&dir, &containerd_sock, &cgroup, pki);
            let path = dir.join("kubelet.json");
            write_json(&path, &config)?;
            let mut cmd = netns.command(node_tools.path("kubelet"));
            cmd.arg(format!("--config={}", path.display()))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!("--hostname-override={NODE_NAME}"))
                .arg(format!("--node-ip={}", netns.node_ip()))
                .arg(format!("--root-dir={}", dir.join("kubelet").display()))
                .arg(format!("--cert-dir={}", dir.join("kubelet/pki").display()))
                .arg("--v=1");
            Proc::spawn("kubelet", cmd, env)?
        };
        let kc = format!("{}", kubeconfig.display());
        let controller_manager = {
            let mut cmd = netns.command(node_tools.path("kube-controller-manager"));
            cmd.arg(format!("--kubeconfig={kc}"))
                .arg(format!("--authentication-kubeconfig={kc}"))
                .arg(format!("--authorization-kubeconfig={kc}"))
                .arg("--leader-elect=false")
                .arg("--bind-address=127.0.0.1")
                .arg(format!(
                    "--service-account-private-key-file={}",
                    pki.join("sa.key").display()
                ))
                .arg(format!("--root-ca-file={}", pki.join("ca.crt").display()))
                .arg("--use-service-account-credentials=false")
                .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
                .arg(format!("--cluster-cidr={CLUSTER_CIDR}"))
                .arg("--v=1");
            Proc::spawn("kube-controller-manager", cmd, env)?
        };
        let scheduler = {
            let mut cmd = netns.command(node_tools.path("kube-scheduler"));
            cmd.arg(format!("--kubeconfig={kc}"))
                .arg(format!("--authentication-kubeconfig={kc}"))
                .arg(format!("--authorization-kubeconfig={kc}"))
                .arg("--leader-elect=false")
                .arg("--bind-address=127.0.0.1")
                .arg("--v=1");
            Proc::spawn("kube-scheduler", cmd, env)?
        };
        let kube_proxy = {
            let mut cmd = netns.command(node_tools.path("kube-proxy"));
            cmd.arg(format!("--kubeconfig={kc}"))
                .arg(format!("--hostname-override={NODE_NAME}"))
                .arg(format!("--cluster-cidr={CLUSTER_CIDR}"))
                .arg("--proxy-mode=iptables")
                // Zero: kube-proxy leaves the (host-wide) conntrack table settings alone.
                .arg("--conntrack-max-per-core=0")
                .arg("--conntrack-min=0")
                .arg("--conntrack-tcp-timeout-established=0")
                .arg("--conntrack-tcp-timeout-close-wait=0")
                .arg("--metrics-bind-address=127.0.0.1:10249")
                .arg("--healthz-bind-address=127.0.0.1:10256")
                .arg("--v=1");
            Proc::spawn("kube-proxy", cmd, env)?
        };
        let coredns = {
            let corefile = dir.join("Corefile");
            fs::write(&corefile, corefile_text(&kubeconfig))
                .map_err(|e| EnvError::io("writing the Corefile", e))?;
            let mut cmd = netns.command(node_tools.path("coredns"));
            cmd.arg("-conf").arg(&corefile);
            Proc::spawn("coredns", cmd, env)?
        };
        let mut node = Self {
            coredns,
            kube_proxy,
            scheduler,
            controller_manager,
            kubelet,
            containerd,
            _teardown: teardown,
            dir,
            netns: netns.clone(),
            containerd_sock,
            started_in: Duration::ZERO,
        };
        node.wait_ready(tools, control_plane.kubeconfig())?;
        node.started_in = started.elapsed();
        Ok(node)
    }

    fn wait_ready(&mut self, tools: &Tools, kubeconfig: &Path) -> Result<(), EnvError> {
        let kubectl = |args: &[&str]| {
            Command::new(tools.path("kubectl"))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(args)
                .arg("--request-timeout=5s")
                .output()
        };
        let what = format!("node {NODE_NAME} to be Ready");
        let kubelet = &mut self.kubelet;
        let containerd = &mut self.containerd;
        wait_for(
            &what,
            NODE_READY_TIMEOUT,
            Duration::from_millis(250),
            || {
                if let Some(how) = kubelet.exited() {
                    return Err(format!("the kubelet {how}"));
                }
                if let Some(how) = containerd.exited() {
                    return Err(format!("containerd {how}"));
                }
                let out = kubectl(&[
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ]);
                Ok(out.is_ok_and(|o| o.stdout == b"True"))
            },
        )
        .map_err(|e| {
            e.with_log("kubelet", &self.kubelet.log_tail(30))
                .with_log("containerd", &self.containerd.log_tail(10))
        })?;

        let cm = &mut self.controller_manager;
        wait_for(
            "the controller-manager to create the default ServiceAccount",
            COMPONENT_TIMEOUT,
            Duration::from_millis(250),
            || {
                if let Some(how) = cm.exited() {
                    return Err(format!("kube-controller-manager {how}"));
                }
                Ok(
                    kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                        .is_ok_and(|o| o.status.success()),
                )
            },
        )
        .map_err(|e| {
            e.with_log(
                "kube-controller-manager",
                &self.controller_manager.log_tail(30),
            )
        })?;

        apply_dns_service(tools, kubeconfig)?;
        let netns = self.netns.clone();
        let coredns = &mut self.coredns;
        wait_for(
            "CoreDNS to be ready (127.0.0.1:8181/ready in the node's namespace)",
            COMPONENT_TIMEOUT,
            Duration::from_millis(250),
            || {
                if let Some(how) = coredns.exited() {
                    return Err(format!("coredns {how}"));
                }
                Ok(netns.http_ok("127.0.0.1:8181", "/ready"))
            },
        )
        .map_err(|e| e.with_log("coredns", &self.coredns.log_tail(30)))?;

        let proxy = &mut self.kube_proxy;
        wait_for(
            "kube-proxy to be healthy (127.0.0.1:10256/healthz in the node's namespace)",
            COMPONENT_TIMEOUT,
            Duration::from_millis(250),
            || {
                if let Some(how) = proxy.exited() {
                    return Err(format!("kube-proxy {how}"));
                }
                Ok(netns.http_ok("127.0.0.1:10256", "/healthz"))
            },
        )
        .map_err(|e| e.with_log("kube-proxy", &self.kube_proxy.log_tail(30)))?;

        let scheduler = &mut self.scheduler;
        if let Some(how) = scheduler.exited() {
            return Err(EnvError::Failed {
                what: "kube-scheduler".into(),
                detail: how,
            }
            .with_log("kube-scheduler", &self.scheduler.log_tail(30)));
        }
        Ok(())
    }

    /// Imports a docker-archive (`docker save`) or OCI archive into the node's containerd,
    /// where the kubelet finds it (`k8s.io` namespace) under the references it carries.
    pub fn load_image(&self, archive: &Path) -> Result<(), EnvError> {
        import_image(&self.containerd_sock, archive)
    }

    /// containerd's socket (for `ctr -a`).
    pub fn containerd_socket(&self) -> &Path {
        &self.containerd_sock
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The node's working directory (containerd's root and state, the kubelet's root).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`Node::start`] took, from containerd's start to the last readiness check.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The resident memory (VmRSS, bytes) of each node component, for the docs' figures.
    pub fn memory(&self) -> Vec<(&str, u64)> {
        [
            &self.containerd,
            &self.kubelet,
            &self.controller_manager,
            &self.scheduler,
            &self.kube_proxy,
            &self.coredns,
        ]
        .into_iter()
        .map(|p| (p.name(), p.pid().map(rss_bytes).unwrap_or(0)))
        .collect()
    }

    /// The last log lines of every node component, for a failing test to print.
    pub fn diagnostics(&self) -> String {
        [
            &self.kubelet,
            &self.containerd,
            &self.controller_manager,
            &self.scheduler,
            &self.kube_proxy,
            &self.coredns,
        ]
        .into_iter()
        .map(|p| format!("--- {} ---\n{}\n", p.name(), p.log_tail(15)))
        .collect()
    }

    /// The cgroup under which the kubelet puts every pod (in each hierarchy).
    pub fn cgroup_name(&self) -> &str {
        self.netns.name()
    }
}

/// Runs `node-down.sh <env> node` when dropped: after the node's processes have stopped.
#[derive(Debug)]
struct Teardown {
    env: PathBuf,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(workspace_dir().join("e2e/tools/node-down.sh"))
            .arg(&self.env)
            .arg("node")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn start_containerd(
    env: &EnvDir,
    netns: &Netns,
    dir: &Path,
    sock: &Path,
) -> Result<Proc, EnvError> {
    let root = dir.join("containerd");
    let config = format!(
        r#"version = 2
root = "{root}/root"
state = "{root}/state"
# Plugins that would write outside the node's directory or probe file systems.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails to lower its
  # oom_score_adj ("can't get final child's PID").
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{root}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root = root.display(),
        sock = sock.display(),
        cni = dir.join("cni/net.d").display(),
    );
    let path = dir.join("containerd.toml");
    fs::write(&path, config).map_err(|e| EnvError::io("writing containerd.toml", e))?;
    let mut cmd = netns.command("containerd");
    cmd.arg("--config").arg(&path);
    let mut containerd = Proc::spawn("containerd", cmd, env)?;
    let what = format!("containerd to serve on {}", sock.display());
    wait_for(
        &what,
        CONTAINERD_TIMEOUT,
        Duration::from_millis(100),
        || {
            if let Some(how) = containerd.exited() {
                return Err(how);
            }
            Ok(Command::new("ctr")
                .arg("-a")
                .arg(sock)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()))
        },
    )
    .map_err(|e| e.with_log("containerd", &containerd.log_tail(30)))?;
    Ok(containerd)
}

fn load_test_images(node_tools: &NodeTools, dir: &Path, sock: &Path) -> Result<(), EnvError> {
    let images = dir.join("images");
    let mut cmd = Command::new("bash");
    cmd.arg(workspace_dir().join("e2e/tools/images/test-images.sh"))
        .arg(&images)
        .arg(node_tools.path("pause"));
    check_output(
        "building the test images (e2e/tools/images/test-images.sh)",
        cmd,
    )?;
    for archive in ["pause.tar", "busybox.tar"] {
        import_image(sock, &images.join(archive))?;
    }
    Ok(())
}

fn import_image(sock: &Path, archive: &Path) -> Result<(), EnvError> {
    let mut cmd = Command::new("ctr");
    cmd.arg("-a")
        .arg(sock)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(archive);
    check_output(&format!("ctr images import {}", archive.display()), cmd).map(|_| ())
}

fn write_cni_config(dir: &Path) -> Result<(), EnvError> {
    let config = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "servicelog",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.join("cni/ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    write_json(&dir.join("cni/net.d/10-servicelog.conflist"), &config)
}

/// The kubelet's container log rotation, for the nodes started after
/// [`rotate_container_logs`] (the kubelet's defaults otherwise: 10Mi, 5 files, checked every
/// 10s).
#[derive(Clone, Debug)]
pub struct LogRotation {
    /// `containerLogMaxSize`, e.g. `1Mi`.
    pub max_size: String,
    /// `containerLogMaxFiles` (at least 2), the live file included.
    pub max_files: u32,
    /// `containerLogMonitorInterval` (at least 3s), e.g. `3s`.
    pub monitor_interval: String,
}

static LOG_ROTATION: OnceLock<LogRotation> = OnceLock::new();

/// Makes the nodes this process starts from now on rotate containers' logs as `rotation`
/// says (a test of rotation on the node calls it before its cluster starts). False when a
/// rotation was set already: the first one stays.
pub fn rotate_container_logs(rotation: LogRotation) -> bool {
    LOG_ROTATION.set(rotation).is_ok()
}

fn kubelet_config(
    dir: &Path,
    containerd_sock: &Path,
    cgroup: &str,
    pki: &Path,
) -> serde_json::Value {
    let resolv = dir.join("resolv.conf");
    // Pods with dnsPolicy Default get this; ClusterFirst pods get the cluster DNS. The
    // node has no upstream resolver to offer.
    let _ = fs::write(&resolv, "# no upstream resolver inside the test node\n");
    let mut config = serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // This kernel mounts cgroup v1; kubelet 1.37 refuses it unless told otherwise.
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        // Every pod's cgroup under a root of our own, removed at teardown.
        "cgroupRoot": format!("/{cgroup}"),
        "containerRuntimeEndpoint": format!("unix://{}", containerd_sock.display()),
        "address": NODE_IP.to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": pki.join("ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": "cluster.local",
        "resolvConf": resolv,
        "podLogsDir": dir.join("pod-logs"),
        "volumePluginDir": dir.join("kubelet/volume-plugins"),
        "failSwapOn": false,
        // A test machine's disk may be fuller than a production node's: never evict, never
        // collect images (the sandbox image is not pinned in containerd 1.6).
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": false,
        "rotateCertificates": false,
        "serverTLSBootstrap": false,
        "protectKernelDefaults": false,
        "registerNode": true,
    });
    if let Some(r) = LOG_ROTATION.get() {
        config["containerLogMaxSize"] = r.max_size.clone().into();
        config["containerLogMaxFiles"] = r.max_files.into();
        config["containerLogMonitorInterval"] = r.monitor_interval.clone().into();
    }
    config
}

fn corefile_text(kubeconfig: &Path) -> String {
    format!(
        ".:53 {{\n    errors\n    health 127.0.0.1:8080\n    ready 127.0.0.1:8181\n    \
         kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        kubeconfig {} testenv\n        \
         pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n        ttl 5\n    }}\n    \
         cache 5\n    loadbalance\n}}\n",
        kubeconfig.display()
    )
}

/// The `kube-dns` Service at [`DNS_SERVICE_IP`]: CoreDNS runs as a process in the node's
/// namespace, not as a pod, so the Service has no selector and one EndpointSlice of ours
/// points it at the node's IP.
fn apply_dns_service(tools: &Tools, kubeconfig: &Path) -> Result<(), EnvError> {
    let manifest = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  clusterIP: {DNS_SERVICE_IP}
  ports: [{{name: dns, port: 53, protocol: UDP}}, {{name: dns-tcp, port: 53, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-node
  namespace: kube-system
  labels: {{kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: servicelog-testenv}}
addressType: IPv4
endpoints: [{{addresses: ["{NODE_IP}"], conditions: {{ready: true}}, nodeName: {NODE_NAME}}}]
ports: [{{name: dns, port: 53, protocol: UDP}}, {{name: dns-tcp, port: 53, protocol: TCP}}]
"#
    );
    let mut child = Command::new(tools.path("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| EnvError::io("running kubectl apply", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(manifest.as_bytes())
            .map_err(|e| EnvError::io("writing to kubectl apply", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| EnvError::io("running kubectl apply", e))?;
    if !out.status.success() {
        return Err(EnvError::Failed {
            what: "creating the kube-dns Service".into(),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Creates `<cgroup>` in every v1 hierarchy (and the named systemd one), with cpuset's
/// CPUs and memory nodes copied from the root so its children can take tasks.
fn create_cgroup(name: &str) -> Result<(), EnvError> {
    for mount in cgroup_mounts() {
        let dir = mount.join(name);
        fs::create_dir_all(&dir)
            .map_err(|e| EnvError::io(format!("creating cgroup {}", dir.display()), e))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = fs::read_to_string(mount.join(file)) {
                fs::write(dir.join(file), value.trim()).map_err(|e| {
                    EnvError::io(format!("writing {}", dir.join(file).display()), e)
                })?;
            }
        }
    }
    Ok(())
}

/// Mount points of every cgroup hierarchy (v1 and v2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(sep + 1)?;
            (*fstype == "cgroup" || *fstype == "cgroup2").then(|| PathBuf::from(fields[4]))
        })
        .collect()
}

/// The names of the network namespaces `ip netns` lists (`/run/netns`).
pub fn netns_names() -> BTreeSet<String> {
    fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Whether `path` is a mount point.
pub fn mounted(path: &str) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// Every mount point, as `/proc/self/mountinfo` lists it.
pub fn mount_points() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// Appends `KEY='value'` lines to `<env>/node.env`, the record `node-down.sh` reads.
fn record(env: &EnvDir, pairs: &[(impl AsRef<str>, String)]) -> Result<(), EnvError> {
    use std::io::Write;
    let path = env.join("node.env");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| EnvError::io(format!("opening {}", path.display()), e))?;
    for (key, value) in pairs {
        writeln!(file, "{}='{}'", key.as_ref(), value.replace('\'', ""))
            .map_err(|e| EnvError::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Records the machine's sysctl values (unless a running node already has) and this node
/// as one of their users; `node-down.sh` undoes both.
fn register_sysctl_user(netns: &str, env: &Path) -> Result<(), EnvError> {
    let state = Path::new(SYSCTL_STATE);
    let users = state.join("users");
    fs::create_dir_all(&users)
        .map_err(|e| EnvError::io(format!("creating {}", users.display()), e))?;
    let values = state.join("sysctls");
    if !values.exists() {
        let text: String = kubelet_sysctls()
            .into_iter()
            .map(|(key, value)| format!("{}='{}'\n", sysctl_var(key), value.replace('\'', "")))
            .collect();
        let tmp = state.join(format!("sysctls.{netns}"));
        fs::write(&tmp, text).map_err(|e| EnvError::io(format!("writing {}", tmp.display()), e))?;
        fs::rename(&tmp, &values)
            .map_err(|e| EnvError::io(format!("writing {}", values.display()), e))?;
    }
    let user = users.join(netns);
    fs::write(&user, env.display().to_string())
        .map_err(|e| EnvError::io(format!("writing {}", user.display()), e))
}

fn sysctl_var(key: &str) -> String {
    format!("SYSCTL_{}", key.replace('.', "_"))
}

/// The values of the sysctls the kubelet changes, for a test to compare before and after.
pub fn kubelet_sysctls() -> Vec<(&'static str, String)> {
    KUBELET_SYSCTLS
        .iter()
        .map(|key| {
            let value = fs::read_to_string(sysctl_path(key)).unwrap_or_default();
            (*key, value.trim().to_owned())
        })
        .collect()
}

fn rss_bytes(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn check_root() -> Result<(), EnvError> {
    let uid = fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned));
    if uid.as_deref() != Some("0") {
        return Err(EnvError::Missing {
            what: "root".into(),
            hint: "a node needs root (network namespaces, mounts, cgroups): run as root".into(),
        });
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|dir| dir.join(program).is_file())
        })
        .unwrap_or(false)
}

fn run(program: &str, args: &[&str]) -> Result<(), EnvError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    check_output(&format!("{program} {}", args.join(" ")), cmd).map(|_| ())
}

fn check_output(what: &str, mut cmd: Command) -> Result<String, EnvError> {
    let out = cmd.output().map_err(|e| EnvError::Spawn {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(EnvError::Failed {
            what: what.to_owned(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), EnvError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| EnvError::Failed {
        what: format!("serialising {}", path.display()),
        detail: e.to_string(),
    })?;
    fs::write(path, text).map_err(|e| EnvError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corefile_serves_the_cluster_domain_from_the_kubeconfig() {
        let text = corefile_text(Path::new("/env/node/kubeconfig"));
        assert!(text.starts_with(".:53 {"), "{text}");
        assert!(
            text.contains("kubernetes cluster.local in-addr.arpa ip6.arpa {"),
            "{text}"
        );
        assert!(
            text.contains("kubeconfig /env/node/kubeconfig testenv"),
            "{text}"
        );
        assert_eq!(
            text.matches('{').count(),
            text.matches('}').count(),
            "{text}"
        );
    }

    #[test]
    fn kubelet_config_keeps_pods_under_our_cgroup_and_directories() {
        let dir = std::env::temp_dir().join("servicelog-kubelet-config-test");
        let _ = fs::create_dir_all(&dir);
        let config = kubelet_config(
            &dir,
            Path::new("/env/node/containerd.sock"),
            "servicelog-x",
            Path::new("/env/pki"),
        );
        assert_eq!(config["cgroupRoot"], "/servicelog-x");
        assert_eq!(config["failCgroupV1"], false);
        assert_eq!(config["cgroupDriver"], "cgroupfs");
        assert_eq!(
            config["containerRuntimeEndpoint"],
            "unix:///env/node/containerd.sock"
        );
        for key in ["podLogsDir", "volumePluginDir", "resolvConf"] {
            let path = config[key].as_str().unwrap_or_default();
            assert!(
                path.starts_with(dir.to_str().unwrap_or("?")),
                "{key} = {path}"
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn sysctl_names_map_to_proc_paths_and_shell_names() {
        assert_eq!(
            sysctl_path("kernel.panic_on_oops"),
            PathBuf::from("/proc/sys/kernel/panic_on_oops")
        );
        assert_eq!(
            sysctl_var("vm.overcommit_memory"),
            "SYSCTL_vm_overcommit_memory"
        );
    }
}
