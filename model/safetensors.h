/* safetensors.h - read-only, zero-copy access to safetensors checkpoints (single file or sharded).
 *
 * Files are mmapped; tensor data pointers point into the mapping and stay valid until the
 * td_safetensors_t is destroyed. Nothing is converted or copied. Data is aligned to its element
 * size only when the writer padded the header to a multiple of 8 bytes (the safetensors library
 * and transformers always do); readers of hand-made files should not assume alignment. */
#ifndef TD_SAFETENSORS_H
#define TD_SAFETENSORS_H

#include "common/td_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TD_ST_MAX_DIMS 8

typedef struct td_st_tensor {
    const char *name;
    td_dtype_t dtype;
    int ndim;
    int64_t shape[TD_ST_MAX_DIMS];
    const void *data; /* into the mmap */
    uint64_t nbytes;
    int file; /* index into the shard list */
} td_st_tensor_t;

typedef struct td_safetensors td_safetensors_t;

/* Opens a checkpoint. path may be a .safetensors file, a model.safetensors.index.json, or a
 * directory holding either (model.safetensors preferred, then the index). Every header is
 * validated: size fields against the file size, JSON syntax, dtypes, shapes against byte ranges,
 * ranges inside the data section and not overlapping. On failure returns NULL and err names the
 * file (and tensor) at fault. Names are unique across all files. For an index, every shard it
 * names is opened once and must hold the tensors the weight_map assigns to it; tensors present in
 * a shard but absent from the map are loaded too; shards get file indices in file-name order.
 * Header size is limited to 100 MB. */
td_safetensors_t *td_safetensors_open(const char *path, td_err_t *err);
/* Unmaps everything and sets *self_p to NULL; safe on NULL and twice. */
void td_safetensors_destroy(td_safetensors_t **self_p);
/* As td_gguf_release: the whole pages of [p, p + n) in a file's read-only mapping leave resident
 * memory (MADV_DONTNEED; read again, they come back from the file). No-op for borrowed memory. */
void td_safetensors_release(const td_safetensors_t *st, const void *p, size_t n);

/* Tensors in file order, then header order; td_safetensors_at returns NULL out of range. */
int td_safetensors_count(const td_safetensors_t *st);
const td_st_tensor_t *td_safetensors_at(const td_safetensors_t *st, int i);
/* Hash lookup by exact name; NULL when absent. */
const td_st_tensor_t *td_safetensors_find(const td_safetensors_t *st, const char *name);
int td_safetensors_n_files(const td_safetensors_t *st);
const char *td_safetensors_file_path(const td_safetensors_t *st, int file);
uint64_t td_safetensors_total_bytes(const td_safetensors_t *st); /* sum of tensor bytes */

/* Number of elements of t (product of its shape; 1 for a scalar). */
int64_t td_safetensors_n_elements(const td_st_tensor_t *t);

/* The "__metadata__" string map of every file, in file order (a key may repeat across shards).
 * td_safetensors_metadata returns the first value for key, or NULL. */
int td_safetensors_n_metadata(const td_safetensors_t *st);
const char *td_safetensors_metadata_at(const td_safetensors_t *st, int i, const char **value);
const char *td_safetensors_metadata(const td_safetensors_t *st, const char *key);

/* Parses one file image already in memory (buf, len = the whole file). Used by the fuzzer and by
 * tests; the returned object borrows buf (which must outlive it). name is used in messages. */
td_safetensors_t *td_safetensors_from_memory(const void *buf, size_t len, const char *name,
                                             td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
