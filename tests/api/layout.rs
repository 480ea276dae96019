//! The rule "out of reach = does not exist" holds because resources are read and written only
//! through the interactions, which apply the principal's reach and mask. SQL that reads or
//! writes the resource tables directly bypasses that, so it may live only in the modules below,
//! each for a reason; a new one (a workflow reading `resource` to save a query) fails here.

use std::path::Path;

/// Modules allowed to name `resource`/`resource_history` in SQL, and why.
const ALLOWED: &[(&str, &str)] = &[
    ("src/store/mod.rs", "the store itself: reads and writes under the interactions' checks"),
    ("src/store/import.rs", "the import command's batched writes (system principal, audited)"),
    ("src/search/mod.rs", "search SQL; every criteria set is confined by access::confine first"),
    ("src/search/indexed.rs", "search SQL over the index tables, confined like the rest of search"),
    ("src/search/custom.rs", "loads the SearchParameter definitions the server runs on"),
    ("src/access/roles.rs", "resolves the acting PractitionerRole that defines reach itself"),
    ("src/oauth/accounts.rs", "the roles a signing-in person may choose (their own PractitionerRoles)"),
    ("src/reindex.rs", "rebuilds the index rows of every resource (server-internal)"),
    ("src/audit/trail.rs", "audit verify compares the AuditEvent copies with the chain"),
    ("src/crypto/keys.rs", "re-encrypts sealed elements under a new data key"),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `text` has SQL that reads or writes the resource tables (`FROM resource`, `JOIN
/// resource_history`, `INTO resource`, `UPDATE resource`).
fn names_resource_tables(text: &str) -> bool {
    let words: Vec<&str> = text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
    words.windows(2).any(|w| matches!(w[0], "FROM" | "JOIN" | "INTO" | "UPDATE") && matches!(w[1], "resource" | "resource_history"))
}

#[test]
fn only_the_listed_modules_touch_the_resource_tables_with_sql() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        if names_resource_tables(&text) {
            found.push(file.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
    found.sort();
    let unexpected: Vec<&String> = found.iter().filter(|f| !ALLOWED.iter().any(|(a, _)| a == f)).collect();
    assert!(unexpected.is_empty(), "SQL on the resource tables outside the allowed modules (go through the interactions instead): {unexpected:?}");
    // The list stays honest: a module that no longer needs its exception loses it.
    let stale: Vec<&str> = ALLOWED.iter().map(|(a, _)| *a).filter(|a| !found.iter().any(|f| f == a)).collect();
    assert!(stale.is_empty(), "allowed but no longer needed: {stale:?}");
}

#[test]
fn the_check_recognises_sql_on_the_resource_tables() {
    assert!(names_resource_tables("SELECT content FROM resource WHERE id = $1"));
    assert!(names_resource_tables("x JOIN resource_history h ON"));
    assert!(!names_resource_tables("FROM resources_of_mine"));
    assert!(!names_resource_tables("the resource is read FROM the store"));
}
