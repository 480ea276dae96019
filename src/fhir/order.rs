//! Restores the conventional element order of resources (`resourceType`, `id`, `meta`, then the
//! StructureDefinition's order). PostgreSQL's JSONB sorts object keys by length, so documents
//! read back from the store need this before they are shown to people.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::fhir::definitions::{StructureDefinition, definitions};

type Positions = HashMap<String, usize>;

/// Element positions of every resource type, computed once (read on every response, so no lock).
fn positions(resource_type: &str) -> Option<&'static Positions> {
    static ALL: OnceLock<HashMap<String, Positions>> = OnceLock::new();
    ALL.get_or_init(|| {
        let defs = definitions();
        defs.resource_types()
            .iter()
            .filter_map(|rt| {
                let sd = defs.structure(rt)?;
                let mut map = Positions::new();
                map.insert("resourceType".into(), 0);
                for (i, e) in sd.children(rt).enumerate() {
                    map.insert(e.name().trim_end_matches("[x]").to_owned(), 2 * (i + 1));
                }
                Some((rt.clone(), map))
            })
            .collect()
    })
    .get(resource_type)
}

/// Orders the keys of every resource inside `value` (Bundles and contained resources too).
pub fn order_resources(value: &mut Value) {
    match value {
        Value::Object(obj) => {
            for v in obj.values_mut() {
                order_resources(v);
            }
            if let Some(rt) = obj.get("resourceType").and_then(Value::as_str).map(str::to_owned) {
                if let Some(pos) = positions(&rt) {
                    let rank = |k: &str| -> usize {
                        let base = k.trim_start_matches('_');
                        let underscore = usize::from(k.starts_with('_'));
                        if let Some(p) = pos.get(base) {
                            return p + underscore;
                        }
                        // Choice elements: `valueQuantity` ranks as `value`.
                        pos.iter()
                            .filter(|(name, _)| base.starts_with(name.as_str()) && base.len() > name.len())
                            .filter(|(name, _)| base[name.len()..].starts_with(|c: char| c.is_ascii_uppercase()))
                            .map(|(_, p)| p + underscore)
                            .next()
                            .unwrap_or(usize::MAX)
                    };
                    let mut entries: Vec<(String, Value)> = std::mem::take(obj).into_iter().collect();
                    entries.sort_by_key(|(k, _)| rank(k));
                    *obj = entries.into_iter().collect::<Map<String, Value>>();
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                order_resources(v);
            }
        }
        _ => {}
    }
}

/// Member order of one kind of object (a resource, a data type, a backbone element): rank by
/// JSON member name (choice elements by each typed name), and where the member's own members
/// get their order from.
#[derive(Default)]
struct Node {
    members: HashMap<String, (usize, Option<usize>)>,
}

/// Every resource's and data type's member order, from the definitions (built on first use).
#[derive(Default)]
struct Table {
    nodes: Vec<Node>,
    /// Node by element path: `Patient`, `Patient.contact`, `HumanName`, `Timing.repeat`.
    by_path: HashMap<String, usize>,
    /// `Element` (`id`, `extension`): the shape of a primitive's `_name` companion.
    element: Option<usize>,
}

impl Table {
    fn build() -> Table {
        let mut table = Table::default();
        for rt in definitions().resource_types() {
            table.node_for_type(rt);
        }
        table.element = table.node_for_type("Element");
        table
    }

    /// The node of a complex type or resource; `None` for primitives (their values are leaves).
    fn node_for_type(&mut self, type_name: &str) -> Option<usize> {
        if let Some(&node) = self.by_path.get(type_name) {
            return Some(node);
        }
        let sd = definitions().structure(type_name).filter(|sd| sd.kind != "primitive-type")?;
        Some(self.node_for_path(sd, type_name))
    }

    fn node_for_path(&mut self, sd: &'static StructureDefinition, path: &str) -> usize {
        if let Some(&node) = self.by_path.get(path) {
            return node;
        }
        // Registered before its children: definitions refer to themselves (Extension.extension,
        // Questionnaire.item.item).
        let node = self.nodes.len();
        self.nodes.push(Node::default());
        self.by_path.insert(path.to_owned(), node);
        let mut members = HashMap::new();
        for (i, child) in sd.children(path).enumerate() {
            let rank = 2 * (i + 1);
            let first = child.types.first().map(|t| t.fhir_type());
            let inline = if let Some(target) = &child.content_reference {
                // `#Questionnaire.item`: the shape of another element of the same definition.
                Some(Some(self.node_for_path(sd, target.rsplit_once('#').map_or(target.as_str(), |(_, t)| t))))
            } else if matches!(first, Some("BackboneElement" | "Element")) {
                Some(Some(self.node_for_path(sd, &child.path)))
            } else {
                None
            };
            if let Some(base) = child.name().strip_suffix("[x]") {
                for t in &child.types {
                    let t = t.fhir_type();
                    let mut key = base.to_owned();
                    let mut chars = t.chars();
                    if let Some(first) = chars.next() {
                        key.push(first.to_ascii_uppercase());
                        key.push_str(chars.as_str());
                    }
                    let shape = self.node_for_type(t);
                    members.insert(key, (rank, shape));
                }
            } else {
                let shape = match inline {
                    Some(shape) => shape,
                    None => first.and_then(|t| self.node_for_type(t)),
                };
                members.insert(child.name().to_owned(), (rank, shape));
            }
        }
        self.nodes[node].members = members;
        node
    }
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Table::build)
}

/// Orders every object inside `value` — resources, data types, backbone elements, `_name`
/// companions — by the definitions, as FHIR XML requires (xml.html: elements in the order the
/// definitions give; JSON leaves order free, and JSONB sorts keys by length). Members the
/// definitions do not know keep their relative order at the end.
pub fn order_elements(value: &mut Value) {
    walk(value, None, table(), 0);
}

/// A member's rank and the node its own members are ordered by.
type Place = (usize, Option<usize>);

/// Deeper than this no stored document goes (JSON parsing stops at 128 levels).
const MAX_WALK_DEPTH: usize = 512;

fn walk(value: &mut Value, node: Option<usize>, table: &Table, depth: usize) {
    if depth > MAX_WALK_DEPTH {
        return;
    }
    match value {
        Value::Array(items) => {
            for item in items {
                walk(item, node, table, depth + 1);
            }
        }
        Value::Object(obj) => {
            let node = obj
                .get("resourceType")
                .and_then(Value::as_str)
                .and_then(|rt| table.by_path.get(rt).copied())
                .or(node);
            let Some(node) = node else {
                for v in obj.values_mut() {
                    walk(v, None, table, depth + 1);
                }
                return;
            };
            let members = &table.nodes[node].members;
            let place = |key: &str| -> Place {
                if key == "resourceType" {
                    return (0, None);
                }
                match key.strip_prefix('_') {
                    Some(base) => members.get(base).map(|&(rank, _)| (rank + 1, table.element)),
                    None => members.get(key).copied(),
                }
                .unwrap_or((usize::MAX, None))
            };
            let places: Vec<Place> = obj.keys().map(|k| place(k)).collect();
            if places.is_sorted_by_key(|p| p.0) {
                for (v, (_, child)) in obj.values_mut().zip(&places) {
                    walk(v, *child, table, depth + 1);
                }
            } else {
                let mut entries: Vec<(Place, (String, Value))> =
                    places.into_iter().zip(std::mem::take(obj)).collect();
                entries.sort_by_key(|(p, _)| p.0);
                for ((_, child), (_, v)) in &mut entries {
                    walk(v, *child, table, depth + 1);
                }
                *obj = entries.into_iter().map(|(_, kv)| kv).collect::<Map<String, Value>>();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resource_type_id_and_meta_come_first_and_elements_follow_the_definition() {
        let mut v = json!({"gender": "female", "meta": {}, "id": "x", "_birthDate": {}, "birthDate": "2000", "resourceType": "Patient", "name": []});
        order_resources(&mut v);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["resourceType", "id", "meta", "name", "gender", "birthDate", "_birthDate"]);
    }

    #[test]
    fn nested_elements_follow_their_definitions_too() {
        // JSONB order: shorter keys first.
        let mut v = json!({"resourceType": "Patient", "name": [{"use": "official", "given": ["A"], "family": "F", "_given": [{"extension": [{"valueString": "v", "url": "http://e.org"}]}]}],
            "contact": [{"name": {"text": "t", "family": "C"}, "gender": "male", "relationship": [{"text": "r"}]}],
            "extension": [{"valueQuantity": {"unit": "kg", "value": 1}, "url": "http://e.org/q"}], "id": "p",
            "contained": [{"resourceType": "Questionnaire", "status": "draft", "item": [{"type": "group", "linkId": "1", "item": [{"type": "string", "text": "q", "linkId": "1.1"}]}], "id": "q"}]});
        order_elements(&mut v);
        let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
        assert_eq!(keys(&v), ["resourceType", "id", "contained", "extension", "name", "contact"]);
        assert_eq!(keys(&v["name"][0]), ["use", "family", "given", "_given"]);
        assert_eq!(keys(&v["name"][0]["_given"][0]["extension"][0]), ["url", "valueString"]);
        assert_eq!(keys(&v["contact"][0]), ["relationship", "name", "gender"]);
        assert_eq!(keys(&v["contact"][0]["name"]), ["text", "family"]);
        assert_eq!(keys(&v["extension"][0]), ["url", "valueQuantity"]);
        assert_eq!(keys(&v["extension"][0]["valueQuantity"]), ["value", "unit"]);
        assert_eq!(keys(&v["contained"][0]), ["resourceType", "id", "status", "item"]);
        assert_eq!(keys(&v["contained"][0]["item"][0]), ["linkId", "type", "item"]);
        assert_eq!(keys(&v["contained"][0]["item"][0]["item"][0]), ["linkId", "text", "type"]);
    }
}
