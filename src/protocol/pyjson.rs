//! JSON text exactly as Python's `json.dumps` writes it with its default settings: separators `", "` and `": "`,
//! ASCII-only output (`\uXXXX` escapes with lowercase hex, surrogate pairs above U+FFFF) and Python's float
//! formatting (`1e-05`, `1e+16`, `100.0`).
//!
//! The facilitator sends job requests and cheat reports in this form (docs/PROTOCOL.md 4.2, 4.3), job signatures hash a
//! string encoded this way (9.4), and cheat-report signatures hash an object encoded this way with sorted keys (10).
//! This module only formats; it never parses and never decides which keys a message has.
//!
//! Known limit: `serde_json` (without `arbitrary_precision`) holds integers outside the 64-bit range as floats, so
//! such an integer comes out as a float; Python would keep it an integer. Nothing the facilitator signs has one.

use serde_json::{Map, Number, Value};

/// `json.dumps(value)`: keys in the map's order.
///
/// ```
/// use facilitator_client::protocol::testing::pyjson;
/// let value = serde_json::json!({"b": [1, 2.5, "é"], "a": null});
/// assert_eq!(pyjson::dumps(&value), r#"{"b": [1, 2.5, "\u00e9"], "a": null}"#);
/// ```
pub fn dumps(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, false);
    out
}

/// `json.dumps(value, sort_keys=True)`: keys of every object sorted by code point, recursively.
///
/// ```
/// use facilitator_client::protocol::testing::pyjson;
/// let value = serde_json::json!({"b": {"d": 1e-5, "c": 1e16}, "a": 100.0});
/// assert_eq!(pyjson::dumps_sorted(&value), r#"{"a": 100.0, "b": {"c": 1e+16, "d": 1e-05}}"#);
/// ```
pub fn dumps_sorted(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, true);
    out
}

/// `json.dumps(text)`: the JSON string literal of `text`, quotes included, pure ASCII.
///
/// ```
/// use facilitator_client::protocol::testing::pyjson;
/// assert_eq!(pyjson::string_literal("a\"b\\c\u{7f}😀"), r#""a\"b\\c\u007f\ud83d\ude00""#);
/// ```
///
/// (The client itself writes its one string literal, the signed payload, in `signed_fields.rs`.)
#[cfg(any(test, feature = "test-support"))]
pub fn string_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    write_string(&mut out, text);
    out
}

/// Python's `repr(float)`: the shortest text that reads back as the same number, in exponent form when the decimal
/// exponent is below -4 or above 15, and always with a `.` or an exponent (so `100.0`, not `100`).
///
/// Returns `None` for NaN and infinities, which JSON cannot hold.
///
/// ```
/// use facilitator_client::protocol::testing::pyjson::float_repr;
/// assert_eq!(float_repr(0.0001).as_deref(), Some("0.0001"));
/// assert_eq!(float_repr(0.00001).as_deref(), Some("1e-05"));
/// assert_eq!(float_repr(1e15).as_deref(), Some("1000000000000000.0"));
/// assert_eq!(float_repr(1.5e300).as_deref(), Some("1.5e+300"));
/// ```
pub fn float_repr(x: f64) -> Option<String> {
    if !x.is_finite() {
        return None;
    }
    // Python's repr uses the fewest significant digits that read back as `x`, and among the candidates with that
    // many digits the closest one, ties to even. Rust's `{:e}` finds the same digit count but breaks exact ties
    // upwards (1462468587316101.25 -> ...101.3, Python ...101.2), so take only the count from it and let the
    // exact-precision formatter, which rounds half to even, produce the digits.
    let magnitude = x.abs();
    let shortest = format!("{magnitude:e}");
    let digit_count = shortest
        .split('e')
        .next()?
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    let sci = format!("{magnitude:.*e}", digit_count.saturating_sub(1));
    let negative = x.is_sign_negative();
    let (mantissa, exponent) = sci.split_once('e')?;
    let exponent: i32 = exponent.parse().ok()?;
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // Python's `decpt`: the value is 0.d1d2... * 10^decpt.
    let decpt = exponent + 1;
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let sign = if exponent < 0 { '-' } else { '+' };
        out.push_str(&format!("e{sign}{:02}", exponent.unsigned_abs()));
    } else if decpt <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', decpt.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        let decpt = decpt as usize;
        if decpt < digits.len() {
            out.push_str(&digits[..decpt]);
            out.push('.');
            out.push_str(&digits[decpt..]);
        } else {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', decpt - digits.len()));
            out.push_str(".0");
        }
    }
    Some(out)
}

fn write_value(out: &mut String, value: &Value, sort_keys: bool) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item, sort_keys);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map, sort_keys),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>, sort_keys: bool) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    if sort_keys {
        // Rust compares `str` by UTF-8 bytes, which orders exactly like Python's code-point comparison.
        entries.sort_by(|a, b| a.0.cmp(b.0));
    }
    out.push('{');
    for (i, (key, item)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_string(out, key);
        out.push_str(": ");
        write_value(out, item, sort_keys);
    }
    out.push('}');
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(text) = n.as_f64().and_then(float_repr) {
        out.push_str(&text);
    } else {
        // serde_json never holds a non-finite number; Python would write `NaN` here.
        out.push_str("NaN");
    }
}

fn write_string(out: &mut String, text: &str) {
    out.reserve(text.len() + text.len() / 4 + 2);
    out.push('"');
    // Runs of printable ASCII are copied as they are (this is on every job's signature check: the payload is a
    // string literal of about a kilobyte); each other character is escaped.
    let bytes = text.as_bytes();
    let (mut plain, mut i) = (0, 0);
    while let Some(&byte) = bytes.get(i) {
        if matches!(byte, b' '..=b'~') && byte != b'"' && byte != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(&text[plain..i]);
        let c = text[i..].chars().next().unwrap_or_default();
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str("\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(HEX[usize::from((*unit >> shift) & 0xf)]);
                    }
                }
            }
        }
        // `i` is at a character boundary: it only ever moves over ASCII bytes or whole characters.
        i += c.len_utf8();
        plain = i;
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

const HEX: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f',
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_follow_python_repr() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.5, "0.5"),
            (100.0, "100.0"),
            (1e-5, "1e-05"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-2.5e-7, "-2.5e-07"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (12.0, "12.0"),
            (0.001, "0.001"),
            (1234.5678, "1234.5678"),
            // Exact ties between two shortest candidates go to the even digit, as in Python. (Written as sums:
            // both values are exact in binary, but clippy reads the long literals as excessive precision.)
            (1462468587316101.0 + 0.25, "1462468587316101.2"),
            (12699216772186.0 + 0.3125, "12699216772186.312"),
        ];
        for (x, expected) in cases {
            assert_eq!(float_repr(*x).as_deref(), Some(*expected), "{x:e}");
        }
        assert_eq!(float_repr(f64::NAN), None);
    }

    /// Python's `json.dumps` of a string, one character at a time (the definition the fast writer must match).
    fn literal_char_by_char(text: &str) -> String {
        let mut out = String::from('"');
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                ' '..='~' => out.push(c),
                _ => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn string_literals_escape_every_character_as_python_does() {
        let all: String = (0u32..0x3000)
            .chain(0xfff0..0x10100)
            .chain([0x1f600, 0x10ffff])
            .filter_map(char::from_u32)
            .collect();
        for text in [all.as_str(), "", "plain", "a\"b\\c", "é at the end é", "😀"] {
            assert_eq!(string_literal(text), literal_char_by_char(text), "{text:?}");
        }
    }

    #[test]
    fn control_characters_use_python_escapes() {
        assert_eq!(
            string_literal("\u{1}\u{8}\u{c}\u{1f} "),
            r#""\u0001\b\f\u001f ""#
        );
        assert_eq!(string_literal("/\u{2028}"), r#""/\u2028""#);
    }
}
