/* tensor_source.h - where a model's weights come from: one interface over checkpoint formats.
 *
 * Model binding (model.c) sees only this: find a tensor by name and get its dtype, its shape in
 * HF row-major order ([rows, cols] for a matrix: cols is the contiguous dimension), a pointer to
 * its bytes (borrowed from the format's mmap) and the file it lives in. Two implementations:
 * safetensors (a directory, a .safetensors file or an index; names are the checkpoint's own) and
 * GGUF (names are llama.cpp's: token_embd.weight, blk.N.attn_q.weight, ...; GGUF stores dims
 * fastest first, reported here reversed, so a GGUF ne = [cols, rows] becomes [rows, cols]). */
#ifndef TD_TENSOR_SOURCE_H
#define TD_TENSOR_SOURCE_H

#include "common/td_common.h"
#include "model/gguf.h"
#include "model/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TD_TENSOR_MAX_DIMS 8

typedef enum td_tensor_format { TD_FORMAT_SAFETENSORS = 0, TD_FORMAT_GGUF } td_tensor_format_t;

typedef struct td_tensor_info {
    const char *name;
    td_dtype_t dtype;
    int ndim;
    int64_t shape[TD_TENSOR_MAX_DIMS]; /* HF order: slowest first, the last dim contiguous */
    const void *data;                  /* host memory (the mmap) */
    uint64_t nbytes;
    const char *file; /* the file holding it */
} td_tensor_info_t;

typedef struct td_tensor_source td_tensor_source_t;

/* 1 when path names a GGUF file (ends in ".gguf", any case). */
int td_path_is_gguf(const char *path);

/* Opens a checkpoint: a path ending in .gguf as GGUF, anything else as safetensors (see
 * td_safetensors_open). NULL on failure with err naming the file. */
td_tensor_source_t *td_tensor_source_open(const char *path, td_err_t *err);
/* Wraps an opened file; the source takes ownership (and destroys it with itself). NULL and
 * TD_ERR_NOMEM on failure, the file then destroyed too. */
td_tensor_source_t *td_tensor_source_from_safetensors(td_safetensors_t *st, td_err_t *err);
td_tensor_source_t *td_tensor_source_from_gguf(td_gguf_t *g, td_err_t *err);
void td_tensor_source_destroy(td_tensor_source_t **self_p); /* safe on NULL and twice */
/* Drops the resident pages of a tensor's bytes the caller no longer reads (td_gguf_release,
 * td_safetensors_release). */
void td_tensor_source_release(const td_tensor_source_t *s, const void *p, size_t n);

td_tensor_format_t td_tensor_source_format(const td_tensor_source_t *s);
const char *td_tensor_source_path(const td_tensor_source_t *s); /* first file */

/* Finds name: 1 and *out filled, or 0 when absent. */
int td_tensor_source_find(const td_tensor_source_t *s, const char *name, td_tensor_info_t *out);
/* Iteration in file order: 1 and *out filled for i < count, else 0. */
int64_t td_tensor_source_count(const td_tensor_source_t *s);
int td_tensor_source_at(const td_tensor_source_t *s, int64_t i, td_tensor_info_t *out);
uint64_t td_tensor_source_total_bytes(const td_tensor_source_t *s);

/* String metadata by key (safetensors __metadata__; GGUF string values), NULL when absent. */
const char *td_tensor_source_metadata(const td_tensor_source_t *s, const char *key);
/* The file behind s (typed metadata, shard lists), or NULL when s is of the other format. */
const td_gguf_t *td_tensor_source_gguf(const td_tensor_source_t *s);
const td_safetensors_t *td_tensor_source_safetensors(const td_tensor_source_t *s);

#ifdef __cplusplus
}
#endif
#endif
