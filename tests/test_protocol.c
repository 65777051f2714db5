/* test_protocol.c - the wire format: every message round-trips through pack/unpack, and every
 * validation rule of td_wire_unpack rejects a crafted bad message while the good one passes.
 *
 * Bad messages are packed with the generated tandem__envelope__pack (which checks nothing), so
 * they reach td_wire_unpack exactly as a broken or hostile peer would send them. */
#include "protocol/wire.h"
#include "tests/tdtest.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Packs env without validation, then unpacks it with lim; returns td_wire_unpack's code. */
static int s_raw(const Tandem__Envelope *env, const td_wire_limits_t *lim, td_err_t *err) {
    size_t n = tandem__envelope__get_packed_size(env);
    uint8_t *buf = malloc(n ? n : 1);
    tandem__envelope__pack(env, buf);
    Tandem__Envelope *out = (Tandem__Envelope *)1;
    memset(err, 0, sizeof *err);
    int rc = td_wire_unpack(buf, n, lim, &out, err);
    if (rc == TD_OK) {
        if (!out) td_test_fail(__FILE__, __LINE__, "TD_OK without a message");
        td_wire_free(&out);
        if (out) td_test_fail(__FILE__, __LINE__, "td_wire_free did not NULL the pointer");
    } else {
        if (out) td_test_fail(__FILE__, __LINE__, "failure left *out set");
        if (err->code != rc || !err->msg[0])
            td_test_fail(__FILE__, __LINE__, "failure without a message (rc %d)", rc);
    }
    free(buf);
    return rc;
}

/* Expects rejection with a message containing `needle`. */
#define CHECK_BAD(env, lim, needle)                                                                \
    do {                                                                                           \
        td_err_t _e;                                                                               \
        int _rc = s_raw(env, lim, &_e);                                                            \
        CHECK_MSG(_rc == TD_ERR_FORMAT, "expected TD_ERR_FORMAT for '%s', got %d", needle, _rc);   \
        CHECK_MSG(strstr(_e.msg, needle) != NULL, "message '%s' lacks '%s'", _e.msg, needle);      \
    } while (0)
#define CHECK_GOOD(env, lim)                                                                       \
    do {                                                                                           \
        td_err_t _e;                                                                               \
        int _rc = s_raw(env, lim, &_e);                                                            \
        CHECK_MSG(_rc == TD_OK, "expected a valid message, got %d: %s", _rc, _e.msg);              \
    } while (0)

/* Packs with td_wire_pack and unpacks with lim; the decoded envelope or NULL. */
static Tandem__Envelope *s_roundtrip(const Tandem__Envelope *env, const td_wire_limits_t *lim) {
    uint8_t *buf = NULL;
    size_t n = 0;
    td_err_t err = {0};
    if (td_wire_pack(env, &buf, &n, &err) != TD_OK) {
        td_test_fail(__FILE__, __LINE__, "pack failed: %s", err.msg);
        return NULL;
    }
    CHECK_EQ_INT(n, td_wire_packed_size(env));
    Tandem__Envelope *out = NULL;
    if (td_wire_unpack(buf, n, lim, &out, &err) != TD_OK)
        td_test_fail(__FILE__, __LINE__, "unpack failed: %s", err.msg);
    free(buf);
    return out;
}

static char *s_caps[] = {"specdiff", "apd", "ar-draft"};

TD_TEST(roundtrip_hello_and_ack) {
    Tandem__Envelope env;
    Tandem__Hello h;
    td_wire_hello_init(&env, &h);
    td_wire_hello_fill(&h, TANDEM__ROLE__ROLE_DRAFTER, "tiny-drafter", 4096, 4095,
                       0xfedcba9876543210ull, "models/tiny/tokenizer.json", s_caps, 3);
    Tandem__Envelope *out = s_roundtrip(&env, NULL);
    REQUIRE(out);
    CHECK_EQ_INT(out->version, TD_PROTOCOL_VERSION);
    CHECK_EQ_INT(out->body_case, TANDEM__ENVELOPE__BODY_HELLO);
    CHECK_STR(td_wire_body_name(out), "hello");
    CHECK_EQ_INT(out->hello->protocol_version, TD_PROTOCOL_VERSION);
    CHECK_EQ_INT(out->hello->role, TANDEM__ROLE__ROLE_DRAFTER);
    CHECK_STR(out->hello->model_id, "tiny-drafter");
    CHECK_EQ_INT(out->hello->vocab_size, 4096);
    CHECK_EQ_INT(out->hello->mask_token_id, 4095);
    CHECK(out->hello->tokenizer_hash == 0xfedcba9876543210ull);
    CHECK_STR(out->hello->tokenizer_name, "models/tiny/tokenizer.json");
    REQUIRE(out->hello->n_capabilities == 3);
    CHECK_STR(out->hello->capabilities[1], "apd");
    CHECK(td_wire_hello_has_capability(out->hello, "ar-draft"));
    CHECK(!td_wire_hello_has_capability(out->hello, "diffusion"));
    td_wire_free(&out);
    CHECK(out == NULL);
    td_wire_free(&out); /* safe twice */

    Tandem__HelloAck ack;
    td_wire_hello_ack_init(&env, &ack);
    ack.accepted = 1;
    ack.hello = &h;
    out = s_roundtrip(&env, NULL);
    REQUIRE(out);
    CHECK_EQ_INT(out->body_case, TANDEM__ENVELOPE__BODY_HELLO_ACK);
    CHECK(out->hello_ack->accepted);
    REQUIRE(out->hello_ack->hello);
    CHECK_STR(out->hello_ack->hello->model_id, "tiny-drafter");
    CHECK(out->hello_ack->error == NULL);
    td_wire_free(&out);

    Tandem__Error e;
    tandem__error__init(&e);
    e.code = TANDEM__ERROR_CODE__ERROR_TOKENIZER_MISMATCH;
    e.message = "tokenizers differ";
    ack.accepted = 0;
    ack.hello = NULL;
    ack.error = &e;
    out = s_roundtrip(&env, NULL);
    REQUIRE(out);
    CHECK(!out->hello_ack->accepted);
    REQUIRE(out->hello_ack->error);
    CHECK_EQ_INT(out->hello_ack->error->code, TANDEM__ERROR_CODE__ERROR_TOKENIZER_MISMATCH);
    CHECK_STR(out->hello_ack->error->message, "tokenizers differ");
    td_wire_free(&out);
}

TD_TEST(roundtrip_sessions_commit_error_heartbeat) {
    td_wire_limits_t lim = td_wire_limits_default();
    lim.vocab_size = 100;
    Tandem__Envelope env;
    Tandem__OpenSession os;
    Tandem__Sampling s;
    uint32_t prompt[] = {1, 2, 3, 99};
    td_wire_open_session_init(&env, &os, 42);
    tandem__sampling__init(&s);
    s.temperature = 0.7f, s.top_k = 50, s.top_p = 0.9f;
    os.prompt_tokens = prompt, os.n_prompt_tokens = 4, os.sampling = &s, os.seed = 1234567890123ull;
    Tandem__Envelope *out = s_roundtrip(&env, &lim);
    REQUIRE(out);
    CHECK_EQ_INT(out->session_id, 42);
    REQUIRE(out->open_session->n_prompt_tokens == 4);
    CHECK_EQ_INT(out->open_session->prompt_tokens[3], 99);
    REQUIRE(out->open_session->sampling);
    CHECK(out->open_session->sampling->temperature == 0.7f);
    CHECK_EQ_INT(out->open_session->sampling->top_k, 50);
    CHECK(out->open_session->sampling->top_p == 0.9f);
    CHECK(out->open_session->seed == 1234567890123ull);
    td_wire_free(&out);

    Tandem__CloseSession cs;
    td_wire_close_session_init(&env, &cs, 42);
    cs.reason = "done";
    out = s_roundtrip(&env, &lim);
    REQUIRE(out);
    CHECK_EQ_INT(out->body_case, TANDEM__ENVELOPE__BODY_CLOSE_SESSION);
    CHECK_STR(out->close_session->reason, "done");
    td_wire_free(&out);

    Tandem__Commit c;
    td_wire_commit_init(&env, &c, 42, 7, 123);
    out = s_roundtrip(&env, &lim);
    REQUIRE(out);
    CHECK_EQ_INT(out->round, 7);
    CHECK_EQ_INT(out->commit->accepted_len, 123);
    td_wire_free(&out);

    Tandem__Error e;
    td_wire_error_init(&env, &e, 42, 9, TANDEM__ERROR_CODE__ERROR_OUT_OF_ORDER,
                       "round 9, expected 8");
    out = s_roundtrip(&env, &lim);
    REQUIRE(out);
    CHECK_EQ_INT(out->error->code, TANDEM__ERROR_CODE__ERROR_OUT_OF_ORDER);
    CHECK_EQ_INT(out->error->in_reply_to_round, 9);
    CHECK_STR(out->error->message, "round 9, expected 8");
    CHECK_STR(td_wire_error_code_name(out->error->code), "out_of_order");
    td_wire_free(&out);

    Tandem__Heartbeat hb;
    uint64_t t0 = td_wire_now_us();
    td_wire_heartbeat_init(&env, &hb);
    out = s_roundtrip(&env, &lim);
    REQUIRE(out);
    CHECK(out->heartbeat->sent_us >= t0 && out->heartbeat->sent_us <= td_wire_now_us());
    td_wire_free(&out);
}

TD_TEST(roundtrip_draft_request_proposal_full_row) {
    td_wire_limits_t lim = td_wire_limits_default();
    lim.vocab_size = 50;
    Tandem__Envelope env;
    Tandem__DraftRequest d;
    Tandem__Sampling s;
    Tandem__ApdSettings apd;
    uint32_t delta[] = {7, 8};
    td_wire_draft_request_init(&env, &d, 5, 3);
    CHECK_EQ_INT(d.gamma, 1); /* constructor defaults are valid */
    CHECK_EQ_INT(d.steps, 1);
    tandem__sampling__init(&s);
    tandem__apd_settings__init(&apd);
    apd.mixture = 0.7f, apd.kv_window = 16, apd.lookahead = 100;
    d.base_len = 10, d.prefix_delta = delta, d.n_prefix_delta = 2, d.gamma = 8, d.steps = 4;
    d.order = TANDEM__UNMASK_ORDER__ORDER_ENTROPY, d.sampling = &s, d.seed = 99, d.want_dist = 1;
    d.dist_top_k = 16, d.apd = &apd, d.confidence_threshold = 0.9f;
    Tandem__Envelope *out = s_roundtrip(&env, &lim);
    REQUIRE(out);
    const Tandem__DraftRequest *o = out->draft_request;
    CHECK_EQ_INT(out->session_id, 5);
    CHECK_EQ_INT(out->round, 3);
    CHECK_EQ_INT(o->base_len, 10);
    REQUIRE(o->n_prefix_delta == 2);
    CHECK_EQ_INT(o->prefix_delta[1], 8);
    CHECK_EQ_INT(o->gamma, 8);
    CHECK_EQ_INT(o->steps, 4);
    CHECK_EQ_INT(o->order, TANDEM__UNMASK_ORDER__ORDER_ENTROPY);
    CHECK(o->sampling && o->sampling->temperature == 0.0f);
    CHECK(o->seed == 99 && o->want_dist && o->dist_top_k == 16);
    REQUIRE(o->apd);
    CHECK(o->apd->mixture == 0.7f && o->apd->kv_window == 16 && o->apd->lookahead == 100);
    CHECK(o->confidence_threshold == 0.9f);
    td_wire_free(&out);

    Tandem__Proposal p;
    Tandem__SparseDist d0, d1, *dists[2] = {&d0, &d1};
    uint32_t toks[] = {3, 49}, ids0[] = {3, 4, 5}, ids1[] = {49};
    float pr0[] = {0.5f, 0.25f, 0.125f}, lg0[] = {2.0f, 1.5f, 1.0f}, pr1[] = {1.0f}, lg1[] = {9.f};
    tandem__sparse_dist__init(&d0);
    tandem__sparse_dist__init(&d1);
    d0.ids = ids0, d0.n_ids = 3, d0.probs = pr0, d0.n_probs = 3, d0.rest_mass = 0.125f;
    d0.logits = lg0, d0.n_logits = 3, d0.logit_bound = 0.5f;
    d1.ids = ids1, d1.n_ids = 1, d1.probs = pr1, d1.n_probs = 1, d1.rest_mass = 0.0f;
    d1.logits = lg1, d1.n_logits = 1, d1.logit_bound = -INFINITY;
    td_wire_proposal_init(&env, &p, 5, 3);
    p.tokens = toks, p.n_tokens = 2, p.dists = dists, p.n_dists = 2, p.drafter_us = 1500;
    out = s_roundtrip(&env, &lim);
    REQUIRE(out);
    const Tandem__Proposal *q = out->proposal;
    REQUIRE(q->n_tokens == 2 && q->n_dists == 2);
    CHECK_EQ_INT(q->tokens[1], 49);
    CHECK_EQ_INT(q->drafter_us, 1500);
    REQUIRE(q->dists[0]->n_ids == 3 && q->dists[0]->n_logits == 3);
    CHECK_EQ_INT(q->dists[0]->ids[2], 5);
    CHECK(q->dists[0]->probs[1] == 0.25f && q->dists[0]->rest_mass == 0.125f);
    CHECK(q->dists[0]->logits[0] == 2.0f && q->dists[0]->logit_bound == 0.5f);
    CHECK(isinf(q->dists[1]->logit_bound) && q->dists[1]->logit_bound < 0);
    td_wire_free(&out);

    Tandem__FullRowRequest rr;
    td_wire_full_row_request_init(&env, &rr, 5, 3);
    rr.position = 1, rr.kind = TANDEM__ROW_KIND__ROW_LOGITS;
    out = s_roundtrip(&env, &lim);
    REQUIRE(out);
    CHECK(out->full_row_request->position == 1 &&
          out->full_row_request->kind == TANDEM__ROW_KIND__ROW_LOGITS);
    td_wire_free(&out);

    Tandem__FullRow fr;
    float row[50];
    for (int i = 0; i < 50; i++) row[i] = 1.0f / 50;
    td_wire_full_row_init(&env, &fr, 5, 3);
    fr.position = 1, fr.kind = TANDEM__ROW_KIND__ROW_PROBS, fr.values = row, fr.n_values = 50;
    out = s_roundtrip(&env, &lim);
    REQUIRE(out);
    REQUIRE(out->full_row->n_values == 50);
    CHECK(out->full_row->values[49] == 1.0f / 50);
    td_wire_free(&out);
}

TD_TEST(envelope_rules) {
    td_err_t err;
    Tandem__Envelope env;
    Tandem__Heartbeat hb;
    td_wire_heartbeat_init(&env, &hb);
    CHECK_GOOD(&env, NULL);
    env.version = 2;
    CHECK_BAD(&env, NULL, "version mismatch");
    env.version = 0;
    CHECK_BAD(&env, NULL, "version mismatch");
    env.version = TD_PROTOCOL_VERSION;
    env.body_case = TANDEM__ENVELOPE__BODY__NOT_SET;
    CHECK_BAD(&env, NULL, "no body");

    /* session messages need a session id */
    Tandem__Commit c;
    td_wire_commit_init(&env, &c, 1, 1, 5);
    CHECK_GOOD(&env, NULL);
    env.session_id = 0;
    CHECK_BAD(&env, NULL, "without a session id");

    /* bytes that are not an envelope, an empty buffer, a truncated one, an oversized one */
    Tandem__Envelope *out = NULL;
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    CHECK_EQ_INT(td_wire_unpack(junk, sizeof junk, NULL, &out, &err), TD_ERR_FORMAT);
    CHECK(out == NULL && strstr(err.msg, "protobuf"));
    CHECK_EQ_INT(td_wire_unpack(junk, 0, NULL, &out, &err), TD_ERR_FORMAT); /* version 0 */
    CHECK_EQ_INT(td_wire_unpack(NULL, 0, NULL, &out, &err), TD_ERR_FORMAT);
    uint32_t prompt[64];
    for (int i = 0; i < 64; i++) prompt[i] = (uint32_t)i * 1000;
    Tandem__OpenSession os;
    td_wire_open_session_init(&env, &os, 1);
    os.prompt_tokens = prompt, os.n_prompt_tokens = 64;
    uint8_t *buf;
    size_t n;
    REQUIRE(td_wire_pack(&env, &buf, &n, &err) == TD_OK);
    CHECK_EQ_INT(td_wire_unpack(buf, n / 2, NULL, &out, &err), TD_ERR_FORMAT); /* truncated */
    CHECK(out == NULL);
    td_wire_limits_t lim = {.max_message = n - 1};
    CHECK_EQ_INT(td_wire_unpack(buf, n, &lim, &out, &err), TD_ERR_FORMAT);
    CHECK(strstr(err.msg, "over the") != NULL);
    lim.max_message = n;
    CHECK_EQ_INT(td_wire_unpack(buf, n, &lim, &out, &err), TD_OK);
    td_wire_free(&out);
    /* an unknown field (from a newer peer) is skipped, not an error */
    uint8_t *ext = malloc(n + 3);
    memcpy(ext, buf, n);
    ext[n] = 0x98, ext[n + 1] = 0x06, ext[n + 2] = 0x05;
    CHECK_EQ_INT(td_wire_unpack(ext, n + 3, NULL, &out, &err), TD_OK);
    td_wire_free(&out);
    free(ext);
    free(buf);
}

TD_TEST(hello_rules) {
    Tandem__Envelope env;
    Tandem__Hello h;
    td_wire_hello_init(&env, &h);
    td_wire_hello_fill(&h, TANDEM__ROLE__ROLE_VERIFIER, "v", 1000, -1, 1, "tok", s_caps, 3);
    CHECK_GOOD(&env, NULL);
    h.role = TANDEM__ROLE__ROLE_UNSPECIFIED;
    CHECK_BAD(&env, NULL, "role");
    h.role = (Tandem__Role)7;
    CHECK_BAD(&env, NULL, "role");
    h.role = TANDEM__ROLE__ROLE_VERIFIER;
    h.vocab_size = 0;
    CHECK_BAD(&env, NULL, "vocab_size");
    h.vocab_size = TD_WIRE_MAX_VOCAB + 1;
    CHECK_BAD(&env, NULL, "vocab_size");
    h.vocab_size = 1000;
    h.mask_token_id = 1000;
    CHECK_BAD(&env, NULL, "mask_token_id");
    h.mask_token_id = -2;
    CHECK_BAD(&env, NULL, "mask_token_id");
    h.mask_token_id = 999;
    CHECK_GOOD(&env, NULL);
    h.protocol_version = 0;
    CHECK_BAD(&env, NULL, "protocol_version");
    h.protocol_version = TD_PROTOCOL_VERSION;
    char bad_utf8[] = {'a', (char)0xc0, (char)0x80, 0};
    h.model_id = bad_utf8;
    CHECK_BAD(&env, NULL, "UTF-8");
    char longid[2000];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = 0;
    h.model_id = longid;
    CHECK_BAD(&env, NULL, "longer than");
    h.model_id = "v";
    char *caps_empty[] = {"apd", ""};
    h.capabilities = caps_empty, h.n_capabilities = 2;
    CHECK_BAD(&env, NULL, "capabilities[1] is empty");
    char *many[TD_WIRE_MAX_CAPABILITIES + 1];
    for (unsigned i = 0; i <= TD_WIRE_MAX_CAPABILITIES; i++) many[i] = "x";
    h.capabilities = many, h.n_capabilities = TD_WIRE_MAX_CAPABILITIES + 1;
    CHECK_BAD(&env, NULL, "capabilities");
    h.n_capabilities = TD_WIRE_MAX_CAPABILITIES;
    CHECK_GOOD(&env, NULL);
    /* a client need not describe a model */
    td_wire_hello_fill(&h, TANDEM__ROLE__ROLE_CLIENT, "", 0, -1, 0, NULL, NULL, 0);
    CHECK_GOOD(&env, NULL);

    /* hello_ack: accepted needs the hello, refused needs the error */
    Tandem__HelloAck ack;
    Tandem__Error e;
    td_wire_hello_ack_init(&env, &ack);
    ack.accepted = 1;
    CHECK_BAD(&env, NULL, "hello_ack.hello is missing");
    ack.hello = &h;
    CHECK_GOOD(&env, NULL);
    td_wire_error_init(&(Tandem__Envelope){0}, &e, 0, 0, TANDEM__ERROR_CODE__ERROR_VERSION, "v");
    ack.error = &e;
    CHECK_BAD(&env, NULL, "accepted hello_ack with an error");
    ack.accepted = 0;
    CHECK_GOOD(&env, NULL);
    ack.error = NULL;
    CHECK_BAD(&env, NULL, "error is missing");
    ack.error = &e;
    e.code = (Tandem__ErrorCode)77;
    CHECK_BAD(&env, NULL, "code = 77");
}

TD_TEST(hello_compatibility) {
    Tandem__Hello a, b;
    tandem__hello__init(&a);
    tandem__hello__init(&b);
    td_wire_hello_fill(&a, TANDEM__ROLE__ROLE_VERIFIER, "qwen-0.5b", 151936, -1, 0x1111, "qwen",
                       NULL, 0);
    td_wire_hello_fill(&b, TANDEM__ROLE__ROLE_DRAFTER, "dream-7b", 152064, 151666, 0x1111, "dream",
                       NULL, 0);
    td_err_t err = {0};
    Tandem__ErrorCode code = TANDEM__ERROR_CODE__ERROR_UNSPECIFIED;
    /* same tokenizer, different (padded) vocabularies: compatible */
    CHECK_EQ_INT(td_wire_hello_compatible(&a, &b, &code, &err), TD_OK);
    b.tokenizer_hash = 0x2222;
    CHECK_EQ_INT(td_wire_hello_compatible(&a, &b, &code, &err), TD_ERR_UNSUPPORTED);
    CHECK_EQ_INT(code, TANDEM__ERROR_CODE__ERROR_TOKENIZER_MISMATCH);
    CHECK(strstr(err.msg, "qwen") && strstr(err.msg, "dream") &&
          strstr(err.msg, "0000000000001111") && strstr(err.msg, "0000000000002222"));
    b.tokenizer_hash = 0x1111;
    b.protocol_version = 2;
    CHECK_EQ_INT(td_wire_hello_compatible(&a, &b, &code, &err), TD_ERR_UNSUPPORTED);
    CHECK_EQ_INT(code, TANDEM__ERROR_CODE__ERROR_VERSION);
    CHECK(strstr(err.msg, "version") != NULL);
    /* the hash: FNV-1a reference values */
    CHECK(td_wire_hash64("", 0) == 0xcbf29ce484222325ull);
    CHECK(td_wire_hash64("a", 1) == 0xaf63dc4c8601ec8cull);
}

TD_TEST(draft_request_rules) {
    td_wire_limits_t lim = td_wire_limits_default();
    lim.vocab_size = 100;
    lim.max_tokens = 8;
    Tandem__Envelope env;
    Tandem__DraftRequest d;
    Tandem__Sampling s;
    Tandem__ApdSettings apd;
    uint32_t delta[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    td_wire_draft_request_init(&env, &d, 1, 1);
    tandem__sampling__init(&s);
    tandem__apd_settings__init(&apd);
    d.prefix_delta = delta, d.n_prefix_delta = 8, d.gamma = 8, d.steps = 8, d.want_dist = 1;
    d.dist_top_k = 8;
    CHECK_GOOD(&env, &lim);
    d.gamma = 0;
    CHECK_BAD(&env, &lim, "gamma = 0");
    d.gamma = 257;
    CHECK_BAD(&env, &lim, "gamma = 257");
    d.gamma = 256;
    CHECK_GOOD(&env, &lim);
    d.steps = 0;
    CHECK_BAD(&env, &lim, "steps = 0");
    d.steps = 1025;
    CHECK_BAD(&env, &lim, "steps = 1025");
    d.steps = 1024;
    CHECK_GOOD(&env, &lim);
    d.order = (Tandem__UnmaskOrder)4;
    CHECK_BAD(&env, &lim, "order");
    d.order = TANDEM__UNMASK_ORDER__ORDER_MARGIN;
    CHECK_GOOD(&env, &lim);
    d.dist_top_k = 1025;
    CHECK_BAD(&env, &lim, "dist_top_k");
    d.dist_top_k = 0;
    CHECK_BAD(&env, &lim, "dist_top_k"); /* want_dist needs K >= 1 */
    d.want_dist = 0;
    CHECK_GOOD(&env, &lim);
    d.want_dist = 1, d.dist_top_k = 1024;
    CHECK_GOOD(&env, &lim);
    /* token ids and counts */
    delta[3] = 100;
    CHECK_BAD(&env, &lim, "prefix_delta[3] = 100 is outside the vocabulary");
    delta[3] = 99;
    CHECK_GOOD(&env, &lim);
    d.n_prefix_delta = 9;
    CHECK_BAD(&env, &lim, "more than the limit");
    d.n_prefix_delta = 8;
    d.base_len = UINT32_MAX;
    CHECK_BAD(&env, &lim, "overflows");
    d.base_len = 12;
    /* sampling */
    d.sampling = &s;
    CHECK_GOOD(&env, &lim);
    s.temperature = -0.5f;
    CHECK_BAD(&env, &lim, "temperature");
    s.temperature = NAN;
    CHECK_BAD(&env, &lim, "temperature");
    s.temperature = 1.0f, s.top_p = 1.5f;
    CHECK_BAD(&env, &lim, "top_p");
    s.top_p = NAN;
    CHECK_BAD(&env, &lim, "top_p");
    s.top_p = 0.95f, s.top_k = TD_WIRE_MAX_VOCAB + 1;
    CHECK_BAD(&env, &lim, "top_k");
    s.top_k = 40;
    CHECK_GOOD(&env, &lim);
    /* APD and Fast-dLLM settings */
    d.apd = &apd;
    apd.mixture = 0.7f, apd.kv_window = 8, apd.lookahead = 200;
    CHECK_GOOD(&env, &lim);
    apd.mixture = 1.5f;
    CHECK_BAD(&env, &lim, "mixture");
    apd.mixture = NAN;
    CHECK_BAD(&env, &lim, "mixture");
    apd.mixture = 0.6f, apd.lookahead = TD_WIRE_MAX_LOOKAHEAD + 1;
    CHECK_BAD(&env, &lim, "lookahead");
    apd.lookahead = 100, apd.kv_window = 9;
    CHECK_BAD(&env, &lim, "kv_window");
    apd.kv_window = 8;
    d.confidence_threshold = 1.01f;
    CHECK_BAD(&env, &lim, "confidence_threshold");
    d.confidence_threshold = NAN;
    CHECK_BAD(&env, &lim, "confidence_threshold");
    d.confidence_threshold = 0.9f;
    CHECK_GOOD(&env, &lim);
    /* without a vocabulary in the limits, ids are only bounded by the hard maximum */
    td_wire_limits_t open = td_wire_limits_default();
    delta[0] = 5000000;
    CHECK_GOOD(&env, &open);
    delta[0] = TD_WIRE_MAX_VOCAB;
    CHECK_BAD(&env, &open, "outside the vocabulary");
}

TD_TEST(open_session_rules) {
    td_wire_limits_t lim = {.vocab_size = 10, .max_tokens = 4};
    Tandem__Envelope env;
    Tandem__OpenSession os;
    uint32_t prompt[5] = {0, 1, 2, 9, 3};
    td_wire_open_session_init(&env, &os, 3);
    os.prompt_tokens = prompt, os.n_prompt_tokens = 4;
    CHECK_GOOD(&env, &lim);
    prompt[2] = 10;
    CHECK_BAD(&env, &lim, "prompt_tokens[2] = 10");
    prompt[2] = 2;
    os.n_prompt_tokens = 5;
    CHECK_BAD(&env, &lim, "more than the limit 4");
    os.n_prompt_tokens = 0; /* an empty prompt is the worker's business, not the wire's */
    CHECK_GOOD(&env, &lim);
    Tandem__CloseSession cs;
    td_wire_close_session_init(&env, &cs, 3);
    char bad[] = {'x', (char)0xff, 0};
    cs.reason = bad;
    CHECK_BAD(&env, &lim, "UTF-8");
}

/* A valid proposal of two positions over a vocabulary of 100. */
typedef struct {
    Tandem__Envelope env;
    Tandem__Proposal p;
    Tandem__SparseDist d[2], *dp[2];
    uint32_t toks[2], ids0[3], ids1[2];
    float pr0[3], pr1[2], lg0[3];
} s_prop_t;

static void s_prop(s_prop_t *x) {
    memset(x, 0, sizeof *x);
    td_wire_proposal_init(&x->env, &x->p, 8, 2);
    x->toks[0] = 10, x->toks[1] = 11;
    x->ids0[0] = 10, x->ids0[1] = 20, x->ids0[2] = 30;
    x->pr0[0] = 0.6f, x->pr0[1] = 0.2f, x->pr0[2] = 0.1f;
    x->lg0[0] = 3.0f, x->lg0[1] = 2.0f, x->lg0[2] = 1.5f;
    x->ids1[0] = 11, x->ids1[1] = 12;
    x->pr1[0] = 0.5f, x->pr1[1] = 0.5f;
    for (int i = 0; i < 2; i++) tandem__sparse_dist__init(&x->d[i]), x->dp[i] = &x->d[i];
    x->d[0].ids = x->ids0, x->d[0].n_ids = 3, x->d[0].probs = x->pr0, x->d[0].n_probs = 3;
    x->d[0].rest_mass = 0.1f, x->d[0].logits = x->lg0, x->d[0].n_logits = 3;
    x->d[0].logit_bound = 1.0f;
    x->d[1].ids = x->ids1, x->d[1].n_ids = 2, x->d[1].probs = x->pr1, x->d[1].n_probs = 2;
    x->p.tokens = x->toks, x->p.n_tokens = 2, x->p.dists = x->dp, x->p.n_dists = 2;
}

TD_TEST(proposal_rules) {
    td_wire_limits_t lim = {.vocab_size = 100};
    s_prop_t x;
    s_prop(&x);
    CHECK_GOOD(&x.env, &lim);
    x.toks[1] = 100;
    CHECK_BAD(&x.env, &lim, "proposal.tokens[1] = 100");
    s_prop(&x);
    x.p.n_dists = 1;
    CHECK_BAD(&x.env, &lim, "2 tokens but 1 dists");
    x.p.n_dists = 0; /* no distributions at all is fine (greedy / match) */
    CHECK_GOOD(&x.env, &lim);
    uint32_t many[257] = {0};
    x.p.tokens = many, x.p.n_tokens = 257;
    CHECK_BAD(&x.env, &lim, "257 tokens");
    x.p.n_tokens = 256;
    CHECK_GOOD(&x.env, &lim);

    s_prop(&x);
    x.d[0].n_probs = 2;
    CHECK_BAD(&x.env, &lim, "3 ids but 2 probs");
    s_prop(&x);
    x.d[0].n_logits = 2;
    CHECK_BAD(&x.env, &lim, "3 ids but 2 logits");
    s_prop(&x);
    x.ids0[2] = 100;
    CHECK_BAD(&x.env, &lim, "outside the vocabulary");
    s_prop(&x);
    x.ids0[2] = 10;
    CHECK_BAD(&x.env, &lim, "id 10 listed twice");
    s_prop(&x);
    x.pr0[1] = -0.1f, x.pr0[0] = 0.9f;
    CHECK_BAD(&x.env, &lim, "probs[1] = -0.1");
    s_prop(&x);
    x.pr0[1] = NAN;
    CHECK_BAD(&x.env, &lim, "probs[1] = nan");
    s_prop(&x);
    x.pr1[0] = 1.5f, x.pr1[1] = -0.5f;
    CHECK_BAD(&x.env, &lim, "not a probability");
    s_prop(&x);
    x.d[0].rest_mass = -0.1f;
    CHECK_BAD(&x.env, &lim, "rest_mass");
    s_prop(&x);
    x.d[0].rest_mass = 1.1f;
    CHECK_BAD(&x.env, &lim, "rest_mass");
    s_prop(&x);
    x.d[0].rest_mass = NAN;
    CHECK_BAD(&x.env, &lim, "rest_mass");
    s_prop(&x);
    x.d[0].rest_mass = 0.2f; /* total 1.1 */
    CHECK_BAD(&x.env, &lim, "not within");
    s_prop(&x);
    x.d[0].rest_mass = 0.1f + 0.0009f; /* inside the 1e-3 tolerance */
    CHECK_GOOD(&x.env, &lim);
    x.d[0].rest_mass = 0.1f + 0.0012f; /* outside */
    CHECK_BAD(&x.env, &lim, "not within");
    /* APD logits and the bound on the rest */
    s_prop(&x);
    x.lg0[1] = NAN;
    CHECK_BAD(&x.env, &lim, "logits[1]");
    s_prop(&x);
    x.lg0[1] = INFINITY;
    CHECK_BAD(&x.env, &lim, "logits[1]");
    s_prop(&x);
    x.lg0[2] = -INFINITY, x.d[0].logit_bound = -INFINITY; /* a masked-out entry is a logit */
    CHECK_GOOD(&x.env, &lim);
    s_prop(&x);
    x.d[0].logit_bound = 1.6f; /* above the smallest listed logit 1.5 */
    CHECK_BAD(&x.env, &lim, "logit_bound");
    x.d[0].logit_bound = 1.5f; /* a tie at the boundary is possible */
    CHECK_GOOD(&x.env, &lim);
    x.d[0].logit_bound = NAN;
    CHECK_BAD(&x.env, &lim, "logit_bound");
    s_prop(&x);
    x.d[1].logit_bound = 2.0f;
    CHECK_BAD(&x.env, &lim, "logit_bound without logits");
    /* an empty top-K is all rest mass */
    s_prop(&x);
    x.d[1].n_ids = 0, x.d[1].n_probs = 0, x.d[1].rest_mass = 1.0f;
    CHECK_GOOD(&x.env, &lim);
    /* K over 1024 */
    static uint32_t ids[1025];
    static float probs[1025];
    for (int i = 0; i < 1025; i++) ids[i] = (uint32_t)i, probs[i] = 1.0f / 1025;
    s_prop(&x);
    x.d[1].ids = ids, x.d[1].n_ids = 1025, x.d[1].probs = probs, x.d[1].n_probs = 1025;
    CHECK_BAD(&x.env, NULL, "more than 1024");
    x.d[1].n_ids = x.d[1].n_probs = 1024;
    x.d[1].rest_mass = 1.0f / 1025;
    CHECK_GOOD(&x.env, NULL);
}

TD_TEST(full_row_and_commit_rules) {
    td_wire_limits_t lim = {.vocab_size = 8};
    Tandem__Envelope env;
    Tandem__FullRowRequest rr;
    td_wire_full_row_request_init(&env, &rr, 1, 1);
    rr.position = 255;
    CHECK_GOOD(&env, &lim);
    rr.position = 256;
    CHECK_BAD(&env, &lim, "position = 256");
    rr.position = 0, rr.kind = (Tandem__RowKind)2;
    CHECK_BAD(&env, &lim, "kind");

    Tandem__FullRow fr;
    float row[9] = {0.5f, 0.25f, 0.125f, 0.125f, 0, 0, 0, 0, 0};
    td_wire_full_row_init(&env, &fr, 1, 1);
    fr.values = row, fr.n_values = 8;
    CHECK_GOOD(&env, &lim);
    fr.n_values = 9;
    CHECK_BAD(&env, &lim, "9 values, the vocabulary 8");
    fr.n_values = 0;
    CHECK_BAD(&env, &lim, "0 values");
    fr.n_values = 8;
    row[4] = 0.5f;
    CHECK_BAD(&env, &lim, "sum to");
    row[4] = NAN;
    CHECK_BAD(&env, &lim, "values[4]");
    fr.kind = TANDEM__ROW_KIND__ROW_LOGITS; /* logits: any real number or -inf, not NaN or +inf */
    CHECK_BAD(&env, &lim, "values[4]");
    row[4] = -INFINITY, row[5] = 40.0f;
    CHECK_GOOD(&env, &lim);
    row[5] = INFINITY;
    CHECK_BAD(&env, &lim, "values[5]");
    fr.position = 300;
    CHECK_BAD(&env, &lim, "position");

    Tandem__Commit c;
    td_wire_commit_init(&env, &c, 1, 1, (uint32_t)INT32_MAX + 1u);
    CHECK_BAD(&env, &lim, "accepted_len");
    Tandem__Error e;
    td_wire_error_init(&env, &e, 0, 0, TANDEM__ERROR_CODE__ERROR_INTERNAL, "x");
    CHECK_GOOD(&env, &lim);
    e.code = (Tandem__ErrorCode)-1;
    CHECK_BAD(&env, &lim, "code");
}

TD_TEST(pack_refuses_invalid_messages) {
    Tandem__Envelope env;
    Tandem__DraftRequest d;
    td_wire_draft_request_init(&env, &d, 1, 1);
    d.gamma = 0;
    uint8_t *buf = (uint8_t *)1;
    size_t n = 0;
    td_err_t err = {0};
    CHECK_EQ_INT(td_wire_pack(&env, &buf, &n, &err), TD_ERR_FORMAT);
    CHECK(buf == (uint8_t *)1); /* untouched */
    CHECK(strstr(err.msg, "refusing to send") && strstr(err.msg, "gamma"));
    uint8_t small[64];
    CHECK_EQ_INT(td_wire_pack_to(&env, small, &err), TD_ERR_FORMAT);
    d.gamma = 4;
    REQUIRE(td_wire_packed_size(&env) <= sizeof small);
    CHECK_EQ_INT(td_wire_pack_to(&env, small, &err), TD_OK);
    Tandem__Envelope *out = NULL;
    CHECK_EQ_INT(td_wire_unpack(small, td_wire_packed_size(&env), NULL, &out, &err), TD_OK);
    CHECK(out && out->draft_request->gamma == 4);
    td_wire_free(&out);
}

TD_TEST(field_number_zero_is_refused) {
    /* found by fuzz_wire: protobuf-c keeps an unknown field numbered 0 (tag bytes 80 00) and packs
     * it into bytes it cannot decode again */
    /* version 1, session 7, an empty heartbeat (field 20), then field 0 as varint 0 */
    const uint8_t zero_tag[] = {0x08, 0x01, 0x10, 0x07, 0xa2, 0x01, 0x00, 0x80, 0x00, 0x00};
    Tandem__Envelope *out = NULL;
    td_err_t err = {0};
    CHECK_EQ_INT(td_wire_unpack(zero_tag, sizeof zero_tag, NULL, &out, &err), TD_ERR_FORMAT);
    CHECK(out == NULL && strstr(err.msg, "numbered 0"));
    /* the same heartbeat without the zero-numbered field is fine */
    CHECK_EQ_INT(td_wire_unpack(zero_tag, 7, NULL, &out, &err), TD_OK);
    CHECK(out && out->body_case == TANDEM__ENVELOPE__BODY_HEARTBEAT && out->session_id == 7);
    td_wire_free(&out);
}

/* The fuzz seeds are packed valid messages of every type: each must decode. */
TD_TEST(fuzz_seeds_decode) {
    const char *names[] = {
        "hello",         "hello_ack", "hello_ack_refused", "open_session",    "close_session",
        "draft_request", "proposal",  "full_row_request",  "full_row",        "commit",
        "error",         "heartbeat", "selfspec_eval",     "selfspec_drafts", "planned_fill",
        "planned_filled"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, "fuzz/seeds/fuzz_wire/%s.bin", names[i]);
        FILE *f = fopen(path, "rb");
        CHECK_MSG(f != NULL, "missing seed %s (run from the repository root)", path);
        if (!f) continue;
        uint8_t buf[4096];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        Tandem__Envelope *out = NULL;
        td_err_t err = {0};
        CHECK_MSG(td_wire_unpack(buf, n, NULL, &out, &err) == TD_OK, "%s: %s", path, err.msg);
        if (out)
            CHECK_STR(td_wire_body_name(out),
                      strncmp(names[i], "hello_ack", 9) ? names[i] : "hello_ack");
        td_wire_free(&out);
    }
}

/* ---- selfspec and planned across processes ---- */

TD_TEST(selfspec_eval_rules) {
    td_wire_limits_t lim = td_wire_limits_default();
    lim.vocab_size = 100;
    lim.max_tokens = 64;
    Tandem__Envelope env;
    Tandem__SelfspecEval e;
    uint32_t prefix[4] = {1, 2, 3, 4}, tails[6] = {5, 99, 99, 6, 99, 99};
    uint32_t lens[2] = {3, 3}, starts[2] = {4, 5};
    td_wire_selfspec_eval_init(&env, &e, 3, 1);
    e.prefix = prefix, e.n_prefix = 4, e.tails = tails, e.n_tails = 6;
    e.tail_lens = lens, e.n_tail_lens = 2, e.canvas_starts = starts, e.n_canvas_starts = 2;
    e.draft_k = 4;
    CHECK_GOOD(&env, &lim);
    Tandem__Envelope *rt = s_roundtrip(&env, &lim);
    CHECK(rt && rt->body_case == TANDEM__ENVELOPE__BODY_SELFSPEC_EVAL &&
          rt->selfspec_eval->n_tails == 6 && rt->selfspec_eval->canvas_starts[1] == 5);
    td_wire_free(&rt);
    env.session_id = 0;
    CHECK_BAD(&env, &lim, "without a session id");
    env.session_id = 3;
    e.draft_k = 0;
    CHECK_BAD(&env, &lim, "draft_k = 0");
    e.draft_k = 17;
    CHECK_BAD(&env, &lim, "draft_k = 17");
    e.draft_k = 16;
    CHECK_GOOD(&env, &lim);
    e.n_canvas_starts = 1;
    CHECK_BAD(&env, &lim, "2 tail_lens but 1 canvas_starts");
    e.n_canvas_starts = 2;
    starts[0] = 3; /* before the end of the prefix */
    CHECK_BAD(&env, &lim, "canvas_starts[0] = 3");
    starts[0] = 7; /* past the state's end (4 + 3) */
    CHECK_BAD(&env, &lim, "canvas_starts[0] = 7");
    starts[0] = 6;
    CHECK_GOOD(&env, &lim);
    starts[0] = 4;
    lens[0] = 2; /* sums to 5, 6 sent */
    CHECK_BAD(&env, &lim, "sum to 5");
    lens[0] = 0;
    CHECK_BAD(&env, &lim, "tail_lens[0] is 0");
    lens[0] = 3;
    tails[2] = 100;
    CHECK_BAD(&env, &lim, "outside the vocabulary");
    tails[2] = 99;
    e.n_tail_lens = e.n_canvas_starts = 0;
    CHECK_BAD(&env, &lim, "0 states");
    e.n_tail_lens = e.n_canvas_starts = 2;
    lim.max_tokens = 6; /* a state of 7 tokens */
    CHECK_BAD(&env, &lim, "more than the limit");
}

TD_TEST(selfspec_drafts_rules) {
    td_wire_limits_t lim = td_wire_limits_default();
    lim.vocab_size = 100;
    Tandem__Envelope env;
    Tandem__SelfspecDrafts d;
    uint32_t counts[2] = {2, 1}, pos[3] = {0, 2, 1}, toks[3] = {5, 6, 7};
    td_wire_selfspec_drafts_init(&env, &d, 3, 1);
    d.counts = counts, d.n_counts = 2, d.positions = pos, d.n_positions = 3;
    d.tokens = toks, d.n_tokens = 3;
    CHECK_GOOD(&env, &lim);
    Tandem__Envelope *rt = s_roundtrip(&env, &lim);
    CHECK(rt && rt->selfspec_drafts->n_counts == 2 && rt->selfspec_drafts->tokens[2] == 7);
    td_wire_free(&rt);
    d.n_tokens = 2;
    CHECK_BAD(&env, &lim, "counts sum to 3 but 3 positions and 2 tokens");
    d.n_tokens = 3;
    counts[0] = 17;
    CHECK_BAD(&env, &lim, "counts[0] = 17");
    counts[0] = 2;
    toks[1] = 100;
    CHECK_BAD(&env, &lim, "outside the vocabulary");
    toks[1] = 6;
    d.n_counts = 0;
    CHECK_BAD(&env, &lim, "0 states");
}

TD_TEST(planned_fill_rules) {
    td_wire_limits_t lim = td_wire_limits_default();
    lim.vocab_size = 100;
    Tandem__Envelope env;
    Tandem__PlannedFill f;
    Tandem__Sampling s;
    uint32_t ctx[3] = {1, 2, 3}, rows[9] = {1, 0, 0, 2, 0, 0, 3, 0, 0}, units[2] = {2, 3};
    uint32_t tags[6] = {90, 91, 92, 93, 94, 95};
    uint64_t rng[4] = {1, 2, 3, 4};
    td_wire_planned_fill_init(&env, &f, 5, 1);
    tandem__sampling__init(&s);
    f.context = ctx, f.n_context = 3, f.span_units = units, f.n_span_units = 2;
    f.steps_ratio = 1.0f, f.rng_state = rng, f.n_rng_state = 4, f.capacity = 60;
    f.tags = tags, f.n_tags = 6;
    CHECK_GOOD(&env, &lim);
    f.context_rows = rows, f.n_context_rows = 9;
    f.sampling = &s;
    CHECK_GOOD(&env, &lim);
    Tandem__Envelope *rt = s_roundtrip(&env, &lim);
    CHECK(rt && rt->planned_fill->n_context_rows == 9 && rt->planned_fill->rng_state[3] == 4 &&
          rt->planned_fill->tags[5] == 95);
    td_wire_free(&rt);
    f.n_context_rows = 6;
    CHECK_BAD(&env, &lim, "0 or 3 x 3 expected");
    f.n_context_rows = 9;
    rows[3] = 4; /* pre past the context */
    CHECK_BAD(&env, &lim, "context_rows of token 1");
    rows[3] = 2;
    rows[7] = 2, rows[8] = 1; /* lo > hi */
    CHECK_BAD(&env, &lim, "context_rows of token 2");
    rows[7] = rows[8] = 0;
    units[1] = 0;
    CHECK_BAD(&env, &lim, "span_units[1] = 0");
    units[1] = 100;
    CHECK_BAD(&env, &lim, "span_units[1] = 100");
    units[1] = 3;
    f.n_span_units = 0;
    CHECK_BAD(&env, &lim, "0 spans");
    f.n_span_units = 2;
    f.steps_ratio = 0.0f;
    CHECK_BAD(&env, &lim, "steps_ratio = 0");
    f.steps_ratio = NAN;
    CHECK_BAD(&env, &lim, "steps_ratio = nan");
    f.steps_ratio = 0.25f;
    f.n_rng_state = 3;
    CHECK_BAD(&env, &lim, "rng_state has 3 words");
    f.n_rng_state = 4;
    rng[0] = rng[1] = rng[2] = rng[3] = 0;
    CHECK_BAD(&env, &lim, "all zero");
    rng[0] = 9;
    f.capacity = 0;
    CHECK_BAD(&env, &lim, "capacity = 0");
    f.capacity = 60;
    f.n_tags = 5;
    CHECK_BAD(&env, &lim, "5 tags");
    f.n_tags = 6;
    tags[2] = 100;
    CHECK_BAD(&env, &lim, "outside the vocabulary");
    tags[2] = 92;
    f.n_context = 0, f.n_context_rows = 0;
    CHECK_BAD(&env, &lim, "context is empty");
    f.n_context = 3;
    s.temperature = -1;
    CHECK_BAD(&env, &lim, "temperature");
    s.temperature = 0;
    CHECK_GOOD(&env, &lim);
}

TD_TEST(planned_filled_rules) {
    td_wire_limits_t lim = td_wire_limits_default();
    lim.vocab_size = 100;
    Tandem__Envelope env;
    Tandem__PlannedFilled f;
    uint32_t sc[12] = {90, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 91};
    uint64_t rng[4] = {1, 2, 3, 4};
    td_wire_planned_filled_init(&env, &f, 5, 1);
    f.scaffold = sc, f.n_scaffold = 12, f.rng_state = rng, f.n_rng_state = 4;
    f.forwards = 10, f.span_steps = 10;
    CHECK_GOOD(&env, &lim);
    Tandem__Envelope *rt = s_roundtrip(&env, &lim);
    CHECK(rt && rt->planned_filled->n_scaffold == 12 && rt->planned_filled->forwards == 10);
    td_wire_free(&rt);
    f.n_scaffold = 2;
    CHECK_BAD(&env, &lim, "scaffold has 2 tokens");
    f.n_scaffold = 12;
    sc[4] = 100;
    CHECK_BAD(&env, &lim, "outside the vocabulary");
    sc[4] = 4;
    f.n_rng_state = 0;
    CHECK_BAD(&env, &lim, "rng_state has 0 words");
    f.n_rng_state = 4;
    f.span_steps = 10 * 64 + 1;
    CHECK_BAD(&env, &lim, "more than forwards x spans");
    f.span_steps = 10;
    f.forwards = 10241;
    CHECK_BAD(&env, &lim, "forwards = 10241");
}

TD_TEST_MAIN()
