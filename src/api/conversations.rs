//! Conversations: groups (title, owner, members) and 1:1 chats, and their membership.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{paginate, PageParams};
use crate::auth::Caller;
use crate::error::{ApiError, Json, Path, Query};
use crate::ids::{ConversationId, UserId};
use crate::model::{Conversation, ConversationKind};
use crate::store::NewConversation;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/conversations",
            post(create_conversation).get(list_conversations),
        )
        .route("/conversations/{id}", get(get_conversation))
        .route(
            "/conversations/{id}/members",
            post(add_members).get(list_members),
        )
        .route(
            "/conversations/{id}/members/{user_id}",
            delete(remove_member),
        )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateConversation {
    /// Required for groups; a 1:1 chat may omit it.
    #[serde(default)]
    title: Option<String>,
    /// User ids; the caller is added as owner and member.
    members: Vec<UserId>,
    /// `group` (default) or `single` (a 1:1 chat: exactly one other member).
    #[serde(default)]
    kind: Option<ConversationKind>,
}

/// Loads a conversation the caller may see: a member, or an admin of its org.
pub(crate) async fn visible_conversation(
    app: &AppState,
    caller: &Caller,
    id: ConversationId,
) -> Result<Conversation, ApiError> {
    let conversation = app.store.get_conversation(caller.org(), id).await?;
    if !caller.is_admin() && !app.store.is_member(id, caller.id()).await? {
        return Err(ApiError::NotMember);
    }
    Ok(conversation)
}

/// Create a group (the caller becomes owner and member) or a 1:1 chat.
#[utoipa::path(post, path = "/api/v1/conversations", tag = "conversations", request_body = CreateConversation,
    responses((status = 201, body = Conversation), (status = 200, description = "the existing 1:1 chat", body = Conversation),
              (status = 400, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_conversation(
    State(app): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateConversation>,
) -> Result<(StatusCode, Json<Conversation>), ApiError> {
    let kind = body.kind.unwrap_or(ConversationKind::Group);
    let mut members = vec![caller.id()];
    for id in body.members {
        if !members.contains(&id) {
            members.push(id);
        }
    }
    let max = app.config.limits.max_group_members as usize;
    if members.len() > max {
        return Err(ApiError::bad_request(format!(
            "a conversation holds at most {max} members"
        )));
    }
    let title = match (kind, body.title.map(|t| t.trim().to_string())) {
        (_, Some(t)) if t.chars().count() > 256 => {
            return Err(ApiError::bad_request(
                "title must be at most 256 characters",
            ))
        }
        (ConversationKind::Group, Some(t)) if !t.is_empty() => t,
        (ConversationKind::Group, _) => return Err(ApiError::bad_request("a group needs a title")),
        (ConversationKind::Single, t) => t.unwrap_or_default(),
    };
    if kind == ConversationKind::Single && members.len() != 2 {
        return Err(ApiError::bad_request(
            "a 1:1 chat has exactly one other member",
        ));
    }
    let new = NewConversation {
        org_id: caller.org(),
        kind,
        title,
        owner_id: caller.id(),
        members,
        bot: None,
    };
    open_conversation(&app, &new).await
}

/// Creates the conversation, or answers the 1:1 chat that already exists (200, not 201);
/// two callers racing to open the same chat both get the one that won.
pub(crate) async fn open_conversation(
    app: &AppState,
    new: &NewConversation,
) -> Result<(StatusCode, Json<Conversation>), ApiError> {
    let existing = || async {
        match new.single_key() {
            Some(key) => app.store.find_single(new.org_id, &key).await,
            None => Ok(None),
        }
    };
    if let Some(found) = existing().await? {
        return Ok((StatusCode::OK, Json(found)));
    }
    match app.store.create_conversation(new).await {
        Ok(conversation) => {
            app.lanes.poke(conversation.id);
            Ok((StatusCode::CREATED, Json(conversation)))
        }
        Err(e) => match existing().await? {
            Some(found) => Ok((StatusCode::OK, Json(found))),
            None => Err(e.into()),
        },
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    limit: Option<i64>,
    cursor: Option<String>,
    /// Admins only: every conversation of the org, not just the caller's.
    all: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ConversationList {
    conversations: Vec<Conversation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The caller's conversations (or, for an admin with `all=true`, the org's).
#[utoipa::path(get, path = "/api/v1/conversations", tag = "conversations", params(ListParams),
    responses((status = 200, body = ConversationList)), security(("bearer" = [])))]
pub(crate) async fn list_conversations(
    State(app): State<AppState>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<ConversationList>, ApiError> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    let limit = page.limit()?;
    let all = params.all.unwrap_or(false);
    if all {
        caller.require_admin()?;
    }
    let member = (!all).then(|| caller.id());
    let rows = app
        .store
        .list_conversations(
            caller.org(),
            member,
            page.after::<ConversationId>()?,
            limit + 1,
        )
        .await?;
    let (conversations, next_cursor) = paginate(rows, limit, |c| c.id.to_string());
    Ok(Json(ConversationList {
        conversations,
        next_cursor,
    }))
}

/// One conversation the caller belongs to (admins: any of the org).
#[utoipa::path(get, path = "/api/v1/conversations/{id}", tag = "conversations", params(("id" = String, Path)),
    responses((status = 200, body = Conversation), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_conversation(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<ConversationId>,
) -> Result<Json<Conversation>, ApiError> {
    Ok(Json(visible_conversation(&app, &caller, id).await?))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct MemberList {
    members: Vec<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The member ids of a conversation.
#[utoipa::path(get, path = "/api/v1/conversations/{id}/members", tag = "conversations",
    params(("id" = String, Path), PageParams),
    responses((status = 200, body = MemberList), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_members(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<ConversationId>,
    Query(page): Query<PageParams>,
) -> Result<Json<MemberList>, ApiError> {
    visible_conversation(&app, &caller, id).await?;
    let limit = page.limit()?;
    let rows = app
        .store
        .list_members(id, page.after::<UserId>()?, limit + 1)
        .await?;
    let (members, next_cursor) = paginate(rows, limit, |u| u.to_string());
    Ok(Json(MemberList {
        members,
        next_cursor,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddMembers {
    user_ids: Vec<UserId>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct MembersAdded {
    /// Those who were not members before.
    added: Vec<UserId>,
    member_count: i64,
}

/// Only the owner or an org admin changes a group's members.
fn require_manager(caller: &Caller, conversation: &Conversation) -> Result<(), ApiError> {
    if conversation.kind == ConversationKind::Single {
        return Err(ApiError::bad_request("a 1:1 chat's members cannot change"));
    }
    if caller.is_admin() || caller.id() == conversation.owner_id {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only the group's owner or an org admin may do this".into(),
        ))
    }
}

/// Add members to a group (owner or admin).
#[utoipa::path(post, path = "/api/v1/conversations/{id}/members", tag = "conversations",
    params(("id" = String, Path)), request_body = AddMembers,
    responses((status = 200, body = MembersAdded), (status = 400, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn add_members(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<ConversationId>,
    Json(body): Json<AddMembers>,
) -> Result<Json<MembersAdded>, ApiError> {
    let conversation = app.store.get_conversation(caller.org(), id).await?;
    require_manager(&caller, &conversation)?;
    let mut ids = body.user_ids;
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err(ApiError::bad_request("user_ids must not be empty"));
    }
    let max = app.config.limits.max_group_members as i64;
    if conversation.member_count + ids.len() as i64 > max {
        return Err(ApiError::bad_request(format!(
            "a conversation holds at most {max} members"
        )));
    }
    let added = app.store.add_members(caller.org(), id, &ids).await?;
    app.lanes.poke(id);
    let member_count = app.store.member_count(id).await?;
    Ok(Json(MembersAdded {
        added,
        member_count,
    }))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct MemberRemoved {
    removed: bool,
}

/// Remove a member (owner or admin), or leave (the member themselves).
#[utoipa::path(delete, path = "/api/v1/conversations/{id}/members/{user_id}", tag = "conversations",
    params(("id" = String, Path), ("user_id" = String, Path)),
    responses((status = 200, body = MemberRemoved), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn remove_member(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, user)): Path<(ConversationId, UserId)>,
) -> Result<Json<MemberRemoved>, ApiError> {
    let conversation = app.store.get_conversation(caller.org(), id).await?;
    let leaving = user == caller.id();
    if !leaving {
        require_manager(&caller, &conversation)?;
    } else if conversation.kind == ConversationKind::Single {
        return Err(ApiError::bad_request("a 1:1 chat's members cannot change"));
    }
    let reason = if leaving { "left" } else { "removed" };
    if !app
        .store
        .remove_member(caller.org(), id, user, reason)
        .await?
    {
        return Err(ApiError::NotFound("member"));
    }
    app.lanes.poke(id);
    Ok(Json(MemberRemoved { removed: true }))
}
