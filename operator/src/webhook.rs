//! The admission webhooks, on their own HTTPS port:
//!
//! - `POST /mutate-pods` injects the sidecar into pods annotated `servicelog.io/inject`.
//!   It never blocks a deploy: a missing ServiceLog, a malformed annotation or any internal
//!   error admits the pod unchanged, with a warning in the review, an Event and a metric.
//! - `POST /validate-servicelogs` runs the same `api` validation the sidecars compile
//!   with, so `kubectl apply` of a bad spec fails at once with every problem and its path.
//!
//! A malformed review is answered with a well-formed `AdmissionResponse::invalid`, never a
//! bare 500.
//!
//! The port faces the whole cluster network, so a client gets little: [`MAX_CONNECTIONS`]
//! at once, [`HANDSHAKE_TIMEOUT`] to finish TLS, [`HEADER_TIMEOUT`] to send a request's
//! head, [`BODY_TIMEOUT`] and [`MAX_BODY`] for its body, [`CONNECTION_LIFETIME`] in all;
//! validation (regex compilation, up to the spec budget) runs off the async workers with a
//! [`VALIDATION_DEADLINE`].

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
    runtime::{
        events::{Event, EventType, Recorder},
        reflector::Store,
    },
};
use servicelog_api::{parse_spec, v1alpha1::ServiceLog, wire::Envelope};

use crate::{
    cache::CachedServiceLog,
    certs::Resolver,
    inject::{self, InjectConfig, Request as InjectRequest, Skip},
    metrics::Metrics,
    prepull,
};

/// Largest review body accepted (a pod spec is far smaller).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Connections served at once; beyond them a connection waits to be accepted.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's head (also between keep-alive requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection lasts at most; the API server opens another.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// The longest a ServiceLog's validation may take before it is refused as too costly (the
/// API server's own timeout for the call is 10 s).
pub const VALIDATION_DEADLINE: Duration = Duration::from_secs(5);

/// What the handlers share.
pub struct Webhook {
    pub client: Client,
    pub servicelogs: Store<CachedServiceLog>,
    pub inject: InjectConfig,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Which sidecar images are allowed and which the nodes have pulled; `None` injects
    /// any image without asking.
    pub prepull: Option<(prepull::Gate, prepull::Allowed)>,
}

/// Serves HTTPS on `listener` with the certificate `resolver` holds at each handshake.
pub async fn serve(
    listener: tokio::net::TcpListener,
    resolver: Arc<Resolver>,
    webhook: Arc<Webhook>,
) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = match rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_no_client_auth().with_cert_resolver(resolver),
        Err(e) => {
            tracing::error!(error = %e, "cannot configure TLS; the webhooks are not served");
            return;
        }
    };
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tracing::info!(addr = ?listener.local_addr().ok(), "serving the admission webhooks");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no TLS handshake within {HANDSHAKE_TIMEOUT:?}; closed");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(route(req, &webhook).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            if tokio::time::timeout(CONNECTION_LIFETIME, connection)
                .await
                .is_err()
            {
                tracing::debug!(%peer, "webhook connection closed after {CONNECTION_LIFETIME:?}");
            }
        });
    }
}

async fn route(req: Request<hyper::body::Incoming>, webhook: &Webhook) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if req.method() == hyper::Method::GET && path == "/healthz" {
        return respond(StatusCode::OK, Bytes::from_static(b"ok\n"));
    }
    if req.method() != hyper::Method::POST
        || !matches!(path.as_str(), "/mutate-pods" | "/validate-servicelogs")
    {
        return respond(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n"));
    }
    let started = Instant::now();
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    .unwrap_or_else(|_| Err(format!("not sent within {BODY_TIMEOUT:?}").into()))
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            let review = AdmissionResponse::invalid(format!("cannot read the request body: {e}"))
                .into_review();
            webhook
                .metrics
                .webhook_answered("invalid", started.elapsed());
            return json(&review);
        }
    };
    let (response, result) = if path == "/mutate-pods" {
        mutate(&body, webhook).await
    } else {
        let allowed = webhook.prepull.as_ref().map(|(_, allowed)| allowed);
        validate_servicelog(&body, allowed, &webhook.inject.image).await
    };
    webhook.metrics.webhook_answered(result, started.elapsed());
    json(&response.into_review())
}

fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r
}

fn json(review: &AdmissionReview<DynamicObject>) -> Response<Full<Bytes>> {
    match serde_json::to_vec(review) {
        Ok(bytes) => {
            let mut r = respond(StatusCode::OK, Bytes::from(bytes));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from(format!("cannot encode the review: {e}\n")),
        ),
    }
}

/// Parses a review, answering a malformed one with `invalid`.
fn parse<T>(body: &[u8]) -> Result<AdmissionRequest<T>, Box<AdmissionResponse>>
where
    T: kube::Resource + serde::de::DeserializeOwned,
{
    let invalid = |message: String| Box::new(AdmissionResponse::invalid(message));
    let review: AdmissionReview<T> = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not an admission.k8s.io/v1 AdmissionReview: {e}")))?;
    review
        .try_into()
        .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| invalid(e.to_string()))
}

async fn mutate(body: &[u8], webhook: &Webhook) -> (AdmissionResponse, &'static str) {
    let req: AdmissionRequest<Pod> = match parse(body) {
        Ok(req) => req,
        Err(response) => return (*response, "invalid"),
    };
    let allowed = AdmissionResponse::from(&req);
    let Some(pod) = req.object.as_ref() else {
        return (allowed, "skipped");
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod.namespace())
        .unwrap_or_else(|| "default".into());
    let name = match inject::request(pod) {
        Ok(InjectRequest::None) => return (allowed, "skipped"),
        Ok(InjectRequest::Inject(name)) => name,
        Err(skip) => {
            return (
                warn(webhook, allowed, pod, &namespace, &skip, req.dry_run).await,
                "warned",
            );
        }
    };
    let slog = match lookup(webhook, &namespace, &name).await {
        Ok(Some(slog)) => slog,
        Ok(None) => {
            let skip = Skip::MissingServiceLog {
                namespace: namespace.clone(),
                name,
            };
            return (
                warn(webhook, allowed, pod, &namespace, &skip, req.dry_run).await,
                "warned",
            );
        }
        Err(e) => {
            let skip = Skip::Internal(format!("looking up ServiceLog {namespace}/{name}: {e}"));
            return (
                warn(webhook, allowed, pod, &namespace, &skip, req.dry_run).await,
                "error",
            );
        }
    };
    // A pod the node agent serves alone runs no sidecar image.
    if let Some((gate, permitted)) = &webhook.prepull
        && inject::needs_sidecar(&slog.spec)
    {
        let image = slog
            .spec
            .sidecar
            .as_ref()
            .and_then(|s| s.image.as_deref())
            .unwrap_or(&webhook.inject.image);
        let checked = if image == webhook.inject.image {
            gate.check(image).await
        } else {
            match permitted.check(image) {
                Ok(()) => gate.check(image).await,
                Err(why) => Err(why),
            }
        };
        if let Err(why) = checked {
            let skip = Skip::ImageNotPulled(why);
            return (
                warn(webhook, allowed, pod, &namespace, &skip, req.dry_run).await,
                "warned",
            );
        }
    }
    let injected = match inject::inject(pod, &namespace, &name, &slog.spec, &webhook.inject) {
        Ok(injected) => injected,
        Err(skip) => {
            return (
                warn(webhook, allowed, pod, &namespace, &skip, req.dry_run).await,
                "warned",
            );
        }
    };
    let patch = match (serde_json::to_value(pod), serde_json::to_value(&injected)) {
        (Ok(before), Ok(after)) => json_patch::diff(&before, &after),
        (Err(e), _) | (_, Err(e)) => {
            let skip = Skip::Internal(format!("encoding the pod: {e}"));
            return (
                warn(webhook, allowed, pod, &namespace, &skip, req.dry_run).await,
                "error",
            );
        }
    };
    match allowed.clone().with_patch(patch) {
        Ok(response) => (response, "injected"),
        Err(e) => {
            let skip = Skip::Internal(format!("encoding the patch: {e}"));
            (
                warn(webhook, allowed, pod, &namespace, &skip, req.dry_run).await,
                "error",
            )
        }
    }
}

/// The ServiceLog from the shared cache (its spec parsed), or from the API when the cache
/// has not seen it yet (a ServiceLog and its pods applied together).
async fn lookup(
    webhook: &Webhook,
    namespace: &str,
    name: &str,
) -> Result<Option<ServiceLog>, String> {
    let key = kube::runtime::reflector::ObjectRef::new(name).within(namespace);
    if let Some(slog) = webhook.servicelogs.get(&key) {
        return slog
            .to_servicelog()
            .map(Some)
            .map_err(|e| format!("its spec does not parse: {e}"));
    }
    Api::<ServiceLog>::namespaced(webhook.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())
}

/// Admits the pod unchanged with a warning, and posts an Event about it in the pod's own
/// namespace — unless the request is a dry run (the configurations say `sideEffects:
/// NoneOnDryRun`).
async fn warn(
    webhook: &Webhook,
    allowed: AdmissionResponse,
    pod: &Pod,
    namespace: &str,
    skip: &Skip,
    dry_run: bool,
) -> AdmissionResponse {
    let message = format!("servicelog: {skip}");
    if dry_run {
        let mut response = allowed;
        response.warnings.get_or_insert_with(Vec::new).push(message);
        return response;
    }
    tracing::warn!(namespace, pod = pod.metadata.name.as_deref().or(pod.metadata.generate_name.as_deref()), %skip, "admitted without injection");
    let reference = event_reference(pod, namespace);
    let event = Event {
        type_: EventType::Warning,
        reason: "ServiceLogNotInjected".into(),
        note: Some(message.chars().take(1000).collect()),
        action: "Inject".into(),
        secondary: None,
    };
    // The Event is best effort and must not slow the admission down.
    let recorder = webhook.recorder.clone();
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "cannot publish the webhook event");
        }
    });
    let mut response = allowed;
    response.warnings.get_or_insert_with(Vec::new).push(message);
    response
}

/// What a skip's Event is about: the pod, or — when it has no name yet, as every pod a
/// controller creates (`generateName: web-7854d656c7-`) — its controller (that ReplicaSet,
/// Job, …), where `kubectl describe` shows it. An Event's name derives from its object's,
/// and `web-7854d656c7-.…` is not a valid name: such Events were refused by the API server.
fn event_reference(pod: &Pod, namespace: &str) -> ObjectReference {
    if let Some(name) = &pod.metadata.name {
        return ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.to_owned()),
            name: Some(name.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        };
    }
    if let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        return ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            namespace: Some(namespace.to_owned()),
            name: Some(owner.name.clone()),
            uid: Some(owner.uid.clone()),
            ..Default::default()
        };
    }
    let name = pod
        .metadata
        .generate_name
        .as_deref()
        .map(|prefix| prefix.trim_end_matches(['-', '.']))
        .filter(|prefix| !prefix.is_empty())
        .unwrap_or("pod");
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

/// Reads the review here, and validates its spec on the blocking pool: compiling a spec's
/// regexes can take a good part of a second (the spec budget bounds it), which must not
/// hold an async worker. Past [`VALIDATION_DEADLINE`] the spec is refused.
/// `permitted`: with the pre-pull gate on, a `spec.sidecar.image` other than
/// `default_image` must be one the operator allows.
async fn validate_servicelog(
    body: &[u8],
    permitted: Option<&prepull::Allowed>,
    default_image: &str,
) -> (AdmissionResponse, &'static str) {
    let req: AdmissionRequest<DynamicObject> = match parse(body) {
        Ok(req) => req,
        Err(response) => return (*response, "invalid"),
    };
    let allowed = AdmissionResponse::from(&req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return (allowed, "allowed");
    }
    let Some(slog) = req.object.as_ref() else {
        return (allowed, "allowed");
    };
    let spec = slog.data.get("spec").cloned().unwrap_or_default();
    // An update that leaves the spec as it is (the operator's finalizer, its removal on
    // delete, a label) goes through: a spec admitted while this webhook was down must
    // still get its finalizer, its Valid=False status and its deletion.
    if req.operation == Operation::Update
        && req
            .old_object
            .as_ref()
            .is_some_and(|old| old.data.get("spec").cloned().unwrap_or_default() == spec)
    {
        return (allowed, "allowed");
    }
    let image = spec
        .pointer("/sidecar/image")
        .and_then(serde_json::Value::as_str)
        .filter(|image| *image != default_image)
        .map(str::to_owned);
    let refused_image = match (permitted, image) {
        (Some(permitted), Some(image)) => permitted
            .check(&image)
            .err()
            .map(|why| format!("spec.sidecar.image: {why}")),
        _ => None,
    };
    let job = tokio::task::spawn_blocking(move || {
        let mut problems = problems(&spec);
        problems.extend(refused_image);
        problems
    });
    match tokio::time::timeout(VALIDATION_DEADLINE, job).await {
        Ok(Ok(problems)) if problems.is_empty() => (allowed, "allowed"),
        Ok(Ok(problems)) => (allowed.deny(problems.join("; ")), "denied"),
        Ok(Err(e)) => (allowed.deny(format!("spec: validation failed: {e}")), "denied"),
        Err(_) => (
            allowed.deny(format!(
                "spec: validating it took longer than {VALIDATION_DEADLINE:?}; simplify its regexes and conditions"
            )),
            "denied",
        ),
    }
}

/// Every problem of a spec as the API server sent it. The spec is read untyped first, so
/// a field this operator does not know (inside the schema's open `any` items, or from a
/// newer CRD) is refused by name, not dropped.
fn problems(spec: &serde_json::Value) -> Vec<String> {
    match parse_spec(spec) {
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
        Ok(spec) => match Envelope::publishable("", 0, spec) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        },
    }
}

/// Which webhook configurations the operator owns or keeps current.
#[derive(Clone, Debug)]
pub struct Registration {
    /// Name of both configurations (`servicelog` by default).
    pub name: String,
    /// `--webhook-url`: register the configurations pointing here.
    pub url: Option<String>,
    /// Only pods and ServiceLogs of this namespace are sent (`--watch-namespace`).
    pub namespace: Option<String>,
}

/// Creates or updates the Mutating- and ValidatingWebhookConfiguration pointing at the
/// registration's URL with `ca_bundle`, by server-side apply (idempotent).
pub async fn register(
    client: &Client,
    registration: &Registration,
    ca_bundle: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    let name = registration.name.as_str();
    let base = registration
        .url
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/');
    let ca = base64(ca_bundle.as_bytes());
    let namespace_selector = match &registration.namespace {
        Some(ns) => serde_json::json!({"matchLabels": {"kubernetes.io/metadata.name": ns}}),
        None => serde_json::json!({"matchExpressions": [{
            "key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]}),
    };
    let mutating = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "servicelog"}},
        "webhooks": [{
            "name": "inject.servicelog.io",
            "clientConfig": {"url": format!("{base}/mutate-pods"), "caBundle": ca},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
            "matchConditions": [{"name": "annotated", "expression": "has(object.metadata.annotations) && 'servicelog.io/inject' in object.metadata.annotations"}],
            "namespaceSelector": namespace_selector,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "NoneOnDryRun",
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 5,
        }],
    });
    let validating = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "servicelog"}},
        "webhooks": [{
            "name": "validate.servicelog.io",
            "namespaceSelector": namespace_selector,
            "clientConfig": {"url": format!("{base}/validate-servicelogs"), "caBundle": ca},
            "rules": [{"apiGroups": ["servicelog.io"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"], "resources": ["servicelogs"], "scope": "Namespaced"}],
            "admissionReviewVersions": ["v1"],
            "sideEffects": "NoneOnDryRun",
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
        }],
    });
    let params = PatchParams::apply("servicelog-operator").force();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(name, &params, &Patch::Apply(&mutating))
        .await?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(name, &params, &Patch::Apply(&validating))
        .await?;
    Ok(())
}

/// In a cluster the chart creates the configurations; the operator only keeps their
/// `caBundle` current. Missing configurations are not an error (cert-manager mode, or
/// not installed yet).
pub async fn patch_ca_bundle(
    client: &Client,
    name: &str,
    ca_bundle: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    let ca = base64(ca_bundle.as_bytes());
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(config) = mutating.get_opt(name).await? {
        let count = config.webhooks.map_or(0, |w| w.len());
        patch_each_ca_bundle(&mutating, name, count, &ca).await?;
    }
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(config) = validating.get_opt(name).await? {
        let count = config.webhooks.map_or(0, |w| w.len());
        patch_each_ca_bundle(&validating, name, count, &ca).await?;
    }
    Ok(())
}

/// Sets `clientConfig.caBundle` of each of a configuration's `count` webhooks.
async fn patch_each_ca_bundle<K>(
    api: &Api<K>,
    name: &str,
    count: usize,
    ca: &str,
) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if count == 0 {
        return Ok(());
    }
    let ops: Vec<serde_json::Value> = (0..count)
        .map(|i| serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": ca}))
        .collect();
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    Ok(())
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn validate_servicelog_for_test(body: &[u8]) -> (AdmissionResponse, &'static str) {
        validate_servicelog(body, None, "").await
    }

    #[tokio::test]
    async fn given_the_prepull_gate_when_a_spec_names_an_image_not_allowed_then_it_is_denied_at_its_path()
     {
        let slog = serde_json::json!({
            "apiVersion": "servicelog.io/v1alpha1",
            "kind": "ServiceLog",
            "metadata": {"name": "x", "namespace": "shop"},
            "spec": {
                "sources": [{"name": "app", "file": {"paths": ["/var/log/app/*.log"]}}],
                "sinks": [{"name": "out", "stdout": {}}],
                "defaultTo": ["out"],
                "sidecar": {"image": "docker.io/miner:1"}
            }
        });
        let body = review(slog, ("servicelog.io", "v1alpha1", "ServiceLog"), "CREATE");
        let allowed = prepull::Allowed::new(&[], "ghcr.io/servicelog/servicelog-sidecar:0.1.0");
        let (response, result) = validate_servicelog(
            &body,
            Some(&allowed),
            "ghcr.io/servicelog/servicelog-sidecar:0.1.0",
        )
        .await;
        assert_eq!(result, "denied");
        assert!(
            response.result.message.contains(
                "spec.sidecar.image: sidecar image docker.io/miner:1 is not one the operator allows"
            ),
            "{}",
            response.result.message
        );
        let (_, result) = validate_servicelog(&body, None, "").await;
        assert_eq!(
            result, "allowed",
            "without the gate any image is the tenant's own business"
        );
    }

    #[test]
    fn given_a_pod_without_a_name_then_its_event_is_about_its_controller() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "generateName": "web-7854d656c7-",
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7854d656c7", "uid": "u1", "controller": true}
                ]
            }
        }))
        .expect("a pod");
        let reference = event_reference(&pod, "shop");
        assert_eq!(
            (
                reference.kind.as_deref(),
                reference.name.as_deref(),
                reference.uid.as_deref()
            ),
            (Some("ReplicaSet"), Some("web-7854d656c7"), Some("u1"))
        );
        let orphan: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"generateName": "web-"}}))
                .expect("a pod");
        assert_eq!(
            event_reference(&orphan, "shop").name.as_deref(),
            Some("web")
        );
    }

    fn review(object: serde_json::Value, kind: (&str, &str, &str), operation: &str) -> Vec<u8> {
        review_update(object, serde_json::Value::Null, kind, operation)
    }

    fn review_update(
        object: serde_json::Value,
        old: serde_json::Value,
        kind: (&str, &str, &str),
        operation: &str,
    ) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "00000000-0000-0000-0000-000000000001",
                "kind": {"group": kind.0, "version": kind.1, "kind": kind.2},
                "resource": {"group": kind.0, "version": kind.1, "resource": "x"},
                "operation": operation,
                "namespace": "shop",
                "userInfo": {},
                "object": object,
                "oldObject": old,
                "dryRun": false,
            }
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn given_an_invalid_spec_admitted_before_when_an_update_leaves_it_then_it_is_allowed_and_a_spec_change_is_not()
     {
        let kind = ("servicelog.io", "v1alpha1", "ServiceLog");
        let bad = serde_json::json!({
            "sources": [{"name": "app", "file": {"paths": ["/var/log/*.log"]}}],
            "sinks": [{"name": "out", "stdout": {}}],
            "rules": [{"name": "r", "to": ["nowhere"]}],
        });
        let object = |finalizers: serde_json::Value, spec: &serde_json::Value| {
            serde_json::json!({
                "apiVersion": "servicelog.io/v1alpha1", "kind": "ServiceLog",
                "metadata": {"name": "x", "namespace": "shop", "finalizers": finalizers},
                "spec": spec,
            })
        };
        let finalizer = object(serde_json::json!(["servicelog.io/cleanup"]), &bad);
        let (response, result) = validate_servicelog_for_test(&review_update(
            finalizer.clone(),
            object(serde_json::json!([]), &bad),
            kind,
            "UPDATE",
        ))
        .await;
        assert!(
            response.allowed,
            "the finalizer patch of an invalid ServiceLog was refused: {}",
            response.result.message
        );
        assert_eq!(result, "allowed");
        let mut worse = bad.clone();
        worse["rules"][0]["to"] = serde_json::json!(["elsewhere"]);
        let (response, result) = validate_servicelog_for_test(&review_update(
            object(serde_json::json!([]), &worse),
            finalizer,
            kind,
            "UPDATE",
        ))
        .await;
        assert_eq!(result, "denied");
        assert!(
            response.result.message.contains("elsewhere"),
            "{}",
            response.result.message
        );
    }

    #[tokio::test]
    async fn a_bad_servicelog_is_denied_with_every_problem() {
        let slog = serde_json::json!({
            "apiVersion": "servicelog.io/v1alpha1", "kind": "ServiceLog",
            "metadata": {"name": "x", "namespace": "shop"},
            "spec": {
                "sources": [{"name": "app", "file": {"paths": ["/var/log/*.log"]}}],
                "sinks": [{"name": "out", "stdout": {}}],
                "rules": [{"name": "r", "when": {"message": {"regex": "("}}, "to": ["nowhere"]}],
            }
        });
        let (response, result) = validate_servicelog_for_test(&review(
            slog,
            ("servicelog.io", "v1alpha1", "ServiceLog"),
            "CREATE",
        ))
        .await;
        assert_eq!(result, "denied");
        assert!(!response.allowed);
        let message = response.result.message;
        assert!(
            message.contains("spec.rules[0].when.message.regex"),
            "{message}"
        );
        assert!(message.contains("spec.rules[0].to[0]"), "{message}");
    }

    #[tokio::test]
    async fn a_malformed_review_gets_an_invalid_response_not_a_500() {
        let (response, result) = validate_servicelog_for_test(b"{\"not\": \"a review\"").await;
        assert_eq!(result, "invalid");
        assert!(!response.allowed);
        let review = serde_json::to_value(response.into_review()).unwrap();
        assert_eq!(review["kind"], "AdmissionReview");
    }
}
