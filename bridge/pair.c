/* pair.c - verifier + drafter set-up (see pair.h). */
#include "model/checkpoint.h"
#include "bridge/pair.h"

#include "bridge/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int td_is_endpoint(const char *s) { return s && strstr(s, "://") != NULL; }

int td_is_dflash_dir(const char *dir) {
    if (!dir || td_is_endpoint(dir)) return 0;
    td_dflash_config_t c;
    td_err_t err = {0};
    char path[4096], *text = NULL;
    size_t len = 0;
    td_path_join(path, sizeof path, dir, "config.json");
    if (td_read_file(path, &text, &len, NULL) != TD_OK) return 0;
    int yes = strstr(text, "\"dflash\"") != NULL;
    free(text);
    return yes && td_dflash_config_load(dir, &c, &err) == TD_OK;
}

const td_hello_t *td_pair_drafter_hello(const td_pair_t *p) {
    return p->ack && p->ack->hello_ack.has_hello ? &p->ack->hello_ack.hello : NULL;
}

static void *s_serve(void *arg) {
    td_pair_t *p = arg;
    td_drafter_serve_until(p->svc, p->srv, p->ctl_thread);
    return NULL;
}

static const char *s_base(const char *dir) {
    const char *b = strrchr(dir, '/');
    while (b && b[1] == 0 && b > dir) { /* trailing slash */
        const char *q = b - 1;
        while (q > dir && *q != '/') q--;
        return *q == '/' ? q + 1 : q;
    }
    return b ? b + 1 : dir;
}

td_pair_opts_t td_pair_opts_default(void) {
    td_pair_opts_t o = {0};
    o.device = o.drafter_device = -1;
    return o;
}

static int s_load(const char *dir, int device, int threads, td_backend_t **be, td_model_t **m,
                  td_tokenizer_t **tok, td_err_t *err) {
    *be = td_cli_backend_new(device, threads, err);
    if (!*be) return TD_ERR;
    *m = td_model_load(dir, *be, err);
    if (!*m) return td_err_prefix(err, "loading %s", dir);
    *tok = td_checkpoint_tokenizer(dir, err);
    if (!*tok) return td_err_prefix(err, "loading the tokenizer of %s", dir);
    if (td_tokenizer_n_vocab(*tok) > td_model_config(*m)->n_vocab)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: the tokenizer has %d ids but the model's vocabulary has %d rows: "
                          "tokenizer and checkpoint do not belong together",
                          dir, td_tokenizer_n_vocab(*tok), td_model_config(*m)->n_vocab);
    return TD_OK;
}

/* Serves p->svc on a fresh inproc endpoint from a thread of its own (the in-process drafter). */
static int s_counter;
static int s_start_inproc(td_pair_t *p, const td_transport_opts_t *to, td_err_t *err) {
    snprintf(p->endpoint, sizeof p->endpoint, "inproc://tandem-drafter-%d-%d", (int)getpid(),
             s_counter++);
    p->srv = td_server_new(p->endpoint, to, err);
    if (!p->srv) return TD_ERR;
    if (td_pipe_new(&p->ctl, &p->ctl_thread, err) != TD_OK) return TD_ERR;
    if (pthread_create(&p->thread, NULL, s_serve, p) != 0)
        return td_err_set(err, TD_ERR, "cannot start the drafter thread");
    p->thread_running = 1;
    return TD_OK;
}

int td_pair_open(td_pair_t *p, const char *verifier_dir, const char *drafter,
                 const td_pair_opts_t *o, td_err_t *err) {
    memset(p, 0, sizeof *p);
    td_pair_opts_t def = td_pair_opts_default();
    if (!o) o = &def;
    if (verifier_dir &&
        s_load(verifier_dir, o->device, o->threads, &p->vbe, &p->verifier, &p->vtok, err) != TD_OK)
        return err->code ? err->code : TD_ERR;
    if (!drafter) return TD_OK;
    td_transport_opts_t to = {.heartbeat_ivl_ms = 1000};
    const int cores = td_cli_n_cores(), vthreads = o->threads > 0 ? o->threads : cores;
    int dthreads = o->drafter_threads ? o->drafter_threads : o->threads;
    if (dthreads <= 0) dthreads = cores;
    if (o->spin_us > 0)
        to.spin_us = o->spin_us;
    else if (o->spin_us == 0)
        to.spin_us =
            td_cli_auto_spin_us(td_is_endpoint(drafter) ? vthreads + 1 : vthreads + dthreads);
    const int dflash_dir = td_is_dflash_dir(drafter);
    if ((dflash_dir || o->dflash) && p->verifier &&
        td_checkpoint_fingerprint(verifier_dir, &p->fingerprint, err) != TD_OK)
        return td_err_prefix(err, "fingerprint of %s", verifier_dir);
    if (dflash_dir) {
        /* the drafter's target is the verifier itself: its embedding and LM head, no copy */
        if (!p->verifier)
            return td_err_set(err, TD_ERR_ARG, "a dflash drafter (%s) needs a verifier", drafter);
        /* it computes on the verifier's backend, where the borrowed weights live (drafter/dflash.h)
         */
        if (o->drafter_device >= 0 && o->drafter_device != o->device)
            return td_err_set(err, TD_ERR_ARG,
                              "a DFlash drafter in this process runs on the verifier's device "
                              "(%d), not --drafter-device %d: it borrows the verifier's embedding "
                              "and LM head; run tandem-drafter --device N to place it elsewhere",
                              o->device, o->drafter_device);
        p->dflash = td_dflash_load(drafter, p->verifier, p->fingerprint, o->dflash_any_target, err);
        if (!p->dflash) return td_err_prefix(err, "dflash drafter %s", drafter);
        td_drafter_opts_t dopts = {.max_sessions =
                                       o->drafter_sessions > 0 ? o->drafter_sessions : 4,
                                   .model_id = s_base(drafter),
                                   .dflash = p->dflash,
                                   .dflash_any_target = o->dflash_any_target};
        p->svc = td_drafter_service_new(p->verifier, p->vtok, &dopts, err);
        if (!p->svc) return TD_ERR;
        if (s_start_inproc(p, &to, err) != TD_OK) return TD_ERR;
    } else if (!td_is_endpoint(drafter)) {
        if (s_load(drafter, o->drafter_device, dthreads, &p->dbe, &p->drafter, &p->dtok, err) !=
            TD_OK)
            return err->code ? err->code : TD_ERR;
        td_drafter_opts_t dopts = {.max_sessions =
                                       o->drafter_sessions > 0 ? o->drafter_sessions : 4,
                                   .model_id = s_base(drafter),
                                   .predraft = o->predraft};
        p->svc = td_drafter_service_new(p->drafter, p->dtok, &dopts, err);
        if (!p->svc) return TD_ERR;
        if (s_start_inproc(p, &to, err) != TD_OK) return TD_ERR;
    } else {
        snprintf(p->endpoint, sizeof p->endpoint, "%s", drafter);
        to.curve_server_key = o->curve_server_key;
        to.curve_secret_key = o->curve_secret_key;
    }
    if (p->verifier) {
        to.limits = td_wire_limits_default();
        to.limits.vocab_size = (uint32_t)td_model_config(p->verifier)->n_vocab;
    }
    p->dc = td_client_new(p->endpoint, &to, err);
    if (!p->dc) return TD_ERR;
    /* our Hello: the verifier's model and tokenizer (or, without a verifier, the drafter's own) */
    const td_tokenizer_t *tok = p->vtok ? p->vtok : p->dtok;
    uint64_t h = tok ? td_tokenizer_hash(tok) : 0;
    snprintf(p->model_id, sizeof p->model_id, "%s", verifier_dir ? s_base(verifier_dir) : "client");
    td_checkpoint_tokenizer_origin(p->model_id, p->tok_name, sizeof p->tok_name);
    int vocab = p->verifier ? td_model_config(p->verifier)->n_vocab : 0;
    td_hello_fill(&p->hello, p->verifier ? TD_ROLE_VERIFIER : TD_ROLE_CLIENT, p->model_id,
                  (uint32_t)vocab, -1, h, p->tok_name, NULL, 0);
    if (p->fingerprint && !o->dflash_any_target) {
        p->fp_list[0] = p->fingerprint;
        p->hello.n_target_fingerprints = 1;
        p->hello.target_fingerprints = p->fp_list;
    }
    int rc = td_client_handshake(p->dc, &p->hello, &p->ack,
                                 o->timeout_ms > 0 ? o->timeout_ms : 10000, err);
    if (rc != TD_OK) return td_err_prefix(err, "drafter at %s", p->endpoint);
    return TD_OK;
}

void td_pair_close(td_pair_t *p) {
    td_client_destroy(&p->dc);
    if (p->thread_running) {
        td_pipe_send(p->ctl, "STOP", NULL);
        pthread_join(p->thread, NULL);
        p->thread_running = 0;
    }
    td_pipe_destroy(&p->ctl);
    td_pipe_destroy(&p->ctl_thread);
    td_server_destroy(&p->srv);
    td_drafter_service_destroy(&p->svc);
    td_msg_free(&p->ack);
    td_dflash_destroy(&p->dflash);
    td_tokenizer_destroy(&p->dtok);
    td_model_destroy(&p->drafter);
    td_backend_destroy(&p->dbe);
    td_tokenizer_destroy(&p->vtok);
    td_model_destroy(&p->verifier);
    td_backend_destroy(&p->vbe);
}
