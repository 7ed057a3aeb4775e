//! ZooKeeper identities and ACLs: who may read and write which znode.
//!
//! The operator authenticates with its own `digest` identity (`--zk-auth-file`). Each
//! namespace gets an identity derived from the operator's secret and the namespace's name,
//! so the operator can recompute it at any time and needs to store nothing: the operator
//! writes it into a Secret in that namespace (it never reads Secrets), the webhook mounts
//! that Secret into the sidecar, and the sidecar authenticates with it.
//!
//! | znode | operator | the namespace's identity | anyone else |
//! |---|---|---|---|
//! | root, `namespaces`, `namespaces/<ns>`, `<ns>/<name>` | all | — | — |
//! | `<ns>/<name>/config` | all | read | — |
//! | `<ns>/<name>/instances` | all | read, create, delete (its records) | — |
//! | `<ns>/<name>/instances/<pod>` | all | all | — |
//!
//! ZooKeeper checks no permission on a znode's ancestors, so a sidecar reads its config
//! and writes its record without any right on the directories above. A sidecar creates its
//! record for the identities its session holds — the namespace's ([`record_acl`]); the
//! operator reads it with that same identity, which it derives and adds to its own session
//! for every namespace it serves. (ZooKeeper shows a digest ACL's hash only to clients
//! with ADMIN on the znode, so a sidecar could not copy the operator's id from its config's
//! ACL, and handing it the id would hand every tenant the operator's password hash.)

use std::fmt;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::{Digest, Sha1};
use sha2::Sha256;

/// The one scheme servicelog derives identities for.
pub const DIGEST: &str = "digest";

/// ZooKeeper permission bits (`ZooDefs.Perms`).
pub mod perms {
    pub const READ: i32 = 1;
    pub const WRITE: i32 = 2;
    pub const CREATE: i32 = 4;
    pub const DELETE: i32 = 8;
    pub const ADMIN: i32 = 16;
    pub const ALL: i32 = 31;
}

/// Problems with an auth file's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "expected one line `scheme:credentials` (for example `digest:user:password`), found {0}"
    )]
    Shape(String),
    #[error("scheme {0:?}: only `digest` is supported")]
    Scheme(String),
    #[error("a digest credential is `digest:user:password` with a non-empty user and password")]
    Digest,
}

/// A `scheme:credentials` identity, as an auth file holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn digest(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
        }
    }

    /// Reads an auth file's content: one `digest:user:password` line (surrounding
    /// whitespace and a trailing newline are ignored; the password may contain `:`).
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let [line] = lines.as_slice() else {
            return Err(AuthError::Shape(format!("{} lines", lines.len())));
        };
        let Some((scheme, rest)) = line.split_once(':') else {
            return Err(AuthError::Shape("no `:`".into()));
        };
        if scheme != DIGEST {
            return Err(AuthError::Scheme(scheme.to_owned()));
        }
        match rest.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                Ok(Self::digest(user, password))
            }
            _ => Err(AuthError::Digest),
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// What ZooKeeper's `addAuth` takes for the digest scheme: `user:password`.
    pub fn auth_bytes(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password).into_bytes()
    }

    /// The id ACLs name this identity by: `user:base64(sha1(user:password))`
    /// (`DigestAuthenticationProvider.generateDigest`).
    pub fn acl_id(&self) -> String {
        let digest = Sha1::digest(self.auth_bytes());
        format!(
            "{}:{}",
            self.user,
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    }

    /// The auth file line: `digest:user:password`.
    pub fn to_line(&self) -> String {
        format!("{DIGEST}:{}:{}", self.user, self.password)
    }

    /// The identity of `namespace`'s sidecars, derived from this (the operator's) secret:
    /// user `servicelog-ns-<namespace>`, password the hex HMAC-SHA256 of the namespace's
    /// name keyed by the operator's password. Changing the operator's password rotates
    /// every namespace's.
    pub fn for_namespace(&self, namespace: &str) -> Credentials {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.password.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"servicelog namespace identity v1\0");
        mac.update(namespace.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut password = String::with_capacity(64);
        for b in tag {
            password.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            password.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        Credentials::digest(format!("servicelog-ns-{namespace}"), password)
    }
}

/// One ACL entry: `(permissions, scheme, id)`.
pub type AclEntry = (i32, &'static str, String);

/// Which znode of the layout, for its ACL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// The root, `namespaces`, `namespaces/<ns>` and `<ns>/<name>`.
    Directory,
    Config,
    Instances,
    Instance,
}

/// The ACL of a znode of `namespace`'s ServiceLogs (or of a directory above them), for an
/// operator authenticated as `operator`.
pub fn acl(operator: &Credentials, namespace: Option<&str>, node: Node) -> Vec<AclEntry> {
    let mut entries = vec![(perms::ALL, DIGEST, operator.acl_id())];
    let tenant = namespace.map(|ns| operator.for_namespace(ns).acl_id());
    let tenant_perms = match node {
        Node::Directory => None,
        Node::Config => Some(perms::READ),
        Node::Instances => Some(perms::READ | perms::CREATE | perms::DELETE),
        Node::Instance => Some(perms::ALL),
    };
    if let (Some(id), Some(p)) = (tenant, tenant_perms) {
        entries.push((p, DIGEST, id));
    }
    entries
}

/// The ACL a sidecar gives its instance record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordAcl {
    /// Open to anyone: the config is (ACLs are not in use).
    Open,
    /// Every permission for the identities the sidecar's session holds (ZooKeeper's
    /// `auth` scheme): the namespace's.
    Authenticated,
}

/// Which [`RecordAcl`] a sidecar uses, from the schemes and ids of its config's ACL.
pub fn record_acl<'a>(config_acl: impl IntoIterator<Item = (&'a str, &'a str)>) -> RecordAcl {
    if config_acl
        .into_iter()
        .any(|(scheme, id)| scheme == "world" && id == "anyone")
    {
        RecordAcl::Open
    } else {
        RecordAcl::Authenticated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_id_is_zookeepers() {
        // DigestAuthenticationProvider.generateDigest("super:test") in the ZooKeeper docs'
        // example produces "super:D/InIHSb7yEEbrWz8b9l71RjZJU=".
        let c = Credentials::digest("super", "test");
        assert_eq!(c.acl_id(), "super:D/InIHSb7yEEbrWz8b9l71RjZJU=");
        assert_eq!(c.auth_bytes(), b"super:test");
        assert_eq!(c.to_line(), "digest:super:test");
    }

    #[test]
    fn auth_files_are_one_digest_line() {
        let c = Credentials::parse("digest:servicelog:s3:cr3t\n").expect("valid");
        assert_eq!(
            (c.user(), c.auth_bytes()),
            ("servicelog", b"servicelog:s3:cr3t".to_vec())
        );
        assert!(matches!(Credentials::parse(""), Err(AuthError::Shape(_))));
        assert!(matches!(
            Credentials::parse("a\nb"),
            Err(AuthError::Shape(_))
        ));
        assert!(matches!(
            Credentials::parse("sasl:x:y"),
            Err(AuthError::Scheme(_))
        ));
        assert_eq!(Credentials::parse("digest:user"), Err(AuthError::Digest));
        assert_eq!(Credentials::parse("digest::pw"), Err(AuthError::Digest));
        assert!(
            !format!("{c:?}").contains("s3"),
            "Debug must not print the password"
        );
    }

    #[test]
    fn namespace_identities_are_stable_distinct_and_keyed_by_the_operator_secret() {
        let op = Credentials::digest("servicelog-operator", "k1");
        let a = op.for_namespace("team-a");
        assert_eq!(a, op.for_namespace("team-a"), "recomputable");
        assert_eq!(a.user(), "servicelog-ns-team-a");
        assert_ne!(a.acl_id(), op.for_namespace("team-b").acl_id());
        let rotated = Credentials::digest("servicelog-operator", "k2").for_namespace("team-a");
        assert_ne!(
            a, rotated,
            "a new operator secret rotates every namespace's"
        );
    }

    #[test]
    fn acls_give_each_node_what_the_table_says() {
        let op = Credentials::digest("op", "pw");
        let ns = op.for_namespace("a").acl_id();
        let perms_of = |node| {
            acl(&op, Some("a"), node)
                .into_iter()
                .map(|(p, _, id)| (p, id))
                .collect::<Vec<_>>()
        };
        assert_eq!(perms_of(Node::Directory), [(perms::ALL, op.acl_id())]);
        assert_eq!(
            perms_of(Node::Config),
            [(perms::ALL, op.acl_id()), (perms::READ, ns.clone())]
        );
        assert_eq!(
            perms_of(Node::Instances)[1],
            (perms::READ | perms::CREATE | perms::DELETE, ns.clone())
        );
        assert_eq!(perms_of(Node::Instance)[1], (perms::ALL, ns));
        assert_eq!(acl(&op, None, Node::Config).len(), 1);
    }

    #[test]
    fn a_record_is_open_only_when_its_config_is() {
        assert_eq!(record_acl([("world", "anyone")]), RecordAcl::Open);
        assert_eq!(
            record_acl([("digest", "op:x"), ("digest", "servicelog-ns-a:x")]),
            RecordAcl::Authenticated
        );
    }
}
