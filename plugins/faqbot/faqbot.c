/* An FAQ bot for herald: a bot plugin (herald:bot@0.2.0) that answers questions about the
 * topics in its config, instead of a server answering callbacks.
 *
 *  - a message that reaches the bot (an @mention, a 1:1 chat, or a keyword trigger) and names
 *    one or more topics → one text reply with each topic's answer, mentioning the asker
 *    (in the question's thread, when it was asked in one)
 *  - an @mention or a 1:1 message that names no topic → the `fallback` answer, or a list of
 *    the topics it knows
 *  - `member.joined` (when the bot opted into it) → the `welcome` text, mentioning the
 *    newcomers, if the config has one
 *
 * Bot config:
 *   topics          comma-separated topic words, matched case-insensitively in the message
 *                   ("deploy,vpn,on-call")
 *   answer.<topic>  the answer for a topic; `{name}` becomes the asker's name
 *   fallback        (optional) the answer when no topic matched
 *   welcome         (optional) the greeting for members who joined
 *
 * Built by scripts/build-plugins with clang --target=wasm32-wasi, wit-bindgen c and
 * wasm-tools component new. Uses no WASI: only malloc and string functions from libc. */

#include <stdlib.h>
#include <string.h>

#include "bot.h"

/* Topics answered in one reply, at most. */
#define MAX_TOPICS 8

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

static void put_str(buf *b, const bot_string_t *s) {
    put_n(b, (const char *)s->ptr, s->len);
}

static bool is(const bot_string_t *s, const char *lit) {
    return s->len == strlen(lit) && memcmp(s->ptr, lit, s->len) == 0;
}

/* The bot's config value for `key` (NUL-terminated, malloc'ed), or NULL. */
static char *config(const char *key) {
    bot_string_t k = {(uint8_t *)key, strlen(key)}, value;
    if (!herald_bot_host_config(&k, &value)) return NULL;
    buf out = {0};
    put_str(&out, &value);
    bot_string_free(&value);
    if (!out.ptr) put(&out, "");
    return out.ptr;
}

static void log_line(herald_bot_host_level_t level, const char *line) {
    bot_string_t s = {(uint8_t *)line, strlen(line)};
    herald_bot_host_log(level, &s);
}

static char lower(char c) {
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Whether `word` occurs in `text` (ASCII case-insensitively). */
static bool mentions_topic(const bot_string_t *text, const char *word, size_t n) {
    if (n == 0 || n > text->len) return false;
    for (size_t i = 0; i + n <= text->len; i++) {
        size_t j = 0;
        while (j < n && lower((char)text->ptr[i + j]) == lower(word[j])) j++;
        if (j == n) return true;
    }
    return false;
}

/* `answer` with each `{name}` replaced by `name`, appended to `out`. */
static void put_answer(buf *out, const char *answer, const bot_string_t *name) {
    const char *at;
    while ((at = strstr(answer, "{name}")) != NULL) {
        put_n(out, answer, (size_t)(at - answer));
        put_str(out, name);
        answer = at + 6;
    }
    put(out, answer);
}

/* The next topic of a comma-separated list, trimmed: its start and length; NULL at the end. */
static const char *next_topic(const char **list, size_t *n) {
    const char *s = *list;
    while (*s == ',' || *s == ' ') s++;
    if (!*s) return NULL;
    const char *end = strchr(s, ',');
    if (!end) end = s + strlen(s);
    *list = end;
    while (end > s && end[-1] == ' ') end--;
    *n = (size_t)(end - s);
    return s;
}

/* Appends the answer of every topic the text names; how many matched. */
static int answer_topics(buf *out, const char *topics, const herald_bot_types_chat_message_t *m) {
    int matched = 0;
    size_t n;
    const char *topic;
    while (matched < MAX_TOPICS && (topic = next_topic(&topics, &n)) != NULL) {
        if (!mentions_topic(&m->text, topic, n)) continue;
        buf key = {0};
        put(&key, "answer.");
        put_n(&key, topic, n);
        char *answer = config(key.ptr);
        free(key.ptr);
        if (!answer) continue;
        if (matched++) put(out, "\n\n");
        put_answer(out, answer, &m->sender.name);
        free(answer);
    }
    return matched;
}

/* The fallback: the configured one, or the list of topics. */
static void put_fallback(buf *out, const char *topics, const herald_bot_types_chat_message_t *m) {
    char *fallback = config("fallback");
    if (fallback) {
        put_answer(out, fallback, &m->sender.name);
        free(fallback);
        return;
    }
    put(out, "I can answer questions about: ");
    put(out, topics);
    put(out, ". Ask me with one of those words.");
}

/* A text message mentioning `ids` (copied). */
static bot_message_t text_message(buf *text, const bot_string_t *ids, size_t n_ids) {
    bot_message_t m;
    memset(&m, 0, sizeof m);
    m.content.tag = HERALD_BOT_TYPES_CONTENT_TEXT;
    m.content.val.text.ptr = (uint8_t *)text->ptr;
    m.content.val.text.len = text->len;
    if (n_ids) {
        m.mentions.user_ids.ptr = malloc(n_ids * sizeof(bot_string_t));
        if (!m.mentions.user_ids.ptr) abort();
        m.mentions.user_ids.len = n_ids;
        for (size_t i = 0; i < n_ids; i++) bot_string_dup_n(&m.mentions.user_ids.ptr[i], (const char *)ids[i].ptr, ids[i].len);
    }
    return m;
}

/* The reply to a message event, if it deserves one. */
static bool on_message(const bot_conversation_event_t *e, buf *text) {
    if (!e->message.is_some) return false;
    const herald_bot_types_chat_message_t *m = &e->message.val;
    char *topics = config("topics");
    if (!topics) {
        log_line(HERALD_BOT_HOST_LEVEL_WARN, "faqbot: no `topics` in the bot's config");
        return false;
    }
    bool addressed = is(&e->event, "message.mentioned") || is(&e->event, "message.direct");
    if (answer_topics(text, topics, m) == 0 && addressed) put_fallback(text, topics, m);
    free(topics);
    return text->len > 0;
}

void exports_bot_on_event(bot_conversation_event_t *e, bot_list_message_t *ret) {
    memset(ret, 0, sizeof *ret);
    buf text = {0};
    bot_message_t reply;
    bool answered = false;
    if (is(&e->event, "member.joined")) {
        char *welcome = config("welcome");
        if (welcome && *welcome && e->user_ids.len) {
            put(&text, welcome);
            reply = text_message(&text, e->user_ids.ptr, e->user_ids.len);
            answered = true;
        }
        free(welcome);
    } else if (on_message(e, &text)) {
        const herald_bot_types_chat_message_t *asked = &e->message.val;
        reply = text_message(&text, &asked->sender.id, 1);
        if (asked->thread_key.is_some) {
            reply.thread_key.is_some = true;
            bot_string_dup_n(&reply.thread_key.val, (const char *)asked->thread_key.val.ptr,
                             asked->thread_key.val.len);
        }
        answered = true;
    }
    if (answered) {
        ret->ptr = malloc(sizeof reply);
        if (!ret->ptr) abort();
        ret->ptr[0] = reply;
        ret->len = 1;
    } else {
        free(text.ptr);
    }
    bot_conversation_event_free(e);
}
