//! FHIRPath (https://hl7.org/fhirpath/N1/ with the R4 additions): the one seam over the engine.
//!
//! Search-parameter extraction, invariants and FHIRPath Patch need a full FHIRPath engine; this
//! module wraps `rh-fhirpath` (../shared/DEPENDENCIES.md: the candidate that passes the
//! official R4 suite) behind two calls and a small result type, so the engine can be swapped
//! without touching its users. `tests/fhirpath_r4.rs` runs HL7's official `tests-fhir-r4.xml`
//! against this seam and reports the pass rate.

use serde_json::Value;

/// A parsed FHIRPath expression, reusable across evaluations (parse once per SearchParameter).
pub struct Expression {
    parsed: rh_fhirpath::FhirPathExpression,
}

/// One item of an evaluation result, with its FHIRPath type.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Boolean(bool),
    /// `string` and the string-like FHIR primitives (`code`, `id`, `uri`, …).
    String(String),
    Integer(i64),
    /// Decimal in its canonical text (precision kept: `1.50`).
    Decimal(String),
    /// `date`, `dateTime`, `time` as written, without the `@` of literals.
    Date(String),
    DateTime(String),
    Time(String),
    Quantity { value: String, unit: Option<String> },
    /// A complex element (HumanName, Reference, a resource …) as its JSON.
    Element(Value),
}

/// Why an expression did not parse or evaluate (the text never contains resource content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirPathError(pub String);

impl std::fmt::Display for FhirPathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resource (or element) prepared for evaluating expressions on it.
pub struct Context(rh_fhirpath::EvaluationContext);

impl Context {
    pub fn new(input: &Value) -> Self {
        Context(rh_fhirpath::EvaluationContext::new(input.clone()))
    }
}

impl Expression {
    /// Parses an expression (syntax errors are `Err`).
    pub fn parse(text: &str) -> Result<Self, FhirPathError> {
        rh_fhirpath::FhirPathParser::new()
            .parse(text)
            .map(|parsed| Expression { parsed })
            .map_err(|e| FhirPathError(format!("FHIRPath syntax: {e}")))
    }

    /// Evaluates against a resource (or any element) and flattens the result collection.
    pub fn evaluate(&self, input: &Value) -> Result<Vec<Item>, FhirPathError> {
        self.evaluate_in(&Context::new(input))
    }

    /// Evaluates in a prepared context: many expressions on one resource share one (building
    /// a context copies the resource).
    pub fn evaluate_in(&self, context: &Context) -> Result<Vec<Item>, FhirPathError> {
        let value = rh_fhirpath::FhirPathEvaluator::new()
            .evaluate(&self.parsed, &context.0)
            .map_err(|e| FhirPathError(format!("FHIRPath evaluation: {e}")))?;
        let mut out = Vec::new();
        flatten(value, &mut out);
        Ok(out)
    }
}

fn flatten(value: rh_fhirpath::FhirPathValue, out: &mut Vec<Item>) {
    use rh_fhirpath::FhirPathValue as V;
    match value {
        V::Empty => {}
        V::Collection(items) | V::UnorderedCollection(items) => items.into_iter().for_each(|v| flatten(v, out)),
        V::FhirPrimitive { inner, .. } => flatten(*inner, out),
        V::Boolean(b) | V::TypedBoolean { value: b, .. } => out.push(Item::Boolean(b)),
        V::String(s) | V::TypedString { value: s, .. } => out.push(Item::String(s)),
        V::Integer(i) | V::Long(i) => out.push(Item::Integer(i)),
        V::Number(d) => out.push(Item::Decimal(d.to_string())),
        V::Date(s) => out.push(Item::Date(s.trim_start_matches('@').to_owned())),
        V::DateTime(s) | V::TypedDateTime { value: s, .. } => out.push(Item::DateTime(s.trim_start_matches('@').to_owned())),
        V::Time(s) => out.push(Item::Time(s.trim_start_matches('@').trim_start_matches('T').to_owned())),
        V::Quantity { value, unit } => out.push(Item::Quantity { value: value.to_string(), unit }),
        V::Object(v) | V::TypedObject { value: v, .. } => out.push(Item::Element(v)),
        other => out.push(Item::String(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates_the_forms_search_parameters_use() {
        let patient = json!({"resourceType": "Patient", "name": [{"use": "official", "family": "Testperson", "given": ["Ada", "B"]}],
            "birthDate": "1970-01-02", "deceasedBoolean": false,
            "extension": [{"url": "http://example.org/x", "valueString": "y"}]});
        let eval = |e: &str| Expression::parse(e).unwrap().evaluate(&patient).unwrap();
        assert_eq!(eval("Patient.name.where(use='official').family"), vec![Item::String("Testperson".into())]);
        assert_eq!(eval("Patient.name.given.count()"), vec![Item::Integer(2)]);
        assert_eq!(eval("Patient.deceased.exists() and Patient.deceased != false"), vec![Item::Boolean(false)]);
        assert_eq!(eval("Patient.extension('http://example.org/x').value"), vec![Item::String("y".into())]);
        assert!(matches!(eval("Patient.birthDate").as_slice(), [Item::Date(d)] | [Item::String(d)] if d == "1970-01-02"));
        assert!(Expression::parse("Patient.name.(").is_err());
    }
}
