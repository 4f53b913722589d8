//! The aws backend serving several accounts and Regions, against real protocol servers on
//! loopback: moto for KMS, IAM and STS (`AssumeRole` into the member account), and for
//! Inspector either a second sidecar's AWS-protocol door running the emulated organization
//! (local backend, both accounts in both Regions) or the Inspector stub, which records the
//! exact requests. Through the door: a different key in each of two accounts × two Regions,
//! each read back by its scope there, a key of another Region refused for a scope
//! (`KEY_REGION_MISMATCH`), and another account's key refused unless its policy lets that
//! account use it. Through the stub: each scope's calls signed with its account's
//! credentials (the sidecar's own, or the role's it assumes) for its Region, and a role that
//! cannot be assumed failing its scope alone. And an entry without `role_arn` refused at
//! start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{
    inspector_stub::{AWS_ERROR_TEXT, InspectorStub, StsAnswer},
    moto::{AWS_TEST_ENV, Moto},
    organization::*,
    *,
};
use inspector_keyd::proto;
use tonic::Code;
use tonic_types::StatusExt;

/// moto's account for the test credentials: the sidecar's own.
const OWN: &str = "123456789012";
const MEMBER: &str = "222233334444";
const MEMBER_ROLE: &str = "arn:aws:iam::222233334444:role/keyd-member";
const EXTERNAL_ID: &str = "keyd-external-7";

fn precondition_types(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .precondition_failure()
        .map(|f| f.violations.iter().map(|v| v.r#type.clone()).collect())
        .unwrap_or_default()
}

/// The `field=` value of a URL-encoded form body.
fn form_value<'a>(body: &'a str, field: &str) -> Option<&'a str> {
    body.split('&')
        .find_map(|pair| pair.strip_prefix(&format!("{field}=")))
}

#[tokio::test]
async fn each_scope_is_served_with_its_accounts_credentials_in_its_region() {
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    // No account configured: the own one comes from STS, and so does the member's role.
    let accounts = format!(
        "[[accounts]]\nid = \"{OWN}\"\nregions = [\"eu-west-1\"]\n[[accounts]]\nid = \"{MEMBER}\"\nregions = [\"us-east-1\", \"eu-west-1\"]\nrole_arn = \"{MEMBER_ROLE}\"\nexternal_id = \"{EXTERNAL_ID}\"\n"
    );
    let sidecar = Sidecar::start_with_env(
        &config(&stub.url(), &moto.url(), &moto, "", &accounts),
        AWS_TEST_ENV,
    );
    let member = moto.assume_role(MEMBER_ROLE).await;
    let testing = aws_sdk_kms::config::Credentials::new("testing", "testing", None, None, "t");
    let scopes = [
        (OWN, "us-east-1"),
        (OWN, "eu-west-1"),
        (MEMBER, "us-east-1"),
        (MEMBER, "eu-west-1"),
    ];
    let mut keys = Vec::new();
    for (account, region) in scopes {
        let policy = policy_for(&sidecar, account, region).await;
        let credentials = if account == OWN { &testing } else { &member };
        let key = moto.create_key_as(credentials, region, &policy).await;
        assert!(
            key.starts_with(&format!("arn:aws:kms:{region}:{account}:key/")),
            "moto puts the key in the credentials' account: {key}"
        );
        keys.push(key);
    }

    let mut admin = sidecar.admin_keys().await;
    for ((account, region), key) in scopes.iter().zip(&keys) {
        let answer = admin
            .update_encryption_key(update(key, account, region))
            .await
            .unwrap_or_else(|s| panic!("{account}/{region}: {s:?}\n{}", sidecar.log()))
            .into_inner();
        assert!(answer.applied, "{account}/{region}");
    }

    // Each Update went to Inspector signed for its scope's Region, with the sidecar's own
    // credentials in its account and the assumed role's in the member account.
    let updates: Vec<_> = stub
        .requests()
        .into_iter()
        .filter(|r| r.path == "/encryptionkey/update")
        .collect();
    assert_eq!(updates.len(), 4, "{updates:?}");
    let member_key_id = updates[2].access_key_id().to_owned();
    assert_ne!(
        member_key_id, "testing",
        "the member account's own credentials"
    );
    assert_ne!(
        member_key_id,
        member.access_key_id(),
        "the sidecar assumed the role itself"
    );
    for (request, ((account, region), key)) in updates.iter().zip(scopes.iter().zip(&keys)) {
        let expected = if *account == OWN {
            "testing"
        } else {
            member_key_id.as_str()
        };
        assert_eq!(request.access_key_id(), expected, "{account}/{region}");
        assert_eq!(request.signed_region(), *region, "{account}/{region}");
        assert!(
            request
                .authorization
                .as_deref()
                .unwrap_or_default()
                .contains(&format!("/{region}/inspector2/aws4_request")),
            "{request:?}"
        );
        assert_eq!(
            request.body.as_ref().unwrap()["kmsKeyId"],
            serde_json::json!(key)
        );
        assert_eq!(
            stub.key_signed_by(expected, region, "CODE", "AWS_LAMBDA_FUNCTION")
                .as_deref(),
            Some(key.as_str()),
            "{account}/{region}"
        );
    }

    // Each scope's Get answers that scope's key, and Inspector was read in each scope with
    // its credentials and Region.
    let mut reader = sidecar.read_only_keys().await;
    for ((account, region), key) in scopes.iter().zip(&keys) {
        let answer = reader
            .get_encryption_key(get(account, region))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&answer.kms_key_id, key, "{account}/{region}");
        let expected = if *account == OWN {
            "testing"
        } else {
            member_key_id.as_str()
        };
        assert!(
            stub.requests()
                .iter()
                .any(|r| r.path == "/encryptionkey/get"
                    && r.access_key_id() == expected
                    && r.signed_region() == *region),
            "no GetEncryptionKey for {account}/{region}: {:?}",
            stub.requests()
        );
    }

    // A batch of findings of two scopes is read in each with its credentials and Region.
    let own_finding = format!(
        "arn:aws:inspector2:us-east-1:{OWN}:finding/{}",
        "a".repeat(32)
    );
    let member_finding = format!(
        "arn:aws:inspector2:eu-west-1:{MEMBER}:finding/{}",
        "b".repeat(32)
    );
    for arn in [&own_finding, &member_finding] {
        stub.put_snippet(
            arn,
            serde_json::json!({"findingArn": arn, "startLine": 1, "endLine": 1,
                "codeSnippet": [{"content": "x = 1", "lineNumber": 1}], "suggestedFixes": []}),
        );
    }
    let before = stub.requests().len();
    let answer = sidecar
        .code_reader_keys()
        .await
        .batch_get_code_snippet(proto::BatchGetCodeSnippetRequest {
            finding_arns: vec![own_finding.clone(), member_finding.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut read: Vec<String> = answer
        .code_snippet_results
        .iter()
        .map(|r| r.finding_arn.clone())
        .collect();
    read.sort();
    let mut wanted = vec![own_finding.clone(), member_finding.clone()];
    wanted.sort();
    assert_eq!(read, wanted);
    let batches: Vec<(String, String, serde_json::Value)> = stub.requests()[before..]
        .iter()
        .filter(|r| r.path == "/codesnippet/batchget")
        .map(|r| {
            (
                r.access_key_id().to_owned(),
                r.signed_region().to_owned(),
                r.body.as_ref().unwrap()["findingArns"].clone(),
            )
        })
        .collect();
    assert_eq!(
        batches,
        [
            (
                "testing".to_owned(),
                "us-east-1".to_owned(),
                serde_json::json!([own_finding])
            ),
            (
                member_key_id.clone(),
                "eu-west-1".to_owned(),
                serde_json::json!([member_finding])
            ),
        ]
    );

    // One AssumeRole for the member account, whose two Regions share its credentials: the
    // role, the external id, and a session name saying which sidecar.
    let assume: Vec<String> = moto
        .sts_requests()
        .into_iter()
        .filter(|body| form_value(body, "Action") == Some("AssumeRole"))
        .filter(|body| form_value(body, "RoleSessionName") != Some("tests"))
        .collect();
    assert_eq!(assume.len(), 1, "{assume:?}");
    assert_eq!(
        form_value(&assume[0], "RoleArn"),
        Some("arn%3Aaws%3Aiam%3A%3A222233334444%3Arole%2Fkeyd-member")
    );
    assert_eq!(form_value(&assume[0], "ExternalId"), Some(EXTERNAL_ID));
    assert_eq!(
        form_value(&assume[0], "RoleSessionName"),
        Some("inspector-keyd-123456789012")
    );

    // A key of us-east-1 is refused for the member's eu-west-1, before Inspector is asked.
    let before = stub.requests().len();
    let status = admin
        .update_encryption_key(update(&keys[2], MEMBER, "eu-west-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        precondition_types(&status).contains(&"KEY_REGION_MISMATCH".to_owned()),
        "{status:?}"
    );
    assert!(
        !stub.requests()[before..]
            .iter()
            .any(|r| r.path == "/encryptionkey/update"),
        "a refused key is not put in use"
    );
    assert_eq!(
        stub.key_signed_by(&member_key_id, "eu-west-1", "CODE", "AWS_LAMBDA_FUNCTION")
            .as_deref(),
        Some(keys[3].as_str())
    );
}

#[tokio::test]
async fn a_role_that_cannot_be_assumed_fails_its_scope_alone() {
    const REFUSED: &str = "333344445555";
    const REFUSED_ROLE: &str = "arn:aws:iam::333344445555:role/keyd-member";
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    // The stub is STS: it hands the member role moto's credentials for that account, and
    // refuses the other role as STS refuses one whose trust policy leaves the sidecar out.
    let member = moto.assume_role(MEMBER_ROLE).await;
    stub.answer_sts(
        MEMBER_ROLE,
        StsAnswer::Credentials(
            member.access_key_id().to_owned(),
            member.secret_access_key().to_owned(),
            member.session_token().unwrap().to_owned(),
        ),
    );
    let accounts = format!(
        "[[accounts]]\nid = \"{MEMBER}\"\nregions = [\"us-east-1\"]\nrole_arn = \"{MEMBER_ROLE}\"\n[[accounts]]\nid = \"{REFUSED}\"\nregions = [\"us-east-1\"]\nrole_arn = \"{REFUSED_ROLE}\"\nexternal_id = \"{EXTERNAL_ID}\"\n"
    );
    // It starts: the refused role is this scope's error, not the sidecar's.
    let sidecar = Sidecar::start_with_env(
        &config(
            &stub.url(),
            &stub.url(),
            &moto,
            &format!("account_id = \"{OWN}\"\n"),
            &accounts,
        ),
        AWS_TEST_ENV,
    );

    let mut reader = sidecar.read_only_keys().await;
    let status = reader
        .get_encryption_key(get(REFUSED, "us-east-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "BACKEND_ACCESS_DENIED");
    assert!(!status.message().contains(AWS_ERROR_TEXT), "{status:?}");
    // The caller learns where the permission is missing, never the external id.
    assert!(
        status.message().contains(REFUSED) && !status.message().contains(EXTERNAL_ID),
        "{status:?}"
    );
    let log = sidecar
        .log_once_it_has(&format!(
            "assuming role `{REFUSED_ROLE}` for account {REFUSED}"
        ))
        .await;
    assert!(
        !log.contains(EXTERNAL_ID) && !log.contains(member.secret_access_key()),
        "neither the external id nor credentials are logged"
    );
    assert!(
        !stub
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/encryptionkey")
                && r.access_key_id() != "testing"
                && r.access_key_id() != member.access_key_id()),
        "nothing is sent to Inspector for the refused account"
    );

    // The other scopes serve: the own one with its own credentials, the member through its
    // role.
    let status = reader.get_encryption_key(get("", "")).await.unwrap_err();
    assert_eq!(reason(&status), "AWS_OWNED_KEY", "{status:?}");
    let policy = policy_for(&sidecar, MEMBER, "us-east-1").await;
    let key = moto.create_key_as(&member, "us-east-1", &policy).await;
    let mut admin = sidecar.admin_keys().await;
    admin
        .update_encryption_key(update(&key, MEMBER, "us-east-1"))
        .await
        .unwrap_or_else(|s| panic!("{s:?}\n{}", sidecar.log()));
    assert_eq!(
        stub.key_signed_by(
            member.access_key_id(),
            "us-east-1",
            "CODE",
            "AWS_LAMBDA_FUNCTION"
        )
        .as_deref(),
        Some(key.as_str())
    );
    // And the refused scope still says why, each time it is asked.
    let status = admin
        .update_encryption_key(update(&key, REFUSED, "us-east-1"))
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    let status = reader
        .get_encryption_key(get(REFUSED, "us-east-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

/// What seeds moto's random generator, twice, in the test below.
const SEED: u64 = 7_202_612;

#[tokio::test]
async fn an_organization_is_managed_through_a_second_sidecars_door() {
    let moto = Moto::start();
    let own = own_credentials();

    // The door, like Inspector, must know a caller's key pair before the call. The member
    // account's pair is the one STS hands the managing sidecar when it assumes the role,
    // which moto draws from its seedable random generator (all but the session token, which
    // the door does not need: it checks the signature, which covers the token). So: seed,
    // assume the role as the sidecar will (its session name and external id), give that
    // pair to the door, make the keys, and seed again with the same value right before the
    // sidecar's AssumeRole, its first call to moto, which then draws the same pair.
    moto.seed(SEED);
    let foreseen = moto
        .assume_role_as(
            &own,
            MEMBER_ROLE,
            &format!("inspector-keyd-{OWN}"),
            Some(EXTERNAL_ID),
        )
        .await;
    let door_keys = tempfile::tempdir().unwrap();
    let door_credentials = door_credentials(door_keys.path(), &admin_profile(MEMBER, &foreseen));
    // Inspector: a local-backend sidecar emulating the same organization (both accounts in
    // both Regions).
    let organization = format!(
        "[[accounts]]\nid = \"{OWN}\"\nregions = [\"eu-west-1\"]\n[[accounts]]\nid = \"{MEMBER}\"\nregions = [\"us-east-1\", \"eu-west-1\"]\n"
    );
    let inspector = inspector_sidecar(&door_credentials, &organization, "");

    // Each key is made in both KMSes with the same ARN (the member's keys as a role of the
    // member account).
    let member = moto.assume_role(MEMBER_ROLE).await;
    let both_kmses = |account: &'static str, region: &'static str, policy: String| {
        let (inspector, moto, own, member) = (&inspector, &moto, &own, &member);
        async move {
            let caller = if account == OWN { own } else { member };
            key_in_both(inspector, moto, caller, account, region, &policy).await
        }
    };
    let scopes = [
        (OWN, "us-east-1"),
        (OWN, "eu-west-1"),
        (MEMBER, "us-east-1"),
        (MEMBER, "eu-west-1"),
    ];
    let mut keys = Vec::new();
    for (account, region) in scopes {
        let policy = policy_for(&inspector, account, region).await;
        keys.push(both_kmses(account, region, policy).await);
    }
    // A key of the sidecar's own account whose policy also lets the member's principal use
    // it: the member's statements (under Sids of their own) with the own account's.
    let mut member_policy: serde_json::Value =
        serde_json::from_str(&policy_for(&inspector, MEMBER, "us-east-1").await).unwrap();
    for statement in member_policy["Statement"].as_array_mut().unwrap() {
        let sid = statement["Sid"].as_str().unwrap_or_default().to_owned();
        statement["Sid"] = serde_json::json!(format!("{sid}Member"));
    }
    let shared_policy = inspector
        .read_only_keys()
        .await
        .render_key_policy(proto::RenderKeyPolicyRequest {
            profile: "amazon-q-lambda".into(),
            region: "us-east-1".into(),
            account_id: OWN.into(),
            principal_arn: format!("arn:aws:iam::{OWN}:role/inspector-keyd"),
            existing_policy_json: member_policy.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy_json;
    let shared = both_kmses(OWN, "us-east-1", shared_policy).await;

    // Nothing reaches moto between this seeding and the managing sidecar's AssumeRole: its
    // account is configured (no GetCallerIdentity), it reads Inspector (the door) alone until
    // a key is put in use, and the first call below needs the role before any key is.
    moto.seed(SEED);
    let accounts = format!(
        "[[accounts]]\nid = \"{OWN}\"\nregions = [\"eu-west-1\"]\n[[accounts]]\nid = \"{MEMBER}\"\nregions = [\"us-east-1\", \"eu-west-1\"]\nrole_arn = \"{MEMBER_ROLE}\"\nexternal_id = \"{EXTERNAL_ID}\"\n"
    );
    let env = own_env();
    let sidecar = Sidecar::start_with_env(
        &config(
            &inspector.aws_url(),
            &moto.url(),
            &moto,
            &format!("account_id = \"{OWN}\"\n"),
            &accounts,
        ),
        &env,
    );

    // The member's scopes answer through the door, with the pair the role's session got:
    // the AWS owned key is in use there, as in every scope so far.
    let mut reader = sidecar.read_only_keys().await;
    for (account, region) in scopes {
        let status = reader
            .get_encryption_key(get(account, region))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            "AWS_OWNED_KEY",
            "{account}/{region}: {status:?}"
        );
    }

    // A different key in each scope, put in use through the managing sidecar.
    let mut admin = sidecar.admin_keys().await;
    for ((account, region), key) in scopes.iter().zip(&keys) {
        let answer = admin
            .update_encryption_key(update(key, account, region))
            .await
            .unwrap_or_else(|s| {
                panic!(
                    "{account}/{region}: {s:?}\n{}\n{}",
                    sidecar.log(),
                    inspector.log()
                )
            })
            .into_inner();
        assert!(answer.applied, "{account}/{region}");
    }
    // The member's scopes were reached with the pair its role's session was given: the
    // Inspector sidecar's audit names that key as the caller of the member's Updates.
    let caller = format!("\"caller\":\"aws:{}\"", foreseen.access_key_id());
    let log = inspector.log_once_it_has(&caller).await;
    assert!(
        log.lines().any(|line| line.contains(&caller)
            && line.contains("UpdateEncryptionKey")
            && line.contains(&format!("\"account_id\":\"{MEMBER}\""))
            && line.contains("\"decision\":\"allowed\"")),
        "{log}"
    );
    let assumed: Vec<String> = moto
        .sts_requests()
        .into_iter()
        .filter(|body| form_value(body, "Action") == Some("AssumeRole"))
        .filter(|body| form_value(body, "RoleSessionName") == Some("inspector-keyd-123456789012"))
        .collect();
    assert_eq!(
        assumed.len(),
        2,
        "the test's and the sidecar's: {assumed:?}"
    );

    // Each scope reads back its own key, through the managing sidecar and in the Inspector
    // sidecar itself: each write went into its account and Region there.
    let mut inspector_reader = inspector.read_only_keys().await;
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{keys:?}");
    for ((account, region), key) in scopes.iter().zip(&keys) {
        let answer = reader
            .get_encryption_key(get(account, region))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&answer.kms_key_id, key, "{account}/{region}");
        let held = inspector_reader
            .get_encryption_key(get(account, region))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&held.kms_key_id, key, "{account}/{region} in Inspector");
    }

    // A key of eu-west-1 is refused for the member's us-east-1, and the key in use stays.
    let status = admin
        .update_encryption_key(update(&keys[3], MEMBER, "us-east-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        precondition_types(&status).contains(&"KEY_REGION_MISMATCH".to_owned()),
        "{status:?}"
    );
    // So is the own account's key whose policy leaves the member out.
    let status = admin
        .update_encryption_key(update(&keys[0], MEMBER, "us-east-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "KEY_VERIFICATION_FAILED", "{status:?}");
    let held = inspector_reader
        .get_encryption_key(get(MEMBER, "us-east-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.kms_key_id, keys[2], "a refused key is not put in use");

    // The own account's key whose policy lets the member use it is accepted there, as
    // access from outside the scope, and is the member's key in us-east-1 alone.
    let answer = admin
        .update_encryption_key(update(&shared, MEMBER, "us-east-1"))
        .await
        .unwrap_or_else(|s| panic!("{s:?}\n{}", inspector.log()))
        .into_inner();
    assert!(answer.applied);
    let access = answer.report.unwrap().access.unwrap();
    assert!(access.entries.iter().any(|e| e.external), "{access:?}");
    for ((account, region), key) in scopes.iter().zip(&keys) {
        let expected = if (*account, *region) == (MEMBER, "us-east-1") {
            &shared
        } else {
            key
        };
        let held = inspector_reader
            .get_encryption_key(get(account, region))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            &held.kms_key_id, expected,
            "{account}/{region} in Inspector"
        );
        let answer = reader
            .get_encryption_key(get(account, region))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&answer.kms_key_id, expected, "{account}/{region}");
    }
}

#[test]
fn an_account_without_a_role_is_refused_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyd.toml");
    // Its own account is configured, so the check needs no AWS call at all.
    std::fs::write(
        &path,
        format!(
            "backend = \"aws\"\nregion = \"us-east-1\"\naccount_id = \"{OWN}\"\n[listen]\ntcp = \"127.0.0.1:0\"\n[aws]\nsts_endpoint = \"http://127.0.0.1:9\"\n[[accounts]]\nid = \"{OWN}\"\nregions = [\"eu-west-1\"]\n[[accounts]]\nid = \"{MEMBER}\"\nregions = [\"us-east-1\"]\n"
        ),
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("INSPECTOR_KEYD_OPS__METRICS_LISTEN", "")
        .env("INSPECTOR_KEYD_AWS_API__LISTEN", "")
        .envs(AWS_TEST_ENV.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`accounts`")
            && stderr.contains(&format!("entry 2 (id `{MEMBER}`)"))
            && stderr.contains("`role_arn` is required"),
        "{stderr}"
    );
    // The own account needs none: only the member entry is named.
    assert!(!stderr.contains("entry 1"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// moto's Organizations, as the test credentials (the sidecar's own account).
fn organizations(moto: &Moto) -> aws_sdk_organizations::Client {
    let config = aws_sdk_organizations::Config::builder()
        .behavior_version(aws_sdk_organizations::config::BehaviorVersion::latest())
        .region(aws_sdk_organizations::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_organizations::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(moto.url())
        .build();
    aws_sdk_organizations::Client::from_conf(config)
}

/// A new account in moto's organization: its id.
async fn new_account(organizations: &aws_sdk_organizations::Client, name: &str) -> String {
    organizations
        .create_account()
        .account_name(name)
        .email(format!("{name}@example.com"))
        .send()
        .await
        .unwrap()
        .create_account_status()
        .and_then(|s| s.account_id())
        .unwrap()
        .to_owned()
}

/// Whether the sidecar manages `account` in `region`: its Get is answered, or fails for
/// anything but SCOPE_NOT_MANAGED.
async fn manages(sidecar: &Sidecar, account: &str, region: &str) -> bool {
    let mut reader = sidecar.read_only_keys().await;
    match reader.get_encryption_key(get(account, region)).await {
        Ok(_) => true,
        Err(status) => {
            status.get_details_error_info().map(|i| i.reason) != Some("SCOPE_NOT_MANAGED".into())
        }
    }
}

#[tokio::test]
async fn the_organizations_accounts_are_managed_through_one_role_name_and_listed_again() {
    let moto = Moto::start();
    let stub = InspectorStub::start().await;
    let organizations = organizations(&moto);
    organizations
        .create_organization()
        .feature_set(aws_sdk_organizations::types::OrganizationFeatureSet::All)
        .send()
        .await
        .unwrap();
    let first = new_account(&organizations, "first").await;
    let organization = "[organization]\nrole_name = \"ops/keyd-member\"\nregions = [\"us-east-1\", \"eu-west-1\"]\nrefresh_interval = \"1s\"\n";
    let sidecar = Sidecar::start_with_env(
        &config(&stub.url(), &moto.url(), &moto, "", organization),
        AWS_TEST_ENV,
    );
    assert!(
        sidecar
            .log()
            .contains("managing the organization's accounts"),
        "{}",
        sidecar.log()
    );

    // The listed account is managed in the organization's Regions, through the role of
    // that name there; the own account (the management account, listed too) gains them.
    for (account, region) in [(first.as_str(), "eu-west-1"), (OWN, "eu-west-1")] {
        assert!(
            manages(&sidecar, account, region).await,
            "{account}/{region}"
        );
    }
    assert!(!manages(&sidecar, &first, "ap-south-1").await);
    assert!(
        !manages(&sidecar, MEMBER, "us-east-1").await,
        "not in the organization"
    );
    let role = format!("arn%3Aaws%3Aiam%3A%3A{first}%3Arole%2Fops%2Fkeyd-member");
    let assumed: Vec<String> = moto
        .sts_requests()
        .into_iter()
        .filter(|body| body.contains("Action=AssumeRole"))
        .collect();
    assert!(
        assumed.iter().any(|body| body.contains(&role)),
        "{assumed:?}"
    );
    assert!(
        !assumed
            .iter()
            .any(|body| body.contains(&format!("iam%3A%3A{OWN}%3Arole"))),
        "the own account is acted in with the sidecar's own identity: {assumed:?}"
    );
    let first_reads: Vec<_> = stub
        .requests()
        .into_iter()
        .filter(|r| r.signed_region() == "eu-west-1" && r.access_key_id() != "testing")
        .collect();
    assert!(
        !first_reads.is_empty(),
        "the member scope's Get went to Inspector in its Region with the role's credentials"
    );

    // An account that joins is managed from the next listing.
    let joined = new_account(&organizations, "joined").await;
    let mut managed = false;
    for _ in 0..100 {
        if manages(&sidecar, &joined, "us-east-1").await {
            managed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(managed, "{}", sidecar.log());
    assert!(
        sidecar
            .log_once_it_has("the organization's accounts changed")
            .await
            .contains(&format!("{joined}/us-east-1")),
        "{}",
        sidecar.log()
    );
}

#[test]
fn an_organization_that_cannot_be_listed_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyd.toml");
    // Nothing answers at the Organizations endpoint: ListAccounts cannot be made.
    std::fs::write(
        &path,
        format!(
            "backend = \"aws\"\nregion = \"us-east-1\"\naccount_id = \"{OWN}\"\n[listen]\ntcp = \"127.0.0.1:0\"\n[aws]\norganizations_endpoint = \"http://127.0.0.1:9\"\nmax_attempts = 1\n[organization]\nrole_name = \"keyd-member\"\nregions = [\"us-east-1\"]\n"
        ),
    )
    .unwrap();
    let mut serve = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("INSPECTOR_KEYD_OPS__METRICS_LISTEN", "")
        .env("INSPECTOR_KEYD_AWS_API__LISTEN", "")
        .envs(AWS_TEST_ENV.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    for _ in 0..300 {
        status = serve.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if status.is_none() {
        serve.kill().unwrap();
    }
    let output = serve.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot list the organization's accounts")
            && stderr.contains("management account or a delegated administrator"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
