/* test_selfspec.c - self-speculative diffusion decoding (drafter/selfspec.c) against stepwise
 * greedy decoding on the dream / llada fixtures (tests/data/models), the e2e Dream drafter and,
 * when it has been trained, models/tiny-diffusion-drafter.
 *
 * Three references: td_stepwise_greedy_generate must equal td_diffusion_generate with threshold > 1
 * and exact recomputation (an independent implementation in drafter/draft.c); td_selfspec_generate
 * must equal td_stepwise_greedy_generate token for token, on the fast CPU backend and on the
 * reference one, with strictly fewer forwards overall; and accepting chains unchecked must change
 * the output somewhere, so the acceptance test is what makes it exact. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bridge/pair.h"
#include "engine/remote_methods.h"
#include "drafter/draft.h"
#include "drafter/selfspec.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "tests/tdmodel.h"
#include "tests/tdtest.h"
#include "tests/tdproc.h"
#include "verifier/remote.h"

typedef struct fx {
    td_backend_t *be;
    td_model_t *m;
    const td_config_t *c;
    td_tokenizer_t *tok; /* NULL when the directory has none */
    char name[128];
} fx_t;

static int s_load(fx_t *f, const char *dir, int reference) {
    td_err_t err = {0};
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s%s", dir, reference ? " (cpu-ref)" : "");
    if (!(f->m = td_test_load_cpu(dir, 1, reference, &f->be))) return 0;
    f->c = td_model_config(f->m);
    char tp[600];
    snprintf(tp, sizeof tp, "%s/tokenizer.json", dir);
    if (access(tp, R_OK) == 0) f->tok = td_tokenizer_load(tp, &err);
    return 1;
}

static void s_unload(fx_t *f) {
    td_tokenizer_destroy(&f->tok);
    td_model_destroy(&f->m);
    td_backend_destroy(&f->be);
}

/* Prompt i: a bench prompt through the tokenizer when there is one, else random ids. */
static int s_prompt(const fx_t *f, int i, int32_t *out, int cap) {
    static const char *texts[] = {"Now it came to pass in the days when the judges ruled,",
                                  "So she gleaned in the field until even, and beat out that",
                                  "And God said, Let there be light",
                                  "There is nothing better for a man, than that he should eat"};
    if (f->tok) {
        int32_t *ids = NULL;
        int n = 0;
        td_err_t err = {0};
        const char *t = texts[i % 4];
        if (td_tokenizer_encode(f->tok, t, strlen(t), 0, &ids, &n, &err) == TD_OK && n > 0) {
            if (n > cap) n = cap;
            memcpy(out, ids, (size_t)n * sizeof *ids);
            free(ids);
            return n;
        }
        free(ids);
    }
    td_rng_t r;
    td_rng_seed(&r, 1000 + (uint64_t)i);
    int n = 4 + i % 5;
    if (n > cap) n = cap;
    for (int j = 0; j < n; j++) {
        int t;
        do t = (int)(td_rng_next(&r) % (uint64_t)f->c->n_vocab);
        while (t == f->c->mask_token_id);
        out[j] = t;
    }
    return n;
}

/* A token id that is not the mask token. */
static int32_t prompt_token_safe(const td_config_t *c, int i) {
    int32_t t = (int32_t)((7 + i * 13) % c->n_vocab);
    return t == c->mask_token_id ? (t + 1) % c->n_vocab : t;
}

typedef struct totals {
    long ref_forwards, spec_forwards, tokens, cases, unchecked_diff;
} totals_t;

/* Runs reference, selfspec and unchecked selfspec on one prompt; checks identity. */
static void s_case(fx_t *f, const int32_t *prompt, int n_prompt, int max_tokens, int block, int K,
                   int stop_at_eos, totals_t *tot) {
    td_err_t err = {0};
    td_selfspec_params_t p = td_selfspec_params_default();
    p.max_tokens = max_tokens;
    p.block_size = block;
    p.draft_k = K;
    p.stop_at_eos = stop_at_eos;
    int32_t *ref = calloc((size_t)max_tokens + 1, sizeof *ref);
    int32_t *spec = calloc((size_t)max_tokens + 1, sizeof *spec);
    int32_t *bad = calloc((size_t)max_tokens + 1, sizeof *bad);
    td_selfspec_stats_t rs, ss, bs;
    int rc = td_stepwise_greedy_generate(f->m, prompt, n_prompt, &p, ref, &rs, &err);
    CHECK_MSG(rc == TD_OK, "%s: reference: %s", f->name, err.msg);
    rc = td_selfspec_generate(f->m, prompt, n_prompt, &p, spec, &ss, &err);
    CHECK_MSG(rc == TD_OK, "%s: selfspec: %s", f->name, err.msg);
    CHECK_EQ_INT(ss.generated, rs.generated);
    CHECK_EQ_INT(ss.commits, rs.commits);
    CHECK_EQ_INT(ss.stopped_at_stop_id, rs.stopped_at_stop_id);
    int same = ss.generated == rs.generated;
    for (int i = 0; same && i < rs.generated; i++) same = ref[i] == spec[i];
    CHECK_MSG(same, "%s: selfspec output differs from stepwise greedy (block %d, K %d)", f->name,
              block, K);
    CHECK_EQ_INT(rs.forwards, rs.commits); /* one forward per committed token */
    CHECK(ss.forwards <= rs.forwards + 1);
    CHECK(ss.forwards >= 1);
    /* the counters add up */
    int hist_commits = 0, rounds = 0;
    for (int j = 0; j <= K; j++) {
        hist_commits += j * ss.accepted_hist[j];
        rounds += ss.accepted_hist[j];
    }
    CHECK_EQ_INT(hist_commits, ss.commits);
    CHECK_EQ_INT(rounds, ss.rounds);
    CHECK(ss.depth_accepted[1] == ss.rounds);
    for (int d = 2; d <= K; d++) CHECK(ss.depth_accepted[d] <= ss.depth_checked[d]);

    p.accept_unchecked = 1;
    rc = td_selfspec_generate(f->m, prompt, n_prompt, &p, bad, &bs, &err);
    CHECK_MSG(rc == TD_OK, "%s: unchecked: %s", f->name, err.msg);
    int diff = bs.generated != rs.generated;
    for (int i = 0; !diff && i < rs.generated; i++) diff = ref[i] != bad[i];
    tot->unchecked_diff += diff;
    tot->ref_forwards += rs.forwards;
    tot->spec_forwards += ss.forwards;
    tot->tokens += rs.commits;
    tot->cases++;
    free(ref);
    free(spec);
    free(bad);
}

/* light: one chain depth and two canvas sizes (for the slow reference backend). */
static void s_model_suite(const char *dir, int reference, int n_prompts, int max_tokens,
                          int light) {
    fx_t f;
    if (getenv("TD_TEST_LIGHT")) { /* sanitizer builds: the same checks on fewer cases */
        light = 1;
        if (n_prompts > 2) n_prompts = 2;
    }
    if (!s_load(&f, dir, reference)) return;
    totals_t tot = {0};
    static const int blocks[] = {8, 32, 0};
    static const int ks[] = {2, 4, 8};
    for (int i = 0; i < n_prompts; i++) {
        int32_t prompt[64];
        int n = s_prompt(&f, i, prompt, 24);
        int mt = max_tokens;
        if (f.c->n_ctx_train > 0 && n + mt > f.c->n_ctx_train) mt = f.c->n_ctx_train - n;
        for (int b = 0; b < 3; b++)
            for (int k = 0; k < 3; k++) {
                if (light && (b == 1 || k != 1)) continue;
                s_case(&f, prompt, n, mt, blocks[b], ks[k], i == 0, &tot);
            }
    }
    printf("  %-40s %ld cases, %ld tokens: stepwise %ld forwards, selfspec %ld (x%.2f fewer); "
           "unchecked chains changed %ld outputs\n",
           f.name, tot.cases, tot.tokens, tot.ref_forwards, tot.spec_forwards,
           tot.spec_forwards ? (double)tot.ref_forwards / (double)tot.spec_forwards : 0.0,
           tot.unchecked_diff);
    CHECK_MSG(tot.spec_forwards < tot.ref_forwards, "%s: selfspec used %ld forwards, stepwise %ld",
              f.name, tot.spec_forwards, tot.ref_forwards);
    CHECK_MSG(tot.unchecked_diff > 0, "%s: accepting chains unchecked never changed the output",
              f.name);
    s_unload(&f);
}

static void s_dir(char *out, size_t cap, const char *rel) {
    snprintf(out, cap, "%s/%s", td_test_data(), rel);
}

TD_TEST(selfspec_equals_stepwise_dream) {
    char d[512];
    s_dir(d, sizeof d, "models/dream");
    s_model_suite(d, 0, 3, 40, 0);
    s_model_suite(d, 1, 2, 40, 1);
}

TD_TEST(selfspec_equals_stepwise_llada) {
    char d[512];
    s_dir(d, sizeof d, "models/llada");
    s_model_suite(d, 0, 3, 40, 0);
    s_model_suite(d, 1, 2, 40, 1);
}

TD_TEST(selfspec_equals_stepwise_e2e_dream_drafter) {
    char d[512];
    s_dir(d, sizeof d, "e2e/dream-drafter");
    s_model_suite(d, 0, 3, 64, 0);
}

TD_TEST(selfspec_equals_stepwise_tiny_diffusion_drafter) {
    const char *d = "models/tiny-diffusion-drafter";
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/config.json", d);
    if (access(cfg, R_OK) != 0) {
        td_test_skip("models/tiny-diffusion-drafter not trained");
        return;
    }
    s_model_suite(d, 0, 4, 64, 0);
}

/* The reference is the Fast-dLLM decoder of drafter/draft.c at one token per step, exact. */
TD_TEST(stepwise_equals_threshold_decoder_at_one_token_per_step) {
    static const char *fams[] = {"models/dream", "models/llada", "e2e/dream-drafter"};
    for (int fi = 0; fi < 3; fi++) {
        char d[512];
        s_dir(d, sizeof d, fams[fi]);
        fx_t f;
        if (!s_load(&f, d, 0)) return;
        for (int i = 0; i < 3; i++) {
            int32_t prompt[64], a[64], b[64];
            int n = s_prompt(&f, i, prompt, 24);
            for (int bs = 0; bs < 2; bs++) {
                td_err_t err = {0};
                td_selfspec_params_t p = td_selfspec_params_default();
                p.max_tokens = 36;
                p.block_size = bs ? 12 : 36;
                p.stop_at_eos = i == 0;
                td_diffusion_params_t q = td_diffusion_params_default();
                q.max_tokens = 36;
                q.block_size = p.block_size;
                q.threshold = 2.0f;
                q.exact = 1;
                q.stop_at_eos = p.stop_at_eos;
                td_selfspec_stats_t ss;
                td_diffusion_stats_t ds;
                CHECK(td_stepwise_greedy_generate(f.m, prompt, n, &p, a, &ss, &err) == TD_OK);
                CHECK(td_diffusion_generate(f.m, prompt, n, &q, b, &ds, &err) == TD_OK);
                CHECK_EQ_INT(ss.generated, ds.generated);
                CHECK_EQ_INT(ss.forwards, ds.forwards);
                CHECK_EQ_INT(ss.stopped_at_stop_id, ds.stopped_at_stop_id);
                for (int j = 0; j < ss.generated && j < ds.generated; j++)
                    CHECK_MSG(a[j] == b[j], "%s prompt %d: token %d differs", fams[fi], i, j);
            }
        }
        s_unload(&f);
    }
}

/* A stop id taken from the middle of the reference output: both decoders stop at it. */
TD_TEST(selfspec_stop_id) {
    char d[512];
    s_dir(d, sizeof d, "models/dream");
    fx_t f;
    if (!s_load(&f, d, 0)) return;
    int32_t prompt[64], full[64], a[64], b[64];
    int n = s_prompt(&f, 1, prompt, 24);
    td_err_t err = {0};
    td_selfspec_params_t p = td_selfspec_params_default();
    p.max_tokens = 40;
    p.block_size = 16;
    p.stop_at_eos = 0;
    td_selfspec_stats_t s0, s1, s2;
    REQUIRE(td_stepwise_greedy_generate(f.m, prompt, n, &p, full, &s0, &err) == TD_OK);
    REQUIRE(s0.generated == 40);
    int32_t stop = full[20];
    p.stop_ids = &stop;
    p.n_stop = 1;
    REQUIRE(td_stepwise_greedy_generate(f.m, prompt, n, &p, a, &s1, &err) == TD_OK);
    REQUIRE(td_selfspec_generate(f.m, prompt, n, &p, b, &s2, &err) == TD_OK);
    CHECK_EQ_INT(s1.stopped_at_stop_id, 1);
    CHECK_EQ_INT(s2.stopped_at_stop_id, 1);
    CHECK_EQ_INT(s1.generated, s2.generated);
    CHECK(s1.generated <= 21);
    CHECK_EQ_INT(a[s1.generated - 1], stop);
    for (int j = 0; j < s1.generated; j++) CHECK_EQ_INT(a[j], b[j]);
    s_unload(&f);
}

TD_TEST(selfspec_bad_arguments) {
    char d[512];
    td_err_t err = {0};
    s_dir(d, sizeof d, "models/qwen2");
    fx_t f;
    if (!s_load(&f, d, 0)) return;
    int32_t prompt[4] = {1, 2, 3, 4}, out[8];
    td_selfspec_params_t p = td_selfspec_params_default();
    p.max_tokens = 8;
    CHECK_EQ_INT(td_selfspec_generate(f.m, prompt, 4, &p, out, NULL, &err), TD_ERR_ARG);
    CHECK(strstr(err.msg, "not a masked-diffusion") != NULL);
    CHECK_EQ_INT(td_stepwise_greedy_generate(f.m, prompt, 4, &p, out, NULL, &err), TD_ERR_ARG);
    s_unload(&f);
    s_dir(d, sizeof d, "models/dream");
    if (!s_load(&f, d, 0)) return;
    p.draft_k = 0;
    CHECK_EQ_INT(td_selfspec_generate(f.m, prompt, 4, &p, out, NULL, &err), TD_ERR_ARG);
    p.draft_k = TD_SELFSPEC_MAX_K + 1;
    CHECK_EQ_INT(td_selfspec_generate(f.m, prompt, 4, &p, out, NULL, &err), TD_ERR_ARG);
    p.draft_k = 4;
    int32_t badp[2] = {1, 100000};
    CHECK_EQ_INT(td_selfspec_generate(f.m, badp, 2, &p, out, NULL, &err), TD_ERR_ARG);
    p.max_tokens = 0;
    td_selfspec_stats_t st;
    CHECK_EQ_INT(td_selfspec_generate(f.m, prompt, 4, &p, NULL, &st, &err), TD_OK);
    CHECK_EQ_INT(st.generated, 0);
    s_unload(&f);
}

/* ---- two processes: a real tandem-drafter evaluates the deeper half of every chain ---- */

static char s_tmp[64], s_ep[128];

static pid_t s_spawn_drafter(const char *model) {
    snprintf(s_tmp, sizeof s_tmp, "/tmp/td_selfspec_XXXXXX");
    if (!mkdtemp(s_tmp)) abort();
    snprintf(s_ep, sizeof s_ep, "ipc://%s/drafter.sock", s_tmp);
    return td_test_spawn_worker("tandem-drafter", model, s_ep, NULL);
}

static void s_stop_drafter(pid_t pid) {
    td_test_stop(pid, SIGTERM);
    td_test_rmtree(s_tmp);
}

/* Loads dir here and connects to the drafter at s_ep (retrying while it starts). */
static int s_connect(td_pair_t *pair, const char *dir) {
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1, .timeout_ms = 500};
    td_err_t err = {0};
    if (td_test_pair_open_retry(pair, dir, s_ep, &po, 60, &err) == TD_OK) return 1;
    td_test_fail(__FILE__, __LINE__, "cannot reach the drafter at %s: %s", s_ep, err.msg);
    return 0;
}

/* Remote selfspec == in-process selfspec (== stepwise greedy) on several prompts and settings. */
static void s_two_process_suite(const char *dir, int n_prompts, int max_tokens) {
    pid_t pid = s_spawn_drafter(dir);
    td_pair_t pair;
    if (!s_connect(&pair, dir)) {
        s_stop_drafter(pid);
        return;
    }
    fx_t f = {.m = pair.verifier, .c = td_model_config(pair.verifier), .tok = pair.vtok};
    snprintf(f.name, sizeof f.name, "%s", dir);
    static const int blocks[] = {8, 32}, ks[] = {4, 8};
    long remote = 0, fallbacks = 0, cases = 0, tokens = 0;
    for (int i = 0; i < n_prompts; i++) {
        int32_t prompt[64];
        int n = s_prompt(&f, i, prompt, 24);
        for (int v = 0; v < 2; v++) {
            if (getenv("TD_TEST_LIGHT") && v) continue;
            td_err_t err = {0};
            td_selfspec_params_t p = td_selfspec_params_default();
            p.max_tokens = max_tokens;
            p.block_size = blocks[v];
            p.draft_k = ks[v];
            p.stop_at_eos = i == 0;
            int32_t a[256], b[256];
            td_selfspec_stats_t sa, sb;
            REQUIRE(td_selfspec_generate(f.m, prompt, n, &p, a, &sa, &err) == TD_OK);
            td_remote_opts_t ro = {.session = 100 + (uint64_t)cases, .timeout_ms = 20000};
            int rc = td_selfspec_generate_via(f.m, pair.dc, &ro, prompt, n, &p, b, &sb, &err);
            CHECK_MSG(rc == TD_OK, "%s: remote selfspec: %s", dir, err.msg);
            if (rc != TD_OK) continue;
            CHECK_EQ_INT(sb.generated, sa.generated);
            CHECK_EQ_INT(sb.forwards, sa.forwards);
            CHECK_EQ_INT(sb.rounds, sa.rounds);
            int same = sa.generated == sb.generated;
            for (int j = 0; same && j < sa.generated; j++) same = a[j] == b[j];
            CHECK_MSG(same, "%s prompt %d (block %d, K %d): two-process output differs", dir, i,
                      p.block_size, p.draft_k);
            remote += sb.remote_states;
            fallbacks += sb.remote_fallbacks;
            tokens += sb.generated;
            cases++;
        }
    }
    printf("  %-40s %ld cases, %ld tokens identical; %ld chain states evaluated by the drafter "
           "process, %ld fallbacks\n",
           dir, cases, tokens, remote, fallbacks);
    CHECK(remote > 0);
    CHECK_EQ_INT((int)fallbacks, 0);

    /* a drafter running another checkpoint refuses: same request, another fingerprint */
    td_err_t err = {0};
    int32_t pre[4] = {prompt_token_safe(f.c, 1), prompt_token_safe(f.c, 2), 0, 0};
    int32_t tail[3] = {f.c->mask_token_id, f.c->mask_token_id, f.c->mask_token_id};
    const int32_t *tails[1] = {tail};
    int tl[1] = {3}, cs[1] = {2}, counts[1];
    int32_t pos[16], ids[16];
    REQUIRE(td_remote_selfspec_send(pair.dc, 9, 1, pre, 2, tails, tl, cs, 1, 2, 0x1234, &err) ==
            TD_OK);
    CHECK_EQ_INT(td_remote_selfspec_recv(pair.dc, 9, 1, 20000, 1, 2, counts, pos, ids, NULL, &err),
                 TD_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "same dLLM") != NULL);
    /* the same request unchecked is answered: 2 drafts, distinct masked positions */
    REQUIRE(td_remote_selfspec_send(pair.dc, 9, 2, pre, 2, tails, tl, cs, 1, 2, 0, &err) == TD_OK);
    CHECK_EQ_INT(td_remote_selfspec_recv(pair.dc, 9, 2, 20000, 1, 2, counts, pos, ids, NULL, &err),
                 TD_OK);
    CHECK_EQ_INT(counts[0], 2);
    CHECK(pos[0] != pos[1] && pos[0] >= 0 && pos[0] < 3 && pos[1] >= 0 && pos[1] < 3);
    /* a state without a masked position is refused as malformed, not answered */
    int32_t full[3] = {prompt_token_safe(f.c, 3), prompt_token_safe(f.c, 4),
                       prompt_token_safe(f.c, 5)};
    const int32_t *tails2[1] = {full};
    REQUIRE(td_remote_selfspec_send(pair.dc, 9, 3, pre, 2, tails2, tl, cs, 1, 2, 0, &err) == TD_OK);
    CHECK_EQ_INT(td_remote_selfspec_recv(pair.dc, 9, 3, 20000, 1, 2, counts, pos, ids, NULL, &err),
                 TD_ERR);
    CHECK(strstr(err.msg, "no masked position") != NULL);
    td_pair_close(&pair);
    s_stop_drafter(pid);
}

TD_TEST(selfspec_two_processes_e2e_dream_drafter) {
    char d[512];
    s_dir(d, sizeof d, "e2e/dream-drafter");
    s_two_process_suite(d, 3, 48);
}

TD_TEST(selfspec_two_processes_tiny_diffusion_drafter) {
    if (access("models/tiny-diffusion-drafter/config.json", R_OK) != 0) {
        td_test_skip("models/tiny-diffusion-drafter not trained");
        return;
    }
    s_two_process_suite("models/tiny-diffusion-drafter", getenv("TD_TEST_LIGHT") ? 2 : 4, 64);
}

/* A remote side that fails or answers garbage costs local work, never a wrong token; a refusal
 * (TD_ERR_UNSUPPORTED) ends the generation with its message. */
typedef struct fake {
    int mode; /* 0 garbage lists, 1 I/O failure, 2 refusal */
    int calls;
} fake_t;

static int s_fake_start(void *ud, const int32_t *prefix, int n_prefix, const int32_t *const *tails,
                        const int *tail_lens, const int *canvas_starts, int n, int k,
                        td_err_t *err) {
    fake_t *f = ud;
    f->calls++;
    if (f->mode == 1) return td_err_set(err, TD_ERR_IO, "fake: the drafter is gone");
    return TD_OK;
}

static int s_fake_finish(void *ud, int n, int k, int *counts, int32_t *pos, int32_t *ids,
                         td_err_t *err) {
    fake_t *f = ud;
    if (f->mode == 2) return td_err_set(err, TD_ERR_UNSUPPORTED, "fake: another checkpoint");
    for (int i = 0; i < n; i++) {
        counts[i] = 1; /* a plausible count would be min(k, masks); position 0 twice is not */
        pos[i * k] = 100000;
        ids[i * k] = 1;
    }
    return TD_OK;
}

TD_TEST(selfspec_remote_failures_are_repaired_locally) {
    char d[512];
    s_dir(d, sizeof d, "models/dream");
    fx_t f;
    if (!s_load(&f, d, 0)) return;
    int32_t prompt[64], a[64], b[64];
    int n = s_prompt(&f, 0, prompt, 24);
    td_selfspec_params_t p = td_selfspec_params_default();
    p.max_tokens = 40;
    p.block_size = 16;
    p.stop_at_eos = 0;
    td_err_t err = {0};
    td_selfspec_stats_t sa, sb;
    REQUIRE(td_selfspec_generate(f.m, prompt, n, &p, a, &sa, &err) == TD_OK);
    for (int mode = 0; mode < 2; mode++) {
        fake_t fk = {.mode = mode};
        td_selfspec_remote_t r = {s_fake_start, s_fake_finish, &fk};
        REQUIRE(td_selfspec_generate_remote(f.m, prompt, n, &p, &r, b, &sb, &err) == TD_OK);
        CHECK_EQ_INT(sb.generated, sa.generated);
        for (int j = 0; j < sa.generated; j++) CHECK_EQ_INT(a[j], b[j]);
        CHECK(fk.calls > 0);
        CHECK_EQ_INT(sb.remote_fallbacks, fk.calls);
        CHECK_EQ_INT(sb.remote_states, 0);
    }
    fake_t fk = {.mode = 2};
    td_selfspec_remote_t r = {s_fake_start, s_fake_finish, &fk};
    CHECK_EQ_INT(td_selfspec_generate_remote(f.m, prompt, n, &p, &r, b, &sb, &err),
                 TD_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "another checkpoint") != NULL);
    s_unload(&f);
}

/* `tandem generate --method selfspec --drafter ENDPOINT` prints what the in-process run prints. */

TD_TEST(selfspec_two_processes_command_line) {
    char d[512];
    s_dir(d, sizeof d, "e2e/dream-drafter");
    pid_t pid = s_spawn_drafter(d);
    static char out_r[65536], out_l[65536];
    char cmd[2048];
    const char *common = "--method selfspec --chat none --max-tokens 40 --block-size 16 "
                         "--draft-k 4 --threads 1 --json --prompt 'And God said, Let there be'";
    snprintf(cmd, sizeof cmd, "%s generate --drafter %s --verifier %s %s 2>&1",
             td_test_bin("tandem"), s_ep, d, common);
    int rc = td_test_run_retry(cmd, out_r, sizeof out_r, 40);
    CHECK_MSG(rc == 0, "remote run failed: %s", out_r);
    snprintf(cmd, sizeof cmd, "%s generate --drafter %s %s 2>&1", td_test_bin("tandem"), d, common);
    CHECK_EQ_INT(td_test_run(cmd, out_l, sizeof out_l), 0);
    td_test_check_same_tokens(out_r, out_l, 10);
    /* a drafter endpoint with a remote verifier endpoint is refused clearly */
    snprintf(cmd, sizeof cmd, "%s generate --drafter %s --verifier ipc:///nonexistent %s 2>&1",
             td_test_bin("tandem"), s_ep, common);
    CHECK_EQ_INT(td_test_run(cmd, out_r, sizeof out_r), 2);
    CHECK(strstr(out_r, "needs --verifier DIR") != NULL);
    s_stop_drafter(pid);
}

TD_TEST_MAIN()
