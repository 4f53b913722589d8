//! deploy/: every Kubernetes overlay renders with kustomize and validates against the
//! Kubernetes schemas, the rendered pod is what docs/deployment.md promises, checkov passes,
//! every config file passes `inspector-keyd config check`, and the IAM policy is what
//! `inspector-keyd policy render` prints.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::BIN;
use serde_json::Value;

/// The Kubernetes version the manifests are validated for (native sidecars are on by
/// default since 1.29).
const KUBERNETES_VERSION: &str = "1.34.0";
const OVERLAYS: [&str; 3] = ["local", "aws", "mtls"];
const SIDECAR: &str = "inspector-keyd";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A command from the test tools' virtualenv (the test fails when it is missing).
fn venv_tool(name: &str) -> PathBuf {
    let variable = format!("KEYD_TEST_{}", name.to_ascii_uppercase().replace('-', "_"));
    common::tool(&variable, &format!(".tools/venv/bin/{name}"))
}

/// Runs `program` with the virtualenv first on PATH (checkov runs kubectl itself).
fn run(program: &Path, args: &[&str]) -> Output {
    let venv_bin = program.parent().unwrap();
    let path = std::env::join_paths(std::iter::once(venv_bin.to_owned()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    Command::new(program)
        .args(args)
        .current_dir(repo())
        .env("PATH", path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `kubectl kustomize` of an overlay.
fn render(kubectl: &Path, overlay: &str) -> String {
    let output = run(
        kubectl,
        &["kustomize", &format!("deploy/k8s/overlays/{overlay}")],
    );
    assert!(output.status.success(), "{overlay}: {}", text(&output));
    String::from_utf8(output.stdout).unwrap()
}

/// The rendered resources, as JSON (the YAML parsed by PyYAML from the virtualenv).
fn resources(python: &Path, yaml: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).unwrap();
    common::yaml_documents(python, &file)
}

fn one<'a>(resources: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = resources.iter().filter(|r| r["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn port_of(address: &str) -> u64 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

fn config_check(config: &Path, rules: Option<&Path>) -> Output {
    let mut command = Command::new(BIN);
    command.args(["config", "check"]).arg(config);
    if let Some(rules) = rules {
        command.arg("--rules-file").arg(rules);
    }
    // What is checked is the file, not this process's environment.
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("INSPECTOR_KEYD_")) {
        command.env_remove(name);
    }
    command.output().unwrap()
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    let (kubectl, validate) = (venv_tool("kubectl"), venv_tool("kubernetes-validate"));
    let dir = tempfile::tempdir().unwrap();
    for overlay in OVERLAYS {
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, render(&kubectl, overlay)).unwrap();
        let output = run(
            &validate,
            &[
                "--strict",
                "--kubernetes-version",
                KUBERNETES_VERSION,
                file.to_str().unwrap(),
            ],
        );
        let report = text(&output);
        assert!(output.status.success(), "{overlay}: {report}");
        // The resources were really checked, not skipped.
        for resource in [
            "deployment/example-app",
            "networkpolicy/example-app",
            "serviceaccount/inspector-keyd",
        ] {
            assert!(
                report.contains(&format!(
                    "passed for resource {resource} against version 1.34"
                )),
                "{overlay}: {report}"
            );
        }
    }
}

#[test]
fn the_rendered_pod_runs_a_hardened_native_sidecar_with_grpc_probes() {
    let (kubectl, python) = (venv_tool("kubectl"), venv_tool("python"));
    let trust: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/iam/irsa-trust-policy.json")).unwrap(),
    )
    .unwrap();
    for overlay in OVERLAYS {
        let resources = resources(&python, &render(&kubectl, overlay));
        let configmap = one(&resources, "ConfigMap");
        let config_text = configmap["data"]["config.toml"].as_str().unwrap();
        let rules_text = configmap["data"]["rules.toml"].as_str().unwrap();
        let config: toml::Table = config_text.parse().unwrap();

        // The configuration the pod gets passes `config check`, with its rules file.
        let dir = tempfile::tempdir().unwrap();
        let (config_file, rules_file) = (
            dir.path().join("config.toml"),
            dir.path().join("rules.toml"),
        );
        std::fs::write(&config_file, config_text).unwrap();
        std::fs::write(&rules_file, rules_text).unwrap();
        let check = config_check(&config_file, Some(&rules_file));
        assert!(check.status.success(), "{overlay}: {}", text(&check));

        let deployment = one(&resources, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let sidecar = container(&pod["initContainers"], SIDECAR);
        let app = container(&pod["containers"], "app");
        assert_eq!(
            sidecar["restartPolicy"], "Always",
            "{overlay}: native sidecar"
        );

        // Probes: native gRPC on the health-only port the config opens.
        let health_port = port_of(config["ops"]["health_listen"].as_str().unwrap());
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            assert_eq!(
                sidecar[probe]["grpc"]["port"], health_port,
                "{overlay} {probe}"
            );
        }
        assert!(sidecar["livenessProbe"]["grpc"]["service"].is_null());
        assert_eq!(
            sidecar["readinessProbe"]["grpc"]["service"],
            inspector_keyd::proto::ENCRYPTION_KEY_SERVICE
        );

        // Shutdown drains before the kubelet's SIGKILL.
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
        let drain = config["shutdown_timeout_secs"].as_integer().unwrap();
        assert!(grace > drain, "{overlay}: grace {grace} <= drain {drain}");

        // Hardened pod and containers, with resources.
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(pod["automountServiceAccountToken"], false);
        for c in [sidecar, app] {
            let security = &c["securityContext"];
            assert_eq!(
                security["readOnlyRootFilesystem"], true,
                "{overlay} {}",
                c["name"]
            );
            assert_eq!(security["allowPrivilegeEscalation"], false);
            assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
            for kind in ["requests", "limits"] {
                assert!(c["resources"][kind]["cpu"].is_string(), "{overlay} {kind}");
                assert!(
                    c["resources"][kind]["memory"].is_string(),
                    "{overlay} {kind}"
                );
            }
        }

        // The socket directory is shared; the application's uid is its own and has a role.
        let socket = Path::new(config["listen"]["unix_socket"].as_str().unwrap());
        let socket_dir = socket.parent().unwrap().to_str().unwrap();
        let volume_at = |c: &Value| {
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == socket_dir)
                .map(|m| m["name"].clone())
        };
        assert!(
            volume_at(sidecar).is_some(),
            "{overlay}: sidecar socket mount"
        );
        assert_eq!(
            volume_at(sidecar),
            volume_at(app),
            "{overlay}: shared socket"
        );
        let (sidecar_uid, app_uid) = (
            sidecar["securityContext"]["runAsUser"].as_i64().unwrap(),
            app["securityContext"]["runAsUser"].as_i64().unwrap(),
        );
        assert_ne!(sidecar_uid, app_uid, "{overlay}: distinct uids");
        assert!(
            rules_text.contains(&format!("unix_uid = {app_uid}\n")),
            "{overlay}: no rule for the application's uid {app_uid}"
        );

        let policy = one(&resources, "NetworkPolicy");
        assert_eq!(
            policy["spec"]["podSelector"]["matchLabels"],
            deployment["spec"]["selector"]["matchLabels"]
        );

        let account = one(&resources, "ServiceAccount");
        assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
        let backend = config["backend"].as_str().unwrap_or("local");
        if overlay == "local" {
            assert_eq!(backend, "local");
            continue;
        }
        // IRSA: the annotated role is the principal the sidecar verifies, and its trust
        // policy names this ServiceAccount.
        assert_eq!(backend, "aws", "{overlay}");
        let role = &account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"];
        assert_eq!(
            role.as_str(),
            config["verification"]["principal_arn"].as_str()
        );
        let subject = format!(
            "system:serviceaccount:{}:{}",
            account["metadata"]["namespace"].as_str().unwrap(),
            account["metadata"]["name"].as_str().unwrap()
        );
        let conditions = trust["Statement"][0]["Condition"]["StringEquals"]
            .as_object()
            .unwrap();
        assert!(
            conditions
                .iter()
                .any(|(k, v)| k.ends_with(":sub") && *v == subject),
            "{overlay}: the trust policy does not name {subject}"
        );
        let egress = serde_json::to_string(&policy["spec"]["egress"]).unwrap();
        assert!(
            egress.contains("\"port\":443"),
            "{overlay}: no HTTPS egress"
        );

        if overlay == "mtls" {
            let tls_port = port_of(config["tls"]["listen"].as_str().unwrap());
            let service = one(&resources, "Service");
            let target = service["spec"]["ports"][0]["targetPort"].as_str().unwrap();
            let port = sidecar["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == target)
                .unwrap();
            assert_eq!(port["containerPort"], tls_port);
            let cert = Path::new(config["tls"]["cert_file"].as_str().unwrap());
            assert!(
                sidecar["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["mountPath"] == cert.parent().unwrap().to_str().unwrap()),
                "the TLS Secret is not mounted where the config reads it"
            );
            let ingress = serde_json::to_string(&policy["spec"]["ingress"]).unwrap();
            assert!(ingress.contains(&format!("\"port\":{tls_port}")));
        }
    }
}

#[test]
fn checkov_passes_over_deploy_with_every_skip_justified() {
    let checkov = venv_tool("checkov");
    let output = run(
        &checkov,
        &[
            "--directory",
            "deploy",
            "--compact",
            "--quiet",
            "--skip-download",
        ],
    );
    let report = text(&output);
    assert!(output.status.success(), "{report}");
    for framework in ["kubernetes", "kustomize", "dockerfile"] {
        assert!(
            report.contains(&format!("{framework} scan results")),
            "checkov did not scan {framework}: {report}"
        );
    }
    // Each skip names the check and says why, in place.
    let mut skips = 0;
    for file in files_under(&repo().join("deploy")) {
        let content = std::fs::read_to_string(&file).unwrap_or_default();
        for line in content.lines() {
            let skip = line
                .split_once("checkov:skip=")
                .or_else(|| line.split_once("checkov.io/skip1: "))
                .map(|(_, rest)| rest);
            if let Some(skip) = skip {
                skips += 1;
                let (check, reason) = skip
                    .split_once([':', '='])
                    .unwrap_or_else(|| panic!("{}: skip without a reason: {line}", file.display()));
                assert!(check.starts_with("CKV_"), "{line}");
                assert!(reason.trim().len() > 20, "{}: {line}", file.display());
            }
        }
    }
    assert!(skips > 0, "the skips were not found");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_config_file_under_deploy_passes_config_check() {
    let configs: Vec<PathBuf> = files_under(&repo().join("deploy"))
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "toml"))
        .collect();
    let mut rules_files = BTreeSet::new();
    let mut checked = 0;
    for file in &configs {
        if file.file_name().is_some_and(|n| n == "rules.toml") {
            // A rules file is checked against the config beside it, or the base's.
            rules_files.insert(file.clone());
            let beside = file.with_file_name("config.toml");
            let config = if beside.exists() {
                beside
            } else {
                repo().join("deploy/k8s/base/config.toml")
            };
            let output = config_check(&config, Some(file));
            assert!(
                output.status.success(),
                "{}: {}",
                file.display(),
                text(&output)
            );
        } else {
            let output = config_check(file, None);
            assert!(
                output.status.success(),
                "{}: {}",
                file.display(),
                text(&output)
            );
            assert!(text(&output).contains("is valid"));
        }
        checked += 1;
    }
    assert!(checked >= 5 && rules_files.len() >= 2, "{configs:?}");
}

#[test]
fn the_checked_in_iam_policy_is_what_policy_render_prints() {
    let path = repo().join("deploy/iam/sidecar-policy.json");
    let checked_in = std::fs::read_to_string(&path).unwrap();
    // Rendering the seed's statements into the checked-in policy changes nothing: they are
    // there, exactly as rendered, beside the Inspector and KMS read statements.
    let output = Command::new(BIN)
        .args([
            "policy",
            "render",
            "--profile",
            "codeguru-grants",
            "--region",
            "us-east-1",
            "--account",
            "111122223333",
            "--principal-arn",
            "arn:aws:iam::111122223333:role/inspector-keyd",
            "--merge-into",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(String::from_utf8(output.stdout).unwrap(), checked_in);

    let sidecar_grants = grants(&checked_in);
    let actions: BTreeSet<&str> = sidecar_grants.iter().map(|(a, _)| a.as_str()).collect();
    // The aws backend reaches other accounts through the SDK's assume-role provider: the
    // role docs/aws-backend.md names for member accounts, in any account, and nothing more.
    let source = std::fs::read_to_string(repo().join("src/backend/aws/mod.rs")).unwrap();
    assert!(source.contains("AssumeRoleProvider"));
    let assume: Vec<_> = sidecar_grants
        .iter()
        .filter(|(action, _)| action.starts_with("sts:"))
        .collect();
    assert_eq!(
        assume,
        [&(
            "sts:AssumeRole".to_owned(),
            vec!["arn:aws:iam::*:role/inspector-keyd-member".to_owned()]
        )]
    );
    let guide = std::fs::read_to_string(repo().join("docs/aws-backend.md")).unwrap();
    assert!(guide.contains("`inspector-keyd-member`"));
    // `[organization]` lists the accounts with ListAccounts (which takes no resource): the
    // policy added for it grants that alone, and the sidecar's own policy nothing of
    // Organizations.
    let lister = std::fs::read_to_string(repo().join("src/backend/aws/organizations.rs")).unwrap();
    assert!(lister.contains(".list_accounts()"));
    let organization = repo().join("deploy/iam/organization-read-policy.json");
    assert_eq!(
        grants(&std::fs::read_to_string(&organization).unwrap()),
        [(
            "organizations:ListAccounts".to_owned(),
            vec!["*".to_owned()]
        )]
    );
    assert!(guide.contains("organization-read-policy.json"));
    assert!(!actions.iter().any(|a| a.starts_with("organizations:")));
    // Every Inspector and KMS operation the aws backend calls, and the seed's CreateGrant.
    let called = aws_backend_actions();
    for action in called
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("iam:"))
        .chain(["kms:CreateGrant"])
    {
        assert!(
            actions.contains(action),
            "{action} (called by src/backend/aws/) is not granted by {}: {actions:?}",
            path.display()
        );
    }

    // Every IAM read of src/backend/aws/iam.rs, each on the principal's own ARN or on policies,
    // never `*`: a role principal's reads (the default principal is the sidecar's role) in
    // the sidecar's policy, a user principal's in the policy added for one.
    let user_policy = repo().join("deploy/iam/user-principal-read-policy.json");
    let user_grants = grants(&std::fs::read_to_string(&user_policy).unwrap());
    let role = "arn:aws:iam::111122223333:role/inspector-keyd";
    let policies = regex::Regex::new(r"^arn:aws:iam::(111122223333|aws):policy/\*$").unwrap();
    let user = "arn:aws:iam::111122223333:user/inspector-admin";
    let groups = "arn:aws:iam::111122223333:group/*";
    let iam_reads: Vec<&str> = called
        .iter()
        .map(String::as_str)
        .filter(|a| a.starts_with("iam:"))
        .collect();
    assert!(iam_reads.len() >= 13, "{iam_reads:?}");
    for action in iam_reads {
        let (granted, allowed): (&Grants, &dyn Fn(&str) -> bool) = if action.contains("Role") {
            (&sidecar_grants, &|r| r == role)
        } else if action == "iam:GetPolicy" || action == "iam:GetPolicyVersion" {
            (&sidecar_grants, &|r| policies.is_match(r))
        } else if action.contains("Group") && action != "iam:ListGroupsForUser" {
            (&user_grants, &|r| r == groups)
        } else {
            (&user_grants, &|r| r == user)
        };
        let resources: Vec<&String> = granted
            .iter()
            .filter(|(a, _)| a == action)
            .flat_map(|(_, r)| r)
            .collect();
        assert!(
            !resources.is_empty() && resources.iter().all(|r| allowed(r)),
            "{action} (called by src/backend/aws/iam.rs) is not granted on the resources it reads: {resources:?}"
        );
    }
}

/// Actions, each with the resources a statement grants it on.
type Grants = [(String, Vec<String>)];

/// Each action an Allow statement of `policy` grants, with the statement's resources.
fn grants(policy: &str) -> Vec<(String, Vec<String>)> {
    let policy: Value = serde_json::from_str(policy).unwrap();
    let strings = |value: &Value| match value {
        Value::String(a) => vec![a.clone()],
        Value::Array(list) => list
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect(),
        _ => vec![],
    };
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Effect"] == "Allow")
        .flat_map(|s| {
            let resources = strings(&s["Resource"]);
            strings(&s["Action"])
                .into_iter()
                .map(move |a| (a, resources.clone()))
        })
        .collect()
}

/// The IAM actions of the Inspector, KMS and IAM operations src/backend/aws/mod.rs and
/// src/backend/aws/iam.rs call (`clients.inspector.batch_get_code_snippet()`, through a
/// scope's clients, or `self.iam.get_role()`, is the action of that operation; an IAM read
/// made through a macro is named by the operation it passes, `"iam:ListRolePolicies"`). STS
/// GetCallerIdentity needs no permission.
fn aws_backend_actions() -> BTreeSet<String> {
    let source = ["src/backend/aws/mod.rs", "src/backend/aws/iam.rs"]
        .map(|file| std::fs::read_to_string(repo().join(file)).unwrap())
        .join("\n");
    let named = regex::Regex::new(r#""(iam:[A-Z][A-Za-z]+)""#).unwrap();
    let call =
        regex::Regex::new(r"(?:self|clients)\s*\.(inspector|kms|iam)\s*\.([a-z_]+)\(\)").unwrap();
    let actions: BTreeSet<String> = call
        .captures_iter(&source)
        .map(|c| {
            let service = match &c[1] {
                "inspector" => "inspector2",
                service => service,
            };
            let operation: String = c[2]
                .split('_')
                .map(|word| {
                    let mut chars = word.chars();
                    chars
                        .next()
                        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                        .unwrap_or_default()
                })
                .collect();
            format!("{service}:{operation}")
        })
        .chain(named.captures_iter(&source).map(|c| c[1].to_owned()))
        .collect();
    // The four Inspector operations, the two KMS reads and some IAM reads known when this
    // was written: the scan of the source still finds them.
    for known in [
        "inspector2:GetEncryptionKey",
        "inspector2:UpdateEncryptionKey",
        "inspector2:ResetEncryptionKey",
        "inspector2:BatchGetCodeSnippet",
        "kms:DescribeKey",
        "kms:GetKeyPolicy",
        "iam:GetRole",
        "iam:GetPolicyVersion",
        "iam:ListGroupsForUser",
        "iam:ListAttachedGroupPolicies",
        "iam:GetUserPolicy",
    ] {
        assert!(actions.contains(known), "{known} not found: {actions:?}");
    }
    actions
}

#[test]
fn the_image_runs_as_the_manifests_uid_with_the_configs_it_ships() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let deployment =
        std::fs::read_to_string(repo().join("deploy/k8s/base/deployment.yaml")).unwrap();
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "{user}"
    );
    let (uid, gid) = user.split_once(':').unwrap();
    let sidecar = deployment.split("initContainers:").nth(1).unwrap();
    let sidecar = sidecar.split("containers:").next().unwrap();
    assert!(sidecar.contains(&format!("runAsUser: {uid}\n")), "{user}");
    assert!(sidecar.contains(&format!("runAsGroup: {gid}\n")), "{user}");
    // The files the image copies from the repository exist.
    let mut copied = 0;
    for word in dockerfile.split_whitespace() {
        if word.starts_with("deploy/") {
            assert!(repo().join(word).is_file(), "{word}");
            copied += 1;
        }
    }
    assert!(copied >= 2);
    let base: toml::Table = std::fs::read_to_string(repo().join("deploy/k8s/base/config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let health_port = port_of(base["ops"]["health_listen"].as_str().unwrap());
    let expose = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .unwrap();
    assert!(
        expose
            .split_whitespace()
            .any(|p| p == health_port.to_string()),
        "{expose}"
    );
}
