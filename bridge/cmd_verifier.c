/* cmd_verifier.c - `tandem-verifier` / `tandem verifier`: the long-running verifier worker. It
 * owns the verifier model, its tokenizer and the sessions; it serves clients (`tandem generate
 * --verifier ENDPOINT`) on its own ROUTER socket and asks its drafter for proposals. Requests are
 * served one at a time, each streamed back as TokenChunk messages. */
#include <stdio.h>

#include "bridge/cli.h"
#include "bridge/commands.h"
#include "bridge/pair.h"
#include "model/chat.h"
#include "engine/method.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

static void s_help(FILE *f) {
    fprintf(
        f,
        "usage: tandem-verifier --model DIR --drafter DIR|ENDPOINT --bind ENDPOINT [options]\n\n"
        "Serves generation requests from clients (tandem generate --verifier ENDPOINT) until\n"
        "SIGINT/SIGTERM, asking the drafter for proposals. Requests are served one at a time.\n\n"
        "options:\n"
        "  --model DIR        the verifier checkpoint (a causal LM)\n"
        "  --drafter X        the drafter: an endpoint of a running tandem-drafter, or a "
        "checkpoint\n"
        "                     directory served in this process; optional (then only ar is served)\n"
        "  --bind ENDPOINT    where clients connect (tcp loopback, ipc://, or tcp with "
        "--curve-key)\n"
        "  --curve-key F      serve clients with CURVE using this secret key\n"
        "  --curve-allow F    accept only the client public keys listed in F\n"
        "  --drafter-server-key F  the drafter's public key when it serves with CURVE\n"
        "  --timeout-ms N     drafter answer timeout per round (default 5000)\n"
        "  --threads N        CPU threads (default: all cores)\n"
        "  --spin-us N        waiting for the other side, poll without sleeping for up to N\n"
        "                     microseconds first (saves a thread wake-up per message, costs a "
        "busy\n"
        "                     core; 0 = off). Default: 5000 when the threads leave a core, else 0\n"
        "  --device N         CUDA device (default -1: CPU); an in-process drafter uses it too\n");
}

typedef struct serve_ctx {
    td_server_t *srv;
    td_routing_id_t to;
    uint64_t session;
    uint64_t seq;
    td_detok_t *dt;
    int failed;
} serve_ctx_t;

static int s_send_chunk(serve_ctx_t *c, const uint32_t *toks, size_t n, const char *text, int done,
                        const char *stats, const char *error) {
    Tandem__Envelope env;
    Tandem__TokenChunk ch;
    td_wire_token_chunk_init(&env, &ch, c->session, ++c->seq);
    ch.n_tokens = n;
    ch.tokens = (uint32_t *)toks;
    ch.text = (char *)(text ? text : "");
    ch.done = done;
    ch.stats_json = (char *)(stats ? stats : "");
    ch.error = (char *)(error ? error : "");
    td_err_t err = {0};
    if (td_server_send(c->srv, &c->to, &env, &err) != TD_OK) {
        td_log(TD_LOG_WARN, "verifier: client gone: %s", err.msg);
        c->failed = 1;
        return -1;
    }
    return 0;
}

static int s_on_token(void *ud, int32_t id) {
    serve_ctx_t *c = ud;
    char buf[1024];
    int n = td_detok_push(c->dt, id, buf, sizeof buf);
    buf[n > 0 ? n : 0] = 0;
    uint32_t t = (uint32_t)id;
    return s_send_chunk(c, &t, 1, buf, 0, NULL, NULL) ? 1
                                                      : 0; /* a vanished client stops the request */
}

static void s_generate(td_pair_t *pair, td_server_t *srv, const td_routing_id_t *from,
                       const Tandem__Envelope *req, const char *model_dir, int timeout_ms) {
    const Tandem__GenerateRequest *g = req->generate_request;
    serve_ctx_t c = {.srv = srv, .to = *from, .session = req->session_id};
    const char *ms = g->method && *g->method ? g->method : "ar";
    const td_method_desc_t *md = td_method_find(ms);
    char msg[512];
    if (!md || !(md->caps & TD_CAP_SERVED)) {
        snprintf(msg, sizeof msg,
                 "method '%s' is not served by a verifier (ar, spec-ar, specdiff, apd)", ms);
        s_send_chunk(&c, NULL, 0, NULL, 1, NULL, msg);
        return;
    }
    const td_method_t method = md->id;
    if ((md->caps & TD_CAP_DRAFTER) && !pair->dc) {
        snprintf(msg, sizeof msg, "this verifier has no drafter: only ar is served");
        s_send_chunk(&c, NULL, 0, NULL, 1, NULL, msg);
        return;
    }
    int verify = g->verify && *g->verify ? td_verify_parse(g->verify) : 0;
    if (verify < 0) {
        snprintf(msg, sizeof msg, "unknown verify rule '%s'", g->verify);
        s_send_chunk(&c, NULL, 0, NULL, 1, NULL, msg);
        return;
    }
    td_err_t err = {0};
    char *rendered = NULL;
    const char *prompt = g->prompt ? g->prompt : "";
    if (g->chat) {
        td_chat_format_t fmt;
        td_chat_msg_t m = {"user", prompt};
        if (td_chat_format_detect(model_dir, &fmt, &err) == TD_OK && fmt.kind != TD_CHAT_NONE)
            td_chat_format_apply(&fmt, &m, 1, 1, &rendered, &err);
    }
    int32_t *ids = NULL, n = 0, *out = malloc(sizeof(int32_t) * (g->max_tokens + 1));
    const char *in = rendered ? rendered : prompt;
    if (!out ||
        td_tokenizer_encode(pair->vtok, in, strlen(in), rendered != NULL, &ids, &n, &err) !=
            TD_OK ||
        n == 0) {
        s_send_chunk(&c, NULL, 0, NULL, 1, NULL, n == 0 && !err.msg[0] ? "empty prompt" : err.msg);
        goto out;
    }
    const td_config_t *vc = td_model_config(pair->verifier);
    int32_t stop[4];
    int n_stop = 0;
    if (vc->eos_token_id >= 0) stop[n_stop++] = vc->eos_token_id;
    if (rendered) {
        int32_t id = td_tokenizer_token_id(pair->vtok, "<|im_end|>");
        if (id >= 0) stop[n_stop++] = id;
    }
    td_sampling_t sp = {0, 0, 1};
    if (g->sampling)
        sp = (td_sampling_t){g->sampling->temperature, (int)g->sampling->top_k,
                             g->sampling->top_p > 0 ? g->sampling->top_p : 1};
    c.dt = td_detok_new(pair->vtok, 1);
    td_run_params_t p = td_run_params_default(method);
    p.max_tokens = (int)g->max_tokens;
    p.sampling = p.draft_sampling = sp;
    p.seed = g->seed;
    p.stop_ids = stop;
    p.n_stop = n_stop;
    if (g->gamma) p.gamma = (int)g->gamma;
    if (g->steps) p.steps = (int)g->steps;
    p.order = (int)g->order;
    p.verify = (td_verify_t)verify;
    if (g->mixture > 0) p.apd_mixture = g->mixture;
    p.drafter_timeout_ms = timeout_ms;
    td_run_ctx_t ctx = {.verifier = pair->verifier,
                        .dc = pair->dc,
                        .hello = &pair->hello,
                        .tok = pair->vtok,
                        .session = req->session_id,
                        .cb = s_on_token,
                        .ud = &c};
    td_run_stats_t rs;
    double t0 = td_time_now();
    int rc = td_method_run(method, &ctx, &p, ids, n, out, &rs, &err);
    const td_spec_stats_t ss = rs.s;
    double total = td_time_now() - t0;
    if (c.failed) goto out;
    if (rc != TD_OK) {
        s_send_chunk(&c, NULL, 0, NULL, 1, NULL, err.msg);
        goto out;
    }
    char tail[256];
    int tn = td_detok_flush(c.dt, tail, sizeof tail);
    tail[tn > 0 ? tn : 0] = 0;
    char *stats = NULL;
    size_t slen = 0;
    FILE *mf = open_memstream(&stats, &slen);
    if (mf) {
        fputc('{', mf);
        td_cli_print_stats(mf, td_method_name((td_method_t)method), &ss, p.gamma, total);
        fputc('}', mf);
        fclose(mf);
    }
    s_send_chunk(&c, NULL, 0, tail, 1, stats ? stats : "{}", NULL);
    free(stats);
out:
    td_detok_destroy(&c.dt);
    free(ids);
    free(out);
    free(rendered);
}

int td_cmd_verifier(int argc, char **argv) {
    const char *model = NULL, *drafter = NULL, *bind = NULL, *ckey = NULL, *callow = NULL,
               *dkey = NULL;
    long threads = 0, device = -1, timeout = 5000, spin_us = -1;
    const td_opt_spec_t spec[] = {
        {"model", TD_OPT_STR, &model, 0, 0},
        {"drafter", TD_OPT_STR, &drafter, 0, 0},
        {"bind", TD_OPT_STR, &bind, 0, 0},
        {"curve-key", TD_OPT_STR, &ckey, 0, 0},
        {"curve-allow", TD_OPT_STR, &callow, 0, 0},
        {"drafter-server-key", TD_OPT_STR, &dkey, 0, 0},
        {"timeout-ms", TD_OPT_INT, &timeout, 1, 3600000},
        {"spin-us", TD_OPT_INT, &spin_us, 0, 1000000},
        {"threads", TD_OPT_INT, &threads, 0, 1024},
        {"device", TD_OPT_INT, &device, -1, 64},
    };
    int ec = TD_CLI_OPTS(argc, argv, spec, s_help);
    if (ec >= 0) return ec;
    if (!model || !bind) {
        fprintf(stderr, "tandem-verifier: need --model DIR and --bind ENDPOINT (see --help)\n");
        return 2;
    }
    td_err_t err = {0};
    td_pair_t pair;
    td_pair_opts_t po = {.device = (int)device,
                         .drafter_device = (int)device,
                         .threads = (int)threads,
                         .curve_server_key = dkey,
                         .curve_secret_key = dkey ? ckey : NULL,
                         .spin_us = td_cli_pair_spin(spin_us)};
    td_transport_opts_t to = {
        .curve_secret_key = ckey, .curve_allow_file = callow, .heartbeat_ivl_ms = 1000};
    td_server_t *srv = NULL;
    int rc = 1;
    if (td_pair_open(&pair, model, drafter, &po, &err) != TD_OK) {
        fprintf(stderr, "tandem-verifier: %s\n", err.msg);
        goto out;
    }
    if (!(srv = td_server_new(bind, &to, &err))) {
        fprintf(stderr, "tandem-verifier: %s\n", err.msg);
        goto out;
    }
    volatile sig_atomic_t *stop = td_cli_stop_on_signals();
    fprintf(stderr, "tandem-verifier: %s serving on %s (drafter: %s)\n", model,
            td_server_endpoint(srv), drafter ? pair.endpoint : "none");
    while (!*stop) {
        td_routing_id_t from;
        Tandem__Envelope *env = NULL;
        if (td_server_recv(srv, &from, &env, 100, &err) != TD_RECV_OK) continue;
        if (env->body_case == TANDEM__ENVELOPE__BODY_HELLO) {
            /* clients send text, so their tokenizer does not matter; other roles must match ours */
            if (env->hello->role == TANDEM__ROLE__ROLE_CLIENT) {
                Tandem__Envelope ack;
                Tandem__HelloAck body;
                td_wire_hello_ack_init(&ack, &body);
                body.accepted = 1;
                body.hello = &pair.hello;
                td_server_send(srv, &from, &ack, NULL);
            } else {
                td_server_answer_hello(srv, &from, &pair.hello, env->hello, NULL);
            }
        } else if (env->body_case == TANDEM__ENVELOPE__BODY_GENERATE_REQUEST) {
            s_generate(&pair, srv, &from, env, model, (int)timeout);
        } else if (env->body_case == TANDEM__ENVELOPE__BODY_HEARTBEAT) {
            Tandem__Envelope hb;
            Tandem__Heartbeat body;
            td_wire_heartbeat_init(&hb, &body);
            td_server_send(srv, &from, &hb, NULL);
        } else {
            td_server_send_error(srv, &from, env->session_id, env->round,
                                 TANDEM__ERROR_CODE__ERROR_UNSUPPORTED,
                                 "a verifier serves generate_request", NULL);
        }
        td_wire_free(&env);
    }
    fprintf(stderr, "tandem-verifier: shutting down\n");
    rc = 0;
out:
    td_server_destroy(&srv);
    td_pair_close(&pair);
    return rc;
}
