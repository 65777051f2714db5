/* test_layers.c - scripts/check-layers.sh, which the build runs, accepts this tree and refuses
 * an include that points up the layers (kernels/ including model/, drafter/ including verifier/),
 * naming the file and line. */
#include "tests/tdtest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void s_write(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs(text, f);
    fclose(f);
}

TD_TEST(this_tree_passes) {
    char out[4096];
    int rc = td_test_run("sh scripts/check-layers.sh 2>&1", out, sizeof out);
    CHECK_MSG(rc == 0, "check-layers refuses this tree: %s", out);
}

/* A tree where LAYER/bad.c includes INC: refused, with the file named; and allowed includes
 * pass. */
static void s_planted(const char *layer, const char *inc, int want_refused) {
    char dir[] = "/tmp/td_layers_XXXXXX", path[256], cmd[512], out[4096];
    REQUIRE(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/%s", dir, layer);
    REQUIRE(mkdir(path, 0700) == 0);
    snprintf(path, sizeof path, "%s/%s/bad.c", dir, layer);
    char text[256];
    snprintf(text, sizeof text, "/* planted */\n#include \"common/td_common.h\"\n#include \"%s\"\n",
             inc);
    s_write(path, text);
    snprintf(cmd, sizeof cmd, "sh scripts/check-layers.sh %s 2>&1", dir);
    int rc = td_test_run(cmd, out, sizeof out);
    if (want_refused) {
        CHECK_MSG(rc != 0, "%s including %s passed the check", layer, inc);
        char where[64];
        snprintf(where, sizeof where, "%s/bad.c:3", layer);
        CHECK_MSG(strstr(out, where) != NULL, "message does not name %s: %s", where, out);
    } else {
        CHECK_MSG(rc == 0, "%s including %s refused: %s", layer, inc, out);
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

TD_TEST(an_arrow_up_fails) {
    s_planted("kernels", "model/sampler.h", 1);
    s_planted("model", "protocol/transport.h", 1);
    s_planted("drafter", "verifier/accept.h", 1);
    s_planted("verifier", "bridge/pair.h", 1);
    s_planted("common", "kernels/backend.h", 1);
}

TD_TEST(arrows_down_pass) {
    s_planted("model", "kernels/backend.h", 0);
    s_planted("verifier", "protocol/transport.h", 0);
    s_planted("bridge", "drafter/draft.h", 0);
}

TD_TEST_MAIN()
