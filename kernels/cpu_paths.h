/* cpu_paths.h - choosing one of a set of CPU kernel paths by name (internal to kernels/): the
 * quantized products' TD_CPU_KERNELS (cpu_quant.c) and the float products' TD_CPU_FLOAT_KERNELS
 * (backend_cpu.c) work the same way: "auto" is the best path this CPU runs, a name picks that path
 * when the CPU can run it, and the environment variable sets the first choice. */
#ifndef TD_CPU_PATHS_H
#define TD_CPU_PATHS_H

#include "common/td_common.h"

typedef struct td_cpu_paths {
    const char *what;         /* "CPU kernels", for messages */
    const char *env;          /* the environment variable naming the first choice */
    const char *choices;      /* "auto, scalar, avx2, avx512vnni", for messages */
    const char *const *names; /* [n] */
    int n;
    int (*ok)(int p);  /* 1 when this CPU can run path p */
    int (*best)(void); /* the path "auto" means */
    int *cur;          /* the chosen path, -1 until one is chosen */
} td_cpu_paths_t;

/* The chosen path: on first use the environment variable's (a bad one is warned about), else the
 * best. */
int td_cpu_paths_get(const td_cpu_paths_t *ps);
/* 1 when name is "auto" or a path this CPU can run. */
int td_cpu_paths_available(const td_cpu_paths_t *ps, const char *name);
/* Chooses the path name ("auto": the best). TD_ERR_ARG for an unknown name, TD_ERR_UNSUPPORTED for
 * a path this CPU cannot run (the choice then unchanged). */
int td_cpu_paths_select(const td_cpu_paths_t *ps, const char *name, td_err_t *err);

#endif
