//! `ironfhir admin client add` and `ironfhir admin user add`: register clients and users
//! without a browser (operators, scripts, black-box tests). Both print what they registered
//! as JSON (never a secret or password hash).

use std::io::BufRead;
use std::time::Duration;

use crate::oauth::accounts::{self, ClientAuth, NewClient};
use crate::audit::{OperatorChange, operator_event};
use crate::config::{ClientAddArgs, UserAddArgs};
use crate::server::open_database;

/// Registers a client.
pub async fn client_add(args: ClientAddArgs) -> Result<(), String> {
    let (auth, jwks) = if args.public {
        (ClientAuth::Public, None)
    } else if args.secret.is_some() {
        (ClientAuth::Secret, None)
    } else if let Some(path) = &args.jwks {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read --jwks {}: {e}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("--jwks {}: not JSON: {e}", path.display()))?;
        (ClientAuth::Jwks, Some(accounts::jwk_set(value)))
    } else {
        (ClientAuth::JwksUri, None)
    };
    let db = open_database(&args.config, 2, Duration::from_secs(60)).await?;
    let result = accounts::add_client(
        db.store.pool(),
        NewClient {
            client_id: args.client_id,
            redirect_uris: args.redirect_uris,
            scope: args.scope,
            auth,
            secret: args.secret,
            jwks,
            jwks_uri: args.jwks_uri,
        },
    )
    .await;
    let recorded = match &result {
        Ok(client) => super::record(&db.store, operator_event(OperatorChange::ClientRegistered, "admin client add", true, &format!("client {} registered", client.client_id))).await,
        Err(_) => Ok(()),
    };
    db.close().await?;
    let client = result?;
    recorded?;
    println!("{}", serde_json::to_string_pretty(&client).map_err(|e| e.to_string())?);
    Ok(())
}

/// Registers a user (password from standard input).
pub async fn user_add(args: UserAddArgs) -> Result<(), String> {
    let mut password = String::new();
    std::io::stdin().lock().read_line(&mut password).map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let password = password.trim_end_matches(['\r', '\n']).to_owned();
    let db = open_database(&args.config, 2, Duration::from_secs(60)).await?;
    let username = args.username.clone();
    let result = accounts::register_user(db.store.pool(), args.username, password, args.fhir_user, args.totp, &args.config.issuer).await;
    let recorded = match &result {
        Ok(_) => super::record(&db.store, operator_event(OperatorChange::UserRegistered, "admin user add", true, &format!("account {username} registered"))).await,
        Err(_) => Ok(()),
    };
    db.close().await?;
    let out = result?;
    recorded?;
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    Ok(())
}
