/* tdtest.h - the tiny test harness every tests/test_*.c uses.
 *
 * A test binary registers cases with TD_TEST(name) { ... } and calls td_test_main(argc, argv) from
 * main (TD_TEST_MAIN does that). `build/tests/test_x NAME` runs one case. Checks record file and
 * line; a failed check fails its case and the binary exits 1. Exit 77 means "skipped" (e.g. no
 * GPU). */
#ifndef TD_TDTEST_H
#define TD_TDTEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef void (*td_test_fn)(void);
void td_test_register(const char *name, td_test_fn fn);
int td_test_main(int argc, char **argv);
void td_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void td_test_skip(const char *why); /* marks the current case skipped */
extern int td_test_failed_now;
/* Directory holding tests/ fixtures (from TD_TEST_DATA or "tests/data"). */
const char *td_test_data(void);
/* Reads the fixture td_test_data()/REL into a NUL-terminated malloc'd buffer (*len bytes before
 * the NUL); on failure fails the current case with the error and returns NULL. */
char *td_test_read(const char *rel, size_t *len);
/* Runs a shell command, capturing up to cap-1 bytes of its stdout into out (NUL-terminated);
 * returns its exit status, or -1 when it could not run or did not exit normally. */
int td_test_run(const char *cmd, char *out, size_t cap);
/* The program NAME ("tandem", "tandem-drafter", "tandem-verifier") the process tests run:
 * $TD_TANDEM_BIN / $TD_DRAFTER_BIN / $TD_VERIFIER_BIN when set (make test / make check point them
 * at the build under test, e.g. build-san/bin), else build/bin/NAME. The string is static. */
const char *td_test_bin(const char *name);

#define TD_TEST(name)                                                                              \
    static void name(void);                                                                        \
    __attribute__((constructor)) static void name##_reg(void) { td_test_register(#name, name); }   \
    static void name(void)

#define TD_TEST_MAIN()                                                                             \
    int main(int argc, char **argv) { return td_test_main(argc, argv); }

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) td_test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                         \
    } while (0)
#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) td_test_fail(__FILE__, __LINE__, __VA_ARGS__);                                \
    } while (0)
#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long _a = (long long)(a), _b = (long long)(b);                                        \
        if (_a != _b)                                                                              \
            td_test_fail(__FILE__, __LINE__, "%s == %lld, expected %s == %lld", #a, _a, #b, _b);   \
    } while (0)
#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *_a = (a), *_b = (b);                                                           \
        if (!_a || !_b || strcmp(_a, _b) != 0)                                                     \
            td_test_fail(__FILE__, __LINE__, "%s == \"%s\", expected \"%s\"", #a,                  \
                         _a ? _a : "(null)", _b ? _b : "(null)");                                  \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double _a = (a), _b = (b);                                                                 \
        if (!(fabs(_a - _b) <= (tol)))                                                             \
            td_test_fail(__FILE__, __LINE__, "%s = %.8g vs %s = %.8g (tol %g)", #a, _a, #b, _b,    \
                         (double)(tol));                                                           \
    } while (0)
/* A check that must hold before the case can continue. */
#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            td_test_fail(__FILE__, __LINE__, "REQUIRE(%s)", #cond);                                \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#endif
