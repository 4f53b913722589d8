//! Typed configuration: one TOML file plus `INSPECTOR_KEYD_*` environment overrides, every
//! key with a documented default. Callers inject the environment, so tests never touch
//! the process's own.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use serde_with::{DisplayFromStr, OneOrMany, PickFirst, serde_as};

use crate::{rpc::Role, verify::Profile};

/// Cache settings (the `[cache]` table of the configuration).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// How long a customer managed key ARN is served without asking the backend.
    /// Default `60s`.
    #[serde(with = "humantime_serde")]
    pub key_ttl: Duration,
    /// How long "the AWS owned key is in use" is served without asking. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub aws_owned_ttl: Duration,
    /// How long past its TTL an entry may still be served while the backend is failing
    /// (unavailable, throttled, timing out). Default `10m`; `0s` disables stale reads.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            key_ttl: Duration::from_secs(60),
            aws_owned_ttl: Duration::from_secs(30),
            max_stale: Duration::from_secs(600),
        }
    }
}

/// The files the TLS listener is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_files: Vec<PathBuf>,
    /// SPIFFE trust domains and the CA bundles allowed to vouch for each.
    pub trust_domain_ca_files: std::collections::BTreeMap<String, Vec<PathBuf>>,
    /// Accept clients without a certificate (authorization then needs a bearer token).
    pub allow_token_only: bool,
}

impl TlsFiles {
    /// Every file the listener is built from.
    pub fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert_file, &self.key_file]
            .into_iter()
            .chain(&self.client_ca_files)
            .chain(self.trust_domain_ca_files.values().flatten())
    }
}

/// Prefix of environment overrides. Nested keys join with `__`:
/// `INSPECTOR_KEYD_LISTEN__TCP=127.0.0.1:6000` sets `[listen] tcp`.
pub const ENV_PREFIX: &str = "INSPECTOR_KEYD_";

/// Which backend serves the key configuration and KMS reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The embedded local backend (no AWS account needed).
    #[default]
    Local,
    /// Amazon Inspector and AWS KMS, through the official AWS SDK.
    Aws,
}

/// The Region and account the sidecar works in, once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub region: String,
    pub account_id: String,
}

/// How the aws backend reaches AWS (the `[aws]` table).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// Endpoint URL override for Amazon Inspector (tests, private endpoints). Default none.
    /// Must be https, except to a loopback host (127.0.0.0/8, `::1`, `localhost`).
    pub inspector2_endpoint: Option<String>,
    /// Endpoint URL override for AWS KMS. Default none. https, as `inspector2_endpoint`.
    pub kms_endpoint: Option<String>,
    /// Endpoint URL override for AWS STS. Default none. https, as `inspector2_endpoint`.
    pub sts_endpoint: Option<String>,
    /// Endpoint URL override for AWS IAM (read for the principal's policies). Default none.
    /// https, as `inspector2_endpoint`.
    pub iam_endpoint: Option<String>,
    /// Endpoint URL override for AWS Organizations (`[organization]`). Default none.
    /// https, as `inspector2_endpoint`.
    pub organizations_endpoint: Option<String>,
    /// Time to connect to an AWS endpoint. Default `3s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time for one AWS operation, retries included. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Attempts per AWS operation (the SDK's standard retry with backoff). Default 3.
    pub max_attempts: u32,
}

impl Default for AwsConfig {
    fn default() -> AwsConfig {
        AwsConfig {
            inspector2_endpoint: None,
            kms_endpoint: None,
            sts_endpoint: None,
            iam_endpoint: None,
            organizations_endpoint: None,
            connect_timeout: Duration::from_secs(3),
            operation_timeout: Duration::from_secs(10),
            max_attempts: 3,
        }
    }
}

/// The whole configuration. See the configuration reference, docs/configuration.md.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Default `local`.
    pub backend: BackendKind,
    /// AWS Region the sidecar manages keys for. Default: `us-east-1` on the local backend;
    /// the AWS default chain (AWS_REGION, profile, IMDS) on the aws backend.
    pub region: Option<String>,
    /// 12-digit AWS account id. Default: `111122223333` on the local backend; STS
    /// GetCallerIdentity on the aws backend.
    pub account_id: Option<String>,
    /// Directory for the local store (and the default socket). Default `state`.
    pub state_dir: PathBuf,
    pub listen: ListenConfig,
    /// Seconds in-flight calls get to finish after SIGTERM/SIGINT. Default 10.
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub shutdown_timeout_secs: u64,
    /// `tracing` filter directive when `RUST_LOG` is unset. Default `info`. Either way the AWS
    /// SDK and the HTTP and TLS libraries log at `info` at most (see `src/main.rs`).
    pub log_level: String,
    pub verification: VerificationConfig,
    pub cache: CacheConfig,
    pub authz: AuthzConfig,
    pub tls: TlsConfig,
    pub local: LocalConfig,
    pub ops: OpsConfig,
    pub connections: ConnectionsConfig,
    pub aws: AwsConfig,
    pub aws_api: AwsApiConfig,
    /// The accounts managed besides the sidecar's own Region of its own account
    /// (`[[accounts]]`, one table each). Default none: that one scope alone.
    pub accounts: Vec<AccountConfig>,
    /// Accounts read from AWS Organizations (the `[organization]` table, aws backend).
    /// Default none: only the sidecar's own account and `[[accounts]]`.
    pub organization: Option<OrganizationConfig>,
    pub fleet: FleetConfig,
}

/// Keeping the managed scopes in a desired state (the `[fleet]` table).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// The desired-state file (docs/fleet.md) the sidecar compares every managed scope to.
    /// Default none: no reconciling. A [trusted file](docs/configuration.md); read again at
    /// each round, a change that does not parse keeping the last one in force.
    pub desired_state_file: Option<PathBuf>,
    /// One round over every scope, spread over it. Default `5m`; at least `1s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// `report` (the default): drift from the desired state is a metric, a Watch event and a
    /// log line; `enforce`: it is also applied, as `fleet apply` would.
    pub mode: FleetMode,
}

impl Default for FleetConfig {
    fn default() -> FleetConfig {
        FleetConfig {
            desired_state_file: None,
            interval: Duration::from_secs(300),
            mode: FleetMode::Report,
        }
    }
}

/// What reconciling does with drift from the desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FleetMode {
    /// Reports it.
    #[default]
    Report,
    /// Reports and applies it.
    Enforce,
}

/// The accounts of an AWS organization, managed through one role name (`[organization]`,
/// aws backend only): every ACTIVE account `ListAccounts` returns to the sidecar's own
/// identity (the management account's, or a delegated administrator's), each in `regions`.
/// An account also listed in `[[accounts]]` is managed as that entry says.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganizationConfig {
    /// The IAM role assumed in each account, by name (with its path, if any:
    /// `ops/inspector-keyd-member`): `arn:aws:iam::<account id>:role/<role_name>`. Required.
    pub role_name: String,
    /// The Regions managed in each account (Region names, at least one). Required.
    pub regions: Vec<String>,
    /// The external id `AssumeRole` passes, when the role's trust policy asks for one.
    pub external_id: Option<String>,
    /// How often the accounts are listed again: an account that joins is managed from the
    /// next listing, one that leaves or is suspended no longer. Default `1h`; at least `1s`.
    #[serde(default = "OrganizationConfig::default_refresh_interval")]
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl OrganizationConfig {
    fn default_refresh_interval() -> Duration {
        Duration::from_secs(3600)
    }

    /// The role assumed in `account_id`.
    pub fn role_arn(&self, account_id: &str) -> String {
        format!("arn:aws:iam::{account_id}:role/{}", self.role_name)
    }
}

/// An account the sidecar manages, and its Regions (`[[accounts]]`). Inspector's key is set
/// per account and Region; each pair is a scope of its own. Listing the sidecar's own
/// account adds Regions to it.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The 12-digit account id. Required.
    pub id: String,
    /// The Regions managed in it (Region names, at least one). Required.
    pub regions: Vec<String>,
    /// The aws backend: the IAM role assumed in the account. Required there for every
    /// account but the sidecar's own; the local backend ignores it.
    pub role_arn: Option<String>,
    /// The external id `AssumeRole` passes, when the role's trust policy asks for one.
    pub external_id: Option<String>,
    /// The principal that calls Inspector in the account, whose access verification checks.
    /// Default: the configured principal's role or user name in this account.
    pub principal_arn: Option<String>,
}

/// The AWS-protocol door (the `[aws_api]` table): Amazon Inspector's REST-JSON API for the
/// encryption-key operations and BatchGetCodeSnippet, signed with SigV4, so the AWS CLI and
/// SDKs can call the sidecar by changing only their endpoint URL.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsApiConfig {
    /// HTTP/1.1 address of the door. Default `127.0.0.1:50052`; empty disables it; port 0
    /// picks a free port. Plaintext on loopback only, unless the `[tls]` listener is
    /// configured: then the door speaks TLS with its certificate and may listen on any
    /// interface.
    pub listen: String,
    /// The access keys callers sign with (AWS shared-credentials format, one profile per
    /// key). Default `<state_dir>/aws-credentials`, created at first start with a random key
    /// pair (profile `inspector-keyd-admin`, admin under the default rules). Refused when
    /// owned by a uid other than the server's or root, writable by group or others, or
    /// readable by others; read again when it changes.
    pub credentials_file: Option<PathBuf>,
}

impl Default for AwsApiConfig {
    fn default() -> AwsApiConfig {
        AwsApiConfig {
            listen: "127.0.0.1:50052".into(),
            credentials_file: None,
        }
    }
}

/// Operating the sidecar: metrics and probes, logs, limits, the drift watch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// HTTP address of `/metrics`, `/livez` and `/readyz`. Default `127.0.0.1:9464`; empty
    /// disables it.
    pub metrics_listen: String,
    /// Plaintext gRPC address serving only `grpc.health.v1` (no API, no reflection), for
    /// Kubernetes `grpc` probes, which dial the Pod IP: `""` is liveness, the API service
    /// name is readiness. Default empty (off); may listen beyond loopback.
    pub health_listen: String,
    /// `text` (default, for people) or `json` (one object per line).
    pub log_format: String,
    /// RPCs served at once; more are answered RESOURCE_EXHAUSTED at once. Default 256.
    pub max_concurrent_rpcs: usize,
    /// HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// bounds what a client that stops reading can make the server hold. Default 128.
    pub max_streams_per_connection: u32,
    /// Longest an RPC may take; a shorter `grpc-timeout` from the caller wins. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub rpc_timeout: Duration,
    /// Largest request message accepted, in bytes. Default 1 MiB.
    pub max_request_bytes: usize,
    /// Largest response message sent, in bytes. Default 4 MiB.
    pub max_response_bytes: usize,
    /// How often every configured customer managed key is verified again. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub drift_interval: Duration,
    /// Readiness follows the answers to the backend calls the cache and the drift check
    /// make; it asks the backend itself only when none answered for about `cache.key_ttl`,
    /// and every `ready_check_interval` (± 15 %) while the backend is unreachable. Probes
    /// never call it. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub ready_check_interval: Duration,
    /// WatchEncryptionKey streams open at once; more are answered RESOURCE_EXHAUSTED.
    /// Default 64.
    pub max_watch_streams: usize,
    /// Longest a WatchEncryptionKey stream lasts; it then ends UNAVAILABLE and the client
    /// opens it again. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub max_watch_duration: Duration,
    /// Calls that reach the backend uncached (VerifyKeyPolicy of a stored key,
    /// BatchGetCodeSnippet) one caller may make a minute; more are answered
    /// RESOURCE_EXHAUSTED with RetryInfo. Default 120.
    pub uncached_calls_per_minute: std::num::NonZeroU32,
    /// How many of those one caller may make at once. Default 20.
    pub uncached_burst: std::num::NonZeroU32,
}

impl Default for OpsConfig {
    fn default() -> OpsConfig {
        OpsConfig {
            metrics_listen: "127.0.0.1:9464".into(),
            health_listen: String::new(),
            log_format: "text".into(),
            max_concurrent_rpcs: 256,
            max_streams_per_connection: 128,
            rpc_timeout: Duration::from_secs(30),
            max_request_bytes: 1 << 20,
            max_response_bytes: 4 << 20,
            drift_interval: Duration::from_secs(300),
            ready_check_interval: Duration::from_secs(10),
            max_watch_streams: 64,
            max_watch_duration: Duration::from_secs(600),
            uncached_calls_per_minute: std::num::NonZeroU32::MIN.saturating_add(119),
            uncached_burst: std::num::NonZeroU32::MIN.saturating_add(19),
        }
    }
}

/// Limits on connections, for every listener (the `[connections]` table). A connection
/// refused at a limit is closed at once and counted in
/// `inspector_keyd_connections_refused_total`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Connections one listener holds at once. Default 512.
    pub max_per_listener: usize,
    /// Connections one peer IP address holds at once on one TCP listener. Default 128.
    pub max_per_peer_ip: usize,
    /// Time a client has to send the HTTP/2 connection preface once connected (on the TLS
    /// listener, once the handshake is done). Default `10s`.
    #[serde(with = "humantime_serde")]
    pub preface_timeout: Duration,
    /// TLS handshakes in progress at once on the TLS listener. Default 64.
    pub max_tls_handshakes: usize,
    /// Time a client has to finish its TLS handshake. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Bytes of answers the kernel may hold unsent for one TCP connection
    /// (TCP_NOTSENT_LOWAT); beyond that the server holds them, within
    /// `ops.max_streams_per_connection` streams. Default 16384.
    pub max_unsent_bytes: u32,
    /// Time a connection may go without a byte of its answers written (its client does not
    /// read) before the server closes it. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub stalled_write_timeout: Duration,
    /// Age at which a connection is asked to go away (HTTP/2 GOAWAY; clients reconnect), so
    /// that a removed CA, an expired certificate or a changed rule ends old sessions.
    /// Default `30m`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Time the calls in flight on a connection past `max_age` get to finish (Watch streams
    /// are ended then). Default `1m`.
    #[serde(with = "humantime_serde")]
    pub max_age_grace: Duration,
}

impl Default for ConnectionsConfig {
    fn default() -> ConnectionsConfig {
        ConnectionsConfig {
            max_per_listener: 512,
            max_per_peer_ip: 128,
            preface_timeout: Duration::from_secs(10),
            max_tls_handshakes: 64,
            tls_handshake_timeout: Duration::from_secs(10),
            max_unsent_bytes: 16 << 10,
            stalled_write_timeout: Duration::from_secs(30),
            max_age: Duration::from_secs(30 * 60),
            max_age_grace: Duration::from_secs(60),
        }
    }
}

/// Settings of the local backend.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// Test hook (the `test-hooks` feature; unknown keys otherwise): latency added before
    /// every key-configuration write (Update, Reset), to exercise timeouts and
    /// cancellation. Default `0s`.
    #[cfg(feature = "test-hooks")]
    #[serde(with = "humantime_serde")]
    pub write_latency: Duration,
    /// Test hook (the `test-hooks` feature; unknown keys otherwise): a file of faults
    /// (errors by class, latency, hangs) injected into the backend's reads and writes, read
    /// again on every call; see `src/backend/faulty.rs`. Default none.
    #[cfg(feature = "test-hooks")]
    pub fault_file: Option<PathBuf>,
    /// The key-encryption key the local KMS seals every key's material under: a file of
    /// its own (0600, made at first start), so a copy of the store alone reveals no key.
    /// Keep it out of the store's backups, or back it up apart. Default `<state_dir>/kek`.
    pub kek_file: Option<PathBuf>,
}

/// Who may call what, and the audit log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzConfig {
    /// Rules file (TOML, one `[[rule]]` per rule), read again when it changes and on SIGHUP.
    /// Default none: the built-in rules (the server's own uid on the Unix socket, and the
    /// holder of `<state_dir>/admin.token`, are admin).
    pub rules_file: Option<PathBuf>,
    /// Role of plaintext loopback TCP callers that present no token: `read-only`
    /// (default) or `none`.
    pub loopback_anonymous_role: String,
    /// File the audit lines are appended to, besides the log. Default none.
    pub audit_file: Option<PathBuf>,
    /// How often the rules file and the TLS files are checked for changes. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for AuthzConfig {
    fn default() -> AuthzConfig {
        AuthzConfig {
            rules_file: None,
            loopback_anonymous_role: "read-only".into(),
            audit_file: None,
            reload_interval: Duration::from_secs(2),
        }
    }
}

/// The TLS listener, for callers in other pods or hosts.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the TLS listener, on any interface (`0.0.0.0:50443`). Default empty: none.
    pub listen: String,
    /// PEM certificate chain of the server.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the server.
    pub key_file: Option<PathBuf>,
    /// PEM CA bundles client certificates must chain to.
    #[serde_as(as = "OneOrMany<_>")]
    pub client_ca_files: Vec<PathBuf>,
    /// SPIFFE trust domains, each with the PEM CA bundles allowed to vouch for its IDs
    /// (`[tls.trust_domain_ca_files]`, `"example.org" = ["ca.pem"]`). When set, a client
    /// certificate with a SPIFFE ID must be in one of these trust domains and chain to that
    /// domain's bundles; its CAs are also trusted for the handshake. Default none.
    #[serde_as(as = "std::collections::BTreeMap<_, OneOrMany<_>>")]
    pub trust_domain_ca_files: std::collections::BTreeMap<String, Vec<PathBuf>>,
    /// Accept clients without a certificate; they must then present a bearer token.
    /// Default false: a client certificate is required.
    pub allow_token_only: bool,
}

/// How keys are verified before they are put in use.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct VerificationConfig {
    /// The IAM principal that calls Inspector. Default
    /// `arn:aws:iam::<account_id>:role/inspector-keyd`.
    pub principal_arn: Option<String>,
    /// Files holding that principal's identity policies (JSON). Default none: on the aws
    /// backend they are read from IAM, with the permissions boundary.
    #[serde_as(as = "OneOrMany<_>")]
    pub identity_policy_files: Vec<PathBuf>,
    /// File holding that principal's permissions boundary policy (JSON). Default none. When
    /// this or `identity_policy_files` is set, the files are the principal's policies and
    /// IAM is not read.
    pub permissions_boundary_file: Option<PathBuf>,
    /// Profile for CODE + AWS_LAMBDA_FUNCTION. Default `codeguru-grants` on the local
    /// backend (which emulates that system).
    pub lambda_profile: Option<String>,
    /// Profile for CODE + CODE_REPOSITORY. Default `amazon-q-code-repository`.
    pub code_repository_profile: Option<String>,
    /// `EXTERNAL_ACCESS` is an ERROR, so the Update gate refuses a key whose policy lets a
    /// principal outside the account, its trusted accounts and its organization read the
    /// code or break scanning. Default false: a SECURITY_WARNING.
    #[serde_as(as = "PickFirst<(_, DisplayFromStr)>")]
    pub deny_external_access: bool,
    /// 12-digit account ids whose access to a key is not external, besides the sidecar's
    /// own. Default none.
    #[serde_as(as = "OneOrMany<_>")]
    pub trusted_accounts: Vec<String>,
    /// The AWS Organizations id (`o-` and 10 to 32 lowercase letters or digits) whose
    /// principals' access is not external (`aws:PrincipalOrgID`). Default none.
    pub organization_id: Option<String>,
}

/// Where the sidecar listens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Unix socket path. Default `<state_dir>/keyd.sock`; empty disables it. A stale socket
    /// there is replaced; a live server's, or anything that is not a socket, is refused.
    pub unix_socket: Option<PathBuf>,
    /// Octal file mode of the socket, set before it appears at its path. Default `0660`
    /// (owner and group may connect).
    pub unix_socket_mode: String,
    /// Plaintext TCP address, loopback only. Default `127.0.0.1:50051`; empty disables it;
    /// port 0 picks a free port.
    pub tcp: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            backend: BackendKind::Local,
            region: None,
            account_id: None,
            state_dir: PathBuf::from("state"),
            listen: ListenConfig::default(),
            shutdown_timeout_secs: 10,
            log_level: "info".into(),
            verification: VerificationConfig::default(),
            cache: CacheConfig::default(),
            authz: AuthzConfig::default(),
            tls: TlsConfig::default(),
            local: LocalConfig::default(),
            ops: OpsConfig::default(),
            connections: ConnectionsConfig::default(),
            aws: AwsConfig::default(),
            accounts: Vec::new(),
            organization: None,
            fleet: FleetConfig::default(),
            aws_api: AwsApiConfig::default(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> ListenConfig {
        ListenConfig {
            unix_socket: None,
            unix_socket_mode: "0660".into(),
            tcp: "127.0.0.1:50051".into(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file `{path}` is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable `{name}` does not fit the configuration: {message}")]
    Env { name: String, message: String },
    #[error("invalid configuration: {0}")]
    Shape(String),
    #[error("invalid configuration: `{key}` {message}")]
    Value { key: &'static str, message: String },
}

/// The listeners a validated configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    pub unix_socket: Option<PathBuf>,
    pub unix_socket_mode: u32,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<(SocketAddr, TlsFiles)>,
    /// The AWS-protocol door, and whether it speaks TLS (with the `[tls]` certificate).
    pub aws_api: Option<AwsApiListener>,
}

/// Where the AWS-protocol door listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsApiListener {
    pub addr: SocketAddr,
    /// TLS with the `[tls]` listener's certificate and key; plaintext (loopback only) when
    /// false.
    pub tls: bool,
}

/// A configuration parsed and validated once (file, then environment): the file's tables,
/// and every value the file spells as text (addresses, roles, profiles) in its type. What
/// the server and `config check` use; nothing parses a setting again where it is used.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub listeners: Listeners,
    /// `/metrics`, `/livez`, `/readyz`; `None`: off.
    pub metrics_listen: Option<SocketAddr>,
    /// The health-only gRPC listener; `None`: off.
    pub health_listen: Option<SocketAddr>,
    /// The role of plaintext loopback callers without a token.
    pub loopback_anonymous_role: Option<Role>,
    pub lambda_profile: Profile,
    pub code_repository_profile: Profile,
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn parse(value: &str) -> Result<LogFormat, ConfigError> {
        match value {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(ConfigError::Value {
                key: "ops.log_format",
                message: format!("`{other}` is neither `text` nor `json`"),
            }),
        }
    }
}

impl Settings {
    /// Reads `file` (when given), applies the `INSPECTOR_KEYD_*` entries of `env`, and
    /// validates the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        Settings::new(Config::load(file, env)?)
    }

    /// As [`Settings::load`], from the text of a file (`path` names it in errors).
    pub fn parse(
        file: Option<(&str, &Path)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        Settings::new(Config::parse(file, env)?)
    }

    /// Validates `config`, parsing each text value into its type once.
    pub fn new(config: Config) -> Result<Settings, ConfigError> {
        config.validate()?;
        Ok(Settings {
            listeners: config.listeners()?,
            metrics_listen: optional_addr(
                &config.ops.metrics_listen,
                "ops.metrics_listen",
                "127.0.0.1:9464",
            )?,
            health_listen: optional_addr(
                &config.ops.health_listen,
                "ops.health_listen",
                "0.0.0.0:8086",
            )?,
            loopback_anonymous_role: config.loopback_anonymous_role()?,
            lambda_profile: config.lambda_profile()?,
            code_repository_profile: config.code_repository_profile()?,
            log_format: LogFormat::parse(&config.ops.log_format)?,
            config,
        })
    }

    /// How long in-flight calls get to finish after a stop signal.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.config.shutdown_timeout_secs)
    }
}

/// An address setting where empty means off.
fn optional_addr(
    value: &str,
    key: &'static str,
    example: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| ConfigError::Value {
        key,
        message: format!("`{value}` is not an address such as {example}"),
    })
}

/// An AWS endpoint override must be an https URL, or an http one to a loopback host
/// (127.0.0.0/8, `::1`, `localhost`): the requests carry signed credentials and code
/// snippets. The message never repeats the value whole (a URL may carry a password); it
/// names only the scheme or the host.
fn check_endpoint(key: &'static str, value: &str) -> Result<(), ConfigError> {
    let refuse = |message: String| ConfigError::Value { key, message };
    let url = url::Url::parse(value).map_err(|e| {
        refuse(format!(
            "is not a URL ({e}); an endpoint looks like https://kms.eu-west-1.amazonaws.com"
        ))
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse(
            "must not carry a user name or password (the sidecar signs its requests)".into(),
        ));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => Ok(()),
        ("http", Some(_)) if loopback => Ok(()),
        ("http", Some(host)) => Err(refuse(format!(
            "is a plaintext http URL to `{host}`, which is not a loopback address: use https (http is allowed only to 127.0.0.0/8, ::1 or localhost)"
        ))),
        ("https" | "http", None) => Err(refuse("is a URL without a host".into())),
        (scheme, _) => Err(refuse(format!(
            "has the scheme `{scheme}`; an endpoint is an https URL"
        ))),
    }
}

impl Config {
    /// Reads `file` (when given) and applies the `INSPECTOR_KEYD_*` entries of `env`.
    fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Config::parse(Some((&text, path)), env)
            }
            None => Config::parse(None, env),
        }
    }

    /// As [`Config::load`], from the text of a file (`path` names it in errors).
    fn parse(
        file: Option<(&str, &Path)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some((text, path)) => text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.message().to_owned(),
                })?,
            None => toml::Table::new(),
        };
        let mut overrides = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            overrides.push(name.clone());
            let path: Vec<String> = rest
                .to_ascii_lowercase()
                .split("__")
                .map(str::to_owned)
                .collect();
            set_path(&mut table, &path, value).map_err(|message| ConfigError::Env {
                name: name.clone(),
                message,
            })?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let mut message = match e.path().to_string().as_str() {
                    "." => e.inner().message().to_owned(),
                    path => format!("`{path}`: {}", e.inner().message()),
                };
                if !overrides.is_empty() {
                    message.push_str(&format!(
                        " (environment overrides: {})",
                        overrides.join(", ")
                    ));
                }
                ConfigError::Shape(message)
            })?;
        Ok(config)
    }

    /// Refuses values the file's shape lets through but the sidecar cannot use; the first
    /// one found is the error.
    fn validate(&self) -> Result<(), ConfigError> {
        self.check_placement()?;
        self.check_aws()?;
        self.check_more_than_zero()?;
        self.check_principal()?;
        self.check_trust()?;
        self.check_accounts()?;
        self.check_organization()?;
        if self.fleet.interval < Duration::from_secs(1) {
            return Err(ConfigError::Value {
                key: "fleet.interval",
                message: "must be at least 1s".into(),
            });
        }
        Ok(())
    }

    /// `[organization]` is for the aws backend, with a role name, Regions and an interval
    /// that make sense.
    fn check_organization(&self) -> Result<(), ConfigError> {
        let Some(organization) = &self.organization else {
            return Ok(());
        };
        let refuse = |key: &'static str, message: String| ConfigError::Value { key, message };
        if self.backend != BackendKind::Aws {
            return Err(refuse(
                "organization",
                "AWS Organizations is read by the aws backend only; on the local backend, list the accounts in [[accounts]]".into(),
            ));
        }
        let name_ok = |part: &str| {
            (1..=64).contains(&part.len())
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
        };
        if !organization.role_name.split('/').all(name_ok) {
            return Err(refuse(
                "organization.role_name",
                format!(
                    "`{}` is not an IAM role name (letters, digits and +=,.@_-, with an optional path such as `ops/name`)",
                    organization.role_name
                ),
            ));
        }
        if organization.regions.is_empty() {
            return Err(refuse(
                "organization.regions",
                "is empty; name at least one Region (for example [\"us-east-1\"])".into(),
            ));
        }
        let mut regions = std::collections::HashSet::new();
        for region in &organization.regions {
            if !crate::domain::is_region_name(region) {
                return Err(refuse(
                    "organization.regions",
                    format!("`{region}` is not an AWS Region name"),
                ));
            }
            if !regions.insert(region) {
                return Err(refuse(
                    "organization.regions",
                    format!("`{region}` is listed twice"),
                ));
            }
        }
        if let Some(external_id) = &organization.external_id
            && !(2..=1224).contains(&external_id.len())
        {
            return Err(refuse(
                "organization.external_id",
                "must be 2 to 1,224 characters (STS AssumeRole's limit)".into(),
            ));
        }
        if organization.refresh_interval < Duration::from_secs(1) {
            return Err(refuse(
                "organization.refresh_interval",
                "must be at least 1s".into(),
            ));
        }
        Ok(())
    }

    /// Each `[[accounts]]` entry names a well-formed account once, with Regions, and ARNs
    /// where it sets them.
    fn check_accounts(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, account) in self.accounts.iter().enumerate() {
            let refuse = |message: String| ConfigError::Value {
                key: "accounts",
                message: format!("entry {} (id `{}`): {message}", i + 1, account.id),
            };
            if !crate::domain::is_account_id(&account.id) {
                return Err(refuse("`id` is not a 12-digit AWS account id".into()));
            }
            if !seen.insert(account.id.as_str()) {
                return Err(refuse(
                    "the account is listed twice; give it one entry with all its Regions".into(),
                ));
            }
            if account.regions.is_empty() {
                return Err(refuse(
                    "`regions` is empty; name at least one Region (for example [\"us-east-1\"])"
                        .into(),
                ));
            }
            let mut regions = std::collections::HashSet::new();
            for region in &account.regions {
                if !crate::domain::is_region_name(region) {
                    return Err(refuse(format!(
                        "`regions` holds `{region}`, which is not an AWS Region name"
                    )));
                }
                if !regions.insert(region) {
                    return Err(refuse(format!("`regions` holds `{region}` twice")));
                }
            }
            if let Some(role) = &account.role_arn {
                let in_account = role.split(':').nth(4) == Some(account.id.as_str());
                if !matches!(
                    crate::domain::IamPrincipal::parse(role),
                    Some(crate::domain::IamPrincipal::Role(_))
                ) {
                    return Err(refuse(format!(
                        "`role_arn` `{role}` is not an IAM role ARN"
                    )));
                }
                if !in_account {
                    return Err(refuse(format!(
                        "`role_arn` `{role}` is not a role of the account"
                    )));
                }
            }
            if let Some(external_id) = &account.external_id
                && !(2..=1224).contains(&external_id.len())
            {
                return Err(refuse(
                    "`external_id` must be 2 to 1,224 characters (STS AssumeRole's limit)".into(),
                ));
            }
            if let Some(principal) = &account.principal_arn {
                crate::verify::render::check_params(
                    account.regions.first().map_or("us-east-1", String::as_str),
                    &account.id,
                    principal,
                )
                .map_err(|e| refuse(format!("`principal_arn`: {e}")))?;
            }
        }
        // Whether an entry needs `role_arn` depends on the sidecar's own account, which may
        // come from STS: the aws backend checks it once connected.
        Ok(())
    }

    /// The Region and account id, when set, are well formed.
    fn check_placement(&self) -> Result<(), ConfigError> {
        if let Some(region) = &self.region
            && !crate::domain::is_region_name(region)
        {
            return Err(ConfigError::Value {
                key: "region",
                message: format!("`{region}` is not an AWS Region name (for example us-east-1)"),
            });
        }
        if let Some(account) = &self.account_id
            && !crate::domain::is_account_id(account)
        {
            return Err(ConfigError::Value {
                key: "account_id",
                message: format!("`{account}` is not a 12-digit AWS account id"),
            });
        }
        Ok(())
    }

    /// The AWS endpoints are safe to send signed requests to, and the retry count is sane.
    fn check_aws(&self) -> Result<(), ConfigError> {
        for (key, endpoint) in [
            ("aws.inspector2_endpoint", &self.aws.inspector2_endpoint),
            ("aws.kms_endpoint", &self.aws.kms_endpoint),
            ("aws.sts_endpoint", &self.aws.sts_endpoint),
            ("aws.iam_endpoint", &self.aws.iam_endpoint),
            (
                "aws.organizations_endpoint",
                &self.aws.organizations_endpoint,
            ),
        ] {
            if let Some(endpoint) = endpoint {
                check_endpoint(key, endpoint)?;
            }
        }
        if self.aws.max_attempts == 0 || self.aws.max_attempts > 10 {
            return Err(ConfigError::Value {
                key: "aws.max_attempts",
                message: format!("{} is outside 1 to 10", self.aws.max_attempts),
            });
        }
        Ok(())
    }

    /// The limits, intervals and timeouts that must be more than zero are.
    fn check_more_than_zero(&self) -> Result<(), ConfigError> {
        for (key, zero) in [
            ("ops.max_concurrent_rpcs", self.ops.max_concurrent_rpcs == 0),
            (
                "ops.max_streams_per_connection",
                self.ops.max_streams_per_connection == 0,
            ),
            ("ops.rpc_timeout", self.ops.rpc_timeout.is_zero()),
            ("ops.drift_interval", self.ops.drift_interval.is_zero()),
            (
                "ops.ready_check_interval",
                self.ops.ready_check_interval.is_zero(),
            ),
            (
                "authz.reload_interval",
                self.authz.reload_interval.is_zero(),
            ),
            ("ops.max_watch_streams", self.ops.max_watch_streams == 0),
            (
                "ops.max_watch_duration",
                self.ops.max_watch_duration.is_zero(),
            ),
            (
                "connections.max_per_listener",
                self.connections.max_per_listener == 0,
            ),
            (
                "connections.max_per_peer_ip",
                self.connections.max_per_peer_ip == 0,
            ),
            (
                "connections.preface_timeout",
                self.connections.preface_timeout.is_zero(),
            ),
            (
                "connections.max_tls_handshakes",
                self.connections.max_tls_handshakes == 0,
            ),
            (
                "connections.tls_handshake_timeout",
                self.connections.tls_handshake_timeout.is_zero(),
            ),
            (
                "connections.max_unsent_bytes",
                self.connections.max_unsent_bytes == 0,
            ),
            (
                "connections.stalled_write_timeout",
                self.connections.stalled_write_timeout.is_zero(),
            ),
            ("connections.max_age", self.connections.max_age.is_zero()),
        ] {
            if zero {
                return Err(ConfigError::Value {
                    key,
                    message: "must be more than zero".into(),
                });
            }
        }
        Ok(())
    }

    /// The verification principal, when set, is the ARN of an IAM role or user.
    fn check_principal(&self) -> Result<(), ConfigError> {
        if let Some(principal) = &self.verification.principal_arn {
            // Checked against the account once it is known (at start-up, for the aws backend).
            let account = principal.split(':').nth(4).unwrap_or_default();
            crate::verify::render::check_params("us-east-1", account, principal).map_err(|e| {
                ConfigError::Value {
                    key: "verification.principal_arn",
                    message: e.to_string(),
                }
            })?;
        }
        Ok(())
    }

    /// The trusted accounts are account ids, and the organization an Organizations id.
    fn check_trust(&self) -> Result<(), ConfigError> {
        let verification = &self.verification;
        if let Some(account) = verification
            .trusted_accounts
            .iter()
            .find(|account| !crate::domain::is_account_id(account))
        {
            return Err(ConfigError::Value {
                key: "verification.trusted_accounts",
                message: format!("holds `{account}`, which is not a 12-digit AWS account id"),
            });
        }
        if let Some(organization) = &verification.organization_id
            && !crate::domain::is_organization_id(organization)
        {
            return Err(ConfigError::Value {
                key: "verification.organization_id",
                message: format!(
                    "`{organization}` is not an AWS Organizations id (`o-` and 10 to 32 lowercase letters or digits, such as o-a1b2c3d4e5)"
                ),
            });
        }
        Ok(())
    }

    /// Where the local KMS's key-encryption key is kept.
    pub fn kek_file(&self) -> PathBuf {
        self.local
            .kek_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("kek"))
    }

    /// The Region and account of the local backend (the aws backend finds its own).
    pub fn local_placement(&self) -> Placement {
        Placement {
            region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
            account_id: self
                .account_id
                .clone()
                .unwrap_or_else(|| "111122223333".into()),
        }
    }

    /// The principal that calls Inspector.
    pub fn principal_arn(&self, placement: &Placement) -> String {
        self.verification.principal_arn.clone().unwrap_or_else(|| {
            format!(
                "arn:{}:iam::{}:role/inspector-keyd",
                crate::domain::partition_of(&placement.region),
                placement.account_id
            )
        })
    }

    fn profile(
        key: &'static str,
        name: Option<&str>,
        default: Profile,
    ) -> Result<Profile, ConfigError> {
        match name {
            None => Ok(default),
            Some(name) => Profile::parse(name).ok_or_else(|| ConfigError::Value {
                key,
                message: format!(
                    "`{name}` is not a verification profile; one of {}",
                    Profile::names()
                ),
            }),
        }
    }

    /// The profile for CODE + AWS_LAMBDA_FUNCTION.
    fn lambda_profile(&self) -> Result<Profile, ConfigError> {
        // The local backend emulates the seed's grant-based system; AWS today enforces the
        // Amazon Q key policy.
        let default = match self.backend {
            BackendKind::Local => Profile::CodeguruGrants,
            BackendKind::Aws => Profile::AmazonQLambda,
        };
        Config::profile(
            "verification.lambda_profile",
            self.verification.lambda_profile.as_deref(),
            default,
        )
    }

    /// The profile for CODE + CODE_REPOSITORY.
    fn code_repository_profile(&self) -> Result<Profile, ConfigError> {
        Config::profile(
            "verification.code_repository_profile",
            self.verification.code_repository_profile.as_deref(),
            Profile::AmazonQCodeRepository,
        )
    }

    /// The listeners to open; refuses a configuration that would open none, or a
    /// plaintext TCP listener off loopback.
    fn listeners(&self) -> Result<Listeners, ConfigError> {
        let unix_socket = match &self.listen.unix_socket {
            None => Some(self.state_dir.join("keyd.sock")),
            Some(path) if path.as_os_str().is_empty() => None,
            Some(path) => Some(path.clone()),
        };
        let unix_socket_mode = u32::from_str_radix(&self.listen.unix_socket_mode, 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| ConfigError::Value {
                key: "listen.unix_socket_mode",
                message: format!(
                    "`{}` is not an octal file mode such as 0660",
                    self.listen.unix_socket_mode
                ),
            })?;
        let tcp = if self.listen.tcp.is_empty() {
            None
        } else {
            let addr: SocketAddr = self.listen.tcp.parse().map_err(|_| ConfigError::Value {
                key: "listen.tcp",
                message: format!(
                    "`{}` is not an address such as 127.0.0.1:50051",
                    self.listen.tcp
                ),
            })?;
            if !addr.ip().is_loopback() {
                return Err(ConfigError::Value {
                    key: "listen.tcp",
                    message: format!(
                        "`{addr}` is not a loopback address; a plaintext TCP listener may only listen on loopback"
                    ),
                });
            }
            Some(addr)
        };
        let tls = self.tls_listener()?;
        if unix_socket.is_none() && tcp.is_none() && tls.is_none() {
            return Err(ConfigError::Shape(
                "no listener: set `listen.unix_socket`, `listen.tcp` or `tls.listen`".into(),
            ));
        }
        let aws_api = self.aws_api_listener(tls.is_some())?;
        Ok(Listeners {
            unix_socket,
            unix_socket_mode,
            tcp,
            tls,
            aws_api,
        })
    }

    /// The AWS-protocol door: TLS when the `[tls]` listener is configured, else plaintext
    /// on loopback only.
    fn aws_api_listener(&self, tls: bool) -> Result<Option<AwsApiListener>, ConfigError> {
        let listen = &self.aws_api.listen;
        if listen.is_empty() {
            return Ok(None);
        }
        let addr: SocketAddr = listen.parse().map_err(|_| ConfigError::Value {
            key: "aws_api.listen",
            message: format!("`{listen}` is not an address such as 127.0.0.1:50052"),
        })?;
        if !tls && !addr.ip().is_loopback() {
            return Err(ConfigError::Value {
                key: "aws_api.listen",
                message: format!(
                    "`{addr}` is not a loopback address; without the `[tls]` listener the AWS-protocol door is plaintext and may only listen on loopback"
                ),
            });
        }
        Ok(Some(AwsApiListener { addr, tls }))
    }

    /// The credentials file of the AWS-protocol door.
    pub fn aws_credentials_file(&self) -> PathBuf {
        self.aws_api
            .credentials_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("aws-credentials"))
    }

    fn tls_listener(&self) -> Result<Option<(SocketAddr, TlsFiles)>, ConfigError> {
        let tls = &self.tls;
        if tls.listen.is_empty() {
            return Ok(None);
        }
        let addr: SocketAddr = tls.listen.parse().map_err(|_| ConfigError::Value {
            key: "tls.listen",
            message: format!("`{}` is not an address such as 0.0.0.0:50443", tls.listen),
        })?;
        let required = |value: &Option<PathBuf>, key: &'static str| {
            value.clone().ok_or(ConfigError::Value {
                key,
                message: "is required when `tls.listen` is set".into(),
            })
        };
        let files = TlsFiles {
            cert_file: required(&tls.cert_file, "tls.cert_file")?,
            key_file: required(&tls.key_file, "tls.key_file")?,
            client_ca_files: tls.client_ca_files.clone(),
            trust_domain_ca_files: tls.trust_domain_ca_files.clone(),
            allow_token_only: tls.allow_token_only,
        };
        for (domain, bundles) in &files.trust_domain_ca_files {
            if !crate::domain::is_trust_domain(domain) || bundles.is_empty() {
                return Err(ConfigError::Value {
                    key: "tls.trust_domain_ca_files",
                    message: format!(
                        "`{domain}` needs to be a trust domain name (lowercase letters, digits, `.`, `-`, `_`) with at least one CA file"
                    ),
                });
            }
        }
        if files.client_ca_files.is_empty()
            && files.trust_domain_ca_files.is_empty()
            && !files.allow_token_only
        {
            return Err(ConfigError::Value {
                key: "tls.client_ca_files",
                message: "is required: clients must present certificates unless `tls.allow_token_only = true`".into(),
            });
        }
        Ok(Some((addr, files)))
    }

    /// The role of anonymous loopback callers.
    fn loopback_anonymous_role(&self) -> Result<Option<Role>, ConfigError> {
        match self.authz.loopback_anonymous_role.as_str() {
            "read-only" => Ok(Some(Role::ReadOnly)),
            "none" => Ok(None),
            other => Err(ConfigError::Value {
                key: "authz.loopback_anonymous_role",
                message: format!(
                    "`{other}` is neither `read-only` nor `none` (anonymous callers get read-only at most)"
                ),
            }),
        }
    }
}

/// Sets `path` in `table` to the string `value`, creating intermediate tables.
fn set_path(table: &mut toml::Table, path: &[String], value: String) -> Result<(), String> {
    match path {
        [] => Err("names no configuration key".into()),
        [key] if key.is_empty() => Err("names no configuration key".into()),
        [key] => {
            table.insert(key.clone(), toml::Value::String(value));
            Ok(())
        }
        [key, rest @ ..] => {
            let entry = table
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("`{key}` is not a table")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_serve_local_on_socket_and_loopback() {
        let settings = Settings::load(None, env(&[("HOME", "/root")])).unwrap();
        let config = &settings.config;
        assert_eq!(*config, Config::default());
        let listeners = &settings.listeners;
        assert_eq!(
            listeners.unix_socket,
            Some(PathBuf::from("state/keyd.sock"))
        );
        assert_eq!(listeners.unix_socket_mode, 0o660);
        assert_eq!(listeners.tcp, Some("127.0.0.1:50051".parse().unwrap()));
        assert_eq!(
            listeners.aws_api,
            Some(AwsApiListener {
                addr: "127.0.0.1:50052".parse().unwrap(),
                tls: false
            })
        );
        assert_eq!(
            config.aws_credentials_file(),
            PathBuf::from("state/aws-credentials")
        );
        assert_eq!(settings.lambda_profile, Profile::CodeguruGrants);
        assert_eq!(
            settings.code_repository_profile,
            Profile::AmazonQCodeRepository
        );
        assert_eq!(
            settings.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(settings.health_listen, None);
        assert_eq!(settings.loopback_anonymous_role, Some(Role::ReadOnly));
        assert_eq!(settings.log_format, LogFormat::Text);
        assert_eq!(
            config.principal_arn(&config.local_placement()),
            "arn:aws:iam::111122223333:role/inspector-keyd"
        );
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.toml");
        std::fs::write(
            &path,
            "region = \"eu-west-1\"\nshutdown_timeout_secs = 3\n[listen]\ntcp = \"\"\n",
        )
        .unwrap();
        let settings = Settings::load(
            Some(&path),
            env(&[
                ("INSPECTOR_KEYD_ACCOUNT_ID", "012345678901"),
                ("INSPECTOR_KEYD_SHUTDOWN_TIMEOUT_SECS", "7"),
                ("INSPECTOR_KEYD_CACHE__KEY_TTL", "1.5s"),
                ("INSPECTOR_KEYD_LISTEN__UNIX_SOCKET", "/run/keyd.sock"),
            ]),
        )
        .unwrap();
        let config = &settings.config;
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert_eq!(config.account_id.as_deref(), Some("012345678901"));
        assert_eq!(config.shutdown_timeout_secs, 7);
        assert_eq!(config.cache.key_ttl, Duration::from_millis(1500));
        let listeners = &settings.listeners;
        assert_eq!(listeners.tcp, None);
        assert_eq!(listeners.unix_socket, Some(PathBuf::from("/run/keyd.sock")));
    }

    #[test]
    fn bad_values_are_named() {
        let err =
            |pairs: &[(&str, &str)]| Settings::load(None, env(pairs)).unwrap_err().to_string();
        assert!(err(&[("INSPECTOR_KEYD_LISTEN__TCP", "0.0.0.0:50051")]).contains("`listen.tcp`"));
        assert!(
            err(&[("INSPECTOR_KEYD_LISTEN__TCP", "0.0.0.0:50051")])
                .contains("not a loopback address")
        );
        assert!(err(&[("INSPECTOR_KEYD_REGION", "moon")]).contains("`region`"));
        assert!(err(&[("INSPECTOR_KEYD_ACCOUNT_ID", "12")]).contains("`account_id`"));
        assert!(
            err(&[("INSPECTOR_KEYD_NO_SUCH_KEY", "x")]).contains("unknown field `no_such_key`")
        );
        assert!(
            err(&[("INSPECTOR_KEYD_SHUTDOWN_TIMEOUT_SECS", "soon")])
                .contains("invalid configuration")
        );
        assert!(err(&[("INSPECTOR_KEYD_REGION__X", "y")]).contains("INSPECTOR_KEYD_REGION__X"));
        assert!(
            err(&[
                ("INSPECTOR_KEYD_LISTEN__TCP", ""),
                ("INSPECTOR_KEYD_LISTEN__UNIX_SOCKET", "")
            ])
            .contains("no listener")
        );
        assert!(err(&[("INSPECTOR_KEYD_BACKEND", "cloud")]).contains("unknown variant `cloud`"));
        assert!(err(&[("INSPECTOR_KEYD_CACHE__KEY_TTL", "soon")]).contains("`cache.key_ttl`"));
        for role in ["admin", "code-reader"] {
            assert!(
                err(&[("INSPECTOR_KEYD_AUTHZ__LOOPBACK_ANONYMOUS_ROLE", role)])
                    .contains("read-only at most")
            );
        }
        assert!(
            err(&[("INSPECTOR_KEYD_TLS__LISTEN", "0.0.0.0:50443")]).contains("`tls.cert_file`")
        );
        assert!(
            err(&[
                ("INSPECTOR_KEYD_TLS__LISTEN", "0.0.0.0:50443"),
                ("INSPECTOR_KEYD_TLS__CERT_FILE", "c.pem"),
                ("INSPECTOR_KEYD_TLS__KEY_FILE", "k.pem"),
            ])
            .contains("`tls.client_ca_files`")
        );
        assert!(
            err(&[("INSPECTOR_KEYD_VERIFICATION__LAMBDA_PROFILE", "strict")])
                .contains("`verification.lambda_profile`")
        );
        assert!(
            err(&[("INSPECTOR_KEYD_VERIFICATION__PRINCIPAL_ARN", "role-ARN")])
                .contains("`verification.principal_arn`")
        );
        for account in ["44445555666", "4444555566667", "44445555666x", ""] {
            let error = err(&[("INSPECTOR_KEYD_VERIFICATION__TRUSTED_ACCOUNTS", account)]);
            assert!(
                error.contains("`verification.trusted_accounts`")
                    && error.contains(&format!("`{account}`")),
                "{error}"
            );
        }
        for organization in ["o-abc", "o-A1B2C3D4E5", "a1b2c3d4e5", "o-a1b2c3d4e5-", ""] {
            let error = err(&[("INSPECTOR_KEYD_VERIFICATION__ORGANIZATION_ID", organization)]);
            assert!(
                error.contains("`verification.organization_id`"),
                "{organization}: {error}"
            );
        }
        assert!(
            err(&[("INSPECTOR_KEYD_VERIFICATION__DENY_EXTERNAL_ACCESS", "yes")])
                .contains("verification.deny_external_access")
        );
    }

    #[test]
    fn the_organization_table_is_for_the_aws_backend_and_names_a_role_and_regions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Settings::load(Some(&path), Vec::new()).map(|s| s.config.organization)
        };
        let aws = "backend = \"aws\"\nregion = \"us-east-1\"\n";
        let organization = load(&format!(
            "{aws}[organization]\nrole_name = \"ops/keyd-member\"\nregions = [\"us-east-1\", \"eu-west-1\"]\n"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(organization.refresh_interval, Duration::from_secs(3600));
        assert_eq!(
            organization.role_arn("222233334444"),
            "arn:aws:iam::222233334444:role/ops/keyd-member"
        );
        for (text, names) in [
            (
                "[organization]\nrole_name = \"m\"\nregions = [\"us-east-1\"]\n".to_owned(),
                "aws backend only",
            ),
            (
                format!(
                    "{aws}[organization]\nrole_name = \"bad name\"\nregions = [\"us-east-1\"]\n"
                ),
                "`organization.role_name`",
            ),
            (
                format!("{aws}[organization]\nrole_name = \"m\"\nregions = []\n"),
                "`organization.regions`",
            ),
            (
                format!("{aws}[organization]\nrole_name = \"m\"\nregions = [\"mars-1\"]\n"),
                "`mars-1` is not an AWS Region name",
            ),
            (
                format!(
                    "{aws}[organization]\nrole_name = \"m\"\nregions = [\"us-east-1\"]\nrefresh_interval = \"0s\"\n"
                ),
                "`organization.refresh_interval`",
            ),
            (
                format!("{aws}[organization]\nregions = [\"us-east-1\"]\n"),
                "role_name",
            ),
        ] {
            let error = load(&text).unwrap_err().to_string();
            assert!(error.contains(names), "{text}: {error}");
        }
    }

    #[test]
    fn trust_settings() {
        let settings = Settings::load(None, Vec::new()).unwrap();
        let verification = &settings.config.verification;
        assert!(!verification.deny_external_access);
        assert!(verification.trusted_accounts.is_empty());
        assert_eq!(verification.organization_id, None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.toml");
        std::fs::write(
            &path,
            "[verification]\ndeny_external_access = true\ntrusted_accounts = [\"444455556666\", \"777788889999\"]\norganization_id = \"o-a1b2c3d4e5\"\n",
        )
        .unwrap();
        let settings = Settings::load(Some(&path), Vec::new()).unwrap();
        let verification = &settings.config.verification;
        assert!(verification.deny_external_access);
        assert_eq!(
            verification.trusted_accounts,
            ["444455556666", "777788889999"]
        );
        assert_eq!(
            verification.organization_id.as_deref(),
            Some("o-a1b2c3d4e5")
        );

        // The environment sets the flag as text and one trusted account.
        let settings = Settings::load(
            None,
            env(&[
                ("INSPECTOR_KEYD_VERIFICATION__DENY_EXTERNAL_ACCESS", "true"),
                (
                    "INSPECTOR_KEYD_VERIFICATION__TRUSTED_ACCOUNTS",
                    "444455556666",
                ),
            ]),
        )
        .unwrap();
        let verification = &settings.config.verification;
        assert!(verification.deny_external_access);
        assert_eq!(verification.trusted_accounts, ["444455556666"]);
    }

    #[test]
    fn the_aws_protocol_door_is_plaintext_on_loopback_or_tls() {
        let load = |pairs: &[(&str, &str)]| Settings::load(None, env(pairs));
        let error = load(&[("INSPECTOR_KEYD_AWS_API__LISTEN", "0.0.0.0:50052")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`aws_api.listen` `0.0.0.0:50052` is not a loopback address"),
            "{error}"
        );
        let error = load(&[("INSPECTOR_KEYD_AWS_API__LISTEN", "door")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("not an address"), "{error}");
        let off = load(&[("INSPECTOR_KEYD_AWS_API__LISTEN", "")]).unwrap();
        assert_eq!(off.listeners.aws_api, None);
        let tls = load(&[
            ("INSPECTOR_KEYD_AWS_API__LISTEN", "0.0.0.0:50052"),
            ("INSPECTOR_KEYD_TLS__LISTEN", "0.0.0.0:50443"),
            ("INSPECTOR_KEYD_TLS__CERT_FILE", "c.pem"),
            ("INSPECTOR_KEYD_TLS__KEY_FILE", "k.pem"),
            ("INSPECTOR_KEYD_TLS__CLIENT_CA_FILES", "ca.pem"),
        ])
        .unwrap();
        assert_eq!(
            tls.listeners.aws_api,
            Some(AwsApiListener {
                addr: "0.0.0.0:50052".parse().unwrap(),
                tls: true
            })
        );
    }

    #[test]
    fn aws_endpoints_are_https_unless_on_loopback() {
        for key in [
            "inspector2_endpoint",
            "kms_endpoint",
            "sts_endpoint",
            "iam_endpoint",
        ] {
            let name = format!("INSPECTOR_KEYD_AWS__{}", key.to_ascii_uppercase());
            let load = |value: &str| Settings::load(None, env(&[(&name, value)]));
            for good in [
                "https://inspector2.eu-west-1.amazonaws.com",
                "https://vpce-0123-abcd.kms.eu-west-1.vpce.amazonaws.com:8443/",
                "https://10.0.0.7",
                "http://127.0.0.1:4566",
                "http://127.3.4.5",
                "http://[::1]:8080",
                "http://localhost:4566",
                "http://LOCALHOST",
            ] {
                let settings = load(good).unwrap_or_else(|e| panic!("{good}: {e}"));
                let aws = &settings.config.aws;
                let set = match key {
                    "inspector2_endpoint" => &aws.inspector2_endpoint,
                    "kms_endpoint" => &aws.kms_endpoint,
                    "iam_endpoint" => &aws.iam_endpoint,
                    _ => &aws.sts_endpoint,
                };
                assert_eq!(set.as_deref(), Some(good));
            }
            for (bad, problem) in [
                (
                    "http://kms.eu-west-1.amazonaws.com",
                    "plaintext http URL to `kms.eu-west-1.amazonaws.com`, which is not a loopback address",
                ),
                (
                    "http://10.0.0.7:80",
                    "to `10.0.0.7`, which is not a loopback",
                ),
                ("http://[::2]", "to `[::2]`, which is not a loopback"),
                ("http://localhost.example.com", "which is not a loopback"),
                ("http://0.0.0.0:4566", "which is not a loopback"),
                ("kms.eu-west-1.amazonaws.com", "is not a URL"),
                ("", "is not a URL"),
                ("https://", "is not a URL"),
                ("not a url at all", "is not a URL"),
                ("ftp://127.0.0.1/", "has the scheme `ftp`"),
                ("file:///etc/passwd", "has the scheme `file`"),
                (
                    "https://admin:hunter2@kms.example.com",
                    "must not carry a user name or password",
                ),
            ] {
                let err = load(bad).unwrap_err().to_string();
                assert!(err.contains(&format!("`aws.{key}`")), "{bad}: {err}");
                assert!(err.contains(problem), "{bad}: {err}");
                assert!(!err.contains("hunter2"), "{err}");
            }
        }
    }

    #[test]
    fn broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.toml");
        std::fs::write(&path, "region = \n").unwrap();
        let err = Settings::load(Some(&path), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("keyd.toml") && err.contains("not valid TOML"),
            "{err}"
        );
        let err = Settings::load(Some(&dir.path().join("missing.toml")), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read config file"), "{err}");
    }
}
