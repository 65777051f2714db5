/* test_cli.c - the tandem command end to end, as a user runs it: a real process, real files, and
 * its output compared with HF references (tests/data/e2e, made by tools/make_e2e_fixture.py). */
#include "tests/tdtest.h"

#include "common/td_common.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#define E2E "tests/data/e2e/qwen2-chat"

static const char *s_bin(void) {
    const char *b = getenv("TD_TANDEM_BIN");
    return b && *b ? b : "build/bin/tandem";
}

/* Runs `tandem ARGS` capturing stdout (and stderr when merge is set); returns the exit status. */
static int s_run(const char *args, int merge, char **out) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s %s", s_bin(), args, merge ? "2>&1" : "2>/dev/null");
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += r;
        if (n + 1 >= cap) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static cJSON *s_load_json(const char *path) {
    char *data = NULL;
    size_t len = 0;
    if (td_read_file(path, &data, &len, NULL) != TD_OK) return NULL;
    cJSON *j = cJSON_ParseWithLength(data, len);
    free(data);
    return j;
}

TD_TEST(score_matches_hf) {
    cJSON *ref = s_load_json(E2E "/score.json");
    REQUIRE(ref);
    char args[1024], *out = NULL;
    snprintf(args, sizeof args, "score --model " E2E " --json --text '%s'",
             cJSON_GetObjectItem(ref, "text")->valuestring);
    CHECK_EQ_INT(s_run(args, 0, &out), 0);
    cJSON *got = cJSON_Parse(out);
    REQUIRE(got);
    cJSON *rt = cJSON_GetObjectItem(ref, "tokens"), *gt = cJSON_GetObjectItem(got, "tokens");
    cJSON *rl = cJSON_GetObjectItem(ref, "logprobs"), *gl = cJSON_GetObjectItem(got, "logprobs");
    REQUIRE(cJSON_GetArraySize(rt) == cJSON_GetArraySize(gt));
    double worst = 0;
    for (int i = 0; i < cJSON_GetArraySize(rt); i++) {
        CHECK_EQ_INT(cJSON_GetArrayItem(gt, i)->valueint, cJSON_GetArrayItem(rt, i)->valueint);
        cJSON *a = cJSON_GetArrayItem(gl, i), *b = cJSON_GetArrayItem(rl, i);
        if (cJSON_IsNull(b)) {
            CHECK(cJSON_IsNull(a));
            continue;
        }
        double e = fabs(a->valuedouble - b->valuedouble);
        if (e > worst) worst = e;
    }
    printf("    score: max |logprob - HF| = %.2e over %d tokens\n", worst, cJSON_GetArraySize(rt));
    CHECK(worst < 1e-4);
    cJSON_Delete(ref), cJSON_Delete(got), free(out);
}

TD_TEST(greedy_generate_matches_hf) {
    cJSON *ref = s_load_json(E2E "/greedy.json");
    REQUIRE(ref);
    cJSON *rt = cJSON_GetObjectItem(ref, "tokens");
    char args[1024], *out = NULL;
    snprintf(args, sizeof args,
             "generate --verifier " E2E
             " --method ar --chat none --temperature 0 --max-tokens %d --json --prompt '%s'",
             cJSON_GetArraySize(rt), cJSON_GetObjectItem(ref, "prompt")->valuestring);
    CHECK_EQ_INT(s_run(args, 0, &out), 0);
    cJSON *got = cJSON_Parse(out);
    REQUIRE(got);
    cJSON *gt = cJSON_GetObjectItem(got, "tokens"), *stats = cJSON_GetObjectItem(got, "stats");
    REQUIRE(gt && stats);
    CHECK_EQ_INT(cJSON_GetArraySize(gt), cJSON_GetArraySize(rt));
    for (int i = 0; i < cJSON_GetArraySize(rt) && i < cJSON_GetArraySize(gt); i++)
        CHECK_EQ_INT(cJSON_GetArrayItem(gt, i)->valueint, cJSON_GetArrayItem(rt, i)->valueint);
    CHECK_EQ_INT(cJSON_GetObjectItem(got, "prompt_tokens")->valueint,
                 cJSON_GetArraySize(cJSON_GetObjectItem(ref, "prompt_tokens")));
    const char *keys[] = {
        "drafted", "accepted",  "acceptance_rate",  "mean_accepted_length", "accepted_by_position",
        "rounds",  "fallbacks", "tokens_per_second"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        CHECK_MSG(cJSON_GetObjectItem(stats, keys[i]) != NULL, "stats lacks %s", keys[i]);
    CHECK_STR(cJSON_GetObjectItem(got, "text")->valuestring,
              cJSON_GetObjectItem(ref, "text")->valuestring);
    cJSON_Delete(ref), cJSON_Delete(got), free(out);
}

TD_TEST(streamed_text_equals_json_text) {
    char *a = NULL, *b = NULL;
    CHECK_EQ_INT(s_run("generate --verifier " E2E
                       " --chat none --max-tokens 20 --temperature 0.8 --seed 7 --prompt 'And God'",
                       0, &a),
                 0);
    CHECK_EQ_INT(
        s_run("generate --verifier " E2E
              " --chat none --max-tokens 20 --temperature 0.8 --seed 7 --json --prompt 'And God'",
              0, &b),
        0);
    cJSON *j = cJSON_Parse(b);
    REQUIRE(j);
    size_t n = strlen(a);
    if (n && a[n - 1] == '\n') a[--n] = 0;
    CHECK_STR(a, cJSON_GetObjectItem(j, "text")->valuestring);
    /* same seed, same tokens; another seed differs */
    char *c = NULL;
    CHECK_EQ_INT(
        s_run("generate --verifier " E2E
              " --chat none --max-tokens 20 --temperature 0.8 --seed 8 --json --prompt 'And God'",
              0, &c),
        0);
    cJSON *k = cJSON_Parse(c);
    REQUIRE(k);
    char *t1 = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "tokens")),
         *t2 = cJSON_PrintUnformatted(cJSON_GetObjectItem(k, "tokens"));
    CHECK(strcmp(t1, t2) != 0);
    free(t1), free(t2), cJSON_Delete(j), cJSON_Delete(k), free(a), free(b), free(c);
}

TD_TEST(chat_template_applied_and_stops) {
    char *out = NULL;
    /* a chat prompt renders through the checkpoint's template: more prompt tokens than the raw text
     */
    CHECK_EQ_INT(s_run("generate --verifier " E2E " --max-tokens 4 --json --prompt 'hi'", 0, &out),
                 0);
    cJSON *j = cJSON_Parse(out);
    REQUIRE(j);
    CHECK(cJSON_GetObjectItem(j, "prompt_tokens")->valueint > 10);
    cJSON_Delete(j), free(out);
    CHECK_EQ_INT(s_run("generate --verifier " E2E
                       " --chat none --max-tokens 4 --json --prompt 'hi'",
                       0, &out),
                 0);
    j = cJSON_Parse(out);
    REQUIRE(j);
    CHECK(cJSON_GetObjectItem(j, "prompt_tokens")->valueint < 5);
    cJSON_Delete(j), free(out);
}

TD_TEST(errors_are_clear) {
    char *out = NULL;
    CHECK_EQ_INT(s_run("generate --verifier /nonexistent --prompt x", 1, &out), 1);
    CHECK(strstr(out, "/nonexistent") != NULL);
    free(out);
    CHECK_EQ_INT(s_run("generate --verifier " E2E " --prompt x --max-tokens nope", 1, &out), 2);
    CHECK(strstr(out, "max-tokens") != NULL);
    free(out);
    CHECK_EQ_INT(s_run("generate --verifier " E2E " --prompt x --bogus 1", 1, &out), 2);
    CHECK(strstr(out, "bogus") != NULL);
    free(out);
    CHECK_EQ_INT(s_run("frobnicate", 1, &out), 2);
    free(out);
    /* a diffusion LM cannot run plain AR */
    CHECK_EQ_INT(s_run("score --model tests/data/models/dream --text x", 1, &out), 1);
    free(out);
    /* a tokenizer larger than the model's vocabulary is refused by name */
    char tmpl[] = "/tmp/td_cli_XXXXXX";
    REQUIRE(mkdtemp(tmpl));
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "cp tests/data/models/qwen2/config.json tests/data/models/qwen2/model.safetensors %s/ "
             "&& cp tests/data/tokenizers/qwen2/tokenizer.json %s/",
             tmpl, tmpl);
    REQUIRE(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "generate --verifier %s --prompt x", tmpl);
    CHECK_EQ_INT(s_run(cmd, 1, &out), 1);
    CHECK(strstr(out, "do not belong together") != NULL);
    free(out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpl);
    CHECK(system(cmd) == 0);
    /* --help tells the truth about the options it lists */
    CHECK_EQ_INT(s_run("generate --help", 0, &out), 0);
    CHECK(strstr(out, "--max-tokens") && strstr(out, "--temperature") && strstr(out, "--json"));
    free(out);
}

TD_TEST(help_and_subcommands) {
    char *out = NULL;
    CHECK_EQ_INT(s_run("--help", 0, &out), 0);
    const char *cmds[] = {"generate", "score", "tokenize", "inspect"};
    for (int i = 0; i < 4; i++) CHECK_MSG(strstr(out, cmds[i]) != NULL, "--help lacks %s", cmds[i]);
    free(out);
    CHECK_EQ_INT(s_run("inspect " E2E, 0, &out), 0);
    CHECK(strstr(out, "qwen2") != NULL);
    free(out);
    CHECK_EQ_INT(s_run("tokenize --model " E2E " --text 'And God said' --json", 0, &out), 0);
    cJSON *j = cJSON_Parse(out), *ref = s_load_json(E2E "/greedy.json");
    REQUIRE(j && ref);
    char *a = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "ids")),
         *b = cJSON_PrintUnformatted(cJSON_GetObjectItem(ref, "prompt_tokens"));
    CHECK_STR(a, b);
    free(a), free(b), cJSON_Delete(j), cJSON_Delete(ref), free(out);
}

TD_TEST_MAIN()
