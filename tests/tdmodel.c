/* tdmodel.c - model fixtures for the tests (see tdmodel.h). */
#include "tests/tdmodel.h"

#include "tests/tdtest.h"

td_model_t *td_test_load_cpu(const char *dir, int threads, int reference, td_backend_t **be) {
    td_err_t err = {0};
    *be = td_backend_cpu_new(threads, reference, &err);
    td_model_t *m = *be ? td_model_load(dir, *be, &err) : NULL;
    if (!m) {
        td_test_fail(__FILE__, __LINE__, "load %s: %s", dir, err.msg);
        td_backend_destroy(be);
    }
    return m;
}

td_model_t *td_test_load_fixture(const char *name, int threads, int reference, td_backend_t **be) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/%s", td_test_data(), name);
    return td_test_load_cpu(dir, threads, reference, be);
}
