//! Blind indexes: search on sealed elements through keyed hashes.
//!
//! A protected parameter's index values are stored as HMAC-SHA256 (the blind-index key, not a
//! data key, so rotation leaves the index valid) over the parameter, a form tag and the
//! normalised value, truncated to 16 bytes. Both sides hash the same way, so equality-style
//! search works without the value ever being stored:
//!
//! | form | indexed | searched by |
//! |------|---------|-------------|
//! | `s` string prefix | every prefix (1..=prefix length characters) of the folded value | `name=smi` |
//! | `x` exact string | the value as written | `name:exact=Smith` |
//! | `c` token code | the code/value alone | `identifier=123` |
//! | `t` token | `system|code` (`|code` without a system) | `identifier=urn:x|123` |
//! | `y` token system | the system | `identifier=urn:x|` |
//! | `d` date | the year, year-month and date of the value | `birthdate=1970-01-02`, `birthdate=1970` |
//! | `v` other | the value's text | references, numbers, URIs |
//!
//! What they leak: equal values have equal hashes (frequency of names and birth dates within
//! a type and parameter), and the number of prefix rows reveals a value's length up to the
//! prefix length. The README says so.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::index::IndexValue;

/// The hex hash of one form of one value of `resource_type`'s parameter `param`.
pub fn hash(key: &[u8; 32], resource_type: &str, param: &str, form: &str, value: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return String::new() };
    for part in [resource_type, param, form, value] {
        mac.update(part.as_bytes());
        mac.update(&[0]);
    }
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// The (form, text) pairs a value is indexed under.
pub fn value_forms(value: &IndexValue, prefix_length: usize) -> Vec<(&'static str, String)> {
    let mut forms = Vec::new();
    match value {
        IndexValue::String { normalized, exact } => {
            let mut prefix = String::new();
            for c in normalized.chars().take(prefix_length) {
                prefix.push(c);
                forms.push(("s", prefix.clone()));
            }
            forms.push(("x", exact.clone()));
        }
        IndexValue::Token { system, code } => {
            forms.push(("c", code.clone()));
            forms.push(("t", format!("{}|{code}", system.as_deref().unwrap_or(""))));
            if let Some(system) = system.as_deref().filter(|s| !s.is_empty()) {
                forms.push(("y", system.to_owned()));
            }
        }
        IndexValue::Date { start, end } => {
            // A single date (birthDate, deceasedDateTime): its year, month and day. Periods
            // are not blind-indexed (ranges cannot be searched blind).
            if let (Some(start), Some(end)) = (start, end)
                && start == end
            {
                for len in [4, 7, 10] {
                    if start.len() >= len {
                        forms.push(("d", start[..len].to_owned()));
                    }
                }
            }
        }
        IndexValue::Reference(r) => forms.push(("v", r.clone())),
        IndexValue::Number(n) => forms.push(("v", n.to_string())),
        IndexValue::Quantity { value, .. } => forms.push(("v", value.to_string())),
        IndexValue::Uri(u) => forms.push(("v", u.clone())),
    }
    forms
}

/// The hex hashes of a value (the rows `index::rows` writes); empty without a keyring (the
/// write then fails to seal anyway).
pub fn value_hashes(resource_type: &str, param: &str, value: &IndexValue) -> Vec<String> {
    let Ok(keyring) = super::keyring() else { return vec![] };
    value_forms(value, keyring.prefix_length)
        .into_iter()
        .map(|(form, text)| hash(keyring.blind_key(), resource_type, param, form, &text))
        .collect()
}

/// The hash a search value is looked up by: `form` as in the table above. For a string prefix
/// longer than the prefix length, its first prefix-length characters (README: such searches
/// may return values that differ after that length).
pub fn search_hash(resource_type: &str, param: &str, form: &str, value: &str) -> crate::error::FhirResult<Vec<u8>> {
    let keyring = super::keyring()?;
    let value: String = if form == "s" { value.chars().take(keyring.prefix_length).collect() } else { value.to_owned() };
    Ok(hex::decode(hash(keyring.blind_key(), resource_type, param, form, &value)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_of_values() {
        let s = IndexValue::String { normalized: "smith".into(), exact: "Smith".into() };
        let forms = value_forms(&s, 3);
        assert_eq!(forms, vec![("s", "s".into()), ("s", "sm".into()), ("s", "smi".into()), ("x", "Smith".into())]);
        let d = IndexValue::Date { start: Some("1970-01-02".into()), end: Some("1970-01-02".into()) };
        assert_eq!(value_forms(&d, 3), vec![("d", "1970".into()), ("d", "1970-01".into()), ("d", "1970-01-02".into())]);
        let t = IndexValue::Token { system: Some("urn:s".into()), code: "42".into() };
        assert_eq!(value_forms(&t, 3), vec![("c", "42".into()), ("t", "urn:s|42".into()), ("y", "urn:s".into())]);
    }

    #[test]
    fn hashes_depend_on_key_param_and_form() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let h = hash(&k1, "Patient", "family", "s", "smi");
        assert_eq!(h.len(), 32);
        assert_ne!(h, hash(&k2, "Patient", "family", "s", "smi"));
        assert_ne!(h, hash(&k1, "Patient", "given", "s", "smi"));
        assert_ne!(h, hash(&k1, "Patient", "family", "x", "smi"));
        assert!(!h.contains("smi"));
    }
}
