/* backend.h - the compute backend interface: one API over an opaque handle, as in ggml-backend.
 *
 * The model code calls only these functions; a backend (CPU here, CUDA in kernels/cuda/) fills one
 * static table of function pointers (backend_impl.h). Activations are always float32 in backend
 * memory; weights stay in their stored dtype (F32, F16 or BF16, and for matmul / get_rows also
 * GGUF's block-quantized types, kernels/quant.h) and are described by td_weight_t.
 * Pointers passed to ops are backend memory (td_backend_alloc / td_backend_weights). */
#ifndef TD_BACKEND_H
#define TD_BACKEND_H

#include "common/td_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_backend td_backend_t;

/* A weight matrix or vector in its stored dtype. A matrix computes y = x W^T: rows = out
 * features, cols = in features, stored [rows, cols] row-major; when transposed is set the
 * storage is [cols, rows] (GPT-2 Conv1D). A vector (norm weight, bias) has rows = 1. */
typedef struct td_weight {
    const void *data;
    td_dtype_t dtype;
    int64_t rows, cols;
    int transposed;
    int64_t ld; /* elements between consecutive stored rows; 0 = dense (cols, or rows when
                   transposed). Lets a weight be a column slice of a fused matrix (GPT-2 c_attn). */
    int layout; /* TD_WLAYOUT_ROWS (0): as in the file; or a backend's own regrouping of the same
                   bytes, set by td_backend_prepare_weight (TD_WLAYOUT_TILE16: kernels/cpu_quant.c) */
} td_weight_t;

enum { TD_WLAYOUT_ROWS = 0, TD_WLAYOUT_TILE16 = 1 };

/* Attention mask kinds (per query token, over key positions of its own sequence). */
typedef enum td_attn_kind {
    TD_ATTN_CAUSAL = 0,   /* key pos <= query pos */
    TD_ATTN_BIDIR,        /* every key position < kv_len of the sequence */
    TD_ATTN_BLOCK_CAUSAL, /* key_pos / block <= query_pos / block */
    TD_ATTN_EXPLICIT      /* mask[t * mask_stride + key_pos] != 0 */
} td_attn_kind_t;

/* One attention call over a batch of n query tokens. The KV cache of a layer is laid out
 * [n_seq_max, n_ctx, n_kv_head, head_dim] (float32, or IEEE half when kv_f16); a token of
 * sequence s at position p reads keys 0 .. kv_len[s]-1 of sequence s, filtered by the mask. */
typedef struct td_attn_desc {
    int n; /* query tokens */
    int n_head, n_kv_head, head_dim;
    int n_ctx;             /* cache capacity per sequence */
    const int32_t *pos;    /* [n] query positions (host memory) */
    const int32_t *seq;    /* [n] sequence of each query (host memory) */
    const int32_t *kv_len; /* [n_seq_max] valid cache length per sequence (host memory) */
    td_attn_kind_t kind;
    int block_size;      /* TD_ATTN_BLOCK_CAUSAL */
    const uint8_t *mask; /* TD_ATTN_EXPLICIT: [n, mask_stride] (host memory) */
    int64_t mask_stride;
    float scale; /* usually 1/sqrt(head_dim) */
    int kv_f16;  /* the cache holds halves (td_backend_kv_f16 backends only; 0: float32) */
} td_attn_desc_t;

/* Sampling settings of td_op_sample: kernels/sampler.h's td_sampling_t, repeated here so that the
 * backends do not depend on model/. */
typedef struct td_sample_desc {
    float temperature; /* <= 0 or NaN: greedy (argmax, ties to the lowest id); +inf is refused */
    int top_k;         /* <= 0 or >= n_vocab: off */
    float top_p;       /* >= 1 or NaN: off; <= 0 keeps one id */
} td_sample_desc_t;

/* What td_op_sample returns per row: the only numbers that leave the device. */
typedef struct td_sample_result {
    int32_t id;     /* the chosen token */
    float prob;     /* its probability under td_sampling_dist (1 for greedy) */
    int32_t n_kept; /* size of the kept set (what td_sampling_dist returns; 1 for greedy) */
} td_sample_result_t;

/* --- construction ------------------------------------------------------------------------- */

/* CPU backend: OpenBLAS for large GEMMs, SIMD kernels for skinny ones, plain C for the rest.
 * n_threads <= 0 means all cores. reference != 0 selects naive loops everywhere (double
 * accumulation, no BLAS, no SIMD): slow, used by tests as the ground truth for the fast paths.
 * Threads are per backend: every OpenMP loop of the backend names its own n_threads (two CPU
 * backends with different counts coexist; the process-wide OpenMP default is left alone). What
 * cannot be per backend: OpenBLAS's thread count is one process-wide setting (no per-call
 * count; a per-thread one, openblas_set_num_threads_local, only from OpenBLAS 0.3.27, and CI's is
 * 0.3.21), so every CPU backend sets it to 1 and calls SGEMM
 * from its own OpenMP threads, one block each; a caller that wants a multi-threaded OpenBLAS for
 * its own use must set it again after creating a backend. Out of memory inside an op (scratch
 * growth) is recorded and reported by td_backend_status (the op's output is then undefined);
 * the CPU backend never aborts. */
td_backend_t *td_backend_cpu_new(int n_threads, int reference, td_err_t *err);

/* The CPU backend's skinny products on F32/F16/BF16 weights (n <= 24 tokens: decode, short
 * verification blocks) have these implementations: "avx2" (always, in this x86-64-v3 build),
 * "avx512" (AVX-512 F/BW/VL/DQ, 16 wide) and "avx512bf16" (as avx512, but BF16 weights meet
 * activations rounded to bf16 in vdpbf16ps: lossy, never chosen by "auto"). Each is batch
 * invariant; different paths agree to rounding, not bitwise. "auto" (the default) takes avx512
 * where cpuid reports it, unless the environment variable TD_CPU_FLOAT_KERNELS names one. Selects
 * by name, process-wide: TD_OK, TD_ERR_ARG (unknown) or TD_ERR_UNSUPPORTED (not on this CPU). Not
 * thread-safe against running products. */
int td_cpu_float_kernels_select(const char *name, td_err_t *err);
/* The float kernels in use ("avx2", "avx512", "avx512bf16"; "scalar" in a build without AVX2). */
const char *td_cpu_float_kernels_name(void);
/* 1 when this CPU can run the named float kernels. */
int td_cpu_float_kernels_available(const char *name);

/* Destroys the backend and nulls *be; safe on NULL and twice. Memory allocated from it must
 * have been freed first. */
void td_backend_destroy(td_backend_t **be);

const char *td_backend_name(const td_backend_t *be); /* "cpu", "cpu-ref", "cuda:0" */
int td_backend_n_threads(const td_backend_t *be);

/* --- memory ------------------------------------------------------------------------------- */

void *td_backend_alloc(td_backend_t *be, size_t nbytes); /* zeroed; NULL on failure */
void td_backend_free(td_backend_t *be, void *p);
/* Makes a weight usable by the backend. CPU: returns host_data itself (the mmap, no copy).
 * Device backends copy it once. NULL on failure. Released by td_backend_free_weights. */
const void *td_backend_weights(td_backend_t *be, const void *host_data, size_t nbytes);
void td_backend_free_weights(td_backend_t *be, const void *p);
/* Lets the backend regroup a placed weight (w filled: data from td_backend_weights, dtype,
 * shape) into the layout its kernels read fastest, without changing any result: the CPU backend
 * regroups Q4_1 and Q8_0 matrices into 16-row tiles (kernels/cpu_quant.c; TD_QREPACK=0 turns it
 * off). On success w->data may point to a new block, which the caller releases with
 * td_backend_free_weights (besides the original); returns TD_OK, or TD_ERR_NOMEM with w
 * unchanged. Backends without the hook leave w as it is. */
int td_backend_prepare_weight(td_backend_t *be, td_weight_t *w);
void td_backend_set(td_backend_t *be, void *dst, const void *host_src, size_t nbytes);
void td_backend_get(td_backend_t *be, void *host_dst, const void *src, size_t nbytes);
void td_backend_copy(td_backend_t *be, void *dst, const void *src, size_t nbytes);
void td_backend_sync(td_backend_t *be);
/* TD_OK when every op since the last call succeeded, else the first failure (code and message in
 * err), which is then cleared. Ops return nothing; td_model_forward checks this at its end. */
int td_backend_status(td_backend_t *be, td_err_t *err);

/* What a backend can do, as flags (td_backend_caps): asked for by capability, never by name. */
enum {
    /* its memory is host memory: a pointer from td_backend_alloc can be read directly and
     * td_backend_get is a memcpy (the CPU backends) */
    TD_BACKEND_CAP_HOST_MEMORY = 1u << 0,
    /* td_op_sample runs on the backend itself (no copy of the rows to the host) */
    TD_BACKEND_CAP_DEVICE_SAMPLE = 1u << 1,
    /* n_threads applies to this backend's own parallel loops only (OpenMP num_threads clauses);
     * see td_backend_cpu_new for what stays process-wide */
    TD_BACKEND_CAP_OWN_THREADS = 1u << 2,
};
/* The TD_BACKEND_CAP_* flags of be (0 for NULL). */
unsigned td_backend_caps(const td_backend_t *be);

/* 1 when be can keep a KV cache in IEEE half floats (td_op_scatter_rows_f16 and
 * td_attn_desc_t.kv_f16): the CPU backends. */
int td_backend_kv_f16(const td_backend_t *be);

/* Batch invariance: the most rows td_op_matmul on weights of dtype wdt may have while every row's
 * result stays bitwise what it is alone (whatever the other rows), or INT_MAX for every batch
 * size. A backend may switch arithmetic with the batch size (the CPU's float weights: its own
 * kernels up to 24 rows, SGEMM beyond); callers that promise batch invariance (the driver:
 * speculative verification == AR steps, a served request == its solo run) keep passes within it.
 * 1 for NULL or a backend that makes no promise. */
int td_backend_invariant_rows(const td_backend_t *be, td_dtype_t wdt);

/* 1 when be has TD_BACKEND_CAP_HOST_MEMORY. */
int td_backend_host_memory(const td_backend_t *be);

/* --- ops (float32 activations; shapes in comments) ----------------------------------------- */

/* y[n, w->rows] = x[n, w->cols] W^T (+ bias[w->rows] when bias != NULL) */
void td_op_matmul(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                  const td_weight_t *bias, int n);
/* y[n, table->cols] = table[ids[i], :] ; ids in host memory, each in [0, table->rows) */
void td_op_get_rows(td_backend_t *be, float *y, const td_weight_t *table, const int32_t *ids,
                    int n);
/* y[n, d] = x / sqrt(mean(x^2) + eps) * w ; y may equal x */
void td_op_rmsnorm(td_backend_t *be, float *y, const float *x, const td_weight_t *w, int n, int d,
                   float eps);
/* y[n, d] = (x - mean) / sqrt(var + eps) * w + b ; b may be NULL ; y may equal x */
void td_op_layernorm(td_backend_t *be, float *y, const float *x, const td_weight_t *w,
                     const td_weight_t *b, int n, int d, float eps);
/* Which dims of a head RoPE rotates together. Pair i (i < rot_dim/2) turns by pos * theta^(-2i/
 * rot_dim) in both layouts. */
typedef enum td_rope_layout {
    /* HF "rotate_half": dims i and i + rot_dim/2 (llama.cpp's NEOX mode) */
    TD_ROPE_HALF = 0,
    /* adjacent dims 2i and 2i+1 (llama.cpp's normal mode): GGUF llama, whose converter permuted
     * the Q/K rows so that this equals HF's rotation on the original weights */
    TD_ROPE_INTERLEAVED,
} td_rope_layout_t;

/* Rotary embedding in place: x[n, n_head, head_dim], the first rot_dim dims of each head rotated
 * in pairs chosen by layout, pos in host memory. */
void td_op_rope(td_backend_t *be, float *x, const int32_t *pos, int n, int n_head, int head_dim,
                int rot_dim, float theta, td_rope_layout_t layout);
/* y[i] = silu(gate[i]) * up[i], i < count ; y may equal gate */
void td_op_swiglu(td_backend_t *be, float *y, const float *gate, const float *up, int64_t count);
/* x[i] = gelu_tanh(x[i]) in place */
void td_op_gelu_tanh(td_backend_t *be, float *x, int64_t count);
/* y[i] += x[i] */
void td_op_add(td_backend_t *be, float *y, const float *x, int64_t count);
/* dst[idx[i] * row_stride + j] = src[i * d + j] for j < d (KV cache writes); idx in host memory */
void td_op_scatter_rows(td_backend_t *be, float *dst, int64_t row_stride, const float *src,
                        const int64_t *idx, int n, int d);
/* The same into an f16 cache: each value rounded to the nearest half, ties to even
 * (td_f32_to_f16). Only where td_backend_kv_f16(be). */
void td_op_scatter_rows_f16(td_backend_t *be, uint16_t *dst, int64_t row_stride, const float *src,
                            const int64_t *idx, int n, int d);
/* out[n, n_head, head_dim] = softmax(q k^T * scale + mask) v over the cache (see td_attn_desc_t);
 * q is [n, n_head, head_dim]; GQA maps head h to kv head h / (n_head / n_kv_head). A query that
 * sees no key gets zeros. */
void td_op_attention(td_backend_t *be, float *out, const float *q, const void *k_cache,
                     const void *v_cache, const td_attn_desc_t *desc);

/* --- sampling on the backend ----------------------------------------------------------------- */

/* Draws one token from each of n_rows rows of logits[n_rows, n_vocab] (backend memory) and writes
 * only out[n_rows] (host memory): the id, its probability and the kept-set size. The distribution
 * is exactly kernels/sampler.h's td_sampling_dist (temperature, top-k keeping ties, HF's top-p
 * rule, NaN as -inf; no finite logit: one-hot on td_argmax). Greedy settings return td_argmax (ties
 * to the lowest id) with prob 1 and ignore seeds. The draw is not td_sample's Gumbel-max stream:
 * row r uses Gumbel-max with counter-based noise, the uniform of token i being
 * td_sample_bits(seeds[r], i) (kernels/sampler.h, td_sample_seeded is the host reference). Every
 * backend draws the same id from the same seed and logits, up to last-bit differences of log/exp
 * and of sums (a near tie of two Gumbel scores, or a top-p cut whose cumulative mass equals top_p *
 * Z within double rounding); for the same td_rng seed these ids differ from td_sample's, with the
 * same distribution. prob is td_sampling_dist's probs[id] (bitwise on the CPU backend; the CUDA
 * backend sums the normaliser in another order: within 1e-6 relative). The CPU backends run
 * td_sample_seeded per row; the CUDA backend runs kernels/cuda/sample.cu; a backend without the op
 * copies the rows to the host and does the same. seeds[n_rows] (host memory) may be NULL for greedy
 * settings. Returns TD_OK, TD_ERR_ARG (bad sizes or pointers, temperature +inf, no seeds for
 * sampling), TD_ERR_NOMEM, or a device backend's failure (which includes one from the ops before
 * it: this call waits for the device, as td_backend_status). */
int td_op_sample(td_backend_t *be, const float *logits, int n_rows, int n_vocab,
                 const td_sample_desc_t *sp, const uint64_t *seeds, td_sample_result_t *out,
                 td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
