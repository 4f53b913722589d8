//! The `fleet` command's clients run against a sidecar, and its reconcile gauges read.

use std::process::Command;

use super::{BIN, Sidecar};

/// `inspector-keyd fleet ARGS --socket` of the sidecar: its output.
pub fn fleet(sidecar: &Sidecar, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("fleet")
        .args(args)
        .arg("--socket")
        .arg(&sidecar.socket)
        .output()
        .unwrap()
}

/// `fleet plan|apply FILE --format json` (with `--yes` for apply): its exit code and JSON.
pub fn fleet_json(
    sidecar: &Sidecar,
    command: &str,
    file: &std::path::Path,
) -> (i32, serde_json::Value) {
    let mut args = vec![command, file.to_str().unwrap(), "--format", "json"];
    if command == "apply" {
        args.push("--yes");
    }
    let output = fleet(sidecar, &args);
    let json = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {output:?}"));
    (output.status.code().unwrap(), json)
}

/// Each change as (account, Region, action), with its error when it has one.
pub fn actions(json: &serde_json::Value) -> Vec<(String, String, String, Option<String>)> {
    json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["account_id"].as_str().unwrap_or_default().to_owned(),
                c["region"].as_str().unwrap_or_default().to_owned(),
                c["action"].as_str().unwrap().to_owned(),
                c["error"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// `inspector_keyd_fleet_targets` by state, from the metrics listener.
pub fn fleet_targets(sidecar: &Sidecar) -> [u64; 3] {
    let (code, body) = sidecar.http_get("/metrics");
    assert_eq!(code, 200);
    let value = |state: &str| {
        body.lines()
            .find_map(|line| {
                line.strip_prefix(&format!(
                    "inspector_keyd_fleet_targets{{state=\"{state}\"}} "
                ))
            })
            .unwrap_or_else(|| panic!("no {state} series: {body}"))
            .parse()
            .unwrap()
    };
    [
        value("in_desired_state"),
        value("out_of_desired_state"),
        value("error"),
    ]
}

/// Waits (bounded) until the sidecar's fleet gauges are `want`.
pub async fn until_fleet(sidecar: &Sidecar, want: [u64; 3]) {
    let mut last = [0; 3];
    for _ in 0..200 {
        last = fleet_targets(sidecar);
        if last == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("fleet targets {last:?}, wanted {want:?}\n{}", sidecar.log());
}
