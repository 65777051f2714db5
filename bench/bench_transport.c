/* bench_transport.c - the floor under tandem's "transport" figure: round-trip times of one
 * DraftRequest -> Proposal exchange (gamma 8, a 32-entry sparse distribution per position, as the
 * bench's specdiff rounds) through tandem's transport, between two processes over ipc:// and
 * between two threads over inproc://, with and without busy-polling (--spin-us), next to a bare
 * libzmq REQ/REP ping-pong of the same size between two processes over ipc://.
 *
 * Both sides use td_msg_t (protocol/msg.h), as the drafter service and the verifier do, so the
 * conversion to and from protobuf envelopes is part of what is measured. The speculative loop's
 * transport_s is round trip minus drafter_us, so its per-round value cannot go below what this
 * measures on the same machine. Prints median and mean microseconds.
 * Options: --rounds N (default 2000). */
#include "protocol/transport.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

enum { GAMMA = 8, TOPK = 32, VOCAB = 4096 };

static int s_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Answers every DraftRequest with a proposal of the bench's size until CloseSession. */
static void s_serve(td_server_t *srv) {
    uint32_t toks[GAMMA], ids[GAMMA][TOPK];
    float probs[GAMMA][TOPK];
    td_sparse_dist_t d[GAMMA];
    for (int j = 0; j < GAMMA; j++) {
        toks[j] = (uint32_t)(100 + j);
        for (int k = 0; k < TOPK; k++) ids[j][k] = (uint32_t)(k * 97 % VOCAB), probs[j][k] = 0.01f;
        d[j] = (td_sparse_dist_t){
            .n_ids = TOPK, .ids = ids[j], .n_probs = TOPK, .probs = probs[j], .rest_mass = 0.68f};
    }
    for (;;) {
        td_routing_id_t from;
        td_msg_t *in = NULL;
        td_err_t err = {0};
        if (td_server_recv(srv, &from, &in, 10000, &err) != TD_RECV_OK) return;
        int stop = in->body == TD_BODY_CLOSE_SESSION;
        if (in->body == TD_BODY_DRAFT_REQUEST) {
            td_msg_t m;
            td_msg_init(&m, TD_BODY_PROPOSAL, in->session_id, in->round);
            m.proposal.n_tokens = GAMMA, m.proposal.tokens = toks;
            m.proposal.n_dists = GAMMA, m.proposal.dists = d;
            td_server_send(srv, &from, &m, &err);
        }
        td_msg_free(&in);
        if (stop) return;
    }
}

/* rounds request/answer exchanges; fills the sorted round-trip times (seconds). */
static int s_client(const char *ep, int spin_us, int rounds, double *rt) {
    td_err_t err = {0};
    td_transport_opts_t to = {.spin_us = spin_us};
    to.limits = td_wire_limits_default();
    to.limits.vocab_size = VOCAB;
    td_client_t *cl = td_client_new(ep, &to, &err);
    if (!cl) return fprintf(stderr, "bench_transport: %s\n", err.msg), -1;
    uint32_t delta[3] = {5, 6, 7};
    int bad = 0;
    for (int r = 0; r < rounds + 50 && !bad; r++) {
        td_msg_t m, *in = NULL;
        td_msg_init(&m, TD_BODY_DRAFT_REQUEST, 1, (uint64_t)r + 1);
        td_draft_request_t *d = &m.draft_request;
        d->base_len = 40, d->prefix_delta = delta, d->n_prefix_delta = 3, d->gamma = GAMMA;
        d->steps = 1, d->want_dist = 1, d->dist_top_k = TOPK;
        double t0 = td_time_now();
        if (td_client_send(cl, &m, &err) != TD_OK ||
            td_client_recv(cl, &in, 10000, &err) != TD_RECV_OK)
            bad = 1;
        else if (r >= 50)
            rt[r - 50] = td_time_now() - t0;
        td_msg_free(&in);
    }
    td_msg_t m;
    td_msg_init(&m, TD_BODY_CLOSE_SESSION, 1, 0);
    td_client_send(cl, &m, &err);
    td_client_destroy(&cl);
    if (bad) return fprintf(stderr, "bench_transport: %s: %s\n", ep, err.msg), -1;
    qsort(rt, (size_t)rounds, sizeof *rt, s_cmp);
    return 0;
}

static void s_report(const char *what, const double *rt, int n) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += rt[i];
    printf("%-52s median %7.1f us  mean %7.1f us\n", what, rt[n / 2] * 1e6, sum / n * 1e6);
}

static void *s_thread(void *arg) {
    s_serve(arg);
    return NULL;
}

/* The same exchange sizes over a bare libzmq REQ/REP pair between two processes. */
static void s_raw_zmq(const char *ep, int rounds, double *rt) {
    char buf[4096];
    fflush(stdout); /* nothing buffered gets printed twice */
    pid_t pid = fork();
    if (pid == 0) {
        void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_REP);
        zmq_bind(s, ep);
        for (int i = 0; i < rounds + 51; i++) {
            int n = zmq_recv(s, buf, sizeof buf, 0);
            if (n < 0 || zmq_send(s, buf, 1400, 0) < 0) {
                fprintf(stderr, "raw server: %s (i=%d)\n", zmq_strerror(zmq_errno()), i);
                break;
            }
        }
        zmq_close(s); /* flushes the last answer (the default linger) before the process ends */
        zmq_ctx_term(ctx);
        _exit(0);
    }
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_REQ);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(s, ep);
    memset(buf, 1, sizeof buf);
    for (int r = 0; r < rounds + 51; r++) {
        double t0 = td_time_now();
        zmq_send(s, buf, 60, 0);
        zmq_recv(s, buf, sizeof buf, 0);
        if (r >= 50 && r < rounds + 50) rt[r - 50] = td_time_now() - t0;
    }
    zmq_close(s);
    zmq_ctx_term(ctx);
    waitpid(pid, NULL, 0);
    qsort(rt, (size_t)rounds, sizeof *rt, s_cmp);
}

int main(int argc, char **argv) {
    int rounds = 2000;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
    if (rounds < 10) rounds = 10;
    double *rt = malloc(sizeof(double) * (size_t)rounds);
    char dir[] = "/tmp/td-bench-transport-XXXXXX";
    if (!rt || !mkdtemp(dir)) return 1;
    printf("transport round trips (DraftRequest -> Proposal, gamma %d, top-%d dists), %d rounds\n",
           GAMMA, TOPK, rounds);
    char ep[512], what[128];
    snprintf(ep, sizeof ep, "ipc://%s/raw.sock", dir);
    s_raw_zmq(ep, rounds, rt);
    s_report("bare libzmq REQ/REP, two processes, ipc", rt, rounds);
    const int spins[2] = {0, 5000};
    for (int k = 0; k < 2; k++) {
        snprintf(ep, sizeof ep, "ipc://%s/td%d.sock", dir, k);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            /* a fresh context: one inherited across fork() has no I/O thread in the child */
            td_err_t err = {0};
            td_transport_opts_t to = {.spin_us = spins[k], .context = zmq_ctx_new()};
            td_server_t *srv = td_server_new(ep, &to, &err);
            if (!srv) _exit(1);
            s_serve(srv);
            td_server_destroy(&srv);
            _exit(0);
        }
        usleep(200 * 1000);
        int ok = s_client(ep, spins[k], rounds, rt) == 0;
        waitpid(pid, NULL, 0);
        snprintf(what, sizeof what, "tandem transport, two processes, ipc, spin %d us", spins[k]);
        if (ok) s_report(what, rt, rounds);
    }
    for (int k = 0; k < 2; k++) {
        snprintf(ep, sizeof ep, "inproc://bench-transport-%d", k);
        td_err_t err = {0};
        td_transport_opts_t to = {.spin_us = spins[k]};
        td_server_t *srv = td_server_new(ep, &to, &err);
        if (!srv) return fprintf(stderr, "bench_transport: %s\n", err.msg), 1;
        pthread_t th;
        pthread_create(&th, NULL, s_thread, srv);
        int ok = s_client(ep, spins[k], rounds, rt) == 0;
        pthread_join(th, NULL);
        td_server_destroy(&srv);
        snprintf(what, sizeof what, "tandem transport, two threads, inproc, spin %d us", spins[k]);
        if (ok) s_report(what, rt, rounds);
    }
    char path[600];
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/td%d.sock", dir, k);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/raw.sock", dir);
    unlink(path);
    rmdir(dir);
    free(rt);
    return 0;
}
