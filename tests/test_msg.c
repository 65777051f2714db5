/* test_msg.c - td_msg_t (protocol/msg.h), the plain form of the protocol's messages.
 *
 * - Every body converts both ways without losing or mixing up a field: an envelope whose every
 *   field (nested ones too) holds its own nonzero value goes envelope -> td_msg_t -> envelope and
 *   packs to the same bytes. The fields are found through protobuf-c's descriptors, so a field
 *   added to tandem.proto and forgotten in msg.c fails here.
 * - A received message borrows its arrays from the decoded buffer it owns (no copies).
 * - td_msg_encode / td_msg_decode validate as the wire does; the transport carries td_msg_t.
 * - The plain enums and names agree with the wire's. */
#include "protocol/transport_wire.h"
#include "tests/tdtest.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- an envelope with every field set, from the descriptors ---- */

typedef struct arena {
    void *p[4096];
    int n;
} arena_t;

static void *s_alloc(arena_t *a, size_t n) {
    void *p = a->n < 4096 ? calloc(1, n ? n : 1) : NULL;
    if (!p) {
        td_test_fail(__FILE__, __LINE__, "test arena: out of memory");
        exit(1);
    }
    return a->p[a->n++] = p;
}

static void s_arena_free(arena_t *a) {
    for (int i = 0; i < a->n; i++) free(a->p[i]);
    a->n = 0;
}

static size_t s_elem_size(ProtobufCType t) {
    switch (t) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    default:
        return 4;
    }
}

static void s_fill_msg(ProtobufCMessage *m, arena_t *a, unsigned *k);

/* One value of field f at p, distinct from every other value (*k counts them). */
static void s_fill_value(const ProtobufCFieldDescriptor *f, void *p, arena_t *a, unsigned *k) {
    unsigned v = ++*k;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        *(uint64_t *)p = 0x100000000ull * v + v;
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        *(float *)p = 0.5f + (float)v;
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        *(double *)p = 0.5 + v;
        break;
    case PROTOBUF_C_TYPE_BOOL:
        *(protobuf_c_boolean *)p = 1;
        break;
    case PROTOBUF_C_TYPE_STRING: {
        char *s = s_alloc(a, 16);
        snprintf(s, 16, "s%u", v);
        *(char **)p = s;
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        uint8_t *b = s_alloc(a, 4);
        b[0] = (uint8_t)v, b[1] = (uint8_t)(v >> 8), b[2] = 7, b[3] = 9;
        *(ProtobufCBinaryData *)p = (ProtobufCBinaryData){4, b};
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessageDescriptor *d = f->descriptor;
        ProtobufCMessage *sub = s_alloc(a, d->sizeof_message);
        d->message_init(sub);
        s_fill_msg(sub, a, k);
        *(ProtobufCMessage **)p = sub;
        break;
    }
    default: /* 32-bit integers and enums (any value packs) */
        *(uint32_t *)p = v;
        break;
    }
}

static void s_fill_msg(ProtobufCMessage *m, arena_t *a, unsigned *k) {
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        void *p = (char *)m + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = 3, es = s_elem_size(f->type);
            char *arr = s_alloc(a, n * es);
            for (size_t j = 0; j < n; j++) s_fill_value(f, arr + j * es, a, k);
            *(size_t *)((char *)m + f->quantifier_offset) = n;
            *(void **)p = arr;
        } else {
            s_fill_value(f, p, a, k);
        }
    }
}

static uint8_t *s_pack(const Tandem__Envelope *env, size_t *n, arena_t *a) {
    *n = tandem__envelope__get_packed_size(env);
    uint8_t *buf = s_alloc(a, *n);
    tandem__envelope__pack(env, buf);
    return buf;
}

/* Every body of the envelope's oneof: a full envelope survives envelope -> td_msg_t ->
 * envelope byte for byte. */
TD_TEST(every_body_converts_both_ways_without_loss) {
    const ProtobufCMessageDescriptor *ed = &tandem__envelope__descriptor;
    int bodies = 0;
    for (unsigned i = 0; i < ed->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &ed->fields[i];
        if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)) continue;
        bodies++;
        arena_t *a = calloc(1, sizeof *a);
        REQUIRE(a);
        unsigned k = 0;
        Tandem__Envelope env;
        tandem__envelope__init(&env);
        env.version = TD_PROTOCOL_VERSION;
        env.session_id = 0x1234567890ull;
        env.round = 77;
        s_fill_value(f, (char *)&env + f->offset, a, &k);
        env.body_case = (Tandem__Envelope__BodyCase)f->id;
        size_t n1, n2;
        uint8_t *b1 = s_pack(&env, &n1, a);
        /* decoded without validation (the values are arbitrary), then converted */
        Tandem__Envelope *dec = tandem__envelope__unpack(NULL, n1, b1);
        REQUIRE(dec);
        td_msg_t *m = NULL;
        td_err_t err = {0};
        REQUIRE(td_wire_to_msg(&dec, &m, &err) == TD_OK);
        CHECK(dec == NULL);
        CHECK_EQ_INT((int)m->body, (int)f->id);
        CHECK_STR(td_msg_body_name(m->body), f->name);
        CHECK(m->session_id == env.session_id && m->round == env.round);
        td_wire_env_t w;
        REQUIRE(td_wire_from_msg(m, &w, &err) == TD_OK);
        uint8_t *b2 = s_pack(&w.env, &n2, a);
        CHECK_MSG(n1 == n2 && !memcmp(b1, b2, n1),
                  "%s: %zu bytes in, %zu bytes out of the round trip (%u fields set)", f->name, n1,
                  n2, k);
        td_wire_env_release(&w);
        td_msg_free(&m);
        CHECK(m == NULL);
        s_arena_free(a);
        free(a);
    }
    CHECK_EQ_INT(bodies, 17);
}

/* A Proposal with sparse distributions, built as td_msg_t over arrays of its own. */
typedef struct prop_fix {
    td_msg_t m;
    uint32_t toks[2], ids[4];
    float probs[4];
    td_sparse_dist_t d[2];
} prop_fix_t;

static void s_proposal(prop_fix_t *f) {
    td_msg_init(&f->m, TD_BODY_PROPOSAL, 5, 3);
    f->toks[0] = 11, f->toks[1] = 12;
    f->ids[0] = 11, f->ids[1] = 40, f->ids[2] = 12, f->ids[3] = 41;
    f->probs[0] = 0.5f, f->probs[1] = 0.25f, f->probs[2] = 0.75f, f->probs[3] = 0.125f;
    for (int j = 0; j < 2; j++)
        f->d[j] = (td_sparse_dist_t){.n_ids = 2,
                                     .ids = f->ids + 2 * j,
                                     .n_probs = 2,
                                     .probs = f->probs + 2 * j,
                                     .rest_mass = 1.0f - f->probs[2 * j] - f->probs[2 * j + 1]};
    f->m.proposal.n_tokens = 2;
    f->m.proposal.tokens = f->toks;
    f->m.proposal.n_dists = 2;
    f->m.proposal.dists = f->d;
    f->m.proposal.drafter_us = 99;
}

TD_TEST(decoded_message_borrows_from_its_buffer) {
    prop_fix_t f;
    s_proposal(&f);
    uint8_t *buf = NULL;
    size_t len = 0;
    td_err_t err = {0};
    REQUIRE(td_msg_encode(&f.m, &buf, &len, &err) == TD_OK);
    td_msg_t *got = NULL;
    REQUIRE(td_msg_decode(buf, len, NULL, &got, &err) == TD_OK);
    REQUIRE(got->body == TD_BODY_PROPOSAL);
    const td_proposal_t *p = &got->proposal;
    CHECK(got->session_id == 5 && got->round == 3 && p->drafter_us == 99);
    REQUIRE(p->n_tokens == 2 && p->n_dists == 2);
    CHECK(p->tokens[0] == 11 && p->tokens[1] == 12);
    CHECK(p->dists[1].ids[1] == 41 && p->dists[1].probs[0] == 0.75f);
    CHECK_NEAR(p->dists[0].rest_mass, 0.25f, 1e-6);
    /* the arrays are the decoded envelope's own, not copies */
    const Tandem__Envelope *env = got->owned_;
    REQUIRE(env && env->proposal);
    CHECK(p->tokens == env->proposal->tokens);
    CHECK(p->dists[1].probs == env->proposal->dists[1]->probs);
    td_msg_free(&got);
    CHECK(got == NULL);
    td_msg_free(&got); /* safe twice */
    free(buf);
}

/* What the wire refuses, td_msg_encode and td_msg_decode refuse too. */
TD_TEST(encode_and_decode_validate) {
    prop_fix_t f;
    s_proposal(&f);
    f.probs[1] = 0.9f; /* position 0 sums to 1.4 */
    uint8_t *buf = (uint8_t *)1;
    size_t len = 0;
    td_err_t err = {0};
    CHECK_EQ_INT(td_msg_encode(&f.m, &buf, &len, &err), TD_ERR_FORMAT);
    CHECK(buf == (uint8_t *)1 && err.msg[0]);
    f.m.body = (td_body_t)99;
    CHECK_EQ_INT(td_msg_encode(&f.m, &buf, &len, &err), TD_ERR_FORMAT);
    /* a token id outside the vocabulary the receiver names */
    s_proposal(&f);
    REQUIRE(td_msg_encode(&f.m, &buf, &len, &err) == TD_OK);
    td_wire_limits_t lim = td_wire_limits_default();
    lim.vocab_size = 41;
    td_msg_t *got = (td_msg_t *)1;
    CHECK_EQ_INT(td_msg_decode(buf, len, &lim, &got, &err), TD_ERR_FORMAT);
    CHECK(got == NULL);
    lim.vocab_size = 42;
    CHECK_EQ_INT(td_msg_decode(buf, len, &lim, &got, &err), TD_OK);
    td_msg_free(&got);
    CHECK_EQ_INT(td_msg_decode("\xff\xfe garbage", 10, NULL, &got, &err), TD_ERR_FORMAT);
    free(buf);
}

/* td_msg_init's defaults are td_wire_*_init's. */
TD_TEST(init_defaults_match_the_wire) {
    td_msg_t m;
    td_msg_init(&m, TD_BODY_DRAFT_REQUEST, 4, 2);
    CHECK(m.draft_request.gamma == 1 && m.draft_request.steps == 1 && m.session_id == 4 &&
          m.round == 2 && !m.draft_request.has_sampling && !m.draft_request.n_features);
    td_msg_init(&m, TD_BODY_ERROR, 4, 9);
    CHECK(m.error.in_reply_to_round == 9);
    td_msg_init(&m, TD_BODY_HELLO, 0, 0);
    CHECK(m.hello.protocol_version == TD_PROTOCOL_VERSION && m.hello.mask_token_id == -1);
    td_msg_init(&m, TD_BODY_HEARTBEAT, 0, 0);
    CHECK(m.heartbeat.sent_us > 0);
    /* an empty Hello body is still a valid message once filled */
    td_hello_fill(&m.hello, TD_ROLE_VERIFIER, "v", 10, -1, 3, "t", NULL, 0);
    m.body = TD_BODY_HELLO;
    uint8_t *buf = NULL;
    size_t len = 0;
    td_err_t err = {0};
    CHECK_EQ_INT(td_msg_encode(&m, &buf, &len, &err), TD_OK);
    free(buf);
}

TD_TEST(enums_and_names_agree_with_the_wire) {
    CHECK_EQ_INT(TD_PERR_OUT_OF_ORDER, TANDEM__ERROR_CODE__ERROR_OUT_OF_ORDER);
    CHECK_EQ_INT(TD_PERR_MALFORMED, TANDEM__ERROR_CODE__ERROR_MALFORMED);
    CHECK_EQ_INT(TD_ROLE_DRAFTER, TANDEM__ROLE__ROLE_DRAFTER);
    CHECK_EQ_INT(TD_ROW_PROBS, TANDEM__ROW_KIND__ROW_PROBS);
    Tandem__Envelope env;
    tandem__envelope__init(&env);
    for (int b = 0; b <= 30; b++) {
        env.body_case = (Tandem__Envelope__BodyCase)b;
        CHECK_STR(td_msg_body_name((td_body_t)b), td_wire_body_name(&env));
    }
    CHECK_STR(td_msg_body_name(TD_BODY_NONE), "none");
    CHECK_STR(td_msg_body_name((td_body_t)5), "unknown");
}

/* Hello compatibility on plain Hellos: versions, tokenizers (not for clients), fingerprints. */
TD_TEST(hello_compatibility) {
    td_hello_t a, b;
    const char *caps[] = {"specdiff", "apd"};
    td_hello_fill(&a, TD_ROLE_VERIFIER, "ver", 100, -1, 7, "tok-a", NULL, 0);
    td_hello_fill(&b, TD_ROLE_DRAFTER, "dra", 100, 5, 7, "tok-a", caps, 2);
    int code = -1;
    td_err_t err = {0};
    CHECK_EQ_INT(td_hello_compatible(&a, &b, &code, &err), TD_OK);
    CHECK(td_hello_has_capability(&b, "apd") && !td_hello_has_capability(&b, "ap") &&
          !td_hello_has_capability(&a, "apd") && !td_hello_has_capability(NULL, "apd"));
    b.tokenizer_hash = 8;
    CHECK_EQ_INT(td_hello_compatible(&a, &b, &code, &err), TD_ERR_UNSUPPORTED);
    CHECK_EQ_INT(code, TD_PERR_TOKENIZER_MISMATCH);
    CHECK(strstr(err.msg, "tok-a") && strstr(err.msg, "dra"));
    a.role = TD_ROLE_CLIENT;
    CHECK_EQ_INT(td_hello_compatible(&a, &b, &code, &err), TD_OK);
    b.protocol_version = 2;
    CHECK_EQ_INT(td_hello_compatible(&a, &b, &code, &err), TD_ERR_UNSUPPORTED);
    CHECK_EQ_INT(code, TD_PERR_VERSION);
    b.protocol_version = TD_PROTOCOL_VERSION;
    uint64_t fa[1] = {1}, fb[2] = {2, 3};
    a.n_target_fingerprints = 1, a.target_fingerprints = fa;
    b.n_target_fingerprints = 2, b.target_fingerprints = fb;
    CHECK_EQ_INT(td_hello_compatible(&a, &b, &code, &err), TD_ERR_UNSUPPORTED);
    CHECK_EQ_INT(code, TD_PERR_UNSUPPORTED);
    fb[1] = 1;
    CHECK_EQ_INT(td_hello_compatible(&a, &b, &code, &err), TD_OK);
}

/* The transport carries td_msg_t both ways: a handshake with plain Hellos, a proposal with
 * distributions from server to client, a malformed one refused by name. */
TD_TEST(transport_carries_messages) {
    char ep[128];
    snprintf(ep, sizeof ep, "inproc://td-msg-%d", (int)getpid());
    td_err_t err = {0};
    td_server_t *srv = td_server_new(ep, NULL, &err);
    REQUIRE(srv);
    td_client_t *cl = td_client_new(ep, NULL, &err);
    REQUIRE(cl);
    td_msg_t hello;
    td_msg_init(&hello, TD_BODY_HELLO, 0, 0);
    const char *caps[] = {"specdiff"};
    td_hello_fill(&hello.hello, TD_ROLE_VERIFIER, "ver", 100, -1, 7, "tok", caps, 1);
    REQUIRE(td_client_send(cl, &hello, &err) == TD_OK);
    td_routing_id_t from;
    td_msg_t *in = NULL;
    REQUIRE(td_server_recv(srv, &from, &in, 5000, &err) == TD_RECV_OK);
    REQUIRE(in->body == TD_BODY_HELLO);
    CHECK_STR(in->hello.model_id, "ver");
    CHECK(td_hello_has_capability(&in->hello, "specdiff") && in->hello.tokenizer_hash == 7);
    td_hello_t ours;
    td_hello_fill(&ours, TD_ROLE_DRAFTER, "dra", 100, -1, 7, "tok", caps, 1);
    CHECK_EQ_INT(td_server_answer_hello(srv, &from, &ours, &in->hello, &err), TD_OK);
    td_msg_free(&in);
    REQUIRE(td_client_recv(cl, &in, 5000, &err) == TD_RECV_OK);
    REQUIRE(in->body == TD_BODY_HELLO_ACK);
    CHECK(in->hello_ack.accepted && in->hello_ack.has_hello && !in->hello_ack.has_error);
    CHECK_STR(in->hello_ack.hello.model_id, "dra");
    td_msg_free(&in);
    /* a proposal back, and one that fails validation on the sending side */
    prop_fix_t f;
    s_proposal(&f);
    CHECK_EQ_INT(td_server_send(srv, &from, &f.m, &err), TD_OK);
    REQUIRE(td_client_recv(cl, &in, 5000, &err) == TD_RECV_OK);
    REQUIRE(in->body == TD_BODY_PROPOSAL && in->proposal.n_dists == 2);
    CHECK(in->proposal.dists[0].ids[1] == 40 && in->proposal.dists[1].probs[1] == 0.125f);
    td_msg_free(&in);
    f.probs[0] = 2.0f;
    CHECK_EQ_INT(td_server_send(srv, &from, &f.m, &err), TD_ERR_FORMAT);
    CHECK_EQ_INT(td_client_recv(cl, &in, 50, &err), TD_RECV_TIMEOUT);
    CHECK(in == NULL);
    /* an error code by name */
    CHECK_EQ_INT(td_server_send_error(srv, &from, 5, 4, TD_PERR_BUSY, "full", &err), TD_OK);
    REQUIRE(td_client_recv(cl, &in, 5000, &err) == TD_RECV_OK);
    REQUIRE(in->body == TD_BODY_ERROR);
    CHECK(in->error.code == TD_PERR_BUSY && in->session_id == 5 && in->round == 4);
    CHECK_STR(in->error.message, "full");
    td_msg_free(&in);
    td_client_destroy(&cl);
    td_server_destroy(&srv);
}

TD_TEST_MAIN()
