//! A strict JSON parser that keeps where each value starts, so findings can point at a
//! line and column. Duplicate object keys are kept (the policy layer reports them); nesting
//! is bounded so no input can exhaust the stack. [`parse_unique`] is the one reading of a
//! policy for code that works on `serde_json` values.

/// Deepest nesting accepted; real policies nest five levels.
const MAX_DEPTH: usize = 64;

/// A JSON value with the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Json {
    pub offset: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The number as written.
    Number(String),
    String(String),
    Array(Vec<Json>),
    /// Members in document order, duplicates included; each key with its own offset.
    Object(Vec<(Key, Json)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub offset: usize,
    pub name: String,
}

impl Json {
    /// The value of member `name`, when this is an object that has it (first occurrence).
    pub fn get(&self, name: &str) -> Option<&Json> {
        match &self.value {
            Value::Object(members) => members.iter().find(|(k, _)| k.name == name).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// What kind of JSON value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// A syntax error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub offset: usize,
    pub message: String,
}

/// Maps byte offsets to 1-based line and column (in characters).
pub struct LineIndex<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> LineIndex<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, line_starts }
    }

    pub fn position(&self, offset: usize) -> (u32, u32) {
        let line = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset.min(self.text.len()))
            .map_or(0, |s| s.chars().count());
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(column + 1).unwrap_or(u32::MAX),
        )
    }
}

/// Why [`parse_unique`] refused a document, with 1-based lines and columns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("not valid JSON: {message} at line {line}, column {column}")]
    Syntax {
        message: String,
        line: u32,
        column: u32,
    },
    #[error(
        "duplicate member `{name}` at line {line}, column {column} (first at line {first_line}, column {first_column})"
    )]
    DuplicateMember {
        name: String,
        line: u32,
        column: u32,
        first_line: u32,
        first_column: u32,
    },
}

/// Parses `text` like [`parse`], refusing a member name repeated in one object, into a
/// `serde_json` value with members in document order. serde_json alone would keep the
/// last duplicate silently, so the sidecar would act on another policy than the one
/// `policy verify` reads.
pub fn parse_unique(text: &str) -> Result<serde_json::Value, DocumentError> {
    let index = LineIndex::new(text);
    let root = parse(text).map_err(|e| syntax_error(&index, e.offset, e.message))?;
    to_serde(&root, &index)
}

fn syntax_error(index: &LineIndex<'_>, offset: usize, message: String) -> DocumentError {
    let (line, column) = index.position(offset);
    DocumentError::Syntax {
        message,
        line,
        column,
    }
}

/// Recursion is bounded by the parser's `MAX_DEPTH`.
fn to_serde(json: &Json, index: &LineIndex<'_>) -> Result<serde_json::Value, DocumentError> {
    use serde_json::Value as Serde;
    Ok(match &json.value {
        Value::Null => Serde::Null,
        Value::Bool(b) => Serde::Bool(*b),
        // serde_json reads the number text itself, so a value comes out exactly as it
        // would from serde_json reading the whole document.
        Value::Number(n) => serde_json::from_str::<serde_json::Number>(n)
            .map(Serde::Number)
            .map_err(|_| {
                syntax_error(
                    index,
                    json.offset,
                    format!("the number {} is out of range", clip(n)),
                )
            })?,
        Value::String(s) => Serde::String(s.clone()),
        Value::Array(items) => Serde::Array(
            items
                .iter()
                .map(|item| to_serde(item, index))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(members) => {
            let mut map = serde_json::Map::with_capacity(members.len());
            for (key, value) in members {
                if map.contains_key(&key.name) {
                    let first = members
                        .iter()
                        .find(|(k, _)| k.name == key.name)
                        .map_or(key.offset, |(k, _)| k.offset);
                    let (line, column) = index.position(key.offset);
                    let (first_line, first_column) = index.position(first);
                    return Err(DocumentError::DuplicateMember {
                        name: clip(&key.name),
                        line,
                        column,
                        first_line,
                        first_column,
                    });
                }
                map.insert(key.name.clone(), to_serde(value, index)?);
            }
            Serde::Object(map)
        }
    })
}

/// Text from the document, shortened for a message.
fn clip(text: &str) -> String {
    const SHOWN: usize = 60;
    let mut chars = text.chars();
    let mut shown: String = chars.by_ref().take(SHOWN).collect();
    if chars.next().is_some() {
        shown.push('…');
    }
    shown
}

pub fn parse(text: &str) -> Result<Json, SyntaxError> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        text,
        pos: 0,
    };
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos < parser.bytes.len() {
        return Err(parser.error("unexpected text after the JSON value"));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> SyntaxError {
        SyntaxError {
            offset: self.pos,
            message: message.to_owned(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), SyntaxError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.error("the document nests too deeply"));
        }
        let offset = self.pos;
        let value = match self.peek() {
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Value::String(self.string()?),
            Some(b't') => self.literal("true", Value::Bool(true))?,
            Some(b'f') => self.literal("false", Value::Bool(false))?,
            Some(b'n') => self.literal("null", Value::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(_) => return Err(self.error("expected a JSON value")),
            None => return Err(self.error("unexpected end of the document")),
        };
        Ok(Json { offset, value })
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, SyntaxError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("expected a JSON value"))
        }
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number"));
            }
            self.digits();
        }
        Ok(Value::Number(self.text[start..self.pos].to_owned()))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("invalid \\u escape"))?;
        let value =
            u32::from_str_radix(digits, 16).map_err(|_| self.error("invalid \\u escape"))?;
        self.pos += 4;
        Ok(value)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.text[start..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    match escaped {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let first = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&first) {
                                if !self.bytes[self.pos..].starts_with(b"\\u") {
                                    return Err(self.error("unpaired surrogate in \\u escape"));
                                }
                                self.pos += 2;
                                let second = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&second) {
                                    return Err(self.error("unpaired surrogate in \\u escape"));
                                }
                                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                            } else {
                                first
                            };
                            out.push(
                                char::from_u32(code)
                                    .ok_or_else(|| self.error("invalid \\u escape"))?,
                            );
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("invalid escape in string"));
                        }
                    }
                }
                Some(_) => {
                    return Err(
                        self.error("control character (such as a line break) inside a string")
                    );
                }
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.error("expected `,` or `]` in the array")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.pos += 1;
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_whitespace();
            let offset = self.pos;
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a member name in double quotes"));
            }
            let name = self.string()?;
            self.skip_whitespace();
            self.expect(b':', "expected `:` after the member name")?;
            self.skip_whitespace();
            let value = self.value(depth + 1)?;
            members.push((Key { offset, name }, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(self.error("expected `,` or `}` in the object")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_serde_json_parses() {
        let text =
            r#" {"a": [1, -2.5e3, true, false, null], "b": "x\"\u00e9\ud83d\ude00", "a": {}} "#;
        let parsed = parse(text).unwrap();
        let Value::Object(members) = &parsed.value else {
            panic!()
        };
        assert_eq!(members.len(), 3, "duplicates kept");
        assert_eq!(parsed.get("b").unwrap().as_str(), Some("x\"é😀"));
        assert_eq!(parsed.get("a").unwrap().offset, 7);
    }

    #[test]
    fn refuses_what_json_refuses() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\":1,}",
            "{'a':1}",
            "01",
            "1.",
            "\"a\nb\"",
            "[1] x",
            "tru",
            "\"\\x\"",
            "\"\\ud800\"",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad:?}"
            );
        }
        let deep = "[".repeat(10_000);
        assert!(
            parse(&deep)
                .unwrap_err()
                .message
                .contains("nests too deeply")
        );
    }

    #[test]
    fn parse_unique_reads_what_serde_json_reads_in_document_order() {
        let text = r#"{"z": [0, -0, 1.0, 1.5e3, -12, 18446744073709551615, -9223372036854775808, 1E-7],
            "a": {"y": "\u00e9\ud83d\ude00\n", "b": null, "x": [true, false, {}, []]}}"#;
        let strict = parse_unique(text).unwrap();
        let lenient: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(strict, lenient);
        // Byte-identical output, order included (serde_json keeps order here).
        assert_eq!(
            serde_json::to_string_pretty(&strict).unwrap(),
            serde_json::to_string_pretty(&lenient).unwrap()
        );
        let keys: Vec<&String> = strict["a"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["y", "b", "x"]);
    }

    #[test]
    fn parse_unique_refuses_duplicates_anywhere_with_both_positions() {
        let text = "{\n  \"Statement\": [{\"Sid\": \"a\",\n    \"Sid\": \"b\"}]\n}";
        assert_eq!(
            parse_unique(text),
            Err(DocumentError::DuplicateMember {
                name: "Sid".into(),
                line: 3,
                column: 5,
                first_line: 2,
                first_column: 18,
            })
        );
        assert_eq!(
            parse_unique(text).unwrap_err().to_string(),
            "duplicate member `Sid` at line 3, column 5 (first at line 2, column 18)"
        );
        // The same name in different objects is no duplicate.
        assert!(parse_unique(r#"[{"a": 1}, {"a": 2, "b": {"a": 3}}]"#).is_ok());
    }

    #[test]
    fn parse_unique_refuses_what_parse_refuses_with_position() {
        let err = parse_unique("{\n  \"a\": [1,]\n}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "not valid JSON: expected a JSON value at line 2, column 11"
        );
        let err = parse_unique("[1, 1e400]").unwrap_err();
        assert_eq!(
            err.to_string(),
            "not valid JSON: the number 1e400 is out of range at line 1, column 5"
        );
        assert!(parse_unique(&"[".repeat(10_000)).is_err());
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let text = "{\n  \"a\": \"é\",\n  \"b\": 1\n}";
        let index = LineIndex::new(text);
        let parsed = parse(text).unwrap();
        assert_eq!(index.position(parsed.get("b").unwrap().offset), (3, 8));
        assert_eq!(index.position(0), (1, 1));
        let err = parse("{\n  \"a\": \"x\ny\"\n}").unwrap_err();
        assert_eq!(
            LineIndex::new("{\n  \"a\": \"x\ny\"\n}").position(err.offset),
            (2, 10)
        );
    }
}
