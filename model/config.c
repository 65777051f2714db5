/* config.c - HF config.json -> td_config_t, with one adapter per supported family.
 *
 * The JSON is read with cJSON. Every field is fetched through typed getters that treat JSON null
 * as absent and refuse wrong types with TD_ERR_FORMAT naming the field, so a malformed config can
 * never crash the parser or yield a half-read struct: td_config_parse fills a local copy and
 * writes *cfg only on success. */
#include "model/config.h"

#include "model/gguf.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *s_arch_names[TD_ARCH_COUNT] = {
    [TD_ARCH_QWEN2] = "qwen2", [TD_ARCH_LLAMA] = "llama", [TD_ARCH_DREAM] = "dream",
    [TD_ARCH_LLADA] = "llada", [TD_ARCH_GPT2] = "gpt2",   [TD_ARCH_DIFFUGPT] = "diffugpt",
};

#define S_SUPPORTED "(supported: qwen2, llama, dream, llada, gpt2, diffugpt)"

const char *td_arch_name(td_arch_t a) {
    return (unsigned)a < TD_ARCH_COUNT ? s_arch_names[a] : "?";
}

/* --- typed getters -----------------------------------------------------------------------------
 */

typedef struct s_ctx {
    const cJSON *root;
    const char *label; /* "config.json" or the path, for messages */
    td_err_t *err;
} s_ctx_t;

static const char *s_type_name(const cJSON *j) {
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsObject(j)) return "an object";
    return "something else";
}

/* The item for key, or NULL when absent or JSON null. */
static const cJSON *s_item(const cJSON *obj, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    return (j && !cJSON_IsNull(j)) ? j : NULL;
}

static int s_has(const s_ctx_t *c, const char *key) { return s_item(c->root, key) != NULL; }

/* Reads an integer field; absent -> *out = def (or an error when required). */
static int s_int(const s_ctx_t *c, const char *key, int required, int def, int *out) {
    const cJSON *j = s_item(c->root, key);
    if (!j) {
        if (required)
            return td_err_set(c->err, TD_ERR_FORMAT, "%s: required field '%s' is missing", c->label,
                              key);
        *out = def;
        return TD_OK;
    }
    if (!cJSON_IsNumber(j))
        return td_err_set(c->err, TD_ERR_FORMAT, "%s: field '%s' must be an integer, got %s",
                          c->label, key, s_type_name(j));
    double d = j->valuedouble;
    if (d != floor(d) || d < (double)INT_MIN || d > (double)INT_MAX)
        return td_err_set(c->err, TD_ERR_FORMAT,
                          "%s: field '%s' = %g is not an integer that fits int", c->label, key, d);
    *out = (int)d;
    return TD_OK;
}

/* Field key as *out when present and of the type is() accepts (else an error naming WANT);
 * *out = NULL when absent. */
static int s_typed(const s_ctx_t *c, const char *key, cJSON_bool (*is)(const cJSON *),
                   const char *want, const cJSON **out) {
    const cJSON *j = s_item(c->root, key);
    *out = NULL;
    if (j && !is(j))
        return td_err_set(c->err, TD_ERR_FORMAT, "%s: field '%s' must be %s, got %s", c->label, key,
                          want, s_type_name(j));
    *out = j;
    return TD_OK;
}

static int s_float(const s_ctx_t *c, const char *key, float def, float *out) {
    const cJSON *j;
    int rc = s_typed(c, key, cJSON_IsNumber, "a number", &j);
    if (rc == TD_OK) *out = j ? (float)j->valuedouble : def;
    return rc;
}

static int s_bool(const s_ctx_t *c, const char *key, int def, int *out) {
    const cJSON *j = s_item(c->root, key);
    if (!j) {
        *out = def;
        return TD_OK;
    }
    if (cJSON_IsBool(j)) {
        *out = cJSON_IsTrue(j);
        return TD_OK;
    }
    if (cJSON_IsNumber(j) && (j->valuedouble == 0.0 || j->valuedouble == 1.0)) {
        *out = j->valuedouble != 0.0;
        return TD_OK;
    }
    return td_err_set(c->err, TD_ERR_FORMAT, "%s: field '%s' must be true or false, got %s",
                      c->label, key, s_type_name(j));
}

/* A string field; absent -> NULL. */
static int s_str(const s_ctx_t *c, const char *key, const char **out) {
    const cJSON *j;
    *out = NULL;
    int rc = s_typed(c, key, cJSON_IsString, "a string", &j);
    if (j) *out = j->valuestring;
    return rc;
}

/* A token id: an integer, or a list of integers (the first is taken); absent -> -1. */
static int s_token(const s_ctx_t *c, const char *key, int def, int *out) {
    const cJSON *j = s_item(c->root, key);
    if (j && cJSON_IsArray(j)) {
        const cJSON *first = j->child;
        if (!first) {
            *out = -1;
            return TD_OK;
        }
        if (!cJSON_IsNumber(first) || first->valuedouble != floor(first->valuedouble) ||
            first->valuedouble < -1 || first->valuedouble > INT_MAX)
            return td_err_set(c->err, TD_ERR_FORMAT, "%s: field '%s' must list integer token ids",
                              c->label, key);
        *out = (int)first->valuedouble;
        return TD_OK;
    }
    return s_int(c, key, 0, def, out);
}

/* bos_token_id, eos_token_id and pad_token_id (absent: -1). */
static int s_special_ids(const s_ctx_t *c, td_config_t *cfg) {
    int rc;
    if ((rc = s_token(c, "bos_token_id", -1, &cfg->bos_token_id)) < 0 ||
        (rc = s_token(c, "eos_token_id", -1, &cfg->eos_token_id)) < 0 ||
        (rc = s_token(c, "pad_token_id", -1, &cfg->pad_token_id)) < 0)
        return rc;
    return TD_OK;
}

/* A masked-diffusion LM: bidirectional attention; logit_shift as the family does it. */
static void s_diffusion(td_config_t *cfg, int logit_shift) {
    cfg->causal = 0;
    cfg->is_diffusion = 1;
    cfg->logit_shift = logit_shift;
}

/* The end of an AR family's parse: its special ids, and when the checkpoint is the family's
 * masked-diffusion variant (arch DIFFUSION: Dream for Qwen2, DiffuGPT for GPT-2) the diffusion
 * flags (logits shifted) and the mask id (absent: mask_def); else causal. */
static int s_ids_and_variant(const s_ctx_t *c, td_config_t *cfg, td_arch_t diffusion,
                             int mask_def) {
    int rc;
    cfg->causal = 1;
    if ((rc = s_special_ids(c, cfg)) < 0) return rc;
    if (cfg->arch != diffusion) return TD_OK;
    s_diffusion(cfg, 1);
    return s_token(c, "mask_token_id", mask_def, &cfg->mask_token_id);
}

/* head_dim = n_embd / n_head (when there are heads), which must divide (EMBD and HEADS: the
 * family's field names). */
static int s_head_dim(const s_ctx_t *c, td_config_t *cfg, const char *embd, const char *heads) {
    if (cfg->n_head <= 0) return TD_OK;
    if (cfg->n_embd % cfg->n_head != 0)
        return td_err_set(c->err, TD_ERR_FORMAT,
                          "%s: field '%s' (%d) is not a multiple of '%s' (%d)", c->label, embd,
                          cfg->n_embd, heads, cfg->n_head);
    cfg->head_dim = cfg->n_embd / cfg->n_head;
    return TD_OK;
}

static int s_contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0) return 1;
    return 0;
}

/* --- architecture detection --------------------------------------------------------------------
 */

static int s_detect(const s_ctx_t *c, td_config_t *cfg) {
    int rc;
    const char *override = NULL, *mt = NULL, *a0 = NULL;
    if ((rc = s_str(c, "tandem_arch", &override)) < 0) return rc;
    if ((rc = s_str(c, "model_type", &mt)) < 0) return rc;
    const cJSON *archs = s_item(c->root, "architectures");
    if (archs) {
        if (!cJSON_IsArray(archs))
            return td_err_set(c->err, TD_ERR_FORMAT,
                              "%s: field 'architectures' must be an array of strings, got %s",
                              c->label, s_type_name(archs));
        if (archs->child) {
            if (!cJSON_IsString(archs->child))
                return td_err_set(c->err, TD_ERR_FORMAT,
                                  "%s: field 'architectures' must be an array of strings",
                                  c->label);
            a0 = archs->child->valuestring;
        }
    }
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", mt ? mt : "");
    snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", a0 ? a0 : (mt ? mt : ""));

    if (override) {
        for (int a = 0; a < TD_ARCH_COUNT; a++) {
            if (strcasecmp(override, s_arch_names[a]) == 0) {
                cfg->arch = (td_arch_t)a;
                return TD_OK;
            }
        }
        return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                          "%s: unsupported architecture '%s' in tandem_arch " S_SUPPORTED, c->label,
                          override);
    }

    static const struct {
        const char *name;
        td_arch_t arch;
    } by_class[] = {
        {"Qwen2ForCausalLM", TD_ARCH_QWEN2}, {"LlamaForCausalLM", TD_ARCH_LLAMA},
        {"DreamModel", TD_ARCH_DREAM},       {"LLaDAModelLM", TD_ARCH_LLADA},
        {"GPT2LMHeadModel", TD_ARCH_GPT2},
    };
    static const struct {
        const char *name;
        td_arch_t arch;
    } by_type[] = {
        {"qwen2", TD_ARCH_QWEN2}, {"llama", TD_ARCH_LLAMA}, {"dream", TD_ARCH_DREAM},
        {"llada", TD_ARCH_LLADA}, {"gpt2", TD_ARCH_GPT2},   {"diffugpt", TD_ARCH_DIFFUGPT},
    };
    int from_type = -1;
    for (size_t i = 0; mt && i < sizeof by_type / sizeof by_type[0]; i++)
        if (strcasecmp(mt, by_type[i].name) == 0) from_type = (int)by_type[i].arch;

    /* DiffuGPT ships GPT-2 configs whose class name says "Diffu". */
    if (from_type == TD_ARCH_DIFFUGPT ||
        (from_type == TD_ARCH_GPT2 && a0 && s_contains_ci(a0, "diffu"))) {
        cfg->arch = TD_ARCH_DIFFUGPT;
        return TD_OK;
    }
    if (a0) {
        for (size_t i = 0; i < sizeof by_class / sizeof by_class[0]; i++) {
            if (strcmp(a0, by_class[i].name) == 0) {
                cfg->arch = by_class[i].arch;
                return TD_OK;
            }
        }
        /* An unknown class is refused even when model_type is known: a Qwen2 or LLaMA variant
         * with another class name (Fast-dLLM, DiffuLLaMA, ...) computes something else. The
         * diffusion families are recognised by model_type alone (their classes vary). */
        if (from_type == TD_ARCH_DREAM || from_type == TD_ARCH_LLADA) {
            cfg->arch = (td_arch_t)from_type;
            return TD_OK;
        }
        return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                          "%s: unsupported architecture '%s' " S_SUPPORTED, c->label, a0);
    }
    if (from_type >= 0) {
        cfg->arch = (td_arch_t)from_type;
        return TD_OK;
    }
    if (mt)
        return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                          "%s: unsupported architecture '%s' " S_SUPPORTED, c->label, mt);
    return td_err_set(c->err, TD_ERR_FORMAT,
                      "%s: neither 'architectures' nor 'model_type' says which architecture this "
                      "is " S_SUPPORTED,
                      c->label);
}

/* --- family adapters ---------------------------------------------------------------------------
 */

/* rope_theta (top level, or transformers 5's rope_parameters) and the RoPE scaling type. */
static int s_rope(const s_ctx_t *c, const char *theta_key, td_config_t *cfg) {
    int rc;
    const cJSON *params = s_item(c->root, "rope_parameters");
    if (params && !cJSON_IsObject(params))
        return td_err_set(c->err, TD_ERR_FORMAT, "%s: field 'rope_parameters' must be an object",
                          c->label);
    if ((rc = s_float(c, theta_key, 10000.0f, &cfg->rope_theta)) < 0) return rc;
    if (!s_has(c, theta_key) && params) {
        s_ctx_t sub = {params, c->label, c->err};
        if ((rc = s_float(&sub, "rope_theta", 10000.0f, &cfg->rope_theta)) < 0) return rc;
    }
    const char *keys[] = {"rope_scaling", "rope_parameters"};
    for (int k = 0; k < 2; k++) {
        const cJSON *rs = s_item(c->root, keys[k]);
        if (!rs) continue;
        if (!cJSON_IsObject(rs))
            return td_err_set(c->err, TD_ERR_FORMAT, "%s: field '%s' must be an object or null",
                              c->label, keys[k]);
        const cJSON *t = s_item(rs, "rope_type");
        if (!t) t = s_item(rs, "type");
        if (!t) {
            if (k == 1) continue; /* rope_parameters with only a theta */
            return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                              "%s: rope_scaling without a type is not supported", c->label);
        }
        if (!cJSON_IsString(t))
            return td_err_set(c->err, TD_ERR_FORMAT, "%s: %s.rope_type must be a string", c->label,
                              keys[k]);
        if (strcmp(t->valuestring, "default") != 0 && strcmp(t->valuestring, "none") != 0)
            return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                              "%s: rope scaling type '%s' is not supported (only plain RoPE)",
                              c->label, t->valuestring);
    }
    return TD_OK;
}

/* Qwen2, LLaMA and Dream: HF LLaMA-style field names. */
static int s_llama_like(const s_ctx_t *c, td_config_t *cfg) {
    int rc, head_dim = 0;
    if ((rc = s_int(c, "vocab_size", 1, 0, &cfg->n_vocab)) < 0 ||
        (rc = s_int(c, "hidden_size", 1, 0, &cfg->n_embd)) < 0 ||
        (rc = s_int(c, "num_hidden_layers", 1, 0, &cfg->n_layer)) < 0 ||
        (rc = s_int(c, "num_attention_heads", 1, 0, &cfg->n_head)) < 0 ||
        (rc = s_int(c, "num_key_value_heads", 0, cfg->n_head, &cfg->n_kv_head)) < 0 ||
        (rc = s_int(c, "head_dim", 0, 0, &head_dim)) < 0 ||
        (rc = s_int(c, "intermediate_size", 1, 0, &cfg->n_ff)) < 0 ||
        (rc = s_int(c, "max_position_embeddings", 0, 0, &cfg->n_ctx_train)) < 0 ||
        (rc = s_float(c, "rms_norm_eps", 1e-6f, &cfg->norm_eps)) < 0 ||
        (rc = s_bool(c, "tie_word_embeddings", 0, &cfg->tie_embeddings)) < 0 ||
        (rc = s_rope(c, "rope_theta", cfg)) < 0)
        return rc;
    if (s_has(c, "head_dim"))
        cfg->head_dim = head_dim;
    else if ((rc = s_head_dim(c, cfg, "hidden_size", "num_attention_heads")) < 0)
        return rc;
    const char *act = NULL;
    if ((rc = s_str(c, "hidden_act", &act)) < 0) return rc;
    if (act && strcmp(act, "silu") != 0 && strcmp(act, "swish") != 0)
        return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                          "%s: hidden_act '%s' is not supported for %s (only silu)", c->label, act,
                          td_arch_name(cfg->arch));
    int interleaved = 0;
    if ((rc = s_bool(c, "rope_interleaved", 0, &interleaved)) < 0) return rc;
    if (interleaved)
        return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                          "%s: rope_interleaved=true is not supported (HF split-halves RoPE only)",
                          c->label);
    cfg->norm = TD_NORM_RMS;
    cfg->act = TD_ACT_SILU_GLU;
    cfg->pos = TD_POS_ROPE;
    if (cfg->arch == TD_ARCH_LLAMA) {
        int attn_bias = 0, mlp_bias = 0;
        if ((rc = s_bool(c, "attention_bias", 0, &attn_bias)) < 0 ||
            (rc = s_bool(c, "mlp_bias", 0, &mlp_bias)) < 0)
            return rc;
        /* HF LLaMA's attention_bias also puts a bias on o_proj; td_config_t can only say "q/k/v"
         * (qkv_bias) and "MLP and o_proj" (mlp_bias), so only the matching pairs are accepted. */
        if (attn_bias != mlp_bias)
            return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                              "%s: llama with attention_bias=%s and mlp_bias=%s is not supported "
                              "(both or neither)",
                              c->label, attn_bias ? "true" : "false", mlp_bias ? "true" : "false");
        cfg->qkv_bias = attn_bias;
        cfg->mlp_bias = mlp_bias;
    } else {
        int sliding = 0;
        if ((rc = s_bool(c, "use_sliding_window", 0, &sliding)) < 0) return rc;
        if (sliding)
            return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                              "%s: use_sliding_window=true is not supported", c->label);
        cfg->qkv_bias = 1;
        cfg->mlp_bias = 0;
    }
    return s_ids_and_variant(c, cfg, TD_ARCH_DREAM, 151666);
}

/* LLaDA: OLMo-style field names (configuration_llada.py). */
static int s_llada(const s_ctx_t *c, td_config_t *cfg) {
    int rc, vocab = 0, mqa = 0, mlp_ratio = 4, include_bias = 0, qkv_bias = 0, rope = 1;
    if ((rc = s_int(c, "d_model", 1, 0, &cfg->n_embd)) < 0 ||
        (rc = s_int(c, "n_layers", 1, 0, &cfg->n_layer)) < 0 ||
        (rc = s_int(c, "n_heads", 1, 0, &cfg->n_head)) < 0 ||
        (rc = s_bool(c, "multi_query_attention", 0, &mqa)) < 0 ||
        (rc = s_int(c, "n_kv_heads", 0, mqa ? 1 : cfg->n_head, &cfg->n_kv_head)) < 0 ||
        (rc = s_int(c, "mlp_ratio", 0, 4, &mlp_ratio)) < 0 ||
        (rc = s_int(c, "vocab_size", 1, 0, &vocab)) < 0 ||
        (rc = s_int(c, "embedding_size", 0, vocab, &cfg->n_vocab)) < 0 ||
        (rc = s_int(c, "max_sequence_length", 0, 0, &cfg->n_ctx_train)) < 0 ||
        (rc = s_float(c, "rms_norm_eps", 1e-5f, &cfg->norm_eps)) < 0 ||
        (rc = s_bool(c, "include_bias", 0, &include_bias)) < 0 ||
        (rc = s_bool(c, "include_qkv_bias", 0, &qkv_bias)) < 0 ||
        (rc = s_bool(c, "weight_tying", 1, &cfg->tie_embeddings)) < 0 ||
        (rc = s_bool(c, "rope", 1, &rope)) < 0 || (rc = s_rope(c, "rope_theta", cfg)) < 0)
        return rc;
    if (!s_has(c, "mlp_hidden_size")) {
        if ((long long)mlp_ratio * cfg->n_embd > INT_MAX || mlp_ratio <= 0)
            return td_err_set(c->err, TD_ERR_FORMAT, "%s: field 'mlp_ratio' (%d) is out of range",
                              c->label, mlp_ratio);
        cfg->n_ff = mlp_ratio * cfg->n_embd;
    } else if ((rc = s_int(c, "mlp_hidden_size", 1, 0, &cfg->n_ff)) < 0)
        return rc;
    if ((rc = s_head_dim(c, cfg, "d_model", "n_heads")) < 0) return rc;
    if (!rope)
        return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                          "%s: llada with rope=false (ALiBi or learned positions) is not supported",
                          c->label);
    const char *s = NULL;
    if ((rc = s_str(c, "block_type", &s)) < 0) return rc;
    if (s && strcmp(s, "llama") != 0)
        return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                          "%s: llada block_type '%s' is not supported (only llama)", c->label, s);
    if ((rc = s_str(c, "layer_norm_type", &s)) < 0) return rc;
    if (s && strcmp(s, "rms") != 0)
        return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                          "%s: llada layer_norm_type '%s' is not supported (only rms)", c->label,
                          s);
    if ((rc = s_str(c, "activation_type", &s)) < 0) return rc;
    if (s && strcmp(s, "silu") != 0 && strcmp(s, "swiglu") != 0)
        return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                          "%s: llada activation_type '%s' is not supported (only silu)", c->label,
                          s);
    cfg->qkv_bias = qkv_bias || include_bias;
    cfg->mlp_bias = include_bias;
    cfg->norm = TD_NORM_RMS;
    cfg->act = TD_ACT_SILU_GLU;
    cfg->pos = TD_POS_ROPE;
    s_diffusion(cfg, 0);
    if ((rc = s_special_ids(c, cfg)) < 0 ||
        (rc = s_token(c, "mask_token_id", 126336, &cfg->mask_token_id)) < 0)
        return rc;
    return TD_OK;
}

/* GPT-2 and DiffuGPT. */
static int s_gpt2(const s_ctx_t *c, td_config_t *cfg) {
    int rc, n_inner = 0, ctx_alt = 0, scale = 1, inv_layer = 0;
    if ((rc = s_int(c, "vocab_size", 1, 0, &cfg->n_vocab)) < 0 ||
        (rc = s_int(c, "n_embd", 1, 0, &cfg->n_embd)) < 0 ||
        (rc = s_int(c, "n_layer", 1, 0, &cfg->n_layer)) < 0 ||
        (rc = s_int(c, "n_head", 1, 0, &cfg->n_head)) < 0 ||
        (rc = s_int(c, "n_inner", 0, 0, &n_inner)) < 0 ||
        (rc = s_int(c, "n_ctx", 0, 1024, &ctx_alt)) < 0 ||
        (rc = s_int(c, "n_positions", 0, ctx_alt, &cfg->n_ctx_train)) < 0 ||
        (rc = s_float(c, "layer_norm_epsilon", 1e-5f, &cfg->norm_eps)) < 0 ||
        (rc = s_bool(c, "tie_word_embeddings", 1, &cfg->tie_embeddings)) < 0 ||
        (rc = s_bool(c, "scale_attn_weights", 1, &scale)) < 0 ||
        (rc = s_bool(c, "scale_attn_by_inverse_layer_idx", 0, &inv_layer)) < 0)
        return rc;
    if (!scale || inv_layer)
        return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                          "%s: gpt2 with scale_attn_weights=false or "
                          "scale_attn_by_inverse_layer_idx=true is not supported",
                          c->label);
    const char *act = NULL;
    if ((rc = s_str(c, "activation_function", &act)) < 0) return rc;
    if (act && strcmp(act, "gelu_new") != 0 && strcmp(act, "gelu_pytorch_tanh") != 0)
        return td_err_set(c->err, TD_ERR_UNSUPPORTED,
                          "%s: activation_function '%s' is not supported (gelu_new / tanh GELU "
                          "only)",
                          c->label, act);
    if (s_has(c, "n_inner"))
        cfg->n_ff = n_inner;
    else if (cfg->n_embd > 0 && cfg->n_embd <= INT_MAX / 4)
        cfg->n_ff = 4 * cfg->n_embd;
    if ((rc = s_head_dim(c, cfg, "n_embd", "n_head")) < 0) return rc;
    cfg->n_kv_head = cfg->n_head;
    cfg->rope_theta = 10000.0f;
    cfg->norm = TD_NORM_LAYER;
    cfg->act = TD_ACT_GELU_TANH;
    cfg->pos = TD_POS_LEARNED;
    cfg->qkv_bias = 1;
    cfg->mlp_bias = 1;
    /* DiffuGPT's mask: the small model's 10541 at vocab 50257, else the added token */
    return s_ids_and_variant(c, cfg, TD_ARCH_DIFFUGPT, cfg->n_vocab == 50257 ? 10541 : 50257);
}

/* --- validation --------------------------------------------------------------------------------
 */

static int s_positive(const s_ctx_t *c, const char *what, long long v, long long max) {
    if (v <= 0 || v > max)
        return td_err_set(c->err, TD_ERR_FORMAT, "%s: %s = %lld is out of range (1 .. %lld)",
                          c->label, what, v, max);
    return TD_OK;
}

/* bos/eos/pad outside the vocabulary (tiny test models keep GPT-2's 50256, and transformers only
 * warns) become -1 with a warning; a mask token outside it is an error. */
static int s_token_ok(const s_ctx_t *c, const char *what, int *id, int n_vocab, int fatal) {
    if (*id >= -1 && *id < n_vocab) return TD_OK;
    if (fatal)
        return td_err_set(c->err, TD_ERR_FORMAT, "%s: %s = %d is not a token id (vocabulary of %d)",
                          c->label, what, *id, n_vocab);
    td_log(TD_LOG_WARN, "%s: %s = %d is outside the vocabulary (%d); ignoring it", c->label, what,
           *id, n_vocab);
    *id = -1;
    return TD_OK;
}

static int s_validate(const s_ctx_t *c, td_config_t *cfg) {
    int rc;
    int gpt = cfg->arch == TD_ARCH_GPT2 || cfg->arch == TD_ARCH_DIFFUGPT;
    int lla = cfg->arch == TD_ARCH_LLADA;
    if ((rc = s_positive(c, "n_vocab (vocab_size)", cfg->n_vocab, (1 << 24) - 1)) < 0 ||
        (rc = s_positive(c,
                         gpt   ? "n_embd"
                         : lla ? "d_model"
                               : "hidden_size",
                         cfg->n_embd, 1 << 20)) < 0 ||
        (rc = s_positive(c,
                         gpt   ? "n_layer"
                         : lla ? "n_layers"
                               : "num_hidden_layers",
                         cfg->n_layer, 4096)) < 0 ||
        (rc = s_positive(c,
                         gpt   ? "n_head"
                         : lla ? "n_heads"
                               : "num_attention_heads",
                         cfg->n_head, 1 << 16)) < 0 ||
        (rc = s_positive(c, lla ? "n_kv_heads" : "num_key_value_heads", cfg->n_kv_head,
                         cfg->n_head)) < 0 ||
        (rc = s_positive(c, "head_dim", cfg->head_dim, 1 << 16)) < 0 ||
        (rc = s_positive(c,
                         gpt   ? "n_inner"
                         : lla ? "mlp_hidden_size"
                               : "intermediate_size",
                         cfg->n_ff, 1 << 24)) < 0)
        return rc;
    if (cfg->n_head % cfg->n_kv_head != 0)
        return td_err_set(c->err, TD_ERR_FORMAT,
                          "%s: the number of heads (%d) is not a multiple of the key/value heads "
                          "(%d)",
                          c->label, cfg->n_head, cfg->n_kv_head);
    if ((long long)cfg->n_head * cfg->head_dim > (1 << 20))
        return td_err_set(c->err, TD_ERR_FORMAT, "%s: heads x head_dim = %lld is too large",
                          c->label, (long long)cfg->n_head * cfg->head_dim);
    if (cfg->pos == TD_POS_ROPE && cfg->head_dim % 2 != 0)
        return td_err_set(c->err, TD_ERR_FORMAT, "%s: head_dim = %d must be even for RoPE",
                          c->label, cfg->head_dim);
    if (cfg->n_ctx_train < 0 || (cfg->pos == TD_POS_LEARNED && cfg->n_ctx_train <= 0))
        return td_err_set(c->err, TD_ERR_FORMAT, "%s: context length %s = %d is out of range",
                          c->label, gpt ? "n_positions" : "max_position_embeddings",
                          cfg->n_ctx_train);
    if (cfg->pos == TD_POS_ROPE && !(isfinite(cfg->rope_theta) && cfg->rope_theta > 0.0f))
        return td_err_set(c->err, TD_ERR_FORMAT, "%s: rope_theta = %g must be positive", c->label,
                          (double)cfg->rope_theta);
    if (!(isfinite(cfg->norm_eps) && cfg->norm_eps > 0.0f && cfg->norm_eps < 1.0f))
        return td_err_set(c->err, TD_ERR_FORMAT, "%s: %s = %g must be in (0, 1)", c->label,
                          gpt ? "layer_norm_epsilon" : "rms_norm_eps", (double)cfg->norm_eps);
    if ((rc = s_token_ok(c, "bos_token_id", &cfg->bos_token_id, cfg->n_vocab, 0)) < 0 ||
        (rc = s_token_ok(c, "eos_token_id", &cfg->eos_token_id, cfg->n_vocab, 0)) < 0 ||
        (rc = s_token_ok(c, "pad_token_id", &cfg->pad_token_id, cfg->n_vocab, 0)) < 0 ||
        (rc = s_token_ok(c, "mask_token_id", &cfg->mask_token_id, cfg->n_vocab, 1)) < 0)
        return rc;
    if (cfg->is_diffusion && cfg->mask_token_id < 0)
        return td_err_set(c->err, TD_ERR_FORMAT, "%s: a diffusion LM needs a mask_token_id",
                          c->label);
    return TD_OK;
}

/* --- public API --------------------------------------------------------------------------------
 */

static int s_parse(const char *json, size_t len, td_config_t *out, const char *label,
                   td_err_t *err) {
    if (!json) return td_err_set(err, TD_ERR_ARG, "%s: no text", label);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return td_err_set(err, TD_ERR_FORMAT, "%s: not valid JSON", label);
    s_ctx_t c = {root, label, err};
    td_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.mask_token_id = cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = -1;
    int rc;
    if (!cJSON_IsObject(root)) {
        rc = td_err_set(err, TD_ERR_FORMAT, "%s: top level is not a JSON object", label);
        goto done;
    }
    if ((rc = s_detect(&c, &cfg)) < 0) goto done;
    switch (cfg.arch) {
    case TD_ARCH_QWEN2:
    case TD_ARCH_LLAMA:
    case TD_ARCH_DREAM:
        rc = s_llama_like(&c, &cfg);
        break;
    case TD_ARCH_LLADA:
        rc = s_llada(&c, &cfg);
        break;
    default:
        rc = s_gpt2(&c, &cfg);
        break;
    }
    if (rc < 0) goto done;
    if ((rc = s_validate(&c, &cfg)) < 0) goto done;
    *out = cfg;
done:
    cJSON_Delete(root);
    return rc;
}

int td_config_parse(const char *json, size_t len, td_config_t *cfg, td_err_t *err) {
    return s_parse(json, len, cfg, "config.json", err);
}

int td_config_load(const char *dir, td_config_t *cfg, td_err_t *err) {
    char path[4096], *text = NULL;
    size_t len = 0;
    int rc = td_read_json_file(dir, "config.json", path, sizeof path, &text, &len, err);
    if (rc < 0) return rc;
    rc = s_parse(text, len, cfg, path, err);
    free(text);
    return rc;
}

/* --- GGUF metadata ------------------------------------------------------------------------------
 */

/* What a td_gguf_get_* answer rc means for key: TD_OK (present), 1 (absent, the default to be
 * used) or an error (absent although REQUIRED: "missing", naming the key). */
static int s_gg_found(int rc, int required, const char *label, const char *key, td_err_t *err) {
    if (rc == 1 && required)
        return td_err_set(err, TD_ERR_FORMAT, "%s: metadata '%s' is missing", label, key);
    return rc;
}

/* Reads integer key into *out when present (else def; required keys have def < 0 meaning "must be
 * there"), refusing values outside [lo, hi]. */
static int s_gg_int(const td_gguf_t *g, const char *label, const char *key, long long def,
                    long long lo, long long hi, int *out, td_err_t *err) {
    int64_t v = 0;
    int rc = s_gg_found(td_gguf_get_int(g, key, &v, err), def < 0, label, key, err);
    if (rc < 0) return rc;
    if (rc == 1) v = def;
    if (v < lo || v > hi)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: metadata '%s' = %lld is out of range (%lld .. %lld)", label, key,
                          (long long)v, lo, hi);
    *out = (int)v;
    return TD_OK;
}

static int s_gg_float(const td_gguf_t *g, const char *label, const char *key, double def,
                      float *out, td_err_t *err) {
    double v = 0;
    int rc = s_gg_found(td_gguf_get_float(g, key, &v, err), def < 0, label, key, err);
    if (rc < 0) return rc;
    if (rc == 1) v = def;
    *out = (float)v;
    return TD_OK;
}

int td_config_from_gguf(const td_gguf_t *g, td_config_t *out, td_err_t *err) {
    const char *label = td_gguf_path(g), *arch = NULL;
    int rc = td_gguf_get_str(g, "general.architecture", &arch, err);
    if (rc < 0) return rc;
    if (rc == 1)
        return td_err_set(err, TD_ERR_FORMAT, "%s: metadata 'general.architecture' is missing",
                          label);
    td_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.mask_token_id = cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = -1;
    if (strcmp(arch, "llama") == 0)
        cfg.arch = TD_ARCH_LLAMA;
    else if (strcmp(arch, "qwen2") == 0)
        cfg.arch = TD_ARCH_QWEN2;
    else if (strcmp(arch, "gpt2") == 0)
        cfg.arch = TD_ARCH_GPT2;
    else
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "%s: GGUF architecture '%.60s' is not supported (llama, qwen2, gpt2)",
                          label, arch);
    snprintf(cfg.arch_name, sizeof cfg.arch_name, "%s", arch);
    snprintf(cfg.model_type, sizeof cfg.model_type, "%s", arch);
    const int gpt = cfg.arch == TD_ARCH_GPT2;
    char k[160];
#define KEY(suffix) (snprintf(k, sizeof k, "%s." suffix, arch), k)
    if ((rc = s_gg_int(g, label, KEY("embedding_length"), -1, 1, 1 << 20, &cfg.n_embd, err)) < 0 ||
        (rc = s_gg_int(g, label, KEY("block_count"), -1, 1, 4096, &cfg.n_layer, err)) < 0 ||
        (rc = s_gg_int(g, label, KEY("feed_forward_length"), gpt ? 4LL * cfg.n_embd : -1, 1,
                       1 << 24, &cfg.n_ff, err)) < 0 ||
        (rc = s_gg_int(g, label, KEY("attention.head_count"), -1, 1, 1 << 16, &cfg.n_head, err)) <
            0 ||
        (rc = s_gg_int(g, label, KEY("attention.head_count_kv"), cfg.n_head, 1, 1 << 16,
                       &cfg.n_kv_head, err)) < 0 ||
        (rc = s_gg_int(g, label, KEY("context_length"), gpt ? -1 : 0, 0, INT_MAX, &cfg.n_ctx_train,
                       err)) < 0)
        return rc;
    if (cfg.n_embd % cfg.n_head)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: embedding_length %d is not a multiple of head_count %d", label,
                          cfg.n_embd, cfg.n_head);
    if ((rc = s_gg_int(g, label, KEY("attention.key_length"), cfg.n_embd / cfg.n_head, 1, 1 << 16,
                       &cfg.head_dim, err)) < 0)
        return rc;
    int vlen = cfg.head_dim;
    if ((rc = s_gg_int(g, label, KEY("attention.value_length"), cfg.head_dim, 1, 1 << 16, &vlen,
                       err)) < 0)
        return rc;
    if (vlen != cfg.head_dim)
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "%s: attention.value_length %d != key_length %d is not supported", label,
                          vlen, cfg.head_dim);
    if (gpt) {
        if ((rc = s_gg_float(g, label, KEY("attention.layer_norm_epsilon"), 1e-5, &cfg.norm_eps,
                             err)) < 0)
            return rc;
        cfg.rope_theta = 10000.0f;
        cfg.norm = TD_NORM_LAYER;
        cfg.act = TD_ACT_GELU_TANH;
        cfg.pos = TD_POS_LEARNED;
        cfg.qkv_bias = cfg.mlp_bias = 1;
    } else {
        int rot = cfg.head_dim;
        const char *scaling = NULL;
        if ((rc = s_gg_float(g, label, KEY("attention.layer_norm_rms_epsilon"), -1, &cfg.norm_eps,
                             err)) < 0 ||
            (rc = s_gg_float(g, label, KEY("rope.freq_base"), 10000.0, &cfg.rope_theta, err)) < 0 ||
            (rc = s_gg_int(g, label, KEY("rope.dimension_count"), cfg.head_dim, 1, 1 << 16, &rot,
                           err)) < 0 ||
            (rc = td_gguf_get_str(g, KEY("rope.scaling.type"), &scaling, err)) < 0)
            return rc;
        if (rot != cfg.head_dim)
            return td_err_set(err, TD_ERR_UNSUPPORTED,
                              "%s: partial rotary embedding (rope.dimension_count %d of head_dim "
                              "%d) is not supported",
                              label, rot, cfg.head_dim);
        if (scaling && strcmp(scaling, "none") != 0)
            return td_err_set(err, TD_ERR_UNSUPPORTED,
                              "%s: rope scaling type '%.40s' is not supported (only plain RoPE)",
                              label, scaling);
        /* llama.cpp's converter permuted llama's Q/K rows for adjacent-pair RoPE; qwen2 is
         * stored as in HF and rotated NEOX-style (rotate-half) */
        cfg.rope_layout = cfg.arch == TD_ARCH_LLAMA ? TD_ROPE_INTERLEAVED : TD_ROPE_HALF;
        cfg.norm = TD_NORM_RMS;
        cfg.act = TD_ACT_SILU_GLU;
        cfg.pos = TD_POS_ROPE;
        cfg.qkv_bias = cfg.arch == TD_ARCH_QWEN2 || td_gguf_find_tensor(g, "blk.0.attn_q.bias");
    }
#undef KEY
    cfg.causal = 1;
    cfg.tie_embeddings = td_gguf_find_tensor(g, "output.weight") == NULL;
    /* vocabulary: the tokenizer's token list, else <arch>.vocab_size, else the embedding rows */
    const td_gguf_kv_t *toks = NULL;
    if ((rc = td_gguf_get_arr(g, "tokenizer.ggml.tokens", TD_GGUF_STRING, &toks, err)) < 0)
        return rc;
    const td_gguf_tensor_t *emb = td_gguf_find_tensor(g, "token_embd.weight");
    if (toks) {
        if (toks->n > INT_MAX)
            return td_err_set(err, TD_ERR_FORMAT, "%s: tokenizer.ggml.tokens is too long", label);
        cfg.n_vocab = (int)toks->n;
    } else {
        snprintf(k, sizeof k, "%s.vocab_size", arch);
        if ((rc = s_gg_int(g, label, k, emb && emb->ndim == 2 ? emb->ne[1] : -1, 1, INT_MAX,
                           &cfg.n_vocab, err)) < 0)
            return rc;
    }
    if ((rc = s_gg_int(g, label, "tokenizer.ggml.bos_token_id", 0, 0, INT_MAX, &cfg.bos_token_id,
                       err)) < 0 ||
        (rc = s_gg_int(g, label, "tokenizer.ggml.eos_token_id", 0, 0, INT_MAX, &cfg.eos_token_id,
                       err)) < 0 ||
        (rc = s_gg_int(g, label, "tokenizer.ggml.padding_token_id", 0, 0, INT_MAX,
                       &cfg.pad_token_id, err)) < 0)
        return rc;
    /* absent ids: -1 (the 0 defaults above only stand for "present" checks) */
    if (!td_gguf_find_kv(g, "tokenizer.ggml.bos_token_id")) cfg.bos_token_id = -1;
    if (!td_gguf_find_kv(g, "tokenizer.ggml.eos_token_id")) cfg.eos_token_id = -1;
    if (!td_gguf_find_kv(g, "tokenizer.ggml.padding_token_id")) cfg.pad_token_id = -1;
    s_ctx_t c = {NULL, label, err};
    if ((rc = s_validate(&c, &cfg)) < 0) return rc;
    *out = cfg;
    return TD_OK;
}

int td_config_fit_ctx(const td_config_t *c, int n_prompt, int max_tokens, int lookahead, int *n_ctx,
                      td_err_t *err) {
    int n = n_prompt + max_tokens + lookahead;
    if (c->n_ctx_train > 0 && n > c->n_ctx_train) n = c->n_ctx_train;
    if (lookahead > 0 ? n_prompt + 1 >= n : n_prompt >= n && max_tokens > 0)
        return td_err_set(err, TD_ERR_ARG, "prompt of %d tokens does not fit the context of %d",
                          n_prompt, n);
    *n_ctx = n;
    return TD_OK;
}

int td_is_stop_id(const int32_t *stop_ids, int n_stop, int32_t eos, int32_t id) {
    if (eos >= 0 && id == eos) return 1;
    for (int i = 0; i < n_stop; i++)
        if (stop_ids[i] == id) return 1;
    return 0;
}
