//! A real KMS- and IAM-protocol server (moto) on a loopback port, for the aws backend's
//! tests, AWS SDK clients pointed at it, and the log of the requests it served. moto runs
//! through `tests/python/moto_server.py`, which lets a test choose a key's id (see
//! [`Moto::create_key_with_id`]).

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};

/// A moto server that lives as long as this value.
pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
    /// Where moto's recorder writes every request it serves.
    recording: tempfile::TempDir,
}

/// The environment the sidecar (and the SDK clients) get in aws tests: static test
/// credentials, no shared config files, and no instance metadata (so nothing leaves
/// loopback).
pub const AWS_TEST_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent/inspector-keyd-test"),
    (
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/inspector-keyd-test",
    ),
];

impl Moto {
    /// Starts moto (the test fails when it is not installed).
    pub fn start() -> Moto {
        super::tool("KEYD_TEST_MOTO", ".tools/venv/bin/moto_server");
        let python = super::tool("KEYD_TEST_PYTHON", ".tools/venv/bin/python");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/moto_server.py");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The recorder logs every request (see `iam_requests`) into a file of its own.
        let recording = tempfile::tempdir().unwrap();
        let child = Command::new(python)
            .arg(script)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("MOTO_ENABLE_RECORDING", "true")
            .env("MOTO_RECORDER_FILEPATH", recording.path().join("requests"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let moto = Moto {
            child,
            addr,
            recording,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An SDK KMS client talking to this moto.
    pub fn kms(&self) -> aws_sdk_kms::Client {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .endpoint_url(self.url())
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }

    /// An SDK IAM client talking to this moto.
    pub fn iam(&self) -> aws_sdk_iam::Client {
        let config = aws_sdk_iam::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .endpoint_url(self.url())
            .build();
        aws_sdk_iam::Client::from_conf(config)
    }

    /// The IAM actions moto has served, in order (IAM speaks the query protocol: the action
    /// is in the form body; the signature's scope names the service).
    pub fn iam_requests(&self) -> Vec<String> {
        self.form_bodies("iam")
            .iter()
            .map(|body| {
                body.split('&')
                    .find_map(|pair| pair.strip_prefix("Action="))
                    .unwrap_or("(no action)")
                    .to_owned()
            })
            .collect()
    }

    /// The form bodies of the STS requests moto has served, in order, still URL-encoded
    /// (`Action=AssumeRole&RoleArn=arn%3Aaws...`).
    pub fn sts_requests(&self) -> Vec<String> {
        self.form_bodies("sts")
    }

    /// The bodies of the requests moto has served signed for `service`, in order.
    fn form_bodies(&self, service: &str) -> Vec<String> {
        let log =
            std::fs::read_to_string(self.recording.path().join("requests")).unwrap_or_default();
        let scope = format!("/{service}/aws4_request");
        // moto appends records while we read: a last line without its newline is one still
        // being written, counted at the next read. Every whole line must parse.
        log.split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|entry| {
                entry["headers"]["Authorization"]
                    .as_str()
                    .is_some_and(|a| a.contains(&scope))
            })
            .map(|entry| {
                let body = entry["body"].as_str().unwrap_or_default();
                if entry["body_encoded"] == true {
                    String::from_utf8(aws_smithy_types::base64::decode(body).unwrap()).unwrap()
                } else {
                    body.to_owned()
                }
            })
            .collect()
    }

    /// Credentials of `role_arn`, assumed with the test credentials through moto's STS
    /// (moto attributes what they create to the role's account).
    pub async fn assume_role(&self, role_arn: &str) -> Credentials {
        let testing = Credentials::new("testing", "testing", None, None, "tests");
        self.assume_role_as(&testing, role_arn, "tests", None).await
    }

    /// Credentials of `role_arn`, assumed as `caller` with `session_name` (and `external_id`
    /// when given) through moto's STS.
    pub async fn assume_role_as(
        &self,
        caller: &Credentials,
        role_arn: &str,
        session_name: &str,
        external_id: Option<&str>,
    ) -> Credentials {
        let config = aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(caller.clone())
            .endpoint_url(self.url())
            .build();
        let output = aws_sdk_sts::Client::from_conf(config)
            .assume_role()
            .role_arn(role_arn)
            .role_session_name(session_name)
            .set_external_id(external_id.map(str::to_owned))
            .send()
            .await
            .unwrap();
        let credentials = output.credentials().unwrap();
        Credentials::new(
            credentials.access_key_id(),
            credentials.secret_access_key(),
            Some(credentials.session_token().to_owned()),
            None,
            "tests-assumed",
        )
    }

    /// Creates a key with `policy` in `region` as `credentials` (their account's key); its
    /// ARN.
    pub async fn create_key_as(
        &self,
        credentials: &Credentials,
        region: &str,
        policy: &str,
    ) -> String {
        self.create_key_with_id_as(credentials, region, policy, None)
            .await
    }

    /// As [`Moto::create_key_as`], with the key id `id` when given.
    pub async fn create_key_with_id_as(
        &self,
        credentials: &Credentials,
        region: &str,
        policy: &str,
        id: Option<&str>,
    ) -> String {
        let tags = id.map(|id| {
            vec![
                aws_sdk_kms::types::Tag::builder()
                    .tag_key("_custom_id_")
                    .tag_value(id)
                    .build()
                    .unwrap(),
            ]
        });
        self.kms_as(credentials, region)
            .create_key()
            .key_usage(aws_sdk_kms::types::KeyUsageType::EncryptDecrypt)
            .key_spec(aws_sdk_kms::types::KeySpec::SymmetricDefault)
            .policy(policy)
            .set_tags(tags)
            .send()
            .await
            .unwrap()
            .key_metadata()
            .unwrap()
            .arn()
            .unwrap()
            .to_owned()
    }

    /// An SDK KMS client of `credentials` (their account) in `region`.
    pub fn kms_as(&self, credentials: &Credentials, region: &str) -> aws_sdk_kms::Client {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .credentials_provider(credentials.clone())
            .endpoint_url(self.url())
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }

    /// Names `key` `alias` in `region` of `credentials`' account.
    pub async fn create_alias_as(
        &self,
        credentials: &Credentials,
        region: &str,
        alias: &str,
        key: &str,
    ) {
        self.kms_as(credentials, region)
            .create_alias()
            .alias_name(alias)
            .target_key_id(key)
            .send()
            .await
            .unwrap();
    }

    /// Creates a key in moto with `policy` (moto's default when `None`); its ARN.
    pub async fn create_key(&self, policy: Option<&str>) -> String {
        self.create_key_with_id(policy, None).await
    }

    /// As [`Moto::create_key`], with the key id `id` when given.
    pub async fn create_key_with_id(&self, policy: Option<&str>, id: Option<&str>) -> String {
        // moto leaves KeyUsage out of DescribeKey unless CreateKey named it (AWS always
        // reports it), so name it.
        let mut request = self
            .kms()
            .create_key()
            .key_usage(aws_sdk_kms::types::KeyUsageType::EncryptDecrypt)
            .key_spec(aws_sdk_kms::types::KeySpec::SymmetricDefault);
        if let Some(policy) = policy {
            request = request.policy(policy);
        }
        if let Some(id) = id {
            request = request.tags(
                aws_sdk_kms::types::Tag::builder()
                    .tag_key("_custom_id_")
                    .tag_value(id)
                    .build()
                    .unwrap(),
            );
        }
        request
            .send()
            .await
            .unwrap()
            .key_metadata()
            .unwrap()
            .arn()
            .unwrap()
            .to_owned()
    }
}

impl Moto {
    /// Seeds moto's random generator with `seed` (`POST /moto-api/seed`): what moto makes
    /// next from it (such as the key pair of an AssumeRole) is the same after each seeding
    /// with the same value, given the same calls.
    pub fn seed(&self, seed: u64) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "POST /moto-api/seed?a={seed} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert_eq!(
            response.split_whitespace().nth(1),
            Some("200"),
            "{response}"
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
