//! The rules that map caller identities to roles: from a rules file (reloadable), or the
//! defaults (the server's own uid and the generated admin token are admin). Bearer tokens
//! are held only as SHA-256 hashes and compared in constant time.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;

pub use crate::rpc::Role;
use crate::rpc::{ScopeLimit, ScopedRoles};

/// The name a client certificate gives its holder: its SPIFFE ID (URI SAN), else its first
/// DNS SAN, else its subject common name. Shared, not copied: every call on a connection
/// carries its peer's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertName {
    Spiffe(Arc<str>),
    Dns(Arc<str>),
    CommonName(Arc<str>),
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A Unix-socket peer, by its credentials (PIDs are not trusted).
    UnixPeer { uid: u32, gid: u32 },
    /// A plaintext TCP peer (always on loopback), without other credentials.
    LoopbackPeer { addr: SocketAddr },
    /// A TLS peer with a client certificate that chains to a configured CA.
    Certificate { name: CertName },
    /// A caller presenting a bearer token; only its hash is kept.
    Token { sha256: [u8; 32] },
    /// A caller of the AWS-protocol door, by the access key id its SigV4 signature was
    /// verified with.
    AwsAccessKey { access_key_id: String },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::UnixPeer { uid, gid } => write!(f, "unix:uid={uid},gid={gid}"),
            Identity::LoopbackPeer { addr } => write!(f, "tcp:{addr}"),
            // Names come from certificates: control characters are escaped, so that no name
            // can forge a line or a field of a text log.
            Identity::Certificate {
                name: CertName::Spiffe(id),
            } => write_escaped(f, id),
            Identity::Certificate {
                name: CertName::Dns(name),
            } => {
                f.write_str("dns:")?;
                write_escaped(f, name)
            }
            Identity::Certificate {
                name: CertName::CommonName(name),
            } => {
                f.write_str("cn:")?;
                write_escaped(f, name)
            }
            // A prefix of the hash names the token in logs; the token itself never appears.
            Identity::Token { sha256 } => write!(f, "token:sha256:{}", hex(&sha256[..6])),
            // The id is not a secret (the signature is what proves it); it is checked to be
            // letters and digits before it gets here, and escaped all the same.
            Identity::AwsAccessKey { access_key_id } => {
                f.write_str("aws:")?;
                write_escaped(f, access_key_id)
            }
        }
    }
}

/// `text` with each control character written as an escape (`\n`, `\u{1b}`).
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for c in text.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            fmt::Write::write_char(f, c)?;
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a bearer token.
pub fn token_hash(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// The fields of a rule that say whom it matches.
const MATCHERS: &str = "unix_uid, unix_gid, spiffe_id, spiffe_trust_domain, dns_name, common_name, token_sha256, aws_access_key_id";

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    UnixUid(u32),
    UnixGid(u32),
    SpiffeId(String),
    /// `spiffe://<domain>/`
    TrustDomain(String),
    DnsName(String),
    CommonName(String),
    TokenSha256([u8; 32]),
    AwsAccessKeyId(String),
}

impl Matcher {
    fn matches(&self, identity: &Identity) -> bool {
        match (self, identity) {
            (Matcher::UnixUid(want), Identity::UnixPeer { uid, .. }) => want == uid,
            (Matcher::UnixGid(want), Identity::UnixPeer { gid, .. }) => want == gid,
            (
                Matcher::SpiffeId(want),
                Identity::Certificate {
                    name: CertName::Spiffe(id),
                },
            ) => want.as_str() == &**id,
            (
                Matcher::TrustDomain(prefix),
                Identity::Certificate {
                    name: CertName::Spiffe(id),
                },
            ) => id.starts_with(prefix.as_str()),
            (
                Matcher::DnsName(want),
                Identity::Certificate {
                    name: CertName::Dns(name),
                },
            ) => want.eq_ignore_ascii_case(name),
            (
                Matcher::CommonName(want),
                Identity::Certificate {
                    name: CertName::CommonName(cn),
                },
            ) => want.as_str() == &**cn,
            (Matcher::TokenSha256(want), Identity::Token { sha256 }) => {
                aws_lc_rs::constant_time::verify_slices_are_equal(want, sha256).is_ok()
            }
            (Matcher::AwsAccessKeyId(want), Identity::AwsAccessKey { access_key_id }) => {
                want == access_key_id
            }
            _ => false,
        }
    }
}

/// One rule as written in the rules file: a role and exactly one matcher.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    role: Role,
    unix_uid: Option<u32>,
    unix_gid: Option<u32>,
    spiffe_id: Option<String>,
    spiffe_trust_domain: Option<String>,
    dns_name: Option<String>,
    common_name: Option<String>,
    token_sha256: Option<String>,
    aws_access_key_id: Option<String>,
    /// The accounts the rule gives its role in (12-digit ids); default any.
    #[serde(default)]
    accounts: Vec<String>,
    /// The Regions the rule gives its role in; default any.
    #[serde(default)]
    regions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rules file `{path}` is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot prepare the admin token `{path}`: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The rules in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<(Matcher, Role, ScopeLimit)>,
    /// The role of plaintext loopback callers with no other credentials.
    loopback_anonymous: Option<Role>,
}

fn rule(index: usize, spec: RuleSpec) -> Result<(Matcher, Role, ScopeLimit), String> {
    let at = |message: String| format!("rule {} ({}): {message}", index + 1, spec.role);
    let mut matchers = Vec::new();
    if let Some(uid) = spec.unix_uid {
        matchers.push(Matcher::UnixUid(uid));
    }
    if let Some(gid) = spec.unix_gid {
        matchers.push(Matcher::UnixGid(gid));
    }
    if let Some(id) = &spec.spiffe_id {
        if !id.starts_with("spiffe://") || id.len() <= "spiffe://".len() {
            return Err(at(format!(
                "spiffe_id `{id}` is not a SPIFFE ID (spiffe://<trust-domain>/<path>)"
            )));
        }
        matchers.push(Matcher::SpiffeId(id.clone()));
    }
    if let Some(domain) = &spec.spiffe_trust_domain {
        let bare = domain.trim_start_matches("spiffe://").trim_end_matches('/');
        if bare.is_empty() || bare.contains('/') {
            return Err(at(format!(
                "spiffe_trust_domain `{domain}` is not a trust domain such as example.org"
            )));
        }
        matchers.push(Matcher::TrustDomain(format!("spiffe://{bare}/")));
    }
    if let Some(name) = &spec.dns_name {
        matchers.push(Matcher::DnsName(name.clone()));
    }
    if let Some(name) = &spec.common_name {
        matchers.push(Matcher::CommonName(name.clone()));
    }
    if let Some(hash) = &spec.token_sha256 {
        let bytes: Option<Vec<u8>> = (hash.len() == 64)
            .then(|| {
                (0..32)
                    .map(|i| u8::from_str_radix(hash.get(2 * i..2 * i + 2)?, 16).ok())
                    .collect()
            })
            .flatten();
        let Some(bytes) = bytes else {
            return Err(at(
                "token_sha256 must be 64 hex digits (the SHA-256 of the token, never the token)"
                    .into(),
            ));
        };
        let mut array = [0u8; 32];
        array.copy_from_slice(&bytes);
        matchers.push(Matcher::TokenSha256(array));
    }
    if let Some(id) = &spec.aws_access_key_id {
        if !crate::domain::is_access_key_id(id) {
            return Err(at(format!(
                "aws_access_key_id `{}` is not an access key id (16 to 128 letters and digits)",
                id.escape_default()
            )));
        }
        matchers.push(Matcher::AwsAccessKeyId(id.clone()));
    }
    if let Some(account) = spec
        .accounts
        .iter()
        .find(|a| !crate::domain::is_account_id(a))
    {
        return Err(at(format!(
            "accounts holds `{}`, which is not a 12-digit account id",
            account.escape_default()
        )));
    }
    if let Some(region) = spec
        .regions
        .iter()
        .find(|r| !crate::domain::is_region_name(r))
    {
        return Err(at(format!(
            "regions holds `{}`, which is not an AWS Region name",
            region.escape_default()
        )));
    }
    let limit = ScopeLimit {
        accounts: spec.accounts,
        regions: spec.regions,
    };
    match matchers.len() {
        1 => Ok((matchers.remove(0), spec.role, limit)),
        0 => Err(at(format!("give one of {MATCHERS}"))),
        _ => Err(at(format!("give only one of {MATCHERS}"))),
    }
}

impl Rules {
    /// Reads a rules file (TOML, a `[[rule]]` table per rule).
    pub fn from_file(path: &Path, loopback_anonymous: Option<Role>) -> Result<Rules, RulesError> {
        let read_error = |source| RulesError::Read {
            path: path.to_owned(),
            source,
        };
        let bytes = crate::files::read_trusted(path).map_err(read_error)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            read_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.utf8_error(),
            ))
        })?;
        let invalid = |message: String| RulesError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: RulesFile = toml::from_str(&text).map_err(|e| invalid(e.message().to_owned()))?;
        let rules = file
            .rule
            .into_iter()
            .enumerate()
            .map(|(i, spec)| rule(i, spec))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        Ok(Rules {
            rules,
            loopback_anonymous,
        })
    }

    /// The defaults: the server's own uid on the socket and the holder of the admin token
    /// are admin.
    pub fn defaults(
        server_uid: u32,
        admin_token_sha256: [u8; 32],
        loopback_anonymous: Option<Role>,
    ) -> Rules {
        Rules {
            rules: vec![
                (
                    Matcher::UnixUid(server_uid),
                    Role::Admin,
                    ScopeLimit::default(),
                ),
                (
                    Matcher::TokenSha256(admin_token_sha256),
                    Role::Admin,
                    ScopeLimit::default(),
                ),
            ],
            loopback_anonymous,
        }
    }

    /// These rules, with the AWS-protocol door's generated key (`access_key_id`) admin too.
    pub fn with_admin_access_key(mut self, access_key_id: &str) -> Rules {
        self.rules.push((
            Matcher::AwsAccessKeyId(access_key_id.to_owned()),
            Role::Admin,
            ScopeLimit::default(),
        ));
        self
    }

    /// The highest role any rule gives `identity`; `None` when no rule matches.
    pub fn role_of(&self, identity: &Identity) -> Option<Role> {
        let by_rule = self
            .rules
            .iter()
            .filter(|(matcher, _, _)| matcher.matches(identity))
            .map(|(_, role, _)| *role)
            .max();
        match identity {
            Identity::LoopbackPeer { .. } => by_rule.max(self.loopback_anonymous),
            _ => by_rule,
        }
    }

    /// The roles `identity` has per scope, when a rule that matches it is limited to some
    /// accounts or Regions; `None` when its role is the same everywhere.
    pub fn scoped_roles(&self, identity: &Identity) -> Option<ScopedRoles> {
        // Most rule sets limit nobody: then no identity is matched a second time.
        if self.rules.iter().all(|(_, _, limit)| limit.is_any()) {
            return None;
        }
        let matching = || {
            self.rules
                .iter()
                .filter(|(matcher, _, _)| matcher.matches(identity))
        };
        if matching().all(|(_, _, limit)| limit.is_any()) {
            return None;
        }
        let anonymous = match identity {
            Identity::LoopbackPeer { .. } => self.loopback_anonymous,
            _ => None,
        };
        Some(
            matching()
                .map(|(_, role, limit)| (*role, limit.clone()))
                .chain(anonymous.map(|role| (role, ScopeLimit::default())))
                .collect(),
        )
    }

    /// Whether plaintext loopback callers without credentials count as anyone.
    pub fn admits_anonymous_loopback(&self) -> bool {
        self.loopback_anonymous.is_some()
    }

    /// Whether some rule names this token (checked against every token rule, in constant
    /// time each).
    pub fn knows_token(&self, sha256: &[u8; 32]) -> bool {
        let identity = Identity::Token { sha256: *sha256 };
        self.rules
            .iter()
            .filter(|(m, _, _)| matches!(m, Matcher::TokenSha256(_)))
            .fold(false, |known, (m, _, _)| m.matches(&identity) | known)
    }
}

/// The admin token in the state directory, created (random, mode 0600) at first start. An
/// existing file is used only when it is private to the server and long enough; otherwise
/// the start is refused, saying why (a planted `admin.token` must not make its writer admin).
pub fn admin_token(state_dir: &Path) -> Result<String, RulesError> {
    let path = state_dir.join("admin.token");
    let error = |source| RulesError::Token {
        path: path.clone(),
        source,
    };
    crate::files::private_dir(state_dir).map_err(error)?;
    if let Some(token) =
        crate::files::read_private_secret(&path, crate::files::MIN_TOKEN_BYTES).map_err(error)?
    {
        return Ok(token.as_str().to_owned());
    }
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(bytes.as_mut_slice())
        .map_err(|_| error(std::io::Error::other("no randomness")))?;
    let token = crate::files::create_private_secret(&path, bytes.as_slice()).map_err(error)?;
    Ok(token.as_str().to_owned())
}

/// Registered with the reloader when the rules come from a file (the defaults are fixed):
/// a file that does not parse is refused and the rules in force stay.
impl crate::reload::Reload for super::Authorizer {
    fn label(&self) -> crate::metrics::ReloadedFile {
        crate::metrics::ReloadedFile::Rules
    }

    fn files(&self) -> Vec<&Path> {
        self.rules_file().into_iter().collect()
    }

    fn reload(&self) -> crate::reload::Reloaded {
        match super::Authorizer::reload(self) {
            Ok(true) => {
                if let Some(path) = self.rules_file() {
                    tracing::info!(path = %path.display(), "authorization rules reloaded");
                }
                crate::reload::Reloaded::Taken
            }
            // The same rules again (a forced reload, a file rewritten alike) say nothing.
            Ok(false) => crate::reload::Reloaded::Taken,
            Err(e) => {
                tracing::error!(error = %e, "new authorization rules refused; the rules in force stay");
                crate::reload::Reloaded::Refused
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_in_a_certificate_name_are_escaped() {
        let forged = Identity::Certificate {
            name: CertName::CommonName("app\n2026-01-01 INFO admin\u{1b}[0m".into()),
        };
        assert_eq!(
            forged.to_string(),
            "cn:app\\n2026-01-01 INFO admin\\u{1b}[0m"
        );
        let spiffe = Identity::Certificate {
            name: CertName::Spiffe("spiffe://example.org/a\rb".into()),
        };
        assert_eq!(spiffe.to_string(), "spiffe://example.org/a\\rb");
    }

    fn rules_from(text: &str) -> Result<Rules, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, text).unwrap();
        Rules::from_file(&path, None).map_err(|e| e.to_string())
    }

    #[test]
    fn rules_map_identities_to_the_highest_role() {
        let token = "s3cret-token";
        let rules = rules_from(&format!(
            r#"
            [[rule]]
            role = "read-only"
            spiffe_trust_domain = "example.org"
            [[rule]]
            role = "admin"
            spiffe_id = "spiffe://example.org/ns/prod/sa/deployer"
            [[rule]]
            role = "read-only"
            unix_gid = 2000
            [[rule]]
            role = "admin"
            token_sha256 = "{}"
            [[rule]]
            role = "read-only"
            dns_name = "reader.internal"
            [[rule]]
            role = "code-reader"
            aws_access_key_id = "KEYDTRIAGE00000000"
            "#,
            hex(&token_hash(token))
        ))
        .unwrap();
        let spiffe = |id: &str| Identity::Certificate {
            name: CertName::Spiffe(id.into()),
        };
        assert_eq!(
            rules.role_of(&spiffe("spiffe://example.org/ns/prod/sa/deployer")),
            Some(Role::Admin)
        );
        assert_eq!(
            rules.role_of(&spiffe("spiffe://example.org/ns/prod/sa/app")),
            Some(Role::ReadOnly)
        );
        assert_eq!(
            rules.role_of(&spiffe("spiffe://example.org.evil/x")),
            None,
            "trust domains match whole"
        );
        assert_eq!(
            rules.role_of(&Identity::UnixPeer { uid: 7, gid: 2000 }),
            Some(Role::ReadOnly)
        );
        assert_eq!(rules.role_of(&Identity::UnixPeer { uid: 7, gid: 7 }), None);
        assert_eq!(
            rules.role_of(&Identity::Token {
                sha256: token_hash(token)
            }),
            Some(Role::Admin)
        );
        assert!(rules.knows_token(&token_hash(token)));
        assert!(!rules.knows_token(&token_hash("guess")));
        assert_eq!(
            rules.role_of(&Identity::Certificate {
                name: CertName::Dns("READER.internal".into())
            }),
            Some(Role::ReadOnly)
        );
        let aws = |id: &str| Identity::AwsAccessKey {
            access_key_id: id.into(),
        };
        assert_eq!(
            rules.role_of(&aws("KEYDTRIAGE00000000")),
            Some(Role::CodeReader)
        );
        assert_eq!(rules.role_of(&aws("KEYDTRIAGE00000001")), None);
        assert_eq!(
            aws("KEYDTRIAGE00000000").to_string(),
            "aws:KEYDTRIAGE00000000"
        );
        assert_eq!(
            rules.role_of(&Identity::LoopbackPeer {
                addr: "127.0.0.1:1".parse().unwrap()
            }),
            None,
            "deny by default"
        );
    }

    #[test]
    fn bad_rules_are_named() {
        for (text, message) in [
            (
                "[[rule]]\nrole = \"admin\"\n",
                "rule 1 (admin): give one of",
            ),
            (
                "[[rule]]\nrole = \"admin\"\nunix_uid = 1\nunix_gid = 1\n",
                "give only one of",
            ),
            (
                "[[rule]]\nrole = \"root\"\nunix_uid = 1\n",
                "unknown variant `root`",
            ),
            (
                "[[rule]]\nrole = \"admin\"\ntoken_sha256 = \"plaintext-token\"\n",
                "64 hex digits",
            ),
            (
                "[[rule]]\nrole = \"admin\"\nspiffe_id = \"example.org/x\"\n",
                "not a SPIFFE ID",
            ),
            (
                "[[rule]]\nrole = \"admin\"\naws_access_key_id = \"AKID/x\"\n",
                "not an access key id",
            ),
            (
                "[[rule]]\nrole = \"admin\"\nuid = 1\n",
                "unknown field `uid`",
            ),
            ("[[rule]\n", "invalid"),
        ] {
            let err = rules_from(text).unwrap_err();
            assert!(err.contains(message), "{text:?}: {err}");
        }
    }

    #[test]
    fn token_identities_never_show_the_token() {
        let identity = Identity::Token {
            sha256: token_hash("s3cret-token"),
        };
        let shown = identity.to_string();
        assert!(shown.starts_with("token:sha256:") && !shown.contains("s3cret"));
    }

    #[test]
    fn the_admin_token_is_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = admin_token(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(admin_token(dir.path()).unwrap(), first);
        let mode = std::fs::metadata(dir.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
