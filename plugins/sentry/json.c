#include "json.h"

#include <stdlib.h>
#include <string.h>

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* Past a string starting at its opening quote, or NULL. */
static const char *skip_string(const char *p, const char *end) {
    if (p >= end || *p != '"') return NULL;
    for (p++; p < end; p++) {
        if (*p == '\\') {
            p++;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return NULL;
}

/* Past any value, or NULL. Depth-limited so hostile nesting cannot exhaust the stack. */
static const char *skip_value(const char *p, const char *end, int depth) {
    p = skip_ws(p, end);
    if (p >= end || depth > 64) return NULL;
    if (*p == '"') return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = skip_ws(p + 1, end);
        if (p < end && *p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                p = skip_string(skip_ws(p, end), end);
                if (!p) return NULL;
                p = skip_ws(p, end);
                if (p >= end || *p != ':') return NULL;
                p++;
            }
            p = skip_value(p, end, depth + 1);
            if (!p) return NULL;
            p = skip_ws(p, end);
            if (p >= end) return NULL;
            if (*p == close) return p + 1;
            if (*p != ',') return NULL;
            p++;
        }
    }
    /* number, true, false, null */
    const char *q = p;
    while (q < end && !strchr(",}] \t\r\n", *q)) q++;
    return q > p ? q : NULL;
}

/* Whether the raw string token [p, q) equals `key` of length n (no escapes in keys). */
static int key_is(const char *p, const char *q, const char *key, size_t n) {
    return (size_t)(q - p) == n + 2 && memcmp(p + 1, key, n) == 0;
}

/* The member `key` of the object at p, or NULL. */
static const char *member(const char *p, const char *end, const char *key, size_t n) {
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return NULL;
    p = skip_ws(p + 1, end);
    while (p < end && *p != '}') {
        const char *k = p, *q = skip_string(p, end);
        if (!q) return NULL;
        p = skip_ws(q, end);
        if (p >= end || *p != ':') return NULL;
        p = skip_ws(p + 1, end);
        if (key_is(k, q, key, n)) return p;
        const char *after = skip_value(p, end, 0);
        if (!after) return NULL;
        p = skip_ws(after, end);
        if (p >= end) return NULL;
        if (*p == ',') p = skip_ws(p + 1, end);
    }
    return NULL;
}

/* Element `index` of the array at p, or NULL. */
static const char *element(const char *p, const char *end, long index) {
    p = skip_ws(p, end);
    if (p >= end || *p != '[') return NULL;
    p = skip_ws(p + 1, end);
    for (long i = 0; p < end && *p != ']'; i++) {
        if (i == index) return p;
        const char *after = skip_value(p, end, 0);
        if (!after) return NULL;
        p = skip_ws(after, end);
        if (p >= end) return NULL;
        if (*p == ',') p = skip_ws(p + 1, end);
    }
    return NULL;
}

json_value json_get(const char *doc, const char *end, const char *path) {
    json_value none = {NULL, NULL};
    const char *p = doc;
    while (p && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        char *stop;
        long index = strtol(path, &stop, 10);
        p = (stop == path + n && n > 0) ? element(p, end, index) : member(p, end, path, n);
        path += n + (dot ? 1 : 0);
    }
    if (!p) return none;
    const char *q = skip_value(p, end, 0);
    if (!q) return none;
    json_value v = {skip_ws(p, end), q};
    return v;
}

int json_is_null(json_value v) {
    return v.start == NULL || (v.end - v.start == 4 && memcmp(v.start, "null", 4) == 0);
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
    if (json_is_null(v) || *v.start == '{' || *v.start == '[') return NULL;
    size_t n = (size_t)(v.end - v.start);
    /* Decoding never grows a string: \uXXXX (6 bytes) becomes at most 3, a pair (12) 4. */
    char *out = malloc(n + 1), *o = out;
    if (!out) return NULL;
    if (*v.start != '"') {
        memcpy(out, v.start, n);
        out[n] = 0;
        return out;
    }
    for (const char *p = v.start + 1; p < v.end - 1; p++) {
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        if (++p >= v.end - 1) break;
        unsigned cp;
        switch (*p) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u':
            if (v.end - 1 - p < 5 || !hex4(p + 1, &cp)) { free(out); return NULL; }
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && v.end - 1 - p >= 7 && p[1] == '\\' && p[2] == 'u') {
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
