//! The filter table: filter configurations against every real fixture, each row naming exactly
//! which fixtures pass (or exactly which do not). A fixture is named `source/file-stem`; a
//! new fixture that a row's rule touches makes the row fail until the table says what it
//! should do.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::Filters;
use crate::adapt::{adapt, contract, Normalized};

/// Every event of every fixture of the sources filters apply to, with its fixture's name.
fn fixture_events() -> Vec<(String, Normalized)> {
    let mut out = Vec::new();
    for (name, raw) in contract::fixture_requests() {
        let adapted = adapt(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.extend(adapted.events.into_iter().map(|e| (name.clone(), e)));
    }
    out
}

/// What a row expects: exactly these fixtures pass, or all but exactly these.
enum Expect {
    Only(&'static [&'static str]),
    AllBut(&'static [&'static str]),
}

fn rows() -> Vec<(&'static str, Value, Expect)> {
    use Expect::*;
    vec![
        ("no filters", json!({}), AllBut(&[])),
        (
            "pull request events but labels",
            json!({"events": {"include": ["pull_request.*"], "exclude": ["*.labeled"]}}),
            Only(&[
                "github/pull_request.assigned",
                "github/pull_request.closed-merged",
                "github/pull_request.closed-unmerged",
                "github/pull_request.converted_to_draft",
                "github/pull_request.opened",
                "github/pull_request.ready_for_review",
                "github/pull_request.review_requested",
                "github/pull_request.synchronize",
            ]),
        ),
        (
            "CI failures only (runs without a conclusion yet are not judged)",
            json!({"events": {"include": ["check_*", "workflow_*", "status", "pipeline.*", "job.*"]},
                   "conclusions": ["failure", "failed"]}),
            Only(&[
                "github/check_run.completed-failure",
                "github/check_run.created",
                "github/check_suite.requested",
                "github/workflow_run.requested",
            ]),
        ),
        (
            "CI on status change, first runs: only finished runs pass",
            json!({"on_conclusion_change": true,
                   "events": {"include": ["check_*", "workflow_*", "status", "pipeline.*", "job.*", "deployment*"]}}),
            Only(&[
                "github/check_run.completed-failure",
                "github/check_run.completed-success",
                "github/check_suite.completed",
                "github/deployment.created",
                "github/status.success",
                "github/workflow_job.completed-success",
                "github/workflow_run.completed-success",
                "gitlab/deployment.success",
                "gitlab/job.success",
                "gitlab/pipeline.success",
            ]),
        ),
        (
            "main branches",
            json!({"branches": {"include": ["master", "main"]}}),
            AllBut(&[
                "github/check_run.completed-failure",
                "github/check_run.completed-success",
                "github/check_run.created",
                "github/check_suite.completed",
                "gitlab/deployment.success",
                "gitlab/merge_request.approved",
                "gitlab/note.merge_request",
                "gitlab/push.branch-create",
                "gitlab/push.branch-delete",
            ]),
        ),
        (
            "release tags",
            json!({"tags": {"include": ["v*"]}}),
            AllBut(&[
                "github/create.tag",
                "github/delete.tag",
                "github/push.tag-created",
                "github/release.created",
                "github/release.published",
                "gitlab/release.create",
            ]),
        ),
        (
            "changed paths under app/",
            json!({"paths": {"include": ["app/**"]}}),
            AllBut(&[
                "github/push.branch",
                "gitlab/push.branch-create",
                "gitlab/tag_push.create",
            ]),
        ),
        (
            "labels: none of bug",
            json!({"labels": {"none": ["bug"]}}),
            AllBut(&[
                "github/issue_comment.created",
                "github/issue_comment.deleted",
                "github/issues.assigned",
                "github/issues.edited",
                "github/issues.labeled",
                "github/issues.opened",
                "github/pull_request.assigned",
                "github/pull_request.closed-unmerged",
                "github/pull_request.converted_to_draft",
                "github/pull_request.labeled",
                "github/pull_request.ready_for_review",
                "github/pull_request.review_requested",
                "github/pull_request.synchronize",
            ]),
        ),
        (
            "labels: any of critical, API",
            json!({"labels": {"any": ["critical", "api"]}}),
            Only(&[
                "gitlab/issue.close",
                "gitlab/issue.open",
                "gitlab/issue.reopen",
                "gitlab/merge_request.open",
            ]),
        ),
        (
            "labels: all of an alert's",
            json!({"labels": {"all": ["severity=critical", "job=node"]}}),
            Only(&[
                "alertmanager/captured-1-firing-2alerts",
                "alertmanager/captured-4-resolved",
            ]),
        ),
        (
            "actors excluded",
            json!({"actors": {"exclude": ["sytses", "jsmith*", "ailisp"]}}),
            AllBut(&[
                "github/pull_request.closed-merged",
                "gitlab/issue.close",
                "gitlab/issue.reopen",
                "gitlab/issue.update",
                "gitlab/job.success",
                "gitlab/merge_request.close",
                "gitlab/merge_request.merge",
                "gitlab/note.merge_request-diff",
                "gitlab/push.branch",
                "gitlab/push.branch-create",
                "gitlab/push.branch-delete",
                "gitlab/tag_push.create",
            ]),
        ),
        (
            "not from bots",
            json!({"actors": {"bots": false}}),
            AllBut(&[]),
        ),
        (
            "no drafts",
            json!({"draft": false}),
            AllBut(&["github/pull_request.converted_to_draft"]),
        ),
        (
            "critical alerts",
            json!({"severities": ["critical"]}),
            AllBut(&[
                "alertmanager/captured-2-firing-maxalerts1-truncated-bearer",
                "pagerduty/event.trigger",
            ]),
        ),
        (
            "rules combine",
            json!({"events": {"include": ["push", "tag_push"]},
                   "branches": {"include": ["master"]}, "paths": {"exclude": ["*.md"]}}),
            Only(&[
                "github/push.tag-created",
                "gitlab/push.branch",
                "gitlab/tag_push.create",
            ]),
        ),
    ]
}

#[test]
fn filter_table_against_fixtures() {
    let events = fixture_events();
    let all: BTreeSet<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert!(all.len() > 60, "fixtures not found: {all:?}");
    for (name, config, expect) in rows() {
        let filters = Filters::parse(&config).unwrap_or_else(|e| panic!("{name}: {e}"));
        let passed: BTreeSet<&str> = events
            .iter()
            .filter(|(_, e)| filters.admits(e))
            .map(|(n, _)| n.as_str())
            .collect();
        let want: BTreeSet<&str> = match expect {
            Expect::Only(names) => names.iter().copied().collect(),
            Expect::AllBut(names) => {
                for n in names {
                    assert!(all.contains(n), "{name}: no fixture {n}");
                }
                all.iter().copied().filter(|n| !names.contains(n)).collect()
            }
        };
        assert_eq!(
            passed.symmetric_difference(&want).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "{name}: fixtures that pass where the table says otherwise, or the reverse"
        );
    }
}
