//! SigV4 verification of the AWS-protocol door's requests. The signature is recomputed with
//! the AWS SDK's own signer (`aws-sigv4`) over exactly the headers the caller says it
//! signed, and compared in constant time; the credential scope must name a well-formed
//! Region (the one the request is for: what the AWS CLI's `--region` sets, and the scope the
//! door serves it in) and the `inspector2` service, the request time within 15 minutes of
//! the sidecar's clock, and the payload hash that of the body received. No error carries a
//! secret or the signature.
//!
//! The head is checked before the body is read ([`verify_head`]): a request without a
//! known key, scope or time is refused unread, and so is a bad signature when the caller
//! sent its payload's hash (`x-amz-content-sha256`), which the signature then covers.

use std::time::{Duration, SystemTime};

use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use http::HeaderMap;
use zeroize::Zeroizing;

/// The service name requests must be scoped to.
pub const SERVICE: &str = "inspector2";

/// The only signing algorithm accepted.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// How far a request's time may be from the sidecar's clock, either way (AWS's limit).
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a request's signature was not accepted; each is answered 403 with the AWS error code
/// [`SignatureError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Authorization` header.
    #[error(
        "Missing Authentication Token: sign the request with SigV4 (the AWS CLI and SDKs do) using a key pair from the sidecar's AWS credentials file"
    )]
    Missing,
    /// The `Authorization` header or the signed headers are not a complete SigV4 signature.
    #[error("{0}")]
    Incomplete(String),
    /// The access key id is not in the credentials file.
    #[error("the access key id `{0}` is not known to this sidecar")]
    UnknownKey(String),
    /// The scope, the time or the payload hash is wrong, or the signature does not match.
    #[error("{0}")]
    Invalid(String),
}

impl SignatureError {
    /// The AWS error code (`x-amzn-ErrorType`).
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "MissingAuthenticationTokenException",
            SignatureError::Incomplete(_) => "IncompleteSignatureException",
            SignatureError::UnknownKey(_) => "UnrecognizedClientException",
            SignatureError::Invalid(_) => "InvalidSignatureException",
        }
    }
}

/// What the caller claims in its `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn incomplete(message: impl Into<String>) -> SignatureError {
    SignatureError::Incomplete(message.into())
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, SignatureError> {
    let Some(rest) = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
    else {
        let algorithm = value.split(' ').next().unwrap_or_default();
        return Err(incomplete(format!(
            "the Authorization header must use {ALGORITHM} (SigV4), not `{}`",
            algorithm.escape_default()
        )));
    };
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((name, value)) = part.trim().split_once('=') else {
            return Err(incomplete(
                "the Authorization header must be `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`",
            ));
        };
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(incomplete(format!(
                    "unknown element `{}` in the Authorization header",
                    name.escape_default()
                )));
            }
        };
        if slot.replace(value).is_some() {
            return Err(incomplete(format!(
                "`{name}` appears twice in the Authorization header"
            )));
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(incomplete(
            "the Authorization header needs Credential, SignedHeaders and Signature",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(incomplete(
            "Credential must be `<access key id>/<yyyymmdd>/<region>/inspector2/aws4_request`",
        ));
    };
    if terminator != "aws4_request" {
        return Err(incomplete(
            "the credential scope must end in `aws4_request`",
        ));
    }
    if !crate::domain::is_access_key_id(access_key_id) {
        return Err(incomplete(
            "the access key id must be 16 to 128 letters and digits",
        ));
    }
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(incomplete("Signature must be 64 lower-case hex digits"));
    }
    let signed_headers: Vec<&str> = signed_headers.split(';').collect();
    // Header names are HTTP tokens (RFC 9110 §5.6.2), in lower case once canonical.
    let well_formed = signed_headers.iter().all(|name| {
        !name.is_empty()
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            })
    });
    if !well_formed {
        return Err(incomplete(
            "SignedHeaders must be lower-case header names separated by `;`",
        ));
    }
    for required in ["host", "x-amz-date"] {
        if !signed_headers.contains(&required) {
            return Err(incomplete(format!(
                "`{required}` must be among the signed headers"
            )));
        }
    }
    if signed_headers.contains(&"authorization") {
        return Err(incomplete("the Authorization header cannot sign itself"));
    }
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// Parses `yyyymmddThhmmssZ` (the `x-amz-date` format).
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = text.get(range)?;
        digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok())
            .flatten()
    };
    let year = i32::try_from(number(0..4)?).ok()?;
    let month = time::Month::try_from(u8::try_from(number(4..6)?).ok()?).ok()?;
    let day = u8::try_from(number(6..8)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(number(9..11)?).ok()?,
        u8::try_from(number(11..13)?).ok()?,
        u8::try_from(number(13..15)?).ok()?,
    )
    .ok()?;
    Some(
        time::PrimitiveDateTime::new(date, clock)
            .assume_utc()
            .into(),
    )
}

/// `time` in the `x-amz-date` format.
fn format_amz_date(time: SystemTime) -> String {
    let t = time::OffsetDateTime::from(time);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The lower-case hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A request as the door received it.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path and query exactly as sent.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// What the door has of a request before it reads the body.
pub struct Head<'a> {
    pub method: &'a str,
    /// The path and query exactly as sent.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
}

/// Who signed a request, and for which Region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    /// The credential scope's Region: the Region the request is for.
    pub region: String,
}

/// What a request's head says of its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadVerdict {
    /// The signature is good over the payload hash the caller sent; the body must have
    /// that hash ([`check_payload`]).
    Signed {
        verified: Verified,
        payload_sha256: String,
    },
    /// All but the signature is good; it covers a body whose hash the head does not give,
    /// so it can only be checked with the body ([`verify`]).
    NeedsBody,
}

/// The one value of a header, as text; `Err` when it repeats or is not text.
fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h str>, SignatureError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(incomplete(format!(
            "the `{name}` header appears more than once"
        )));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| incomplete(format!("the `{name}` header is not text")))
}

/// Verifies the SigV4 signature of `request` against the secrets `secret_of` knows, at
/// `now`, for whichever well-formed Region it was signed for: who signed it, and that Region.
pub fn verify_request(
    request: &Request<'_>,
    secret_of: impl Fn(&str) -> Option<Zeroizing<String>>,
    now: SystemTime,
) -> Result<Verified, SignatureError> {
    let head = Head {
        method: request.method,
        path_and_query: request.path_and_query,
        headers: request.headers,
    };
    check(&head, Some(request.body), secret_of, now)?.ok_or_else(|| {
        // `check` verifies the signature whenever it has the body.
        SignatureError::Invalid("the signature could not be checked".into())
    })
}

/// [`verify_request`] for a caller that serves one Region: the request must be signed for
/// `region`. Returns the access key id it was signed with.
pub fn verify(
    request: &Request<'_>,
    secret_of: impl Fn(&str) -> Option<Zeroizing<String>>,
    region: &str,
    now: SystemTime,
) -> Result<String, SignatureError> {
    let verified = verify_request(request, secret_of, now)?;
    if verified.region != region {
        return Err(SignatureError::Invalid(format!(
            "Credential should be scoped to a valid region: `{region}` is served here, not `{}`",
            verified.region
        )));
    }
    Ok(verified.access_key_id)
}

/// Checks what the head of a request can tell, before its body is read: an `Err` refuses
/// it unread.
pub fn verify_head(
    head: &Head<'_>,
    secret_of: impl Fn(&str) -> Option<Zeroizing<String>>,
    now: SystemTime,
) -> Result<HeadVerdict, SignatureError> {
    let Some(verified) = check(head, None, secret_of, now)? else {
        return Ok(HeadVerdict::NeedsBody);
    };
    // `check` verified over the header's hash, so it is there.
    let payload_sha256 = single_header(head.headers, PAYLOAD_HASH)?
        .unwrap_or_default()
        .to_owned();
    Ok(HeadVerdict::Signed {
        verified,
        payload_sha256,
    })
}

/// The body of a request whose head was [`HeadVerdict::Signed`] over `payload_sha256`.
pub fn check_payload(payload_sha256: &str, body: &[u8]) -> Result<(), SignatureError> {
    if sha256_hex(body) == payload_sha256 {
        Ok(())
    } else {
        Err(SignatureError::Invalid(
            "x-amz-content-sha256 is not the SHA-256 of the request body; the payload must be signed".into(),
        ))
    }
}

/// The header that carries the payload's hash.
const PAYLOAD_HASH: &str = "x-amz-content-sha256";

/// Checks a request's signature. With `body`, wholly: the access key id it was signed with,
/// and the Region. Without, what the head tells: those when the signature is good over the
/// payload hash the head gives (the body must then have it), `None` when all but the
/// signature is good and the signature covers a body whose hash the head does not give.
fn check(
    request: &Head<'_>,
    body: Option<&[u8]>,
    secret_of: impl Fn(&str) -> Option<Zeroizing<String>>,
    now: SystemTime,
) -> Result<Option<Verified>, SignatureError> {
    let Some(value) = single_header(request.headers, "authorization")? else {
        if request.path_and_query.contains("X-Amz-Signature=") {
            return Err(incomplete(
                "presigned URLs are not accepted; sign the request with the Authorization header",
            ));
        }
        return Err(SignatureError::Missing);
    };
    let authorization = parse_authorization(value)?;
    let Some(secret) = secret_of(authorization.access_key_id) else {
        return Err(SignatureError::UnknownKey(
            authorization.access_key_id.to_owned(),
        ));
    };
    let signed_at = check_scope(request, &authorization, now)?;
    let Some(payload) = signed_payload(request, body)? else {
        return Ok(None);
    };
    let headers = signed_headers(request, &authorization)?;
    let mut settings = SigningSettings::default();
    // The caller says what it signed; nothing it listed is dropped.
    settings.excluded_headers = None;
    let identity = aws_credential_types::Credentials::new(
        authorization.access_key_id,
        secret.as_str(),
        None,
        None,
        "inspector-keyd",
    )
    .into();
    // Recomputed for the Region the caller signed with, which check_scope found well formed.
    let params = signing_params(&identity, authorization.region, signed_at, settings)
        .map_err(|e| SignatureError::Invalid(format!("cannot check the signature: {e}")))?;
    let signable = SignableRequest::new(
        request.method,
        request.path_and_query,
        headers.into_iter(),
        payload,
    )
    .map_err(|_| incomplete("the request cannot be put in canonical form"))?;
    let expected = sign(signable, &params)
        .map_err(|_| incomplete("the request cannot be put in canonical form"))?;
    let expected = Zeroizing::new(expected.signature().to_owned());
    if aws_lc_rs::constant_time::verify_slices_are_equal(
        expected.as_bytes(),
        authorization.signature.as_bytes(),
    )
    .is_err()
    {
        return Err(SignatureError::Invalid(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.".into(),
        ));
    }
    Ok(Some(Verified {
        access_key_id: authorization.access_key_id.to_owned(),
        region: authorization.region.to_owned(),
    }))
}

/// The credential scope names a well-formed Region, this service and the day of
/// `x-amz-date`, which is within [`MAX_SKEW`] of `now`: when the request was signed. Any
/// Region name is taken here (whether the sidecar manages it there is the service's to say,
/// as for a gRPC request naming it), so the caller's `--region` reaches the service.
fn check_scope(
    request: &Head<'_>,
    authorization: &Authorization<'_>,
    now: SystemTime,
) -> Result<SystemTime, SignatureError> {
    if !crate::domain::is_region_name(authorization.region) {
        return Err(SignatureError::Invalid(format!(
            "Credential should be scoped to a valid region: `{}` is not an AWS Region name such as us-east-1",
            authorization
                .region
                .chars()
                .take(64)
                .collect::<String>()
                .escape_default()
        )));
    }
    if authorization.service != SERVICE {
        return Err(SignatureError::Invalid(format!(
            "Credential should be scoped to the correct service: `{SERVICE}`, not `{}`",
            authorization.service.escape_default()
        )));
    }
    let Some(amz_date) = single_header(request.headers, "x-amz-date")? else {
        return Err(incomplete("the signed `x-amz-date` header is missing"));
    };
    let Some(signed_at) = parse_amz_date(amz_date) else {
        return Err(incomplete(
            "x-amz-date must be a UTC time such as 20260101T120000Z",
        ));
    };
    if amz_date.get(..8) != Some(authorization.date) {
        return Err(SignatureError::Invalid(format!(
            "the credential scope's date `{}` is not the date of x-amz-date `{amz_date}`",
            authorization.date.escape_default()
        )));
    }
    check_time(signed_at, now)?;
    Ok(signed_at)
}

/// What the signature covers of the payload: the hash the caller signed (an unsigned or
/// streamed payload is refused), else the body itself; `None` when neither is at hand yet.
fn signed_payload<'b>(
    request: &Head<'_>,
    body: Option<&'b [u8]>,
) -> Result<Option<SignableBody<'b>>, SignatureError> {
    match (single_header(request.headers, PAYLOAD_HASH)?, body) {
        (Some(claimed), body) => {
            let is_sha256 = claimed.len() == 64
                && claimed
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !is_sha256 {
                return Err(SignatureError::Invalid(
                    "x-amz-content-sha256 must be the SHA-256 of the request body (64 lower-case hex digits); the payload must be signed".into(),
                ));
            }
            if let Some(body) = body {
                check_payload(claimed, body)?;
            }
            Ok(Some(SignableBody::Precomputed(claimed.to_owned())))
        }
        (None, Some(body)) => Ok(Some(SignableBody::Bytes(body))),
        (None, None) => Ok(None),
    }
}

/// Exactly the headers the caller signed, each value it sent; the signer adds x-amz-date
/// from the time.
fn signed_headers<'r>(
    request: &Head<'r>,
    authorization: &Authorization<'r>,
) -> Result<Vec<(&'r str, &'r str)>, SignatureError> {
    let mut headers = Vec::new();
    for name in authorization
        .signed_headers
        .iter()
        .filter(|n| **n != "x-amz-date")
    {
        let mut values = request.headers.get_all(*name).iter().peekable();
        if values.peek().is_none() {
            return Err(incomplete(format!(
                "the signed header `{name}` is not in the request"
            )));
        }
        for value in values {
            let value = value
                .to_str()
                .map_err(|_| incomplete(format!("the signed header `{name}` is not text")))?;
            headers.push((*name, value));
        }
    }
    Ok(headers)
}

/// SigV4 parameters for this service in `region` at `time`.
fn signing_params<'a>(
    identity: &'a aws_smithy_runtime_api::client::identity::Identity,
    region: &'a str,
    time: SystemTime,
    settings: SigningSettings,
) -> Result<aws_sigv4::http_request::SigningParams<'a>, String> {
    v4::SigningParams::builder()
        .identity(identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map(Into::into)
        .map_err(|e| e.to_string())
}

/// A request signed more than [`MAX_SKEW`] from `now` either way is refused, with the times
/// AWS's own message gives.
fn check_time(signed_at: SystemTime, now: SystemTime) -> Result<(), SignatureError> {
    let limit = MAX_SKEW.as_secs() / 60;
    if let Ok(age) = now.duration_since(signed_at)
        && age > MAX_SKEW
    {
        return Err(SignatureError::Invalid(format!(
            "Signature expired: {} is now earlier than {} ({} - {limit} min.)",
            format_amz_date(signed_at),
            format_amz_date(now - MAX_SKEW),
            format_amz_date(now),
        )));
    }
    if let Ok(ahead) = signed_at.duration_since(now)
        && ahead > MAX_SKEW
    {
        return Err(SignatureError::Invalid(format!(
            "Signature not yet current: {} is still later than {} ({} + {limit} min.)",
            format_amz_date(signed_at),
            format_amz_date(now + MAX_SKEW),
            format_amz_date(now),
        )));
    }
    Ok(())
}

/// Signs a request as an AWS SDK does (the `x-amz-date` and `Authorization` headers, over
/// every header given); for the tests and the fuzz target (the `test-hooks` feature), which
/// check that what is signed verifies and what is changed does not.
#[cfg(any(test, feature = "test-hooks"))]
pub fn sign_for_tests(
    method: &str,
    path_and_query: &str,
    headers: &mut HeaderMap,
    body: &[u8],
    (access_key_id, secret): (&str, &str),
    region: &str,
    time: SystemTime,
) -> Result<(), String> {
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::NoHeader;
    let identity =
        aws_credential_types::Credentials::new(access_key_id, secret, None, None, "tests").into();
    let params = signing_params(&identity, region, time, settings)?;
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let signable = SignableRequest::new(
        method,
        path_and_query,
        pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    for (name, value) in instructions.headers() {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let value = http::HeaderValue::from_str(value).map_err(|e| e.to_string())?;
        headers.insert(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const KEY: (&str, &str) = ("KEYDTESTKEY0000000", "0123456789abcdef0123456789abcdef");

    fn secrets(id: &str) -> Option<Zeroizing<String>> {
        (id == KEY.0).then(|| Zeroizing::new(KEY.1.to_owned()))
    }

    fn at(text: &str) -> SystemTime {
        parse_amz_date(text).unwrap()
    }

    fn signed(method: &str, path: &str, body: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:50052".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        sign_for_tests(
            method,
            path,
            &mut headers,
            body,
            KEY,
            "us-east-1",
            at("20260301T120000Z"),
        )
        .unwrap();
        headers
    }

    fn check(
        method: &str,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: &str,
    ) -> Result<String, SignatureError> {
        verify(
            &Request {
                method,
                path_and_query: path,
                headers,
                body,
            },
            secrets,
            "us-east-1",
            at(now),
        )
    }

    /// Why a reset request with `headers` and `body`, checked at the tests' time, is refused.
    fn refused_reset(headers: &HeaderMap, body: &[u8]) -> SignatureError {
        check(
            "PUT",
            "/encryptionkey/reset",
            headers,
            body,
            "20260301T120000Z",
        )
        .unwrap_err()
    }

    #[test]
    fn what_an_sdk_signs_verifies_and_any_change_does_not() {
        let body = br#"{"scanType":"CODE","resourceType":"AWS_LAMBDA_FUNCTION"}"#;
        let headers = signed("PUT", "/encryptionkey/reset", body);
        assert_eq!(
            check(
                "PUT",
                "/encryptionkey/reset",
                &headers,
                body,
                "20260301T120500Z"
            )
            .unwrap(),
            KEY.0
        );
        // Another body, method, path or signed header value.
        let mismatch = |r: Result<String, SignatureError>| {
            assert!(
                matches!(&r, Err(SignatureError::Invalid(m)) if m.contains("does not match")),
                "{r:?}"
            );
        };
        mismatch(check(
            "PUT",
            "/encryptionkey/reset",
            &headers,
            b"{}",
            "20260301T120000Z",
        ));
        mismatch(check(
            "POST",
            "/encryptionkey/reset",
            &headers,
            body,
            "20260301T120000Z",
        ));
        mismatch(check(
            "PUT",
            "/encryptionkey/update",
            &headers,
            body,
            "20260301T120000Z",
        ));
        let mut changed = headers.clone();
        changed.insert("content-type", "text/plain".parse().unwrap());
        mismatch(check(
            "PUT",
            "/encryptionkey/reset",
            &changed,
            body,
            "20260301T120000Z",
        ));
        // Query parameters are signed too.
        let get = "/encryptionkey/get?resourceType=AWS_LAMBDA_FUNCTION&scanType=CODE";
        let headers = signed("GET", get, b"");
        check("GET", get, &headers, b"", "20260301T120000Z").unwrap();
        mismatch(check(
            "GET",
            "/encryptionkey/get?resourceType=CODE_REPOSITORY&scanType=CODE",
            &headers,
            b"",
            "20260301T120000Z",
        ));
    }

    #[test]
    fn the_scope_time_and_key_are_checked() {
        let headers = signed("GET", "/encryptionkey/get", b"");
        let verify_with = |region: &str, now: &str, headers: &HeaderMap| {
            verify(
                &Request {
                    method: "GET",
                    path_and_query: "/encryptionkey/get",
                    headers,
                    body: b"",
                },
                secrets,
                region,
                at(now),
            )
        };
        let error = verify_with("eu-west-1", "20260301T120000Z", &headers).unwrap_err();
        assert_eq!(error.code(), "InvalidSignatureException");
        assert!(
            error.to_string().contains("`eu-west-1` is served here"),
            "{error}"
        );
        let error = verify_with("us-east-1", "20260301T121501Z", &headers).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Signature expired: 20260301T120000Z is now earlier than 20260301T120001Z (20260301T121501Z - 15 min.)"
        );
        let error = verify_with("us-east-1", "20260301T114459Z", &headers).unwrap_err();
        assert!(
            error.to_string().starts_with("Signature not yet current"),
            "{error}"
        );
        verify_with("us-east-1", "20260301T121500Z", &headers).unwrap();

        let mut unknown = HeaderMap::new();
        unknown.insert("host", "127.0.0.1:50052".parse().unwrap());
        sign_for_tests(
            "GET",
            "/encryptionkey/get",
            &mut unknown,
            b"",
            ("KEYDSOMEONEELSE000", KEY.1),
            "us-east-1",
            at("20260301T120000Z"),
        )
        .unwrap();
        let error = verify_with("us-east-1", "20260301T120000Z", &unknown).unwrap_err();
        assert_eq!(error.code(), "UnrecognizedClientException");

        let mut wrong_secret = HeaderMap::new();
        wrong_secret.insert("host", "127.0.0.1:50052".parse().unwrap());
        sign_for_tests(
            "GET",
            "/encryptionkey/get",
            &mut wrong_secret,
            b"",
            (KEY.0, "not-the-secret-0123456789"),
            "us-east-1",
            at("20260301T120000Z"),
        )
        .unwrap();
        let error = verify_with("us-east-1", "20260301T120000Z", &wrong_secret).unwrap_err();
        assert_eq!(error.code(), "InvalidSignatureException");
        assert!(!error.to_string().contains(KEY.1));
    }

    #[test]
    fn any_well_formed_region_is_taken_and_the_signature_is_checked_for_it() {
        let signed_for = |region: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("host", "127.0.0.1:50052".parse().unwrap());
            sign_for_tests(
                "GET",
                "/encryptionkey/get",
                &mut headers,
                b"",
                KEY,
                region,
                at("20260301T120000Z"),
            )
            .unwrap();
            headers
        };
        let verify_at = |headers: &HeaderMap| {
            verify_request(
                &Request {
                    method: "GET",
                    path_and_query: "/encryptionkey/get",
                    headers,
                    body: b"",
                },
                secrets,
                at("20260301T120000Z"),
            )
        };
        for region in ["eu-west-1", "ap-south-1", "us-gov-west-1", "cn-north-1"] {
            assert_eq!(
                verify_at(&signed_for(region)),
                Ok(Verified {
                    access_key_id: KEY.0.to_owned(),
                    region: region.to_owned(),
                }),
                "{region}"
            );
        }
        // Signed for eu-west-1, the scope then claiming us-east-1: the signature is
        // recomputed for the Region claimed, and does not match.
        let mut moved = signed_for("eu-west-1");
        let authorization = moved["authorization"]
            .to_str()
            .unwrap()
            .replace("/eu-west-1/", "/us-east-1/");
        moved.insert("authorization", authorization.parse().unwrap());
        let error = verify_at(&moved).unwrap_err();
        assert!(error.to_string().contains("does not match"), "{error}");
        for bad in ["EU-WEST-1", "us_east_1", "moon", "us-east-1a"] {
            let error = verify_at(&signed_for(bad)).unwrap_err();
            assert_eq!(error.code(), "InvalidSignatureException", "{bad}");
            assert!(
                error.to_string().contains("is not an AWS Region name"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn unsigned_and_malformed_requests_are_named() {
        let body = b"{}";
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:50052".parse().unwrap());
        let error = refused_reset(&headers, body);
        assert_eq!(error, SignatureError::Missing);
        assert_eq!(error.code(), "MissingAuthenticationTokenException");
        for (authorization, expected) in [
            ("Bearer abc", "must use AWS4-HMAC-SHA256"),
            (
                "AWS4-HMAC-SHA256 Credential=KEYDTESTKEY0000000/20260301/us-east-1/inspector2/aws4_request",
                "needs Credential, SignedHeaders and Signature",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=KEYDTESTKEY0000000/20260301/us-east-1/inspector2, SignedHeaders=host;x-amz-date, Signature=00",
                "Credential must be",
            ),
            (
                &format!(
                    "AWS4-HMAC-SHA256 Credential=KEYDTESTKEY0000000/20260301/us-east-1/inspector2/aws4_request, SignedHeaders=host, Signature={}",
                    "0".repeat(64)
                ),
                "`x-amz-date` must be among",
            ),
            (
                &format!(
                    "AWS4-HMAC-SHA256 Credential=KEYDTESTKEY0000000/20260301/us-east-1/inspector2/aws4_request, SignedHeaders=Host;x-amz-date, Signature={}",
                    "0".repeat(64)
                ),
                "lower-case header names",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=KEYDTESTKEY0000000/20260301/us-east-1/inspector2/aws4_request, SignedHeaders=host;x-amz-date, Signature=XYZ",
                "64 lower-case hex",
            ),
            (
                &format!(
                    "AWS4-HMAC-SHA256 Credential=KEYDTESTKEY0000000/20260301/us-east-1/inspector2/aws4_request, SignedHeaders=host;x-amz-date, Signature={0}, Signature={0}",
                    "0".repeat(64)
                ),
                "appears twice",
            ),
        ] {
            let mut headers = headers.clone();
            headers.insert("authorization", authorization.parse().unwrap());
            let error = refused_reset(&headers, body);
            assert_eq!(
                error.code(),
                "IncompleteSignatureException",
                "{authorization}"
            );
            assert!(
                error.to_string().contains(expected),
                "{authorization}: {error}"
            );
        }
        // A signed header that is not in the request, and a payload hash that is not the body's.
        let mut headers = signed("PUT", "/encryptionkey/reset", body);
        headers.remove("content-type");
        let error = refused_reset(&headers, body);
        assert!(
            error
                .to_string()
                .contains("`content-type` is not in the request"),
            "{error}"
        );
        let mut headers = signed("PUT", "/encryptionkey/reset", body);
        headers.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
        let error = refused_reset(&headers, body);
        assert!(
            error.to_string().contains("x-amz-content-sha256"),
            "{error}"
        );
    }

    #[test]
    fn the_head_alone_refuses_or_verifies_before_the_body_is_read() {
        let body = br#"{"scanType":"CODE","resourceType":"AWS_LAMBDA_FUNCTION"}"#;
        let head_of = |headers: &HeaderMap| {
            verify_head(
                &Head {
                    method: "PUT",
                    path_and_query: "/encryptionkey/reset",
                    headers,
                },
                secrets,
                at("20260301T120000Z"),
            )
        };
        // No payload hash in the head: all but the signature is checked.
        let headers = signed("PUT", "/encryptionkey/reset", body);
        assert_eq!(head_of(&headers), Ok(HeadVerdict::NeedsBody));
        assert_eq!(
            head_of(&HeaderMap::new()).unwrap_err(),
            SignatureError::Missing
        );
        // With the payload's hash signed in the head, the signature is checked from it.
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:50052".parse().unwrap());
        headers.insert("x-amz-content-sha256", sha256_hex(body).parse().unwrap());
        let mut good = headers.clone();
        sign_for_tests(
            "PUT",
            "/encryptionkey/reset",
            &mut good,
            body,
            KEY,
            "us-east-1",
            at("20260301T120000Z"),
        )
        .unwrap();
        assert_eq!(
            head_of(&good),
            Ok(HeadVerdict::Signed {
                verified: Verified {
                    access_key_id: KEY.0.to_owned(),
                    region: "us-east-1".to_owned(),
                },
                payload_sha256: sha256_hex(body),
            })
        );
        check_payload(&sha256_hex(body), body).unwrap();
        assert!(check_payload(&sha256_hex(body), b"{}").is_err());
        // The same request checked with its body verifies too.
        check(
            "PUT",
            "/encryptionkey/reset",
            &good,
            body,
            "20260301T120000Z",
        )
        .unwrap();
        let mut bad = headers;
        sign_for_tests(
            "PUT",
            "/encryptionkey/reset",
            &mut bad,
            body,
            (KEY.0, "not-the-secret-0123456789"),
            "us-east-1",
            at("20260301T120000Z"),
        )
        .unwrap();
        assert_eq!(
            head_of(&bad).unwrap_err().code(),
            "InvalidSignatureException"
        );
        // An unsigned or streamed payload is refused from the head.
        let mut unsigned = good.clone();
        unsigned.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
        assert!(
            head_of(&unsigned)
                .unwrap_err()
                .to_string()
                .contains("x-amz-content-sha256")
        );
    }

    #[test]
    fn amz_dates_parse_strictly() {
        assert_eq!(format_amz_date(at("20240229T235959Z")), "20240229T235959Z");
        for bad in [
            "20260229T000000Z",
            "20260301T240000Z",
            "2026-03-01T00:00Z",
            "20260301T000000",
            "+2026301T000000Z",
            "20260301t000000Z",
            "２０26301T00000Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }
}
