/* cmd_serve.c - `tandem serve`: an OpenAI-compatible HTTP server (libmicrohttpd) in front of the
 * serve engine (bridge/serve_engine.h). Endpoints: POST /v1/chat/completions, POST
 * /v1/completions (streaming as server-sent events), GET /v1/models, /health, /metrics
 * (Prometheus text). See docs/serve.md. */
#include "bridge/cli.h"
#include "bridge/commands.h"
#include "bridge/pair.h"
#include "bridge/serve_engine.h"
#include "bridge/serve_req.h"
#include "drafter/draft.h"
#include "model/chat.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- server state ---------------------------------------------------------------------------- */

#define N_TIME_BUCKETS 14
static const double s_time_buckets[N_TIME_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                      1,     2.5,  5,     10,   30,  60,   120};
#define MAX_ACC_LEN 32 /* accepted-length histogram: 0..MAX_ACC_LEN-1, the rest in the last */
#define MAX_POS 64     /* per-position acceptance counters */

typedef struct hist {
    uint64_t counts[N_TIME_BUCKETS + 1];
    double sum;
    uint64_t n;
} hist_t;

typedef struct metrics {
    pthread_mutex_t mu;
    uint64_t req_ok, req_err, req_cancelled, http_4xx, http_5xx, rejected_busy;
    uint64_t prompt_tokens, gen_tokens, drafts, draft_tokens, accepted_tokens, fallbacks;
    uint64_t acc_per_pos[MAX_POS];
    uint64_t acc_len[MAX_ACC_LEN];
    hist_t ttft, e2e, queue;
} metrics_t;

typedef struct server {
    td_serve_engine_t *eng;
    const td_tokenizer_t *tok;
    pthread_mutex_t tok_mu;
    td_chat_format_t fmt;
    int32_t chat_stop[4];
    int n_chat_stop;
    char model_name[256];
    const char *api_key, *cors;
    size_t max_body;
    long def_max_tokens, def_seed;
    int def_seed_set;
    td_sampling_t def_sp;
    int n_ctx;
    time_t created;
    volatile int draining;
    metrics_t m;
    int live_gens; /* requests submitted whose answer is not fully handed to MHD yet (m.mu) */
} server_t;

static void s_hist_add(hist_t *h, double v) {
    int i = 0;
    while (i < N_TIME_BUCKETS && v > s_time_buckets[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->n++;
}

static void s_http_status_count(server_t *s, int status) {
    pthread_mutex_lock(&s->m.mu);
    if (status >= 500)
        s->m.http_5xx++;
    else if (status >= 400)
        s->m.http_4xx++;
    pthread_mutex_unlock(&s->m.mu);
}

/* a finished generation request */
static void s_metrics_done(server_t *s, const td_serve_result_t *r, double ttft, double e2e) {
    metrics_t *m = &s->m;
    pthread_mutex_lock(&m->mu);
    if (r->cancelled)
        m->req_cancelled++;
    else if (r->rc == TD_OK)
        m->req_ok++;
    else
        m->req_err++;
    const td_spec_stats_t *st = &r->stats;
    m->prompt_tokens += (uint64_t)r->prompt_tokens;
    m->gen_tokens += (uint64_t)(st->generated > 0 ? st->generated : 0);
    m->drafts += (uint64_t)st->rounds;
    m->draft_tokens += (uint64_t)st->drafted;
    m->accepted_tokens += (uint64_t)st->accepted;
    m->fallbacks += (uint64_t)st->fallbacks;
    int g = r->gamma < TD_SPEC_MAX_GAMMA ? r->gamma : TD_SPEC_MAX_GAMMA;
    if (st->rounds > 0) {
        /* acceptance is a prefix: rounds with >= k+1 accepted = accepted_by_position[k], so the
         * rounds with exactly k accepted are the differences */
        long prev = st->rounds;
        for (int k = 0; k <= g; k++) {
            long ge_next = k < g ? st->accepted_by_position[k] : 0;
            long exactly = prev - ge_next;
            if (exactly > 0) m->acc_len[k < MAX_ACC_LEN ? k : MAX_ACC_LEN - 1] += (uint64_t)exactly;
            prev = ge_next;
        }
        for (int k = 0; k < g && k < MAX_POS; k++)
            m->acc_per_pos[k] += (uint64_t)st->accepted_by_position[k];
    }
    if (ttft >= 0) s_hist_add(&m->ttft, ttft);
    s_hist_add(&m->e2e, e2e);
    s_hist_add(&m->queue, r->queued_s);
    pthread_mutex_unlock(&m->mu);
}

static void s_hist_print(FILE *f, const char *name, const char *help, const hist_t *h) {
    fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < N_TIME_BUCKETS; i++) {
        cum += h->counts[i];
        fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, s_time_buckets[i], (unsigned long long)cum);
    }
    cum += h->counts[N_TIME_BUCKETS];
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
            (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->n);
}

static char *s_metrics_text(server_t *s, size_t *len) {
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f) return NULL;
    int queued = 0, running = 0;
    td_serve_engine_load(s->eng, &queued, &running);
    int64_t rounds = 0, round_sessions = 0;
    int max_batch = 0;
    td_serve_engine_batching(s->eng, &rounds, &round_sessions, &max_batch);
    metrics_t *m = &s->m;
    pthread_mutex_lock(&m->mu);
#define COUNTER(name, help, v)                                                                     \
    fprintf(f, "# HELP " name " " help "\n# TYPE " name " counter\n" name " %llu\n",               \
            (unsigned long long)(v))
#define GAUGE(name, help, v)                                                                       \
    fprintf(f, "# HELP " name " " help "\n# TYPE " name " gauge\n" name " %llu\n",                 \
            (unsigned long long)(v))
    fprintf(f,
            "# HELP tandem:request_success_total Finished generation requests by outcome.\n"
            "# TYPE tandem:request_success_total counter\n"
            "tandem:request_success_total{outcome=\"ok\"} %llu\n"
            "tandem:request_success_total{outcome=\"error\"} %llu\n"
            "tandem:request_success_total{outcome=\"cancelled\"} %llu\n",
            (unsigned long long)m->req_ok, (unsigned long long)m->req_err,
            (unsigned long long)m->req_cancelled);
    fprintf(f,
            "# HELP tandem:http_errors_total HTTP error responses by class.\n"
            "# TYPE tandem:http_errors_total counter\n"
            "tandem:http_errors_total{class=\"4xx\"} %llu\ntandem:http_errors_total{class=\"5xx\"} "
            "%llu\n",
            (unsigned long long)m->http_4xx, (unsigned long long)m->http_5xx);
    COUNTER("tandem:request_rejected_busy_total", "Requests refused because the queue was full.",
            m->rejected_busy);
    COUNTER("tandem:prompt_tokens_total", "Prompt tokens processed.", m->prompt_tokens);
    COUNTER("tandem:generation_tokens_total", "Tokens generated.", m->gen_tokens);
    GAUGE("tandem:num_requests_running", "Requests decoding now.", running);
    GAUGE("tandem:num_requests_waiting", "Requests queued for a slot (queue depth).", queued);
    COUNTER("tandem:engine_rounds_total",
            "Engine rounds: each one verifier forward for every request decoding then.", rounds);
    COUNTER("tandem:engine_round_requests_total",
            "Requests in the engine rounds, summed (divided by the rounds: the mean batch).",
            round_sessions);
    GAUGE("tandem:engine_batch_max", "Most requests verified together in one round.", max_batch);
    COUNTER("tandem:spec_decode_num_drafts_total", "Speculative rounds that got a draft.",
            m->drafts);
    COUNTER("tandem:spec_decode_num_draft_tokens_total", "Draft tokens proposed.", m->draft_tokens);
    COUNTER("tandem:spec_decode_num_accepted_tokens_total", "Draft tokens accepted.",
            m->accepted_tokens);
    COUNTER("tandem:spec_decode_fallbacks_total",
            "Rounds done as plain AR because the drafter failed.", m->fallbacks);
    fprintf(f, "# HELP tandem:spec_decode_num_accepted_tokens_per_pos_total Accepted draft tokens "
               "by draft position.\n# TYPE tandem:spec_decode_num_accepted_tokens_per_pos_total "
               "counter\n");
    int last = 0;
    for (int k = 0; k < MAX_POS; k++)
        if (m->acc_per_pos[k]) last = k + 1;
    for (int k = 0; k < last; k++)
        fprintf(f, "tandem:spec_decode_num_accepted_tokens_per_pos_total{position=\"%d\"} %llu\n",
                k, (unsigned long long)m->acc_per_pos[k]);
    fprintf(f, "# HELP tandem:spec_decode_accepted_length Accepted draft tokens per round (bonus "
               "token not included).\n# TYPE tandem:spec_decode_accepted_length histogram\n");
    uint64_t cum = 0, sum = 0;
    for (int k = 0; k < MAX_ACC_LEN - 1; k++) {
        cum += m->acc_len[k];
        sum += (uint64_t)k * m->acc_len[k];
        fprintf(f, "tandem:spec_decode_accepted_length_bucket{le=\"%d\"} %llu\n", k,
                (unsigned long long)cum);
    }
    cum += m->acc_len[MAX_ACC_LEN - 1];
    sum += (uint64_t)(MAX_ACC_LEN - 1) * m->acc_len[MAX_ACC_LEN - 1];
    fprintf(f,
            "tandem:spec_decode_accepted_length_bucket{le=\"+Inf\"} %llu\n"
            "tandem:spec_decode_accepted_length_sum %llu\n"
            "tandem:spec_decode_accepted_length_count %llu\n",
            (unsigned long long)cum, (unsigned long long)sum, (unsigned long long)cum);
    s_hist_print(f, "tandem:time_to_first_token_seconds", "Time from request to first token.",
                 &m->ttft);
    s_hist_print(f, "tandem:e2e_request_latency_seconds", "Request duration.", &m->e2e);
    s_hist_print(f, "tandem:request_queue_time_seconds", "Time waiting for a slot.", &m->queue);
    pthread_mutex_unlock(&m->mu);
    fclose(f);
    return buf;
}

/* ---- responses ------------------------------------------------------------------------------- */

static void s_common_headers(server_t *s, struct MHD_Response *r, const char *ctype) {
    MHD_add_response_header(r, "Content-Type", ctype);
    if (s->cors) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", s->cors);
        MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
        MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    }
}

static enum MHD_Result s_send(server_t *s, struct MHD_Connection *c, int status, const char *ctype,
                              char *body, size_t len, const char *retry_after) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    s_common_headers(s, r, ctype);
    if (retry_after) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    s_http_status_count(s, status);
    return ret;
}

static enum MHD_Result s_send_json(server_t *s, struct MHD_Connection *c, int status, cJSON *j) {
    char *body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!body) return MHD_NO;
    return s_send(s, c, status, "application/json", body, strlen(body), NULL);
}

static enum MHD_Result s_send_error(server_t *s, struct MHD_Connection *c,
                                    const td_serve_error_t *e, const char *retry_after) {
    char *body = td_serve_error_json(e);
    if (!body) return MHD_NO;
    return s_send(s, c, e->status, "application/json", body, strlen(body), retry_after);
}

static enum MHD_Result s_error(server_t *s, struct MHD_Connection *c, int status, const char *type,
                               const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
static enum MHD_Result s_error(server_t *s, struct MHD_Connection *c, int status, const char *type,
                               const char *code, const char *param, const char *fmt, ...) {
    td_serve_error_t e;
    td_serve_fail(&e, status, type, code, param, "%s", "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    return s_send_error(s, c, &e, status == 503 || status == 429 ? "1" : NULL);
}

/* ---- a generation request ----------------------------------------------------------------------
 */

typedef struct gen {
    server_t *srv;
    td_serve_kind_t kind;
    td_serve_job_t *job;
    td_detok_t *dt;
    td_serve_req_t req;
    char id[64];
    long created;
    double t0;
    /* text so far, and how much of it went out */
    char *text;
    size_t len, cap, emitted;
    int stop_hit, ended;
    /* streaming */
    int sent_role, sent_final, sent_done;
    char *pend;
    size_t pend_len, pend_off;
    int metrics_done;
    int seen;   /* tokens read from the job */
    int n_used; /* of them, up to and including the one completing a stop string */
} gen_t;

static int s_text_append(gen_t *g, const char *p, size_t n) {
    if (g->len + n + 1 > g->cap) {
        size_t nc = g->cap ? g->cap * 2 : 1024;
        while (nc < g->len + n + 1) nc *= 2;
        char *t = realloc(g->text, nc);
        if (!t) return -1;
        g->text = t, g->cap = nc;
    }
    memcpy(g->text + g->len, p, n);
    g->len += n;
    g->text[g->len] = 0;
    return 0;
}

static size_t s_sendable(gen_t *g);

/* Reads tokens (waiting up to timeout_ms) into g->text; sets g->ended when the job is over. */
static void s_pull(gen_t *g, int timeout_ms) {
    int32_t ids[256];
    int done = 0;
    char buf[1024];
    int n = td_serve_job_wait(g->job, &g->seen, ids, 256, timeout_ms, &done);
    for (int i = 0; i < n && !g->stop_hit; i++) {
        int k = td_detok_push(g->dt, ids[i], buf, sizeof buf);
        if (k > 0) s_text_append(g, buf, (size_t)k);
        g->n_used++;
        /* token by token, so that usage counts the tokens up to the stop string however the
         * tokens were batched (the same streamed or not) */
        if (g->req.n_stop && k > 0) s_sendable(g);
    }
    if (done) {
        if (!g->stop_hit) {
            int k = td_detok_flush(g->dt, buf, sizeof buf);
            if (k > 0) s_text_append(g, buf, (size_t)k);
        }
        g->ended = 1;
    }
}

/* How far the text may go out now; cuts the text at a stop string and cancels the job then. */
static size_t s_sendable(gen_t *g) {
    if (g->stop_hit) return g->len;
    int hit = 0;
    size_t ok = td_serve_stop_scan(g->text ? g->text : "", g->len, g->emitted, g->req.stop,
                                   g->req.n_stop, &hit);
    if (hit) {
        g->stop_hit = 1;
        g->len = ok;
        g->text[ok] = 0;
        td_serve_job_cancel(g->job);
        return ok;
    }
    return g->ended ? g->len : ok;
}

static const char *s_finish_reason(const gen_t *g, const td_serve_result_t *r) {
    if (g->stop_hit || r->stats.stop == TD_STOP_EOS) return "stop";
    return r->stats.stop == TD_STOP_LENGTH ? "length" : "stop";
}

static cJSON *s_usage(const gen_t *g, const td_serve_result_t *r) {
    /* ended by a stop string: the tokens up to it (the engine may have made a few more) */
    int n = g->stop_hit ? g->n_used : r->stats.generated;
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", r->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", n);
    cJSON_AddNumberToObject(u, "total_tokens", r->prompt_tokens + n);
    return u;
}

/* {"stats": {...}} as `generate --json` prints it, plus the queue time */
static cJSON *s_tandem_obj(const td_serve_result_t *r) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return cJSON_CreateObject();
    fputc('{', f);
    td_cli_print_stats(f, td_method_name(r->method), &r->stats, r->gamma, r->total_s);
    fputc('}', f);
    fclose(f);
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    if (!j) j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "queue_s", r->queued_s);
    return j;
}

static cJSON *s_obj_head(const gen_t *g, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", g->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)g->created);
    cJSON_AddStringToObject(o, "model", g->srv->model_name);
    return o;
}

/* one streamed chunk: text (may be NULL), finish reason (NULL = null), role (chat first chunk) */
static char *s_chunk(const gen_t *g, const char *text, size_t n, const char *finish, int role) {
    int chat = g->kind == TD_SERVE_CHAT;
    cJSON *o = s_obj_head(g, chat ? "chat.completion.chunk" : "text_completion");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, c);
    cJSON_AddNumberToObject(c, "index", 0);
    char *t = malloc(n + 1);
    if (t) memcpy(t, text ? text : "", n), t[n] = 0;
    if (chat) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role) cJSON_AddStringToObject(d, "role", "assistant");
        if (text || role) cJSON_AddStringToObject(d, "content", t ? t : "");
    } else {
        cJSON_AddStringToObject(c, "text", t ? t : "");
    }
    free(t);
    cJSON_AddNullToObject(c, "logprobs");
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    if (g->req.include_usage) cJSON_AddNullToObject(o, "usage");
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static void s_gen_free(gen_t *g) {
    if (!g) return;
    if (g->job) {
        pthread_mutex_lock(&g->srv->m.mu);
        g->srv->live_gens--;
        pthread_mutex_unlock(&g->srv->m.mu);
        if (!g->ended) {
            /* the client went away mid-stream: the request stops and frees its slot */
            td_serve_job_cancel(g->job);
            pthread_mutex_lock(&g->srv->m.mu);
            g->srv->m.req_cancelled++;
            pthread_mutex_unlock(&g->srv->m.mu);
            g->metrics_done = 1;
        }
        td_serve_job_release(&g->job);
    }
    td_detok_destroy(&g->dt);
    td_serve_req_free(&g->req);
    free(g->text);
    free(g->pend);
    free(g);
}

/* Refuses a request whose tandem.NAME is VALUE, none of CHOICES (400), then frees ids and g (VALUE
 * may live in g). */
static enum MHD_Result s_refuse_choice(server_t *s, struct MHD_Connection *c, gen_t *g,
                                       int32_t *ids, const char *name, const char *value,
                                       const char *choices) {
    char param[32];
    snprintf(param, sizeof param, "tandem.%s", name);
    enum MHD_Result ret = s_error(s, c, 400, "invalid_request_error", NULL, param,
                                  "unknown %s '%.40s' (%s)", name, value, choices);
    free(ids);
    s_gen_free(g);
    return ret;
}

static void s_finish_metrics(gen_t *g) {
    if (g->metrics_done) return;
    g->metrics_done = 1;
    td_serve_result_t r = *td_serve_job_result(g->job);
    if (g->stop_hit) r.cancelled = 0, r.rc = TD_OK; /* ended by its stop string: a success */
    s_metrics_done(g->srv, &r, td_serve_job_ttft(g->job), td_time_now() - g->t0);
}

/* sets g->pend to "data: <json>\n\n" (takes json) */
static void s_pend_event(gen_t *g, char *json) {
    free(g->pend);
    g->pend = NULL;
    g->pend_len = g->pend_off = 0;
    if (!json) return;
    size_t n = strlen(json);
    g->pend = malloc(n + 9);
    if (g->pend) {
        memcpy(g->pend, "data: ", 6);
        memcpy(g->pend + 6, json, n);
        memcpy(g->pend + 6 + n, "\n\n", 2);
        g->pend_len = n + 8;
    }
    free(json);
}

static void s_pend_raw(gen_t *g, const char *s) {
    free(g->pend);
    g->pend_off = 0;
    g->pend_len = strlen(s);
    g->pend = malloc(g->pend_len + 1);
    if (g->pend)
        memcpy(g->pend, s, g->pend_len + 1);
    else
        g->pend_len = 0;
}

static ssize_t s_stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    gen_t *g = cls;
    (void)pos;
    for (;;) {
        if (g->pend_off < g->pend_len) {
            size_t n = g->pend_len - g->pend_off;
            if (n > max) n = max;
            memcpy(buf, g->pend + g->pend_off, n);
            g->pend_off += n;
            return (ssize_t)n;
        }
        if (g->sent_done) return MHD_CONTENT_READER_END_OF_STREAM;
        if (!g->sent_role) {
            g->sent_role = 1;
            if (g->kind == TD_SERVE_CHAT) s_pend_event(g, s_chunk(g, NULL, 0, NULL, 1));
            continue;
        }
        if (!g->ended || g->emitted < g->len) {
            size_t before = g->len;
            int was_ended = g->ended;
            if (!g->ended) s_pull(g, 1000);
            size_t ok = s_sendable(g);
            if (ok > g->emitted) {
                s_pend_event(g, s_chunk(g, g->text + g->emitted, ok - g->emitted, NULL, 0));
                g->emitted = ok;
                continue;
            }
            if (!g->ended && g->len == before && !was_ended) {
                /* nothing for a second: a comment keeps proxies awake and finds gone clients */
                s_pend_raw(g, ": keep-alive\n\n");
            }
            if (!g->ended) continue;
        }
        /* ended: the final chunk, usage, [DONE] */
        const td_serve_result_t *r = td_serve_job_result(g->job);
        char *out = NULL;
        size_t olen = 0;
        FILE *f = open_memstream(&out, &olen);
        if (!f) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (r->rc != TD_OK && !g->stop_hit && !r->cancelled) {
            td_serve_error_t e;
            td_serve_fail(&e, 500, "server_error", NULL, NULL, "generation failed: %s", r->msg);
            char *ej = td_serve_error_json(&e);
            fprintf(f, "data: %s\n\n", ej ? ej : "{}");
            free(ej);
        } else {
            char *fin = s_chunk(g, NULL, 0, s_finish_reason(g, r), 0);
            fprintf(f, "data: %s\n\n", fin ? fin : "{}");
            free(fin);
            if (g->req.include_usage) {
                cJSON *o = s_obj_head(g, g->kind == TD_SERVE_CHAT ? "chat.completion.chunk"
                                                                  : "text_completion");
                cJSON_AddArrayToObject(o, "choices");
                cJSON_AddItemToObject(o, "usage", s_usage(g, r));
                cJSON_AddItemToObject(o, "tandem", s_tandem_obj(r));
                char *u = cJSON_PrintUnformatted(o);
                cJSON_Delete(o);
                fprintf(f, "data: %s\n\n", u ? u : "{}");
                free(u);
            }
        }
        fputs("data: [DONE]\n\n", f);
        fclose(f);
        free(g->pend);
        g->pend = out, g->pend_len = olen, g->pend_off = 0;
        g->sent_final = g->sent_done = 1;
        s_finish_metrics(g);
    }
}

static void s_stream_free(void *cls) { s_gen_free(cls); }

/* the body of a non-streamed answer */
static cJSON *s_full_response(gen_t *g) {
    const td_serve_result_t *r = td_serve_job_result(g->job);
    int chat = g->kind == TD_SERVE_CHAT;
    cJSON *o = s_obj_head(g, chat ? "chat.completion" : "text_completion");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, c);
    cJSON_AddNumberToObject(c, "index", 0);
    if (chat) {
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", g->text ? g->text : "");
    } else {
        cJSON_AddStringToObject(c, "text", g->text ? g->text : "");
    }
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", s_finish_reason(g, r));
    cJSON_AddItemToObject(o, "usage", s_usage(g, r));
    cJSON_AddItemToObject(o, "tandem", s_tandem_obj(r));
    return o;
}

/* Whether the client closed its connection (a non-streamed request's client that gave up). */
static int s_client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static uint64_t s_next_id(void) {
    static uint64_t n;
    return __atomic_add_fetch(&n, 1, __ATOMIC_RELAXED);
}

static enum MHD_Result s_generate(server_t *s, struct MHD_Connection *c, td_serve_kind_t kind,
                                  const char *body, size_t len) {
    td_serve_error_t e;
    gen_t *g = calloc(1, sizeof *g);
    if (!g) return MHD_NO;
    g->srv = s;
    g->kind = kind;
    g->t0 = td_time_now();
    g->created = (long)time(NULL);
    if (td_serve_req_parse(body, len, kind, &g->req, &e)) {
        s_gen_free(g);
        return s_send_error(s, c, &e, NULL);
    }
    td_serve_req_t *q = &g->req;
    /* the prompt, rendered and tokenized */
    td_err_t err = {0};
    char *rendered = NULL;
    int32_t *ids = NULL;
    int n = 0, rc;
    if (kind == TD_SERVE_CHAT) {
        td_chat_msg_t *msgs = calloc((size_t)q->n_msgs, sizeof *msgs);
        if (!msgs) {
            s_gen_free(g);
            return MHD_NO;
        }
        for (int i = 0; i < q->n_msgs; i++)
            msgs[i] = (td_chat_msg_t){q->msgs[i].role, q->msgs[i].content};
        rc = td_chat_format_apply(&s->fmt, msgs, q->n_msgs, 1, &rendered, &err);
        free(msgs);
        if (rc != TD_OK) {
            s_gen_free(g);
            return s_error(s, c, 400, "invalid_request_error", NULL, "messages", "%s", err.msg);
        }
    }
    const char *in = rendered ? rendered : q->prompt;
    pthread_mutex_lock(&s->tok_mu);
    rc = td_tokenizer_encode(s->tok, in, strlen(in),
                             rendered != NULL && s->fmt.kind != TD_CHAT_NONE, &ids, &n, &err);
    pthread_mutex_unlock(&s->tok_mu);
    free(rendered);
    if (rc != TD_OK) {
        s_gen_free(g);
        return s_error(s, c, 400, "invalid_request_error", NULL,
                       kind == TD_SERVE_CHAT ? "messages" : "prompt", "%s", err.msg);
    }
    if (n == 0) {
        free(ids);
        s_gen_free(g);
        return s_error(s, c, 400, "invalid_request_error", NULL, "prompt", "the prompt is empty");
    }
    long max_tokens = q->max_tokens >= 0 ? q->max_tokens : s->def_max_tokens;
    if (s->n_ctx > 0 && (long)n + max_tokens > s->n_ctx) {
        free(ids);
        s_gen_free(g);
        return s_error(s, c, 400, "invalid_request_error", "context_length_exceeded",
                       kind == TD_SERVE_CHAT ? "messages" : "prompt",
                       "this model's context is %d tokens; the prompt has %d and max_tokens asks "
                       "for %ld more",
                       s->n_ctx, n, max_tokens);
    }
    td_serve_gen_t gg = {.prompt = ids,
                         .n_prompt = n,
                         .max_tokens = (int)max_tokens,
                         .sampling = s->def_sp,
                         .method = -1,
                         .order = -1,
                         .verify = -1};
    if (q->temperature >= 0) gg.sampling.temperature = (float)q->temperature;
    if (q->top_p >= 0) gg.sampling.top_p = (float)q->top_p;
    if (q->top_k >= 0) gg.sampling.top_k = (int)q->top_k;
    if (q->has_seed)
        gg.seed = q->seed;
    else if (s->def_seed_set)
        gg.seed = (uint64_t)s->def_seed;
    else
        gg.seed = ((uint64_t)time(NULL) << 20) ^ s_next_id() * 0x9E3779B97F4A7C15ull;
    if (q->method) {
        int m = td_method_parse(q->method);
        if (m < 0 || !td_serve_engine_method_ok(s->eng, (td_method_t)m)) {
            enum MHD_Result ret =
                s_error(s, c, 400, "invalid_request_error", NULL, "tandem.method",
                        "method '%.40s' is not available on this server (it serves ar and %s)",
                        q->method, td_method_name(td_serve_engine_method(s->eng)));
            free(ids);
            s_gen_free(g);
            return ret;
        }
        gg.method = m;
    }
    if (q->gamma > 0) gg.gamma = (int)q->gamma;
    if (q->steps > 0) gg.steps = (int)q->steps;
    if (q->order && (gg.order = td_unmask_order_parse(q->order)) < 0)
        return s_refuse_choice(s, c, g, ids, "order", q->order,
                               "left-to-right, confidence, entropy, margin");
    if (q->verify && (gg.verify = td_verify_parse(q->verify)) < 0)
        return s_refuse_choice(s, c, g, ids, "verify", q->verify, "rejection, match, greedy");
    if (kind == TD_SERVE_CHAT) gg.stop_ids = s->chat_stop, gg.n_stop = s->n_chat_stop;
    rc = td_serve_submit(s->eng, &gg, &g->job, &err);
    free(ids);
    if (rc == TD_OK) {
        pthread_mutex_lock(&s->m.mu);
        s->live_gens++;
        pthread_mutex_unlock(&s->m.mu);
    }
    if (rc != TD_OK) {
        s_gen_free(g);
        if (rc == TD_ERR_UNSUPPORTED) {
            pthread_mutex_lock(&s->m.mu);
            s->m.rejected_busy++;
            pthread_mutex_unlock(&s->m.mu);
            return s_error(s, c, 503, "server_error", "server_busy", NULL, "%s", err.msg);
        }
        return s_error(s, c, 400, "invalid_request_error", NULL, NULL, "%s", err.msg);
    }
    snprintf(g->id, sizeof g->id, "%s-%llx%06llx", kind == TD_SERVE_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)g->created, (unsigned long long)(s_next_id() & 0xffffff));
    g->dt = td_detok_new(s->tok, 1);
    if (!g->dt) {
        s_gen_free(g);
        return MHD_NO;
    }
    if (q->stream) {
        struct MHD_Response *r = MHD_create_response_from_callback(
            MHD_SIZE_UNKNOWN, 4096, s_stream_reader, g, s_stream_free);
        if (!r) {
            s_gen_free(g);
            return MHD_NO;
        }
        s_common_headers(s, r, "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    while (!g->ended) {
        s_pull(g, 1000);
        s_sendable(g);
        if (!g->ended && !g->stop_hit && s_client_gone(c)) {
            /* nobody to answer: stop the generation and free the slot */
            td_serve_job_cancel(g->job);
            enum MHD_Result ret = MHD_NO;
            s_gen_free(g); /* counts it as cancelled */
            return ret;
        }
    }
    const td_serve_result_t *r = td_serve_job_result(g->job);
    enum MHD_Result ret;
    s_finish_metrics(g);
    if (r->rc != TD_OK && !g->stop_hit && !r->cancelled)
        ret = s_error(s, c, s->draining ? 503 : 500, "server_error", NULL, NULL,
                      "generation failed: %s", r->msg);
    else
        ret = s_send_json(s, c, 200, s_full_response(g));
    s_gen_free(g);
    return ret;
}

/* ---- HTTP dispatch ------------------------------------------------------------------------------
 */

typedef struct conn {
    char *body;
    size_t len, cap;
    int too_big, started;
} conn_t;

static void s_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                        enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    conn_t *k = *con_cls;
    if (k) free(k->body), free(k);
    *con_cls = NULL;
}

static enum MHD_Result s_models(server_t *s, struct MHD_Connection *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *d = cJSON_AddArrayToObject(o, "data"), *m = cJSON_CreateObject();
    cJSON_AddItemToArray(d, m);
    cJSON_AddStringToObject(m, "id", s->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->created);
    cJSON_AddStringToObject(m, "owned_by", "tandem");
    cJSON *t = cJSON_AddObjectToObject(m, "tandem");
    cJSON_AddStringToObject(t, "method", td_method_name(td_serve_engine_method(s->eng)));
    cJSON_AddNumberToObject(t, "context_length", s->n_ctx);
    return s_send_json(s, c, 200, o);
}

static enum MHD_Result s_handler(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls) {
    (void)version;
    server_t *s = cls;
    conn_t *k = *con_cls;
    int is_post = !strcmp(method, "POST"),
        is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    int chat = !strcmp(url, "/v1/chat/completions"), cmpl = !strcmp(url, "/v1/completions");
    if (!k) {
        if (!(k = calloc(1, sizeof *k))) return MHD_NO;
        *con_cls = k;
        if (!strcmp(method, "OPTIONS") && s->cors) {
            char *e = malloc(1);
            return e ? (*e = 0, s_send(s, c, 204, "text/plain", e, 0, NULL)) : MHD_NO;
        }
        if (strcmp(url, "/health") != 0 && s->api_key) {
            const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
            const char *key = a && !strncasecmp(a, "Bearer ", 7) ? a + 7 : NULL;
            if (!td_serve_key_equal(key, s->api_key))
                return s_error(s, c, 401, "authentication_error", "invalid_api_key", NULL, "%s",
                               key ? "incorrect API key provided"
                                   : "missing API key (Authorization: Bearer KEY)");
        }
        if ((chat || cmpl) && !is_post)
            return s_error(s, c, 405, "invalid_request_error", NULL, NULL, "%s needs POST", url);
        if (!(chat || cmpl) && !is_get) {
            int known =
                !strcmp(url, "/health") || !strcmp(url, "/metrics") || !strcmp(url, "/v1/models");
            return s_error(s, c, known ? 405 : 404, "invalid_request_error", NULL, NULL,
                           known ? "%s needs GET" : "unknown path %s", url);
        }
        if (is_post) {
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
            if (cl && strtoull(cl, NULL, 10) > s->max_body)
                return s_error(s, c, 413, "invalid_request_error", "request_too_large", NULL,
                               "the request body is over the %zu-byte limit", s->max_body);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!k->too_big) {
            if (k->len + *upload_size > s->max_body) {
                k->too_big = 1;
            } else {
                if (k->len + *upload_size + 1 > k->cap) {
                    size_t nc = k->cap ? k->cap : 4096;
                    while (nc < k->len + *upload_size + 1) nc *= 2;
                    char *nb = realloc(k->body, nc);
                    if (!nb) return MHD_NO;
                    k->body = nb, k->cap = nc;
                }
                memcpy(k->body + k->len, upload, *upload_size);
                k->len += *upload_size;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (k->started) return MHD_YES;
    k->started = 1;
    if (k->too_big)
        return s_error(s, c, 413, "invalid_request_error", "request_too_large", NULL,
                       "the request body is over the %zu-byte limit", s->max_body);
    if (chat || cmpl) {
        if (s->draining)
            return s_error(s, c, 503, "server_error", "shutting_down", NULL,
                           "the server is shutting down");
        return s_generate(s, c, chat ? TD_SERVE_CHAT : TD_SERVE_COMPLETION, k->body, k->len);
    }
    if (!strcmp(url, "/health")) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", s->draining ? "shutting_down" : "ok");
        return s_send_json(s, c, s->draining ? 503 : 200, o);
    }
    if (!strcmp(url, "/v1/models")) return s_models(s, c);
    if (!strcmp(url, "/metrics")) {
        size_t len = 0;
        char *t = s_metrics_text(s, &len);
        if (!t) return MHD_NO;
        return s_send(s, c, 200, "text/plain; version=0.0.4", t, len, NULL);
    }
    return s_error(s, c, 404, "invalid_request_error", NULL, NULL, "unknown path %s", url);
}

/* ---- the command ---------------------------------------------------------------------------- */

static void s_help(FILE *f) {
    fprintf(f,
            "usage: tandem serve [--verifier DIR] [--drafter DIR|ENDPOINT] [--method M] [--host "
            "H] [--port P]\n"
            "                    [--parallel N] [--api-key KEY | --api-key-file F] [options]\n\n"
            "An OpenAI-compatible HTTP server: POST /v1/chat/completions, POST /v1/completions\n"
            "(\"stream\": true for server-sent events), GET /v1/models, /health, /metrics.\n"
            "With no model arguments the bundled models and --method specdiff are served.\n\n"
            "  --verifier DIR     the causal model (--model: synonym)\n"
            "  --drafter X        drafter directory (in-process) or endpoint of a tandem-drafter\n"
            "  --method M         ar, spec-ar, specdiff (default with a drafter), apd or dflash\n"
            "                     (default with a DFlash drafter directory); a request may\n"
            "                     pick ar or a method sharing the drafter in its \"tandem\" "
            "object\n"
            "  --host H           address to bind (default 127.0.0.1; any other needs an API "
            "key)\n"
            "  --port P           port (default 8080; 0 = any free port, printed at start)\n"
            "  --parallel N       requests decoded at once (default 4), each in its own KV slot,\n"
            "                     all verified together (one forward per round)\n"
            "  --queue N          requests waiting for a slot at most (default 64); more get 503\n"
            "  --api-key KEY      require \"Authorization: Bearer KEY\" (--api-key-file F: read "
            "it)\n"
            "  --cors ORIGIN      send Access-Control-Allow-Origin: ORIGIN (default: no CORS)\n"
            "  --max-body N       request body limit in bytes (default 1048576; more: 413)\n"
            "  --served-model-name NAME  the model id in answers (default: the verifier's "
            "directory)\n"
            "  --shutdown-grace S on SIGINT/SIGTERM, seconds running requests get to finish "
            "(default 30)\n"
            "defaults for requests (as `tandem generate`):\n"
            "  --max-tokens N --temperature X --top-k K --top-p P --seed S --gamma N --steps T\n"
            "  --order O --verify V --dist-top-k K --mixture R --kv-window W --timeout-ms N\n"
            "  --threads N (per model; default cores - 1, halved with an in-process drafter) "
            "--device N --drafter-device N\n"
            "  --spin-us N --curve-server-key F --curve-key F\n");
}

static int s_is_loopback(const char *host) {
    return !strcmp(host, "127.0.0.1") || !strcmp(host, "::1") || !strcmp(host, "localhost") ||
           !strncmp(host, "127.", 4);
}

int td_cmd_serve(int argc, char **argv) {
    const char *vdir = NULL, *drafter = NULL, *method_s = NULL, *host = "127.0.0.1",
               *api_key = NULL, *api_key_file = NULL, *cors = NULL, *order_s = NULL,
               *verify_s = NULL, *ckey = NULL, *cserver = NULL, *served_name = NULL;
    long port = 8080, parallel = 4, queue = 64, max_body = 1 << 20, max_tokens = 128, seed = -1,
         threads = 0, top_k = -1, gamma = -1, steps = -1, dist_k = -1, kvw = -1, timeout = -1,
         device = -1, ddevice = -1, spin_us = -1;
    double temperature = -1, top_p = -1, mixture = -1, grace = 30;
    const td_opt_spec_t spec[] = {
        {"verifier", TD_OPT_STR, &vdir, 0, 0},
        {"model", TD_OPT_STR, &vdir, 0, 0},
        {"drafter", TD_OPT_STR, &drafter, 0, 0},
        {"method", TD_OPT_STR, &method_s, 0, 0},
        {"host", TD_OPT_STR, &host, 0, 0},
        {"api-key", TD_OPT_STR, &api_key, 0, 0},
        {"api-key-file", TD_OPT_STR, &api_key_file, 0, 0},
        {"cors", TD_OPT_STR, &cors, 0, 0},
        {"order", TD_OPT_STR, &order_s, 0, 0},
        {"verify", TD_OPT_STR, &verify_s, 0, 0},
        {"curve-key", TD_OPT_STR, &ckey, 0, 0},
        {"curve-server-key", TD_OPT_STR, &cserver, 0, 0},
        {"served-model-name", TD_OPT_STR, &served_name, 0, 0},
        {"port", TD_OPT_INT, &port, 0, 65535},
        {"parallel", TD_OPT_INT, &parallel, 1, 256},
        {"queue", TD_OPT_INT, &queue, 0, 1 << 20},
        {"max-body", TD_OPT_INT, &max_body, 64, 1L << 30},
        {"max-tokens", TD_OPT_INT, &max_tokens, 0, 1 << 20},
        {"seed", TD_OPT_INT, &seed, 0, 0x7fffffffL},
        {"threads", TD_OPT_INT, &threads, 0, 1024},
        {"top-k", TD_OPT_INT, &top_k, 0, 1 << 24},
        {"gamma", TD_OPT_INT, &gamma, 1, TD_SPEC_MAX_GAMMA},
        {"steps", TD_OPT_INT, &steps, 1, 1024},
        {"dist-top-k", TD_OPT_INT, &dist_k, 1, 1024},
        {"kv-window", TD_OPT_INT, &kvw, 0, 1 << 20},
        {"timeout-ms", TD_OPT_INT, &timeout, 1, 3600000},
        {"device", TD_OPT_INT, &device, -1, 64},
        {"drafter-device", TD_OPT_INT, &ddevice, -1, 64},
        {"spin-us", TD_OPT_INT, &spin_us, 0, 1000000},
        {"temperature", TD_OPT_FLT, &temperature, 0, 100},
        {"top-p", TD_OPT_FLT, &top_p, 1e-9, 1},
        {"mixture", TD_OPT_FLT, &mixture, 0, 1},
        {"shutdown-grace", TD_OPT_FLT, &grace, 0, 3600},
    };
    int pr = td_opts_parse(argc, argv, spec, (int)(sizeof spec / sizeof spec[0]));
    if (pr == 1) {
        s_help(stdout);
        return 0;
    }
    if (pr) return 2;
    int method;
    if (method_s) {
        if ((method = td_method_parse(method_s)) < 0 ||
            (method != TD_METHOD_AR && method != TD_METHOD_SPEC_AR &&
             method != TD_METHOD_SPECDIFF && method != TD_METHOD_APD &&
             method != TD_METHOD_DFLASH)) {
            fprintf(stderr,
                    "tandem serve: --method is ar, spec-ar, specdiff, apd or dflash (got '%s')\n",
                    method_s);
            return 2;
        }
    } else {
        method = drafter && td_is_dflash_dir(drafter) ? TD_METHOD_DFLASH
                 : (drafter || !vdir)                 ? TD_METHOD_SPECDIFF
                                                      : TD_METHOD_AR;
    }
    if (method == TD_METHOD_DFLASH && !drafter) {
        fprintf(stderr, "tandem serve: --method dflash needs --drafter DIR (a DFlash drafter "
                        "trained for the verifier) or the endpoint of one\n");
        return 2;
    }
    int order = order_s ? td_unmask_order_parse(order_s) : -1,
        verify = verify_s ? td_verify_parse(verify_s) : -1;
    if ((order_s && order < 0) || (verify_s && verify < 0)) {
        fprintf(stderr, "tandem serve: unknown %s\n",
                order_s && order < 0 ? "--order" : "--verify");
        return 2;
    }
    char keybuf[512];
    if (api_key_file) {
        size_t kl = 0;
        char *kt = td_cli_read_text(api_key_file, &kl);
        if (!kt) return 1;
        while (kl && (kt[kl - 1] == '\n' || kt[kl - 1] == '\r' || kt[kl - 1] == ' ')) kt[--kl] = 0;
        snprintf(keybuf, sizeof keybuf, "%s", kt);
        free(kt);
        api_key = keybuf;
    }
    if (api_key && !*api_key) {
        fprintf(stderr, "tandem serve: the API key is empty\n");
        return 2;
    }
    if (!s_is_loopback(host) && !api_key) {
        fprintf(stderr,
                "tandem serve: binding %s (not a loopback address) needs --api-key or "
                "--api-key-file\n",
                host);
        return 2;
    }
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    int v6 = 0;
    const char *bind_host = !strcmp(host, "localhost") ? "127.0.0.1" : host;
    if (inet_pton(AF_INET, bind_host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, bind_host, &a6.sin6_addr) == 1) {
        v6 = 1;
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)port);
    } else {
        fprintf(stderr, "tandem serve: --host must be a numeric IPv4 or IPv6 address (got '%s')\n",
                host);
        return 2;
    }
    char vbuf[1024], dbuf[1024];
    if (!vdir) vdir = td_cli_bundled("tiny-verifier", vbuf, sizeof vbuf);
    if (method != TD_METHOD_AR && !drafter)
        drafter = td_cli_bundled(method == TD_METHOD_SPEC_AR ? "tiny-ar-drafter"
                                                             : "tiny-diffusion-drafter",
                                 dbuf, sizeof dbuf);
    if (td_is_endpoint(vdir)) {
        fprintf(stderr, "tandem serve: --verifier must be a checkpoint directory\n");
        return 2;
    }

    /* signals: handled by sigwait in this thread; every thread started below inherits the mask */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    static server_t srv; /* static: MHD threads see it until MHD_stop_daemon returns */
    server_t *s = &srv;
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->tok_mu, NULL);
    pthread_mutex_init(&s->m.mu, NULL);
    td_err_t err = {0};
    td_serve_engine_opts_t eo = {.verifier = vdir,
                                 .drafter = method == TD_METHOD_AR ? NULL : drafter,
                                 .method = (td_method_t)method,
                                 .parallel = (int)parallel,
                                 .queue_cap = (int)queue,
                                 .threads = (int)threads,
                                 .device = (int)device,
                                 .drafter_device = (int)ddevice,
                                 .timeout_ms = (int)timeout,
                                 .spin_us = spin_us >= 0 ? (int)spin_us : -1,
                                 .curve_server_key = cserver,
                                 .curve_secret_key = ckey,
                                 .gamma = (int)gamma,
                                 .steps = (int)steps,
                                 .order = order,
                                 .verify = verify,
                                 .dist_top_k = (int)dist_k,
                                 .kv_window = (int)kvw,
                                 .mixture = mixture};
    if (eo.spin_us == 0) eo.spin_us = -1;
    fprintf(stderr, "tandem serve: loading %s%s%s (%s), %ld KV slot(s)...\n", vdir,
            eo.drafter ? " + " : "", eo.drafter ? eo.drafter : "", td_method_name(eo.method),
            parallel);
    s->eng = td_serve_engine_new(&eo, &err);
    if (!s->eng) {
        fprintf(stderr, "tandem serve: %s\n", err.msg);
        return 1;
    }
    s->tok = td_serve_engine_tokenizer(s->eng);
    s->n_ctx = td_serve_engine_n_ctx(s->eng);
    s->api_key = api_key;
    s->cors = cors;
    s->max_body = (size_t)max_body;
    s->def_max_tokens = max_tokens;
    s->def_seed = seed;
    s->def_seed_set = seed >= 0;
    s->created = time(NULL);
    /* sampling defaults: the options, else the checkpoint's generation_config, else OpenAI's
     * (temperature 1, top_p 1) */
    s->def_sp = (td_sampling_t){.temperature = 1.0f, .top_k = 0, .top_p = 1.0f};
    td_serve_engine_gen_defaults(s->eng, &s->def_sp);
    if (temperature >= 0) s->def_sp.temperature = (float)temperature;
    if (top_k >= 0) s->def_sp.top_k = (int)top_k;
    if (top_p >= 0) s->def_sp.top_p = (float)top_p;
    if (td_chat_format_detect(vdir, &s->fmt, &err) != TD_OK) {
        fprintf(stderr, "tandem serve: %s\n", err.msg);
        td_serve_engine_destroy(&s->eng, 0);
        return 1;
    }
    if (s->fmt.kind != TD_CHAT_NONE) {
        const char *ends[] = {"<|im_end|>", "<|eot_id|>", "<|endoftext|>"};
        for (int i = 0; i < 3; i++) {
            int32_t id = td_tokenizer_token_id(s->tok, ends[i]);
            if (id >= 0) s->chat_stop[s->n_chat_stop++] = id;
        }
    }
    if (served_name) {
        snprintf(s->model_name, sizeof s->model_name, "%s", served_name);
    } else {
        char tmp[1024];
        snprintf(tmp, sizeof tmp, "%s", vdir);
        size_t tl = strlen(tmp);
        while (tl > 1 && tmp[tl - 1] == '/') tmp[--tl] = 0;
        const char *b = strrchr(tmp, '/');
        snprintf(s->model_name, sizeof s->model_name, "%.255s", b ? b + 1 : tmp);
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_ERROR_LOG | MHD_USE_ITC | (v6 ? MHD_USE_IPv6 : 0);
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, s_handler, s, MHD_OPTION_SOCK_ADDR,
        v6 ? (struct sockaddr *)&a6 : (struct sockaddr *)&a4, MHD_OPTION_NOTIFY_COMPLETED,
        s_completed, s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)(parallel + queue + 64),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "tandem serve: cannot listen on %s:%ld (in use?)\n", host, port);
        td_serve_engine_destroy(&s->eng, 0);
        return 1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    int bound = di ? di->port : (int)port;
    printf("tandem serve: listening on http://%s%s%s:%d (model %s, method %s, %ld slot(s))\n",
           v6 ? "[" : "", host, v6 ? "]" : "", bound, s->model_name, td_method_name(eo.method),
           parallel);
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "tandem serve: %s: shutting down (running requests get %.0f s)\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", grace);
    s->draining = 1;
    MHD_socket lfd = MHD_quiesce_daemon(d); /* no new connections; the socket is ours now */
    if (lfd != MHD_INVALID_SOCKET) close(lfd);
    double t_stop = td_time_now();
    td_serve_engine_stop(s->eng, grace);
    /* every job has ended now; their answers may still be on their way to the clients (a stream's
     * last chunks, [DONE]): MHD_stop_daemon would cut them, so wait (within the grace) until MHD
     * has taken every answer whole */
    for (;;) {
        pthread_mutex_lock(&s->m.mu);
        int live = s->live_gens;
        pthread_mutex_unlock(&s->m.mu);
        if (live <= 0 || td_time_now() - t_stop > grace + 1) break;
        usleep(10000);
    }
    MHD_stop_daemon(d); /* waits for the connection threads */
    td_serve_engine_destroy(&s->eng, 0);
    fprintf(stderr, "tandem serve: stopped\n");
    return 0;
}
