/* safetensors.c - mmap-based, validating reader for safetensors checkpoints.
 *
 * One td_safetensors_t holds one or more file images (a single file, or the shards named by a
 * model.safetensors.index.json). Each image is mapped read-only; its JSON header is parsed with
 * cJSON and every entry is checked before any pointer into the data section is handed out:
 * dtype known, shape non-negative with at most TD_ST_MAX_DIMS dims, element count times dtype
 * size equal to the byte range (checked 64-bit arithmetic), range inside the data section, ranges
 * of one file not overlapping, names unique across all files. Lookup by name goes through an
 * open-addressing hash table built once after loading. */
#include "model/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_MAX_HEADER (100ull * 1024 * 1024)
#define S_INDEX_NAME "model.safetensors.index.json"
#define S_SINGLE_NAME "model.safetensors"

typedef struct s_file {
    char *path;     /* as given / joined; used in messages */
    void *map;      /* mmap base, NULL for borrowed memory */
    size_t map_len; /* mapping length */
    const uint8_t *base;
    size_t len;
} s_file_t;

typedef struct s_meta {
    char *key, *value;
} s_meta_t;

typedef struct s_range {
    uint64_t begin, end;
    int tensor;
} s_range_t;

struct td_safetensors {
    s_file_t *files;
    int n_files, cap_files;
    td_st_tensor_t *tensors;
    int n, cap;
    s_meta_t *meta;
    int n_meta, cap_meta;
    int *table; /* open addressing: tensor index or -1 */
    size_t table_cap;
};

void td_safetensors_release(const td_safetensors_t *st, const void *p, size_t n) {
    if (!st) return;
    const uintptr_t a = (uintptr_t)p, pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < st->n_files; i++) {
        const s_file_t *f = &st->files[i];
        const uintptr_t base = (uintptr_t)f->base;
        if (!f->map || a < base || n > f->len || a - base > f->len - n) continue;
        const uintptr_t lo = (a + pg - 1) / pg * pg, hi = (a + n) / pg * pg;
        if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
        return;
    }
}

/* --- small helpers -----------------------------------------------------------------------------
 */

static uint64_t s_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* arr (n elements of elem bytes in use, *cap allocated) with room for one more: doubled (from
 * first) when full. Returns the array, maybe moved, or NULL when out of memory (arr unchanged). */
static void *s_grow(void *arr, int *cap, int n, size_t elem, int first) {
    if (n < *cap) return arr;
    int c = *cap ? 2 * *cap : first;
    void *a = realloc(arr, (size_t)c * elem);
    if (a) *cap = c;
    return a;
}

/* st when rc says it was built, else NULL (st destroyed). */
static td_safetensors_t *s_done(td_safetensors_t *st, int rc) {
    if (rc < 0) td_safetensors_destroy(&st);
    return st;
}

static td_safetensors_t *s_new(void) { return calloc(1, sizeof(td_safetensors_t)); }

static int s_add_file(td_safetensors_t *st, const char *path, td_err_t *err) {
    s_file_t *files = s_grow(st->files, &st->cap_files, st->n_files, sizeof *files, 4);
    if (!files) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    st->files = files;
    s_file_t *f = &st->files[st->n_files];
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    return st->n_files++;
}

static td_st_tensor_t *s_add_tensor(td_safetensors_t *st, const char *name, td_err_t *err) {
    td_st_tensor_t *tensors = s_grow(st->tensors, &st->cap, st->n, sizeof *tensors, 64);
    if (!tensors) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    st->tensors = tensors;
    td_st_tensor_t *t = &st->tensors[st->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    st->n++;
    return t;
}

static int s_add_meta(td_safetensors_t *st, const char *key, const char *value, td_err_t *err) {
    s_meta_t *meta = s_grow(st->meta, &st->cap_meta, st->n_meta, sizeof *meta, 8);
    if (!meta) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    st->meta = meta;
    s_meta_t *m = &st->meta[st->n_meta];
    m->key = strdup(key);
    m->value = strdup(value);
    if (!m->key || !m->value) {
        free(m->key);
        free(m->value);
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    st->n_meta++;
    return TD_OK;
}

/* A JSON number that is a whole number in [0, 2^53]. */
static int s_json_u64(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0.0) || d > 9007199254740992.0 || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int s_cmp_range(const void *a, const void *b) {
    const s_range_t *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* --- one file image ----------------------------------------------------------------------------
 */

static int s_parse_entry(td_safetensors_t *st, int file, const cJSON *e, uint64_t data_len,
                         td_err_t *err) {
    const char *fname = st->files[file].path;
    const char *tname = e->string;
    if (!cJSON_IsObject(e))
        return td_err_set(err, TD_ERR_FORMAT, "%s: tensor '%s': header entry is not an object",
                          fname, tname);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd))
        return td_err_set(err, TD_ERR_FORMAT, "%s: tensor '%s': missing or non-string 'dtype'",
                          fname, tname);
    int dt = td_dtype_from_name(jd->valuestring);
    if (dt < 0 || td_dtype_is_quantized((td_dtype_t)dt)) /* GGUF block types are not safetensors' */
        return td_err_set(err, TD_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", fname, tname,
                          jd->valuestring);
    if (!cJSON_IsArray(js))
        return td_err_set(err, TD_ERR_FORMAT, "%s: tensor '%s': missing or non-array 'shape'",
                          fname, tname);
    int ndim = cJSON_GetArraySize(js);
    if (ndim > TD_ST_MAX_DIMS)
        return td_err_set(err, TD_ERR_FORMAT, "%s: tensor '%s': %d dimensions (at most %d)", fname,
                          tname, ndim, TD_ST_MAX_DIMS);
    int64_t shape[TD_ST_MAX_DIMS];
    uint64_t count = 1;
    int overflow = 0, d = 0;
    for (const cJSON *x = js->child; x; x = x->next, d++) {
        uint64_t v;
        if (!s_json_u64(x, &v) || v > (uint64_t)INT64_MAX)
            return td_err_set(err, TD_ERR_FORMAT,
                              "%s: tensor '%s': shape[%d] is not an integer in [0, 2^53]", fname,
                              tname, d);
        shape[d] = (int64_t)v;
        if (__builtin_mul_overflow(count, v, &count)) overflow = 1;
    }
    uint64_t nbytes = 0;
    if (!overflow &&
        __builtin_mul_overflow(count, (uint64_t)td_dtype_size((td_dtype_t)dt), &nbytes))
        overflow = 1;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: tensor '%s': 'data_offsets' must be an array [begin, end]", fname,
                          tname);
    uint64_t b, en;
    if (!s_json_u64(jo->child, &b) || !s_json_u64(jo->child->next, &en))
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets are not integers in [0, 2^53]", fname,
                          tname);
    if (b > en)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", fname,
                          tname, (unsigned long long)b, (unsigned long long)en);
    if (overflow)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: tensor '%s': shape and dtype %s need more bytes than fit in 64 bits",
                          fname, tname, jd->valuestring);
    if (nbytes != en - b)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: tensor '%s': shape and dtype %s need %llu bytes but data_offsets "
                          "[%llu, %llu] hold %llu",
                          fname, tname, jd->valuestring, (unsigned long long)nbytes,
                          (unsigned long long)b, (unsigned long long)en,
                          (unsigned long long)(en - b));
    if (en > data_len)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%llu, %llu] exceed the data section "
                          "(%llu bytes): file truncated?",
                          fname, tname, (unsigned long long)b, (unsigned long long)en,
                          (unsigned long long)data_len);
    td_st_tensor_t *t = s_add_tensor(st, tname, err);
    if (!t) return TD_ERR_NOMEM;
    t->dtype = (td_dtype_t)dt;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof shape[0]);
    t->nbytes = nbytes;
    t->file = file;
    t->data = (const void *)(uintptr_t)b; /* rebased once the data start is known */
    return TD_OK;
}

/* Parses st->files[file].base/len, appending its tensors. */
static int s_parse_image(td_safetensors_t *st, int file, td_err_t *err) {
    const s_file_t *f = &st->files[file];
    const char *fname = f->path;
    if (f->len < 8)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: %zu bytes is too short for a safetensors file (8-byte header size "
                          "first)",
                          fname, f->len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->base[i];
    if (hlen > (uint64_t)f->len - 8)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: header size %llu is larger than the file (%zu bytes): truncated or "
                          "not a safetensors file?",
                          fname, (unsigned long long)hlen, f->len);
    if (hlen > S_MAX_HEADER)
        return td_err_set(err, TD_ERR_FORMAT, "%s: header size %llu exceeds the 100 MB limit",
                          fname, (unsigned long long)hlen);
    const char *hdr = (const char *)f->base + 8;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - hdr) : 0;
        if (!end) {
            const char *ep = cJSON_GetErrorPtr();
            if (ep >= hdr && ep <= hdr + hlen) at = (size_t)(ep - hdr);
        }
        return td_err_set(err, TD_ERR_FORMAT, "%s: header is not valid JSON (near byte %zu)", fname,
                          at + 8);
    }
    /* Anything after the JSON value must be padding whitespace. */
    for (const char *p = end; p && p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != 0) {
            cJSON_Delete(root);
            return td_err_set(err, TD_ERR_FORMAT,
                              "%s: header has trailing bytes after the JSON (at byte %zu)", fname,
                              (size_t)(p - hdr) + 8);
        }
    }
    int rc = TD_OK;
    if (!cJSON_IsObject(root)) {
        rc = td_err_set(err, TD_ERR_FORMAT, "%s: header is not a JSON object", fname);
        goto done;
    }
    uint64_t data_len = (uint64_t)f->len - 8 - hlen;
    int first = st->n;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (cJSON_IsNull(e)) continue;
            if (!cJSON_IsObject(e)) {
                rc = td_err_set(err, TD_ERR_FORMAT, "%s: __metadata__ is not an object", fname);
                goto done;
            }
            for (const cJSON *m = e->child; m; m = m->next) {
                if (!cJSON_IsString(m)) {
                    rc = td_err_set(err, TD_ERR_FORMAT,
                                    "%s: __metadata__ value for '%s' is not a string", fname,
                                    m->string);
                    goto done;
                }
                if ((rc = s_add_meta(st, m->string, m->valuestring, err)) < 0) goto done;
            }
            continue;
        }
        if ((rc = s_parse_entry(st, file, e, data_len, err)) < 0) goto done;
    }
    /* Rebase offsets into pointers; check overlaps within this file. */
    int nf = st->n - first;
    if (nf > 0) {
        s_range_t *r = malloc((size_t)nf * sizeof *r);
        if (!r) {
            rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
            goto done;
        }
        const uint8_t *data = f->base + 8 + hlen;
        for (int i = 0; i < nf; i++) {
            td_st_tensor_t *t = &st->tensors[first + i];
            uint64_t b = (uint64_t)(uintptr_t)t->data;
            r[i] = (s_range_t){b, b + t->nbytes, first + i};
            t->data = data + b;
        }
        qsort(r, (size_t)nf, sizeof *r, s_cmp_range);
        int last = -1; /* the non-empty range reaching furthest so far */
        for (int i = 0; i < nf; i++) {
            if (r[i].end == r[i].begin) continue;
            if (last >= 0 && r[last].end > r[i].begin) {
                rc =
                    td_err_set(err, TD_ERR_FORMAT,
                               "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s' "
                               "[%llu, %llu]",
                               fname, st->tensors[r[i].tensor].name, (unsigned long long)r[i].begin,
                               (unsigned long long)r[i].end, st->tensors[r[last].tensor].name,
                               (unsigned long long)r[last].begin, (unsigned long long)r[last].end);
                break;
            }
            if (last < 0 || r[i].end > r[last].end) last = i;
        }
        free(r);
    }
done:
    cJSON_Delete(root);
    return rc;
}

/* --- the name table ----------------------------------------------------------------------------
 */

static int s_build_table(td_safetensors_t *st, td_err_t *err) {
    size_t cap = 16;
    while (cap < (size_t)st->n * 2 + 1) cap <<= 1;
    free(st->table);
    st->table = malloc(cap * sizeof *st->table);
    if (!st->table) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    st->table_cap = cap;
    for (size_t i = 0; i < cap; i++) st->table[i] = -1;
    for (int i = 0; i < st->n; i++) {
        const char *name = st->tensors[i].name;
        size_t h = (size_t)s_hash(name) & (cap - 1);
        while (st->table[h] >= 0) {
            const td_st_tensor_t *o = &st->tensors[st->table[h]];
            if (strcmp(o->name, name) == 0) {
                const td_st_tensor_t *t = &st->tensors[i];
                if (o->file == t->file)
                    return td_err_set(err, TD_ERR_FORMAT, "%s: tensor '%s' appears twice",
                                      st->files[t->file].path, name);
                return td_err_set(err, TD_ERR_FORMAT, "tensor '%s' appears in both %s and %s", name,
                                  st->files[o->file].path, st->files[t->file].path);
            }
            h = (h + 1) & (cap - 1);
        }
        st->table[h] = i;
    }
    return TD_OK;
}

/* --- files -------------------------------------------------------------------------------------
 */

static int s_map_file(td_safetensors_t *st, const char *path, td_err_t *err) {
    int file = s_add_file(st, path, err);
    if (file < 0) return file;
    s_file_t *f = &st->files[file];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return td_err_set(err, TD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return td_err_set(err, TD_ERR_IO, "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return td_err_set(err, TD_ERR_IO, "%s is not a regular file", path);
    }
    if ((uint64_t)sb.st_size < 8) {
        close(fd);
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: %lld bytes is too short for a safetensors file (8-byte header size "
                          "first)",
                          path, (long long)sb.st_size);
    }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) return td_err_set(err, TD_ERR_IO, "cannot mmap %s: %s", path, strerror(e));
    f->map = m;
    f->map_len = (size_t)sb.st_size;
    f->base = m;
    f->len = (size_t)sb.st_size;
    return s_parse_image(st, file, err);
}

static int s_is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int s_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

static int s_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int s_cmp_shard(const void *a, const void *b) {
    const cJSON *const *x = a, *const *y = b;
    return strcmp((*x)->valuestring, (*y)->valuestring);
}

static int s_open_index(td_safetensors_t *st, const char *index_path, td_err_t *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = td_read_file(index_path, &text, &len, err);
    if (rc < 0) return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return td_err_set(err, TD_ERR_FORMAT, "%s: not valid JSON", index_path);
    const cJSON **first = NULL; /* the first weight_map entry naming each shard */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", index_path);
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = 0;
    else
        snprintf(dir, sizeof dir, ".");
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
        rc = td_err_set(err, TD_ERR_FORMAT, "%s: no \"weight_map\" object", index_path);
        goto done;
    }
    if (!wm->child) {
        rc = td_err_set(err, TD_ERR_FORMAT, "%s: \"weight_map\" is empty", index_path);
        goto done;
    }
    /* Open each distinct shard once, in name order. */
    int n_entries = cJSON_GetArraySize(wm), n_shards = 0;
    first = calloc((size_t)n_entries, sizeof *first);
    if (!first) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !e->valuestring[0]) {
            rc = td_err_set(err, TD_ERR_FORMAT, "%s: weight_map entry '%s' is not a file name",
                            index_path, e->string);
            goto done;
        }
        const char *shard = e->valuestring;
        if (shard[0] == '/' || strstr(shard, "..")) {
            rc = td_err_set(err, TD_ERR_FORMAT,
                            "%s: shard '%s' (tensor '%s') must be a file name beside the index",
                            index_path, shard, e->string);
            goto done;
        }
        int seen = 0;
        for (int i = 0; i < n_shards && !seen; i++)
            seen = strcmp(first[i]->valuestring, shard) == 0;
        if (!seen) first[n_shards++] = e;
    }
    qsort(first, (size_t)n_shards, sizeof *first, s_cmp_shard);
    for (int i = 0; i < n_shards; i++) {
        char path[4096 + 256];
        td_path_join(path, sizeof path, dir, first[i]->valuestring);
        if (!s_exists(path)) {
            rc = td_err_set(err, TD_ERR_IO, "%s: shard %s (holding tensor '%s') is missing",
                            index_path, path, first[i]->string);
            goto done;
        }
        if ((rc = s_map_file(st, path, err)) < 0) goto done;
    }
    if ((rc = s_build_table(st, err)) < 0) goto done;
    for (const cJSON *e = wm->child; e; e = e->next) {
        char path[4096 + 256];
        td_path_join(path, sizeof path, dir, e->valuestring);
        const td_st_tensor_t *t = td_safetensors_find(st, e->string);
        if (!t || strcmp(st->files[t->file].path, path) != 0) {
            rc = td_err_set(err, TD_ERR_FORMAT,
                            "%s: tensor '%s' is listed in shard %s but not found there%s%s",
                            index_path, e->string, path, t ? "; it is in " : "",
                            t ? st->files[t->file].path : "");
            goto done;
        }
    }
    rc = TD_OK;
done:
    free(first);
    cJSON_Delete(root);
    return rc;
}

/* --- public API --------------------------------------------------------------------------------
 */

td_safetensors_t *td_safetensors_open(const char *path, td_err_t *err) {
    if (!path || !*path) {
        td_err_set(err, TD_ERR_ARG, "no checkpoint path given");
        return NULL;
    }
    td_safetensors_t *st = s_new();
    if (!st) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    int rc;
    char buf[4096 + 64];
    if (s_is_dir(path)) {
        if (s_exists(td_path_join(buf, sizeof buf, path, S_SINGLE_NAME))) {
            rc = s_map_file(st, buf, err);
            if (rc >= 0) rc = s_build_table(st, err);
        } else if (s_exists(td_path_join(buf, sizeof buf, path, S_INDEX_NAME))) {
            rc = s_open_index(st, buf, err);
        } else {
            rc = td_err_set(err, TD_ERR_IO,
                            "%s: no checkpoint found (expected %s or %s in this directory)", path,
                            S_SINGLE_NAME, S_INDEX_NAME);
        }
    } else if (s_ends_with(path, ".json")) {
        rc = s_open_index(st, path, err);
    } else if (!s_exists(path)) {
        rc = td_err_set(err, TD_ERR_IO, "cannot open %s: %s", path, strerror(ENOENT));
    } else {
        rc = s_map_file(st, path, err);
        if (rc >= 0) rc = s_build_table(st, err);
    }
    return s_done(st, rc);
}

td_safetensors_t *td_safetensors_from_memory(const void *buf, size_t len, const char *name,
                                             td_err_t *err) {
    td_safetensors_t *st = s_new();
    if (!st) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    int file = s_add_file(st, name ? name : "(memory)", err);
    int rc = file;
    if (file >= 0) {
        st->files[file].base = buf;
        st->files[file].len = buf ? len : 0;
        rc = s_parse_image(st, file, err);
        if (rc >= 0) rc = s_build_table(st, err);
    }
    return s_done(st, rc);
}

void td_safetensors_destroy(td_safetensors_t **self_p) {
    if (!self_p || !*self_p) return;
    td_safetensors_t *st = *self_p;
    for (int i = 0; i < st->n_files; i++) {
        if (st->files[i].map) munmap(st->files[i].map, st->files[i].map_len);
        free(st->files[i].path);
    }
    for (int i = 0; i < st->n; i++) free((char *)st->tensors[i].name);
    for (int i = 0; i < st->n_meta; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    free(st->files);
    free(st->tensors);
    free(st->meta);
    free(st->table);
    free(st);
    *self_p = NULL;
}

int td_safetensors_count(const td_safetensors_t *st) { return st ? st->n : 0; }

const td_st_tensor_t *td_safetensors_at(const td_safetensors_t *st, int i) {
    return st && i >= 0 && i < st->n ? &st->tensors[i] : NULL;
}

const td_st_tensor_t *td_safetensors_find(const td_safetensors_t *st, const char *name) {
    if (!st || !name || !st->table) return NULL;
    size_t h = (size_t)s_hash(name) & (st->table_cap - 1);
    while (st->table[h] >= 0) {
        const td_st_tensor_t *t = &st->tensors[st->table[h]];
        if (strcmp(t->name, name) == 0) return t;
        h = (h + 1) & (st->table_cap - 1);
    }
    return NULL;
}

int td_safetensors_n_files(const td_safetensors_t *st) { return st ? st->n_files : 0; }

const char *td_safetensors_file_path(const td_safetensors_t *st, int file) {
    return st && file >= 0 && file < st->n_files ? st->files[file].path : NULL;
}

uint64_t td_safetensors_total_bytes(const td_safetensors_t *st) {
    uint64_t sum = 0;
    for (int i = 0; st && i < st->n; i++) sum += st->tensors[i].nbytes;
    return sum;
}

int64_t td_safetensors_n_elements(const td_st_tensor_t *t) {
    int64_t n = 1;
    for (int d = 0; t && d < t->ndim; d++) n *= t->shape[d];
    return t ? n : 0;
}

int td_safetensors_n_metadata(const td_safetensors_t *st) { return st ? st->n_meta : 0; }

const char *td_safetensors_metadata_at(const td_safetensors_t *st, int i, const char **value) {
    if (!st || i < 0 || i >= st->n_meta) return NULL;
    if (value) *value = st->meta[i].value;
    return st->meta[i].key;
}

const char *td_safetensors_metadata(const td_safetensors_t *st, const char *key) {
    for (int i = 0; st && key && i < st->n_meta; i++)
        if (strcmp(st->meta[i].key, key) == 0) return st->meta[i].value;
    return NULL;
}
