#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The load benchmark: cached `GetEncryptionKey` through the real sidecar (every layer on:
//! authorization, cache, metrics, logging at the default level) against a bare tonic server
//! answering the same message with a constant, with the same client code, concurrency and
//! duration, over the Unix socket, loopback TCP and loopback TCP with mTLS. Also: cold-read
//! coalescing, resident memory before and after many cached reads, start-up time to
//! SERVING, and verification speed on ~32 KB policies.
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
    /// Runs per transport and server; figures are medians over them.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Cached reads between the two memory readings.
    #[arg(long, default_value_t = 1_000_000)]
    memory_reads: usize,
    /// Concurrent first reads on a cold cache.
    #[arg(long, default_value_t = 1000)]
    cold_reads: usize,
    /// Transports to measure: any of unix, tcp, mtls.
    #[arg(long, value_delimiter = ',', default_value = "unix,tcp,mtls")]
    transports: Vec<String>,
    /// Skip the memory, cold-read, start-up and verification figures.
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

/// A bare tonic server: GetEncryptionKey answers a constant, no layers.
struct Constant;

#[tonic::async_trait]
impl EncryptionKeyService for Constant {
    async fn get_encryption_key(
        &self,
        _: tonic::Request<proto::GetEncryptionKeyRequest>,
    ) -> Result<tonic::Response<proto::GetEncryptionKeyResponse>, tonic::Status> {
        Ok(tonic::Response::new(proto::GetEncryptionKeyResponse {
            kms_key_id: KEY.into(),
        }))
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
    let router =
        tonic::transport::Server::builder().add_service(EncryptionKeyServiceServer::new(Constant));
    let socket = dir.join("baseline.sock");
    let unix = tokio::net::UnixListener::bind(&socket).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addresses =
        serde_json::json!({"tcp": tcp.local_addr().unwrap(), "tls": tls.local_addr().unwrap()});
    std::fs::write(dir.join("baseline.json"), addresses.to_string()).unwrap();
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
) -> Run {
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
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        throughput: all.len() as f64 / duration.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        cpu_per_request: cpu / u32::try_from(all.len().max(1)).unwrap_or(u32::MAX),
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

async fn unix_channel_when_up(path: &Path) -> Channel {
    for _ in 0..4000 {
        if path.exists() {
            return unix_channel(path).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("no socket at {}", path.display());
}

/// Writes a sidecar configuration into `dir`; returns its addresses.
fn sidecar_config(dir: &Path) -> (Addresses, SocketAddr) {
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
            "state_dir = {}\n[listen]\nunix_socket = {}\ntcp = \"{tcp}\"\n[authz]\nrules_file = {}\n[tls]\nlisten = \"{tls}\"\ncert_file = {}\nkey_file = {}\nclient_ca_files = [{}]\n[ops]\nmetrics_listen = \"{metrics}\"\n# the cold-read test sends 1,000 reads at once\nmax_concurrent_rpcs = 4096\n",
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

fn scrape(metrics: SocketAddr, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(metrics).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
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
    let baseline_addresses = loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("baseline.json")) {
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            break Addresses {
                unix: dir.join("baseline.sock"),
                tcp: json["tcp"].as_str().unwrap().parse().unwrap(),
                tls: json["tls"].as_str().unwrap().parse().unwrap(),
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
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
        "inspector-keyd load benchmark: {} concurrent over {} connection(s), {:?} per run after {:?} warm-up, median of {} run(s)\n",
        args.concurrency, args.connections, args.duration, args.warmup, args.repeats
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
            // Alternate which server goes first, so neither always gets the warmer machine.
            let order = if repeat % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let (addresses, server) = if which == 0 {
                    (&servers.baseline_addresses, servers.baseline.pid())
                } else {
                    (&servers.sidecar_addresses, servers.sidecar.pid())
                };
                let mut channels = Vec::new();
                for _ in 0..args.connections {
                    channels.push(channel(transport, addresses, &pki).await);
                }
                runs[which].push(
                    load(
                        &channels,
                        args.concurrency,
                        args.warmup,
                        args.duration,
                        server,
                    )
                    .await,
                );
            }
        }
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
                format!("{transport:?}").to_lowercase(),
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
            "{:<6} {:<9} {:>12} {:>9} {:>9} {:>9} {:>12}   throughput {:.2}, p99 {:.2}",
            "",
            "ratio",
            format!("{:.2}", ratio(0)),
            format!("{:.2}", ratio(1)),
            format!("{:.2}", ratio(2)),
            format!("{:.2}", ratio(3)),
            format!("{:.2}", ratio(4)),
            ratio(0),
            ratio(2),
        );
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
    })
    .await
    .unwrap();
}
