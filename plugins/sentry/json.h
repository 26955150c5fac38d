/* A small JSON reader for plugins: finds values by dotted path in the raw body without
 * building a tree, and decodes strings. Never reads past `end`; malformed input yields NULL. */
#ifndef HERALD_JSON_H
#define HERALD_JSON_H

#include <stddef.h>

typedef struct {
    const char *start; /* first byte of the value */
    const char *end;   /* one past its last byte */
} json_value;

/* The value at `path` ("data.event.title", "tags.0.1") in the document [doc, end), or a value
 * with start == NULL. Array elements are addressed by decimal index. */
json_value json_get(const char *doc, const char *end, const char *path);

/* A string value decoded to UTF-8 and NUL-terminated (malloc'ed), or NULL if `v` is not a
 * string. Numbers, true/false are returned as their text. */
char *json_text(json_value v);

/* Whether `v` is JSON null or absent. */
int json_is_null(json_value v);

#endif
