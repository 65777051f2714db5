/* chat.c - built-in chat templates (ChatML as in Qwen2.5 / Dream, LLaMA-3 headers as in LLaDA)
 * and their detection from a checkpoint's tokenizer_config.json.
 *
 * tandem does not run jinja: it recognises the template family and renders plain
 * system/user/assistant conversations byte for byte as HF's apply_chat_template does for those
 * families (tests/test_chat.c checks that against renders made by jinja through transformers).
 * Tool calls and Qwen's special rendering of the "tool" role are not reproduced. */
#include "model/chat.h"

#include "model/gguf.h"
#include "model/tensor_source.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a growable string ---- */

typedef struct s_buf {
    char *p;
    size_t len, cap;
    int oom;
} s_buf_t;

static void s_put(s_buf_t *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void s_puts(s_buf_t *b, const char *s) { s_put(b, s, strlen(s)); }

/* ---- Python's str.strip() on UTF-8 ---- */

static int s_is_py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Decodes the UTF-8 sequence at s[0..n) into *c; returns its length, 0 when invalid. */
static int s_utf8_decode(const unsigned char *s, size_t n, uint32_t *c) {
    if (n == 0) return 0;
    if (s[0] < 0x80) {
        *c = s[0];
        return 1;
    }
    int len = (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3 : (s[0] & 0xf8) == 0xf0 ? 4 : 0;
    if (len == 0 || (size_t)len > n) return 0;
    uint32_t v = s[0] & (0x7f >> len);
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    *c = v;
    return len;
}

/* The byte range of s left after stripping Python whitespace at both ends. */
static void s_py_strip(const char *s, const char **start, size_t *len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), a = 0;
    uint32_t c;
    int l;
    while (a < n && (l = s_utf8_decode(p + a, n - a, &c)) > 0 && s_is_py_space(c)) a += (size_t)l;
    size_t e = n;
    while (e > a) {
        /* step back to the start of the last code point */
        size_t b = e - 1;
        while (b > a && (p[b] & 0xc0) == 0x80 && e - b < 4) b--;
        l = s_utf8_decode(p + b, e - b, &c);
        if (l <= 0 || (size_t)l != e - b || !s_is_py_space(c)) break;
        e = b;
    }
    *start = s + a;
    *len = e - a;
}

/* ---- names ---- */

int td_chat_kind_from_name(const char *name) {
    if (!name) return -1;
    if (strcmp(name, "none") == 0) return TD_CHAT_NONE;
    if (strcmp(name, "chatml") == 0) return TD_CHAT_CHATML;
    if (strcmp(name, "llama3") == 0) return TD_CHAT_LLAMA3;
    return -1;
}

const char *td_chat_kind_name(td_chat_kind_t k) {
    switch (k) {
    case TD_CHAT_NONE:
        return "none";
    case TD_CHAT_CHATML:
        return "chatml";
    case TD_CHAT_LLAMA3:
        return "llama3";
    }
    return "unknown";
}

/* ---- rendering ---- */

int td_chat_apply_ex(td_chat_kind_t kind, const char *default_system, const char *bos,
                     const td_chat_msg_t *msgs, int n, int add_generation_prompt, char **out,
                     td_err_t *err) {
    if (!out) return td_err_set(err, TD_ERR_ARG, "chat: out is NULL");
    *out = NULL;
    if (n < 0 || (n > 0 && !msgs))
        return td_err_set(err, TD_ERR_ARG, "chat: bad message list (n = %d)", n);
    if (kind != TD_CHAT_NONE && kind != TD_CHAT_CHATML && kind != TD_CHAT_LLAMA3)
        return td_err_set(err, TD_ERR_ARG, "chat: unknown template kind %d", (int)kind);
    for (int i = 0; i < n; i++) {
        if (!msgs[i].role) return td_err_set(err, TD_ERR_ARG, "chat: message %d has no role", i);
        if (!msgs[i].content)
            return td_err_set(err, TD_ERR_ARG, "chat: message %d (%s) has no content", i,
                              msgs[i].role);
    }
    s_buf_t b = {0};
    s_put(&b, "", 0);
    switch (kind) {
    case TD_CHAT_NONE:
        for (int i = 0; i < n; i++) s_puts(&b, msgs[i].content);
        break;
    case TD_CHAT_CHATML:
        if (default_system && (n == 0 || strcmp(msgs[0].role, "system") != 0)) {
            s_puts(&b, "<|im_start|>system\n");
            s_puts(&b, default_system);
            s_puts(&b, "<|im_end|>\n");
        }
        for (int i = 0; i < n; i++) {
            s_puts(&b, "<|im_start|>");
            s_puts(&b, msgs[i].role);
            s_puts(&b, "\n");
            s_puts(&b, msgs[i].content);
            s_puts(&b, "<|im_end|>\n");
        }
        if (add_generation_prompt) s_puts(&b, "<|im_start|>assistant\n");
        break;
    case TD_CHAT_LLAMA3:
        for (int i = 0; i < n; i++) {
            if (i == 0 && bos) s_puts(&b, bos);
            s_puts(&b, "<|start_header_id|>");
            s_puts(&b, msgs[i].role);
            s_puts(&b, "<|end_header_id|>\n\n");
            const char *c;
            size_t len;
            s_py_strip(msgs[i].content, &c, &len);
            s_put(&b, c, len);
            s_puts(&b, "<|eot_id|>");
        }
        if (add_generation_prompt) s_puts(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    }
    if (b.oom) {
        free(b.p);
        return td_err_set(err, TD_ERR_NOMEM, "chat: out of memory rendering %d messages", n);
    }
    *out = b.p;
    return TD_OK;
}

int td_chat_apply(td_chat_kind_t kind, const td_chat_msg_t *msgs, int n, int add_generation_prompt,
                  char **out, td_err_t *err) {
    td_chat_format_t f;
    td_chat_format_builtin(kind, &f);
    f.kind = kind; /* keep an invalid kind invalid, for td_chat_apply_ex to reject */
    return td_chat_format_apply(&f, msgs, n, add_generation_prompt, out, err);
}

int td_chat_format_apply(const td_chat_format_t *fmt, const td_chat_msg_t *msgs, int n,
                         int add_generation_prompt, char **out, td_err_t *err) {
    if (!fmt) {
        if (out) *out = NULL;
        return td_err_set(err, TD_ERR_ARG, "chat: no format");
    }
    return td_chat_apply_ex(fmt->kind, fmt->has_default_system ? fmt->default_system : NULL,
                            fmt->bos, msgs, n, add_generation_prompt, out, err);
}

void td_chat_format_builtin(td_chat_kind_t kind, td_chat_format_t *fmt) {
    memset(fmt, 0, sizeof *fmt);
    fmt->kind = kind;
    if (kind == TD_CHAT_CHATML) {
        fmt->has_default_system = 1;
        snprintf(fmt->default_system, sizeof fmt->default_system, "%s", TD_CHAT_QWEN_SYSTEM);
    } else if (kind == TD_CHAT_LLAMA3) {
        snprintf(fmt->bos, sizeof fmt->bos, "%s", TD_CHAT_LLADA_BOS);
    }
}

/* ---- detection ---- */

/* Appends the UTF-8 encoding of code point c. */
static void s_put_utf8(s_buf_t *b, uint32_t c) {
    char t[4];
    size_t n;
    if (c < 0x80) {
        t[0] = (char)c;
        n = 1;
    } else if (c < 0x800) {
        t[0] = (char)(0xc0 | (c >> 6));
        t[1] = (char)(0x80 | (c & 0x3f));
        n = 2;
    } else if (c < 0x10000) {
        t[0] = (char)(0xe0 | (c >> 12));
        t[1] = (char)(0x80 | ((c >> 6) & 0x3f));
        t[2] = (char)(0x80 | (c & 0x3f));
        n = 3;
    } else {
        t[0] = (char)(0xf0 | (c >> 18));
        t[1] = (char)(0x80 | ((c >> 12) & 0x3f));
        t[2] = (char)(0x80 | ((c >> 6) & 0x3f));
        t[3] = (char)(0x80 | (c & 0x3f));
        n = 4;
    }
    s_put(b, t, n);
}

static int s_hex(const char *s, int n, uint32_t *v) {
    uint32_t x = 0;
    for (int i = 0; i < n; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return 0;
        x = x * 16 + (uint32_t)d;
    }
    *v = x;
    return 1;
}

/* Parses the jinja string literal whose opening quote is at s[0] (Python escapes: \n \t \r \\
 * \' \" \xHH \uXXXX \UXXXXXXXX; others are kept verbatim) into b. Returns the length consumed
 * including both quotes, 0 when the literal is not closed. */
static size_t s_parse_literal(const char *s, s_buf_t *b) {
    char q = s[0];
    size_t i = 1;
    while (s[i] && s[i] != q) {
        if (s[i] != '\\') {
            s_put(b, s + i, 1);
            i++;
            continue;
        }
        char e = s[i + 1];
        uint32_t v;
        int hexn = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
        if (e == '\0') return 0;
        if (hexn && s_hex(s + i + 2, hexn, &v)) {
            s_put_utf8(b, v);
            i += 2 + (size_t)hexn;
            continue;
        }
        /* the escape's character, or the two characters kept as they are */
        const char *c = e == 'n' ? "\n" : e == 't' ? "\t" : e == 'r' ? "\r" : NULL;
        if (e == '\\' || e == '\'' || e == '"') c = s + i + 1;
        s_put(b, c ? c : s + i, c ? 1 : 2);
        i += 2;
    }
    return s[i] == q ? i + 1 : 0;
}

/* Looks for the literal '<|im_start|>system\n' TEXT '<|im_end|>\n' in tmpl. Returns 1 and TEXT
 * in *text (malloc'd) when found, 0 when not, TD_ERR_NOMEM. */
static int s_find_default_system(const char *tmpl, char **text) {
    static const char head[] = "<|im_start|>system\n", tail[] = "<|im_end|>\n";
    const size_t hl = sizeof head - 1, tl = sizeof tail - 1;
    *text = NULL;
    for (const char *p = strstr(tmpl, "<|im_start|>system"); p;
         p = strstr(p + 1, "<|im_start|>system")) {
        if (p == tmpl || (p[-1] != '\'' && p[-1] != '"')) continue;
        s_buf_t lit = {0};
        size_t used = s_parse_literal(p - 1, &lit);
        if (lit.oom) {
            free(lit.p);
            return TD_ERR_NOMEM;
        }
        if (used && lit.len >= hl + tl && memcmp(lit.p, head, hl) == 0 &&
            memcmp(lit.p + lit.len - tl, tail, tl) == 0) {
            memmove(lit.p, lit.p + hl, lit.len - hl - tl);
            lit.p[lit.len - hl - tl] = '\0';
            *text = lit.p;
            return 1;
        }
        free(lit.p);
    }
    return 0;
}

/* Copies a string into a fixed buffer; TD_ERR_UNSUPPORTED when it does not fit. */
static int s_copy(char *dst, size_t cap, const char *src, const char *what, td_err_t *err) {
    size_t n = strlen(src);
    if (n >= cap)
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "chat: %s is %zu bytes, tandem keeps at most %zu", what, n, cap - 1);
    memcpy(dst, src, n + 1);
    return TD_OK;
}

/* The chat template text in a parsed tokenizer_config.json: NULL when absent or null. */
static int s_config_template(const cJSON *root, const char **tmpl, td_err_t *err) {
    *tmpl = NULL;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    if (!t || cJSON_IsNull(t)) return TD_OK;
    if (cJSON_IsString(t)) {
        *tmpl = t->valuestring;
        return TD_OK;
    }
    if (cJSON_IsArray(t)) {
        const cJSON *e, *first = NULL;
        cJSON_ArrayForEach(e, t) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
            const cJSON *body = cJSON_GetObjectItemCaseSensitive(e, "template");
            if (!cJSON_IsString(body)) continue;
            if (!first) first = body;
            if (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0) {
                *tmpl = body->valuestring;
                return TD_OK;
            }
        }
        if (first) *tmpl = first->valuestring;
        return TD_OK;
    }
    return td_err_set(err, TD_ERR_FORMAT,
                      "chat: tokenizer_config.json chat_template is neither a string nor a list");
}

/* Recognises the family of template text tmpl and reads its strings into fmt (already NONE). */
static int s_from_template(const char *tmpl, const char *bos_token, td_chat_format_t *fmt,
                           td_err_t *err) {
    int rc = TD_OK;

    if (strstr(tmpl, "<|im_start|>")) {
        fmt->kind = TD_CHAT_CHATML;
        char *text = NULL;
        int found = s_find_default_system(tmpl, &text);
        if (found < 0) {
            rc = td_err_set(err, found, "chat: out of memory reading the template");
        } else if (found) {
            rc = s_copy(fmt->default_system, sizeof fmt->default_system, text,
                        "the template's default system prompt", err);
            fmt->has_default_system = rc == TD_OK;
        }
        free(text);
    } else if (strstr(tmpl, "<|start_header_id|>")) {
        fmt->kind = TD_CHAT_LLAMA3;
        if (strstr(tmpl, "bos_token") && bos_token)
            rc = s_copy(fmt->bos, sizeof fmt->bos, bos_token, "bos_token", err);
        else if (strstr(tmpl, "<|begin_of_text|>"))
            rc = s_copy(fmt->bos, sizeof fmt->bos, "<|begin_of_text|>", "bos", err);
    } else {
        td_log(TD_LOG_WARN,
               "chat: unrecognised chat template family; using raw text (no template)");
    }
    return rc;
}

int td_chat_format_from_template(const char *tmpl, const char *bos_token, td_chat_format_t *fmt,
                                 td_err_t *err) {
    if (!fmt) return td_err_set(err, TD_ERR_ARG, "chat: fmt is NULL");
    memset(fmt, 0, sizeof *fmt);
    fmt->kind = TD_CHAT_NONE;
    if (!tmpl || !*tmpl) return TD_OK;
    int rc = s_from_template(tmpl, bos_token, fmt, err);
    if (rc < 0) {
        memset(fmt, 0, sizeof *fmt);
        fmt->kind = TD_CHAT_NONE;
    }
    return rc;
}

int td_chat_format_parse(const char *config_json, size_t config_len, const char *jinja,
                         td_chat_format_t *fmt, td_err_t *err) {
    memset(fmt, 0, sizeof *fmt);
    fmt->kind = TD_CHAT_NONE;
    cJSON *root = NULL;
    const char *tmpl = NULL, *bos_token = NULL;
    int rc = TD_OK;
    if (config_json) {
        root = cJSON_ParseWithLength(config_json, config_len);
        if (!root || !cJSON_IsObject(root)) {
            cJSON_Delete(root);
            return td_err_set(err, TD_ERR_FORMAT,
                              "chat: tokenizer_config.json is not a JSON object");
        }
        rc = s_config_template(root, &tmpl, err);
        if (rc < 0) goto done;
        const cJSON *bt = cJSON_GetObjectItemCaseSensitive(root, "bos_token");
        if (cJSON_IsObject(bt)) bt = cJSON_GetObjectItemCaseSensitive(bt, "content");
        if (cJSON_IsString(bt)) bos_token = bt->valuestring;
    }
    if (!tmpl) tmpl = jinja;
    if (tmpl) rc = s_from_template(tmpl, bos_token, fmt, err);
done:
    cJSON_Delete(root);
    if (rc < 0) {
        memset(fmt, 0, sizeof *fmt);
        fmt->kind = TD_CHAT_NONE;
    }
    return rc;
}

/* Reads dir/name into *data; *data stays NULL (and TD_OK) when the file does not exist, TD_ERR_IO
 * when it exists but cannot be read. */
static int s_read_optional(const char *dir, const char *name, char **data, size_t *len,
                           td_err_t *err) {
    char path[PATH_MAX];
    *data = NULL;
    *len = 0;
    td_path_join(path, sizeof path, dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT || errno == ENOTDIR) return TD_OK;
        return td_err_set(err, TD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    fclose(f);
    return td_read_file(path, data, len, err);
}

/* A GGUF checkpoint: tokenizer.chat_template is the template text, the BOS string is the token
 * tokenizer.ggml.bos_token_id names; both go through td_chat_format_parse as a
 * tokenizer_config.json would carry them. */
static int s_detect_gguf(const char *path, td_chat_format_t *fmt, td_err_t *err) {
    td_gguf_t *g = td_gguf_open(path, err);
    if (!g) return err ? err->code : TD_ERR;
    const char *tmpl = NULL;
    int64_t bos = -1;
    const td_gguf_kv_t *toks = NULL;
    int rc = td_gguf_get_str(g, "tokenizer.chat_template", &tmpl, err);
    if (rc == 1) rc = TD_OK, tmpl = NULL;
    if (rc == TD_OK && td_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &bos, err) < 0)
        rc = TD_ERR_FORMAT;
    if (rc == TD_OK && td_gguf_get_arr(g, "tokenizer.ggml.tokens", TD_GGUF_STRING, &toks, err) < 0)
        rc = TD_ERR_FORMAT;
    cJSON *o = rc == TD_OK && tmpl ? cJSON_CreateObject() : NULL;
    if (o) {
        cJSON_AddStringToObject(o, "chat_template", tmpl);
        uint64_t len = 0;
        const char *b = toks && bos >= 0 ? td_gguf_arr_str(toks, (uint64_t)bos, &len) : NULL;
        if (b && len < 256) {
            char buf[256];
            memcpy(buf, b, len);
            buf[len] = 0;
            cJSON_AddStringToObject(o, "bos_token", buf);
        }
        char *text = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!text)
            rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
        else
            rc = td_chat_format_parse(text, strlen(text), NULL, fmt, err);
        cJSON_free(text);
    }
    td_gguf_destroy(&g);
    return rc;
}

int td_chat_format_detect(const char *model_dir, td_chat_format_t *fmt, td_err_t *err) {
    memset(fmt, 0, sizeof *fmt);
    fmt->kind = TD_CHAT_NONE;
    if (!model_dir) return td_err_set(err, TD_ERR_ARG, "chat: no model directory");
    if (td_path_is_gguf(model_dir)) {
        int rc = s_detect_gguf(model_dir, fmt, err);
        if (rc < 0) {
            memset(fmt, 0, sizeof *fmt);
            fmt->kind = TD_CHAT_NONE;
        }
        return rc;
    }
    char *cfg = NULL, *jinja = NULL;
    size_t cfg_len = 0, jinja_len = 0;
    int rc = s_read_optional(model_dir, "tokenizer_config.json", &cfg, &cfg_len, err);
    if (rc == TD_OK)
        rc = s_read_optional(model_dir, "chat_template.jinja", &jinja, &jinja_len, err);
    if (rc == TD_OK) rc = td_chat_format_parse(cfg, cfg_len, jinja, fmt, err);
    if (rc < 0) td_err_prefix(err, "%s", model_dir);
    free(cfg);
    free(jinja);
    return rc;
}

td_chat_kind_t td_chat_detect(const char *model_dir) {
    td_chat_format_t f;
    td_err_t err = {0};
    if (td_chat_format_detect(model_dir, &f, &err) < 0) {
        td_log(TD_LOG_WARN, "%s", err.msg);
        return TD_CHAT_NONE;
    }
    return f.kind;
}
