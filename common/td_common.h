/* td_common.h - error handling, dtypes and small helpers shared by every tandem module.
 *
 * Conventions (see docs/DESIGN.md): public names start with td_; functions return TD_OK (0) or a
 * negative TD_ERR_* code and, when given a td_err_t, a human-readable message saying what failed
 * and where (file, tensor, byte offset...). Library code never exits. */
#ifndef TD_COMMON_H
#define TD_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    TD_OK = 0,
    TD_ERR = -1,        /* generic failure */
    TD_ERR_IO = -2,     /* open/read/mmap failed */
    TD_ERR_FORMAT = -3, /* malformed input (header, json, message) */
    TD_ERR_NOMEM = -4,  /* allocation failed */
    TD_ERR_ARG = -5,    /* bad argument from the caller or the user */
    TD_ERR_UNSUPPORTED =
        -6 /* valid input that tandem does not handle (e.g. unknown architecture) */
};

/* An error buffer: functions that fail write a message here (when non-NULL). */
typedef struct td_err {
    int code;
    char msg[1024];
} td_err_t;

/* Formats a message into err (if non-NULL) and returns code, so callers can write
 * `return td_err_set(err, TD_ERR_FORMAT, "bad header in %s", path);` */
int td_err_set(td_err_t *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prepends context to an existing message: "ctx: old message". Returns err->code (or TD_ERR). */
int td_err_prefix(td_err_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Element types, named as in safetensors, then the block-quantized types of GGUF (ggml's block
 * layouts, named as llama.cpp names them). F32, F16, BF16 and the quantized types are computed
 * with; the others can be listed by `tandem inspect`. A quantized type stores a row of cols
 * elements as cols / td_dtype_block_elems(t) blocks of td_dtype_block_bytes(t) bytes each;
 * cols must be a multiple of the block's element count. */
typedef enum td_dtype {
    TD_DTYPE_F32 = 0,
    TD_DTYPE_F16,
    TD_DTYPE_BF16,
    TD_DTYPE_F64,
    TD_DTYPE_I64,
    TD_DTYPE_I32,
    TD_DTYPE_I16,
    TD_DTYPE_I8,
    TD_DTYPE_U64,
    TD_DTYPE_U32,
    TD_DTYPE_U16,
    TD_DTYPE_U8,
    TD_DTYPE_BOOL,
    TD_DTYPE_F8_E4M3,
    TD_DTYPE_F8_E5M2,
    TD_DTYPE_Q8_0, /* 32 elems: f16 d, int8 q[32]; x = d*q */
    TD_DTYPE_Q4_0, /* 32 elems: f16 d, 16 bytes of nibbles; x = d*(q-8) */
    TD_DTYPE_Q4_1, /* 32 elems: f16 d, f16 m, 16 bytes of nibbles; x = d*q + m */
    TD_DTYPE_Q5_0, /* 32 elems: f16 d, u32 high bits, 16 bytes of nibbles; x = d*(q-16) */
    TD_DTYPE_Q5_1, /* 32 elems: f16 d, f16 m, u32 high bits, nibbles; x = d*q + m */
    TD_DTYPE_Q4_K, /* 256 elems, 144 bytes: super-block of 8 sub-blocks, 6-bit scales/mins */
    TD_DTYPE_Q5_K, /* 256 elems, 176 bytes */
    TD_DTYPE_Q6_K, /* 256 elems, 210 bytes */
    TD_DTYPE_COUNT
} td_dtype_t;

const char *td_dtype_name(td_dtype_t t);   /* "F32", "BF16", ... */
int td_dtype_from_name(const char *name);  /* td_dtype_t, or -1 when unknown */
size_t td_dtype_size(td_dtype_t t);        /* bytes per element; 0 for block-quantized types */
int td_dtype_is_quantized(td_dtype_t t);   /* 1 for the block-quantized types */
int td_dtype_block_elems(td_dtype_t t);    /* elements per block (1 for plain types) */
size_t td_dtype_block_bytes(td_dtype_t t); /* bytes per block (the element size for plain types) */
/* Bytes of n elements (n a multiple of the block's element count; 0 otherwise). */
uint64_t td_dtype_row_bytes(td_dtype_t t, int64_t n);

/* Scalar conversions (round-to-nearest-even for the narrowing ones). */
static inline float td_bf16_to_f32(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
static inline uint16_t td_f32_to_bf16(float f) {
    union {
        uint32_t u;
        float f;
    } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* quiet NaN */
    uint32_t lsb = (v.u >> 16) & 1u;
    v.u += 0x7fffu + lsb;
    return (uint16_t)(v.u >> 16);
}
float td_f16_to_f32(uint16_t h);
uint16_t td_f32_to_f16(float f);

/* Converts n elements of type t at src into floats (quantized types: n a multiple of the block
 * size, the reference dequantization of kernels/quant.h). */
void td_to_f32(float *dst, const void *src, td_dtype_t t, int64_t n);

/* The handler td_to_f32 calls for quantized types. kernels/quant.c registers its reference
 * dequantization at program start (common cannot include kernels/); without a handler,
 * td_to_f32 writes NaNs for quantized types. */
typedef void (*td_dequantize_fn)(td_dtype_t t, const void *src, float *dst, int64_t n);
void td_set_dequantize_hook(td_dequantize_fn fn);

/* Reads a whole file into a NUL-terminated malloc'd buffer. Returns TD_OK or TD_ERR_IO. */
int td_read_file(const char *path, char **data, size_t *len, td_err_t *err);

/* Joins dir and name into out (PATH_MAX-sized buffers are fine). Returns out. */
char *td_path_join(char *out, size_t cap, const char *dir, const char *name);

/* The JSON file PATH names: PATH itself when it ends in ".json", else the file NAME in the
 * directory PATH ("config.json", "tokenizer.json"). Writes it to out and returns out. */
char *td_path_json(char *out, size_t cap, const char *path, const char *name);

/* td_read_file of the JSON file td_path_json names (PATH itself, or NAME in the directory PATH);
 * that file's path goes to path[cap] (for messages). */
int td_read_json_file(const char *path_or_dir, const char *name, char *path, size_t cap,
                      char **data, size_t *len, td_err_t *err);

/* Monotonic clock in seconds. */
double td_time_now(void);

/* Logging to stderr; level from TD_LOG (error|warn|info|debug), default warn. */
enum { TD_LOG_ERROR = 0, TD_LOG_WARN, TD_LOG_INFO, TD_LOG_DEBUG };
void td_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif
