/* Sentry → herald: an adapter plugin for Sentry's integration-platform webhooks.
 *
 *  - `Sentry-Hook-Resource: event_alert` (an issue alert rule fired) → a markdown card
 *  - `Sentry-Hook-Resource: issue` (created, resolved, assigned, archived, unresolved) → a
 *    follow-up on the same card (thread key = the Sentry issue id)
 *  - `Sentry-Hook-Resource: installation` → answered 200, nothing posted
 *
 * Robot config: `client_secret` (optional) — when set, `Sentry-Hook-Signature` must be the hex
 * HMAC-SHA256 of the raw body under it, or the request is rejected with 401.
 *
 * Built by scripts/build-plugins with clang --target=wasm32-wasi, wit-bindgen c and
 * wasm-tools component new. Uses no WASI: only malloc and string functions from libc. */

#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "json.h"

/* A growable string. */
typedef struct {
    char *ptr;
    size_t len, cap;
} buf;

static void put_n(buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n + 1) cap *= 2;
        b->ptr = realloc(b->ptr, cap);
        if (!b->ptr) abort();
        b->cap = cap;
    }
    memcpy(b->ptr + b->len, s, n);
    b->len += n;
    b->ptr[b->len] = 0;
}

static void put(buf *b, const char *s) {
    if (s) put_n(b, s, strlen(s));
}

static adapter_string_t take(buf *b) {
    adapter_string_t s = {(uint8_t *)b->ptr, b->len};
    return s;
}

static adapter_string_t str(const char *s) {
    adapter_string_t out;
    adapter_string_dup(&out, s ? s : "");
    return out;
}

static adapter_option_string_t some(const char *s) {
    adapter_option_string_t o = {0};
    if (s && *s) {
        o.is_some = true;
        adapter_string_dup(&o.val, s);
    }
    return o;
}

/* The request's header `name` (lower-case) as a NUL-terminated copy, or NULL. */
static char *header(const adapter_http_request_t *req, const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < req->headers.len; i++) {
        adapter_tuple2_string_string_t *h = &req->headers.ptr[i];
        if (h->f0.len == n && memcmp(h->f0.ptr, name, n) == 0) {
            char *v = malloc(h->f1.len + 1);
            memcpy(v, h->f1.ptr, h->f1.len);
            v[h->f1.len] = 0;
            return v;
        }
    }
    return NULL;
}

static bool reject(adapter_rejection_t *err, uint16_t status, const char *message) {
    err->status = status;
    adapter_string_dup(&err->message, message);
    return false;
}

/* Compares in constant time (for the signature). */
static bool same(const char *a, const char *b) {
    size_t n = strlen(a);
    if (n != strlen(b)) return false;
    unsigned char diff = 0;
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

/* Checks Sentry-Hook-Signature when the robot has a client_secret. */
static bool signature_ok(const adapter_http_request_t *req) {
    adapter_string_t key = {(uint8_t *)"client_secret", 13}, secret;
    if (!herald_adapter_host_config(&key, &secret)) return true;
    char *given = header(req, "sentry-hook-signature");
    if (!given) return false;
    adapter_list_u8_t k = {secret.ptr, secret.len}, data = {req->body.ptr, req->body.len}, mac;
    herald_adapter_host_hmac_sha256(&k, &data, &mac);
    char hex[65];
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < 32 && i < mac.len; i++) {
        hex[2 * i] = digits[mac.ptr[i] >> 4];
        hex[2 * i + 1] = digits[mac.ptr[i] & 15];
    }
    hex[64] = 0;
    return mac.len == 32 && same(hex, given);
}

/* The parsed body. */
typedef struct {
    json_value root;
} payload;

/* The text at `path` under `v` (malloc'ed), or NULL. */
static char *field(json_value v, const char *path) {
    return json_text(json_get(v, path));
}

/* The value of tag `name` in the event's [["key", "value"], …] list, or NULL. */
static char *tag(json_value event, const char *name) {
    json_value tags = json_get(event, "tags");
    for (size_t i = 0; tags.tok; i++) {
        json_value pair = json_item(tags, i);
        if (!pair.tok) return NULL;
        char *k = json_text(json_item(pair, 0));
        bool match = k && strcmp(k, name) == 0;
        free(k);
        if (match) return json_text(json_item(pair, 1));
    }
    return NULL;
}

static const char *level_icon(const char *level) {
    if (!level) return "⚪";
    if (!strcmp(level, "fatal") || !strcmp(level, "error")) return "🔴";
    if (!strcmp(level, "warning")) return "🟠";
    return "🔵";
}

static herald_adapter_types_message_t new_message(const char *event, buf *title, buf *text) {
    herald_adapter_types_message_t m;
    memset(&m, 0, sizeof m);
    m.event = str(event);
    m.content.tag = HERALD_ADAPTER_TYPES_CONTENT_MARKDOWN;
    m.content.val.markdown.title = take(title);
    m.content.val.markdown.text = take(text);
    return m;
}

/* `event_alert` / `triggered`: an alert rule fired for an event. */
static herald_adapter_types_message_t event_alert(payload p, const char *request_id) {
    json_value e = json_get(p.root, "data.event");
    char *title = field(e, "title"), *culprit = field(e, "culprit"), *level = field(e, "level");
    char *rule = field(p.root, "data.triggered_rule"), *url = field(e, "web_url");
    char *issue = field(e, "issue_id"), *event_id = field(e, "event_id");
    char *env = tag(e, "environment"), *release = field(e, "release");
    buf t = {0}, x = {0}, key = {0};
    put(&t, "Sentry: ");
    put(&t, title ? title : "an issue alert fired");
    put(&x, "### ");
    put(&x, level_icon(level));
    put(&x, " ");
    put(&x, title ? title : "(untitled event)");
    if (rule) { put(&x, "\n\n**Alert rule**: "); put(&x, rule); }
    if (culprit && *culprit) { put(&x, "\n\n**Culprit**: `"); put(&x, culprit); put(&x, "`"); }
    put(&x, "\n\n**Level**: ");
    put(&x, level ? level : "unknown");
    if (env) { put(&x, " · **Environment**: "); put(&x, env); }
    if (release) { put(&x, " · **Release**: "); put(&x, release); }
    if (url) { put(&x, "\n\n[View in Sentry]("); put(&x, url); put(&x, ")"); }
    herald_adapter_types_message_t m = new_message("event_alert.triggered", &t, &x);
    m.facts.severity = some(level);
    if (env) {
        m.facts.labels.ptr = malloc(sizeof(adapter_string_t));
        m.facts.labels.len = 1;
        buf label = {0};
        put(&label, "environment:");
        put(&label, env);
        m.facts.labels.ptr[0] = take(&label);
    }
    m.dedupe_key = some(request_id ? request_id : event_id);
    if (issue) { put(&key, "sentry-issue:"); put(&key, issue); }
    m.thread_key = some(key.ptr);
    free(title); free(culprit); free(level); free(rule); free(url); free(issue);
    free(event_id); free(env); free(release); free(key.ptr);
    return m;
}

/* `issue` / created, resolved, assigned, archived, unresolved, ignored. */
static herald_adapter_types_message_t issue(payload p, const char *action, const char *request_id) {
    json_value is = json_get(p.root, "data.issue");
    char *title = field(is, "title"), *short_id = field(is, "shortId"), *level = field(is, "level");
    char *id = field(is, "id"), *url = field(is, "web_url"), *project = field(is, "project.slug");
    char *actor = field(p.root, "actor.name"), *actor_type = field(p.root, "actor.type");
    char *assignee = field(is, "assignedTo.email"), *assignee_name = field(is, "assignedTo.name");
    buf t = {0}, x = {0}, event = {0}, key = {0};
    put(&event, "issue.");
    put(&event, action);
    put(&t, "Sentry ");
    put(&t, short_id ? short_id : "issue");
    put(&t, " ");
    put(&t, action);
    put(&x, "### ");
    put(&x, !strcmp(action, "resolved") ? "✅" : level_icon(level));
    put(&x, " ");
    put(&x, short_id ? short_id : "Issue");
    put(&x, " ");
    put(&x, action);
    if (actor && strcmp(action, "created")) { put(&x, " by "); put(&x, actor); }
    put(&x, "\n\n");
    put(&x, title ? title : "(untitled issue)");
    if (project) { put(&x, "\n\n**Project**: "); put(&x, project); }
    if (!strcmp(action, "assigned") && (assignee_name || assignee)) {
        put(&x, "\n\n**Assigned to**: ");
        put(&x, assignee_name ? assignee_name : assignee);
    }
    if (url) { put(&x, "\n\n[View in Sentry]("); put(&x, url); put(&x, ")"); }
    herald_adapter_types_message_t m = new_message(event.ptr, &t, &x);
    m.facts.severity = some(level);
    m.facts.actor = some(actor);
    m.facts.actor_is_bot = actor_type && strcmp(actor_type, "user") != 0;
    if (!strcmp(action, "assigned") && assignee) {
        m.mentions.hints.ptr = malloc(sizeof(adapter_string_t));
        m.mentions.hints.len = 1;
        m.mentions.hints.ptr[0] = str(assignee);
    }
    if (request_id) m.dedupe_key = some(request_id);
    if (id) { put(&key, "sentry-issue:"); put(&key, id); }
    m.thread_key = some(key.ptr);
    free(title); free(short_id); free(level); free(id); free(url); free(project); free(actor);
    free(actor_type); free(assignee); free(assignee_name); free(event.ptr); free(key.ptr);
    return m;
}

static void one_message(adapter_output_t *ret, herald_adapter_types_message_t m) {
    ret->messages.ptr = malloc(sizeof m);
    ret->messages.ptr[0] = m;
    ret->messages.len = 1;
}

bool exports_adapter_handle(adapter_http_request_t *req, adapter_output_t *ret,
                            adapter_rejection_t *err) {
    memset(ret, 0, sizeof *ret);
    if (!signature_ok(req)) return reject(err, 401, "invalid Sentry-Hook-Signature");
    char *resource = header(req, "sentry-hook-resource");
    if (!resource) return reject(err, 400, "missing Sentry-Hook-Resource header");
    json_doc doc;
    json_parse(&doc, (const char *)req->body.ptr, req->body.len);
    payload p = {json_root(&doc)};
    char *action = field(p.root, "action");
    char *request_id = header(req, "request-id");
    bool ok = true;
    if (!strcmp(resource, "installation")) {
        ret->reply.is_some = true;
        ret->reply.val.status = 200;
    } else if (!action) {
        ok = reject(err, 400, "the body has no action: is it a Sentry webhook?");
    } else if (!strcmp(resource, "event_alert") && !strcmp(action, "triggered")) {
        one_message(ret, event_alert(p, request_id));
    } else if (!strcmp(resource, "issue")) {
        one_message(ret, issue(p, action, request_id));
    } else {
        buf msg = {0};
        put(&msg, "unsupported Sentry-Hook-Resource ");
        put(&msg, resource);
        ok = reject(err, 422, msg.ptr);
        free(msg.ptr);
    }
    free(resource);
    free(action);
    free(request_id);
    json_free(&doc);
    adapter_http_request_free(req);
    return ok;
}
