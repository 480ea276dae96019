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
    /// The PractitionerRole the token is bound to (`PractitionerRole/ID`), or `patient`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Encounter in context (EHR launch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// The grant (authorization) the token was issued under: revoking the grant, or detecting
    /// refresh-token reuse in it, ends every token that carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

/// How far an allowed interaction reaches (see [`Principal::access`]).
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Wherever the data is (`system/` scopes, and `user/` scopes of tokens without a role).
    All,
    /// Only resources in this patient's compartment (`patient/` scopes).
    Patient(String),
    /// Only resources that belong to this organisation subtree (`user/` scopes of a token
    /// bound to a PractitionerRole).
    Organization(std::sync::Arc<crate::access::organization::OrgScope>),
}

/// The audience of access tokens for the FHIR API.
pub const FHIR_AUDIENCE: &str = "ironfhir-fhir-api";

/// The authenticated caller of a request.
#[derive(Debug, Clone, Default)]
pub struct Principal {
    pub subject: String,
    pub client_id: Option<String>,
    pub patient: Option<String>,
    pub fhir_user: Option<String>,
    pub role: Option<String>,
    pub encounter: Option<String>,
    pub scopes: Vec<Scope>,
    /// `jti` of the access token (what `/auth/revoke` revokes).
    pub token_id: Option<String>,
    /// The grant the token belongs to (see [`Claims::grant`]).
    pub grant: Option<String>,
    /// The PractitionerRole the request acts in, as it stands now (set per request by
    /// [`crate::access::with_current_role`]); confines `user/` scopes to its organisation
    /// subtree and masks what its template hides.
    pub acting: Option<std::sync::Arc<crate::access::roles::ActingRole>>,
}

impl Principal {
    /// A principal for the server's own work (demo loader, import) with the given scopes.
    pub fn internal(subject: &str, scope: &str) -> Self {
        Principal { subject: subject.to_owned(), scopes: parse_scopes(scope), ..Default::default() }
    }

    /// Whether this is the server acting on its own (`import`, `--demo`, background work) rather
    /// than a request with an access token: data it loads is taken as it is.
    pub fn is_internal(&self) -> bool {
        self.token_id.is_none() && self.client_id.is_none()
    }

    /// How far the principal may use `interaction` on `resource_type`: everywhere its
    /// `system/` or `user/` scopes reach, only inside the patient's compartment when just a
    /// `patient/` scope allows it, or not at all. `patient/` scopes without a patient in
    /// context allow nothing; on types outside the Patient compartment they allow only reading
    /// and searching the directory ([`crate::access::DIRECTORY_TYPES`]).
    pub fn access(&self, resource_type: &str, interaction: Interaction) -> Option<Reach> {
        if self.scopes.iter().any(|s| s.context == ScopeContext::System && s.allows(resource_type, interaction)) {
            return Some(Reach::All);
        }
        if self.scopes.iter().any(|s| s.context == ScopeContext::User && s.allows(resource_type, interaction)) {
            return Some(match &self.acting {
                Some(role) => Reach::Organization(role.scope.clone()),
                None => Reach::All,
            });
        }
        if self.scopes.iter().any(|s| s.context == ScopeContext::Patient && s.allows(resource_type, interaction)) {
            let patient = self.patient.as_ref()?;
            let in_compartment = crate::access::in_patient_compartment_type(resource_type);
            if crate::access::is_directory_type(resource_type) {
                // The directory (who works where, open slots) is read by patients to find care,
                // never written. A Schedule is in the compartment too: a patient reads their
                // own and those of no patient (`access::confine`, `access::reaches`).
                let reads = matches!(interaction, Interaction::Read | Interaction::Search);
                return reads.then(|| if in_compartment { Reach::Patient(patient.clone()) } else { Reach::All });
            }
            return in_compartment.then(|| Reach::Patient(patient.clone()));
        }
        None
    }

    /// The elements this principal must not see, read, search or sort on: its acting role's
    /// mask, or for a patient-context principal without a role what the directory hides from
    /// patients; `None` when nothing is hidden.
    pub fn mask(&self) -> Option<std::sync::Arc<crate::access::roles::Mask>> {
        if let Some(acting) = &self.acting {
            return (!acting.mask.is_empty()).then(|| acting.mask.clone());
        }
        let system_or_user = self.scopes.iter().any(|s| s.context != ScopeContext::Patient);
        (self.patient.is_some() && !system_or_user && self.scopes.iter().any(|s| s.context == ScopeContext::Patient))
            .then(crate::access::mask::patient_directory)
    }

    /// The queries of the granular scopes that confine `interaction` on `resource_type`
    /// (`patient/Observation.rs?category=laboratory`): `None` when some scope allowing it has
    /// no query, otherwise every allowing scope's query — a resource must match one of them.
    pub fn filters(&self, resource_type: &str, interaction: Interaction) -> Option<Vec<String>> {
        let allowing: Vec<&Scope> = self.scopes.iter().filter(|s| s.allows(resource_type, interaction)).collect();
        if allowing.is_empty() || allowing.iter().any(|s| s.filter.is_none()) {
            return None;
        }
        Some(allowing.iter().filter_map(|s| s.filter.clone()).collect())
    }

    /// Whether the principal may use `interaction` on `resource_type` at all (maybe only in a
    /// compartment: callers that act on data must use [`Self::require`] and honour the reach).
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.access(resource_type, interaction).is_some()
    }

    /// The reach of `interaction` on `resource_type`, or 403.
    pub fn require(&self, resource_type: &str, interaction: Interaction) -> Result<Reach, FhirError> {
        self.access(resource_type, interaction).ok_or_else(|| {
            FhirError::Forbidden(format!("the access token's scopes do not allow {} on {}", interaction.name(), resource_type))
        })
    }

    /// The patient whose compartment confines this principal for `interaction` on some type,
    /// if any scope is patient-confined.
    pub fn confined_patient(&self) -> Option<&str> {
        self.scopes.iter().any(|s| s.context == ScopeContext::Patient).then_some(self.patient.as_deref()).flatten()
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
        self.scopes.iter().any(|s| s.allows_any(interaction) && (s.context != ScopeContext::Patient || self.patient.is_some()))
    }
}

/// Signs and verifies access tokens with the server's ES256 key.
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The private key itself, for OpenID Connect id_tokens and the public JWK.
    signing_key: p256::ecdsa::SigningKey,
    /// Key id (`kid`): the RFC 7638 thumbprint of the public key.
    kid: String,
    /// The RSA key of RS256 id_tokens (PKCS#1 PEM), when configured.
    id_token_rsa: Option<String>,
    issuer: String,
    /// Access tokens (`jti`) and grants revoked before expiry; checked on every request, kept
    /// in step with the database by [`Self::revoke_token`], [`Self::revoke_grant`] and the
    /// revocation poller (other instances' revocations).
    revoked: std::sync::RwLock<Revoked>,
    /// Tokens already verified, with their principal and expiry: an ECDSA verification costs
    /// far more than the rest of a read, and clients send the same token many times.
    verified: std::sync::RwLock<std::collections::HashMap<String, (std::sync::Arc<Principal>, u64)>>,
}

/// Revoked token ids and grant ids.
#[derive(Default)]
struct Revoked {
    tokens: std::collections::HashSet<String>,
    grants: std::collections::HashSet<String>,
}

/// How many verified tokens are remembered before the cache is cleared.
const VERIFIED_CACHE_CAPACITY: usize = 10_000;

impl TokenAuthority {
    /// Builds the authority from a PKCS#8 PEM P-256 private key.
    pub fn from_pem(private_pem: &str, issuer: &str) -> Result<Self, String> {
        let public_pem = keys::public_pem(private_pem)?;
        let signing_key = keys::signing_key(private_pem)?;
        Ok(TokenAuthority {
            encoding: EncodingKey::from_ec_pem(private_pem.as_bytes()).map_err(|e| e.to_string())?,
            decoding: DecodingKey::from_ec_pem(public_pem.as_bytes()).map_err(|e| e.to_string())?,
            kid: keys::thumbprint(&signing_key),
            signing_key,
            id_token_rsa: None,
            issuer: issuer.to_owned(),
            revoked: Default::default(),
            verified: Default::default(),
        })
    }

    /// Adds the RSA key that signs RS256 id_tokens (PKCS#1 PEM).
    pub fn with_id_token_key(mut self, rsa_pem: String) -> Self {
        self.id_token_rsa = Some(rsa_pem);
        self
    }

    /// The RSA key of RS256 id_tokens, if any.
    pub fn id_token_rsa(&self) -> Option<&str> {
        self.id_token_rsa.as_deref()
    }

    /// `iss` of the access tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Key id of the signing key (the `kid` header of every token we sign).
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The signing key (for OpenID Connect id_tokens).
    pub fn signing_key(&self) -> &p256::ecdsa::SigningKey {
        &self.signing_key
    }

    /// The public key as a JWK Set (`/auth/jwks`).
    pub fn jwks(&self) -> serde_json::Value {
        let mut keys = vec![keys::public_jwk(&self.signing_key, &self.kid)];
        if let Some(rsa) = crate::oauth::idtoken::rsa_public_jwk(self) {
            keys.push(rsa);
        }
        serde_json::json!({ "keys": keys })
    }

    /// Marks an access token revoked (by `jti`) in this process.
    pub fn revoke_token(&self, jti: &str) {
        if let Ok(mut r) = self.revoked.write() {
            r.tokens.insert(jti.to_owned());
        }
    }

    /// Marks a grant revoked in this process: every token issued under it stops working.
    pub fn revoke_grant(&self, grant: &str) {
        if let Ok(mut r) = self.revoked.write() {
            r.grants.insert(grant.to_owned());
        }
    }

    fn is_revoked(&self, principal: &Principal) -> bool {
        let Ok(r) = self.revoked.read() else { return true };
        principal.token_id.as_ref().is_some_and(|t| r.tokens.contains(t)) || principal.grant.as_ref().is_some_and(|g| r.grants.contains(g))
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
            encounter: None,
            grant: None,
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Verifies a token (see [`Self::verify_uncached`]), remembering valid tokens until they expire.
    pub fn verify(&self, token: &str) -> Result<std::sync::Arc<Principal>, FhirError> {
        let now = now_secs();
        if let Ok(cache) = self.verified.read() {
            if let Some((principal, exp)) = cache.get(token) {
                if *exp > now {
                    if self.is_revoked(principal) {
                        return Err(FhirError::Unauthorized("invalid access token: revoked".into()));
                    }
                    return Ok(principal.clone());
                }
            }
        }
        let (principal, exp) = self.verify_uncached(token)?;
        if self.is_revoked(&principal) {
            return Err(FhirError::Unauthorized("invalid access token: revoked".into()));
        }
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
                encounter: claims.encounter,
                scopes: scopes::parse_scopes(&claims.scope),
                token_id: Some(claims.jti),
                grant: claims.grant,
                acting: None,
            },
            exp,
        ))
    }
}

impl TokenAuthority {
    /// The claims of a token this server signed (signature, issuer and audience checked,
    /// expiry not): what revocation needs, as an expired token may still be revoked.
    pub fn decode_unexpired_or_not(&self, token: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[FHIR_AUDIENCE]);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok().map(|d| d.claims)
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

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
