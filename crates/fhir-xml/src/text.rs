//! Characters, names and escaping of XML 1.0 (https://www.w3.org/TR/xml/).
//!
//! Shared by the writer, the narrative checker and the input pre-scan, so that what the
//! server writes and what it accepts follow one reading of the `Char` and `Name` productions.

/// Whether XML 1.0 can carry `c` at all (`Char` production, §2.2): not U+0000–U+001F other
/// than tab, LF and CR, and not U+FFFE / U+FFFF — not even as a character reference.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// `NameStartChar` (§2.3).
fn is_name_start(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}'
        | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// `NameChar` (§2.3).
fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Whether `s` is an XML `Name` (§2.3); names with a prefix (`xml:lang`) included.
pub(crate) fn is_xml_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

/// The replacement for what XML cannot carry (U+FFFD REPLACEMENT CHARACTER).
const REPLACEMENT: &str = "\u{FFFD}";

/// Appends `s` as XML character data: `&`, `<`, `>` escaped, CR as a reference (a parser
/// would turn a raw CR into LF), characters XML 1.0 cannot carry replaced by U+FFFD.
pub(crate) fn push_text(out: &mut String, s: &str) {
    push_escaped(out, s, false);
}

/// Appends `s` for a double-quoted attribute value: as [`push_text`], and `"`, tab, LF and CR
/// as references, because attribute-value normalisation (§3.3.3) would turn raw ones into spaces.
pub(crate) fn push_attr(out: &mut String, s: &str) {
    push_escaped(out, s, true);
}

/// Appends markup or text that is already escaped, replacing only the characters XML 1.0 cannot
/// carry (by U+FFFD).
pub(crate) fn push_sanitized(out: &mut String, s: &str) {
    if s.chars().all(is_xml_char) {
        out.push_str(s);
    } else {
        out.extend(s.chars().map(|c| if is_xml_char(c) { c } else { '\u{FFFD}' }));
    }
}

fn needs_care(b: u8) -> bool {
    // 0xEF starts U+FFFE / U+FFFF (EF BF BE / EF BF BF) among others; the slow path decides.
    b < 0x20 || matches!(b, b'&' | b'<' | b'>' | b'"' | 0xEF)
}

fn push_escaped(out: &mut String, s: &str, attr: bool) {
    if !s.bytes().any(needs_care) {
        out.push_str(s);
        return;
    }
    let mut plain = 0;
    for (i, c) in s.char_indices() {
        let replacement = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '"' if attr => "&quot;",
            '\n' if attr => "&#10;",
            '\t' if attr => "&#9;",
            '\r' => "&#13;",
            c if !is_xml_char(c) => REPLACEMENT,
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        out.push_str(replacement);
        plain = i + c.len_utf8();
    }
    out.push_str(&s[plain..]);
}

/// Why a reference (`&…;`) could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefProblem {
    /// `&` that starts no reference, or a reference without its `;`.
    Malformed,
    /// A named entity other than XML's five (`&nbsp;`): undefined without a DTD.
    UnknownEntity,
    /// A character reference to a character XML cannot carry (`&#1;`, `&#xFFFF;`).
    ForbiddenChar,
}

/// Resolves the references of raw character data or an attribute value: the five predefined
/// entities and character references. `lenient` (rendering stored data) keeps what cannot be
/// resolved as literal text (a forbidden character as U+FFFD) instead of failing.
pub(crate) fn decode_refs(raw: &str, lenient: bool) -> Result<std::borrow::Cow<'_, str>, RefProblem> {
    if !raw.contains('&') {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        // Entity names and references are short; a `;` far away means there is no reference.
        let end = after.as_bytes().iter().take(34).position(|&b| b == b';');
        let resolved = end.ok_or(RefProblem::Malformed).and_then(|end| resolve(&after[..end]).map(|c| (c, end)));
        match resolved {
            Ok((c, end)) => {
                out.push(c);
                rest = &after[end + 1..];
            }
            Err(problem) if !lenient => return Err(problem),
            Err(RefProblem::ForbiddenChar) => {
                out.push_str(REPLACEMENT);
                rest = end.map_or(after, |end| &after[end + 1..]);
            }
            Err(_) => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(std::borrow::Cow::Owned(out))
}

/// One reference's name (between `&` and `;`) → its character.
fn resolve(name: &str) -> Result<char, RefProblem> {
    let code = match name {
        "lt" => return Ok('<'),
        "gt" => return Ok('>'),
        "amp" => return Ok('&'),
        "quot" => return Ok('"'),
        "apos" => return Ok('\''),
        _ => match name.strip_prefix('#') {
            None if is_xml_name(name) => return Err(RefProblem::UnknownEntity),
            None => return Err(RefProblem::Malformed),
            Some(n) => match n.strip_prefix('x') {
                Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => u32::from_str_radix(hex, 16),
                None if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.parse::<u32>(),
                _ => return Err(RefProblem::Malformed),
            },
        },
    };
    match code.ok().and_then(char::from_u32) {
        Some(c) if is_xml_char(c) => Ok(c),
        _ => Err(RefProblem::ForbiddenChar),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_text_and_attributes_well_formed() {
        let mut s = String::new();
        push_text(&mut s, "a<b>&\"c\"\n\r\u{1}\u{FFFE}\u{FFFF}\u{FFFD}é");
        assert_eq!(s, "a&lt;b&gt;&amp;\"c\"\n&#13;\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}é");
        let mut s = String::new();
        push_attr(&mut s, "x\"y\tz\n");
        assert_eq!(s, "x&quot;y&#9;z&#10;");
    }

    #[test]
    fn references_are_resolved_strictly_or_leniently() {
        assert_eq!(decode_refs("a &lt;&#65;&#x42;", false).unwrap(), "a <AB");
        assert_eq!(decode_refs("&nbsp;", false), Err(RefProblem::UnknownEntity));
        assert_eq!(decode_refs("&#1;", false), Err(RefProblem::ForbiddenChar));
        assert_eq!(decode_refs("&#xFFFF;", false), Err(RefProblem::ForbiddenChar));
        assert_eq!(decode_refs("a & b", false), Err(RefProblem::Malformed));
        assert_eq!(decode_refs("&#99999999999;", false), Err(RefProblem::ForbiddenChar));
        assert_eq!(decode_refs("&nbsp; & &#1;x", true).unwrap(), "&nbsp; & \u{FFFD}x");
    }

    #[test]
    fn names() {
        assert!(is_xml_name("div") && is_xml_name("xml:lang") && is_xml_name("h1") && is_xml_name("é"));
        assert!(!is_xml_name("") && !is_xml_name("1a") && !is_xml_name("a<b") && !is_xml_name("-x"));
    }
}
