/* cmd_verifier.c - `tandem-verifier` / `tandem verifier`: the long-running verifier worker. It
 * owns the verifier model, its tokenizer and the sessions; it serves clients (`tandem generate
 * --verifier ENDPOINT`) on its own ROUTER socket and asks its drafter for proposals. Requests are
 * decoded together by the batching engine `tandem serve` uses (bridge/serve_engine.h: up to
 * --parallel at once, one verifier forward per round for all of them), each streamed back as
 * TokenChunk messages; the main loop only moves messages and tokens. */
#include <stdio.h>

#include "bridge/cli.h"
#include "bridge/commands.h"
#include "bridge/pair.h"
#include "bridge/serve_engine.h"
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
        "SIGINT/SIGTERM, asking the drafter for proposals. Up to --parallel requests are decoded\n"
        "together (one verifier forward per round scores all of them); a request's output is the\n"
        "same alone or batched.\n\n"
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
        "  --threads N        CPU threads per model (default: cores - 1, halved with an "
        "in-process\n"
        "                     drafter)\n"
        "  --spin-us N        waiting for the other side, poll without sleeping for up to N\n"
        "                     microseconds first (saves a thread wake-up per message, costs a "
        "busy\n"
        "                     core; 0 = off). Default: 5000 when the threads leave a core, else 0\n"
        "  --device N         CUDA device (default -1: CPU); an in-process drafter uses it too\n"
        "  --parallel N       requests decoded at once (default 4), each in its own KV slot\n"
        "  --queue N          requests waiting for a slot at most (default 64); more are "
        "refused\n");
}

/* One client request being decoded: where its chunks go and how far they went. */
typedef struct req {
    td_routing_id_t to;
    uint64_t session; /* the client's request id */
    uint64_t seq;     /* chunks sent */
    td_serve_job_t *job;
    td_detok_t *dt;
    int seen; /* tokens streamed */
    struct req *next;
} req_t;

static int s_send_chunk(td_server_t *srv, const td_routing_id_t *to, uint64_t session,
                        uint64_t *seq, const uint32_t *toks, size_t n, const char *text, int done,
                        const char *stats, const char *error) {
    td_msg_t env;
    td_msg_init(&env, TD_BODY_TOKEN_CHUNK, session, ++*seq);
    td_token_chunk_t *ch = &env.token_chunk;
    ch->n_tokens = n;
    ch->tokens = toks;
    ch->text = text;
    ch->done = done;
    ch->stats_json = stats;
    ch->error = error;
    td_err_t err = {0};
    if (td_server_send(srv, to, &env, &err) != TD_OK) {
        td_log(TD_LOG_WARN, "verifier: client gone: %s", err.msg);
        return -1;
    }
    return 0;
}

/* A request that failed before it reached the engine: one final chunk with the error. */
static void s_refuse(td_server_t *srv, const td_routing_id_t *to, uint64_t session,
                     const char *msg) {
    uint64_t seq = 0;
    s_send_chunk(srv, to, session, &seq, NULL, 0, NULL, 1, NULL, msg);
}

/* Turns a GenerateRequest into an engine job (*out), or answers it with an error. */
static void s_submit(td_serve_engine_t *eng, td_server_t *srv, const td_routing_id_t *from,
                     const td_msg_t *req, req_t **out) {
    const td_generate_request_t *g = &req->generate_request;
    const uint64_t sid = req->session_id;
    *out = NULL;
    const char *ms = g->method && *g->method ? g->method : "ar";
    const td_method_desc_t *md = td_method_find(ms);
    char msg[512];
    if (!md || !(md->caps & TD_CAP_SERVED)) {
        snprintf(msg, sizeof msg,
                 "method '%s' is not served by a verifier (ar, spec-ar, specdiff, apd, dflash)",
                 ms);
        s_refuse(srv, from, sid, msg);
        return;
    }
    if (!td_serve_engine_method_ok(eng, md->id)) {
        const td_method_t em = td_serve_engine_method(eng);
        if (em == TD_METHOD_AR)
            snprintf(msg, sizeof msg, "this verifier has no drafter: only ar is served");
        else
            snprintf(msg, sizeof msg,
                     "this verifier's drafter does not serve '%s' (it serves ar and %s)", ms,
                     td_method_name(em));
        s_refuse(srv, from, sid, msg);
        return;
    }
    int verify = g->verify && *g->verify ? td_verify_parse(g->verify) : -1;
    if (g->verify && *g->verify && verify < 0) {
        snprintf(msg, sizeof msg, "unknown verify rule '%s'", g->verify);
        s_refuse(srv, from, sid, msg);
        return;
    }
    const td_tokenizer_t *tok = td_serve_engine_tokenizer(eng);
    td_err_t err = {0};
    char *rendered = NULL;
    const char *prompt = g->prompt ? g->prompt : "";
    if (g->chat) {
        td_chat_format_t fmt;
        td_chat_msg_t m = {"user", prompt};
        if (td_chat_format_detect(td_serve_engine_model_dir(eng), &fmt, &err) == TD_OK &&
            fmt.kind != TD_CHAT_NONE)
            td_chat_format_apply(&fmt, &m, 1, 1, &rendered, &err);
    }
    int32_t *ids = NULL;
    int n = 0;
    const char *in = rendered ? rendered : prompt;
    int rc = td_tokenizer_encode(tok, in, strlen(in), rendered != NULL, &ids, &n, &err);
    if (rc != TD_OK || n == 0) {
        s_refuse(srv, from, sid, rc == TD_OK ? "empty prompt" : err.msg);
        free(ids);
        free(rendered);
        return;
    }
    int32_t im_end = rendered ? td_tokenizer_token_id(tok, "<|im_end|>") : -1;
    td_sampling_t sp = {0, 0, 1};
    if (g->has_sampling)
        sp = (td_sampling_t){g->sampling.temperature, (int)g->sampling.top_k,
                             g->sampling.top_p > 0 ? g->sampling.top_p : 1};
    td_serve_gen_t gg = {.prompt = ids,
                         .n_prompt = n,
                         .max_tokens = (int)g->max_tokens,
                         .sampling = sp,
                         .seed = g->seed,
                         .method = (int)md->id,
                         .gamma = (int)g->gamma,
                         .steps = (int)g->steps,
                         .order = (int)g->order,
                         .verify = verify,
                         .stop_ids = im_end >= 0 ? &im_end : NULL,
                         .n_stop = im_end >= 0,
                         .mixture = g->mixture};
    req_t *r = calloc(1, sizeof *r);
    if (!r || !(r->dt = td_detok_new(tok, 1))) {
        free(r);
        s_refuse(srv, from, sid, "out of memory");
    } else if ((rc = td_serve_submit(eng, &gg, &r->job, &err)) != TD_OK) {
        td_detok_destroy(&r->dt);
        free(r);
        s_refuse(srv, from, sid, err.msg);
    } else {
        r->to = *from;
        r->session = sid;
        *out = r;
    }
    free(ids);
    free(rendered);
}

/* Streams what request r has produced since the last call; returns 1 once it is over (its last
 * chunk sent, or its client gone: then the job is cancelled). */
static int s_pump(td_server_t *srv, req_t *r) {
    enum { BATCH = 8, PIECE = 1024 }; /* a token's text is shorter than PIECE bytes */
    int32_t ids[BATCH];
    char buf[BATCH * PIECE + 1];
    int done = 0;
    for (;;) {
        int n = td_serve_job_wait(r->job, &r->seen, ids, BATCH, 0, &done);
        if (n <= 0) break;
        size_t len = 0;
        for (int i = 0; i < n; i++) {
            int m = td_detok_push(r->dt, ids[i], buf + len, PIECE);
            if (m > 0) len += (size_t)m;
        }
        buf[len] = 0;
        if (s_send_chunk(srv, &r->to, r->session, &r->seq, (const uint32_t *)ids, (size_t)n, buf, 0,
                         NULL, NULL)) {
            td_serve_job_cancel(r->job);
            return 1;
        }
    }
    if (!done) return 0;
    const td_serve_result_t *res = td_serve_job_result(r->job);
    if (res->rc != TD_OK) {
        s_send_chunk(srv, &r->to, r->session, &r->seq, NULL, 0, NULL, 1, NULL, res->msg);
        return 1;
    }
    char tail[256];
    int tn = td_detok_flush(r->dt, tail, sizeof tail);
    tail[tn > 0 ? tn : 0] = 0;
    char *stats = NULL;
    size_t slen = 0;
    FILE *mf = open_memstream(&stats, &slen);
    if (mf) {
        fputc('{', mf);
        td_cli_print_stats(mf, td_method_name(res->method), &res->stats, res->gamma, res->total_s);
        fputc('}', mf);
        fclose(mf);
    }
    s_send_chunk(srv, &r->to, r->session, &r->seq, NULL, 0, tail, 1, stats ? stats : "{}", NULL);
    free(stats);
    return 1;
}

static void s_req_free(req_t *r) {
    td_serve_job_release(&r->job);
    td_detok_destroy(&r->dt);
    free(r);
}

int td_cmd_verifier(int argc, char **argv) {
    const char *model = NULL, *drafter = NULL, *bind = NULL, *ckey = NULL, *callow = NULL,
               *dkey = NULL;
    long threads = 0, device = -1, timeout = 5000, spin_us = -1, parallel = 4, queue = 64;
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
        {"parallel", TD_OPT_INT, &parallel, 1, 256},
        {"queue", TD_OPT_INT, &queue, 0, 65536},
    };
    int ec = TD_CLI_OPTS(argc, argv, spec, s_help);
    if (ec >= 0) return ec;
    if (!model || !bind) {
        fprintf(stderr, "tandem-verifier: need --model DIR and --bind ENDPOINT (see --help)\n");
        return 2;
    }
    td_err_t err = {0};
    td_serve_engine_opts_t eo = {.verifier = model,
                                 .drafter = drafter,
                                 /* the nominal method; clients name theirs (any_method) */
                                 .method = drafter ? TD_METHOD_SPECDIFF : TD_METHOD_AR,
                                 .parallel = (int)parallel,
                                 .queue_cap = (int)queue,
                                 .threads = (int)threads,
                                 .device = (int)device,
                                 .drafter_device = (int)device,
                                 .timeout_ms = (int)timeout,
                                 .spin_us = td_cli_pair_spin(spin_us),
                                 .curve_server_key = dkey,
                                 .curve_secret_key = dkey ? ckey : NULL,
                                 .gamma = -1,
                                 .steps = -1,
                                 .order = -1,
                                 .verify = -1,
                                 .dist_top_k = -1,
                                 .kv_window = -1,
                                 .mixture = -1,
                                 .any_method = 1};
    td_transport_opts_t to = {
        .curve_secret_key = ckey, .curve_allow_file = callow, .heartbeat_ivl_ms = 1000};
    td_server_t *srv = NULL;
    td_serve_engine_t *eng = NULL;
    req_t *live = NULL;
    int rc = 1;
    if (!(eng = td_serve_engine_new(&eo, &err))) {
        fprintf(stderr, "tandem-verifier: %s\n", err.msg);
        goto out;
    }
    if (!(srv = td_server_new(bind, &to, &err))) {
        fprintf(stderr, "tandem-verifier: %s\n", err.msg);
        goto out;
    }
    const td_hello_t *hello = td_serve_engine_hello(eng);
    volatile sig_atomic_t *stop = td_cli_stop_on_signals();
    fprintf(stderr, "tandem-verifier: %s serving on %s (drafter: %s, %ld request(s) at once)\n",
            model, td_server_endpoint(srv), drafter ? drafter : "none", parallel);
    while (!*stop) {
        td_routing_id_t from;
        td_msg_t *env = NULL;
        /* with requests running, poll often: their tokens are streamed between messages */
        if (td_server_recv(srv, &from, &env, live ? 1 : 100, &err) == TD_RECV_OK) {
            if (env->body == TD_BODY_HELLO) {
                /* clients send text, so their tokenizer does not matter; other roles must match */
                if (env->hello.role == TD_ROLE_CLIENT) {
                    td_msg_t ack;
                    td_msg_init(&ack, TD_BODY_HELLO_ACK, 0, 0);
                    ack.hello_ack.accepted = 1;
                    ack.hello_ack.has_hello = 1;
                    ack.hello_ack.hello = *hello;
                    td_server_send(srv, &from, &ack, NULL);
                } else {
                    td_server_answer_hello(srv, &from, hello, &env->hello, NULL);
                }
            } else if (env->body == TD_BODY_GENERATE_REQUEST) {
                req_t *r = NULL;
                s_submit(eng, srv, &from, env, &r);
                if (r) r->next = live, live = r;
            } else if (env->body == TD_BODY_HEARTBEAT) {
                td_msg_t hb;
                td_msg_init(&hb, TD_BODY_HEARTBEAT, 0, 0);
                td_server_send(srv, &from, &hb, NULL);
            } else {
                td_server_send_error(srv, &from, env->session_id, env->round, TD_PERR_UNSUPPORTED,
                                     "a verifier serves generate_request", NULL);
            }
            td_msg_free(&env);
        }
        for (req_t **pp = &live; *pp;) {
            req_t *r = *pp;
            if (s_pump(srv, r)) {
                *pp = r->next;
                s_req_free(r);
            } else {
                pp = &r->next;
            }
        }
    }
    fprintf(stderr, "tandem-verifier: shutting down\n");
    rc = 0;
out:
    /* running requests are cancelled; their clients get no final chunk (the link is going) */
    while (live) {
        req_t *r = live;
        live = r->next;
        td_serve_job_cancel(r->job);
        s_req_free(r);
    }
    td_serve_engine_destroy(&eng, 0);
    td_server_destroy(&srv);
    return rc;
}
