//! Runs the grpcurl, AWS CLI and CLI examples of README.md and docs/ verbatim, and checks
//! each prints what the document shows (key ids, dates and client ports aside): those of the
//! README's organization section and of docs/organizations.md against `inspector-keyd serve
//! --config` with the configuration that section shows, those of its desired-state section
//! against another, of the configuration it shows, all the others against one
//! `inspector-keyd serve` started with no configuration. Also checks the tables and lists the
//! documents keep (finding codes, roles, the layout) and the desired-state page's examples
//! against the parser and the JSON Schema.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::Sidecar;
use inspector_keyd::{
    domain::{ResourceType, ScanType, Scope, Target},
    fleet::desired::DesiredState,
    verify::FindingCode,
};
use regex::Regex;

/// The documents whose examples run, in this order, all against one sidecar: the README's
/// walk-through first, all but its [`SERVED_SECTIONS`] (later examples use the keys it
/// creates), then the docs. Every file in docs/ is listed (checked below) or is
/// [`ORGANIZATION_DOCUMENT`], so no document's examples are left unrun.
const DOCUMENTS: [&str; 10] = [
    "README.md",
    "docs/api.md",
    "docs/verification.md",
    "docs/code-snippets.md",
    "docs/configuration.md",
    "docs/fleet.md",
    "docs/aws-backend.md",
    "docs/operations.md",
    "docs/deployment.md",
    "docs/development.md",
];

/// The document whose examples run against a sidecar of an organization, after those of the
/// README's organization section, on the same sidecar.
const ORGANIZATION_DOCUMENT: &str = "docs/organizations.md";

/// The heading that starts the README's organization section.
const ORGANIZATION_HEADING: &str = "## Every account and Region of an organization";

/// The heading that starts the README's desired-state section.
const FLEET_HEADING: &str = "## The desired state of the organization's keys";

/// The README's sections that run against a sidecar of their own (the next `## ` heading ends
/// each): `serve --config` with the configuration the section shows, started as its `sh`
/// block says. Each `toml` block of such a section is a file, named by the last `*.toml` in
/// backticks of the text before it.
const SERVED_SECTIONS: [&str; 2] = [ORGANIZATION_HEADING, FLEET_HEADING];

/// The command such a section shows to start the sidecar, before the file name.
const SERVE_WITH_CONFIG: &str = "cargo run --release -- serve --config ";

/// README.md split: the text outside the [`SERVED_SECTIONS`], and the section under
/// `heading`.
fn readme_parts(heading: &str) -> (String, String) {
    let mut rest = String::new();
    let mut section = String::new();
    let (mut current, mut in_block) = (None, false);
    let mut found = false;
    for line in read("README.md").lines() {
        if line.starts_with("```") {
            in_block = !in_block;
        } else if !in_block && line.starts_with("## ") {
            current = SERVED_SECTIONS.iter().find(|&&h| h == line);
            found |= line == heading;
        }
        let part = match current {
            None => &mut rest,
            Some(&h) if h == heading => &mut section,
            Some(_) => continue,
        };
        part.push_str(line);
        part.push('\n');
    }
    assert!(
        found || !SERVED_SECTIONS.contains(&heading),
        "README.md has no section `{heading}`"
    );
    (rest, section)
}

/// The files a section's `toml` blocks are: (name, text), each named by the last `*.toml`
/// in backticks of the text between the block and the one before it.
fn toml_files(heading: &str, section: &str) -> Vec<(String, String)> {
    let name = Regex::new(r"`([A-Za-z0-9_.-]+\.toml)`").unwrap();
    let mut files = Vec::new();
    let mut prose = String::new();
    let mut block: Option<(String, String)> = None;
    let mut in_other_block = false;
    for line in section.lines() {
        if let Some((file, mut text)) = block.take() {
            if line.starts_with("```") {
                files.push((file, text));
            } else {
                text.push_str(line);
                text.push('\n');
                block = Some((file, text));
            }
        } else if in_other_block {
            in_other_block = !line.starts_with("```");
        } else if line == "```toml" {
            let file = name
                .captures_iter(&prose)
                .last()
                .map(|c| c[1].to_owned())
                .unwrap_or_else(|| {
                    panic!("README.md `{heading}`: the text before a toml block names no file")
                });
            block = Some((file, String::new()));
            prose.clear();
        } else if line.starts_with("```") {
            in_other_block = true;
            prose.clear();
        } else {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    files
}

/// Runs the README's section under `heading` against `serve --config` with the configuration
/// it shows, its other files written beside it, then `more` on the same sidecar: every
/// example must print what its document shows.
fn run_served_section(heading: &str, min_examples: usize, more: Vec<Example>) {
    let (_, section) = readme_parts(heading);
    let files = toml_files(heading, &section);
    let file = first_block(&section, "sh")
        .and_then(|block| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(SERVE_WITH_CONFIG))
        })
        .unwrap_or_else(|| panic!("README.md `{heading}` shows no `{SERVE_WITH_CONFIG}…`"));
    let config = files
        .iter()
        .find(|(name, _)| name == file)
        .map(|(_, text)| text)
        .unwrap_or_else(|| {
            panic!("README.md `{heading}` serves `{file}` but shows no toml block of it")
        });
    let mut examples = examples_in("README.md", &section);
    assert!(
        examples.len() >= min_examples,
        "only {} examples in the README's section `{heading}`",
        examples.len()
    );
    examples.extend(more);
    let sidecar = Sidecar::start_default_with_config(file, config);
    for (name, text) in files.iter().filter(|(name, _)| name != file) {
        std::fs::write(sidecar.dir().join(name), text).unwrap();
    }
    run_examples(&sidecar, &examples);
}

/// The text of the first code block of `language` in `text`.
fn first_block<'a>(text: &'a str, language: &str) -> Option<&'a str> {
    let rest = text.split(&format!("```{language}\n")).nth(1)?;
    rest.split("```").next()
}

/// A `$ command` line of a `console` block, with the output the document shows for it.
struct Example {
    document: &'static str,
    command: String,
    output: String,
}

fn read(document: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(document)).unwrap_or_else(|e| panic!("{document}: {e}"))
}

fn examples_in(document: &'static str, text: &str) -> Vec<Example> {
    let mut examples: Vec<Example> = Vec::new();
    let mut in_console = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_console = line == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            examples.push(Example {
                document,
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
fn every_document_in_docs_is_listed() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut listed = 0;
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            let path = format!("docs/{name}");
            assert!(
                DOCUMENTS.contains(&path.as_str()) || path == ORGANIZATION_DOCUMENT,
                "{path} is not in DOCUMENTS"
            );
            listed += 1;
        }
    }
    assert_eq!(
        listed + 1,
        DOCUMENTS.len() + 1,
        "DOCUMENTS names a file docs/ lacks"
    );
}

#[test]
fn readme_and_docs_examples_print_what_they_show() {
    let (readme, _) = readme_parts("");
    assert!(
        examples_in("README.md", &readme).len() >= 12,
        "the README's walk-through examples not found"
    );
    let examples: Vec<Example> = DOCUMENTS
        .iter()
        .flat_map(|&document| match document {
            "README.md" => examples_in(document, &readme),
            _ => examples_in(document, &read(document)),
        })
        .collect();
    assert!(
        examples.len() >= 20,
        "only {} examples found",
        examples.len()
    );
    run_examples(&Sidecar::start_default(), &examples);
}

#[test]
fn the_organization_examples_print_what_they_show() {
    let documented = examples_in(ORGANIZATION_DOCUMENT, &read(ORGANIZATION_DOCUMENT));
    assert!(
        documented.len() >= 3,
        "only {} examples in {ORGANIZATION_DOCUMENT}",
        documented.len()
    );
    run_served_section(ORGANIZATION_HEADING, 6, documented);
}

/// The issue's "done when": from a fresh `serve --config` of three accounts in two Regions,
/// the README's `fleet plan`, `fleet apply` and `fleet status` work as printed.
#[test]
fn the_desired_state_examples_print_what_they_show() {
    let (_, section) = readme_parts(FLEET_HEADING);
    for command in [
        "inspector-keyd fleet plan desired.toml",
        "inspector-keyd fleet apply desired.toml --yes",
        "inspector-keyd fleet status",
    ] {
        assert!(
            examples_in("README.md", &section)
                .iter()
                .any(|e| e.command.starts_with(command)),
            "the README's section `{FLEET_HEADING}` does not run `{command}`"
        );
    }
    run_served_section(FLEET_HEADING, 5, Vec::new());
}

/// Runs `examples` in one shell, in `sidecar`'s directory, each checked against what its
/// document shows.
fn run_examples(sidecar: &Sidecar, examples: &[Example]) {
    let grpcurl = common::tool("KEYD_TEST_GRPCURL", ".tools/venv/bin/grpcurl");
    const END: &str = "@@README-EXAMPLE-END@@";
    // grpcurl from the test tools, and this build's inspector-keyd for the CLI examples.
    let bin_dir = std::path::Path::new(common::BIN).parent().unwrap();
    let mut script = format!(
        "export PATH={:?}:{:?}:\"$PATH\"\n",
        grpcurl.parent().unwrap(),
        bin_dir
    );
    // The examples name the default ports; this sidecar listens on ephemeral ones.
    let tcp = sidecar.tcp.to_string();
    let aws_api = sidecar.aws_api.unwrap().to_string();
    let socket = sidecar.socket.display().to_string();
    for example in examples {
        let command = example
            .command
            .replace("127.0.0.1:50051", &tcp)
            .replace("127.0.0.1:50052", &aws_api)
            .replace("./state/keyd.sock", &socket);
        // Braces, so that what the whole line prints is shown, the standard error of a
        // command followed by `; echo "exit $?"` too.
        script.push_str(&format!("{{ {command}\n}} 2>&1\necho {END}\n"));
    }
    let mut command = Command::new("bash");
    // The AWS CLI examples use the credentials file the sidecar wrote, and nothing of the
    // machine's own AWS configuration.
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
    ] {
        command.env_remove(name);
    }
    let output = command
        .env("AWS_CONFIG_FILE", "/nonexistent/inspector-keyd-readme")
        .env("AWS_EC2_METADATA_DISABLED", "true")
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
            "{} example `{}` printed something else",
            example.document,
            example.command
        );
    }
    assert_eq!(outputs.len(), examples.len() + 1, "{stdout}");
}

/// docs/verification.md's table of findings is the list of codes the verifier declares
/// (`FindingCode`): every code once, in order, with its severity and example.
#[test]
fn the_findings_table_is_the_list_of_finding_codes() {
    let table = read("docs/verification.md");
    // Every row of a table whose first cell is a code and second a severity.
    let row = Regex::new(r"^\| `[A-Z][A-Z0-9_]+` \| (ERROR|SECURITY_WARNING|WARNING|SUGGESTION)")
        .unwrap();
    let documented: Vec<&str> = table.lines().filter(|line| row.is_match(line)).collect();
    let declared: Vec<String> = FindingCode::ALL.iter().map(|c| c.doc_row()).collect();
    assert_eq!(documented, declared);
    assert!(declared.len() >= 30, "only {} codes", declared.len());
}

/// docs/api.md's roles table says what the method table (generated from the access options
/// in proto/) says: every RPC once, with its role and whether it is audited when allowed.
#[test]
fn the_roles_table_is_the_method_table() {
    use inspector_keyd::rpc::{METHODS, Role};
    use std::collections::BTreeSet;

    let api = read("docs/api.md");
    let header = "| service | RPCs | role | audited when allowed |";
    let table = api
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
            let role = m.access.role.map_or("anyone", Role::as_str);
            let role = match m.access.stored_key_role {
                Some(stored) => format!("{role}; {stored} for a stored key"),
                None => role.to_owned(),
            };
            let audited = m.access.mutation || m.access.secret_bearing;
            (
                m.path.to_owned(),
                role,
                if audited { "yes" } else { "no" }.to_owned(),
            )
        })
        .collect();
    assert_eq!(documented, generated);
}

/// docs/development.md's layout names every module of src/, and only files that exist.
#[test]
fn the_layout_names_every_module_and_nothing_else() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let development = read("docs/development.md");
    let layout = development
        .split("## Layout")
        .nth(1)
        .expect("docs/development.md has a Layout section");
    let named: std::collections::BTreeSet<String> = Regex::new(r"`(src/[a-z0-9_/]+\.rs)`")
        .unwrap()
        .captures_iter(layout)
        .map(|c| c[1].to_owned())
        .collect();
    let mut files = std::collections::BTreeSet::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).unwrap();
                files.insert(relative.to_string_lossy().into_owned());
            }
        }
    }
    let missing: Vec<_> = files.difference(&named).collect();
    let stale: Vec<_> = named.difference(&files).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "not in the layout: {missing:?}; in the layout but not in src/: {stale:?}"
    );
}

/// The page of the desired-state file (its `toml` blocks are files the parser reads).
const FLEET_DOCUMENT: &str = "docs/fleet.md";

/// Every `toml` block of `text`.
fn blocks<'a>(text: &'a str, language: &str) -> Vec<&'a str> {
    text.split(&format!("```{language}\n"))
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect()
}

#[test]
fn the_fleet_pages_examples_are_desired_states_the_parser_accepts() {
    let page = read(FLEET_DOCUMENT);
    let examples = blocks(&page, "toml");
    assert!(!examples.is_empty(), "{FLEET_DOCUMENT} shows no toml block");
    for example in &examples {
        if let Err(e) = DesiredState::parse(example) {
            panic!("{FLEET_DOCUMENT}: {e}\n{example}");
        }
    }
    // The first example does what the page says it does.
    let state = DesiredState::parse(examples[0]).unwrap();
    let wanted = |account, region, resource_type| {
        let target = Target::new(ScanType::Code, resource_type).unwrap();
        state
            .wanted(Scope::of(account, region), target)
            .map(|(key, line)| (key.to_string(), line))
    };
    let (lambda, repository) = (
        ResourceType::AwsLambdaFunction,
        ResourceType::CodeRepository,
    );
    let arn = "arn:aws:kms:eu-west-1:222233334444:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let alias = || Some(("alias/inspector-code".to_owned(), 2));
    assert_eq!(
        wanted("222233334444", "eu-west-1", lambda),
        Some((arn.to_owned(), 9))
    );
    assert_eq!(wanted("222233334444", "us-east-1", lambda), alias());
    assert_eq!(wanted("333344445555", "eu-west-1", lambda), alias());
    let aws_owned = || Some(("aws-owned".to_owned(), 16));
    assert_eq!(wanted("111122223333", "us-east-1", repository), aws_owned());
    assert_eq!(wanted("222233334444", "eu-west-1", repository), aws_owned());
    assert_eq!(wanted("333344445555", "eu-west-1", repository), None);
}

/// docs/fleet.schema.json, checked with the `jsonschema` package of the test tools: a valid
/// draft 2020-12 schema that accepts the page's example and refuses what the parser refuses
/// and a schema can say.
#[test]
fn the_fleet_schema_accepts_the_pages_example_and_refuses_mistakes() {
    let page = read(FLEET_DOCUMENT);
    let example = blocks(&page, "toml")[0].to_owned();
    let arn = "arn:aws:kms:eu-west-1:222233334444:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    // (file, whether the schema accepts it)
    let files = [
        (example.clone(), true),
        (
            example.replace(
                "regions = [\"eu-west-1\"]",
                "regions = [\"us-east-1\", \"eu-west-1\"]",
            ),
            true,
        ),
        (example.replace(arn, "aws-owned"), true),
        (
            example.replace(
                arn,
                "arn:aws:kms:eu-west-1:222233334444:alias/inspector-code",
            ),
            true,
        ),
        (example.replace("kms_key =", "kms_keys ="), false),
        (example.replace("[[key]]", "[[keys]]"), false),
        (
            example.replace("[\"222233334444\"]", "[\"222233334444\", \"*\"]"),
            false,
        ),
        (
            example.replace("[\"222233334444\"]", "[\"22223333444\"]"),
            false,
        ),
        (example.replace("[\"222233334444\"]", "[]"), false),
        (
            example.replace(
                "regions = [\"eu-west-1\"]",
                "regions = [\"eu-west-1\", \"eu-west-1\"]",
            ),
            false,
        ),
        (example.replace("\"eu-west-1\"]", "\"EU-WEST-1\"]"), false),
        (
            example.replace("CODE_REPOSITORY", "AWS_EC2_INSTANCE"),
            false,
        ),
        (
            example.replace("alias/inspector-code", "alias/aws/inspector2"),
            false,
        ),
        (
            example.replace(arn, "1234abcd-12ab-34cd-56ef-1234567890ab"),
            false,
        ),
        ("# nothing\n".to_owned(), false),
    ];
    let instances: Vec<serde_json::Value> = files
        .iter()
        .map(|(file, _)| {
            serde_json::to_value(toml::from_str::<toml::Value>(file).unwrap()).unwrap()
        })
        .collect();
    let python = common::tool("KEYD_TEST_PYTHON", ".tools/venv/bin/python");
    let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/fleet.schema.json");
    // One line per instance: the messages of its errors, as a JSON list.
    let script = r#"
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
for instance in json.load(sys.stdin):
    print(json.dumps([e.message for e in validator.iter_errors(instance)]))
"#;
    let mut child = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&schema)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &instances).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "jsonschema failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let verdicts: Vec<&str> = stdout.lines().collect();
    assert_eq!(verdicts.len(), files.len(), "{stdout}");
    for ((file, accepted), verdict) in files.iter().zip(verdicts) {
        assert_eq!(verdict == "[]", *accepted, "{verdict}\n{file}");
        // The parser agrees with the schema on each.
        let parsed = DesiredState::parse(file);
        assert_eq!(parsed.is_ok(), *accepted, "{parsed:?}\n{file}");
    }
    let typo = stdout.lines().nth(4).unwrap();
    assert!(typo.contains("kms_keys"), "{typo}");
}
