//! GitLab: turns one project webhook (`X-Gitlab-Event` plus a JSON body) into one normalized
//! event. The kind comes from the body's `object_kind` (so "Test Hook" deliveries, confidential
//! issue/note hooks and system hooks land on the same names), else from the header. Names:
//! `push`, `tag_push`, `issue.<action>`, `merge_request.<action>`, `note.<noteable>`
//! (`note.merge_request`, `note.issue`, `note.commit`, `note.snippet`), `pipeline.<status>`,
//! `job.<status>`, `deployment.<status>`, `release.<action>`, `wiki_page.<action>`; anything else
//! is the header's words in snake case (`Member Hook` → `member`). The dedupe key is
//! `Idempotency-Key`, else `X-Gitlab-Event-UUID`. Only fields are extracted here: message text
//! lives in `bots/gitlab/`, and no URL from a payload is ever fetched.

use serde_json::{json, Value};

use super::github::{excerpt, first_line, short_sha, split_ref};
use super::{at, id, json_body, merge, names, text, AdaptError, Adapted, Facts, Normalized};
use crate::ingress::{RawWebhook, Verified};

/// Commits listed in a push message; the rest are counted.
const MAX_COMMITS: usize = 5;
/// Failed jobs named in a pipeline message.
const MAX_FAILED: usize = 5;

/// Adapts one GitLab delivery.
pub fn adapt(raw: &RawWebhook<Verified>) -> Result<Adapted, AdaptError> {
    let header = super::required_header(raw, "X-Gitlab-Event")?;
    let body = json_body(raw)?;
    let mut event = normalize(header, &body)?;
    event.dedupe_key = ["idempotency-key", "x-gitlab-event-uuid"]
        .into_iter()
        .filter_map(|h| raw.header(h))
        .find(|v| !v.is_empty())
        .map(str::to_string);
    Ok(Adapted {
        events: vec![event],
        reply: None,
    })
}

/// The event kind: the body's `object_kind`, else the header in snake case.
fn kind_of(header: &str, v: &Value) -> String {
    match text(v, "/object_kind") {
        "" => {
            let words = header
                .trim_end_matches(" Hook")
                .trim_start_matches("Confidential ");
            words.to_ascii_lowercase().replace([' ', '-'], "_")
        }
        "build" => "job".into(),
        kind => kind.to_string(),
    }
}

/// What each known kind must carry.
fn check_shape(kind: &str, v: &Value) -> Result<(), AdaptError> {
    let need: &[&str] = match kind {
        "push" | "tag_push" => &["/ref"],
        "issue" | "merge_request" | "note" | "pipeline" | "wiki_page" => &["/object_attributes"],
        "job" => &["/build_id"],
        _ => &[],
    };
    for pointer in need {
        let ok = match v.pointer(pointer) {
            Some(Value::Object(_)) => *pointer == "/object_attributes",
            Some(Value::String(_)) => *pointer == "/ref",
            Some(Value::Number(_)) => *pointer == "/build_id",
            _ => false,
        };
        if !ok {
            let field = pointer.trim_start_matches('/');
            return Err(AdaptError::BadPayload(format!(
                "a GitLab {kind} event without a valid `{field}`"
            )));
        }
    }
    Ok(())
}

fn normalize(header: &str, v: &Value) -> Result<Normalized, AdaptError> {
    let kind = kind_of(header, v);
    if kind.is_empty() {
        return Err(AdaptError::BadPayload(format!(
            "X-Gitlab-Event `{header}` names no event"
        )));
    }
    check_shape(&kind, v)?;
    let mut n = base(&kind, header, v);
    match kind.as_str() {
        "push" | "tag_push" => push(v, &mut n),
        "issue" => issue(v, &mut n),
        "merge_request" => merge_request(v, &mut n),
        "note" => note(v, &mut n),
        "pipeline" => pipeline(v, &mut n),
        "job" => job(v, &mut n),
        "deployment" => deployment(v, &mut n),
        "release" => release(v, &mut n),
        "wiki_page" => wiki(v, &mut n),
        _ => n.event = named(&kind, text(v, "/event_name")),
    }
    let actor = n.facts.actor.clone().unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    n.mention_hints
        .retain(|h| !h.is_empty() && *h != actor && seen.insert(h.clone()));
    Ok(n)
}

fn named(kind: &str, detail: &str) -> String {
    match detail {
        "" => kind.to_string(),
        d => format!("{kind}.{d}"),
    }
}

/// The project, the acting user and the test flag, common to every event.
fn base(kind: &str, header: &str, v: &Value) -> Normalized {
    let actor = match text(v, "/user/username") {
        "" => text(v, "/user_username"),
        login => login,
    };
    let actor_name = match text(v, "/user/name") {
        "" => text(v, "/user_name"),
        name => name,
    };
    let (project, project_url) = project(v);
    Normalized {
        event: kind.to_string(),
        fields: json!({
            "event": kind, "project": project, "project_url": project_url,
            "actor": actor, "actor_name": actor_name,
            "test": header.contains("Test"),
        }),
        facts: Facts {
            actor: Some(actor.to_string()).filter(|a| !a.is_empty()),
            actor_is_bot: is_bot(actor),
            ..Facts::default()
        },
        ..Normalized::default()
    }
}

/// `group/project` and its web page; job events only carry the repository's homepage.
fn project(v: &Value) -> (String, String) {
    let url = [
        "/project/web_url",
        "/repository/homepage",
        "/project/homepage",
    ]
    .into_iter()
    .map(|p| text(v, p))
    .find(|u| !u.is_empty())
    .unwrap_or_default();
    let path = match text(v, "/project/path_with_namespace") {
        "" => url_path(url),
        path => path.to_string(),
    };
    (path, url.to_string())
}

/// The path of a web URL, without scheme and host.
fn url_path(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split_once('/')
        .map_or("", |(_, p)| p)
        .trim_end_matches('/')
        .to_string()
}

/// GitLab bot users: project/group access-token bots (`project_12_bot_…`), `…-bot`, `[bot]`.
fn is_bot(login: &str) -> bool {
    let l = login.to_ascii_lowercase();
    ((l.starts_with("project_") || l.starts_with("group_")) && l.contains("_bot"))
        || l.ends_with("-bot")
        || l.ends_with("_bot")
        || l.ends_with("[bot]")
        || l == "ghost"
}

fn project_path(n: &Normalized) -> String {
    text(&n.fields, "/project").to_string()
}

fn is_zero(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

fn push(v: &Value, n: &mut Normalized) {
    let (branch, tag) = split_ref(text(v, "/ref"));
    let commits = at(v, "/commits")
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let total = at(v, "/total_commits_count")
        .as_u64()
        .map_or(commits.len(), |t| t as usize);
    let shown: Vec<Value> = commits.iter().take(MAX_COMMITS).map(commit).collect();
    let (before, after) = (text(v, "/before"), text(v, "/after"));
    let url = &text(&n.fields, "/project_url").to_string();
    let compare = match (is_zero(before) || is_zero(after), url.is_empty()) {
        (false, false) => format!("{url}/-/compare/{before}...{after}"),
        _ => String::new(),
    };
    n.facts.paths = changed_paths(commits);
    merge(
        n,
        json!({
            "ref": text(v, "/ref"), "branch": branch, "tag": tag,
            "created": is_zero(before), "deleted": is_zero(after),
            "commit_count": total, "commits": shown,
            "commits_more": total.saturating_sub(shown.len()),
            "head": short_sha(after), "message": first_line(text(v, "/message")),
            "compare": compare, "tree_url": tree_url(url, &branch, &tag, is_zero(after)),
        }),
    );
    n.facts.branch = branch;
    n.facts.tag = tag;
}

/// A link to the pushed branch or tag, unless it was deleted.
fn tree_url(
    project_url: &str,
    branch: &Option<String>,
    tag: &Option<String>,
    gone: bool,
) -> String {
    match (branch, tag) {
        _ if gone || project_url.is_empty() => String::new(),
        (_, Some(t)) => format!("{project_url}/-/tags/{t}"),
        (Some(b), _) => format!("{project_url}/-/tree/{b}"),
        _ => String::new(),
    }
}

fn commit(c: &Value) -> Value {
    let message = match text(c, "/title") {
        "" => first_line(text(c, "/message")),
        title => title.to_string(),
    };
    json!({
        "sha": short_sha(text(c, "/id")), "message": message,
        "author": text(c, "/author/name"), "url": text(c, "/url"),
    })
}

fn changed_paths(commits: &[Value]) -> Vec<String> {
    let mut paths = std::collections::BTreeSet::new();
    for c in commits {
        for list in ["/added", "/modified", "/removed"] {
            paths.extend(names_of(at(c, list)));
        }
    }
    paths.into_iter().take(300).collect()
}

fn names_of(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect()
}

/// Labels at the top level (merge requests, issues) or in the attributes (older payloads).
fn labels(v: &Value) -> Vec<String> {
    let top = names(v, "/labels", "/title");
    if top.is_empty() {
        names(v, "/object_attributes/labels", "/title")
    } else {
        top
    }
}

fn issue(v: &Value, n: &mut Normalized) {
    let a = at(v, "/object_attributes");
    let action = text(a, "/action");
    n.event = named("issue", action);
    let iid = id(a, "/iid");
    if !iid.is_empty() {
        n.object_key = Some(format!("{}#{iid}", project_path(n)));
    }
    let labels = labels(v);
    n.facts.labels = labels.clone();
    let assignees = names(v, "/assignees", "/username");
    merge(
        n,
        json!({
            "action": action, "iid": iid, "title": text(a, "/title"), "url": text(a, "/url"),
            "state": text(a, "/state"), "summary": excerpt(text(a, "/description")),
            "labels": labels, "assignees": assignees,
            "confidential": at(a, "/confidential").as_bool().unwrap_or(false),
            "changed": changed(v),
        }),
    );
    if action == "open" || action == "reopen" {
        n.mention_hints = assignees;
    }
}

/// The names of the attributes an update changed (`title`, `labels`, …), bookkeeping left out.
fn changed(v: &Value) -> Vec<String> {
    let skip = [
        "updated_at",
        "updated_by_id",
        "last_edited_at",
        "last_edited_by_id",
    ];
    at(v, "/changes")
        .as_object()
        .map(|c| {
            c.keys()
                .filter(|k| !skip.contains(&k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn merge_request(v: &Value, n: &mut Normalized) {
    let a = at(v, "/object_attributes");
    let action = text(a, "/action");
    n.event = named("merge_request", action);
    mr_facts(a, n);
    let labels = labels(v);
    n.facts.labels = labels.clone();
    let reviewers = names(v, "/reviewers", "/username");
    let assignees = names(v, "/assignees", "/username");
    merge(n, mr_fields(a));
    merge(
        n,
        json!({
            "action": action, "labels": labels, "reviewers": reviewers,
            "assignees": assignees, "changed": changed(v),
            "pushed": !text(a, "/oldrev").is_empty(),
            "last_commit": first_line(text(a, "/last_commit/message")),
        }),
    );
    if matches!(action, "open" | "reopen") {
        n.mention_hints = reviewers.into_iter().chain(assignees).collect();
    } else if action == "update" && at(v, "/changes/reviewers").is_object() {
        n.mention_hints = names(v, "/changes/reviewers/current", "/username");
    }
}

/// The fields a merge request and a note on it share.
fn mr_fields(mr: &Value) -> Value {
    json!({
        "iid": id(mr, "/iid"), "title": text(mr, "/title"), "url": text(mr, "/url"),
        "source": text(mr, "/source_branch"), "target": text(mr, "/target_branch"),
        "state": text(mr, "/state"), "summary": excerpt(text(mr, "/description")),
        "draft": draft(mr),
    })
}

fn draft(mr: &Value) -> bool {
    [at(mr, "/draft"), at(mr, "/work_in_progress")]
        .iter()
        .any(|d| d.as_bool() == Some(true))
}

fn mr_facts(mr: &Value, n: &mut Normalized) {
    let iid = id(mr, "/iid");
    if !iid.is_empty() {
        n.object_key = Some(format!("{}!{iid}", project_path(n)));
    }
    n.facts.branch = Some(text(mr, "/target_branch").to_string()).filter(|b| !b.is_empty());
    n.facts.draft = Some(draft(mr));
}

fn note(v: &Value, n: &mut Normalized) {
    let a = at(v, "/object_attributes");
    let on = match text(a, "/noteable_type") {
        "MergeRequest" => "merge_request",
        "Issue" => "issue",
        "Commit" => "commit",
        "Snippet" => "snippet",
        _ => "other",
    };
    n.event = format!("note.{on}");
    merge(
        n,
        json!({
            "on": on, "note": excerpt(text(a, "/note")), "note_url": text(a, "/url"),
            "diff_note": text(a, "/type") == "DiffNote",
            "path": text(a, "/position/new_path"),
        }),
    );
    let path = project_path(n);
    match on {
        "merge_request" => {
            let mr = at(v, "/merge_request");
            mr_facts(mr, n);
            n.facts.labels = names(mr, "/labels", "/title");
            merge(n, mr_fields(mr));
        }
        "issue" => {
            let issue = at(v, "/issue");
            n.object_key = Some(format!("{path}#{}", id(issue, "/iid")));
            n.facts.labels = names(issue, "/labels", "/title");
            merge(
                n,
                json!({"iid": id(issue, "/iid"), "title": text(issue, "/title")}),
            );
        }
        "commit" => {
            let sha = text(v, "/commit/id");
            n.object_key = Some(format!("{path}@commit:{sha}"));
            merge(
                n,
                json!({"sha": short_sha(sha), "title": first_line(text(v, "/commit/message"))}),
            );
        }
        "snippet" => {
            let snippet = at(v, "/snippet");
            n.object_key = Some(format!("{path}${}", id(snippet, "/id")));
            merge(
                n,
                json!({"iid": id(snippet, "/id"), "title": text(snippet, "/title")}),
            );
        }
        _ => {}
    }
}

/// Conclusion and branch/tag of a CI object from its status, `ref` and `tag` flag.
fn ci_facts(n: &mut Normalized, job: &str, status: &str, r: &str, is_tag: bool) {
    n.facts.ci_key = Some(format!("{}@{job}", project_path(n)));
    n.facts.conclusion = Some(status.to_string()).filter(|s| !s.is_empty());
    let r = Some(r.to_string()).filter(|r| !r.is_empty());
    if is_tag {
        n.facts.tag = r;
    } else {
        n.facts.branch = r;
    }
}

fn pipeline(v: &Value, n: &mut Normalized) {
    let a = at(v, "/object_attributes");
    let status = text(a, "/status");
    let pid = id(a, "/id");
    n.event = named("pipeline", status);
    n.object_key = Some(format!("{}@pipeline:{pid}", project_path(n)));
    ci_facts(
        n,
        "pipeline",
        status,
        text(a, "/ref"),
        at(a, "/tag").as_bool() == Some(true),
    );
    let builds = at(v, "/builds")
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let failed: Vec<String> = builds
        .iter()
        .filter(|b| text(b, "/status") == "failed")
        .map(|b| text(b, "/name").to_string())
        .collect();
    let url = match text(&n.fields, "/project_url") {
        "" => String::new(),
        u => format!("{u}/-/pipelines/{pid}"),
    };
    merge(
        n,
        json!({
            "id": pid, "status": status, "detailed_status": text(a, "/detailed_status"),
            "ref": text(a, "/ref"), "tag": at(a, "/tag").as_bool().unwrap_or(false),
            "sha": short_sha(text(a, "/sha")), "source": text(a, "/source"),
            "duration": at(a, "/duration"), "url": url,
            "commit_message": first_line(text(v, "/commit/message")),
            "jobs": builds.len(), "failed_jobs": failed.iter().take(MAX_FAILED).collect::<Vec<_>>(),
            "failed_more": failed.len().saturating_sub(MAX_FAILED),
            "mr_iid": id(v, "/merge_request/iid"), "mr_title": text(v, "/merge_request/title"),
            "mr_url": text(v, "/merge_request/url"),
        }),
    );
}

fn job(v: &Value, n: &mut Normalized) {
    let status = text(v, "/build_status");
    let job_id = id(v, "/build_id");
    n.event = named("job", status);
    n.object_key = Some(format!("{}@job:{job_id}", project_path(n)));
    ci_facts(
        n,
        &format!("job:{}/{}", text(v, "/build_stage"), text(v, "/build_name")),
        status,
        text(v, "/ref"),
        at(v, "/tag").as_bool() == Some(true),
    );
    let url = match text(&n.fields, "/project_url") {
        "" => String::new(),
        u => format!("{u}/-/jobs/{job_id}"),
    };
    merge(
        n,
        json!({
            "id": job_id, "name": text(v, "/build_name"), "stage": text(v, "/build_stage"),
            "status": status, "ref": text(v, "/ref"), "sha": short_sha(text(v, "/sha")),
            "duration": at(v, "/build_duration"), "pipeline_id": id(v, "/pipeline_id"),
            "allow_failure": at(v, "/build_allow_failure").as_bool().unwrap_or(false),
            "failure_reason": text(v, "/build_failure_reason"), "url": url,
            "commit_message": first_line(text(v, "/commit/message")),
            "environment": text(v, "/environment/name"),
        }),
    );
}

fn deployment(v: &Value, n: &mut Normalized) {
    let status = text(v, "/status");
    n.event = named("deployment", status);
    n.object_key = Some(format!(
        "{}@deployment:{}",
        project_path(n),
        id(v, "/deployment_id")
    ));
    let environment = format!("deployment:{}", text(v, "/environment"));
    ci_facts(n, &environment, status, text(v, "/ref"), false);
    merge(
        n,
        json!({
            "status": status, "environment": text(v, "/environment"),
            "environment_url": text(v, "/environment_external_url"),
            "ref": text(v, "/ref"), "sha": text(v, "/short_sha"),
            "commit_title": text(v, "/commit_title"), "commit_url": text(v, "/commit_url"),
            "job_url": text(v, "/deployable_url"),
        }),
    );
}

fn release(v: &Value, n: &mut Normalized) {
    let action = text(v, "/action");
    let tag = text(v, "/tag");
    n.event = named("release", action);
    n.object_key = Some(format!("{}@release:{tag}", project_path(n)));
    n.facts.tag = Some(tag.to_string()).filter(|t| !t.is_empty());
    merge(
        n,
        json!({
            "action": action, "tag": tag, "name": text(v, "/name"), "url": text(v, "/url"),
            "summary": excerpt(text(v, "/description")),
            "assets": at(v, "/assets/count"),
            "commit_message": first_line(text(v, "/commit/message")),
        }),
    );
}

fn wiki(v: &Value, n: &mut Normalized) {
    let a = at(v, "/object_attributes");
    let action = text(a, "/action");
    n.event = named("wiki_page", action);
    let slug = text(a, "/slug");
    n.object_key = Some(format!("{}@wiki:{slug}", project_path(n)));
    merge(
        n,
        json!({
            "action": action, "title": text(a, "/title"), "url": text(a, "/url"),
            "message": first_line(text(a, "/message")), "diff_url": text(a, "/diff_url"),
        }),
    );
}

#[cfg(test)]
mod tests;
