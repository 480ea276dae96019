//! Searches that read every document of their type — `_content` and `_text` have no index
//! (a full-text index over every string of every resource made each write about 130 µs
//! dearer, measured on 50,000 Observations) — are few at a time, so a burst of them cannot
//! take the connections that every other request needs (three `Patient?_content=x` at once
//! once pushed plain searches to 15 s). The others wait briefly for a turn, then get 503.

use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::{ClauseKind, Criteria};
use crate::error::{FhirError, FhirResult};

/// How many words a `_content` or `_text` parameter may have, all values together.
pub const MAX_FULL_TEXT_WORDS: usize = 16;

/// How many types a system-level `_content` or `_text` search may name in `_type` (it may
/// not leave them out).
pub const MAX_FULL_TEXT_TYPES: usize = 10;

/// How many document-scanning searches run at once, whatever the connection pool's size.
pub const SCANNING_SEARCHES_AT_ONCE: usize = 2;

/// How long a document-scanning search waits for its turn before it is refused with 503.
pub const SCANNING_SEARCH_WAIT: Duration = Duration::from_secs(10);

/// Whether answering `criteria` reads the documents of every resource of a type: a `_content`
/// or `_text` clause anywhere, chains and `_has` included.
pub fn scans_documents(criteria: &Criteria) -> bool {
    criteria.clauses.iter().any(|c| kind_scans(&c.kind))
}

fn kind_scans(kind: &ClauseKind) -> bool {
    match kind {
        ClauseKind::FullText { .. } => true,
        ClauseKind::AnyOf(alternatives) => alternatives.iter().any(scans_documents),
        ClauseKind::Chain { targets, .. } => targets.iter().any(scans_documents),
        ClauseKind::Has { source, .. } => scans_documents(source),
        ClauseKind::Composite { alternatives, .. } => alternatives.iter().flatten().any(kind_scans),
        _ => false,
    }
}

/// A turn for a search over `criteria` when it scans documents (hold it until the search is
/// answered); `None` for every other search, which never waits here.
pub async fn scanning_turn(criteria: &[&Criteria]) -> FhirResult<Option<SemaphorePermit<'static>>> {
    static TURNS: Semaphore = Semaphore::const_new(SCANNING_SEARCHES_AT_ONCE);
    if !criteria.iter().any(|c| scans_documents(c)) {
        return Ok(None);
    }
    turn_from(&TURNS, SCANNING_SEARCH_WAIT).await.map(Some)
}

async fn turn_from(turns: &Semaphore, wait: Duration) -> FhirResult<SemaphorePermit<'_>> {
    match tokio::time::timeout(wait, turns.acquire()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(FhirError::Unavailable(format!(
            "{SCANNING_SEARCHES_AT_ONCE} searches by _content or _text are running already (they read every resource \
             of their type); retry shortly or narrow the search with an indexed parameter"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::types::ResourceType;

    fn parse(rt: &str, query: &str) -> Criteria {
        let rt = ResourceType::parse(rt).expect("resource type");
        crate::search::parse_conditional(&rt, query, "http://localhost/fhir").expect("criteria")
    }

    #[test]
    fn content_and_text_scan_wherever_they_sit() {
        assert!(scans_documents(&parse("Patient", "_content=x")));
        assert!(scans_documents(&parse("Observation", "subject:Patient._text=x")));
        assert!(scans_documents(&parse("Patient", "_has:Observation:patient:_content=x")));
        assert!(!scans_documents(&parse("Patient", "name=x&_id=1")));
        assert!(!scans_documents(&parse("Observation", "subject:Patient.name=x")));
    }

    #[tokio::test]
    async fn a_search_without_a_turn_is_refused_after_the_wait() {
        let turns = Semaphore::new(1);
        let held = turn_from(&turns, Duration::from_millis(10)).await.expect("first turn");
        let refused = turn_from(&turns, Duration::from_millis(20)).await;
        assert!(matches!(refused, Err(FhirError::Unavailable(_))));
        drop(held);
        assert!(turn_from(&turns, Duration::from_millis(10)).await.is_ok());
    }
}
