/* cpu_paths.c - choosing a CPU kernel path by name (see cpu_paths.h). */
#include "kernels/cpu_paths.h"

#include <stdlib.h>
#include <string.h>

int td_cpu_paths_get(const td_cpu_paths_t *ps) {
    if (*ps->cur < 0) {
        const char *e = getenv(ps->env);
        td_err_t err = {0};
        if (!e || td_cpu_paths_select(ps, e, &err) != TD_OK) {
            if (e) td_log(TD_LOG_WARN, "%s: %s; using the best available", ps->env, err.msg);
            *ps->cur = ps->best();
        }
    }
    return *ps->cur;
}

int td_cpu_paths_available(const td_cpu_paths_t *ps, const char *name) {
    if (!name) return 0;
    if (!strcmp(name, "auto")) return 1;
    for (int p = 0; p < ps->n; p++)
        if (!strcmp(name, ps->names[p])) return ps->ok(p);
    return 0;
}

int td_cpu_paths_select(const td_cpu_paths_t *ps, const char *name, td_err_t *err) {
    if (!name) return td_err_set(err, TD_ERR_ARG, "no kernel name");
    if (!strcmp(name, "auto")) {
        *ps->cur = ps->best();
        return TD_OK;
    }
    for (int p = 0; p < ps->n; p++)
        if (!strcmp(name, ps->names[p])) {
            if (!ps->ok(p))
                return td_err_set(err, TD_ERR_UNSUPPORTED, "this CPU cannot run the %s kernels",
                                  name);
            *ps->cur = p;
            return TD_OK;
        }
    return td_err_set(err, TD_ERR_ARG, "unknown %s '%s' (%s)", ps->what, name, ps->choices);
}
