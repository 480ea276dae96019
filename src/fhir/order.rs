//! Restores the conventional element order of resources (`resourceType`, `id`, `meta`, then the
//! StructureDefinition's order). PostgreSQL's JSONB sorts object keys by length, so documents
//! read back from the store need this before they are shown to people.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::fhir::definitions::definitions;

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
}
