/* model.h - a loaded network and its batched multi-token forward pass with a KV cache.
 *
 * td_model_t borrows the checkpoint's mmapped weights (no dtype conversion, no copy on the CPU
 * backend). The forward takes any set of tokens with explicit positions and sequence slots and an
 * attention mask kind (causal, bidirectional, block-causal, explicit), writes their keys/values
 * into the KV cache at those positions (appending, or rewriting in place), and returns logits. */
#ifndef TD_MODEL_H
#define TD_MODEL_H

#include "common/td_common.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_model td_model_t;
typedef struct td_kv_cache td_kv_cache_t;

/* Loads a checkpoint: a directory (config.json + safetensors, single or sharded) or a .gguf file
 * (config from its metadata, td_config_from_gguf; llama.cpp's tensor names). Weights come through
 * a tensor source (model/tensor_source.h). Every expected tensor is checked for presence, shape
 * and dtype (F32, F16, BF16; matrices may also be GGUF block-quantized types, computed by the
 * backend's quantized kernels); errors name the file and the tensor. */
td_model_t *td_model_load(const char *path, td_backend_t *be, td_err_t *err);
/* The same for a process that reads only the token embedding and the LM head (a DFlash drafter
 * serving a remote verifier): only those two are placed in the backend's own layout and memory
 * (td_backend_prepare_weight); the layers stay in the file's mapping, untouched until read. A
 * forward on it gives the same results, slower. */
td_model_t *td_model_load_head_only(const char *path, td_backend_t *be, td_err_t *err);

/* A model with random weights of dtype (F32/F16/BF16), generated in memory from seed (for
 * benchmarks at real shapes without a checkpoint). */
td_model_t *td_model_new_synthetic(const td_config_t *cfg, td_dtype_t dtype, uint64_t seed,
                                   td_backend_t *be, td_err_t *err);
void td_model_destroy(td_model_t **self_p);

const td_config_t *td_model_config(const td_model_t *m);
td_backend_t *td_model_backend(const td_model_t *m);
int64_t td_model_n_params(const td_model_t *m);
uint64_t td_model_weight_bytes(const td_model_t *m); /* bytes read per forward (all weights) */
td_dtype_t td_model_dtype(const td_model_t *m);      /* dtype of the matmul weights */

/* The token embedding table [n_vocab, n_embd] and the LM head [n_vocab, n_embd] (the same weight
 * when tied), in backend memory and their stored dtype, borrowed (valid while m lives). A DFlash
 * drafter (drafter/dflash.h) computes with the target's own rows through these: no copy. */
const td_weight_t *td_model_tok_embd(const td_model_t *m);
const td_weight_t *td_model_lm_head(const td_model_t *m);

/* --- fingerprint ------------------------------------------------------------------------------ */

struct td_tensor_source;
/* One 64-bit value identifying a target checkpoint (a DFlash drafter lists the fingerprints of
 * the targets it was trained for). Definition (docs/dflash.md), all integers little-endian:
 * h = FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3) of the bytes
 *   "td-fp-v1", tokenizer_hash (u64), the arch name (td_arch_name, u32 length + bytes),
 *   n_layer, n_embd, n_vocab (u32 each),
 * then for every tensor of src in file order: its name (u32 length + bytes), dtype (u32,
 * td_dtype_t), ndim (u32), each dim (u64), nbytes (u64), then its data folded as 64-bit words:
 * for each whole 8-byte little-endian word w: h = (h ^ w) * prime; the 0..7 tail bytes one at a
 * time as FNV-1a. A result of 0 is mapped to 1 (never 0). Reads every weight byte once. */
uint64_t td_fingerprint_tensors(const struct td_tensor_source *src, const td_config_t *cfg,
                                uint64_t tokenizer_hash);
/* td_fingerprint_tensors over m's checkpoint; a synthetic model (no file) hashes no tensors. */
uint64_t td_model_fingerprint(const td_model_t *m, uint64_t tokenizer_hash);

/* --- KV cache --------------------------------------------------------------------------------- */

/* A cache of n_seq independent sequence slots of n_ctx positions each (float32). Slot position p
 * holds the keys/values of the token at position p. */
td_kv_cache_t *td_kv_cache_new(td_model_t *m, int n_seq, int n_ctx, td_err_t *err);
void td_kv_cache_destroy(td_kv_cache_t **self_p);
int td_kv_cache_n_seq(const td_kv_cache_t *kv);
int td_kv_cache_n_ctx(const td_kv_cache_t *kv);
/* Valid length of a sequence: positions 0 .. len-1 hold keys/values. */
int td_kv_cache_len(const td_kv_cache_t *kv, int seq);
/* Drops positions >= n of seq (n <= len). */
void td_kv_cache_crop(td_kv_cache_t *kv, int seq, int n);
/* Makes dst a copy of src's first len positions (draft branches sharing a prefix). */
int td_kv_cache_copy_seq(td_kv_cache_t *kv, int src, int dst, int len);
size_t td_kv_cache_bytes(const td_kv_cache_t *kv);
/* 1 when the cache keeps keys and values as IEEE halves: by default for models whose layer
 * weights are block-quantized (GGUF Q4_1, Q8_0, ...) on a backend that can (the CPU's), float32
 * otherwise; TD_KV_TYPE=f32|f16 in the environment overrides it (a backend without f16 caches
 * refuses f16). Halves the cache's memory and its reads in attention. */
int td_kv_cache_f16(const td_kv_cache_t *kv);

/* --- forward ---------------------------------------------------------------------------------- */

typedef struct td_batch {
    int n;                 /* tokens in the batch */
    const int32_t *tokens; /* [n]; may be NULL when embd is given */
    const int32_t *pos;    /* [n] positions; NULL = kv_len(seq) + i (append in order) */
    const int32_t *seq;    /* [n] cache slots; NULL = all slot 0 */
    td_attn_kind_t attn;   /* mask kind */
    int block_size;        /* TD_ATTN_BLOCK_CAUSAL */
    const uint8_t *mask;   /* TD_ATTN_EXPLICIT: [n, mask_stride], 1 = key position visible;
                              mask_stride >= the length each sequence reaches */
    int64_t mask_stride;
    const uint8_t *logits_for; /* [n] rows to return logits for; NULL = all */
    /* (optional) extra per-token input: the input embeddings [n, n_embd] (host memory), used
     * INSTEAD of the token embedding lookup tok_embd[tokens[i]] (not added to it); position
     * embeddings (GPT-2) are still added. Giving the embedding rows of some ids reproduces the
     * forward of those ids. tokens may then be NULL. */
    const float *embd;
    /* (optional) hidden states: for each of the n_out selected rows (logits_for) and each of the
     * n_hidden_layers entries L of hidden_layers (any order, repeats allowed, each in
     * 0..n_layer), hidden_out[(row * n_hidden_layers + k) * n_embd ..] receives the residual
     * stream at layer boundary L: L = 0 the input embeddings (after position embeddings), L = l
     * the output of decoder layer l, always BEFORE the final norm (so L = n_layer differs from
     * HF's last output_hidden_states entry, which has the final norm applied). hidden_out is
     * [n_out, n_hidden_layers, n_embd] floats in host memory. Works on every backend. */
    const int *hidden_layers;
    int n_hidden_layers;
    float *hidden_out;
} td_batch_t;

/* The most rows a td_model_forward may have while each row's logits (and keys/values) stay
 * bitwise what they are alone: the smallest td_backend_invariant_rows over the model's matmul
 * weights (INT_MAX: any size; 1: no promise). */
int td_model_invariant_rows(const td_model_t *m);

/* Runs the batch. Each token's keys/values are written at (seq, pos); a sequence's length becomes
 * max(old length, max pos + 1); positions must not leave a hole (pos <= current length, counting
 * tokens earlier in the batch) and must be < n_ctx. Query t of sequence s sees positions
 * 0 .. len(s)-1 of s (after the writes) filtered by the mask kind. logits receives n_out rows of
 * n_vocab floats (host memory), one per selected token in batch order, raw (no Dream shift: row i
 * is the prediction made from position i); logits may be NULL when only hidden states are
 * wanted. Returns TD_OK, or TD_ERR_ARG for a bad token id, position or slot, missing tokens and
 * embd, or a hidden layer outside 0..n_layer (or without hidden_out), with nothing in the cache
 * changed, or the error a device backend reported
 * during the pass (td_backend_status; the rows this batch wrote are then unreliable). */
int td_model_forward(td_model_t *m, td_kv_cache_t *kv, const td_batch_t *batch, float *logits,
                     td_err_t *err);

/* td_model_forward, but the logits stay in backend memory: each selected row is sampled there
 * (td_op_sample, kernels/backend.h) and only ids[n_out] and probs[n_out] (optional: NULL) come
 * back, n_out being the rows logits_for selects. ids follow td_sampling_dist(sp) exactly in
 * distribution; greedy settings give td_argmax of the row (ties to the lowest id) with prob 1, the
 * same ids as td_model_forward + td_sample. With sampling, row r's noise is seeded by one
 * td_rng_next(rng) per row (nothing is drawn for greedy settings; rng may then be NULL): another
 * stream than td_sample's Gumbel-max, so sampled ids differ from the host path's for the same
 * seed, with the same distribution (td_sample_seeded is the host reference of this stream).
 * On a CUDA backend 12 bytes per row come back instead of n_vocab floats. Errors as
 * td_model_forward; TD_ERR_ARG also for a temperature of +inf or sampling without rng (nothing
 * changed then); a failure of the sampling itself leaves the cache written by the pass. */
int td_model_forward_sample(td_model_t *m, td_kv_cache_t *kv, const td_batch_t *batch,
                            const td_sampling_t *sp, td_rng_t *rng, int32_t *ids, float *probs,
                            td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
