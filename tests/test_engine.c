/* test_engine.c - the batching driver and the shared drafter link (verifier/driver.h, link.h).
 *
 * Several sessions verified together in one forward per round must give, token for token, what
 * each gives alone (the CPU kernels are batch-invariant); sessions share one drafter link whose
 * answers are routed by session id, over inproc and ipc; a message for another session is kept,
 * never dropped; a cancelled session leaves at once without changing the others. Models:
 * tests/data/e2e (tiny Qwen2 verifier, a noisy AR copy, a noisy Dream-style copy). */
#include "tests/tdtest.h"

#include "bridge/pair.h"
#include "verifier/driver.h"
#include "verifier/generate.h"
#include "verifier/link.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define VDIR "tests/data/e2e/qwen2-chat"
#define ARDIR "tests/data/e2e/qwen2-ar-drafter"
#define DDIR "tests/data/e2e/dream-drafter"
#define NS 3
#define MAXT 40

static const int32_t s_prompts[NS][8] = {{35, 279, 223, 41, 81, 70, 282, 67},
                                         {12, 99, 140, 7, 0, 0, 0, 0},
                                         {200, 201, 5, 5, 5, 61, 0, 0}};
static const int s_np[NS] = {8, 4, 6};

typedef struct req {
    td_session_t *s;
    int cancel_after; /* > 0: the callback stops the request after this many tokens */
    int seen, done_calls;
} req_t;

static int s_cb(void *ud, int32_t id) {
    req_t *r = ud;
    r->seen++;
    return r->cancel_after > 0 && r->seen >= r->cancel_after;
}
static void s_done(void *ud, td_session_t *s) { ((req_t *)ud)->done_calls++; }

/* Session i drafts s_gamma0 + i tokens (3: 15 rows per round for three sessions, one pass; 9: 33
 * rows, more than the float verifier keeps batch-invariant in one pass, so the driver splits). */
static int s_gamma0 = 3;

/* Per-session settings: session i uses greedy or sampled verification by i. */
static td_spec_params_t s_params(td_method_t m, int i) {
    td_spec_params_t p = td_spec_params_default(m);
    p.max_tokens = MAXT;
    p.gamma = s_gamma0 + i;
    p.steps = m == TD_METHOD_SPECDIFF ? 2 : 1;
    p.seed = 7 + (uint64_t)i;
    p.dist_top_k = 2; /* small: exercises the full-row fetch through the shared link */
    if (i != 1) p.sampling = p.draft_sampling = (td_sampling_t){1.0f, 8, 1.0f};
    return p;
}

/* Creates session i (prompt i, id base + i, callbacks into r) and submits it to d. */
static int s_submit(td_driver_t *d, td_model_t *v, td_link_t *link, td_method_t m,
                    const td_spec_params_t *p, int i, uint64_t base, req_t *r) {
    td_err_t err = {0};
    td_session_opts_t o = {.method = m,
                           .params = p,
                           .link = link,
                           .session_id = base + (uint64_t)i,
                           .prompt = s_prompts[i],
                           .n_prompt = s_np[i],
                           .cb = s_cb,
                           .ud = r,
                           .on_done = s_done};
    if (!(r->s = td_session_new(v, &o, &err))) return err.code;
    return td_driver_submit(d, r->s, &err);
}

/* Runs session i of method m alone (td_spec_generate: the driver with one session). */
static int s_alone(td_pair_t *pair, td_method_t m, int i, int32_t *out, td_spec_stats_t *st) {
    td_spec_params_t p = s_params(m, i);
    p.hello = &pair->hello;
    td_err_t err = {0};
    int rc = td_spec_generate(pair->verifier, pair->dc, 100 + (uint64_t)i, s_prompts[i], s_np[i],
                              &p, NULL, NULL, out, st, &err);
    CHECK_MSG(rc == TD_OK, "alone: %s", err.msg);
    return rc;
}

/* Runs all NS sessions of method m together through one link and one driver and compares each
 * with its run alone. */
static void s_together(td_pair_t *pair, td_method_t m, const char *label) {
    int32_t alone[NS][MAXT];
    td_spec_stats_t sa[NS];
    for (int i = 0; i < NS; i++)
        if (s_alone(pair, m, i, alone[i], &sa[i]) != TD_OK) return;
    td_err_t err = {0};
    td_link_t *link = td_link_new(pair->dc, &pair->hello, &err);
    td_driver_t *d = td_driver_new(pair->verifier, NS, 256, &err);
    REQUIRE(link && d);
    td_spec_params_t ps[NS];
    req_t rq[NS];
    memset(rq, 0, sizeof rq);
    for (int i = 0; i < NS; i++) {
        ps[i] = s_params(m, i);
        REQUIRE(s_submit(d, pair->verifier, link, m, &ps[i], i, 200, &rq[i]) == TD_OK);
    }
    int64_t f0 = td_driver_forwards(d);
    const long b0 = pair->svc ? td_drafter_service_batched_forwards(pair->svc) : 0;
    CHECK_EQ_INT(td_driver_run(d, &err), TD_OK);
    /* the in-process drafter served requests that arrived together in one batched call (every
     * session sends its DraftRequest before any answer is awaited) */
    const long batched = pair->svc ? td_drafter_service_batched_forwards(pair->svc) - b0 : -1;
    if (pair->svc) CHECK_MSG(batched > 0, "%s: the drafter never batched", label);
    int max_rounds = 0;
    for (int i = 0; i < NS; i++) {
        const td_spec_stats_t *st = td_session_stats(rq[i].s);
        int n = 0;
        const int32_t *toks = td_session_tokens(rq[i].s, &n);
        CHECK_EQ_INT(td_session_status(rq[i].s, &err), TD_OK);
        CHECK_EQ_INT(n, sa[i].generated);
        CHECK_MSG(n == sa[i].generated && !memcmp(toks, alone[i], sizeof(int32_t) * (size_t)n),
                  "%s: session %d batched differs from its run alone", label, i);
        CHECK_EQ_INT(st->rounds, sa[i].rounds);
        CHECK_EQ_INT(st->accepted, sa[i].accepted);
        CHECK_EQ_INT(st->fallbacks, 0);
        CHECK_EQ_INT(rq[i].seen, n);
        CHECK_EQ_INT(rq[i].done_calls, 1);
        CHECK(td_session_done(rq[i].s));
        int r = st->rounds + st->fallbacks;
        if (r > max_rounds) max_rounds = r;
    }
    /* one forward per round for all sessions together (plus one prefill each); with more rows
     * than one batch-invariant pass holds, more than one in the rounds where they all draft */
    const int64_t fw = td_driver_forwards(d) - f0;
    const int one_pass = 3 * (s_gamma0 + 2) <= td_model_invariant_rows(pair->verifier);
    CHECK_MSG(one_pass ? fw == max_rounds : fw > max_rounds,
              "%s: %lld forwards for %d rounds of the longest session", label, (long long)fw,
              max_rounds);
    CHECK_EQ_INT(td_link_kept(link), 0);
    printf("    %-10s %d sessions: %lld shared forwards, %ld batched drafts, accepted %d/%d/%d\n",
           label, NS, (long long)td_driver_forwards(d), batched,
           td_session_stats(rq[0].s)->accepted, td_session_stats(rq[1].s)->accepted,
           td_session_stats(rq[2].s)->accepted);
    for (int i = 0; i < NS; i++) td_session_destroy(&rq[i].s);
    td_driver_destroy(&d);
    td_link_destroy(&link);
}

/* ar sessions batched = td_generate_ar alone, token for token (greedy and sampled). */
TD_TEST(ar_batched_equals_alone) {
    td_pair_t pair;
    td_err_t err = {0};
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1};
    REQUIRE(td_pair_open(&pair, VDIR, NULL, &po, &err) == TD_OK);
    int32_t alone[NS][MAXT];
    int n_alone[NS];
    int32_t stop[1] = {281};
    for (int i = 0; i < NS; i++) {
        td_spec_params_t sp = s_params(TD_METHOD_AR, i);
        td_gen_params_t gp = {.max_tokens = MAXT,
                              .sampling = sp.sampling,
                              .seed = sp.seed,
                              .stop_ids = stop,
                              .n_stop = i == 2};
        td_gen_stats_t gs;
        REQUIRE(td_generate_ar(pair.verifier, s_prompts[i], s_np[i], &gp, NULL, NULL, alone[i], &gs,
                               &err) == TD_OK);
        n_alone[i] = gs.generated;
    }
    td_driver_t *d = td_driver_new(pair.verifier, NS, 64, &err);
    REQUIRE(d);
    td_spec_params_t ps[NS];
    td_session_t *s[NS];
    for (int i = 0; i < NS; i++) {
        ps[i] = s_params(TD_METHOD_AR, i);
        ps[i].stop_ids = stop;
        ps[i].n_stop = i == 2;
        td_session_opts_t o = {
            .method = TD_METHOD_AR, .params = &ps[i], .prompt = s_prompts[i], .n_prompt = s_np[i]};
        REQUIRE((s[i] = td_session_new(pair.verifier, &o, &err)));
        /* sessions join between rounds: the second and third arrive late */
        if (i == 0) REQUIRE(td_driver_submit(d, s[i], &err) == TD_OK);
    }
    CHECK(td_driver_round(d, &err) == 1);
    REQUIRE(td_driver_submit(d, s[1], &err) == TD_OK);
    CHECK(td_driver_round(d, &err) == 2);
    REQUIRE(td_driver_submit(d, s[2], &err) == TD_OK);
    CHECK_EQ_INT(td_driver_run(d, &err), TD_OK);
    for (int i = 0; i < NS; i++) {
        int n = 0;
        const int32_t *t = td_session_tokens(s[i], &n);
        CHECK_EQ_INT(n, n_alone[i]);
        CHECK_MSG(n == n_alone[i] && !memcmp(t, alone[i], sizeof(int32_t) * (size_t)n),
                  "ar session %d batched differs from td_generate_ar", i);
        td_session_destroy(&s[i]);
    }
    td_driver_destroy(&d);
    td_pair_close(&pair);
}

TD_TEST(spec_sessions_share_one_link_inproc) {
    const char *dirs[] = {ARDIR, DDIR};
    const td_method_t ms[] = {TD_METHOD_SPEC_AR, TD_METHOD_SPECDIFF};
    for (int k = 0; k < 2; k++) {
        td_pair_t pair;
        td_err_t err = {0};
        td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1};
        REQUIRE(td_pair_open(&pair, VDIR, dirs[k], &po, &err) == TD_OK);
        s_together(&pair, ms[k], td_method_name(ms[k]));
        td_pair_close(&pair);
    }
}

/* A session cancelled by its callback leaves at once; the others finish as they would alone. */
/* 33 rows a round (gamma 9, 10, 11): the CPU float verifier keeps 24 rows batch-invariant in one
 * pass, so the driver runs whole sessions in passes within that bound, and each session's output
 * and acceptance are still exactly its solo run's. */
TD_TEST(spec_sessions_over_one_invariant_pass) {
    td_pair_t pair;
    td_err_t err = {0};
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1};
    REQUIRE(td_pair_open(&pair, VDIR, DDIR, &po, &err) == TD_OK);
    CHECK_EQ_INT(td_model_invariant_rows(pair.verifier), 24);
    s_gamma0 = 9;
    s_together(&pair, TD_METHOD_SPECDIFF, "specdiff g9+");
    s_gamma0 = 3;
    td_pair_close(&pair);
}

/* A prompt longer than one batch-invariant pass (30 tokens on the float verifier): greedy
 * specdiff gives ar's tokens. Every method prefills the prompt but its last token and runs that
 * token with the first round (td_generate_ar too); when ar prefilled the whole prompt in one SGEMM
 * pass, the last prompt token's keys/values had other bits than specdiff's and the two parted at
 * near-ties (seen on SmolLM2 chat prompts; on these tiny models the old mismatch flips no token,
 * so this case guards the equality, not that particular bit difference). */
TD_TEST(long_prompt_greedy_specdiff_equals_ar) {
    td_pair_t pair;
    td_err_t err = {0};
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1};
    REQUIRE(td_pair_open(&pair, VDIR, DDIR, &po, &err) == TD_OK);
    int32_t prompt[30];
    for (int i = 0; i < 30; i++) prompt[i] = s_prompts[i % NS][i % s_np[i % NS]] + i;
    td_gen_params_t gp = {.max_tokens = MAXT};
    td_gen_stats_t gs;
    int32_t ar[MAXT], sd[MAXT];
    REQUIRE(td_generate_ar(pair.verifier, prompt, 30, &gp, NULL, NULL, ar, &gs, &err) == TD_OK);
    td_spec_params_t p = td_spec_params_default(TD_METHOD_SPECDIFF);
    p.max_tokens = MAXT;
    p.gamma = 6;
    p.hello = &pair.hello;
    td_spec_stats_t st;
    REQUIRE(td_spec_generate(pair.verifier, pair.dc, 900, prompt, 30, &p, NULL, NULL, sd, &st,
                             &err) == TD_OK);
    CHECK_EQ_INT(st.generated, gs.generated);
    CHECK_MSG(st.generated == gs.generated &&
                  !memcmp(ar, sd, sizeof(int32_t) * (size_t)gs.generated),
              "greedy specdiff differs from ar on a 30-token prompt");
    td_pair_close(&pair);
}

TD_TEST(cancelled_session_leaves_others_unchanged) {
    td_pair_t pair;
    td_err_t err = {0};
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1};
    REQUIRE(td_pair_open(&pair, VDIR, ARDIR, &po, &err) == TD_OK);
    int32_t alone[MAXT];
    td_spec_stats_t sa;
    REQUIRE(s_alone(&pair, TD_METHOD_SPEC_AR, 0, alone, &sa) == TD_OK);
    td_link_t *link = td_link_new(pair.dc, &pair.hello, &err);
    td_driver_t *d = td_driver_new(pair.verifier, 2, 256, &err);
    REQUIRE(link && d);
    td_spec_params_t ps[2] = {s_params(TD_METHOD_SPEC_AR, 0), s_params(TD_METHOD_SPEC_AR, 1)};
    req_t rq[2] = {{0}, {.cancel_after = 3}};
    for (int i = 0; i < 2; i++) {
        REQUIRE(s_submit(d, pair.verifier, link, TD_METHOD_SPEC_AR, &ps[i], i, 300, &rq[i]) ==
                TD_OK);
    }
    int rounds = 0;
    while (!td_session_done(rq[1].s) && rounds < 100) {
        td_driver_round(d, &err);
        rounds++;
    }
    CHECK(td_session_done(rq[1].s));
    CHECK_EQ_INT(td_session_stats(rq[1].s)->generated, 3);
    CHECK_EQ_INT(td_session_stats(rq[1].s)->stop, TD_STOP_CALLBACK);
    CHECK_EQ_INT(rq[1].done_calls, 1);
    CHECK_EQ_INT(td_driver_live(d), 1);
    CHECK_EQ_INT(td_driver_run(d, &err), TD_OK);
    int n = 0;
    const int32_t *t = td_session_tokens(rq[0].s, &n);
    CHECK_MSG(n == sa.generated && !memcmp(t, alone, sizeof(int32_t) * (size_t)n),
              "the surviving session's output changed");
    for (int i = 0; i < 2; i++) td_session_destroy(&rq[i].s);
    td_driver_destroy(&d);
    td_link_destroy(&link);
    td_pair_close(&pair);
}

/* The link keeps what arrives for another session: a fake drafter answers session 2 first. */
TD_TEST(link_routes_by_session_and_keeps_the_others) {
    char ep[128];
    snprintf(ep, sizeof ep, "inproc://td-engine-link-%d", (int)getpid());
    td_err_t err = {0};
    td_transport_opts_t to = {0};
    td_server_t *srv = td_server_new(ep, &to, &err);
    REQUIRE(srv);
    td_client_t *cl = td_client_new(ep, &to, &err);
    REQUIRE(cl);
    td_link_t *link = td_link_new(cl, NULL, &err);
    REQUIRE(link);
    /* the client speaks first so the server learns its routing id */
    td_msg_t env;
    td_msg_init(&env, TD_BODY_CLOSE_SESSION, 9, 0);
    REQUIRE(td_link_send(link, &env, &err) == TD_OK);
    td_routing_id_t from;
    td_msg_t *in = NULL;
    REQUIRE(td_server_recv(srv, &from, &in, 5000, &err) == TD_RECV_OK);
    td_msg_free(&in);
    /* answers: session 2 round 1, a stale session 1 round 0, session 1 round 1, a heartbeat */
    uint64_t order[][2] = {{2, 1}, {1, 0}, {1, 1}};
    for (int i = 0; i < 3; i++) {
        td_msg_init(&env, TD_BODY_PROPOSAL, order[i][0], order[i][1]);
        REQUIRE(td_server_send(srv, &from, &env, &err) == TD_OK);
    }
    td_msg_t *got = NULL;
    CHECK_EQ_INT(td_link_wait(link, 1, 1, TD_BODY_PROPOSAL, 5000, &got, &err), TD_OK);
    CHECK(got && got->session_id == 1 && got->round == 1);
    td_msg_free(&got);
    CHECK_EQ_INT(td_link_kept(link), 1); /* session 2's answer, kept; the stale one dropped */
    CHECK_EQ_INT(td_link_wait(link, 2, 1, TD_BODY_PROPOSAL, 100, &got, &err), TD_OK);
    CHECK(got && got->session_id == 2 && got->round == 1);
    td_msg_free(&got);
    CHECK_EQ_INT(td_link_kept(link), 0);
    /* nothing more: a timeout, by name */
    CHECK_EQ_INT(td_link_wait(link, 2, 2, TD_BODY_PROPOSAL, 50, &got, &err), TD_LINK_TIMEOUT);
    /* a session that left: its late answers are forgotten */
    td_msg_init(&env, TD_BODY_PROPOSAL, 3, 1);
    REQUIRE(td_server_send(srv, &from, &env, &err) == TD_OK);
    CHECK_EQ_INT(td_link_wait(link, 4, 1, TD_BODY_PROPOSAL, 100, &got, &err), TD_LINK_TIMEOUT);
    CHECK_EQ_INT(td_link_kept(link), 1);
    td_link_forget(link, 3);
    CHECK_EQ_INT(td_link_kept(link), 0);
    td_link_destroy(&link);
    td_client_destroy(&cl);
    td_server_destroy(&srv);
}

/* Sends a DraftRequest of session sid (its text = prompt i) over cl. */
static void s_send_req(td_client_t *cl, uint64_t sid, int i, int gamma, float temp) {
    td_draft_args_t a = {.session = sid,
                         .round = 1,
                         .delta = s_prompts[i],
                         .n_delta = s_np[i],
                         .gamma = gamma,
                         .steps = 1 + (uint32_t)i, /* a diffusion drafter: 1, 2, 3 steps */
                         .temperature = temp,
                         .top_p = 1,
                         .seed = 5 + (uint64_t)i,
                         .want_dist = 1,
                         .dist_top_k = 4};
    td_err_t err = {0};
    CHECK_EQ_INT(td_client_send_draft_request(cl, &a, &err), TD_OK);
}

/* A drafter service for DIR on endpoint EP, served by a thread of this process that is started
 * (s_svc_start) after the test had its say: with `handshake`, a client connected and handshaken
 * by hand first, so requests can wait on the socket before anyone serves them. */
typedef struct svc_run {
    td_backend_t *be;
    td_model_t *m;
    td_tokenizer_t *tok;
    td_drafter_service_t *svc;
    td_server_t *srv;
    td_client_t *cl;
    pthread_t th;
    td_pipe_t *ctl, *ctl_thread; /* stopped through an actor pipe, not a shared flag */
} svc_run_t;

static void *s_serve_run(void *arg) {
    svc_run_t *x = arg;
    td_drafter_serve_until(x->svc, x->srv, x->ctl_thread);
    return NULL;
}

static int s_svc_open(svc_run_t *x, const char *dir, const char *ep, int handshake) {
    td_err_t err = {0};
    td_drafter_opts_t o = {.max_sessions = 8};
    td_transport_opts_t to = {0};
    if (!(x->be = td_backend_cpu_new(1, 0, &err)) || !(x->m = td_model_load(dir, x->be, &err)) ||
        !(x->tok = td_tokenizer_load(dir, &err)) ||
        !(x->svc = td_drafter_service_new(x->m, x->tok, &o, &err)) ||
        !(x->srv = td_server_new(ep, &to, &err)))
        return -1;
    if (!handshake) return 0;
    /* a client and its handshake, answered by hand before the serving thread exists */
    if (!(x->cl = td_client_new(ep, &to, &err))) return -1;
    td_msg_t env;
    td_msg_init(&env, TD_BODY_HELLO, 0, 0);
    env.hello = *td_drafter_service_hello(x->svc);
    if (td_client_send(x->cl, &env, &err) != TD_OK) return -1;
    td_routing_id_t from;
    td_msg_t *in = NULL;
    if (td_server_recv(x->srv, &from, &in, 5000, &err) != TD_RECV_OK) return -1;
    td_drafter_service_handle(x->svc, x->srv, &from, in);
    td_msg_free(&in);
    if (td_client_recv(x->cl, &in, 5000, &err) != TD_RECV_OK) return -1;
    td_msg_free(&in);
    return 0;
}

static void s_svc_start(svc_run_t *x) {
    td_err_t err = {0};
    REQUIRE(td_pipe_new(&x->ctl, &x->ctl_thread, &err) == TD_OK);
    REQUIRE(pthread_create(&x->th, NULL, s_serve_run, x) == 0);
}

static void s_svc_close(svc_run_t *x) {
    if (x->ctl) {
        td_pipe_send(x->ctl, "STOP", NULL);
        pthread_join(x->th, NULL);
    }
    td_pipe_destroy(&x->ctl);
    td_pipe_destroy(&x->ctl_thread);
    td_client_destroy(&x->cl);
    td_server_destroy(&x->srv);
    td_drafter_service_destroy(&x->svc);
    td_tokenizer_destroy(&x->tok);
    td_model_destroy(&x->m);
    td_backend_destroy(&x->be);
}

/* The drafter service drafts requests that wait together in one batched forward per position
 * (AR drafter) or per denoising step (diffusion drafter, 1-3 steps), with answers bit-identical
 * to drafting each alone. */
static void s_batches_waiting(const char *dir) {
    td_msg_t *alone[NS] = {0}, *together[NS] = {0};
    td_err_t err = {0};
    static int s_ep;
    for (int mode = 0; mode < 2; mode++) {
        svc_run_t x = {0};
        char ep[128];
        snprintf(ep, sizeof ep, "inproc://td-engine-svc-%d-%d", (int)getpid(), s_ep++);
        REQUIRE(s_svc_open(&x, dir, ep, 1) == 0);
        if (mode == 0) { /* one request at a time: each answered before the next is sent */
            s_svc_start(&x);
            for (int i = 0; i < NS; i++) {
                s_send_req(x.cl, 10 + (uint64_t)i, i, 3 + i, i == 1 ? 0.0f : 1.0f);
                CHECK_EQ_INT(td_client_recv(x.cl, &alone[i], 5000, &err), TD_RECV_OK);
            }
            CHECK_EQ_INT(td_drafter_service_batched_forwards(x.svc), 0);
        } else { /* all waiting when the service starts */
            for (int i = 0; i < NS; i++)
                s_send_req(x.cl, 10 + (uint64_t)i, i, 3 + i, i == 1 ? 0.0f : 1.0f);
            usleep(50000);
            s_svc_start(&x);
            for (int i = 0; i < NS; i++) {
                td_msg_t *in = NULL;
                CHECK_EQ_INT(td_client_recv(x.cl, &in, 5000, &err), TD_RECV_OK);
                if (in && in->session_id >= 10 && in->session_id < 10 + NS)
                    together[in->session_id - 10] = in;
                else
                    td_msg_free(&in);
            }
            CHECK_EQ_INT(td_drafter_service_batched_forwards(x.svc), 1);
        }
        s_svc_close(&x);
    }
    for (int i = 0; i < NS; i++) {
        REQUIRE(alone[i] && together[i]);
        REQUIRE(alone[i]->body == TD_BODY_PROPOSAL && together[i]->body == TD_BODY_PROPOSAL);
        const td_proposal_t *a = &alone[i]->proposal, *b = &together[i]->proposal;
        CHECK_EQ_INT(a->n_tokens, 3 + i);
        CHECK_MSG(a->n_tokens == b->n_tokens &&
                      !memcmp(a->tokens, b->tokens, a->n_tokens * sizeof *a->tokens),
                  "request %d: batched draft differs", i);
        for (size_t j = 0; j < a->n_dists && j < b->n_dists; j++)
            CHECK_MSG(a->dists[j].n_ids == b->dists[j].n_ids &&
                          !memcmp(a->dists[j].probs, b->dists[j].probs,
                                  a->dists[j].n_probs * sizeof(float)),
                      "request %d position %zu: batched distribution differs", i, j);
        td_msg_free(&alone[i]);
        td_msg_free(&together[i]);
    }
}

TD_TEST(drafter_batches_waiting_requests) { s_batches_waiting(ARDIR); }
TD_TEST(diffusion_drafter_batches_waiting_requests) { s_batches_waiting(DDIR); }

TD_TEST(spec_sessions_share_one_link_ipc) {
    char dir[] = "/tmp/td-engine-XXXXXX", ep[256], path[300];
    REQUIRE(mkdtemp(dir));
    snprintf(ep, sizeof ep, "ipc://%s/drafter.sock", dir);
    svc_run_t x = {0};
    REQUIRE(s_svc_open(&x, DDIR, ep, 0) == 0);
    s_svc_start(&x);
    td_pair_t pair;
    td_err_t err = {0};
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1};
    int rc = td_pair_open(&pair, VDIR, ep, &po, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    if (rc == TD_OK) s_together(&pair, TD_METHOD_SPECDIFF, "specdiff/ipc");
    td_pair_close(&pair);
    /* the serving thread sleeps in one poll with no timeout: only the pipe can wake it */
    double t0 = td_time_now();
    s_svc_close(&x);
    CHECK_MSG(td_time_now() - t0 < 1.0, "the drafter thread took %.3f s to stop",
              td_time_now() - t0);
    snprintf(path, sizeof path, "%s/drafter.sock", dir);
    unlink(path);
    rmdir(dir);
}

/* An actor pipe carries commands between two threads' ends, and td_server_poll wakes on it. */
TD_TEST(actor_pipe) {
    td_err_t err = {0};
    td_pipe_t *a = NULL, *b = NULL;
    REQUIRE(td_pipe_new(&a, &b, &err) == TD_OK);
    char cmd[16];
    CHECK_EQ_INT(td_pipe_recv(b, cmd, sizeof cmd, 20), 0);
    CHECK_EQ_INT(td_pipe_send(a, "STOP", &err), TD_OK);
    CHECK_EQ_INT(td_pipe_recv(b, cmd, sizeof cmd, 1000), 1);
    CHECK_STR(cmd, "STOP");
    char ep[128];
    snprintf(ep, sizeof ep, "inproc://td-engine-poll-%d", (int)getpid());
    td_transport_opts_t to = {0};
    td_server_t *srv = td_server_new(ep, &to, &err);
    REQUIRE(srv);
    CHECK_EQ_INT(td_server_poll(srv, b, 20), 0);
    CHECK_EQ_INT(td_pipe_send(a, "X", &err), TD_OK);
    CHECK_EQ_INT(td_server_poll(srv, b, 1000), TD_POLL_PIPE);
    td_server_destroy(&srv);
    td_pipe_destroy(&a);
    td_pipe_destroy(&b);
}

TD_TEST_MAIN()
