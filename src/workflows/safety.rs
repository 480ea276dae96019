//! Medication safety: the interaction and allergy check of every MedicationRequest written, and
//! the same check as a CDS Hooks service (`order-select`, `order-sign`; `rest::cds`).
//!
//! The knowledge is a table of ingredient pairs with a severity (`fhir-profiles/drug-interactions.json`,
//! its source and licence in the file; `--interaction-table FILE` replaces it). A medication
//! carries an ingredient when one of its RxNorm codings is the ingredient's RXCUI, or its coding
//! display or text names the ingredient (RxNorm clinical drug names begin with their ingredients).
//!
//! On a write ([`medication_request_writing`], before the version is stored, in its transaction):
//! the request is compared with the patient's other active MedicationRequests and active
//! AllergyIntolerances. Each finding becomes a `DetectedIssue` linked from
//! `MedicationRequest.detectedIssue`; a high-severity finding refuses the write (409) unless the
//! request carries an override reason ([`OVERRIDE_EXTENSION`]), which the DetectedIssue then
//! records as its mitigation.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{FhirError, FhirResult};
use crate::store::{self, Tx};

/// The extension (valueString: why) with which a prescriber prescribes despite a high-severity
/// finding.
pub const OVERRIDE_EXTENSION: &str = "https://ironfhir.dev/fhir/StructureDefinition/interaction-override";

const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";

/// One ingredient of an interaction.
#[derive(Debug, Clone, Deserialize)]
pub struct Ingredient {
    pub rxcui: String,
    pub name: String,
}

/// One interacting pair.
#[derive(Debug, Clone, Deserialize)]
pub struct Interaction {
    pub a: Ingredient,
    pub b: Ingredient,
    pub severity: String,
    pub description: String,
}

/// The interaction table in force.
#[derive(Debug, Clone, Deserialize)]
pub struct Table {
    pub interactions: Vec<Interaction>,
}

static TABLE: OnceLock<Table> = OnceLock::new();

/// Installs the table from `path` (`--interaction-table`); without a call the shipped one applies.
pub fn install_table(path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: Table = serde_json::from_str(&text).map_err(|e| format!("{} is not an interaction table: {e}", path.display()))?;
    if table.interactions.iter().any(|i| !matches!(i.severity.as_str(), "high" | "moderate" | "low")) {
        return Err(format!("{}: every severity must be high, moderate or low", path.display()));
    }
    TABLE.set(table).map_err(|_| "the interaction table is already installed".to_owned())
}

/// The table in force.
pub fn table() -> &'static Table {
    TABLE.get_or_init(|| {
        serde_json::from_str(include_str!("../../fhir-profiles/drug-interactions.json"))
            .unwrap_or_else(|e| panic!("the shipped interaction table is corrupt: {e}"))
    })
}

/// Whether `text` names `name` as whole words, case-insensitively.
fn names(text: &str, name: &str) -> bool {
    let name = name.to_lowercase();
    let wanted: Vec<&str> = name.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    if wanted.is_empty() {
        return false;
    }
    let text = text.to_lowercase();
    let words: Vec<&str> = text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    words.windows(wanted.len()).any(|w| w == wanted.as_slice())
}

/// The human-readable names of a concept (its codings' displays and its text).
fn concept_names(concept: &Value) -> Vec<String> {
    let mut out: Vec<String> =
        concept.get("coding").and_then(Value::as_array).into_iter().flatten().filter_map(|c| c.get("display").and_then(Value::as_str).map(str::to_owned)).collect();
    out.extend(concept.get("text").and_then(Value::as_str).map(str::to_owned));
    out
}

/// Whether a medication concept (a CodeableConcept) carries `ingredient`.
fn carries(concept: &Value, ingredient: &Ingredient) -> bool {
    let names_it = |text: &str| names(text, &ingredient.name);
    let codings = concept.get("coding").and_then(Value::as_array).into_iter().flatten();
    for coding in codings {
        if coding.get("system").and_then(Value::as_str) == Some(RXNORM) && coding.get("code").and_then(Value::as_str) == Some(ingredient.rxcui.as_str()) {
            return true;
        }
        if coding.get("display").and_then(Value::as_str).is_some_and(names_it) {
            return true;
        }
    }
    concept.get("text").and_then(Value::as_str).is_some_and(names_it)
}

/// The medication concepts of a MedicationRequest (its `medicationCodeableConcept`, or the code
/// and ingredients of the Medication it references).
async fn concepts(tx: &mut Tx, request: &Value) -> FhirResult<Vec<Value>> {
    if let Some(concept) = request.get("medicationCodeableConcept") {
        return Ok(vec![concept.clone()]);
    }
    let Some(reference) = request.pointer("/medicationReference/reference").and_then(Value::as_str) else { return Ok(vec![]) };
    let Some(id) = reference.strip_prefix("Medication/").or_else(|| reference.rsplit_once("/Medication/").map(|(_, id)| id)) else {
        return Ok(vec![]);
    };
    let Some(medication) = store::current_content(tx, "Medication", id).await? else { return Ok(vec![]) };
    let mut out: Vec<Value> = medication.get("code").cloned().into_iter().collect();
    out.extend(
        medication.get("ingredient").and_then(Value::as_array).into_iter().flatten().filter_map(|i| i.get("itemCodeableConcept").cloned()),
    );
    Ok(out)
}

/// One thing the check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// high, moderate or low.
    pub severity: String,
    pub description: String,
    /// `MedicationRequest/ID` or `AllergyIntolerance/ID` the new request conflicts with.
    pub with: String,
    /// An allergy rather than an interaction.
    pub allergy: bool,
}

/// Compares medication `ordered` (its concepts) with other medications (reference, concepts)
/// and allergies (reference, code concept, criticality).
pub fn compare(ordered: &[Value], others: &[(String, Vec<Value>)], allergies: &[(String, Value, Option<String>)]) -> Vec<Finding> {
    let mut findings = vec![];
    for (reference, theirs) in others {
        for i in &table().interactions {
            let pair = |x: &Ingredient, y: &Ingredient| ordered.iter().any(|c| carries(c, x)) && theirs.iter().any(|c| carries(c, y));
            if pair(&i.a, &i.b) || pair(&i.b, &i.a) {
                findings.push(Finding { severity: i.severity.clone(), description: i.description.clone(), with: reference.clone(), allergy: false });
            }
        }
    }
    let ingredients: Vec<&Ingredient> = table().interactions.iter().flat_map(|i| [&i.a, &i.b]).collect();
    for (reference, code, criticality) in allergies {
        let allergen = ingredients.iter().find(|ing| carries(code, ing) && ordered.iter().any(|c| carries(c, ing)));
        let same_code = code.get("coding").and_then(Value::as_array).into_iter().flatten().any(|a| {
            ordered.iter().any(|c| c.get("coding").and_then(Value::as_array).into_iter().flatten().any(|o| o.get("code") == a.get("code") && o.get("system") == a.get("system")))
        });
        // The allergy's own names (e.g. "Amoxicillin") in the ordered drug's names.
        let named = concept_names(code).into_iter().find(|allergen| ordered.iter().flat_map(concept_names).any(|n| names(&n, allergen)));
        if allergen.is_some() || same_code || named.is_some() {
            let name = allergen.map(|i| i.name.clone()).or(named).unwrap_or_else(|| "the medication".into());
            findings.push(Finding {
                severity: if criticality.as_deref() == Some("high") { "high".into() } else { "moderate".into() },
                description: format!("the patient has a recorded allergy or intolerance to {name}"),
                with: reference.clone(),
                allergy: true,
            });
        }
    }
    findings.dedup();
    findings
}

/// The findings for a MedicationRequest of `patient` (`Patient/ID`) against the patient's other
/// active MedicationRequests (not `except`) and active allergies.
pub async fn check(tx: &mut Tx, patient: &str, request: &Value, except: &str) -> FhirResult<Vec<Finding>> {
    let ordered = concepts(tx, request).await?;
    if ordered.is_empty() {
        return Ok(vec![]);
    }
    let mut others = vec![];
    for (id, content) in store::active_medication_requests(tx, patient, except).await? {
        let c = concepts(tx, &content).await?;
        others.push((format!("MedicationRequest/{id}"), c));
    }
    let allergies: Vec<(String, Value, Option<String>)> = store::active_allergies(tx, patient)
        .await?
        .into_iter()
        .filter_map(|(id, content)| {
            let code = content.get("code")?.clone();
            Some((format!("AllergyIntolerance/{id}"), code, content.get("criticality").and_then(Value::as_str).map(str::to_owned)))
        })
        .collect();
    Ok(compare(&ordered, &others, &allergies))
}

fn subject_patient(request: &Value) -> Option<String> {
    let reference = request.pointer("/subject/reference").and_then(Value::as_str)?;
    super::target_id(reference, "Patient").map(|id| format!("Patient/{id}"))
}

fn medication_of(request: &Value) -> (Option<&Value>, Option<&Value>) {
    (request.get("medicationCodeableConcept"), request.get("medicationReference"))
}

/// Runs before a MedicationRequest version `id` is stored (`old` the version it replaces):
/// checks an active (or draft, on-hold) request whose medication or status changed, records each
/// finding as a DetectedIssue linked from `new`, and refuses a high-severity one without an
/// override reason (409).
pub async fn medication_request_writing(tx: &mut Tx, id: &str, old: Option<&Value>, new: &mut Value, base: &str) -> FhirResult<()> {
    let status = new.get("status").and_then(Value::as_str).unwrap_or("");
    if !matches!(status, "active" | "draft" | "on-hold") {
        return Ok(());
    }
    let changed = old.is_none_or(|o| medication_of(o) != medication_of(new) || o.get("status") != new.get("status"));
    if !changed {
        return Ok(());
    }
    let Some(patient) = subject_patient(new) else { return Ok(()) };
    let findings = check(tx, &patient, new, id).await?;
    if findings.is_empty() {
        return Ok(());
    }
    let override_reason = new
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(OVERRIDE_EXTENSION))
        .and_then(|e| e.get("valueString").and_then(Value::as_str))
        .filter(|r| !r.trim().is_empty())
        .map(str::to_owned);
    if let Some(high) = findings.iter().find(|f| f.severity == "high")
        && override_reason.is_none()
    {
        return Err(FhirError::Conflict(format!(
            "high-severity {}: {} ({}); to prescribe anyway, give the reason in the extension {OVERRIDE_EXTENSION}",
            if high.allergy { "allergy" } else { "interaction" },
            high.description,
            high.with
        )));
    }
    let now = crate::interactions::now();
    let mut links: Vec<Value> = new.get("detectedIssue").and_then(Value::as_array).cloned().unwrap_or_default();
    for finding in &findings {
        let issue_id = crate::fhir::types::Id::generate();
        let (code, display) = if finding.allergy { ("ALGY", "Allergy Alert") } else { ("DRG", "Drug Interaction Alert") };
        let mut issue = json!({
            "resourceType": "DetectedIssue",
            "status": "final",
            "code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code, "display": display}]},
            "severity": finding.severity,
            "patient": {"reference": patient},
            "identifiedDateTime": crate::interactions::instant(&now),
            "implicated": [{"reference": format!("MedicationRequest/{id}")}, {"reference": finding.with}],
            "detail": finding.description,
        });
        if let Some(reason) = &override_reason {
            issue["mitigation"] = json!([{"action": {"text": format!("prescribed despite the finding: {reason}")}, "date": crate::interactions::instant(&now)}]);
        }
        crate::interactions::stamp(&mut issue, issue_id.as_str(), 1, &now);
        store::insert_new(tx, "DetectedIssue", issue_id.as_str(), now, &issue, base).await?;
        links.push(json!({"reference": format!("DetectedIssue/{issue_id}")}));
    }
    new["detectedIssue"] = Value::Array(links);
    Ok(())
}

/// CDS Hooks cards (cds-hooks.hl7.org, "Card") for findings: critical for high severity.
pub fn cards(findings: &[Finding]) -> Vec<Value> {
    findings
        .iter()
        .map(|f| {
            let summary: String = format!("{} {}: {}", capitalised(&f.severity), if f.allergy { "allergy" } else { "interaction" }, f.description);
            json!({
                "uuid": uuid::Uuid::new_v4().to_string(),
                "summary": summary.chars().take(140).collect::<String>(),
                "detail": format!("{} (conflicts with {}).", f.description, f.with),
                "indicator": match f.severity.as_str() { "high" => "critical", "moderate" => "warning", _ => "info" },
                "source": {"label": "ironfhir interaction table", "topic": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": if f.allergy { "ALGY" } else { "DRG" }}},
                "overrideReasons": [{"code": "benefit-outweighs-risk", "system": "https://ironfhir.dev/fhir/CodeSystem/override-reason", "display": "benefit outweighs risk"}],
            })
        })
        .collect()
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concept(code: &str, display: &str) -> Value {
        json!({"coding": [{"system": RXNORM, "code": code, "display": display}]})
    }

    #[test]
    fn ingredients_match_by_rxcui_or_by_name_in_a_clinical_drug_name() {
        let warfarin = concept("855332", "Warfarin Sodium 5 MG Oral Tablet");
        let aspirin = concept("1191", "aspirin");
        let findings = compare(std::slice::from_ref(&warfarin), &[("MedicationRequest/a".into(), vec![aspirin])], &[]);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].severity, "high");
        assert!(compare(&[warfarin], &[("MedicationRequest/b".into(), vec![concept("197361", "Amlodipine 5 MG Oral Tablet")])], &[]).is_empty());
        // A name must be a whole word: "aspirinate" is no aspirin.
        let not = json!({"text": "aspirinate cream"});
        assert!(compare(&[concept("11289", "warfarin")], &[("MedicationRequest/c".into(), vec![not])], &[]).is_empty());
    }

    #[test]
    fn an_allergy_to_an_ingredient_is_found_with_its_criticality() {
        let ordered = [concept("308182", "Amoxicillin 250 MG Oral Capsule")];
        let allergy = json!({"coding": [{"system": RXNORM, "code": "308182"}]});
        let found = compare(&ordered, &[], &[("AllergyIntolerance/x".into(), allergy, Some("high".into()))]);
        assert_eq!(found.len(), 1);
        assert!(found[0].allergy && found[0].severity == "high");
    }

    #[test]
    fn the_shipped_table_has_valid_severities_and_distinct_pairs() {
        let t = table();
        assert!(t.interactions.len() >= 20);
        assert!(t.interactions.iter().all(|i| matches!(i.severity.as_str(), "high" | "moderate" | "low")));
        let mut pairs: Vec<(String, String)> = t.interactions.iter().map(|i| {
            let (x, y) = (i.a.rxcui.clone(), i.b.rxcui.clone());
            if x < y { (x, y) } else { (y, x) }
        }).collect();
        pairs.sort();
        let before = pairs.len();
        pairs.dedup();
        assert_eq!(before, pairs.len());
    }
}
