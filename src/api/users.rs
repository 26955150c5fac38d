//! People: create, list, mint tokens for, and deactivate users of the caller's org.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{paginate, PageParams};
use crate::auth::{Admin, Caller};
use crate::error::{ApiError, Json, Path, Query};
use crate::ids::{ConversationId, UserId};
use crate::model::{NewUser, User};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", post(create_user).get(list_users))
        .route("/users/batch", post(create_users))
        .route("/users/{id}", get(get_user))
        .route("/users/{id}/tokens", post(mint_token))
        .route("/users/{id}/deactivate", post(deactivate_user))
}

/// Most users one batch call creates.
const MAX_BATCH: usize = 1000;

fn validate(user: &NewUser) -> Result<(), ApiError> {
    let name = user.name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ApiError::bad_request("name must be 1 to 128 characters"));
    }
    for (field, value) in [
        ("mobile", &user.mobile),
        ("email", &user.email),
        ("staff_id", &user.staff_id),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 128)
        {
            return Err(ApiError::bad_request(format!(
                "{field} must be 1 to 128 characters when given"
            )));
        }
    }
    if let Some(mobile) = &user.mobile {
        if !mobile
            .chars()
            .all(|c| c.is_ascii_digit() || "+- ".contains(c))
        {
            return Err(ApiError::bad_request(
                "mobile may hold only digits, '+', '-' and spaces",
            ));
        }
    }
    Ok(())
}

/// Create a user in the caller's org.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = User), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_user(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    validate(&body)?;
    let mut created = app
        .store
        .create_users(caller.org(), std::slice::from_ref(&body))
        .await?;
    Ok((StatusCode::CREATED, Json(created.remove(0))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchUsers {
    users: Vec<NewUser>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct UserList {
    users: Vec<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Create up to 1,000 users in one transaction (all or none).
#[utoipa::path(post, path = "/api/v1/users/batch", tag = "users", request_body = BatchUsers,
    responses((status = 201, body = UserList), (status = 400, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_users(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<BatchUsers>,
) -> Result<(StatusCode, Json<UserList>), ApiError> {
    if body.users.is_empty() || body.users.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "users must hold 1 to {MAX_BATCH} entries"
        )));
    }
    for (i, user) in body.users.iter().enumerate() {
        validate(user).map_err(|e| ApiError::bad_request(format!("users[{i}]: {e}")))?;
    }
    let users = app.store.create_users(caller.org(), &body.users).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserList {
            users,
            next_cursor: None,
        }),
    ))
}

/// List the org's users.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(PageParams),
    responses((status = 200, body = UserList), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_users(
    State(app): State<AppState>,
    caller: Caller,
    Query(page): Query<PageParams>,
) -> Result<Json<UserList>, ApiError> {
    let limit = page.limit()?;
    let rows = app
        .store
        .list_users(caller.org(), page.after::<UserId>()?, limit + 1)
        .await?;
    let (users, next_cursor) = paginate(rows, limit, |u| u.id.to_string());
    Ok(Json(UserList { users, next_cursor }))
}

/// One user of the caller's org.
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = User), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_user(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<UserId>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(app.store.get_user(caller.org(), id).await?))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct TokenResponse {
    token: String,
    user_id: UserId,
    expires_at: String,
}

/// Mint a bearer token for a user of the org.
#[utoipa::path(post, path = "/api/v1/users/{id}/tokens", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = TokenResponse), (status = 404, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn mint_token(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<UserId>,
) -> Result<Json<TokenResponse>, ApiError> {
    let user = app.store.get_user(caller.org(), id).await?;
    if !user.active {
        return Err(ApiError::Conflict("the user is deactivated".into()));
    }
    let minted = app.keys.issue(&user).map_err(ApiError::Internal)?;
    Ok(Json(TokenResponse {
        token: minted.token,
        user_id: user.id,
        expires_at: crate::clock::rfc3339(minted.expires_at_ms),
    }))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Deactivated {
    user: User,
    /// The groups the user was removed from.
    left_conversations: Vec<ConversationId>,
}

/// Deactivate a user who left the company: their tokens stop working at once, live
/// connections close, and they leave every group of the org.
#[utoipa::path(post, path = "/api/v1/users/{id}/deactivate", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = Deactivated), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn deactivate_user(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<UserId>,
) -> Result<Json<Deactivated>, ApiError> {
    if id == caller.id() {
        return Err(ApiError::bad_request(
            "an admin cannot deactivate themselves",
        ));
    }
    let left = app.store.deactivate_user(caller.org(), id).await?;
    app.hub.kick(id);
    for conversation in &left {
        app.lanes.poke(*conversation);
    }
    let user = app.store.get_user(caller.org(), id).await?;
    Ok(Json(Deactivated {
        user,
        left_conversations: left,
    }))
}
