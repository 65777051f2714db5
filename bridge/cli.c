/* cli.c - option parsing, model loading and JSON string output for the subcommands. */
#include <stdio.h>

#include "model/chat.h"
#include "model/checkpoint.h"
#include "bridge/cli.h"
#include "kernels/cuda/backend_cuda.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void td_opts_init(td_opts_t *o, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    o->argc = argc;
    o->argv = argv;
    o->i = 0;
    const char *slash = strrchr(argv[0], '/');
    o->cmd = slash ? slash + 1 : argv[0];
}

/* "tandem score" for a subcommand, "tandem-drafter" for a worker program. */
static const char *s_who(const td_opts_t *o) {
    static char buf[160];
    snprintf(buf, sizeof buf, "%s%s", strncmp(o->cmd, "tandem", 6) ? "tandem " : "", o->cmd);
    return buf;
}

int td_opts_next(td_opts_t *o, const char **pos) {
    static char name[128];
    if (++o->i >= o->argc) return 0;
    const char *a = o->argv[o->i];
    if (a[0] != '-' || a[1] == 0) {
        *pos = a;
        return -1;
    }
    a += (a[1] == '-') ? 2 : 1;
    const char *eq = strchr(a, '=');
    size_t n = eq ? (size_t)(eq - a) : strlen(a);
    if (n >= sizeof name) n = sizeof name - 1;
    memcpy(name, a, n);
    name[n] = 0;
    o->name = name;
    o->inl = eq ? eq + 1 : NULL;
    return 1;
}

int td_opts_is(const td_opts_t *o, const char *name) { return strcmp(o->name, name) == 0; }

const char *td_opts_value(td_opts_t *o) {
    if (o->inl) return o->inl;
    if (o->i + 1 >= o->argc) {
        fprintf(stderr, "%s: option --%s needs a value\n", s_who(o), o->name);
        return NULL;
    }
    return o->argv[++o->i];
}

int td_opts_int(td_opts_t *o, long lo, long hi, long *out) {
    const char *v = td_opts_value(o);
    if (!v) return -1;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "%s: --%s expects an integer in [%ld, %ld], got '%s'\n", s_who(o), o->name,
                lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

int td_opts_float(td_opts_t *o, double lo, double hi, double *out) {
    const char *v = td_opts_value(o);
    if (!v) return -1;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || end == v || !(x >= lo && x <= hi)) {
        fprintf(stderr, "%s: --%s expects a number in [%g, %g], got '%s'\n", s_who(o), o->name, lo,
                hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

td_backend_t *td_cli_backend_new(int device, int n_threads, td_err_t *err) {
    if (device < 0) return td_backend_cpu_new(n_threads, 0, err);
    int n = td_cuda_device_count();
    if (device >= n) {
        td_err_set(
            err, TD_ERR_ARG, "--device %d: %s", device,
            n ? "no such CUDA device"
              : "no CUDA device (or this build has no CUDA backend); use the CPU (--device -1)");
        return NULL;
    }
    return td_backend_cuda_new(device, err);
}

int td_opts_parse(int argc, char **argv, const td_opt_spec_t *spec, int n) {
    td_opts_t o;
    const char *pos;
    int r;
    td_opts_init(&o, argc, argv);
    while ((r = td_opts_next(&o, &pos)) != 0) {
        if (r < 0) {
            fprintf(stderr, "%s: unexpected argument '%s'\n", s_who(&o), pos);
            return 2;
        }
        if (td_opts_is(&o, "help") || td_opts_is(&o, "h")) return 1;
        int i = 0;
        while (i < n && !td_opts_is(&o, spec[i].name)) i++;
        if (i == n) {
            fprintf(stderr, "%s: unknown option --%s (see --help)\n", s_who(&o), o.name);
            return 2;
        }
        const td_opt_spec_t *sp = &spec[i];
        switch (sp->kind) {
        case TD_OPT_STR:
            if (!(*(const char **)sp->var = td_opts_value(&o))) return 2;
            break;
        case TD_OPT_INT:
            if (td_opts_int(&o, (long)sp->lo, (long)sp->hi, (long *)sp->var)) return 2;
            break;
        case TD_OPT_FLT:
            if (td_opts_float(&o, sp->lo, sp->hi, (double *)sp->var)) return 2;
            break;
        case TD_OPT_FLAG:
            if (o.inl) {
                fprintf(stderr, "%s: --%s takes no value\n", s_who(&o), o.name);
                return 2;
            }
            *(int *)sp->var = 1;
            break;
        }
    }
    return 0;
}

int td_cli_load(const char *dir, int n_threads, td_backend_t **be, td_model_t **m,
                td_tokenizer_t **tok) {
    return td_cli_load_on(dir, -1, n_threads, be, m, tok);
}

static int s_load_on(const char *dir, int device, int n_threads, int head_only, td_backend_t **be,
                     td_model_t **m, td_tokenizer_t **tok);
int td_cli_load_on(const char *dir, int device, int n_threads, td_backend_t **be, td_model_t **m,
                   td_tokenizer_t **tok) {
    return s_load_on(dir, device, n_threads, 0, be, m, tok);
}
int td_cli_load_target_on(const char *dir, int device, int n_threads, td_backend_t **be,
                          td_model_t **m, td_tokenizer_t **tok) {
    return s_load_on(dir, device, n_threads, 1, be, m, tok);
}

static int s_load_on(const char *dir, int device, int n_threads, int head_only, td_backend_t **be,
                     td_model_t **m, td_tokenizer_t **tok) {
    td_err_t err = {0};
    *be = NULL;
    *m = NULL;
    *tok = NULL;
    *be = td_cli_backend_new(device, n_threads, &err);
    if (*be)
        *m = head_only ? td_model_load_head_only(dir, *be, &err) : td_model_load(dir, *be, &err);
    if (*m) *tok = td_checkpoint_tokenizer(dir, &err);
    if (!*tok) {
        fprintf(stderr, "tandem: %s\n", err.msg);
        td_model_destroy(m);
        td_backend_destroy(be);
        return -1;
    }
    const td_config_t *c = td_model_config(*m);
    int tv = td_tokenizer_n_vocab(*tok);
    if (tv > c->n_vocab) {
        fprintf(stderr,
                "tandem: %s: the tokenizer has %d ids but the model's vocabulary has %d rows: "
                "tokenizer and checkpoint do not belong together\n",
                dir, tv, c->n_vocab);
        td_tokenizer_destroy(tok);
        td_model_destroy(m);
        td_backend_destroy(be);
        return -1;
    }
    return 0;
}

int td_cli_n_cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int td_cli_auto_spin_us(int cores_needed) { return cores_needed <= td_cli_n_cores() ? 5000 : 0; }

int td_cli_pair_spin(long spin_opt) {
    return spin_opt < 0 ? 0 : spin_opt == 0 ? -1 : (int)spin_opt;
}

char *td_cli_read_text(const char *path, size_t *len) {
    if (strcmp(path, "-") != 0) {
        char *data = NULL;
        td_err_t err = {0};
        if (td_read_file(path, &data, len, &err) != TD_OK) {
            fprintf(stderr, "tandem: %s\n", err.msg);
            return NULL;
        }
        return data;
    }
    return td_cli_read_stream(stdin, len);
}

char *td_cli_read_stream(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
    }
    if (!buf) return NULL;
    buf[n] = 0;
    *len = n;
    return buf;
}

void td_cli_json_str(FILE *f, const char *s, size_t len) {
    fputc('"', f);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = ch == '"'    ? "\\\""
                          : ch == '\\' ? "\\\\"
                          : ch == '\n' ? "\\n"
                          : ch == '\r' ? "\\r"
                          : ch == '\t' ? "\\t"
                                       : NULL;
        if (esc)
            fputs(esc, f);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* Prints the --json "stats" object (keys documented in README.md; keep them stable). */
void td_cli_print_stats(FILE *f, const char *method, const td_spec_stats_t *s, int gamma,
                        double total) {
    static const char *reasons[] = {"length", "eos", "callback"};
    double tps = total > 0 ? s->generated / total : 0;
    fprintf(f,
            "\"stats\":{\"method\":\"%s\",\"lossy\":%s,\"generated\":%d,\"drafted\":%d,"
            "\"accepted\":%d,",
            method, s->lossy ? "true" : "false", s->generated, s->drafted, s->accepted);
    if (s->drafted)
        fprintf(f, "\"acceptance_rate\":%.6f,", (double)s->accepted / s->drafted);
    else
        fprintf(f, "\"acceptance_rate\":null,");
    if (s->rounds)
        fprintf(f, "\"mean_accepted_length\":%.6f,",
                (double)(s->accepted + s->bonus_tokens) / s->rounds);
    else
        fprintf(f, "\"mean_accepted_length\":null,");
    fprintf(f, "\"mean_accepted_length_includes_bonus\":%s,\"accepted_by_position\":[",
            s->lossy ? "false" : "true");
    int g = gamma < TD_SPEC_MAX_GAMMA ? gamma : TD_SPEC_MAX_GAMMA;
    if (!s->rounds) g = 0;
    for (int j = 0; j < g; j++) fprintf(f, "%s%d", j ? "," : "", s->accepted_by_position[j]);
    fprintf(f, "],\"drafted_by_position\":[");
    for (int j = 0; j < g; j++) fprintf(f, "%s%d", j ? "," : "", s->drafted_by_position[j]);
    fprintf(f,
            "],\"rounds\":%d,\"predrafted\":%d,\"fallbacks\":%d,\"forwards\":%d,\"full_rows\":%d,"
            "\"drafter_s\":%.6f,"
            "\"verifier_s\":%.6f,\"transport_s\":%.6f,\"total_s\":%.6f,\"tokens_per_second\":%.3f,"
            "\"stop\":\"%s\"}",
            s->rounds, s->predrafted, s->fallbacks, s->forwards, s->full_rows, s->drafter_s,
            s->verifier_s, s->transport_s, total, tps, reasons[s->stop]);
}

int td_cli_opts(int argc, char **argv, const td_opt_spec_t *spec, int n, void (*help)(FILE *)) {
    int pr = td_opts_parse(argc, argv, spec, n);
    if (pr == 1) {
        help(stdout);
        return 0;
    }
    return pr ? 2 : -1;
}

static volatile sig_atomic_t s_signalled;
static void s_on_signal(int sig) {
    (void)sig;
    s_signalled = 1;
}

volatile sig_atomic_t *td_cli_stop_on_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    return &s_signalled;
}

const char *td_cli_bundled(const char *name, char *buf, size_t cap) {
    snprintf(buf, cap, "models/%s", name);
    if (access(buf, R_OK) == 0) return buf;
    char exe[2048];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *s = strrchr(exe, '/');
        if (s) *s = 0;
        snprintf(buf, cap, "%.900s/../../models/%s", exe, name);
        if (access(buf, R_OK) == 0) return buf;
    }
    snprintf(buf, cap, "models/%s", name);
    return buf;
}

int td_cli_encode_prompt(const char *dir, int chat_kind, const char *system, const char *prompt,
                         const td_tokenizer_t *tok, int32_t **ids, int *n, int32_t *stop,
                         int *n_stop, int cap, td_err_t *err) {
    td_chat_format_t fmt;
    *ids = NULL;
    *n = 0;
    if (chat_kind == -2) {
        int rc = td_chat_format_detect(dir, &fmt, err);
        if (rc != TD_OK) return rc;
    } else {
        td_chat_format_builtin(chat_kind < 0 ? TD_CHAT_NONE : (td_chat_kind_t)chat_kind, &fmt);
    }
    char *rendered = NULL;
    if (fmt.kind != TD_CHAT_NONE) {
        td_chat_msg_t msgs[2];
        int nm = 0;
        if (system) msgs[nm++] = (td_chat_msg_t){"system", system};
        msgs[nm++] = (td_chat_msg_t){"user", prompt};
        int rc = td_chat_format_apply(&fmt, msgs, nm, 1, &rendered, err);
        if (rc != TD_OK) return rc;
        const char *ends[] = {"<|im_end|>", "<|eot_id|>", "<|endoftext|>"};
        for (size_t i = 0; i < 3 && *n_stop < cap; i++) {
            int32_t id = td_tokenizer_token_id(tok, ends[i]);
            if (id >= 0) stop[(*n_stop)++] = id;
        }
    }
    const char *in = rendered ? rendered : prompt;
    int rc = td_tokenizer_encode(tok, in, strlen(in), rendered != NULL, ids, n, err);
    free(rendered);
    if (rc == TD_OK && *n == 0) {
        free(*ids);
        *ids = NULL;
        rc = td_err_set(err, TD_ERR_ARG, "the prompt is empty");
    }
    return rc;
}
