/* transport.h - tandem's ZeroMQ links: a ROUTER where a worker serves, a DEALER where it asks.
 *
 * One tandem envelope per message, seen here as a td_msg_t (protocol/msg.h; the protobuf form
 * is protocol/'s own: protocol/transport_wire.h has the envelope-level calls the wire tests use).
 * The server sees [routing id][envelope] and answers a peer by its routing id; the client sends and
 * receives bare envelopes. Every socket has ZMQ_LINGER 0; every receive takes a timeout; every
 * received message is decoded and validated (td_wire_unpack) before it is converted and returned,
 * and a malformed one is answered with an Error, logged, and reported to the caller as
 * TD_RECV_MALFORMED, so a worker loop keeps serving.
 *
 * Endpoints: tcp://HOST:PORT (PORT * = any free port, see td_server_endpoint), ipc://PATH,
 * inproc://NAME (both sides must use the same context: td_transport_context_shared()).
 *
 * Security: without a CURVE secret key a server binds tcp only on loopback (127.0.0.0/8,
 * localhost, [::1]). With one (`tandem keygen --out NAME` writes NAME.key and NAME.pub) the link
 * is encrypted with CURVE, and with an allow file only the listed client public keys get in
 * (checked by a ZAP handler thread on inproc://zeromq.zap.01, one per context). See
 * docs/protocol.md, "Security". */
#ifndef TD_TRANSPORT_H
#define TD_TRANSPORT_H

#include "common/td_common.h"
#include "protocol/msg.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_server td_server_t;
typedef struct td_client td_client_t;

/* A ROUTER routing id: who sent a message, to whom the answer goes. */
#define TD_ROUTING_ID_MAX 255
typedef struct td_routing_id {
    size_t len;
    uint8_t data[TD_ROUTING_ID_MAX];
} td_routing_id_t;

/* Options of a server or a client; a zeroed struct gives the defaults. Key files are read once,
 * in td_server_new / td_client_new. */
typedef struct td_transport_opts {
    void *context;           /* ZeroMQ context; NULL = td_transport_context_shared() */
    td_wire_limits_t limits; /* checks on every received message (zeros = wire defaults) */
    int send_timeout_ms;     /* a send blocked longer fails; 0 = 5000, -1 = wait forever */
    int heartbeat_ivl_ms;    /* ZMTP heartbeats on the connection (ZMQ_HEARTBEAT_IVL, timeout 3x);
                                0 = off */
    int spin_us;             /* receiving: poll without sleeping for up to this long before
                                blocking (saves the wake-up of a sleeping thread, 50-300 us per
                                message on a VM, at the price of a busy core); 0 = block at once */
    /* CURVE. Server: curve_secret_key enables CURVE (ZMQ_CURVE_SERVER); curve_allow_file, when
     * set, lists the client public keys accepted (one Z85 key per line, '#' comments), and
     * without it any client holding the server's public key gets in.
     * Client: curve_server_key (the server's NAME.pub) enables CURVE; curve_secret_key is the
     * client's own NAME.key (its public key is derived), NULL = a fresh key pair per client. */
    const char *curve_secret_key;
    const char *curve_server_key;
    const char *curve_allow_file;
} td_transport_opts_t;

/* The process-wide ZeroMQ context (created on first use, thread-safe, never terminated). Servers
 * and clients that talk over inproc:// must share a context; NULL when ZeroMQ cannot make one. */
void *td_transport_context_shared(void);

/* Whether a tcp:// endpoint names a loopback host (127.x.y.z, localhost, [::1]); 1 for ipc://
 * and inproc://, 0 for anything else. */
int td_endpoint_is_local(const char *endpoint);

/* ---- server (ROUTER) ---- */

/* Binds a ROUTER on endpoint. Refuses (NULL, TD_ERR_ARG) a tcp endpoint off loopback when no
 * CURVE secret key is given, with a message naming the endpoint and how to add keys; refuses
 * unknown transports. NULL with err set on any failure (bad key file, address in use...). */
td_server_t *td_server_new(const char *endpoint, const td_transport_opts_t *opts, td_err_t *err);

/* Closes the socket (linger 0: unsent messages are dropped), drops the server's ZAP domain and
 * NULLs *self_p. Safe on NULL / twice. */
void td_server_destroy(td_server_t **self_p);

/* The endpoint actually bound (tcp port resolved when it was *). */
const char *td_server_endpoint(const td_server_t *self);

/* The ZeroMQ socket, for zmq_poll together with other sockets (do not read or close it). */
void *td_server_socket(td_server_t *self);

/* Replaces the limits received messages are checked against (e.g. once the vocabulary is known). */
void td_server_set_limits(td_server_t *self, const td_wire_limits_t *limits);

/* What td_server_recv / td_client_recv return: a message, nothing in time, or a malformed one.
 * Positive, so they never read as a TD_ERR_* code. */
enum { TD_RECV_OK = 0, TD_RECV_TIMEOUT = 1, TD_RECV_MALFORMED = 2 };

/* Waits up to timeout_ms (-1 = forever, 0 = poll) for one message. Returns TD_RECV_OK with *out
 * (release with td_msg_free; it owns the decoded buffer its arrays point into) and *from set;
 * TD_RECV_TIMEOUT on timeout or interruption (*out NULL); TD_RECV_MALFORMED when a message
 * arrived but was malformed: *from names the sender, err says why (code TD_ERR_FORMAT), the
 * sender has been answered with an Error (ERROR_MALFORMED) and the problem logged (a valid
 * message that could not be converted for want of memory: TD_RECV_MALFORMED too, err's code
 * TD_ERR_NOMEM, nothing answered). */
int td_server_recv(td_server_t *self, td_routing_id_t *from, td_msg_t **out, int timeout_ms,
                   td_err_t *err);

/* Encodes m (borrowed), validates it and sends it to the peer `to`. Returns TD_OK; TD_ERR_FORMAT
 * when m is invalid; TD_ERR_IO when the peer is unknown or gone (ZMQ_ROUTER_MANDATORY) or the
 * send timed out; TD_ERR_NOMEM. */
int td_server_send(td_server_t *self, const td_routing_id_t *to, const td_msg_t *m, td_err_t *err);

/* Sends an Error (session, round, code: td_proto_error_t, message) to `to`. As td_server_send. */
int td_server_send_error(td_server_t *self, const td_routing_id_t *to, uint64_t session_id,
                         uint64_t round, int code, const char *message, td_err_t *err);

/* Answers a peer's Hello: accepted (HelloAck with ours) when td_hello_compatible, refused
 * (HelloAck with an Error naming both sides' tokenizers or versions) otherwise. Returns TD_OK
 * when accepted and sent, TD_ERR_UNSUPPORTED when refused (err says why), or a send error. */
int td_server_answer_hello(td_server_t *self, const td_routing_id_t *to, const td_hello_t *ours,
                           const td_hello_t *theirs, td_err_t *err);

/* ---- client (DEALER) ---- */

/* Connects a DEALER to endpoint (the connection completes in the background; messages sent
 * before it does are queued). NULL with err set on failure. */
td_client_t *td_client_new(const char *endpoint, const td_transport_opts_t *opts, td_err_t *err);

/* Closes the socket (linger 0) and NULLs *self_p. Safe on NULL / twice. */
void td_client_destroy(td_client_t **self_p);

const char *td_client_endpoint(const td_client_t *self);
void *td_client_socket(td_client_t *self);
void td_client_set_limits(td_client_t *self, const td_wire_limits_t *limits);

/* Encodes, validates and sends m (borrowed). TD_OK; TD_ERR_FORMAT when m is invalid; TD_ERR_IO
 * when the send timed out or failed; TD_ERR_NOMEM. */
int td_client_send(td_client_t *self, const td_msg_t *m, td_err_t *err);

/* As td_server_recv, without the routing id: TD_RECV_OK, TD_RECV_TIMEOUT (or interrupted),
 * TD_RECV_MALFORMED (logged; a client does not answer malformed messages). */
int td_client_recv(td_client_t *self, td_msg_t **out, int timeout_ms, td_err_t *err);

/* The handshake from the asking side: sends a Hello (ours) and waits up to timeout_ms for the
 * HelloAck, skipping heartbeats. Returns TD_OK when accepted and the peer's Hello is compatible
 * (then *ack, if non-NULL, holds the HelloAck message: release with td_msg_free);
 * TD_ERR_UNSUPPORTED when refused by either side (message names both tokenizers or versions);
 * TD_ERR_IO on timeout; TD_ERR_FORMAT on an unexpected answer. */
int td_client_handshake(td_client_t *self, const td_hello_t *ours, td_msg_t **ack, int timeout_ms,
                        td_err_t *err);

/* Sends a Heartbeat stamped with td_wire_now_us(). As td_client_send. */
int td_client_send_heartbeat(td_client_t *self, td_err_t *err);

/* ---- heartbeats (the Paranoid Pirate pattern) ---- */

/* Liveness of one peer: send a heartbeat every interval; the peer is dead after `liveness`
 * intervals without hearing anything from it. Plain data; times in seconds (td_time_now). */
typedef struct td_heartbeat {
    double interval; /* seconds between heartbeats */
    int liveness;    /* intervals of silence tolerated */
    double next_send;
    double last_heard;
} td_heartbeat_t;

/* Starts tracking at now: nothing heard yet counts as heard now. */
void td_heartbeat_init(td_heartbeat_t *hb, int interval_ms, int liveness, double now);
/* Anything received from the peer. */
void td_heartbeat_heard(td_heartbeat_t *hb, double now);
/* 1 when a heartbeat is due (and schedules the next one), 0 otherwise. */
int td_heartbeat_due(td_heartbeat_t *hb, double now);
/* 0 once the peer has been silent for interval * liveness. */
int td_heartbeat_alive(const td_heartbeat_t *hb, double now);
/* Milliseconds until the next heartbeat is due (>= 0), a poll timeout. */
int td_heartbeat_wait_ms(const td_heartbeat_t *hb, double now);

/* ---- CURVE keys ---- */

/* Writes a new CURVE key pair: name.key (the secret key, Z85, mode 0600) and name.pub (the public
 * key, Z85, mode 0644). Refuses to overwrite existing files unless force. If public_z85 is
 * non-NULL it receives the public key (41 bytes). TD_OK, TD_ERR_IO, TD_ERR_UNSUPPORTED (libzmq
 * without CURVE). */
int td_curve_keygen(const char *name, int force, char *public_z85, td_err_t *err);

/* Reads a key file written by td_curve_keygen (the first line that is not blank or a '#'
 * comment, 40 Z85 characters) into z85 (41 bytes, NUL-terminated). Warns (td_log) when a secret
 * key file is readable by group or others. TD_OK, TD_ERR_IO, TD_ERR_FORMAT. */
int td_curve_key_read(const char *path, char *z85, td_err_t *err);

/* ---- the draft exchange without protobuf types ----
 * What a verifier-side loop sends, from plain values (the envelopes are built here). */
typedef struct td_draft_args {
    uint64_t session, round;
    int base_len;         /* tokens of the text the drafter already holds */
    const int32_t *delta; /* the text from base_len on */
    int n_delta;
    int gamma, steps, order; /* TD_ORDER_* (drafter/draft.h) */
    float temperature, top_p;
    int top_k;
    uint64_t seed;
    int want_dist, dist_top_k;
    int apd; /* APD settings below are sent */
    float apd_mixture;
    int apd_kv_window;
    /* dflash: feature rows [feature_rows, feature_dim] f32 (already rounded to feature_type),
     * sent as 16-bit feature_type values (TD_FEATURE_*, drafter/dflash.h) starting at position
     * feature_start; NULL / 0 rows: none */
    const float *features;
    int feature_rows, feature_dim, feature_start, feature_type;
} td_draft_args_t;

/* DraftRequest; FullRowRequest (logits: 1 = a logit row, 0 = a probability row); CloseSession.
 * As td_client_send (TD_ERR_NOMEM when the delta cannot be converted). */
int td_client_send_draft_request(td_client_t *c, const td_draft_args_t *a, td_err_t *err);
int td_client_send_full_row_request(td_client_t *c, uint64_t session, uint64_t round, int pos,
                                    int logits, td_err_t *err);
int td_client_send_close_session(td_client_t *c, uint64_t session, td_err_t *err);

/* ---- actor pipes ----
 * Two connected inproc PAIR sockets, one for each of two threads: how a thread that serves (the
 * in-process drafter) is told to stop, instead of a shared flag it would poll. Commands are short
 * strings ("STOP"). A pipe end belongs to one thread. */
typedef struct td_pipe td_pipe_t;
int td_pipe_new(td_pipe_t **a, td_pipe_t **b, td_err_t *err);
void td_pipe_destroy(td_pipe_t **p);
int td_pipe_send(td_pipe_t *p, const char *cmd, td_err_t *err);
/* Waits up to timeout_ms for a command: 1 with cmd[cap] filled (NUL-terminated), 0 on timeout. */
int td_pipe_recv(td_pipe_t *p, char *cmd, size_t cap, int timeout_ms);

/* Waits up to timeout_ms (-1 = forever) until srv has a message (TD_POLL_SERVER) or ctl (may be
 * NULL) has a command (TD_POLL_PIPE, checked first); 0 on timeout. */
enum { TD_POLL_SERVER = 1, TD_POLL_PIPE = 2 };
int td_server_poll(td_server_t *srv, td_pipe_t *ctl, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
