/* serve_req.c - request parsing, error bodies, stop strings and key comparison for `tandem serve`
 * (pure functions; see serve_req.h). */
#include "bridge/serve_req.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int td_serve_fail(td_serve_error_t *e, int status, const char *type, const char *code,
                  const char *param, const char *fmt, ...) {
    if (!e) return -1;
    e->status = status;
    e->type = type ? type : "invalid_request_error";
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

static char *s_dup(const char *s) {
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

void td_serve_req_free(td_serve_req_t *r) {
    if (!r) return;
    free(r->model);
    free(r->prompt);
    for (int i = 0; i < r->n_msgs; i++) free(r->msgs[i].role), free(r->msgs[i].content);
    free(r->msgs);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->method);
    free(r->order);
    free(r->verify);
    memset(r, 0, sizeof *r);
    r->max_tokens = r->top_k = r->gamma = r->steps = -1;
    r->temperature = r->top_p = -1;
}

#define BAD(param, ...) td_serve_fail(e, 400, "invalid_request_error", NULL, param, __VA_ARGS__)
#define NOMEM() td_serve_fail(e, 500, "server_error", NULL, NULL, "out of memory")

/* An optional number member in [lo, hi]; integral when integral. 0 = absent or fine, -1 = bad. */
static int s_num(cJSON *o, const char *name, double lo, double hi, int integral, double *out,
                 td_serve_error_t *e) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v)) return BAD(name, "'%s' must be a number", name);
    double d = v->valuedouble;
    if (!isfinite(d) || d < lo || d > hi)
        return BAD(name, "'%s' must be between %g and %g (got %g)", name, lo, hi, d);
    if (integral && d != floor(d)) return BAD(name, "'%s' must be an integer", name);
    *out = d;
    return 0;
}

/* An optional bool member. */
static int s_bool(cJSON *o, const char *name, int *out, td_serve_error_t *e) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) return BAD(name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* An optional string member, duplicated into *out. */
static int s_str(cJSON *o, const char *name, char **out, td_serve_error_t *e) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v)) return BAD(name, "'%s' must be a string", name);
    if (!(*out = s_dup(v->valuestring))) return NOMEM();
    return 0;
}

/* Message content: a string, or an array of {"type":"text","text":...} parts (concatenated). */
static int s_content(cJSON *c, int i, char **out, td_serve_error_t *e) {
    char param[64];
    snprintf(param, sizeof param, "messages[%d].content", i);
    if (cJSON_IsString(c)) {
        if (!(*out = s_dup(c->valuestring))) return NOMEM();
        return 0;
    }
    if (!cJSON_IsArray(c))
        return BAD(param, "'%s' must be a string or an array of text parts", param);
    size_t total = 0;
    cJSON *p;
    cJSON_ArrayForEach(p, c) {
        cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "type"),
              *x = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (!cJSON_IsObject(p) || !cJSON_IsString(t) || strcmp(t->valuestring, "text") != 0 ||
            !cJSON_IsString(x))
            return BAD(param,
                       "'%s': only parts of type \"text\" with a string \"text\" are supported",
                       param);
        total += strlen(x->valuestring);
    }
    char *s = malloc(total + 1);
    if (!s) return NOMEM();
    size_t n = 0;
    cJSON_ArrayForEach(p, c) {
        const char *x = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
        size_t l = strlen(x);
        memcpy(s + n, x, l);
        n += l;
    }
    s[n] = 0;
    *out = s;
    return 0;
}

static int s_messages(cJSON *root, td_serve_req_t *r, td_serve_error_t *e) {
    cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!m) return BAD("messages", "'messages' is required");
    if (!cJSON_IsArray(m)) return BAD("messages", "'messages' must be an array");
    int n = cJSON_GetArraySize(m);
    if (n < 1) return BAD("messages", "'messages' must not be empty");
    if (n > TD_SERVE_MAX_MSGS)
        return BAD("messages", "at most %d messages are accepted", TD_SERVE_MAX_MSGS);
    if (!(r->msgs = calloc((size_t)n, sizeof *r->msgs))) return NOMEM();
    cJSON *it;
    int i = 0;
    cJSON_ArrayForEach(it, m) {
        char param[64];
        snprintf(param, sizeof param, "messages[%d]", i);
        if (!cJSON_IsObject(it)) return BAD(param, "'%s' must be an object", param);
        cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        if (!cJSON_IsString(role)) return BAD(param, "'%s.role' must be a string", param);
        const char *rs = role->valuestring;
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") &&
            strcmp(rs, "developer"))
            return BAD(param,
                       "'%s.role' must be system, developer, user or assistant (got '%.40s')",
                       param, rs);
        cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!c || cJSON_IsNull(c)) return BAD(param, "'%s.content' is required", param);
        /* developer is OpenAI's newer name for system */
        if (!(r->msgs[i].role = s_dup(strcmp(rs, "developer") ? rs : "system"))) return NOMEM();
        r->n_msgs = i + 1;
        if (s_content(c, i, &r->msgs[i].content, e)) return -1;
        i++;
    }
    return 0;
}

static int s_prompt(cJSON *root, td_serve_req_t *r, td_serve_error_t *e) {
    cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!p) return BAD("prompt", "'prompt' is required");
    if (cJSON_IsArray(p)) {
        if (cJSON_GetArraySize(p) != 1 || !cJSON_IsString(cJSON_GetArrayItem(p, 0)))
            return BAD("prompt", "'prompt' must be a string (or an array of exactly one string)");
        p = cJSON_GetArrayItem(p, 0);
    }
    if (!cJSON_IsString(p)) return BAD("prompt", "'prompt' must be a string");
    if (!(r->prompt = s_dup(p->valuestring))) return NOMEM();
    return 0;
}

static int s_stop(cJSON *root, td_serve_req_t *r, td_serve_error_t *e) {
    cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (!s || cJSON_IsNull(s)) return 0;
    cJSON *it;
    if (cJSON_IsString(s)) {
        if (strlen(s->valuestring) > TD_SERVE_MAX_STOP_LEN)
            return BAD("stop", "a stop string is at most %d bytes", TD_SERVE_MAX_STOP_LEN);
        if (!*s->valuestring) return 0;
        if (!(r->stop[0] = s_dup(s->valuestring))) return NOMEM();
        r->n_stop = 1;
        return 0;
    }
    if (!cJSON_IsArray(s)) return BAD("stop", "'stop' must be a string or an array of strings");
    if (cJSON_GetArraySize(s) > TD_SERVE_MAX_STOP)
        return BAD("stop", "at most %d stop strings are accepted", TD_SERVE_MAX_STOP);
    cJSON_ArrayForEach(it, s) {
        if (!cJSON_IsString(it))
            return BAD("stop", "'stop' must be a string or an array of strings");
        if (strlen(it->valuestring) > TD_SERVE_MAX_STOP_LEN)
            return BAD("stop", "a stop string is at most %d bytes", TD_SERVE_MAX_STOP_LEN);
        if (!*it->valuestring) continue;
        if (!(r->stop[r->n_stop] = s_dup(it->valuestring))) return NOMEM();
        r->n_stop++;
    }
    return 0;
}

static int s_tandem(cJSON *root, td_serve_req_t *r, td_serve_error_t *e) {
    cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "tandem");
    if (!t || cJSON_IsNull(t)) return 0;
    if (!cJSON_IsObject(t)) return BAD("tandem", "'tandem' must be an object");
    static const char *known[] = {"method", "gamma", "steps", "order", "verify", "top_k"};
    cJSON *it;
    cJSON_ArrayForEach(it, t) {
        int ok = 0;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (it->string && !strcmp(it->string, known[i])) ok = 1;
        if (!ok)
            return BAD("tandem",
                       "unknown member 'tandem.%.60s' (method, gamma, steps, order, "
                       "verify, top_k)",
                       it->string ? it->string : "");
    }
    double d = -1;
    if (s_str(t, "method", &r->method, e) || s_str(t, "order", &r->order, e) ||
        s_str(t, "verify", &r->verify, e))
        return -1;
    if (s_num(t, "gamma", 1, 256, 1, &d, e)) return -1;
    if (d >= 0) r->gamma = (long)d, d = -1;
    if (s_num(t, "steps", 1, 1024, 1, &d, e)) return -1;
    if (d >= 0) r->steps = (long)d, d = -1;
    if (s_num(t, "top_k", 0, 1 << 24, 1, &d, e)) return -1;
    if (d >= 0) r->top_k = (long)d;
    return 0;
}

int td_serve_req_parse(const char *body, size_t len, td_serve_kind_t kind, td_serve_req_t *r,
                       td_serve_error_t *e) {
    memset(r, 0, sizeof *r);
    td_serve_req_free(r);
    r->kind = kind;
    if (!body || !len) return BAD(NULL, "the request body is empty (expected a JSON object)");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        size_t at = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
        return BAD(NULL, "the request body is not valid JSON (error near byte %zu)", at);
    }
    int rc = -1;
    double d;
    if (!cJSON_IsObject(root)) {
        BAD(NULL, "the request body must be a JSON object");
        goto out;
    }
    if (s_str(root, "model", &r->model, e)) goto out;
    if (kind == TD_SERVE_CHAT ? s_messages(root, r, e) : s_prompt(root, r, e)) goto out;
    d = -1;
    if (s_num(root, "max_tokens", 0, 1 << 24, 1, &d, e)) goto out;
    if (d >= 0) r->max_tokens = (long)d;
    d = -1;
    if (s_num(root, "max_completion_tokens", 0, 1 << 24, 1, &d, e)) goto out;
    if (d >= 0) r->max_tokens = (long)d;
    if (s_num(root, "temperature", 0, 2, 0, &r->temperature, e)) goto out;
    if (s_num(root, "top_p", 0, 1, 0, &r->top_p, e)) goto out;
    if (r->top_p == 0) r->top_p = 1e-9; /* "only the most likely token" */
    d = -1;
    if (s_num(root, "top_k", 0, 1 << 24, 1, &d, e)) goto out;
    if (d >= 0) r->top_k = (long)d;
    d = -1;
    /* OpenAI's seed is a 64-bit integer; doubles keep 53 bits, which is what JSON gives anyway */
    if (s_num(root, "seed", -9007199254740992.0, 9007199254740992.0, 1, &d, e)) goto out;
    if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(root, "seed")))
        r->has_seed = 1, r->seed = (uint64_t)(int64_t)d;
    if (s_bool(root, "stream", &r->stream, e)) goto out;
    cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) {
            BAD("stream_options", "'stream_options' must be an object");
            goto out;
        }
        if (!r->stream) {
            BAD("stream_options", "'stream_options' is only allowed when 'stream' is true");
            goto out;
        }
        if (s_bool(so, "include_usage", &r->include_usage, e)) goto out;
    }
    d = 1;
    if (s_num(root, "n", 1, 1e9, 1, &d, e)) goto out;
    if (d != 1) {
        BAD("n", "only n = 1 is supported");
        goto out;
    }
    d = 1;
    if (s_num(root, "best_of", 1, 1e9, 1, &d, e)) goto out;
    if (d != 1) {
        BAD("best_of", "only best_of = 1 is supported");
        goto out;
    }
    int flag = 0;
    if (s_bool(root, "echo", &flag, e)) goto out;
    if (flag) {
        BAD("echo", "'echo' is not supported");
        goto out;
    }
    cJSON *lp = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
    if (lp && !cJSON_IsNull(lp) && !cJSON_IsFalse(lp)) {
        BAD("logprobs", "'logprobs' is not supported");
        goto out;
    }
    static const char *unsupported[] = {"tools",         "functions", "tool_choice",
                                        "function_call", "suffix",    "logit_bias"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(root, unsupported[i]);
        if (v && !cJSON_IsNull(v) &&
            !((cJSON_IsArray(v) || cJSON_IsObject(v)) && cJSON_GetArraySize(v) == 0) &&
            !(cJSON_IsString(v) && (!*v->valuestring || !strcmp(v->valuestring, "none")))) {
            BAD(unsupported[i], "'%s' is not supported", unsupported[i]);
            goto out;
        }
    }
    cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
    if (rf && !cJSON_IsNull(rf)) {
        cJSON *t = cJSON_GetObjectItemCaseSensitive(rf, "type");
        if (!cJSON_IsObject(rf) || !cJSON_IsString(t) || strcmp(t->valuestring, "text") != 0) {
            BAD("response_format", "only response_format {\"type\": \"text\"} is supported");
            goto out;
        }
    }
    const char *pen[] = {"frequency_penalty", "presence_penalty"};
    for (int i = 0; i < 2; i++) {
        d = 0;
        if (s_num(root, pen[i], -2, 2, 0, &d, e)) goto out;
        if (d != 0) {
            BAD(pen[i], "'%s' is not supported (only 0)", pen[i]);
            goto out;
        }
    }
    if (s_stop(root, r, e) || s_tandem(root, r, e)) goto out;
    rc = 0;
out:
    cJSON_Delete(root);
    if (rc) td_serve_req_free(r), r->kind = kind;
    return rc;
}

char *td_serve_error_json(const td_serve_error_t *e) {
    cJSON *root = cJSON_CreateObject(), *o = cJSON_CreateObject();
    if (!root || !o) {
        cJSON_Delete(root);
        cJSON_Delete(o);
        return NULL;
    }
    cJSON_AddItemToObject(root, "error", o);
    cJSON_AddStringToObject(o, "message", e->message);
    cJSON_AddStringToObject(o, "type", e->type ? e->type : "invalid_request_error");
    if (e->param[0])
        cJSON_AddStringToObject(o, "param", e->param);
    else
        cJSON_AddNullToObject(o, "param");
    if (e->code)
        cJSON_AddStringToObject(o, "code", e->code);
    else
        cJSON_AddNullToObject(o, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

size_t td_serve_stop_scan(const char *text, size_t len, size_t emitted, char *const *stop,
                          int n_stop, int *hit) {
    *hit = 0;
    if (emitted > len) emitted = len;
    if (n_stop <= 0) return len;
    /* a stop string may begin before `emitted` only if it was held back, which never happens for
     * bytes already sent: search from the earliest start a held-back match could have */
    size_t best = len;
    for (int i = 0; i < n_stop; i++) {
        size_t sl = stop[i] ? strlen(stop[i]) : 0;
        if (!sl || sl > len) continue;
        for (size_t p = emitted; p + sl <= len; p++)
            if (p < best && !memcmp(text + p, stop[i], sl)) {
                best = p;
                break;
            }
    }
    if (best < len) {
        *hit = 1;
        return best;
    }
    /* hold back the longest tail of text[emitted..len) that is a proper prefix of a stop string */
    size_t hold = 0;
    for (int i = 0; i < n_stop; i++) {
        size_t sl = stop[i] ? strlen(stop[i]) : 0;
        for (size_t k = sl > 1 ? sl - 1 : 0; k > hold; k--) {
            if (k > len - emitted) continue;
            if (!memcmp(text + len - k, stop[i], k)) {
                hold = k;
                break;
            }
        }
    }
    return len - hold;
}

int td_serve_key_equal(const char *have, const char *want) {
    if (!have || !want) return 0;
    size_t wl = strlen(want), hl = strlen(have);
    volatile unsigned char diff = (unsigned char)(wl != hl);
    for (size_t i = 0; i < wl; i++) {
        unsigned char h = i < hl ? (unsigned char)have[i] : 0;
        diff |= (unsigned char)(h ^ (unsigned char)want[i]);
    }
    return diff == 0;
}
