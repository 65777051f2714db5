/* cmd_inspect.c - `tandem inspect`: what a checkpoint holds, without running it.
 *
 * Reads config.json (td_config_load) and the safetensors headers, or a GGUF file's header and
 * metadata (td_config_from_gguf), through the tensor source (mmap, no weight is touched), then
 * prints the architecture, the hyper-parameters tandem will use, the
 * parameter count, bytes per dtype, the memory a run needs (weights + float32 KV cache), and with
 * --tensors every tensor. --json prints the same as one JSON object. */
#include "bridge/commands.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/model.h"
#include "model/gguf.h"
#include "model/tensor_source.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void s_usage(FILE *f) {
    fprintf(
        f,
        "usage: tandem inspect DIR|FILE.gguf [--json] [--tensors] [--ctx N]\n\n"
        "  DIR          a checkpoint directory: config.json plus model.safetensors or\n"
        "               model.safetensors.index.json and its shards (--model DIR also works)\n"
        "  FILE.gguf    a GGUF file: its header, metadata (long arrays abbreviated) and, with\n"
        "               --tensors, every tensor with its GGUF type\n"
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

static int64_t s_elems(const td_tensor_info_t *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

/* The files holding tensors, in order of first appearance (file order for shards). */
static int s_files(const td_tensor_source_t *src, const char **files, int cap) {
    int n = 0;
    td_tensor_info_t t;
    for (int64_t i = 0; td_tensor_source_at(src, i, &t); i++) {
        int seen = 0;
        for (int j = 0; j < n && !seen; j++) seen = strcmp(files[j], t.file) == 0;
        if (!seen && n < cap) files[n++] = t.file;
    }
    if (n == 0 && cap > 0) files[n++] = td_tensor_source_path(src);
    return n;
}

static void s_summarize(const td_config_t *c, const td_tensor_source_t *src, int ctx,
                        s_summary_t *s) {
    memset(s, 0, sizeof *s);
    td_tensor_info_t t;
    for (int64_t i = 0; td_tensor_source_at(src, i, &t); i++) {
        int64_t n = s_elems(&t);
        s->n_params += n;
        s->weight_bytes += t.nbytes;
        s->dtype_tensors[t.dtype]++;
        s->dtype_bytes[t.dtype] += t.nbytes;
        s->dtype_elems[t.dtype] += (uint64_t)n;
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

/* A metadata value as text: scalars in full (strings cut at 200 bytes), arrays as their type,
 * length and first elements. */
static void s_gguf_value(const td_gguf_kv_t *kv, char *buf, size_t cap) {
    const td_gguf_type_t t = kv->type == TD_GGUF_ARRAY ? kv->arr_type : kv->type;
    if (kv->type == TD_GGUF_STRING) {
        snprintf(buf, cap, "\"%.200s%s\"", kv->str, kv->str_len > 200 ? "..." : "");
        for (char *p = buf; *p; p++)
            if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
        return;
    }
    /* a scalar is read as a one-element array view */
    td_gguf_kv_t one = *kv;
    if (kv->type != TD_GGUF_ARRAY) {
        one.type = TD_GGUF_ARRAY;
        one.arr_type = kv->type;
        one.n = 1;
    }
    size_t w = 0;
    if (kv->type == TD_GGUF_ARRAY)
        w += (size_t)snprintf(buf + w, cap - w, "[%s x %llu]", td_gguf_type_name(t),
                              (unsigned long long)kv->n);
    for (uint64_t i = 0; i < one.n && i < 4 && w < cap; i++) {
        const char *sep = kv->type == TD_GGUF_ARRAY ? (i ? ", " : " ") : "";
        if (t == TD_GGUF_STRING) {
            uint64_t len;
            const char *sv = td_gguf_arr_str(&one, i, &len);
            w += (size_t)snprintf(buf + w, cap - w, "%s\"%.*s\"", sep, (int)(len > 40 ? 40 : len),
                                  sv);
        } else if (t == TD_GGUF_F32 || t == TD_GGUF_F64)
            w += (size_t)snprintf(buf + w, cap - w, "%s%g", sep, td_gguf_arr_float(&one, i));
        else if (t == TD_GGUF_BOOL)
            w += (size_t)snprintf(buf + w, cap - w, "%s%s", sep,
                                  td_gguf_arr_int(&one, i) ? "true" : "false");
        else
            w += (size_t)snprintf(buf + w, cap - w, "%s%lld", sep,
                                  (long long)td_gguf_arr_int(&one, i));
    }
    if (kv->type == TD_GGUF_ARRAY && kv->n > 4 && w < cap) snprintf(buf + w, cap - w, ", ...");
}

static void s_print_gguf_header(const td_gguf_t *g) {
    char h1[32];
    printf("format         GGUF v%u, alignment %u, data at byte %llu, file %s\n",
           td_gguf_version(g), td_gguf_alignment(g), (unsigned long long)td_gguf_data_offset(g),
           s_human(td_gguf_file_size(g), h1, sizeof h1));
    printf("metadata       %lld keys\n", (long long)td_gguf_n_kv(g));
    for (int64_t i = 0; i < td_gguf_n_kv(g); i++) {
        const td_gguf_kv_t *kv = td_gguf_kv_at(g, i);
        char v[512];
        s_gguf_value(kv, v, sizeof v);
        printf("  %-40s %-7s %s\n", kv->key, td_gguf_type_name(kv->type), v);
    }
}

static void s_print_tensors(const td_tensor_source_t *src) {
    printf("\n%-60s %-8s %-24s %s\n", "tensor", "dtype", "shape", "file");
    td_tensor_info_t t;
    for (int64_t i = 0; td_tensor_source_at(src, i, &t); i++) {
        char shape[256];
        int w = snprintf(shape, sizeof shape, "[");
        for (int d = 0; d < t.ndim && w < (int)sizeof shape; d++)
            w += snprintf(shape + w, sizeof shape - (size_t)w, "%s%lld", d ? ", " : "",
                          (long long)t.shape[d]);
        if (w < (int)sizeof shape) snprintf(shape + w, sizeof shape - (size_t)w, "]");
        printf("%-60s %-8s %-24s %s\n", t.name, td_dtype_name(t.dtype), shape, s_base(t.file));
    }
}

static void s_print_text(const char *dir, const td_config_t *c, const td_tensor_source_t *src,
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
    if (c->pos == TD_POS_ROPE)
        printf("rope layout    %s\n", c->rope_layout == TD_ROPE_INTERLEAVED
                                          ? "interleaved pairs (GGUF llama Q/K permutation)"
                                          : "rotate-half");
    const char *files[256];
    int nf = s_files(src, files, 256);
    printf("files          %d:", nf);
    for (int i = 0; i < nf; i++) printf(" %s", s_base(files[i]));
    printf("\n");
    printf("tensors        %lld\n", (long long)td_tensor_source_count(src));
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
    const td_safetensors_t *st = td_tensor_source_safetensors(src);
    if (st && td_safetensors_n_metadata(st) > 0) {
        printf("metadata      ");
        for (int i = 0; i < td_safetensors_n_metadata(st); i++) {
            const char *v = NULL, *k = td_safetensors_metadata_at(st, i, &v);
            printf(" %s=%s", k, v);
        }
        printf("\n");
    }
    if (td_tensor_source_gguf(src)) s_print_gguf_header(td_tensor_source_gguf(src));
    if (tensors) s_print_tensors(src);
}

static int s_print_json(const char *dir, const td_config_t *c, const td_tensor_source_t *src,
                        const s_summary_t *s, int tensors) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", dir);
    cJSON_AddStringToObject(o, "arch", td_arch_name(c->arch));
    cJSON_AddStringToObject(o, "arch_name", c->arch_name);
    cJSON_AddStringToObject(o, "model_type", c->model_type);
    /* td_fingerprint_tensors with the checkpoint's tokenizer (absent when it has none) */
    td_tokenizer_t *tok = td_checkpoint_tokenizer(dir, NULL);
    if (tok) {
        char fp[32];
        snprintf(fp, sizeof fp, "0x%016llx",
                 (unsigned long long)td_fingerprint_tensors(src, c, td_tokenizer_hash(tok)));
        cJSON_AddStringToObject(o, "fingerprint", fp);
        td_tokenizer_destroy(&tok);
    }
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
    cJSON_AddStringToObject(k, "rope_layout",
                            c->rope_layout == TD_ROPE_INTERLEAVED ? "interleaved" : "half");
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
    const char *fl[256];
    int nf = s_files(src, fl, 256);
    for (int i = 0; i < nf; i++) cJSON_AddItemToArray(files, cJSON_CreateString(fl[i]));
    cJSON_AddNumberToObject(o, "n_tensors", (double)td_tensor_source_count(src));
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
    const td_safetensors_t *st = td_tensor_source_safetensors(src);
    for (int i = 0; st && i < td_safetensors_n_metadata(st); i++) {
        const char *v = NULL, *key = td_safetensors_metadata_at(st, i, &v);
        if (!cJSON_GetObjectItemCaseSensitive(meta, key)) cJSON_AddStringToObject(meta, key, v);
    }
    const td_gguf_t *g = td_tensor_source_gguf(src);
    if (g) {
        cJSON *gg = cJSON_AddObjectToObject(o, "gguf");
        cJSON_AddNumberToObject(gg, "version", td_gguf_version(g));
        cJSON_AddNumberToObject(gg, "alignment", td_gguf_alignment(g));
        cJSON_AddNumberToObject(gg, "data_offset", (double)td_gguf_data_offset(g));
        cJSON_AddNumberToObject(gg, "file_bytes", (double)td_gguf_file_size(g));
        for (int64_t i = 0; i < td_gguf_n_kv(g); i++) {
            const td_gguf_kv_t *kv = td_gguf_kv_at(g, i);
            char v[512];
            s_gguf_value(kv, v, sizeof v);
            cJSON *e = cJSON_AddObjectToObject(meta, kv->key);
            cJSON_AddStringToObject(e, "type", td_gguf_type_name(kv->type));
            if (kv->type == TD_GGUF_ARRAY) {
                cJSON_AddStringToObject(e, "element_type", td_gguf_type_name(kv->arr_type));
                cJSON_AddNumberToObject(e, "length", (double)kv->n);
            }
            if (kv->type == TD_GGUF_STRING)
                cJSON_AddStringToObject(e, "value", kv->str);
            else
                cJSON_AddStringToObject(e, "text", v);
        }
    }
    if (tensors) {
        cJSON *arr = cJSON_AddArrayToObject(o, "tensors");
        td_tensor_info_t t;
        for (int64_t i = 0; td_tensor_source_at(src, i, &t); i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "name", t.name);
            cJSON_AddStringToObject(e, "dtype", td_dtype_name(t.dtype));
            cJSON *sh = cJSON_AddArrayToObject(e, "shape");
            for (int d = 0; d < t.ndim; d++)
                cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t.shape[d]));
            cJSON_AddStringToObject(e, "file", s_base(t.file));
            cJSON_AddNumberToObject(e, "bytes", (double)t.nbytes);
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
    td_tensor_source_t *src = NULL;
    if (td_path_is_gguf(dir)) {
        src = td_tensor_source_open(dir, &err);
        if (src && td_config_from_gguf(td_tensor_source_gguf(src), &cfg, &err) != TD_OK) {
            /* still show what the file holds, then the reason it cannot run */
            if (!json) {
                printf("model          %s\n", dir);
                s_print_gguf_header(td_tensor_source_gguf(src));
                if (tensors) s_print_tensors(src);
            }
            fprintf(stderr, "tandem inspect: %s\n", err.msg);
            td_tensor_source_destroy(&src);
            return 1;
        }
    } else if (td_config_load(dir, &cfg, &err) == TD_OK) {
        src = td_tensor_source_open(dir, &err);
    }
    if (!src) {
        fprintf(stderr, "tandem inspect: %s\n", err.msg);
        return 1;
    }
    s_summary_t s;
    s_summarize(&cfg, src, (int)ctx, &s);
    int rc = 0;
    if (json)
        rc = s_print_json(dir, &cfg, src, &s, tensors);
    else
        s_print_text(dir, &cfg, src, &s, tensors);
    td_tensor_source_destroy(&src);
    return rc;
}
