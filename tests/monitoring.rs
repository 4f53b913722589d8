//! deploy/monitoring, the operator kit: the alerting rules pass promtool's checks and their
//! unit tests, the dashboard's queries are valid PromQL, the PrometheusRule and the dashboard
//! ConfigMap carry the same rules and dashboard, every runbook link names a section of
//! docs/operations.md, every metric and label they use is in a live scrape of the sidecar, and
//! a real Prometheus scraping a real sidecar fires the drift alert when the key in use is
//! disabled through the local KMS and resolves it when the key is enabled again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use common::*;
use inspector_keyd::proto;
use regex::Regex;
use serde_json::Value;

const DRIFT_ALERT: &str = "InspectorKeydKeyFailsVerification";
/// Labels Prometheus adds to every series it scrapes (and the Kubernetes ones the rules may
/// group by): not in the sidecar's own exposition.
const TARGET_LABELS: [&str; 4] = ["job", "instance", "namespace", "pod"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn monitoring(file: &str) -> PathBuf {
    repo().join("deploy/monitoring").join(file)
}

fn promtool() -> PathBuf {
    tool("KEYD_TEST_PROMTOOL", ".tools/prometheus/usr/bin/promtool")
}

fn python() -> PathBuf {
    tool("KEYD_TEST_PYTHON", ".tools/venv/bin/python")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The rules of rules.yaml.
fn alert_rules(python: &Path) -> Vec<Value> {
    let doc = yaml_documents(python, &monitoring("rules.yaml")).remove(0);
    let rules: Vec<Value> = doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    assert!(rules.len() >= 7, "{rules:?}");
    rules
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(monitoring("grafana-dashboard.json")).unwrap())
        .unwrap()
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        all.push(panel.clone());
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested.iter().cloned());
        }
    }
    all
}

/// A dashboard query as Prometheus gets it: Grafana's variables replaced by what they stand
/// for with every value selected.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

/// Every query of the dashboard (panels and template variables), as PromQL.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut queries: Vec<String> = panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| as_promql(t["expr"].as_str().unwrap()))
        .collect();
    let label_values = Regex::new(r"^label_values\((.*), *\w+\)$").unwrap();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let definition = variable["definition"].as_str().unwrap();
            let selector = &label_values
                .captures(definition)
                .unwrap_or_else(|| panic!("not a label_values query: {definition}"))[1];
            queries.push(as_promql(selector));
        }
    }
    assert!(queries.len() >= 10, "{queries:?}");
    queries
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_cover_every_alert() {
    let (promtool, python) = (promtool(), python());
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(monitoring("rules.yaml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let rules = alert_rules(&python);
    assert!(
        text(&check).contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{}",
        text(&check)
    );
    let unit = Command::new(&promtool)
        .args(["test", "rules"])
        .arg(monitoring("rules.test.yaml"))
        .output()
        .unwrap();
    assert!(unit.status.success(), "{}", text(&unit));

    // Each alert is tested firing and staying silent.
    let tests = yaml_documents(&python, &monitoring("rules.test.yaml")).remove(0);
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .collect();
    for rule in &rules {
        let alert = rule["alert"].as_str().unwrap();
        let expected = |firing: bool| {
            cases.iter().any(|c| {
                c["alertname"] == alert
                    && c["exp_alerts"]
                        .as_array()
                        .is_some_and(|a| a.is_empty() != firing)
            })
        };
        assert!(expected(true), "{alert}: no unit test where it fires");
        assert!(
            expected(false),
            "{alert}: no unit test where it stays silent"
        );
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{alert}: severity {severity:?}"
        );
        for annotation in ["summary", "description", "runbook_url"] {
            assert!(
                rule["annotations"][annotation]
                    .as_str()
                    .is_some_and(|a| !a.is_empty()),
                "{alert}: no {annotation}"
            );
        }
    }
}

#[test]
fn the_dashboard_queries_are_valid_promql() {
    let promtool = promtool();
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "inspector-keyd");
    for panel in panels(&dashboard).iter().filter(|p| p["type"] != "row") {
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "panel {} has no description",
            panel["title"]
        );
        assert!(
            panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has no query",
            panel["title"]
        );
    }
    // promtool parses each query as the expression of a recording rule.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yaml");
    let rules: Vec<Value> = dashboard_queries(&dashboard)
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": q}))
        .collect();
    // JSON is YAML.
    std::fs::write(
        &file,
        serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .unwrap();
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
}

/// A heading's anchor as GitHub renders it.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_runbook_link_names_a_section_of_the_operations_doc() {
    let python = python();
    let operations = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let anchors: BTreeSet<String> = operations
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor(h.trim_start_matches('#')))
        .collect();
    for rule in alert_rules(&python) {
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let section = url
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{url}: not a section of docs/operations.md"));
        assert!(
            anchors.contains(section),
            "{url}: no such section in docs/operations.md"
        );
    }
}

/// The relative path from `from` to `to` (both absolute): kustomize takes no absolute paths.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let mut path = PathBuf::new();
    for _ in from.components().skip(1) {
        path.push("..");
    }
    path.join(to.strip_prefix("/").unwrap())
}

#[test]
fn the_monitoring_component_carries_the_rules_and_the_dashboard_and_scrapes_the_sidecar() {
    let (kubectl, python) = (
        tool("KEYD_TEST_KUBECTL", ".tools/venv/bin/kubectl"),
        python(),
    );
    // An overlay of the user's: the local one plus the component.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let deploy = repo().canonicalize().unwrap().join("deploy");
    std::fs::write(
        root.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
            relative(&root, &deploy.join("k8s/overlays/local")).display(),
            relative(&root, &deploy.join("monitoring")).display(),
        ),
    )
    .unwrap();
    let output = Command::new(&kubectl)
        .arg("kustomize")
        .arg(&root)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let rendered = root.join("rendered.yaml");
    std::fs::write(&rendered, &output.stdout).unwrap();
    let resources = yaml_documents(&python, &rendered);
    let one = |kind: &str| {
        let found: Vec<&Value> = resources.iter().filter(|r| r["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind} expected");
        found[0].clone()
    };

    let rules = yaml_documents(&python, &monitoring("rules.yaml")).remove(0);
    let prometheus_rule = one("PrometheusRule");
    assert_eq!(prometheus_rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        prometheus_rule["spec"], rules,
        "prometheusrule.yaml differs from rules.yaml"
    );

    let dashboard_map = resources
        .iter()
        .find(|r| r["kind"] == "ConfigMap" && r["metadata"]["name"] == "inspector-keyd-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(
        dashboard_map["metadata"]["labels"]["grafana_dashboard"],
        "1"
    );
    let shipped: Value = serde_json::from_str(
        dashboard_map["data"]["inspector-keyd.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(shipped, dashboard());

    // The PodMonitor and the annotations scrape the port the sidecar serves metrics on.
    let base_config = std::fs::read_to_string(deploy.join("k8s/base/config.toml")).unwrap();
    let metrics_port: u64 = Regex::new(r#"(?m)^metrics_listen = "[^"]*:(\d+)""#)
        .unwrap()
        .captures(&base_config)
        .expect("metrics_listen in the base config")[1]
        .parse()
        .unwrap();
    let deployment = one("Deployment");
    let template = &deployment["spec"]["template"];
    let sidecar = template["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "inspector-keyd")
        .unwrap();
    let pod_monitor = one("PodMonitor");
    for (label, value) in pod_monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&template["metadata"]["labels"][label], value, "{label}");
    }
    let endpoint = &pod_monitor["spec"]["podMetricsEndpoints"][0];
    let port = sidecar["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == endpoint["port"])
        .unwrap_or_else(|| panic!("the sidecar has no port {}", endpoint["port"]));
    assert_eq!(port["containerPort"].as_u64(), Some(metrics_port));
    assert_eq!(endpoint["path"], "/metrics");
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        metrics_port.to_string().as_str()
    );
    // Prometheus in the monitoring namespace may reach that port.
    let network_policy = one("NetworkPolicy");
    assert!(
        network_policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|rule| rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["port"].as_u64() == Some(metrics_port))
                && rule["from"].to_string().contains("monitoring")),
        "{network_policy}"
    );
}

/// The label names of every sample in a scrape, by sample name (`..._total`, `..._bucket`).
fn scraped_labels(metrics: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for samples in metrics.as_object().unwrap().values() {
        for sample in samples.as_array().unwrap() {
            let names = labels
                .entry(sample["name"].as_str().unwrap().to_owned())
                .or_default();
            names.extend(sample["labels"].as_object().unwrap().keys().cloned());
        }
    }
    labels
}

/// What one rule or panel uses: PromQL expressions, and the templates that name labels
/// (`{{ $labels.x }}` in annotations, `{{x}}` in legends).
struct Usage {
    what: String,
    exprs: Vec<String>,
    templates: Vec<String>,
}

fn usages(python: &Path) -> Vec<Usage> {
    let mut usages: Vec<Usage> = alert_rules(python)
        .iter()
        .map(|rule| Usage {
            what: format!("alert {}", rule["alert"]),
            exprs: vec![rule["expr"].as_str().unwrap().to_owned()],
            templates: rule["annotations"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect(),
        })
        .collect();
    let dashboard = dashboard();
    for panel in panels(&dashboard) {
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        usages.push(Usage {
            what: format!("panel {}", panel["title"]),
            exprs: targets
                .iter()
                .map(|t| as_promql(t["expr"].as_str().unwrap()))
                .collect(),
            templates: targets
                .iter()
                .filter_map(|t| t["legendFormat"].as_str().map(str::to_owned))
                .collect(),
        });
    }
    usages.push(Usage {
        what: "the dashboard's variables".into(),
        exprs: dashboard_queries(&dashboard),
        templates: Vec::new(),
    });
    usages
}

/// Checks that every metric `usage` names is in the scrape with each label its selectors
/// match on, and that each label it groups by or templates is on one of its metrics.
fn check_usage(usage: &Usage, scraped: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let metric = Regex::new(r"\b(inspector_keyd_\w+)(\{([^}]*)\})?").unwrap();
    let matcher = Regex::new(r"(\w+)\s*(=~|!~|!=|=)").unwrap();
    let grouping =
        Regex::new(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)").unwrap();
    let template = Regex::new(r"\{\{\s*(?:\$labels\.)?(\w+)\s*\}\}").unwrap();
    let mut problems = Vec::new();
    let mut used_metrics = BTreeSet::new();
    let mut grouped = BTreeSet::new();
    for expr in &usage.exprs {
        for found in metric.captures_iter(expr) {
            let name = found[1].to_owned();
            let Some(labels) = scraped.get(&name) else {
                problems.push(format!("{}: {name} is not in the scrape", usage.what));
                continue;
            };
            for label in found.get(3).map_or("", |m| m.as_str()).split(',') {
                if let Some(label) = matcher.captures(label).map(|m| m[1].to_owned())
                    && !TARGET_LABELS.contains(&label.as_str())
                    && !labels.contains(&label)
                {
                    problems.push(format!("{}: {name} has no label {label}", usage.what));
                }
            }
            used_metrics.insert(name);
        }
        for found in grouping.captures_iter(expr) {
            grouped.extend(
                found[1]
                    .split(',')
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    for text in &usage.templates {
        grouped.extend(template.captures_iter(text).map(|m| m[1].to_owned()));
    }
    for label in grouped {
        let known = TARGET_LABELS.contains(&label.as_str())
            || label == "le"
            || used_metrics
                .iter()
                .any(|m| scraped.get(m).is_some_and(|l| l.contains(&label)));
        if !known {
            problems.push(format!(
                "{}: no metric it uses has the label {label}",
                usage.what
            ));
        }
    }
    problems
}

fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// A sidecar that checks for drift every second, with a key TTL well under that (so an
/// expired entry shows between refreshes) and a rules file
/// (admin on the socket, read-only on loopback TCP), and the key in use.
struct KeyInUse {
    sidecar: Sidecar,
    arn: String,
    rules: PathBuf,
    _rules_dir: tempfile::TempDir,
}

async fn sidecar_with_a_key_in_use() -> KeyInUse {
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!("[[rule]]\nrole = \"admin\"\nunix_uid = {}\n", my_uid()),
    )
    .unwrap();
    let sidecar = Sidecar::start_with(&format!(
        "[authz]\nrules_file = {:?}\nreload_interval = \"100ms\"\nloopback_anonymous_role = \"read-only\"\n[ops]\ndrift_interval = \"1s\"\n[cache]\nkey_ttl = \"200ms\"\n",
        rules.to_str().unwrap()
    ));
    let arn = sidecar.create_key(proto::CreateKeyRequest::default()).await;
    sidecar
        .admin_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap();
    KeyInUse {
        sidecar,
        arn,
        rules,
        _rules_dir: rules_dir,
    }
}

async fn set_key_enabled(sidecar: &Sidecar, arn: &str, enabled: bool) {
    let mut kms = sidecar.kms().await;
    if enabled {
        kms.enable_key(proto::EnableKeyRequest { key_id: arn.into() })
            .await
            .unwrap();
    } else {
        kms.disable_key(proto::DisableKeyRequest { key_id: arn.into() })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn every_metric_and_label_the_alerts_and_the_dashboard_use_is_in_a_live_scrape() {
    let python = python();
    let KeyInUse {
        sidecar,
        arn,
        rules,
        _rules_dir,
    } = sidecar_with_a_key_in_use().await;
    // Every state the rules and panels look at: a read (then its entry expires), a denial, a
    // refused rules reload, and the key in use failing verification.
    sidecar.read_lambda_key().await.unwrap();
    let denied = sidecar
        .read_only_keys()
        .await
        .update_encryption_key(update_request(&arn))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // Whole: the half-written file a reload could read would be valid, empty rules.
    write_whole(&rules, "[[rule]]\nrole = \"root\"\n", 0o644);
    set_key_enabled(&sidecar, &arn, false).await;
    let mut scraped = BTreeMap::new();
    let complete = eventually(Duration::from_secs(20), || {
        let metrics = sidecar.scrape_metrics();
        scraped = scraped_labels(&metrics);
        let failing = sample(
            &metrics,
            "inspector_keyd_key_verification_failing_check",
            "",
            // The key in use is Lambda's; the repository target's series is there at 0.
            &[
                ("resource_type", "AWS_LAMBDA_FUNCTION"),
                ("check", "KEY_NOT_ENABLED"),
            ],
        );
        let refused = sample(
            &metrics,
            "inspector_keyd_reload_failing",
            "",
            &[("file", "rules")],
        );
        let stale_left = scraped.contains_key("inspector_keyd_cache_stale_seconds_left");
        async move { failing == Some(1.0) && refused == Some(1.0) && stale_left }
    })
    .await;
    assert!(complete, "the states were not reached: {scraped:?}");
    let problems: Vec<String> = usages(&python)
        .iter()
        .flat_map(|usage| check_usage(usage, &scraped))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}\nscraped: {scraped:#?}");
}

#[test]
fn the_usage_check_finds_a_renamed_metric_or_label() {
    // The check itself: a rule written against names the scrape does not have is caught.
    let scraped: BTreeMap<String, BTreeSet<String>> = [(
        "inspector_keyd_ready".to_owned(),
        BTreeSet::from(["scan_type".to_owned()]),
    )]
    .into();
    let usage = |expr: &str, template: &str| Usage {
        what: "test".into(),
        exprs: vec![expr.to_owned()],
        templates: vec![template.to_owned()],
    };
    assert!(
        check_usage(
            &usage(
                "max by (scan_type) (inspector_keyd_ready) == 0",
                "{{ $labels.scan_type }} {{ $labels.instance }}"
            ),
            &scraped
        )
        .is_empty()
    );
    assert_eq!(
        check_usage(&usage("inspector_keyd_readiness == 0", ""), &scraped).len(),
        1
    );
    assert_eq!(
        check_usage(
            &usage("inspector_keyd_ready{check=\"x\"} == 0", ""),
            &scraped
        )
        .len(),
        1
    );
    assert_eq!(
        check_usage(
            &usage("sum by (check) (inspector_keyd_ready)", ""),
            &scraped
        )
        .len(),
        1
    );
    assert_eq!(
        check_usage(
            &usage("inspector_keyd_ready", "{{ $labels.check }}"),
            &scraped
        )
        .len(),
        1
    );
}

/// A Prometheus server on loopback, stopped when dropped.
struct Prometheus {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` and evaluates `rules` every second.
    fn start(binary: &Path, target: SocketAddr, rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yaml\nscrape_configs:\n  - job_name: inspector-keyd\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // A free ephemeral port: Prometheus does not report the one it took for port 0.
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new(binary)
            .current_dir(dir.path())
            .arg("--config.file=prometheus.yml")
            .arg("--storage.tsdb.path=data")
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            address,
            _dir: dir,
        }
    }

    /// GET an API path; `None` until the server answers.
    fn api(&self, python: &Path, path_and_query: &str) -> Option<Value> {
        let output = Command::new(python)
            .args([
                "-c",
                "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
            ])
            .arg(format!("http://{}{path_and_query}", self.address))
            .output()
            .unwrap();
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).ok())
            .flatten()
    }

    fn query(&self, python: &Path, promql: &str) -> Option<Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        self.api(python, &format!("/api/v1/query?query={encoded}"))
    }

    /// The drift alert's state with these labels: "pending", "firing", or `None`.
    fn drift_alert(&self, python: &Path) -> Option<(String, Value)> {
        let alerts = self.api(python, "/api/v1/alerts")?;
        alerts["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == DRIFT_ALERT)
            .map(|a| {
                (
                    a["state"].as_str().unwrap_or_default().to_owned(),
                    a.clone(),
                )
            })
    }
}

#[tokio::test]
async fn a_real_prometheus_fires_the_drift_alert_when_the_key_in_use_is_disabled() {
    let (binary, python) = (
        tool(
            "KEYD_TEST_PROMETHEUS",
            ".tools/prometheus/usr/bin/prometheus",
        ),
        python(),
    );
    let KeyInUse {
        sidecar,
        arn,
        _rules_dir,
        ..
    } = sidecar_with_a_key_in_use().await;
    // The shipped rules with short `for:`, so that the test waits seconds, not minutes.
    let rules = std::fs::read_to_string(monitoring("rules.yaml")).unwrap();
    let test_rules = Regex::new(r"(?m)^([ \t]+for:) \S+$")
        .unwrap()
        .replace_all(&rules, "$1 2s");
    assert_ne!(test_rules, rules, "no `for:` to shorten");
    let prometheus = Prometheus::start(&binary, sidecar.metrics.unwrap(), &test_rules);

    // Prometheus scrapes the sidecar and sees the key pass.
    let up = eventually(Duration::from_secs(60), || {
        let passed = prometheus
            .query(&python, "inspector_keyd_key_verification_passed")
            .and_then(|r| {
                r["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_owned)
            });
        async move { passed.as_deref() == Some("1") }
    })
    .await;
    assert!(up, "Prometheus never scraped a passing key");
    assert_eq!(prometheus.drift_alert(&python), None);
    // Every rule and dashboard query runs on a real engine.
    for usage in usages(&python) {
        for expr in &usage.exprs {
            let answer = prometheus.query(&python, expr);
            assert_eq!(
                answer.as_ref().map(|a| a["status"].clone()),
                Some(Value::from("success")),
                "{}: {expr}: {answer:?}",
                usage.what
            );
        }
    }

    set_key_enabled(&sidecar, &arn, false).await;
    let mut alert = None;
    let fired = eventually(Duration::from_secs(60), || {
        alert = prometheus.drift_alert(&python);
        let firing = alert.as_ref().is_some_and(|(state, _)| state == "firing");
        async move { firing }
    })
    .await;
    assert!(fired, "the drift alert did not fire: {alert:?}");
    let labels = alert.as_ref().unwrap().1["labels"].clone();
    assert_eq!(labels["severity"], "critical");
    assert_eq!(labels["check"], "KEY_NOT_ENABLED");
    assert_eq!(labels["scan_type"], "CODE");
    assert_eq!(labels["resource_type"], "AWS_LAMBDA_FUNCTION");

    set_key_enabled(&sidecar, &arn, true).await;
    let resolved = eventually(Duration::from_secs(60), || {
        alert = prometheus.drift_alert(&python);
        let gone = alert.is_none();
        async move { gone }
    })
    .await;
    assert!(resolved, "the drift alert did not resolve: {alert:?}");
}
