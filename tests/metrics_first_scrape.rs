//! The first scrape of a sidecar just started, before any call: every metric that
//! deploy/monitoring's alerting rules and dashboard use is already there, with the label
//! values their selectors name, at zero. A panel then shows 0 instead of "No data", and
//! `absent()` tells a broken exporter from a quiet sidecar. The names come from the files
//! themselves, so a metric a panel or rule starts using later is held to this too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use common::*;
use regex::Regex;
use serde_json::Value;

/// Metrics whose absence is the reading itself, so a fresh sidecar rightly has none, and why
/// no value would be true.
const ABSENT_UNTIL_THEY_APPLY: [(&str, &str); 3] = [
    (
        "inspector_keyd_key_verification_passed",
        "no verdict while the AWS owned key is in use (the panel says: no value); \
         0 would read as drift, 1 as a customer managed key that passed",
    ),
    (
        "inspector_keyd_cache_stale_seconds_left",
        "only for a cached key past its TTL; 0 would read as reads failing now",
    ),
    (
        "inspector_keyd_scope_key_failing",
        "a series only for a scope whose key fails; one at 0 for every scope would grow \
         with the accounts managed",
    ),
];

/// Labels Prometheus adds to every series it scrapes: not in the sidecar's exposition.
const TARGET_LABELS: [&str; 4] = ["job", "instance", "namespace", "pod"];

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

/// The rules and the dashboard, each file as JSON: every YAML and JSON file of the kit but
/// promtool's rule tests, whose series are made-up inputs.
fn kit_documents() -> Vec<(String, Value)> {
    let python = tool("KEYD_TEST_PYTHON", ".tools/venv/bin/python");
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(monitoring()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".test.yaml") {
            continue;
        }
        if name.ends_with(".json") {
            let text = std::fs::read_to_string(&path).unwrap();
            documents.push((name, serde_json::from_str(&text).unwrap()));
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            for document in yaml_documents(&python, &path) {
                documents.push((name.clone(), document));
            }
        }
    }
    documents
}

fn strings<'v>(value: &'v Value, found: &mut Vec<&'v str>) {
    match value {
        Value::String(s) => found.push(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, found)),
        Value::Object(fields) => fields.values().for_each(|v| strings(v, found)),
        _ => {}
    }
}

/// Every metric (sample name) the kit names, with the label values its selectors match
/// exactly (`label="value"`; target labels and Grafana variables left out).
fn referenced() -> BTreeMap<String, BTreeSet<(String, String)>> {
    let metric = Regex::new(r"\b(inspector_keyd_\w+)(?:\{([^}]*)\})?").unwrap();
    let exact = Regex::new(r#"(\w+)\s*=\s*"([^"]*)""#).unwrap();
    let mut referenced: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let documents = kit_documents();
    assert!(
        documents.iter().any(|(name, _)| name.ends_with(".json"))
            && documents.iter().any(|(name, _)| name == "rules.yaml"),
        "the dashboard or the rules were not read: {:?}",
        documents.iter().map(|(name, _)| name).collect::<Vec<_>>()
    );
    for (_, document) in &documents {
        let mut texts = Vec::new();
        strings(document, &mut texts);
        for text in texts {
            for found in metric.captures_iter(text) {
                let matchers = referenced.entry(found[1].to_owned()).or_default();
                let selector = found.get(2).map_or("", |m| m.as_str());
                for m in exact.captures_iter(selector) {
                    if !TARGET_LABELS.contains(&&m[1]) && !m[2].contains('$') {
                        matchers.insert((m[1].to_owned(), m[2].to_owned()));
                    }
                }
            }
        }
    }
    referenced
}

/// A sample's labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// A scrape's samples by sample name (`..._total`, `..._bucket`).
fn samples_by_name(metrics: &Value) -> BTreeMap<String, Vec<Sample>> {
    let mut by_name: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for samples in metrics.as_object().unwrap().values() {
        for sample in samples.as_array().unwrap() {
            let labels = sample["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            by_name
                .entry(sample["name"].as_str().unwrap().to_owned())
                .or_default()
                .push((labels, sample["value"].as_f64().unwrap()));
        }
    }
    by_name
}

#[tokio::test]
async fn the_first_scrape_has_every_metric_the_rules_and_the_dashboard_use_at_zero() {
    let referenced = referenced();
    for (name, why) in ABSENT_UNTIL_THEY_APPLY {
        assert!(
            referenced.contains_key(name),
            "{name} is no longer used by deploy/monitoring: drop it from the exceptions ({why})"
        );
    }
    for name in [
        "inspector_keyd_authz_decisions_total",
        "inspector_keyd_key_verification_failing_check",
    ] {
        assert!(
            referenced.contains_key(name),
            "{name} not found in {referenced:?}"
        );
    }

    let sidecar = Sidecar::start();
    let metrics = sidecar.scrape_metrics();
    let samples = samples_by_name(&metrics);

    let mut problems = Vec::new();
    for (name, matchers) in &referenced {
        if ABSENT_UNTIL_THEY_APPLY
            .iter()
            .any(|(absent, _)| absent == name)
        {
            continue;
        }
        let Some(series) = samples.get(name) else {
            problems.push(format!("{name}: not in the first scrape"));
            continue;
        };
        for (label, value) in matchers {
            if !series
                .iter()
                .any(|(labels, _)| labels.get(label) == Some(value))
            {
                problems.push(format!("{name}: no series with {label}=\"{value}\""));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\nscraped: {metrics:#}");

    // The two that had no series before any call: every series at 0, for each role and
    // decision, and for each target.
    let authz = &samples["inspector_keyd_authz_decisions_total"];
    assert!(authz.iter().all(|(_, value)| *value == 0.0), "{authz:?}");
    let values = |label: &str| -> BTreeSet<&str> {
        authz
            .iter()
            .map(|(labels, _)| labels[label].as_str())
            .collect()
    };
    assert_eq!(
        values("role"),
        BTreeSet::from(["admin", "code-reader", "none", "read-only"])
    );
    assert_eq!(values("decision"), BTreeSet::from(["allow", "deny"]));
    for (rpc, role, decision) in [
        ("GetEncryptionKey", "read-only", "allow"),
        ("UpdateEncryptionKey", "read-only", "deny"),
        ("UpdateEncryptionKey", "admin", "allow"),
        ("ResetEncryptionKey", "none", "deny"),
        ("BatchGetCodeSnippet", "code-reader", "allow"),
    ] {
        assert_eq!(
            sample(
                &metrics,
                "inspector_keyd_authz_decisions",
                "_total",
                &[("rpc", rpc), ("role", role), ("decision", decision)]
            ),
            Some(0.0),
            "{rpc} {role} {decision}: {authz:?}"
        );
    }

    let failing = &samples["inspector_keyd_key_verification_failing_check"];
    assert!(
        failing.iter().all(|(_, value)| *value == 0.0),
        "{failing:?}"
    );
    for resource_type in ["AWS_LAMBDA_FUNCTION", "CODE_REPOSITORY"] {
        assert_eq!(
            sample(
                &metrics,
                "inspector_keyd_key_verification_failing_check",
                "",
                &[
                    ("scan_type", "CODE"),
                    ("resource_type", resource_type),
                    ("check", "KEY_NOT_ENABLED")
                ]
            ),
            Some(0.0),
            "{resource_type}: {failing:?}"
        );
    }
}
