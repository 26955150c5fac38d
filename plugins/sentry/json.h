/* A small JSON reader for plugins. `json_parse` reads the raw body once into a flat array of
 * tokens (one malloc'ed array, no allocation per value); each token knows where the value after
 * it starts, so a lookup by dotted path jumps over whole objects and arrays instead of reading
 * them again. Strings are decoded only when asked for. Never reads past the end of the body;
 * malformed input (or nesting deeper than JSON_MAX_DEPTH) fails the parse. */
#ifndef HERALD_JSON_H
#define HERALD_JSON_H

#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 64

typedef struct {
    const char *start; /* first byte of the value */
    const char *end;   /* one past its last byte */
    uint32_t next;     /* index of the token after this value and everything inside it */
    char kind;         /* '{', '[', '"', or 'v' (a number, true, false or null) */
} json_token;

typedef struct {
    json_token *tokens;
    uint32_t count, cap;
} json_doc;

/* A value in a parsed document, or none (tok == NULL): absent, or the parse failed. */
typedef struct {
    const json_doc *doc;
    const json_token *tok;
} json_value;

/* Parses [text, text + len) into `doc`; 0 when it is not JSON (the document is then empty). */
int json_parse(json_doc *doc, const char *text, size_t len);

/* Frees the tokens. */
void json_free(json_doc *doc);

/* The document's top-level value. */
json_value json_root(const json_doc *doc);

/* The value at `path` ("data.event.title", "tags.0.1") under `v`, or none. Array elements are
 * addressed by decimal index. */
json_value json_get(json_value v, const char *path);

/* Element `index` of the array `v`, or none. */
json_value json_item(json_value v, size_t index);

/* A string value decoded to UTF-8 and NUL-terminated (malloc'ed), or NULL if `v` is none, null,
 * an object or an array. Numbers, true/false are returned as their text. */
char *json_text(json_value v);

/* Whether `v` is JSON null or none. */
int json_is_null(json_value v);

#endif
