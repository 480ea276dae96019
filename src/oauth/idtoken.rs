//! OpenID Connect id_tokens (with SMART's `fhirUser` claim), built with the `openidconnect`
//! crate's types and signed ES256 by the server's key.

use chrono::{Duration, Utc};
use openidconnect::core::{
    CoreGenderClaim, CoreJsonCurveType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey,
};
use openidconnect::{
    AccessToken, AdditionalClaims, Audience, IdToken, IdTokenClaims, IssuerUrl, JsonWebKeyId, Nonce, PrivateSigningKey, SigningError,
    StandardClaims, SubjectIdentifier,
};
use serde::{Deserialize, Serialize};

use crate::rest::AppState;

/// SMART's extra claim: the FHIR resource of the signed-in person.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FhirUserClaim {
    #[serde(rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
}

impl AdditionalClaims for FhirUserClaim {}

type SmartIdToken = IdToken<FhirUserClaim, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

/// The server's P-256 key as an openidconnect signing key.
struct Es256Signer<'a> {
    key: &'a p256::ecdsa::SigningKey,
    kid: &'a str,
}

impl PrivateSigningKey for Es256Signer<'_> {
    type VerificationKey = CoreJsonWebKey;

    fn sign(&self, alg: &CoreJwsSigningAlgorithm, message: &[u8]) -> Result<Vec<u8>, SigningError> {
        use p256::ecdsa::signature::Signer;
        if *alg != CoreJwsSigningAlgorithm::EcdsaP256Sha256 {
            return Err(SigningError::UnsupportedAlg(format!("{alg:?}")));
        }
        let signature: p256::ecdsa::Signature = self.key.sign(message);
        Ok(signature.to_bytes().to_vec())
    }

    fn as_verification_key(&self) -> CoreJsonWebKey {
        let point = self.key.verifying_key().to_encoded_point(false);
        let coordinate = |c: Option<&p256::FieldBytes>| c.map(|b| b.to_vec()).unwrap_or_default();
        CoreJsonWebKey::new_ec(coordinate(point.x()), coordinate(point.y()), CoreJsonCurveType::P256, Some(JsonWebKeyId::new(self.kid.to_owned())))
    }
}

/// Signs an id_token for `subject` (issuer: the FHIR base URL, audience: the client), bound to
/// the access token (`at_hash`) and the request's `nonce`.
pub fn sign(
    state: &AppState,
    issuer: &str,
    client_id: &str,
    subject: &str,
    fhir_user: Option<&str>,
    nonce: Option<&str>,
    access_token: &str,
) -> Result<String, String> {
    let now = Utc::now();
    let claims = IdTokenClaims::new(
        IssuerUrl::new(issuer.to_owned()).map_err(|e| e.to_string())?,
        vec![Audience::new(client_id.to_owned())],
        now + Duration::seconds(state.oauth.access_token_ttl.as_secs() as i64),
        now,
        StandardClaims::new(SubjectIdentifier::new(subject.to_owned())),
        FhirUserClaim { fhir_user: fhir_user.map(str::to_owned) },
    )
    .set_nonce(nonce.map(|n| Nonce::new(n.to_owned())));
    let access_token = AccessToken::new(access_token.to_owned());
    // RS256 when the RSA key is there (OpenID Connect's and SMART's mandatory algorithm),
    // otherwise ES256 with the access-token key.
    let token = match rsa_signer(&state.tokens) {
        Some(rsa) => SmartIdToken::new(claims, &rsa, CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, Some(&access_token), None),
        None => {
            let signer = Es256Signer { key: state.tokens.signing_key(), kid: state.tokens.key_id() };
            SmartIdToken::new(claims, &signer, CoreJwsSigningAlgorithm::EcdsaP256Sha256, Some(&access_token), None)
        }
    };
    Ok(token.map_err(|e| e.to_string())?.to_string())
}

/// Key id of the RSA id_token key.
fn rsa_kid(tokens: &crate::auth::TokenAuthority) -> String {
    format!("{}-rs256", tokens.key_id())
}

fn rsa_signer(tokens: &crate::auth::TokenAuthority) -> Option<CoreRsaPrivateSigningKey> {
    let pem = tokens.id_token_rsa()?;
    CoreRsaPrivateSigningKey::from_pem(pem, Some(JsonWebKeyId::new(rsa_kid(tokens))))
        .map_err(|e| tracing::error!(error = %e, "the RSA id_token key cannot be read"))
        .ok()
}

/// The public JWK of the RSA id_token key (for `/auth/jwks`).
pub fn rsa_public_jwk(tokens: &crate::auth::TokenAuthority) -> Option<serde_json::Value> {
    let mut jwk = serde_json::to_value(rsa_signer(tokens)?.as_verification_key()).ok()?;
    jwk["alg"] = serde_json::json!("RS256");
    Some(jwk)
}
