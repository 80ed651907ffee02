//! Bearer JWT authentication: the `Caller` extractor verifies the token once;
//! handlers take a `Caller` and never read headers themselves.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ledger_domain::policy::{self, Action, Scope};
use ledger_domain::{Actor, Role};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::jwks::{Jwks, VerifyingKey};
use crate::state::AppState;

/// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// Required, a UUID, except for operators (who have no agency: ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency_id: Option<serde_json::Value>,
    pub role: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// The claims of a verified token the service reads, found by the configured
/// claim paths; turning them into an `Actor` is `actor_from`'s job.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    pub sub: String,
    /// The value at `JWT_AGENCY_CLAIM`, if any.
    pub agency: Option<Value>,
    /// The value at `JWT_ROLE_CLAIM` (the first known role of a list), if any.
    pub role: Option<String>,
}

/// Verifies tokens: HS256 with `JWT_SECRET`, and RS256/ES256/EdDSA with the
/// keys an identity provider publishes at `JWT_JWKS_URL`. The key decides
/// the algorithm: the token's header only says which key to try.
pub struct Keys {
    encoding: Option<EncodingKey>,
    secret: Option<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
    agency_claim: String,
    role_claim: String,
}

impl Keys {
    /// HS256 only, with the default claim names (for `ledger token`).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            encoding: Some(EncodingKey::from_secret(secret)),
            secret: Some(DecodingKey::from_secret(secret)),
            jwks: None,
            issuer: None,
            audience: None,
            agency_claim: "agency_id".to_owned(),
            role_claim: "role".to_owned(),
        }
    }

    pub fn from_config(config: &ServeConfig) -> Self {
        let secret = config.jwt_secret().map(|s| s.expose_secret().as_bytes());
        Self {
            encoding: secret.map(EncodingKey::from_secret),
            secret: secret.map(DecodingKey::from_secret),
            jwks: config.jwt_jwks_url.as_deref().map(Jwks::new),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            agency_claim: config.jwt_agency_claim.clone(),
            role_claim: config.jwt_role_claim.clone(),
        }
    }

    /// An HS256 token of `role` for `agency_id` (left out of an operator's
    /// token); empty when no `JWT_SECRET` is configured.
    pub fn mint(&self, agency_id: Uuid, role: Role, sub: &str, ttl: Duration) -> String {
        let Some(encoding) = &self.encoding else {
            return String::new();
        };
        let now = unix_now();
        let claims = Claims {
            sub: sub.to_owned(),
            agency_id: role.has_agency().then(|| agency_id.to_string().into()),
            role: role.as_str().to_owned(),
            exp: now + ttl.as_secs(),
            nbf: None,
            iat: Some(now),
        };
        // HS256 signing of a serialisable struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, encoding).unwrap_or_default()
    }

    pub async fn verify(&self, token: &str) -> Result<Actor, ApiError> {
        actor_from(self.verify_claims(token).await?)
    }

    /// Checks the signature, `exp`/`nbf`/`iat`, and `iss`/`aud` when
    /// configured, and reads `sub`, the agency and the role.
    pub async fn verify_claims(&self, token: &str) -> Result<VerifiedClaims, ApiError> {
        const NOT_OURS: ApiError =
            ApiError::Unauthenticated("the token is missing, malformed or not ours");
        let header = jsonwebtoken::decode_header(token).map_err(|_| NOT_OURS)?;
        let (algorithm, key) = match (&self.secret, &self.jwks, header.alg, header.kid) {
            (Some(secret), _, Algorithm::HS256, _) => (Algorithm::HS256, Keyed::Secret(secret)),
            (_, Some(jwks), _, Some(kid)) => {
                let key = jwks.key(&kid).await.ok_or(ApiError::Unauthenticated(
                    "the token's key is not one the identity provider publishes",
                ))?;
                (key.algorithm, Keyed::Published(key))
            }
            _ => return Err(NOT_OURS),
        };
        let data =
            jsonwebtoken::decode::<Value>(token, key.decoding(), &self.validation(algorithm))
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => ApiError::TokenExpired,
                    _ => NOT_OURS,
                })?;
        let claims = data.claims;
        if claims["iat"]
            .as_u64()
            .is_some_and(|iat| iat > unix_now() + LEEWAY_SECS)
        {
            return Err(ApiError::Unauthenticated(
                "the token was issued in the future",
            ));
        }
        let sub = claims["sub"]
            .as_str()
            .filter(|sub| !sub.is_empty())
            .ok_or(ApiError::Unauthenticated("the token's sub is empty"))?;
        Ok(VerifiedClaims {
            sub: sub.to_owned(),
            agency: claim_at(&claims, &self.agency_claim).cloned(),
            role: role_at(&claims, &self.role_claim),
        })
    }

    /// Only `algorithm`, whatever the header says; `iss`/`aud` when configured.
    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        let mut required = vec!["exp", "sub"];
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = LEEWAY_SECS;
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
            validation.validate_aud = true;
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

/// The key a token is checked with.
enum Keyed<'a> {
    Secret(&'a DecodingKey),
    Published(Arc<VerifyingKey>),
}

impl Keyed<'_> {
    fn decoding(&self) -> &DecodingKey {
        match self {
            Keyed::Secret(key) => key,
            Keyed::Published(published) => &published.key,
        }
    }
}

/// The claim at `path`: a top-level claim of that exact name (Auth0's
/// namespaced `https://example.com/agency_id` has dots of its own), else
/// the dotted path through nested objects (`app_metadata.agency_id`).
fn claim_at<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    claims.get(path).or_else(|| {
        path.split('.')
            .try_fold(claims, |value, segment| value.get(segment))
    })
}

/// The role at `path`: a string, or the first known role of a list (as
/// Keycloak's `realm_access.roles`).
fn role_at(claims: &Value, path: &str) -> Option<String> {
    match claim_at(claims, path)? {
        Value::String(role) => Some(role.clone()),
        Value::Array(roles) => roles
            .iter()
            .filter_map(Value::as_str)
            .find(|role| Role::parse(role).is_some())
            .map(str::to_owned),
        _ => None,
    }
}

/// The actor a verified token speaks for.
fn actor_from(claims: VerifiedClaims) -> Result<Actor, ApiError> {
    let role = claims
        .role
        .as_deref()
        .and_then(Role::parse)
        .ok_or(ApiError::Unauthenticated(
            "the token's role is not a known role",
        ))?;
    // Operators run the platform for every agency: an agency in their token
    // is ignored, whatever it holds.
    let agency_id = if role.has_agency() {
        claims
            .agency
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|agency| agency.parse::<Uuid>().ok())
            .ok_or(ApiError::Unauthenticated(
                "the token's agency_id is missing or not a UUID",
            ))?
    } else {
        Uuid::nil()
    };
    Ok(Actor {
        agency_id,
        user_id: claims.sub,
        role,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Actor);

impl Caller {
    /// Refuses (403) an action the caller's role may never take.
    pub fn require(&self, action: Action) -> Result<Scope, ApiError> {
        policy::require(&self.0, action).map_err(ApiError::from)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthenticated(
                "an Authorization: Bearer token is required",
            ))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthenticated(
                "the Authorization header must be Bearer <token>",
            ))?;
        let actor = state.keys.verify(token).await?;
        state
            .agencies
            .admit(&actor, parts.uri.path(), &state.pool)
            .await?;
        Ok(Caller(actor))
    }
}
