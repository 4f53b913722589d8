//! An organization managed through a second sidecar's AWS-protocol door: the managing
//! sidecar on the aws backend (KMS, IAM and STS at moto, Inspector at the door) and the
//! Inspector sidecar on the local backend emulating the organization, each key made in
//! both KMSes with the same ARN so that both sidecars' verification reads it.

use std::path::Path;

use aws_sdk_kms::config::Credentials;
use inspector_keyd::proto;

use super::{Sidecar, get_request, moto::AWS_TEST_ENV, moto::Moto, update_request, write_whole};

/// moto's account for any key pair it did not issue: the managing sidecar's own.
pub const OWN: &str = "123456789012";
/// The access key the Inspector sidecar's door gives the managing sidecar for its own
/// account.
pub const OWN_KEY_ID: &str = "KEYDORGOWNADMIN00001";
pub const OWN_SECRET: &str = "own-account-secret-0123456789abcdef";

/// The aws backend with Inspector at `inspector` and KMS and IAM at moto, without
/// background reads that could race the calls under test; `extra` adds tables after
/// `[aws]` (such as `[[accounts]]`).
pub fn config(inspector: &str, sts: &str, moto: &Moto, top: &str, extra: &str) -> String {
    format!(
        "backend = \"aws\"\nregion = \"us-east-1\"\n{top}[aws]\ninspector2_endpoint = \"{inspector}\"\nkms_endpoint = \"{}\"\nsts_endpoint = \"{sts}\"\niam_endpoint = \"{}\"\norganizations_endpoint = \"{}\"\nmax_attempts = 2\noperation_timeout = \"20s\"\n[ops]\nready_check_interval = \"1h\"\ndrift_interval = \"1h\"\n{extra}",
        moto.url(),
        moto.url(),
        moto.url()
    )
}

/// The managing sidecar's environment: the test environment with the own account's key
/// pair the door knows.
pub fn own_env() -> Vec<(&'static str, &'static str)> {
    let mut env: Vec<(&str, &str)> = AWS_TEST_ENV
        .iter()
        .filter(|(k, _)| *k != "AWS_ACCESS_KEY_ID" && *k != "AWS_SECRET_ACCESS_KEY")
        .copied()
        .collect();
    env.push(("AWS_ACCESS_KEY_ID", OWN_KEY_ID));
    env.push(("AWS_SECRET_ACCESS_KEY", OWN_SECRET));
    env
}

/// The own account's key pair, as SDK credentials.
pub fn own_credentials() -> Credentials {
    Credentials::new(OWN_KEY_ID, OWN_SECRET, None, None, "tests")
}

/// The door's credentials file in `dir`: the own account's admin profile (the default rules
/// make the `inspector-keyd-admin` profiles admin, each in its account) and `more`.
pub fn door_credentials(dir: &Path, more: &str) -> std::path::PathBuf {
    let file = dir.join("aws-credentials");
    write_whole(
        &file,
        &format!(
            "[inspector-keyd-admin]\naws_access_key_id = {OWN_KEY_ID}\naws_secret_access_key = {OWN_SECRET}\naws_account_id = {OWN}\n\n{more}"
        ),
        0o600,
    );
    file
}

/// The door's admin profile of `account` for `pair` (an assumed role's, foreseen), for
/// [`door_credentials`]' `more`.
pub fn admin_profile(account: &str, pair: &Credentials) -> String {
    format!(
        "[inspector-keyd-admin-{account}]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_account_id = {account}\n\n",
        pair.access_key_id(),
        pair.secret_access_key()
    )
}

/// Inspector: a local-backend sidecar emulating `organization` (`[[accounts]]` tables),
/// verifying Lambda keys as the aws backend does, its door checking `credentials`; `extra`
/// adds tables.
pub fn inspector_sidecar(credentials: &Path, organization: &str, extra: &str) -> Sidecar {
    Sidecar::start_with(&format!(
        "account_id = \"{OWN}\"\nregion = \"us-east-1\"\n[verification]\nlambda_profile = \"amazon-q-lambda\"\n[aws_api]\ncredentials_file = {credentials:?}\n{organization}\n{extra}"
    ))
}

/// A key policy the scope's principal passes verification with.
pub async fn policy_for(sidecar: &Sidecar, account: &str, region: &str) -> String {
    sidecar
        .read_only_keys()
        .await
        .render_key_policy(proto::RenderKeyPolicyRequest {
            profile: "amazon-q-lambda".into(),
            region: region.into(),
            account_id: account.into(),
            principal_arn: format!("arn:aws:iam::{account}:role/inspector-keyd"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .policy_json
}

/// A key of `account` in `region` with `policy`, made in both KMSes with the same ARN: the
/// Inspector sidecar's local KMS, which its gate reads, and moto, which the managing
/// sidecar's gate reads (as `caller`, a principal of the key's account).
pub async fn key_in_both(
    inspector: &Sidecar,
    moto: &Moto,
    caller: &Credentials,
    account: &str,
    region: &str,
    policy: &str,
) -> String {
    let arn = inspector
        .create_key(proto::CreateKeyRequest {
            account_id: account.into(),
            region: region.into(),
            policy: policy.into(),
            ..Default::default()
        })
        .await;
    let id = arn.rsplit('/').next().unwrap();
    let in_moto = moto
        .create_key_with_id_as(caller, region, policy, Some(id))
        .await;
    assert_eq!(in_moto, arn, "one key in both");
    arn
}

pub fn update(key: &str, account: &str, region: &str) -> proto::UpdateEncryptionKeyRequest {
    proto::UpdateEncryptionKeyRequest {
        account_id: account.into(),
        region: region.into(),
        ..update_request(key)
    }
}

pub fn get(account: &str, region: &str) -> proto::GetEncryptionKeyRequest {
    proto::GetEncryptionKeyRequest {
        account_id: account.into(),
        region: region.into(),
        ..get_request(super::LAMBDA)
    }
}
