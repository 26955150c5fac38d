//! The one filter engine: per-robot rules over the normalized facts every adapter fills in,
//! so "failures only", "not from bots" or "main branch only" work the same for every source.
//!
//! ```json
//! {"events": {"include": ["pull_request.*"], "exclude": ["*.labeled"]},
//!  "branches": {"include": ["main", "release/*"], "exclude": ["dependabot/**"]},
//!  "tags": {"include": ["v*"]}, "paths": {"include": ["src/**"]},
//!  "labels": {"any": ["bug"], "all": [], "none": ["wip"]},
//!  "actors": {"exclude": ["renovate*"], "bots": false},
//!  "draft": false, "conclusions": ["failure", "cancelled"], "severities": ["critical"],
//!  "on_conclusion_change": true}
//! ```
//! Every rule given must pass. A rule about a fact an event does not have (a branch rule and an
//! issue comment) does not apply to that event.
//!
//! `on_conclusion_change` is the one rule with memory: a CI event passes only when its
//! conclusion differs from the previous one of the same job on the same branch (a failure
//! after a success, a success after a failure), and runs still in progress do not pass. The
//! caller keeps the last conclusion per robot in the store (`ci_state`), so the rule holds
//! across restarts.

use serde::Deserialize;

use crate::adapt::Normalized;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    #[serde(default)]
    pub events: Globs,
    #[serde(default)]
    pub branches: Globs,
    #[serde(default)]
    pub tags: Globs,
    #[serde(default)]
    pub paths: Globs,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub actors: Actors,
    /// Some(false): drop draft pull/merge requests; Some(true): only drafts.
    pub draft: Option<bool>,
    /// Only these CI conclusions (e.g. failures only).
    #[serde(default)]
    pub conclusions: Vec<String>,
    /// Only these alert severities.
    #[serde(default)]
    pub severities: Vec<String>,
    /// CI events only when the conclusion changed from the job's previous one on that branch.
    #[serde(default)]
    pub on_conclusion_change: bool,
}

/// CI states that are not a conclusion yet: a run in these does not change anything.
const IN_PROGRESS: &[&str] = &[
    "pending",
    "queued",
    "requested",
    "waiting",
    "in_progress",
    "running",
    "created",
    "preparing",
    "waiting_for_resource",
    "scheduled",
    "manual",
];

/// The CI job (with its branch or tag) and the finished conclusion an event reports, when it
/// reports one: what `on_conclusion_change` compares and the caller remembers.
pub fn ci_state(event: &Normalized) -> Option<(String, String)> {
    let f = &event.facts;
    let job = f.ci_key.as_deref()?;
    let conclusion = f.conclusion.as_deref()?.to_ascii_lowercase();
    if IN_PROGRESS.contains(&conclusion.as_str()) {
        return None;
    }
    let r = f.branch.as_deref().or(f.tag.as_deref()).unwrap_or_default();
    Some((format!("{job} {r}"), conclusion))
}

/// Include/exclude glob lists: `*` within a path segment, `**` across, `?` one character.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Globs {
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    #[serde(default)]
    pub any: Vec<String>,
    #[serde(default)]
    pub all: Vec<String>,
    #[serde(default)]
    pub none: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Actors {
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// false: drop events from bots (Dependabot, Renovate, `[bot]` accounts).
    pub bots: Option<bool>,
}

impl Filters {
    /// Parses a robot's stored filter document; `null` means no filters.
    pub fn parse(value: &serde_json::Value) -> Result<Filters, String> {
        if value.is_null() {
            return Ok(Filters::default());
        }
        serde_json::from_value(value.clone()).map_err(|e| format!("invalid filters: {e}"))
    }

    /// Whether the event passes every rule, as the first event of its CI job.
    pub fn admits(&self, event: &Normalized) -> bool {
        self.admits_after(event, None)
    }

    /// Whether the event passes every rule, given the previous conclusion of its CI job.
    pub fn admits_after(&self, event: &Normalized, previous: Option<&str>) -> bool {
        self.admits_change(event, previous) && self.admits_facts(event)
    }

    fn admits_change(&self, event: &Normalized, previous: Option<&str>) -> bool {
        if !self.on_conclusion_change || event.facts.ci_key.is_none() {
            return true;
        }
        match ci_state(event) {
            Some((_, now)) => previous.is_none_or(|p| !p.eq_ignore_ascii_case(&now)),
            None => false, // still running: not a conclusion, so not a change
        }
    }

    fn admits_facts(&self, event: &Normalized) -> bool {
        let f = &event.facts;
        self.events.admits(&event.event)
            && f.branch.as_deref().is_none_or(|b| self.branches.admits(b))
            && f.tag.as_deref().is_none_or(|t| self.tags.admits(t))
            && (f.paths.is_empty()
                || self.paths.include.is_empty() && self.paths.exclude.is_empty()
                || f.paths.iter().any(|p| self.paths.admits(p)))
            && self.labels.admits(&f.labels)
            && self.actors.admits(f.actor.as_deref(), f.actor_is_bot)
            && self
                .draft
                .is_none_or(|want| f.draft.is_none_or(|d| d == want))
            && (self.conclusions.is_empty()
                || f.conclusion
                    .as_deref()
                    .is_none_or(|c| contains_ci(&self.conclusions, c)))
            && (self.severities.is_empty()
                || f.severity
                    .as_deref()
                    .is_none_or(|s| contains_ci(&self.severities, s)))
    }
}

fn contains_ci(list: &[String], value: &str) -> bool {
    list.iter().any(|x| x.eq_ignore_ascii_case(value))
}

impl Globs {
    fn admits(&self, value: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| glob(g, value)))
            && !self.exclude.iter().any(|g| glob(g, value))
    }
}

impl Labels {
    fn admits(&self, labels: &[String]) -> bool {
        let has = |l: &String| labels.iter().any(|x| x.eq_ignore_ascii_case(l));
        (self.any.is_empty() || self.any.iter().any(has))
            && self.all.iter().all(has)
            && !self.none.iter().any(has)
    }
}

impl Actors {
    fn admits(&self, actor: Option<&str>, is_bot: bool) -> bool {
        if self.bots == Some(false) && is_bot {
            return false;
        }
        let Some(actor) = actor else { return true };
        (self.include.is_empty() || self.include.iter().any(|g| glob(g, actor)))
            && !self.exclude.iter().any(|g| glob(g, actor))
    }
}

/// Glob match: `**` any characters, `*` any except `/`, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p {
            [] => t.is_empty(),
            ['*', '*', rest @ ..] => (0..=t.len()).any(|i| go(rest, &t[i..])),
            ['*', rest @ ..] => (0..=t.len())
                .take_while(|&i| i == 0 || t[i - 1] != '/')
                .any(|i| go(rest, &t[i..])),
            ['?', rest @ ..] => !t.is_empty() && go(rest, &t[1..]),
            [c, rest @ ..] => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    if p.len() > 256 || t.len() > 1024 {
        return pattern == text;
    }
    go(&p, &t)
}

#[cfg(test)]
mod table;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapt::Facts;
    use serde_json::json;

    fn event(name: &str, facts: Facts) -> Normalized {
        Normalized {
            event: name.into(),
            facts,
            ..Default::default()
        }
    }

    #[test]
    fn globs() {
        assert!(glob("release/*", "release/1.2"));
        assert!(!glob("release/*", "release/1/2"));
        assert!(glob("dependabot/**", "dependabot/npm/x"));
        assert!(glob("*.labeled", "pull_request.labeled"));
        assert!(glob("v?.*", "v1.2"));
    }

    #[test]
    fn rules_combine() {
        let f = Filters::parse(&json!({
            "events": {"exclude": ["*.labeled"]},
            "branches": {"include": ["main"]},
            "actors": {"bots": false},
            "conclusions": ["failure"]
        }))
        .unwrap();
        let main = Facts {
            branch: Some("main".into()),
            ..Default::default()
        };
        assert!(f.admits(&event("push", main.clone())));
        assert!(!f.admits(&event(
            "push",
            Facts {
                branch: Some("dev".into()),
                ..Default::default()
            }
        )));
        assert!(!f.admits(&event("pull_request.labeled", main.clone())));
        assert!(!f.admits(&event(
            "push",
            Facts {
                actor_is_bot: true,
                ..main.clone()
            }
        )));
        let ok = Facts {
            conclusion: Some("success".into()),
            ..main.clone()
        };
        assert!(!f.admits(&event("workflow_run.completed", ok)));
        let failed = Facts {
            conclusion: Some("FAILURE".into()),
            ..main
        };
        assert!(f.admits(&event("workflow_run.completed", failed)));
        assert!(
            f.admits(&event("issues.opened", Facts::default())),
            "rules about absent facts do not apply"
        );
    }

    #[test]
    fn on_conclusion_change_compares_with_the_previous_run() {
        let f = Filters::parse(&json!({"on_conclusion_change": true})).unwrap();
        let run = |conclusion: &str| {
            event(
                "workflow_run.completed",
                Facts {
                    ci_key: Some("o/r@workflow:1".into()),
                    branch: Some("main".into()),
                    conclusion: Some(conclusion.into()).filter(|c: &String| !c.is_empty()),
                    ..Default::default()
                },
            )
        };
        assert!(
            f.admits_after(&run("failure"), None),
            "the first run passes"
        );
        assert!(f.admits_after(&run("failure"), Some("success")));
        assert!(!f.admits_after(&run("failure"), Some("failure")));
        assert!(f.admits_after(&run("success"), Some("failure")));
        assert!(!f.admits_after(&run("SUCCESS"), Some("success")));
        assert!(
            !f.admits_after(&run(""), None),
            "a run in progress is no change"
        );
        assert!(!f.admits_after(&run("running"), Some("success")));
        assert_eq!(
            ci_state(&run("Failure")),
            Some(("o/r@workflow:1 main".into(), "failure".into()))
        );
        assert_eq!(ci_state(&run("in_progress")), None);
        assert!(
            f.admits_after(&event("push", Facts::default()), Some("x")),
            "events without a CI job are not subject to the rule"
        );
        let off = Filters::default();
        assert!(off.admits_after(&run("failure"), Some("failure")));
    }

    #[test]
    fn unknown_rules_are_refused() {
        assert!(Filters::parse(&json!({"branch": ["main"]})).is_err());
        assert_eq!(
            Filters::parse(&serde_json::Value::Null).unwrap(),
            Filters::default()
        );
    }
}
