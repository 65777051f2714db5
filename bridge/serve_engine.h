/* serve_engine.h - what `tandem serve` asks of the decoding engine: submit a request, read its
 * tokens as they come (streaming), cancel it, get its final stats.
 *
 * The implementation (serve_engine.c) batches: one engine thread owns one verifier (and the
 * drafter it talks to, through one shared link) and a td_driver_t with --parallel KV slots. Jobs
 * wait in a bounded queue; between rounds the engine thread submits them as sessions while slots
 * are free (continuous batching), runs one round (ONE verifier forward scoring every live
 * request's draft), streams each session's tokens to its job, and ends a job as soon as its
 * session leaves (finished, cancelled, failed). A request's output is the same alone or batched.
 *
 * Threads: every function may be called from any thread; a job is shared by the engine and its
 * submitter (reference counted: td_serve_job_release by the submitter when done with it). */
#ifndef TD_SERVE_ENGINE_H
#define TD_SERVE_ENGINE_H

#include "model/sampler.h"
#include "model/tokenizer.h"
#include "verifier/spec.h"

#include <stdint.h>

typedef struct td_serve_engine td_serve_engine_t;
typedef struct td_serve_job td_serve_job_t;

typedef struct td_serve_engine_opts {
    const char *verifier; /* checkpoint directory */
    const char *drafter;  /* directory (in-process) or endpoint; NULL for method ar */
    td_method_t method;   /* the default method: ar, spec-ar, specdiff, apd or dflash */
    int parallel;         /* KV slots (requests decoded at once), >= 1 */
    int queue_cap;        /* requests waiting for a slot at most (then submit says busy) */
    int threads; /* CPU threads per model (0 = cores - 1, halved with an in-process drafter) */
    int device, drafter_device;
    int timeout_ms; /* drafter answer timeout per round (0 = 5000) */
    int spin_us;    /* td_pair_opts_t.spin_us (-1 off) */
    const char *curve_server_key, *curve_secret_key;
    /* the server's method options (as `generate`'s); -1 = the method's default */
    int gamma, steps, order, verify, dist_top_k, kv_window;
    double mixture; /* apd R; < 0 = default */
    /* requests may name any served method that needs no more than this engine has (a verifier
     * worker: its clients choose; the drafter refuses what it cannot draft for). 0: ar and
     * the engine's method (and its sibling on the same drafter) only */
    int any_method;
} td_serve_engine_opts_t;

/* One request, as the engine needs it (token ids: the HTTP side renders and tokenizes). */
typedef struct td_serve_gen {
    const int32_t *prompt; /* copied by submit */
    int n_prompt;
    int max_tokens;
    td_sampling_t sampling;
    uint64_t seed;
    int method;              /* td_method_t, or -1: the engine's */
    int gamma, steps;        /* 0: the engine's */
    int order, verify;       /* -1: the engine's */
    const int32_t *stop_ids; /* besides the model's end-of-sequence ids; copied */
    int n_stop;
    double mixture; /* apd R; <= 0: the engine's */
} td_serve_gen_t;

/* The outcome of a finished job. */
typedef struct td_serve_result {
    int rc; /* TD_OK, or the error (msg says what) */
    char msg[1024];
    int cancelled; /* ended by td_serve_job_cancel */
    int prompt_tokens;
    td_method_t method; /* the method that ran */
    int gamma;
    td_spec_stats_t stats; /* as `generate --json` reports them */
    double queued_s;       /* from submit to a slot taking it */
    double total_s;        /* generation time in the slot */
} td_serve_result_t;

/* Loads the models, the driver and starts the engine thread. NULL with err on failure. */
td_serve_engine_t *td_serve_engine_new(const td_serve_engine_opts_t *o, td_err_t *err);
/* Stops taking jobs, ends queued ones with an error, gives running ones grace_s seconds, then
 * cancels them and joins the engine thread. The engine stays valid (tokenizer, queries, job
 * reading) until destroyed. Idempotent. */
void td_serve_engine_stop(td_serve_engine_t *e, double grace_s);
/* td_serve_engine_stop (if not done) and frees everything. Stops taking jobs; jobs still queued end
 * with an error; jobs running get grace_s seconds to finish, then are cancelled; joins the engine
 * thread and frees everything. Jobs still referenced by their submitters stay valid until released.
 */
void td_serve_engine_destroy(td_serve_engine_t **self_p, double grace_s);

/* The tokenizer for rendering prompts and decoding output (owned by the engine; read-only use
 * from any thread). */
const td_tokenizer_t *td_serve_engine_tokenizer(const td_serve_engine_t *e);
/* The verifier's directory (chat template, generation_config.json), context length (a KV slot's
 * positions: the model's, at most 4096) and end-of-sequence ids (the model's and
 * generation_config's; up to cap). */
const char *td_serve_engine_model_dir(const td_serve_engine_t *e);
int td_serve_engine_n_ctx(const td_serve_engine_t *e);
/* Sampling from the checkpoint's generation_config.json when it samples (else *sp unchanged). */
void td_serve_engine_gen_defaults(const td_serve_engine_t *e, td_sampling_t *sp);
td_method_t td_serve_engine_method(const td_serve_engine_t *e);
/* The verifier's Hello (what peers handshake against). */
const td_hello_t *td_serve_engine_hello(const td_serve_engine_t *e);
/* Whether a request may pick method m with this engine's drafter. */
int td_serve_engine_method_ok(const td_serve_engine_t *e, td_method_t m);
/* Requests queued (waiting for a slot) and running now. */
void td_serve_engine_load(td_serve_engine_t *e, int *queued, int *running);

/* Batching so far: driver rounds run (each ONE verifier forward), the live sessions summed over
 * them (round_sessions / rounds = the mean batch) and the most sessions in one round. */
void td_serve_engine_batching(td_serve_engine_t *e, int64_t *rounds, int64_t *round_sessions,
                              int *max_batch);

/* Queues g. Returns TD_OK and *job (release it), TD_ERR_UNSUPPORTED when the queue is full or the
 * engine is shutting down (err says which), TD_ERR_ARG for a bad request. */
int td_serve_submit(td_serve_engine_t *e, const td_serve_gen_t *g, td_serve_job_t **job,
                    td_err_t *err);

/* Waits up to timeout_ms for tokens past *seen or the end. Copies up to cap new ids into ids,
 * advances *seen, and returns how many were copied; *done is set once the job has ended and every
 * token was read (then td_serve_job_result holds the outcome). */
int td_serve_job_wait(td_serve_job_t *j, int *seen, int32_t *ids, int cap, int timeout_ms,
                      int *done);
/* Asks the job to stop (it ends at its next token; a queued one never starts). */
void td_serve_job_cancel(td_serve_job_t *j);
/* The outcome; valid once td_serve_job_wait reported done. */
const td_serve_result_t *td_serve_job_result(const td_serve_job_t *j);
/* Seconds from submit to the first token (-1 before it). */
double td_serve_job_ttft(const td_serve_job_t *j);
void td_serve_job_release(td_serve_job_t **j);

#endif
