//! A search: `Type?query` (a type the input does not name is chosen by its first byte). The
//! query is split like the server splits URLs and `_search` forms (form_urlencoded), then
//! `search::parse_search` (lenient and strict), the conditional form
//! (`search::parse_conditional`, If-None-Exist and conditional URLs) and the SQL built from the
//! criteria (`search::export_query`, which pushes every clause like a search does). The value
//! helpers (`split_prefix`, `check_date`, `date_bounds`, `number_range`, `split_token`) get
//! every value too. Nothing here needs a database.
#![no_main]
use ironfhir::search::{self, params};
use ironfhir_fuzz::{BASE, resource_type};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ironfhir_fuzz::begin(data);
    let text = String::from_utf8_lossy(data);
    let (type_text, query) = text.split_once('?').unwrap_or(("", &text));
    let rt = resource_type(type_text);
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    for strict in [false, true] {
        if let Ok(request) = search::parse_search(&rt, &pairs, strict, BASE) {
            let _ = request.criteria.canonical();
            let _ = search::pages_by_cursor(&request);
            let sql = search::export_query(&rt, None, &[], std::slice::from_ref(&request.criteria));
            let _ = sql.sql().as_str().len();
            let since = ironfhir::interactions::now();
            let _ = search::export_query(&rt, Some(since), &[request.criteria.clone()], &[request.criteria]).sql().as_str().len();
        }
    }
    if let Ok(criteria) = search::parse_conditional(&rt, query, BASE) {
        let _ = search::export_query(&rt, None, &[], &[criteria]).sql().as_str().len();
    }
    for (_, value) in pairs.iter().take(16) {
        for v in params::split_or(value) {
            let _ = params::unescape_value(&v);
            let _ = params::split_token(&v);
            if let Ok((_, rest)) = params::split_prefix(&v) {
                let _ = params::check_date(&rest);
                let _ = params::date_bounds(&rest);
                let _ = params::number_range(&rest);
            }
        }
    }
});
