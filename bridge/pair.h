/* pair.h - sets up a verifier and the drafter it talks to, for `generate` and `bench`.
 *
 * The drafter is either a checkpoint directory, served in this process by a thread over
 * inproc:// (one-process mode: the very code paths of the separate worker, with ZeroMQ between
 * them), or an endpoint (tcp://, ipc://) of a running tandem-drafter. Either way the verifier
 * reaches it only through a td_client_t after the handshake (which refuses a tokenizer
 * mismatch). */
#ifndef TD_PAIR_H
#define TD_PAIR_H

#include "drafter/dflash.h"
#include "drafter/service.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "protocol/transport.h"

#include <pthread.h>

typedef struct td_pair {
    td_backend_t *vbe, *dbe;
    td_model_t *verifier, *drafter; /* drafter: only in one-process mode */
    td_tokenizer_t *vtok, *dtok;
    td_drafter_service_t *svc;
    td_server_t *srv;
    pthread_t thread;
    int thread_running;
    td_pipe_t *ctl, *ctl_thread; /* actor pipe to the drafter thread: ours, its end */
    td_client_t *dc;
    char endpoint[512];
    td_hello_t hello;
    char model_id[256], tok_name[64];
    /* the drafter's HelloAck (its Hello: capabilities, dflash layers and block size) */
    td_msg_t *ack;
    /* dflash: the in-process drafter (its target is the verifier), the verifier's fingerprint
     * (our Hello lists it so that a dflash drafter refuses another target) */
    td_dflash_t *dflash;
    uint64_t fingerprint, fp_list[1];
} td_pair_t;

typedef struct td_pair_opts {
    int threads;                /* CPU threads per model (0 = all cores) */
    int drafter_threads;        /* 0 = threads */
    int device, drafter_device; /* CUDA device of each model; -1 = CPU. Zero-initialised opts mean
                                   device 0: set both to -1 for the CPU (td_pair_opts_default) */
    int timeout_ms;             /* handshake timeout */
    int predraft;               /* in-process drafter: pre-draft the next round (see service.h) */
    int spin_us; /* waiting for the drafter (and, in-process, the drafter waiting for requests):
                    poll without sleeping for this long first (td_transport_opts_t.spin_us).
                    0 = auto: 5000 when the models' threads leave a core for the waiting side
                    (in-process: verifier + drafter threads <= cores; remote drafter: verifier
                    threads < cores), else off; -1 = off */
    const char *curve_server_key, *curve_secret_key; /* for tcp:// drafters with CURVE */
    int drafter_sessions; /* in-process drafter: sessions it keeps (0 = 4); a server sets it to
                             the requests it decodes at once, or the drafter evicts live ones */
    int dflash;            /* list the verifier's fingerprint in our Hello (a remote dflash
                              drafter then refuses another target); implied by a dflash
                              drafter directory */
    int dflash_any_target; /* in-process dflash drafter: pair with any target of the right shape */
} td_pair_opts_t;

/* CPU for both models, all threads. */
td_pair_opts_t td_pair_opts_default(void);

/* Loads the verifier (verifier_dir may be NULL: no verifier) and connects to the drafter
 * (drafter may be NULL: no drafter). Prints nothing; err says what failed. */
int td_pair_open(td_pair_t *p, const char *verifier_dir, const char *drafter,
                 const td_pair_opts_t *o, td_err_t *err);
void td_pair_close(td_pair_t *p);

/* Whether s names an endpoint (tcp://, ipc://, inproc://) rather than a directory. */
int td_is_endpoint(const char *s);

/* 1 when dir is a DFlash drafter directory (config.json says "architecture": "dflash"). */
int td_is_dflash_dir(const char *dir);

/* The drafter's Hello from the handshake (NULL without a drafter). */
const td_hello_t *td_pair_drafter_hello(const td_pair_t *p);

#endif
