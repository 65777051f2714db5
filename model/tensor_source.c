/* tensor_source.c - the tensor source interface (tensor_source.h) over safetensors and GGUF.
 *
 * Each format fills one table of functions; the source object holds the table and the file. */
#include "model/tensor_source.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct src_ops {
    int (*find)(const td_tensor_source_t *s, const char *name, td_tensor_info_t *out);
    int64_t (*count)(const td_tensor_source_t *s);
    int (*at)(const td_tensor_source_t *s, int64_t i, td_tensor_info_t *out);
    const char *(*metadata)(const td_tensor_source_t *s, const char *key);
    const char *(*path)(const td_tensor_source_t *s);
    void (*close)(td_tensor_source_t *s);
} src_ops_t;

struct td_tensor_source {
    const src_ops_t *ops;
    td_tensor_format_t format;
    td_safetensors_t *st;
    td_gguf_t *gguf;
};

/* --- safetensors ------------------------------------------------------------------------------ */

static void s_st_info(const td_tensor_source_t *s, const td_st_tensor_t *t, td_tensor_info_t *o) {
    memset(o, 0, sizeof *o);
    o->name = t->name;
    o->dtype = t->dtype;
    o->ndim = t->ndim;
    for (int d = 0; d < t->ndim && d < TD_TENSOR_MAX_DIMS; d++) o->shape[d] = t->shape[d];
    o->data = t->data;
    o->nbytes = t->nbytes;
    o->file = td_safetensors_file_path(s->st, t->file);
}

static int s_st_find(const td_tensor_source_t *s, const char *name, td_tensor_info_t *out) {
    const td_st_tensor_t *t = td_safetensors_find(s->st, name);
    if (!t) return 0;
    s_st_info(s, t, out);
    return 1;
}
static int64_t s_st_count(const td_tensor_source_t *s) { return td_safetensors_count(s->st); }
static int s_st_at(const td_tensor_source_t *s, int64_t i, td_tensor_info_t *out) {
    const td_st_tensor_t *t = i < INT32_MAX ? td_safetensors_at(s->st, (int)i) : NULL;
    if (!t) return 0;
    s_st_info(s, t, out);
    return 1;
}
static const char *s_st_meta(const td_tensor_source_t *s, const char *key) {
    return td_safetensors_metadata(s->st, key);
}
static const char *s_st_path(const td_tensor_source_t *s) {
    return td_safetensors_file_path(s->st, 0);
}
static void s_st_close(td_tensor_source_t *s) { td_safetensors_destroy(&s->st); }

static const src_ops_t s_st_ops = {
    .find = s_st_find,
    .count = s_st_count,
    .at = s_st_at,
    .metadata = s_st_meta,
    .path = s_st_path,
    .close = s_st_close,
};

/* --- GGUF ------------------------------------------------------------------------------------- */

static void s_gg_info(const td_tensor_source_t *s, const td_gguf_tensor_t *t, td_tensor_info_t *o) {
    memset(o, 0, sizeof *o);
    o->name = t->name;
    o->dtype = t->dtype;
    o->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) o->shape[d] = t->ne[t->ndim - 1 - d]; /* reversed */
    o->data = t->data;
    o->nbytes = t->nbytes;
    o->file = td_gguf_path(s->gguf);
}

static int s_gg_find(const td_tensor_source_t *s, const char *name, td_tensor_info_t *out) {
    const td_gguf_tensor_t *t = td_gguf_find_tensor(s->gguf, name);
    if (!t) return 0;
    s_gg_info(s, t, out);
    return 1;
}
static int64_t s_gg_count(const td_tensor_source_t *s) { return td_gguf_n_tensors(s->gguf); }
static int s_gg_at(const td_tensor_source_t *s, int64_t i, td_tensor_info_t *out) {
    const td_gguf_tensor_t *t = td_gguf_tensor_at(s->gguf, i);
    if (!t) return 0;
    s_gg_info(s, t, out);
    return 1;
}
static const char *s_gg_meta(const td_tensor_source_t *s, const char *key) {
    const td_gguf_kv_t *kv = td_gguf_find_kv(s->gguf, key);
    return kv && kv->type == TD_GGUF_STRING ? kv->str : NULL;
}
static const char *s_gg_path(const td_tensor_source_t *s) { return td_gguf_path(s->gguf); }
static void s_gg_close(td_tensor_source_t *s) { td_gguf_destroy(&s->gguf); }

static const src_ops_t s_gg_ops = {
    .find = s_gg_find,
    .count = s_gg_count,
    .at = s_gg_at,
    .metadata = s_gg_meta,
    .path = s_gg_path,
    .close = s_gg_close,
};

/* --- the interface ---------------------------------------------------------------------------- */

int td_path_is_gguf(const char *path) {
    size_t n = path ? strlen(path) : 0;
    return n >= 5 && strcasecmp(path + n - 5, ".gguf") == 0;
}

td_tensor_source_t *td_tensor_source_from_safetensors(td_safetensors_t *st, td_err_t *err) {
    td_tensor_source_t *s = calloc(1, sizeof *s);
    if (!s) {
        td_safetensors_destroy(&st);
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    s->ops = &s_st_ops;
    s->format = TD_FORMAT_SAFETENSORS;
    s->st = st;
    return s;
}

td_tensor_source_t *td_tensor_source_from_gguf(td_gguf_t *g, td_err_t *err) {
    td_tensor_source_t *s = calloc(1, sizeof *s);
    if (!s) {
        td_gguf_destroy(&g);
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    s->ops = &s_gg_ops;
    s->format = TD_FORMAT_GGUF;
    s->gguf = g;
    return s;
}

td_tensor_source_t *td_tensor_source_open(const char *path, td_err_t *err) {
    if (td_path_is_gguf(path)) {
        td_gguf_t *g = td_gguf_open(path, err);
        return g ? td_tensor_source_from_gguf(g, err) : NULL;
    }
    td_safetensors_t *st = td_safetensors_open(path, err);
    return st ? td_tensor_source_from_safetensors(st, err) : NULL;
}

void td_tensor_source_destroy(td_tensor_source_t **self_p) {
    if (!self_p || !*self_p) return;
    (*self_p)->ops->close(*self_p);
    free(*self_p);
    *self_p = NULL;
}

void td_tensor_source_release(const td_tensor_source_t *s, const void *p, size_t n) {
    if (s && s->gguf) td_gguf_release(s->gguf, p, n);
    if (s && s->st) td_safetensors_release(s->st, p, n);
}

td_tensor_format_t td_tensor_source_format(const td_tensor_source_t *s) { return s->format; }
const char *td_tensor_source_path(const td_tensor_source_t *s) { return s->ops->path(s); }

int td_tensor_source_find(const td_tensor_source_t *s, const char *name, td_tensor_info_t *out) {
    return s && name ? s->ops->find(s, name, out) : 0;
}
int64_t td_tensor_source_count(const td_tensor_source_t *s) { return s ? s->ops->count(s) : 0; }
int td_tensor_source_at(const td_tensor_source_t *s, int64_t i, td_tensor_info_t *out) {
    return s ? s->ops->at(s, i, out) : 0;
}
uint64_t td_tensor_source_total_bytes(const td_tensor_source_t *s) {
    uint64_t sum = 0;
    td_tensor_info_t t;
    for (int64_t i = 0; i < td_tensor_source_count(s); i++)
        if (td_tensor_source_at(s, i, &t)) sum += t.nbytes;
    return sum;
}
const char *td_tensor_source_metadata(const td_tensor_source_t *s, const char *key) {
    return s && key ? s->ops->metadata(s, key) : NULL;
}
const td_gguf_t *td_tensor_source_gguf(const td_tensor_source_t *s) { return s ? s->gguf : NULL; }
const td_safetensors_t *td_tensor_source_safetensors(const td_tensor_source_t *s) {
    return s ? s->st : NULL;
}
