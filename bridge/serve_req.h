/* serve_req.h - the pure parts of `tandem serve`: an OpenAI request body (JSON) -> a request
 * struct, OpenAI-shaped error bodies, stop-string matching across token boundaries and a
 * constant-time key compare. No model, no sockets: unit-tested in tests/test_serve.c and fuzzed by
 * fuzz/fuzz_serve.c. */
#ifndef TD_SERVE_REQ_H
#define TD_SERVE_REQ_H

#include <stddef.h>
#include <stdint.h>

#define TD_SERVE_MAX_STOP 16      /* stop strings per request */
#define TD_SERVE_MAX_STOP_LEN 256 /* bytes per stop string */
#define TD_SERVE_MAX_MSGS 256     /* chat messages per request */

typedef enum td_serve_kind { TD_SERVE_CHAT = 0, TD_SERVE_COMPLETION } td_serve_kind_t;

typedef struct td_serve_msg {
    char *role, *content; /* owned; content is the concatenated text parts */
} td_serve_msg_t;

/* One parsed request. Numbers not given are negative (use the server's defaults). */
typedef struct td_serve_req {
    td_serve_kind_t kind;
    char *model;  /* owned; NULL when absent */
    char *prompt; /* completions: owned */
    td_serve_msg_t *msgs;
    int n_msgs;                /* chat */
    long max_tokens;           /* -1: default */
    double temperature, top_p; /* -1: default */
    long top_k;                /* -1: default (extension; also accepted inside "tandem") */
    int has_seed;
    uint64_t seed;
    char *stop[TD_SERVE_MAX_STOP];
    int n_stop;
    int stream, include_usage;
    /* the "tandem" extension object */
    char *method;         /* owned; NULL = the server's */
    long gamma, steps;    /* -1 = the server's */
    char *order, *verify; /* owned; NULL = the server's */
} td_serve_req_t;

/* An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}} sent with status. */
typedef struct td_serve_error {
    int status;       /* HTTP status */
    const char *type; /* "invalid_request_error", "authentication_error", "server_error", ... */
    const char *code; /* NULL -> JSON null */
    char param[64];   /* "" -> JSON null */
    char message[512];
} td_serve_error_t;

/* Fills e (status 400 unless given) and returns -1, so parsers can `return td_serve_fail(...)`. */
int td_serve_fail(td_serve_error_t *e, int status, const char *type, const char *code,
                  const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Parses body[len] (not necessarily NUL-terminated) as a request of kind. Returns 0 and fills r
 * (free with td_serve_req_free), or -1 with e filled (r left empty: freeing it is still safe).
 * Rejected with 400: malformed JSON, a non-object body, wrong types, a missing prompt / messages,
 * out-of-range numbers, n != 1, best_of != 1, echo, logprobs, tools/functions, a response_format
 * other than text, non-zero penalties, more than TD_SERVE_MAX_STOP stop strings or longer ones,
 * unknown members of the "tandem" object. Other unknown top-level members are ignored (as the
 * OpenAI clients send optional ones freely). */
int td_serve_req_parse(const char *body, size_t len, td_serve_kind_t kind, td_serve_req_t *r,
                       td_serve_error_t *e);
void td_serve_req_free(td_serve_req_t *r);

/* The error body, malloc'd and NUL-terminated (NULL when out of memory). */
char *td_serve_error_json(const td_serve_error_t *e);

/* Stop strings over streamed text. text[len] is everything generated so far; emitted bytes of it
 * were already sent. Returns how many bytes may be sent now (>= emitted): up to the start of the
 * earliest stop string found (then *hit = 1 and the generation ends there), else all but the
 * longest tail that is a proper prefix of some stop string (it may still grow into one). Also
 * holds back nothing when n_stop == 0. Stop strings that are "" are ignored. */
size_t td_serve_stop_scan(const char *text, size_t len, size_t emitted, char *const *stop,
                          int n_stop, int *hit);

/* Constant-time comparison (in the length of want) of a presented key with the expected one:
 * 1 when equal. NULL have never equals. */
int td_serve_key_equal(const char *have, const char *want);

#endif
