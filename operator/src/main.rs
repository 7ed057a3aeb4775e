//! `servicelog-operator`: `run` the controller and webhooks, print the `crd`, or
//! `validate` manifests offline.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use servicelog_api::wire::Layout;
use servicelog_operator::{
    controller, crd, lease, manifests,
    metrics::Metrics,
    prepull,
    zk::{Guard, Zk, ZkConfig},
};

/// mimalloc instead of glibc's malloc: with 10,000 ServiceLogs cached, glibc's per-thread
/// arenas held about twice the live heap as RSS (docs/benchmarks.md, operator scale).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "servicelog-operator",
    version,
    about = "Routes each service's logs where its ServiceLog says, live"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller and the admission webhooks.
    Run(Box<RunArgs>),
    /// Print the ServiceLog CustomResourceDefinition as YAML.
    Crd,
    /// Check ServiceLog manifests offline: every problem with its field path; exit status 1
    /// if there is any.
    Validate {
        /// YAML files, each possibly with several documents; `-` reads standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// `json` (the default when stderr is not a terminal) or `text`.
    #[arg(long, env = servicelog_api::logging::FORMAT_ENV)]
    log_format: Option<servicelog_api::logging::LogFormat>,
    /// A tracing filter: `info`, `debug`, `info,kube_runtime=warn` (default: RUST_LOG,
    /// else `info,kube_runtime=warn`).
    #[arg(long, env = servicelog_api::logging::LEVEL_ENV)]
    log_level: Option<String>,
    /// ZooKeeper connect string, e.g. `zk-0:2181,zk-1:2181/chroot`.
    #[arg(long, env = "SERVICELOG_ZK_CONNECT")]
    zk_connect: String,
    /// File holding the operator's ZooKeeper identity, one `digest:user:password` line.
    /// With it every znode carries ACLs and each namespace gets its own identity; without
    /// it every znode is open to anyone who can reach ZooKeeper.
    #[arg(long, env = servicelog_api::pod::env::ZK_AUTH_FILE)]
    zk_auth_file: Option<PathBuf>,
    /// While the identity in --zk-auth-file is being rotated in: the one it replaces. The
    /// operator authenticates as both and gives both (and both sets of namespace
    /// identities) the same rights, so sidecars still on the old namespace identity keep
    /// working until their Secret's new content reaches them (docs/install.md, "Rotating
    /// the identity").
    #[arg(long, env = servicelog_api::pod::env::ZK_AUTH_PREVIOUS_FILE, requires = "zk_auth_file")]
    zk_auth_previous_file: Option<PathBuf>,
    /// PEM CA that verifies the ZooKeeper servers. With it every server of --zk-connect is
    /// reached over TLS (ZooKeeper's `secureClientPort`) unless written `tcp://host:port`;
    /// a server written `tcp+tls://host:port` needs it.
    #[arg(long, env = servicelog_api::pod::env::ZK_TLS_CA_FILE)]
    zk_tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (with --zk-tls-key-file) for mutual TLS to ZooKeeper.
    #[arg(long, env = servicelog_api::pod::env::ZK_TLS_CERT_FILE)]
    zk_tls_cert_file: Option<PathBuf>,
    /// PEM private key of --zk-tls-cert-file.
    #[arg(long, env = servicelog_api::pod::env::ZK_TLS_KEY_FILE)]
    zk_tls_key_file: Option<PathBuf>,
    /// Znode root of the servicelog tree.
    #[arg(long, env = "SERVICELOG_ZK_ROOT", default_value = "/servicelog")]
    zk_root: String,
    /// The operator's own namespace (Lease, webhook Secret).
    #[arg(
        long,
        env = "SERVICELOG_NAMESPACE",
        default_value = "servicelog-system"
    )]
    namespace: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "SERVICELOG_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: String,
    /// Address of the HTTPS admission webhooks.
    #[arg(long, env = "SERVICELOG_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    webhook_addr: String,
    /// Register the webhooks at this URL (development and tests).
    #[arg(long, env = "SERVICELOG_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Serve a mounted certificate (`tls.crt`, `tls.key`, e.g. from cert-manager) instead
    /// of managing one in a Secret.
    #[arg(long, env = "SERVICELOG_WEBHOOK_CERT_DIR")]
    webhook_cert_dir: Option<PathBuf>,
    /// Name of the Mutating- and ValidatingWebhookConfiguration the operator registers
    /// (`--webhook-url`) or keeps the caBundle of.
    #[arg(
        long,
        env = "SERVICELOG_WEBHOOK_CONFIGURATION",
        default_value = "servicelog"
    )]
    webhook_configuration: String,
    /// Secret (in --namespace) holding the self-managed webhook CA and certificate.
    #[arg(
        long,
        env = "SERVICELOG_WEBHOOK_SECRET",
        default_value = "servicelog-webhook-tls"
    )]
    webhook_secret: String,
    /// Lease (in --namespace) for leader election.
    #[arg(
        long,
        env = "SERVICELOG_LEASE_NAME",
        default_value = "servicelog-operator"
    )]
    lease_name: String,
    /// Service in front of the webhook, for the certificate's names.
    #[arg(
        long,
        env = "SERVICELOG_WEBHOOK_SERVICE",
        default_value = "servicelog-webhook"
    )]
    webhook_service: String,
    /// Lifetime of the self-managed serving certificate; it is renewed after two thirds.
    #[arg(long, env = "SERVICELOG_WEBHOOK_CERT_VALIDITY", default_value = "90days", value_parser = humantime::parse_duration)]
    webhook_cert_validity: Duration,
    /// ZooKeeper connect string given to injected sidecars (default: --zk-connect).
    #[arg(long, env = "SERVICELOG_SIDECAR_ZK_CONNECT")]
    sidecar_zk_connect: Option<String>,
    /// Secret, in each injected pod's namespace, with the ZooKeeper CA (`ca.crt`) the
    /// sidecars verify the servers with: set, the sidecars connect over TLS.
    #[arg(long, env = "SERVICELOG_SIDECAR_ZK_TLS_SECRET")]
    sidecar_zk_tls_secret: Option<String>,
    /// The sidecars also present that Secret's `tls.crt`/`tls.key` (mutual TLS).
    #[arg(
        long,
        env = "SERVICELOG_SIDECAR_ZK_TLS_CLIENT_CERT",
        default_value_t = false,
        requires = "sidecar_zk_tls_secret"
    )]
    sidecar_zk_tls_client_cert: bool,
    /// Write that Secret (key `ca.crt`, the CA of --zk-tls-ca-file) into each namespace
    /// with a ServiceLog, so its sidecars verify the servers without a Secret of the
    /// user's there. Server-side apply only; refreshed every 10 minutes.
    #[arg(
        long,
        env = "SERVICELOG_SIDECAR_ZK_TLS_WRITE_CA",
        default_value_t = false,
        requires_all = ["sidecar_zk_tls_secret", "zk_tls_ca_file"],
        conflicts_with = "sidecar_zk_tls_client_cert"
    )]
    sidecar_zk_tls_write_ca: bool,
    /// Resource requests of the injected sidecar, `name=quantity,…`.
    #[arg(
        long,
        env = "SERVICELOG_SIDECAR_REQUESTS",
        default_value = "cpu=10m,memory=16Mi"
    )]
    sidecar_requests: String,
    /// Resource limits of the injected sidecar, `name=quantity,…`.
    #[arg(
        long,
        env = "SERVICELOG_SIDECAR_LIMITS",
        default_value = "memory=64Mi,ephemeral-storage=256Mi"
    )]
    sidecar_limits: String,
    /// `sizeLimit` of the emptyDirs injected for the sources' and file sinks' directories.
    #[arg(
        long,
        env = "SERVICELOG_SIDECAR_VOLUME_SIZE_LIMIT",
        default_value = "1Gi"
    )]
    sidecar_volume_size_limit: String,
    /// The injected sidecars' log format, `text` (their default) or `json`.
    #[arg(long, env = "SERVICELOG_SIDECAR_LOG_FORMAT")]
    sidecar_log_format: Option<servicelog_api::logging::LogFormat>,
    /// The injected sidecars' log level (a tracing filter; their default `info`); a
    /// ServiceLog's `spec.sidecar.logLevel` overrides it live.
    #[arg(long, env = "SERVICELOG_SIDECAR_LOG_LEVEL")]
    sidecar_log_level: Option<String>,
    /// Image of the injected sidecar.
    #[arg(
        long,
        env = "SERVICELOG_SIDECAR_IMAGE",
        default_value = "ghcr.io/servicelog/servicelog-sidecar:0.1.0"
    )]
    sidecar_image: String,
    /// The chart's sidecar pre-pull DaemonSet in the operator's namespace: inject an image
    /// only once a pre-pull pod runs it, and keep `<name>-extra` running the images set per
    /// ServiceLog. Unset: inject without checking.
    #[arg(long, env = "SERVICELOG_SIDECAR_PREPULL")]
    sidecar_prepull: Option<String>,
    /// With --sidecar-prepull: the image prefixes a ServiceLog's `spec.sidecar.image` may
    /// start with (comma-separated); default the --sidecar-image repository. Pre-pulled
    /// images run on every node, so tenants do not choose them freely.
    #[arg(
        long,
        env = "SERVICELOG_SIDECAR_ALLOWED_IMAGES",
        value_delimiter = ',',
        requires = "sidecar_prepull"
    )]
    sidecar_allowed_images: Vec<String>,
    /// Elect a leader among replicas with a Lease; only the leader reconciles.
    #[arg(long, env = "SERVICELOG_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// How long a leader's lease lasts without renewal before a standby takes over.
    #[arg(long, env = "SERVICELOG_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// How long the leader goes on without a successful renewal before it stops writing;
    /// shorter than --lease-duration (default: two thirds of it, 10s for 15s).
    #[arg(long, env = "SERVICELOG_LEASE_RENEW_DEADLINE", value_parser = humantime::parse_duration)]
    lease_renew_deadline: Option<Duration>,
    /// How often the leader renews and a standby tries to acquire (default: two fifteenths
    /// of --lease-duration, 2s for 15s).
    #[arg(long, env = "SERVICELOG_LEASE_RETRY_PERIOD", value_parser = humantime::parse_duration)]
    lease_retry_period: Option<Duration>,
    /// How long deletion waits for an unreachable ZooKeeper before giving up on the subtree.
    #[arg(long, env = "SERVICELOG_CLEANUP_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    cleanup_timeout: Duration,
    /// ZooKeeper session timeout.
    #[arg(long, env = "SERVICELOG_ZK_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    zk_session_timeout: Duration,
    /// Watch ServiceLogs and pods in this namespace only (default: all namespaces).
    #[arg(long, env = "SERVICELOG_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// This replica's identity for the Lease (default: POD_NAME, else host and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crd => {
            print!("{}", crd::yaml().context("serialising the CRD")?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => validate(&files),
        Command::Run(args) => {
            servicelog_api::logging::init(
                args.log_format,
                args.log_level.as_deref(),
                "info,kube_runtime=warn",
                true,
            )?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(run_operator(*args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn validate(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut problems = 0;
    let mut checked = 0;
    for file in files {
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading standard input")?
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        };
        let report = manifests::check_yaml(&text);
        checked += report.checked;
        for problem in &report.problems {
            println!("{}: {problem}", file.display());
        }
        problems += report.problems.len();
    }
    if problems > 0 {
        eprintln!("{problems} problem(s) in {checked} ServiceLog(s)");
        Ok(ExitCode::FAILURE)
    } else {
        eprintln!("{checked} ServiceLog(s) valid");
        Ok(ExitCode::SUCCESS)
    }
}

async fn run_operator(args: RunArgs) -> anyhow::Result<()> {
    let layout =
        Layout::new(&args.zk_root).with_context(|| format!("--zk-root {:?}", args.zk_root))?;
    let metrics_addr: std::net::SocketAddr = args
        .metrics_addr
        .parse()
        .with_context(|| format!("--metrics-addr {:?} is not host:port", args.metrics_addr))?;
    let (listener, _) = servicelog_api::serve::bind(&metrics_addr.to_string())
        .await
        .context("--metrics-addr")?;
    let guard = zk_guard(
        args.zk_auth_file.as_deref(),
        args.zk_auth_previous_file.as_deref(),
    )?;
    // Before any TLS client (kube's, ZooKeeper's) is built: see the function.
    servicelog_api::zktls::install_crypto_provider();
    let zk_tls = zk_tls(&args)?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or the in-cluster service account)")?;
    let metrics = Arc::new(Metrics::new());
    let server = tokio::spawn(servicelog_api::serve::serve(listener, metrics.clone()));

    // One compact cache of ServiceLogs serves the webhook and the controller.
    let cache = servicelog_operator::cache::Cache::start(match &args.watch_namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    });
    let prepull_gate = args.sidecar_prepull.as_deref().map(|name| {
        (
            prepull::Gate::start(client.clone(), &args.namespace, name),
            prepull::Allowed::new(&args.sidecar_allowed_images, &args.sidecar_image),
        )
    });
    start_webhooks(
        &args,
        &client,
        &layout,
        &guard,
        &metrics,
        cache.store(),
        prepull_gate.clone(),
    )
    .await?;

    let (zk, triggers) = Zk::start(ZkConfig {
        connect: args.zk_connect.clone(),
        layout: layout.clone(),
        session_timeout: args.zk_session_timeout,
        connect_timeout: Duration::from_secs(5),
        guard: guard.clone(),
        tls: zk_tls,
    });
    let gauge_zk = zk.clone();
    let gauge_metrics = metrics.clone();
    tokio::spawn(async move {
        loop {
            gauge_metrics.set_zookeeper_connected(gauge_zk.is_connected());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    match &prepull_gate {
        // Ready once the nodes have the default sidecar image: during a `helm upgrade` to
        // a new one, the old replicas go on injecting the image the nodes have until then.
        Some((gate, _)) => {
            let (gate, image, metrics) =
                (gate.clone(), args.sidecar_image.clone(), metrics.clone());
            tokio::spawn(async move {
                let mut logged = false;
                loop {
                    match gate.check(&image).await {
                        Ok(()) => break metrics.set_ready(true),
                        Err(why) if !logged => {
                            tracing::info!(%why, "not ready until a pre-pull pod has pulled the sidecar image");
                            logged = true;
                        }
                        Err(_) => {}
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        None => metrics.set_ready(true),
    }

    let lease_config = lease::LeaseConfig {
        namespace: args.namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        duration: args.lease_duration,
        renew_deadline: args
            .lease_renew_deadline
            .unwrap_or_else(|| lease::LeaseConfig::renew_deadline_for(args.lease_duration)),
        retry_period: args
            .lease_retry_period
            .unwrap_or_else(|| lease::LeaseConfig::retry_period_for(args.lease_duration)),
    };
    let mut elector = if args.leader_election {
        let mut elector = lease::Elector::new(client.clone(), lease_config)?;
        tracing::info!(identity = %identity, namespace = %args.namespace, "waiting for the lease");
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown_signal() => return Ok(()),
        }
        Some(elector)
    } else {
        None
    };
    let leadership = elector
        .as_ref()
        .map_or_else(lease::Leadership::always, lease::Elector::leadership);
    zk.start_securing().await;
    if let (Some(name), Some((_, allowed))) = (&args.sidecar_prepull, &prepull_gate) {
        tokio::spawn(prepull::keep(
            client.clone(),
            args.namespace.clone(),
            name.clone(),
            args.sidecar_image.clone(),
            allowed.clone(),
            cache.store(),
        ));
    }
    // Here the lease is held, or there is none to hold (--leader-election=false): either
    // way this replica reconciles, and alerts on "no leader" must not fire for it.
    metrics.set_leader(true);
    let settings = controller::Settings {
        layout,
        watch_namespace: args.watch_namespace.clone(),
        identity,
        cleanup_timeout: args.cleanup_timeout,
        leadership,
        sidecar_ca: args
            .sidecar_zk_tls_write_ca
            .then(|| {
                Some(controller::publish::SidecarCa {
                    secret: args.sidecar_zk_tls_secret.clone()?,
                    ca_file: args.zk_tls_ca_file.clone()?,
                })
            })
            .flatten(),
    };
    let run = controller::run(
        client.clone(),
        &cache,
        zk,
        triggers,
        metrics.clone(),
        settings,
    );
    match &mut elector {
        Some(elector) => {
            tokio::select! {
                () = run => {}
                lost = elector.hold() => {
                    metrics.set_leader(false);
                    return Err(lost.into());
                }
                r = server => return Err(anyhow::anyhow!("metrics server ended: {r:?}")),
            }
            // The controller stopped on SIGTERM with its reconciles finished: hand over.
            metrics.set_leader(false);
            elector.release(RELEASE_GRACE).await;
        }
        None => {
            tokio::select! {
                () = run => {}
                r = server => return Err(anyhow::anyhow!("metrics server ended: {r:?}")),
            }
        }
    }
    Ok(())
}

/// How long a release waits for the writes in flight after the controller stopped.
const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// SIGTERM (Kubernetes stopping the pod) or SIGINT.
async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Binds the webhook port, loads (or issues) its certificate, registers the webhook
/// configurations (`--webhook-url`) or keeps their caBundle current, and keeps the
/// certificate fresh in the background.
async fn start_webhooks(
    args: &RunArgs,
    client: &kube::Client,
    layout: &Layout,
    guard: &Guard,
    metrics: &Arc<Metrics>,
    servicelogs: kube::runtime::reflector::Store<servicelog_operator::cache::CachedServiceLog>,
    prepull_gate: Option<(prepull::Gate, prepull::Allowed)>,
) -> anyhow::Result<()> {
    use servicelog_operator::{certs, inject::InjectConfig, webhook};

    let addr: std::net::SocketAddr = args
        .webhook_addr
        .parse()
        .with_context(|| format!("--webhook-addr {:?} is not host:port", args.webhook_addr))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --webhook-addr {addr}"))?;
    let source = match &args.webhook_cert_dir {
        Some(dir) => certs::Source::Dir(dir.clone()),
        None => {
            let svc = &args.webhook_service;
            let ns = &args.namespace;
            let mut hosts = vec![
                format!("{svc}.{ns}.svc"),
                format!("{svc}.{ns}.svc.cluster.local"),
                format!("{svc}.{ns}"),
            ];
            if let Some(host) = args.webhook_url.as_deref().and_then(url_host) {
                hosts.insert(0, host);
            }
            certs::Source::Managed {
                namespace: ns.clone(),
                secret: args.webhook_secret.clone(),
                hosts,
                validity: args.webhook_cert_validity,
            }
        }
    };
    let resolver = Arc::new(certs::Resolver::default());
    let ca = certs::refresh(client, &source, &resolver)
        .await
        .context("loading the webhook certificate")?;
    let registration = webhook::Registration {
        name: args.webhook_configuration.clone(),
        url: args.webhook_url.clone(),
        namespace: args.watch_namespace.clone(),
    };
    publish_ca(client, &registration, ca.as_deref()).await?;

    let webhook = Arc::new(webhook::Webhook {
        client: client.clone(),
        servicelogs,
        inject: InjectConfig {
            image: args.sidecar_image.clone(),
            zk_connect: args
                .sidecar_zk_connect
                .clone()
                .unwrap_or_else(|| args.zk_connect.clone()),
            layout: layout.clone(),
            requests: quantities(&args.sidecar_requests).context("--sidecar-requests")?,
            limits: quantities(&args.sidecar_limits).context("--sidecar-limits")?,
            zk_auth: guard.operator().is_some(),
            zk_tls: args.sidecar_zk_tls_secret.clone().map(|secret| {
                servicelog_operator::inject::SidecarTls {
                    secret,
                    client_cert: args.sidecar_zk_tls_client_cert,
                }
            }),
            volume_size_limit: args.sidecar_volume_size_limit.clone(),
            log_format: args.sidecar_log_format.map(|f| match f {
                servicelog_api::logging::LogFormat::Json => "json".to_owned(),
                servicelog_api::logging::LogFormat::Text => "text".to_owned(),
            }),
            log_level: args
                .sidecar_log_level
                .clone()
                .map(|level| {
                    servicelog_api::logging::check_level(&level)
                        .map(|()| level)
                        .context("--sidecar-log-level")
                })
                .transpose()?,
        },
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "servicelog-webhook".into(),
                instance: None,
            },
        ),
        metrics: metrics.clone(),
        prepull: prepull_gate.clone(),
    });
    tokio::spawn(webhook::serve(listener, resolver.clone(), webhook));

    // Renewal is a refresh that finds the certificate old; checking often enough that a
    // short-lived certificate (tests) is renewed well before it expires.
    let every =
        (args.webhook_cert_validity / 20).clamp(Duration::from_secs(1), Duration::from_secs(300));
    let client = client.clone();
    // Publishing the CA every round (idempotent writes) also repairs configurations that
    // were created or replaced after the operator started, e.g. by a later `helm upgrade`.
    tokio::spawn(async move {
        let mut ca = ca;
        loop {
            tokio::time::sleep(every).await;
            match certs::refresh(&client, &source, &resolver).await {
                Ok(fresh) => ca = fresh,
                Err(e) => tracing::warn!(error = %e, "cannot refresh the webhook certificate"),
            }
            if let Err(e) = publish_ca(&client, &registration, ca.as_deref()).await {
                tracing::warn!(error = %e, "cannot publish the CA bundle");
            }
        }
    });
    Ok(())
}

async fn publish_ca(
    client: &kube::Client,
    registration: &servicelog_operator::webhook::Registration,
    ca: Option<&str>,
) -> anyhow::Result<()> {
    use servicelog_operator::webhook;
    match (&registration.url, ca) {
        (Some(_), Some(ca)) => webhook::register(client, registration, ca)
            .await
            .context("registering the webhook configurations for --webhook-url"),
        (None, Some(ca)) => {
            if let Err(e) = webhook::patch_ca_bundle(client, &registration.name, ca).await {
                tracing::warn!(error = %e, "cannot update the webhook configurations' caBundle");
            }
            Ok(())
        }
        (_, None) => Ok(()),
    }
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    (!host.is_empty()).then(|| host.to_owned())
}

fn quantities(spec: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| anyhow::anyhow!("{pair:?} is not name=quantity"))
        })
        .collect()
}

/// TLS to ZooKeeper from the flags, its files checked now so a typo stops the start.
fn zk_tls(args: &RunArgs) -> anyhow::Result<Option<servicelog_api::zktls::ZkTls>> {
    let tls = servicelog_api::zktls::ZkTls::from_settings(
        &args.zk_connect,
        args.zk_tls_ca_file.clone(),
        args.zk_tls_cert_file.clone(),
        args.zk_tls_key_file.clone(),
    )
    .context("--zk-tls-*")?;
    if let Some(tls) = &tls {
        tls.options().context("--zk-tls-*")?;
    }
    Ok(tls)
}

/// The ACLs the operator creates znodes with: from its identity in `--zk-auth-file` (and
/// the one it replaces, while rotated), or none (with a warning) without one.
fn zk_guard(
    auth_file: Option<&std::path::Path>,
    previous_file: Option<&std::path::Path>,
) -> anyhow::Result<Guard> {
    let read = |flag: &str, path: &std::path::Path| {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading {flag} {}", path.display()))?;
        servicelog_api::zkauth::Credentials::parse(&text)
            .with_context(|| format!("{flag} {}", path.display()))
    };
    let Some(path) = auth_file else {
        tracing::warn!(
            "no --zk-auth-file: znodes are created without ACLs, so any client that reaches ZooKeeper can read and rewrite every namespace's routing"
        );
        return Ok(Guard::new(None));
    };
    let credentials = read("--zk-auth-file", path)?;
    tracing::info!(user = %credentials.user(), "ZooKeeper ACLs on: the operator authenticates as this digest user");
    let mut guard = Guard::new(Some(credentials));
    if let Some(path) = previous_file {
        let previous = read("--zk-auth-previous-file", path)?;
        tracing::info!(user = %previous.user(), "rotating the ZooKeeper identity: the previous one keeps its rights until the operator runs without --zk-auth-previous-file");
        guard = guard.with_previous(previous);
    }
    Ok(guard)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "servicelog-operator".into())
}
