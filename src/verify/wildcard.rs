//! Wildcard matching of policy values: `*` (any run) and `?` (one character), in Action and
//! Resource names and the `…Like` and ARN condition operators; ARNs component by component.
//! A pattern is either text, whose `*` and `?` are wildcards, or [`Unit`]s: a value whose
//! policy variables were substituted, where a `*` a variable put there is a literal.

/// What one element of a pattern stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wild<T> {
    /// `*`: any run.
    Run,
    /// `?`: one element.
    One,
    Literal(T),
}

/// One unit of a substituted policy value: a character to match literally, or a wildcard
/// the policy itself wrote.
pub type Unit = Wild<char>;

/// A character as the policy wrote it: `*` and `?` are wildcards.
pub fn written(c: char) -> Unit {
    match c {
        '*' => Wild::Run,
        '?' => Wild::One,
        other => Wild::Literal(other),
    }
}

/// The units as text, wildcards written back as `*` and `?` (for the operators that
/// compare literally).
pub fn text(units: &[Unit]) -> String {
    units
        .iter()
        .map(|u| match u {
            Wild::Literal(c) => *c,
            Wild::Run => '*',
            Wild::One => '?',
        })
        .collect()
}

/// `pattern`, as the policy wrote it, matches `text`. ASCII input (every real policy) is
/// matched byte by byte without allocating.
pub fn glob(pattern: &str, text: &str, ignore_case: bool) -> bool {
    // Straight to the anchored match: it stops at the first literal that differs, where a
    // scan for wildcards first would read the whole pattern on every call (verification
    // calls this for every action and resource of every statement, for every request).
    if pattern.is_ascii() && text.is_ascii() {
        let same = |p: u8, t: u8| p == t || ignore_case && p.eq_ignore_ascii_case(&t);
        return matches(pattern.as_bytes(), text.as_bytes(), wild(b'*', b'?'), same);
    }
    if !pattern.contains(['*', '?']) {
        return if ignore_case {
            pattern.to_lowercase() == text.to_lowercase()
        } else {
            pattern == text
        };
    }
    let fold = |s: &str| -> Vec<char> {
        if ignore_case {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        }
    };
    matches(&fold(pattern), &fold(text), wild('*', '?'), |p, t| p == t)
}

/// Substituted `units` match `text` (case-sensitively): the units say which are wildcards.
pub fn glob_units(units: &[Unit], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    matches(units, &text, |u| u, |p, t| p == t)
}

/// ARN matching: each of the six colon-separated components on its own, with wildcards,
/// case-sensitively.
pub fn arn_like(pattern: &str, arn: &str) -> bool {
    components_match(pattern.splitn(6, ':').collect(), arn, |p, a| {
        glob(p, a, false)
    })
}

/// [`arn_like`] for substituted units: only a colon the units hold literally separates.
pub fn arn_like_units(units: &[Unit], arn: &str) -> bool {
    components_match(
        units.splitn(6, |u| *u == Wild::Literal(':')).collect(),
        arn,
        glob_units,
    )
}

/// The six components of a pattern each match the ARN's by `component`.
fn components_match<P: ?Sized>(
    pattern: Vec<&P>,
    arn: &str,
    component: impl Fn(&P, &str) -> bool,
) -> bool {
    let arn: Vec<&str> = arn.splitn(6, ':').collect();
    pattern.len() == 6 && arn.len() == 6 && pattern.iter().zip(&arn).all(|(p, a)| component(p, a))
}

/// Wildcard matching over any elements: `class` says what each pattern element stands for,
/// `same` whether a literal matches a text element. Iterative: on a mismatch it resumes
/// after the last `*` (no backtracking blow-up).
fn matches<P: Copy, T: Copy>(
    p: &[P],
    t: &[T],
    class: impl Fn(P) -> Wild<T>,
    same: impl Fn(T, T) -> bool,
) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi).copied().map(&class) {
            Some(Wild::Run) => {
                resume = Some((pi, ti));
                pi += 1;
            }
            Some(Wild::One) => {
                pi += 1;
                ti += 1;
            }
            Some(Wild::Literal(c)) if same(c, t[ti]) => {
                pi += 1;
                ti += 1;
            }
            _ => match resume {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    resume = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| matches!(class(c), Wild::Run))
}

/// The wildcards of a policy string: `*` and `?` in whatever element type it is read as.
fn wild<T: Copy + PartialEq>(star: T, any: T) -> impl Fn(T) -> Wild<T> {
    move |c| {
        if c == star {
            Wild::Run
        } else if c == any {
            Wild::One
        } else {
            Wild::Literal(c)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_edge_cases() {
        assert!(glob("*", "", false) && glob("", "", false) && !glob("", "a", false));
        assert!(glob("kms:*", "KMS:Decrypt", true) && !glob("kms:*", "KMS:Decrypt", false));
        assert!(glob(
            "kms:Generate*Plaintext",
            "kms:GenerateDataKeyWithoutPlaintext",
            false
        ));
        assert!(!glob("a*a*a*a*b", &"a".repeat(200), false));
        assert!(glob("ÄBC*", "äbcd", true) && !glob("ÄBC*", "äbcd", false));
        assert!(
            glob("kms:Décrypt", "KMS:DÉCRYPT", true) && !glob("kms:Décrypt", "kms:Decrypt", true)
        );
    }

    #[test]
    fn units_say_which_are_wildcards() {
        // `a` then a literal `*`, then a wildcard run.
        let units = [Wild::Literal('a'), Wild::Literal('*'), Wild::Run];
        assert!(glob_units(&units, "a*xyz") && !glob_units(&units, "abxyz"));
        assert_eq!(text(&units), "a**");
        assert_eq!(
            "a*?".chars().map(written).collect::<Vec<_>>(),
            [Wild::Literal('a'), Wild::Run, Wild::One]
        );
    }

    #[test]
    fn arn_components_match_separately() {
        assert!(arn_like(
            "arn:aws:iam::*:role/x",
            "arn:aws:iam::111122223333:role/x"
        ));
        // A `*` does not run across a colon into the next component.
        assert!(!arn_like("arn:aws:*", "arn:aws:iam::111122223333:role/x"));
        assert!(!arn_like("arn:aws:iam", "arn:aws:iam"));
        let units: Vec<Unit> = "arn:aws:iam::1:role/*".chars().map(written).collect();
        assert!(arn_like_units(&units, "arn:aws:iam::1:role/x"));
        assert!(!arn_like_units(&units, "arn:aws:iam::2:role/x"));
    }
}
