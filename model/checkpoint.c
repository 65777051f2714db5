/* checkpoint.c - tokenizer of a checkpoint directory or GGUF file (checkpoint.h). */
#include "model/checkpoint.h"

#include "model/config.h"
#include "model/model.h"
#include "model/tensor_source.h"

#include <stdio.h>
#include <stdlib.h>
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

/* The one place a GGUF vocabulary becomes a tokenizer: the arrays (pointing into the mmap, with
 * lengths) go to the format-independent constructor. The BPE unknown symbol stays -1 (bytes
 * without a vocabulary string are dropped, as HF and transformers' GGUF tokenizer do), whatever
 * tokenizer.ggml.unknown_token_id says: that id is the unknown token's role only. */
static td_tokenizer_t *s_tokenizer_from_vocab(const td_gguf_t *g, const td_gguf_vocab_t *v,
                                              td_err_t *err) {
    int64_t n = v->n_tokens, nm = v->n_merges;
    const char **toks = calloc((size_t)(n ? n : 1), sizeof *toks);
    size_t *tlen = calloc((size_t)(n ? n : 1), sizeof *tlen);
    int32_t *types = v->token_type ? calloc((size_t)(n ? n : 1), sizeof *types) : NULL;
    const char **merges = calloc((size_t)(nm ? nm : 1), sizeof *merges);
    size_t *mlen = calloc((size_t)(nm ? nm : 1), sizeof *mlen);
    td_tokenizer_t *tok = NULL;
    if (!toks || !tlen || !merges || !mlen || (v->token_type && !types)) {
        td_err_set(err, TD_ERR_NOMEM, "%s: out of memory reading the vocabulary", td_gguf_path(g));
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        toks[i] = v->tokens[i].s;
        tlen[i] = (size_t)v->tokens[i].len;
        if (types) {
            int64_t t = td_gguf_arr_int(v->token_type, (uint64_t)i);
            types[i] = t < INT32_MIN || t > INT32_MAX ? 0 : (int32_t)t;
        }
    }
    for (int64_t i = 0; i < nm; i++) {
        merges[i] = v->merges[i].s;
        mlen[i] = (size_t)v->merges[i].len;
    }
    td_tok_spec_t spec;
    td_tok_spec_init(&spec);
    spec.model = v->model;
    spec.pre = v->pre;
    spec.n_tokens = n;
    spec.tokens = toks;
    spec.token_lens = tlen;
    spec.token_types = types;
    spec.n_merges = nm;
    spec.merges = merges;
    spec.merge_lens = mlen;
    spec.bos_id = v->bos_id;
    spec.eos_id = v->eos_id;
    spec.unk_id = v->unk_id;
    spec.pad_id = v->pad_id;
    spec.add_bos = v->add_bos > 0;
    spec.add_eos = v->add_eos > 0;
    tok = td_tokenizer_from_vocab(&spec, err);
    if (!tok) td_err_prefix(err, "%s", td_gguf_path(g));
done:
    free(toks);
    free(tlen);
    free(types);
    free(merges);
    free(mlen);
    return tok;
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

int td_checkpoint_fingerprint(const char *path, uint64_t *out, td_err_t *err) {
    td_config_t cfg;
    td_tensor_source_t *src = NULL;
    int rc;
    if (td_path_is_gguf(path)) {
        src = td_tensor_source_open(path, err);
        if (!src) return err ? err->code : TD_ERR_IO;
        if ((rc = td_config_from_gguf(td_tensor_source_gguf(src), &cfg, err)) != TD_OK) {
            td_tensor_source_destroy(&src);
            return rc;
        }
    } else {
        if ((rc = td_config_load(path, &cfg, err)) != TD_OK) return rc;
        src = td_tensor_source_open(path, err);
        if (!src) return err ? err->code : TD_ERR_IO;
    }
    td_tokenizer_t *tok = td_checkpoint_tokenizer(path, err);
    if (!tok) {
        td_tensor_source_destroy(&src);
        return err ? err->code : TD_ERR_IO;
    }
    *out = td_fingerprint_tensors(src, &cfg, td_tokenizer_hash(tok));
    td_tokenizer_destroy(&tok);
    td_tensor_source_destroy(&src);
    return TD_OK;
}

void td_checkpoint_tokenizer_origin(const char *name, char *buf, size_t cap) {
    size_t n = strlen(name);
    if (n > 5 && strcmp(name + n - 5, ".gguf") == 0) /* the file's tokenizer.ggml.* arrays */
        snprintf(buf, cap, "%.40s (GGUF)", name);
    else
        snprintf(buf, cap, "%.40s/tokenizer.json", name);
}
