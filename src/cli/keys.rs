//! `ironfhir keys …`: data key rotation, key-encryption key rotation and status.

use std::time::Duration;

use crate::audit::{OperatorChange, operator_event};
use crate::config::KeysCommand;
use crate::server::open_database;

/// Runs one `keys` subcommand.
pub async fn run(command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Rotate(args) => {
            let db = open_database(&args.config, 4, Duration::from_secs(3600)).await?;
            let result = rotate(&db.store, &args.config, args.no_wait).await;
            let event = match &result {
                Ok(id) => operator_event(OperatorChange::KeyRotation, "keys rotate", true, &format!("new data key {id}")),
                Err(_) => operator_event(OperatorChange::KeyRotation, "keys rotate", false, "the rotation failed"),
            };
            let recorded = super::record(&db.store, event).await;
            db.close().await?;
            result?;
            recorded
        }
        KeysCommand::RotateKek(args) => {
            let new = crate::crypto::keys::LocalKek::from_file(&args.new_kek_file)?;
            let db = open_database(&args.config, 2, Duration::from_secs(3600)).await?;
            let result = crate::crypto::keys::rotate_kek(&db.store, &args.config, &new).await;
            let event = match &result {
                Ok(count) => operator_event(OperatorChange::KeyRotation, "keys rotate-kek", true, &format!("{count} keys re-wrapped under a new key-encryption key")),
                Err(_) => operator_event(OperatorChange::KeyRotation, "keys rotate-kek", false, "the rotation failed"),
            };
            let recorded = super::record(&db.store, event).await;
            db.close().await?;
            let count = result?;
            recorded?;
            println!("re-wrapped {count} keys under key-encryption key {}; configure {} from now on", {
                use crate::crypto::keys::KeyProvider;
                new.id()
            }, args.new_kek_file.display());
            Ok(())
        }
        KeysCommand::Status(config) => {
            let db = open_database(&config, 2, Duration::from_secs(3600)).await?;
            let keys = crate::crypto::keys::status(&db.store).await.map_err(|e| e.to_string());
            db.close().await?;
            for key in keys? {
                println!(
                    "{}\t{}\t{}\tkek {}\t{} current rows\t{} history rows\t{} audit rows",
                    key.id,
                    key.purpose,
                    if key.active { "active" } else { "retired" },
                    key.kek_id,
                    key.current_rows,
                    key.history_rows,
                    key.audit_rows
                );
            }
            Ok(())
        }
    }
}

/// A new data key, then every older row re-encrypted under it, until none is left (rows a
/// running server wrote under the old key before it saw the new one included).
async fn rotate(store: &crate::store::Store, config: &crate::config::Config, no_wait: bool) -> Result<String, String> {
    let id = crate::crypto::keys::rotate(store, config).await?;
    println!("new data key {id}");
    if no_wait {
        return Ok(id);
    }
    // Running servers learn new keys every 2 s (keys::spawn_key_poller): rows are moved to the
    // new key only once every server can read it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bar = indicatif::ProgressBar::new_spinner();
    let mut total = 0;
    loop {
        total += crate::crypto::keys::reencrypt(store, 500, |n| bar.set_message(format!("{} rows re-encrypted", total + n))).await.map_err(|e| e.to_string())?;
        let behind = crate::crypto::keys::rows_behind(store).await.map_err(|e| e.to_string())?;
        if behind == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bar.finish_and_clear();
    println!("re-encrypted {total} rows; every row is under data key {id}");
    Ok(id)
}
