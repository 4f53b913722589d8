//! Policy variables, as IAM substitutes them in `"Version": "2012-10-17"` documents: in the
//! `Resource`/`NotResource` element and in the values of the string and ARN condition
//! operators. `${key}` takes the request's single value of `key` (names case-insensitive);
//! `${key, 'default'}` falls back to the default when the request has no single value for
//! it; `${*}`, `${?}` and `${$}` are a literal `*`, `?` and `$`. A variable without a value
//! makes the policy value match nothing: a positive operator does not match, a negated one
//! does, and a resource with it names no resource (IAM User Guide, "Policy variables with no
//! value").

use super::wildcard::{Unit, Wild, written};

/// Whether a value holds a variable (only then is it substituted).
pub fn has_variables(value: &str) -> bool {
    value.contains("${")
}

/// `value` with its variables replaced from the request (`lookup` gives the request's values
/// for a key); `None` when a variable has neither a single value nor a default.
pub fn substitute<'r>(
    value: &str,
    lookup: impl Fn(&str) -> Option<&'r [String]>,
) -> Option<Vec<Unit>> {
    let mut units = Vec::with_capacity(value.len());
    let mut rest = value;
    while let Some(c) = rest.chars().next() {
        if let Some(body_and_rest) = rest.strip_prefix("${")
            && let Some(end) = body_and_rest.find('}')
        {
            let body = &body_and_rest[..end];
            rest = &body_and_rest[end + 1..];
            match body {
                "*" => units.push(Wild::Literal('*')),
                "?" => units.push(Wild::Literal('?')),
                "$" => units.push(Wild::Literal('$')),
                _ => units.extend(resolve(body, &lookup)?.chars().map(Wild::Literal)),
            }
            continue;
        }
        units.push(written(c));
        rest = &rest[c.len_utf8()..];
    }
    Some(units)
}

/// A `Resource`/`NotResource` pattern with its variables replaced: IAM substitutes them in
/// the resource part of the ARN only (after the fifth colon); before it, `${` is text.
pub fn substitute_resource<'r>(
    pattern: &str,
    lookup: impl Fn(&str) -> Option<&'r [String]>,
) -> Option<Vec<Unit>> {
    let resource_start = pattern.match_indices(':').nth(4).map_or(0, |(i, _)| i + 1);
    let (head, resource) = pattern.split_at(resource_start);
    let mut units: Vec<Unit> = head.chars().map(written).collect();
    units.extend(substitute(resource, lookup)?);
    Some(units)
}

/// The value of one variable body (`aws:username` or `aws:username, 'default'`).
fn resolve<'r>(body: &str, lookup: &impl Fn(&str) -> Option<&'r [String]>) -> Option<String> {
    // The documented form separates the default with a comma and a space.
    let (name, default) = match body.split_once(", ") {
        Some((name, default)) => {
            let default = default.trim();
            let quoted = default.len() >= 2 && default.starts_with('\'') && default.ends_with('\'');
            (name, quoted.then(|| &default[1..default.len() - 1]))
        }
        None => (body, None),
    };
    match lookup(name.trim()) {
        // Only a single-valued key can stand for a variable.
        Some([one]) => Some(one.clone()),
        _ => default.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::wildcard::{arn_like_units, glob_units, text};

    fn context(key: &str) -> Option<&'static [String]> {
        static ACCOUNT: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["111122223333".to_owned()]);
        static MANY: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["a".to_owned(), "b".to_owned()]);
        if key.eq_ignore_ascii_case("aws:PrincipalAccount") {
            Some(ACCOUNT.as_slice())
        } else if key.eq_ignore_ascii_case("aws:CalledVia") {
            Some(MANY.as_slice())
        } else {
            None
        }
    }

    fn sub(value: &str) -> Option<String> {
        substitute(value, context).map(|u| text(&u))
    }

    #[test]
    fn substitutes_single_values_defaults_and_the_special_characters() {
        assert_eq!(
            sub("arn:aws:iam::${aws:PrincipalAccount}:role/*").as_deref(),
            Some("arn:aws:iam::111122223333:role/*")
        );
        assert_eq!(
            sub("${AWS:principalaccount}").as_deref(),
            Some("111122223333")
        );
        assert_eq!(sub("${aws:username, 'nobody'}").as_deref(), Some("nobody"));
        // A multi-valued key is no variable; its default stands in.
        assert_eq!(sub("${aws:CalledVia}"), None);
        assert_eq!(sub("${aws:CalledVia, 'x'}").as_deref(), Some("x"));
        assert_eq!(sub("${aws:username}"), None);
        assert_eq!(sub("a${*}b${?}c${$}").as_deref(), Some("a*b?c$"));
        // Not a variable: kept as written.
        assert_eq!(sub("${unterminated").as_deref(), Some("${unterminated"));
    }

    #[test]
    fn substituted_wildcards_are_literal() {
        let units = substitute("a${*}*", context).unwrap();
        assert!(glob_units(&units, "a*xyz"));
        assert!(!glob_units(&units, "abxyz"));
        let any = substitute("${?}?", context).unwrap();
        assert!(glob_units(&any, "?x") && !glob_units(&any, "xx"));
    }

    #[test]
    fn resources_substitute_after_the_fifth_colon_only() {
        let units = substitute_resource(
            "arn:aws:kms:${aws:PrincipalAccount}:111122223333:key/${aws:PrincipalAccount}",
            context,
        )
        .unwrap();
        assert_eq!(
            text(&units),
            "arn:aws:kms:${aws:PrincipalAccount}:111122223333:key/111122223333"
        );
        // No ARN: the whole pattern is the resource part.
        assert_eq!(
            substitute_resource("${aws:PrincipalAccount}", context).map(|u| text(&u)),
            Some("111122223333".to_owned())
        );
    }

    #[test]
    fn arn_components_match_separately() {
        let units = substitute("arn:aws:iam::${aws:PrincipalAccount}:role/*", context).unwrap();
        assert!(arn_like_units(&units, "arn:aws:iam::111122223333:role/x"));
        assert!(!arn_like_units(&units, "arn:aws:iam::444455556666:role/x"));
    }
}
