//! The one helper every integration test uses to run the sidecar: the real
//! `inspector-keyd` binary ([`Sidecar`], addresses from its ready file) or an App built in
//! process ([`InProcess`], addresses from the App), each on a temporary state directory
//! and Unix socket with ephemeral loopback ports, and clients for them. Also finds the
//! external tools (grpcurl, Python) the test command installs, failing the test when one is
//! missing.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

pub mod emulated;
pub mod fleet;
pub mod inspector_stub;
pub mod moto;
pub mod organization;
pub mod pki;

use hyper_util::rt::TokioIo;
use inspector_keyd::proto::{
    self, encryption_key_service_client::EncryptionKeyServiceClient,
    local_kms_service_client::LocalKmsServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

pub const BIN: &str = env!("CARGO_BIN_EXE_inspector-keyd");
pub const CODE: i32 = proto::ScanType::Code as i32;
pub const LAMBDA: i32 = proto::ResourceType::AwsLambdaFunction as i32;
pub const REPOSITORY: i32 = proto::ResourceType::CodeRepository as i32;

/// A running sidecar on a temporary state directory.
pub struct Sidecar {
    child: Child,
    dir: Arc<tempfile::TempDir>,
    pub socket: PathBuf,
    pub tcp: SocketAddr,
    /// The TLS listener, when the configuration asks for one.
    pub tls: Option<SocketAddr>,
    /// The metrics and probes listener.
    pub metrics: Option<SocketAddr>,
    /// The gRPC health-only listener (`ops.health_listen`), when configured.
    pub health: Option<SocketAddr>,
    /// The AWS-protocol door (`aws_api.listen`), when on.
    pub aws_api: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    extra_config: String,
    env: Vec<(String, String)>,
}

impl Sidecar {
    /// Starts a sidecar with the default test configuration.
    pub fn start() -> Sidecar {
        Sidecar::start_with("")
    }

    /// Starts a sidecar; `extra_config` goes into its TOML config before the `[listen]`
    /// table (so it may open tables of its own).
    pub fn start_with(extra_config: &str) -> Sidecar {
        Sidecar::start_with_env(extra_config, &[])
    }

    /// As [`Sidecar::start_with`], with extra environment variables for the process.
    pub fn start_with_env(extra_config: &str, env: &[(&str, &str)]) -> Sidecar {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Sidecar::start_in(dir, extra_config.to_owned(), env)
    }

    /// Starts `inspector-keyd serve` with no configuration file, as the README runs it, in a
    /// temporary working directory; only the TCP, AWS-protocol and metrics ports are
    /// ephemeral (the defaults, 127.0.0.1:50051, 127.0.0.1:50052 and 127.0.0.1:9464, may be
    /// taken on the machine).
    pub fn start_default() -> Sidecar {
        Sidecar::start_as_documented(None)
    }

    /// As [`Sidecar::start_default`], with `serve --config <file>`: `config` written as `file`
    /// in the working directory, as it is, with nothing added. The Unix socket is where the
    /// server says it bound it (the configuration may move the state directory).
    pub fn start_default_with_config(file: &str, config: &str) -> Sidecar {
        Sidecar::start_as_documented(Some((file, config)))
    }

    fn start_as_documented(config: Option<(&str, &str)>) -> Sidecar {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut command = Command::new(BIN);
        command.arg("serve").current_dir(dir.path());
        if let Some((file, config)) = config {
            std::fs::write(dir.path().join(file), config).unwrap();
            command.args(["--config", file]);
        }
        let socket = dir.path().join("state/keyd.sock");
        let env = [
            ("INSPECTOR_KEYD_LISTEN__TCP", "127.0.0.1:0"),
            ("INSPECTOR_KEYD_OPS__METRICS_LISTEN", "127.0.0.1:0"),
            ("INSPECTOR_KEYD_AWS_API__LISTEN", "127.0.0.1:0"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec();
        let mut sidecar = Sidecar::spawn(command, dir, socket, String::new(), env);
        let ready: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(sidecar.dir().join("ready.json")).unwrap(),
        )
        .unwrap();
        if let Some(socket) = ready["unix_socket"].as_str() {
            sidecar.socket = sidecar.dir().join(socket);
        }
        sidecar
    }

    fn start_in(
        dir: Arc<tempfile::TempDir>,
        extra_config: String,
        env: Vec<(String, String)>,
    ) -> Sidecar {
        let socket = dir.path().join("keyd.sock");
        let config = dir.path().join("keyd.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {state:?}\nshutdown_timeout_secs = 5\n{extra_config}\n[listen]\nunix_socket = {socket:?}\ntcp = \"127.0.0.1:0\"\n",
                state = dir.path().join("state"),
            ),
        )
        .unwrap();
        let mut command = Command::new(BIN);
        command.args(["serve", "--config"]).arg(&config);
        // Ephemeral ports, so tests can run side by side; the test's own settings come
        // after them, so one may override them.
        let ephemeral = [
            ("INSPECTOR_KEYD_OPS__METRICS_LISTEN", "127.0.0.1:0"),
            ("INSPECTOR_KEYD_AWS_API__LISTEN", "127.0.0.1:0"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let env = ephemeral
            .iter()
            .cloned()
            .chain(env.into_iter().filter(|pair| !ephemeral.contains(pair)))
            .collect::<Vec<_>>();
        Sidecar::spawn(command, dir, socket, extra_config, env)
    }

    fn spawn(
        mut command: Command,
        dir: Arc<tempfile::TempDir>,
        socket: PathBuf,
        extra_config: String,
        env: Vec<(String, String)>,
    ) -> Sidecar {
        // Where the server says it listens: the ready file, never its log lines. A stale one
        // (left by a killed server) must not be read as this server's.
        let ready_file = dir.path().join("ready.json");
        let _ = std::fs::remove_file(&ready_file);
        // What the test sets, and nothing this process inherited.
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("INSPECTOR_KEYD_")) {
            command.env_remove(name);
        }
        // RUST_LOG only when the test sets it.
        let mut child = command
            .arg("--ready-file")
            .arg(&ready_file)
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start inspector-keyd");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // The start-up line, in the text or the JSON log format: once the log holds
                // it, a test that waited for the start finds it there.
                let serving = line.contains(" serving ") || line.contains(r#""message":"serving""#);
                sink.lock().unwrap().push_str(&(line + "\n"));
                if serving {
                    let _ = tx.send(());
                }
            }
        });
        let started = rx.recv_timeout(Duration::from_secs(30)).is_ok();
        // The server writes the ready file just after that line.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let addresses: Option<serde_json::Value> = loop {
            let read = std::fs::read_to_string(&ready_file)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            if read.is_some() || !started || std::time::Instant::now() > deadline {
                break read;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let address =
            |name: &str| -> Option<SocketAddr> { addresses.as_ref()?[name].as_str()?.parse().ok() };
        let Some(tcp) = address("tcp") else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("inspector-keyd did not start:\n{}", log.lock().unwrap());
        };
        Sidecar {
            child,
            dir,
            socket,
            tcp,
            tls: address("tls"),
            metrics: address("metrics"),
            health: address("health"),
            aws_api: address("aws_api"),
            log,
            extra_config,
            env,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The admin token the sidecar generated in its state directory.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The Lambda target's key ARN, read as a read-only caller.
    pub async fn read_lambda_key(&self) -> Result<String, tonic::Status> {
        let response = self
            .read_only_keys()
            .await
            .get_encryption_key(get_request(LAMBDA))
            .await?;
        Ok(response.into_inner().kms_key_id)
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// A channel to the health-only listener (`ops.health_listen`).
    pub async fn health_channel(&self) -> Channel {
        let health = self.health.expect("the health listener is announced");
        Endpoint::from_shared(format!("http://{health}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it holds `text`, or after 10 s without it: lines reach the test through
    /// a pipe, a moment after the server wrote them.
    pub async fn log_once_it_has(&self, text: &str) -> String {
        eventually(Duration::from_secs(10), || async {
            self.log().contains(text)
        })
        .await;
        self.log()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts a new server on the same state directory.
    pub fn restart(mut self) -> Sidecar {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Sidecar::start_in(
            self.dir.clone(),
            self.extra_config.clone(),
            self.env.clone(),
        )
    }

    /// Sends `signal` (`TERM`, `INT`, ...) to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the server to exit, letting this test's other tasks run.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A channel over the Unix socket (the caller is this test's uid: admin).
    pub async fn unix_channel(&self) -> Channel {
        unix_channel(&self.socket).await
    }

    /// A channel over loopback TCP (read-only).
    pub async fn tcp_channel(&self) -> Channel {
        Endpoint::try_from(format!("http://{}", self.tcp))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn admin_keys(&self) -> EncryptionKeyServiceClient<Channel> {
        EncryptionKeyServiceClient::new(self.unix_channel().await)
    }

    /// A caller that may read code snippets (`code-reader`): the Unix socket, whose user is
    /// admin, which holds it.
    pub async fn code_reader_keys(&self) -> EncryptionKeyServiceClient<Channel> {
        self.admin_keys().await
    }

    pub async fn read_only_keys(&self) -> EncryptionKeyServiceClient<Channel> {
        EncryptionKeyServiceClient::new(self.tcp_channel().await)
    }

    pub async fn kms(&self) -> LocalKmsServiceClient<Channel> {
        LocalKmsServiceClient::new(self.unix_channel().await)
    }

    /// Creates a local key and puts it in use for Lambda code scanning, as admin; its ARN.
    pub async fn key_in_use(&self) -> String {
        let arn = self.create_key(proto::CreateKeyRequest::default()).await;
        self.admin_keys()
            .await
            .update_encryption_key(update_request(&arn))
            .await
            .unwrap();
        arn
    }

    /// Creates a local key and returns its ARN.
    pub async fn create_key(&self, request: proto::CreateKeyRequest) -> String {
        self.kms()
            .await
            .create_key(request)
            .await
            .unwrap()
            .into_inner()
            .key_metadata
            .unwrap()
            .arn
    }
}

impl Sidecar {
    /// The AWS-protocol door's URL.
    pub fn aws_url(&self) -> String {
        format!(
            "http://{}",
            self.aws_api.expect("the AWS-protocol door is announced")
        )
    }

    /// The AWS credentials file the sidecar wrote at first start.
    pub fn aws_credentials_file(&self) -> PathBuf {
        self.state_dir().join("aws-credentials")
    }

    /// The key pair of `profile` in the sidecar's AWS credentials file.
    pub fn aws_key(&self, profile: &str) -> (String, String) {
        aws_key_in(&self.aws_credentials_file(), profile)
    }

    /// An AWS SDK Inspector client of the door, signing with `key`, without retries.
    pub fn inspector(&self, key: &(String, String)) -> aws_sdk_inspector2::Client {
        use aws_sdk_inspector2::config::{
            BehaviorVersion, Credentials, Region, retry::RetryConfig,
        };
        let config = aws_sdk_inspector2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(&key.0, &key.1, None, None, "tests"))
            .endpoint_url(self.aws_url())
            .retry_config(RetryConfig::disabled())
            .build();
        aws_sdk_inspector2::Client::from_conf(config)
    }

    /// Renders the key policy a profile needs (for the sidecar's defaults) through the API.
    pub async fn rendered_policy(&self, profile: &str) -> String {
        self.read_only_keys()
            .await
            .render_key_policy(proto::RenderKeyPolicyRequest {
                profile: profile.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .policy_json
    }

    /// Creates a key whose policy meets the CODE + CODE_REPOSITORY profile.
    pub async fn create_repository_key(&self) -> String {
        let policy = self.rendered_policy("amazon-q-code-repository").await;
        self.create_key(proto::CreateKeyRequest {
            policy,
            ..Default::default()
        })
        .await
    }
}

impl Sidecar {
    /// The metrics, parsed by the Python Prometheus client's OpenMetrics parser:
    /// `{family: [{"labels": {...}, "name": sample name, "value": v}]}`.
    pub fn scrape_metrics(&self) -> serde_json::Value {
        let python = tool("KEYD_TEST_PYTHON", ".tools/venv/bin/python");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/scrape_metrics.py");
        let output = Command::new(python)
            .arg(script)
            .arg(format!(
                "http://{}/metrics",
                self.metrics.expect("metrics listener")
            ))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// GET `path` on the metrics listener: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect(self.metrics.expect("metrics listener")).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }
}

/// The key pair of `profile` in an AWS shared-credentials file.
pub fn aws_key_in(file: &Path, profile: &str) -> (String, String) {
    let text = std::fs::read_to_string(file).unwrap();
    let section = text
        .split('[')
        .find(|s| s.starts_with(&format!("{profile}]")))
        .unwrap_or_else(|| panic!("no profile {profile} in {}", file.display()));
    let value = |name: &str| {
        section
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix('='))
            .unwrap()
            .trim()
            .to_owned()
    };
    (value("aws_access_key_id"), value("aws_secret_access_key"))
}

/// An [`App`](inspector_keyd::app::App) built in process on a temporary state directory,
/// for tests that inject faults or timing through its hooks: the same configuration the
/// binary gets from [`Sidecar::start_with`], with its addresses from the App itself.
pub struct InProcess {
    pub app: inspector_keyd::app::App,
    pub dir: tempfile::TempDir,
}

impl InProcess {
    /// Builds it; `extra_config` goes before the `[listen]` table, as for the binary.
    pub async fn build(extra_config: &str, hooks: inspector_keyd::app::Hooks) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "state_dir = {state:?}\nshutdown_timeout_secs = 5\n{extra_config}\n[listen]\nunix_socket = {socket:?}\ntcp = \"127.0.0.1:0\"\n",
            state = dir.path().join("state"),
            socket = dir.path().join("keyd.sock"),
        );
        // Only what this test says: no INSPECTOR_KEYD_* of the test process.
        let env = [
            ("INSPECTOR_KEYD_OPS__METRICS_LISTEN", "127.0.0.1:0"),
            ("INSPECTOR_KEYD_AWS_API__LISTEN", "127.0.0.1:0"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let settings = inspector_keyd::config::Settings::parse(
            Some((&text, &dir.path().join("keyd.toml"))),
            env,
        )
        .unwrap();
        let app = inspector_keyd::app::App::build(settings, hooks)
            .await
            .unwrap();
        InProcess { app, dir }
    }
}

/// The documents of a YAML file, as JSON (parsed by PyYAML from the test tools' Python).
pub fn yaml_documents(python: &Path, file: &Path) -> Vec<serde_json::Value> {
    let output = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The status of `service` on the gRPC health service at `channel`.
pub async fn health_status(
    channel: tonic::transport::Channel,
    service: &str,
) -> Result<tonic_health::pb::health_check_response::ServingStatus, tonic::Status> {
    let response = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status())
}

/// The values of the samples of a scraped family whose labels include `labels`.
fn samples<'m>(
    metrics: &'m serde_json::Value,
    family: &str,
    suffix: &str,
    labels: &[(&str, &str)],
) -> impl Iterator<Item = f64> + 'm {
    let name = format!("{family}{suffix}");
    let labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    metrics[family]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |s| {
            s["name"].as_str() == Some(name.as_str())
                && labels
                    .iter()
                    .all(|(k, v)| s["labels"][k.as_str()].as_str() == Some(v.as_str()))
        })
        .filter_map(|s| s["value"].as_f64())
}

/// The value of one sample of a scraped family whose labels include `labels`.
pub fn sample(
    metrics: &serde_json::Value,
    family: &str,
    suffix: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples(metrics, family, suffix, labels).next()
}

/// The sum of the samples of a scraped family whose labels include `labels` (all of them,
/// with none).
pub fn sum_of_samples(
    metrics: &serde_json::Value,
    family: &str,
    suffix: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples(metrics, family, suffix, labels).sum()
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap()
}

/// VerifyKeyPolicy through `client`; the report of a call that must succeed.
pub async fn verify_report(
    client: &mut EncryptionKeyServiceClient<Channel>,
    request: proto::VerifyKeyPolicyRequest,
) -> proto::VerificationReport {
    client
        .verify_key_policy(request)
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap()
}

/// The ErrorInfo reason of a status, or "".
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

pub fn get_request(resource_type: i32) -> proto::GetEncryptionKeyRequest {
    proto::GetEncryptionKeyRequest {
        scan_type: CODE,
        resource_type,
        ..Default::default()
    }
}

pub fn update_request(kms_key_id: &str) -> proto::UpdateEncryptionKeyRequest {
    proto::UpdateEncryptionKeyRequest {
        kms_key_id: kms_key_id.to_owned(),
        scan_type: CODE,
        resource_type: LAMBDA,
        validate_only: false,
        ..Default::default()
    }
}

/// An external tool the test command installs into `.tools/` (or the path `env_var`
/// names). A missing one fails the test, with or without `CI`: a suite that cannot run is
/// a failure, never a silent pass.
pub fn tool(env_var: &str, default_relative: &str) -> PathBuf {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(default_relative));
    assert!(
        path.is_file(),
        "{}",
        missing_tool(default_relative, &path, env_var)
    );
    path
}

/// What a test says when a tool is missing: the tool (named by its default path), where it
/// was looked for, and how to get it.
fn missing_tool(default_relative: &str, path: &Path, env_var: &str) -> String {
    let name = Path::new(default_relative)
        .file_name()
        .map_or_else(|| default_relative.into(), |n| n.to_string_lossy());
    let shown = path
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display();
    format!("{name} is missing at {shown}: run scripts/install-test-tools.sh (or set {env_var})")
}

/// A channel over TLS to `addr`, trusting `ca_pem`, presenting `client` when given.
pub async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&pki::Pair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(pair) = client {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            &pair.cert_pem,
            &pair.key_pem,
        ));
    }
    Endpoint::try_from(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Reads until the server closes the connection; false if it is still open after `limit`.
pub async fn closed_within<T: tokio::io::AsyncRead + Unpin>(io: &mut T, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Writes `text` to `path` with `mode`, whole or not at all (a staging file, its mode set,
/// renamed into place), as configuration tools do: a server reloading the file never reads
/// half of it, nor the new content under the old mode.
pub fn write_whole(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let staging = path.with_extension("staging");
    std::fs::write(&staging, text).unwrap();
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

/// Retries `check` until it holds, for at most `limit` (for changes the server picks up
/// asynchronously, such as reloaded files).
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

impl Sidecar {
    /// The server's peak resident memory so far (VmHWM), in KiB: what a flood took at its
    /// height, without sampling at the right moment.
    pub fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

/// `message` with `token` as its bearer token.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The SHA-256 of a token in hex, as a rule's `token_sha256` names it.
pub fn sha256_hex(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
