//! Who is asking: bearer tokens signed by this server (ES256) become a [`Principal`].
//!
//! The principal carries everything an access decision needs — client, user, role, patient
//! context and scopes — so the SMART on FHIR authorization server can mint richer tokens later
//! without any handler changing: handlers only ever ask `principal.require(...)`.

pub mod keys;
pub mod scopes;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::FhirError;
pub use scopes::{Interaction, Scope, ScopeContext, parse_scopes};

/// Claims of the access tokens this server signs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    /// Space-separated SMART scopes.
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Patient in context for `patient/` scopes (SMART launch context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// `Practitioner/123` or `Patient/123` for user logins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The PractitionerRole the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// The audience of access tokens for the FHIR API.
pub const FHIR_AUDIENCE: &str = "ironfhir-fhir-api";

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub client_id: Option<String>,
    pub patient: Option<String>,
    pub fhir_user: Option<String>,
    pub role: Option<String>,
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Whether some scope allows `interaction` on `resource_type`.
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.scopes.iter().any(|s| s.allows(resource_type, interaction))
    }

    /// Fails with 403 unless some scope allows `interaction` on `resource_type`.
    pub fn require(&self, resource_type: &str, interaction: Interaction) -> Result<(), FhirError> {
        if self.allows(resource_type, interaction) {
            Ok(())
        } else {
            Err(FhirError::Forbidden(format!(
                "the access token's scopes do not allow {} on {}",
                interaction.name(),
                resource_type
            )))
        }
    }

    /// Whether a `system/` scope (SMART Backend Services) allows `interaction` on
    /// `resource_type`: what Bulk Data export requires.
    pub fn allows_system(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.scopes.iter().any(|s| s.context == ScopeContext::System && s.allows(resource_type, interaction))
    }

    /// Who the principal is for owning asynchronous jobs: client and subject of the token.
    pub fn owner_key(&self) -> String {
        format!("{}|{}", self.client_id.as_deref().unwrap_or(""), self.subject)
    }

    /// Whether the principal may use the interaction on at least one resource type (for
    /// system-level history and search).
    pub fn allows_any(&self, interaction: Interaction) -> bool {
        self.scopes.iter().any(|s| s.allows_any(interaction))
    }
}

/// Signs and verifies access tokens with the server's ES256 key.
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    /// Tokens already verified, with their principal and expiry: an ECDSA verification costs
    /// far more than the rest of a read, and clients send the same token many times.
    verified: std::sync::RwLock<std::collections::HashMap<String, (std::sync::Arc<Principal>, u64)>>,
}

/// How many verified tokens are remembered before the cache is cleared.
const VERIFIED_CACHE_CAPACITY: usize = 10_000;

impl TokenAuthority {
    /// Builds the authority from a PKCS#8 PEM P-256 private key.
    pub fn from_pem(private_pem: &str, issuer: &str) -> Result<Self, String> {
        let public_pem = keys::public_pem(private_pem)?;
        Ok(TokenAuthority {
            encoding: EncodingKey::from_ec_pem(private_pem.as_bytes()).map_err(|e| e.to_string())?,
            decoding: DecodingKey::from_ec_pem(public_pem.as_bytes()).map_err(|e| e.to_string())?,
            issuer: issuer.to_owned(),
            verified: Default::default(),
        })
    }

    /// Issues a token for an operator or test (`ironfhir admin token`).
    pub fn issue(&self, subject: &str, scope: &str, ttl_seconds: u64) -> Result<String, String> {
        let now = now_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: FHIR_AUDIENCE.to_owned(),
            exp: now + ttl_seconds,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: scope.to_owned(),
            client_id: Some("ironfhir-admin".to_owned()),
            patient: None,
            fhir_user: None,
            role: None,
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Verifies a token (see [`Self::verify_uncached`]), remembering valid tokens until they expire.
    pub fn verify(&self, token: &str) -> Result<std::sync::Arc<Principal>, FhirError> {
        let now = now_secs();
        if let Ok(cache) = self.verified.read() {
            if let Some((principal, exp)) = cache.get(token) {
                if *exp > now {
                    return Ok(principal.clone());
                }
            }
        }
        let (principal, exp) = self.verify_uncached(token)?;
        let principal = std::sync::Arc::new(principal);
        if let Ok(mut cache) = self.verified.write() {
            if cache.len() >= VERIFIED_CACHE_CAPACITY {
                cache.retain(|_, (_, exp)| *exp > now);
                if cache.len() >= VERIFIED_CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(token.to_owned(), (principal.clone(), exp));
        }
        Ok(principal)
    }

    /// Verifies signature, algorithm (ES256 only — `alg: none` and HS256 are refused), issuer,
    /// audience and expiry, and turns the token into a principal and its expiry.
    pub fn verify_uncached(&self, token: &str) -> Result<(Principal, u64), FhirError> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[FHIR_AUDIENCE]);
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| FhirError::Unauthorized(format!("invalid access token: {}", describe(&e))))?;
        let claims = data.claims;
        // The cache keeps a principal only until the token's own expiry (the leeway is for
        // clock skew between servers, not for serving expired tokens from the cache).
        let exp = claims.exp;
        Ok((
            Principal {
                subject: claims.sub,
                client_id: claims.client_id,
                patient: claims.patient,
                fhir_user: claims.fhir_user,
                role: claims.role,
                scopes: scopes::parse_scopes(&claims.scope),
            },
            exp,
        ))
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm => "algorithm not accepted",
        _ => "malformed",
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
