//! A strict RFC 8259 parser for one record, in one pass over the bytes.
//!
//! The record's top-level object is parsed into one [`Slot`] per schema property; every other value
//! (unknown properties, nested values, a top-level value that is not an object) is checked and
//! skipped without building anything. Strings without escapes are borrowed from the record. Beyond
//! RFC 8259 the parser rejects what the contract calls invalid JSON [N3]: a key repeated in one
//! object (compared after unescaping, at any depth), a `\u` escape that leaves a lone surrogate, and
//! nesting deeper than [`MAX_DEPTH`] (which is also where `serde_json` stops).
//!
//! Positions in errors are 0-based byte offsets into the record.

use std::borrow::Cow;
use std::collections::HashSet;

use super::{FIELD_COUNT, field_index};

/// The deepest nesting of arrays and objects accepted: the 128th level is an error, as in
/// `serde_json`, and recursion stays far from the stack's limit.
pub(super) const MAX_DEPTH: usize = 127;

/// A JSON syntax error: where (0-based byte offset) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SyntaxError {
    /// Byte offset of the offending input.
    pub(super) at: usize,
    /// What is wrong and how to fix it.
    pub(super) what: String,
}

type Parsed<T> = Result<T, SyntaxError>;

fn error<T>(at: usize, what: impl Into<String>) -> Parsed<T> {
    Err(SyntaxError {
        at,
        what: what.into(),
    })
}

/// The JSON type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    /// The type as it reads in a sentence ("is {}").
    pub(super) fn described(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "a boolean",
            Kind::Number => "a number",
            Kind::String => "a string",
            Kind::Array => "an array",
            Kind::Object => "an object",
        }
    }
}

/// The value of one schema property of the record, as far as validation needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) enum Slot<'a> {
    /// The property is not in the record.
    #[default]
    Absent,
    /// A string, unescaped (borrowed when it had no escapes).
    Str(Cow<'a, str>),
    /// A number, as its (grammatically valid) text.
    Num(&'a str),
    /// Anything else.
    Other(Kind),
}

/// Parses a whole record (already known to be UTF-8). When it is an object, its schema properties
/// are put in `slots` (in the schema's order) and the result is `None`; else it is the value's kind.
pub(super) fn parse<'a>(
    text: &'a str,
    slots: &mut [Slot<'a>; FIELD_COUNT],
) -> Parsed<Option<Kind>> {
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    if text.starts_with('\u{feff}') {
        return error(
            0,
            "the record starts with a byte order mark (U+FEFF), which JSON does not allow: remove it",
        );
    }
    parser.skip_ws();
    let kind = match parser.peek() {
        Some(b'{') => {
            parser.record(slots)?;
            None
        }
        _ => Some(parser.value(0)?),
    };
    parser.skip_ws();
    if parser.pos < parser.bytes.len() {
        return error(
            parser.pos,
            format!(
                "unexpected {} after the JSON value: a record must be exactly one JSON object",
                parser.found(parser.pos)
            ),
        );
    }
    Ok(kind)
}

/// Bytes that end a run of plain string content: control characters, `"` and `\`.
static STRING_SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// A mask with the high bit set in the first byte (in memory order) of the 8 in `word` that is a
/// control character, `"` or `\`, and maybe in later bytes; zero when there is none (SWAR).
///
/// Each of the three tests can only report a false positive in a byte above (later than) a true
/// one, because only a true match borrows into the next byte, so the lowest set bit is exact.
#[inline]
fn special_mask(word: u64) -> u64 {
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let quote_zero = quote.wrapping_sub(ONES) & !quote;
    let backslash_zero = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | quote_zero | backslash_zero) & HIGHS
}

/// A set of the keys of one object, to find repeated ones.
#[derive(Debug, Default)]
struct KeySet<'a> {
    few: Vec<Cow<'a, str>>,
    many: Option<HashSet<Cow<'a, str>>>,
}

impl<'a> KeySet<'a> {
    /// Up to this many keys are compared one by one.
    const FEW: usize = 16;

    /// Adds `key`, or gives it back when it was already there.
    fn insert(&mut self, key: Cow<'a, str>) -> Result<(), Cow<'a, str>> {
        if let Some(many) = &mut self.many {
            if many.contains(&key) {
                return Err(key);
            }
            many.insert(key);
            return Ok(());
        }
        if self.few.contains(&key) {
            return Err(key);
        }
        if self.few.len() < Self::FEW {
            self.few.push(key);
        } else {
            let mut many: HashSet<Cow<'a, str>> = self.few.drain(..).collect();
            many.insert(key);
            self.many = Some(many);
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// The text between two offsets that fall on ASCII bytes (so on character boundaries).
    #[inline]
    fn slice(&self, start: usize, end: usize) -> Parsed<&'a str> {
        match self.text.get(start..end) {
            Some(text) => Ok(text),
            None => error(
                start,
                "internal error: a string slice is not on character boundaries",
            ),
        }
    }

    /// What is at `at`, for messages: "`x`" or "the end of the record".
    fn found(&self, at: usize) -> String {
        match self.text.get(at..).and_then(|rest| rest.chars().next()) {
            None => "end of the record".to_string(),
            Some(c) if c.is_control() || c == '\u{feff}' => {
                format!("character U+{:04X}", u32::from(c))
            }
            Some(c) => format!("`{c}`"),
        }
    }

    /// An error for an unexpected byte at the current position.
    fn expected<T>(&self, what: &str) -> Parsed<T> {
        error(
            self.pos,
            format!("expected {what}, found {}", self.found(self.pos)),
        )
    }

    /// The top-level object: schema properties into slots, everything else checked and skipped.
    fn record(&mut self, slots: &mut [Slot<'a>; FIELD_COUNT]) -> Parsed<()> {
        let mut unknown = KeySet::default();
        self.pos += 1; // `{`
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.expected("a string key in double quotes");
            }
            let key_at = self.pos;
            let key = self.string::<true>()?;
            let slot = match field_index(&key).and_then(|index| slots.get_mut(index)) {
                Some(slot) if *slot != Slot::Absent => return repeated(key_at, &key),
                Some(slot) => Some(slot),
                None => match unknown.insert(key) {
                    Ok(()) => None,
                    Err(key) => return repeated(key_at, &key),
                },
            };
            self.skip_ws();
            if self.peek() != Some(b':') {
                return self.expected("`:` after the object key");
            }
            self.pos += 1;
            self.skip_ws();
            match slot {
                Some(slot) => *slot = self.member()?,
                None => {
                    self.value(1)?;
                }
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.expected("`,` or `}` after an object member"),
            }
        }
    }

    /// The value of a schema property of the top-level object.
    fn member(&mut self) -> Parsed<Slot<'a>> {
        match self.peek() {
            Some(b'"') => Ok(Slot::Str(self.string::<true>()?)),
            Some(b'-' | b'0'..=b'9') => Ok(Slot::Num(self.number()?)),
            _ => Ok(Slot::Other(self.value(1)?)),
        }
    }

    /// Checks and skips one value; `depth` is the number of arrays and objects around it.
    fn value(&mut self, depth: usize) -> Parsed<Kind> {
        match self.peek() {
            Some(b'"') => {
                self.string::<false>()?;
                Ok(Kind::String)
            }
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                Ok(Kind::Number)
            }
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b't') => self.literal("true", Kind::Bool),
            Some(b'f') => self.literal("false", Kind::Bool),
            Some(b'n') => self.literal("null", Kind::Null),
            Some(b'N')
                if self
                    .bytes
                    .get(self.pos..)
                    .is_some_and(|r| r.starts_with(b"NaN")) =>
            {
                error(
                    self.pos,
                    "`NaN` is not JSON: send a number in digits, or leave the field out",
                )
            }
            Some(b'I')
                if self
                    .bytes
                    .get(self.pos..)
                    .is_some_and(|r| r.starts_with(b"Inf")) =>
            {
                error(
                    self.pos,
                    "`Infinity` is not JSON: send a number in digits, or leave the field out",
                )
            }
            Some(b'\'') => error(
                self.pos,
                "expected a JSON value, found `'`: JSON strings are in double quotes",
            ),
            _ => self.expected("a JSON value"),
        }
    }

    fn too_deep<T>(&self) -> Parsed<T> {
        error(
            self.pos,
            format!("arrays and objects are nested more than {MAX_DEPTH} levels deep"),
        )
    }

    /// An object nested in the record; `depth` counts it.
    fn object(&mut self, depth: usize) -> Parsed<Kind> {
        if depth > MAX_DEPTH {
            return self.too_deep();
        }
        self.pos += 1; // `{`
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Kind::Object);
        }
        let mut keys = KeySet::default();
        loop {
            if self.peek() != Some(b'"') {
                return self.expected("a string key in double quotes");
            }
            let key_at = self.pos;
            let key = self.string::<true>()?;
            if let Err(key) = keys.insert(key) {
                return repeated(key_at, &key);
            }
            self.skip_ws();
            if self.peek() != Some(b':') {
                return self.expected("`:` after the object key");
            }
            self.pos += 1;
            self.skip_ws();
            self.value(depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Kind::Object);
                }
                _ => return self.expected("`,` or `}` after an object member"),
            }
        }
    }

    /// An array nested in the record; `depth` counts it.
    fn array(&mut self, depth: usize) -> Parsed<Kind> {
        if depth > MAX_DEPTH {
            return self.too_deep();
        }
        self.pos += 1; // `[`
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Kind::Array);
        }
        loop {
            self.value(depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Kind::Array);
                }
                _ => return self.expected("`,` or `]` after an array element"),
            }
        }
    }

    fn literal(&mut self, word: &str, kind: Kind) -> Parsed<Kind> {
        let end = self.pos + word.len();
        if self.bytes.get(self.pos..end) == Some(word.as_bytes()) {
            self.pos = end;
            Ok(kind)
        } else {
            error(
                self.pos,
                format!(
                    "expected a JSON value (such as `{word}`); literals are lowercase and spelled in full"
                ),
            )
        }
    }

    /// A number per RFC 8259: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Parsed<&'a str> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return error(
                        start,
                        "a number has a leading zero, which JSON does not allow: write it without",
                    );
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            Some(b'I') => {
                return error(
                    start,
                    "`-Infinity` is not JSON: send a number in digits, or leave the field out",
                );
            }
            _ => return self.expected("a digit after `-`"),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.expected("a digit after the decimal point");
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.expected("a digit in the exponent");
            }
            self.digits();
        }
        self.slice(start, self.pos)
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    /// The end of the run of plain string content that starts at `at`: the offset of the first
    /// control character, `"` or `\` from there, or the end of the record.
    #[inline]
    fn plain_run(&self, mut at: usize) -> usize {
        while let Some(chunk) = self.bytes.get(at..at + 8) {
            let Ok(word) = <[u8; 8]>::try_from(chunk) else {
                break;
            };
            let mask = special_mask(u64::from_le_bytes(word));
            if mask != 0 {
                return at + (mask.trailing_zeros() / 8) as usize;
            }
            at += 8;
        }
        while let Some(&byte) = self.bytes.get(at) {
            if STRING_SPECIAL[usize::from(byte)] {
                break;
            }
            at += 1;
        }
        at
    }

    /// A string starting at the current `"`; its unescaped content when `BUILD` (borrowed when it
    /// has no escapes), else only checked (the content returned may then be empty).
    fn string<const BUILD: bool>(&mut self) -> Parsed<Cow<'a, str>> {
        let open = self.pos;
        let start = open + 1;
        let mut at = self.plain_run(start);
        match self.bytes.get(at) {
            Some(b'"') => {
                self.pos = at + 1;
                return Ok(Cow::Borrowed(self.slice(start, at)?));
            }
            Some(b'\\') => {}
            Some(&byte) => return control(at, byte),
            None => return unterminated(open),
        }
        let mut owned = String::new();
        if BUILD {
            owned.reserve(at - start + 16);
            owned.push_str(self.slice(start, at)?);
        }
        loop {
            match self.bytes.get(at) {
                Some(b'"') => {
                    self.pos = at + 1;
                    return Ok(Cow::Owned(owned));
                }
                Some(b'\\') => at = self.escape::<BUILD>(at, &mut owned)?,
                Some(&byte) => return control(at, byte),
                None => return unterminated(open),
            }
            let end = self.plain_run(at);
            if BUILD {
                owned.push_str(self.slice(at, end)?);
            }
            at = end;
        }
    }

    /// The escape at `at` (a `\`): appends it to `out` when `BUILD`; returns the offset after it.
    fn escape<const BUILD: bool>(&self, at: usize, out: &mut String) -> Parsed<usize> {
        let c = match self.bytes.get(at + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => return self.unicode_escape::<BUILD>(at, out),
            Some(_) => {
                return error(
                    at,
                    format!(
                        "invalid escape `\\` followed by {}: JSON allows only \\\" \\\\ \\/ \\b \\f \\n \\r \\t and \\uXXXX",
                        self.found(at + 1)
                    ),
                );
            }
            None => return error(at, "the record ends inside a string escape"),
        };
        if BUILD {
            out.push(c);
        }
        Ok(at + 2)
    }

    /// A `\uXXXX` escape at `at`, or a surrogate pair of two.
    fn unicode_escape<const BUILD: bool>(&self, at: usize, out: &mut String) -> Parsed<usize> {
        let unit = self.hex4(at)?;
        let (code, end) = match unit {
            0xD800..=0xDBFF => {
                let low = if self.bytes.get(at + 6..at + 8) == Some(b"\\u") {
                    Some(self.hex4(at + 6)?)
                } else {
                    None
                };
                match low {
                    Some(low @ 0xDC00..=0xDFFF) => {
                        (0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00), at + 12)
                    }
                    _ => {
                        return error(
                            at,
                            format!(
                                "`\\u{unit:04X}` is a lone surrogate: a character above U+FFFF is escaped as a pair such as `\\uD83D\\uDE00` (or sent as itself)"
                            ),
                        );
                    }
                }
            }
            0xDC00..=0xDFFF => {
                return error(
                    at,
                    format!(
                        "`\\u{unit:04X}` is a lone surrogate: a low surrogate must follow a high one (`\\uD800`-`\\uDBFF`)"
                    ),
                );
            }
            _ => (unit, at + 6),
        };
        match char::from_u32(code) {
            Some(c) => {
                if BUILD {
                    out.push(c);
                }
                Ok(end)
            }
            None => error(at, "internal error: an escape decodes to no character"),
        }
    }

    /// The four hex digits of the `\u` escape at `at`.
    fn hex4(&self, at: usize) -> Parsed<u32> {
        let mut unit = 0;
        for offset in 2..6 {
            let digit = self
                .bytes
                .get(at + offset)
                .and_then(|&byte| char::from(byte).to_digit(16));
            match digit {
                Some(digit) => unit = unit * 16 + digit,
                None => {
                    return error(
                        at,
                        "`\\u` must be followed by four hex digits, as in `\\u00e9`",
                    );
                }
            }
        }
        Ok(unit)
    }
}

fn repeated<T>(at: usize, key: &str) -> Parsed<T> {
    error(
        at,
        format!(
            "key {} is repeated in one object: send each key once",
            super::quoted(key)
        ),
    )
}

fn control<T>(at: usize, byte: u8) -> Parsed<T> {
    error(
        at,
        format!("control character U+{byte:04X} in a string: escape it (e.g. as `\\u{byte:04x}`)"),
    )
}

fn unterminated<T>(open: usize) -> Parsed<T> {
    error(
        open,
        "the string that starts here has no closing `\"` before the end of the record",
    )
}
