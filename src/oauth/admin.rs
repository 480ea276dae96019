//! `ironfhir admin client add` and `ironfhir admin user add`: register clients and users
//! without a browser (operators, scripts, black-box tests). Both print what they registered
//! as JSON (never a secret or password hash).

use std::io::BufRead;
use std::time::Duration;

use serde_json::json;

use super::accounts::{self, ClientAuth, NewClient, NewUser};
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
        // A single JWK is accepted as a set of one.
        let set = if value.get("keys").is_some() { value } else { json!({ "keys": [value] }) };
        (ClientAuth::Jwks, Some(set))
    } else {
        (ClientAuth::JwksUri, None)
    };
    if auth == ClientAuth::Public && args.redirect_uris.is_empty() {
        return Err("a public client needs at least one --redirect-uri".into());
    }
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
    db.close().await?;
    let client = result?;
    println!("{}", serde_json::to_string_pretty(&client).map_err(|e| e.to_string())?);
    Ok(())
}

/// Registers a user (password from standard input).
pub async fn user_add(args: UserAddArgs) -> Result<(), String> {
    let mut password = String::new();
    std::io::stdin().lock().read_line(&mut password).map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let password = password.trim_end_matches(['\r', '\n']).to_owned();
    let totp_secret = args.totp.then(super::totp::new_secret);
    let db = open_database(&args.config, 2, Duration::from_secs(60)).await?;
    let result = accounts::add_user(
        db.store.pool(),
        NewUser { username: args.username, password, fhir_user: args.fhir_user, totp_secret: totp_secret.clone(), require_totp: args.totp },
    )
    .await;
    db.close().await?;
    let user = result?;
    let mut out = serde_json::to_value(&user).map_err(|e| e.to_string())?;
    if let Some(secret) = totp_secret {
        // Shown once, for enrolling the authenticator app.
        out["totp_secret"] = json!(secret);
        out["totp_uri"] = json!(super::totp::provisioning_uri(&args.config.issuer, &user.username, &secret));
    }
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    Ok(())
}
