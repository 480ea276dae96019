//! The pre-scan of XML input: one linear pass (quick-xml's tokenizer, attributes read by
//! [`crate::xhtml::attributes`]) before fhirbolt sees the document.
//!
//! Why: fhirbolt silently drops attributes FHIR XML does not define, checks duplicate attributes
//! in quadratic time (100,000 attributes took 14 s), recurses once per nesting level (a deep
//! document overflows a thread's stack) and loses part of the narrative (attributes of the root
//! div, whitespace between words and tags). The pre-scan refuses what FHIR XML does not allow,
//! bounds attributes, depth and namespace declarations, and copies each narrative div exactly
//! (re-serialised in the XHTML namespace) so that [`crate::xml_to_value`] can put it back.

use std::collections::HashMap;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use crate::MAX_DEPTH;
use crate::xhtml::{XHTML_NS, attributes};

/// Namespace declarations in scope at once. FHIR documents need two (FHIR, XHTML); the bound
/// keeps every prefix lookup (here and in fhirbolt's reader) short.
const MAX_NAMESPACE_DECLARATIONS: usize = 32;

/// A narrative div of the input: where it is (member names and array positions from the
/// resource root, resource wrapper elements left out, as in the JSON) and its XHTML.
#[derive(Debug)]
pub(crate) struct Narrative {
    pub path: Vec<(String, usize)>,
    pub xhtml: String,
}

/// One open element outside the narrative.
struct Frame {
    name: String,
    /// Its position among the earlier siblings of the same name (its JSON array index).
    index: usize,
    /// How many children of each name were seen so far (allocated on the first child).
    children: Option<HashMap<String, usize>>,
    declarations: usize,
}

/// A narrative div being copied.
struct Capture {
    /// Stack height of the div's own frame; its end tag closes the capture.
    height: usize,
    path: Vec<(String, usize)>,
    xhtml: String,
}

/// A name as messages show it: XML names (the tokenizer's), cut to a sane length.
fn shown(name: &str) -> String {
    name.chars().take(64).collect()
}

fn local(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

/// Dotted element path for messages: `Patient.active`, `Bundle.entry.resource.Patient.text`.
fn location(stack: &[Frame], name: &str) -> String {
    let mut path: Vec<&str> = stack.iter().map(|f| f.name.as_str()).collect();
    path.push(local(name));
    shown(&path.join("."))
}

/// Checks the document and returns its narratives. Errors are messages for a 400.
pub(crate) fn prescan(xml: &str) -> Result<Vec<Narrative>, String> {
    let mut reader = Reader::from_str(xml);
    reader.check_end_names(true).trim_text(false).expand_empty_elements(false);
    let mut stack: Vec<Frame> = Vec::new();
    let mut declarations = 0usize;
    let mut capture: Option<Capture> = None;
    let mut narratives = Vec::new();
    loop {
        let position = reader.buffer_position();
        let event = reader.read_event().map_err(|e| {
            let what = match e {
                quick_xml::Error::EndEventMismatch { .. } => "an end tag does not match its start tag",
                quick_xml::Error::UnexpectedEof(_) => "the document ends inside markup",
                _ => "the markup cannot be read",
            };
            format!("the body is not well-formed XML: {what} (near byte {position})")
        })?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("elements are nested more than {MAX_DEPTH} levels deep"));
                }
                let name = utf8(e.name().into_inner())?;
                let element_local = local(name);
                // The resource root is the JSON object itself; `<Patient>` inside `<contained>` or
                // `<resource>` is a wrapper JSON does not have.
                let entering_narrative = capture.is_none() && element_local == "div" && !stack.is_empty();
                let mut started = String::new();
                let declared = match capture.as_mut() {
                    Some(c) => narrative_element(&stack, e, name, &mut c.xhtml, empty, false)?,
                    None if entering_narrative => narrative_element(&stack, e, name, &mut started, empty, true)?,
                    None => fhir_element(&stack, e, name)?,
                };
                declarations += declared;
                if declarations > MAX_NAMESPACE_DECLARATIONS {
                    return Err(format!("more than {MAX_NAMESPACE_DECLARATIONS} namespace declarations are in scope at once"));
                }
                let index = match stack.last_mut() {
                    Some(parent) => {
                        let children = parent.children.get_or_insert_with(HashMap::new);
                        match children.get_mut(element_local) {
                            Some(seen) => {
                                *seen += 1;
                                *seen - 1
                            }
                            None => {
                                children.insert(element_local.to_owned(), 1);
                                0
                            }
                        }
                    }
                    None => 0,
                };
                if entering_narrative {
                    let path = stack
                        .iter()
                        .skip(1)
                        .filter(|f| !f.name.starts_with(|c: char| c.is_ascii_uppercase()))
                        .map(|f| (f.name.clone(), f.index))
                        .collect();
                    if empty {
                        narratives.push(Narrative { path, xhtml: started });
                    } else {
                        capture = Some(Capture { height: stack.len() + 1, path, xhtml: started });
                    }
                }
                if empty {
                    declarations -= declared;
                } else {
                    stack.push(Frame { name: element_local.to_owned(), index, children: None, declarations: declared });
                }
            }
            Event::End(e) => {
                let frame = stack.pop().ok_or("the body is not well-formed XML: an end tag has no start tag")?;
                declarations -= frame.declarations;
                if let Some(c) = capture.as_mut() {
                    c.xhtml.push_str("</");
                    c.xhtml.push_str(local(utf8(e.name().into_inner())?));
                    c.xhtml.push('>');
                    if stack.len() + 1 == c.height
                        && let Some(done) = capture.take()
                    {
                        narratives.push(Narrative { path: done.path, xhtml: done.xhtml });
                    }
                }
            }
            // Narrative text is copied as written (escaped); the narrative rule checks it later.
            // Text elsewhere is fhirbolt's to refuse.
            Event::Text(t) => {
                if let Some(c) = capture.as_mut() {
                    c.xhtml.push_str(utf8(&t)?);
                }
            }
            Event::CData(t) => {
                if let Some(c) = capture.as_mut() {
                    c.xhtml.push_str("<![CDATA[");
                    c.xhtml.push_str(utf8(&t)?);
                    c.xhtml.push_str("]]>");
                }
            }
            Event::Comment(_) => {}
            Event::Decl(_) if stack.is_empty() => {}
            Event::Decl(_) | Event::PI(_) => return Err("processing instructions are not allowed in a FHIR resource".into()),
            Event::DocType(_) => return Err("a document type declaration is not allowed (FHIR XML has no DTD)".into()),
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err("the body is not well-formed XML: the document ends before its elements are closed".into());
    }
    Ok(narratives)
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "the XML body is not UTF-8".to_owned())
}

/// Attributes of an element outside the narrative (xml.html): `value`, `id`, `url` on
/// extensions, namespace declarations — nothing else. Returns the number of declarations.
fn fhir_element(stack: &[Frame], e: &BytesStart<'_>, name: &str) -> Result<usize, String> {
    let raw = utf8(e.attributes_raw())?;
    let list = attributes(raw).map_err(|why| format!("the element {}: {why}", location(stack, name)))?;
    let mut declared = 0;
    let element = local(name);
    for a in &list {
        match a.name {
            "xmlns" => declared += 1,
            n if n.starts_with("xmlns:") => declared += 1,
            "value" | "id" => {}
            "url" if element == "extension" || element == "modifierExtension" => {}
            other => {
                return Err(format!(
                    "the element {} carries the attribute '{}', which FHIR XML does not define (xml.html: value, id, url on extensions, namespace declarations)",
                    location(stack, name),
                    shown(other)
                ));
            }
        }
    }
    Ok(declared)
}

/// Copies one element of the narrative (start or empty tag) into `out`: local name, XHTML
/// attributes with their raw values, the XHTML namespace on the div itself. Attributes in
/// another namespace than `xml:` are refused: there is no JSON form that keeps them.
fn narrative_element(
    stack: &[Frame],
    e: &BytesStart<'_>,
    name: &str,
    out: &mut String,
    empty: bool,
    root: bool,
) -> Result<usize, String> {
    let raw = utf8(e.attributes_raw())?;
    let list = attributes(raw).map_err(|why| format!("the narrative element {}: {why}", location(stack, name)))?;
    let element = local(name);
    out.push('<');
    out.push_str(element);
    if root {
        out.push_str(" xmlns=\"");
        out.push_str(XHTML_NS);
        out.push('"');
    }
    let mut declared = 0;
    for a in &list {
        if a.name == "xmlns" || a.name.starts_with("xmlns:") {
            declared += 1;
            continue;
        }
        if a.name.contains(':') && !a.name.starts_with("xml:") {
            return Err(format!(
                "the narrative element {} carries the attribute '{}', which is not an XHTML attribute",
                location(stack, name),
                shown(a.name)
            ));
        }
        out.push(' ');
        out.push_str(a.name);
        out.push_str("=\"");
        // Raw values stay escaped as written; only a `"` inside a '-quoted value needs a reference.
        out.push_str(&a.raw.replace('"', "&quot;"));
        out.push('"');
    }
    out.push_str(if empty { "/>" } else { ">" });
    Ok(declared)
}
