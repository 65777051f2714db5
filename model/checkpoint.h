/* checkpoint.h - the parts of a checkpoint other than its weights, whatever its format.
 *
 * A checkpoint is a directory (config.json, tokenizer.json, safetensors) or a GGUF file (all of
 * it in one file: metadata, tokenizer.ggml.* arrays, tensors). td_model_load (model.h) takes
 * either; this opens the tokenizer of either. */
#ifndef TD_CHECKPOINT_H
#define TD_CHECKPOINT_H

#include "common/td_common.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The tokenizer.ggml.* vocabulary of a GGUF file, as plain arrays pointing into the file. */
typedef struct td_gguf_vocab {
    const char *model; /* tokenizer.ggml.model ("gpt2" = byte-level BPE) */
    const char *pre;   /* tokenizer.ggml.pre, NULL when absent */
    int64_t n_tokens;
    const td_gguf_str_t *tokens;    /* [n_tokens] */
    const td_gguf_kv_t *token_type; /* i32 array [n_tokens], NULL when absent */
    int64_t n_merges;
    const td_gguf_str_t *merges;            /* [n_merges] "left right", NULL when absent */
    int32_t bos_id, eos_id, unk_id, pad_id; /* -1 when absent */
    int add_bos, add_eos;                   /* -1 when absent */
} td_gguf_vocab_t;

/* Reads the vocabulary arrays of g (no copy; valid while g lives). TD_ERR_FORMAT naming the key
 * when a key has the wrong type, the token list is missing, or token_type has another length. */
int td_gguf_vocab_read(const td_gguf_t *g, td_gguf_vocab_t *v, td_err_t *err);

/* The tokenizer of a checkpoint: DIR or DIR/tokenizer.json as td_tokenizer_load, a .gguf file
 * from its tokenizer.ggml.* metadata. */
td_tokenizer_t *td_checkpoint_tokenizer(const char *path, td_err_t *err);

/* Where the tokenizer of checkpoint `name` (a directory or .gguf base name) comes from, for
 * messages: "NAME (GGUF)" for a .gguf, else "NAME/tokenizer.json" (name cut to 40 bytes). */
void td_checkpoint_tokenizer_origin(const char *name, char *buf, size_t cap);

/* td_fingerprint_tensors (model/model.h) of the checkpoint at path (directory or .gguf) with its
 * own tokenizer's td_tokenizer_hash: TD_OK and *out, or the error of opening it. */
int td_checkpoint_fingerprint(const char *path, uint64_t *out, td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
