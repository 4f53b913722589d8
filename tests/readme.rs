//! Runs the README's grpcurl examples verbatim against `inspector-keyd serve` started with
//! no configuration, and checks each prints what the README shows (key ids, dates and
//! client ports aside).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::Sidecar;
use regex::Regex;

/// A `$ command` line of a `console` block, with the output the README shows for it.
struct Example {
    command: String,
    output: String,
}

fn examples(readme: &str) -> Vec<Example> {
    let mut examples: Vec<Example> = Vec::new();
    let mut in_console = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_console = line == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            examples.push(Example {
                command: command.to_owned(),
                output: String::new(),
            });
        } else if let Some(last) = examples.last_mut() {
            last.output.push_str(line);
            last.output.push('\n');
        }
    }
    examples
}

fn normalize(text: &str) -> String {
    let uuid = Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap();
    let time = Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z").unwrap();
    let port = Regex::new(r"tcp:127\.0\.0\.1:\d+").unwrap();
    let text = uuid.replace_all(text, "<uuid>");
    let text = time.replace_all(&text, "<time>");
    port.replace_all(&text, "tcp:127.0.0.1:<port>")
        .trim_end()
        .to_owned()
}

#[test]
fn readme_grpcurl_examples_print_what_the_readme_shows() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let examples = examples(&readme);
    assert!(examples.len() >= 12, "README examples not found");
    let sidecar = Sidecar::start_default();
    let grpcurl = common::tool("KEYD_TEST_GRPCURL", ".tools/venv/bin/grpcurl");
    const END: &str = "@@README-EXAMPLE-END@@";
    // grpcurl from the test tools, and this build's inspector-keyd for the CLI examples.
    let bin_dir = std::path::Path::new(common::BIN).parent().unwrap();
    let mut script = format!(
        "export PATH={:?}:{:?}:\"$PATH\"\n",
        grpcurl.parent().unwrap(),
        bin_dir
    );
    // The README's examples name the default port; this sidecar listens on an ephemeral one.
    let tcp = sidecar.tcp.to_string();
    for example in &examples {
        let command = example.command.replace("127.0.0.1:50051", &tcp);
        script.push_str(&format!("{command} 2>&1\necho {END}\n"));
    }
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(sidecar.dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let outputs: Vec<&str> = stdout.split(&format!("{END}\n")).collect();
    for (example, actual) in examples.iter().zip(&outputs) {
        assert_eq!(
            normalize(actual),
            normalize(&example.output),
            "README example `{}` printed something else",
            example.command
        );
    }
    assert_eq!(outputs.len(), examples.len() + 1, "{stdout}");
}

/// Every finding code the verifier can report is documented in the README's table.
#[test]
fn every_finding_code_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let code = Regex::new(r#""([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)""#).unwrap();
    let mut found = 0;
    for file in [
        "src/verify/mod.rs",
        "src/verify/policy.rs",
        "src/verify/key.rs",
        "src/service/encryption_key.rs",
    ] {
        let source = std::fs::read_to_string(root.join(file)).unwrap();
        let source = source.split("#[cfg(test)]").next().unwrap();
        for capture in code.captures_iter(source) {
            let name = &capture[1];
            if [
                "SYMMETRIC_DEFAULT",
                "ENCRYPT_DECRYPT",
                "SIGN_VERIFY",
                "SCREAMING_SNAKE_CASE",
            ]
            .contains(&name)
            {
                continue;
            }
            found += 1;
            assert!(
                readme.contains(&format!("| `{name}` |")),
                "finding code {name} ({file}) is not in the README's table"
            );
        }
    }
    assert!(found >= 30, "only {found} codes found");
}

/// The README's roles table says what the method table (generated from the access options
/// in proto/) says: every RPC once, with its role and whether it is audited when allowed.
#[test]
fn the_roles_table_is_the_method_table() {
    use inspector_keyd::rpc::{METHODS, Role};
    use std::collections::BTreeSet;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let header = "| service | RPCs | role | audited when allowed |";
    let table = readme
        .split_once(header)
        .expect("the roles table")
        .1
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    let quoted = Regex::new(r"`([^`]+)`").unwrap();
    let mut documented = BTreeSet::new();
    for row in table {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let [services, methods, role, audited] = cells[..] else {
            panic!("row `{row}` does not have four cells");
        };
        for service in quoted.captures_iter(services) {
            for method in quoted.captures_iter(methods) {
                let entry = (
                    format!("/{}/{}", &service[1], &method[1]),
                    role.to_owned(),
                    audited.to_owned(),
                );
                assert!(documented.insert(entry.clone()), "{entry:?} twice");
            }
        }
    }
    let generated: BTreeSet<(String, String, String)> = METHODS
        .iter()
        .map(|m| {
            let role = match m.access.role {
                None => "anyone",
                Some(Role::ReadOnly) => "read-only",
                Some(Role::Admin) => "admin",
            };
            let audited = m.access.mutation || m.access.secret_bearing;
            (
                m.path.to_owned(),
                role.to_owned(),
                if audited { "yes" } else { "no" }.to_owned(),
            )
        })
        .collect();
    assert_eq!(documented, generated);
}
