/* cmd_generate.c - `tandem generate`: one prompt in, streamed text and stats out. */
#include <stdio.h>

#include "bridge/cli.h"
#include "bridge/commands.h"
#include "model/chat.h"
#include "model/sampler.h"
#include "verifier/generate.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static void s_help(FILE *f) {
    fprintf(f,
            "usage: tandem generate --verifier DIR --prompt T [options]\n\n"
            "Generates a continuation of the prompt and streams it to stdout; a summary goes to stderr.\n\n"
            "options:\n"
            "  --verifier DIR     the (causal) model that generates; --model is a synonym\n"
            "  --method M         decoding method; available now: ar (plain autoregressive)\n"
            "  --prompt T         the prompt text; --prompt-file F reads it from a file ('-' = stdin)\n"
            "  --chat MODE        auto (default: the checkpoint's chat template if it has one), none,\n"
            "                     chatml, llama3\n"
            "  --system S         system message for the chat template\n"
            "  --max-tokens N     tokens to generate at most (default 128)\n"
            "  --temperature X    0 = greedy; default: the checkpoint's generation_config.json, else 0\n"
            "  --top-k K          keep the K most likely tokens (0 = off; default from generation_config)\n"
            "  --top-p P          nucleus sampling mass (1 = off; default from generation_config)\n"
            "  --seed S           sampling seed (default 0): the same seed replays the same output\n"
            "  --threads N        CPU threads (default: all cores)\n"
            "  --json             print one JSON object {text, tokens, stats} instead of streaming\n");
}

/* Sampling defaults from DIR/generation_config.json, as HF generate would use them. */
static void s_gen_defaults(const char *dir, td_sampling_t *sp, int32_t *stop, int *n_stop, int cap) {
    char path[4096], *data = NULL;
    size_t len;
    td_path_join(path, sizeof path, dir, "generation_config.json");
    if (td_read_file(path, &data, &len, NULL) != TD_OK) return;
    cJSON *j = cJSON_ParseWithLength(data, len);
    free(data);
    if (!j) {
        td_log(TD_LOG_WARN, "%s: not valid JSON, ignored", path);
        return;
    }
    cJSON *v;
    int do_sample = cJSON_IsTrue(cJSON_GetObjectItem(j, "do_sample"));
    if (do_sample) {
        sp->temperature = 1.0f;
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(j, "temperature"))) sp->temperature = (float)v->valuedouble;
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(j, "top_k"))) sp->top_k = v->valueint;
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(j, "top_p"))) sp->top_p = (float)v->valuedouble;
    }
    v = cJSON_GetObjectItem(j, "eos_token_id");
    if (cJSON_IsNumber(v) && *n_stop < cap) stop[(*n_stop)++] = v->valueint;
    if (cJSON_IsArray(v)) {
        cJSON *e;
        cJSON_ArrayForEach(e, v) if (cJSON_IsNumber(e) && *n_stop < cap) stop[(*n_stop)++] = e->valueint;
    }
    cJSON_Delete(j);
}

typedef struct stream {
    td_detok_t *dt;
    int print;
} stream_t;

static int s_on_token(void *ud, int32_t id) {
    stream_t *s = ud;
    if (!s->print) return 0;
    char buf[1024];
    int n = td_detok_push(s->dt, id, buf, sizeof buf);
    if (n > 0) {
        fwrite(buf, 1, (size_t)n, stdout);
        fflush(stdout);
    }
    return 0;
}

int td_cmd_generate(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *prompt_file = NULL, *method = "ar", *chat = "auto",
               *system = NULL, *pos;
    long max_tokens = 128, seed = 0, threads = 0, top_k = -1;
    double temperature = -1, top_p = -1;
    int json = 0, r;
    td_opts_t o;
    td_opts_init(&o, argc, argv);
    while ((r = td_opts_next(&o, &pos)) != 0) {
        if (r < 0) {
            fprintf(stderr, "tandem generate: unexpected argument '%s'\n", pos);
            return 2;
        }
        if (td_opts_is(&o, "help") || td_opts_is(&o, "h")) {
            s_help(stdout);
            return 0;
        } else if (td_opts_is(&o, "verifier") || td_opts_is(&o, "model")) {
            if (!(model = td_opts_value(&o))) return 2;
        } else if (td_opts_is(&o, "method")) {
            if (!(method = td_opts_value(&o))) return 2;
        } else if (td_opts_is(&o, "prompt")) {
            if (!(prompt = td_opts_value(&o))) return 2;
        } else if (td_opts_is(&o, "prompt-file")) {
            if (!(prompt_file = td_opts_value(&o))) return 2;
        } else if (td_opts_is(&o, "chat")) {
            if (!(chat = td_opts_value(&o))) return 2;
        } else if (td_opts_is(&o, "system")) {
            if (!(system = td_opts_value(&o))) return 2;
        } else if (td_opts_is(&o, "max-tokens")) {
            if (td_opts_int(&o, 0, 1 << 20, &max_tokens)) return 2;
        } else if (td_opts_is(&o, "temperature")) {
            if (td_opts_float(&o, 0, 100, &temperature)) return 2;
        } else if (td_opts_is(&o, "top-k")) {
            if (td_opts_int(&o, 0, 1 << 24, &top_k)) return 2;
        } else if (td_opts_is(&o, "top-p")) {
            if (td_opts_float(&o, 1e-9, 1, &top_p)) return 2;
        } else if (td_opts_is(&o, "seed")) {
            if (td_opts_int(&o, 0, 0x7fffffffL, &seed)) return 2;
        } else if (td_opts_is(&o, "threads")) {
            if (td_opts_int(&o, 0, 1024, &threads)) return 2;
        } else if (td_opts_is(&o, "json")) {
            json = 1;
        } else {
            fprintf(stderr, "tandem generate: unknown option --%s (see --help)\n", o.name);
            return 2;
        }
    }
    if (strcmp(method, "ar") != 0) {
        fprintf(stderr, "tandem generate: method '%s' is not available in this build (available: ar)\n", method);
        return 2;
    }
    if (!model || (!prompt == !prompt_file)) {
        fprintf(stderr, "tandem generate: need --verifier DIR and exactly one of --prompt / --prompt-file\n");
        return 2;
    }
    int chat_kind = strcmp(chat, "auto") == 0 ? -2 : td_chat_kind_from_name(chat);
    if (chat_kind == -1) {
        fprintf(stderr, "tandem generate: unknown --chat '%s' (auto, none, chatml, llama3)\n", chat);
        return 2;
    }
    char *pbuf = NULL;
    size_t plen = 0;
    if (prompt_file) {
        if (!(pbuf = td_cli_read_text(prompt_file, &plen))) return 1;
        prompt = pbuf;
    }
    td_backend_t *be;
    td_model_t *m;
    td_tokenizer_t *tok;
    if (td_cli_load(model, (int)threads, &be, &m, &tok)) {
        free(pbuf);
        return 1;
    }
    const td_config_t *c = td_model_config(m);
    int rc = 1;
    td_err_t err = {0};
    char *text = NULL, *rendered = NULL;
    int32_t *ids = NULL, *out = NULL, stop[16];
    int n = 0, n_stop = 0;
    td_sampling_t sp = {.temperature = 0, .top_k = 0, .top_p = 1};
    if (c->eos_token_id >= 0) stop[n_stop++] = c->eos_token_id;
    s_gen_defaults(model, &sp, stop, &n_stop, 12);
    if (temperature >= 0) sp.temperature = (float)temperature;
    if (top_k >= 0) sp.top_k = (int)top_k;
    if (top_p >= 0) sp.top_p = (float)top_p;

    td_chat_format_t fmt;
    if (chat_kind == -2) {
        if (td_chat_format_detect(model, &fmt, &err) != TD_OK) {
            fprintf(stderr, "tandem generate: %s\n", err.msg);
            goto done;
        }
    } else {
        td_chat_format_builtin((td_chat_kind_t)chat_kind, &fmt);
    }
    if (fmt.kind != TD_CHAT_NONE) {
        td_chat_msg_t msgs[2];
        int nm = 0;
        if (system) msgs[nm++] = (td_chat_msg_t){"system", system};
        msgs[nm++] = (td_chat_msg_t){"user", prompt};
        if (td_chat_format_apply(&fmt, msgs, nm, 1, &rendered, &err) != TD_OK) {
            fprintf(stderr, "tandem generate: %s\n", err.msg);
            goto done;
        }
        const char *ends[] = {"<|im_end|>", "<|eot_id|>", "<|endoftext|>"};
        for (size_t i = 0; i < 3 && n_stop < 16; i++) {
            int32_t id = td_tokenizer_token_id(tok, ends[i]);
            if (id >= 0) stop[n_stop++] = id;
        }
    }
    const char *in = rendered ? rendered : prompt;
    if (td_tokenizer_encode(tok, in, strlen(in), rendered != NULL, &ids, &n, &err) != TD_OK) {
        fprintf(stderr, "tandem generate: %s\n", err.msg);
        goto done;
    }
    if (n == 0) {
        fprintf(stderr, "tandem generate: the prompt is empty\n");
        goto done;
    }
    out = malloc(((size_t)max_tokens + 1) * sizeof *out);
    td_detok_t *dt = td_detok_new(tok, 1);
    stream_t st = {dt, !json};
    td_gen_params_t gp = {.max_tokens = (int)max_tokens, .sampling = sp, .seed = (uint64_t)seed,
                          .stop_ids = stop, .n_stop = n_stop};
    td_gen_stats_t gs = {0};
    double t0 = td_time_now();
    int grc = out && dt ? td_generate_ar(m, ids, n, &gp, s_on_token, &st, out, &gs, &err)
                        : td_err_set(&err, TD_ERR_NOMEM, "out of memory");
    double total = td_time_now() - t0;
    if (grc != TD_OK) {
        if (!json) fputc('\n', stdout);
        fprintf(stderr, "tandem generate: %s\n", err.msg);
        td_detok_destroy(&dt);
        goto done;
    }
    char tail[256];
    int tn = td_detok_flush(dt, tail, sizeof tail);
    td_detok_destroy(&dt);
    double tps = gs.decode_s > 0 && gs.generated > 1 ? (gs.generated - 1) / gs.decode_s : 0;
    double e2e = total > 0 ? gs.generated / total : 0;
    static const char *reasons[] = {"length", "eos", "callback"};
    if (json) {
        size_t tl = 0;
        if (td_tokenizer_decode(tok, out, gs.generated, 1, &text, &tl, &err) != TD_OK) {
            fprintf(stderr, "tandem generate: %s\n", err.msg);
            goto done;
        }
        printf("{\"text\":");
        td_cli_json_str(stdout, text, tl);
        printf(",\"tokens\":[");
        for (int i = 0; i < gs.generated; i++) printf("%s%d", i ? "," : "", out[i]);
        printf("],\"prompt_tokens\":%d,\"stats\":{\"method\":\"ar\",\"generated\":%d,\"drafted\":0,"
               "\"accepted\":0,\"acceptance_rate\":null,\"mean_accepted_length\":1.0,"
               "\"accepted_by_position\":[],\"rounds\":%d,\"fallbacks\":0,\"forwards\":%d,"
               "\"prefill_s\":%.6f,\"decode_s\":%.6f,\"total_s\":%.6f,\"tokens_per_second\":%.3f,"
               "\"decode_tokens_per_second\":%.3f,\"stop\":\"%s\"}}\n",
               n, gs.generated, gs.generated, gs.forwards, gs.prefill_s, gs.decode_s, total, e2e, tps,
               reasons[gs.stop]);
    } else {
        if (tn > 0) fwrite(tail, 1, (size_t)tn, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        fprintf(stderr,
                "[ar] prompt %d tokens (prefill %.3f s), generated %d tokens in %.3f s: %.2f tok/s "
                "decode, %.2f tok/s end to end, stop: %s\n",
                n, gs.prefill_s, gs.generated, total, tps, e2e, reasons[gs.stop]);
    }
    rc = 0;
done:
    free(text);
    free(rendered);
    free(ids);
    free(out);
    free(pbuf);
    td_tokenizer_destroy(&tok);
    td_model_destroy(&m);
    td_backend_destroy(&be);
    return rc;
}
