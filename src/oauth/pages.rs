//! The authorization server's HTML pages: plain server-rendered forms that work without
//! JavaScript. Every value is HTML-escaped; no secret other than the request's own CSRF token
//! is ever written into a page.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#1b1b1b}\
h1{font-size:1.4rem}label{display:block;margin:.8rem 0 .2rem}input[type=text],input[type=password]{width:100%;padding:.4rem;font-size:1rem}\
button{margin-top:1rem;padding:.5rem 1.2rem;font-size:1rem}.choice{display:block;margin:.4rem 0}.err{color:#a00}\
ul.scopes li{margin:.3rem 0}.app{font-weight:bold}";

/// A complete page with the security headers every authorization page carries.
pub fn page(status: StatusCode, title: &str, body: &str, extra_headers: Vec<(header::HeaderName, HeaderValue)>) -> Response {
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{} — ironfhir</title><style>{STYLE}</style></head><body>{body}</body></html>",
        esc(title)
    );
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    for (k, v) in extra_headers {
        h.append(k, v);
    }
    response
}

/// The hidden fields that tie a form post to its authorization request.
fn hidden(request_id: &str, csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"req\" value=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(request_id), esc(csrf))
}

/// The sign-in form (`username`, `password`, and `otp` when a second factor is needed).
pub fn login(request_id: &str, csrf: &str, client: &str, error: Option<&str>, username: &str, need_otp: bool) -> String {
    let error = error.map(|e| format!("<p class=\"err\" role=\"alert\">{}</p>", esc(e))).unwrap_or_default();
    let otp = if need_otp {
        "<label for=\"otp\">One-time code from your authenticator app</label>\
<input type=\"text\" id=\"otp\" name=\"otp\" inputmode=\"numeric\" autocomplete=\"one-time-code\" pattern=\"[0-9]{6}\">"
    } else {
        ""
    };
    format!(
        "<h1>Sign in</h1><p><span class=\"app\">{}</span> asks to access your health records.</p>{error}\
<form id=\"login\" method=\"post\" action=\"/auth/authorize\">{}<input type=\"hidden\" name=\"step\" value=\"login\">\
<label for=\"username\">Username</label><input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" value=\"{}\" required>\
<label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
{otp}<button type=\"submit\">Sign in</button></form>",
        esc(client),
        hidden(request_id, csrf),
        esc(username)
    )
}

/// The role picker: one radio per role the person holds.
pub fn role_picker(request_id: &str, csrf: &str, roles: &[(String, String)]) -> String {
    let choices: String = roles
        .iter()
        .enumerate()
        .map(|(i, (value, label))| {
            format!(
                "<label class=\"choice\"><input type=\"radio\" name=\"role\" value=\"{}\"{}> {}</label>",
                esc(value),
                if i == 0 { " checked" } else { "" },
                esc(label)
            )
        })
        .collect();
    format!(
        "<h1>Choose a role</h1><p>You hold several roles. The app will act in the one you choose; you can start it again in another role without signing out.</p>\
<form id=\"role-picker\" method=\"post\" action=\"/auth/authorize\">{}<input type=\"hidden\" name=\"step\" value=\"role\">{choices}\
<button type=\"submit\">Continue</button></form>",
        hidden(request_id, csrf)
    )
}

/// The patient picker for a standalone launch that asks for `launch/patient`.
pub fn patient_picker(request_id: &str, csrf: &str, query: &str, patients: &[(String, String)]) -> String {
    let choices: String = if patients.is_empty() {
        "<p>No patient matches.</p>".into()
    } else {
        patients
            .iter()
            .enumerate()
            .map(|(i, (id, label))| {
                format!(
                    "<label class=\"choice\"><input type=\"radio\" name=\"patient\" value=\"{}\"{}> {}</label>",
                    esc(id),
                    if i == 0 { " checked" } else { "" },
                    esc(label)
                )
            })
            .collect()
    };
    format!(
        "<h1>Choose a patient</h1>\
<form id=\"patient-search\" method=\"post\" action=\"/auth/authorize\">{h}<input type=\"hidden\" name=\"step\" value=\"patient-search\">\
<label for=\"q\">Name</label><input type=\"text\" id=\"q\" name=\"q\" value=\"{q}\"><button type=\"submit\">Search</button></form>\
<form id=\"patient-picker\" method=\"post\" action=\"/auth/authorize\">{h}<input type=\"hidden\" name=\"step\" value=\"patient\">{choices}\
<button type=\"submit\"{disabled}>Continue</button></form>",
        h = hidden(request_id, csrf),
        q = esc(query),
        disabled = if patients.is_empty() { " disabled" } else { "" }
    )
}

/// The consent page: the scopes asked, in words.
pub fn consent(request_id: &str, csrf: &str, client: &str, acting_as: &str, scopes: &[String]) -> String {
    let items: String = scopes.iter().map(|s| format!("<li>{} <small>({})</small></li>", esc(&describe_scope(s)), esc(s))).collect();
    format!(
        "<h1>Allow access?</h1><p><span class=\"app\">{}</span> asks for the following, acting as {}:</p><ul class=\"scopes\">{items}</ul>\
<form id=\"consent\" method=\"post\" action=\"/auth/authorize\">{}<input type=\"hidden\" name=\"step\" value=\"consent\">\
<button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button> \
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        esc(client),
        esc(acting_as),
        hidden(request_id, csrf)
    )
}

/// An error page (for requests that cannot be redirected back to the app).
pub fn error(message: &str) -> String {
    format!("<h1>This request cannot be completed</h1><p class=\"err\">{}</p>", esc(message))
}

/// A scope in words, for the consent page.
pub fn describe_scope(scope: &str) -> String {
    match scope {
        "openid" | "profile" => return "Know who you are (your name and account)".into(),
        "fhirUser" => return "Know which FHIR record describes you".into(),
        "launch" | "launch/patient" => return "Know which patient is in context".into(),
        "launch/encounter" => return "Know which encounter is in context".into(),
        "offline_access" => return "Keep access while you are not using the app".into(),
        "online_access" => return "Keep access while you are signed in".into(),
        _ => {}
    }
    let Some((context, rest)) = scope.split_once('/') else { return scope.to_owned() };
    let (resource_type, perms) = rest.split_once('.').unwrap_or((rest, ""));
    let perms = perms.split('?').next().unwrap_or("");
    let what = if resource_type == "*" { "all kinds of records".to_owned() } else { format!("{resource_type} records") };
    let letters = match perms {
        "read" => "rs",
        "write" => "cud",
        "*" => "cruds",
        p => p,
    };
    let verbs: Vec<&str> = [('c', "create"), ('r', "read"), ('u', "update"), ('d', "delete"), ('s', "search")]
        .iter()
        .filter(|(c, _)| letters.contains(*c))
        .map(|(_, v)| *v)
        .collect();
    let whose = match context {
        "patient" => "of the patient in context",
        "user" => "you have access to",
        _ => "of the whole system",
    };
    format!("{} {what} {whose}", capitalise(&verbs.join(", ")))
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().collect::<String>() + chars.as_str()).unwrap_or_default()
}
