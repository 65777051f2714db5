/* fuzz_serve.c - libFuzzer target: the `tandem serve` request parser (td_serve_req_parse) and the
 * stop-string scan on arbitrary bytes.
 *
 * The first byte picks the endpoint (chat or completions); the rest is the body, not
 * NUL-terminated. Parsing must never crash or read past the length; a success must give a
 * well-formed request (the prompt or 1..TD_SERVE_MAX_MSGS messages with roles and contents, stop
 * strings non-empty and within limits, n = 1 implied), a failure an error with a status and a
 * message. Then the parsed stop strings are scanned over the body as if it were generated text. */
#include "bridge/serve_req.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    td_serve_kind_t kind = (data[0] & 1) ? TD_SERVE_CHAT : TD_SERVE_COMPLETION;
    size_t len = size - 1;
    char *buf = malloc(len ? len : 1);
    if (!buf) return 0;
    if (len) memcpy(buf, data + 1, len);
    td_serve_req_t r;
    td_serve_error_t e;
    memset(&e, 0, sizeof e);
    int rc = td_serve_req_parse(buf, len, kind, &r, &e);
    if (rc == 0) {
        if (kind == TD_SERVE_CHAT) {
            if (r.n_msgs < 1 || r.n_msgs > TD_SERVE_MAX_MSGS || !r.msgs) abort();
            for (int i = 0; i < r.n_msgs; i++)
                if (!r.msgs[i].role || !r.msgs[i].content) abort();
        } else if (!r.prompt) {
            abort();
        }
        if (r.n_stop < 0 || r.n_stop > TD_SERVE_MAX_STOP) abort();
        for (int i = 0; i < r.n_stop; i++)
            if (!r.stop[i] || !*r.stop[i] || strlen(r.stop[i]) > TD_SERVE_MAX_STOP_LEN) abort();
        if (r.include_usage && !r.stream) abort();
        int hit = 0;
        size_t ok = td_serve_stop_scan(buf, len, 0, r.stop, r.n_stop, &hit);
        if (ok > len) abort();
        if (hit && (!r.n_stop)) abort();
        td_serve_req_free(&r);
    } else {
        if (rc != -1 || e.status < 400 || e.status > 599 || !e.message[0] || !e.type) abort();
        char *j = td_serve_error_json(&e);
        free(j);
    }
    free(buf);
    return 0;
}
