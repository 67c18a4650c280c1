//! One rule for text from outside, on every backend: no NUL (U+0000).
//!
//! PostgreSQL cannot store NUL in `text` (and refuses the whole statement), while SQLite stores it,
//! so the same request would succeed or fail by deployment. NUL is no part of any name, message,
//! id or template, so it is refused at the door, wherever text comes in: JSON bodies
//! (`rest::JsonBody`), URL paths and query strings (`http::Path`, `http::Query`), GraphQL
//! documents (`graphql::check_document`, on every transport) and variables (the schema's
//! `TextInput` extension). The error names the field. Text from other systems that is kept
//! rather than judged (a signed Meta webhook, a receiver's answer, an upstream error) has its
//! NUL replaced with U+FFFD instead.

pub mod objects_only;

use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use serde_json::Value;

use crate::error::Error;

/// Reads a `T` from outside input with its path tracked for the error (`serde_path_to_error`),
/// every struct in it from an object only ([`objects_only`]).
pub fn deserialize<'de, D, T>(d: D) -> Result<T, serde_path_to_error::Error<D::Error>>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    serde_path_to_error::deserialize(objects_only::ObjectsOnly(d))
}

/// [`serde_json::from_value`] with every struct from an object only: for stored JSON that came
/// from outside (a job's payload given to `enqueueJob`).
pub fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    T::deserialize(objects_only::ObjectsOnly(v))
}

const MESSAGE: &str = "text must not contain NUL (\\u0000) characters";

/// The error for a NUL in `field`.
pub fn nul_in(field: impl Into<String>) -> Error {
    let field = field.into();
    Error::validation(field.clone(), format!("{field}: {MESSAGE}"))
}

/// Whether a JSON document's text holds an escaped NUL. JSON can carry NUL only as the escape
/// `\u0000` (a raw control character is a syntax error), and a backslash escapes when an odd
/// number of them come before the `u`: `\\u0000` is a backslash and the text `u0000`. Linear.
pub fn json_has_nul(bytes: &[u8]) -> bool {
    let mut run = 0usize; // backslashes just before the current byte
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\\' {
            run += 1;
            continue;
        }
        if b == b'u' && run % 2 == 1 && bytes[i + 1..].starts_with(b"0000") {
            return true;
        }
        run = 0;
    }
    false
}

/// The path of the first string (or key) in `v` that holds NUL: `buttons[1].title`, or `""` for
/// `v` itself.
pub fn nul_path(v: &Value) -> Option<String> {
    fn join(at: &str, key: &str) -> String {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    }
    fn walk(v: &Value, at: String) -> Option<String> {
        match v {
            Value::String(s) => s.contains('\0').then_some(at),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| walk(item, format!("{at}[{i}]"))),
            Value::Object(map) => map.iter().find_map(|(k, item)| {
                if k.contains('\0') {
                    Some(at.clone())
                } else {
                    walk(item, join(&at, k))
                }
            }),
            _ => None,
        }
    }
    walk(v, String::new())
}

/// Whether free text may not hold `ch`: control characters other than line breaks and tabs
/// (NUL among them). Ids and names hold no control characters at all.
pub fn is_forbidden_in_text(ch: char) -> bool {
    ch.is_control() && !matches!(ch, '\n' | '\r' | '\t')
}

/// Whether a name (one a person reads and picks from a list) may not hold `ch`: control
/// characters, and the format characters that hide in text or reorder it: soft hyphen,
/// zero-width space and joiners, direction marks and bidi controls, word joiner and invisible
/// operators, BOM. With them, `dup` and `dup\u{200b}` would be two names that look like one,
/// and `\u{202e}` could make a name read backwards.
pub fn is_hidden_in_names(ch: char) -> bool {
    ch.is_control()
        || matches!(
            ch,
            '\u{00AD}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// A serde error message in a JSON client's words: serde names Rust's types (`expected u32`,
/// `expected struct EmitBody with 3 elements`), which mean nothing to someone who sent JSON.
pub fn json_error_message(message: &str) -> String {
    let mut out = message.to_owned();
    for rust in [
        "i64", "u64", "i32", "u32", "i16", "u16", "i8", "u8", "usize", "isize",
    ] {
        out = out.replace(&format!("expected {rust}"), "expected a whole number");
    }
    for rust in ["f64", "f32"] {
        out = out.replace(&format!("expected {rust}"), "expected a number");
    }
    // `struct Name` and the ` with N elements` serde adds after it.
    while let Some(at) = out.find("struct ") {
        let name_end = out[at + 7..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(out.len(), |n| at + 7 + n);
        let mut end = name_end;
        if let Some(rest) = out[name_end..].strip_prefix(" with ")
            && let Some(n) = rest.find(" element")
            && rest[..n].bytes().all(|b| b.is_ascii_digit())
        {
            end = name_end + 6 + n + " element".len();
            if out[end..].starts_with('s') {
                end += 1;
            }
        }
        out.replace_range(at..end, "an object");
    }
    out
}

/// A name as it is stored and looked up: in Unicode's composed form (NFC: `é` typed as one
/// character or as `e` and a combining accent is one name), every kind of space (no-break,
/// thin, ideographic, …) an ASCII space, runs of them one space, and no white space at either
/// end. Names that look alike compare alike. (Line breaks and tabs inside a name are control
/// characters, which [`is_hidden_in_names`] refuses.)
pub fn normalize_name(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let mut out = String::with_capacity(s.len());
    for c in s.trim().nfc() {
        if c.is_whitespace() && !c.is_control() {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Free text from another system made fit to keep: each character free text may not hold
/// ([`is_forbidden_in_text`]) becomes U+FFFD.
pub fn printable_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(is_forbidden_in_text) {
        s.chars()
            .map(|c| {
                if is_forbidden_in_text(c) {
                    '\u{FFFD}'
                } else {
                    c
                }
            })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// `s` with every NUL replaced by U+FFFD: for text from another system that is kept, not judged
/// (a webhook receiver's answer, the Cloud API's error message, a job's error).
pub fn without_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}").into()
    } else {
        s.into()
    }
}

/// Replaces every NUL in `v`'s strings and keys with U+FFFD, for data that is not the caller's to
/// correct (a signed Meta webhook): it is kept, minus the one character no backend stores alike.
pub fn scrub_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => *s = without_nul(s).into_owned(),
        Value::Array(items) => items.iter_mut().for_each(scrub_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (k.replace('\0', "\u{FFFD}"), v))
                    .collect();
            }
            map.values_mut().for_each(scrub_nul);
        }
        _ => {}
    }
}

/// `json` with every lone surrogate escape (`\ud83d` not followed by its low half, or a low
/// half on its own) replaced by `\ufffd`, as a lossy UTF-16 decoder does; `None` when there is
/// none. serde_json refuses such a document whole; for data that is not the sender's to
/// correct (a signed webhook), one broken character must not cost the rest. Escapes are found
/// as [`json_has_nul`] finds them: a `u` after an odd run of backslashes. Linear.
pub fn repair_lone_surrogates(json: &[u8]) -> Option<Vec<u8>> {
    fn escape_at(bytes: &[u8], i: usize) -> Option<u16> {
        // `\uXXXX` starting at i (the backslash).
        let hex = bytes.get(i + 2..i + 6)?;
        (bytes.get(i + 1) == Some(&b'u'))
            .then(|| u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
            .flatten()
    }
    let high = |u: u16| (0xD800..0xDC00).contains(&u);
    let low = |u: u16| (0xDC00..0xE000).contains(&u);
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0; // bytes of `json` already in `out`
    let mut run = 0usize; // backslashes just before the current byte
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'\\' {
            run = 0;
            i += 1;
            continue;
        }
        if run % 2 == 1 {
            // This backslash is escaped by the one before it.
            run = 0;
            i += 1;
            continue;
        }
        let Some(unit) = escape_at(json, i) else {
            run += 1;
            i += 1;
            continue;
        };
        run = 0;
        if high(unit) && escape_at(json, i + 6).is_some_and(low) {
            i += 12; // a whole pair
            continue;
        }
        if high(unit) || low(unit) {
            let o = out.get_or_insert_with(|| Vec::with_capacity(json.len()));
            o.extend_from_slice(&json[copied..i]);
            o.extend_from_slice(b"\\ufffd");
            copied = i + 6;
        }
        i += 6;
    }
    out.map(|mut o| {
        o.extend_from_slice(&json[copied..]);
        o
    })
}

/// JSON from a party whose data is not the sender's to correct (Meta's webhooks and answers):
/// a lone surrogate escape costs its character (U+FFFD), not the document.
pub fn parse_lossy<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(json).or_else(|e| match repair_lone_surrogates(json) {
        Some(repaired) => serde_json::from_slice(&repaired),
        None => Err(e),
    })
}

/// Whether a URL path or query string holds an encoded NUL (`%00`).
pub fn url_has_nul(raw: &str) -> bool {
    raw.contains("%00")
}

#[cfg(test)]
mod tests {
    #[test]
    fn lone_surrogates_become_the_replacement_character() {
        use super::repair_lone_surrogates as r;
        let parse = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b);
        // A pair is kept; nothing to repair.
        assert_eq!(r(br#"{"t":"\ud83d\ude00 ok"}"#), None);
        assert_eq!(r(br#"{"t":"plain \\ud83d"}"#), None, "an escaped backslash");
        for (bad, want) in [
            (&br#"{"t":"hi \ud83d x"}"#[..], "hi \u{FFFD} x"),
            (br#"{"t":"\uDE00 low first"}"#, "\u{FFFD} low first"),
            (br#"{"t":"\ud83d\ud83d\ude00"}"#, "\u{FFFD}\u{1F600}"),
            (br#"{"t":"end \ud83d"}"#, "end \u{FFFD}"),
            (br#"{"t":"\\\ud83d"}"#, "\\\u{FFFD}"),
        ] {
            assert!(parse(bad).is_err(), "serde_json refuses {bad:?}");
            let fixed = r(bad).expect("repaired");
            assert_eq!(parse(&fixed).unwrap()["t"], want, "{bad:?}");
        }
    }

    #[test]
    fn serde_messages_name_json_types() {
        use super::json_error_message as m;
        assert_eq!(
            m("invalid type: string \"x\", expected u32 at line 1 column 9"),
            "invalid type: string \"x\", expected a whole number at line 1 column 9"
        );
        assert_eq!(
            m("invalid type: sequence, expected struct EmitBody with 3 elements"),
            "invalid type: sequence, expected an object"
        );
        assert_eq!(
            m("invalid type: map, expected struct Foo"),
            "invalid type: map, expected an object"
        );
        assert_eq!(m("expected f64"), "expected a number");
        assert_eq!(m("missing field `name`"), "missing field `name`");
    }

    #[test]
    fn names_that_look_alike_normalize_alike() {
        use super::normalize_name as n;
        assert_eq!(n("caf\u{e9}_x"), n("cafe\u{301}_x"));
        assert_eq!(n("my\u{a0}promo"), "my promo");
        assert_eq!(n("  my \u{2009}\u{3000} promo\t"), "my promo");
        assert_eq!(
            n("a\nb"),
            "a\nb",
            "refused as a control character, not hidden"
        );
        assert_eq!(n(""), "");
        assert_ne!(n("Promo"), n("promo"), "case still counts");
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn json_escapes_are_read_as_json_reads_them() {
        for (doc, nul) in [
            (r#"{"a":"x\u0000y"}"#, true),
            (r#"{"a\u0000":1}"#, true),
            (r#"{"a":"\\u0000"}"#, false),
            (r#"{"a":"\\\u0000"}"#, true),
            (r#"{"a":"\\\\u0000"}"#, false),
            (r#"{"a":"u0000 \u0041"}"#, false),
            (r#"{"a":"\u00001"}"#, true),
            ("", false),
        ] {
            assert_eq!(json_has_nul(doc.as_bytes()), nul, "{doc}");
            if let Ok(v) = serde_json::from_str::<Value>(doc) {
                // The scan agrees with what the parser makes of the document.
                assert_eq!(nul_path(&v).is_some(), nul, "{doc}");
            }
        }
    }

    #[test]
    fn the_path_names_the_field() {
        let v = json!({"name": "ok", "buttons": [{"title": "a"}, {"title": "b\u{0}"}]});
        assert_eq!(nul_path(&v).as_deref(), Some("buttons[1].title"));
        assert_eq!(nul_path(&json!("\u{0}")).as_deref(), Some(""));
        assert_eq!(nul_path(&json!({"a": {"b\u{0}": 1}})).as_deref(), Some("a"));
        assert_eq!(nul_path(&json!({"a": [1, "x", null]})), None);
    }

    #[test]
    fn scrubbing_keeps_everything_but_nul() {
        let mut v = json!({"a\u{0}": ["x\u{0}y", 1, {"b": "\u{0}"}], "c": "ok"});
        scrub_nul(&mut v);
        assert_eq!(
            v,
            json!({"a\u{FFFD}": ["x\u{FFFD}y", 1, {"b": "\u{FFFD}"}], "c": "ok"})
        );
        assert_eq!(nul_path(&v), None);
    }

    #[test]
    fn urls() {
        assert!(url_has_nul("/api/templates/a%00b"));
        assert!(!url_has_nul("/api/templates/a%2500"));
    }
}
