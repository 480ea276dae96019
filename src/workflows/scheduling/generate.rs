//! `Schedule/{id}/$generate-slots`: free Slots from an availability template, in a time zone.
//!
//! The template is the availability of the Schedule's actor — `PractitionerRole.availableTime`
//! or `HealthcareService.availableTime` (`daysOfWeek`, `allDay`, `availableStartTime`,
//! `availableEndTime`), or `Location.hoursOfOperation` (`openingTime`, `closingTime`) — minus
//! `PractitionerRole.notAvailable`/`HealthcareService.notAvailable` periods. The local times
//! are in the IANA time zone `timezone` (default UTC), so a clinic's 09:00 stays 09:00 across
//! daylight-saving changes (jiff, the platform's tz database). Slots that already exist for
//! the Schedule at the same start are not made again, so the operation can be re-run. The new
//! Slots are written as one transaction Bundle as the requesting principal (all or nothing,
//! reach and audit as for any write); the answer is that Bundle's response.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::interactions;
use crate::store::Store;

/// At most this many days per call, and this many Slots.
const MAX_DAYS: i32 = 92;
const MAX_SLOTS: usize = 5_000;

/// One window of availability on some weekdays, in local time.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// `mon` … `sun`.
    pub days: Vec<String>,
    pub start: Time,
    pub end: Time,
}

fn parse_time(value: Option<&Value>) -> FhirResult<Option<Time>> {
    match value.and_then(Value::as_str) {
        None => Ok(None),
        Some(t) => t.parse::<Time>().map(Some).map_err(|_| FhirError::BadRequest(format!("$generate-slots: {} is not a time", crate::fhir::types::sanitize(t)))),
    }
}

/// The availability windows of an actor resource (see the module doc).
pub fn windows(actor: &Value) -> FhirResult<Vec<Window>> {
    let (list, start_key, end_key) = match actor.get("resourceType").and_then(Value::as_str) {
        Some("Location") => ("hoursOfOperation", "openingTime", "closingTime"),
        _ => ("availableTime", "availableStartTime", "availableEndTime"),
    };
    let mut out = vec![];
    for entry in actor.get(list).and_then(Value::as_array).into_iter().flatten() {
        let days: Vec<String> = entry.get("daysOfWeek").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
        let all_day = entry.get("allDay").and_then(Value::as_bool) == Some(true);
        let (start, end) = if all_day {
            (Time::midnight(), Time::MAX)
        } else {
            match (parse_time(entry.get(start_key))?, parse_time(entry.get(end_key))?) {
                (Some(s), Some(e)) if s < e => (s, e),
                _ => continue,
            }
        };
        out.push(Window { days, start, end });
    }
    Ok(out)
}

fn weekday_code(date: Date) -> &'static str {
    use jiff::civil::Weekday::*;
    match date.weekday() {
        Monday => "mon",
        Tuesday => "tue",
        Wednesday => "wed",
        Thursday => "thu",
        Friday => "fri",
        Saturday => "sat",
        Sunday => "sun",
    }
}

/// The (start, end) instants (RFC 3339, UTC) of the slots of `minutes` in `windows` on the
/// dates from `first` to `last` (inclusive) in `zone`, leaving out those overlapping `blocked`.
pub fn slot_times(
    windows: &[Window],
    first: Date,
    last: Date,
    minutes: i64,
    zone: &TimeZone,
    blocked: &[(jiff::Timestamp, jiff::Timestamp)],
) -> FhirResult<Vec<(String, String)>> {
    let step = jiff::SignedDuration::from_mins(minutes);
    let mut out = vec![];
    let mut date = first;
    while date <= last {
        for w in windows.iter().filter(|w| w.days.is_empty() || w.days.iter().any(|d| d == weekday_code(date))) {
            let to_instant = |t: Time| date.to_datetime(t).to_zoned(zone.clone()).map(|z| z.timestamp());
            let (Ok(mut at), Ok(until)) = (to_instant(w.start), to_instant(w.end)) else { continue };
            loop {
                let Ok(next) = at.checked_add(step) else { break };
                if next > until {
                    break;
                }
                if !blocked.iter().any(|(b0, b1)| at < *b1 && next > *b0) {
                    out.push((at.to_string(), next.to_string()));
                    if out.len() > MAX_SLOTS {
                        return Err(FhirError::BadRequest(format!("$generate-slots would make more than {MAX_SLOTS} slots; ask for fewer days")));
                    }
                }
                at = next;
            }
        }
        date = date.tomorrow().map_err(|_| FhirError::BadRequest("$generate-slots: the end date is out of range".into()))?;
    }
    Ok(out)
}

/// The periods an actor says it is not available (`notAvailable[].during`).
fn not_available(actor: &Value) -> Vec<(jiff::Timestamp, jiff::Timestamp)> {
    actor
        .get("notAvailable")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let during = n.get("during")?;
            let at = |k: &str| during.get(k).and_then(Value::as_str).and_then(crate::search::params::date_bounds);
            let start = at("start").map(|(lo, _)| lo).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
            let end = at("end").map(|(_, hi)| hi).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
            let ts = |t: chrono::DateTime<chrono::Utc>| jiff::Timestamp::from_second(t.timestamp().clamp(-377705116800, 253402207200)).ok();
            Some((ts(start)?, ts(end)?))
        })
        .collect()
}

/// Runs the operation for `Schedule/{schedule}` with the query parameters `params`.
pub async fn generate(store: &Store, principal: &Principal, schedule: &Id, params: &[(String, String)], base: &str, max_entries: usize, max_bytes: usize) -> FhirResult<crate::interactions::bundle::BundleResult> {
    let one = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_owned());
    let date = |name: &str| -> FhirResult<Date> {
        let v = one(name).ok_or_else(|| FhirError::BadRequest(format!("$generate-slots needs {name} (a date, YYYY-MM-DD)")))?;
        v.parse::<Date>().map_err(|_| FhirError::BadRequest(format!("$generate-slots: {name} is not a date (YYYY-MM-DD)")))
    };
    let (first, last) = (date("start")?, date("end")?);
    if last < first || (last - first).get_days() >= MAX_DAYS {
        return Err(FhirError::BadRequest(format!("$generate-slots: end must be on or after start, at most {MAX_DAYS} days in all")));
    }
    let minutes: i64 = match one("slot-minutes") {
        Some(m) => m.parse().ok().filter(|m| (5..=480).contains(m)).ok_or_else(|| FhirError::BadRequest("$generate-slots: slot-minutes is 5 to 480".into()))?,
        None => 15,
    };
    let zone_name = one("timezone").unwrap_or_else(|| "UTC".into());
    let zone = TimeZone::get(&zone_name).map_err(|_| FhirError::BadRequest(format!("$generate-slots: {} is not an IANA time zone", crate::fhir::types::sanitize(&zone_name))))?;

    // The Schedule and its first actor that has an availability template, read as the principal.
    let schedule_rt = ResourceType::parse("Schedule")?;
    let stored = interactions::read::read(store, principal, &schedule_rt, schedule, base).await?;
    let content = stored.content.ok_or_else(|| FhirError::NotFound(format!("Schedule/{schedule} is not known")))?;
    let mut template = None;
    for reference in content.get("actor").and_then(Value::as_array).into_iter().flatten().filter_map(|a| a.get("reference").and_then(Value::as_str)) {
        let Some((rt, id)) = reference.rsplit_once('/').map(|(rest, id)| (rest.rsplit('/').next().unwrap_or(rest), id)) else { continue };
        if !matches!(rt, "PractitionerRole" | "HealthcareService" | "Location") {
            continue;
        }
        let actor = interactions::read::read(store, principal, &ResourceType::parse(rt)?, &Id::parse(id)?, base).await?;
        if let Some(actor) = actor.content.filter(|a| !windows(a).map(|w| w.is_empty()).unwrap_or(true)) {
            template = Some(actor);
            break;
        }
    }
    let actor = template.ok_or_else(|| {
        FhirError::BadRequest("$generate-slots: no actor of the Schedule (PractitionerRole, HealthcareService, Location) states its availability".into())
    })?;
    let times = slot_times(&windows(&actor)?, first, last, minutes, &zone, &not_available(&actor))?;

    // Leave out the starts the Schedule already has.
    let slot_rt = ResourceType::parse("Slot")?;
    let existing = interactions::search::search(store, principal, &slot_rt, &[
        ("schedule".into(), format!("Schedule/{schedule}")),
        ("start".into(), format!("ge{first}")),
        ("start".into(), format!("le{last}")),
        ("_count".into(), "1000".into()),
    ], false, base).await?;
    let taken: Vec<chrono::DateTime<chrono::Utc>> = existing
        .found
        .iter()
        .filter_map(|s| s.content.as_ref()?.get("start")?.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&chrono::Utc)))
        .collect();
    let entries: Vec<Value> = times
        .into_iter()
        .filter(|(start, _)| chrono::DateTime::parse_from_rfc3339(start).map(|t| !taken.contains(&t.with_timezone(&chrono::Utc))).unwrap_or(true))
        .map(|(start, end)| {
            let mut slot = json!({"resourceType": "Slot", "schedule": {"reference": format!("Schedule/{schedule}")}, "status": "free", "start": start, "end": end});
            for element in ["serviceCategory", "serviceType", "specialty"] {
                if let Some(v) = content.get(element) {
                    slot[element] = v.clone();
                }
            }
            json!({"resource": slot, "request": {"method": "POST", "url": "Slot"}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    interactions::bundle::process(store, principal, bundle, base, max_entries.max(MAX_SLOTS), max_bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_opening_hours_stay_local_across_daylight_saving() {
        let w = vec![Window { days: vec!["sat".into(), "mon".into()], start: "09:00".parse().unwrap(), end: "10:00".parse().unwrap() }];
        let zone = TimeZone::get("Europe/Berlin").unwrap();
        // Berlin moves to summer time in the night to Sunday 2027-03-28: 09:00 is 08:00 UTC on
        // the Saturday before and 07:00 UTC on the Monday after.
        let slots = slot_times(&w, "2027-03-27".parse().unwrap(), "2027-03-29".parse().unwrap(), 30, &zone, &[]).unwrap();
        let starts: Vec<&str> = slots.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(starts, ["2027-03-27T08:00:00Z", "2027-03-27T08:30:00Z", "2027-03-29T07:00:00Z", "2027-03-29T07:30:00Z"]);
    }

    #[test]
    fn blocked_periods_and_partial_slots_are_left_out() {
        let w = vec![Window { days: vec![], start: "09:00".parse().unwrap(), end: "10:10".parse().unwrap() }];
        let blocked = [("2027-01-04T09:15:00Z".parse().unwrap(), "2027-01-04T09:20:00Z".parse().unwrap())];
        let slots = slot_times(&w, "2027-01-04".parse().unwrap(), "2027-01-04".parse().unwrap(), 30, &TimeZone::UTC, &blocked).unwrap();
        assert_eq!(slots, [("2027-01-04T09:30:00Z".to_owned(), "2027-01-04T10:00:00Z".to_owned())]);
    }
}
