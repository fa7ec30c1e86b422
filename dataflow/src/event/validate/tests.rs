//! Unit tests for every reason and tricky case, and properties against `serde_json` and a model of
//! the schema's category order.

use std::borrow::Cow;

use proptest::prelude::*;
use serde_json::Value;

use super::json::MAX_DEPTH;
use super::number::{IntClass, classify};
use super::*;

const EXAMPLE: &str = r#"{"event_id": "7f1c2a9e-0001", "portal": "g1", "user_id": "u-48213", "article_id": "g1/politica/2026/11/23/eleicao-resultado", "ts": 1795435200000, "dwell_ms": 42000, "scroll_pct": 80, "clicks": 1, "device": "mobile"}"#;

const MINIMAL: &str = r#"{"event_id":"e","portal":"g1","user_id":"u","article_id":"a","ts":5}"#;

fn ok(text: &str) -> Pageview<'_> {
    match validate(text.as_bytes()) {
        Ok(view) => view,
        Err(invalid) => panic!("{text:?} should be valid, got {invalid:?}"),
    }
}

fn reason(text: &str) -> Reason {
    match validate(text.as_bytes()) {
        Ok(view) => panic!("{text:?} should be invalid, got {view:?}"),
        Err(invalid) => invalid.reason,
    }
}

fn detail(text: &str) -> String {
    match validate(text.as_bytes()) {
        Ok(view) => panic!("{text:?} should be invalid, got {view:?}"),
        Err(invalid) => invalid.detail,
    }
}

/// `MINIMAL` with `member` (`"key": value`) added at the end.
fn with(member: &str) -> String {
    format!(r#"{{"event_id":"e","portal":"g1","user_id":"u","article_id":"a","ts":5,{member}}}"#)
}

/// A record with `ts` set to the given JSON text.
fn ts(number: &str) -> String {
    format!(r#"{{"event_id":"e","portal":"g1","user_id":"u","article_id":"a","ts":{number}}}"#)
}

#[expect(
    clippy::ptr_arg,
    reason = "it looks at the `Cow` itself, not at the text"
)]
fn is_borrowed(text: &Cow<'_, str>) -> bool {
    matches!(text, Cow::Borrowed(_))
}

// ---------------------------------------------------------------------------------------------
// Valid records

#[test]
fn the_schema_example_validates_and_borrows() {
    let view = ok(EXAMPLE);
    assert_eq!(view.event_id, "7f1c2a9e-0001");
    assert_eq!(view.portal, "g1");
    assert_eq!(view.user_id, "u-48213");
    assert_eq!(view.article_id, "g1/politica/2026/11/23/eleicao-resultado");
    assert_eq!(view.ts, 1_795_435_200_000);
    assert_eq!(view.dwell_ms, 42_000);
    assert_eq!(view.scroll_pct, 80);
    assert_eq!(view.clicks, 1);
    assert!(is_borrowed(&view.event_id) && is_borrowed(&view.portal));
    assert!(is_borrowed(&view.user_id) && is_borrowed(&view.article_id));
}

#[test]
fn the_schema_example_in_the_schema_file_validates() {
    let schema: Value =
        serde_json::from_str(include_str!("../../../../../shared/pageview.schema.json"))
            .unwrap_or(Value::Null);
    let examples = schema["examples"].as_array().cloned().unwrap_or_default();
    assert!(!examples.is_empty());
    for example in examples {
        let text = example.to_string();
        assert!(validate(text.as_bytes()).is_ok(), "{text}");
    }
}

#[test]
fn optional_integers_default_to_zero() {
    let view = ok(MINIMAL);
    assert_eq!(
        (view.ts, view.dwell_ms, view.scroll_pct, view.clicks),
        (5, 0, 0, 0)
    );
}

#[test]
fn whitespace_anywhere_between_tokens_is_fine() {
    let text = " \t\r\n{ \"event_id\" :\"e\" ,\r\n\"portal\":\t\"g1\",\"user_id\":\"u\",\"article_id\":\"a\",\"ts\":5 }\n\t ";
    assert_eq!(ok(text).ts, 5);
}

#[test]
fn unknown_properties_of_any_kind_are_allowed() {
    let text = with(
        r#""x":null,"y":[1,{"a":[true,false,{}]},"s",-1.5e-3],"z":{"ts":"no","portal":1},"é":"\u00e9""#,
    );
    let view = ok(&text);
    assert_eq!(view.ts, 5);
    assert_eq!(view.portal, "g1");
}

#[test]
fn nested_known_names_do_not_count_as_fields() {
    let text = r#"{"event_id":"e","portal":"g1","user_id":"u","article_id":"a","x":{"ts":5}}"#;
    assert_eq!(reason(text), Reason::MissingField);
}

#[test]
fn strings_with_escapes_are_owned_and_unescaped() {
    let text = r#"{"event_id":"a\"b\\c\/d\b\f\n\r\t\u00e9\u20AC","portal":"g1","user_id":"u\u0000","article_id":"plain","ts":1}"#;
    let view = ok(text);
    assert_eq!(view.event_id, "a\"b\\c/d\u{8}\u{c}\n\r\t\u{e9}\u{20ac}");
    assert!(!is_borrowed(&view.event_id));
    assert_eq!(view.user_id, "u\0");
    assert!(!is_borrowed(&view.user_id));
    assert!(is_borrowed(&view.article_id));
    assert!(is_borrowed(&view.portal));
}

#[test]
fn escaped_keys_name_the_same_fields() {
    let text = r#"{"\u0065vent_id":"e","portal":"g1","user_id":"u","article_id":"a","t\u0073":7}"#;
    assert_eq!(ok(text).ts, 7);
}

#[test]
fn surrogate_pairs_decode_to_one_character() {
    let text = with(r#""device":"x","url":"\uD83D\uDE00""#)
        .replace(r#""event_id":"e""#, r#""event_id":"\ud83d\ude00""#);
    assert_eq!(ok(&text).event_id, "😀");
}

#[test]
fn raw_non_ascii_and_del_are_fine_in_strings() {
    let text = MINIMAL.replace(r#""u""#, "\"ü😀\u{7f}\u{2028}\"");
    let view = ok(&text);
    assert_eq!(view.user_id, "ü😀\u{7f}\u{2028}");
    assert!(is_borrowed(&view.user_id));
}

#[test]
fn the_largest_record_is_fine() {
    let mut text = MINIMAL.to_string();
    text.insert_str(1, &" ".repeat(MAX_RECORD_BYTES - MINIMAL.len()));
    assert_eq!(text.len(), MAX_RECORD_BYTES);
    assert!(validate(text.as_bytes()).is_ok());
}

// ---------------------------------------------------------------------------------------------
// too_large and invalid_utf8

#[test]
fn too_large_comes_first() {
    let mut bytes = MINIMAL.as_bytes().to_vec();
    bytes.resize(MAX_RECORD_BYTES + 1, 0xff);
    let invalid = validate(&bytes).err();
    assert_eq!(invalid.as_ref().map(|i| i.reason), Some(Reason::TooLarge));
    // Not the kept length (65,537 for a line of any length): what is known.
    let detail = invalid.map(|i| i.detail).unwrap_or_default();
    assert!(detail.contains("more than 65536 bytes"), "{detail}");
    assert!(!detail.contains("65537"), "{detail}");
}

#[test]
fn invalid_utf8_names_the_byte() {
    let cases: [&[u8]; 6] = [
        b"{\"event_id\":\"\xff\"}",
        b"\xef\xbb",                 // a truncated BOM
        b"{\"a\":\"\xed\xa0\x80\"}", // a surrogate encoded in UTF-8
        b"{\"a\":\"\xc0\xaf\"}",     // an overlong encoding
        b"{\"a\":\"\xe2\x82\"}",     // a truncated character before the quote
        b"{\"a\":1}\xf0\x9f",        // a truncated character at the end
    ];
    for bytes in cases {
        let invalid = validate(bytes).err();
        assert_eq!(
            invalid.as_ref().map(|i| i.reason),
            Some(Reason::InvalidUtf8),
            "{bytes:?}"
        );
    }
    let invalid = validate(b"{\"event_id\":\"\xff\"}").err();
    assert!(invalid.is_some_and(|i| i.detail.starts_with("byte 13: ")));
}

#[test]
fn invalid_utf8_comes_before_invalid_json() {
    let invalid = validate(b"\xff{{{").err();
    assert_eq!(invalid.map(|i| i.reason), Some(Reason::InvalidUtf8));
}

// ---------------------------------------------------------------------------------------------
// invalid_json

#[test]
fn rfc_8259_violations_are_invalid_json() {
    let cases = [
        "",
        " ",
        "{",
        "}",
        "{\"a\":1,}",
        "{,}",
        "{\"a\"}",
        "{\"a\" 1}",
        "{\"a\":}",
        "{\"a\":1 \"b\":2}",
        "{a:1}",
        "{'a':1}",
        "{\"a\":'x'}",
        "{\"a\":[1,]}",
        "{\"a\":[1 2]}",
        "{\"a\":[}",
        "{\"a\":01}",
        "{\"a\":-01}",
        "{\"a\":00}",
        "{\"a\":1.}",
        "{\"a\":.5}",
        "{\"a\":+1}",
        "{\"a\":-}",
        "{\"a\":1e}",
        "{\"a\":1e+}",
        "{\"a\":1.e5}",
        "{\"a\":0x10}",
        "{\"a\":1_000}",
        "{\"a\":tru}",
        "{\"a\":True}",
        "{\"a\":nul}",
        "{\"a\":NULL}",
        "{\"a\":\"abc}",
        "{\"a\":\"abc",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\U0041\"}",
        "{\"a\":\"\\u12\"}",
        "{\"a\":\"\\u12G4\"}",
        "{\"a\":\"\\",
        "{\"a\":\"\\u00",
        "{\"a\":\"\t\"}",
        "{\"a\":\"\n\"}",
        "{\"a\":\"\u{0}\"}",
        "{\"a\":\"\u{1f}\"}",
        "{\"a\":1}/*c*/",
        "//c\n{\"a\":1}",
        "{\"a\":1}\u{a0}",
        "\u{a0}{\"a\":1}",
        "{\"a\":1}\u{0}",
        "\"\\ud800\"",
    ];
    for case in cases {
        assert_eq!(reason(case), Reason::InvalidJson, "{case:?}");
        assert!(serde_json::from_str::<Value>(case).is_err(), "{case:?}");
    }
}

#[test]
fn nan_and_infinity_are_invalid_json() {
    for number in [
        "NaN",
        "Infinity",
        "-Infinity",
        "-NaN",
        "Inf",
        "-Inf",
        "nan",
        "inf",
    ] {
        assert_eq!(reason(&ts(number)), Reason::InvalidJson, "{number}");
    }
    assert!(detail(&ts("NaN")).contains("`NaN` is not JSON"));
    assert!(detail(&ts("Infinity")).contains("`Infinity` is not JSON"));
    assert!(detail(&ts("-Infinity")).contains("`-Infinity` is not JSON"));
}

#[test]
fn trailing_data_is_invalid_json() {
    for tail in ["x", "{}", ",", "]", "}", "\"", "1", "null", "\u{feff}"] {
        let text = format!("{MINIMAL} {tail}");
        assert_eq!(reason(&text), Reason::InvalidJson, "{text:?}");
        assert!(detail(&text).starts_with(&format!("byte {}: ", MINIMAL.len() + 1)));
    }
    assert_eq!(reason("[] 1"), Reason::InvalidJson);
    assert_eq!(reason("1 1"), Reason::InvalidJson);
}

#[test]
fn a_byte_order_mark_is_invalid_json() {
    let text = format!("\u{feff}{MINIMAL}");
    assert_eq!(reason(&text), Reason::InvalidJson);
    assert!(detail(&text).contains("byte order mark"));
    assert!(serde_json::from_str::<Value>(&text).is_err());
}

#[test]
fn lone_surrogates_are_invalid_json() {
    for escape in [
        r"\uD800",
        r"\uDBFF",
        r"\uDC00",
        r"\uDFFF",
        r"\uD800x",
        r"\uD800\u0041",
        r"\uD800\uD800",
        r"\uD800\n",
        r"\uDE00\uD83D",
        r"x\udc00",
    ] {
        let text = MINIMAL.replace(r#""e""#, &format!("\"{escape}\""));
        assert_eq!(reason(&text), Reason::InvalidJson, "{escape}");
        assert!(detail(&text).contains("lone surrogate"), "{escape}");
    }
    // In keys and in unknown properties too.
    assert_eq!(reason(&with(r#""\uD800":1"#)), Reason::InvalidJson);
    assert_eq!(reason(&with(r#""x":["\uDC00"]"#)), Reason::InvalidJson);
}

#[test]
fn repeated_keys_are_invalid_json_at_any_depth() {
    let cases = [
        with(r#""ts":5"#),
        with(r#""portal":"g1""#),
        with(r#""x":1,"x":1"#),
        with(r#""x":1,"\u0078":2"#),
        with(r#""t\u0073":1"#),
        with(r#""x":{"a":1,"b":{"c":[{"d":1,"d":2}]}}"#),
        with(r#""x":[[{"a":1,"a":1}]]"#),
    ];
    for case in &cases {
        assert_eq!(reason(case), Reason::InvalidJson, "{case}");
        assert!(detail(case).contains("repeated in one object"), "{case}");
        // serde_json keeps the last one: this is the contract's extra rule.
        assert!(serde_json::from_str::<Value>(case).is_ok(), "{case}");
    }
    // The same key in different objects is fine.
    assert!(validate(with(r#""x":{"a":1},"y":{"a":{"a":1}}"#).as_bytes()).is_ok());
    assert_eq!(
        detail(&with(r#""x":{"k":1,"k":2}"#)),
        format!(
            "byte {}: key \"k\" is repeated in one object: send each key once",
            MINIMAL.len() + 11
        )
    );
}

#[test]
fn repeated_keys_are_found_in_large_objects() {
    let members: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
    let unique = format!("{{{}}}", members.join(","));
    assert!(validate(with(&format!("\"x\":{unique}")).as_bytes()).is_ok());
    assert!(validate(with(&members.join(",")).as_bytes()).is_ok());
    let mut repeated = members.clone();
    repeated.push("\"k\\u0037\":1".to_string()); // k7 again
    assert_eq!(reason(&with(&repeated.join(","))), Reason::InvalidJson);
    let nested = format!("\"x\":{{{}}}", repeated.join(","));
    assert_eq!(reason(&with(&nested)), Reason::InvalidJson);
}

#[test]
fn control_characters_in_strings_are_invalid_json() {
    for byte in 0u8..0x20 {
        let text = MINIMAL.replace(r#""u""#, &format!("\"u{}\"", char::from(byte)));
        assert_eq!(reason(&text), Reason::InvalidJson, "{byte:#x}");
        assert!(detail(&text).contains("control character"), "{byte:#x}");
    }
}

#[test]
fn special_bytes_are_found_at_every_offset() {
    // The string scanner looks at 8 bytes at a time: put a control character, a quote and a
    // backslash at every offset after ASCII and non-ASCII content.
    let record = |event_id: &str| MINIMAL.replace(r#""e""#, &format!("\"{event_id}\""));
    let content_at = r#"{"event_id":""#.len();
    for filler in ["a", "é", "\u{7f}", "😀", " ", "~"] {
        for count in 0..20 {
            let prefix = filler.repeat(count);
            let raw_control = record(&format!("{prefix}\u{1f}{prefix}"));
            assert_eq!(
                detail(&raw_control),
                format!(
                    "byte {}: control character U+001F in a string: escape it (e.g. as `\\u001f`)",
                    content_at + prefix.len()
                )
            );
            let escaped = record(&format!("{prefix}\\\"{prefix}\\\\{prefix}"));
            assert_eq!(
                ok(&escaped).event_id,
                format!("{prefix}\"{prefix}\\{prefix}")
            );
            let plain = record(&format!("{prefix}x{prefix}"));
            let view = ok(&plain);
            assert!(is_borrowed(&view.event_id));
            assert_eq!(view.event_id, format!("{prefix}x{prefix}"));
        }
    }
}

#[test]
fn nesting_is_limited_like_serde_json() {
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // The record's own object counts as a level.
    let deepest_ok = with(&format!("\"x\":{}", nested(MAX_DEPTH - 1)));
    let too_deep = with(&format!("\"x\":{}", nested(MAX_DEPTH)));
    assert!(validate(deepest_ok.as_bytes()).is_ok());
    assert_eq!(reason(&too_deep), Reason::InvalidJson);
    assert!(serde_json::from_str::<Value>(&deepest_ok).is_ok());
    assert!(serde_json::from_str::<Value>(&too_deep).is_err());
    assert_eq!(reason(&nested(MAX_DEPTH)), Reason::NotObject);
    assert_eq!(reason(&nested(MAX_DEPTH + 1)), Reason::InvalidJson);
    let objects = |depth: usize| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    assert_eq!(reason(&objects(MAX_DEPTH)), Reason::MissingField);
    assert_eq!(reason(&objects(MAX_DEPTH + 1)), Reason::InvalidJson);
}

#[test]
fn very_deep_nesting_does_not_overflow_the_stack() {
    for open in ["[", "{\"a\":", "[{\"a\":"] {
        let text = open.repeat(MAX_RECORD_BYTES / open.len());
        assert_eq!(reason(&text), Reason::InvalidJson);
    }
}

#[test]
fn json_errors_name_the_byte() {
    assert_eq!(
        detail(r#"{"ts":1 "b":2}"#),
        "byte 8: expected `,` or `}` after an object member, found `\"`"
    );
    assert!(detail("{\"a\":01}").starts_with("byte 5: "));
    assert!(detail("{\"a\":\"x\ty\"}").starts_with("byte 7: control character U+0009"));
    assert!(detail("{\"a\":\"abc").starts_with("byte 5: the string that starts here"));
    assert!(detail("").starts_with("byte 0: expected a JSON value, found end of the record"));
    assert!(detail("{\"a\":1,}").starts_with("byte 7: expected a string key"));
}

#[test]
fn invalid_json_wins_over_schema_failures() {
    assert_eq!(reason(r#"{"portal":1,}"#), Reason::InvalidJson);
    assert_eq!(reason(r#"{"ts":-1} x"#), Reason::InvalidJson);
    assert_eq!(reason(r#"[1,2"#), Reason::InvalidJson);
    assert_eq!(
        reason(&format!("{} {{", with(r#""clicks":1.5"#))),
        Reason::InvalidJson
    );
}

// ---------------------------------------------------------------------------------------------
// not_object and missing_field

#[test]
fn other_json_values_are_not_objects() {
    for (text, kind) in [
        ("[]", "an array"),
        (" [1, {\"a\": 2}] ", "an array"),
        ("1", "a number"),
        ("-0.5e3", "a number"),
        ("\"s\"", "a string"),
        ("null", "null"),
        ("true", "a boolean"),
        ("false", "a boolean"),
    ] {
        assert_eq!(reason(text), Reason::NotObject, "{text}");
        assert!(detail(text).starts_with(&format!("the record is {kind}, not an object")));
    }
}

#[test]
fn missing_fields_in_property_order() {
    assert_eq!(reason("{}"), Reason::MissingField);
    assert!(detail("{}").starts_with("field `event_id` is missing"));
    let no_ts_and_numeric_portal = r#"{"event_id":"e","portal":1,"user_id":"u","article_id":"a"}"#;
    assert_eq!(reason(no_ts_and_numeric_portal), Reason::MissingField);
    assert_eq!(
        detail(no_ts_and_numeric_portal),
        "field `ts` is missing: every pageview needs an integer event time in ms since the epoch"
    );
    let no_user = r#"{"ts":1.5,"article_id":null,"portal":"G1"}"#;
    assert!(detail(no_user).starts_with("field `event_id` is missing"));
    assert!(detail(r#"{"event_id":"e","ts":1}"#).starts_with("field `portal` is missing"));
}

// ---------------------------------------------------------------------------------------------
// wrong_type

#[test]
fn wrong_types_in_property_order() {
    let cases = [
        (r#""event_id":null"#, "field `event_id` is null"),
        (r#""portal":1"#, "field `portal` is a number"),
        (r#""user_id":["u"]"#, "field `user_id` is an array"),
        (r#""article_id":{}"#, "field `article_id` is an object"),
        (r#""ts":"5""#, "field `ts` is a string"),
        (r#""ts":true"#, "field `ts` is a boolean"),
        (r#""ts":null"#, "field `ts` is null"),
        (r#""ts":5.5"#, "field `ts` is 5.5, which is not an integer"),
        (
            r#""dwell_ms":1e-1"#,
            "field `dwell_ms` is 1e-1, which is not an integer",
        ),
        (
            r#""scroll_pct":-0.5"#,
            "field `scroll_pct` is -0.5, which is not an integer",
        ),
        (r#""clicks":false"#, "field `clicks` is a boolean"),
        (r#""url":null"#, "field `url` is null"),
        (r#""referrer":5"#, "field `referrer` is a number"),
        (
            r#""device":{"type":"mobile"}"#,
            "field `device` is an object",
        ),
    ];
    for (member, start) in cases {
        let key_end = member.find(':').unwrap_or(0);
        let key = member.get(..key_end).unwrap_or_default();
        let text = MINIMAL.replace(&format!("{key}:"), "\"was\":");
        let text = format!(
            "{}{member}}}",
            text.strip_suffix('}').unwrap_or_default().to_string() + ","
        );
        assert_eq!(reason(&text), Reason::WrongType, "{text}");
        assert!(
            detail(&text).starts_with(start),
            "{text}: {}",
            detail(&text)
        );
    }
    // The earliest field in property order is named, whatever the order in the record.
    let both =
        r#"{"clicks":"1","event_id":"e","portal":"g1","user_id":"u","article_id":"a","ts":null}"#;
    assert!(detail(both).starts_with("field `ts` is null"));
    // Wrong type beats out of range and bad pattern in earlier fields.
    let mixed = r#"{"event_id":"","portal":"G1","user_id":"u","article_id":"a","ts":1,"url":1}"#;
    assert_eq!(reason(mixed), Reason::WrongType);
    assert!(detail(mixed).starts_with("field `url` is a number"));
}

// ---------------------------------------------------------------------------------------------
// Numbers [N2]

#[test]
fn integers_are_judged_on_their_exact_value() {
    for (number, value) in [
        ("5", 5),
        ("5.0", 5),
        ("5.000000", 5),
        ("5e0", 5),
        ("5E+0", 5),
        ("5e2", 500),
        ("5E2", 500),
        ("0.5e1", 5),
        ("0.05e2", 5),
        ("50e-1", 5),
        ("500000000000000000000000000000e-29", 5),
        ("-0", 0),
        ("-0.0", 0),
        ("0e400", 0),
        ("-0e-400", 0),
        ("0.000", 0),
        ("253402300799999", 253_402_300_799_999),
        ("2.53402300799999e14", 253_402_300_799_999),
        ("2534023007999990e-1", 253_402_300_799_999),
    ] {
        assert_eq!(ok(&ts(number)).ts, value, "{number}");
    }
    for number in [
        "5.5",
        "1e-1",
        "0.1",
        "-0.5",
        "-1.5",
        "5.0000000000000000000000000001",
        "1e-400",
        "123456789e-9",
    ] {
        assert_eq!(reason(&ts(number)), Reason::WrongType, "{number}");
    }
    for number in [
        "-1",
        "-1e400",
        "-5.0",
        "1e400",
        "1E400",
        "1.5e400",
        "253402300800000",
        "2.53402300800000e14",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999999999999999999",
        "1e99999999999999999999999",
    ] {
        assert_eq!(reason(&ts(number)), Reason::OutOfRange, "{number}");
    }
    let huge = format!("1{}", "0".repeat(3000));
    assert_eq!(reason(&ts(&huge)), Reason::OutOfRange);
    let huge_but_one = format!("1{}e-3000", "0".repeat(3000));
    assert_eq!(ok(&ts(&huge_but_one)).ts, 1);
    let almost_integer = format!("1.{}1", "0".repeat(3000));
    assert_eq!(reason(&ts(&almost_integer)), Reason::WrongType);
}

#[test]
fn integer_ranges_of_every_field() {
    for (field, max) in [
        ("dwell_ms", 86_400_000u64),
        ("scroll_pct", 100),
        ("clicks", 100_000),
    ] {
        assert!(validate(with(&format!("\"{field}\":{max}")).as_bytes()).is_ok());
        assert!(validate(with(&format!("\"{field}\":0")).as_bytes()).is_ok());
        assert_eq!(
            reason(&with(&format!("\"{field}\":{}", max + 1))),
            Reason::OutOfRange
        );
        assert_eq!(
            reason(&with(&format!("\"{field}\":-1"))),
            Reason::OutOfRange
        );
    }
    let text = with(r#""dwell_ms":86400000,"scroll_pct":100.0,"clicks":1e5"#);
    let view = ok(&text);
    assert_eq!(
        (view.dwell_ms, view.scroll_pct, view.clicks),
        (86_400_000, 100, 100_000)
    );
    assert_eq!(
        detail(&with(r#""scroll_pct":150"#)),
        "field `scroll_pct` is 150: it must be an integer from 0 to 100"
    );
}

#[test]
fn classify_is_exact() {
    assert_eq!(classify("0"), IntClass::Value(0));
    assert_eq!(classify("-0"), IntClass::Value(0));
    assert_eq!(classify("10"), IntClass::Value(10));
    assert_eq!(classify("1.0e1"), IntClass::Value(10));
    assert_eq!(classify("0.01e2"), IntClass::Value(1));
    assert_eq!(classify("18446744073709551615"), IntClass::Value(u64::MAX));
    assert_eq!(classify("18446744073709551616"), IntClass::TooBig);
    assert_eq!(
        classify("1e19"),
        IntClass::Value(10_000_000_000_000_000_000)
    );
    assert_eq!(classify("1e20"), IntClass::TooBig);
    assert_eq!(classify("-1e20"), IntClass::Negative);
    assert_eq!(classify("-1e-20"), IntClass::Fraction);
    assert_eq!(classify("1e-99999999999999999999"), IntClass::Fraction);
    assert_eq!(classify("12.5e1"), IntClass::Value(125));
    assert_eq!(classify("12.55e1"), IntClass::Fraction);
    // Not numbers at all still get a class, without panicking.
    for junk in ["", "-", "e", ".", "-.e-", "1e", "x", "1.2.3"] {
        let _ = classify(junk);
    }
}

// ---------------------------------------------------------------------------------------------
// out_of_range for strings: code points after unescaping

#[test]
fn string_lengths_count_code_points() {
    let record = |event_id: &str| MINIMAL.replace(r#""e""#, &format!("\"{event_id}\""));
    assert_eq!(ok(&record(&"é".repeat(128))).event_id.chars().count(), 128);
    assert_eq!(reason(&record(&"é".repeat(129))), Reason::OutOfRange);
    assert!(validate(record(&"😀".repeat(128)).as_bytes()).is_ok());
    assert_eq!(reason(&record(&"😀".repeat(129))), Reason::OutOfRange);
    assert!(validate(record(&"a".repeat(128)).as_bytes()).is_ok());
    assert_eq!(reason(&record(&"a".repeat(129))), Reason::OutOfRange);
    // Escapes count as the characters they stand for.
    assert!(validate(record(&r"\u00e9".repeat(128)).as_bytes()).is_ok());
    assert!(validate(record(&r"\ud83d\ude00".repeat(128)).as_bytes()).is_ok());
    assert_eq!(reason(&record(&r"\n".repeat(129))), Reason::OutOfRange);
    assert_eq!(
        detail(&record(&"ü".repeat(200))),
        "field `event_id` is 200 characters long: it must be a string of 1 to 128 characters, \
         unique per beacon"
    );
}

#[test]
fn string_bounds_of_every_field() {
    let empty = MINIMAL.replace(r#""u""#, r#""""#);
    assert_eq!(reason(&empty), Reason::OutOfRange);
    assert!(detail(&empty).starts_with("field `user_id` is empty"));
    let empty_article = MINIMAL.replace(r#""a""#, r#""""#);
    assert!(detail(&empty_article).starts_with("field `article_id` is empty"));
    assert!(
        validate(
            MINIMAL
                .replace(r#""a""#, &format!("\"{}\"", "ä".repeat(256)))
                .as_bytes()
        )
        .is_ok()
    );
    assert_eq!(
        reason(&MINIMAL.replace(r#""a""#, &format!("\"{}\"", "ä".repeat(257)))),
        Reason::OutOfRange
    );
    for (field, max) in [("url", 2048), ("referrer", 2048), ("device", 64)] {
        assert!(validate(with(&format!("\"{field}\":\"\"")).as_bytes()).is_ok());
        let longest = with(&format!("\"{field}\":\"{}\"", "ü".repeat(max)));
        assert!(validate(longest.as_bytes()).is_ok(), "{field}");
        let too_long = with(&format!("\"{field}\":\"{}\"", "ü".repeat(max + 1)));
        assert_eq!(reason(&too_long), Reason::OutOfRange, "{field}");
        assert!(
            detail(&too_long)
                .starts_with(&format!("field `{field}` is {} characters long", max + 1))
        );
    }
}

#[test]
fn out_of_range_in_property_order_and_before_bad_pattern() {
    let text = r#"{"event_id":"e","portal":"BAD","user_id":"u","article_id":"a","ts":1,"device":"","clicks":-3,"scroll_pct":101}"#;
    assert_eq!(reason(text), Reason::OutOfRange);
    assert!(detail(text).starts_with("field `scroll_pct` is 101"));
}

// ---------------------------------------------------------------------------------------------
// bad_pattern

#[test]
fn portal_must_match_the_whole_pattern() {
    for portal in [
        "g1",
        "ge",
        "gshow",
        "0",
        "a-",
        "a--b",
        "9-9",
        &"a".repeat(32),
    ] {
        let text = MINIMAL.replace(r#""g1""#, &format!("\"{portal}\""));
        assert_eq!(ok(&text).portal, portal);
    }
    for portal in [
        "",
        "G1",
        "-g1",
        "g_1",
        "g1 ",
        " g1",
        "g.1",
        "é",
        "g1\\n",
        "\\u0000",
        &"a".repeat(33),
        "gé",
    ] {
        let text = MINIMAL.replace(r#""g1""#, &format!("\"{portal}\""));
        assert_eq!(reason(&text), Reason::BadPattern, "{portal:?}");
    }
    assert_eq!(
        detail(&MINIMAL.replace("g1", "G1")),
        "field `portal` is \"G1\": it must be 1 to 32 lowercase letters (a-z), digits or hyphens, \
         not starting with a hyphen (pattern ^[a-z0-9][a-z0-9-]{0,31}$)"
    );
    // Long values are cut short in the detail.
    let long = MINIMAL.replace("g1", &"X".repeat(1000));
    assert!(detail(&long).len() < 300);
}

// ---------------------------------------------------------------------------------------------
// Properties

/// A small deterministic generator for the random spelling of a record.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'t, T>(&mut self, items: &'t [T]) -> Option<&'t T> {
        items.get(self.below(items.len()))
    }
}

/// Optional JSON whitespace.
fn ws(rng: &mut Rng) -> String {
    let mut out = String::new();
    while rng.one_in(3) {
        out.push(*rng.pick(&[' ', '\t', '\n', '\r']).unwrap_or(&' '));
    }
    out
}

/// `text` as a JSON string, escaping some characters at random (when `escape_some`) and the ones
/// JSON requires; also says whether any escape was used.
fn encode_str(rng: &mut Rng, text: &str, escape_some: bool) -> (String, bool) {
    let mut out = String::from("\"");
    let mut escaped = false;
    for c in text.chars() {
        let must = c == '"' || c == '\\' || c < ' ';
        let escape = must || (escape_some && rng.one_in(6));
        if !escape {
            out.push(c);
            continue;
        }
        escaped = true;
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        match short {
            Some(short) if rng.one_in(2) => out.push_str(short),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if rng.one_in(2) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
            }
        }
    }
    out.push('"');
    (out, escaped)
}

/// `n` spelled as one of the JSON numbers whose exact value it is.
fn encode_int(rng: &mut Rng, n: u64) -> String {
    let digits = n.to_string();
    let (head, tail) = digits.split_at(1);
    match rng.below(9) {
        0 => format!("{n}.0"),
        1 => format!("{n}.{}", "0".repeat(rng.below(5) + 1)),
        2 => format!("{n}e0"),
        3 => format!("{n}E+0"),
        4 => format!("0.{digits}e{}", digits.len()),
        5 if n > 0 => format!("{n}0e-1"),
        6 => format!("{head}.{tail}0e{}", tail.len()),
        7 if n == 0 => (*rng
            .pick(&["-0", "-0.0", "0e7", "-0E-3", "0.000"])
            .unwrap_or(&"0"))
        .to_string(),
        _ => digits,
    }
}

/// Any JSON value, spelled at random.
fn encode_value(rng: &mut Rng, value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .map(|item| format!("{}{}{}", ws(rng), encode_value(rng, item), ws(rng)))
                .collect();
            format!("[{}{}]", ws(rng), items.join(","))
        }
        Value::Object(members) => {
            let members: Vec<String> = members
                .iter()
                .map(|(key, item)| {
                    let key = encode_str(rng, key, true).0;
                    format!(
                        "{}{key}{}:{}{}{}",
                        ws(rng),
                        ws(rng),
                        ws(rng),
                        encode_value(rng, item),
                        ws(rng)
                    )
                })
                .collect();
            format!("{{{}{}}}", ws(rng), members.join(","))
        }
        Value::String(text) => encode_str(rng, text, true).0,
        other => other.to_string(),
    }
}

/// Members spelled as one JSON object, in a random order.
fn encode_object(rng: &mut Rng, mut members: Vec<(String, String)>) -> String {
    for i in (1..members.len()).rev() {
        members.swap(i, rng.below(i + 1));
    }
    let members: Vec<String> = members
        .into_iter()
        .map(|(key, value)| format!("{}{key}{}:{}{value}{}", ws(rng), ws(rng), ws(rng), ws(rng)))
        .collect();
    format!("{}{{{}{}}}{}", ws(rng), ws(rng), members.join(","), ws(rng))
}

fn arb_text(chars: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), chars).prop_map(|chars| chars.into_iter().collect())
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        arb_text(0..=8).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(arb_text(0..=4), inner, 0..5)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// Unknown properties: keys that are not the schema's, with any values.
fn arb_extras() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::btree_map(arb_text(0..=6), arb_json(), 0..4).prop_map(|members| {
        members
            .into_iter()
            .filter(|(key, _)| field_index(key).is_none())
            .collect()
    })
}

/// A valid pageview's values.
#[derive(Clone, Debug)]
struct Values {
    event_id: String,
    portal: String,
    user_id: String,
    article_id: String,
    ts: u64,
    dwell_ms: Option<u32>,
    scroll_pct: Option<u8>,
    clicks: Option<u32>,
    url: Option<String>,
    referrer: Option<String>,
    device: Option<String>,
}

fn arb_values() -> impl Strategy<Value = Values> {
    (
        (
            arb_text(1..=128),
            "[a-z0-9][a-z0-9-]{0,31}",
            arb_text(1..=128),
            arb_text(1..=256),
        ),
        (
            0..=253_402_300_799_999u64,
            prop::option::of(0..=86_400_000u32),
            prop::option::of(0..=100u8),
            prop::option::of(0..=100_000u32),
        ),
        (
            prop::option::of(arb_text(0..=64)),
            prop::option::of(arb_text(0..=64)),
            prop::option::of(arb_text(0..=64)),
        ),
    )
        .prop_map(
            |(
                (event_id, portal, user_id, article_id),
                (ts, dwell_ms, scroll_pct, clicks),
                (url, referrer, device),
            )| Values {
                event_id,
                portal,
                user_id,
                article_id,
                ts,
                dwell_ms,
                scroll_pct,
                clicks,
                url,
                referrer,
                device,
            },
        )
}

/// The record spelled at random: member order, whitespace, escapes, number forms; also says which
/// of the four returned strings were spelled with escapes.
fn encode_record(
    rng: &mut Rng,
    values: &Values,
    extras: &[(String, Value)],
) -> (String, [bool; 4]) {
    let mut members = Vec::new();
    let mut escaped = [false; 4];
    let strings = [
        ("event_id", Some(&values.event_id)),
        ("portal", Some(&values.portal)),
        ("user_id", Some(&values.user_id)),
        ("article_id", Some(&values.article_id)),
        ("url", values.url.as_ref()),
        ("referrer", values.referrer.as_ref()),
        ("device", values.device.as_ref()),
    ];
    for (index, (name, value)) in strings.into_iter().enumerate() {
        if let Some(value) = value {
            let (text, was_escaped) = encode_str(rng, value, true);
            if let Some(flag) = escaped.get_mut(index) {
                *flag = was_escaped;
            }
            members.push((encode_str(rng, name, true).0, text));
        }
    }
    let integers = [
        ("ts", Some(values.ts)),
        ("dwell_ms", values.dwell_ms.map(u64::from)),
        ("scroll_pct", values.scroll_pct.map(u64::from)),
        ("clicks", values.clicks.map(u64::from)),
    ];
    for (name, value) in integers {
        if let Some(value) = value {
            let number = encode_int(rng, value);
            members.push((encode_str(rng, name, true).0, number));
        }
    }
    for (key, value) in extras {
        let key = encode_str(rng, key, true).0;
        let value = encode_value(rng, value);
        members.push((key, value));
    }
    (encode_object(rng, members), escaped)
}

/// Pieces that break or bend JSON, inserted by the mutation property.
const TOKENS: &[&str] = &[
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    " ",
    "\t",
    "\n",
    "0",
    "1",
    "-",
    "+",
    ".",
    "e",
    "E",
    "\\u",
    "\\uD800",
    "\\uDC00",
    "\\ud83d\\ude00",
    "\\n",
    "\\x",
    "\u{1}",
    "\u{1f}",
    "\u{7f}",
    "NaN",
    "Infinity",
    "true",
    "null",
    "01",
    "1e400",
    "é",
    "😀",
    "\u{feff}",
    "\u{a0}",
    "\"x\":1,",
    "\"ts\":1,",
    ",\"ts\":2",
    "{}",
    "[]",
    "\"\"",
    "'",
    "/",
    "*",
    "x",
];

/// One edit of a record: kind, where (a fraction of its length), and a token.
fn arb_edit() -> impl Strategy<Value = (u8, prop::sample::Index, prop::sample::Index)> {
    (
        0..4u8,
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
    )
}

fn apply_edit(
    text: &str,
    (kind, at, token): &(u8, prop::sample::Index, prop::sample::Index),
) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = at.index(chars.len() + 1);
    let token: Vec<char> = TOKENS
        .get(token.index(TOKENS.len()))
        .unwrap_or(&"")
        .chars()
        .collect();
    let mut out = chars.clone();
    match kind {
        0 => {
            // delete one character
            if at < out.len() {
                out.remove(at);
            }
        }
        1 => {
            // replace one character
            if at < out.len() {
                out.splice(at..=at, token);
            }
        }
        2 => {
            // duplicate a span (makes repeated keys and values)
            let end = (at + 1 + token.len() * 3).min(chars.len());
            let span: Vec<char> = chars.get(at..end).unwrap_or_default().to_vec();
            out.splice(at..at, span);
        }
        _ => {
            out.splice(at..at, token);
        }
    }
    out.into_iter().collect()
}

/// Whether `validate` says `invalid_json` exactly when `serde_json` fails, except for repeated
/// keys (which serde_json accepts) and numbers too big for an `f64` (which it rejects).
fn agrees_with_serde_json(text: &str) -> Result<(), TestCaseError> {
    let ours = validate(text.as_bytes());
    let theirs = serde_json::from_str::<Value>(text);
    let our_json_error = match &ours {
        Err(invalid) if invalid.reason == Reason::InvalidJson => Some(invalid.detail.clone()),
        _ => None,
    };
    match theirs {
        Ok(value) => {
            if let Some(detail) = our_json_error {
                prop_assert!(
                    detail.contains("repeated in one object"),
                    "{:?}: {}",
                    text,
                    detail
                );
            }
            if let Ok(view) = &ours {
                prop_assert_eq!(value["event_id"].as_str(), Some(view.event_id.as_ref()));
                prop_assert_eq!(value["portal"].as_str(), Some(view.portal.as_ref()));
                prop_assert_eq!(value["user_id"].as_str(), Some(view.user_id.as_ref()));
                prop_assert_eq!(value["article_id"].as_str(), Some(view.article_id.as_ref()));
            }
        }
        Err(error) if error.to_string().starts_with("number out of range") => {}
        Err(error) => {
            prop_assert!(
                our_json_error.is_some(),
                "{:?}: serde_json says {}, we say {:?}",
                text,
                error,
                ours
            );
        }
    }
    Ok(())
}

/// 1024 cases each, unless `PROPTEST_CASES` says otherwise (for long runs).
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 1024;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    /// (1) Any bytes: never a panic, and the first categories are judged as the contract says.
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let result = validate(&bytes);
        if std::str::from_utf8(&bytes).is_err() {
            prop_assert_eq!(result.err().map(|i| i.reason), Some(Reason::InvalidUtf8));
        }
    }

    /// (1) Bytes close to a record, with invalid UTF-8 and anything else thrown in.
    #[test]
    fn never_panics_on_damaged_records(
        values in arb_values(),
        seed in any::<u64>(),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut rng = Rng(seed);
        let mut bytes = encode_record(&mut rng, &values, &[]).0.into_bytes();
        for (at, byte) in damage {
            let at = at.index(bytes.len() + 1);
            bytes.insert(at, byte);
        }
        let _ = validate(&bytes);
    }

    /// (2) On strings near records, "invalid_json" agrees with `serde_json` failing, except for
    /// repeated keys (which serde_json accepts) and numbers too big for an `f64` (which it rejects).
    #[test]
    fn invalid_json_agrees_with_serde_json(
        values in arb_values(),
        extras in arb_extras(),
        seed in any::<u64>(),
        edits in prop::collection::vec(arb_edit(), 0..4),
    ) {
        let mut rng = Rng(seed);
        let mut text = encode_record(&mut rng, &values, &extras).0;
        for edit in &edits {
            text = apply_edit(&text, edit);
        }
        agrees_with_serde_json(&text)?;
    }

    /// (2) The same on short strings of JSON's own characters.
    #[test]
    fn invalid_json_agrees_with_serde_json_on_json_like_strings(
        text in r#"[ {}\[\]":,0-9eE.+\-a-z\\\t\n\x01é]{0,32}"#,
    ) {
        agrees_with_serde_json(&text)?;
    }

    /// (3) A valid pageview, spelled at random, validates to its own values; strings spelled
    /// without escapes are borrowed.
    #[test]
    fn valid_pageviews_round_trip(values in arb_values(), extras in arb_extras(), seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let (text, escaped) = encode_record(&mut rng, &values, &extras);
        let view = validate(text.as_bytes());
        prop_assert!(view.is_ok(), "{:?}: {:?}", text, view);
        let Ok(view) = view else { return Ok(()) };
        prop_assert_eq!(view.event_id.as_ref(), values.event_id.as_str());
        prop_assert_eq!(view.portal.as_ref(), values.portal.as_str());
        prop_assert_eq!(view.user_id.as_ref(), values.user_id.as_str());
        prop_assert_eq!(view.article_id.as_ref(), values.article_id.as_str());
        prop_assert_eq!(view.ts, values.ts);
        prop_assert_eq!(view.dwell_ms, values.dwell_ms.unwrap_or(0));
        prop_assert_eq!(view.scroll_pct, values.scroll_pct.unwrap_or(0));
        prop_assert_eq!(view.clicks, values.clicks.unwrap_or(0));
        let borrowed = [&view.event_id, &view.portal, &view.user_id, &view.article_id].map(is_borrowed);
        prop_assert_eq!(borrowed, escaped.map(|escaped| !escaped));
    }

    /// (4) Records with planted faults get the reason and field of the first failing category in
    /// the contract's order, whatever the spelling and member order.
    #[test]
    fn the_first_failing_category_and_field_are_reported(
        values in arb_values(),
        extras in arb_extras(),
        faults in prop::collection::vec(0..12u8, FIELD_COUNT),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let (text, expected) = faulty_record(&mut rng, &values, &extras, &faults);
        let result = validate(text.as_bytes());
        match expected {
            None => prop_assert!(result.is_ok(), "{:?}: {:?}", text, result),
            Some((reason, field)) => {
                let invalid = result.err();
                prop_assert_eq!(invalid.as_ref().map(|i| i.reason), Some(reason), "{:?}: {:?}", text, invalid);
                let named = format!("field `{field}` ");
                prop_assert!(invalid.is_some_and(|i| i.detail.starts_with(&named)), "{:?}", text);
            }
        }
    }
}

/// A fault planted in one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Missing,
    WrongType,
    OutOfRange,
    BadPattern,
}

/// A record with the faults chosen by `faults` (mostly none), and the reason and field expected.
fn faulty_record(
    rng: &mut Rng,
    values: &Values,
    extras: &[(String, Value)],
    faults: &[u8],
) -> (String, Option<(Reason, &'static str)>) {
    let good: [Option<String>; FIELD_COUNT] = [
        Some(encode_str(rng, &values.event_id, true).0),
        Some(encode_str(rng, &values.portal, true).0),
        Some(encode_str(rng, &values.user_id, true).0),
        Some(encode_str(rng, &values.article_id, true).0),
        Some(encode_int(rng, values.ts)),
        values.dwell_ms.map(|n| encode_int(rng, n.into())),
        values.scroll_pct.map(|n| encode_int(rng, n.into())),
        values.clicks.map(|n| encode_int(rng, n.into())),
        values.url.as_ref().map(|s| encode_str(rng, s, true).0),
        values.referrer.as_ref().map(|s| encode_str(rng, s, true).0),
        values.device.as_ref().map(|s| encode_str(rng, s, true).0),
    ];
    let mut members = Vec::new();
    let mut planted = [Fault::None; FIELD_COUNT];
    for (index, (field, good)) in FIELDS.iter().zip(good).enumerate() {
        let fault = match faults.get(index).copied().unwrap_or(0) {
            8 => Fault::Missing,
            9 => Fault::WrongType,
            10 => Fault::OutOfRange,
            11 => Fault::BadPattern,
            _ => Fault::None,
        };
        let value = match (fault, field.rule) {
            (Fault::None, _) => good,
            (Fault::Missing, _) => None,
            (Fault::WrongType, Rule::Integer { .. }) => Some(
                (*rng
                    .pick(&[
                        "null", "true", "\"1\"", "[]", "{}", "1.5", "1e-1", "-0.25", "7.000001",
                    ])
                    .unwrap_or(&"null"))
                .to_string(),
            ),
            (Fault::WrongType, _) => Some(
                (*rng
                    .pick(&["null", "false", "0", "1.5", "[\"a\"]", "{\"a\":\"b\"}"])
                    .unwrap_or(&"null"))
                .to_string(),
            ),
            (Fault::OutOfRange, Rule::Integer { max }) => Some(match rng.below(4) {
                0 => format!("{}", max + 1),
                1 => "-1".to_string(),
                2 => "1e400".to_string(),
                _ => format!("{max}0.0"),
            }),
            (Fault::OutOfRange, Rule::Text { min, max }) => Some(if min > 0 && rng.one_in(2) {
                "\"\"".to_string()
            } else {
                encode_str(rng, &"😀".repeat(max + 1), true).0
            }),
            (Fault::OutOfRange | Fault::BadPattern, Rule::Portal) => Some(
                (*rng
                    .pick(&["\"\"", "\"G1\"", "\"-x\"", "\"g 1\"", "\"g1\\n\""])
                    .unwrap_or(&"\"\""))
                .to_string(),
            ),
            (Fault::BadPattern, _) => good,
        };
        let fault = match (fault, field.rule, &value) {
            (Fault::OutOfRange, Rule::Portal, _) => Fault::BadPattern,
            (Fault::BadPattern, Rule::Integer { .. } | Rule::Text { .. }, _) => Fault::None,
            (Fault::Missing, _, _) if !field.required => Fault::None,
            (fault, _, _) => fault,
        };
        if let Some(slot) = planted.get_mut(index) {
            *slot = fault;
        }
        if let Some(value) = value {
            members.push((encode_str(rng, field.name, true).0, value));
        }
    }
    for (key, value) in extras {
        let value = encode_value(rng, value);
        members.push((encode_str(rng, key, true).0, value));
    }
    let text = encode_object(rng, members);
    let expected = [
        (Fault::Missing, Reason::MissingField),
        (Fault::WrongType, Reason::WrongType),
        (Fault::OutOfRange, Reason::OutOfRange),
        (Fault::BadPattern, Reason::BadPattern),
    ]
    .into_iter()
    .find_map(|(fault, reason)| {
        FIELDS
            .iter()
            .zip(planted)
            .find(|(_, planted)| *planted == fault)
            .map(|(field, _)| (reason, field.name))
    });
    (text, expected)
}
