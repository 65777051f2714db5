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

/* A tree holding only DIR/FILE, whose line 3 is LINE: refused, with the file and line named; or
 * passed. */
static void s_planted_src(const char *dir_name, const char *file, const char *line,
                          int want_refused) {
    char dir[] = "/tmp/td_layers_XXXXXX", path[256], cmd[512], out[4096];
    REQUIRE(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/%s", dir, dir_name);
    REQUIRE(mkdir(path, 0700) == 0);
    snprintf(path, sizeof path, "%s/%s/%s", dir, dir_name, file);
    char text[256];
    snprintf(text, sizeof text, "/* planted */\n#include \"common/td_common.h\"\n%s\n", line);
    s_write(path, text);
    snprintf(cmd, sizeof cmd, "sh scripts/check-layers.sh %s 2>&1", dir);
    int rc = td_test_run(cmd, out, sizeof out);
    if (want_refused) {
        CHECK_MSG(rc != 0, "%s/%s with '%s' passed the check", dir_name, file, line);
        char where[128];
        snprintf(where, sizeof where, "%s/%s:3", dir_name, file);
        CHECK_MSG(strstr(out, where) != NULL, "message does not name %s: %s", where, out);
    } else {
        CHECK_MSG(rc == 0, "%s/%s with '%s' refused: %s", dir_name, file, line, out);
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* A tree where LAYER/bad.c includes INC. */
static void s_planted(const char *layer, const char *inc, int want_refused) {
    char line[160];
    snprintf(line, sizeof line, "#include \"%s\"", inc);
    s_planted_src(layer, "bad.c", line, want_refused);
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

/* The protobuf wire form stays in protocol/: its headers or its names anywhere else fail the
 * build (bench/ included); protocol/msg.h and transport.h are the way in; protocol/ itself uses
 * it (tests and fuzzers, which test the wire format, are not layers: never checked). */
TD_TEST(wire_types_stay_in_protocol) {
    s_planted("verifier", "protocol/tandem.pb-c.h", 1);
    s_planted("bridge", "protocol/wire.h", 1);
    s_planted("drafter", "protocol/transport_wire.h", 1);
    s_planted_src("engine", "bad.h", "typedef Tandem__Envelope *env_t;", 1);
    s_planted_src("bridge", "bad.c", "static void f(void) { tandem__hello__init(0); }", 1);
    s_planted_src("bench", "bench_x.c", "#include \"protocol/wire.h\"", 1);
    s_planted("verifier", "protocol/msg.h", 0);
    s_planted("engine", "protocol/transport.h", 0);
    s_planted_src("bench", "bench_transport.c", "#include \"protocol/transport_wire.h\"", 1);
    s_planted_src("protocol", "bad.c", "#include \"protocol/wire.h\" /* Tandem__Envelope */", 0);
}

TD_TEST_MAIN()
