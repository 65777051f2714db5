/* fuzz_wire.c - libFuzzer target: td_wire_unpack on arbitrary bytes.
 *
 * Decoding must never crash, hang or read past len, under two sets of limits (a small vocabulary
 * and the defaults). A message it accepts must satisfy td_wire_validate, pack again (td_wire_pack
 * validates too), and decode from those bytes to a message that packs to the same bytes; its plain
 * form (td_msg_decode, protocol/msg.h) must carry the same body and ids and encode to bytes that
 * decode and encode to themselves.
 * A rejection must come with TD_ERR_FORMAT and a message. */
#include "fuzz/fuzz_common.h"
#include "protocol/wire.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void s_one(const uint8_t *data, size_t size, const td_wire_limits_t *lim) {
    Tandem__Envelope *env = NULL;
    td_err_t err = {0};
    int rc = td_wire_unpack(data, size, lim, &env, &err);
    if (rc != TD_OK) {
        if (rc != TD_ERR_FORMAT || env || !err.msg[0] || err.code != rc) abort();
        return;
    }
    if (!env || td_wire_validate(env, lim, &err) != TD_OK) abort();
    uint8_t *buf = NULL, *buf2 = NULL;
    size_t n = 0, n2 = 0;
    if (td_wire_pack(env, &buf, &n, &err) != TD_OK) abort();
    Tandem__Envelope *again = NULL;
    if (td_wire_unpack(buf, n, lim, &again, &err) != TD_OK) abort();
    if (again->body_case != env->body_case || again->session_id != env->session_id ||
        again->round != env->round)
        abort();
    if (td_wire_pack(again, &buf2, &n2, &err) != TD_OK) abort();
    if (n2 != n || memcmp(buf, buf2, n)) abort();
    (void)td_wire_body_name(again);
    /* the plain form: same body and ids; it drops unknown fields (never longer), and encoding it,
     * decoding and encoding again gives the same bytes */
    td_msg_t *m = NULL, *m2 = NULL;
    uint8_t *buf3 = NULL, *buf4 = NULL;
    size_t n3 = 0, n4 = 0;
    if (td_msg_decode(data, size, lim, &m, &err) != TD_OK || (int)m->body != (int)env->body_case ||
        m->session_id != env->session_id || m->round != env->round)
        abort();
    if (td_msg_encode(m, &buf3, &n3, &err) != TD_OK || n3 > n) abort();
    if (td_msg_decode(buf3, n3, lim, &m2, &err) != TD_OK) abort();
    if (td_msg_encode(m2, &buf4, &n4, &err) != TD_OK || n4 != n3 || memcmp(buf3, buf4, n3)) abort();
    td_msg_free(&m);
    td_msg_free(&m2);
    free(buf);
    free(buf2);
    free(buf3);
    free(buf4);
    td_wire_free(&again);
    td_wire_free(&env);
    if (env) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *copy = td_fuzz_copy(data, size);
    if (!copy) return 0;
    td_wire_limits_t small = {.max_message = 1 << 20, .vocab_size = 1000, .max_tokens = 4096};
    s_one(copy, size, &small);
    s_one(copy, size, NULL);
    free(copy);
    return 0;
}
