//! Bearer JWT authentication: the `Caller` extractor verifies the token once;
//! handlers take a `Caller` and never read headers themselves.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ledger_domain::policy::{self, Action, Scope};
use ledger_domain::{Actor, Role};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
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

/// Signs and verifies tokens with the HS256 secret.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = LEEWAY_SECS;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token of `role` for `agency_id` (left out of an operator's token).
    pub fn mint(&self, agency_id: Uuid, role: Role, sub: &str, ttl: Duration) -> String {
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
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    pub fn verify(&self, token: &str) -> Result<Actor, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::TokenExpired,
                _ => ApiError::Unauthenticated("the token is missing, malformed or not ours"),
            })?;
        let claims = data.claims;
        if claims.iat.is_some_and(|iat| iat > unix_now() + LEEWAY_SECS) {
            return Err(ApiError::Unauthenticated(
                "the token was issued in the future",
            ));
        }
        let role = Role::parse(&claims.role).ok_or(ApiError::Unauthenticated(
            "the token's role is not a known role",
        ))?;
        if claims.sub.is_empty() {
            return Err(ApiError::Unauthenticated("the token's sub is empty"));
        }
        let agency_id = if role.has_agency() {
            claims
                .agency_id
                .as_ref()
                .and_then(|id| id.as_str()?.parse().ok())
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
        let actor = state.keys.verify(token)?;
        state
            .agencies
            .admit(&actor, parts.uri.path(), &state.pool)
            .await?;
        Ok(Caller(actor))
    }
}
