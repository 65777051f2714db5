/* bench_opts.h - the `--name value` option parsing and the medians the bench programs share (header
 * only: every bench program is a file of its own). */
#ifndef TD_BENCH_OPTS_H
#define TD_BENCH_OPTS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One option: "--NAME VALUE" stores VALUE (kind 's', into a const char *) or atoi(VALUE) (kind
 * 'i', into an int) at dst. */
typedef struct td_bench_opt {
    const char *name;
    char kind;
    void *dst;
} td_bench_opt_t;

/* Parses argv[1..argc) as pairs "--NAME VALUE" of opts[n]. An unknown name (or one without a value)
 * is passed over when !strict, else reported on stderr with PROG: returns 2. Returns 0. */
static inline int td_bench_opts(int argc, char **argv, const td_bench_opt_t *opts, int n,
                                const char *prog, int strict) {
    for (int i = 1; i < argc; i += 2) {
        const td_bench_opt_t *o = NULL;
        for (int k = 0; k < n && !o; k++)
            if (i + 1 < argc && !strncmp(argv[i], "--", 2) && !strcmp(argv[i] + 2, opts[k].name))
                o = &opts[k];
        if (!o) {
            if (!strict) continue;
            fprintf(stderr, "%s: unknown option %s\n", prog, argv[i]);
            return 2;
        }
        if (o->kind == 's')
            *(const char **)o->dst = argv[i + 1];
        else
            *(int *)o->dst = atoi(argv[i + 1]);
    }
    return 0;
}

/* The median of v[n] (n >= 1), which it sorts in place. */
static inline int td_bench_cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static inline double td_bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, td_bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#endif
