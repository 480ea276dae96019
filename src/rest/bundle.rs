//! Bundles the server builds: searchset and history, with paging links
//! (https://hl7.org/fhir/R4/http.html#paging, bundle.html), and the responses to batch and
//! transaction Bundles (http.html#transaction-response).

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::{Ctx, instant_now};
use crate::error::{Issue, Severity, operation_outcome};
use crate::interactions::bundle::{BundleResult, EntryOutcome};
use crate::interactions::everything::{EverythingPage, EverythingParams};
use crate::interactions::history::{HistoryPage, HistoryParams};
use crate::interactions::search::SearchOutcome;
use crate::interactions::instant;
use crate::store::StoredResource;

fn encode(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// A new Bundle of `kind` with a fresh id (FHIR JSON has no empty arrays, so no `entry` key
/// when there are no entries).
fn new_bundle(kind: &str, total: Option<i64>, links: Option<Vec<Value>>, entries: Vec<Value>) -> Value {
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": instant_now()},
        "type": kind,
    });
    if let Some(total) = total {
        bundle["total"] = json!(total);
    }
    if let Some(links) = links {
        bundle["link"] = json!(links);
    }
    if !entries.is_empty() {
        bundle["entry"] = json!(entries);
    }
    bundle
}

fn link(relation: &str, url: String) -> Value {
    json!({"relation": relation, "url": url})
}

/// A history bundle: newest first, deleted versions as entries without a resource.
pub fn history_bundle(ctx: &Ctx, path: &str, page: &HistoryPage, params: &HistoryParams) -> Value {
    let mut query: Vec<(String, String)> = vec![];
    if let Some(since) = params.since {
        query.push(("_since".into(), instant(&since)));
    }
    if let Some(at) = params.at {
        query.push(("_at".into(), instant(&at)));
    }
    query.push(("_count".into(), params.count.to_string()));
    let mut self_query = query.clone();
    if let Some(before) = params.before_seq {
        self_query.push(("_page".into(), before.to_string()));
    }
    let mut links = vec![link("self", format!("{}/{path}?{}", ctx.base, encode(&self_query)))];
    if let Some(next) = page.next_cursor {
        let mut q = query.clone();
        q.push(("_page".into(), next.to_string()));
        links.push(link("next", format!("{}/{path}?{}", ctx.base, encode(&q))));
    }
    let entries: Vec<Value> = page.entries.iter().map(|e| history_entry(ctx, e)).collect();
    new_bundle("history", Some(page.total), Some(links), entries)
}

fn history_entry(ctx: &Ctx, e: &StoredResource) -> Value {
    let full_url = format!("{}/{}/{}", ctx.base, e.resource_type, e.id);
    let method = e.method.as_deref().unwrap_or("PUT");
    let (request_method, url, status) = match method {
        "POST" => ("POST", e.resource_type.clone(), "201 Created"),
        "DELETE" => ("DELETE", format!("{}/{}", e.resource_type, e.id), "204 No Content"),
        "PATCH" => ("PATCH", format!("{}/{}", e.resource_type, e.id), "200 OK"),
        _ => ("PUT", format!("{}/{}", e.resource_type, e.id), if e.version_id == 1 { "201 Created" } else { "200 OK" }),
    };
    let mut entry = json!({
        "fullUrl": full_url,
        "request": {"method": request_method, "url": url},
        "response": {
            "status": status,
            "etag": format!("W/\"{}\"", e.version_id),
            "lastModified": instant(&e.last_updated),
        },
    });
    if let Some(content) = &e.content {
        entry["resource"] = content.clone();
    }
    entry
}

/// A searchset bundle with `self`/`first`/`next`/`previous` links built from the parameters
/// actually used.
pub fn search_bundle(ctx: &Ctx, outcome: &SearchOutcome) -> Value {
    let (request, found, total) = (&outcome.request, &outcome.found, outcome.total);
    // `_offset=n` or `_cursor=key` for the page to link to.
    let url = |page: Option<(&str, String)>| {
        let mut q = request.used.clone();
        q.retain(|(k, _)| k != "_count");
        q.push(("_count".into(), request.count.to_string()));
        if let Some((key, value)) = page {
            q.push((key.into(), value));
        }
        match outcome.path.as_str() {
            "" => format!("{}?{}", ctx.base, encode(&q)),
            path => format!("{}/{path}?{}", ctx.base, encode(&q)),
        }
    };
    let this_page = match (&request.cursor, request.offset) {
        (Some(cursor), _) => Some(("_cursor", cursor.clone())),
        (None, 0) => None,
        (None, offset) => Some(("_offset", offset.to_string())),
    };
    let mut links = vec![link("self", url(this_page))];
    if request.count > 0 {
        links.push(link("first", url(None)));
        if !outcome.keyset && request.offset > 0 {
            let previous = request.offset.saturating_sub(request.count);
            links.push(link("previous", url((previous > 0).then(|| ("_offset", previous.to_string())))));
        }
        if outcome.more {
            let next = match (outcome.keyset, found.last()) {
                (true, Some(last)) => Some(("_cursor", crate::search::cursor_after(request, last))),
                _ => Some(("_offset", (request.offset + request.count).to_string())),
            };
            links.push(link("next", url(next)));
        }
    }
    let matches = found.iter().map(|r| (r, "match"));
    let included = outcome.included.iter().map(|r| (r, "include"));
    let mut entries: Vec<Value> = matches
        .chain(included)
        .filter_map(|(r, mode)| {
            let content = r.content.as_ref()?;
            let resource = match (&request.summary, &request.elements) {
                (Some(mode), _) if mode != "count" => super::format::summarize(content, mode),
                (_, Some(elements)) => super::format::select_elements(content, elements),
                _ => content.clone(),
            };
            Some(json!({
                "fullUrl": format!("{}/{}/{}", ctx.base, r.resource_type, r.id),
                "resource": resource,
                "search": {"mode": mode},
            }))
        })
        .collect();
    if !request.ignored.is_empty() {
        // search.html#errors: say what was not used, as an OperationOutcome with mode outcome.
        let issues: Vec<Issue> = request
            .ignored
            .iter()
            .map(|name| Issue {
                severity: Severity::Warning,
                code: "not-supported",
                diagnostics: format!("search parameter '{}' is unknown or not supported here and was ignored", crate::fhir::types::sanitize(name)),
                expression: vec![],
            })
            .collect();
        entries.push(json!({"resource": operation_outcome(&issues), "search": {"mode": "outcome"}}));
    }
    new_bundle("searchset", total, Some(links), entries)
}

/// The searchset of Patient `$everything` (patient-operation-everything.html): compartment
/// members as `match`, resources the patient references as `include`; offset paging links.
pub fn everything_bundle(ctx: &Ctx, path: &str, page: &EverythingPage, params: &EverythingParams) -> Value {
    let url = |offset: usize| {
        let mut q: Vec<(String, String)> = vec![];
        if let Some(since) = params.since {
            q.push(("_since".into(), instant(&since)));
        }
        if let Some(types) = &params.types {
            q.push(("_type".into(), types.join(",")));
        }
        q.push(("_count".into(), params.count.to_string()));
        if offset > 0 {
            q.push(("_offset".into(), offset.to_string()));
        }
        format!("{}/{path}?{}", ctx.base, encode(&q))
    };
    let mut links = vec![link("self", url(params.offset))];
    if params.count > 0 {
        links.push(link("first", url(0)));
        if params.offset > 0 {
            links.push(link("previous", url(params.offset.saturating_sub(params.count))));
        }
        if ((params.offset + page.entries.len()) as i64) < page.total && !page.entries.is_empty() {
            links.push(link("next", url(params.offset + params.count)));
        }
    }
    let entries: Vec<Value> = page
        .entries
        .iter()
        .filter_map(|(r, include)| {
            let content = r.content.as_ref()?;
            Some(json!({
                "fullUrl": format!("{}/{}/{}", ctx.base, r.resource_type, r.id),
                "resource": content,
                "search": {"mode": if *include { "include" } else { "match" }},
            }))
        })
        .collect();
    new_bundle("searchset", Some(page.total), Some(links), entries)
}

/// The `batch-response` / `transaction-response` of a processed Bundle: one entry per request
/// entry, in order, with `response.status`, `location`, `etag`, `lastModified`, the resource
/// per `Prefer: return` (writes) and an `outcome` for failed batch entries.
pub fn bundle_response(ctx: &Ctx, result: &BundleResult) -> Value {
    let prefer = ctx.prefer("return");
    let entries: Vec<Value> = result
        .entries
        .iter()
        .map(|r| match r {
            Ok(outcome) => response_entry(ctx, outcome, prefer.as_deref()),
            Err(e) => json!({"response": {"status": status_line(e.status()), "outcome": e.outcome()}}),
        })
        .collect();
    new_bundle(result.kind.response_type(), None, None, entries)
}

/// `201 Created`, `412 Precondition Failed` …
fn status_line(status: StatusCode) -> String {
    format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")).trim_end().to_owned()
}

fn version_response(status: StatusCode, stored: &StoredResource) -> Map<String, Value> {
    let mut response = Map::new();
    response.insert("status".into(), json!(status_line(status)));
    response.insert("etag".into(), json!(format!("W/\"{}\"", stored.version_id)));
    response.insert("lastModified".into(), json!(instant(&stored.last_updated)));
    response
}

fn response_entry(ctx: &Ctx, outcome: &EntryOutcome, prefer: Option<&str>) -> Value {
    let full_url = |s: &StoredResource| json!(format!("{}/{}/{}", ctx.base, s.resource_type, s.id));
    let mut entry = Map::new();
    match outcome {
        EntryOutcome::Write(write) => {
            let s = &write.stored;
            let status = if write.created { StatusCode::CREATED } else { StatusCode::OK };
            let mut response = Map::new();
            response.insert("status".into(), json!(status_line(status)));
            response.insert("location".into(), json!(format!("{}/{}/_history/{}", s.resource_type, s.id, s.version_id)));
            response.extend(version_response(status, s).into_iter().filter(|(k, _)| k != "status"));
            entry.insert("fullUrl".into(), full_url(s));
            match prefer {
                Some("minimal") => {}
                Some("OperationOutcome") => {
                    let text = if write.created { "created" } else { "updated" };
                    let issue = Issue {
                        severity: Severity::Information,
                        code: "informational",
                        diagnostics: format!("{text} {}/{} version {}", s.resource_type, s.id, s.version_id),
                        expression: vec![],
                    };
                    response.insert("outcome".into(), operation_outcome(&[issue]));
                }
                _ => {
                    if let Some(content) = &s.content {
                        entry.insert("resource".into(), content.clone());
                    }
                }
            }
            entry.insert("response".into(), Value::Object(response));
        }
        EntryOutcome::Deleted(_) => {
            entry.insert("response".into(), json!({"status": status_line(StatusCode::NO_CONTENT)}));
        }
        EntryOutcome::Read { stored, head } => {
            entry.insert("fullUrl".into(), full_url(stored));
            if let (false, Some(content)) = (head, &stored.content) {
                entry.insert("resource".into(), content.clone());
            }
            entry.insert("response".into(), Value::Object(version_response(StatusCode::OK, stored)));
        }
        EntryOutcome::NotModified(stored) => {
            entry.insert("response".into(), Value::Object(version_response(StatusCode::NOT_MODIFIED, stored)));
        }
        EntryOutcome::Search(outcome) => {
            entry.insert("resource".into(), search_bundle(ctx, outcome));
            entry.insert("response".into(), json!({"status": status_line(StatusCode::OK)}));
        }
    }
    Value::Object(entry)
}
