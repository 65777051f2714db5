/* gguf.h - read-only, zero-copy access to GGUF files (versions 2 and 3), the llama.cpp format.
 *
 * A GGUF file is: magic "GGUF", version, tensor count, metadata count, the metadata key/value
 * pairs (typed scalars, strings, arrays), the tensor descriptions (name, dims, ggml type, offset),
 * then the tensor data section starting at the next multiple of the alignment (general.alignment,
 * default 32). Everything is little-endian.
 *
 * The file is mmapped; tensor data and array payloads point into the mapping and stay valid until
 * the td_gguf_t is destroyed. Every header field is checked before use: magic, version, counts
 * against the file size, string lengths, value types, array element types (arrays of arrays are
 * refused) and sizes, tensor dims (1..4, each >= 1, products without overflow, the row a whole
 * number of blocks), tensor types (F32, F16, BF16 and the block types of td_dtype_t; any other
 * ggml type is refused by its name), offsets aligned and inside the data section, duplicate keys
 * and tensor names, overlapping tensors. Errors are TD_ERR_FORMAT (TD_ERR_UNSUPPORTED for a valid
 * but unhandled version or tensor type) naming the file and the field. */
#ifndef TD_GGUF_H
#define TD_GGUF_H

#include "common/td_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TD_GGUF_MAX_DIMS 4

/* Metadata value types, numbered as in the file. */
typedef enum td_gguf_type {
    TD_GGUF_U8 = 0,
    TD_GGUF_I8 = 1,
    TD_GGUF_U16 = 2,
    TD_GGUF_I16 = 3,
    TD_GGUF_U32 = 4,
    TD_GGUF_I32 = 5,
    TD_GGUF_F32 = 6,
    TD_GGUF_BOOL = 7,
    TD_GGUF_STRING = 8,
    TD_GGUF_ARRAY = 9,
    TD_GGUF_U64 = 10,
    TD_GGUF_I64 = 11,
    TD_GGUF_F64 = 12,
    TD_GGUF_TYPE_COUNT
} td_gguf_type_t;

const char *td_gguf_type_name(td_gguf_type_t t); /* "u32", "string", "array", ... */
/* The ggml tensor type name of a type id ("Q4_K", "IQ2_XXS", ...), or NULL when unknown. */
const char *td_gguf_ggml_type_name(uint32_t ggml_type);

typedef struct td_gguf_str {
    const char *s; /* into the mapping, not NUL-terminated */
    uint64_t len;
} td_gguf_str_t;

/* One metadata pair. Scalars: the value is read with the td_gguf_get_* functions. Strings: str is
 * a NUL-terminated copy (str_len bytes; a string holding a NUL byte is cut there by C readers).
 * Arrays: arr_type and n; elements through td_gguf_arr_*. */
typedef struct td_gguf_kv {
    const char *key;
    td_gguf_type_t type;
    td_gguf_type_t arr_type; /* arrays only */
    uint64_t n;              /* arrays: element count */
    const char *str;         /* strings only */
    uint64_t str_len;
    const void *data; /* scalars and numeric arrays: the raw little-endian value(s) in the file */
    const td_gguf_str_t *strs; /* string arrays: [n] */
} td_gguf_kv_t;

typedef struct td_gguf_tensor {
    const char *name;
    td_dtype_t dtype;
    uint32_t ggml_type;
    int ndim;
    int64_t ne[TD_GGUF_MAX_DIMS]; /* ggml order: ne[0] is the fastest-varying (columns) */
    uint64_t offset;              /* from the start of the data section */
    const void *data;             /* into the mapping */
    uint64_t nbytes;
} td_gguf_tensor_t;

typedef struct td_gguf td_gguf_t;

/* Opens and validates path (mmapped). NULL on failure with err naming the file and field. */
td_gguf_t *td_gguf_open(const char *path, td_err_t *err);
/* The same over a file image in memory (borrowed: buf must outlive the result); name is used in
 * messages. For tests and the fuzzer. */
td_gguf_t *td_gguf_from_memory(const void *buf, size_t len, const char *name, td_err_t *err);
void td_gguf_destroy(td_gguf_t **self_p); /* safe on NULL and twice */
/* Tells the kernel the whole pages of [p, p + n) inside the file's read-only mapping are not
 * needed now (madvise MADV_DONTNEED: they leave the process's resident memory and come back from
 * the file if read again; the bytes never change). No-op for borrowed memory or a range outside
 * the mapping. For weights a backend has copied into its own layout. */
void td_gguf_release(const td_gguf_t *g, const void *p, size_t n);

const char *td_gguf_path(const td_gguf_t *g);
uint32_t td_gguf_version(const td_gguf_t *g);
uint32_t td_gguf_alignment(const td_gguf_t *g);
uint64_t td_gguf_data_offset(const td_gguf_t *g); /* file offset of the data section */
uint64_t td_gguf_file_size(const td_gguf_t *g);

/* Metadata in file order; td_gguf_kv_at returns NULL out of range; td_gguf_find_kv by exact key. */
int64_t td_gguf_n_kv(const td_gguf_t *g);
const td_gguf_kv_t *td_gguf_kv_at(const td_gguf_t *g, int64_t i);
const td_gguf_kv_t *td_gguf_find_kv(const td_gguf_t *g, const char *key);

/* Typed getters. Each returns TD_OK and writes *out, 1 when the key is absent (*out untouched),
 * or TD_ERR_FORMAT (message naming file and key) when the value has another type or does not fit:
 * get_int accepts every integer type (u64 above INT64_MAX refused), get_float F32/F64 and the
 * integer types, get_bool BOOL, get_str STRING. */
int td_gguf_get_int(const td_gguf_t *g, const char *key, int64_t *out, td_err_t *err);
int td_gguf_get_float(const td_gguf_t *g, const char *key, double *out, td_err_t *err);
int td_gguf_get_bool(const td_gguf_t *g, const char *key, int *out, td_err_t *err);
int td_gguf_get_str(const td_gguf_t *g, const char *key, const char **out, td_err_t *err);
/* An array of elements of type want (TD_GGUF_TYPE_COUNT: any type): TD_OK with *kv, 1 when
 * absent, TD_ERR_FORMAT when not an array or its elements have another type. */
int td_gguf_get_arr(const td_gguf_t *g, const char *key, td_gguf_type_t want,
                    const td_gguf_kv_t **kv, td_err_t *err);
/* Array elements (i < kv->n; the caller checks the element type): a string's bytes and length
 * (not NUL-terminated), an integer or bool element as int64 (u64 above INT64_MAX: INT64_MAX), a
 * number. Out of range or the wrong element type: NULL / 0. */
const char *td_gguf_arr_str(const td_gguf_kv_t *kv, uint64_t i, uint64_t *len);
int64_t td_gguf_arr_int(const td_gguf_kv_t *kv, uint64_t i);
double td_gguf_arr_float(const td_gguf_kv_t *kv, uint64_t i);

/* Tensors in file order; td_gguf_find_tensor by exact name (hashed), NULL when absent. */
int64_t td_gguf_n_tensors(const td_gguf_t *g);
const td_gguf_tensor_t *td_gguf_tensor_at(const td_gguf_t *g, int64_t i);
const td_gguf_tensor_t *td_gguf_find_tensor(const td_gguf_t *g, const char *name);

#ifdef __cplusplus
}
#endif
#endif
