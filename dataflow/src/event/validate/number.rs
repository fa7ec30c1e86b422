//! Exact classification of a JSON number for the schema's integer fields [N2].
//!
//! A number is an integer when its exact decimal value has no fractional part (`5.0`, `5e2`,
//! `0.5e1` and `-0` are; `5.5` and `1e-1` are not), and range checks use that exact value, so
//! nothing goes through `f64`: `1e400` is simply too big, and a mantissa of a thousand digits is as
//! exact as any other.

/// What a number is, as far as a non-negative integer field cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IntClass {
    /// Its value has a fractional part (so it is not an integer).
    Fraction,
    /// A negative integer.
    Negative,
    /// A non-negative integer above `u64::MAX`.
    TooBig,
    /// A non-negative integer.
    Value(u64),
}

/// Exponents are saturated here: far beyond any digit count a record can hold.
const EXPONENT_CAP: i64 = 1 << 40;

/// Classifies a number that the parser accepted (`-? int frac? exp?`). Never panics, whatever the
/// input; text that is not a JSON number gets some class, not an error.
pub(super) fn classify(text: &str) -> IntClass {
    let bytes = text.as_bytes();
    // The usual case: plain digits that fit (19 digits are below u64::MAX).
    if bytes.len() <= 19 && !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit) {
        let value = bytes
            .iter()
            .fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0'));
        return IntClass::Value(value);
    }
    let (negative, rest) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    let (int_digits, rest) = split_digits(rest);
    let (frac_digits, rest) = match rest.split_first() {
        Some((b'.', rest)) => split_digits(rest),
        _ => (&[] as &[u8], rest),
    };
    let exponent = match rest.split_first() {
        Some((b'e' | b'E', rest)) => exponent(rest),
        _ => 0,
    };

    let digits = || int_digits.iter().chain(frac_digits);
    let total = int_digits.len() + frac_digits.len();
    let Some(leading_zeros) = digits().position(|&d| d != b'0') else {
        return IntClass::Value(0); // every digit is 0: the value is 0, whatever sign or exponent
    };
    let trailing_zeros = digits().rev().position(|&d| d != b'0').unwrap_or(0);
    let significant = total - leading_zeros - trailing_zeros;
    // value = significant digits × 10^scale, the significant digits ending in a nonzero one
    let scale = exponent - count(frac_digits.len()) + count(trailing_zeros);
    if scale < 0 {
        return IntClass::Fraction;
    }
    if negative {
        return IntClass::Negative;
    }
    if count(significant).saturating_add(scale) > 20 {
        return IntClass::TooBig; // at least 10^20 > u64::MAX
    }
    let mut value: u128 = 0;
    for &digit in digits().skip(leading_zeros).take(significant) {
        value = value * 10 + u128::from(digit - b'0');
    }
    for _ in 0..scale {
        value *= 10;
    }
    u64::try_from(value).map_or(IntClass::TooBig, IntClass::Value)
}

/// Splits a run of ASCII digits off the front.
fn split_digits(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    bytes.split_at_checked(end).unwrap_or((bytes, &[]))
}

/// The exponent after `e`: `[+-]? digits`, saturated at ±[`EXPONENT_CAP`].
fn exponent(bytes: &[u8]) -> i64 {
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, bytes),
    };
    let mut magnitude: i64 = 0;
    for &digit in split_digits(digits).0 {
        magnitude = (magnitude * 10 + i64::from(digit - b'0')).min(EXPONENT_CAP);
    }
    if negative { -magnitude } else { magnitude }
}

/// A length as a signed count (lengths of a record's parts are far below `i64::MAX`).
fn count(length: usize) -> i64 {
    i64::try_from(length).unwrap_or(i64::MAX / 4)
}
