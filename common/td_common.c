/* td_common.c - errors, dtypes, file and time helpers. */
#include "common/td_common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int td_err_set(td_err_t *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int td_err_prefix(td_err_t *err, const char *fmt, ...) {
    if (!err) return TD_ERR;
    char pre[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%.400s: %.600s", pre, old);
    return err->code ? err->code : TD_ERR;
}

static const struct {
    const char *name;
    size_t size;   /* bytes per element (0: block-quantized) */
    int blk;       /* elements per block */
    size_t bbytes; /* bytes per block */
} s_dtypes[TD_DTYPE_COUNT] = {
    [TD_DTYPE_F32] = {"F32", 4},
    [TD_DTYPE_F16] = {"F16", 2},
    [TD_DTYPE_BF16] = {"BF16", 2},
    [TD_DTYPE_F64] = {"F64", 8},
    [TD_DTYPE_I64] = {"I64", 8},
    [TD_DTYPE_I32] = {"I32", 4},
    [TD_DTYPE_I16] = {"I16", 2},
    [TD_DTYPE_I8] = {"I8", 1},
    [TD_DTYPE_U64] = {"U64", 8},
    [TD_DTYPE_U32] = {"U32", 4},
    [TD_DTYPE_U16] = {"U16", 2},
    [TD_DTYPE_U8] = {"U8", 1},
    [TD_DTYPE_BOOL] = {"BOOL", 1},
    [TD_DTYPE_F8_E4M3] = {"F8_E4M3", 1},
    [TD_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
    [TD_DTYPE_Q8_0] = {"Q8_0", 0, 32, 34},
    [TD_DTYPE_Q4_0] = {"Q4_0", 0, 32, 18},
    [TD_DTYPE_Q4_1] = {"Q4_1", 0, 32, 20},
    [TD_DTYPE_Q5_0] = {"Q5_0", 0, 32, 22},
    [TD_DTYPE_Q5_1] = {"Q5_1", 0, 32, 24},
    [TD_DTYPE_Q4_K] = {"Q4_K", 0, 256, 144},
    [TD_DTYPE_Q5_K] = {"Q5_K", 0, 256, 176},
    [TD_DTYPE_Q6_K] = {"Q6_K", 0, 256, 210},
};

const char *td_dtype_name(td_dtype_t t) {
    return (unsigned)t < TD_DTYPE_COUNT ? s_dtypes[t].name : "?";
}

int td_dtype_from_name(const char *name) {
    for (int i = 0; i < TD_DTYPE_COUNT; i++)
        if (strcmp(s_dtypes[i].name, name) == 0) return i;
    return -1;
}

size_t td_dtype_size(td_dtype_t t) { return (unsigned)t < TD_DTYPE_COUNT ? s_dtypes[t].size : 0; }

int td_dtype_is_quantized(td_dtype_t t) {
    return (unsigned)t < TD_DTYPE_COUNT && s_dtypes[t].size == 0 && s_dtypes[t].blk > 0;
}

int td_dtype_block_elems(td_dtype_t t) {
    if ((unsigned)t >= TD_DTYPE_COUNT) return 0;
    return s_dtypes[t].blk ? s_dtypes[t].blk : 1;
}

size_t td_dtype_block_bytes(td_dtype_t t) {
    if ((unsigned)t >= TD_DTYPE_COUNT) return 0;
    return s_dtypes[t].blk ? s_dtypes[t].bbytes : s_dtypes[t].size;
}

uint64_t td_dtype_row_bytes(td_dtype_t t, int64_t n) {
    int b = td_dtype_block_elems(t);
    if (b <= 0 || n < 0 || n % b) return 0;
    return (uint64_t)(n / b) * td_dtype_block_bytes(t);
}

float td_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0)
            u = sign;
        else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31)
        u = sign | 0x7f800000u | (man << 13);
    else
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    union {
        uint32_t u;
        float f;
    } v = {.u = u};
    return v.f;
}

uint16_t td_f32_to_f16(float f) {
    union {
        uint32_t u;
        float f;
    } v = {.f = f};
    uint32_t x = v.u, sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = 1u << (shift - 1), rem = man & ((1u << shift) - 1);
        uint32_t r = man >> shift;
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = (uint32_t)exp << 10 | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

static td_dequantize_fn s_dequantize;

void td_set_dequantize_hook(td_dequantize_fn fn) { s_dequantize = fn; }

void td_to_f32(float *dst, const void *src, td_dtype_t t, int64_t n) {
    if (td_dtype_is_quantized(t)) {
        if (s_dequantize)
            s_dequantize(t, src, dst, n);
        else
            for (int64_t i = 0; i < n; i++) dst[i] = NAN;
        return;
    }
    switch (t) {
    case TD_DTYPE_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case TD_DTYPE_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = td_bf16_to_f32(s[i]);
    } break;
    case TD_DTYPE_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = td_f16_to_f32(s[i]);
    } break;
    default:
        for (int64_t i = 0; i < n; i++) dst[i] = 0.0f;
    }
}

int td_read_file(const char *path, char **data, size_t *len, td_err_t *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return td_err_set(err, TD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        /* a directory opens, but its "size" from ftell is LONG_MAX */
        fclose(f);
        return td_err_set(err, TD_ERR_IO, "cannot read %s: not a regular file", path);
    }
    if (fseek(f, 0, SEEK_END) != 0) goto io;
    long sz = ftell(f);
    if (sz < 0 || fseek(f, 0, SEEK_SET) != 0) goto io;
    char *buf = malloc((size_t)sz + 1);
    if (!buf) {
        fclose(f);
        return td_err_set(err, TD_ERR_NOMEM, "out of memory reading %s", path);
    }
    if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        free(buf);
        goto io;
    }
    buf[sz] = 0;
    fclose(f);
    *data = buf;
    if (len) *len = (size_t)sz;
    return TD_OK;
io:
    fclose(f);
    return td_err_set(err, TD_ERR_IO, "cannot read %s: %s", path, strerror(errno));
}

char *td_path_join(char *out, size_t cap, const char *dir, const char *name) {
    size_t n = strlen(dir);
    snprintf(out, cap, "%s%s%s", dir, (n && dir[n - 1] == '/') ? "" : "/", name);
    return out;
}

char *td_path_json(char *out, size_t cap, const char *path, const char *name) {
    size_t n = strlen(path);
    if (n >= 5 && strcmp(path + n - 5, ".json") == 0)
        snprintf(out, cap, "%s", path);
    else
        td_path_join(out, cap, path, name);
    return out;
}

int td_read_json_file(const char *path_or_dir, const char *name, char *path, size_t cap,
                      char **data, size_t *len, td_err_t *err) {
    return td_read_file(td_path_json(path, cap, path_or_dir, name), data, len, err);
}

double td_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int s_log_level = -1;

void td_log(int level, const char *fmt, ...) {
    if (s_log_level < 0) {
        const char *e = getenv("TD_LOG");
        s_log_level = TD_LOG_WARN;
        if (e) {
            if (!strcmp(e, "error"))
                s_log_level = TD_LOG_ERROR;
            else if (!strcmp(e, "info"))
                s_log_level = TD_LOG_INFO;
            else if (!strcmp(e, "debug"))
                s_log_level = TD_LOG_DEBUG;
        }
    }
    if (level > s_log_level) return;
    static const char *names[] = {"error", "warn", "info", "debug"};
    va_list ap;
    fprintf(stderr, "tandem %s: ", names[level]);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
