/* cli.h - small helpers shared by the tandem subcommands: option parsing and model loading. */
#ifndef TD_CLI_H
#define TD_CLI_H

#include "kernels/backend.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "verifier/spec.h"

#include <signal.h>
#include <stdio.h>

/* Option parser over argv[1..]: accepts "--name value" and "--name=value". */
typedef struct td_opts {
    int argc, i;
    char **argv;
    const char *name; /* current option name without the leading dashes */
    const char *inl;  /* value given inline with '=' */
    const char *cmd;  /* subcommand, for messages */
} td_opts_t;

void td_opts_init(td_opts_t *o, int argc, char **argv);
/* Advances to the next option; returns 0 at the end, -1 on a positional argument (in *pos). */
int td_opts_next(td_opts_t *o, const char **pos);
int td_opts_is(const td_opts_t *o, const char *name);
/* The option's value (inline or the next argument); prints an error and returns NULL if absent. */
const char *td_opts_value(td_opts_t *o);
/* Parses the value as an integer / float in [lo, hi]; prints an error and returns -1 on failure. */
int td_opts_int(td_opts_t *o, long lo, long hi, long *out);
int td_opts_float(td_opts_t *o, double lo, double hi, double *out);

/* Table-driven option parsing: one row per option. var points to a `const char *` (STR), a
 * `long` (INT, range [lo, hi]), a `double` (FLT, range [lo, hi]) or an `int` set to 1 (FLAG). */
typedef enum td_opt_kind { TD_OPT_STR, TD_OPT_INT, TD_OPT_FLT, TD_OPT_FLAG } td_opt_kind_t;
typedef struct td_opt_spec {
    const char *name;
    td_opt_kind_t kind;
    void *var;
    double lo, hi;
} td_opt_spec_t;

/* Parses argv[1..] (argv[0] is the command name used in messages) by spec[n]. Returns 0 when
 * parsed, 1 when --help/-h was given, 2 on a usage error (already printed). */
int td_opts_parse(int argc, char **argv, const td_opt_spec_t *spec, int n);

/* Installs SIGINT/SIGTERM handlers that set the returned flag (a worker's serve loop polls it). */
volatile sig_atomic_t *td_cli_stop_on_signals(void);

/* td_opts_parse for a command: -1 to go on; else the exit code (0 after printing help(stdout)
 * for --help, 2 for a bad option). */
int td_cli_opts(int argc, char **argv, const td_opt_spec_t *spec, int n, void (*help)(FILE *));

/* The bundled model NAME: ./models/NAME when readable, else next to the executable
 * (EXE_DIR/../../models/NAME), else ./models/NAME (for the error message). Writes into buf. */
const char *td_cli_bundled(const char *name, char *buf, size_t cap);
#define TD_CLI_OPTS(argc, argv, spec, help)                                                        \
    td_cli_opts(argc, argv, spec, (int)(sizeof spec / sizeof spec[0]), help)

/* A backend: CUDA device `device` when device >= 0 (an error when this build or machine has no such
 * device), else the CPU backend with n_threads. */
td_backend_t *td_cli_backend_new(int device, int n_threads, td_err_t *err);

/* Loads a model directory on a CPU backend with n_threads (0 = all cores) and its tokenizer.
 * Prints the error and returns -1 on failure; on success the caller destroys all three. */
int td_cli_load(const char *dir, int n_threads, td_backend_t **be, td_model_t **m,
                td_tokenizer_t **tok);
/* The same on a chosen device (-1 = CPU). */
int td_cli_load_on(const char *dir, int device, int n_threads, td_backend_t **be, td_model_t **m,
                   td_tokenizer_t **tok);
/* The same for a DFlash drafter's target: only its embedding and LM head are read
 * (td_model_load_head_only). */
int td_cli_load_target_on(const char *dir, int device, int n_threads, td_backend_t **be,
                          td_model_t **m, td_tokenizer_t **tok);

/* Online CPU cores. */
int td_cli_n_cores(void);
/* The automatic busy-poll budget (td_transport_opts_t.spin_us) for a process whose compute
 * threads plus the waiting thread need cores_needed cores: 5000 us when that fits the machine's
 * cores, else 0 (a spinning thread would take a core from a computing one). */
int td_cli_auto_spin_us(int cores_needed);
/* Maps a command's --spin-us value (-1 = not given) to td_pair_opts_t.spin_us (0 auto, -1 off). */
int td_cli_pair_spin(long spin_opt);

/* A user prompt as a model sees it: chat_kind -2 = the checkpoint's own template (dir), -1 or
 * TD_CHAT_NONE = the text as is, else a built-in template (td_chat_kind_t); system may be NULL.
 * *ids (malloc'd) / *n get the token ids; the template's end-of-turn ids (<|im_end|>, <|eot_id|>,
 * <|endoftext|> when the tokenizer has them) are appended to stop[*n_stop] up to cap. TD_OK, or
 * the template / tokenizer error (an empty prompt is TD_ERR_ARG). */
int td_cli_encode_prompt(const char *dir, int chat_kind, const char *system, const char *prompt,
                         const td_tokenizer_t *tok, int32_t **ids, int *n, int32_t *stop,
                         int *n_stop, int cap, td_err_t *err);

/* Reads all of a file, or stdin for "-". */
char *td_cli_read_text(const char *path, size_t *len);

/* Reads f to its end into a NUL-terminated malloc'd buffer (*len bytes before the NUL); NULL when
 * out of memory. */
char *td_cli_read_stream(FILE *f, size_t *len);

/* Writes s to f as a JSON string literal (quotes and escapes included). */
void td_cli_json_str(FILE *f, const char *s, size_t len);

/* Writes the "stats":{...} member of the --json output (keys documented in README.md). */
void td_cli_print_stats(FILE *f, const char *method, const td_spec_stats_t *s, int gamma,
                        double total);

#endif
