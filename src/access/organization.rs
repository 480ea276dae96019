//! Organisation subtrees: a `user/` token bound to a PractitionerRole sees and changes only
//! what belongs to the role's organisation and the organisations below it (`Organization.partOf`,
//! any depth). README "Staff hierarchy" lists what ties each resource type to an organisation;
//! the rules live here twice, as SQL (searches, where totals and paging must never count what
//! the token cannot see) and as a check of one resource's content (reads, history entries,
//! includes, writes), and the two must agree.
//!
//! A resource belongs to the subtree when
//! 1. it is one of the subtree's Organizations;
//! 2. one of its reference search parameters names an *anchor*: an Organization of the
//!    subtree, or a PractitionerRole whose organization is in the subtree;
//! 3. it is in the Patient compartment of a Patient that belongs by rule 2;
//! 4. (Practitioner) a PractitionerRole of the subtree names it; (Slot) its Schedule belongs;
//!    (Patient) a MedicationRequest addressed to an anchor (`intended-performer`,
//!    `intended-dispenser`: the pharmacy) prescribes for them — the Patient resource only, not
//!    the rest of their compartment, so a pharmacy sees whom it dispenses to and nothing more;
//! 5. its type is a shared catalogue or definition type ([`SHARED_TYPES`]).

use serde_json::Value;
use sqlx::{PgConnection, Postgres, QueryBuilder};

use crate::error::FhirResult;
use crate::fhir::definitions::definitions;

/// Types every organisation shares: terminology, conformance and knowledge resources, and
/// the medication catalogue. They carry no patient data and no organisation.
pub const SHARED_TYPES: &[&str] = &[
    "ActivityDefinition", "CapabilityStatement", "ChargeItemDefinition", "CodeSystem", "CompartmentDefinition",
    "ConceptMap", "DeviceDefinition", "EventDefinition", "Evidence", "EvidenceVariable", "ExampleScenario",
    "GraphDefinition", "ImplementationGuide", "Library", "Measure", "Medication", "MedicationKnowledge",
    "MessageDefinition", "NamingSystem", "ObservationDefinition", "OperationDefinition", "PlanDefinition",
    "Questionnaire", "ResearchDefinition", "ResearchElementDefinition", "SearchParameter", "SpecimenDefinition",
    "StructureDefinition", "StructureMap", "Substance", "SubstanceSpecification", "TerminologyCapabilities",
    "ValueSet",
];

/// Shared definitions whose content changes how the server behaves for every organisation
/// (search parameters it indexes, profiles and terminology it validates against, compartments
/// that decide reach). Only tokens bound to no role — operators, backend services with
/// `system/` scopes — write them; a role reads them like any shared type.
pub const SERVER_DEFINITION_TYPES: &[&str] = &[
    "CapabilityStatement", "CodeSystem", "CompartmentDefinition", "ConceptMap", "GraphDefinition", "ImplementationGuide",
    "MessageDefinition", "NamingSystem", "OperationDefinition", "SearchParameter", "StructureDefinition", "StructureMap",
    "TerminologyCapabilities", "ValueSet",
];

/// The MedicationRequest parameters that address a prescription to an organisation or role
/// (rule 4: a pharmacy sees the patients it is asked to dispense to).
const PRESCRIBED_TO: [&str; 2] = ["intended-performer", "intended-dispenser"];

/// The organisation subtree of one role, as the SQL and the content checks need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgScope {
    /// Ids of the Organizations in the subtree (the role's own first).
    pub organizations: Vec<String>,
    /// Who the role is as a Consent actor ([`super::consent::identities`]): a patient's data a
    /// Consent withholds from any of them is not in the subtree for this role.
    pub withheld_from: Vec<String>,
    /// `Organization/ID` of every organisation in the subtree and `PractitionerRole/ID` of
    /// every role whose organization is in it.
    pub anchors: Vec<String>,
}

impl OrgScope {
    /// The subtree below (and including) `organization` (an Organization id), read from the
    /// `partof` and `organization` reference index rows. An unknown organisation is a subtree
    /// of its own id only, which nothing references.
    pub async fn load(conn: &mut PgConnection, organization: &str) -> FhirResult<OrgScope> {
        let organizations: Vec<(String,)> = sqlx::query_as(
            "WITH RECURSIVE tree(id) AS (
                 SELECT $1::text
                 UNION
                 SELECT s.id FROM search_reference s JOIN tree t ON s.target = 'Organization/' || t.id
                  WHERE s.resource_type = 'Organization' AND s.param = 'partof')
             SELECT id FROM tree",
        )
        .bind(organization)
        .fetch_all(&mut *conn)
        .await?;
        let mut organizations: Vec<String> = organizations.into_iter().map(|(id,)| id).collect();
        // The role's own organisation first (the CTE's order is not guaranteed).
        organizations.sort_by_key(|id| id != organization);
        let org_refs: Vec<String> = organizations.iter().map(|id| format!("Organization/{id}")).collect();
        let roles: Vec<(String,)> = sqlx::query_as(
            "SELECT 'PractitionerRole/' || id FROM search_reference
              WHERE resource_type = 'PractitionerRole' AND param = 'organization' AND target = ANY($1)",
        )
        .bind(&org_refs)
        .fetch_all(&mut *conn)
        .await?;
        let mut anchors = org_refs;
        anchors.extend(roles.into_iter().map(|(r,)| r));
        anchors.sort();
        anchors.dedup();
        Ok(OrgScope { organizations, anchors, withheld_from: vec![] })
    }

    /// Whether `reference` (`Organization/ID`, `PractitionerRole/ID`) is an anchor.
    pub fn is_anchor(&self, reference: &str) -> bool {
        self.anchors.binary_search_by(|a| a.as_str().cmp(reference)).is_ok()
    }

    /// Whether a resource with this content belongs to the subtree (rules in the module doc).
    /// Reads the index tables for rules 3 and 4 only when rules 1 and 2 do not decide.
    pub async fn contains(&self, conn: &mut PgConnection, resource_type: &str, id: &str, content: &Value, base: &str) -> FhirResult<bool> {
        if SHARED_TYPES.contains(&resource_type) {
            return Ok(true);
        }
        if !self.withheld_from.is_empty() && super::consent::withholds(conn, &self.withheld_from, resource_type, id, content, base).await? {
            return Ok(false);
        }
        if resource_type == "Organization" && self.organizations.iter().any(|o| o == id) {
            return Ok(true);
        }
        let references = crate::index::references_at(resource_type, content, base, &reference_params(resource_type));
        if references.iter().any(|r| self.is_anchor(r)) {
            return Ok(true);
        }
        let compartment = patients_data_params(resource_type);
        let patients: Vec<String> = crate::index::references_at(resource_type, content, base, &compartment)
            .into_iter()
            .filter_map(|r| r.strip_prefix("Patient/").map(str::to_owned))
            .collect();
        if !patients.is_empty() {
            let (found,): (bool,) = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM search_reference WHERE resource_type = 'Patient' AND id = ANY($1) AND target = ANY($2))",
            )
            .bind(&patients)
            .bind(&self.anchors)
            .fetch_one(&mut *conn)
            .await?;
            if found {
                return Ok(true);
            }
        }
        match resource_type {
            "Patient" => {
                let (found,): (bool,) = sqlx::query_as(
                    "SELECT EXISTS (SELECT 1 FROM search_reference m JOIN search_reference a
                        ON a.resource_type = 'MedicationRequest' AND a.id = m.id AND a.param = ANY($3) AND a.target = ANY($2)
                      WHERE m.resource_type = 'MedicationRequest' AND m.param = 'subject' AND m.target = $1)",
                )
                .bind(format!("Patient/{id}"))
                .bind(&self.anchors)
                .bind(&PRESCRIBED_TO[..])
                .fetch_one(&mut *conn)
                .await?;
                Ok(found)
            }
            "Practitioner" => {
                let (found,): (bool,) = sqlx::query_as(
                    "SELECT EXISTS (SELECT 1 FROM search_reference WHERE resource_type = 'PractitionerRole' AND param = 'practitioner'
                       AND target = $1 AND 'PractitionerRole/' || id = ANY($2))",
                )
                .bind(format!("Practitioner/{id}"))
                .bind(&self.anchors)
                .fetch_one(&mut *conn)
                .await?;
                Ok(found)
            }
            "Slot" => {
                let schedules: Vec<String> = crate::index::references_at("Slot", content, base, &["schedule".to_owned()])
                    .into_iter()
                    .filter_map(|r| r.strip_prefix("Schedule/").map(str::to_owned))
                    .collect();
                if schedules.is_empty() {
                    return Ok(false);
                }
                let (found,): (bool,) = sqlx::query_as(
                    "SELECT EXISTS (SELECT 1 FROM search_reference WHERE resource_type = 'Schedule' AND id = ANY($1) AND target = ANY($2))",
                )
                .bind(&schedules)
                .bind(&self.anchors)
                .fetch_one(&mut *conn)
                .await?;
                Ok(found)
            }
            _ => Ok(false),
        }
    }
}

impl crate::search::Membership for OrgScope {
    /// Pushes the SQL test "row `r` (of `resource_type`) belongs to the subtree": the same
    /// rules as [`OrgScope::contains`], over the reference index.
    fn push_sql(&self, sql: &mut QueryBuilder<Postgres>, resource_type: &str) {
        if SHARED_TYPES.contains(&resource_type) {
            sql.push("true");
            return;
        }
        // Withheld by a Consent, or a member by the rules below.
        sql.push("(");
        if !self.withheld_from.is_empty() {
            sql.push("NOT ");
            super::consent::push_withheld(sql, resource_type, &self.withheld_from);
            sql.push(" AND ");
        }
        sql.push("(");
        if resource_type == "Organization" {
            sql.push("r.id = ANY(").push_bind(self.organizations.clone()).push(") OR ");
        }
        sql.push("EXISTS (SELECT 1 FROM search_reference o WHERE o.resource_type = r.resource_type AND o.id = r.id AND o.target = ANY(");
        sql.push_bind(self.anchors.clone()).push("))");
        let compartment = patients_data_params(resource_type);
        if !compartment.is_empty() {
            sql.push(
                " OR EXISTS (SELECT 1 FROM search_reference c JOIN search_reference p
                    ON p.resource_type = 'Patient' AND p.id = substr(c.target, 9) AND p.target = ANY(",
            );
            sql.push_bind(self.anchors.clone());
            sql.push(") WHERE c.resource_type = r.resource_type AND c.id = r.id AND starts_with(c.target, 'Patient/') AND c.param = ANY(");
            sql.push_bind(compartment).push("))");
        }
        match resource_type {
            "Patient" => {
                sql.push(
                    " OR EXISTS (SELECT 1 FROM search_reference m JOIN search_reference a
                        ON a.resource_type = 'MedicationRequest' AND a.id = m.id AND a.param = ANY(",
                );
                sql.push_bind(PRESCRIBED_TO.map(str::to_owned).to_vec()).push(") AND a.target = ANY(");
                sql.push_bind(self.anchors.clone());
                sql.push(") WHERE m.resource_type = 'MedicationRequest' AND m.param = 'subject' AND m.target = 'Patient/' || r.id)");
            }
            "Practitioner" => {
                sql.push(
                    " OR EXISTS (SELECT 1 FROM search_reference p WHERE p.resource_type = 'PractitionerRole' AND p.param = 'practitioner'
                        AND p.target = 'Practitioner/' || r.id AND 'PractitionerRole/' || p.id = ANY(",
                );
                sql.push_bind(self.anchors.clone()).push("))");
            }
            "Slot" => {
                sql.push(
                    " OR EXISTS (SELECT 1 FROM search_reference l JOIN search_reference s
                        ON s.resource_type = 'Schedule' AND s.id = substr(l.target, 10) AND s.target = ANY(",
                );
                sql.push_bind(self.anchors.clone());
                sql.push(") WHERE l.resource_type = 'Slot' AND l.id = r.id AND l.param = 'schedule' AND starts_with(l.target, 'Schedule/'))");
            }
            _ => {}
        }
        sql.push("))");
    }
}

/// The codes of `resource_type`'s reference search parameters.
/// The parameters that make a resource a patient's data for the subtree rules: the Patient
/// compartment's, except a patient's own Subscriptions (their app's endpoint and headers are
/// theirs, not their care team's).
fn patients_data_params(resource_type: &str) -> Vec<String> {
    if resource_type == "Subscription" {
        return vec![];
    }
    super::patient_compartment_params(resource_type)
}

fn reference_params(resource_type: &str) -> Vec<String> {
    definitions()
        .search_params(resource_type)
        .into_iter()
        .filter(|sp| sp.param_type == "reference")
        .map(|sp| sp.code.clone())
        .collect()
}
