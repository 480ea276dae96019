//! Bundle processing end to end: `interactions::bundle::process` (what `POST [base]` runs for
//! a batch or transaction Bundle: prepare, authorise, validate, resolve `urn:uuid:` and
//! conditional references, run the entries in the spec's order) against a real PostgreSQL,
//! with an operator principal (`system/*.*`). Needs `IRONFHIR_FUZZ_DATABASE_URL` naming a
//! database this target may fill (scripts/fuzz.sh creates a fresh one and drops it after);
//! without it every input is skipped.
//!
//! A crash is a crash; an error the server would answer with 5xx (`FhirError::Internal`,
//! `Sealed`, `Unavailable`) — for the whole Bundle or for one batch entry — is a finding.
#![no_main]
use std::sync::OnceLock;

use clap::Parser;
use ironfhir::auth::Principal;
use ironfhir::error::FhirError;
use ironfhir::rest::format::{Format, parse_in};
use ironfhir::store::Store;
use ironfhir_fuzz::{BASE, MAX_BYTES};
use libfuzzer_sys::fuzz_target;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: ironfhir::config::Config,
}

struct Env {
    runtime: tokio::runtime::Runtime,
    store: Store,
    principal: Principal,
}

static ENV: OnceLock<Option<Env>> = OnceLock::new();

fn env() -> Option<&'static Env> {
    ENV.get_or_init(|| {
        let url = std::env::var("IRONFHIR_FUZZ_DATABASE_URL").ok()?;
        let data_dir = std::env::temp_dir().join(format!("ironfhir-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let args = Args::parse_from([
            "bundle_process".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--database-url".to_owned(),
            url,
        ]);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let db = runtime
            .block_on(ironfhir::server::open_database(&args.config, 4, std::time::Duration::from_secs(10)))
            .expect("IRONFHIR_FUZZ_DATABASE_URL must name a PostgreSQL database this target may write");
        Some(Env { runtime, store: db.store, principal: Principal::internal("fuzz", "system/*.*") })
    })
    .as_ref()
}

fn is_5xx(e: &FhirError) -> bool {
    matches!(e, FhirError::Internal(_) | FhirError::Sealed(_) | FhirError::Unavailable(_))
}

fuzz_target!(|data: &[u8]| {
    ironfhir_fuzz::begin(data);
    let Some(env) = env() else { return };
    let Ok(bundle) = parse_in(Format::Json, data) else { return };
    let result = env.runtime.block_on(ironfhir::interactions::bundle::process(&env.store, &env.principal, bundle, BASE, 100, MAX_BYTES));
    match result {
        Err(e) if is_5xx(&e) => ironfhir_fuzz::finding("bundle-5xx", &format!("{e:?}")),
        Ok(outcome) => {
            for (i, entry) in outcome.entries.iter().enumerate() {
                if let Err(e) = entry {
                    if is_5xx(e) {
                        ironfhir_fuzz::finding("bundle-entry-5xx", &format!("entry {i}: {e:?}"));
                    }
                }
            }
        }
        Err(_) => {}
    }
});
