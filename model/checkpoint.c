/* checkpoint.c - tokenizer of a checkpoint directory or GGUF file (checkpoint.h). */
#include "model/checkpoint.h"

#include "model/tensor_source.h"

#include <string.h>

static int s_id(const td_gguf_t *g, const char *key, int32_t *out, td_err_t *err) {
    int64_t v = -1;
    int rc = td_gguf_get_int(g, key, &v, err);
    if (rc < 0) return rc;
    if (rc == 1) v = -1;
    if (v < -1 || v > INT32_MAX)
        return td_err_set(err, TD_ERR_FORMAT, "%s: metadata '%s' = %lld is not a token id",
                          td_gguf_path(g), key, (long long)v);
    *out = (int32_t)v;
    return TD_OK;
}

int td_gguf_vocab_read(const td_gguf_t *g, td_gguf_vocab_t *v, td_err_t *err) {
    memset(v, 0, sizeof *v);
    v->add_bos = v->add_eos = -1;
    const td_gguf_kv_t *toks = NULL, *merges = NULL, *types = NULL;
    int rc;
    if ((rc = td_gguf_get_str(g, "tokenizer.ggml.model", &v->model, err)) < 0) return rc;
    if (rc == 1)
        return td_err_set(err, TD_ERR_FORMAT, "%s: metadata 'tokenizer.ggml.model' is missing",
                          td_gguf_path(g));
    if ((rc = td_gguf_get_str(g, "tokenizer.ggml.pre", &v->pre, err)) < 0) return rc;
    if ((rc = td_gguf_get_arr(g, "tokenizer.ggml.tokens", TD_GGUF_STRING, &toks, err)) < 0)
        return rc;
    if (rc == 1)
        return td_err_set(err, TD_ERR_FORMAT, "%s: metadata 'tokenizer.ggml.tokens' is missing",
                          td_gguf_path(g));
    v->n_tokens = (int64_t)toks->n;
    v->tokens = toks->strs;
    if ((rc = td_gguf_get_arr(g, "tokenizer.ggml.token_type", TD_GGUF_I32, &types, err)) < 0)
        return rc;
    if (types && types->n != toks->n)
        return td_err_set(
            err, TD_ERR_FORMAT, "%s: tokenizer.ggml.token_type has %llu entries for %llu tokens",
            td_gguf_path(g), (unsigned long long)types->n, (unsigned long long)toks->n);
    v->token_type = types;
    if ((rc = td_gguf_get_arr(g, "tokenizer.ggml.merges", TD_GGUF_STRING, &merges, err)) < 0)
        return rc;
    if (merges) {
        v->n_merges = (int64_t)merges->n;
        v->merges = merges->strs;
    }
    int b;
    if ((rc = s_id(g, "tokenizer.ggml.bos_token_id", &v->bos_id, err)) < 0 ||
        (rc = s_id(g, "tokenizer.ggml.eos_token_id", &v->eos_id, err)) < 0 ||
        (rc = s_id(g, "tokenizer.ggml.unknown_token_id", &v->unk_id, err)) < 0 ||
        (rc = s_id(g, "tokenizer.ggml.padding_token_id", &v->pad_id, err)) < 0)
        return rc;
    if ((rc = td_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b, err)) < 0) return rc;
    if (rc == TD_OK) v->add_bos = b;
    if ((rc = td_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b, err)) < 0) return rc;
    if (rc == TD_OK) v->add_eos = b;
    return TD_OK;
}

/* The one place a GGUF vocabulary becomes a tokenizer: the constructor from plain arrays
 * (tokenizer.c) is not in this branch yet. */
static td_tokenizer_t *s_tokenizer_from_vocab(const td_gguf_t *g, const td_gguf_vocab_t *v,
                                              td_err_t *err) {
    td_err_set(err, TD_ERR_UNSUPPORTED,
               "%s: the tokenizer from GGUF is not available yet (tokenizer.ggml.model '%s', pre "
               "'%s', %lld tokens, %lld merges)",
               td_gguf_path(g), v->model, v->pre ? v->pre : "(none)", (long long)v->n_tokens,
               (long long)v->n_merges);
    return NULL;
}

td_tokenizer_t *td_checkpoint_tokenizer(const char *path, td_err_t *err) {
    if (!td_path_is_gguf(path)) return td_tokenizer_load(path, err);
    td_gguf_t *g = td_gguf_open(path, err);
    if (!g) return NULL;
    td_gguf_vocab_t v;
    td_tokenizer_t *tok = NULL;
    if (td_gguf_vocab_read(g, &v, err) == TD_OK) tok = s_tokenizer_from_vocab(g, &v, err);
    td_gguf_destroy(&g);
    return tok;
}
