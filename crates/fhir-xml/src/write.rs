//! FHIR JSON → FHIR XML (https://hl7.org/fhir/R4/xml.html), written straight from the JSON.
//!
//! The server's documents are already valid (validated on write), so the writer needs no model
//! of the resource types: it follows the representation rules and the JSON's member order.
//! That order must be the definitions' order for XML (the caller sorts it: the main crate's
//! `fhir::order` knows the definitions, this crate does not). A typed model (fhirbolt, used
//! before) refused legitimate documents such as `_summary`/`_elements` subsets that leave out
//! required elements; this writer renders whatever JSON it is given and cannot fail on it.
//!
//! Rules: one element per member, repeated for arrays; primitives as a `value` attribute with
//! their `_name` companion's `id` (attribute) and `extension` (children) merged into the same
//! element; `id` of a non-resource element and `url` of `extension`/`modifierExtension` as
//! attributes; resources wherever they occur (`contained`, `Bundle.entry.resource`,
//! `Parameters.parameter.resource`, `outcome` …) wrapped in an element named by their type;
//! `Narrative.div` embedded as XHTML ([`crate::xhtml::write_narrative`]); text escaped, and
//! characters XML 1.0 cannot carry replaced by U+FFFD so the output is always well-formed.

use serde_json::{Map, Value};

use crate::text::push_attr;
use crate::xhtml::write_narrative;

/// The FHIR namespace, declared on the root element.
pub const FHIR_NS: &str = "http://hl7.org/fhir";

/// Deeper than this the JSON cannot have come from the store (its parser stops at 128 levels);
/// refusing keeps the recursion bounded whatever a caller passes.
const MAX_NESTING: usize = 512;

/// Renders a FHIR JSON resource as an XML document (UTF-8, with the XML declaration).
/// `pretty` indents elements by two spaces; narrative content is left as it is.
pub fn json_to_xml(resource: &Value, pretty: bool) -> Result<String, String> {
    let obj = resource.as_object().ok_or("a resource must be a JSON object")?;
    let rt = resource_type(obj).ok_or("the resource has no valid resourceType")?;
    let mut w = Writer { out: String::with_capacity(4096), pretty };
    w.out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    w.resource(rt, obj, 0, true)?;
    if pretty {
        w.out.push('\n');
    }
    Ok(w.out)
}

/// A JSON member that holds something (`null` items only keep arrays aligned).
fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

/// Element names of FHIR JSON: ASCII letters and digits, starting with a letter. Anything else
/// cannot be in a stored (validated) document and would not make a well-formed tag.
fn is_element_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic()) && b.all(|c| c.is_ascii_alphanumeric())
}

fn resource_type(obj: &Map<String, Value>) -> Option<&str> {
    obj.get("resourceType").and_then(Value::as_str).filter(|t| is_element_name(t))
}

fn is_extension(name: &str) -> bool {
    name == "extension" || name == "modifierExtension"
}

struct Writer {
    out: String,
    pretty: bool,
}

impl Writer {
    fn indent(&mut self, depth: usize) {
        if self.pretty {
            self.out.push('\n');
            for _ in 0..depth {
                self.out.push_str("  ");
            }
        }
    }

    /// Writes `<name` with the given attributes and `>`; returns the length after it, so that
    /// [`Self::close`] can turn an element without children into `<name …/>`.
    fn open(&mut self, name: &str, depth: usize, attributes: &[(&str, &str)]) -> usize {
        self.indent(depth);
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attributes {
            self.out.push(' ');
            self.out.push_str(key);
            self.out.push_str("=\"");
            push_attr(&mut self.out, value);
            self.out.push('"');
        }
        self.out.push('>');
        self.out.len()
    }

    fn close(&mut self, name: &str, depth: usize, opened_at: usize) {
        if self.out.len() == opened_at {
            self.out.pop();
            self.out.push_str("/>");
        } else {
            self.indent(depth);
            self.out.push_str("</");
            self.out.push_str(name);
            self.out.push('>');
        }
    }

    fn resource(&mut self, rt: &str, obj: &Map<String, Value>, depth: usize, root: bool) -> Result<(), String> {
        if depth > MAX_NESTING {
            return Err("the resource is nested too deeply to render".into());
        }
        let at = self.open(rt, depth, if root { &[("xmlns", FHIR_NS)] } else { &[] });
        self.members(obj, depth + 1, None)?;
        self.close(rt, depth, at);
        Ok(())
    }

    /// The members of a resource (`element` = None) or of a complex element / primitive
    /// companion (`element` = its name, for the attributes already written).
    fn members(&mut self, obj: &Map<String, Value>, depth: usize, element: Option<&str>) -> Result<(), String> {
        let companions = obj.keys().any(|k| k.starts_with('_'));
        for (key, value) in obj {
            match element {
                None if key == "resourceType" => continue,
                Some(_) if key == "id" && value.is_string() => continue,
                Some(name) if key == "url" && is_extension(name) && value.is_string() => continue,
                _ => {}
            }
            if let Some(base) = key.strip_prefix('_') {
                // Written with its primitive; alone when the primitive has only id/extensions.
                if !obj.contains_key(base) {
                    self.field(base, None, Some(value), depth)?;
                }
            } else {
                let companion = if companions { obj.get(&format!("_{key}")) } else { None };
                self.field(key, Some(value), companion, depth)?;
            }
        }
        Ok(())
    }

    /// One member: every item of an array, paired with the companion's item at the same index.
    fn field(&mut self, name: &str, value: Option<&Value>, companion: Option<&Value>, depth: usize) -> Result<(), String> {
        if !is_element_name(name) {
            return Ok(());
        }
        match (value, companion) {
            (Some(Value::Array(items)), companion) => {
                let companions = companion.and_then(Value::as_array);
                for (i, item) in items.iter().enumerate() {
                    self.single(name, present(Some(item)), present(companions.and_then(|c| c.get(i))), depth)?;
                }
                for extra in companions.into_iter().flatten().skip(items.len()) {
                    self.single(name, None, present(Some(extra)), depth)?;
                }
            }
            (None, Some(Value::Array(companions))) => {
                for c in companions {
                    self.single(name, None, present(Some(c)), depth)?;
                }
            }
            (value, companion) => self.single(name, present(value), present(companion), depth)?,
        }
        Ok(())
    }

    fn single(&mut self, name: &str, value: Option<&Value>, companion: Option<&Value>, depth: usize) -> Result<(), String> {
        if depth > MAX_NESTING {
            return Err("the resource is nested too deeply to render".into());
        }
        match value {
            Some(Value::Object(obj)) => match resource_type(obj) {
                Some(rt) => {
                    let at = self.open(name, depth, &[]);
                    self.resource(rt, obj, depth + 1, false)?;
                    self.close(name, depth, at);
                }
                None => {
                    let id = obj.get("id").and_then(Value::as_str);
                    let url = obj.get("url").and_then(Value::as_str).filter(|_| is_extension(name));
                    let attributes: Vec<(&str, &str)> =
                        [("id", id), ("url", url)].into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
                    let at = self.open(name, depth, &attributes);
                    self.members(obj, depth + 1, Some(name))?;
                    self.close(name, depth, at);
                }
            },
            Some(Value::String(div)) if name == "div" => {
                self.indent(depth);
                write_narrative(&mut self.out, div);
            }
            // An array inside an array is no FHIR JSON; there is no XML for it.
            Some(Value::Array(_)) => {}
            _ => self.primitive(name, value, companion, depth)?,
        }
        Ok(())
    }

    /// A primitive: `value` attribute, and its companion's `id` and extensions.
    fn primitive(&mut self, name: &str, value: Option<&Value>, companion: Option<&Value>, depth: usize) -> Result<(), String> {
        let number;
        let text = match value {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(Value::Bool(b)) => Some(if *b { "true" } else { "false" }),
            Some(Value::Number(n)) => {
                number = n.to_string();
                Some(number.as_str())
            }
            _ => None,
        };
        let companion = companion.and_then(Value::as_object);
        if text.is_none() && companion.is_none() {
            return Ok(());
        }
        let id = companion.and_then(|c| c.get("id")).and_then(Value::as_str);
        let attributes: Vec<(&str, &str)> =
            [("id", id), ("value", text)].into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
        let at = self.open(name, depth, &attributes);
        if let Some(companion) = companion {
            self.members(companion, depth + 1, Some(name))?;
        }
        self.close(name, depth, at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn xml(v: Value) -> String {
        json_to_xml(&v, false).unwrap()
    }

    #[test]
    fn primitives_companions_attributes_and_arrays() {
        let got = xml(json!({
            "resourceType": "Patient", "id": "p1",
            "extension": [{"url": "http://e.org/a\"b", "valueString": "x<y"}],
            "active": true,
            "name": [{"id": "n1", "family": "O'Brien & Sons", "given": ["A", null], "_given": [null, {"extension": [{"url": "http://e.org/g", "valueCode": "c"}]}]}],
            "birthDate": "1970-01-01", "_birthDate": {"id": "b", "extension": [{"url": "http://e.org/t", "valueDateTime": "1970-01-01T10:00:00Z"}]},
            "_gender": {"extension": [{"url": "http://e.org/absent", "valueCode": "unknown"}]},
            "multipleBirthInteger": 2
        }));
        assert_eq!(
            got,
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Patient xmlns="http://hl7.org/fhir"><id value="p1"/>"#,
                r#"<extension url="http://e.org/a&quot;b"><valueString value="x&lt;y"/></extension><active value="true"/>"#,
                r#"<name id="n1"><family value="O'Brien &amp; Sons"/><given value="A"/><given><extension url="http://e.org/g"><valueCode value="c"/></extension></given></name>"#,
                r#"<birthDate id="b" value="1970-01-01"><extension url="http://e.org/t"><valueDateTime value="1970-01-01T10:00:00Z"/></extension></birthDate>"#,
                r#"<gender><extension url="http://e.org/absent"><valueCode value="unknown"/></extension></gender>"#,
                r#"<multipleBirthInteger value="2"/></Patient>"#
            )
        );
    }

    #[test]
    fn resources_are_wrapped_and_narratives_embedded() {
        let got = xml(json!({
            "resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Hi</div>"},
                "contained": [{"resourceType": "Organization", "id": "o", "name": "Org"}]}}]
        }));
        assert_eq!(
            got,
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Bundle xmlns="http://hl7.org/fhir"><type value="collection"/><entry><fullUrl value="urn:uuid:1"/>"#,
                r#"<resource><Patient><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml">Hi</div></text>"#,
                r#"<contained><Organization><id value="o"/><name value="Org"/></Organization></contained></Patient></resource></entry></Bundle>"#
            )
        );
    }

    #[test]
    fn what_xml_cannot_carry_is_replaced_and_broken_narrative_escaped() {
        let got = xml(json!({"resourceType": "Basic", "text": {"status": "generated", "div": "<div><<<"},
            "code": {"text": "a\u{1}b\u{FFFE}c\u{FFFF}\ttab\nline"}}));
        assert!(got.contains(r#"<div xmlns="http://www.w3.org/1999/xhtml">&lt;div&gt;&lt;&lt;&lt;</div>"#), "{got}");
        assert!(got.contains("<text value=\"a\u{FFFD}b\u{FFFD}c\u{FFFD}&#9;tab&#10;line\"/>"), "{got}");
    }

    #[test]
    fn pretty_output_indents_elements() {
        let got = json_to_xml(&json!({"resourceType": "Patient", "name": [{"family": "F"}]}), true).unwrap();
        assert_eq!(
            got,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Patient xmlns=\"http://hl7.org/fhir\">\n  <name>\n    <family value=\"F\"/>\n  </name>\n</Patient>\n"
        );
    }

    #[test]
    fn not_a_resource_is_an_error() {
        assert!(json_to_xml(&json!([1]), false).is_err());
        assert!(json_to_xml(&json!({"resourceType": "<x>"}), false).is_err());
    }
}
