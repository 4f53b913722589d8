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

    /// Whether `text` satisfies the predicate.
    fn matches(&self, text: &str) -> bool {
        let automaton = Automaton::new([self]);
        let end = text
            .chars()
            .fold(automaton.start(), |set, c| automaton.step(&set, c));
        automaton.accepts(&end, 0)
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

/// Several patterns run as one automaton: their positions side by side in one bitset, so a
/// step touches only the positions a string has reached, not every element of every pattern.
struct Automaton {
    /// Each pattern's elements followed by `None`, its accepting position.
    slots: Vec<Option<Element>>,
    /// Each pattern's first position, or `None` when it matches nothing.
    starts: Vec<Option<usize>>,
    /// Each pattern's accepting position.
    ends: Vec<usize>,
}

impl Automaton {
    fn new<'a>(matchers: impl IntoIterator<Item = &'a Matcher>) -> Automaton {
        let mut automaton = Automaton {
            slots: Vec::new(),
            starts: Vec::new(),
            ends: Vec::new(),
        };
        for matcher in matchers {
            let first = automaton.slots.len();
            automaton
                .slots
                .extend(matcher.elements.iter().map(|e| Some(*e)));
            automaton.ends.push(automaton.slots.len());
            automaton.slots.push(None);
            automaton.starts.push((!matcher.never).then_some(first));
        }
        automaton
    }

    fn start(&self) -> Vec<u64> {
        let mut set = vec![0; self.slots.len() / 64 + 1];
        for first in self.starts.iter().flatten() {
            self.reach(&mut set, *first);
        }
        set
    }

    /// Adds `position`, and those after it that runs (which may match nothing) lead to.
    fn reach(&self, set: &mut [u64], mut position: usize) {
        loop {
            put(set, position);
            match self.slots.get(position) {
                Some(Some(Element::Run { .. })) => position += 1,
                _ => return,
            }
        }
    }

    fn step(&self, set: &[u64], c: char) -> Vec<u64> {
        let mut next = vec![0; set.len()];
        for (word_index, word) in set.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let position = word_index * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                match self.slots.get(position).copied().flatten() {
                    Some(Element::Literal(l)) if l == c => self.reach(&mut next, position + 1),
                    Some(Element::Folded(l)) if l == c.to_ascii_lowercase() => {
                        self.reach(&mut next, position + 1)
                    }
                    Some(Element::One { colon }) if colon || c != ':' => {
                        self.reach(&mut next, position + 1)
                    }
                    Some(Element::Run { colon }) if colon || c != ':' => {
                        self.reach(&mut next, position)
                    }
                    _ => {}
                }
            }
        }
        next
    }

    /// Whether the `index`th pattern accepts in `set`.
    fn accepts(&self, set: &[u64], index: usize) -> bool {
        self.starts.get(index).is_some_and(Option::is_some)
            && self.ends.get(index).is_some_and(|end| has(set, *end))
    }
}

/// The plain values of one scope's predicates, as a trie.
struct Trie {
    children: HashMap<(usize, char), usize>,
    /// For each node, the predicates whose value ends there.
    ending: Vec<Vec<usize>>,
}

impl Trie {
    fn new(predicates: &[(Scope, Matcher)], scope: Scope) -> Trie {
        let mut trie = Trie {
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
    // The other predicates (patterns) are one automaton per scope, all patterns side by side.
    let general: [Vec<usize>; 2] = [Scope::Whole, Scope::Account].map(|scope| {
        (0..predicates.len())
            .filter(|&i| predicates[i].0 == scope && predicates[i].1.literal().is_none())
            .collect()
    });
    let automata = general
        .each_ref()
        .map(|indices| Automaton::new(indices.iter().map(|&i| &predicates[i].1)));

    #[derive(Clone, PartialEq, Eq, Hash)]
    struct State {
        part: usize,
        /// Characters read in the current part, capped where the count no longer matters.
        count: usize,
        /// Where each scope's trie is (`None`: no plain value starts so).
        nodes: [Option<usize>; 2],
        /// Where each scope's automaton is.
        sets: [Vec<u64>; 2],
    }
    /// What a visited state's shortest string adds to its parent's.
    enum Added<'a> {
        Nothing,
        Text(&'a str),
        Character(char),
    }
    let start = State {
        part: 0,
        count: 0,
        nodes: [Some(0), Some(0)],
        sets: automata.each_ref().map(Automaton::start),
    };
    let mut seen: HashSet<State> = HashSet::new();
    // Each visited state's parent and what it added: the strings, without a copy each.
    let mut paths: Vec<(usize, Added)> = vec![(0, Added::Nothing)];
    let mut queue: VecDeque<(State, usize)> = VecDeque::new();
    let mut found: Vec<(String, Vec<bool>)> = Vec::new();
    let mut outcomes: HashSet<Vec<bool>> = HashSet::new();
    seen.insert(start.clone());
    queue.push_back((start, 0));

    // A scope's trie and automaton read the characters of their scope and of the whole.
    let reads = |reader: Scope, scope: Scope| reader == Scope::Whole || reader == scope;
    let read = |state: &State, text: &str, scope: Scope| -> State {
        let mut next = state.clone();
        for (index, reader) in [Scope::Whole, Scope::Account].into_iter().enumerate() {
            if !reads(reader, scope) {
                continue;
            }
            for c in text.chars() {
                next.nodes[index] = next.nodes[index].and_then(|n| tries[index].step(n, c));
                if !general[index].is_empty() {
                    next.sets[index] = automata[index].step(&next.sets[index], c);
                }
            }
        }
        next
    };
    let outcome_of = |state: &State| -> Vec<bool> {
        let mut outcome = vec![false; predicates.len()];
        for index in 0..2 {
            for (k, &i) in general[index].iter().enumerate() {
                outcome[i] = automata[index].accepts(&state.sets[index], k);
            }
            let ending = state.nodes[index].map_or(&[][..], |n| tries[index].ending[n].as_slice());
            for &i in ending {
                outcome[i] = true;
            }
        }
        outcome
    };
    let text_of = |paths: &[(usize, Added)], mut at: usize| -> String {
        let mut pieces = Vec::new();
        while at != 0 {
            let (parent, added) = &paths[at];
            pieces.push(added);
            at = *parent;
        }
        let mut text = String::new();
        for added in pieces.into_iter().rev() {
            match added {
                Added::Nothing => {}
                Added::Text(t) => text.push_str(t),
                Added::Character(c) => text.push(*c),
            }
        }
        text
    };

    while let Some((state, at)) = queue.pop_front() {
        let mut next: Vec<(State, Added)> = Vec::new();
        match parts.get(state.part) {
            None => {
                let outcome = outcome_of(&state);
                if !outcomes.contains(&outcome) {
                    let text = text_of(&paths, at);
                    let text = readable(shape, predicates, &text, &outcome).unwrap_or(text);
                    outcomes.insert(outcome.clone());
                    found.push((text, outcome));
                }
                continue;
            }
            Some(Part::Fixed(fixed)) => {
                let mut moved = read(&state, fixed, Scope::Whole);
                moved.part += 1;
                moved.count = 0;
                next.push((moved, Added::Text(fixed)));
            }
            Some(Part::Choice(options)) => {
                for option in options {
                    let mut moved = read(&state, option, Scope::Whole);
                    moved.part += 1;
                    moved.count = 0;
                    next.push((moved, Added::Text(option)));
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
                    next.push((moved, Added::Nothing));
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
                        next.push((moved, Added::Character(c)));
                    }
                }
            }
        }
        for (state, added) in next {
            if seen.len() >= MAX_STATES {
                return Err(TooLarge);
            }
            if !seen.contains(&state) {
                seen.insert(state.clone());
                paths.push((at, added));
                queue.push_back((state, paths.len() - 1));
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
                None => matcher.matches(read),
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
