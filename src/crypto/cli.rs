//! `ironfhir keys …`: data key rotation, key-encryption key rotation and status.

use std::time::Duration;

use sqlx::Row;

use crate::config::KeysCommand;
use crate::server::open_database;

/// Runs one `keys` subcommand.
pub async fn run(command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Rotate(args) => {
            let db = open_database(&args.config, 4, Duration::from_secs(3600)).await?;
            let result = rotate(&db.store, &args.config, args.no_wait).await;
            db.close().await?;
            result
        }
        KeysCommand::RotateKek(args) => {
            let new = super::keys::LocalKek::from_file(&args.new_kek_file)?;
            let db = open_database(&args.config, 2, Duration::from_secs(3600)).await?;
            let result = super::keys::rotate_kek(&db.store, &args.config, &new).await;
            db.close().await?;
            let count = result?;
            println!("re-wrapped {count} keys under key-encryption key {}; configure {} from now on", {
                use super::keys::KeyProvider;
                new.id()
            }, args.new_kek_file.display());
            Ok(())
        }
        KeysCommand::Status(config) => {
            let db = open_database(&config, 2, Duration::from_secs(3600)).await?;
            let rows = sqlx::query(
                "SELECT k.id, k.purpose, k.active, k.kek_id, \
                   (SELECT count(*) FROM resource r WHERE r.key_id = k.id), \
                   (SELECT count(*) FROM resource_history h WHERE h.key_id = k.id), \
                   (SELECT count(*) FROM audit_log a WHERE a.key_id = k.id) \
                 FROM data_key k ORDER BY k.purpose, k.created",
            )
            .fetch_all(db.store.pool())
            .await
            .map_err(|e| e.to_string());
            db.close().await?;
            for r in rows? {
                println!(
                    "{}\t{}\t{}\tkek {}\t{} current rows\t{} history rows\t{} audit rows",
                    r.get::<String, _>(0),
                    r.get::<String, _>(1),
                    if r.get::<bool, _>(2) { "active" } else { "retired" },
                    r.get::<String, _>(3),
                    r.get::<i64, _>(4),
                    r.get::<i64, _>(5),
                    r.get::<i64, _>(6)
                );
            }
            Ok(())
        }
    }
}

/// A new data key, then every older row re-encrypted under it, until none is left (rows a
/// running server wrote under the old key before it saw the new one included).
async fn rotate(store: &crate::store::Store, config: &crate::config::Config, no_wait: bool) -> Result<(), String> {
    let id = super::keys::rotate(store, config).await?;
    println!("new data key {id}");
    if no_wait {
        return Ok(());
    }
    // Running servers learn new keys every 2 s (keys::spawn_key_poller): rows are moved to the
    // new key only once every server can read it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bar = indicatif::ProgressBar::new_spinner();
    let mut total = 0;
    loop {
        total += super::keys::reencrypt(store, 500, |n| bar.set_message(format!("{} rows re-encrypted", total + n))).await.map_err(|e| e.to_string())?;
        let behind = super::keys::rows_behind(store).await.map_err(|e| e.to_string())?;
        if behind == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bar.finish_and_clear();
    println!("re-encrypted {total} rows; every row is under data key {id}");
    Ok(())
}
