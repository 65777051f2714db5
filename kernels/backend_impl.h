/* backend_impl.h - what a backend implements: one static table of function pointers.
 * Only backend sources include this; everybody else uses backend.h. */
#ifndef TD_BACKEND_IMPL_H
#define TD_BACKEND_IMPL_H

#include "kernels/backend.h"

struct td_backend_i {
    const char *name;
    unsigned caps; /* TD_BACKEND_CAP_* (backend.h) */
    void (*destroy)(td_backend_t *be);
    void *(*alloc)(td_backend_t *be, size_t nbytes);
    void (*free)(td_backend_t *be, void *p);
    const void *(*weights)(td_backend_t *be, const void *host, size_t nbytes);
    void (*free_weights)(td_backend_t *be, const void *p);
    int (*prepare_weight)(td_backend_t *be, td_weight_t *w); /* (optional) */
    void (*set)(td_backend_t *be, void *dst, const void *src, size_t nbytes);
    void (*get)(td_backend_t *be, void *dst, const void *src, size_t nbytes);
    void (*copy)(td_backend_t *be, void *dst, const void *src, size_t nbytes);
    void (*sync)(td_backend_t *be); /* (optional) */

    void (*matmul)(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                   const td_weight_t *bias, int n);
    void (*get_rows)(td_backend_t *be, float *y, const td_weight_t *table, const int32_t *ids,
                     int n);
    void (*rmsnorm)(td_backend_t *be, float *y, const float *x, const td_weight_t *w, int n, int d,
                    float eps);
    void (*layernorm)(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                      const td_weight_t *b, int n, int d, float eps);
    void (*rope)(td_backend_t *be, float *x, const int32_t *pos, int n, int n_head, int head_dim,
                 int rot_dim, float theta, td_rope_layout_t layout);
    void (*swiglu)(td_backend_t *be, float *y, const float *gate, const float *up, int64_t count);
    void (*gelu_tanh)(td_backend_t *be, float *x, int64_t count);
    void (*add)(td_backend_t *be, float *y, const float *x, int64_t count);
    void (*scatter_rows)(td_backend_t *be, float *dst, int64_t row_stride, const float *src,
                         const int64_t *idx, int n, int d);
    /* k_cache/v_cache: float32, or uint16_t halves when desc->kv_f16 (backends with
     * scatter_rows_f16 only) */
    void (*attention)(td_backend_t *be, float *out, const float *q, const void *k_cache,
                      const void *v_cache, const td_attn_desc_t *desc);
    /* (optional) td_op_scatter_rows into an f16 cache (floats rounded to the nearest half); a
     * backend that has it supports desc->kv_f16 in attention (td_backend_kv_f16) */
    void (*scatter_rows_f16)(td_backend_t *be, uint16_t *dst, int64_t row_stride, const float *src,
                             const int64_t *idx, int n, int d);
    /* (optional) TD_OK, or the first failure since the last call (then cleared): for backends
     * whose ops cannot return an error themselves (CUDA launches run asynchronously) */
    int (*status)(td_backend_t *be, td_err_t *err);
    /* (optional) td_op_sample with its arguments checked (n_rows >= 1, n_vocab >= 1, seeds set
     * unless greedy); without it td_op_sample copies the rows to the host */
    int (*sample)(td_backend_t *be, const float *logits, int n_rows, int n_vocab,
                  const td_sample_desc_t *sp, const uint64_t *seeds, td_sample_result_t *out,
                  td_err_t *err);
    /* (optional) td_backend_invariant_rows; NULL: 1 (no promise beyond one row) */
    int (*invariant_rows)(const td_backend_t *be, td_dtype_t wdt);
};

/* td_op_sample on rows in host memory, one td_sample_seeded per row (backend.c): the CPU
 * backends' op, and the fallback of backends without one. */
int td_backend_sample_host(const float *logits, int n_rows, int n_vocab, const td_sample_desc_t *sp,
                           const uint64_t *seeds, td_sample_result_t *out, td_err_t *err);

struct td_backend {
    const struct td_backend_i *iface;
    void *ctx;
    int n_threads;
    char name[32];
};

#endif
