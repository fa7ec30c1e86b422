//! Which names are portal names: the one rule, from the pageview schema.
//!
//! The schema's `portal` pattern is `^[a-z0-9][a-z0-9-]{0,31}$`. Every place that accepts a portal
//! (validation of a record, the archive's directory names, the config's streams and Personalize
//! resources, the serving layer's requests) asks [`is_valid_portal`], so they can never disagree.
//! A name that passes is also a safe directory name: no `/`, no `.`, no upper case.

/// The longest portal name, in characters (the schema's `{0,31}` after the first one).
pub const MAX_PORTAL_CHARS: usize = 32;

/// Whether `portal` matches `^[a-z0-9][a-z0-9-]{0,31}$` (as a whole: `$` is the end of the
/// string, as in ECMA-262 without the multiline flag).
pub fn is_valid_portal(portal: &str) -> bool {
    let alnum = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    match portal.as_bytes().split_first() {
        Some((first, rest)) => {
            alnum(first)
                && rest.len() < MAX_PORTAL_CHARS
                && rest.iter().all(|b| alnum(b) || *b == b'-')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portal_names_follow_the_schema_pattern() {
        assert!(is_valid_portal("g1"));
        assert!(is_valid_portal("gshow-2"));
        assert!(is_valid_portal("0"));
        assert!(is_valid_portal(&"a".repeat(MAX_PORTAL_CHARS)));
        assert!(!is_valid_portal(&"a".repeat(MAX_PORTAL_CHARS + 1)));
        assert!(!is_valid_portal(""));
        assert!(!is_valid_portal("-g1"));
        assert!(!is_valid_portal("G1"));
        assert!(!is_valid_portal(".."));
        assert!(!is_valid_portal("g1/ge"));
        assert!(!is_valid_portal("g1\n"));
        assert!(!is_valid_portal("gê"));
    }
}
