//! Bearer JWTs (HS256) scoped to one org. A token names its user and org; every request also
//! reloads the user, so a deactivated user's tokens stop working at once and a role change
//! takes effect on the next call.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::ids::{OrgId, UserId};
use crate::model::{Role, User};
use crate::AppState;

/// The org's signing key, loaded from the store at start; never logged.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_seconds: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    org: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// A freshly minted token.
pub struct Minted {
    pub token: String,
    pub expires_at_ms: i64,
}

impl Keys {
    pub fn new(secret: &[u8], ttl_seconds: u64) -> Keys {
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl_seconds,
        }
    }

    /// Mints a bearer token for the user.
    pub fn issue(&self, user: &User) -> anyhow::Result<Minted> {
        let now = (crate::clock::now_ms() / 1000) as u64;
        let claims = Claims {
            sub: user.id.to_string(),
            org: user.org_id.to_string(),
            iat: now,
            exp: now + self.ttl_seconds,
            jti: format!("{:032x}", rand::random::<u128>()),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(Minted {
            token,
            expires_at_ms: (claims.exp * 1000) as i64,
        })
    }

    /// The user and org a token names, if its signature and expiry hold.
    fn verify(&self, token: &str) -> Result<(UserId, OrgId), ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| ApiError::Unauthorized(format!("invalid bearer token: {e}")))?;
        let user = data.claims.sub.parse().map_err(|_| bad_claims())?;
        let org = data.claims.org.parse().map_err(|_| bad_claims())?;
        Ok((user, org))
    }
}

fn bad_claims() -> ApiError {
    ApiError::Unauthorized("invalid bearer token: malformed claims".into())
}

/// An authenticated, active user of an org. Handlers that take it are authorized for that org.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
}

impl Caller {
    pub fn org(&self) -> OrgId {
        self.user.org_id
    }
    pub fn id(&self) -> UserId {
        self.user.id
    }
    pub fn is_admin(&self) -> bool {
        self.user.role == Role::Admin
    }
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this needs an org admin's token".into(),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::Unauthorized("missing bearer token (Authorization: Bearer …)".into())
        })?;
        let (user_id, org) = app.keys.verify(&token)?;
        let user = app
            .store
            .user_for_auth(user_id)
            .await?
            .filter(|u| u.org_id == org)
            .ok_or_else(|| ApiError::Unauthorized("the token's user does not exist".into()))?;
        if !user.active {
            return Err(ApiError::Unauthorized("the user is deactivated".into()));
        }
        Ok(Caller { user })
    }
}

/// An org admin.
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        caller.require_admin()?;
        Ok(Admin(caller))
    }
}

/// The token from `Authorization: Bearer …`, or from `?access_token=` for EventSource and
/// WebSocket clients that cannot set headers.
fn bearer(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    let query = parts.uri.query()?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token=").map(|t| t.to_string()))
}
