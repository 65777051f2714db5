/* backend.c - the dispatching wrappers of backend.h: check arguments, call the backend's table. */
#include "kernels/backend_impl.h"
#include "kernels/sampler.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void td_backend_destroy(td_backend_t **be) {
    if (!be || !*be) return;
    (*be)->iface->destroy(*be);
    *be = NULL;
}

const char *td_backend_name(const td_backend_t *be) { return be->name; }
int td_backend_n_threads(const td_backend_t *be) { return be->n_threads; }

void *td_backend_alloc(td_backend_t *be, size_t nbytes) { return be->iface->alloc(be, nbytes); }
void td_backend_free(td_backend_t *be, void *p) {
    if (p) be->iface->free(be, p);
}
const void *td_backend_weights(td_backend_t *be, const void *host, size_t nbytes) {
    return be->iface->weights(be, host, nbytes);
}
void td_backend_free_weights(td_backend_t *be, const void *p) {
    if (p) be->iface->free_weights(be, p);
}
int td_backend_prepare_weight(td_backend_t *be, td_weight_t *w) {
    return be->iface->prepare_weight ? be->iface->prepare_weight(be, w) : TD_OK;
}
void td_backend_set(td_backend_t *be, void *dst, const void *src, size_t n) {
    be->iface->set(be, dst, src, n);
}
void td_backend_get(td_backend_t *be, void *dst, const void *src, size_t n) {
    be->iface->get(be, dst, src, n);
}
void td_backend_copy(td_backend_t *be, void *dst, const void *src, size_t n) {
    be->iface->copy(be, dst, src, n);
}
void td_backend_sync(td_backend_t *be) {
    if (be->iface->sync) be->iface->sync(be);
}

int td_backend_status(td_backend_t *be, td_err_t *err) {
    return be->iface->status ? be->iface->status(be, err) : TD_OK;
}

static int s_weight_ok(const td_weight_t *w) {
    return w && w->data && w->rows > 0 && w->cols > 0 &&
           (w->dtype == TD_DTYPE_F32 || w->dtype == TD_DTYPE_F16 || w->dtype == TD_DTYPE_BF16);
}

/* A matrix operand (matmul, get_rows) may also be block-quantized: stored row-major, cols and ld
 * multiples of the block. */
static int s_matrix_ok(const td_weight_t *w) {
    if (s_weight_ok(w)) return 1;
    if (!w || !w->data || w->rows <= 0 || w->cols <= 0 || !td_dtype_is_quantized(w->dtype))
        return 0;
    const int b = td_dtype_block_elems(w->dtype);
    return !w->transposed && w->cols % b == 0 && w->ld % b == 0;
}

void td_op_matmul(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                  const td_weight_t *bias, int n) {
    assert(s_matrix_ok(w) && n >= 0);
    assert(!bias || (s_weight_ok(bias) && bias->rows * bias->cols >= w->rows));
    if (n == 0) return;
    be->iface->matmul(be, y, x, w, bias, n);
}
void td_op_get_rows(td_backend_t *be, float *y, const td_weight_t *t, const int32_t *ids, int n) {
    assert(s_matrix_ok(t));
    be->iface->get_rows(be, y, t, ids, n);
}
void td_op_rmsnorm(td_backend_t *be, float *y, const float *x, const td_weight_t *w, int n, int d,
                   float eps) {
    assert(s_weight_ok(w) && w->rows * w->cols == d);
    be->iface->rmsnorm(be, y, x, w, n, d, eps);
}
void td_op_layernorm(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                     const td_weight_t *b, int n, int d, float eps) {
    assert(s_weight_ok(w) && w->rows * w->cols == d);
    be->iface->layernorm(be, y, x, w, b, n, d, eps);
}
void td_op_rope(td_backend_t *be, float *x, const int32_t *pos, int n, int n_head, int head_dim,
                int rot_dim, float theta, td_rope_layout_t layout) {
    assert(rot_dim % 2 == 0 && rot_dim <= head_dim);
    assert(layout == TD_ROPE_HALF || layout == TD_ROPE_INTERLEAVED);
    be->iface->rope(be, x, pos, n, n_head, head_dim, rot_dim, theta, layout);
}
void td_op_swiglu(td_backend_t *be, float *y, const float *g, const float *u, int64_t count) {
    be->iface->swiglu(be, y, g, u, count);
}
void td_op_gelu_tanh(td_backend_t *be, float *x, int64_t count) {
    be->iface->gelu_tanh(be, x, count);
}
void td_op_add(td_backend_t *be, float *y, const float *x, int64_t count) {
    be->iface->add(be, y, x, count);
}
void td_op_scatter_rows(td_backend_t *be, float *dst, int64_t row_stride, const float *src,
                        const int64_t *idx, int n, int d) {
    be->iface->scatter_rows(be, dst, row_stride, src, idx, n, d);
}
void td_op_scatter_rows_f16(td_backend_t *be, uint16_t *dst, int64_t row_stride, const float *src,
                            const int64_t *idx, int n, int d) {
    assert(be->iface->scatter_rows_f16);
    be->iface->scatter_rows_f16(be, dst, row_stride, src, idx, n, d);
}
void td_op_attention(td_backend_t *be, float *out, const float *q, const void *k_cache,
                     const void *v_cache, const td_attn_desc_t *desc) {
    assert(desc->n_kv_head > 0 && desc->n_head % desc->n_kv_head == 0);
    assert(!desc->kv_f16 || be->iface->scatter_rows_f16);
    be->iface->attention(be, out, q, k_cache, v_cache, desc);
}

unsigned td_backend_caps(const td_backend_t *be) { return be && be->iface ? be->iface->caps : 0; }

int td_backend_kv_f16(const td_backend_t *be) {
    return be && be->iface && be->iface->scatter_rows_f16 != NULL;
}

int td_backend_invariant_rows(const td_backend_t *be, td_dtype_t wdt) {
    return be && be->iface && be->iface->invariant_rows ? be->iface->invariant_rows(be, wdt) : 1;
}

int td_backend_host_memory(const td_backend_t *be) {
    return (td_backend_caps(be) & TD_BACKEND_CAP_HOST_MEMORY) != 0;
}

/* --- sampling -------------------------------------------------------------------------------- */

static int s_desc_greedy(const td_sample_desc_t *sp) { return !(sp->temperature > 0.0f); }

int td_backend_sample_host(const float *logits, int n_rows, int n_vocab, const td_sample_desc_t *sp,
                           const uint64_t *seeds, td_sample_result_t *out, td_err_t *err) {
    const td_sampling_t s = {sp->temperature, sp->top_k, sp->top_p};
    const int greedy = s_desc_greedy(sp);
    for (int r = 0; r < n_rows; r++) {
        float prob = 0.0f;
        int kept = 0;
        int id = td_sample_seeded(&s, greedy ? 0 : seeds[r], logits + (size_t)r * (size_t)n_vocab,
                                  n_vocab, &prob, &kept);
        if (id < 0)
            return td_err_set(err, id, "sampling row %d of %d: %s", r, n_rows,
                              id == TD_ERR_NOMEM ? "out of memory" : "bad arguments");
        out[r].id = id;
        out[r].prob = prob;
        out[r].n_kept = kept;
    }
    return TD_OK;
}

int td_op_sample(td_backend_t *be, const float *logits, int n_rows, int n_vocab,
                 const td_sample_desc_t *sp, const uint64_t *seeds, td_sample_result_t *out,
                 td_err_t *err) {
    if (!be || !sp || n_rows < 0 || (n_rows > 0 && (!logits || !out)))
        return td_err_set(err, TD_ERR_ARG, "td_op_sample: missing argument or negative row count");
    if (n_vocab <= 0)
        return td_err_set(err, TD_ERR_ARG, "td_op_sample: vocabulary size %d", n_vocab);
    if (sp->temperature == INFINITY)
        return td_err_set(err, TD_ERR_ARG, "td_op_sample: temperature must be finite");
    if (n_rows == 0) return TD_OK;
    if (!s_desc_greedy(sp) && !seeds)
        return td_err_set(err, TD_ERR_ARG, "td_op_sample: sampling needs one seed per row");
    if (be->iface->sample)
        return be->iface->sample(be, logits, n_rows, n_vocab, sp, seeds, out, err);
    /* no device op: the rows come to the host */
    const size_t bytes = (size_t)n_rows * (size_t)n_vocab * sizeof(float);
    float *host = malloc(bytes);
    if (!host)
        return td_err_set(err, TD_ERR_NOMEM, "td_op_sample: out of memory (%zu bytes)", bytes);
    td_backend_get(be, host, logits, bytes);
    int rc = td_backend_status(be, err);
    if (rc == TD_OK) rc = td_backend_sample_host(host, n_rows, n_vocab, sp, seeds, out, err);
    free(host);
    return rc;
}
