//! The subscription topics the server offers (Subscriptions R5 Backport IG). R4 has no
//! SubscriptionTopic resource: topics are canonical URLs listed in the CapabilityStatement
//! (`capabilitystatement-subscriptiontopic-canonical`), defined in
//! `fhir-profiles/subscription-topics.json` — the events of the workflows (prescriptions for a
//! pharmacy, bookings for practitioners, invoices and prescriptions for patients).

use std::sync::OnceLock;

use serde::Deserialize;

/// One topic: what writes of which type trigger it, and what a Subscription may filter by.
#[derive(Debug, Clone, Deserialize)]
pub struct Topic {
    pub url: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// The focus resource type.
    pub resource: String,
    /// `create`, `update`, `delete`.
    pub interactions: Vec<String>,
    /// Search the focus must match after the write (empty: any).
    #[serde(default)]
    pub query: String,
    /// Search parameters a Subscription may narrow the topic with.
    #[serde(default)]
    pub filters: Vec<String>,
}

#[derive(Deserialize)]
struct TopicsFile {
    topics: Vec<Topic>,
}

/// The built-in topics.
pub fn topics() -> &'static [Topic] {
    static TOPICS: OnceLock<Vec<Topic>> = OnceLock::new();
    TOPICS.get_or_init(|| match serde_json::from_str::<TopicsFile>(include_str!("../../fhir-profiles/subscription-topics.json")) {
        Ok(file) => file.topics,
        Err(e) => {
            tracing::error!(error = %e, "fhir-profiles/subscription-topics.json does not parse; no topics offered");
            vec![]
        }
    })
}

/// The topic with this canonical URL (a `|version` suffix is ignored).
pub fn topic(url: &str) -> Option<&'static Topic> {
    let url = url.split('|').next().unwrap_or(url);
    topics().iter().find(|t| t.url == url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_names_a_resource_type_its_parameters_and_valid_interactions() {
        let defs = crate::fhir::definitions::definitions();
        assert!(topics().len() >= 4);
        for t in topics() {
            assert!(defs.resource_types().contains(&t.resource), "{}", t.url);
            assert!(t.interactions.iter().all(|i| matches!(i.as_str(), "create" | "update" | "delete")), "{}", t.url);
            for f in &t.filters {
                assert!(defs.search_params(&t.resource).iter().any(|sp| sp.code == *f), "{} filter {f}", t.url);
            }
            for (k, _) in form_urlencoded::parse(t.query.as_bytes()) {
                assert!(defs.search_params(&t.resource).iter().any(|sp| sp.code == k), "{} query {k}", t.url);
            }
        }
        assert!(topic("https://ironfhir.dev/fhir/SubscriptionTopic/invoice-issued|1.0").is_some());
    }
}
