//! The classes a request value falls into, as the policies' own values split it.
//!
//! Each value a policy compares a request value with is a predicate on strings (equal to,
//! equal ignoring case, like a wildcard pattern, like an ARN pattern): a small automaton.
//! Two strings that drive every automaton to the same states are decided alike by every
//! statement, so a breadth-first search over the product of the automata, reading only the
//! characters the patterns mention plus one stand-in for all others (which no pattern can
//! tell apart), reaches every combination of outcomes there is, each by a shortest string:
//! one representative per class. The search is over a [`Shape`] (any string, or an IAM
//! principal's ARN with its 12-digit account) so representatives are values a request can
//! carry. Numbers, dates and IP addresses compare by order, so their classes are the
//! intervals between the policies' values ([`numeric_representatives`],
//! [`address_representatives`]).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
};

/// The bound on the states one search visits; past it the caller reports the analysis
/// incomplete.
pub const MAX_STATES: usize = 50_000;

/// What one position of a pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Element {
    /// This character.
    Literal(char),
    /// This character ignoring ASCII case (stored lower-case).
    Folded(char),
    /// One character; a colon only when `colon`.
    One { colon: bool },
    /// Any run of characters; colons only when `colon`.
    Run { colon: bool },
}

/// A predicate on a string, as a pattern automaton.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    elements: Vec<Element>,
    /// Matches nothing (an ARN pattern without six components).
    never: bool,
}

impl Matcher {
    /// `StringEquals`, `BinaryEquals`, a principal's ARN.
    pub fn equals(value: &str) -> Matcher {
        Matcher {
            elements: value.chars().map(Element::Literal).collect(),
            never: false,
        }
    }

    /// `StringEqualsIgnoreCase`, `Bool`; `None` when the value is not ASCII (IAM lower-cases
    /// Unicode, which folds some characters into two).
    pub fn equals_ignoring_case(value: &str) -> Option<Matcher> {
        value.is_ascii().then(|| Matcher {
            elements: value
                .chars()
                .map(|c| Element::Folded(c.to_ascii_lowercase()))
                .collect(),
            never: false,
        })
    }

    /// `StringLike`: `*` any run, `?` one character.
    pub fn like(pattern: &str) -> Matcher {
        Matcher {
            elements: pattern.chars().map(|c| wild(c, true)).collect(),
            never: false,
        }
    }

    /// `ArnLike` and `ArnEquals`: six colon-separated components, each matched on its own
    /// (the last may hold colons), as [`super::wildcard::arn_like`] does.
    pub fn arn(pattern: &str) -> Matcher {
        let components: Vec<&str> = pattern.splitn(6, ':').collect();
        if components.len() != 6 {
            return Matcher {
                elements: Vec::new(),
                never: true,
            };
        }
        let mut elements = Vec::new();
        for (i, component) in components.iter().enumerate() {
            if i > 0 {
                elements.push(Element::Literal(':'));
            }
            let last = i == 5;
            elements.extend(component.chars().map(|c| wild(c, last)));
        }
        Matcher {
            elements,
            never: false,
        }
    }

    /// The value, when the predicate is plain equality to it.
    fn literal(&self) -> Option<impl Iterator<Item = char> + '_> {
        (!self.never
            && self
                .elements
                .iter()
                .all(|e| matches!(e, Element::Literal(_))))
        .then(|| {
            self.elements.iter().filter_map(|e| match e {
                Element::Literal(c) => Some(*c),
                _ => None,
            })
        })
    }

    fn start(&self) -> Vec<u64> {
        let mut set = vec![0; self.elements.len() / 64 + 1];
        if !self.never {
            set[0] = 1;
            self.close(&mut set);
        }
        set
    }

    /// Adds the positions after each run the set holds (a run may match nothing).
    fn close(&self, set: &mut [u64]) {
        for (position, element) in self.elements.iter().enumerate() {
            if has(set, position) && matches!(element, Element::Run { .. }) {
                put(set, position + 1);
            }
        }
    }

    fn step(&self, set: &[u64], c: char) -> Vec<u64> {
        let mut next = vec![0; set.len()];
        for (position, element) in self.elements.iter().enumerate() {
            if !has(set, position) {
                continue;
            }
            match *element {
                Element::Literal(l) if l == c => put(&mut next, position + 1),
                Element::Folded(l) if l == c.to_ascii_lowercase() => put(&mut next, position + 1),
                Element::One { colon } if colon || c != ':' => put(&mut next, position + 1),
                Element::Run { colon } if colon || c != ':' => put(&mut next, position),
                _ => {}
            }
        }
        self.close(&mut next);
        next
    }

    fn accepts(&self, set: &[u64]) -> bool {
        !self.never && has(set, self.elements.len())
    }

    /// The characters the pattern names (both cases where it ignores case).
    fn characters(&self, into: &mut HashSet<char>) {
        for element in &self.elements {
            match *element {
                Element::Literal(c) => {
                    into.insert(c);
                }
                Element::Folded(c) => {
                    into.insert(c);
                    into.insert(c.to_ascii_uppercase());
                }
                Element::One { .. } | Element::Run { .. } => {}
            }
        }
    }
}

fn wild(c: char, colon: bool) -> Element {
    match c {
        '*' => Element::Run { colon },
        '?' => Element::One { colon },
        other => Element::Literal(other),
    }
}

fn has(set: &[u64], position: usize) -> bool {
    set.get(position / 64)
        .is_some_and(|word| word & (1 << (position % 64)) != 0)
}

fn put(set: &mut [u64], position: usize) {
    if let Some(word) = set.get_mut(position / 64) {
        *word |= 1 << (position % 64);
    }
}

/// The plain values of one scope's predicates, as a trie.
struct Trie {
    scope: Scope,
    children: HashMap<(usize, char), usize>,
    /// For each node, the predicates whose value ends there.
    ending: Vec<Vec<usize>>,
}

impl Trie {
    fn new(predicates: &[(Scope, Matcher)], scope: Scope) -> Trie {
        let mut trie = Trie {
            scope,
            children: HashMap::new(),
            ending: vec![Vec::new()],
        };
        for (i, (reader, matcher)) in predicates.iter().enumerate() {
            let Some(value) = matcher.literal().filter(|_| *reader == scope) else {
                continue;
            };
            let mut node = 0;
            for c in value {
                let next = trie.ending.len();
                node = *trie.children.entry((node, c)).or_insert(next);
                if node == next {
                    trie.ending.push(Vec::new());
                }
            }
            trie.ending[node].push(i);
        }
        trie
    }

    fn step(&self, node: usize, c: char) -> Option<usize> {
        self.children.get(&(node, c)).copied()
    }
}

/// Which part of a value a predicate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole value.
    Whole,
    /// Only the account of a principal ARN ([`Shape::PrincipalArn`]).
    Account,
}

/// The values a search may produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Any string.
    Any,
    /// A 12-digit account id (`aws:SourceAccount`: a request carries no other).
    AccountId,
    /// `arn:<partition>:iam::<12 digits>:role/<name>` or `…:user/<name>`.
    PrincipalArn { partition: String },
}

/// One part of a shape.
#[derive(Debug, Clone)]
enum Part {
    Fixed(String),
    Choice(Vec<String>),
    /// `min` or more characters from `alphabet` (`max` at most), read by `scope`.
    Free {
        alphabet: Vec<char>,
        min: usize,
        max: Option<usize>,
        scope: Scope,
    },
}

/// The characters IAM allows in a role or user name (and its path).
fn is_name_character(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c)
}

/// `known` plus one character of `candidates` that is not in it (every other character
/// of `candidates` behaves as that one does).
fn with_stand_in(mut known: Vec<char>, candidates: impl Iterator<Item = char>) -> Vec<char> {
    known.sort_unstable();
    known.dedup();
    let mut candidates = candidates;
    if let Some(stand_in) = candidates.find(|c| !known.contains(c)) {
        known.push(stand_in);
    }
    known
}

impl Shape {
    fn parts(&self, characters: &HashSet<char>) -> Vec<Part> {
        match self {
            Shape::Any => {
                let known: Vec<char> = characters.iter().copied().collect();
                let stand_ins = ('a'..='z')
                    .chain('A'..='Z')
                    .chain('0'..='9')
                    .chain(['~', '#']);
                vec![Part::Free {
                    alphabet: with_stand_in(known, stand_ins),
                    min: 0,
                    max: None,
                    scope: Scope::Whole,
                }]
            }
            Shape::AccountId => {
                let digits: Vec<char> = characters
                    .iter()
                    .copied()
                    .filter(char::is_ascii_digit)
                    .collect();
                vec![Part::Free {
                    alphabet: with_stand_in(digits, '0'..='9'),
                    min: 12,
                    max: Some(12),
                    scope: Scope::Whole,
                }]
            }
            Shape::PrincipalArn { partition } => {
                let digits: Vec<char> = characters
                    .iter()
                    .copied()
                    .filter(char::is_ascii_digit)
                    .collect();
                let names: Vec<char> = characters
                    .iter()
                    .copied()
                    .filter(|c| is_name_character(*c))
                    .collect();
                vec![
                    Part::Fixed(format!("arn:{partition}:iam::")),
                    Part::Free {
                        alphabet: with_stand_in(digits, '0'..='9'),
                        min: 12,
                        max: Some(12),
                        scope: Scope::Account,
                    },
                    Part::Choice(vec![":role/".to_owned(), ":user/".to_owned()]),
                    // A path (which may hold `/`), then a name that does not end in one.
                    Part::Free {
                        alphabet: with_stand_in(names.clone(), ('a'..='z').chain('0'..='9')),
                        min: 0,
                        max: None,
                        scope: Scope::Whole,
                    },
                    Part::Free {
                        alphabet: with_stand_in(
                            names.into_iter().filter(|c| *c != '/').collect(),
                            ('a'..='z').chain('0'..='9'),
                        ),
                        min: 1,
                        max: None,
                        scope: Scope::Whole,
                    },
                ]
            }
        }
    }
}

/// The search went past [`MAX_STATES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// One representative per class: a value of `shape`, and which predicates it satisfies (in
/// the order given). Representatives are shortest values, found in a stable order.
pub fn representatives(
    shape: &Shape,
    predicates: &[(Scope, Matcher)],
) -> Result<Vec<(String, Vec<bool>)>, TooLarge> {
    let mut characters = HashSet::new();
    for (_, matcher) in predicates {
        matcher.characters(&mut characters);
    }
    let parts = shape.parts(&characters);

    // Plain values (a principal's ARN, StringEquals) are most predicates, often hundreds:
    // each scope's are one trie, stepped once per character, rather than an automaton each.
    let tries = [
        Trie::new(predicates, Scope::Whole),
        Trie::new(predicates, Scope::Account),
    ];
    let general: Vec<usize> = (0..predicates.len())
        .filter(|&i| predicates[i].1.literal().is_none())
        .collect();

    #[derive(Clone, PartialEq, Eq, Hash)]
    struct State {
        part: usize,
        /// Characters read in the current part, capped where the count no longer matters.
        count: usize,
        /// Where each scope's trie is (`None`: no plain value starts so).
        nodes: [Option<usize>; 2],
        sets: Vec<Vec<u64>>,
    }
    let start = State {
        part: 0,
        count: 0,
        nodes: [Some(0), Some(0)],
        sets: general.iter().map(|&i| predicates[i].1.start()).collect(),
    };
    let mut seen: HashSet<State> = HashSet::new();
    let mut queue: VecDeque<(State, String)> = VecDeque::new();
    let mut found: Vec<(String, Vec<bool>)> = Vec::new();
    let mut outcomes: HashMap<Vec<bool>, ()> = HashMap::new();
    seen.insert(start.clone());
    queue.push_back((start, String::new()));

    let read = |state: &State, text: &str, scope: Scope| -> State {
        let mut sets = state.sets.clone();
        for (&i, set) in general.iter().zip(sets.iter_mut()) {
            let (reader, matcher) = &predicates[i];
            if *reader == Scope::Whole || *reader == scope {
                for c in text.chars() {
                    *set = matcher.step(set, c);
                }
            }
        }
        let mut nodes = state.nodes;
        for (trie, node) in tries.iter().zip(nodes.iter_mut()) {
            if trie.scope == Scope::Whole || trie.scope == scope {
                for c in text.chars() {
                    *node = node.and_then(|n| trie.step(n, c));
                }
            }
        }
        State {
            part: state.part,
            count: state.count,
            nodes,
            sets,
        }
    };
    let outcome_of = |state: &State| -> Vec<bool> {
        let mut outcome = vec![false; predicates.len()];
        for (&i, set) in general.iter().zip(&state.sets) {
            outcome[i] = predicates[i].1.accepts(set);
        }
        for (trie, node) in tries.iter().zip(state.nodes) {
            for &i in node.map_or(&[][..], |n| trie.ending[n].as_slice()) {
                outcome[i] = true;
            }
        }
        outcome
    };

    while let Some((state, text)) = queue.pop_front() {
        let mut next: Vec<(State, String)> = Vec::new();
        match parts.get(state.part) {
            None => {
                let outcome = outcome_of(&state);
                if outcomes.insert(outcome.clone(), ()).is_none() {
                    let text = readable(shape, predicates, &text, &outcome).unwrap_or(text);
                    found.push((text, outcome));
                }
                continue;
            }
            Some(Part::Fixed(fixed)) => {
                let mut moved = read(&state, fixed, Scope::Whole);
                moved.part += 1;
                moved.count = 0;
                next.push((moved, format!("{text}{fixed}")));
            }
            Some(Part::Choice(options)) => {
                for option in options {
                    let mut moved = read(&state, option, Scope::Whole);
                    moved.part += 1;
                    moved.count = 0;
                    next.push((moved, format!("{text}{option}")));
                }
            }
            Some(Part::Free {
                alphabet,
                min,
                max,
                scope,
            }) => {
                if state.count >= *min {
                    let mut moved = state.clone();
                    moved.part += 1;
                    moved.count = 0;
                    next.push((moved, text.clone()));
                }
                if max.is_none_or(|max| state.count < max) {
                    for &c in alphabet {
                        let mut moved = read(&state, c.encode_utf8(&mut [0; 4]), *scope);
                        // Past `min` (and with no `max`) the count no longer matters.
                        moved.count = if max.is_none() {
                            (state.count + 1).min(*min)
                        } else {
                            state.count + 1
                        };
                        next.push((moved, format!("{text}{c}")));
                    }
                }
            }
        }
        for (state, text) in next {
            if seen.len() >= MAX_STATES {
                return Err(TooLarge);
            }
            if seen.insert(state.clone()) {
                queue.push_back((state, text));
            }
        }
    }
    Ok(found)
}

/// Which predicates `text` (a value of `shape`) satisfies.
fn outcome(shape: &Shape, predicates: &[(Scope, Matcher)], text: &str) -> Vec<bool> {
    let account = match shape {
        Shape::Any | Shape::AccountId => None,
        Shape::PrincipalArn { partition } => {
            let start = format!("arn:{partition}:iam::").len();
            Some(start..start + 12)
        }
    };
    predicates
        .iter()
        .map(|(scope, matcher)| {
            let read: &str = match (scope, &account) {
                (Scope::Account, Some(range)) => text.get(range.clone()).unwrap_or_default(),
                _ => text,
            };
            match matcher.literal() {
                Some(value) => value.eq(read.chars()),
                None => {
                    let end = read
                        .chars()
                        .fold(matcher.start(), |set, c| matcher.step(&set, c));
                    matcher.accepts(&end)
                }
            }
        })
        .collect()
}

/// A representative a person reads more easily than the shortest one, when the same
/// predicates hold for it: `other` for an empty value, `someone` for a principal's name.
fn readable(
    shape: &Shape,
    predicates: &[(Scope, Matcher)],
    text: &str,
    wanted: &[bool],
) -> Option<String> {
    let candidate = match shape {
        Shape::Any if text.is_empty() => "other".to_owned(),
        Shape::Any | Shape::AccountId => return None,
        Shape::PrincipalArn { .. } => {
            let kind = [":role/", ":user/"]
                .iter()
                .find_map(|kind| text.find(kind).map(|at| at + kind.len()))?;
            format!("{}someone", text.get(..kind)?)
        }
    };
    (candidate != text && outcome(shape, predicates, &candidate) == wanted).then_some(candidate)
}

/// Numbers (or epoch seconds) that fall in every interval the `values` cut the line into,
/// and one that is no number at all.
pub fn numeric_representatives(values: &[f64]) -> Vec<String> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    if let (Some(first), Some(last)) = (sorted.first(), sorted.last()) {
        out.push(format!("{}", first - 1.0));
        out.push(format!("{}", last + 1.0));
    } else {
        out.push("0".to_owned());
    }
    for pair in sorted.windows(2) {
        out.push(format!("{}", pair[0] + (pair[1] - pair[0]) / 2.0));
    }
    out.extend(sorted.iter().map(|v| format!("{v}")));
    out.push("not-a-number".to_owned());
    out
}

/// Addresses at both ends of, and just outside, every block `cidrs` name, the ends of
/// each family's space, and a value that is no address: one in every interval the blocks'
/// boundaries cut each family's addresses into.
pub fn address_representatives(cidrs: &[String]) -> Vec<String> {
    let mut v4: Vec<u128> = vec![0, u128::from(u32::MAX)];
    let mut v6: Vec<u128> = vec![0, u128::MAX];
    for cidr in cidrs {
        let (network, bits) = cidr.split_once('/').unwrap_or((cidr, ""));
        let Ok(network) = network.parse::<IpAddr>() else {
            continue;
        };
        let (value, width, points) = match network {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32, &mut v4),
            IpAddr::V6(a) => (u128::from(a), 128u32, &mut v6),
        };
        let bits: u32 = if bits.is_empty() {
            width
        } else {
            match bits.parse() {
                Ok(bits) if bits <= width => bits,
                _ => continue,
            }
        };
        let host = width - bits;
        let mask = if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        };
        let first = value & !mask;
        let last = first | mask;
        let top = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        points.extend([first, last.min(top)]);
        if let Some(before) = first.checked_sub(1) {
            points.push(before);
        }
        if last < top {
            points.push(last + 1);
        }
    }
    let mut out = Vec::new();
    v4.sort_unstable();
    v4.dedup();
    v6.sort_unstable();
    v6.dedup();
    for a in v4 {
        if let Ok(a) = u32::try_from(a) {
            out.push(std::net::Ipv4Addr::from(a).to_string());
        }
    }
    for a in v6 {
        out.push(std::net::Ipv6Addr::from(a).to_string());
    }
    out.push("not-an-address".to_owned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::wildcard::{arn_like, glob};

    fn search(shape: Shape, predicates: Vec<(Scope, Matcher)>) -> Vec<(String, Vec<bool>)> {
        representatives(&shape, &predicates).unwrap()
    }

    #[test]
    fn overlapping_patterns_get_a_value_for_each_combination() {
        // `ab` is the only short value like both; a search over fill-ins would miss it.
        let found = search(
            Shape::Any,
            vec![
                (Scope::Whole, Matcher::like("a*")),
                (Scope::Whole, Matcher::like("*b")),
                (Scope::Whole, Matcher::equals("ab")),
            ],
        );
        let outcomes: HashSet<Vec<bool>> = found.iter().map(|(_, o)| o.clone()).collect();
        for wanted in [
            vec![true, true, true],
            vec![true, true, false],
            vec![true, false, false],
            vec![false, true, false],
            vec![false, false, false],
        ] {
            assert!(outcomes.contains(&wanted), "{wanted:?} in {found:?}");
        }
        assert_eq!(outcomes.len(), 5);
        for (value, outcome) in &found {
            assert_eq!(outcome[0], glob("a*", value, false));
            assert_eq!(outcome[1], glob("*b", value, false));
        }
    }

    #[test]
    fn arn_patterns_match_as_the_evaluator_does() {
        let patterns = [
            "arn:aws:qdeveloper:*:111122223333:scans/*",
            "arn:aws:*",
            "arn:*:iam::*:role/x?",
        ];
        let found = search(
            Shape::Any,
            patterns
                .iter()
                .map(|p| (Scope::Whole, Matcher::arn(p)))
                .collect(),
        );
        assert!(found.iter().any(|(_, o)| o[0]));
        assert!(found.iter().any(|(_, o)| o[2]));
        for (value, outcome) in &found {
            for (pattern, hit) in patterns.iter().zip(outcome) {
                assert_eq!(*hit, arn_like(pattern, value), "{pattern} {value}");
            }
        }
    }

    #[test]
    fn principal_arns_keep_their_shape_and_reach_fresh_accounts() {
        let found = search(
            Shape::PrincipalArn {
                partition: "aws".into(),
            },
            vec![
                (Scope::Account, Matcher::equals("111122223333")),
                (Scope::Whole, Matcher::arn("arn:aws:iam::*:role/Admin*")),
                (Scope::Whole, Matcher::like("arn:*:iam::*:role/*")),
            ],
        );
        for (value, _) in &found {
            assert!(
                crate::domain::IamPrincipal::parse(value).is_some(),
                "{value}"
            );
        }
        // A role named Admin… in an account no policy names.
        assert!(found.iter().any(|(_, o)| *o == vec![false, true, true]));
        assert!(found.iter().any(|(_, o)| *o == vec![true, false, false]));
    }

    #[test]
    fn the_search_is_bounded() {
        let many: Vec<(Scope, Matcher)> = (0..40)
            .map(|i| (Scope::Whole, Matcher::like(&format!("*{i}*{}*", i * 7))))
            .collect();
        assert_eq!(representatives(&Shape::Any, &many), Err(TooLarge));
    }

    #[test]
    fn intervals_have_a_value_each() {
        let values = numeric_representatives(&[10.0, 20.0]);
        for wanted in ["9", "15", "21", "10", "20", "not-a-number"] {
            assert!(values.iter().any(|v| v == wanted), "{wanted} in {values:?}");
        }
        let addresses = address_representatives(&["10.0.0.0/8".into(), "10.1.0.0/16".into()]);
        for wanted in [
            "9.255.255.255",
            "10.0.0.0",
            "10.0.255.255",
            "10.1.0.0",
            "10.2.0.0",
        ] {
            assert!(addresses.iter().any(|v| v == wanted), "{wanted}");
        }
    }
}
