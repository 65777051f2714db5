/* gguf.c - mmap-based, validating reader for GGUF v2/v3 files (see gguf.h for what is checked).
 *
 * Parsing walks the header once with a bounds-checked cursor; every count is compared with the
 * bytes left before anything is allocated for it, so a hostile file costs at most a small multiple
 * of its own size in memory. Keys and tensor names are copied NUL-terminated; everything else
 * points into the mapping. */
#include "model/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as little-endian u32 */
#define GGUF_DEFAULT_ALIGNMENT 32u

struct td_gguf {
    char *path;
    void *map; /* mmap base, NULL for borrowed memory */
    const uint8_t *base;
    uint64_t size;
    uint32_t version, alignment;
    uint64_t data_off, data_size;
    int64_t n_kv, n_tensors;
    td_gguf_kv_t *kv;
    td_gguf_tensor_t *tensors;
    int64_t *kv_hash, *t_hash;
    uint64_t kv_hcap, t_hcap;
};

void td_gguf_release(const td_gguf_t *g, const void *p, size_t n) {
    if (!g || !g->map) return;
    const uintptr_t a = (uintptr_t)p, base = (uintptr_t)g->base;
    if (a < base || n > g->size || a - base > g->size - n) return;
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = (a + pg - 1) / pg * pg, hi = (a + n) / pg * pg;
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* --- type tables ------------------------------------------------------------------------------ */

static const char *const s_type_names[TD_GGUF_TYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
static const uint8_t s_type_size[TD_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *td_gguf_type_name(td_gguf_type_t t) {
    return (unsigned)t < TD_GGUF_TYPE_COUNT ? s_type_names[t] : "unknown";
}

/* ggml's type ids (ids 4, 5 and 31-33, 36-38 are retired layouts) */
static const char *const s_ggml_names[] = {
    "F32",   "F16",        "Q4_0",       "Q4_1",       NULL,       NULL,       "Q5_0",
    "Q5_1",  "Q8_0",       "Q8_1",       "Q2_K",       "Q3_K",     "Q4_K",     "Q5_K",
    "Q6_K",  "Q8_K",       "IQ2_XXS",    "IQ2_XS",     "IQ3_XXS",  "IQ1_S",    "IQ4_NL",
    "IQ3_S", "IQ2_S",      "IQ4_XS",     "I8",         "I16",      "I32",      "I64",
    "F64",   "IQ1_M",      "BF16",       "Q4_0_4_4",   "Q4_0_4_8", "Q4_0_8_8", "TQ1_0",
    "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4"};

const char *td_gguf_ggml_type_name(uint32_t t) {
    return t < sizeof s_ggml_names / sizeof *s_ggml_names ? s_ggml_names[t] : NULL;
}

/* The td_dtype_t of a ggml type tandem computes with, or -1. */
static int s_ggml_dtype(uint32_t t) {
    switch (t) {
    case 0:
        return TD_DTYPE_F32;
    case 1:
        return TD_DTYPE_F16;
    case 2:
        return TD_DTYPE_Q4_0;
    case 3:
        return TD_DTYPE_Q4_1;
    case 6:
        return TD_DTYPE_Q5_0;
    case 7:
        return TD_DTYPE_Q5_1;
    case 8:
        return TD_DTYPE_Q8_0;
    case 12:
        return TD_DTYPE_Q4_K;
    case 13:
        return TD_DTYPE_Q5_K;
    case 14:
        return TD_DTYPE_Q6_K;
    case 30:
        return TD_DTYPE_BF16;
    default:
        return -1;
    }
}

/* --- hashing ---------------------------------------------------------------------------------- */

static uint64_t s_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Open addressing over indices (-1 = empty); cap a power of two > n. */
static int64_t *s_table_new(int64_t n, uint64_t *cap) {
    uint64_t c = 16;
    while (c < 2 * (uint64_t)n) c *= 2;
    int64_t *t = malloc(c * sizeof *t);
    if (t) memset(t, 0xff, c * sizeof *t);
    *cap = c;
    return t;
}

/* Inserts index i named name; returns the index already holding that name, or -1. */
static int64_t s_table_put(int64_t *t, uint64_t cap, int64_t i, const char *name,
                           const char *(*name_of)(const td_gguf_t *, int64_t), const td_gguf_t *g) {
    for (uint64_t h = s_hash(name) & (cap - 1);; h = (h + 1) & (cap - 1)) {
        if (t[h] < 0) {
            t[h] = i;
            return -1;
        }
        if (strcmp(name_of(g, t[h]), name) == 0) return t[h];
    }
}

static int64_t s_table_get(const int64_t *t, uint64_t cap, const char *name,
                           const char *(*name_of)(const td_gguf_t *, int64_t), const td_gguf_t *g) {
    if (!t) return -1;
    for (uint64_t h = s_hash(name) & (cap - 1); t[h] >= 0; h = (h + 1) & (cap - 1))
        if (strcmp(name_of(g, t[h]), name) == 0) return t[h];
    return -1;
}

static const char *s_kv_name(const td_gguf_t *g, int64_t i) { return g->kv[i].key; }
static const char *s_t_name(const td_gguf_t *g, int64_t i) { return g->tensors[i].name; }

/* --- the cursor ------------------------------------------------------------------------------- */

typedef struct rd {
    const uint8_t *p;
    uint64_t len, off;
    const char *file;
    td_err_t *err;
} rd_t;

static uint64_t s_left(const rd_t *r) { return r->len - r->off; }

static int s_need(rd_t *r, uint64_t n, const char *what) {
    if (n > s_left(r))
        return td_err_set(r->err, TD_ERR_FORMAT,
                          "%s: %s at byte %llu needs %llu bytes, the file has %llu left", r->file,
                          what, (unsigned long long)r->off, (unsigned long long)n,
                          (unsigned long long)s_left(r));
    return TD_OK;
}

static uint64_t s_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int s_u32(rd_t *r, uint32_t *v, const char *what) {
    if (s_need(r, 4, what)) return TD_ERR_FORMAT;
    *v = (uint32_t)s_le(r->p + r->off, 4);
    r->off += 4;
    return TD_OK;
}

static int s_u64(rd_t *r, uint64_t *v, const char *what) {
    if (s_need(r, 8, what)) return TD_ERR_FORMAT;
    *v = s_le(r->p + r->off, 8);
    r->off += 8;
    return TD_OK;
}

/* A GGUF string: u64 length, then the bytes. */
static int s_str(rd_t *r, const char **s, uint64_t *len, const char *what) {
    uint64_t n;
    if (s_u64(r, &n, what)) return TD_ERR_FORMAT;
    if (n > s_left(r))
        return td_err_set(r->err, TD_ERR_FORMAT,
                          "%s: %s at byte %llu has length %llu, past the end of the file (%llu "
                          "bytes left)",
                          r->file, what, (unsigned long long)(r->off - 8), (unsigned long long)n,
                          (unsigned long long)s_left(r));
    *s = (const char *)r->p + r->off;
    *len = n;
    r->off += n;
    return TD_OK;
}

/* --- parsing ---------------------------------------------------------------------------------- */

/* Copies a key or tensor name (refusing empty names and NUL bytes). */
static int s_name(rd_t *r, const char *s, uint64_t n, char **out, const char *what) {
    if (n == 0) return td_err_set(r->err, TD_ERR_FORMAT, "%s: empty %s", r->file, what);
    if (memchr(s, 0, n))
        return td_err_set(r->err, TD_ERR_FORMAT, "%s: %s '%s...' contains a NUL byte", r->file,
                          what, s);
    if (!(*out = malloc(n + 1))) return td_err_set(r->err, TD_ERR_NOMEM, "out of memory");
    memcpy(*out, s, n);
    (*out)[n] = 0;
    return TD_OK;
}

/* A key or tensor name (a GGUF string, checked by s_name) into *out (NULL when refused). */
static int s_read_name(rd_t *r, const char **out, const char *what) {
    const char *s;
    uint64_t n;
    char *name = NULL;
    int rc = s_str(r, &s, &n, what) ? TD_ERR_FORMAT : s_name(r, s, n, &name, what);
    *out = name;
    return rc;
}

/* A value type (u32, WHAT in messages) that must be one of td_gguf_type_t: else "NOUN 'NAME' has
 * unknown KIND type T". */
static int s_read_type(rd_t *r, uint32_t *t, const char *what, const char *noun, const char *name,
                       const char *kind) {
    if (s_u32(r, t, what)) return TD_ERR_FORMAT;
    if (*t < TD_GGUF_TYPE_COUNT) return TD_OK;
    return td_err_set(r->err, TD_ERR_FORMAT, "%s: %s '%s' has unknown %s type %u", r->file, noun,
                      name, kind, *t);
}

static int s_parse_kv(rd_t *r, td_gguf_kv_t *kv, int64_t idx) {
    char what[128];
    snprintf(what, sizeof what, "metadata key %lld", (long long)idx);
    int rc = s_read_name(r, &kv->key, what);
    if (rc) return rc;
    uint32_t t;
    snprintf(what, sizeof what, "type of metadata '%.60s'", kv->key);
    if ((rc = s_read_type(r, &t, what, "metadata", kv->key, "value"))) return rc;
    kv->type = (td_gguf_type_t)t;
    snprintf(what, sizeof what, "value of metadata '%.60s'", kv->key);
    if (t == TD_GGUF_STRING) {
        const char *s;
        uint64_t n;
        if (s_str(r, &s, &n, what)) return TD_ERR_FORMAT;
        char *copy = malloc(n + 1);
        if (!copy) return td_err_set(r->err, TD_ERR_NOMEM, "out of memory");
        memcpy(copy, s, n);
        copy[n] = 0;
        kv->str = copy;
        kv->str_len = n;
        return TD_OK;
    }
    if (t != TD_GGUF_ARRAY) {
        if (s_need(r, s_type_size[t], what)) return TD_ERR_FORMAT;
        kv->data = r->p + r->off;
        if (t == TD_GGUF_BOOL && r->p[r->off] > 1)
            return td_err_set(r->err, TD_ERR_FORMAT,
                              "%s: bool metadata '%s' holds %u (need 0 or 1)", r->file, kv->key,
                              r->p[r->off]);
        r->off += s_type_size[t];
        return TD_OK;
    }
    uint32_t at;
    uint64_t n;
    snprintf(what, sizeof what, "element type of array '%.60s'", kv->key);
    if ((rc = s_read_type(r, &at, what, "array", kv->key, "element"))) return rc;
    if (at == TD_GGUF_ARRAY)
        return td_err_set(r->err, TD_ERR_FORMAT,
                          "%s: array '%s' holds arrays (nested arrays are not supported)", r->file,
                          kv->key);
    snprintf(what, sizeof what, "length of array '%.60s'", kv->key);
    if (s_u64(r, &n, what)) return TD_ERR_FORMAT;
    kv->arr_type = (td_gguf_type_t)at;
    uint64_t min = at == TD_GGUF_STRING ? 8 : s_type_size[at];
    if (n > s_left(r) / min)
        return td_err_set(r->err, TD_ERR_FORMAT,
                          "%s: array '%s' claims %llu elements of type %s, more than the %llu "
                          "bytes left can hold",
                          r->file, kv->key, (unsigned long long)n, s_type_names[at],
                          (unsigned long long)s_left(r));
    kv->n = n;
    kv->data = r->p + r->off;
    if (at != TD_GGUF_STRING) {
        if (at == TD_GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (r->p[r->off + i] > 1)
                    return td_err_set(r->err, TD_ERR_FORMAT,
                                      "%s: bool array '%s' element %llu holds %u (need 0 or 1)",
                                      r->file, kv->key, (unsigned long long)i, r->p[r->off + i]);
        r->off += n * min;
        return TD_OK;
    }
    td_gguf_str_t *strs = malloc((n ? n : 1) * sizeof *strs);
    if (!strs) return td_err_set(r->err, TD_ERR_NOMEM, "%s: out of memory", r->file);
    kv->strs = strs;
    for (uint64_t i = 0; i < n; i++) {
        snprintf(what, sizeof what, "string %llu of array '%.60s'", (unsigned long long)i, kv->key);
        if (s_str(r, &strs[i].s, &strs[i].len, what)) return TD_ERR_FORMAT;
    }
    return TD_OK;
}

static int s_parse_tensor(rd_t *r, td_gguf_tensor_t *t, int64_t idx) {
    char what[128];
    snprintf(what, sizeof what, "name of tensor %lld", (long long)idx);
    int rc = s_read_name(r, &t->name, what);
    if (rc) return rc;
    uint32_t nd, type;
    snprintf(what, sizeof what, "n_dims of tensor '%.60s'", t->name);
    if (s_u32(r, &nd, what)) return TD_ERR_FORMAT;
    if (nd < 1 || nd > TD_GGUF_MAX_DIMS)
        return td_err_set(r->err, TD_ERR_FORMAT, "%s: tensor '%s' has n_dims %u (need 1 to %d)",
                          r->file, t->name, nd, TD_GGUF_MAX_DIMS);
    t->ndim = (int)nd;
    int64_t elems = 1;
    for (int d = 0; d < TD_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t v;
        snprintf(what, sizeof what, "dim %u of tensor '%.60s'", d, t->name);
        if (s_u64(r, &v, what)) return TD_ERR_FORMAT;
        if (v == 0 || v > (uint64_t)INT64_MAX || __builtin_mul_overflow(elems, (int64_t)v, &elems))
            return td_err_set(r->err, TD_ERR_FORMAT,
                              "%s: tensor '%s' dim %u is %llu (zero, or the element count "
                              "overflows)",
                              r->file, t->name, d, (unsigned long long)v);
        t->ne[d] = (int64_t)v;
    }
    snprintf(what, sizeof what, "type of tensor '%.60s'", t->name);
    if (s_u32(r, &type, what)) return TD_ERR_FORMAT;
    t->ggml_type = type;
    int dt = s_ggml_dtype(type);
    if (dt < 0) {
        const char *tn = td_gguf_ggml_type_name(type);
        if (tn)
            return td_err_set(r->err, TD_ERR_UNSUPPORTED,
                              "%s: tensor '%s' has type %s, which tandem does not support (F32, "
                              "F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)",
                              r->file, t->name, tn);
        return td_err_set(r->err, TD_ERR_FORMAT, "%s: tensor '%s' has unknown ggml type %u",
                          r->file, t->name, type);
    }
    t->dtype = (td_dtype_t)dt;
    int be = td_dtype_block_elems(t->dtype);
    if (t->ne[0] % be)
        return td_err_set(r->err, TD_ERR_FORMAT,
                          "%s: tensor '%s' of type %s has %lld columns, not a multiple of its "
                          "block of %d",
                          r->file, t->name, td_dtype_name(t->dtype), (long long)t->ne[0], be);
    uint64_t bytes = (uint64_t)(t->ne[0] / be), bb = td_dtype_block_bytes(t->dtype);
    int ovf = __builtin_mul_overflow(bytes, bb, &bytes);
    for (int d = 1; d < TD_GGUF_MAX_DIMS; d++)
        ovf |= __builtin_mul_overflow(bytes, (uint64_t)t->ne[d], &bytes);
    if (ovf)
        return td_err_set(r->err, TD_ERR_FORMAT, "%s: tensor '%s' byte size overflows", r->file,
                          t->name);
    t->nbytes = bytes;
    snprintf(what, sizeof what, "offset of tensor '%.60s'", t->name);
    if (s_u64(r, &t->offset, what)) return TD_ERR_FORMAT;
    return TD_OK;
}

static int s_cmp_offset(const void *a, const void *b) {
    const td_gguf_tensor_t *x = *(td_gguf_tensor_t *const *)a, *y = *(td_gguf_tensor_t *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Tensor data placement: aligned, inside the data section, no two overlapping. */
static int s_check_tensors(td_gguf_t *g, td_err_t *err) {
    td_gguf_tensor_t **order = malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof *order);
    if (!order) return td_err_set(err, TD_ERR_NOMEM, "%s: out of memory", g->path);
    int rc = TD_OK;
    for (int64_t i = 0; i < g->n_tensors && rc == TD_OK; i++) {
        td_gguf_tensor_t *t = &g->tensors[i];
        order[i] = t;
        if (s_table_put(g->t_hash, g->t_hcap, i, t->name, s_t_name, g) >= 0)
            rc = td_err_set(err, TD_ERR_FORMAT, "%s: tensor '%s' appears twice", g->path, t->name);
        else if (t->offset % g->alignment)
            rc = td_err_set(err, TD_ERR_FORMAT,
                            "%s: tensor '%s' offset %llu is not a multiple of the alignment %u",
                            g->path, t->name, (unsigned long long)t->offset, g->alignment);
        else if (t->offset > g->data_size || t->nbytes > g->data_size - t->offset)
            rc = td_err_set(err, TD_ERR_FORMAT,
                            "%s: tensor '%s' (%llu bytes at offset %llu) lies outside the data "
                            "section (%llu bytes)",
                            g->path, t->name, (unsigned long long)t->nbytes,
                            (unsigned long long)t->offset, (unsigned long long)g->data_size);
        else
            t->data = g->base + g->data_off + t->offset;
    }
    if (rc == TD_OK && g->n_tensors > 1) {
        qsort(order, (size_t)g->n_tensors, sizeof *order, s_cmp_offset);
        for (int64_t i = 0; i + 1 < g->n_tensors; i++)
            if (order[i]->offset + order[i]->nbytes > order[i + 1]->offset) {
                rc = td_err_set(err, TD_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", g->path,
                                order[i]->name, order[i + 1]->name);
                break;
            }
    }
    free(order);
    return rc;
}

static int s_parse(td_gguf_t *g, td_err_t *err) {
    rd_t r = {g->base, g->size, 0, g->path, err};
    uint32_t magic = 0;
    if (g->size < 4 || (s_u32(&r, &magic, "magic"), magic != GGUF_MAGIC))
        return td_err_set(err, TD_ERR_FORMAT, "%s: not a GGUF file (bad magic)", g->path);
    if (s_u32(&r, &g->version, "version")) return TD_ERR_FORMAT;
    if (g->version == 1)
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "%s: GGUF version 1 is not supported (need 2 or 3)", g->path);
    if (g->version != 2 && g->version != 3)
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "%s: GGUF version %u is not supported (need 2 or 3%s)", g->path,
                          g->version, (g->version & 0xffff) == 0 ? "; a big-endian file?" : "");
    uint64_t nt, nkv;
    if (s_u64(&r, &nt, "tensor count") || s_u64(&r, &nkv, "metadata count")) return TD_ERR_FORMAT;
    /* smallest encodings: a key (8 + 1) + type (4) + a u8 value; a tensor's name (8 + 1) +
     * n_dims (4) + one dim (8) + type (4) + offset (8) */
    if (nkv > s_left(&r) / 14)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: metadata count %llu cannot fit in the %llu header bytes left",
                          g->path, (unsigned long long)nkv, (unsigned long long)s_left(&r));
    if (nt > s_left(&r) / 33)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: tensor count %llu cannot fit in the %llu header bytes left", g->path,
                          (unsigned long long)nt, (unsigned long long)s_left(&r));
    g->kv = calloc(nkv ? nkv : 1, sizeof *g->kv);
    g->tensors = calloc(nt ? nt : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return td_err_set(err, TD_ERR_NOMEM, "%s: out of memory", g->path);
    int rc = TD_OK;
    for (uint64_t i = 0; i < nkv && rc == TD_OK; i++, g->n_kv++)
        rc = s_parse_kv(&r, &g->kv[i], (int64_t)i);
    if (rc != TD_OK) return rc;
    g->kv_hash = s_table_new(g->n_kv, &g->kv_hcap);
    if (!g->kv_hash) return td_err_set(err, TD_ERR_NOMEM, "%s: out of memory", g->path);
    for (int64_t i = 0; i < g->n_kv; i++)
        if (s_table_put(g->kv_hash, g->kv_hcap, i, g->kv[i].key, s_kv_name, g) >= 0)
            return td_err_set(err, TD_ERR_FORMAT, "%s: metadata key '%s' appears twice", g->path,
                              g->kv[i].key);
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const td_gguf_kv_t *al = td_gguf_find_kv(g, "general.alignment");
    if (al) {
        uint32_t a = al->type == TD_GGUF_U32 ? (uint32_t)s_le(al->data, 4) : 0;
        if (al->type != TD_GGUF_U32 || a == 0 || (a & (a - 1)))
            return td_err_set(err, TD_ERR_FORMAT,
                              "%s: general.alignment must be a u32 power of two (got %s %u)",
                              g->path, td_gguf_type_name(al->type), a);
        g->alignment = a;
    }
    for (uint64_t i = 0; i < nt && rc == TD_OK; i++, g->n_tensors++)
        rc = s_parse_tensor(&r, &g->tensors[i], (int64_t)i);
    if (rc != TD_OK) return rc;
    /* the data section: the next multiple of the alignment after the header */
    uint64_t a = g->alignment, d = r.off + (a - r.off % a) % a;
    g->data_off = d;
    g->data_size = d <= g->size ? g->size - d : 0;
    if (g->n_tensors > 0 && d > g->size)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: the data section would start at byte %llu, past the end of the "
                          "file (%llu bytes)",
                          g->path, (unsigned long long)d, (unsigned long long)g->size);
    g->t_hash = s_table_new(g->n_tensors, &g->t_hcap);
    if (!g->t_hash) return td_err_set(err, TD_ERR_NOMEM, "%s: out of memory", g->path);
    return s_check_tensors(g, err);
}

/* --- open / destroy --------------------------------------------------------------------------- */

static td_gguf_t *s_finish(td_gguf_t *g, td_err_t *err) {
    if (s_parse(g, err) != TD_OK) {
        td_gguf_destroy(&g);
        return NULL;
    }
    return g;
}

td_gguf_t *td_gguf_from_memory(const void *buf, size_t len, const char *name, td_err_t *err) {
    td_gguf_t *g = calloc(1, sizeof *g);
    if (g) g->path = strdup(name ? name : "<memory>");
    if (!g || !g->path) {
        if (g) free(g);
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    g->base = buf;
    g->size = len;
    return s_finish(g, err);
}

td_gguf_t *td_gguf_open(const char *path, td_err_t *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        td_err_set(err, TD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        td_err_set(err, TD_ERR_IO, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if (sb.st_size < 24) {
        close(fd);
        td_err_set(err, TD_ERR_FORMAT, "%s: %lld bytes, too short for a GGUF header", path,
                   (long long)sb.st_size);
        return NULL;
    }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) {
        td_err_set(err, TD_ERR_IO, "cannot mmap %s: %s", path, strerror(e));
        return NULL;
    }
    td_gguf_t *g = calloc(1, sizeof *g);
    if (g) g->path = strdup(path);
    if (!g || !g->path) {
        free(g);
        munmap(m, (size_t)sb.st_size);
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    g->map = m;
    g->base = m;
    g->size = (uint64_t)sb.st_size;
    return s_finish(g, err);
}

void td_gguf_destroy(td_gguf_t **self_p) {
    if (!self_p || !*self_p) return;
    td_gguf_t *g = *self_p;
    /* n_kv / n_tensors count the entry whose parse failed too (calloc'd, partly filled) */
    for (int64_t i = 0; g->kv && i < g->n_kv; i++) {
        free((void *)g->kv[i].key);
        free((void *)g->kv[i].str);
        free((void *)g->kv[i].strs);
    }
    for (int64_t i = 0; g->tensors && i < g->n_tensors; i++) free((void *)g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    free(g->kv_hash);
    free(g->t_hash);
    if (g->map) munmap(g->map, g->size);
    free(g->path);
    free(g);
    *self_p = NULL;
}

/* --- access ----------------------------------------------------------------------------------- */

const char *td_gguf_path(const td_gguf_t *g) { return g->path; }
uint32_t td_gguf_version(const td_gguf_t *g) { return g->version; }
uint32_t td_gguf_alignment(const td_gguf_t *g) { return g->alignment; }
uint64_t td_gguf_data_offset(const td_gguf_t *g) { return g->data_off; }
uint64_t td_gguf_file_size(const td_gguf_t *g) { return g->size; }
int64_t td_gguf_n_kv(const td_gguf_t *g) { return g ? g->n_kv : 0; }
int64_t td_gguf_n_tensors(const td_gguf_t *g) { return g ? g->n_tensors : 0; }

const td_gguf_kv_t *td_gguf_kv_at(const td_gguf_t *g, int64_t i) {
    return g && i >= 0 && i < g->n_kv ? &g->kv[i] : NULL;
}

const td_gguf_kv_t *td_gguf_find_kv(const td_gguf_t *g, const char *key) {
    int64_t i = g ? s_table_get(g->kv_hash, g->kv_hcap, key, s_kv_name, g) : -1;
    return i >= 0 ? &g->kv[i] : NULL;
}

const td_gguf_tensor_t *td_gguf_tensor_at(const td_gguf_t *g, int64_t i) {
    return g && i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const td_gguf_tensor_t *td_gguf_find_tensor(const td_gguf_t *g, const char *name) {
    int64_t i = g ? s_table_get(g->t_hash, g->t_hcap, name, s_t_name, g) : -1;
    return i >= 0 ? &g->tensors[i] : NULL;
}

static int s_is_int(td_gguf_type_t t) {
    return t <= TD_GGUF_I32 || t == TD_GGUF_U64 || t == TD_GGUF_I64;
}

/* An integer element of type t at p; *big set for a u64 above INT64_MAX. */
static int64_t s_int_at(const uint8_t *p, td_gguf_type_t t, int *big) {
    uint64_t v = s_le(p, s_type_size[t]);
    int bits = 8 * s_type_size[t];
    *big = 0;
    switch (t) {
    case TD_GGUF_I8:
    case TD_GGUF_I16:
    case TD_GGUF_I32:
    case TD_GGUF_I64:
        if (bits < 64 && (v >> (bits - 1)) & 1) v |= ~0ull << bits; /* sign-extend */
        return (int64_t)v;
    default:
        if (v > (uint64_t)INT64_MAX) {
            *big = 1;
            return INT64_MAX;
        }
        return (int64_t)v;
    }
}

static double s_float_at(const uint8_t *p, td_gguf_type_t t) {
    if (t == TD_GGUF_F32) {
        uint32_t u = (uint32_t)s_le(p, 4);
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    if (t == TD_GGUF_F64) {
        uint64_t u = s_le(p, 8);
        double d;
        memcpy(&d, &u, 8);
        return d;
    }
    int big;
    return (double)s_int_at(p, t, &big);
}

static int s_wrong(const td_gguf_t *g, const td_gguf_kv_t *kv, const char *want, td_err_t *err) {
    if (kv->type == TD_GGUF_ARRAY)
        return td_err_set(err, TD_ERR_FORMAT, "%s: metadata '%s' is an array of %s, expected %s",
                          g->path, kv->key, td_gguf_type_name(kv->arr_type), want);
    return td_err_set(err, TD_ERR_FORMAT, "%s: metadata '%s' is a %s, expected %s", g->path,
                      kv->key, td_gguf_type_name(kv->type), want);
}

int td_gguf_get_int(const td_gguf_t *g, const char *key, int64_t *out, td_err_t *err) {
    const td_gguf_kv_t *kv = td_gguf_find_kv(g, key);
    if (!kv) return 1;
    if (!s_is_int(kv->type)) return s_wrong(g, kv, "an integer", err);
    int big;
    int64_t v = s_int_at(kv->data, kv->type, &big);
    if (big)
        return td_err_set(err, TD_ERR_FORMAT, "%s: metadata '%s' is out of range", g->path, key);
    *out = v;
    return TD_OK;
}

int td_gguf_get_float(const td_gguf_t *g, const char *key, double *out, td_err_t *err) {
    const td_gguf_kv_t *kv = td_gguf_find_kv(g, key);
    if (!kv) return 1;
    if (!s_is_int(kv->type) && kv->type != TD_GGUF_F32 && kv->type != TD_GGUF_F64)
        return s_wrong(g, kv, "a number", err);
    *out = s_float_at(kv->data, kv->type);
    return TD_OK;
}

int td_gguf_get_bool(const td_gguf_t *g, const char *key, int *out, td_err_t *err) {
    const td_gguf_kv_t *kv = td_gguf_find_kv(g, key);
    if (!kv) return 1;
    if (kv->type != TD_GGUF_BOOL) return s_wrong(g, kv, "a bool", err);
    *out = *(const uint8_t *)kv->data;
    return TD_OK;
}

int td_gguf_get_str(const td_gguf_t *g, const char *key, const char **out, td_err_t *err) {
    const td_gguf_kv_t *kv = td_gguf_find_kv(g, key);
    if (!kv) return 1;
    if (kv->type != TD_GGUF_STRING) return s_wrong(g, kv, "a string", err);
    *out = kv->str;
    return TD_OK;
}

int td_gguf_get_arr(const td_gguf_t *g, const char *key, td_gguf_type_t want,
                    const td_gguf_kv_t **out, td_err_t *err) {
    const td_gguf_kv_t *kv = td_gguf_find_kv(g, key);
    if (!kv) return 1;
    if (kv->type != TD_GGUF_ARRAY || (want != TD_GGUF_TYPE_COUNT && kv->arr_type != want &&
                                      !(s_is_int(want) && s_is_int(kv->arr_type)))) {
        char w[48];
        snprintf(w, sizeof w, "an array of %s",
                 want == TD_GGUF_TYPE_COUNT ? "anything" : td_gguf_type_name(want));
        return s_wrong(g, kv, w, err);
    }
    *out = kv;
    return TD_OK;
}

const char *td_gguf_arr_str(const td_gguf_kv_t *kv, uint64_t i, uint64_t *len) {
    if (!kv || kv->type != TD_GGUF_ARRAY || kv->arr_type != TD_GGUF_STRING || i >= kv->n) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = kv->strs[i].len;
    return kv->strs[i].s;
}

int64_t td_gguf_arr_int(const td_gguf_kv_t *kv, uint64_t i) {
    if (!kv || kv->type != TD_GGUF_ARRAY || i >= kv->n ||
        !(s_is_int(kv->arr_type) || kv->arr_type == TD_GGUF_BOOL))
        return 0;
    int big;
    return s_int_at((const uint8_t *)kv->data + i * s_type_size[kv->arr_type], kv->arr_type, &big);
}

double td_gguf_arr_float(const td_gguf_kv_t *kv, uint64_t i) {
    if (!kv || kv->type != TD_GGUF_ARRAY || i >= kv->n) return 0;
    if (!s_is_int(kv->arr_type) && kv->arr_type != TD_GGUF_F32 && kv->arr_type != TD_GGUF_F64)
        return 0;
    return s_float_at((const uint8_t *)kv->data + i * s_type_size[kv->arr_type], kv->arr_type);
}
