/* transport.c - ZeroMQ ROUTER/DEALER links carrying tandem envelopes, CURVE keys and the ZAP
 * handler that checks client keys (see transport.h, docs/protocol.md). */
#include "protocol/transport.h"
#include "protocol/transport_wire.h"

#include <zmq.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_DEFAULT_SEND_TIMEOUT_MS 5000
#define S_ZAP_ENDPOINT "inproc://zeromq.zap.01"

struct td_server {
    void *sock;
    char endpoint[512];
    td_wire_limits_t limits;
    char zap_domain[32]; /* "" when the server has no CURVE */
    int spin_us;
};

struct td_client {
    void *sock;
    char endpoint[512];
    td_wire_limits_t limits;
    int spin_us;
};

/* ---------------------------------------------------------------------------------------------
 * Shared context */

static pthread_once_t s_ctx_once = PTHREAD_ONCE_INIT;
static void *s_ctx;
static void s_ctx_make(void) { s_ctx = zmq_ctx_new(); }

void *td_transport_context_shared(void) {
    pthread_once(&s_ctx_once, s_ctx_make);
    return s_ctx;
}

/* ---------------------------------------------------------------------------------------------
 * Endpoints */

/* Host part of a tcp endpoint into host (without brackets); 0 on success. */
static int s_tcp_host(const char *endpoint, char *host, size_t cap, int *ipv6) {
    const char *h = endpoint + 6; /* after "tcp://" */
    const char *semi = strchr(h, ';');
    if (semi) h = semi + 1; /* "tcp://source;dest" (connect): the destination matters */
    *ipv6 = 0;
    const char *end;
    if (*h == '[') {
        end = strchr(h, ']');
        if (!end || end[1] != ':') return -1;
        h++;
        *ipv6 = 1;
    } else {
        end = strrchr(h, ':');
        if (!end) return -1;
    }
    size_t n = (size_t)(end - h);
    if (n == 0 || n >= cap) return -1;
    memcpy(host, h, n);
    host[n] = 0;
    return 0;
}

static int s_is_loopback_host(const char *host) {
    if (!strcmp(host, "localhost") || !strcmp(host, "::1")) return 1;
    unsigned a, b, c, d;
    char tail;
    if (sscanf(host, "%u.%u.%u.%u%c", &a, &b, &c, &d, &tail) == 4 && a == 127 && b < 256 &&
        c < 256 && d < 256)
        return 1;
    return 0;
}

int td_endpoint_is_local(const char *endpoint) {
    if (!endpoint) return 0;
    if (!strncmp(endpoint, "ipc://", 6) || !strncmp(endpoint, "inproc://", 9)) return 1;
    if (strncmp(endpoint, "tcp://", 6)) return 0;
    char host[256];
    int v6;
    if (s_tcp_host(endpoint, host, sizeof host, &v6)) return 0;
    return s_is_loopback_host(host);
}

static int s_check_transport(const char *endpoint, td_err_t *err) {
    if (!endpoint || !*endpoint) return td_err_set(err, TD_ERR_ARG, "no endpoint given");
    if (strlen(endpoint) >= 500) return td_err_set(err, TD_ERR_ARG, "endpoint is too long");
    if (strncmp(endpoint, "tcp://", 6) && strncmp(endpoint, "ipc://", 6) &&
        strncmp(endpoint, "inproc://", 9))
        return td_err_set(err, TD_ERR_ARG,
                          "endpoint '%s': tandem speaks tcp://HOST:PORT, ipc://PATH or "
                          "inproc://NAME",
                          endpoint);
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Sockets */

static int s_zmq_fail(td_err_t *err, int code, const char *what, const char *endpoint) {
    int e = zmq_errno();
    return td_err_set(err, code, "%s %s: %s", what, endpoint ? endpoint : "", zmq_strerror(e));
}

static int s_setopt_int(void *sock, int opt, int v, td_err_t *err, const char *name) {
    if (zmq_setsockopt(sock, opt, &v, sizeof v))
        return td_err_set(err, TD_ERR, "zmq_setsockopt(%s): %s", name, zmq_strerror(zmq_errno()));
    return TD_OK;
}

/* Options common to both ends. */
static int s_socket_common(void *sock, const td_transport_opts_t *o, const td_wire_limits_t *lim,
                           int ipv6, td_err_t *err) {
    int snd = o->send_timeout_ms ? o->send_timeout_ms : S_DEFAULT_SEND_TIMEOUT_MS;
    if (snd < -1) snd = -1;
    int rc = s_setopt_int(sock, ZMQ_LINGER, 0, err, "ZMQ_LINGER");
    if (!rc) rc = s_setopt_int(sock, ZMQ_SNDTIMEO, snd, err, "ZMQ_SNDTIMEO");
    if (!rc && ipv6) rc = s_setopt_int(sock, ZMQ_IPV6, 1, err, "ZMQ_IPV6");
    if (!rc && o->heartbeat_ivl_ms > 0) {
        rc = s_setopt_int(sock, ZMQ_HEARTBEAT_IVL, o->heartbeat_ivl_ms, err, "ZMQ_HEARTBEAT_IVL");
        if (!rc)
            rc = s_setopt_int(sock, ZMQ_HEARTBEAT_TIMEOUT, 3 * o->heartbeat_ivl_ms, err,
                              "ZMQ_HEARTBEAT_TIMEOUT");
    }
    if (!rc) {
        /* Messages up to twice the limit are received and answered with an error; bigger ones
         * make libzmq drop the connection before buffering them. */
        int64_t max = (int64_t)lim->max_message * 2 + 4096;
        if (zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max, sizeof max))
            rc = td_err_set(err, TD_ERR, "zmq_setsockopt(ZMQ_MAXMSGSIZE): %s",
                            zmq_strerror(zmq_errno()));
    }
    return rc;
}

static td_wire_limits_t s_limits(const td_wire_limits_t *lim) {
    td_wire_limits_t l = *lim;
    if (!l.max_message) l.max_message = TD_WIRE_MAX_MESSAGE_DEFAULT;
    if (!l.max_tokens) l.max_tokens = TD_WIRE_MAX_TOKENS_DEFAULT;
    return l;
}

/* Packs env (validated) into msg. */
static int s_pack_msg(const Tandem__Envelope *env, zmq_msg_t *msg, td_err_t *err) {
    int rc = td_wire_validate(env, NULL, err);
    if (rc) return td_err_prefix(err, "refusing to send");
    size_t n = td_wire_packed_size(env);
    if (n > TD_WIRE_MAX_MESSAGE_DEFAULT)
        return td_err_set(err, TD_ERR_FORMAT, "refusing to send %zu bytes (limit %u)", n,
                          TD_WIRE_MAX_MESSAGE_DEFAULT);
    if (zmq_msg_init_size(msg, n))
        return td_err_set(err, TD_ERR_NOMEM, "zmq_msg_init_size(%zu) failed", n);
    tandem__envelope__pack(env, zmq_msg_data(msg));
    return TD_OK;
}

/* Drops the remaining frames of a multipart message. Returns how many there were. */
static int s_drain(void *sock) {
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            break;
        }
        n++;
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    return n;
}

/* Waits for POLLIN; 1 ready, 0 timeout or interrupted. With spin_us > 0 it first polls without
 * sleeping for up to spin_us (bounded by the timeout): a thread that sleeps in poll takes tens to
 * hundreds of microseconds to be woken (more on a virtual machine), per message. */
static int s_wait(void *sock, int timeout_ms, int spin_us) {
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (spin_us > 0) {
        if (timeout_ms >= 0 && spin_us > timeout_ms * 1000) spin_us = timeout_ms * 1000;
        const double t_end = td_time_now() + spin_us * 1e-6;
        do {
            if (zmq_poll(&it, 1, 0) > 0 && (it.revents & ZMQ_POLLIN)) return 1;
            sched_yield(); /* a thread that is ready to run on this core gets it */
        } while (td_time_now() < t_end);
        if (timeout_ms > 0) timeout_ms -= spin_us / 1000;
    }
    int rc = zmq_poll(&it, 1, timeout_ms < 0 ? -1 : timeout_ms);
    return rc > 0 && (it.revents & ZMQ_POLLIN);
}

/* Receives and decodes one payload frame (more frames = malformed). 0 / -1 / -2. */
static int s_recv_payload(void *sock, const td_wire_limits_t *lim, Tandem__Envelope **out,
                          td_err_t *err) {
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return TD_RECV_TIMEOUT;
    }
    if (zmq_msg_more(&m)) {
        int extra = s_drain(sock);
        zmq_msg_close(&m);
        td_err_set(err, TD_ERR_FORMAT, "message of %d frames, expected one envelope frame",
                   extra + 1);
        return TD_RECV_MALFORMED;
    }
    int rc = td_wire_unpack(zmq_msg_data(&m), zmq_msg_size(&m), lim, out, err);
    zmq_msg_close(&m);
    return rc == TD_OK ? TD_RECV_OK : TD_RECV_MALFORMED;
}

/* ---------------------------------------------------------------------------------------------
 * CURVE keys */

static int s_z85_ok(const char *s) {
    if (strlen(s) != 40) return 0;
    uint8_t bin[32];
    return zmq_z85_decode(bin, s) != NULL;
}

/* Classifies one line of a key or allow file: 1 = a key (the first word, 40 Z85 characters;
 * the rest of the line is a comment) copied to z85, 0 = blank or a '#' comment, -1 = neither.
 * Z85 uses '#' too, so a key is recognised before a comment. */
static int s_key_line(char *line, char *z85) {
    char *s = line;
    while (isspace((unsigned char)*s)) s++;
    size_t n = 0;
    while (s[n] && !isspace((unsigned char)s[n])) n++;
    if (!n) return 0;
    if (n == 40) {
        char word[41];
        memcpy(word, s, 40);
        word[40] = 0;
        if (s_z85_ok(word)) {
            memcpy(z85, word, 41);
            return 1;
        }
    }
    if (*s == '#') return 0;
    s[n] = 0;
    memmove(line, s, n + 1);
    return -1;
}

int td_curve_key_read(const char *path, char *z85, td_err_t *err) {
    FILE *f = fopen(path, "r");
    if (!f) return td_err_set(err, TD_ERR_IO, "cannot open key file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077) && strlen(path) > 4 &&
        !strcmp(path + strlen(path) - 4, ".key"))
        td_log(TD_LOG_WARN, "secret key file %s is readable by group or others (chmod 600 it)",
               path);
    char line[512];
    int rc = td_err_set(err, TD_ERR_FORMAT, "key file %s holds no key", path);
    while (fgets(line, sizeof line, f)) {
        int k = s_key_line(line, z85);
        if (k == 0) continue;
        if (k > 0)
            rc = TD_OK;
        else
            rc = td_err_set(err, TD_ERR_FORMAT,
                            "key file %s: '%.50s' is not a 40-character Z85 CURVE key", path, line);
        break;
    }
    fclose(f);
    return rc;
}

static int s_write_key(const char *path, const char *comment, const char *z85, mode_t mode,
                       int force, td_err_t *err) {
    int fd = open(path, O_WRONLY | O_CREAT | (force ? O_TRUNC : O_EXCL), mode);
    if (fd < 0)
        return td_err_set(err, TD_ERR_IO, "cannot create %s: %s%s", path, strerror(errno),
                          errno == EEXIST ? " (use --force to overwrite)" : "");
    if (fchmod(fd, mode)) {
        close(fd);
        return td_err_set(err, TD_ERR_IO, "chmod %s: %s", path, strerror(errno));
    }
    char buf[512];
    int n = snprintf(buf, sizeof buf, "# %s\n%s\n", comment, z85);
    int ok = n > 0 && write(fd, buf, (size_t)n) == n;
    if (close(fd) || !ok) return td_err_set(err, TD_ERR_IO, "cannot write %s", path);
    return TD_OK;
}

int td_curve_keygen(const char *name, int force, char *public_z85, td_err_t *err) {
    if (!name || !*name) return td_err_set(err, TD_ERR_ARG, "no key name given");
    if (!zmq_has("curve"))
        return td_err_set(err, TD_ERR_UNSUPPORTED, "this libzmq was built without CURVE");
    char pub[41], sec[41], path[4096];
    if (zmq_curve_keypair(pub, sec))
        return td_err_set(err, TD_ERR, "zmq_curve_keypair: %s", zmq_strerror(zmq_errno()));
    snprintf(path, sizeof path, "%s.key", name);
    int rc =
        s_write_key(path, "tandem CURVE secret key (Z85). Keep it private; share the .pub file.",
                    sec, 0600, force, err);
    memset(sec, 0, sizeof sec);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s.pub", name);
    rc = s_write_key(path, "tandem CURVE public key (Z85).", pub, 0644, force, err);
    if (rc) return rc;
    if (public_z85) memcpy(public_z85, pub, 41);
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------------
 * ZAP: one handler thread per context, answering for every CURVE server of that context by the
 * server's ZAP domain. */

typedef struct s_zap_domain {
    char name[32];
    int any; /* accept every client key (no allow file) */
    size_t n_keys;
    uint8_t (*keys)[32];
    struct s_zap_domain *next;
} s_zap_domain_t;

typedef struct s_zap_handler {
    void *ctx;
    struct s_zap_handler *next;
} s_zap_handler_t;

static pthread_mutex_t s_zap_lock = PTHREAD_MUTEX_INITIALIZER;
static s_zap_domain_t *s_zap_domains;
static s_zap_handler_t *s_zap_handlers;
static unsigned s_zap_seq;

static int s_zap_allowed(const char *domain, size_t dlen, const uint8_t *key, size_t klen) {
    int ok = 0;
    pthread_mutex_lock(&s_zap_lock);
    for (s_zap_domain_t *d = s_zap_domains; d; d = d->next) {
        if (strlen(d->name) != dlen || memcmp(d->name, domain, dlen)) continue;
        if (d->any) ok = 1;
        for (size_t i = 0; !ok && klen == 32 && i < d->n_keys; i++)
            if (!memcmp(d->keys[i], key, 32)) ok = 1;
        break;
    }
    pthread_mutex_unlock(&s_zap_lock);
    return ok;
}

static void *s_zap_main(void *arg) {
    void *sock = ((void **)arg)[0];
    void *ctx = ((void **)arg)[1];
    free(arg);
    for (;;) {
        zmq_msg_t f[8];
        int n = 0, more = 1, term = 0;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, sock, 0) < 0) {
                zmq_msg_close(&m);
                if (zmq_errno() == EINTR) continue;
                term = 1;
                break;
            }
            more = zmq_msg_more(&m);
            if (n < 8)
                f[n++] = m;
            else
                zmq_msg_close(&m);
        }
        if (term) {
            for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
            break;
        }
        /* version, request id, domain, address, identity, mechanism, credentials... */
        const char *status = "400", *text = "denied";
        if (n >= 6 && zmq_msg_size(&f[0]) == 3 && !memcmp(zmq_msg_data(&f[0]), "1.0", 3)) {
            const char *mech = zmq_msg_data(&f[5]);
            size_t ml = zmq_msg_size(&f[5]);
            if (ml == 4 && !memcmp(mech, "NULL", 4)) {
                status = "200", text = "OK"; /* plain (loopback-only) sockets */
            } else if (ml == 5 && !memcmp(mech, "CURVE", 5) && n >= 7 &&
                       s_zap_allowed(zmq_msg_data(&f[2]), zmq_msg_size(&f[2]), zmq_msg_data(&f[6]),
                                     zmq_msg_size(&f[6]))) {
                status = "200", text = "OK";
            } else {
                char z85[41] = "?";
                if (n >= 7 && zmq_msg_size(&f[6]) == 32)
                    zmq_z85_encode(z85, zmq_msg_data(&f[6]), 32);
                td_log(TD_LOG_WARN, "refused a CURVE client with key %s (not in the allow file)",
                       z85);
            }
        }
        zmq_send(sock, "1.0", 3, ZMQ_SNDMORE);
        if (n >= 2)
            zmq_send(sock, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
        else
            zmq_send(sock, "", 0, ZMQ_SNDMORE);
        zmq_send(sock, status, 3, ZMQ_SNDMORE);
        zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
        zmq_send(sock, "", 0, ZMQ_SNDMORE); /* user id */
        zmq_send(sock, "", 0, 0);           /* metadata */
        for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
    }
    pthread_mutex_lock(&s_zap_lock);
    for (s_zap_handler_t **p = &s_zap_handlers; *p; p = &(*p)->next)
        if ((*p)->ctx == ctx) {
            s_zap_handler_t *h = *p;
            *p = h->next;
            free(h);
            break;
        }
    pthread_mutex_unlock(&s_zap_lock);
    zmq_close(sock);
    return NULL;
}

/* Starts the context's ZAP handler unless it runs. Call with s_zap_lock held. */
static int s_zap_ensure_locked(void *ctx, td_err_t *err) {
    for (s_zap_handler_t *h = s_zap_handlers; h; h = h->next)
        if (h->ctx == ctx) return TD_OK;
    void *sock = zmq_socket(ctx, ZMQ_REP);
    if (!sock) return s_zmq_fail(err, TD_ERR, "ZAP handler socket", NULL);
    int zero = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(sock, S_ZAP_ENDPOINT)) {
        int rc = s_zmq_fail(err, TD_ERR, "cannot bind the ZAP handler on", S_ZAP_ENDPOINT);
        zmq_close(sock);
        return rc;
    }
    s_zap_handler_t *h = calloc(1, sizeof *h);
    void **arg = malloc(2 * sizeof *arg);
    pthread_t th;
    if (!h || !arg) {
        free(h), free(arg), zmq_close(sock);
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    arg[0] = sock, arg[1] = ctx;
    if (pthread_create(&th, NULL, s_zap_main, arg)) {
        free(h), free(arg), zmq_close(sock);
        return td_err_set(err, TD_ERR, "cannot start the ZAP handler thread");
    }
    pthread_detach(th);
    h->ctx = ctx;
    h->next = s_zap_handlers;
    s_zap_handlers = h;
    return TD_OK;
}

/* Reads an allow file: Z85 public keys, one per line, '#' comments. */
static int s_read_allow(const char *path, s_zap_domain_t *d, td_err_t *err) {
    FILE *f = fopen(path, "r");
    if (!f)
        return td_err_set(err, TD_ERR_IO, "cannot open allow file %s: %s", path, strerror(errno));
    char line[512];
    int lineno = 0, rc = TD_OK;
    while (rc == TD_OK && fgets(line, sizeof line, f)) {
        lineno++;
        char z85[41];
        uint8_t bin[32];
        int k = s_key_line(line, z85);
        if (k == 0) continue;
        if (k < 0 || !zmq_z85_decode(bin, z85)) {
            rc = td_err_set(err, TD_ERR_FORMAT,
                            "allow file %s line %d: '%.50s' is not a 40-character Z85 public key",
                            path, lineno, line);
            break;
        }
        uint8_t(*keys)[32] = realloc(d->keys, (d->n_keys + 1) * sizeof *keys);
        if (!keys) {
            rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
            break;
        }
        d->keys = keys;
        memcpy(d->keys[d->n_keys++], bin, 32);
    }
    fclose(f);
    if (rc == TD_OK && d->n_keys == 0)
        td_log(TD_LOG_WARN, "allow file %s lists no keys: no client can connect", path);
    return rc;
}

/* Registers a domain for a CURVE server and makes sure the context has a ZAP handler. */
static int s_zap_register(void *ctx, const char *allow_file, char *domain_out, td_err_t *err) {
    s_zap_domain_t *d = calloc(1, sizeof *d);
    if (!d) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    int rc = TD_OK;
    if (allow_file)
        rc = s_read_allow(allow_file, d, err);
    else
        d->any = 1;
    if (rc) {
        free(d->keys), free(d);
        return rc;
    }
    pthread_mutex_lock(&s_zap_lock);
    rc = s_zap_ensure_locked(ctx, err);
    if (rc == TD_OK) {
        snprintf(d->name, sizeof d->name, "tandem-%u-%u", (unsigned)getpid(), ++s_zap_seq);
        d->next = s_zap_domains;
        s_zap_domains = d;
        memcpy(domain_out, d->name, sizeof d->name);
    }
    pthread_mutex_unlock(&s_zap_lock);
    if (rc) free(d->keys), free(d);
    return rc;
}

static void s_zap_unregister(const char *domain) {
    pthread_mutex_lock(&s_zap_lock);
    for (s_zap_domain_t **p = &s_zap_domains; *p; p = &(*p)->next)
        if (!strcmp((*p)->name, domain)) {
            s_zap_domain_t *d = *p;
            *p = d->next;
            free(d->keys);
            free(d);
            break;
        }
    pthread_mutex_unlock(&s_zap_lock);
}

/* ---------------------------------------------------------------------------------------------
 * Server */

/* A ROUTER or DEALER socket for endpoint on the options' context (or the shared one); NULL with
 * err set. */
static void *s_socket_new(const td_transport_opts_t *o, int type, const char *endpoint, void **ctx,
                          td_err_t *err) {
    *ctx = o->context ? o->context : td_transport_context_shared();
    if (!*ctx) {
        td_err_set(err, TD_ERR, "cannot create a ZeroMQ context");
        return NULL;
    }
    void *sock = zmq_socket(*ctx, type);
    if (!sock)
        s_zmq_fail(err, TD_ERR,
                   type == ZMQ_ROUTER ? "zmq_socket(ROUTER) for" : "zmq_socket(DEALER) for",
                   endpoint);
    return sock;
}

/* size zeroed bytes for the endpoint that owns sock; NULL (sock closed, err set) when out of
 * memory. */
static void *s_calloc_or_close(size_t size, void *sock, td_err_t *err) {
    void *p = calloc(1, size);
    if (!p) {
        zmq_close(sock);
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    return p;
}

td_server_t *td_server_new(const char *endpoint, const td_transport_opts_t *opts, td_err_t *err) {
    td_transport_opts_t o = {0};
    if (opts) o = *opts;
    if (s_check_transport(endpoint, err)) return NULL;
    int v6 = 0;
    if (!strncmp(endpoint, "tcp://", 6)) {
        char host[256];
        if (s_tcp_host(endpoint, host, sizeof host, &v6)) {
            td_err_set(err, TD_ERR_ARG, "endpoint '%s': expected tcp://HOST:PORT", endpoint);
            return NULL;
        }
        if (!o.curve_secret_key && !s_is_loopback_host(host)) {
            td_err_set(err, TD_ERR_ARG,
                       "refusing to bind %s without encryption: a worker without CURVE keys binds "
                       "only on loopback (tcp://127.0.0.1:PORT, tcp://localhost:PORT, "
                       "tcp://[::1]:PORT). To serve other hosts, make keys with `tandem keygen "
                       "--out NAME` and give the server NAME.key (and an allow file of client "
                       "public keys)",
                       endpoint);
            return NULL;
        }
    }
    void *ctx = NULL, *sock = s_socket_new(&o, ZMQ_ROUTER, endpoint, &ctx, err);
    td_server_t *self = sock ? s_calloc_or_close(sizeof *self, sock, err) : NULL;
    if (!self) return NULL;
    self->sock = sock;
    self->limits = s_limits(&o.limits);
    self->spin_us = o.spin_us > 0 ? o.spin_us : 0;
    int rc = s_socket_common(self->sock, &o, &self->limits, v6, err);
    if (!rc) rc = s_setopt_int(self->sock, ZMQ_ROUTER_MANDATORY, 1, err, "ZMQ_ROUTER_MANDATORY");
    if (!rc && o.curve_secret_key) {
        char sec[41];
        if (!zmq_has("curve"))
            rc = td_err_set(err, TD_ERR_UNSUPPORTED, "this libzmq was built without CURVE");
        if (!rc) rc = td_curve_key_read(o.curve_secret_key, sec, err);
        if (!rc) rc = s_zap_register(ctx, o.curve_allow_file, self->zap_domain, err);
        if (!rc) rc = s_setopt_int(self->sock, ZMQ_CURVE_SERVER, 1, err, "ZMQ_CURVE_SERVER");
        if (!rc && (zmq_setsockopt(self->sock, ZMQ_CURVE_SECRETKEY, sec, 40) ||
                    zmq_setsockopt(self->sock, ZMQ_ZAP_DOMAIN, self->zap_domain,
                                   strlen(self->zap_domain))))
            rc = s_zmq_fail(err, TD_ERR, "setting the CURVE keys of", endpoint);
        memset(sec, 0, sizeof sec);
        if (!rc && !o.curve_allow_file)
            td_log(TD_LOG_INFO,
                   "%s: CURVE without an allow file: any client holding the server's public key "
                   "is accepted",
                   endpoint);
    } else if (!rc && o.curve_allow_file) {
        rc = td_err_set(err, TD_ERR_ARG, "an allow file needs a CURVE secret key for the server");
    }
    /* libzmq reads a bind host as an interface or an address, not a name: localhost means
     * 127.0.0.1 */
    char bind_ep[512];
    if (!strncmp(endpoint, "tcp://localhost:", 16))
        snprintf(bind_ep, sizeof bind_ep, "tcp://127.0.0.1:%s", endpoint + 16);
    else
        snprintf(bind_ep, sizeof bind_ep, "%s", endpoint);
    if (!rc && zmq_bind(self->sock, bind_ep))
        rc = s_zmq_fail(err, TD_ERR_IO, "cannot bind", endpoint);
    if (rc) {
        td_err_prefix(err, "server %s", endpoint);
        td_server_destroy(&self);
        return NULL;
    }
    size_t len = sizeof self->endpoint;
    if (zmq_getsockopt(self->sock, ZMQ_LAST_ENDPOINT, self->endpoint, &len) || !self->endpoint[0])
        snprintf(self->endpoint, sizeof self->endpoint, "%s", endpoint);
    return self;
}

void td_server_destroy(td_server_t **self_p) {
    if (!self_p || !*self_p) return;
    td_server_t *self = *self_p;
    if (self->sock) zmq_close(self->sock);
    if (self->zap_domain[0]) s_zap_unregister(self->zap_domain);
    free(self);
    *self_p = NULL;
}

const char *td_server_endpoint(const td_server_t *self) { return self->endpoint; }
void *td_server_socket(td_server_t *self) { return self->sock; }

void td_server_set_limits(td_server_t *self, const td_wire_limits_t *limits) {
    self->limits = s_limits(limits);
}

int td_server_recv_env(td_server_t *self, td_routing_id_t *from, Tandem__Envelope **out,
                       int timeout_ms, td_err_t *err) {
    td_err_t local = {0};
    if (!err) err = &local;
    *out = NULL;
    from->len = 0;
    if (!s_wait(self->sock, timeout_ms, self->spin_us)) return TD_RECV_TIMEOUT;
    zmq_msg_t id;
    zmq_msg_init(&id);
    if (zmq_msg_recv(&id, self->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&id);
        return TD_RECV_TIMEOUT;
    }
    int more = zmq_msg_more(&id);
    size_t n = zmq_msg_size(&id);
    from->len = n <= TD_ROUTING_ID_MAX ? n : TD_ROUTING_ID_MAX;
    memcpy(from->data, zmq_msg_data(&id), from->len);
    zmq_msg_close(&id);
    int rc;
    if (!more) {
        td_err_set(err, TD_ERR_FORMAT, "message without an envelope frame");
        rc = TD_RECV_MALFORMED;
    } else {
        rc = s_recv_payload(self->sock, &self->limits, out, err);
        if (rc == TD_RECV_TIMEOUT) return TD_RECV_TIMEOUT;
    }
    if (rc == TD_RECV_MALFORMED) {
        td_log(TD_LOG_WARN, "%s: malformed message from a peer: %s", self->endpoint, err->msg);
        char msg[1100];
        snprintf(msg, sizeof msg, "malformed message: %s", err->msg);
        td_err_t e2 = {0};
        if (td_server_send_error(self, from, 0, 0, TANDEM__ERROR_CODE__ERROR_MALFORMED, msg, &e2))
            td_log(TD_LOG_WARN, "%s: could not answer the malformed message: %s", self->endpoint,
                   e2.msg);
    }
    return rc;
}

int td_server_send_env(td_server_t *self, const td_routing_id_t *to, const Tandem__Envelope *env,
                       td_err_t *err) {
    zmq_msg_t m;
    int rc = s_pack_msg(env, &m, err);
    if (rc) return rc;
    if (zmq_send(self->sock, to->data, to->len, ZMQ_SNDMORE) < 0) {
        zmq_msg_close(&m);
        int e = zmq_errno();
        return td_err_set(err, TD_ERR_IO, "%s: cannot send %s: %s", self->endpoint,
                          td_wire_body_name(env),
                          e == EHOSTUNREACH ? "the peer is gone" : zmq_strerror(e));
    }
    if (zmq_msg_send(&m, self->sock, 0) < 0) {
        zmq_msg_close(&m);
        return s_zmq_fail(err, TD_ERR_IO, "cannot send to a peer of", self->endpoint);
    }
    return TD_OK;
}

int td_server_send_error(td_server_t *self, const td_routing_id_t *to, uint64_t session_id,
                         uint64_t round, int code, const char *message, td_err_t *err) {
    Tandem__Envelope env;
    Tandem__Error body;
    char msg[TD_WIRE_MAX_STRING];
    /* keep the message valid UTF-8 and within bounds whatever it quotes */
    size_t n = 0;
    for (const char *p = message ? message : ""; *p && n + 1 < sizeof msg; p++)
        msg[n++] = (*p & 0x80) ? '?' : *p;
    msg[n] = 0;
    td_wire_error_init(&env, &body, session_id, round, (Tandem__ErrorCode)code, msg);
    return td_server_send_env(self, to, &env, err);
}

int td_server_answer_hello_env(td_server_t *self, const td_routing_id_t *to,
                               const Tandem__Hello *ours, const Tandem__Hello *theirs,
                               td_err_t *err) {
    Tandem__Envelope env;
    Tandem__HelloAck ack;
    Tandem__Error eb;
    Tandem__ErrorCode code = TANDEM__ERROR_CODE__ERROR_UNSPECIFIED;
    td_err_t why = {0};
    td_wire_hello_ack_init(&env, &ack);
    int compat = td_wire_hello_compatible(ours, theirs, &code, &why);
    if (compat == TD_OK) {
        ack.accepted = 1;
        ack.hello = (Tandem__Hello *)ours;
        return td_server_send_env(self, to, &env, err);
    }
    tandem__error__init(&eb);
    eb.code = code;
    eb.message = why.msg;
    ack.accepted = 0;
    ack.hello = (Tandem__Hello *)ours;
    ack.error = &eb;
    td_log(TD_LOG_WARN, "%s: refused a peer: %s", self->endpoint, why.msg);
    int rc = td_server_send_env(self, to, &env, err);
    if (rc) return rc;
    return td_err_set(err, TD_ERR_UNSUPPORTED, "%s", why.msg);
}

/* ---------------------------------------------------------------------------------------------
 * Client */

td_client_t *td_client_new(const char *endpoint, const td_transport_opts_t *opts, td_err_t *err) {
    td_transport_opts_t o = {0};
    if (opts) o = *opts;
    if (s_check_transport(endpoint, err)) return NULL;
    int v6 = 0;
    if (!strncmp(endpoint, "tcp://", 6)) {
        char host[256];
        if (s_tcp_host(endpoint, host, sizeof host, &v6)) {
            td_err_set(err, TD_ERR_ARG, "endpoint '%s': expected tcp://HOST:PORT", endpoint);
            return NULL;
        }
    }
    void *ctx = NULL, *sock = s_socket_new(&o, ZMQ_DEALER, endpoint, &ctx, err);
    td_client_t *self = sock ? s_calloc_or_close(sizeof *self, sock, err) : NULL;
    if (!self) return NULL;
    self->sock = sock;
    snprintf(self->endpoint, sizeof self->endpoint, "%s", endpoint);
    self->limits = s_limits(&o.limits);
    self->spin_us = o.spin_us > 0 ? o.spin_us : 0;
    int rc = s_socket_common(self->sock, &o, &self->limits, v6, err);
    if (!rc && o.curve_server_key) {
        char server[41], pub[41], sec[41];
        if (!zmq_has("curve"))
            rc = td_err_set(err, TD_ERR_UNSUPPORTED, "this libzmq was built without CURVE");
        if (!rc) rc = td_curve_key_read(o.curve_server_key, server, err);
        if (!rc) {
            if (o.curve_secret_key) {
                rc = td_curve_key_read(o.curve_secret_key, sec, err);
                if (!rc && zmq_curve_public(pub, sec))
                    rc = td_err_set(err, TD_ERR_FORMAT, "cannot derive the public key of %s",
                                    o.curve_secret_key);
            } else if (zmq_curve_keypair(pub, sec)) {
                rc = td_err_set(err, TD_ERR, "zmq_curve_keypair failed");
            }
        }
        if (!rc && (zmq_setsockopt(self->sock, ZMQ_CURVE_SERVERKEY, server, 40) ||
                    zmq_setsockopt(self->sock, ZMQ_CURVE_PUBLICKEY, pub, 40) ||
                    zmq_setsockopt(self->sock, ZMQ_CURVE_SECRETKEY, sec, 40)))
            rc = s_zmq_fail(err, TD_ERR, "setting the CURVE keys for", endpoint);
        memset(sec, 0, sizeof sec);
    } else if (!rc && o.curve_secret_key) {
        rc = td_err_set(err, TD_ERR_ARG,
                        "a client key needs the server's public key too (curve_server_key)");
    }
    if (!rc && zmq_connect(self->sock, endpoint))
        rc = s_zmq_fail(err, TD_ERR_IO, "cannot connect to", endpoint);
    if (rc) {
        td_err_prefix(err, "client %s", endpoint);
        td_client_destroy(&self);
        return NULL;
    }
    return self;
}

void td_client_destroy(td_client_t **self_p) {
    if (!self_p || !*self_p) return;
    td_client_t *self = *self_p;
    if (self->sock) zmq_close(self->sock);
    free(self);
    *self_p = NULL;
}

const char *td_client_endpoint(const td_client_t *self) { return self->endpoint; }
void *td_client_socket(td_client_t *self) { return self->sock; }

void td_client_set_limits(td_client_t *self, const td_wire_limits_t *limits) {
    self->limits = s_limits(limits);
}

int td_client_send_env(td_client_t *self, const Tandem__Envelope *env, td_err_t *err) {
    zmq_msg_t m;
    int rc = s_pack_msg(env, &m, err);
    if (rc) return rc;
    if (zmq_msg_send(&m, self->sock, 0) < 0) {
        zmq_msg_close(&m);
        int e = zmq_errno();
        return td_err_set(err, TD_ERR_IO, "%s: cannot send %s: %s", self->endpoint,
                          td_wire_body_name(env),
                          e == EAGAIN ? "timed out (is the peer there?)" : zmq_strerror(e));
    }
    return TD_OK;
}

int td_client_recv_env(td_client_t *self, Tandem__Envelope **out, int timeout_ms, td_err_t *err) {
    *out = NULL;
    if (!s_wait(self->sock, timeout_ms, self->spin_us)) return TD_RECV_TIMEOUT;
    int rc = s_recv_payload(self->sock, &self->limits, out, err);
    if (rc == TD_RECV_MALFORMED)
        td_log(TD_LOG_WARN, "%s: malformed message from the server: %s", self->endpoint,
               err ? err->msg : "");
    return rc;
}

int td_client_send_heartbeat(td_client_t *self, td_err_t *err) {
    Tandem__Envelope env;
    Tandem__Heartbeat hb;
    td_wire_heartbeat_init(&env, &hb);
    return td_client_send_env(self, &env, err);
}

int td_client_handshake_env(td_client_t *self, const Tandem__Hello *ours, Tandem__Envelope **ack,
                            int timeout_ms, td_err_t *err) {
    if (ack) *ack = NULL;
    Tandem__Envelope env;
    Tandem__Hello unused;
    td_wire_hello_init(&env, &unused);
    env.hello = (Tandem__Hello *)ours;
    int rc = td_client_send_env(self, &env, err);
    if (rc) return rc;
    double deadline = td_time_now() + (timeout_ms < 0 ? 1e9 : timeout_ms / 1000.0);
    for (;;) {
        double left = deadline - td_time_now();
        if (left <= 0)
            return td_err_set(err, TD_ERR_IO, "%s: no answer to the handshake within %d ms",
                              self->endpoint, timeout_ms);
        Tandem__Envelope *in = NULL;
        int r = td_client_recv_env(self, &in, (int)(left * 1000.0) + 1, err);
        if (r == TD_RECV_TIMEOUT) continue;
        if (r == TD_RECV_MALFORMED) return td_err_prefix(err, "%s: handshake", self->endpoint);
        if (in->body_case == TANDEM__ENVELOPE__BODY_HEARTBEAT) {
            td_wire_free(&in);
            continue;
        }
        if (in->body_case == TANDEM__ENVELOPE__BODY_ERROR) {
            rc = td_err_set(
                err,
                in->error->code == TANDEM__ERROR_CODE__ERROR_VERSION ? TD_ERR_UNSUPPORTED
                                                                     : TD_ERR_FORMAT,
                "%s: the peer answered the handshake with an error (%s): %s", self->endpoint,
                td_wire_error_code_name(in->error->code), in->error->message);
            td_wire_free(&in);
            return rc;
        }
        if (in->body_case != TANDEM__ENVELOPE__BODY_HELLO_ACK) {
            rc = td_err_set(err, TD_ERR_FORMAT, "%s: expected a hello_ack, got %s", self->endpoint,
                            td_wire_body_name(in));
            td_wire_free(&in);
            return rc;
        }
        const Tandem__HelloAck *a = in->hello_ack;
        if (!a->accepted) {
            rc = td_err_set(err, TD_ERR_UNSUPPORTED, "%s refused the connection (%s): %s",
                            self->endpoint, td_wire_error_code_name(a->error->code),
                            a->error->message);
        } else {
            rc = td_wire_hello_compatible(ours, a->hello, NULL, err);
            if (rc) td_err_prefix(err, "%s", self->endpoint);
        }
        if (rc == TD_OK && ack)
            *ack = in;
        else
            td_wire_free(&in);
        return rc;
    }
}

/* ---------------------------------------------------------------------------------------------
 * td_msg_t over the links (the conversions of protocol/msg.c around the envelope calls) */

/* A valid envelope that cannot be converted (out of memory) is dropped and reported as
 * TD_RECV_MALFORMED with err's code TD_ERR_NOMEM: every receive loop already survives that. */
static int s_recv_msg(int rc, Tandem__Envelope **env, td_msg_t **out, td_err_t *err) {
    if (rc != TD_RECV_OK) return rc;
    return td_wire_to_msg(env, out, err) == TD_OK ? TD_RECV_OK : TD_RECV_MALFORMED;
}

int td_server_recv(td_server_t *self, td_routing_id_t *from, td_msg_t **out, int timeout_ms,
                   td_err_t *err) {
    Tandem__Envelope *env = NULL;
    *out = NULL;
    return s_recv_msg(td_server_recv_env(self, from, &env, timeout_ms, err), &env, out, err);
}

int td_client_recv(td_client_t *self, td_msg_t **out, int timeout_ms, td_err_t *err) {
    Tandem__Envelope *env = NULL;
    *out = NULL;
    return s_recv_msg(td_client_recv_env(self, &env, timeout_ms, err), &env, out, err);
}

/* Sends m through the envelope sender (server: srv and to; client: cl). */
static int s_send_msg(td_server_t *srv, const td_routing_id_t *to, td_client_t *cl,
                      const td_msg_t *m, td_err_t *err) {
    td_wire_env_t w;
    int rc = td_wire_from_msg(m, &w, err);
    if (rc == TD_OK)
        rc = srv ? td_server_send_env(srv, to, &w.env, err) : td_client_send_env(cl, &w.env, err);
    td_wire_env_release(&w);
    return rc;
}

int td_server_send(td_server_t *self, const td_routing_id_t *to, const td_msg_t *m, td_err_t *err) {
    return s_send_msg(self, to, NULL, m, err);
}

int td_client_send(td_client_t *self, const td_msg_t *m, td_err_t *err) {
    return s_send_msg(NULL, NULL, self, m, err);
}

int td_server_answer_hello(td_server_t *self, const td_routing_id_t *to, const td_hello_t *ours,
                           const td_hello_t *theirs, td_err_t *err) {
    Tandem__Hello a, b;
    td_wire_hello_from_msg(ours, &a);
    td_wire_hello_from_msg(theirs, &b);
    return td_server_answer_hello_env(self, to, &a, &b, err);
}

int td_client_handshake(td_client_t *self, const td_hello_t *ours, td_msg_t **ack, int timeout_ms,
                        td_err_t *err) {
    Tandem__Hello h;
    Tandem__Envelope *env = NULL;
    if (ack) *ack = NULL;
    td_wire_hello_from_msg(ours, &h);
    int rc = td_client_handshake_env(self, &h, ack ? &env : NULL, timeout_ms, err);
    if (rc == TD_OK && ack) rc = td_wire_to_msg(&env, ack, err);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Heartbeats */

void td_heartbeat_init(td_heartbeat_t *hb, int interval_ms, int liveness, double now) {
    hb->interval = (interval_ms > 0 ? interval_ms : 1000) / 1000.0;
    hb->liveness = liveness > 0 ? liveness : 3;
    hb->next_send = now + hb->interval;
    hb->last_heard = now;
}

void td_heartbeat_heard(td_heartbeat_t *hb, double now) { hb->last_heard = now; }

int td_heartbeat_due(td_heartbeat_t *hb, double now) {
    if (now < hb->next_send) return 0;
    hb->next_send = now + hb->interval;
    return 1;
}

int td_heartbeat_alive(const td_heartbeat_t *hb, double now) {
    return now - hb->last_heard < hb->interval * hb->liveness;
}

int td_heartbeat_wait_ms(const td_heartbeat_t *hb, double now) {
    double d = hb->next_send - now;
    return d <= 0 ? 0 : (int)(d * 1000.0 + 0.999);
}

/* ---------------------------------------------------------------------------------------------
 * Actor pipes */

struct td_pipe {
    void *sock;
};

static void s_pipe_free(td_pipe_t *p) {
    if (!p) return;
    if (p->sock) zmq_close(p->sock);
    free(p);
}

int td_pipe_new(td_pipe_t **a, td_pipe_t **b, td_err_t *err) {
    static atomic_int s_pipes;
    *a = *b = NULL;
    void *ctx = td_transport_context_shared();
    td_pipe_t *x = calloc(1, sizeof *x), *y = calloc(1, sizeof *y);
    char ep[96];
    snprintf(ep, sizeof ep, "inproc://td-pipe-%d-%d", (int)getpid(), atomic_fetch_add(&s_pipes, 1));
    int linger = 0;
    if (ctx && x && y && (x->sock = zmq_socket(ctx, ZMQ_PAIR)) &&
        (y->sock = zmq_socket(ctx, ZMQ_PAIR)) &&
        zmq_setsockopt(x->sock, ZMQ_LINGER, &linger, sizeof linger) == 0 &&
        zmq_setsockopt(y->sock, ZMQ_LINGER, &linger, sizeof linger) == 0 &&
        zmq_bind(x->sock, ep) == 0 && zmq_connect(y->sock, ep) == 0) {
        *a = x, *b = y;
        return TD_OK;
    }
    int e = zmq_errno();
    s_pipe_free(x);
    s_pipe_free(y);
    return td_err_set(err, TD_ERR, "cannot create an actor pipe: %s", zmq_strerror(e));
}

void td_pipe_destroy(td_pipe_t **p) {
    if (!p || !*p) return;
    s_pipe_free(*p);
    *p = NULL;
}

int td_pipe_send(td_pipe_t *p, const char *cmd, td_err_t *err) {
    if (zmq_send(p->sock, cmd, strlen(cmd), 0) < 0)
        return td_err_set(err, TD_ERR_IO, "actor pipe: %s", zmq_strerror(zmq_errno()));
    return TD_OK;
}

int td_pipe_recv(td_pipe_t *p, char *cmd, size_t cap, int timeout_ms) {
    if (!s_wait(p->sock, timeout_ms, 0)) return 0;
    int n = zmq_recv(p->sock, cmd, cap ? cap - 1 : 0, ZMQ_DONTWAIT);
    if (n < 0) return 0;
    if (cap) cmd[(size_t)n < cap - 1 ? (size_t)n : cap - 1] = 0;
    return 1;
}

int td_server_poll(td_server_t *srv, td_pipe_t *ctl, int timeout_ms) {
    zmq_pollitem_t it[2] = {{srv->sock, 0, ZMQ_POLLIN, 0}, {ctl ? ctl->sock : NULL, 0, 0, 0}};
    if (ctl) it[1].events = ZMQ_POLLIN;
    if (zmq_poll(it, ctl ? 2 : 1, timeout_ms) <= 0) return 0;
    if (ctl && (it[1].revents & ZMQ_POLLIN)) return TD_POLL_PIPE;
    return (it[0].revents & ZMQ_POLLIN) ? TD_POLL_SERVER : 0;
}

/* ---------------------------------------------------------------------------------------------
 * The draft exchange from plain values */

int td_client_send_draft_request(td_client_t *c, const td_draft_args_t *a, td_err_t *err) {
    Tandem__Envelope env;
    Tandem__DraftRequest r;
    Tandem__Sampling smp = TANDEM__SAMPLING__INIT;
    Tandem__ApdSettings apd = TANDEM__APD_SETTINGS__INIT;
    td_wire_draft_request_init(&env, &r, a->session, a->round);
    uint32_t *delta = malloc(sizeof(uint32_t) * ((size_t)a->n_delta + 1));
    if (!delta) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    for (int i = 0; i < a->n_delta; i++) delta[i] = (uint32_t)a->delta[i];
    r.base_len = (uint32_t)a->base_len;
    r.n_prefix_delta = (size_t)a->n_delta;
    r.prefix_delta = delta;
    r.gamma = (uint32_t)a->gamma;
    r.steps = (uint32_t)(a->steps > 0 ? a->steps : 1);
    r.order = (Tandem__UnmaskOrder)a->order;
    smp.temperature = a->temperature;
    smp.top_k = (uint32_t)(a->top_k > 0 ? a->top_k : 0);
    smp.top_p = a->top_p;
    r.sampling = &smp;
    r.seed = a->seed;
    r.want_dist = a->want_dist;
    r.dist_top_k = (uint32_t)(a->dist_top_k > 0 ? a->dist_top_k : 32);
    if (a->apd) {
        apd.mixture = a->apd_mixture;
        apd.kv_window = (uint32_t)a->apd_kv_window;
        apd.lookahead = (uint32_t)a->gamma;
        r.apd = &apd;
    }
    uint16_t *feat = NULL;
    if (a->features && a->feature_rows > 0 && a->feature_dim > 0) {
        size_t n = (size_t)a->feature_rows * (size_t)a->feature_dim;
        if (!(feat = malloc(n * sizeof *feat))) {
            free(delta);
            return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        }
        int bf = a->feature_type == TANDEM__FEATURE_TYPE__FEATURE_BF16;
        for (size_t i = 0; i < n; i++)
            feat[i] = bf ? td_f32_to_bf16(a->features[i]) : td_f32_to_f16(a->features[i]);
        r.features.data = (uint8_t *)feat; /* little-endian host (x86-64) */
        r.features.len = n * sizeof *feat;
    }
    r.feature_type = (Tandem__FeatureType)a->feature_type;
    r.feature_start = (uint32_t)(a->feature_start > 0 ? a->feature_start : 0);
    int rc = td_client_send_env(c, &env, err);
    free(delta);
    free(feat);
    return rc;
}

int td_client_send_full_row_request(td_client_t *c, uint64_t session, uint64_t round, int pos,
                                    int logits, td_err_t *err) {
    Tandem__Envelope env;
    Tandem__FullRowRequest r;
    td_wire_full_row_request_init(&env, &r, session, round);
    r.position = (uint32_t)pos;
    r.kind = logits ? TANDEM__ROW_KIND__ROW_LOGITS : TANDEM__ROW_KIND__ROW_PROBS;
    return td_client_send_env(c, &env, err);
}

int td_client_send_close_session(td_client_t *c, uint64_t session, td_err_t *err) {
    Tandem__Envelope env;
    Tandem__CloseSession cs;
    td_wire_close_session_init(&env, &cs, session);
    return td_client_send_env(c, &env, err);
}
