//! Rendering a profile's statements into a policy document, merged into an existing one
//! when given: statements with the same Sid are replaced in place, others kept in order,
//! and the output is canonical JSON that `verify` accepts.

use serde_json::{Map, Value};

use super::{
    json,
    policy::{DocumentKind, MAX_POLICY_BYTES, names_account},
    profile::{Params, Profile, account_delegation_statement},
};
use crate::domain::{is_account_id, is_partition, is_region_name};

/// Why a policy could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("`{value}` is not an AWS Region name (for example us-east-1)")]
    Region { value: String },
    #[error("`{value}` is not a 12-digit AWS account id")]
    Account { value: String },
    #[error(
        "`{value}` is not the ARN of an IAM role or user in account {account} (arn:aws:iam::<account-id>:role/<name>)"
    )]
    Principal { value: String, account: String },
    #[error("cannot merge into the existing policy: {0}")]
    Existing(String),
    #[error(
        "the merged policy would be {0} bytes; key policies are limited to {MAX_POLICY_BYTES} bytes"
    )]
    TooLarge(usize),
}

fn is_principal_arn(arn: &str, account_id: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if is_partition(partition)
            && *account == account_id
            && (resource.strip_prefix("role/").or_else(|| resource.strip_prefix("user/")))
                .is_some_and(|name| !name.is_empty() && !name.chars().any(char::is_whitespace)))
}

/// Checks the render parameters the way the documentation's placeholders need them.
pub fn check_params(
    region: &str,
    account_id: &str,
    principal_arn: &str,
) -> Result<(), RenderError> {
    if !is_region_name(region) {
        return Err(RenderError::Region {
            value: region.to_owned(),
        });
    }
    if !is_account_id(account_id) {
        return Err(RenderError::Account {
            value: account_id.to_owned(),
        });
    }
    if !is_principal_arn(principal_arn, account_id) {
        return Err(RenderError::Principal {
            value: principal_arn.to_owned(),
            account: account_id.to_owned(),
        });
    }
    Ok(())
}

/// Renders `profile` for the parameters; merged into `existing` when given.
pub fn render(
    profile: Profile,
    region: &str,
    account_id: &str,
    principal_arn: &str,
    existing: Option<&str>,
) -> Result<String, RenderError> {
    check_params(region, account_id, principal_arn)?;
    let params = Params {
        region,
        account_id,
        principal_arn,
        key_arn: "",
    };
    let wanted = profile.requirements(&params).statements;
    let mut document = match existing {
        Some(text) => json::parse_unique(text).map_err(|e| RenderError::Existing(e.to_string()))?,
        None => Value::Object(Map::new()),
    };
    let Value::Object(root) = &mut document else {
        return Err(RenderError::Existing(
            "the policy is not a JSON object".into(),
        ));
    };
    // shift_remove: keep the order of the other elements (remove would swap the last in).
    let mut statements = match root.shift_remove("Statement") {
        None => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(one @ Value::Object(_)) => vec![one],
        Some(_) => {
            return Err(RenderError::Existing(
                "Statement is neither an object nor an array".into(),
            ));
        }
    };
    let sid = |statement: &Value| {
        statement
            .get("Sid")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    for statement in wanted {
        let wanted_sid = sid(&statement);
        match statements.iter_mut().find(|s| sid(s) == wanted_sid) {
            Some(slot) => *slot = statement,
            None => statements.push(statement),
        }
    }
    // Checked after the merge: a statement the merge replaced may have been the delegation.
    if profile.document_kind() == DocumentKind::KeyPolicy
        && !delegates_to_account(&statements, account_id)
    {
        let delegation = account_delegation_statement(region, account_id);
        let delegation_sid = sid(&delegation);
        match statements.iter_mut().find(|s| sid(s) == delegation_sid) {
            // A statement under the delegation's Sid that does not delegate: replaced, so the
            // Sids stay unique.
            Some(slot) => *slot = delegation,
            None => statements.insert(0, delegation),
        }
    }
    // Version first, then whatever else the document had, then the statements.
    let mut ordered = Map::new();
    ordered.insert(
        "Version".into(),
        root.shift_remove("Version")
            .unwrap_or_else(|| "2012-10-17".into()),
    );
    ordered.append(root);
    ordered.insert("Statement".into(), Value::Array(statements));
    let text = serde_json::to_string_pretty(&Value::Object(ordered))
        .map_err(|e| RenderError::Existing(e.to_string()))?;
    if text.len() > MAX_POLICY_BYTES {
        return Err(RenderError::TooLarge(text.len()));
    }
    Ok(text)
}

/// Whether some Allow statement already names the account as principal.
fn delegates_to_account(statements: &[Value], account_id: &str) -> bool {
    statements.iter().any(|s| {
        let allow = s.get("Effect").and_then(Value::as_str) == Some("Allow");
        let names = match s.get("Principal").and_then(|p| p.get("AWS")) {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        allow && names.iter().any(|n| names_account(n, account_id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "111122223333";
    const ROLE: &str = "arn:aws:iam::111122223333:role/Scanner";

    fn sids_after_merge(principal: &str) -> Vec<String> {
        let existing = serde_json::json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "Admins", "Effect": "Allow", "Principal": {"AWS": principal}, "Action": "kms:*", "Resource": "*"}
        ]})
        .to_string();
        let text = render(
            Profile::AmazonQLambda,
            "us-east-1",
            ACCOUNT,
            ROLE,
            Some(&existing),
        )
        .unwrap();
        let merged: Value = serde_json::from_str(&text).unwrap();
        merged["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["Sid"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn the_delegation_is_added_unless_a_statement_names_the_account() {
        for delegating in [
            ACCOUNT,
            "arn:aws:iam::111122223333:root",
            "arn:aws-cn:iam::111122223333:root",
        ] {
            assert_eq!(sids_after_merge(delegating)[0], "Admins", "{delegating}");
        }
        // Look-alikes the old suffix match took for the account.
        for other in [
            "xarn:aws:iam::111122223333:root",
            "arn:aws-iso:iam::111122223333:root",
        ] {
            assert_eq!(
                sids_after_merge(other)[..2],
                ["Enable IAM User Permissions", "Admins"],
                "{other}"
            );
        }
    }

    #[test]
    fn a_duplicate_member_in_the_existing_policy_is_refused_with_its_position() {
        let existing = "{\"Version\": \"2012-10-17\",\n \"Statement\": [],\n \"Statement\": []}";
        let err = render(
            Profile::AmazonQLambda,
            "us-east-1",
            ACCOUNT,
            ROLE,
            Some(existing),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot merge into the existing policy: duplicate member `Statement` at line 3, column 2 (first at line 2, column 2)"
        );
    }
}
