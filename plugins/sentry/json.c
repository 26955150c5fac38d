#include "json.h"

#include <stdlib.h>
#include <string.h>

/* Byte classes: JSON whitespace, and the bytes a number or true/false/null is made of. */
enum { WS = 1, SCALAR = 2 };
static const unsigned char class_of[256] = {
    [' '] = WS, ['\t'] = WS, ['\n'] = WS, ['\r'] = WS,
    ['0' ... '9'] = SCALAR, ['a' ... 'z'] = SCALAR, ['A' ... 'Z'] = SCALAR,
    ['-'] = SCALAR, ['+'] = SCALAR, ['.'] = SCALAR,
};

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* Past whitespace. Indentation after a newline (pretty-printed bodies) is skipped eight spaces
 * at a time. */
static const char *skip_ws(const char *p, const char *end) {
    while (p < end && class_of[(unsigned char)*p] == WS) {
        if (*p++ != '\n') continue;
        uint64_t x;
        while (end - p >= 8 && (memcpy(&x, p, 8), x == ONES * ' ')) p += 8;
    }
    return p;
}

/* The high bit of each byte of x that equals `byte`; the lowest one set is the first match. */
static uint64_t bytes_equal(uint64_t x, unsigned char byte) {
    uint64_t y = x ^ (ONES * byte);
    return (y - ONES) & ~y & HIGHS;
}

/* Past the string whose opening quote is at p, or NULL. Reads eight bytes at a time to the
 * next quote or backslash (most of a webhook's bytes are in strings). */
static const char *string_end(const char *p, const char *end) {
    for (p++; p < end; p++) {
        while (end - p >= 8) {
            uint64_t x;
            memcpy(&x, p, 8);
            uint64_t hits = bytes_equal(x, '"') | bytes_equal(x, '\\');
            if (hits) {
                p += __builtin_ctzll(hits) / 8;
                break;
            }
            p += 8;
        }
        if (p >= end) break;
        if (*p == '\\') {
            p++;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return NULL;
}

/* Room for one more token; 0 when out of memory. */
static int reserve(json_doc *d) {
    if (d->count < d->cap) return 1;
    uint32_t cap = d->cap * 2;
    json_token *tokens = realloc(d->tokens, cap * sizeof *tokens);
    if (!tokens) return 0;
    d->tokens = tokens;
    d->cap = cap;
    return 1;
}

/* Reads [p, end) into tokens in one loop (no recursion): `open` holds the objects and arrays
 * not closed yet; a string, number or literal is complete when read, a container when its
 * closing bracket comes. */
static int tokenize(json_doc *d, const char *p, const char *end) {
    uint32_t open[JSON_MAX_DEPTH];
    int depth = 0;
    json_token *t;
value:
    p = skip_ws(p, end);
    if (p >= end || !reserve(d)) return 0;
    t = &d->tokens[d->count++];
    t->start = p;
    t->kind = *p;
    if (*p == '"') {
        if (!(p = string_end(p, end))) return 0;
    } else if (*p == '{' || *p == '[') {
        if (depth == JSON_MAX_DEPTH) return 0;
        open[depth++] = d->count - 1;
        p = skip_ws(p + 1, end);
        if (p < end && (*p == '}' || *p == ']')) goto close;
        if (t->kind == '{') goto key;
        goto value;
    } else {
        const char *q = p;
        while (q < end && class_of[(unsigned char)*q] == SCALAR) q++;
        if (q == p) return 0;
        t->kind = 'v';
        p = q;
    }
    t->end = p;
    t->next = d->count;
after:
    if (depth == 0) return skip_ws(p, end) == end;
    p = skip_ws(p, end);
    if (p >= end) return 0;
    if (*p == ',') {
        p++;
        if (d->tokens[open[depth - 1]].kind == '[') goto value;
        goto key;
    }
close:
    t = &d->tokens[open[depth - 1]];
    if (*p != (t->kind == '{' ? '}' : ']')) return 0;
    t->end = ++p;
    t->next = d->count;
    depth--;
    goto after;
key:
    p = skip_ws(p, end);
    if (p >= end || *p != '"' || !reserve(d)) return 0;
    t = &d->tokens[d->count++];
    t->start = p;
    t->kind = '"';
    if (!(p = string_end(p, end))) return 0;
    t->end = p;
    t->next = d->count;
    p = skip_ws(p, end);
    if (p >= end || *p != ':') return 0;
    p++;
    goto value;
}

int json_parse(json_doc *doc, const char *text, size_t len) {
    memset(doc, 0, sizeof *doc);
    /* About one token per 16 bytes in webhooks seen so far; grown by doubling past that. */
    doc->cap = (uint32_t)(len / 16) + 16;
    if (!(doc->tokens = malloc(doc->cap * sizeof *doc->tokens))) return 0;
    if (tokenize(doc, text, text + len)) return 1;
    doc->count = 0;
    return 0;
}

void json_free(json_doc *doc) {
    free(doc->tokens);
    memset(doc, 0, sizeof *doc);
}

json_value json_root(const json_doc *doc) {
    json_value v = {doc, doc->count ? &doc->tokens[0] : NULL};
    return v;
}

static json_value none(const json_doc *doc) {
    json_value v = {doc, NULL};
    return v;
}

/* The member `key` (n bytes, no escapes) of the object v, or none. */
static json_value member(json_value v, const char *key, size_t n) {
    if (!v.tok || v.tok->kind != '{') return none(v.doc);
    const json_token *tokens = v.doc->tokens;
    uint32_t i = (uint32_t)(v.tok - tokens) + 1;
    while (i < v.tok->next) {
        const json_token *k = &tokens[i];
        if ((size_t)(k->end - k->start) == n + 2 && memcmp(k->start + 1, key, n) == 0) {
            json_value found = {v.doc, &tokens[i + 1]};
            return found;
        }
        i = tokens[i + 1].next;
    }
    return none(v.doc);
}

json_value json_item(json_value v, size_t index) {
    if (!v.tok || v.tok->kind != '[') return none(v.doc);
    const json_token *tokens = v.doc->tokens;
    uint32_t i = (uint32_t)(v.tok - tokens) + 1;
    for (size_t k = 0; i < v.tok->next; k++, i = tokens[i].next) {
        if (k == index) {
            json_value found = {v.doc, &tokens[i]};
            return found;
        }
    }
    return none(v.doc);
}

json_value json_get(json_value v, const char *path) {
    while (v.tok && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path), index = 0, digits = 0;
        while (digits < n && path[digits] >= '0' && path[digits] <= '9') {
            index = index * 10 + (size_t)(path[digits++] - '0');
        }
        v = (n > 0 && digits == n) ? json_item(v, index) : member(v, path, n);
        path += n + (dot ? 1 : 0);
    }
    return v;
}

int json_is_null(json_value v) {
    return v.tok == NULL || (v.tok->end - v.tok->start == 4 && memcmp(v.tok->start, "null", 4) == 0);
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static char *put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    return o;
}

char *json_text(json_value v) {
    if (json_is_null(v) || v.tok->kind == '{' || v.tok->kind == '[') return NULL;
    const char *start = v.tok->start, *end = v.tok->end;
    size_t n = (size_t)(end - start);
    /* Decoding never grows a string: \uXXXX (6 bytes) becomes at most 3, a pair (12) 4. */
    char *out = malloc(n + 1), *o = out;
    if (!out) return NULL;
    if (v.tok->kind != '"') {
        memcpy(out, start, n);
        out[n] = 0;
        return out;
    }
    for (const char *p = start + 1; p < end - 1; p++) {
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        if (++p >= end - 1) break;
        unsigned cp;
        switch (*p) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u':
            if (end - 1 - p < 5 || !hex4(p + 1, &cp)) { free(out); return NULL; }
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && end - 1 - p >= 7 && p[1] == '\\' && p[2] == 'u') {
                unsigned lo;
                if (hex4(p + 3, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                }
            }
            if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD; /* a lone surrogate */
            o = put_utf8(o, cp);
            break;
        default: *o++ = *p; /* \" \\ \/ */
        }
    }
    *o = 0;
    return out;
}
