/* link.c - a drafter link routing answers by session (see link.h). */
#include "verifier/link.h"

#include <stdlib.h>
#include <string.h>

/* Kept messages beyond this many are dropped oldest first (a peer flooding us). */
#define TD_LINK_MAX_KEPT 4096

struct td_link {
    td_client_t *dc;
    const td_hello_t *hello;
    td_msg_t **kept; /* in arrival order */
    int n_kept, cap_kept;
};

td_link_t *td_link_new(td_client_t *dc, const td_hello_t *hello, td_err_t *err) {
    td_link_t *l = calloc(1, sizeof *l);
    if (!l) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    l->dc = dc;
    l->hello = hello;
    return l;
}

void td_link_destroy(td_link_t **self_p) {
    if (!self_p || !*self_p) return;
    td_link_t *l = *self_p;
    for (int i = 0; i < l->n_kept; i++) td_msg_free(&l->kept[i]);
    free(l->kept);
    free(l);
    *self_p = NULL;
}

td_client_t *td_link_client(const td_link_t *l) { return l->dc; }
const td_hello_t *td_link_hello(const td_link_t *l) { return l->hello; }
int td_link_kept(const td_link_t *l) { return l->n_kept; }

int td_link_send(td_link_t *l, const td_msg_t *m, td_err_t *err) {
    return td_client_send(l->dc, m, err);
}

static void s_remove(td_link_t *l, int i) {
    memmove(l->kept + i, l->kept + i + 1, (size_t)(l->n_kept - i - 1) * sizeof *l->kept);
    l->n_kept--;
}

static void s_keep(td_link_t *l, td_msg_t *env) {
    if (l->n_kept == TD_LINK_MAX_KEPT) {
        td_log(TD_LOG_WARN, "drafter link: %d messages kept for idle sessions; dropping the oldest",
               TD_LINK_MAX_KEPT);
        td_msg_free(&l->kept[0]);
        s_remove(l, 0);
    }
    if (l->n_kept == l->cap_kept) {
        int cap = l->cap_kept ? 2 * l->cap_kept : 16;
        td_msg_t **k = realloc(l->kept, (size_t)cap * sizeof *k);
        if (!k) { /* cannot keep it: lose this one message (the session will time out) */
            td_msg_free(&env);
            return;
        }
        l->kept = k, l->cap_kept = cap;
    }
    l->kept[l->n_kept++] = env;
}

/* 1: env is the answer; 0: it belongs to the asking session but is stale (drop); -1: another
 * session's (keep). */
static int s_match(const td_msg_t *env, uint64_t session, uint64_t round, int want) {
    if (env->session_id != session) return -1;
    if (env->round == round && ((int)env->body == want || env->body == TD_BODY_ERROR)) return 1;
    return 0;
}

int td_link_wait(td_link_t *l, uint64_t session, uint64_t round, int want, int timeout_ms,
                 td_msg_t **out, td_err_t *err) {
    *out = NULL;
    for (int i = 0; i < l->n_kept; i++) {
        int m = s_match(l->kept[i], session, round, want);
        if (m < 0) continue;
        td_msg_t *env = l->kept[i];
        s_remove(l, i--);
        if (m == 1) {
            *out = env;
            return TD_OK;
        }
        td_msg_free(&env);
    }
    double deadline = td_time_now() + timeout_ms / 1e3;
    for (;;) {
        int left = (int)((deadline - td_time_now()) * 1e3);
        if (left <= 0) {
            td_err_set(err, TD_ERR_IO, "drafter did not answer within %d ms", timeout_ms);
            return TD_LINK_TIMEOUT;
        }
        td_msg_t *env = NULL;
        td_err_t e = {0};
        int rc = td_client_recv(l->dc, &env, left, &e);
        if (rc == TD_RECV_TIMEOUT) continue;
        if (rc == TD_RECV_MALFORMED) {
            td_err_set(err, TD_ERR_FORMAT, "drafter sent a malformed message: %.200s", e.msg);
            return TD_LINK_MALFORMED;
        }
        if (env->body == TD_BODY_HEARTBEAT) {
            td_msg_free(&env);
            continue;
        }
        int m = s_match(env, session, round, want);
        if (m == 1) {
            *out = env;
            return TD_OK;
        }
        if (m < 0 && env->session_id != 0)
            s_keep(l, env);
        else
            td_msg_free(&env); /* a late answer to an abandoned round of ours */
    }
}

void td_link_forget(td_link_t *l, uint64_t session) {
    for (int i = 0; i < l->n_kept; i++)
        if (l->kept[i]->session_id == session) {
            td_msg_free(&l->kept[i]);
            s_remove(l, i--);
        }
}
