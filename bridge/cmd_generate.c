/* cmd_generate.c - `tandem generate`: one prompt in, streamed text and stats out, by any method. */
#include <stdio.h>

#include "bridge/cli.h"
#include "bridge/commands.h"
#include "bridge/pair.h"
#include "drafter/draft.h"
#include "engine/method.h"
#include "model/chat.h"
#include "model/sampler.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void s_help(FILE *f) {
    fprintf(
        f,
        "usage: tandem generate [--verifier DIR] [--drafter DIR|ENDPOINT] [--method M] --prompt T "
        "[options]\n\n"
        "Generates a continuation of the prompt and streams it to stdout; a summary goes to "
        "stderr.\n"
        "With no model arguments the bundled models (models/tiny-*) and --method specdiff are "
        "used.\n\n"
        "models and method:\n"
        "  --verifier X       the causal model whose distribution is generated: a checkpoint "
        "directory\n"
        "                     (--model: synonym), or the endpoint of a running tandem-verifier\n"
        "  --drafter X        a drafter checkpoint directory (served in this process over "
        "inproc://)\n"
        "                     or the endpoint of a running tandem-drafter (tcp://host:port, "
        "ipc://path)\n"
        "                     selfspec with an endpoint: the drafter evaluates half of every "
        "chain;\n"
        "                     --verifier DIR is the same dLLM here (default the bundled "
        "drafter)\n"
        "                     planned with an endpoint: the drafter fills the spans; the planner "
        "is\n"
        "                     --verifier DIR (default the bundled tiny-planned, run causally)\n"
        "  --method M         ar          plain autoregressive decoding with the verifier (exact)\n"
        "                     spec-ar     speculative decoding with a small AR drafter (exact)\n"
        "                     specdiff    a diffusion drafter drafts --gamma tokens in --steps "
        "steps (exact\n"
        "                                 with --order left-to-right or --steps 1 under rejection, "
        "any order\n"
        "                                 under match, and always at temperature 0)\n"
        "                     apd         diffusion drafts accepted while they equal the argmax "
        "of\n"
        "                                 R*logit_D + (1-R)*logit_AR (LOSSY by design)\n"
        "                     diffusion   the drafter alone, Fast-dLLM confidence-threshold "
        "unmasking\n"
        "                     selfspec    the drafter verifies its own drafts: output identical to "
        "its\n"
        "                                 one-token-per-step greedy decoding, fewer sequential "
        "passes\n"
        "                     planned     an AR plan (<promise> spans) filled by parallel "
        "diffusion; the\n"
        "                                 planner is --verifier when given, else the drafter run "
        "causally;\n"
        "                                 a checkpoint without the plan tags falls back to "
        "diffusion\n"
        "                     dflash      a DFlash drafter (--drafter DIR, or an endpoint of "
        "tandem-drafter\n"
        "                                 --model DIR --target FILE) fed the verifier's hidden "
        "states drafts\n"
        "                                 a block of --gamma tokens in one pass (exact; "
        "docs/dflash.md)\n"
        "                                 (ar when the planner is causal)\n"
        "prompt and sampling:\n"
        "  --prompt T         the prompt text; --prompt-file F reads it from a file ('-' = stdin)\n"
        "  --chat MODE        auto (default: the checkpoint's chat template if it has one), none,\n"
        "                     chatml, llama3\n"
        "  --system S         system message for the chat template\n"
        "  --max-tokens N     tokens to generate at most (default 128)\n"
        "  --temperature X    0 = greedy; default: the checkpoint's generation_config.json, else "
        "0\n"
        "  --top-k K          keep the K most likely tokens (0 = off)\n"
        "  --top-p P          nucleus sampling mass (1 = off)\n"
        "  --seed S           seed (default 0): the same seed replays the same output\n"
        "speculation:\n"
        "  --gamma N          draft length (default 8; apd: the lookahead M, default 16; dflash:\n"
        "                     the block size B - 1, default the drafter's block_size - 1)\n"
        "  --steps T          diffusion denoising steps per draft (default 4; apd 1)\n"
        "  --order O          left-to-right (default), confidence, entropy, margin\n"
        "  --verify V         rejection (default), match, greedy (temperature 0 is always greedy)\n"
        "  --dist-top-k K     drafter distribution entries sent per position (default 32; full "
        "rows\n"
        "                     are fetched only when these cannot decide exactly)\n"
        "  --mixture R        apd mixture weight R (default 0.7)\n"
        "  --kv-window W      apd: drafter positions recomputed every round (default 16)\n"
        "  --lookahead M      apd: synonym of --gamma\n"
        "  --block-size B     diffusion, selfspec: block size (default 32)\n"
        "  --draft-k K        selfspec: drafts chained per forward (default 4)\n"
        "  --span-attention A planned: sparse (default: sibling spans invisible) or dense\n"
        "  --threshold X      diffusion: confidence threshold (default 0.9)\n"
        "  --timeout-ms N     drafter answer timeout per round (default 5000); on timeout the\n"
        "                     round is done as plain AR and counted as a fallback. With a remote\n"
        "                     --verifier ENDPOINT: how long to wait for each streamed chunk "
        "(default\n"
        "                     30000) before reporting the verifier dead\n"
        "  --curve-server-key F  the drafter's public key (NAME.pub) for a tcp:// drafter with "
        "CURVE\n"
        "  --curve-key F      this side's secret key (NAME.key) for CURVE client authentication\n"
        "other:\n"
        "  --threads N        CPU threads per model (default: all cores)\n"
        "  --spin-us N        waiting for the other side, poll without sleeping for up to N\n"
        "                     microseconds first (saves a thread wake-up per message, costs a "
        "busy\n"
        "                     core; 0 = off). Default: 5000 when the threads leave a core, else 0\n"
        "  --device N         CUDA device of the verifier (default -1: CPU); --drafter-device N "
        "for an\n"
        "                     in-process drafter\n"
        "  --predraft         in-process drafter: draft the next round ahead while the verifier "
        "verifies\n"
        "  --dflash-any-target  dflash with an in-process drafter: pair even when the verifier's\n"
        "                     fingerprint is not one the drafter lists (same shapes still needed)\n"
        "  --feature-type T   dflash: bf16 (default) or f16 features on the wire\n"
        "  --json             print one JSON object {text, tokens, prompt_tokens, stats} instead "
        "of\n"
        "                     streaming\n");
}

/* Sampling defaults and stop ids from DIR/generation_config.json, as HF generate would use them. */
static void s_gen_defaults(const char *dir, td_sampling_t *sp, int32_t *stop, int *n_stop,
                           int cap) {
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
    if (cJSON_IsTrue(cJSON_GetObjectItem(j, "do_sample"))) {
        sp->temperature = 1.0f;
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(j, "temperature")))
            sp->temperature = (float)v->valuedouble;
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(j, "top_k"))) sp->top_k = v->valueint;
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(j, "top_p"))) sp->top_p = (float)v->valuedouble;
    }
    v = cJSON_GetObjectItem(j, "eos_token_id");
    if (cJSON_IsNumber(v) && *n_stop < cap) stop[(*n_stop)++] = v->valueint;
    if (cJSON_IsArray(v)) {
        cJSON *e;
        cJSON_ArrayForEach(e, v) if (cJSON_IsNumber(e) && *n_stop < cap) stop[(*n_stop)++] =
            e->valueint;
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

/* --verifier ENDPOINT: a running tandem-verifier generates; we stream its chunks. */
static int s_generate_remote(const char *endpoint, const char *prompt, int chat, const char *method,
                             long max_tokens, const td_sampling_t *sp, long seed, long gamma,
                             long steps, int order, const char *verify, double mixture, int json,
                             int timeout_ms, const char *cserver, const char *ckey) {
    td_err_t err = {0};
    td_transport_opts_t to = {
        .curve_server_key = cserver, .curve_secret_key = ckey, .heartbeat_ivl_ms = 1000};
    td_client_t *cl = td_client_new(endpoint, &to, &err);
    if (!cl) {
        fprintf(stderr, "tandem generate: %s\n", err.msg);
        return 1;
    }
    td_hello_t hello;
    td_hello_fill(&hello, TD_ROLE_CLIENT, "tandem-generate", 0, -1, 0, "none", NULL, 0);
    int rc = 1;
    char *text = NULL;
    size_t tlen = 0;
    FILE *acc = json ? open_memstream(&text, &tlen) : NULL;
    uint32_t *toks = NULL;
    size_t n_toks = 0, cap = 0;
    if (td_client_handshake(cl, &hello, NULL, timeout_ms, &err) != TD_OK) {
        fprintf(stderr, "tandem generate: verifier at %s: %s\n", endpoint, err.msg);
        goto out;
    }
    td_msg_t env;
    uint64_t sid = ((uint64_t)getpid() << 20) | 1;
    td_msg_init(&env, TD_BODY_GENERATE_REQUEST, sid, 0);
    td_generate_request_t *g = &env.generate_request;
    g->prompt = prompt;
    g->method = method;
    g->max_tokens = (uint32_t)max_tokens;
    g->has_sampling = 1;
    g->sampling.temperature = sp->temperature;
    g->sampling.top_k = (uint32_t)sp->top_k;
    g->sampling.top_p = sp->top_p;
    g->seed = (uint64_t)seed;
    g->gamma = gamma > 0 ? (uint32_t)gamma : 0;
    g->steps = steps > 0 ? (uint32_t)steps : 0;
    g->order = order;
    g->verify = verify ? verify : "";
    g->mixture = (float)mixture;
    g->chat = chat;
    if (td_client_send(cl, &env, &err) != TD_OK) {
        fprintf(stderr, "tandem generate: %s\n", err.msg);
        goto out;
    }
    for (;;) {
        td_msg_t *ans = NULL;
        int r = td_client_recv(cl, &ans, timeout_ms, &err);
        if (r == TD_RECV_TIMEOUT) {
            if (!json) fputc('\n', stdout);
            fprintf(stderr,
                    "tandem generate: the verifier at %s did not answer within %d ms (is it "
                    "running?)\n",
                    endpoint, timeout_ms);
            goto out;
        }
        if (r != TD_RECV_OK) continue;
        if (ans->session_id != sid || ans->body != TD_BODY_TOKEN_CHUNK) {
            if (ans->body == TD_BODY_ERROR) {
                fprintf(stderr, "tandem generate: verifier error: %s\n", ans->error.message);
                td_msg_free(&ans);
                goto out;
            }
            td_msg_free(&ans);
            continue;
        }
        const td_token_chunk_t *ch = &ans->token_chunk;
        if (ch->error && *ch->error) {
            if (!json) fputc('\n', stdout);
            fprintf(stderr, "tandem generate: verifier: %s\n", ch->error);
            td_msg_free(&ans);
            goto out;
        }
        for (size_t i = 0; i < ch->n_tokens; i++) {
            if (n_toks == cap) {
                cap = cap ? cap * 2 : 256;
                uint32_t *nt = realloc(toks, cap * sizeof *toks);
                if (!nt) goto out;
                toks = nt;
            }
            toks[n_toks++] = ch->tokens[i];
        }
        if (ch->text && *ch->text) {
            if (json)
                fputs(ch->text, acc);
            else
                fputs(ch->text, stdout), fflush(stdout);
        }
        if (ch->done) {
            if (json) {
                fclose(acc);
                acc = NULL;
                printf("{\"text\":");
                td_cli_json_str(stdout, text, tlen);
                printf(",\"tokens\":[");
                for (size_t i = 0; i < n_toks; i++) printf("%s%u", i ? "," : "", toks[i]);
                /* stats_json is the {"stats":{...}} object the worker printed */
                const char *st = ch->stats_json && *ch->stats_json ? ch->stats_json + 1 : "}";
                printf("],\"verifier\":");
                td_cli_json_str(stdout, endpoint, strlen(endpoint));
                printf(",%s\n", st);
            } else {
                fputc('\n', stdout);
                fprintf(stderr, "[%s via %s] generated %zu tokens\n", method, endpoint, n_toks);
            }
            td_msg_free(&ans);
            rc = 0;
            break;
        }
        td_msg_free(&ans);
    }
out:
    if (acc) fclose(acc);
    free(text);
    free(toks);
    td_client_destroy(&cl);
    return rc;
}

int td_cmd_generate(int argc, char **argv) {
    const char *vdir = NULL, *drafter = NULL, *prompt = NULL, *prompt_file = NULL, *method_s = NULL,
               *chat = "auto", *system = NULL, *order_s = NULL, *verify_s = NULL, *ckey = NULL,
               *cserver = NULL;
    long draft_k = 4;
    double steps_ratio = -1;
    const char *span_att = "sparse";
    long spin_us = -1;
    long device = -1, ddevice = -1, max_tokens = 128, seed = 0, threads = 0, top_k = -1, gamma = -1,
         steps = -1, dist_k = 32, block = 32, timeout = -1, kvw = -1;
    double temperature = -1, top_p = -1, mixture = 0.7, threshold = 0.9;
    int json = 0, predraft = 0, any_target = 0;
    const char *ftype_s = "bf16";
    const td_opt_spec_t spec[] = {
        {"verifier", TD_OPT_STR, &vdir, 0, 0},
        {"model", TD_OPT_STR, &vdir, 0, 0},
        {"drafter", TD_OPT_STR, &drafter, 0, 0},
        {"method", TD_OPT_STR, &method_s, 0, 0},
        {"prompt", TD_OPT_STR, &prompt, 0, 0},
        {"prompt-file", TD_OPT_STR, &prompt_file, 0, 0},
        {"chat", TD_OPT_STR, &chat, 0, 0},
        {"system", TD_OPT_STR, &system, 0, 0},
        {"order", TD_OPT_STR, &order_s, 0, 0},
        {"verify", TD_OPT_STR, &verify_s, 0, 0},
        {"curve-key", TD_OPT_STR, &ckey, 0, 0},
        {"curve-server-key", TD_OPT_STR, &cserver, 0, 0},
        {"span-attention", TD_OPT_STR, &span_att, 0, 0},
        {"max-tokens", TD_OPT_INT, &max_tokens, 0, 1 << 20},
        {"top-k", TD_OPT_INT, &top_k, 0, 1 << 24},
        {"seed", TD_OPT_INT, &seed, 0, 0x7fffffffL},
        {"spin-us", TD_OPT_INT, &spin_us, 0, 1000000},
        {"threads", TD_OPT_INT, &threads, 0, 1024},
        {"device", TD_OPT_INT, &device, -1, 64},
        {"drafter-device", TD_OPT_INT, &ddevice, -1, 64},
        {"gamma", TD_OPT_INT, &gamma, 1, TD_SPEC_MAX_GAMMA},
        {"lookahead", TD_OPT_INT, &gamma, 1, TD_SPEC_MAX_GAMMA},
        {"steps", TD_OPT_INT, &steps, 1, 1024},
        {"dist-top-k", TD_OPT_INT, &dist_k, 1, 1024},
        {"block-size", TD_OPT_INT, &block, 1, 4096},
        {"timeout-ms", TD_OPT_INT, &timeout, 1, 3600000},
        {"kv-window", TD_OPT_INT, &kvw, 0, 1 << 20},
        {"draft-k", TD_OPT_INT, &draft_k, 1, 16},
        {"temperature", TD_OPT_FLT, &temperature, 0, 100},
        {"top-p", TD_OPT_FLT, &top_p, 1e-9, 1},
        {"mixture", TD_OPT_FLT, &mixture, 0, 1},
        {"threshold", TD_OPT_FLT, &threshold, 0, 2},
        {"steps-ratio", TD_OPT_FLT, &steps_ratio, 0.01, 10},
        {"json", TD_OPT_FLAG, &json, 0, 0},
        {"predraft", TD_OPT_FLAG, &predraft, 0, 0},
        {"dflash-any-target", TD_OPT_FLAG, &any_target, 0, 0},
        {"feature-type", TD_OPT_STR, &ftype_s, 0, 0},
    };
    int ec = TD_CLI_OPTS(argc, argv, spec, s_help);
    if (ec >= 0) return ec;
    char vbuf[1024], dbuf[1024];
    int method;
    if (method_s) {
        if ((method = td_method_parse(method_s)) < 0) {
            fprintf(stderr, "tandem generate: unknown --method '%s' (%s)\n", method_s,
                    td_method_list());
            return 2;
        }
    } else if (drafter && td_is_dflash_dir(drafter)) {
        method = TD_METHOD_DFLASH;
    } else {
        method = (drafter || !vdir) ? TD_METHOD_SPECDIFF : TD_METHOD_AR;
    }
    if (strcmp(ftype_s, "bf16") && strcmp(ftype_s, "f16")) {
        fprintf(stderr, "tandem generate: --feature-type must be bf16 or f16\n");
        return 2;
    }
    if (method == TD_METHOD_DFLASH && !drafter && !(vdir && td_is_endpoint(vdir))) {
        fprintf(stderr, "tandem generate: --method dflash needs --drafter DIR (a DFlash drafter "
                        "directory) or an endpoint of a tandem-drafter serving one\n");
        return 2;
    }
    /* which models to load comes from the method's capabilities */
    const td_method_desc_t *md = td_method_get((td_method_t)method);
    const int local_dllm = (md->caps & TD_CAP_LOCAL_DLLM) != 0;
    const char *planner_dir =
        md->drafter == TD_DRAFTER_PLANNED ? vdir : NULL; /* explicit --verifier only */
    int needs_v = (md->caps & TD_CAP_VERIFIER) != 0, needs_d = md->drafter != TD_DRAFTER_NONE;
    if (needs_v && !vdir) vdir = td_cli_bundled("tiny-verifier", vbuf, sizeof vbuf);
    if (needs_d && !drafter)
        drafter = td_cli_bundled(md->drafter == TD_DRAFTER_AR ? "tiny-ar-drafter"
                                                              : "tiny-diffusion-drafter",
                                 dbuf, sizeof dbuf);
    if (!needs_d) drafter = NULL;
    /* a dLLM method with a drafter process: the local side loads --verifier DIR (selfspec: the
     * same dLLM; planned: the planner) and the drafter evaluates / fills over the wire */
    const int remote_dllm = (md->caps & TD_CAP_REMOTE_DLLM) && td_is_endpoint(drafter);
    char lbuf[1024];
    const char *local_dir = NULL;
    if (remote_dllm) {
        if (vdir && td_is_endpoint(vdir)) {
            fprintf(stderr,
                    "tandem generate: --method %s with a drafter endpoint needs --verifier "
                    "DIR (a checkpoint directory loaded here)\n",
                    md->name);
            return 2;
        }
        local_dir =
            vdir ? vdir
                 : td_cli_bundled(md->drafter == TD_DRAFTER_PLANNED ? "tiny-planned"
                                                                    : "tiny-diffusion-drafter",
                                  lbuf, sizeof lbuf);
    } else if (local_dllm && td_is_endpoint(drafter)) {
        fprintf(stderr,
                "tandem generate: --method %s runs the drafter checkpoint in this process: give a "
                "directory\n",
                md->name);
        return 2;
    }
    if (strcmp(span_att, "sparse") != 0 && strcmp(span_att, "dense") != 0) {
        fprintf(stderr, "tandem generate: --span-attention is sparse or dense\n");
        return 2;
    }
    int order = order_s ? td_unmask_order_parse(order_s) : 0,
        verify = verify_s ? td_verify_parse(verify_s) : 0;
    if (order < 0 || verify < 0) {
        fprintf(stderr, "tandem generate: unknown %s '%s'\n", order < 0 ? "--order" : "--verify",
                order < 0 ? order_s : verify_s);
        return 2;
    }
    if (!prompt == !prompt_file) {
        fprintf(stderr,
                "tandem generate: need exactly one of --prompt / --prompt-file (see --help)\n");
        return 2;
    }
    int chat_kind = strcmp(chat, "auto") == 0 ? -2 : td_chat_kind_from_name(chat);
    if (chat_kind == -1) {
        fprintf(stderr, "tandem generate: unknown --chat '%s' (auto, none, chatml, llama3)\n",
                chat);
        return 2;
    }
    char *pbuf = NULL;
    size_t plen = 0;
    if (prompt_file) {
        if (!(pbuf = td_cli_read_text(prompt_file, &plen))) return 1;
        prompt = pbuf;
    }
    if (vdir && td_is_endpoint(vdir) && !local_dllm && !remote_dllm) {
        if (drafter && strcmp(drafter, dbuf) != 0)
            fprintf(stderr, "tandem generate: note: --drafter is ignored with a remote verifier "
                            "(it has its own)\n");
        int chat_on = chat_kind != TD_CHAT_NONE && chat_kind != -1;
        td_sampling_t rsp = {temperature >= 0 ? (float)temperature : 0, top_k >= 0 ? (int)top_k : 0,
                             top_p >= 0 ? (float)top_p : 1};
        int rrc = s_generate_remote(vdir, prompt, chat_on, td_method_name((td_method_t)method),
                                    max_tokens, &rsp, seed, gamma, steps, order, verify_s, mixture,
                                    json, timeout > 0 ? (int)timeout : 30000, cserver, ckey);
        free(pbuf);
        return rrc;
    }
    td_err_t err = {0};
    td_pair_t pair;
    td_pair_opts_t po = {.device = (int)device,
                         .drafter_device = (int)ddevice,
                         .threads = (int)threads,
                         .curve_server_key = cserver,
                         .curve_secret_key = ckey,
                         .predraft = predraft,
                         .spin_us = td_cli_pair_spin(spin_us),
                         .dflash = method == TD_METHOD_DFLASH,
                         .dflash_any_target = any_target};
    int rc = 1;
    char *text = NULL;
    int32_t *ids = NULL, *out = NULL, stop[16];
    int n = 0, n_stop = 0;
    td_detok_t *dt = NULL;
    td_backend_t *dbe = NULL;
    td_model_t *dm = NULL;
    td_tokenizer_t *dtok = NULL;
    if (remote_dllm) po.timeout_ms = timeout > 0 ? (int)timeout : 0;
    if (td_pair_open(&pair,
                     remote_dllm ? local_dir
                     : needs_v   ? vdir
                                 : planner_dir,
                     local_dllm && !remote_dllm ? NULL : drafter, &po, &err) != TD_OK) {
        fprintf(stderr, "tandem generate: %s\n", err.msg);
        goto done;
    }
    if (local_dllm && !remote_dllm &&
        td_cli_load_on(drafter, (int)ddevice, (int)threads, &dbe, &dm, &dtok))
        goto done;
    td_model_t *main_model = needs_v || remote_dllm ? pair.verifier : dm;
    const td_tokenizer_t *tok = needs_v || remote_dllm ? pair.vtok : dtok;
    const char *main_dir = remote_dllm ? local_dir : needs_v ? vdir : drafter;
    const td_config_t *c = td_model_config(main_model);
    td_sampling_t sp = {.temperature = 0, .top_k = 0, .top_p = 1};
    if (c->eos_token_id >= 0) stop[n_stop++] = c->eos_token_id;
    s_gen_defaults(main_dir, &sp, stop, &n_stop, 12);
    if (temperature >= 0) sp.temperature = (float)temperature;
    if (top_k >= 0) sp.top_k = (int)top_k;
    if (top_p >= 0) sp.top_p = (float)top_p;

    if (td_cli_encode_prompt(main_dir, chat_kind, system, prompt, tok, &ids, &n, stop, &n_stop, 16,
                             &err) != TD_OK) {
        fprintf(stderr, "tandem generate: %s\n", err.msg);
        goto done;
    }
    out = malloc(((size_t)max_tokens + 1) * sizeof *out);
    dt = td_detok_new(tok, 1);
    if (!out || !dt) {
        fprintf(stderr, "tandem generate: out of memory\n");
        goto done;
    }
    stream_t st = {dt, !json};
    td_run_params_t p = td_run_params_default((td_method_t)method);
    p.max_tokens = (int)max_tokens;
    p.sampling = sp;
    p.draft_sampling = sp;
    p.seed = (uint64_t)seed;
    p.stop_ids = stop;
    p.n_stop = n_stop;
    p.order = order;
    p.verify = (td_verify_t)verify;
    p.dist_top_k = (int)dist_k;
    p.apd_mixture = (float)mixture;
    p.drafter_timeout_ms = timeout > 0 ? (int)timeout : 5000;
    if (gamma > 0) p.gamma = (int)gamma;
    p.feature_type = !strcmp(ftype_s, "f16") ? 1 : 2;
    if (steps > 0) p.steps = (int)steps;
    if (kvw >= 0) p.apd_kv_window = (int)kvw;
    p.block_size = (int)block;
    p.threshold = (float)threshold;
    p.draft_k = (int)draft_k;
    p.steps_ratio = (float)steps_ratio;
    p.dense = !strcmp(span_att, "dense");
    /* the models the method runs with: the verifier (or the local planner / dLLM copy), the
     * in-process dLLM, the drafter link */
    td_run_ctx_t rctx = {.verifier = pair.verifier,
                         .dllm = dm,
                         .dc = pair.dc,
                         .hello = &pair.hello,
                         .drafter_hello = td_pair_drafter_hello(&pair),
                         .tok = tok,
                         .session = (uint64_t)getpid() << 16 | 1,
                         .cb = s_on_token,
                         .ud = &st};
    td_run_stats_t rs;
    double t0 = td_time_now();
    int grc = td_method_run((td_method_t)method, &rctx, &p, ids, n, out, &rs, &err);
    const td_spec_stats_t ss = rs.s;
    if (rs.note[0]) fprintf(stderr, "tandem generate: %s\n", rs.note);
    const td_method_desc_t *ran = td_method_get(rs.ran);
    if (ran->report && !json) ran->report(stderr, &rs);
    method = rs.ran;
    double total = td_time_now() - t0;
    if (grc != TD_OK) {
        if (!json) fputc('\n', stdout);
        fprintf(stderr, "tandem generate: %s\n", err.msg);
        goto done;
    }
    if (json) {
        size_t tl = 0;
        if (td_tokenizer_decode(tok, out, ss.generated, 1, &text, &tl, &err) != TD_OK) {
            fprintf(stderr, "tandem generate: %s\n", err.msg);
            goto done;
        }
        printf("{\"text\":");
        td_cli_json_str(stdout, text, tl);
        printf(",\"tokens\":[");
        for (int i = 0; i < ss.generated; i++) printf("%s%d", i ? "," : "", out[i]);
        printf("],\"prompt_tokens\":%d,", n);
        td_cli_print_stats(stdout, td_method_name((td_method_t)method), &ss, p.gamma, total);
        printf("}\n");
    } else {
        char tail[256];
        int tn = td_detok_flush(dt, tail, sizeof tail);
        if (tn > 0) fwrite(tail, 1, (size_t)tn, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        fprintf(stderr, "[%s] prompt %d tokens, generated %d in %.3f s (%.2f tok/s)",
                td_method_name((td_method_t)method), n, ss.generated, total,
                total > 0 ? ss.generated / total : 0);
        if (ss.rounds)
            fprintf(
                stderr,
                "; %d rounds, accepted %d/%d drafted (%.1f%%), %.2f tokens per round incl. bonus%s",
                ss.rounds, ss.accepted, ss.drafted,
                100.0 * ss.accepted / (ss.drafted ? ss.drafted : 1),
                (double)(ss.accepted + ss.bonus_tokens) / ss.rounds, ss.lossy ? " (lossy)" : "");
        if (ss.fallbacks)
            fprintf(stderr, "; %d fallback round(s): %s", ss.fallbacks, ss.last_fallback);
        fprintf(stderr, "\n");
    }
    rc = 0;
done:
    td_detok_destroy(&dt);
    free(text);
    free(ids);
    free(out);
    free(pbuf);
    td_pair_close(&pair);
    td_tokenizer_destroy(&dtok);
    td_model_destroy(&dm);
    td_backend_destroy(&dbe);
    return rc;
}
