//! patch with JSON Patch (RFC 6902) — https://hl7.org/fhir/R4/http.html#patch

use serde_json::Value;

use super::{WriteOutcome, check_body, update::put_version};
use crate::auth::{Interaction, Principal};
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::search;
use crate::store::{self, Store, Tx};

/// Which resource a PATCH applies to.
pub enum PatchTarget<'a> {
    Id(&'a Id),
    /// Conditional patch: a search that must match exactly one resource.
    Criteria { query: &'a str },
}

/// Applies a JSON Patch document to the current version and stores the result as a new
/// version, after validating it like any other write; the result may not exceed
/// `max_result_bytes` (the server's `--max-body-bytes`), 413 otherwise.
pub async fn patch(
    store: &Store,
    principal: &Principal,
    resource_type: &ResourceType,
    target: PatchTarget<'_>,
    patch_doc: Value,
    if_match: Option<&str>,
    max_result_bytes: usize,
    base: &str,
) -> FhirResult<WriteOutcome> {
    let _ = principal.require(resource_type.as_str(), Interaction::Update)?;
    let patch = parse_patch(patch_doc)?;
    let criteria = match target {
        PatchTarget::Criteria { query } => {
            let _ = principal.require(resource_type.as_str(), Interaction::Search)?;
            let mut criteria = search::parse_conditional(resource_type, query, base)?;
            crate::access::confine(&mut criteria, principal, base)?;
            Some(criteria)
        }
        PatchTarget::Id(_) => None,
    };
    let fixed_id = match target {
        PatchTarget::Id(id) => Some(id.clone()),
        PatchTarget::Criteria { .. } => None,
    };
    let (patch, criteria, fixed_id) = (&patch, &criteria, &fixed_id);
    store
        .with_transaction(move |mut tx| {
            Box::pin(async move {
                let result =
                    patch_in(&mut tx, principal, resource_type, fixed_id.as_ref(), criteria.as_ref(), patch, if_match, max_result_bytes, base).await;
                (tx, result)
            })
        })
        .await
}

/// Parses a JSON Patch document (400 when it is not one).
pub fn parse_patch(patch_doc: Value) -> FhirResult<json_patch::Patch> {
    serde_json::from_value(patch_doc)
        .map_err(|e| FhirError::BadRequest(format!("not a JSON Patch document: {}", first_line(&e.to_string()))))
}

/// The patch inside a transaction: finds the target (`fixed_id`, or the single match of
/// `criteria`), applies the patch, validates and writes the next version. Used by [`patch`] and
/// by transaction Bundles.
pub async fn patch_in(
    tx: &mut Tx,
    principal: &Principal,
    resource_type: &ResourceType,
    fixed_id: Option<&Id>,
    criteria: Option<&search::Criteria>,
    patch: &json_patch::Patch,
    if_match: Option<&str>,
    max_result_bytes: usize,
    base: &str,
) -> FhirResult<WriteOutcome> {
    let rt = resource_type.as_str();
    let id = match (fixed_id, criteria) {
        (Some(id), _) => id.clone(),
        (None, Some(criteria)) => {
            let matches = search::matching_ids(tx, criteria, 2).await?;
            match matches.as_slice() {
                [one] => Id::parse(one)?,
                [] => return Err(FhirError::NotFound("the criteria matched no resource".into())),
                _ => return Err(FhirError::PreconditionFailed("the criteria matched more than one resource".into())),
            }
        }
        (None, None) => return Err(FhirError::BadRequest("no patch target".into())),
    };
    let current = store::lock_current(tx, rt, id.as_str()).await?;
    let stored = store::current_content(tx, rt, id.as_str()).await?;
    // Out of reach = does not exist: decided before the patch touches anything, so neither
    // the status nor a `test` op can tell what lies outside.
    if !crate::access::visible(tx, principal, Interaction::Update, rt, id.as_str(), stored.as_ref(), base).await? {
        return Err(FhirError::NotFound(format!("{rt}/{id} is not known")));
    }
    match current {
        None => return Err(FhirError::NotFound(format!("{rt}/{id} is not known"))),
        Some((_, true)) => return Err(FhirError::Gone(format!("{rt}/{id} was deleted"))),
        Some(_) => {}
    }
    let mut doc = stored.ok_or_else(|| FhirError::Gone(format!("{rt}/{id} was deleted")))?;
    // The patch sees what the role sees: a hidden element cannot be copied, moved, tested or
    // removed (its path does not exist), and put_version restores it from the stored version.
    if let Some(mask) = principal.mask() {
        crate::access::mask::apply(&mut doc, &mask);
    }
    apply_bounded(&mut doc, patch, max_result_bytes)?;
    check_body(resource_type, &doc, Some(&id))?;
    put_version(tx, principal, resource_type, &id, doc, if_match, "PATCH", false, base).await
}

/// Applies the operations one at a time, refusing (413) before one makes the document larger
/// than `max_bytes`: `copy` duplicates what the document already holds, so a few bytes of patch
/// could otherwise double it with every operation (18 copies made a 1.4 KB request an 18 MB
/// resource). The growth is counted, not the document re-measured, so the check is linear.
pub fn apply_bounded(doc: &mut Value, patch: &json_patch::Patch, max_bytes: usize) -> FhirResult<()> {
    use json_patch::PatchOperation;
    let mut size = serialized_len(doc);
    for (index, op) in patch.0.iter().enumerate() {
        size += match op {
            PatchOperation::Copy(copy) => doc.pointer(copy.from.as_str()).map_or(0, serialized_len),
            PatchOperation::Add(add) => serialized_len(&add.value),
            PatchOperation::Replace(replace) => serialized_len(&replace.value),
            _ => 0,
        };
        if size > max_bytes {
            return Err(FhirError::PayloadTooLarge(format!(
                "the patched resource would exceed {max_bytes} bytes (operation {index}); this server stores resources of at most that size"
            )));
        }
        json_patch::patch(doc, std::slice::from_ref(op)).map_err(|mut e| {
            e.operation = index;
            FhirError::Invalid(vec![crate::error::Issue::error(
                "processing",
                format!("the patch could not be applied: {}", patch_error_kind(&e)),
            )])
        })?;
    }
    Ok(())
}

/// The length of a value's JSON text, counted without building it.
fn serialized_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Describes a patch failure without echoing document values (they may be PHI).
fn patch_error_kind(e: &json_patch::PatchError) -> String {
    format!("operation {} failed ({})", e.operation, match e.kind {
        json_patch::PatchErrorKind::TestFailed => "test failed",
        json_patch::PatchErrorKind::InvalidPointer => "path does not exist",
        json_patch::PatchErrorKind::CannotMoveInsideItself => "cannot move a value inside itself",
        _ => "invalid operation",
    })
}
