/* cmd_inspect.c - `tandem inspect`: what a checkpoint directory holds, without running it.
 *
 * Reads config.json (td_config_load) and the safetensors headers (td_safetensors_open: mmap, no
 * weight is touched), then prints the architecture, the hyper-parameters tandem will use, the
 * parameter count, bytes per dtype, the memory a run needs (weights + float32 KV cache), and with
 * --tensors every tensor. --json prints the same as one JSON object. */
#include "bridge/commands.h"
#include "model/config.h"
#include "model/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void s_usage(FILE *f) {
    fprintf(
        f,
        "usage: tandem inspect DIR [--json] [--tensors] [--ctx N]\n\n"
        "  DIR          a checkpoint directory: config.json plus model.safetensors or\n"
        "               model.safetensors.index.json and its shards (--model DIR also works)\n"
        "  --json       print one JSON object instead of text\n"
        "  --tensors    also list every tensor: name, dtype, shape, file\n"
        "  --ctx N      context length for the KV-cache estimate (default: the trained\n"
        "               context from config.json, max_position_embeddings / n_positions)\n"
        "  -h, --help   this help\n\n"
        "Prints the architecture (tandem's name and the config's class), the hyper-parameters,\n"
        "the parameter count (sum of tensor elements), bytes per dtype, and the memory a run\n"
        "needs: the weights, the KV cache per token (2 x layers x kv heads x head_dim x 4 bytes,\n"
        "float32) and for the whole context. Only headers are read; weights are not loaded.\n"
        "Exit status: 0 ok, 1 bad or unsupported checkpoint (the error says which file and\n"
        "tensor), 2 usage.\n");
}

static const char *s_human(uint64_t bytes, char *buf, size_t cap) {
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, cap, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, cap, "%.2f %s", v, units[u]);
    return buf;
}

static const char *s_base(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

typedef struct s_summary {
    int64_t n_params;
    uint64_t weight_bytes;
    int dtype_tensors[TD_DTYPE_COUNT];
    uint64_t dtype_bytes[TD_DTYPE_COUNT];
    uint64_t dtype_elems[TD_DTYPE_COUNT];
    uint64_t kv_per_token;
    int ctx;
    uint64_t kv_ctx;
} s_summary_t;

static void s_summarize(const td_config_t *c, const td_safetensors_t *st, int ctx, s_summary_t *s) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < td_safetensors_count(st); i++) {
        const td_st_tensor_t *t = td_safetensors_at(st, i);
        int64_t n = td_safetensors_n_elements(t);
        s->n_params += n;
        s->weight_bytes += t->nbytes;
        s->dtype_tensors[t->dtype]++;
        s->dtype_bytes[t->dtype] += t->nbytes;
        s->dtype_elems[t->dtype] += (uint64_t)n;
    }
    s->kv_per_token =
        2ull * (uint64_t)c->n_layer * (uint64_t)c->n_kv_head * (uint64_t)c->head_dim * 4u;
    s->ctx = ctx > 0 ? ctx : c->n_ctx_train;
    s->kv_ctx = s->kv_per_token * (uint64_t)(s->ctx > 0 ? s->ctx : 0);
}

/* A float as the shortest decimal that reads back as the same float (1e-05, not 9.99999974e-06). */
static double s_f2d(float f) {
    char buf[32];
    snprintf(buf, sizeof buf, "%.7g", (double)f);
    return strtod(buf, NULL);
}

static const char *s_norm_name(const td_config_t *c) {
    return c->norm == TD_NORM_RMS ? "RMSNorm" : "LayerNorm";
}
static const char *s_act_name(const td_config_t *c) {
    return c->act == TD_ACT_SILU_GLU ? "SwiGLU (SiLU gate)" : "GELU (tanh)";
}

static void s_print_text(const char *dir, const td_config_t *c, const td_safetensors_t *st,
                         const s_summary_t *s, int tensors) {
    char h1[32], h2[32];
    printf("model          %s\n", dir);
    printf("architecture   %s (%s%s%s)\n", td_arch_name(c->arch), c->arch_name,
           c->model_type[0] ? ", model_type " : "", c->model_type);
    if (c->is_diffusion)
        printf("kind           masked-diffusion LM, %s attention%s, mask token %d\n",
               c->causal ? "causal" : "bidirectional",
               c->logit_shift ? ", logit shift (token i predicted at i-1)" : "", c->mask_token_id);
    else
        printf("kind           autoregressive LM, %s attention\n",
               c->causal ? "causal" : "bidirectional");
    printf("layers         %d\n", c->n_layer);
    printf("hidden         %d\n", c->n_embd);
    printf("heads          %d query, %d key/value, head_dim %d\n", c->n_head, c->n_kv_head,
           c->head_dim);
    printf("mlp            %d, %s\n", c->n_ff, s_act_name(c));
    printf("vocab          %d\n", c->n_vocab);
    if (c->n_ctx_train > 0)
        printf("trained ctx    %d\n", c->n_ctx_train);
    else
        printf("trained ctx    unknown\n");
    if (c->pos == TD_POS_ROPE)
        printf("positions      RoPE, theta %g\n", (double)c->rope_theta);
    else
        printf("positions      learned\n");
    printf("norm           %s, eps %g\n", s_norm_name(c), (double)c->norm_eps);
    printf("embeddings     %s\n",
           c->tie_embeddings ? "tied (LM head = token embedding)" : "untied");
    printf("biases         %s\n", c->qkv_bias && c->mlp_bias ? "q/k/v, attention output, MLP"
                                  : c->qkv_bias              ? "q/k/v"
                                  : c->mlp_bias              ? "attention output, MLP"
                                                             : "none");
    printf("tokens         bos %d, eos %d, pad %d, mask %d  (-1 = none)\n", c->bos_token_id,
           c->eos_token_id, c->pad_token_id, c->mask_token_id);
    printf("files          %d:", td_safetensors_n_files(st));
    for (int i = 0; i < td_safetensors_n_files(st); i++)
        printf(" %s", s_base(td_safetensors_file_path(st, i)));
    printf("\n");
    printf("tensors        %d\n", td_safetensors_count(st));
    printf("parameters     %lld (%.3f M)\n", (long long)s->n_params, (double)s->n_params / 1e6);
    for (int d = 0; d < TD_DTYPE_COUNT; d++)
        if (s->dtype_tensors[d])
            printf("dtype %-8s %d tensors, %llu elements, %llu bytes (%s)\n",
                   td_dtype_name((td_dtype_t)d), s->dtype_tensors[d],
                   (unsigned long long)s->dtype_elems[d], (unsigned long long)s->dtype_bytes[d],
                   s_human(s->dtype_bytes[d], h1, sizeof h1));
    printf("weights        %llu bytes (%s)\n", (unsigned long long)s->weight_bytes,
           s_human(s->weight_bytes, h1, sizeof h1));
    printf("KV cache       %llu bytes per token (float32: 2 x %d layers x %d kv heads x %d x 4)\n",
           (unsigned long long)s->kv_per_token, c->n_layer, c->n_kv_head, c->head_dim);
    if (s->ctx > 0) {
        printf("               %llu bytes (%s) for %d tokens\n", (unsigned long long)s->kv_ctx,
               s_human(s->kv_ctx, h1, sizeof h1), s->ctx);
        printf("total          %s for weights + KV cache of %d tokens\n",
               s_human(s->weight_bytes + s->kv_ctx, h2, sizeof h2), s->ctx);
    }
    if (td_safetensors_n_metadata(st) > 0) {
        printf("metadata      ");
        for (int i = 0; i < td_safetensors_n_metadata(st); i++) {
            const char *v = NULL, *k = td_safetensors_metadata_at(st, i, &v);
            printf(" %s=%s", k, v);
        }
        printf("\n");
    }
    if (tensors) {
        printf("\n%-60s %-8s %-24s %s\n", "tensor", "dtype", "shape", "file");
        for (int i = 0; i < td_safetensors_count(st); i++) {
            const td_st_tensor_t *t = td_safetensors_at(st, i);
            char shape[256];
            int w = snprintf(shape, sizeof shape, "[");
            for (int d = 0; d < t->ndim && w < (int)sizeof shape; d++)
                w += snprintf(shape + w, sizeof shape - (size_t)w, "%s%lld", d ? ", " : "",
                              (long long)t->shape[d]);
            if (w < (int)sizeof shape) snprintf(shape + w, sizeof shape - (size_t)w, "]");
            printf("%-60s %-8s %-24s %s\n", t->name, td_dtype_name(t->dtype), shape,
                   s_base(td_safetensors_file_path(st, t->file)));
        }
    }
}

static int s_print_json(const char *dir, const td_config_t *c, const td_safetensors_t *st,
                        const s_summary_t *s, int tensors) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", dir);
    cJSON_AddStringToObject(o, "arch", td_arch_name(c->arch));
    cJSON_AddStringToObject(o, "arch_name", c->arch_name);
    cJSON_AddStringToObject(o, "model_type", c->model_type);
    cJSON *k = cJSON_AddObjectToObject(o, "config");
    cJSON_AddNumberToObject(k, "n_vocab", c->n_vocab);
    cJSON_AddNumberToObject(k, "n_embd", c->n_embd);
    cJSON_AddNumberToObject(k, "n_layer", c->n_layer);
    cJSON_AddNumberToObject(k, "n_head", c->n_head);
    cJSON_AddNumberToObject(k, "n_kv_head", c->n_kv_head);
    cJSON_AddNumberToObject(k, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(k, "n_ff", c->n_ff);
    cJSON_AddNumberToObject(k, "n_ctx_train", c->n_ctx_train);
    cJSON_AddNumberToObject(k, "rope_theta", s_f2d(c->rope_theta));
    cJSON_AddNumberToObject(k, "norm_eps", s_f2d(c->norm_eps));
    cJSON_AddStringToObject(k, "norm", c->norm == TD_NORM_RMS ? "rms" : "layer");
    cJSON_AddStringToObject(k, "act", c->act == TD_ACT_SILU_GLU ? "silu_glu" : "gelu_tanh");
    cJSON_AddStringToObject(k, "pos", c->pos == TD_POS_ROPE ? "rope" : "learned");
    cJSON_AddBoolToObject(k, "tie_embeddings", c->tie_embeddings);
    cJSON_AddBoolToObject(k, "qkv_bias", c->qkv_bias);
    cJSON_AddBoolToObject(k, "mlp_bias", c->mlp_bias);
    cJSON_AddBoolToObject(k, "causal", c->causal);
    cJSON_AddBoolToObject(k, "is_diffusion", c->is_diffusion);
    cJSON_AddBoolToObject(k, "logit_shift", c->logit_shift);
    cJSON_AddNumberToObject(k, "mask_token_id", c->mask_token_id);
    cJSON_AddNumberToObject(k, "bos_token_id", c->bos_token_id);
    cJSON_AddNumberToObject(k, "eos_token_id", c->eos_token_id);
    cJSON_AddNumberToObject(k, "pad_token_id", c->pad_token_id);
    cJSON *files = cJSON_AddArrayToObject(o, "files");
    for (int i = 0; i < td_safetensors_n_files(st); i++)
        cJSON_AddItemToArray(files, cJSON_CreateString(td_safetensors_file_path(st, i)));
    cJSON_AddNumberToObject(o, "n_tensors", td_safetensors_count(st));
    cJSON_AddNumberToObject(o, "n_params", (double)s->n_params);
    cJSON *dt = cJSON_AddObjectToObject(o, "dtypes");
    for (int d = 0; d < TD_DTYPE_COUNT; d++) {
        if (!s->dtype_tensors[d]) continue;
        cJSON *e = cJSON_AddObjectToObject(dt, td_dtype_name((td_dtype_t)d));
        cJSON_AddNumberToObject(e, "tensors", s->dtype_tensors[d]);
        cJSON_AddNumberToObject(e, "elements", (double)s->dtype_elems[d]);
        cJSON_AddNumberToObject(e, "bytes", (double)s->dtype_bytes[d]);
    }
    cJSON *mem = cJSON_AddObjectToObject(o, "memory");
    cJSON_AddNumberToObject(mem, "weight_bytes", (double)s->weight_bytes);
    cJSON_AddNumberToObject(mem, "kv_bytes_per_token", (double)s->kv_per_token);
    cJSON_AddNumberToObject(mem, "context", s->ctx);
    cJSON_AddNumberToObject(mem, "kv_bytes_context", (double)s->kv_ctx);
    cJSON_AddNumberToObject(mem, "total_bytes_context", (double)(s->weight_bytes + s->kv_ctx));
    cJSON *meta = cJSON_AddObjectToObject(o, "metadata");
    for (int i = 0; i < td_safetensors_n_metadata(st); i++) {
        const char *v = NULL, *key = td_safetensors_metadata_at(st, i, &v);
        if (!cJSON_GetObjectItemCaseSensitive(meta, key)) cJSON_AddStringToObject(meta, key, v);
    }
    if (tensors) {
        cJSON *arr = cJSON_AddArrayToObject(o, "tensors");
        for (int i = 0; i < td_safetensors_count(st); i++) {
            const td_st_tensor_t *t = td_safetensors_at(st, i);
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "name", t->name);
            cJSON_AddStringToObject(e, "dtype", td_dtype_name(t->dtype));
            cJSON *sh = cJSON_AddArrayToObject(e, "shape");
            for (int d = 0; d < t->ndim; d++)
                cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
            cJSON_AddStringToObject(e, "file", s_base(td_safetensors_file_path(st, t->file)));
            cJSON_AddNumberToObject(e, "bytes", (double)t->nbytes);
            cJSON_AddItemToArray(arr, e);
        }
    }
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    if (!text) {
        fprintf(stderr, "tandem inspect: out of memory\n");
        return 1;
    }
    puts(text);
    cJSON_free(text);
    return 0;
}

int td_cmd_inspect(int argc, char **argv) {
    const char *dir = NULL;
    int json = 0, tensors = 0;
    long ctx = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--tensors")) {
            tensors = 1;
        } else if (!strcmp(a, "--ctx") || !strncmp(a, "--ctx=", 6) || !strcmp(a, "--model") ||
                   !strncmp(a, "--model=", 8)) {
            int is_ctx = !strncmp(a, "--ctx", 5);
            const char *v = strchr(a, '=');
            if (v)
                v++;
            else if (i + 1 < argc)
                v = argv[++i];
            else {
                fprintf(stderr, "tandem inspect: %s needs a value\n", a);
                return 2;
            }
            if (is_ctx) {
                char *end;
                errno = 0;
                ctx = strtol(v, &end, 10);
                if (end == v || *end || errno || ctx <= 0 || ctx > (1L << 30)) {
                    fprintf(stderr, "tandem inspect: --ctx '%s' is not a positive integer\n", v);
                    return 2;
                }
            } else if (dir) {
                fprintf(stderr, "tandem inspect: more than one model directory given\n");
                return 2;
            } else {
                dir = v;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "tandem inspect: unknown option '%s'\n", a);
            s_usage(stderr);
            return 2;
        } else if (dir) {
            fprintf(stderr, "tandem inspect: more than one model directory given ('%s', '%s')\n",
                    dir, a);
            return 2;
        } else {
            dir = a;
        }
    }
    if (!dir) {
        fprintf(stderr, "tandem inspect: no model directory given\n");
        s_usage(stderr);
        return 2;
    }
    td_config_t cfg;
    td_err_t err = {0};
    if (td_config_load(dir, &cfg, &err) != TD_OK) {
        fprintf(stderr, "tandem inspect: %s\n", err.msg);
        return 1;
    }
    td_safetensors_t *st = td_safetensors_open(dir, &err);
    if (!st) {
        fprintf(stderr, "tandem inspect: %s\n", err.msg);
        return 1;
    }
    s_summary_t s;
    s_summarize(&cfg, st, (int)ctx, &s);
    int rc = 0;
    if (json)
        rc = s_print_json(dir, &cfg, st, &s, tensors);
    else
        s_print_text(dir, &cfg, st, &s, tensors);
    td_safetensors_destroy(&st);
    return rc;
}
