/* test_transport.c - tandem's ZeroMQ links over real sockets: the handshake and a draft round over
 * inproc, ipc and tcp loopback; malformed, multi-frame and oversized messages answered with an
 * error while the server keeps serving; receive timeouts on dead peers; CURVE with the right and
 * wrong keys and the allow list; the loopback-only bind policy; key files and heartbeats.
 *
 * Every receive has a timeout and a SIGALRM guard turns any hang into a failure. Serving happens
 * in a worker thread (s_worker_t) that owns the server socket once started. */
#include "protocol/transport_wire.h"
#include "tests/tdtest.h"

#include <zmq.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define VOCAB 1000u

static void s_on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "test_transport: a test hung (SIGALRM), failing\n";
    if (write(2, msg, sizeof msg - 1)) {
    }
    _exit(1);
}
static void s_guard(unsigned seconds) {
    signal(SIGALRM, s_on_alarm);
    alarm(seconds);
}

static char *s_caps[] = {"specdiff", "ar-draft"};

static void s_hello(Tandem__Hello *h, Tandem__Role role, uint64_t tok_hash, const char *tok_name) {
    tandem__hello__init(h);
    td_wire_hello_fill(h, role,
                       role == TANDEM__ROLE__ROLE_DRAFTER ? "tiny-drafter" : "tiny-verifier", VOCAB,
                       role == TANDEM__ROLE__ROLE_DRAFTER ? (int32_t)VOCAB - 1 : -1, tok_hash,
                       tok_name, s_caps, 2);
}

/* ---- a drafter-like worker thread ---- */

typedef struct {
    td_server_t *srv;
    Tandem__Hello hello;
    pthread_t th;
    atomic_int stop;
    atomic_int n_malformed, n_served, n_refused;
    td_err_t last_err;
} s_worker_t;

/* Answers a DraftRequest with gamma tokens (base_len + delta + i) % VOCAB, each with a two-entry
 * distribution {0.75, 0.25} when asked. */
static void s_answer_draft(s_worker_t *w, const td_routing_id_t *to, const Tandem__Envelope *in) {
    const Tandem__DraftRequest *d = in->draft_request;
    uint32_t toks[TD_WIRE_MAX_GAMMA], ids[TD_WIRE_MAX_GAMMA][2];
    float probs[2] = {0.75f, 0.25f};
    Tandem__SparseDist dist[TD_WIRE_MAX_GAMMA], *dp[TD_WIRE_MAX_GAMMA];
    Tandem__Envelope env;
    Tandem__Proposal p;
    td_wire_proposal_init(&env, &p, in->session_id, in->round);
    for (uint32_t i = 0; i < d->gamma; i++) {
        toks[i] = (uint32_t)(d->base_len + d->n_prefix_delta + i) % VOCAB;
        ids[i][0] = toks[i], ids[i][1] = (toks[i] + 1) % VOCAB;
        tandem__sparse_dist__init(&dist[i]);
        dist[i].ids = ids[i], dist[i].n_ids = 2, dist[i].probs = probs, dist[i].n_probs = 2;
        dp[i] = &dist[i];
    }
    p.tokens = toks, p.n_tokens = d->gamma, p.drafter_us = 5;
    if (d->want_dist) p.dists = dp, p.n_dists = d->gamma;
    td_server_send_env(w->srv, to, &env, &w->last_err);
}

static void *s_worker_main(void *arg) {
    s_worker_t *w = arg;
    while (!atomic_load(&w->stop)) {
        td_routing_id_t from;
        Tandem__Envelope *in = NULL;
        td_err_t err = {0};
        int rc = td_server_recv_env(w->srv, &from, &in, 20, &err);
        if (rc == TD_RECV_TIMEOUT) continue;
        if (rc == TD_RECV_MALFORMED) {
            atomic_fetch_add(&w->n_malformed, 1);
            continue;
        }
        atomic_fetch_add(&w->n_served, 1);
        switch (in->body_case) {
        case TANDEM__ENVELOPE__BODY_HELLO:
            if (td_server_answer_hello_env(w->srv, &from, &w->hello, in->hello, &err) ==
                TD_ERR_UNSUPPORTED)
                atomic_fetch_add(&w->n_refused, 1);
            break;
        case TANDEM__ENVELOPE__BODY_HEARTBEAT: {
            Tandem__Envelope env;
            Tandem__Heartbeat hb;
            td_wire_heartbeat_init(&env, &hb);
            hb.sent_us = in->heartbeat->sent_us; /* echo the peer's stamp */
            td_server_send_env(w->srv, &from, &env, &w->last_err);
            break;
        }
        case TANDEM__ENVELOPE__BODY_DRAFT_REQUEST:
            s_answer_draft(w, &from, in);
            break;
        default:
            break;
        }
        td_wire_free(&in);
    }
    return NULL;
}

static void s_worker_start(s_worker_t *w, td_server_t *srv, uint64_t tok_hash) {
    memset(w, 0, sizeof *w);
    w->srv = srv;
    s_hello(&w->hello, TANDEM__ROLE__ROLE_DRAFTER, tok_hash, "drafter-tokenizer");
    pthread_create(&w->th, NULL, s_worker_main, w);
}

static void s_worker_stop(s_worker_t *w) {
    atomic_store(&w->stop, 1);
    pthread_join(w->th, NULL);
    td_server_destroy(&w->srv);
}

/* The client's side of a session: handshake, open, one draft round, commit, close. */
static void s_session(td_client_t *cli) {
    td_err_t err = {0};
    Tandem__Hello mine;
    s_hello(&mine, TANDEM__ROLE__ROLE_VERIFIER, 0xabcdef, "verifier-tokenizer");
    Tandem__Envelope *ack = NULL;
    int rc = td_client_handshake_env(cli, &mine, &ack, 5000, &err);
    CHECK_MSG(rc == TD_OK, "handshake over %s: %s", td_client_endpoint(cli), err.msg);
    if (rc) return;
    REQUIRE(ack && ack->hello_ack->accepted);
    CHECK_STR(ack->hello_ack->hello->model_id, "tiny-drafter");
    CHECK_EQ_INT(ack->hello_ack->hello->role, TANDEM__ROLE__ROLE_DRAFTER);
    CHECK_EQ_INT(ack->hello_ack->hello->mask_token_id, VOCAB - 1);
    CHECK(td_wire_hello_has_capability(ack->hello_ack->hello, "specdiff"));
    td_wire_free(&ack);
    td_client_set_limits(cli, &(td_wire_limits_t){.vocab_size = VOCAB});

    Tandem__Envelope env;
    Tandem__OpenSession os;
    uint32_t prompt[] = {5, 6, 7};
    td_wire_open_session_init(&env, &os, 77);
    os.prompt_tokens = prompt, os.n_prompt_tokens = 3;
    CHECK_EQ_INT(td_client_send_env(cli, &env, &err), TD_OK);

    Tandem__DraftRequest d;
    uint32_t delta[] = {8, 9};
    td_wire_draft_request_init(&env, &d, 77, 1);
    d.base_len = 3, d.prefix_delta = delta, d.n_prefix_delta = 2, d.gamma = 8, d.steps = 2;
    d.want_dist = 1, d.dist_top_k = 2, d.order = TANDEM__UNMASK_ORDER__ORDER_CONFIDENCE;
    CHECK_EQ_INT(td_client_send_env(cli, &env, &err), TD_OK);
    Tandem__Envelope *in = NULL;
    rc = td_client_recv_env(cli, &in, 5000, &err);
    CHECK_MSG(rc == TD_RECV_OK, "no proposal over %s (rc %d): %s", td_client_endpoint(cli), rc, err.msg);
    if (rc) return;
    REQUIRE(in->body_case == TANDEM__ENVELOPE__BODY_PROPOSAL);
    CHECK_EQ_INT(in->session_id, 77);
    CHECK_EQ_INT(in->round, 1);
    const Tandem__Proposal *p = in->proposal;
    REQUIRE(p->n_tokens == 8 && p->n_dists == 8);
    for (uint32_t i = 0; i < 8; i++) {
        CHECK_EQ_INT(p->tokens[i], 5 + i);
        CHECK_EQ_INT(p->dists[i]->ids[0], 5 + i);
        CHECK(p->dists[i]->probs[0] == 0.75f);
    }
    td_wire_free(&in);

    Tandem__Commit c;
    td_wire_commit_init(&env, &c, 77, 1, 9);
    CHECK_EQ_INT(td_client_send_env(cli, &env, &err), TD_OK);
    Tandem__CloseSession cs;
    td_wire_close_session_init(&env, &cs, 77);
    CHECK_EQ_INT(td_client_send_env(cli, &env, &err), TD_OK);

    /* a heartbeat comes back with our own stamp */
    CHECK_EQ_INT(td_client_send_heartbeat(cli, &err), TD_OK);
    rc = td_client_recv_env(cli, &in, 5000, &err);
    REQUIRE(rc == 0);
    CHECK_EQ_INT(in->body_case, TANDEM__ENVELOPE__BODY_HEARTBEAT);
    CHECK(in->heartbeat->sent_us <= td_wire_now_us());
    CHECK(td_wire_now_us() - in->heartbeat->sent_us < 5000000u);
    td_wire_free(&in);
}

static void s_exchange_over(const char *endpoint, int spin_us) {
    td_err_t err = {0};
    td_transport_opts_t to = {.spin_us = spin_us};
    td_server_t *srv = td_server_new(endpoint, &to, &err);
    CHECK_MSG(srv != NULL, "bind %s: %s", endpoint, err.msg);
    if (!srv) return;
    char bound[512];
    snprintf(bound, sizeof bound, "%s", td_server_endpoint(srv));
    CHECK(strstr(bound, "*") == NULL); /* the tcp port is resolved */
    s_worker_t w;
    s_worker_start(&w, srv, 0xabcdef);
    td_client_t *cli = td_client_new(bound, &to, &err);
    CHECK_MSG(cli != NULL, "connect %s: %s", bound, err.msg);
    if (cli) s_session(cli);
    td_client_destroy(&cli);
    CHECK(cli == NULL);
    td_client_destroy(&cli); /* safe twice */
    s_worker_stop(&w);
    CHECK(w.srv == NULL);
    CHECK_EQ_INT(atomic_load(&w.n_malformed), 0);
    CHECK_EQ_INT(atomic_load(&w.n_served), 6); /* hello, open, draft, commit, close, heartbeat */
    CHECK_MSG(w.last_err.msg[0] == 0, "worker send failed: %s", w.last_err.msg);
}

TD_TEST(exchange_inproc) {
    s_guard(60);
    s_exchange_over("inproc://tandem-test-exchange", 0);
}

/* Busy-polling receivers (opts.spin_us) exchange the same messages, and a receive still returns
 * at its timeout when that is shorter than the spin budget. */
TD_TEST(exchange_with_busy_polling) {
    s_guard(60);
    s_exchange_over("inproc://tandem-test-exchange-spin", 5000);
    td_err_t err = {0};
    td_transport_opts_t to = {.spin_us = 2000000}; /* 2 s of spinning allowed */
    td_server_t *srv = td_server_new("inproc://tandem-test-spin-timeout", &to, &err);
    REQUIRE(srv);
    td_client_t *cli = td_client_new("inproc://tandem-test-spin-timeout", &to, &err);
    REQUIRE(cli);
    Tandem__Envelope *in = NULL;
    double t0 = td_time_now();
    CHECK_EQ_INT(td_client_recv_env(cli, &in, 100, &err), TD_RECV_TIMEOUT);
    double dt = td_time_now() - t0;
    CHECK_MSG(dt >= 0.095 && dt < 1.0, "spinning recv returned after %.3f s, timeout 0.1 s", dt);
    td_routing_id_t from;
    t0 = td_time_now();
    CHECK_EQ_INT(td_server_recv_env(srv, &from, &in, 150, &err), TD_RECV_TIMEOUT);
    dt = td_time_now() - t0;
    CHECK_MSG(dt >= 0.145 && dt < 1.0, "spinning server recv returned after %.3f s", dt);
    td_client_destroy(&cli);
    td_server_destroy(&srv);
}

TD_TEST(exchange_ipc) {
    s_guard(60);
    char dir[] = "/tmp/td-ipc-XXXXXX";
    REQUIRE(mkdtemp(dir));
    char ep[512], path[256];
    snprintf(path, sizeof path, "%s/drafter.sock", dir);
    snprintf(ep, sizeof ep, "ipc://%s", path);
    s_exchange_over(ep, 0);
    unlink(path);
    rmdir(dir);
}

TD_TEST(exchange_tcp_loopback) {
    s_guard(60);
    s_exchange_over("tcp://127.0.0.1:*", 0);
}

TD_TEST(tokenizer_mismatch_refused_at_handshake) {
    s_guard(60);
    td_err_t err = {0};
    td_server_t *srv = td_server_new("inproc://tandem-test-mismatch", NULL, &err);
    REQUIRE(srv);
    s_worker_t w;
    s_worker_start(&w, srv, 0x1111);
    td_client_t *cli = td_client_new("inproc://tandem-test-mismatch", NULL, &err);
    REQUIRE(cli);
    Tandem__Hello mine;
    s_hello(&mine, TANDEM__ROLE__ROLE_VERIFIER, 0x2222, "verifier-tokenizer");
    Tandem__Envelope *ack = (Tandem__Envelope *)1;
    int rc = td_client_handshake_env(cli, &mine, &ack, 5000, &err);
    CHECK_EQ_INT(rc, TD_ERR_UNSUPPORTED);
    CHECK(ack == NULL);
    CHECK_MSG(strstr(err.msg, "drafter-tokenizer") && strstr(err.msg, "verifier-tokenizer") &&
                  strstr(err.msg, "tokenizer_mismatch"),
              "refusal should name both tokenizers: %s", err.msg);
    /* and a version mismatch */
    mine.tokenizer_hash = 0x1111;
    mine.protocol_version = TD_PROTOCOL_VERSION + 1;
    rc = td_client_handshake_env(cli, &mine, NULL, 5000, &err);
    CHECK_EQ_INT(rc, TD_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "version") != NULL);
    td_client_destroy(&cli);
    s_worker_stop(&w);
    CHECK_EQ_INT(atomic_load(&w.n_refused), 2);
}

/* Receives one envelope on a raw zmq socket (1 frame), or NULL after timeout_ms. */
static Tandem__Envelope *s_raw_recv(void *sock, int timeout_ms) {
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0) return NULL;
    zmq_msg_t m;
    zmq_msg_init(&m);
    Tandem__Envelope *env = NULL;
    td_err_t err;
    if (zmq_msg_recv(&m, sock, 0) >= 0)
        td_wire_unpack(zmq_msg_data(&m), zmq_msg_size(&m), NULL, &env, &err);
    zmq_msg_close(&m);
    return env;
}

TD_TEST(malformed_frames_get_an_error_and_the_server_keeps_serving) {
    s_guard(60);
    td_err_t err = {0};
    td_transport_opts_t opts = {.limits = {.max_message = 512}};
    td_server_t *srv = td_server_new("tcp://127.0.0.1:*", &opts, &err);
    REQUIRE(srv);
    const char *ep = td_server_endpoint(srv);
    void *raw = zmq_socket(td_transport_context_shared(), ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(raw, ZMQ_LINGER, &zero, sizeof zero);
    REQUIRE(zmq_connect(raw, ep) == 0);
    td_routing_id_t from;
    Tandem__Envelope *in = NULL;

    /* garbage bytes */
    const char junk[] = "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01 not protobuf";
    REQUIRE(zmq_send(raw, junk, sizeof junk, 0) == (int)sizeof junk);
    CHECK_EQ_INT(td_server_recv_env(srv, &from, &in, 5000, &err), TD_RECV_MALFORMED);
    CHECK_EQ_INT(err.code, TD_ERR_FORMAT);
    CHECK(in == NULL && from.len > 0);
    Tandem__Envelope *reply = s_raw_recv(raw, 5000);
    REQUIRE(reply);
    CHECK_EQ_INT(reply->body_case, TANDEM__ENVELOPE__BODY_ERROR);
    CHECK_EQ_INT(reply->error->code, TANDEM__ERROR_CODE__ERROR_MALFORMED);
    CHECK(strstr(reply->error->message, "malformed") != NULL);
    td_wire_free(&reply);

    /* a well-formed protobuf that fails validation (gamma 0) */
    Tandem__Envelope env;
    Tandem__DraftRequest d;
    td_wire_draft_request_init(&env, &d, 1, 1);
    d.gamma = 0;
    uint8_t buf[256];
    size_t n = tandem__envelope__pack(&env, buf);
    REQUIRE(zmq_send(raw, buf, n, 0) == (int)n);
    CHECK_EQ_INT(td_server_recv_env(srv, &from, &in, 5000, &err), TD_RECV_MALFORMED);
    CHECK(strstr(err.msg, "gamma") != NULL);
    reply = s_raw_recv(raw, 5000);
    CHECK(reply && reply->error && strstr(reply->error->message, "gamma"));
    td_wire_free(&reply);

    /* three frames instead of one */
    zmq_send(raw, "a", 1, ZMQ_SNDMORE);
    zmq_send(raw, "b", 1, ZMQ_SNDMORE);
    zmq_send(raw, "c", 1, 0);
    CHECK_EQ_INT(td_server_recv_env(srv, &from, &in, 5000, &err), TD_RECV_MALFORMED);
    CHECK(strstr(err.msg, "3 frames") != NULL);
    reply = s_raw_recv(raw, 5000);
    CHECK(reply && reply->body_case == TANDEM__ENVELOPE__BODY_ERROR);
    td_wire_free(&reply);

    /* over the server's 512-byte limit (valid otherwise) */
    td_client_t *cli = td_client_new(ep, NULL, &err);
    REQUIRE(cli);
    uint32_t prompt[300];
    for (int i = 0; i < 300; i++) prompt[i] = 100000 + (uint32_t)i;
    Tandem__OpenSession os;
    td_wire_open_session_init(&env, &os, 5);
    os.prompt_tokens = prompt, os.n_prompt_tokens = 300;
    REQUIRE(td_wire_packed_size(&env) > 512);
    CHECK_EQ_INT(td_client_send_env(cli, &env, &err), TD_OK);
    CHECK_EQ_INT(td_server_recv_env(srv, &from, &in, 5000, &err), TD_RECV_MALFORMED);
    CHECK(strstr(err.msg, "over the 512 byte limit") != NULL);
    CHECK_EQ_INT(td_client_recv_env(cli, &in, 5000, &err), TD_RECV_OK);
    CHECK(in && in->body_case == TANDEM__ENVELOPE__BODY_ERROR);
    td_wire_free(&in);

    /* the server still serves: a good message from the same client arrives intact */
    Tandem__Commit c;
    td_wire_commit_init(&env, &c, 5, 2, 11);
    CHECK_EQ_INT(td_client_send_env(cli, &env, &err), TD_OK);
    CHECK_EQ_INT(td_server_recv_env(srv, &from, &in, 5000, &err), TD_RECV_OK);
    REQUIRE(in);
    CHECK_EQ_INT(in->commit->accepted_len, 11);
    td_wire_free(&in);
    /* and answers it */
    Tandem__Heartbeat hb;
    td_wire_heartbeat_init(&env, &hb);
    CHECK_EQ_INT(td_server_send_env(srv, &from, &env, &err), TD_OK);
    CHECK_EQ_INT(td_client_recv_env(cli, &in, 5000, &err), TD_RECV_OK);
    td_wire_free(&in);
    td_client_destroy(&cli);
    zmq_close(raw);
    td_server_destroy(&srv);
}

TD_TEST(client_rejects_malformed_answers) {
    s_guard(60);
    td_err_t err = {0};
    void *router = zmq_socket(td_transport_context_shared(), ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
    REQUIRE(zmq_bind(router, "inproc://tandem-test-raw-router") == 0);
    td_client_t *cli = td_client_new("inproc://tandem-test-raw-router", NULL, &err);
    REQUIRE(cli);
    td_client_set_limits(cli, &(td_wire_limits_t){.vocab_size = 10});
    REQUIRE(td_client_send_heartbeat(cli, &err) == TD_OK);
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    zmq_msg_init(&body);
    REQUIRE(zmq_msg_recv(&id, router, 0) >= 0 && zmq_msg_recv(&body, router, 0) >= 0);
    /* a proposal with a token outside the client's vocabulary */
    Tandem__Envelope env;
    Tandem__Proposal p;
    uint32_t toks[] = {3, 10};
    td_wire_proposal_init(&env, &p, 1, 1);
    p.tokens = toks, p.n_tokens = 2;
    uint8_t buf[64];
    size_t n = tandem__envelope__pack(&env, buf);
    zmq_send(router, zmq_msg_data(&id), zmq_msg_size(&id), ZMQ_SNDMORE);
    zmq_send(router, buf, n, 0);
    Tandem__Envelope *in = NULL;
    CHECK_EQ_INT(td_client_recv_env(cli, &in, 5000, &err), TD_RECV_MALFORMED);
    CHECK(in == NULL && strstr(err.msg, "outside the vocabulary"));
    toks[1] = 9;
    n = tandem__envelope__pack(&env, buf);
    zmq_send(router, zmq_msg_data(&id), zmq_msg_size(&id), ZMQ_SNDMORE);
    zmq_send(router, buf, n, 0);
    CHECK_EQ_INT(td_client_recv_env(cli, &in, 5000, &err), TD_RECV_OK);
    CHECK(in && in->proposal->tokens[1] == 9);
    td_wire_free(&in);
    zmq_msg_close(&id);
    zmq_msg_close(&body);
    td_client_destroy(&cli);
    zmq_close(router);
}

TD_TEST(dead_peers_time_out) {
    s_guard(60);
    td_err_t err = {0};
    /* a port that was bound and is free again: nobody answers there */
    td_server_t *srv = td_server_new("tcp://127.0.0.1:*", NULL, &err);
    REQUIRE(srv);
    char ep[512];
    snprintf(ep, sizeof ep, "%s", td_server_endpoint(srv));
    td_server_destroy(&srv);
    td_client_t *cli = td_client_new(ep, NULL, &err);
    REQUIRE(cli);
    Tandem__Hello mine;
    s_hello(&mine, TANDEM__ROLE__ROLE_VERIFIER, 1, "t");
    double t0 = td_time_now();
    CHECK_EQ_INT(td_client_handshake_env(cli, &mine, NULL, 300, &err), TD_ERR_IO);
    double dt = td_time_now() - t0;
    CHECK_MSG(dt >= 0.29 && dt < 2.0, "handshake gave up after %.3f s, timeout 0.3 s", dt);
    CHECK(strstr(err.msg, "no answer") != NULL);
    Tandem__Envelope *in = NULL;
    t0 = td_time_now();
    CHECK_EQ_INT(td_client_recv_env(cli, &in, 250, &err), TD_RECV_TIMEOUT);
    dt = td_time_now() - t0;
    CHECK_MSG(dt >= 0.24 && dt < 2.0, "recv returned after %.3f s, timeout 0.25 s", dt);
    CHECK(in == NULL);
    td_client_destroy(&cli);

    /* a server with no clients: recv times out; sending to an unknown peer fails at once */
    srv = td_server_new("inproc://tandem-test-lonely", NULL, &err);
    REQUIRE(srv);
    td_routing_id_t from, ghost = {.len = 5, .data = {0, 1, 2, 3, 4}};
    t0 = td_time_now();
    CHECK_EQ_INT(td_server_recv_env(srv, &from, &in, 200, &err), TD_RECV_TIMEOUT);
    dt = td_time_now() - t0;
    CHECK_MSG(dt >= 0.19 && dt < 2.0, "server recv returned after %.3f s", dt);
    CHECK_EQ_INT(td_server_recv_env(srv, &from, &in, 0, &err), TD_RECV_TIMEOUT);
    Tandem__Envelope env;
    Tandem__Heartbeat hb;
    td_wire_heartbeat_init(&env, &hb);
    CHECK_EQ_INT(td_server_send_env(srv, &ghost, &env, &err), TD_ERR_IO);
    CHECK(strstr(err.msg, "gone") != NULL);

    /* a peer that vanishes mid-session: the server notices within a short while */
    cli = td_client_new("inproc://tandem-test-lonely", NULL, &err);
    REQUIRE(cli);
    CHECK_EQ_INT(td_client_send_heartbeat(cli, &err), TD_OK);
    REQUIRE(td_server_recv_env(srv, &from, &in, 5000, &err) == TD_RECV_OK);
    td_wire_free(&in);
    CHECK_EQ_INT(td_server_send_env(srv, &from, &env, &err), TD_OK);
    td_client_destroy(&cli);
    int gone = 0;
    for (int i = 0; i < 200 && !gone; i++) {
        gone = td_server_send_env(srv, &from, &env, &err) == TD_ERR_IO;
        if (!gone) usleep(10000);
    }
    CHECK_MSG(gone, "sending to a destroyed client kept succeeding");
    td_server_destroy(&srv);
}

TD_TEST(bind_policy_loopback_only_without_keys) {
    s_guard(60);
    td_err_t err = {0};
    const char *refused[] = {"tcp://0.0.0.0:*", "tcp://*:*",    "tcp://192.0.2.1:5555",
                             "tcp://eth0:5555", "tcp://[::]:*", "tcp://128.0.0.1:5555"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        memset(&err, 0, sizeof err);
        td_server_t *srv = td_server_new(refused[i], NULL, &err);
        CHECK_MSG(srv == NULL, "%s was bound without keys", refused[i]);
        td_server_destroy(&srv);
        CHECK_EQ_INT(err.code, TD_ERR_ARG);
        CHECK_MSG(strstr(err.msg, refused[i]) && strstr(err.msg, "tandem keygen"),
                  "refusal of %s should name it and say how to add keys: %s", refused[i], err.msg);
        CHECK(!td_endpoint_is_local(refused[i]));
    }
    const char *local[] = {"tcp://127.0.0.1:*", "tcp://127.3.2.1:*", "tcp://localhost:*"};
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++) {
        CHECK(td_endpoint_is_local(local[i]));
        td_server_t *srv = td_server_new(local[i], NULL, &err);
        CHECK_MSG(srv != NULL, "%s: %s", local[i], err.msg);
        td_server_destroy(&srv);
    }
    CHECK(td_endpoint_is_local("tcp://[::1]:5555"));
    td_server_t *srv = td_server_new("tcp://[::1]:*", NULL, &err);
    /* a host without IPv6 fails the bind, but never with the policy refusal */
    CHECK(srv != NULL || !strstr(err.msg, "tandem keygen"));
    td_server_destroy(&srv);
    CHECK(td_endpoint_is_local("ipc:///tmp/x") && td_endpoint_is_local("inproc://x"));
    CHECK(!td_endpoint_is_local("udp://127.0.0.1:5") && !td_endpoint_is_local(NULL));
    srv = td_server_new("pgm://eth0;239.192.1.1:5555", NULL, &err);
    CHECK(srv == NULL && err.code == TD_ERR_ARG && strstr(err.msg, "tcp://HOST:PORT"));
    srv = td_server_new("tcp://nocolon", NULL, &err);
    CHECK(srv == NULL && err.code == TD_ERR_ARG);
    srv = td_server_new("", NULL, &err);
    CHECK(srv == NULL);
    td_client_t *cli = td_client_new("udp://127.0.0.1:5", NULL, &err);
    CHECK(cli == NULL && err.code == TD_ERR_ARG);
}

static int s_rmtree_count;
static void s_rm(const char *dir, const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    if (unlink(p) == 0) s_rmtree_count++;
}

TD_TEST(curve_keys_and_allow_list) {
    s_guard(120);
    if (!zmq_has("curve")) {
        td_test_skip("libzmq without CURVE");
        return;
    }
    char dir[] = "/tmp/td-curve-XXXXXX";
    REQUIRE(mkdtemp(dir));
    char srv_name[256], cli_name[256], oth_name[256], path[300], allow[300];
    snprintf(srv_name, sizeof srv_name, "%s/server", dir);
    snprintf(cli_name, sizeof cli_name, "%s/client", dir);
    snprintf(oth_name, sizeof oth_name, "%s/other", dir);
    td_err_t err = {0};
    char srv_pub[41], cli_pub[41];
    REQUIRE(td_curve_keygen(srv_name, 0, srv_pub, &err) == TD_OK);
    REQUIRE(td_curve_keygen(cli_name, 0, cli_pub, &err) == TD_OK);
    REQUIRE(td_curve_keygen(oth_name, 0, NULL, &err) == TD_OK);
    /* modes, contents, no silent overwrite */
    struct stat st;
    snprintf(path, sizeof path, "%s.key", srv_name);
    REQUIRE(stat(path, &st) == 0);
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    char z[41];
    CHECK_EQ_INT(td_curve_key_read(path, z, &err), TD_OK);
    char derived[41];
    CHECK(zmq_curve_public(derived, z) == 0 && !strcmp(derived, srv_pub));
    snprintf(path, sizeof path, "%s.pub", srv_name);
    REQUIRE(stat(path, &st) == 0);
    CHECK_EQ_INT(st.st_mode & 0777, 0644);
    CHECK_EQ_INT(td_curve_key_read(path, z, &err), TD_OK);
    CHECK_STR(z, srv_pub);
    CHECK_EQ_INT(td_curve_keygen(srv_name, 0, NULL, &err), TD_ERR_IO);
    CHECK(strstr(err.msg, "--force") != NULL);
    snprintf(allow, sizeof allow, "%s/allow", dir);
    CHECK_EQ_INT(td_curve_key_read(allow, z, &err), TD_ERR_IO); /* not written yet */
    FILE *f = fopen(allow, "w");
    REQUIRE(f);
    fprintf(f, "# verifiers allowed to use this drafter\n%s  # the test client\n\n", cli_pub);
    fclose(f);

    char srv_key[300], srv_pubf[300], cli_key[300], oth_key[300], oth_pub[300];
    snprintf(srv_key, sizeof srv_key, "%s.key", srv_name);
    snprintf(srv_pubf, sizeof srv_pubf, "%s.pub", srv_name);
    snprintf(cli_key, sizeof cli_key, "%s.key", cli_name);
    snprintf(oth_key, sizeof oth_key, "%s.key", oth_name);
    snprintf(oth_pub, sizeof oth_pub, "%s.pub", oth_name);

    /* keys let a server bind every interface */
    td_transport_opts_t so = {.curve_secret_key = srv_key, .curve_allow_file = allow};
    td_server_t *srv = td_server_new("tcp://0.0.0.0:*", &so, &err);
    CHECK_MSG(srv != NULL, "CURVE server on 0.0.0.0: %s", err.msg);
    td_server_destroy(&srv);

    srv = td_server_new("tcp://127.0.0.1:*", &so, &err);
    REQUIRE(srv);
    char ep[512];
    snprintf(ep, sizeof ep, "%s", td_server_endpoint(srv));
    s_worker_t w;
    s_worker_start(&w, srv, 0xabcdef);

    Tandem__Hello mine;
    s_hello(&mine, TANDEM__ROLE__ROLE_VERIFIER, 0xabcdef, "t");
    /* the right keys: a full session */
    td_transport_opts_t good = {.curve_server_key = srv_pubf, .curve_secret_key = cli_key};
    td_client_t *cli = td_client_new(ep, &good, &err);
    REQUIRE(cli);
    s_session(cli);
    td_client_destroy(&cli);
    /* the wrong server key: the CURVE handshake fails, nothing gets through */
    td_transport_opts_t wrong = {.curve_server_key = oth_pub, .curve_secret_key = cli_key};
    cli = td_client_new(ep, &wrong, &err);
    REQUIRE(cli);
    CHECK_EQ_INT(td_client_handshake_env(cli, &mine, NULL, 700, &err), TD_ERR_IO);
    td_client_destroy(&cli);
    /* the right server key, but a client key not in the allow list */
    td_transport_opts_t stranger = {.curve_server_key = srv_pubf, .curve_secret_key = oth_key};
    cli = td_client_new(ep, &stranger, &err);
    REQUIRE(cli);
    CHECK_EQ_INT(td_client_handshake_env(cli, &mine, NULL, 700, &err), TD_ERR_IO);
    td_client_destroy(&cli);
    /* an ephemeral client key is not listed either */
    td_transport_opts_t eph = {.curve_server_key = srv_pubf};
    cli = td_client_new(ep, &eph, &err);
    REQUIRE(cli);
    CHECK_EQ_INT(td_client_handshake_env(cli, &mine, NULL, 700, &err), TD_ERR_IO);
    td_client_destroy(&cli);
    /* no CURVE at all */
    cli = td_client_new(ep, NULL, &err);
    REQUIRE(cli);
    CHECK_EQ_INT(td_client_handshake_env(cli, &mine, NULL, 700, &err), TD_ERR_IO);
    td_client_destroy(&cli);
    /* the allowed client still gets in after the refusals */
    cli = td_client_new(ep, &good, &err);
    REQUIRE(cli);
    CHECK_EQ_INT(td_client_handshake_env(cli, &mine, NULL, 5000, &err), TD_OK);
    td_client_destroy(&cli);
    s_worker_stop(&w);
    CHECK_EQ_INT(atomic_load(&w.n_malformed), 0);

    /* a second CURVE server without an allow file, same context: any client key with the
     * server's public key gets in (the ZAP handler answers per server domain) */
    td_transport_opts_t open_opts = {.curve_secret_key = srv_key};
    srv = td_server_new("tcp://127.0.0.1:*", &open_opts, &err);
    REQUIRE(srv);
    snprintf(ep, sizeof ep, "%s", td_server_endpoint(srv));
    s_worker_start(&w, srv, 0xabcdef);
    cli = td_client_new(ep, &stranger, &err);
    REQUIRE(cli);
    CHECK_EQ_INT(td_client_handshake_env(cli, &mine, NULL, 5000, &err), TD_OK);
    td_client_destroy(&cli);
    cli = td_client_new(ep, &wrong, &err); /* still needs the right server key */
    REQUIRE(cli);
    CHECK_EQ_INT(td_client_handshake_env(cli, &mine, NULL, 700, &err), TD_ERR_IO);
    td_client_destroy(&cli);
    s_worker_stop(&w);

    /* bad key material is refused up front */
    f = fopen(allow, "a");
    fprintf(f, "not-a-key\n");
    fclose(f);
    srv = td_server_new("tcp://127.0.0.1:*", &so, &err);
    CHECK(srv == NULL && strstr(err.msg, "line 4"));
    char garbage[300];
    snprintf(garbage, sizeof garbage, "%s/garbage.key", dir);
    f = fopen(garbage, "w");
    fprintf(f, "# a comment, then no key\nsecret\n");
    fclose(f);
    td_transport_opts_t bad = {.curve_secret_key = garbage};
    srv = td_server_new("tcp://127.0.0.1:*", &bad, &err);
    CHECK(srv == NULL && err.code == TD_ERR_FORMAT && strstr(err.msg, "'secret'"));
    td_server_destroy(&srv);
    td_transport_opts_t allow_only = {.curve_allow_file = allow};
    srv = td_server_new("tcp://127.0.0.1:*", &allow_only, &err);
    CHECK(srv == NULL && err.code == TD_ERR_ARG);
    td_transport_opts_t client_key_only = {.curve_secret_key = cli_key};
    cli = td_client_new(ep, &client_key_only, &err);
    CHECK(cli == NULL && err.code == TD_ERR_ARG);
    snprintf(path, sizeof path, "%s/missing.pub", dir);
    td_transport_opts_t missing = {.curve_server_key = path};
    cli = td_client_new(ep, &missing, &err);
    CHECK(cli == NULL && err.code == TD_ERR_IO);

    const char *names[] = {"server.key", "server.pub", "client.key", "client.pub",
                           "other.key",  "other.pub",  "allow",      "garbage.key"};
    for (int i = 0; i < 8; i++) s_rm(dir, names[i]);
    CHECK_EQ_INT(s_rmtree_count, 8);
    rmdir(dir);
}

TD_TEST(curve_server_in_own_context_terminates) {
    s_guard(60);
    if (!zmq_has("curve")) {
        td_test_skip("libzmq without CURVE");
        return;
    }
    char dir[] = "/tmp/td-ctx-XXXXXX";
    REQUIRE(mkdtemp(dir));
    char name[256], key[300], pub[300];
    snprintf(name, sizeof name, "%s/k", dir);
    td_err_t err = {0};
    REQUIRE(td_curve_keygen(name, 0, NULL, &err) == TD_OK);
    snprintf(key, sizeof key, "%s.key", name);
    snprintf(pub, sizeof pub, "%s.pub", name);
    for (int round = 0; round < 2; round++) { /* a fresh context gets its own ZAP handler */
        void *ctx = zmq_ctx_new();
        td_transport_opts_t so = {.context = ctx, .curve_secret_key = key};
        td_server_t *srv = td_server_new("inproc://tandem-own-ctx", &so, &err);
        REQUIRE(srv);
        td_transport_opts_t co = {.context = ctx, .curve_server_key = pub};
        td_client_t *cli = td_client_new("inproc://tandem-own-ctx", &co, &err);
        REQUIRE(cli);
        CHECK_EQ_INT(td_client_send_heartbeat(cli, &err), TD_OK);
        td_routing_id_t from;
        Tandem__Envelope *in = NULL;
        CHECK_EQ_INT(td_server_recv_env(srv, &from, &in, 5000, &err), TD_RECV_OK);
        td_wire_free(&in);
        td_client_destroy(&cli);
        td_server_destroy(&srv);
        CHECK_EQ_INT(zmq_ctx_term(ctx), 0); /* returns: the ZAP thread let go of its socket */
    }
    unlink(key);
    unlink(pub);
    rmdir(dir);
}

TD_TEST(heartbeat_tracker) {
    td_heartbeat_t hb;
    td_heartbeat_init(&hb, 100, 3, 10.0);
    CHECK(!td_heartbeat_due(&hb, 10.05));
    CHECK_EQ_INT(td_heartbeat_wait_ms(&hb, 10.05), 50);
    CHECK(td_heartbeat_due(&hb, 10.1));
    CHECK(!td_heartbeat_due(&hb, 10.15)); /* the next one is scheduled */
    CHECK(td_heartbeat_due(&hb, 10.21));
    CHECK(td_heartbeat_alive(&hb, 10.29));
    CHECK(!td_heartbeat_alive(&hb, 10.31)); /* three intervals of silence */
    td_heartbeat_heard(&hb, 10.3);
    CHECK(td_heartbeat_alive(&hb, 10.5));
    CHECK(!td_heartbeat_alive(&hb, 10.61));
    CHECK_EQ_INT(td_heartbeat_wait_ms(&hb, 11.0), 0);
}

TD_TEST(key_file_errors) {
    char dir[] = "/tmp/td-keys-XXXXXX";
    REQUIRE(mkdtemp(dir));
    char p[300];
    snprintf(p, sizeof p, "%s/bad.pub", dir);
    FILE *f = fopen(p, "w");
    fprintf(f, "# comment only\n\n");
    fclose(f);
    char z[41];
    td_err_t err = {0};
    CHECK_EQ_INT(td_curve_key_read(p, z, &err), TD_ERR_FORMAT);
    CHECK(strstr(err.msg, "no key") != NULL);
    f = fopen(p, "w");
    fprintf(f, "0123456789012345678901234567890123456789x\n"); /* 41 characters */
    fclose(f);
    CHECK_EQ_INT(td_curve_key_read(p, z, &err), TD_ERR_FORMAT);
    f = fopen(p, "w");
    fprintf(f, "  %s  \n", "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"); /* a Z85 key, padded */
    fclose(f);
    CHECK_EQ_INT(td_curve_key_read(p, z, &err), TD_OK);
    CHECK_STR(z, "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7");
    unlink(p);
    CHECK_EQ_INT(td_curve_keygen("", 0, NULL, &err), TD_ERR_ARG);
    snprintf(p, sizeof p, "%s/no/such/dir/k", dir);
    if (zmq_has("curve")) CHECK_EQ_INT(td_curve_keygen(p, 0, NULL, &err), TD_ERR_IO);
    rmdir(dir);
}

TD_TEST_MAIN()
