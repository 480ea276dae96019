//! Consent that withholds: an active patient-privacy Consent whose `deny` provision names an
//! actor (an Organization, a PractitionerRole, a Practitioner — or no actor: all staff), and
//! optionally classes of data (resource types), takes that patient's data out of the actor's
//! reach. Staff act through roles, and a role's reach is its [`super::organization::OrgScope`]:
//! the denial is part of that membership test, in SQL (searches, totals, includes, chains,
//! `_has`, `$everything`, conditional matches, pickers) and on content (reads, vread, history,
//! writes), so every path that confines a role withholds what a Consent denies — at once, since
//! the denials are read live from `consent_denial` (kept by a trigger on the Consent's write,
//! migrations/0003_consent.sql) and never cached.
//!
//! A role is the actor when the Consent names the role, its practitioner, or its organisation
//! or any organisation above it (a denial for a hospital covers its clinics' staff).

use serde_json::Value;
use sqlx::{PgConnection, Postgres, QueryBuilder};

use crate::error::FhirResult;

/// The references a role answers to as a Consent actor: the role, its practitioner, its
/// organisation and every organisation above it (`Organization.partOf`, any depth).
pub async fn identities(conn: &mut PgConnection, role: &str, role_content: &Value, organization: Option<&str>) -> FhirResult<Vec<String>> {
    let mut out = vec![role.to_owned()];
    if let Some(practitioner) = role_content.pointer("/practitioner/reference").and_then(Value::as_str).filter(|r| r.starts_with("Practitioner/")) {
        out.push(practitioner.to_owned());
    }
    if let Some(organization) = organization {
        let above: Vec<(String,)> = sqlx::query_as(
            "WITH RECURSIVE up(id, depth) AS (
                 SELECT $1::text, 0
                 UNION
                 SELECT substr(s.target, 14), up.depth + 1 FROM search_reference s JOIN up
                     ON s.resource_type = 'Organization' AND s.id = up.id AND s.param = 'partof' AND starts_with(s.target, 'Organization/')
                  WHERE up.depth < 64)
             SELECT DISTINCT 'Organization/' || id FROM up",
        )
        .bind(organization)
        .fetch_all(&mut *conn)
        .await?;
        out.extend(above.into_iter().map(|(r,)| r));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Pushes the SQL test "some of row `r`'s patient data is withheld from `identities`" for a
/// row of `resource_type` (`false` for types that hold no patient's data).
pub fn push_withheld(sql: &mut QueryBuilder<Postgres>, resource_type: &str, identities: &[String]) {
    let compartment = super::patient_compartment_params(resource_type);
    if resource_type != "Patient" && compartment.is_empty() {
        sql.push("false");
        return;
    }
    sql.push("EXISTS (SELECT 1 FROM consent_denial d WHERE (d.actor = '*' OR d.actor = ANY(");
    sql.push_bind(identities.to_vec());
    sql.push(")) AND d.during @> now() AND (cardinality(d.classes) = 0 OR r.resource_type = ANY(d.classes)) AND ");
    if resource_type == "Patient" {
        sql.push("d.patient = 'Patient/' || r.id)");
    } else {
        sql.push("d.patient IN (SELECT c.target FROM search_reference c WHERE c.resource_type = r.resource_type AND c.id = r.id AND c.param = ANY(");
        sql.push_bind(compartment);
        sql.push(")))");
    }
}

/// Whether a resource with this content is (partly) a patient's data withheld from
/// `identities` (the content check of [`push_withheld`]).
pub async fn withholds(conn: &mut PgConnection, identities: &[String], resource_type: &str, id: &str, content: &Value, base: &str) -> FhirResult<bool> {
    let patients: Vec<String> = if resource_type == "Patient" {
        vec![format!("Patient/{id}")]
    } else {
        let compartment = super::patient_compartment_params(resource_type);
        if compartment.is_empty() {
            return Ok(false);
        }
        crate::index::references_at(resource_type, content, base, &compartment).into_iter().filter(|r| r.starts_with("Patient/")).collect()
    };
    if patients.is_empty() {
        return Ok(false);
    }
    let (withheld,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM consent_denial d WHERE d.patient = ANY($1) AND (d.actor = '*' OR d.actor = ANY($2))
           AND d.during @> now() AND (cardinality(d.classes) = 0 OR $3 = ANY(d.classes)))",
    )
    .bind(&patients)
    .bind(identities)
    .bind(resource_type)
    .fetch_one(&mut *conn)
    .await?;
    Ok(withheld)
}
