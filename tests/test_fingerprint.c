/* test_fingerprint.c - td_model_fingerprint / td_checkpoint_fingerprint (model/): stable across
 * loads, equal for the model and its file, different when one weight byte differs (the bundled
 * tiny verifier copied into a temp dir and patched), and printed by `tandem inspect --json`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/checkpoint.h"
#include "model/model.h"
#include "model/tensor_source.h"
#include "tests/tdproc.h"
#include "tests/tdtest.h"

static const char *s_tiny = "models/tiny-verifier";

static int s_copy(const char *from, const char *to) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp -r '%s'/. '%s'/", from, to);
    return system(cmd);
}

TD_TEST(stable_and_equal_for_model_and_file) {
    td_err_t err = {0};
    uint64_t a = 0, b = 0;
    REQUIRE(td_checkpoint_fingerprint(s_tiny, &a, &err) == TD_OK);
    REQUIRE(td_checkpoint_fingerprint(s_tiny, &b, &err) == TD_OK);
    CHECK(a != 0);
    CHECK(a == b);
    td_backend_t *be = td_backend_cpu_new(1, 0, &err);
    REQUIRE(be);
    td_model_t *m = td_model_load(s_tiny, be, &err);
    REQUIRE(m);
    td_tokenizer_t *tok = td_checkpoint_tokenizer(s_tiny, &err);
    REQUIRE(tok);
    CHECK(td_model_fingerprint(m, td_tokenizer_hash(tok)) == a);
    /* another tokenizer hash gives another value */
    CHECK(td_model_fingerprint(m, td_tokenizer_hash(tok) ^ 1) != a);
    td_tokenizer_destroy(&tok);
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

TD_TEST(one_weight_byte_changes_it) {
    char dir[] = "/tmp/td_fp_XXXXXX";
    REQUIRE(mkdtemp(dir));
    REQUIRE(s_copy(s_tiny, dir) == 0);
    td_err_t err = {0};
    uint64_t orig = 0, same = 0, patched = 0;
    REQUIRE(td_checkpoint_fingerprint(s_tiny, &orig, &err) == TD_OK);
    REQUIRE(td_checkpoint_fingerprint(dir, &same, &err) == TD_OK);
    CHECK(orig == same); /* a copy elsewhere hashes equal: no paths in it */
    /* flip one byte inside the last tensor's data (the file's last byte is tensor data) */
    REQUIRE(td_test_flip_byte(dir, "model.safetensors", 3) == 0);
    REQUIRE(td_checkpoint_fingerprint(dir, &patched, &err) == TD_OK);
    CHECK(patched != orig);
    CHECK(td_test_rmtree(dir) == 0);
}

TD_TEST(inspect_json_prints_it) {
    td_err_t err = {0};
    uint64_t fp = 0;
    REQUIRE(td_checkpoint_fingerprint(s_tiny, &fp, &err) == TD_OK);
    char cmd[1024], out[1 << 16], want[64];
    snprintf(cmd, sizeof cmd, "%s inspect --json %s", td_test_bin("tandem"), s_tiny);
    REQUIRE(td_test_run(cmd, out, sizeof out) == 0);
    snprintf(want, sizeof want, "\"0x%016llx\"", (unsigned long long)fp);
    CHECK_MSG(strstr(out, "\"fingerprint\"") && strstr(out, want), "no fingerprint %s in: %.300s",
              want, out);
}

TD_TEST(missing_checkpoint_is_an_error) {
    td_err_t err = {0};
    uint64_t fp = 0;
    CHECK(td_checkpoint_fingerprint("/nonexistent/td-fp", &fp, &err) < 0);
    CHECK(err.msg[0] != 0);
}

TD_TEST_MAIN()
