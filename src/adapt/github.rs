//! GitHub: turns one webhook delivery (`X-GitHub-Event` plus a JSON or `payload=` form body)
//! into one normalized event named `<event>.<action>` (`pull_request.opened`), or `<event>` when
//! the payload has no action (`push`, `ping`); a closed pull request that was merged is
//! `pull_request.merged`. `X-GitHub-Delivery` is the dedupe key. This file only extracts fields,
//! facts, object keys and mention hints; message text lives in `bots/github/`. It never fetches
//! anything a payload links to. Events herald does not render still come out named, so ingress
//! counts them and answers 2xx.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{
    at, id, json_body_without, merge, names, text, AdaptError, Adapted, Facts, Normalized,
};
use crate::ingress::{RawWebhook, Verified};

/// Commits listed in a push message; the rest are counted.
const MAX_COMMITS: usize = 5;
/// Changed paths kept for the paths filter.
const MAX_PATHS: usize = 300;

/// Adapts one GitHub delivery.
pub fn adapt(raw: &RawWebhook<Verified>) -> Result<Adapted, AdaptError> {
    let kind = super::required_header(raw, "X-GitHub-Event")?;
    let body = json_body_without(raw, unread)?;
    let mut event = normalize(kind, &body)?;
    event.dedupe_key = raw
        .header("x-github-delivery")
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    Ok(Adapted {
        events: vec![event],
        reply: None,
    })
}

/// The payload members this adapter never reads: the REST API URLs (`forks_url`, `keys_url`,
/// …) that make up about half of every payload, hypermedia links, GraphQL node ids and avatar
/// details. A test checks that leaving them out changes nothing any fixture normalizes to.
fn unread(key: &str) -> bool {
    const READ: [&str; 4] = ["html_url", "target_url", "log_url", "environment_url"];
    const UNREAD: [&str; 5] = [
        "node_id",
        "_links",
        "gravatar_id",
        "site_admin",
        "user_view_type",
    ];
    (key.ends_with("_url") && !READ.contains(&key)) || UNREAD.contains(&key)
}

/// The objects (`o`) or strings (`s`) each known event must carry.
const SHAPES: &[(&str, &[(&str, char)])] = &[
    ("push", &[("/ref", 's')]),
    ("create", &[("/ref", 's')]),
    ("delete", &[("/ref", 's')]),
    ("pull_request", &[("/pull_request", 'o')]),
    (
        "pull_request_review",
        &[("/pull_request", 'o'), ("/review", 'o')],
    ),
    (
        "pull_request_review_comment",
        &[("/pull_request", 'o'), ("/comment", 'o')],
    ),
    ("issues", &[("/issue", 'o')]),
    ("issue_comment", &[("/issue", 'o'), ("/comment", 'o')]),
    ("release", &[("/release", 'o')]),
    ("workflow_run", &[("/workflow_run", 'o')]),
    ("workflow_job", &[("/workflow_job", 'o')]),
    ("check_run", &[("/check_run", 'o')]),
    ("check_suite", &[("/check_suite", 'o')]),
    ("deployment", &[("/deployment", 'o')]),
    (
        "deployment_status",
        &[("/deployment", 'o'), ("/deployment_status", 'o')],
    ),
    ("discussion", &[("/discussion", 'o')]),
    (
        "discussion_comment",
        &[("/discussion", 'o'), ("/comment", 'o')],
    ),
    ("fork", &[("/forkee", 'o')]),
    ("member", &[("/member", 'o')]),
    ("status", &[("/sha", 's')]),
];

fn check_shape(kind: &str, v: &Value) -> Result<(), AdaptError> {
    let Some((_, needs)) = SHAPES.iter().find(|(k, _)| *k == kind) else {
        return Ok(());
    };
    for (pointer, want) in needs.iter() {
        let ok = match (want, v.pointer(pointer)) {
            ('o', Some(x)) => x.is_object(),
            (_, Some(x)) => x.is_string(),
            _ => false,
        };
        if !ok {
            let what = if *want == 'o' {
                "an object"
            } else {
                "a string"
            };
            let field = pointer.trim_start_matches('/');
            return Err(AdaptError::BadPayload(format!(
                "a GitHub {kind} event needs {what} at `{field}`"
            )));
        }
    }
    Ok(())
}

/// One payload of event `kind` as a normalized event (without the dedupe key).
fn normalize(kind: &str, v: &Value) -> Result<Normalized, AdaptError> {
    check_shape(kind, v)?;
    let mut n = base(kind, v);
    match kind {
        "ping" => ping(v, &mut n),
        "push" => push(v, &mut n),
        "create" | "delete" => git_ref(v, &mut n),
        "pull_request" => pull_request(v, &mut n),
        "pull_request_review" => review(v, &mut n),
        "pull_request_review_comment" => review_comment(v, &mut n),
        "issues" => issue(v, &mut n),
        "issue_comment" => issue_comment(v, &mut n),
        "release" => release(v, &mut n),
        "workflow_run" => workflow_run(v, &mut n),
        "workflow_job" => workflow_job(v, &mut n),
        "check_run" => check_run(v, &mut n),
        "check_suite" => check_suite(v, &mut n),
        "deployment" | "deployment_status" => deployment(v, &mut n),
        "discussion" | "discussion_comment" => discussion(v, &mut n),
        "status" => status(v, &mut n),
        "fork" => fork(v, &mut n),
        "member" => member(v, &mut n),
        "star" | "watch" => stars(v, &mut n),
        _ => {}
    }
    let actor = n.facts.actor.clone().unwrap_or_default();
    let mut seen = BTreeSet::new();
    n.mention_hints
        .retain(|h| !h.is_empty() && *h != actor && seen.insert(h.clone()));
    Ok(n)
}

/// The event name, the repository and the sender, common to every event.
fn base(kind: &str, v: &Value) -> Normalized {
    let action = text(v, "/action");
    let actor = text(v, "/sender/login");
    let repo = match text(v, "/repository/full_name") {
        "" => text(v, "/organization/login"),
        name => name,
    };
    let repo_url = match text(v, "/repository/html_url") {
        "" if !repo.is_empty() => format!("https://github.com/{repo}"),
        url => url.to_string(),
    };
    Normalized {
        event: match action {
            "" => kind.to_string(),
            a => format!("{kind}.{a}"),
        },
        fields: json!({
            "event": kind, "action": action, "repo": repo, "repo_url": repo_url,
            "actor": actor, "actor_url": text(v, "/sender/html_url"),
        }),
        facts: Facts {
            actor: Some(actor.to_string()).filter(|a| !a.is_empty()),
            actor_is_bot: text(v, "/sender/type") == "Bot" || actor.ends_with("[bot]"),
            ..Facts::default()
        },
        ..Normalized::default()
    }
}

fn repo(n: &Normalized) -> String {
    n.fields
        .pointer("/repo")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn flag(v: &Value, pointer: &str) -> bool {
    at(v, pointer).as_bool().unwrap_or(false)
}

/// The first seven characters of a commit sha.
pub(super) fn short_sha(sha: &str) -> String {
    sha.chars().take(7).collect()
}

/// The first line of a commit message.
pub(super) fn first_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The first paragraph of a Markdown body as one line, without HTML comments or code blocks,
/// so a template can quote it without opening markup it never closes.
pub(super) fn excerpt(body: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let (mut in_comment, mut in_code) = (false, false);
    for line in body.lines().map(str::trim) {
        if line.starts_with("```") || line.starts_with("~~~") {
            in_code = !in_code;
            continue;
        }
        if line.starts_with("<!--") {
            in_comment = !line.contains("-->");
            continue;
        }
        if in_comment {
            in_comment = !line.contains("-->");
            continue;
        }
        if in_code {
            continue;
        }
        if line.is_empty() {
            if out.is_empty() {
                continue;
            }
            break;
        }
        out.push(line.trim_start_matches(['#', '>', ' ']));
    }
    out.join(" ")
}

/// Splits `refs/heads/x` / `refs/tags/y` into (branch, tag).
pub(super) fn split_ref(r: &str) -> (Option<String>, Option<String>) {
    if let Some(tag) = r.strip_prefix("refs/tags/") {
        (None, Some(tag.to_string()))
    } else {
        let branch = r.strip_prefix("refs/heads/").unwrap_or(r);
        (Some(branch.to_string()).filter(|b| !b.is_empty()), None)
    }
}

fn ping(v: &Value, n: &mut Normalized) {
    let target = match repo(n).as_str() {
        "" => text(v, "/hook/type").to_string(),
        r => r.to_string(),
    };
    merge(
        n,
        json!({
            "target": target, "hook_id": id(v, "/hook_id"), "zen": text(v, "/zen"),
            "hook_events": at(v, "/hook/events").as_array().cloned().unwrap_or_default(),
        }),
    );
}

fn push(v: &Value, n: &mut Normalized) {
    let (branch, tag) = split_ref(text(v, "/ref"));
    let commits = at(v, "/commits")
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let shown: Vec<Value> = commits.iter().take(MAX_COMMITS).map(commit).collect();
    n.facts.paths = changed_paths(commits);
    merge(
        n,
        json!({
            "ref": text(v, "/ref"), "branch": branch, "tag": tag,
            "created": flag(v, "/created"), "deleted": flag(v, "/deleted"),
            "forced": flag(v, "/forced"), "compare": text(v, "/compare"),
            "commit_count": commits.len(), "commits": shown,
            "commits_more": commits.len().saturating_sub(MAX_COMMITS),
            "head": short_sha(text(v, "/after")),
            "head_message": first_line(text(v, "/head_commit/message")),
            "head_url": text(v, "/head_commit/url"),
            "pusher": text(v, "/pusher/name"),
        }),
    );
    n.facts.branch = branch;
    n.facts.tag = tag;
}

fn commit(c: &Value) -> Value {
    let author = match text(c, "/author/username") {
        "" => text(c, "/author/name"),
        login => login,
    };
    json!({
        "sha": short_sha(text(c, "/id")), "message": first_line(text(c, "/message")),
        "author": author, "url": text(c, "/url"),
    })
}

fn changed_paths(commits: &[Value]) -> Vec<String> {
    let mut paths = BTreeSet::new();
    for c in commits {
        for list in ["/added", "/modified", "/removed"] {
            for p in at(c, list).as_array().into_iter().flatten() {
                if let Some(p) = p.as_str() {
                    paths.insert(p.to_string());
                }
            }
        }
    }
    paths.into_iter().take(MAX_PATHS).collect()
}

fn git_ref(v: &Value, n: &mut Normalized) {
    let name = text(v, "/ref").to_string();
    let ref_type = text(v, "/ref_type");
    match ref_type {
        "tag" => n.facts.tag = Some(name.clone()),
        _ => n.facts.branch = Some(name.clone()),
    }
    let url = match ref_type {
        "tag" => format!("{}/releases/tag/{name}", text(v, "/repository/html_url")),
        _ => format!("{}/tree/{name}", text(v, "/repository/html_url")),
    };
    let url = if text(v, "/repository/html_url").is_empty() || n.event == "delete" {
        String::new()
    } else {
        url
    };
    merge(n, json!({"ref": name, "ref_type": ref_type, "url": url}));
}

/// The fields every pull request event shares.
fn pr_fields(pr: &Value) -> Value {
    json!({
        "number": id(pr, "/number"), "title": text(pr, "/title"), "url": text(pr, "/html_url"),
        "author": text(pr, "/user/login"), "summary": excerpt(text(pr, "/body")),
        "head": text(pr, "/head/ref"), "base": text(pr, "/base/ref"),
        "draft": flag(pr, "/draft"), "merged": flag(pr, "/merged"),
        "merged_by": text(pr, "/merged_by/login"), "state": text(pr, "/state"),
        "labels": names(pr, "/labels", "/name"),
        "assignees": names(pr, "/assignees", "/login"),
        "reviewers": names(pr, "/requested_reviewers", "/login"),
        "additions": at(pr, "/additions"), "deletions": at(pr, "/deletions"),
        "changed_files": at(pr, "/changed_files"), "commits": at(pr, "/commits"),
    })
}

/// Object key, branch, labels and draft from a pull request object.
fn pr_facts(pr: &Value, n: &mut Normalized) {
    let number = id(pr, "/number");
    if !number.is_empty() {
        n.object_key = Some(format!("{}#{number}", repo(n)));
    }
    n.facts.branch = Some(text(pr, "/base/ref").to_string()).filter(|b| !b.is_empty());
    n.facts.labels = names(pr, "/labels", "/name");
    n.facts.draft = at(pr, "/draft").as_bool();
}

fn pull_request(v: &Value, n: &mut Normalized) {
    let pr = at(v, "/pull_request");
    pr_facts(pr, n);
    merge(n, pr_fields(pr));
    if n.event == "pull_request.closed" && flag(pr, "/merged") {
        n.event = "pull_request.merged".into();
    }
    let reviewer = match text(v, "/requested_reviewer/login") {
        "" => text(v, "/requested_team/name"),
        login => login,
    };
    merge(
        n,
        json!({
            "label": text(v, "/label/name"), "assignee": text(v, "/assignee/login"),
            "requested_reviewer": reviewer,
            "before": short_sha(text(v, "/before")), "after": short_sha(text(v, "/after")),
        }),
    );
    n.mention_hints = match text(v, "/action") {
        "review_requested" => vec![text(v, "/requested_reviewer/login").to_string()],
        "assigned" => vec![text(v, "/assignee/login").to_string()],
        "opened" | "reopened" | "ready_for_review" => {
            let mut all = names(pr, "/requested_reviewers", "/login");
            all.extend(names(pr, "/assignees", "/login"));
            all
        }
        "closed" => vec![text(pr, "/user/login").to_string()],
        _ => vec![],
    };
}

fn review(v: &Value, n: &mut Normalized) {
    let pr = at(v, "/pull_request");
    pr_facts(pr, n);
    merge(n, pr_fields(pr));
    merge(
        n,
        json!({
            "review_state": text(v, "/review/state").to_ascii_lowercase(),
            "review_summary": excerpt(text(v, "/review/body")),
            "review_url": text(v, "/review/html_url"),
        }),
    );
    n.mention_hints = vec![text(pr, "/user/login").to_string()];
}

fn review_comment(v: &Value, n: &mut Normalized) {
    let pr = at(v, "/pull_request");
    pr_facts(pr, n);
    merge(n, pr_fields(pr));
    merge(n, comment_fields(at(v, "/comment")));
    merge(n, json!({"path": text(v, "/comment/path")}));
    n.mention_hints = vec![text(pr, "/user/login").to_string()];
}

fn comment_fields(c: &Value) -> Value {
    json!({
        "comment": excerpt(text(c, "/body")), "comment_url": text(c, "/html_url"),
        "commenter": text(c, "/user/login"),
    })
}

fn issue_fields(issue: &Value) -> Value {
    json!({
        "number": id(issue, "/number"), "title": text(issue, "/title"),
        "url": text(issue, "/html_url"), "author": text(issue, "/user/login"),
        "summary": excerpt(text(issue, "/body")), "state": text(issue, "/state"),
        "labels": names(issue, "/labels", "/name"),
        "assignees": names(issue, "/assignees", "/login"),
        "is_pull_request": issue.pointer("/pull_request").is_some_and(Value::is_object),
    })
}

fn issue_facts(issue: &Value, n: &mut Normalized) {
    let number = id(issue, "/number");
    if !number.is_empty() {
        n.object_key = Some(format!("{}#{number}", repo(n)));
    }
    n.facts.labels = names(issue, "/labels", "/name");
}

fn issue(v: &Value, n: &mut Normalized) {
    let issue = at(v, "/issue");
    issue_facts(issue, n);
    merge(n, issue_fields(issue));
    merge(
        n,
        json!({"label": text(v, "/label/name"), "assignee": text(v, "/assignee/login")}),
    );
    n.mention_hints = match text(v, "/action") {
        "assigned" => vec![text(v, "/assignee/login").to_string()],
        "opened" => names(issue, "/assignees", "/login"),
        "closed" | "reopened" => vec![text(issue, "/user/login").to_string()],
        _ => vec![],
    };
}

fn issue_comment(v: &Value, n: &mut Normalized) {
    let issue = at(v, "/issue");
    issue_facts(issue, n);
    merge(n, issue_fields(issue));
    merge(n, comment_fields(at(v, "/comment")));
    n.mention_hints = vec![text(issue, "/user/login").to_string()];
}

fn release(v: &Value, n: &mut Normalized) {
    let r = at(v, "/release");
    let tag = text(r, "/tag_name");
    n.facts.tag = Some(tag.to_string()).filter(|t| !t.is_empty());
    n.object_key = Some(format!("{}@release:{}", repo(n), id(r, "/id")));
    merge(
        n,
        json!({
            "tag": tag, "name": text(r, "/name"), "url": text(r, "/html_url"),
            "prerelease": flag(r, "/prerelease"), "draft": flag(r, "/draft"),
            "summary": excerpt(text(r, "/body")), "author": text(r, "/author/login"),
            "target": text(r, "/target_commitish"),
        }),
    );
}

/// Conclusion (or status while running), branch and sha of a CI object.
fn ci_fields(n: &mut Normalized, o: &Value, branch: &str, sha: &str, job: &str) {
    n.facts.ci_key = Some(format!("{}@{job}", repo(n)));
    let conclusion = text(o, "/conclusion");
    n.facts.conclusion = Some(conclusion.to_string()).filter(|c| !c.is_empty());
    n.facts.branch = Some(branch.to_string()).filter(|b| !b.is_empty());
    merge(
        n,
        json!({
            "status": text(o, "/status"), "conclusion": conclusion,
            "branch": branch, "sha": short_sha(sha), "url": text(o, "/html_url"),
        }),
    );
}

fn workflow_run(v: &Value, n: &mut Normalized) {
    let run = at(v, "/workflow_run");
    n.object_key = Some(format!("{}@workflow_run:{}", repo(n), id(run, "/id")));
    let name = match text(v, "/workflow/name") {
        "" => text(run, "/name"),
        name => name,
    };
    let workflow = format!("workflow:{}", id(run, "/workflow_id"));
    ci_fields(
        n,
        run,
        text(run, "/head_branch"),
        text(run, "/head_sha"),
        &workflow,
    );
    merge(
        n,
        json!({
            "name": name, "run_number": id(run, "/run_number"),
            "trigger": text(run, "/event"), "display_title": text(run, "/display_title"),
            "commit_message": first_line(text(run, "/head_commit/message")),
            "pull_numbers": names(run, "/pull_requests", "/number"),
        }),
    );
}

fn workflow_job(v: &Value, n: &mut Normalized) {
    let job = at(v, "/workflow_job");
    n.object_key = Some(format!("{}@workflow_job:{}", repo(n), id(job, "/id")));
    let key = format!("job:{}/{}", text(job, "/workflow_name"), text(job, "/name"));
    ci_fields(
        n,
        job,
        text(job, "/head_branch"),
        text(job, "/head_sha"),
        &key,
    );
    let failed: Vec<String> = at(job, "/steps")
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| text(s, "/conclusion") == "failure")
        .map(|s| text(s, "/name").to_string())
        .collect();
    merge(
        n,
        json!({
            "name": text(job, "/name"), "workflow": text(job, "/workflow_name"),
            "runner": text(job, "/runner_name"), "failed_steps": failed,
        }),
    );
}

fn check_run(v: &Value, n: &mut Normalized) {
    let run = at(v, "/check_run");
    n.object_key = Some(format!("{}@check_run:{}", repo(n), id(run, "/id")));
    let branch = text(run, "/check_suite/head_branch");
    let key = format!("check:{}", text(run, "/name"));
    ci_fields(n, run, branch, text(run, "/head_sha"), &key);
    merge(
        n,
        json!({
            "name": text(run, "/name"), "app": text(run, "/app/name"),
            "output_title": text(run, "/output/title"),
            "output_summary": excerpt(text(run, "/output/summary")),
        }),
    );
}

fn check_suite(v: &Value, n: &mut Normalized) {
    let suite = at(v, "/check_suite");
    let sha = text(suite, "/head_sha");
    n.object_key = Some(format!("{}@check_suite:{sha}", repo(n)));
    let key = format!("check_suite:{}", id(suite, "/app/id"));
    ci_fields(n, suite, text(suite, "/head_branch"), sha, &key);
    let url = match text(v, "/repository/html_url") {
        "" => String::new(),
        repo_url => format!("{repo_url}/commit/{sha}/checks"),
    };
    merge(
        n,
        json!({
            "name": text(suite, "/app/name"), "url": url,
            "commit_message": first_line(text(suite, "/head_commit/message")),
        }),
    );
}

fn status(v: &Value, n: &mut Normalized) {
    let sha = text(v, "/sha");
    let context = text(v, "/context");
    let state = text(v, "/state");
    n.object_key = Some(format!("{}@status:{sha}:{context}", repo(n)));
    n.facts.ci_key = Some(format!("{}@status:{context}", repo(n)));
    n.facts.conclusion = Some(state.to_string()).filter(|s| !s.is_empty());
    let branches = names(v, "/branches", "/name");
    n.facts.branch = branches.first().cloned();
    merge(
        n,
        json!({
            "sha": short_sha(sha), "context": context, "state": state,
            "description": text(v, "/description"), "url": text(v, "/target_url"),
            "commit_url": text(v, "/commit/html_url"), "branches": branches,
            "commit_message": first_line(text(v, "/commit/commit/message")),
        }),
    );
}

fn deployment(v: &Value, n: &mut Normalized) {
    let d = at(v, "/deployment");
    let s = at(v, "/deployment_status");
    n.object_key = Some(format!("{}@deployment:{}", repo(n), id(d, "/id")));
    let state = text(s, "/state");
    n.facts.conclusion = Some(state.to_string()).filter(|s| !s.is_empty());
    if !state.is_empty() {
        n.facts.ci_key = Some(format!(
            "{}@deployment:{}",
            repo(n),
            text(d, "/environment")
        ));
    }
    n.facts.branch = Some(text(d, "/ref").to_string()).filter(|b| !b.is_empty());
    let url = [
        text(s, "/target_url"),
        text(s, "/log_url"),
        text(s, "/environment_url"),
    ]
    .into_iter()
    .find(|u| !u.is_empty())
    .unwrap_or_default();
    let deployments = match text(v, "/repository/html_url") {
        "" => String::new(),
        repo_url => format!("{repo_url}/deployments"),
    };
    merge(
        n,
        json!({
            "environment": text(d, "/environment"), "ref": text(d, "/ref"),
            "sha": short_sha(text(d, "/sha")), "task": text(d, "/task"),
            "state": state, "description": text(s, "/description"),
            "url": url, "deployments_url": deployments,
            "creator": text(d, "/creator/login"),
        }),
    );
}

fn discussion(v: &Value, n: &mut Normalized) {
    let d = at(v, "/discussion");
    let number = id(d, "/number");
    if !number.is_empty() {
        n.object_key = Some(format!("{}#{number}", repo(n)));
    }
    merge(
        n,
        json!({
            "number": number, "title": text(d, "/title"), "url": text(d, "/html_url"),
            "category": text(d, "/category/name"), "author": text(d, "/user/login"),
            "summary": excerpt(text(d, "/body")),
        }),
    );
    merge(n, comment_fields(at(v, "/comment")));
    if n.event.starts_with("discussion_comment") {
        n.mention_hints = vec![text(d, "/user/login").to_string()];
    }
}

fn fork(v: &Value, n: &mut Normalized) {
    merge(
        n,
        json!({
            "fork": text(v, "/forkee/full_name"), "url": text(v, "/forkee/html_url"),
            "forks": at(v, "/repository/forks_count"),
        }),
    );
}

fn member(v: &Value, n: &mut Normalized) {
    let login = text(v, "/member/login");
    merge(
        n,
        json!({
            "member": login, "url": text(v, "/member/html_url"),
            "permission": text(v, "/changes/permission/to"),
        }),
    );
    n.mention_hints = vec![login.to_string()];
}

fn stars(v: &Value, n: &mut Normalized) {
    merge(n, json!({"stars": at(v, "/repository/stargazers_count")}));
}

#[cfg(test)]
pub(super) mod tests;
