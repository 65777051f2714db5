/* test_faults.c - faults between real processes over real sockets: a drafter that is killed,
 * stalls, comes back, or answers garbage mid-generation; a drafter whose tokenizer differs.
 * The request must always complete (the verifier does those rounds as plain AR and counts them),
 * greedy output must stay identical to AR, and speculation must resume when the drafter is back. */
#include "tests/tdtest.h"
#include "tests/tdproc.h"

#include "bridge/pair.h"
#include "protocol/transport_wire.h"
#include "verifier/spec.h"

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#define VDIR "tests/data/e2e/qwen2-chat"
#define ARDIR "tests/data/e2e/qwen2-ar-drafter"

static char s_dir[64], s_ep[128];
static td_pair_t *s_cur_pair;

static pid_t s_spawn_drafter(const char *model) {
    return td_test_spawn_worker("tandem-drafter", model, s_ep, NULL);
}

static void s_kill(pid_t pid) { td_test_stop(pid, SIGKILL); }

static void s_setup(void) {
    snprintf(s_dir, sizeof s_dir, "/tmp/td_faults_XXXXXX");
    if (!mkdtemp(s_dir)) abort();
    snprintf(s_ep, sizeof s_ep, "ipc://%s/drafter.sock", s_dir);
}

static void s_teardown(void) { td_test_rmtree(s_dir); }

/* Connects (retrying while the worker starts). */
static int s_open(td_pair_t *pair, const char *ep, td_err_t *err) {
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1, .timeout_ms = 500};
    s_cur_pair = pair;
    return td_test_pair_open_retry(pair, VDIR, ep, &po, 40, err) == TD_OK ? TD_OK : TD_ERR;
}

static const int32_t s_prompt[] = {35, 279, 223, 41, 81, 70, 282, 67};

static void s_ar_reference(td_model_t *v, int n, int32_t *ref) {
    td_gen_params_t gp = {.max_tokens = n, .sampling = {0, 0, 1}};
    td_gen_stats_t gs;
    td_err_t err = {0};
    if (td_generate_ar(v, s_prompt, 8, &gp, NULL, NULL, ref, &gs, &err) != TD_OK ||
        gs.generated != n)
        abort();
}

/* The callback plays the operator: at given token counts it kills, stops, continues or restarts
 * the drafter process. */
typedef struct chaos {
    pid_t pid;
    int n;
    int kill_at, restart_at, stop_at, cont_at;
    const char *model;
} chaos_t;

static int s_chaos(void *ud, int32_t id) {
    chaos_t *c = ud;
    c->n++;
    if (c->n == c->kill_at) s_kill(c->pid), c->pid = 0;
    if (c->n == c->restart_at) c->pid = s_spawn_drafter(c->model), usleep(300 * 1000);
    if (c->n == c->stop_at) kill(c->pid, SIGSTOP);
    if (c->n == c->cont_at) kill(c->pid, SIGCONT);
    return 0;
}

static td_spec_params_t s_greedy(int n) {
    td_spec_params_t p = td_spec_params_default(TD_METHOD_SPEC_AR);
    p.hello = s_cur_pair ? &s_cur_pair->hello : NULL;
    p.gamma = 4;
    p.max_tokens = n;
    p.drafter_timeout_ms = 300;
    return p;
}

/* Starts the AR drafter worker that c disturbs and opens the pair to it. */
static int s_chaos_begin(chaos_t *c, td_pair_t *pair) {
    s_setup();
    c->model = ARDIR;
    c->pid = s_spawn_drafter(ARDIR);
    td_err_t err = {0};
    int rc = s_open(pair, s_ep, &err);
    if (rc != TD_OK) printf("    open: %s\n", err.msg);
    return rc;
}

static void s_chaos_end(chaos_t *c, td_pair_t *pair) {
    td_pair_close(pair);
    s_kill(c->pid);
    s_teardown();
}

/* td_spec_generate of out[p->max_tokens] after s_prompt (session id) with c disturbing the
 * drafter as the tokens come. */
static int s_chaos_generate(td_pair_t *pair, chaos_t *c, uint64_t session,
                            const td_spec_params_t *p, int32_t *out, td_spec_stats_t *st) {
    td_err_t err = {0};
    int rc = td_spec_generate(pair->verifier, pair->dc, session, s_prompt, 8, p, s_chaos, c, out,
                              st, &err);
    if (rc != TD_OK) printf("    generate: %s\n", err.msg);
    return rc;
}

/* Greedy generation of n tokens while c disturbs the drafter (WHAT says how): it completes, equals
 * plain AR decoding, fell back at least once, and speculated again after (more than min_rounds
 * rounds: more than could have happened before the disturbance). */
static void s_greedy_chaos(chaos_t c, int n, uint64_t session, const char *what, int min_rounds) {
    td_pair_t pair;
    REQUIRE(s_chaos_begin(&c, &pair) == TD_OK);
    int32_t *ref = malloc(sizeof(int32_t) * (size_t)n), *out = malloc(sizeof(int32_t) * (size_t)n);
    REQUIRE(ref && out);
    s_ar_reference(pair.verifier, n, ref);
    td_spec_params_t p = s_greedy(n);
    td_spec_stats_t st;
    double t0 = td_time_now();
    CHECK(s_chaos_generate(&pair, &c, session, &p, out, &st) == TD_OK);
    printf("    %s: %d tokens in %.2f s, %d rounds, %d fallbacks (%s)\n", what, st.generated,
           td_time_now() - t0, st.rounds, st.fallbacks, st.last_fallback);
    CHECK_EQ_INT(st.generated, n);
    CHECK(memcmp(out, ref, sizeof(int32_t) * (size_t)n) == 0);
    CHECK(st.fallbacks > 0);
    CHECK(st.rounds > min_rounds);
    free(ref), free(out);
    s_chaos_end(&c, &pair);
}

TD_TEST(drafter_killed_then_restarted) {
    s_greedy_chaos((chaos_t){.kill_at = 12, .restart_at = 30}, 90, 42,
                   "killed at token 12, back at 30", 12);
}

/* Every token of out[n] (after the 8-token prompt) has non-zero probability under the verifier's
 * sampling distribution sp given the tokens before it. */
static void s_check_support(td_model_t *v, const td_sampling_t *sp, const int32_t *out, int n) {
    const int V = td_model_config(v)->n_vocab, total = 8 + n - 1;
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)total);
    uint8_t *sel = calloc((size_t)total, 1);
    float *logits = malloc(sizeof(float) * (size_t)n * V), *prob = malloc(sizeof(float) * V);
    memcpy(toks, s_prompt, sizeof s_prompt);
    memcpy(toks + 8, out, sizeof(int32_t) * (size_t)(n - 1));
    for (int i = 7; i < total; i++) sel[i] = 1;
    td_err_t err = {0};
    td_kv_cache_t *kv = td_kv_cache_new(v, 1, total, &err);
    td_batch_t b = {.n = total, .tokens = toks, .attn = TD_ATTN_CAUSAL, .logits_for = sel};
    CHECK(kv && td_model_forward(v, kv, &b, logits, &err) == TD_OK);
    int outside = 0;
    for (int i = 0; i < n; i++) {
        td_sampling_dist(sp, logits + (size_t)i * V, V, prob);
        if (!(prob[out[i]] > 0)) {
            if (!outside) printf("    token %d (%d) is outside the target's support\n", i, out[i]);
            outside++;
        }
    }
    CHECK_MSG(outside == 0, "%d of %d tokens outside the verifier's top-k support", outside, n);
    td_kv_cache_destroy(&kv);
    free(toks), free(sel), free(logits), free(prob);
}

/* The sampled path (temperature > 0, rejection sampling with distributions on the wire) through a
 * drafter that is killed and restarted: the generation completes, speculation resumes, and every
 * token lies in the verifier's top-3 support although the drafter samples from its top 8 (a
 * draft token let through unchecked, or a residual drawn from the drafter's row,
 * would land outside it). */
TD_TEST(drafter_killed_then_restarted_sampled) {
    chaos_t c = {.kill_at = 12, .restart_at = 30};
    td_pair_t pair;
    REQUIRE(s_chaos_begin(&c, &pair) == TD_OK);
    enum { N = 90 };
    int32_t out[N];
    td_spec_params_t p = s_greedy(N);
    p.sampling = (td_sampling_t){1.0f, 3, 1.0f};
    p.draft_sampling = (td_sampling_t){1.0f, 8, 1.0f};
    p.seed = 77;
    td_spec_stats_t st;
    CHECK(s_chaos_generate(&pair, &c, 45, &p, out, &st) == TD_OK);
    printf("    sampled, killed at token 12, back at 30: %d tokens, %d rounds, %d fallbacks, "
           "%d/%d accepted, %d full rows (%s)\n",
           st.generated, st.rounds, st.fallbacks, st.accepted, st.drafted, st.full_rows,
           st.last_fallback);
    CHECK_EQ_INT(st.generated, N);
    CHECK(st.fallbacks > 0);
    CHECK(st.rounds > 12);
    CHECK(st.accepted > 0 && st.accepted < st.drafted); /* both branches of the rule ran */
    s_check_support(pair.verifier, &p.sampling, out, st.generated);
    s_chaos_end(&c, &pair);
}

TD_TEST(drafter_stalls_then_continues) {
    s_greedy_chaos((chaos_t){.stop_at = 10, .cont_at = 25}, 80, 43, "stalled from token 10 to 25",
                   10);
}

/* A fake drafter that completes the handshake properly, then answers every DraftRequest with
 * garbage: raw bytes, a proposal of the wrong length, or out-of-vocabulary tokens. */
typedef struct fake {
    const td_hello_t *hello;
    volatile int stop;
    int answered;
} fake_t;

static void *s_fake(void *arg) {
    fake_t *f = arg;
    td_transport_opts_t to = {0};
    td_err_t err = {0};
    td_server_t *srv = td_server_new(s_ep, &to, &err);
    if (!srv) return NULL;
    while (!f->stop) {
        td_routing_id_t from;
        Tandem__Envelope *env = NULL;
        if (td_server_recv_env(srv, &from, &env, 50, NULL) != TD_RECV_OK) continue;
        if (env->body_case == TANDEM__ENVELOPE__BODY_HELLO) {
            Tandem__Hello ours;
            td_wire_hello_from_msg(f->hello, &ours);
            td_server_answer_hello_env(srv, &from, &ours, env->hello, NULL);
        } else if (env->body_case == TANDEM__ENVELOPE__BODY_DRAFT_REQUEST) {
            int kind = f->answered++ % 3;
            zmq_send(td_server_socket(srv), from.data, from.len, ZMQ_SNDMORE);
            if (kind == 0) {
                zmq_send(td_server_socket(srv), "\xff\xfe garbage", 10, 0);
            } else {
                Tandem__Envelope out;
                Tandem__Proposal pr;
                td_wire_proposal_init(&out, &pr, env->session_id, env->round);
                uint32_t toks[300];
                for (int i = 0; i < 300; i++) toks[i] = kind == 1 ? 5u : 1000000u;
                pr.n_tokens = kind == 1 ? env->draft_request->gamma + 1 : env->draft_request->gamma;
                pr.tokens = toks;
                /* packed by hand: our own validation would refuse to send this */
                size_t len = tandem__envelope__get_packed_size(&out);
                uint8_t *buf = malloc(len);
                tandem__envelope__pack(&out, buf);
                zmq_send(td_server_socket(srv), buf, len, 0);
                free(buf);
            }
        }
        td_wire_free(&env);
    }
    td_server_destroy(&srv);
    return NULL;
}

/* The garbage drafter at temperature t: every round falls back to plain AR, so the output is the
 * verifier's own AR output for the same seed (greedy, or sampled: the fallback draws from the same
 * generator in the same order as td_generate_ar). */
static void s_garbage(float temperature) {
    s_setup();
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(1, 0, &err);
    td_model_t *dm = td_model_load(ARDIR, be, &err);
    td_tokenizer_t *tok = td_tokenizer_load(ARDIR, &err);
    REQUIRE(be && dm && tok);
    td_drafter_service_t *svc = td_drafter_service_new(dm, tok, NULL, &err);
    REQUIRE(svc);
    fake_t f = {.hello = td_drafter_service_hello(svc)};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_fake, &f) == 0);
    td_pair_t pair;
    REQUIRE(s_open(&pair, s_ep, &err) == TD_OK);
    enum { N = 30 };
    int32_t ref[N], out[N];
    td_spec_params_t p = s_greedy(N);
    if (temperature > 0) {
        p.sampling = p.draft_sampling = (td_sampling_t){temperature, 0, 1.0f};
        p.seed = 1234;
        td_gen_params_t gp = {.max_tokens = N, .sampling = p.sampling, .seed = p.seed};
        td_gen_stats_t gs;
        REQUIRE(td_generate_ar(pair.verifier, s_prompt, 8, &gp, NULL, NULL, ref, &gs, &err) ==
                TD_OK);
        REQUIRE(gs.generated == N);
    } else {
        s_ar_reference(pair.verifier, N, ref);
    }
    td_spec_stats_t st;
    CHECK(td_spec_generate(pair.verifier, pair.dc, 44, s_prompt, 8, &p, NULL, NULL, out, &st,
                           &err) == TD_OK);
    printf(
        "    garbage drafter, T=%.1f: %d tokens, %d rounds, %d fallbacks after %d garbage answers "
        "(last: %s)\n",
        temperature, st.generated, st.rounds, st.fallbacks, f.answered, st.last_fallback);
    CHECK_EQ_INT(st.generated, N);
    CHECK(memcmp(out, ref, sizeof ref) == 0);
    CHECK_EQ_INT(st.rounds, 0);
    CHECK(st.fallbacks >= 3 && f.answered >= 3);
    td_pair_close(&pair);
    f.stop = 1;
    pthread_join(th, NULL);
    td_drafter_service_destroy(&svc);
    td_tokenizer_destroy(&tok);
    td_model_destroy(&dm);
    td_backend_destroy(&be);
    s_teardown();
}

TD_TEST(drafter_answers_garbage) { s_garbage(0.0f); }
TD_TEST(drafter_answers_garbage_sampled) { s_garbage(0.9f); }

TD_TEST(tokenizer_mismatch_refused_at_connect) {
    s_setup();
    /* a drafter whose tokenizer differs in one vocabulary entry */
    char dir[128], cmd[512];
    snprintf(dir, sizeof dir, "%s/other", s_dir);
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s && cp " ARDIR "/config.json " ARDIR "/model.safetensors %s/", dir, dir);
    REQUIRE(system(cmd) == 0);
    char *data = NULL;
    size_t len = 0;
    REQUIRE(td_read_file(ARDIR "/tokenizer.json", &data, &len, NULL) == TD_OK);
    cJSON *j = cJSON_Parse(data);
    free(data);
    REQUIRE(j);
    cJSON *vocab = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "vocab");
    cJSON *a = cJSON_GetObjectItem(vocab, "a"), *b = cJSON_GetObjectItem(vocab, "b");
    REQUIRE(a && b);
    int ia = a->valueint, ib = b->valueint;
    cJSON_SetNumberValue(a, ib);
    cJSON_SetNumberValue(b, ia);
    char *txt = cJSON_PrintUnformatted(j);
    snprintf(cmd, sizeof cmd, "%s/tokenizer.json", dir);
    FILE *f = fopen(cmd, "w");
    REQUIRE(f);
    fputs(txt, f);
    fclose(f);
    free(txt);
    cJSON_Delete(j);
    pid_t pid = s_spawn_drafter(dir);
    td_pair_t pair;
    td_err_t err = {0};
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1, .timeout_ms = 500};
    int rc = TD_ERR;
    for (int i = 0; i < 40; i++) {
        memset(&err, 0, sizeof err);
        rc = td_pair_open(&pair, VDIR, s_ep, &po, &err);
        td_pair_close(&pair);
        if (rc != TD_OK && strstr(err.msg, "tokenizer")) break;
        usleep(100 * 1000);
    }
    printf("    refused: %s\n", err.msg);
    CHECK(rc != TD_OK);
    CHECK(strstr(err.msg, "tokenizer") != NULL);
    s_kill(pid);
    s_teardown();
}

/* Three real processes: drafter worker, verifier worker, and the tandem command as a client. */

/* td_test_run, timed */
static int s_popen(const char *cmd, char *out, size_t cap, double *secs) {
    double t0 = td_time_now();
    int rc = td_test_run(cmd, out, cap);
    *secs = td_time_now() - t0;
    return rc;
}

TD_TEST(remote_verifier_serves_and_its_death_is_reported) {
    s_setup();
    char vep[160], cmd[4096], out[65536];
    snprintf(vep, sizeof vep, "ipc://%s/verifier.sock", s_dir);
    pid_t d = td_test_spawn_worker("tandem-drafter", "tests/data/e2e/dream-drafter", s_ep, NULL);
    pid_t v = td_test_spawn_worker("tandem-verifier", VDIR, vep,
                                   (const char *const[]){"--drafter", s_ep, NULL});
    double secs = 0;
    /* the three processes produce AR greedy output (tests/data/e2e/qwen2-chat/greedy.json) */
    snprintf(cmd, sizeof cmd,
             "%s generate --verifier %s --method specdiff --chat none --max-tokens 24 "
             "--temperature 0 --json --prompt 'And God said' 2>&1",
             td_test_bin("tandem"), vep);
    int rc = -1;
    for (int i = 0; i < 30 && rc != 0; i++) {
        rc = s_popen(cmd, out, sizeof out, &secs);
        if (rc != 0) usleep(100 * 1000);
    }
    CHECK_EQ_INT(rc, 0);
    cJSON *j = cJSON_Parse(out);
    char *ref = NULL;
    size_t rl = 0;
    REQUIRE(td_read_file(VDIR "/greedy.json", &ref, &rl, NULL) == TD_OK);
    cJSON *rj = cJSON_Parse(ref);
    free(ref);
    REQUIRE(j && rj);
    char *a = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "tokens")),
         *b = cJSON_PrintUnformatted(cJSON_GetObjectItem(rj, "tokens"));
    CHECK_STR(a, b);
    cJSON *stats = cJSON_GetObjectItem(j, "stats");
    CHECK(stats && cJSON_GetObjectItem(stats, "rounds")->valueint > 0);
    free(a), cJSON_Delete(j);
    /* three clients at once (the worker decodes them together, one verifier forward per round):
     * each gets the same tokens as alone; one of them asks for ar, one for more tokens */
    char f[3][300];
    for (int k = 0; k < 3; k++) snprintf(f[k], sizeof f[k], "%s/client%d.json", s_dir, k);
    snprintf(cmd, sizeof cmd,
             "B=%s; V=%s; A='--chat none --temperature 0 --json --prompt \"And God said\"'; "
             "eval $B generate --verifier $V --method specdiff --max-tokens 24 $A > %s 2>&1 & "
             "eval $B generate --verifier $V --method ar --max-tokens 24 $A > %s 2>&1 & "
             "eval $B generate --verifier $V --method specdiff --gamma 4 --max-tokens 24 $A > %s "
             "2>&1; wait",
             td_test_bin("tandem"), vep, f[0], f[1], f[2]);
    CHECK_EQ_INT(system(cmd), 0);
    for (int k = 0; k < 3; k++) {
        char *txt = NULL;
        size_t tl = 0;
        REQUIRE(td_read_file(f[k], &txt, &tl, NULL) == TD_OK);
        cJSON *cj = cJSON_Parse(txt);
        CHECK_MSG(cj != NULL, "client %d: %.300s", k, txt);
        char *ca = cj ? cJSON_PrintUnformatted(cJSON_GetObjectItem(cj, "tokens")) : NULL;
        CHECK_MSG(ca && !strcmp(ca, b), "client %d of 3 concurrent: %s, alone: %s", k,
                  ca ? ca : "(none)", b);
        free(ca), cJSON_Delete(cj), free(txt);
    }
    free(b), cJSON_Delete(rj);
    /* a hung verifier: the client reports it within its timeout */
    kill(v, SIGSTOP);
    snprintf(cmd, sizeof cmd,
             "%s generate --verifier %s --timeout-ms 1000 --chat none --prompt x 2>&1",
             td_test_bin("tandem"), vep);
    rc = s_popen(cmd, out, sizeof out, &secs);
    printf("    hung verifier: exit %d after %.2f s: %s", rc, secs, out);
    CHECK_EQ_INT(rc, 1);
    CHECK(secs < 5.0);
    CHECK(strstr(out, "did not answer") != NULL || strstr(out, "no answer") != NULL);
    /* a dead verifier */
    kill(v, SIGKILL);
    waitpid(v, NULL, 0);
    rc = s_popen(cmd, out, sizeof out, &secs);
    printf("    dead verifier: exit %d after %.2f s: %s", rc, secs, out);
    CHECK_EQ_INT(rc, 1);
    CHECK(secs < 5.0);
    s_kill(d);
    s_teardown();
}

TD_TEST_MAIN()
