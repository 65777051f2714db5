/* serve_engine.c - the engine of `tandem serve` (see serve_engine.h): ONE engine thread owns one
 * verifier, one drafter link and a batching driver (verifier/driver.h) with --parallel KV slots.
 * HTTP threads queue jobs; between rounds the engine thread turns queued jobs into sessions
 * (continuous batching), runs one driver round (one verifier forward for every live request, the
 * drafts of all of them in flight together), and ends the jobs whose sessions left. */
#include "bridge/serve_engine.h"

#include "bridge/cli.h"
#include "bridge/pair.h"
#include "engine/method.h"
#include "verifier/driver.h"
#include "verifier/link.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_STOP 32
#define SLOT_CTX_MAX 4096 /* KV positions per slot at most */

struct td_serve_job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    /* request */
    int32_t *prompt;
    int n_prompt;
    td_serve_gen_t g;
    int32_t stop[MAX_STOP];
    int n_stop;
    /* progress */
    int32_t *toks;
    int n_toks, cap_toks;
    int done, cancel;
    double t_submit, t_first;
    td_serve_result_t res;
    td_serve_job_t *next; /* queue link */
};

/* a job the engine thread decodes now: its session in the driver */
typedef struct active {
    td_serve_job_t *job;
    td_session_t *s;
    td_spec_params_t p;
    td_method_t method;
    double t0;
} active_t;

struct td_serve_engine {
    td_serve_engine_opts_t o;
    char vdir[1024];
    td_pair_t pair; /* ONE verifier (and the drafter it talks to) for every request */
    int pair_open;
    td_link_t *link; /* the drafter link shared by the sessions (NULL for ar) */
    /* a dflash drafter: the target layers its Hello lists (the features every dflash session
     * sends) and its block size; n_flayers 0 otherwise */
    int flayers[TD_DFLASH_MAX_TARGET_LAYERS], n_flayers, fblock;
    td_driver_t *drv;
    int slot_ctx;  /* KV positions per slot */
    active_t *act; /* parallel entries; act[i].job set under mu, read by stop */
    pthread_t th;
    int th_running;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    td_serve_job_t *head, *tail;
    int queued, running, stopping, stopped;
    int32_t eos[MAX_STOP];
    int n_eos;
    td_sampling_t gen_sp;
    int gen_sp_set;
    uint64_t session_counter;
    int64_t rounds, round_sessions; /* driver rounds run; live sessions summed over them */
    int max_batch;                  /* most sessions in one round */
};

static void s_job_finish(td_serve_job_t *j, int rc, const char *msg) {
    pthread_mutex_lock(&j->mu);
    j->res.rc = rc;
    if (msg) snprintf(j->res.msg, sizeof j->res.msg, "%s", msg);
    j->res.cancelled = j->cancel;
    j->done = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

/* the per-token hook of the sessions: record, wake the reader, stop when cancelled */
static int s_on_token(void *ud, int32_t id) {
    td_serve_job_t *j = ud;
    pthread_mutex_lock(&j->mu);
    if (j->n_toks == j->cap_toks) {
        int nc = j->cap_toks ? j->cap_toks * 2 : 64;
        int32_t *nt = realloc(j->toks, (size_t)nc * sizeof *nt);
        if (!nt) {
            pthread_mutex_unlock(&j->mu);
            return 1;
        }
        j->toks = nt, j->cap_toks = nc;
    }
    j->toks[j->n_toks++] = id;
    if (j->t_first < 0) j->t_first = td_time_now();
    int stop = j->cancel;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return stop;
}

static int s_job_cancelled(td_serve_job_t *j) {
    pthread_mutex_lock(&j->mu);
    int c = j->cancel;
    pthread_mutex_unlock(&j->mu);
    return c;
}

/* The request's method parameters (the engine's options, then the request's). */
static void s_params(const td_serve_engine_t *e, const td_serve_job_t *j, td_method_t method,
                     td_spec_params_t *p) {
    const td_serve_gen_t *g = &j->g;
    *p = td_spec_params_default(method);
    if (method != TD_METHOD_AR) {
        if (e->o.gamma > 0) p->gamma = e->o.gamma;
        if (e->o.steps > 0) p->steps = e->o.steps;
        if (e->o.order >= 0) p->order = e->o.order;
        if (e->o.verify >= 0) p->verify = (td_verify_t)e->o.verify;
        if (e->o.dist_top_k > 0) p->dist_top_k = e->o.dist_top_k;
        if (e->o.kv_window >= 0) p->apd_kv_window = e->o.kv_window;
        if (e->o.mixture >= 0) p->apd_mixture = (float)e->o.mixture;
        if (g->gamma > 0) p->gamma = g->gamma;
        if (g->steps > 0) p->steps = g->steps;
        if (g->order >= 0) p->order = g->order;
        if (g->verify >= 0) p->verify = (td_verify_t)g->verify;
        if (g->mixture > 0) p->apd_mixture = (float)g->mixture;
        p->draft_sampling = g->sampling;
        p->drafter_timeout_ms = e->o.timeout_ms > 0 ? e->o.timeout_ms : 5000;
        /* dflash: the drafter's block less the anchor unless asked otherwise */
        if (method == TD_METHOD_DFLASH && e->o.gamma <= 0 && g->gamma <= 0)
            p->gamma = e->fblock > 1 ? e->fblock - 1 : 15;
        p->hello = &e->pair.hello;
    }
    p->max_tokens = g->max_tokens;
    p->sampling = g->sampling;
    p->seed = g->seed;
    p->stop_ids = j->stop;
    p->n_stop = j->n_stop;
}

/* Engine thread: slot a's job (its result delivered) leaves; the engine drops its reference. */
static void s_slot_free(td_serve_engine_t *e, active_t *a) {
    td_serve_job_t *j = a->job;
    pthread_mutex_lock(&e->mu);
    a->job = NULL;
    e->running--;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    td_serve_job_release(&j);
}

/* Engine thread: turns job j into a session in slot a and submits it to the driver. On failure
 * the job ends with the error and the slot stays free. */
static void s_start_job(td_serve_engine_t *e, active_t *a, td_serve_job_t *j) {
    td_err_t err = {0};
    j->res.queued_s = td_time_now() - j->t_submit;
    if (s_job_cancelled(j)) {
        s_job_finish(j, TD_ERR, "cancelled before it started");
        goto drop;
    }
    td_method_t method = j->g.method >= 0 ? (td_method_t)j->g.method : e->o.method;
    s_params(e, j, method, &a->p);
    pthread_mutex_lock(&e->mu);
    uint64_t sid = ((uint64_t)getpid() << 24) | (++e->session_counter & 0xffffff);
    pthread_mutex_unlock(&e->mu);
    td_session_opts_t so = {.method = method,
                            .params = &a->p,
                            .link = method == TD_METHOD_AR ? NULL : e->link,
                            .session_id = sid,
                            .prompt = j->prompt,
                            .n_prompt = j->n_prompt,
                            .cb = s_on_token,
                            .ud = j};
    if (method == TD_METHOD_DFLASH) { /* the verifier sends the drafter's target features */
        so.feature_layers = e->flayers;
        so.n_feature_layers = e->n_flayers;
        so.feature_type = TD_FEATURE_BF16;
    }
    td_session_t *s = td_session_new(e->pair.verifier, &so, &err);
    /* a slot holds slot_ctx positions: a request that would run past it ends there */
    if (s && td_session_n_ctx(s) > e->slot_ctx) {
        int over = td_session_n_ctx(s) - e->slot_ctx;
        td_session_destroy(&s);
        if (a->p.max_tokens - over >= 1) {
            a->p.max_tokens -= over;
            s = td_session_new(e->pair.verifier, &so, &err);
        } else {
            td_err_set(&err, TD_ERR_ARG, "the prompt does not fit a slot of %d positions",
                       e->slot_ctx);
        }
    }
    if (!s) {
        s_job_finish(j, err.code ? err.code : TD_ERR, err.msg);
        goto drop;
    }
    a->s = s, a->method = method, a->t0 = td_time_now();
    if (td_driver_submit(e->drv, s, &err) != TD_OK && !td_session_done(s)) {
        td_session_destroy(&a->s);
        s_job_finish(j, err.code ? err.code : TD_ERR, err.msg);
        goto drop;
    }
    return; /* a failed prefill ended the session: the sweep reports it */
drop:
    s_slot_free(e, a);
}

/* Engine thread: ends the job of a session that left the driver and frees its slot entry. */
static void s_end_job(td_serve_engine_t *e, active_t *a) {
    td_serve_job_t *j = a->job;
    td_err_t err = {0};
    int rc = td_session_status(a->s, &err);
    j->res.total_s = td_time_now() - a->t0;
    j->res.stats = *td_session_stats(a->s);
    j->res.method = a->method;
    j->res.gamma = a->method == TD_METHOD_AR ? 0 : a->p.gamma;
    j->res.prompt_tokens = j->n_prompt;
    if (e->link) td_link_forget(e->link, td_session_id(a->s)); /* its late answers */
    td_session_destroy(&a->s);
    s_job_finish(j, rc, rc == TD_OK ? NULL : err.msg);
    s_slot_free(e, a);
}

/* The engine thread: between rounds, queued jobs join as sessions (while KV slots are free) and
 * cancelled ones are told to leave; then one driver round for every live session; sessions that
 * left end their jobs at once. */
static void *s_engine(void *arg) {
    td_serve_engine_t *e = arg;
    int P = e->o.parallel;
    for (;;) {
        int free_slots = 0;
        pthread_mutex_lock(&e->mu);
        while (!e->head && e->running == 0 && !e->stopping) pthread_cond_wait(&e->cv, &e->mu);
        if (e->stopping && e->running == 0 && !e->head) {
            pthread_mutex_unlock(&e->mu);
            return NULL;
        }
        for (int i = 0; i < P; i++) free_slots += !e->act[i].job;
        while (e->head && free_slots > 0) {
            td_serve_job_t *j = e->head;
            e->head = j->next;
            if (!e->head) e->tail = NULL;
            j->next = NULL;
            e->queued--;
            e->running++;
            for (int i = 0; i < P; i++)
                if (!e->act[i].job) {
                    e->act[i].job = j;
                    e->act[i].s = NULL;
                    break;
                }
            free_slots--;
        }
        pthread_mutex_unlock(&e->mu);
        /* joins: sessions for the jobs just taken (their entries have job set, no session) */
        for (int i = 0; i < P; i++)
            if (e->act[i].job && !e->act[i].s) s_start_job(e, &e->act[i], e->act[i].job);
        /* cancels: the session leaves at the next round boundary */
        for (int i = 0; i < P; i++)
            if (e->act[i].s && !td_session_done(e->act[i].s) && s_job_cancelled(e->act[i].job))
                td_session_cancel(e->act[i].s);
        int live = td_driver_live(e->drv);
        if (live > 0) {
            td_err_t err = {0};
            td_driver_round(e->drv, &err); /* a failed forward ends its sessions: swept below */
            pthread_mutex_lock(&e->mu);
            e->rounds++;
            e->round_sessions += live;
            if (live > e->max_batch) e->max_batch = live;
            pthread_mutex_unlock(&e->mu);
        }
        for (int i = 0; i < P; i++)
            if (e->act[i].s && td_session_done(e->act[i].s)) s_end_job(e, &e->act[i]);
    }
}

/* eos ids and sampling defaults from DIR/generation_config.json */
static void s_gen_config(td_serve_engine_t *e) {
    char path[2048], *data = NULL;
    size_t len;
    td_path_join(path, sizeof path, e->vdir, "generation_config.json");
    if (td_read_file(path, &data, &len, NULL) != TD_OK) return;
    cJSON *j = cJSON_ParseWithLength(data, len);
    free(data);
    if (!j) return;
    cJSON *v;
    if (cJSON_IsTrue(cJSON_GetObjectItem(j, "do_sample"))) {
        e->gen_sp_set = 1;
        e->gen_sp.temperature = 1.0f;
        e->gen_sp.top_k = 0;
        e->gen_sp.top_p = 1;
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(j, "temperature")))
            e->gen_sp.temperature = (float)v->valuedouble;
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(j, "top_k"))) e->gen_sp.top_k = v->valueint;
        if (cJSON_IsNumber(v = cJSON_GetObjectItem(j, "top_p")))
            e->gen_sp.top_p = (float)v->valuedouble;
    }
    v = cJSON_GetObjectItem(j, "eos_token_id");
    if (cJSON_IsNumber(v) && e->n_eos < MAX_STOP / 2) e->eos[e->n_eos++] = v->valueint;
    if (cJSON_IsArray(v)) {
        cJSON *x;
        cJSON_ArrayForEach(x, v) if (cJSON_IsNumber(x) && e->n_eos < MAX_STOP / 2)
            e->eos[e->n_eos++] = x->valueint;
    }
    cJSON_Delete(j);
}

td_serve_engine_t *td_serve_engine_new(const td_serve_engine_opts_t *o, td_err_t *err) {
    if (!o || !o->verifier || o->parallel < 1 || o->queue_cap < 0) {
        td_err_set(err, TD_ERR_ARG, "serve engine: a verifier and parallel >= 1 are needed");
        return NULL;
    }
    if (o->method != TD_METHOD_AR && o->method != TD_METHOD_SPEC_AR &&
        o->method != TD_METHOD_SPECDIFF && o->method != TD_METHOD_APD &&
        o->method != TD_METHOD_DFLASH) {
        td_err_set(err, TD_ERR_UNSUPPORTED,
                   "serve: --method %s is not served (ar, spec-ar, specdiff, apd, dflash)",
                   td_method_name(o->method));
        return NULL;
    }
    if (o->method != TD_METHOD_AR && !o->drafter) {
        td_err_set(err, TD_ERR_ARG, "serve: --method %s needs a drafter",
                   td_method_name(o->method));
        return NULL;
    }
    td_serve_engine_t *e = calloc(1, sizeof *e);
    if (!e) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    e->o = *o;
    snprintf(e->vdir, sizeof e->vdir, "%s", o->verifier);
    e->o.verifier = e->vdir;
    if (o->method == TD_METHOD_AR) e->o.drafter = NULL;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->act = calloc((size_t)o->parallel, sizeof *e->act);
    if (!e->act) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        goto fail;
    }
    /* one verifier for all requests. Default threads: the cores but one (left to the HTTP
     * threads and clients: an OpenMP team as wide as the machine stalls for whole time slices as
     * soon as anything else runs), split in two when an in-process drafter shares them */
    td_pair_opts_t po = td_pair_opts_default();
    po.threads = o->threads;
    if (po.threads <= 0) {
        int in_proc = e->o.drafter && !td_is_endpoint(e->o.drafter);
        po.threads = (td_cli_n_cores() - 1) / (in_proc ? 2 : 1);
        if (po.threads < 1) po.threads = 1;
    }
    po.device = o->device;
    po.drafter_device = o->drafter_device;
    po.spin_us = o->spin_us;
    po.drafter_sessions = o->parallel; /* every live request keeps its drafter session */
    po.curve_server_key = o->curve_server_key;
    po.curve_secret_key = o->curve_secret_key;
    /* dflash: our Hello lists the verifier's fingerprint (a remote dflash drafter refuses another
     * target; an in-process one is loaded against the verifier itself) */
    /* (a worker serves whatever its drafter drafts: a remote one may be a DFlash drafter; an
     * in-process DFlash directory is recognised by td_pair_open itself) */
    po.dflash = o->method == TD_METHOD_DFLASH ||
                (o->any_method && o->drafter && td_is_endpoint(o->drafter));
    e->pair_open = 1;
    if (td_pair_open(&e->pair, e->vdir, e->o.drafter, &po, err) != TD_OK) goto fail;
    if (e->pair.dc && !(e->link = td_link_new(e->pair.dc, &e->pair.hello, err))) goto fail;
    const td_hello_t *dh = td_pair_drafter_hello(&e->pair);
    if (dh && td_hello_has_capability(dh, "dflash") && dh->n_target_layers > 0 &&
        dh->n_target_layers <= TD_DFLASH_MAX_TARGET_LAYERS) {
        for (size_t i = 0; i < dh->n_target_layers; i++) e->flayers[i] = (int)dh->target_layers[i];
        e->n_flayers = (int)dh->n_target_layers;
        e->fblock = (int)dh->block_size;
    }
    /* a worker (tandem-verifier) serves what its drafter drafts: dflash for a DFlash drafter */
    if (o->any_method && e->n_flayers > 0) e->o.method = TD_METHOD_DFLASH;
    if ((e->o.method == TD_METHOD_DFLASH) != (e->n_flayers > 0) && e->o.method != TD_METHOD_AR) {
        td_err_set(err, TD_ERR_ARG,
                   e->o.method == TD_METHOD_DFLASH
                       ? "serve: --method dflash needs a DFlash drafter (%s lists no target layers)"
                       : "serve: %s is a DFlash drafter: serve it with --method dflash",
                   e->o.drafter);
        goto fail;
    }
    const td_config_t *c = td_model_config(e->pair.verifier);
    /* KV slots: the model's context, at most SLOT_CTX_MAX positions each */
    e->slot_ctx =
        c->n_ctx_train > 0 && c->n_ctx_train < SLOT_CTX_MAX ? c->n_ctx_train : SLOT_CTX_MAX;
    if (!(e->drv = td_driver_new(e->pair.verifier, o->parallel, e->slot_ctx, err))) goto fail;
    if (c->eos_token_id >= 0) e->eos[e->n_eos++] = c->eos_token_id;
    s_gen_config(e);
    if (pthread_create(&e->th, NULL, s_engine, e) != 0) {
        td_err_set(err, TD_ERR, "cannot start the engine thread");
        goto fail;
    }
    e->th_running = 1;
    return e;
fail:
    td_serve_engine_destroy(&e, 0);
    return NULL;
}

void td_serve_engine_stop(td_serve_engine_t *e, double grace_s) {
    pthread_mutex_lock(&e->mu);
    if (e->stopped) {
        pthread_mutex_unlock(&e->mu);
        return;
    }
    e->stopping = e->stopped = 1;
    /* queued jobs end now */
    td_serve_job_t *q = e->head;
    e->head = e->tail = NULL;
    e->queued = 0;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    while (q) {
        td_serve_job_t *n = q->next;
        q->next = NULL;
        s_job_finish(q, TD_ERR_UNSUPPORTED, "the server is shutting down");
        td_serve_job_release(&q);
        q = n;
    }
    /* running ones: grace, then cancel (the engine thread ends them at the next round) */
    double t_end = td_time_now() + grace_s;
    pthread_mutex_lock(&e->mu);
    while (e->running > 0 && td_time_now() < t_end) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&e->cv, &e->mu, &ts);
    }
    for (int i = 0; e->act && i < e->o.parallel; i++)
        if (e->act[i].job) td_serve_job_cancel(e->act[i].job);
    pthread_mutex_unlock(&e->mu);
    if (e->th_running) pthread_join(e->th, NULL), e->th_running = 0;
}

void td_serve_engine_destroy(td_serve_engine_t **self_p, double grace_s) {
    td_serve_engine_t *e = self_p ? *self_p : NULL;
    if (!e) return;
    *self_p = NULL;
    td_serve_engine_stop(e, grace_s);
    td_driver_destroy(&e->drv);
    td_link_destroy(&e->link);
    if (e->pair_open) td_pair_close(&e->pair);
    free(e->act);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

const td_tokenizer_t *td_serve_engine_tokenizer(const td_serve_engine_t *e) { return e->pair.vtok; }
const char *td_serve_engine_model_dir(const td_serve_engine_t *e) { return e->vdir; }
int td_serve_engine_n_ctx(const td_serve_engine_t *e) { return e->slot_ctx; }
void td_serve_engine_gen_defaults(const td_serve_engine_t *e, td_sampling_t *sp) {
    if (e->gen_sp_set) *sp = e->gen_sp;
}
td_method_t td_serve_engine_method(const td_serve_engine_t *e) { return e->o.method; }

const td_hello_t *td_serve_engine_hello(const td_serve_engine_t *e) { return &e->pair.hello; }

int td_serve_engine_method_ok(const td_serve_engine_t *e, td_method_t m) {
    if (m == TD_METHOD_AR || m == e->o.method) return 1;
    /* a DFlash drafter drafts for dflash only, and only it does */
    if (m == TD_METHOD_DFLASH || e->n_flayers > 0) return 0;
    if (e->o.any_method) {
        const td_method_desc_t *md = td_method_get(m);
        return md && (md->caps & TD_CAP_SERVED) && md->session_new &&
               (!(md->caps & TD_CAP_DRAFTER) || e->link);
    }
    /* specdiff and apd share the diffusion drafter */
    return (m == TD_METHOD_SPECDIFF || m == TD_METHOD_APD) &&
           (e->o.method == TD_METHOD_SPECDIFF || e->o.method == TD_METHOD_APD);
}

void td_serve_engine_load(td_serve_engine_t *e, int *queued, int *running) {
    pthread_mutex_lock(&e->mu);
    if (queued) *queued = e->queued;
    if (running) *running = e->running;
    pthread_mutex_unlock(&e->mu);
}

void td_serve_engine_batching(td_serve_engine_t *e, int64_t *rounds, int64_t *round_sessions,
                              int *max_batch) {
    pthread_mutex_lock(&e->mu);
    if (rounds) *rounds = e->rounds;
    if (round_sessions) *round_sessions = e->round_sessions;
    if (max_batch) *max_batch = e->max_batch;
    pthread_mutex_unlock(&e->mu);
}

int td_serve_submit(td_serve_engine_t *e, const td_serve_gen_t *g, td_serve_job_t **job,
                    td_err_t *err) {
    *job = NULL;
    if (!g->prompt || g->n_prompt < 1 || g->max_tokens < 0 || g->n_stop < 0)
        return td_err_set(err, TD_ERR_ARG, "empty prompt or negative max_tokens");
    if (g->method >= 0 && !td_serve_engine_method_ok(e, (td_method_t)g->method))
        return td_err_set(err, TD_ERR_ARG, "method %s is not available on this server",
                          td_method_name((td_method_t)g->method));
    td_serve_job_t *j = calloc(1, sizeof *j);
    if (!j || !(j->prompt = malloc((size_t)g->n_prompt * sizeof *j->prompt))) {
        free(j);
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    memcpy(j->prompt, g->prompt, (size_t)g->n_prompt * sizeof *j->prompt);
    j->n_prompt = g->n_prompt;
    j->g = *g;
    j->g.prompt = j->prompt;
    for (int i = 0; i < e->n_eos && j->n_stop < MAX_STOP; i++) j->stop[j->n_stop++] = e->eos[i];
    for (int i = 0; i < g->n_stop && j->n_stop < MAX_STOP; i++)
        j->stop[j->n_stop++] = g->stop_ids[i];
    j->g.stop_ids = NULL;
    j->t_submit = td_time_now();
    j->t_first = -1;
    j->refs = 2; /* the submitter's and the engine's */
    pthread_mutex_lock(&e->mu);
    /* idle slots take a job at once: only jobs beyond them count against the queue */
    if (e->stopping || e->queued >= e->o.queue_cap + (e->o.parallel - e->running)) {
        int stopping = e->stopping;
        pthread_mutex_unlock(&e->mu);
        j->refs = 1;
        td_serve_job_release(&j);
        return td_err_set(err, TD_ERR_UNSUPPORTED, "%s",
                          stopping ? "the server is shutting down"
                                   : "the request queue is full, retry later");
    }
    if (e->tail)
        e->tail->next = j;
    else
        e->head = j;
    e->tail = j;
    e->queued++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    *job = j;
    return TD_OK;
}

int td_serve_job_wait(td_serve_job_t *j, int *seen, int32_t *ids, int cap, int timeout_ms,
                      int *done) {
    *done = 0;
    pthread_mutex_lock(&j->mu);
    if (j->n_toks <= *seen && !j->done && timeout_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        while (j->n_toks <= *seen && !j->done)
            if (pthread_cond_timedwait(&j->cv, &j->mu, &ts) == ETIMEDOUT) break;
    }
    int n = j->n_toks - *seen;
    if (n > cap) n = cap;
    if (n > 0) memcpy(ids, j->toks + *seen, (size_t)n * sizeof *ids);
    if (n < 0) n = 0;
    *seen += n;
    if (j->done && *seen >= j->n_toks) *done = 1;
    pthread_mutex_unlock(&j->mu);
    return n;
}

void td_serve_job_cancel(td_serve_job_t *j) {
    pthread_mutex_lock(&j->mu);
    j->cancel = 1;
    pthread_mutex_unlock(&j->mu);
}

const td_serve_result_t *td_serve_job_result(const td_serve_job_t *j) { return &j->res; }

double td_serve_job_ttft(const td_serve_job_t *j) {
    td_serve_job_t *m = (td_serve_job_t *)j;
    pthread_mutex_lock(&m->mu);
    double t = m->t_first < 0 ? -1 : m->t_first - m->t_submit;
    pthread_mutex_unlock(&m->mu);
    return t;
}

void td_serve_job_release(td_serve_job_t **jp) {
    td_serve_job_t *j = jp ? *jp : NULL;
    if (!j) return;
    *jp = NULL;
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left > 0) return;
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j->prompt);
    free(j->toks);
    free(j);
}
