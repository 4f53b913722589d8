//! Condition operators and the matching they do, per the IAM condition-operator rules:
//! absent keys, `…IfExists`, `ForAllValues:`/`ForAnyValue:`, wildcards, ARN components.

use std::net::IpAddr;

use super::wildcard::{self, Unit};

/// How a condition compares values, without its qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    ArnEquals,
    ArnLike,
    ArnNotEquals,
    ArnNotLike,
    NumericEquals,
    NumericNotEquals,
    NumericLessThan,
    NumericLessThanEquals,
    NumericGreaterThan,
    NumericGreaterThanEquals,
    DateEquals,
    DateNotEquals,
    DateLessThan,
    DateLessThanEquals,
    DateGreaterThan,
    DateGreaterThanEquals,
    Bool,
    BinaryEquals,
    IpAddress,
    NotIpAddress,
    Null,
}

const BASES: &[(&str, Base)] = &[
    ("StringEquals", Base::StringEquals),
    ("StringNotEquals", Base::StringNotEquals),
    ("StringEqualsIgnoreCase", Base::StringEqualsIgnoreCase),
    ("StringNotEqualsIgnoreCase", Base::StringNotEqualsIgnoreCase),
    ("StringLike", Base::StringLike),
    ("StringNotLike", Base::StringNotLike),
    ("ArnEquals", Base::ArnEquals),
    ("ArnLike", Base::ArnLike),
    ("ArnNotEquals", Base::ArnNotEquals),
    ("ArnNotLike", Base::ArnNotLike),
    ("NumericEquals", Base::NumericEquals),
    ("NumericNotEquals", Base::NumericNotEquals),
    ("NumericLessThan", Base::NumericLessThan),
    ("NumericLessThanEquals", Base::NumericLessThanEquals),
    ("NumericGreaterThan", Base::NumericGreaterThan),
    ("NumericGreaterThanEquals", Base::NumericGreaterThanEquals),
    ("DateEquals", Base::DateEquals),
    ("DateNotEquals", Base::DateNotEquals),
    ("DateLessThan", Base::DateLessThan),
    ("DateLessThanEquals", Base::DateLessThanEquals),
    ("DateGreaterThan", Base::DateGreaterThan),
    ("DateGreaterThanEquals", Base::DateGreaterThanEquals),
    ("Bool", Base::Bool),
    ("BinaryEquals", Base::BinaryEquals),
    ("IpAddress", Base::IpAddress),
    ("NotIpAddress", Base::NotIpAddress),
    ("Null", Base::Null),
];

/// `ForAllValues:` or `ForAnyValue:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetQualifier {
    ForAllValues,
    ForAnyValue,
}

/// A parsed condition operator such as `ForAllValues:StringEqualsIfExists`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operator {
    pub set: Option<SetQualifier>,
    pub base: Base,
    pub if_exists: bool,
}

impl Operator {
    /// Parses an operator name; `None` when IAM has no such operator. Operator names are
    /// case-sensitive. `NullIfExists` is not an operator.
    pub fn parse(name: &str) -> Option<Operator> {
        let (set, rest) = if let Some(rest) = name.strip_prefix("ForAllValues:") {
            (Some(SetQualifier::ForAllValues), rest)
        } else if let Some(rest) = name.strip_prefix("ForAnyValue:") {
            (Some(SetQualifier::ForAnyValue), rest)
        } else {
            (None, name)
        };
        let (rest, if_exists) = match rest.strip_suffix("IfExists") {
            Some(base) => (base, true),
            None => (rest, false),
        };
        let base = BASES.iter().find(|(n, _)| *n == rest).map(|(_, b)| *b)?;
        if base == Base::Null && (if_exists || set.is_some()) {
            return None;
        }
        Some(Operator {
            set,
            base,
            if_exists,
        })
    }

    /// Whether the operator matches when the request value matches *none* of the policy
    /// values (the `Not` operators).
    fn negated(&self) -> bool {
        matches!(
            self.base,
            Base::StringNotEquals
                | Base::StringNotEqualsIgnoreCase
                | Base::StringNotLike
                | Base::ArnNotEquals
                | Base::ArnNotLike
                | Base::NumericNotEquals
                | Base::DateNotEquals
                | Base::NotIpAddress
        )
    }

    /// The operator as written (operator names are case-sensitive, so there is one
    /// spelling): `ForAllValues:StringEqualsIfExists`.
    pub fn name(&self) -> String {
        let set = match self.set {
            Some(SetQualifier::ForAllValues) => "ForAllValues:",
            Some(SetQualifier::ForAnyValue) => "ForAnyValue:",
            None => "",
        };
        let base = BASES
            .iter()
            .find(|(_, b)| *b == self.base)
            .map_or("", |(name, _)| name);
        let if_exists = if self.if_exists { "IfExists" } else { "" };
        format!("{set}{base}{if_exists}")
    }

    /// Whether IAM substitutes policy variables in the operator's values: the string and ARN
    /// operators only.
    pub fn substitutes_variables(&self) -> bool {
        use Base::*;
        matches!(
            self.base,
            StringEquals
                | StringNotEquals
                | StringEqualsIgnoreCase
                | StringNotEqualsIgnoreCase
                | StringLike
                | StringNotLike
                | ArnEquals
                | ArnLike
                | ArnNotEquals
                | ArnNotLike
        )
    }

    /// Whether the condition holds for a request whose context has `request` for the key
    /// (`None`: the key is absent).
    pub fn holds(&self, policy_values: &[String], request: Option<&[String]>) -> bool {
        if self.base == Base::Null {
            // "true": the key must be absent; "false": present. Several values: any.
            let absent = request.is_none();
            return policy_values
                .iter()
                .any(|v| v.eq_ignore_ascii_case("true") == absent);
        }
        self.holds_by(request, |value| {
            policy_values.iter().any(|p| self.matches(value, p))
        })
    }

    /// [`Operator::holds`] for values whose policy variables were substituted; `None` is a
    /// value whose variable has no value, which matches nothing.
    pub fn holds_substituted(
        &self,
        policy_values: &[Option<Vec<Unit>>],
        request: Option<&[String]>,
    ) -> bool {
        self.holds_by(request, |value| {
            policy_values
                .iter()
                .flatten()
                .any(|p| self.matches_units(value, p))
        })
    }

    /// The set logic around `hit`, which says whether one request value matches one of the
    /// policy values in the positive sense.
    fn holds_by(&self, request: Option<&[String]>, hit: impl Fn(&String) -> bool) -> bool {
        // For the set operators a key that resolves to empty strings is a null data set.
        let request =
            request.filter(|values| self.set.is_none() || values.iter().any(|v| !v.is_empty()));
        let request = match request {
            Some(values) if !values.is_empty() => values,
            // An absent key (or, for the set operators, an empty set).
            _ => {
                return self.if_exists
                    || match self.set {
                        Some(SetQualifier::ForAllValues) => true,
                        Some(SetQualifier::ForAnyValue) => false,
                        None => self.negated(),
                    };
            }
        };
        let hits = hit;
        match (self.set, self.negated()) {
            (Some(SetQualifier::ForAllValues), false) => request.iter().all(hits),
            (Some(SetQualifier::ForAllValues), true) => request.iter().all(|v| !hits(v)),
            (Some(SetQualifier::ForAnyValue), false) => request.iter().any(hits),
            (Some(SetQualifier::ForAnyValue), true) => request.iter().any(|v| !hits(v)),
            (None, false) => request.iter().any(hits),
            (None, true) => !request.iter().any(hits),
        }
    }

    /// The positive comparison of one request value with one substituted policy value (a
    /// string or ARN operator).
    fn matches_units(&self, request: &str, policy: &[Unit]) -> bool {
        use Base::*;
        match self.base {
            StringLike | StringNotLike => wildcard::glob_units(policy, request),
            ArnEquals | ArnLike | ArnNotEquals | ArnNotLike => {
                wildcard::arn_like_units(policy, request)
            }
            _ => self.matches(request, &wildcard::text(policy)),
        }
    }

    /// The positive comparison of one request value with one policy value.
    fn matches(&self, request: &str, policy: &str) -> bool {
        use Base::*;
        match self.base {
            StringEquals | StringNotEquals | BinaryEquals => request == policy,
            StringEqualsIgnoreCase | StringNotEqualsIgnoreCase => {
                request.to_lowercase() == policy.to_lowercase()
            }
            StringLike | StringNotLike => wildcard::glob(policy, request, false),
            ArnEquals | ArnLike | ArnNotEquals | ArnNotLike => wildcard::arn_like(policy, request),
            Bool => request.eq_ignore_ascii_case(policy),
            NumericEquals | NumericNotEquals => {
                compare(number(request), number(policy), |o| o.is_eq())
            }
            NumericLessThan => compare(number(request), number(policy), |o| o.is_lt()),
            NumericLessThanEquals => compare(number(request), number(policy), |o| o.is_le()),
            NumericGreaterThan => compare(number(request), number(policy), |o| o.is_gt()),
            NumericGreaterThanEquals => compare(number(request), number(policy), |o| o.is_ge()),
            DateEquals | DateNotEquals => compare(date(request), date(policy), |o| o.is_eq()),
            DateLessThan => compare(date(request), date(policy), |o| o.is_lt()),
            DateLessThanEquals => compare(date(request), date(policy), |o| o.is_le()),
            DateGreaterThan => compare(date(request), date(policy), |o| o.is_gt()),
            DateGreaterThanEquals => compare(date(request), date(policy), |o| o.is_ge()),
            IpAddress | NotIpAddress => in_cidr(request, policy),
            Null => false,
        }
    }
}

/// What a request value is compared as, which decides how the access summary splits it
/// into classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Strings and ARNs (equality, wildcards, `Bool`, `BinaryEquals`).
    Text,
    /// Numbers, or dates as epoch seconds.
    Order,
    /// IP addresses against CIDR blocks.
    Address,
    /// Only whether the key is present (`Null`).
    Presence,
}

impl Operator {
    pub fn family(&self) -> Family {
        use Base::*;
        match self.base {
            NumericEquals
            | NumericNotEquals
            | NumericLessThan
            | NumericLessThanEquals
            | NumericGreaterThan
            | NumericGreaterThanEquals
            | DateEquals
            | DateNotEquals
            | DateLessThan
            | DateLessThanEquals
            | DateGreaterThan
            | DateGreaterThanEquals => Family::Order,
            IpAddress | NotIpAddress => Family::Address,
            Null => Family::Presence,
            _ => Family::Text,
        }
    }

    /// A policy value of an [`Family::Order`] operator as the number it compares.
    pub fn order_value(&self, text: &str) -> Option<f64> {
        if matches!(
            self.base,
            Base::DateEquals
                | Base::DateNotEquals
                | Base::DateLessThan
                | Base::DateLessThanEquals
                | Base::DateGreaterThan
                | Base::DateGreaterThanEquals
        ) {
            date(text)
        } else {
            number(text)
        }
    }
}

fn number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Epoch seconds from an epoch number or an RFC 3339 date.
fn date(text: &str) -> Option<f64> {
    number(text).or_else(|| {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp() as f64)
    })
}

fn compare(a: Option<f64>, b: Option<f64>, test: impl Fn(std::cmp::Ordering) -> bool) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.partial_cmp(&b).is_some_and(test),
        _ => false,
    }
}

fn in_cidr(address: &str, cidr: &str) -> bool {
    let (network, bits) = cidr.split_once('/').unwrap_or((cidr, ""));
    let (Ok(address), Ok(network)) = (address.parse::<IpAddr>(), network.parse::<IpAddr>()) else {
        return false;
    };
    let (address, network, width) = match (address, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    let bits: u32 = if bits.is_empty() {
        width
    } else {
        bits.parse().unwrap_or(u32::MAX)
    };
    if bits > width {
        return false;
    }
    let shift = width - bits;
    shift >= 128 || (address >> shift) == (network >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str) -> Operator {
        Operator::parse(name).unwrap()
    }

    fn values(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_qualified_names_only() {
        assert_eq!(
            op("ForAllValues:StringEqualsIfExists"),
            Operator {
                set: Some(SetQualifier::ForAllValues),
                base: Base::StringEquals,
                if_exists: true
            }
        );
        for bad in [
            "StringEqual",
            "stringequals",
            "NullIfExists",
            "ForAllValues:Null",
            "ForEveryValue:StringEquals",
            "",
        ] {
            assert!(Operator::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names_are_the_spelling_parsed() {
        for name in [
            "ForAllValues:StringEqualsIfExists",
            "ForAnyValue:ArnNotLike",
            "Null",
            "BoolIfExists",
        ] {
            assert_eq!(op(name).name(), name);
        }
    }

    #[test]
    fn absent_keys() {
        let p = values(&["a"]);
        assert!(!op("StringEquals").holds(&p, None));
        assert!(op("StringNotEquals").holds(&p, None));
        assert!(op("StringEqualsIfExists").holds(&p, None));
        assert!(op("ForAllValues:StringEquals").holds(&p, None));
        assert!(op("ForAllValues:StringEquals").holds(&p, Some(&[])));
        assert!(!op("ForAnyValue:StringEquals").holds(&p, None));
        assert!(op("Null").holds(&values(&["true"]), None));
        assert!(!op("Null").holds(&values(&["false"]), None));
        assert!(op("Null").holds(&values(&["false"]), Some(&values(&["x"]))));
    }

    #[test]
    fn sets() {
        let allowed = values(&["Encrypt", "Decrypt"]);
        let all = op("ForAllValues:StringEquals");
        assert!(all.holds(&allowed, Some(&values(&["Decrypt"]))));
        assert!(!all.holds(&allowed, Some(&values(&["Decrypt", "CreateGrant"]))));
        let any = op("ForAnyValue:StringEquals");
        assert!(any.holds(&allowed, Some(&values(&["Decrypt", "CreateGrant"]))));
        assert!(!any.holds(&allowed, Some(&values(&["CreateGrant"]))));
        let none = op("ForAllValues:StringNotEquals");
        assert!(none.holds(&allowed, Some(&values(&["CreateGrant"]))));
        assert!(!none.holds(&allowed, Some(&values(&["CreateGrant", "Encrypt"]))));
        let some_other = op("ForAnyValue:StringNotEquals");
        assert!(some_other.holds(&allowed, Some(&values(&["CreateGrant", "Encrypt"]))));
        assert!(!some_other.holds(&allowed, Some(&values(&["Encrypt"]))));
    }

    #[test]
    fn values_per_operator() {
        let one = |name: &str, policy: &str, request: &str| {
            op(name).holds(&values(&[policy]), Some(&values(&[request])))
        };
        assert!(one("StringEquals", "abc", "abc") && !one("StringEquals", "abc", "ABC"));
        assert!(one("StringEqualsIgnoreCase", "abc", "ABC"));
        assert!(one("StringLike", "a*c?", "abbbcd") && !one("StringLike", "a*c?", "ABcd"));
        assert!(!one("StringNotLike", "a*", "abc") && one("StringNotLike", "a*", "bbc"));
        assert!(one(
            "ArnLike",
            "arn:aws:qdeveloper:*:111122223333:scans/*",
            "arn:aws:qdeveloper:us-east-1:111122223333:scans/x"
        ));
        assert!(!one(
            "ArnLike",
            "arn:aws:qdeveloper:*:111122223333:scans/*",
            "arn:aws:qdeveloper:us-east-1:444455556666:scans/x"
        ));
        assert!(!one(
            "ArnEquals",
            "arn:aws:iam::1:role/x",
            "arn:aws:iam::1:role/X"
        ));
        assert!(one("Bool", "true", "TRUE") && !one("Bool", "true", "false"));
        assert!(one("NumericLessThan", "10", "9.5") && !one("NumericLessThan", "10", "x"));
        assert!(one(
            "DateGreaterThan",
            "2020-01-01T00:00:00Z",
            "2021-01-01T00:00:00Z"
        ));
        assert!(
            one("IpAddress", "10.0.0.0/8", "10.1.2.3")
                && !one("IpAddress", "10.0.0.0/8", "11.1.2.3")
        );
        assert!(one("NotIpAddress", "10.0.0.0/8", "11.1.2.3"));
        // Several policy values: OR; under a negated operator: NOR.
        let two = values(&["a", "b"]);
        assert!(op("StringEquals").holds(&two, Some(&values(&["b"]))));
        assert!(!op("StringNotEquals").holds(&two, Some(&values(&["b"]))));
    }
}
