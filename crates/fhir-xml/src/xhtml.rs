//! The narrative's XHTML (`Narrative.div`, https://hl7.org/fhir/R4/narrative.html).
//!
//! One bounded, linear reader (quick-xml's tokenizer, attributes read here) serves two ends:
//!
//! - [`check_narrative`] is the input rule for every write: well-formed XML, one root `div` in
//!   the XHTML namespace, only the basic HTML elements and attributes narrative.html allows
//!   (txt-1: no script, style sheets, forms, frames, objects, event attributes or `javascript:`
//!   URLs), and some non-whitespace content (txt-2).
//! - [`write_narrative`] embeds a stored div in XML output. It re-serialises what it read (names
//!   checked, text and attributes escaped by us), so the output is well-formed whatever quirks
//!   the tokenizer tolerates; a div that cannot be read as XML — stored before the input rule
//!   existed — is written as escaped text inside an XHTML div instead of failing the response.

use quick_xml::Reader;
use quick_xml::events::Event;

use crate::MAX_DEPTH;
use crate::text::{RefProblem, decode_refs, is_xml_char, is_xml_name, push_attr, push_sanitized, push_text};

/// The XHTML namespace every narrative div is in.
pub const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// At most this many attributes on one element: no HTML element needs more, and the bound keeps
/// the duplicate check (each name against the previous ones) small.
pub(crate) const MAX_ATTRIBUTES: usize = 64;

/// Why a narrative was refused. `rule` is `xml` (not well-formed), `xhtml` (not a div in the
/// XHTML namespace), or the FHIR invariant (`txt-1`, `txt-2`); `message` says what is wrong
/// without quoting the narrative's text (diagnostics never repeat submitted data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarrativeError {
    pub rule: &'static str,
    pub message: String,
}

impl NarrativeError {
    fn new(rule: &'static str, message: impl Into<String>) -> Self {
        NarrativeError { rule, message: message.into() }
    }

    /// The OperationOutcome issue type: `invariant` for the txt-* constraints, `value` otherwise.
    pub fn issue_code(&self) -> &'static str {
        if self.rule.starts_with("txt-") { "invariant" } else { "value" }
    }
}

impl std::fmt::Display for NarrativeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Checks a narrative div as every write must (narrative.html, txt-1 and txt-2).
pub fn check_narrative(div: &str) -> Result<(), NarrativeError> {
    walk(div, None)
}

/// Appends a stored narrative div to XML output: re-serialised when it reads as XML, otherwise
/// as escaped text inside `<div xmlns="http://www.w3.org/1999/xhtml">`. Never fails.
pub(crate) fn write_narrative(out: &mut String, div: &str) {
    let mark = out.len();
    if walk(div, Some(out)).is_err() {
        out.truncate(mark);
        out.push_str("<div xmlns=\"");
        out.push_str(XHTML_NS);
        out.push_str("\">");
        push_text(out, div);
        out.push_str("</div>");
    }
}

/// Basic HTML formatting elements (HTML 4.0 chapters 7–11 but 9.4, and 15), links, images and
/// image maps: the list the FHIR validator enforces for txt-1.
const ELEMENTS: &[&str] = &[
    "p", "br", "div", "h1", "h2", "h3", "h4", "h5", "h6", "a", "span", "b", "em", "i", "strong", "small", "big", "tt",
    "dfn", "q", "var", "abbr", "acronym", "cite", "blockquote", "hr", "address", "bdo", "kbd", "sub", "sup", "ul",
    "ol", "li", "dl", "dt", "dd", "pre", "table", "caption", "colgroup", "col", "thead", "tr", "tfoot", "tbody", "th",
    "td", "code", "samp", "img", "map", "area",
];

/// Attributes allowed on any narrative element (core, i18n and table attributes).
const GLOBAL_ATTRIBUTES: &[&str] = &[
    "title", "style", "class", "id", "lang", "xml:lang", "dir", "accesskey", "tabindex", "span", "width", "align",
    "valign", "char", "charoff", "abbr", "axis", "headers", "scope", "rowspan", "colspan",
];

/// Attributes allowed on one element only.
const ELEMENT_ATTRIBUTES: &[(&str, &str)] = &[
    ("a", "href"), ("a", "name"), ("a", "type"), ("a", "rel"), ("a", "rev"), ("a", "target"), ("a", "hreflang"),
    ("img", "src"), ("img", "alt"), ("img", "height"), ("img", "border"), ("img", "usemap"), ("img", "longdesc"),
    ("img", "hspace"), ("img", "vspace"), ("blockquote", "cite"), ("q", "cite"), ("table", "summary"),
    ("table", "border"), ("table", "frame"), ("table", "rules"), ("table", "cellspacing"), ("table", "cellpadding"),
    ("td", "nowrap"), ("th", "nowrap"), ("area", "shape"), ("area", "coords"), ("area", "href"), ("area", "nohref"),
    ("area", "alt"), ("area", "target"), ("map", "name"), ("ol", "start"), ("ol", "type"), ("ul", "type"),
    ("li", "type"), ("li", "value"), ("pre", "xml:space"), ("br", "clear"),
];

/// Attributes that hold a URL a reader's browser would follow or load.
const URL_ATTRIBUTES: &[&str] = &["href", "src", "cite", "longdesc", "usemap"];

/// A name as diagnostics show it: names are XML names (checked before), cut to a sane length.
fn shown(name: &str) -> String {
    name.chars().take(40).collect()
}

fn not_well_formed(what: &str) -> NarrativeError {
    NarrativeError::new("xml", format!("the narrative is not well-formed XML: {what}"))
}

/// One attribute as written: its name and its raw (still escaped) value.
pub(crate) struct RawAttribute<'a> {
    pub name: &'a str,
    pub raw: &'a str,
}

/// Reads the attributes part of a start tag (what follows the element name) strictly: each
/// attribute after whitespace, `name = "value"` or `'value'`, no `<` in values, no repeats, at
/// most [`MAX_ATTRIBUTES`] (read no further, so the cost stays linear in the input).
pub(crate) fn attributes(raw: &str) -> Result<Vec<RawAttribute<'_>>, String> {
    let b = raw.as_bytes();
    let ws = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let mut list: Vec<RawAttribute<'_>> = Vec::new();
    let mut i = 0;
    loop {
        let gap = i;
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if i == b.len() {
            return Ok(list);
        }
        if i == gap {
            return Err("attributes must be separated by whitespace".into());
        }
        if list.len() == MAX_ATTRIBUTES {
            return Err(format!("an element has more than {MAX_ATTRIBUTES} attributes"));
        }
        let start = i;
        while i < b.len() && !ws(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let name = &raw[start..i];
        if !is_xml_name(name) {
            return Err("an attribute name is not an XML name".into());
        }
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err("an attribute has no value".into());
        }
        i += 1;
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        let quote = match b.get(i) {
            Some(&q @ (b'"' | b'\'')) => q,
            _ => return Err("an attribute value is not quoted".into()),
        };
        let value_start = i + 1;
        let Some(len) = b[value_start..].iter().position(|&c| c == quote) else {
            return Err("an attribute value is not closed".into());
        };
        let value = &raw[value_start..value_start + len];
        if value.contains('<') {
            return Err("an attribute value holds '<'".into());
        }
        if list.iter().any(|a| a.name == name) {
            return Err("an attribute is repeated".into());
        }
        list.push(RawAttribute { name, raw: value });
        i = value_start + len + 1;
    }
}

fn ref_problem(problem: RefProblem) -> NarrativeError {
    match problem {
        RefProblem::Malformed => not_well_formed("an '&' starts no character or entity reference (write &amp;)"),
        RefProblem::UnknownEntity => not_well_formed(
            "it uses an entity XML does not define without a DTD (such as &nbsp;); use the character itself or a character reference",
        ),
        RefProblem::ForbiddenChar => not_well_formed("a character reference names a character XML 1.0 cannot carry"),
    }
}

/// Reads `div` once. `out` present: rendering (lenient about references, writes the re-serialised
/// div); absent: validating (every narrative.html rule).
fn walk(div: &str, mut out: Option<&mut String>) -> Result<(), NarrativeError> {
    let strict = out.is_none();
    if strict && !div.chars().all(is_xml_char) {
        return Err(not_well_formed("it holds a character XML 1.0 cannot carry"));
    }
    let mut reader = Reader::from_str(div);
    reader.check_end_names(true).check_comments(true).trim_text(false).expand_empty_elements(false);
    let mut depth = 0usize;
    let mut root_seen = false;
    let mut content = false;
    loop {
        let position = reader.buffer_position();
        let event = reader.read_event().map_err(|_| not_well_formed(&format!("the markup near byte {position} cannot be read")))?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                if depth == 0 {
                    if root_seen {
                        return Err(not_well_formed("it has more than one root element"));
                    }
                    root_seen = true;
                }
                let name = std::str::from_utf8(e.name().into_inner()).map_err(|_| not_well_formed("an element name is not UTF-8"))?;
                let raw = std::str::from_utf8(e.attributes_raw()).map_err(|_| not_well_formed("an attribute is not UTF-8"))?;
                element(name, raw, depth, empty, out.as_deref_mut())?;
                if name == "img" {
                    content = true;
                }
                if !empty {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(not_well_formed(&format!("elements are nested more than {MAX_DEPTH} levels deep")));
                    }
                }
            }
            Event::End(e) => {
                // The tokenizer has checked that the name matches its start tag.
                depth = depth.saturating_sub(1);
                if let Some(out) = out.as_deref_mut() {
                    out.push_str("</");
                    out.push_str(std::str::from_utf8(e.name().into_inner()).unwrap_or("div"));
                    out.push('>');
                }
            }
            Event::Text(t) => {
                let raw = std::str::from_utf8(&t).map_err(|_| not_well_formed("text is not UTF-8"))?;
                if depth == 0 {
                    if !raw.trim_matches([' ', '\t', '\r', '\n']).is_empty() {
                        return Err(NarrativeError::new("xhtml", "the narrative has text outside its root div"));
                    }
                    continue;
                }
                if strict && raw.contains("]]>") {
                    return Err(not_well_formed("text holds ']]>'"));
                }
                match (decode_refs(raw, false), out.as_deref_mut()) {
                    (Ok(text), None) => content |= !text.trim().is_empty(),
                    (Err(problem), None) => return Err(ref_problem(problem)),
                    // Text that reads strictly is kept as written (a round trip changes nothing).
                    (Ok(_), Some(out)) if !raw.contains("]]>") => push_sanitized(out, raw),
                    (_, Some(out)) => push_text(out, &decode_refs(raw, true).unwrap_or_default()),
                }
            }
            Event::CData(t) => {
                if depth == 0 || (strict && !div.get(position..).is_some_and(|s| s.starts_with("<![CDATA["))) {
                    return Err(not_well_formed("a CDATA section is misplaced or misspelt"));
                }
                let text = std::str::from_utf8(&t).map_err(|_| not_well_formed("text is not UTF-8"))?;
                content |= !text.trim().is_empty();
                if let Some(out) = out.as_deref_mut() {
                    push_text(out, text);
                }
            }
            // Comments are no content; the rendering leaves them out.
            Event::Comment(_) => {}
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {
                return Err(NarrativeError::new(
                    "xhtml",
                    "the narrative holds an XML declaration, processing instruction or document type declaration",
                ));
            }
            Event::Eof => break,
        }
    }
    if depth != 0 {
        return Err(not_well_formed("an element is not closed"));
    }
    if !root_seen {
        return Err(NarrativeError::new("xhtml", "the narrative must be a div element"));
    }
    if strict && !content {
        return Err(NarrativeError::new("txt-2", "txt-2: the narrative has no non-whitespace content"));
    }
    Ok(())
}

/// One start tag (or empty-element tag) of the narrative.
fn element(name: &str, raw: &str, depth: usize, empty: bool, mut out: Option<&mut String>) -> Result<(), NarrativeError> {
    let strict = out.is_none();
    if !is_xml_name(name) {
        return Err(not_well_formed("an element name is not an XML name"));
    }
    if depth == 0 && name != "div" {
        return Err(NarrativeError::new("xhtml", "the narrative's root element must be a div"));
    }
    if name.contains(':') {
        return Err(NarrativeError::new("txt-1", "txt-1: narrative elements must be XHTML elements without a prefix"));
    }
    if strict && !ELEMENTS.contains(&name) {
        return Err(NarrativeError::new(
            "txt-1",
            format!("txt-1: the element '{}' is not one of the basic HTML elements narrative.html allows", shown(name)),
        ));
    }
    let attributes = attributes(raw).map_err(|e| not_well_formed(&e))?;
    if let Some(out) = out.as_deref_mut() {
        out.push('<');
        out.push_str(name);
        if depth == 0 {
            out.push_str(" xmlns=\"");
            out.push_str(XHTML_NS);
            out.push('"');
        }
    }
    let mut namespaced = depth > 0;
    for a in &attributes {
        let value = decode_refs(a.raw, !strict).map_err(ref_problem)?;
        if a.name == "xmlns" {
            if value != XHTML_NS {
                return Err(NarrativeError::new(
                    "xhtml",
                    format!("the narrative must be in the XHTML namespace (xmlns=\"{XHTML_NS}\")"),
                ));
            }
            namespaced = true;
            continue;
        }
        if a.name.starts_with("xmlns:") {
            // Declares a prefix no element or attribute may use (checked here): harmless, left out.
            continue;
        }
        if a.name.contains(':') && !a.name.starts_with("xml:") {
            return Err(NarrativeError::new("txt-1", "txt-1: narrative attributes must be XHTML attributes without a prefix"));
        }
        if strict {
            check_attribute(name, a.name, &value)?;
        }
        if let Some(out) = out.as_deref_mut() {
            out.push(' ');
            out.push_str(a.name);
            out.push_str("=\"");
            if decode_refs(a.raw, false).is_ok() {
                // Kept as written; a `"` can only be there inside single quotes.
                push_sanitized(out, &a.raw.replace('"', "&quot;"));
            } else {
                push_attr(out, &value);
            }
            out.push('"');
        }
    }
    if strict && !namespaced {
        return Err(NarrativeError::new(
            "xhtml",
            format!("the narrative div must declare the XHTML namespace (xmlns=\"{XHTML_NS}\")"),
        ));
    }
    if let Some(out) = out {
        out.push_str(if empty { "/>" } else { ">" });
    }
    Ok(())
}

/// txt-1 for one attribute: allowed on this element, no event handler, no script URL, no style
/// that loads or runs anything.
fn check_attribute(element: &str, name: &str, value: &str) -> Result<(), NarrativeError> {
    if name.len() > 2 && name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("on")) {
        return Err(NarrativeError::new(
            "txt-1",
            format!("txt-1: the attribute '{}' is an event handler, which narrative does not allow", shown(name)),
        ));
    }
    if !GLOBAL_ATTRIBUTES.contains(&name) && !ELEMENT_ATTRIBUTES.contains(&(element, name)) {
        return Err(NarrativeError::new(
            "txt-1",
            format!("txt-1: the attribute '{}' is not allowed on the narrative element '{element}'", shown(name)),
        ));
    }
    if URL_ATTRIBUTES.contains(&name) {
        // Browsers ignore whitespace and control characters inside a scheme (`java\tscript:`).
        let scheme: String = value
            .chars()
            .filter(|c| !c.is_whitespace() && !c.is_control())
            .take(16)
            .collect::<String>()
            .to_ascii_lowercase();
        let image = element == "img" && name == "src" && scheme.starts_with("data:image/") && !scheme.starts_with("data:image/svg");
        if scheme.starts_with("javascript:") || scheme.starts_with("vbscript:") || (scheme.starts_with("data:") && !image) {
            return Err(NarrativeError::new(
                "txt-1",
                format!("txt-1: the attribute '{name}' on '{element}' holds a script or data URL, which narrative does not allow"),
            ));
        }
    }
    if name == "style" {
        let style = value.to_ascii_lowercase();
        if ["url(", "@import", "expression(", "javascript:", "behavior", "-moz-binding", "\\"].iter().any(|s| style.contains(s)) {
            return Err(NarrativeError::new(
                "txt-1",
                "txt-1: a style attribute may only hold internal formatting (no url(), @import, expression(), behaviours or escapes)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = r#"xmlns="http://www.w3.org/1999/xhtml""#;

    fn rendered(div: &str) -> String {
        let mut out = String::new();
        write_narrative(&mut out, div);
        out
    }

    #[test]
    fn good_narratives_pass() {
        for div in [
            format!("<div {NS}>Hello</div>"),
            format!("<div {NS}><p>Allergic to <b>penicillin</b> &amp; &lt;dust&gt; &#233;</p><br/></div>"),
            format!(r#"<div {NS} class="x" xml:lang="en"><table border="1"><tbody><tr><td colspan="2">x</td></tr></tbody></table></div>"#),
            format!(r##"<div {NS}><a href="http://example.org/a?b=c&amp;d=e">link</a><img src="#pic" alt=""/></div>"##),
            format!(r#"<div {NS}><img src="data:image/png;base64,AAAA"/></div>"#),
            format!("<div {NS}><!-- a comment --><![CDATA[1 < 2]]></div>"),
            format!("  <div {NS}>x</div>\n"),
        ] {
            assert_eq!(check_narrative(&div), Ok(()), "{div}");
        }
    }

    #[test]
    fn hostile_or_broken_narratives_are_refused_with_the_rule() {
        let cases: &[(&str, &str)] = &[
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><<<", "xml"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\">x", "xml"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\">a & b</div>", "xml"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\">&nbsp;x</div>", "xml"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\">&#1;x</div>", "xml"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\">\u{FFFF}x</div>", "xml"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p a=\"1\"b=\"2\">x</p></div>", "xml"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p a=\"1\" a=\"2\">x</p></div>", "xml"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><img src=x></div>", "xml"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div><div/>", "xml"),
            ("<div>x</div>", "xhtml"),
            ("<div xmlns=\"http://example.org\">x</div>", "xhtml"),
            ("<p xmlns=\"http://www.w3.org/1999/xhtml\">x</p>", "xhtml"),
            ("text", "xhtml"),
            ("<?xml version=\"1.0\"?><div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>", "xhtml"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script></div>", "txt-1"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><img src=\"x\" onerror=\"alert(1)\"/></div>", "txt-1"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\" JaVa&#9;Script:alert(1)\">x</a></div>", "txt-1"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"data:text/html,x\">x</a></div>", "txt-1"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p style=\"background:url(http://e.org/t)\">x</p></div>", "txt-1"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><form>x</form></div>", "txt-1"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><iframe/>x</div>", "txt-1"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p title=\"x\" xlink:href=\"y\">x</p></div>", "txt-1"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><h:p xmlns:h=\"http://www.w3.org/1999/xhtml\">x</h:p></div>", "txt-1"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"/>", "txt-2"),
            ("<div xmlns=\"http://www.w3.org/1999/xhtml\"> <p> </p> </div>", "txt-2"),
        ];
        for (div, rule) in cases {
            let got = check_narrative(div);
            assert_eq!(got.as_ref().map_err(|e| e.rule), Err(*rule), "{div}: {got:?}");
        }
    }

    #[test]
    fn the_bounds_hold() {
        let deep = format!("<div {NS}>{}x{}</div>", "<span>".repeat(200), "</span>".repeat(200));
        assert_eq!(check_narrative(&deep).map_err(|e| e.rule), Err("xml"));
        let attrs: String = (0..100).map(|i| format!(" title{i}=\"x\"")).collect();
        let many = format!("<div {NS}><p{attrs}>x</p></div>");
        assert_eq!(check_narrative(&many).map_err(|e| e.rule), Err("xml"));
        // Linear: a large flat narrative is read in well under a second even unoptimised.
        let big = format!("<div {NS}>{}</div>", "<p>text <b>bold</b></p>".repeat(100_000));
        let started = std::time::Instant::now();
        assert_eq!(check_narrative(&big), Ok(()));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn rendering_re_serialises_what_reads_and_escapes_what_does_not() {
        let good = format!("<div {NS}><p title='a \"b\"'>a &amp; b &quot;c&quot; &#233; > d</p><br/></div>");
        assert_eq!(rendered(&good), format!("<div {NS}><p title=\"a &quot;b&quot;\">a &amp; b &quot;c&quot; &#233; > d</p><br/></div>"));
        // The namespace is added when missing; quirks the tokenizer tolerates are normalised.
        assert_eq!(rendered("<div class='a\"b'>x&nbsp;y</div>"), format!("<div {NS} class=\"a&quot;b\">x&amp;nbsp;y</div>"));
        assert_eq!(rendered("<div><p a=\"1\"b=\"2\">x</p></div>"), format!("<div {NS}>&lt;div&gt;&lt;p a=\"1\"b=\"2\"&gt;x&lt;/p&gt;&lt;/div&gt;</div>"));
        assert_eq!(rendered("<div><<<"), format!("<div {NS}>&lt;div&gt;&lt;&lt;&lt;</div>"));
        assert_eq!(rendered("plain \u{1} text"), format!("<div {NS}>plain \u{FFFD} text</div>"));
        assert_eq!(rendered(&format!("<div {NS}>a\u{FFFE}&#1;</div>")), format!("<div {NS}>a\u{FFFD}\u{FFFD}</div>"));
        assert_eq!(rendered(&format!("<div {NS}><![CDATA[1 < 2]]><!-- c --></div>")), format!("<div {NS}>1 &lt; 2</div>"));
        // Scripts stored before the input rule stay inert markup in well-formed XML.
        assert_eq!(rendered(&format!("<div {NS}><script>x</script></div>")), format!("<div {NS}><script>x</script></div>"));
    }
}
