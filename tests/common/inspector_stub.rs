//! A stand-in for Amazon Inspector's REST-JSON API on loopback: it records every request
//! exactly as the SDK sent it, keeps the key configuration and the code snippets of
//! findings, and can answer each error shape of the service model.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub body: Option<serde_json::Value>,
    pub authorization: Option<String>,
}

impl Recorded {
    /// The SigV4 credential scope's parts: access key id, date, Region, service.
    fn credential(&self) -> Vec<&str> {
        self.authorization
            .as_deref()
            .and_then(|a| a.split("Credential=").nth(1))
            .and_then(|c| c.split(',').next())
            .map(|c| c.split('/').collect())
            .unwrap_or_default()
    }

    /// The access key id the request is signed with ("" when unsigned).
    pub fn access_key_id(&self) -> &str {
        self.credential().first().copied().unwrap_or_default()
    }

    /// The Region of the signature's credential scope ("" when unsigned).
    pub fn signed_region(&self) -> &str {
        self.credential().get(2).copied().unwrap_or_default()
    }

    /// The request carries a SigV4 signature of the test credentials for inspector2 in
    /// us-east-1.
    pub fn assert_signed_for_inspector(&self) {
        let authorization = self.authorization.as_deref().unwrap_or_default();
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=testing/"),
            "{authorization}"
        );
        assert!(
            authorization.contains("/us-east-1/inspector2/aws4_request"),
            "{authorization}"
        );
    }
}

/// An error the stub answers with, shaped as the service model says.
#[derive(Debug, Clone)]
pub enum StubError {
    Validation,
    AccessDenied,
    ResourceNotFound,
    Throttling {
        retry_after: u64,
    },
    InternalServer {
        retry_after: u64,
    },
    /// 200 with this body, which is not the operation's JSON.
    Unreadable(String),
}

/// The message every stub error carries; it must never reach a gRPC caller.
pub const AWS_ERROR_TEXT: &str = "stub-aws-error-text-do-not-forward";

impl StubError {
    fn response(&self) -> Response {
        if let StubError::Unreadable(body) = self {
            let mut response = (StatusCode::OK, body.clone()).into_response();
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return response;
        }
        let (status, kind, retry_after, extra) = match self {
            StubError::Unreadable(_) => unreachable!("answered above"),
            StubError::Validation => (
                StatusCode::BAD_REQUEST,
                "ValidationException",
                None,
                serde_json::json!({"reason": "FIELD_VALIDATION_FAILED", "fields": [{"name": "kmsKeyId", "message": AWS_ERROR_TEXT}]}),
            ),
            StubError::AccessDenied => (
                StatusCode::FORBIDDEN,
                "AccessDeniedException",
                None,
                serde_json::json!({}),
            ),
            StubError::ResourceNotFound => (
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                None,
                serde_json::json!({}),
            ),
            StubError::Throttling { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "ThrottlingException",
                Some(*retry_after),
                serde_json::json!({}),
            ),
            StubError::InternalServer { retry_after } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerException",
                Some(*retry_after),
                serde_json::json!({}),
            ),
        };
        let mut body = serde_json::json!({"message": AWS_ERROR_TEXT});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert("x-amzn-errortype", kind.parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        if let Some(seconds) = retry_after {
            headers.insert("retry-after", seconds.to_string().parse().unwrap());
        }
        response
    }
}

/// What the stub answers an STS AssumeRole for a role ARN (see [`InspectorStub::answer_sts`]).
#[derive(Debug, Clone)]
pub enum StsAnswer {
    /// These credentials: access key id, secret access key, session token.
    Credentials(String, String, String),
    /// 403 AccessDenied, as STS refuses a role whose trust policy does not let the caller
    /// assume it.
    AccessDenied,
}

/// The key configuration of each (signing access key id, Region, scan type, resource type):
/// a scope is the credentials and Region a request is signed with.
type Keys = HashMap<(String, String, String, String), String>;

#[derive(Default)]
struct Inner {
    keys: Keys,
    /// Role ARN → what AssumeRole answers; the stub is an STS endpoint when a test sets one.
    sts: HashMap<String, StsAnswer>,
    /// Finding ARN → CodeSnippetResult, in the SDK's camelCase.
    snippets: HashMap<String, serde_json::Value>,
    /// Finding ARN → the CodeSnippetErrorCode BatchGetCodeSnippet answers for it.
    snippet_errors: HashMap<String, String>,
    requests: Vec<Recorded>,
    errors: VecDeque<StubError>,
}

/// The stub, serving on a loopback port until dropped.
#[derive(Clone)]
pub struct InspectorStub {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
    _server: Arc<tokio::task::JoinHandle<()>>,
}

/// The stub's key slot of a request signed by `recorded` for `target`.
fn slot(recorded: &Recorded, target: (String, String)) -> (String, String, String, String) {
    (
        recorded.access_key_id().to_owned(),
        recorded.signed_region().to_owned(),
        target.0,
        target.1,
    )
}

/// STS's query-protocol answer to AssumeRole (form body `body`).
fn assume_role(inner: &Inner, body: &str) -> Response {
    let role = body
        .split('&')
        .find_map(|pair| pair.strip_prefix("RoleArn="))
        .map(|arn| arn.replace("%3A", ":").replace("%2F", "/"))
        .unwrap_or_default();
    let xml = |status: StatusCode, text: String| {
        let mut response = (status, text).into_response();
        response
            .headers_mut()
            .insert("content-type", "text/xml".parse().unwrap());
        response
    };
    match inner.sts.get(&role) {
        Some(StsAnswer::Credentials(key, secret, token)) => {
            let account = role.split(':').nth(4).unwrap_or_default();
            xml(
                StatusCode::OK,
                format!(
                    "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult><Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{token}</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>AROASTUB:s</AssumedRoleId><Arn>arn:aws:sts::{account}:assumed-role/stub/s</Arn></AssumedRoleUser></AssumeRoleResult><ResponseMetadata><RequestId>stub</RequestId></ResponseMetadata></AssumeRoleResponse>"
                ),
            )
        }
        _ => xml(
            StatusCode::FORBIDDEN,
            format!(
                "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>{AWS_ERROR_TEXT}</Message></Error><RequestId>stub</RequestId></ErrorResponse>"
            ),
        ),
    }
}

fn target_of(value: &serde_json::Value) -> (String, String) {
    (
        value["scanType"].as_str().unwrap_or_default().to_owned(),
        value["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let mut inner = inner.lock().unwrap();
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: query.clone(),
        body: parsed.clone(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    inner.requests.push(recorded.clone());
    let form = String::from_utf8_lossy(&body);
    if method == Method::POST && uri.path() == "/" && form.contains("Action=AssumeRole") {
        return assume_role(&inner, &form);
    }
    if let Some(error) = inner.errors.pop_front() {
        return error.response();
    }
    let ok = |body: serde_json::Value| {
        let mut response = (StatusCode::OK, body.to_string()).into_response();
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
    };
    match (method.as_str(), uri.path()) {
        ("GET", "/encryptionkey/get") => {
            let pairs: HashMap<String, String> = query
                .unwrap_or_default()
                .split('&')
                .filter_map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect();
            let key = slot(
                &recorded,
                (
                    pairs.get("scanType").cloned().unwrap_or_default(),
                    pairs.get("resourceType").cloned().unwrap_or_default(),
                ),
            );
            match inner.keys.get(&key) {
                Some(arn) => ok(serde_json::json!({"kmsKeyId": arn})),
                None => StubError::ResourceNotFound.response(),
            }
        }
        ("PUT", "/encryptionkey/update") => {
            let body = parsed.unwrap_or_default();
            let arn = body["kmsKeyId"].as_str().unwrap_or_default().to_owned();
            inner.keys.insert(slot(&recorded, target_of(&body)), arn);
            ok(serde_json::json!({}))
        }
        ("PUT", "/encryptionkey/reset") => {
            let body = parsed.unwrap_or_default();
            inner.keys.remove(&slot(&recorded, target_of(&body)));
            ok(serde_json::json!({}))
        }
        ("POST", "/codesnippet/batchget") => {
            let body = parsed.unwrap_or_default();
            let mut results = Vec::new();
            let mut errors = Vec::new();
            for arn in body["findingArns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
            {
                if let Some(result) = inner.snippets.get(arn) {
                    results.push(result.clone());
                    continue;
                }
                let code = inner
                    .snippet_errors
                    .get(arn)
                    .map_or("CODE_SNIPPET_NOT_FOUND", String::as_str);
                errors.push(serde_json::json!({
                    "findingArn": arn,
                    "errorCode": code,
                    "errorMessage": AWS_ERROR_TEXT,
                }));
            }
            ok(serde_json::json!({"codeSnippetResults": results, "errors": errors}))
        }
        _ => (StatusCode::NOT_FOUND, "no such route").into_response(),
    }
}

impl InspectorStub {
    pub async fn start() -> InspectorStub {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        InspectorStub {
            inner,
            addr,
            _server: Arc::new(server),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next responses are these errors, in order.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = StubError>) {
        self.inner.lock().unwrap().errors.extend(errors);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.inner.lock().unwrap().requests.clear();
    }

    /// Stores the code snippet BatchGetCodeSnippet answers for `arn`: a CodeSnippetResult
    /// in the SDK's camelCase (`findingArn`, `startLine`, `endLine`, `codeSnippet`,
    /// `suggestedFixes`).
    pub fn put_snippet(&self, arn: &str, result: serde_json::Value) {
        self.inner
            .lock()
            .unwrap()
            .snippets
            .insert(arn.to_owned(), result);
    }

    /// BatchGetCodeSnippet answers `arn` with this CodeSnippetErrorCode (`ACCESS_DENIED`,
    /// `INTERNAL_ERROR`, ...) when no snippet is stored for it; unknown findings are
    /// `CODE_SNIPPET_NOT_FOUND`.
    pub fn put_snippet_error(&self, arn: &str, code: &str) {
        self.inner
            .lock()
            .unwrap()
            .snippet_errors
            .insert(arn.to_owned(), code.to_owned());
    }

    /// The key the stub holds for a target (AWS spellings), as the test credentials set it
    /// in us-east-1.
    pub fn key(&self, scan_type: &str, resource_type: &str) -> Option<String> {
        self.key_signed_by("testing", "us-east-1", scan_type, resource_type)
    }

    /// The key the stub holds for a target as requests signed by `access_key_id` for
    /// `region` set it.
    pub fn key_signed_by(
        &self,
        access_key_id: &str,
        region: &str,
        scan_type: &str,
        resource_type: &str,
    ) -> Option<String> {
        self.inner
            .lock()
            .unwrap()
            .keys
            .get(&(
                access_key_id.to_owned(),
                region.to_owned(),
                scan_type.to_owned(),
                resource_type.to_owned(),
            ))
            .cloned()
    }

    /// The stub answers STS AssumeRole of `role_arn` with `answer` (a role it has no answer
    /// for is refused).
    pub fn answer_sts(&self, role_arn: &str, answer: StsAnswer) {
        self.inner
            .lock()
            .unwrap()
            .sts
            .insert(role_arn.to_owned(), answer);
    }
}
