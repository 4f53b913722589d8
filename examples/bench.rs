#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The load benchmark: cached `GetEncryptionKey` through the real sidecar (every layer on:
//! authorization, cache, metrics, logging at the default level) against a bare tonic server
//! answering the same message with a constant, with the same client code, concurrency and
//! duration, over the Unix socket, loopback TCP and loopback TCP with mTLS; and the same
//! over loopback TCP with h2load, a load generator we did not write. Also: cold-read
//! coalescing, resident memory before and after many cached reads, start-up time to
//! SERVING, verification speed on ~32 KB policies, and the fleet's cost in AWS calls.
//!
//! Run: `cargo run --release --example bench` (see BENCHMARKS.md; `--quick` is the tiny run
//! the tests make).

#[allow(dead_code)]
#[path = "../tests/common/pki.rs"]
mod pki;
#[path = "../benches/fixtures/verify_inputs.rs"]
mod verify_inputs;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use hyper_util::rt::TokioIo;
use inspector_keyd::proto::{
    self,
    encryption_key_service_client::EncryptionKeyServiceClient,
    encryption_key_service_server::{EncryptionKeyService, EncryptionKeyServiceServer},
    local_kms_service_client::LocalKmsServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Parser, Debug, Clone)]
#[command(about = "inspector-keyd load benchmark")]
struct Args {
    /// Measured time per run.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time before each run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Connections the requests share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Runs per transport and server, each on new server processes; figures are medians
    /// over them.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Slices each run is measured in, the two servers taking turns (ABBA): the machine's
    /// speed drifts over seconds, and turns give both servers the same share of it.
    #[arg(long, default_value_t = 4)]
    slices: usize,
    /// Cached reads between the two memory readings.
    #[arg(long, default_value_t = 1_000_000)]
    memory_reads: usize,
    /// Concurrent first reads on a cold cache.
    #[arg(long, default_value_t = 1000)]
    cold_reads: usize,
    /// Transports to measure: any of unix, tcp, mtls.
    #[arg(long, value_delimiter = ',', default_value = "unix,tcp,mtls")]
    transports: Vec<String>,
    /// Requests per h2load run (after a fifth as many unmeasured).
    #[arg(long, default_value_t = 200_000)]
    h2load_requests: usize,
    /// Measured time of the fleet-cost run (at 1/100 of the default intervals).
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    fleet_duration: Duration,
    /// Skip the memory, cold-read, start-up, verification and fleet figures.
    #[arg(long)]
    load_only: bool,
    /// A tiny run that only proves the tool works.
    #[arg(long)]
    quick: bool,
    /// Internal: run as a server (`sidecar` or `baseline`) in a child process.
    #[arg(long, hide = true)]
    role: Option<String>,
    /// Internal: the working directory of a child server.
    #[arg(long, hide = true)]
    dir: Option<PathBuf>,
}

const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/11111111-1111-4111-8111-111111111111";
const SPIFFE: &str = "spiffe://bench.example/reader";

fn main() {
    let mut args = Args::parse();
    if args.quick {
        args.duration = Duration::from_millis(300);
        args.warmup = Duration::from_millis(100);
        args.concurrency = 4;
        args.connections = 1;
        args.repeats = 1;
        args.memory_reads = 2000;
        args.cold_reads = 100;
        args.h2load_requests = 2000;
        args.fleet_duration = Duration::from_secs(4);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.role.as_deref() {
        Some("baseline") => runtime.block_on(baseline(args.dir.unwrap())),
        Some("sidecar") => runtime.block_on(sidecar(args.dir.unwrap())),
        Some(other) => panic!("unknown role {other}"),
        None => runtime.block_on(drive(args)),
    }
}

// ---------------------------------------------------------------- servers (child processes)

/// A bare tonic server: GetEncryptionKey looks the key up in a moka cache, no layers, no
/// validation, no metadata.
struct Bare {
    keys: moka::sync::Cache<(i32, i32), Arc<str>>,
}

#[tonic::async_trait]
impl EncryptionKeyService for Bare {
    async fn get_encryption_key(
        &self,
        request: tonic::Request<proto::GetEncryptionKeyRequest>,
    ) -> Result<tonic::Response<proto::GetEncryptionKeyResponse>, tonic::Status> {
        let r = request.get_ref();
        match self.keys.get(&(r.scan_type, r.resource_type)) {
            Some(key) => Ok(tonic::Response::new(proto::GetEncryptionKeyResponse {
                kms_key_id: key.to_string(),
            })),
            None => Err(tonic::Status::not_found("the AWS owned key is in use")),
        }
    }
    async fn update_encryption_key(
        &self,
        _: tonic::Request<proto::UpdateEncryptionKeyRequest>,
    ) -> Result<tonic::Response<proto::UpdateEncryptionKeyResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("baseline"))
    }
    async fn reset_encryption_key(
        &self,
        _: tonic::Request<proto::ResetEncryptionKeyRequest>,
    ) -> Result<tonic::Response<proto::ResetEncryptionKeyResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("baseline"))
    }
    async fn verify_key_policy(
        &self,
        _: tonic::Request<proto::VerifyKeyPolicyRequest>,
    ) -> Result<tonic::Response<proto::VerifyKeyPolicyResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("baseline"))
    }
    async fn render_key_policy(
        &self,
        _: tonic::Request<proto::RenderKeyPolicyRequest>,
    ) -> Result<tonic::Response<proto::RenderKeyPolicyResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("baseline"))
    }
    async fn batch_get_code_snippet(
        &self,
        _: tonic::Request<proto::BatchGetCodeSnippetRequest>,
    ) -> Result<tonic::Response<proto::BatchGetCodeSnippetResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("baseline"))
    }
    type ListEncryptionKeysStream =
        tokio_stream::Empty<Result<proto::ListEncryptionKeysResponse, tonic::Status>>;
    async fn list_encryption_keys(
        &self,
        _: tonic::Request<proto::ListEncryptionKeysRequest>,
    ) -> Result<tonic::Response<Self::ListEncryptionKeysStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("baseline"))
    }
    type PlanFleetStream = tokio_stream::Empty<Result<proto::PlanFleetResponse, tonic::Status>>;
    async fn plan_fleet(
        &self,
        _: tonic::Request<proto::PlanFleetRequest>,
    ) -> Result<tonic::Response<Self::PlanFleetStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("baseline"))
    }
    type ApplyFleetStream = tokio_stream::Empty<Result<proto::ApplyFleetResponse, tonic::Status>>;
    async fn apply_fleet(
        &self,
        _: tonic::Request<proto::ApplyFleetRequest>,
    ) -> Result<tonic::Response<Self::ApplyFleetStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("baseline"))
    }
    type WatchEncryptionKeyStream =
        tokio_stream::Empty<Result<proto::WatchEncryptionKeyResponse, tonic::Status>>;
    async fn watch_encryption_key(
        &self,
        _: tonic::Request<proto::WatchEncryptionKeyRequest>,
    ) -> Result<tonic::Response<Self::WatchEncryptionKeyStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("baseline"))
    }
}

fn tls_files(dir: &Path) -> inspector_keyd::config::TlsFiles {
    inspector_keyd::config::TlsFiles {
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
        client_ca_files: vec![dir.join("ca.pem")],
        trust_domain_ca_files: Default::default(),
        allow_token_only: false,
    }
}

async fn baseline(dir: PathBuf) {
    let keys = moka::sync::Cache::new(16);
    let target = request();
    keys.insert((target.scan_type, target.resource_type), Arc::from(KEY));
    let router = tonic::transport::Server::builder()
        .add_service(EncryptionKeyServiceServer::new(Bare { keys }));
    let socket = dir.join("baseline.sock");
    let unix = tokio::net::UnixListener::bind(&socket).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addresses =
        serde_json::json!({"tcp": tcp.local_addr().unwrap(), "tls": tls.local_addr().unwrap()});
    // Whole or not at all: the driver polls for this file and must never read half of it.
    let temporary = dir.join("baseline.json.tmp");
    std::fs::write(&temporary, addresses.to_string()).unwrap();
    std::fs::rename(&temporary, dir.join("baseline.json")).unwrap();
    let reloadable = Arc::new(inspector_keyd::tls::ReloadableTls::load(tls_files(&dir)).unwrap());
    // The sidecar's TLS accept loop, with its default connection limits.
    let admission = inspector_keyd::connection::Admission::new(
        inspector_keyd::connection::ListenerKind::Tls,
        &Default::default(),
        inspector_keyd::metrics::Metrics::new(Arc::new(inspector_keyd::cache::CacheState::new(
            Default::default(),
        ))),
    );
    tokio::join!(
        router
            .clone()
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(unix)),
        router.clone().serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(tcp).with_nodelay(Some(true))
        ),
        router.serve_with_incoming(inspector_keyd::tls::incoming(tls, reloadable, admission)),
    )
    .0
    .unwrap();
}

async fn sidecar(dir: PathBuf) {
    // As `inspector-keyd serve` does: logging at the default level, then the server.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let settings =
        inspector_keyd::config::Settings::load(Some(&dir.join("keyd.toml")), std::env::vars())
            .unwrap();
    inspector_keyd::app::App::build(settings, Default::default())
        .await
        .unwrap()
        .run(inspector_keyd::server::termination_signal())
        .await
        .unwrap();
}

// ---------------------------------------------------------------- the driver

struct Server {
    child: Child,
}

impl Server {
    fn start(role: &str, dir: &Path) -> Server {
        let log = std::fs::File::create(dir.join(format!("{role}.log"))).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--role", role, "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Server { child }
    }

    /// Resident set size, in KiB.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Unix,
    Tcp,
    Mtls,
}

/// Where a server listens, per transport.
struct Addresses {
    unix: PathBuf,
    tcp: SocketAddr,
    tls: SocketAddr,
}

struct Pki {
    ca_pem: String,
    client: pki::Pair,
}

async fn unix_channel(path: &Path) -> Channel {
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

async fn channel(transport: Transport, addresses: &Addresses, pki: &Pki) -> Channel {
    match transport {
        Transport::Unix => unix_channel(&addresses.unix).await,
        Transport::Tcp => Endpoint::try_from(format!("http://{}", addresses.tcp))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap(),
        Transport::Mtls => {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
                .identity(tonic::transport::Identity::from_pem(
                    &pki.client.cert_pem,
                    &pki.client.key_pem,
                ))
                .domain_name("localhost");
            Endpoint::try_from(format!("https://{}", addresses.tls))
                .unwrap()
                .tcp_nodelay(true)
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap()
        }
    }
}

/// One measured slice of a run.
#[derive(Debug, Default)]
struct Sample {
    latencies: Vec<Duration>,
    /// The measured time.
    elapsed: Duration,
    /// Server CPU time over the measured time.
    cpu: Duration,
}

impl Sample {
    /// The slices of one run as one run.
    fn combine(samples: Vec<Sample>) -> Run {
        let mut all = Sample::default();
        for sample in samples {
            all.latencies.extend(sample.latencies);
            all.elapsed += sample.elapsed;
            all.cpu += sample.cpu;
        }
        all.latencies.sort_unstable();
        let at = |q: f64| {
            all.latencies
                .get(
                    ((all.latencies.len() as f64 * q) as usize)
                        .min(all.latencies.len().saturating_sub(1)),
                )
                .copied()
                .unwrap_or_default()
        };
        let requests = all.latencies.len();
        Run {
            throughput: requests as f64 / all.elapsed.as_secs_f64().max(1e-9),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            cpu_per_request: all.cpu / u32::try_from(requests.max(1)).unwrap_or(u32::MAX),
        }
    }
}

/// The order the two servers (0 baseline, 1 sidecar) take turns in, slice by slice: ABBA,
/// starting with the other server every other round.
fn turns(round: usize, slices: usize) -> impl Iterator<Item = usize> {
    (0..slices.max(1)).flat_map(move |slice| {
        if (round + slice).is_multiple_of(2) {
            [0, 1]
        } else {
            [1, 0]
        }
    })
}

/// One measured run.
#[derive(Clone, Copy, Debug)]
struct Run {
    throughput: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    /// Server CPU time (all its threads, user and system) per measured request.
    cpu_per_request: Duration,
}

/// CPU time a process's threads have run so far (`/proc/<pid>/task/*/schedstat`, ns).
fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

fn request() -> proto::GetEncryptionKeyRequest {
    proto::GetEncryptionKeyRequest {
        scan_type: proto::ScanType::Code as i32,
        resource_type: proto::ResourceType::AwsLambdaFunction as i32,
        ..Default::default()
    }
}

/// `concurrency` loops sending GetEncryptionKey over `channels` until the time is up, with
/// the CPU time of the server process `server` over the measured window.
async fn load(
    channels: &[Channel],
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    server: u32,
) -> Sample {
    let start = Instant::now() + warmup;
    let end = start + duration;
    let cpu_at_start = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        cpu_time(server)
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..concurrency {
        let mut client = EncryptionKeyServiceClient::new(channels[i % channels.len()].clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let response = client
                    .get_encryption_key(request())
                    .await
                    .expect("GetEncryptionKey");
                assert_eq!(response.get_ref().kms_key_id.len(), KEY.len());
                if sent >= start {
                    latencies.push(sent.elapsed());
                }
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(latencies) = tasks.join_next().await {
        all.extend(latencies.unwrap());
    }
    let cpu = cpu_time(server).saturating_sub(cpu_at_start.await.unwrap());
    Sample {
        latencies: all,
        elapsed: duration,
        cpu,
    }
}

/// h2load, as the test-tool script installs it (or where `KEYD_H2LOAD` says). Missing: the
/// bench says so and leaves out its figures, except under `CI=true`, where it fails.
fn h2load_tool() -> Option<PathBuf> {
    let path = std::env::var_os("KEYD_H2LOAD")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/h2load"));
    if path.is_file() {
        return Some(path);
    }
    let message = format!(
        "h2load is missing at {}: run scripts/install-test-tools.sh (or set KEYD_H2LOAD)",
        path.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
    println!("{message}; the external client's figures are left out\n");
    None
}

/// The gRPC message h2load sends: the request, length-prefixed as gRPC frames it.
fn grpc_frame() -> Vec<u8> {
    use prost::Message;
    let message = request().encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// One h2load run of `requests` cached reads over loopback TCP (16 connections, 8 streams
/// each, one client thread), after `warmup` unmeasured ones; the server's CPU time is read
/// around the measured run, latencies from h2load's per-request log.
fn h2load_run(
    h2load: &Path,
    addr: SocketAddr,
    (warmup, requests): (usize, usize),
    server: u32,
    dir: &Path,
) -> Sample {
    let body = dir.join("h2load-request.bin");
    std::fs::write(&body, grpc_frame()).unwrap();
    let log = dir.join("h2load.log");
    // h2load appends: each run's log starts empty.
    let _ = std::fs::remove_file(&log);
    let url = format!("http://{addr}/inspectorkeyd.v1.EncryptionKeyService/GetEncryptionKey");
    let run = |n: usize, log: Option<&Path>| {
        let mut command = Command::new(h2load);
        command
            .args(["-c", "16", "-m", "8", "-t", "1", "-n", &n.to_string()])
            .arg("-d")
            .arg(&body)
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
        if let Some(log) = log {
            command.arg(format!("--log-file={}", log.display()));
        }
        let output = command.arg(&url).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "h2load: {stdout}");
        // Every request answered with HTTP 200 (the gRPC answer itself is checked by
        // our own client's runs against the same server).
        assert!(
            stdout.contains(&format!("{n} succeeded, 0 failed"))
                && stdout.contains(&format!("status codes: {n} 2xx")),
            "h2load: {stdout}"
        );
        stdout
    };
    if warmup > 0 {
        run(warmup, None);
    }
    let cpu_at_start = cpu_time(server);
    let stdout = run(requests, Some(&log));
    let cpu = cpu_time(server).saturating_sub(cpu_at_start);
    let throughput: f64 = stdout
        .lines()
        .find_map(|l| {
            let l = l.strip_prefix("finished in ")?;
            l.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no throughput in h2load's output: {stdout}"));
    // Tab-separated: start time, status, microseconds to the end of the response.
    let latencies: Vec<Duration> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<u64>().ok())
        .map(Duration::from_micros)
        .collect();
    assert_eq!(latencies.len(), requests, "h2load's log");
    Sample {
        latencies,
        elapsed: Duration::from_secs_f64(requests as f64 / throughput),
        cpu,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn micros(d: f64) -> String {
    format!("{:.0} µs", d * 1e6)
}

async fn wait_serving(channel: Channel) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..2000 {
        if let Ok(r) = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            && r.get_ref().status()
                == tonic_health::pb::health_check_response::ServingStatus::Serving
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the server did not become SERVING");
}

/// The baseline's addresses, once its listeners are bound and it has said where.
async fn baseline_addresses_when_up(dir: &Path) -> Addresses {
    for _ in 0..4000 {
        if let Ok(text) = std::fs::read_to_string(dir.join("baseline.json")) {
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            return Addresses {
                unix: dir.join("baseline.sock"),
                tcp: json["tcp"].as_str().unwrap().parse().unwrap(),
                tls: json["tls"].as_str().unwrap().parse().unwrap(),
            };
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "the baseline never wrote {}",
        dir.join("baseline.json").display()
    );
}

async fn unix_channel_when_up(path: &Path) -> Channel {
    for _ in 0..4000 {
        if path.exists() {
            return unix_channel(path).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("no socket at {}", path.display());
}

/// Writes a sidecar configuration into `dir`, with `extra_ops` in its `[ops]` table and
/// `extra` after it; returns its addresses.
fn sidecar_config_with(dir: &Path, extra_ops: &str, extra: &str) -> (Addresses, SocketAddr) {
    let (tcp, tls, metrics) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("rules.toml"),
        format!("[[rule]]\nrole = \"admin\"\nunix_uid = {}\n[[rule]]\nrole = \"read-only\"\nspiffe_id = \"{SPIFFE}\"\n", rustix::process::getuid().as_raw()),
    )
    .unwrap();
    let path = |p: PathBuf| format!("{:?}", p.to_str().unwrap());
    std::fs::write(
        dir.join("keyd.toml"),
        format!(
            "state_dir = {}\n[listen]\nunix_socket = {}\ntcp = \"{tcp}\"\n[authz]\nrules_file = {}\n[tls]\nlisten = \"{tls}\"\ncert_file = {}\nkey_file = {}\nclient_ca_files = [{}]\n# the bench measures gRPC; the AWS-protocol door is off\n[aws_api]\nlisten = \"\"\n[ops]\nmetrics_listen = \"{metrics}\"\n# the cold-read test sends 1,000 reads at once\nmax_concurrent_rpcs = 4096\n{extra_ops}{extra}",
            path(dir.join("state")),
            path(dir.join("keyd.sock")),
            path(dir.join("rules.toml")),
            path(dir.join("server.pem")),
            path(dir.join("server.key")),
            path(dir.join("ca.pem")),
        ),
    )
    .unwrap();
    (
        Addresses {
            unix: dir.join("keyd.sock"),
            tcp,
            tls,
        },
        metrics,
    )
}

/// Writes the bench's sidecar configuration into `dir`; returns its addresses.
fn sidecar_config(dir: &Path) -> (Addresses, SocketAddr) {
    sidecar_config_with(dir, "", "")
}

/// The sidecar's `/metrics` page (the HTTP response, headers included).
fn metrics_text(metrics: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(metrics).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

fn scrape(metrics: SocketAddr, name: &str) -> f64 {
    metrics_text(metrics)
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN)
}

/// A sidecar (a key in use, so reads are cache hits) and a baseline, fresh processes in
/// their own directory.
struct Servers {
    sidecar: Server,
    sidecar_addresses: Addresses,
    baseline: Server,
    baseline_addresses: Addresses,
    /// From spawning the sidecar to its health check answering SERVING.
    startup: Duration,
}

/// A new directory under `parent` with the TLS files of `parent`.
fn server_dir(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap();
    for file in ["ca.pem", "server.pem", "server.key"] {
        std::fs::copy(parent.join(file), dir.join(file)).unwrap();
    }
    dir
}

async fn start_servers(dir: &Path) -> Servers {
    let (sidecar_addresses, _) = sidecar_config(dir);
    let started = Instant::now();
    let sidecar = Server::start("sidecar", dir);
    let admin = unix_channel_when_up(&sidecar_addresses.unix).await;
    wait_serving(admin.clone()).await;
    let startup = started.elapsed();
    put_key_in_use(&admin).await;
    let baseline = Server::start("baseline", dir);
    let baseline_addresses = baseline_addresses_when_up(dir).await;
    Servers {
        sidecar,
        sidecar_addresses,
        baseline,
        baseline_addresses,
        startup,
    }
}

async fn drive(args: Args) {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("bench CA");
    ca.write(dir.path(), "ca");
    ca.server(dir.path(), "server");
    let client = ca.client(dir.path(), "client", pki::ClientName::Spiffe(SPIFFE));
    let pki = Pki {
        ca_pem: ca.pem(),
        client,
    };
    println!(
        "inspector-keyd load benchmark: {} concurrent over {} connection(s), {:?} per run after {:?} warm-up, in {} slices the servers take turns at, median of {} run(s)\n",
        args.concurrency, args.connections, args.duration, args.warmup, args.slices, args.repeats
    );
    let mut startups = Vec::new();

    println!(
        "{:<6} {:<9} {:>12} {:>9} {:>9} {:>9} {:>12}   sidecar / baseline",
        "", "server", "req/s", "p50", "p99", "p99.9", "server CPU"
    );
    let transports = [Transport::Unix, Transport::Tcp, Transport::Mtls]
        .into_iter()
        .filter(|t| {
            args.transports
                .iter()
                .any(|name| name.eq_ignore_ascii_case(&format!("{t:?}")))
        });
    for transport in transports {
        let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
        for repeat in 0..args.repeats {
            // New processes for every run: a server process settles into a faster or a
            // slower steady state (thread placement, batching) and keeps it, so runs of one
            // process are not independent samples.
            let servers =
                start_servers(&server_dir(dir.path(), &format!("{transport:?}-{repeat}"))).await;
            startups.push(servers.startup.as_secs_f64());
            let mut clients = Vec::new();
            for (addresses, server) in [
                (&servers.baseline_addresses, servers.baseline.pid()),
                (&servers.sidecar_addresses, servers.sidecar.pid()),
            ] {
                let mut channels = Vec::new();
                for _ in 0..args.connections {
                    channels.push(channel(transport, addresses, &pki).await);
                }
                clients.push((channels, server));
            }
            let mut samples: [Vec<Sample>; 2] = Default::default();
            for which in turns(repeat, args.slices) {
                let (channels, server) = &clients[which];
                // Each server's first slice comes after its warm-up.
                let warmup = if samples[which].is_empty() {
                    args.warmup
                } else {
                    Duration::ZERO
                };
                let slice = args.duration / u32::try_from(args.slices.max(1)).unwrap_or(1);
                samples[which].push(load(channels, args.concurrency, warmup, slice, *server).await);
            }
            for (runs, samples) in runs.iter_mut().zip(samples) {
                runs.push(Sample::combine(samples));
            }
        }
        report(&format!("{transport:?}").to_lowercase(), &runs);
    }
    if let Some(h2load) = h2load_tool() {
        // The same path measured by a client we did not write, on fresh processes again.
        let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
        for repeat in 0..args.repeats {
            let round = server_dir(dir.path(), &format!("h2load-{repeat}"));
            let servers = start_servers(&round).await;
            let targets = [
                (servers.baseline_addresses.tcp, servers.baseline.pid()),
                (servers.sidecar_addresses.tcp, servers.sidecar.pid()),
            ];
            let slice = (args.h2load_requests / args.slices.max(1)).max(1);
            let mut samples: [Vec<Sample>; 2] = Default::default();
            for which in turns(repeat, args.slices) {
                let (addr, server) = targets[which];
                // Each server's first slice comes after a fifth as many unmeasured requests.
                let warmup = if samples[which].is_empty() {
                    (args.h2load_requests / 5).max(1)
                } else {
                    0
                };
                samples[which].push(tokio::task::block_in_place(|| {
                    h2load_run(&h2load, addr, (warmup, slice), server, &round)
                }));
            }
            for (runs, samples) in runs.iter_mut().zip(samples) {
                runs.push(Sample::combine(samples));
            }
        }
        report("h2load", &runs);
    }

    if args.load_only {
        return;
    }
    // Memory: a new sidecar after a warm-up run, and after many more cached reads.
    let Servers {
        sidecar,
        sidecar_addresses,
        startup,
        ..
    } = start_servers(&server_dir(dir.path(), "memory")).await;
    startups.push(startup.as_secs_f64());
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(channel(Transport::Unix, &sidecar_addresses, &pki).await);
    }
    // As long as a measured run with its warm-up, so what a warm process holds is in.
    load(
        &channels,
        args.concurrency,
        Duration::ZERO,
        args.warmup + args.duration,
        sidecar.pid(),
    )
    .await;
    let before = sidecar.rss_kib();
    let mut done = 0;
    let mut client =
        EncryptionKeyServiceClient::new(channel(Transport::Unix, &sidecar_addresses, &pki).await);
    let per_batch = 64;
    while done < args.memory_reads {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..per_batch.min(args.memory_reads - done) {
            let mut c = client.clone();
            batch.spawn(async move { c.get_encryption_key(request()).await.map(drop) });
        }
        while let Some(r) = batch.join_next().await {
            r.unwrap().unwrap();
            done += 1;
        }
    }
    client.get_encryption_key(request()).await.unwrap();
    let after = sidecar.rss_kib();
    println!(
        "\nresident memory: {before} KiB after warm-up, {after} KiB after {done} more cached reads (growth {} KiB)",
        after as i64 - before as i64
    );
    println!(
        "start-up to SERVING: {:.0} ms (median of {} starts)",
        median(startups.clone()) * 1000.0,
        startups.len()
    );
    drop(sidecar);

    // Cold reads: a fresh sidecar, many concurrent first reads.
    let cold_dir = server_dir(dir.path(), "cold");
    let (cold_addresses, cold_metrics) = sidecar_config(&cold_dir);
    let _cold = Server::start("sidecar", &cold_dir);
    let cold_admin = unix_channel_when_up(&cold_addresses.unix).await;
    wait_serving(cold_admin.clone()).await;
    let loads_before = scrape(cold_metrics, "inspector_keyd_cache_loads_total");
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..args.cold_reads {
        let mut c = EncryptionKeyServiceClient::new(cold_admin.clone());
        reads.spawn(async move { c.get_encryption_key(request()).await.map_err(|s| s.code()) });
    }
    let mut answered = 0;
    while let Some(r) = reads.join_next().await {
        assert_eq!(
            r.unwrap().unwrap_err(),
            tonic::Code::NotFound,
            "the AWS owned key is in use"
        );
        answered += 1;
    }
    let loads = scrape(cold_metrics, "inspector_keyd_cache_loads_total") - loads_before;
    println!("cold cache: {answered} concurrent first reads -> {loads} backend load(s)");

    // Verification speed.
    let key = verify_inputs::key();
    for profile in inspector_keyd::verify::Profile::ALL {
        let documents = verify_inputs::documents(profile);
        let input = verify_inputs::input(profile, &key, &documents);
        let iterations = if args.quick { 5 } else { 200 };
        let mut times: Vec<f64> = (0..iterations)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(inspector_keyd::verify::verify(std::hint::black_box(&input)));
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(|a, b| a.total_cmp(b));
        let size = documents.0.len() + documents.1.iter().map(String::len).sum::<usize>();
        println!(
            "verify {:<26} {:>6} bytes of policy: median {}",
            profile.name(),
            size,
            micros(median(times))
        );
    }

    fleet(args.fleet_duration, dir.path()).await;
}

/// How much the fleet run shrinks the default intervals.
const FLEET_SCALE: f64 = 100.0;

/// Every backend call so far, by operation, from the backend-call metric.
fn backend_calls(metrics: SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let text = metrics_text(metrics);
    let mut calls = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("inspector_keyd_backend_calls_total{") else {
            continue;
        };
        let operation = rest
            .split("operation=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default();
        let value: f64 = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        *calls.entry(operation.to_owned()).or_insert(0.0) += value;
    }
    calls
}

/// The fleet's cost in AWS calls: a sidecar with every default interval divided by
/// FLEET_SCALE, both targets read steadily (a customer managed key in use for one, the AWS
/// owned key for the other), its backend calls counted over `duration` and scaled back up
/// to calls per sidecar-hour at the defaults; then what 1,000 such sidecars in one account
/// make of KMS's published per-account request quotas.
async fn fleet(duration: Duration, parent: &Path) {
    let cache = inspector_keyd::config::CacheConfig::default();
    let ops = inspector_keyd::config::OpsConfig::default();
    let scaled = |d: Duration| {
        format!(
            "\"{}ms\"",
            (d.as_secs_f64() * 1000.0 / FLEET_SCALE).max(1.0)
        )
    };
    let dir = server_dir(parent, "fleet");
    let (addresses, metrics) = sidecar_config_with(
        &dir,
        &format!(
            "drift_interval = {}\nready_check_interval = {}\n",
            scaled(ops.drift_interval),
            scaled(ops.ready_check_interval)
        ),
        &format!(
            "[cache]\nkey_ttl = {}\naws_owned_ttl = {}\n",
            scaled(cache.key_ttl),
            scaled(cache.aws_owned_ttl)
        ),
    );
    let _sidecar = Server::start("sidecar", &dir);
    let admin = unix_channel_when_up(&addresses.unix).await;
    wait_serving(admin.clone()).await;
    put_key_in_use(&admin).await;
    let mut client = EncryptionKeyServiceClient::new(admin);
    // Reads far more often than the scaled TTLs, so every refresh point is reached.
    let read_every = Duration::from_millis(5);
    let read_for = |client: &mut EncryptionKeyServiceClient<Channel>, until: Instant| {
        let mut client = client.clone();
        async move {
            let mut ticks = tokio::time::interval(read_every);
            while Instant::now() < until {
                ticks.tick().await;
                for resource_type in [
                    proto::ResourceType::AwsLambdaFunction,
                    proto::ResourceType::CodeRepository,
                ] {
                    let read = client
                        .get_encryption_key(proto::GetEncryptionKeyRequest {
                            scan_type: proto::ScanType::Code as i32,
                            resource_type: resource_type as i32,
                            ..Default::default()
                        })
                        .await;
                    // The repository target has the AWS owned key: NOT_FOUND, cached too.
                    assert!(
                        read.as_ref()
                            .map_or_else(|s| s.code() == tonic::Code::NotFound, |_| true),
                        "{read:?}"
                    );
                }
            }
        }
    };
    // Two scaled key TTLs unmeasured: past the start-up reads and the first refreshes.
    let settle = cache.key_ttl.mul_f64(2.0 / FLEET_SCALE);
    read_for(&mut client, Instant::now() + settle).await;
    let before = backend_calls(metrics);
    let started = Instant::now();
    read_for(&mut client, started + duration).await;
    let elapsed = started.elapsed();
    let after = backend_calls(metrics);
    // Seconds at the defaults that the run stood for.
    let default_seconds = elapsed.as_secs_f64() * FLEET_SCALE;
    let per_hour: Vec<(String, f64)> = after
        .iter()
        .map(|(op, n)| {
            (
                op.clone(),
                (n - before.get(op).copied().unwrap_or(0.0)) * 3600.0 / default_seconds,
            )
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    let total: f64 = per_hour.iter().map(|(_, n)| n).sum();
    println!(
        "\nfleet cost: defaults (key TTL {:?}, AWS owned {:?}, drift check {:?}) run at 1/{FLEET_SCALE} for {:.0} s ({:.0} min at the defaults), both targets read every {read_every:?}",
        cache.key_ttl,
        cache.aws_owned_ttl,
        ops.drift_interval,
        elapsed.as_secs_f64(),
        default_seconds / 60.0
    );
    let listed: Vec<String> = per_hour
        .iter()
        .map(|(op, n)| format!("{op} {n:.1}"))
        .collect();
    println!(
        "  backend calls per sidecar-hour: {total:.1} ({})",
        listed.join(", ")
    );
    let fleet_per_second = |op: &str| {
        per_hour
            .iter()
            .find(|(o, _)| o == op)
            .map_or(0.0, |(_, n)| n * 1000.0 / 3600.0)
    };
    for (op, api, quota) in [
        ("describe_key", "KMS DescribeKey", 2000.0),
        ("get_key_policy", "KMS GetKeyPolicy", 1000.0),
    ] {
        let rate = fleet_per_second(op);
        println!(
            "  1,000 sidecars in one account: {api} {rate:.2}/s = {:.3} % of its {quota:.0}/s quota",
            rate / quota * 100.0
        );
    }
    println!(
        "  1,000 sidecars in one account: Inspector GetEncryptionKey {:.1}/s (Inspector publishes no rate quota)",
        fleet_per_second("get_encryption_key")
    );
}

/// Prints the baseline's and the sidecar's medians and their ratios.
fn report(label: &str, runs: &[Vec<Run>; 2]) {
    let figures: Vec<[f64; 5]> = runs
        .iter()
        .map(|r| {
            [
                median(r.iter().map(|x| x.throughput).collect()),
                median(r.iter().map(|x| x.p50.as_secs_f64()).collect()),
                median(r.iter().map(|x| x.p99.as_secs_f64()).collect()),
                median(r.iter().map(|x| x.p999.as_secs_f64()).collect()),
                median(r.iter().map(|x| x.cpu_per_request.as_secs_f64()).collect()),
            ]
        })
        .collect();
    for (name, f) in ["baseline", "sidecar"].iter().zip(&figures) {
        println!(
            "{:<6} {:<9} {:>12.0} {:>9} {:>9} {:>9} {:>12}",
            label,
            name,
            f[0],
            micros(f[1]),
            micros(f[2]),
            micros(f[3]),
            format!("{:.1} µs", f[4] * 1e6)
        );
    }
    let ratio = |i: usize| figures[1][i] / figures[0][i];
    println!(
        "{:<6} {:<9} {:>12} {:>9} {:>9} {:>9} {:>12}   throughput {:.2}, CPU {:.2}, p99 {:.2}",
        "",
        "ratio",
        format!("{:.2}", ratio(0)),
        format!("{:.2}", ratio(1)),
        format!("{:.2}", ratio(2)),
        format!("{:.2}", ratio(3)),
        format!("{:.2}", ratio(4)),
        ratio(0),
        // Baseline CPU over the sidecar's: 1.0 when a read costs the sidecar no more.
        1.0 / ratio(4),
        ratio(2),
    );
}

/// Creates a local key and puts it in use, so reads are cache hits with an ARN as long as
/// the baseline's constant.
async fn put_key_in_use(admin: &Channel) {
    let arn = LocalKmsServiceClient::new(admin.clone())
        .create_key(proto::CreateKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .arn;
    let mut keys = EncryptionKeyServiceClient::new(admin.clone());
    keys.update_encryption_key(proto::UpdateEncryptionKeyRequest {
        kms_key_id: arn,
        scan_type: proto::ScanType::Code as i32,
        resource_type: proto::ResourceType::AwsLambdaFunction as i32,
        validate_only: false,
        ..Default::default()
    })
    .await
    .unwrap();
}
