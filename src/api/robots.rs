//! Incoming robots: an org admin creates a robot bound to a conversation and gets its webhook
//! URL and secret (once); filters, templates and security change with PATCH.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{paginate, PageParams};
use crate::auth::Admin;
use crate::error::{ApiError, Json, Path, Query};
use crate::ids::{ConversationId, RobotId};
use crate::robot::{self, Grouping, NewRobot, Robot, RobotKind, RobotSpec, Security};
use crate::store::MentionEntry;
use crate::verify::parse_range;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/robots", post(create_robot).get(list_robots))
        .route(
            "/robots/{id}",
            get(get_robot).patch(update_robot).delete(delete_robot),
        )
        .route("/robots/{id}/rotate", post(rotate_robot))
        .route("/mention-map", get(list_mentions).put(set_mentions))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRobot {
    kind: RobotKind,
    conversation_id: ConversationId,
    name: String,
    security: Option<Security>,
    /// GitHub: keys X-Hub-Signature-256 (generated when absent). GitLab: the expected
    /// X-Gitlab-Token (generated when absent). Others: an optional `Authorization: Bearer` secret.
    secret: Option<String>,
    #[schema(value_type = Object)]
    filters: Option<serde_json::Value>,
    templates: Option<std::collections::BTreeMap<String, String>>,
    rate_per_minute: Option<u32>,
    throttle_seconds: Option<u32>,
    grouping: Option<Grouping>,
    burst_seconds: Option<u32>,
    alerting: Option<bool>,
    escalation_policy_id: Option<String>,
    digest: Option<robot::Digest>,
    plugin_id: Option<String>,
    config: Option<std::collections::BTreeMap<String, String>>,
}

/// A robot as the API shows it; `access_token`, `secret` and the values of `config` only when
/// created or rotated (otherwise config values read `<redacted>`).
#[derive(Serialize, ToSchema)]
pub(crate) struct RobotView {
    id: RobotId,
    kind: RobotKind,
    conversation_id: ConversationId,
    name: String,
    webhook_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    has_secret: bool,
    #[serde(flatten)]
    spec: RobotSpec,
    /// Events received: posted, and answered 2xx but not posted (kept in the store).
    stats: crate::ingress::stats::RobotStats,
    created_at: String,
}

/// What a plugin robot's `config` values read as in GET and list answers: config holds a
/// plugin's secrets (signing keys, tokens), so only the keys are shown. A PATCH that sends
/// this marker back for a key keeps the stored value.
pub(crate) const REDACTED: &str = "<redacted>";

/// The config as answers show it when secrets are not revealed.
fn redact(config: &mut std::collections::BTreeMap<String, String>) {
    for value in config.values_mut() {
        *value = REDACTED.to_string();
    }
}

/// A config from a PATCH, with redaction markers replaced by the stored values.
fn merge_config(
    stored: &std::collections::BTreeMap<String, String>,
    mut patch: std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    for (key, value) in patch.iter_mut() {
        if value == REDACTED {
            if let Some(kept) = stored.get(key) {
                value.clone_from(kept);
            }
        }
    }
    patch
}

impl RobotView {
    async fn of(app: &AppState, mut robot: Robot, reveal: bool) -> Result<RobotView, ApiError> {
        if !reveal {
            redact(&mut robot.spec.config);
        }
        Ok(RobotView {
            webhook_url: webhook_url(app, &robot),
            access_token: reveal.then(|| robot.access_token.clone()),
            secret: if reveal { robot.secret.clone() } else { None },
            has_secret: robot.secret.is_some(),
            stats: crate::ingress::stats::of(app, robot.id).await?,
            id: robot.id,
            kind: robot.kind,
            conversation_id: robot.conversation_id,
            name: robot.name,
            spec: robot.spec,
            created_at: crate::clock::rfc3339(robot.created_at_ms),
        })
    }
}

/// Where the sender posts: DingTalk's URL shape for custom robots, `/hooks/…` for the others.
fn webhook_url(app: &AppState, robot: &Robot) -> String {
    let base = app.config.public_base_url();
    match robot.kind {
        RobotKind::Custom => format!("{base}/robot/send?access_token={}", robot.access_token),
        kind => format!("{base}/hooks/{}/{}", kind.as_str(), robot.access_token),
    }
}

/// Checks a spec an admin gave.
fn validate(spec: &RobotSpec) -> Result<(), ApiError> {
    let security = &spec.security;
    if security.keywords.len() > 10 {
        return Err(ApiError::bad_request("at most 10 keywords"));
    }
    if let Some(bad) = security.ip_ranges.iter().find(|r| parse_range(r).is_none()) {
        return Err(ApiError::bad_request(format!(
            "invalid ip range {bad:?} (CIDR or address)"
        )));
    }
    if spec.burst_seconds > 3600 {
        return Err(ApiError::bad_request("burst_seconds must be 0 to 3600"));
    }
    if let Some(d) = &spec.digest {
        if d.interval_seconds == 0 || d.interval_seconds > 86_400 || d.severities.is_empty() {
            return Err(ApiError::bad_request(
                "digest needs severities and an interval_seconds of 1 to 86400",
            ));
        }
    }
    if spec.rate_per_minute == 0 || spec.rate_per_minute > 6_000_000 {
        return Err(ApiError::bad_request(
            "rate_per_minute must be 1 to 6000000",
        ));
    }
    for (event, template) in &spec.templates {
        minijinja::Environment::new()
            .template_from_str(template)
            .map_err(|e| ApiError::bad_request(format!("template for {event}: {e}")))?;
    }
    crate::filter::Filters::parse(&spec.filters).map_err(ApiError::BadRequest)?;
    Ok(())
}

/// A named escalation policy must exist in the org ("" detaches).
async fn check_policy(
    app: &AppState,
    org: crate::ids::OrgId,
    spec: &RobotSpec,
) -> Result<(), ApiError> {
    let Some(id) = spec
        .escalation_policy_id
        .as_deref()
        .filter(|s| !s.is_empty())
    else {
        return Ok(());
    };
    let id = id
        .parse::<crate::ids::PolicyId>()
        .map_err(|_| ApiError::bad_request(format!("unknown escalation_policy_id {id:?}")))?;
    match app.store.get_policy(org, id).await {
        Ok(_) => Ok(()),
        Err(crate::store::StoreError::NotFound(_)) => Err(ApiError::bad_request(format!(
            "unknown escalation_policy_id \"{id}\""
        ))),
        Err(e) => Err(e.into()),
    }
}

/// A robot of kind `plugin` names one of its org's plugins; no other kind names one.
async fn check_plugin(
    app: &AppState,
    org: crate::ids::OrgId,
    kind: RobotKind,
    spec: &RobotSpec,
) -> Result<(), ApiError> {
    let config_bytes: usize = spec.config.iter().map(|(k, v)| k.len() + v.len()).sum();
    if spec.config.len() > 64 || config_bytes > 16 * 1024 {
        return Err(ApiError::bad_request(
            "config holds at most 64 keys and 16 KiB in all",
        ));
    }
    match (kind, spec.plugin_id.as_deref()) {
        (RobotKind::Plugin, None) => Err(ApiError::bad_request(
            "a robot of kind plugin needs a plugin_id (see GET /api/v1/plugins)",
        )),
        (RobotKind::Plugin, Some(id)) => {
            let missing =
                || ApiError::bad_request(format!("plugin_id {id:?} names no plugin of this org"));
            let id: crate::ids::PluginId = id.parse().map_err(|_| missing())?;
            match app.store.get_plugin(org, id).await {
                Ok(p) if p.world != crate::plugin::v0_1::WORLD => {
                    Err(ApiError::bad_request(format!(
                        "plugin {id} implements {}; a robot needs a {} plugin (bot plugins \
                         are registered with POST /api/v1/bots)",
                        p.world,
                        crate::plugin::v0_1::WORLD
                    )))
                }
                Ok(_) => Ok(()),
                Err(crate::store::StoreError::NotFound(_)) => Err(missing()),
                Err(e) => Err(e.into()),
            }
        }
        (_, Some(_)) => Err(ApiError::bad_request(
            "plugin_id applies to robots of kind plugin only",
        )),
        (_, None) => Ok(()),
    }
}

/// The secret a new robot gets: DingTalk's `SEC…` for signed custom robots, a random one for
/// GitHub and GitLab unless given, the given one otherwise.
fn initial_secret(
    kind: RobotKind,
    sign: bool,
    given: Option<String>,
) -> Result<Option<String>, ApiError> {
    if let Some(s) = &given {
        if s.len() < 8 || s.len() > 256 {
            return Err(ApiError::bad_request("secret must be 8 to 256 characters"));
        }
    }
    Ok(match kind {
        RobotKind::Custom if sign => Some(given.unwrap_or_else(robot::new_dingtalk_secret)),
        RobotKind::Github | RobotKind::Gitlab => {
            Some(given.unwrap_or_else(robot::new_shared_secret))
        }
        _ => given,
    })
}

/// Create a robot bound to a conversation of the org.
#[utoipa::path(post, path = "/api/v1/robots", tag = "robots", request_body = CreateRobot,
    responses((status = 201, body = RobotView), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_robot(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<CreateRobot>,
) -> Result<(StatusCode, Json<RobotView>), ApiError> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::bad_request("name must be 1 to 64 characters"));
    }
    app.store
        .get_conversation(caller.org(), body.conversation_id)
        .await?;
    let defaults = RobotSpec::default();
    let spec = RobotSpec {
        security: body.security.unwrap_or_default(),
        filters: body.filters.unwrap_or(serde_json::Value::Null),
        templates: body.templates.unwrap_or_default(),
        rate_per_minute: body.rate_per_minute.unwrap_or(defaults.rate_per_minute),
        throttle_seconds: body.throttle_seconds.unwrap_or(defaults.throttle_seconds),
        grouping: body.grouping.unwrap_or_default(),
        burst_seconds: body.burst_seconds.unwrap_or_default(),
        alerting: body.alerting.unwrap_or(body.kind.is_alerting()),
        escalation_policy_id: body.escalation_policy_id,
        digest: body.digest,
        plugin_id: body.plugin_id,
        config: body.config.unwrap_or_default(),
    };
    validate(&spec)?;
    check_policy(&app, caller.org(), &spec).await?;
    check_plugin(&app, caller.org(), body.kind, &spec).await?;
    let secret = initial_secret(body.kind, spec.security.sign, body.secret)?;
    let robot = app
        .store
        .create_robot(&NewRobot {
            org_id: caller.org(),
            kind: body.kind,
            conversation_id: body.conversation_id,
            name,
            access_token: robot::new_access_token(),
            secret,
            spec,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(RobotView::of(&app, robot, true).await?),
    ))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RobotList {
    robots: Vec<RobotView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The org's robots (without secrets).
#[utoipa::path(get, path = "/api/v1/robots", tag = "robots", params(PageParams),
    responses((status = 200, body = RobotList)), security(("bearer" = [])))]
pub(crate) async fn list_robots(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Query(page): Query<PageParams>,
) -> Result<Json<RobotList>, ApiError> {
    let limit = page.limit()?;
    let rows = app
        .store
        .list_robots(caller.org(), page.after::<RobotId>()?, limit + 1)
        .await?;
    let (robots, next_cursor) = paginate(rows, limit, |r| r.id.to_string());
    let mut views = Vec::with_capacity(robots.len());
    for robot in robots {
        views.push(RobotView::of(&app, robot, false).await?);
    }
    let robots = views;
    Ok(Json(RobotList {
        robots,
        next_cursor,
    }))
}

/// One robot (without its secret).
#[utoipa::path(get, path = "/api/v1/robots/{id}", tag = "robots", params(("id" = String, Path)),
    responses((status = 200, body = RobotView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_robot(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<RobotId>,
) -> Result<Json<RobotView>, ApiError> {
    let robot = app.store.get_robot(caller.org(), id).await?;
    Ok(Json(RobotView::of(&app, robot, false).await?))
}

/// Changes to a robot; absent fields stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchRobot {
    name: Option<String>,
    conversation_id: Option<ConversationId>,
    security: Option<Security>,
    secret: Option<String>,
    #[schema(value_type = Object)]
    filters: Option<serde_json::Value>,
    templates: Option<std::collections::BTreeMap<String, String>>,
    rate_per_minute: Option<u32>,
    throttle_seconds: Option<u32>,
    grouping: Option<Grouping>,
    burst_seconds: Option<u32>,
    alerting: Option<bool>,
    escalation_policy_id: Option<String>,
    digest: Option<robot::Digest>,
    plugin_id: Option<String>,
    config: Option<std::collections::BTreeMap<String, String>>,
}

/// Change a robot's filters, templates, security, escalation policy, …
#[utoipa::path(patch, path = "/api/v1/robots/{id}", tag = "robots", params(("id" = String, Path)),
    request_body = PatchRobot,
    responses((status = 200, body = RobotView), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn update_robot(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<RobotId>,
    Json(patch): Json<PatchRobot>,
) -> Result<Json<RobotView>, ApiError> {
    let mut robot = app.store.get_robot(caller.org(), id).await?;
    if let Some(name) = patch.name {
        robot.name = name.trim().to_string();
    }
    if let Some(conversation) = patch.conversation_id {
        app.store
            .get_conversation(caller.org(), conversation)
            .await?;
        robot.conversation_id = conversation;
    }
    let config = patch.config.map(|c| merge_config(&robot.spec.config, c));
    let spec = &mut robot.spec;
    macro_rules! take {
        ($($field:ident),*) => {$( if let Some(v) = patch.$field { spec.$field = v; } )*};
    }
    take!(
        security,
        filters,
        templates,
        rate_per_minute,
        throttle_seconds,
        grouping,
        burst_seconds,
        alerting
    );
    if let Some(config) = config {
        spec.config = config;
    }
    if let Some(digest) = patch.digest {
        // An interval of 0 turns digest mode off.
        spec.digest = Some(digest).filter(|d| d.interval_seconds > 0);
    }
    if patch.escalation_policy_id.is_some() {
        spec.escalation_policy_id = patch.escalation_policy_id;
    }
    if patch.plugin_id.is_some() {
        spec.plugin_id = patch.plugin_id;
    }
    validate(&robot.spec)?;
    check_policy(&app, caller.org(), &robot.spec).await?;
    check_plugin(&app, caller.org(), robot.kind, &robot.spec).await?;
    if let Some(secret) = patch.secret {
        robot.secret = initial_secret(robot.kind, robot.spec.security.sign, Some(secret))?;
    } else if robot.kind == RobotKind::Custom && robot.spec.security.sign && robot.secret.is_none()
    {
        robot.secret = Some(robot::new_dingtalk_secret());
    }
    app.store.save_robot(&robot).await?;
    app.known_robots.forget_all();
    Ok(Json(RobotView::of(&app, robot, false).await?))
}

/// Delete a robot: its URL stops working at once.
#[utoipa::path(delete, path = "/api/v1/robots/{id}", tag = "robots", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn delete_robot(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<RobotId>,
) -> Result<StatusCode, ApiError> {
    app.store.delete_robot(caller.org(), id).await?;
    app.known_robots.forget_all();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Rotate {
    /// Also replace the secret (default true).
    secret: Option<bool>,
}

/// Rotate the access token (the old URL stops working) and, by default, the secret.
#[utoipa::path(post, path = "/api/v1/robots/{id}/rotate", tag = "robots", params(("id" = String, Path), Rotate),
    responses((status = 200, body = RobotView), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn rotate_robot(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<RobotId>,
    Query(params): Query<Rotate>,
) -> Result<Json<RobotView>, ApiError> {
    let mut robot = app.store.get_robot(caller.org(), id).await?;
    robot.access_token = robot::new_access_token();
    let rotate_secret = params.secret.unwrap_or(true);
    if rotate_secret && robot.secret.is_some() {
        robot.secret = initial_secret(robot.kind, robot.spec.security.sign, None)?
            .or_else(|| Some(robot::new_shared_secret()));
    }
    app.store.save_robot(&robot).await?;
    app.known_robots.forget_all();
    Ok(Json(RobotView::of(&app, robot, true).await?))
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MentionMap {
    entries: Vec<MentionEntry>,
}

/// The org's mention map: forge logins and alert label values → members.
#[utoipa::path(get, path = "/api/v1/mention-map", tag = "robots",
    responses((status = 200, body = MentionMap)), security(("bearer" = [])))]
pub(crate) async fn list_mentions(
    State(app): State<AppState>,
    Admin(caller): Admin,
) -> Result<Json<MentionMap>, ApiError> {
    let entries = app.store.list_mentions(caller.org()).await?;
    Ok(Json(MentionMap { entries }))
}

/// Adds, changes or (with `"user_id": null`) removes mention-map entries.
#[utoipa::path(put, path = "/api/v1/mention-map", tag = "robots", request_body = MentionMap,
    responses((status = 200, body = MentionMap), (status = 400, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn set_mentions(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Json(body): Json<MentionMap>,
) -> Result<Json<MentionMap>, ApiError> {
    if body.entries.len() > 1000 {
        return Err(ApiError::bad_request("at most 1000 entries per call"));
    }
    for entry in &body.entries {
        if !["github", "gitlab", "alert", "plugin"].contains(&entry.source.as_str()) {
            return Err(ApiError::bad_request(format!(
                "source must be github, gitlab, alert or plugin, got {:?}",
                entry.source
            )));
        }
        if entry.external.is_empty() || entry.external.len() > 256 {
            return Err(ApiError::bad_request(
                "external must be 1 to 256 characters",
            ));
        }
        if entry.external.contains('\0') {
            return Err(ApiError::bad_request("external must not contain NUL"));
        }
        if let Some(user) = entry.user_id {
            app.store.get_user(caller.org(), user).await?;
        }
    }
    app.store.set_mentions(caller.org(), &body.entries).await?;
    let entries = app.store.list_mentions(caller.org()).await?;
    Ok(Json(MentionMap { entries }))
}
