//! The load benchmark tool runs, in its tiny configuration, and prints every figure (our
//! own client's, h2load's, and the fleet's cost in AWS calls). No
//! timing is asserted here: speed targets live in the benchmark, not in tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn the_benchmark_tool_runs_and_reports_every_figure() {
    // `cargo test` builds the examples next to the test binaries' directory.
    let exe = std::env::current_exe().unwrap();
    let bench = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/bench");
    assert!(bench.exists(), "{} is not built", bench.display());
    let output = Command::new(&bench).arg("--quick").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // h2load (installed by the test-tool script) drives the same path: the bench fails
    // under CI=true without it, and leaves its lines out otherwise, which fails here.
    for transport in ["unix", "tcp", "mtls", "h2load"] {
        for server in ["baseline", "sidecar"] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(transport) && l.contains(server))
                .unwrap_or_else(|| panic!("no {transport} {server} line: {stdout}"));
            // The server's CPU time per request was read from the server process.
            let cpu = line
                .trim_end()
                .trim_end_matches("µs")
                .split_whitespace()
                .last();
            let cpu: f64 = cpu.and_then(|c| c.parse().ok()).unwrap_or_default();
            assert!(cpu > 0.0, "{line}");
        }
    }
    assert_eq!(
        stdout.lines().filter(|l| l.contains("ratio")).count(),
        4,
        "{stdout}"
    );
    // The fleet's cost: calls per sidecar-hour counted from the backend-call metric (the
    // drift check's KMS reads among them), and the fleet's share of KMS's quotas.
    let per_hour = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("backend calls per sidecar-hour: "))
        .unwrap_or_else(|| panic!("no fleet figures: {stdout}"));
    for operation in ["get_encryption_key", "describe_key", "get_key_policy"] {
        assert!(per_hour.contains(operation), "{per_hour}");
    }
    for quota in ["KMS DescribeKey", "KMS GetKeyPolicy"] {
        assert!(
            stdout.contains(&format!("1,000 sidecars in one account: {quota}")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("resident memory:"), "{stdout}");
    assert!(stdout.contains("start-up to SERVING:"), "{stdout}");
    // Coalescing is not a timing: a hundred concurrent cold reads make exactly one load.
    assert!(
        stdout.contains("cold cache: 100 concurrent first reads -> 1 backend load(s)"),
        "{stdout}"
    );
    for profile in [
        "codeguru-grants",
        "amazon-q-lambda",
        "amazon-q-code-repository",
    ] {
        assert!(stdout.contains(&format!("verify {profile}")), "{stdout}");
    }
}

/// The fleet benchmark (`examples/fleet_bench.rs`) runs its tiny organization, 3 accounts ×
/// 2 Regions: plan, apply and a second apply through the real CLI, each with its backend
/// calls counted from the metric. It fails by itself when a command does (a plan error, an
/// apply that misses a scope, a second apply that writes); nothing about time is asserted.
#[test]
fn the_fleet_benchmark_tool_runs_and_reports_every_figure() {
    let exe = std::env::current_exe().unwrap();
    let bench = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/fleet_bench");
    assert!(bench.exists(), "{} is not built", bench.display());
    let output = Command::new(&bench)
        .args(["--quick", "--keyd", env!("CARGO_BIN_EXE_inspector-keyd")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("3 accounts × 2 Regions = 6 scopes"),
        "{stdout}"
    );
    for command in ["plan ", "apply ", "apply again "] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(command) && l.contains(" s "))
            .unwrap_or_else(|| panic!("no {command}row: {stdout}"));
        assert!(row.ends_with(": pass") || row.ends_with(": over"), "{row}");
    }
    // The second apply wrote nothing, and the plan's calls were counted from the metric.
    let again = stdout
        .lines()
        .find(|l| l.starts_with("apply again "))
        .unwrap();
    assert!(again.contains("0 writes: pass"), "{again}");
    let plan_calls = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("plan printed ")?
                .split_once("backend calls by operation: ")
                .map(|(_, calls)| calls)
        })
        .unwrap_or_else(|| panic!("no plan calls: {stdout}"));
    assert!(plan_calls.contains("/scope"), "{plan_calls}");
    assert!(
        stdout.contains("plan backend calls per scope: "),
        "{stdout}"
    );
    assert!(stdout.contains("sidecar resident memory: "), "{stdout}");
}
