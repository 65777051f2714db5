/* tdtest.c - registry, runner and reporting for tdtest.h. */
#include "tests/tdtest.h"

#include "common/td_common.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>

#define MAX_TESTS 512
static struct {
    const char *name;
    td_test_fn fn;
} s_tests[MAX_TESTS];
static int s_n;
int td_test_failed_now;
static int s_skipped_now;

void td_test_register(const char *name, td_test_fn fn) {
    if (s_n < MAX_TESTS) {
        s_tests[s_n].name = name;
        s_tests[s_n].fn = fn;
        s_n++;
    }
}

void td_test_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "    %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    td_test_failed_now++;
}

void td_test_skip(const char *why) {
    fprintf(stderr, "    skipped: %s\n", why);
    s_skipped_now = 1;
}

const char *td_test_data(void) {
    const char *d = getenv("TD_TEST_DATA");
    return d && *d ? d : "tests/data";
}

char *td_test_read(const char *rel, size_t *len) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", td_test_data(), rel);
    char *data = NULL;
    td_err_t err = {0};
    if (td_read_file(path, &data, len, &err) == TD_OK) return data;
    td_test_fail(__FILE__, __LINE__, "%s", err.msg);
    return NULL;
}

int td_test_main(int argc, char **argv) {
    int passed = 0, failed = 0, skipped = 0;
    /* every case named on the command line must exist: a typo must not pass as "0 run" */
    for (int a = 1; a < argc; a++) {
        int known = 0;
        for (int i = 0; i < s_n; i++) known |= strcmp(argv[a], s_tests[i].name) == 0;
        if (!known) {
            fprintf(stderr, "%s: no test case named '%s'\n", argv[0], argv[a]);
            return 2;
        }
    }
    for (int i = 0; i < s_n; i++) {
        if (argc > 1) {
            int want = 0;
            for (int a = 1; a < argc; a++)
                if (strcmp(argv[a], s_tests[i].name) == 0) want = 1;
            if (!want) continue;
        }
        td_test_failed_now = 0;
        s_skipped_now = 0;
        s_tests[i].fn();
        if (td_test_failed_now) {
            failed++;
            printf("  FAIL %s\n", s_tests[i].name);
        } else if (s_skipped_now) {
            skipped++;
            printf("  skip %s\n", s_tests[i].name);
        } else {
            passed++;
            printf("  ok   %s\n", s_tests[i].name);
        }
        fflush(stdout);
    }
    printf("%s: %d passed, %d failed, %d skipped\n", argv[0], passed, failed, skipped);
    if (failed) return 1;
    if (passed == 0 && skipped > 0) return 77;
    return 0;
}

int td_test_run(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

const char *td_test_bin(const char *name) {
    const char *env = !strcmp(name, "tandem")            ? "TD_TANDEM_BIN"
                      : !strcmp(name, "tandem-drafter")  ? "TD_DRAFTER_BIN"
                      : !strcmp(name, "tandem-verifier") ? "TD_VERIFIER_BIN"
                                                         : NULL;
    const char *b = env ? getenv(env) : NULL;
    if (b && *b) return b;
    static char paths[4][256];
    static int next;
    char *p = paths[next++ & 3];
    snprintf(p, sizeof paths[0], "build/bin/%s", name);
    return p;
}
