/* cmd_bench.c - `tandem bench`: every method and setting on the same prompts and seeds, side by
 * side in one run, with each one's speedup over `ar` measured in that same run. */
#include <stdio.h>

#include "bridge/cli.h"
#include "model/chat.h"
#include "bridge/commands.h"
#include "bridge/pair.h"
#include "drafter/draft.h"
#include "engine/method.h"
#include "model/score.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void s_help(FILE *f) {
    fprintf(
        f,
        "usage: tandem bench [--prompts FILE] [--methods LIST] [options]\n\n"
        "Runs every combination of method x gamma x steps x order on every prompt (same seeds),\n"
        "prints a table, and writes PREFIX.json and PREFIX.csv. Speedups are tokens/s relative to\n"
        "`ar` measured in the same run (ar is always run first).\n\n"
        "options:\n"
        "  --prompts FILE     one prompt per line (default bench/prompts.txt)\n"
        "  --chat MODE        none (default: each line as it is), auto (the verifier's chat\n"
        "                     template), chatml, llama3: lines are rendered as user turns and\n"
        "                     the template's end-of-turn ids stop generation\n"
        "  --system S         system message for the chat template\n"
        "  --methods LIST     comma-separated: ar,spec-ar,specdiff,apd,diffusion,selfspec,planned\n"
        "                     (default all but planned, which needs a checkpoint with plan tags)\n"
        "  --gamma LIST       draft lengths, e.g. 4,8,16 (default 8); dflash: gamma = block - 1\n"
        "                     (--gamma 7,15 measures blocks 8 and 16)\n"
        "  --steps LIST       diffusion steps per draft, e.g. 1,2,4 (default 4; spec-ar/apd use "
        "1)\n"
        "  --orders LIST      unmasking orders (default left-to-right)\n"
        "  --steps-ratio LIST planned: denoising steps per stage / longest span, e.g. 1,0.5,0.25\n"
        "                     (default 1); one row per ratio\n"
        "  --draft-k K        selfspec: drafts chained per forward (default 4)\n"
        "  --block-size B     selfspec: canvas size (default 32)\n"
        "  --verify V         rejection (default), match, greedy\n"
        "  --max-tokens N     tokens per prompt (default 64)\n"
        "  --temperature X    0 (default) = greedy for every method\n"
        "  --seed S           base seed; prompt i uses S + i (default 0)\n"
        "  --mixture R        apd mixture (default 0.7)\n"
        "  --verifier DIR     default models/tiny-verifier\n"
        "  --ar-drafter DIR   default models/tiny-ar-drafter\n"
        "  --diffusion-drafter DIR  default models/tiny-diffusion-drafter\n"
        "  --dflash-drafter DIR|ENDPOINT  the DFlash drafter of --methods dflash (no default)\n"
        "  --limit N          use only the first N prompts\n"
        "  --threads N        CPU threads per model (default: all cores)\n"
        "  --spin-us N        waiting for the other side, poll without sleeping for up to N\n"
        "                     microseconds first (saves a thread wake-up per message, costs a "
        "busy\n"
        "                     core; 0 = off). Default: 5000 when the threads leave a core, else 0\n"
        "  --device N         CUDA device of the verifier (default -1: CPU); --drafter-device N "
        "for an\n"
        "                     in-process drafter\n"
        "  --predraft         in-process drafter: draft the next round ahead while the verifier "
        "verifies\n"
        "  --out PREFIX       output files (default bench/results/bench)\n");
}

#define MAX_LIST 16

static int s_parse_list(const char *s, int *out, int lo, int hi) {
    int n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        char *end;
        long v = strtol(tok, &end, 10);
        if (*end || v < lo || v > hi || n == MAX_LIST) return -1;
        out[n++] = (int)v;
    }
    return n;
}

#define TD_BENCH_MAX_ROWS 512

typedef struct row {
    char method[16], order[16];
    int m, order_id; /* td_method_t and td_unmask_order_t of this configuration */
    int gamma, steps;
    double steps_ratio; /* planned */
    /* selfspec: commits, depth counts (index d = chain depth d, 1..K) */
    long commits, depth_checked[TD_SELFSPEC_MAX_K + 1], depth_accepted[TD_SELFSPEC_MAX_K + 1];
    int draft_k;
    /* planned */
    long plan_tokens, spans, stages, span_tokens, span_steps, ar_forwards, diffusion_forwards;
    /* quality: mean negative log-likelihood of the outputs under the verifier, given the prompt */
    double nll_sum;
    long nll_tokens;
    long tokens, drafted, accepted, rounds, fallbacks, forwards, bonus, predrafted;
    long acc_pos[TD_SPEC_MAX_GAMMA], dr_pos[TD_SPEC_MAX_GAMMA];
    double seconds, drafter_s, verifier_s, transport_s;
    double *pp_tps;                   /* [n_prompts] tokens/s on each prompt */
    double spd_p25, spd_med, spd_p75; /* per-prompt speedups over ar: quartiles */
} row_t;

static int s_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Quartiles of the per-prompt speedups of r over ar (each prompt's two runs were back to back, so
 * a slow spell of the machine mostly cancels in the ratio; the median ignores the spells that do
 * not). Linear interpolation between order statistics. */
static void s_paired(row_t *r, const row_t *ar, int n_p) {
    double *v = malloc(sizeof(double) * (size_t)n_p);
    int n = 0;
    for (int i = 0; v && i < n_p; i++)
        if (ar->pp_tps[i] > 0 && r->pp_tps[i] > 0) v[n++] = r->pp_tps[i] / ar->pp_tps[i];
    if (n > 0) {
        qsort(v, (size_t)n, sizeof *v, s_cmp_double);
        double q[3] = {0.25, 0.5, 0.75}, *o[3] = {&r->spd_p25, &r->spd_med, &r->spd_p75};
        for (int k = 0; k < 3; k++) {
            double x = q[k] * (n - 1);
            int lo = (int)x;
            *o[k] = lo + 1 < n ? v[lo] + (x - lo) * (v[lo + 1] - v[lo]) : v[lo];
        }
    }
    free(v);
}

/* Sums -log p(output | prompt) under the causal model v into r (outputs with an id outside its
 * vocabulary are skipped). */
static void s_score(row_t *r, td_model_t *v, const int32_t *prompt, int n_prompt,
                    const int32_t *out, int n_out) {
    if (n_out < 1) return;
    int n = n_prompt + n_out, V = td_model_config(v)->n_vocab;
    int32_t *seq = malloc((size_t)n * sizeof *seq);
    float *lp = malloc((size_t)n * sizeof *lp);
    if (!seq || !lp) goto out;
    memcpy(seq, prompt, (size_t)n_prompt * sizeof *seq);
    for (int i = 0; i < n_out; i++) {
        if (out[i] < 0 || out[i] >= V) goto out;
        seq[n_prompt + i] = out[i];
    }
    td_err_t err = {0};
    if (td_score_causal(v, seq, n, 0, lp, NULL, &err) != TD_OK) goto out;
    for (int i = n_prompt; i < n; i++) r->nll_sum -= lp[i];
    r->nll_tokens += n_out;
out:
    free(seq);
    free(lp);
}

static void s_add(row_t *r, const td_spec_stats_t *s, double secs) {
    r->tokens += s->generated;
    r->drafted += s->drafted;
    r->accepted += s->accepted;
    r->rounds += s->rounds;
    r->fallbacks += s->fallbacks;
    r->forwards += s->forwards;
    r->bonus += s->bonus_tokens;
    r->predrafted += s->predrafted;
    r->seconds += secs;
    r->drafter_s += s->drafter_s;
    r->verifier_s += s->verifier_s;
    r->transport_s += s->transport_s;
    for (int j = 0; j < TD_SPEC_MAX_GAMMA; j++)
        r->acc_pos[j] += s->accepted_by_position[j], r->dr_pos[j] += s->drafted_by_position[j];
}

int td_cmd_bench(int argc, char **argv) {
    const char *prompts_path = "bench/prompts.txt",
               *methods_s = "ar,spec-ar,specdiff,apd,diffusion,selfspec", *gammas_s = "8",
               *steps_s = "4", *orders_s = "left-to-right", *verify_s = "rejection", *vdir = NULL,
               *ardir = NULL, *dfdir = NULL, *out_prefix = "bench/results/bench", *chat = "none",
               *system = NULL, *fldir = NULL;
    long spin_us = -1;
    long device = -1, ddevice = -1, max_tokens = 64, seed = 0, threads = 0, limit = 0;
    double temperature = 0, mixture = 0.7;
    int predraft = 0;
    const char *ratios_s = "1";
    long draft_k = 4, block = 32;
    const td_opt_spec_t spec[] = {
        {"prompts", TD_OPT_STR, &prompts_path, 0, 0},
        {"chat", TD_OPT_STR, &chat, 0, 0},
        {"system", TD_OPT_STR, &system, 0, 0},
        {"methods", TD_OPT_STR, &methods_s, 0, 0},
        {"gamma", TD_OPT_STR, &gammas_s, 0, 0},
        {"steps", TD_OPT_STR, &steps_s, 0, 0},
        {"orders", TD_OPT_STR, &orders_s, 0, 0},
        {"verify", TD_OPT_STR, &verify_s, 0, 0},
        {"verifier", TD_OPT_STR, &vdir, 0, 0},
        {"ar-drafter", TD_OPT_STR, &ardir, 0, 0},
        {"diffusion-drafter", TD_OPT_STR, &dfdir, 0, 0},
        {"dflash-drafter", TD_OPT_STR, &fldir, 0, 0},
        {"out", TD_OPT_STR, &out_prefix, 0, 0},
        {"max-tokens", TD_OPT_INT, &max_tokens, 1, 1 << 16},
        {"seed", TD_OPT_INT, &seed, 0, 0x7fffffffL},
        {"spin-us", TD_OPT_INT, &spin_us, 0, 1000000},
        {"threads", TD_OPT_INT, &threads, 0, 1024},
        {"device", TD_OPT_INT, &device, -1, 64},
        {"drafter-device", TD_OPT_INT, &ddevice, -1, 64},
        {"limit", TD_OPT_INT, &limit, 0, 1 << 20},
        {"temperature", TD_OPT_FLT, &temperature, 0, 100},
        {"mixture", TD_OPT_FLT, &mixture, 0, 1},
        {"predraft", TD_OPT_FLAG, &predraft, 0, 0},
        {"steps-ratio", TD_OPT_STR, &ratios_s, 0, 0},
        {"draft-k", TD_OPT_INT, &draft_k, 1, TD_SELFSPEC_MAX_K},
        {"block-size", TD_OPT_INT, &block, 1, 4096},
    };
    int ec = TD_CLI_OPTS(argc, argv, spec, s_help);
    if (ec >= 0) return ec;
    int gammas[MAX_LIST], steps[MAX_LIST], orders[MAX_LIST], methods[TD_METHOD_COUNT], n_g, n_s,
        n_o = 0, n_m = 0;
    if ((n_g = s_parse_list(gammas_s, gammas, 1, TD_SPEC_MAX_GAMMA)) <= 0 ||
        (n_s = s_parse_list(steps_s, steps, 1, 1024)) <= 0) {
        fprintf(stderr, "tandem bench: bad --gamma or --steps list\n");
        return 2;
    }
    double ratios[MAX_LIST];
    int n_r = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", ratios_s);
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
        char *end;
        double v = strtod(t, &end);
        if (*end || !(v >= 0.01 && v <= 10) || n_r == MAX_LIST) {
            fprintf(stderr, "tandem bench: bad --steps-ratio '%s' (values in [0.01, 10])\n", t);
            return 2;
        }
        ratios[n_r++] = v;
    }
    snprintf(buf, sizeof buf, "%s", orders_s);
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
        int v = td_unmask_order_parse(t);
        if (v < 0 || n_o == MAX_LIST) {
            fprintf(stderr, "tandem bench: unknown order '%s'\n", t);
            return 2;
        }
        orders[n_o++] = v;
    }
    int want[TD_METHOD_COUNT] = {0};
    snprintf(buf, sizeof buf, "%s", methods_s);
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
        int v = td_method_parse(t);
        if (v < 0) {
            fprintf(stderr, "tandem bench: unknown method '%s'\n", t);
            return 2;
        }
        want[v] = 1;
    }
    want[TD_METHOD_AR] = 1; /* the baseline is always measured */
    for (int m = 0; m < TD_METHOD_COUNT; m++)
        if (want[m]) methods[n_m++] = m;
    int verify = td_verify_parse(verify_s);
    if (verify < 0) {
        fprintf(stderr, "tandem bench: unknown --verify '%s'\n", verify_s);
        return 2;
    }
    const int chat_kind = strcmp(chat, "auto") == 0 ? -2 : td_chat_kind_from_name(chat);
    if (chat_kind == -1) {
        fprintf(stderr, "tandem bench: unknown --chat '%s' (auto, none, chatml, llama3)\n", chat);
        return 2;
    }
    static char vb[512], ab[512], db[512];
    if (!vdir) snprintf(vb, sizeof vb, "models/tiny-verifier"), vdir = vb;
    if (!ardir) snprintf(ab, sizeof ab, "models/tiny-ar-drafter"), ardir = ab;
    if (!dfdir) snprintf(db, sizeof db, "models/tiny-diffusion-drafter"), dfdir = db;

    /* prompts */
    size_t plen = 0;
    char *ptxt = td_cli_read_text(prompts_path, &plen);
    if (!ptxt) return 1;
    char *lines[4096];
    int n_p = 0;
    for (char *t = strtok(ptxt, "\n"); t && n_p < 4096; t = strtok(NULL, "\n"))
        if (*t && *t != '#') lines[n_p++] = t;
    if (limit > 0 && n_p > limit) n_p = (int)limit;
    if (n_p == 0) {
        fprintf(stderr, "tandem bench: no prompts in %s\n", prompts_path);
        free(ptxt);
        return 1;
    }
    td_err_t err = {0};
    td_pair_t par = {0}, pdf = {0}, pfl = {0};
    td_pair_opts_t po = {.device = (int)device,
                         .drafter_device = (int)ddevice,
                         .threads = (int)threads,
                         .predraft = predraft,
                         .spin_us = td_cli_pair_spin(spin_us)};
    /* the models and drafters to set up follow from the wanted methods' capabilities */
    int rc = 1, need_ar = 0, need_df = 0, need_dllm = 0, need_fl = 0;
    for (int m = 0; m < TD_METHOD_COUNT; m++) {
        const td_method_desc_t *md = td_method_get((td_method_t)m);
        if (!want[m]) continue;
        if (md->caps & TD_CAP_DRAFTER) {
            need_ar |= md->drafter == TD_DRAFTER_AR;
            need_fl |= md->drafter == TD_DRAFTER_DFLASH;
            need_df |= md->drafter != TD_DRAFTER_AR && md->drafter != TD_DRAFTER_DFLASH;
        }
        need_dllm |= (md->caps & TD_CAP_LOCAL_DLLM) != 0;
    }
    td_backend_t *dbe = NULL;
    td_model_t *dm = NULL;
    td_tokenizer_t *dtok = NULL;
    row_t *rows = calloc(TD_BENCH_MAX_ROWS, sizeof *rows);
    int n_rows = 0;
    int32_t **ids = calloc((size_t)n_p, sizeof *ids), *n_ids = calloc((size_t)n_p, sizeof *n_ids);
    int32_t *out = malloc(sizeof(int32_t) * (size_t)(max_tokens + 1));
    if (td_pair_open(&par, vdir, need_ar ? ardir : NULL, &po, &err) != TD_OK ||
        (need_df && td_pair_open(&pdf, NULL, dfdir, &po, &err) != TD_OK)) {
        fprintf(stderr, "tandem bench: %s\n", err.msg);
        goto done;
    }
    if (need_fl) {
        /* dflash: its own pair, the drafter (in-process or an endpoint) fed by this verifier */
        td_pair_opts_t fo = po;
        fo.dflash = 1;
        if (!fldir) {
            fprintf(stderr, "tandem bench: method dflash needs --dflash-drafter DIR|ENDPOINT\n");
            goto done;
        }
        if (td_pair_open(&pfl, vdir, fldir, &fo, &err) != TD_OK) {
            fprintf(stderr, "tandem bench: %s\n", err.msg);
            goto done;
        }
    }
    if (need_dllm && td_cli_load_on(dfdir, (int)ddevice, (int)threads, &dbe, &dm, &dtok)) goto done;
    for (int m = 0; m < TD_METHOD_COUNT; m++) {
        /* a checkpoint without plan tags cannot plan: the row would only measure the fallback */
        td_plan_tags_t tags;
        if (!want[m] || td_method_get((td_method_t)m)->drafter != TD_DRAFTER_PLANNED) continue;
        if (td_plan_tags_init(&tags, dtok, td_model_config(dm)->eos_token_id, &err) == TD_OK) {
            td_plan_tags_free(&tags);
        } else {
            fprintf(stderr, "tandem bench: %s skipped: %s\n", td_method_name((td_method_t)m),
                    err.msg);
            want[m] = 0;
        }
    }
    n_m = 0;
    for (int m = 0; m < TD_METHOD_COUNT; m++)
        if (want[m]) methods[n_m++] = m;
    const td_config_t *vc = td_model_config(par.verifier);
    int32_t stop[8];
    int n_stop = 0;
    if (vc->eos_token_id >= 0) stop[n_stop++] = vc->eos_token_id;
    for (int i = 0; i < n_p; i++) {
        int ns = n_stop; /* every prompt adds the same end-of-turn ids: keep the first's */
        if (td_cli_encode_prompt(vdir, chat_kind, system, lines[i], par.vtok, &ids[i], &n_ids[i],
                                 stop, &ns, 8, &err) != TD_OK) {
            fprintf(stderr, "tandem bench: prompt %d: %s\n", i + 1, err.msg);
            goto done;
        }
        if (i == n_p - 1) n_stop = ns;
    }
    td_sampling_t sp = {(float)temperature, 0, 1};
    fprintf(stderr, "tandem bench: %d prompts, %ld tokens each, temperature %g, verifier %s\n", n_p,
            max_tokens, temperature, vdir);
    for (int mi = 0; mi < n_m; mi++) {
        td_method_t m = (td_method_t)methods[mi];
        const unsigned o = td_method_get(m)->opts;
        int spec = (o & TD_OPTS_GAMMA) != 0;
        int ng = spec ? n_g : 1,
            ns = o & TD_OPTS_STEPS         ? n_s
                 : o & TD_OPTS_STEPS_RATIO ? n_r
                                           : 1,
            no = o & TD_OPTS_ORDER ? n_o : 1;
        for (int gi = 0; gi < ng; gi++)
            for (int si = 0; si < ns; si++)
                for (int oi = 0; oi < no; oi++) {
                    if (n_rows == TD_BENCH_MAX_ROWS) {
                        fprintf(stderr, "tandem bench: more than %d combinations; split the run\n",
                                TD_BENCH_MAX_ROWS);
                        goto done;
                    }
                    row_t *rw = &rows[n_rows++];
                    rw->pp_tps = calloc((size_t)n_p, sizeof *rw->pp_tps);
                    if (!rw->pp_tps) {
                        fprintf(stderr, "tandem bench: out of memory\n");
                        goto done;
                    }
                    rw->m = m;
                    rw->order_id = o & TD_OPTS_ORDER ? orders[oi] : 0;
                    snprintf(rw->method, sizeof rw->method, "%s", td_method_name(m));
                    rw->gamma = spec ? gammas[gi] : 0;
                    rw->steps = o & TD_OPTS_STEPS ? steps[si] : (spec ? 1 : 0);
                    rw->steps_ratio = o & TD_OPTS_STEPS_RATIO ? ratios[si] : 0;
                    rw->draft_k = o & TD_OPTS_DRAFT_K ? (int)draft_k : 0;
                    snprintf(rw->order, sizeof rw->order, "%s",
                             o & TD_OPTS_ORDER ? td_unmask_order_name((td_unmask_order_t)orders[oi])
                                               : "-");
                }
    }
    /* Prompt-major: every configuration runs on prompt 1, then every one on prompt 2, ..., so a
     * slow spell of a shared machine lands on all rows alike instead of on whichever row was
     * running (the speedups are ratios of these sums). */
    for (int i = 0; i < n_p; i++) {
        for (int k = 0; k < n_rows; k++) {
            row_t *rw = &rows[k];
            const td_method_t m = (td_method_t)rw->m;
            const td_method_desc_t *md = td_method_get(m);
            td_run_params_t p = td_run_params_default(m);
            p.max_tokens = (int)max_tokens;
            p.sampling = p.draft_sampling = sp;
            p.seed = (uint64_t)(seed + i);
            p.stop_ids = stop;
            p.n_stop = n_stop;
            p.verify = (td_verify_t)verify;
            p.apd_mixture = (float)mixture;
            p.block_size = (int)block;
            p.draft_k = (int)draft_k;
            if (md->opts & TD_OPTS_GAMMA) p.gamma = rw->gamma, p.steps = rw->steps;
            if (md->opts & TD_OPTS_ORDER) p.order = rw->order_id;
            if (md->opts & TD_OPTS_STEPS_RATIO) p.steps_ratio = (float)rw->steps_ratio;
            td_pair_t *pp = md->drafter == TD_DRAFTER_AR       ? &par
                            : md->drafter == TD_DRAFTER_DFLASH ? &pfl
                                                               : &pdf;
            /* a new drafter session for every (configuration, prompt): no row inherits a drafter
             * cache another row warmed on the same prompt */
            td_run_ctx_t ctx = {.verifier = !(md->caps & TD_CAP_VERIFIER)        ? NULL
                                            : md->drafter == TD_DRAFTER_DFLASH ? pfl.verifier
                                                                               : par.verifier,
                                .drafter_hello = td_pair_drafter_hello(pp),
                                .dllm = md->caps & TD_CAP_LOCAL_DLLM ? dm : NULL,
                                .dc = md->caps & TD_CAP_DRAFTER ? pp->dc : NULL,
                                .hello = &pp->hello,
                                .tok = dtok,
                                .session = 1000 + (uint64_t)k * (uint64_t)n_p + (uint64_t)i};
            td_run_stats_t rs;
            double t0 = td_time_now();
            int grc = td_method_run(m, &ctx, &p, ids[i], n_ids[i], out, &rs, &err);
            const td_spec_stats_t st = rs.s;
            if (rs.note[0]) td_log(TD_LOG_INFO, "prompt %d: %s", i + 1, rs.note);
            /* method detail (zero for the methods that do not fill it) */
            rw->commits += rs.selfspec.commits;
            for (int d = 1; d <= TD_SELFSPEC_MAX_K; d++) {
                rw->depth_checked[d] += rs.selfspec.depth_checked[d];
                rw->depth_accepted[d] += rs.selfspec.depth_accepted[d];
            }
            const td_planned_stats_t *ps = &rs.planned;
            rw->plan_tokens += ps->plan_tokens, rw->spans += ps->spans;
            rw->stages += ps->stages, rw->span_tokens += ps->span_tokens;
            rw->span_steps += ps->span_steps, rw->ar_forwards += ps->ar_forwards;
            rw->diffusion_forwards += ps->diffusion_forwards;
            if (grc != TD_OK) {
                fprintf(stderr, "tandem bench: %s prompt %d: %s\n", rw->method, i + 1, err.msg);
                goto done;
            }
            const double secs = td_time_now() - t0;
            s_add(rw, &st, secs);
            rw->pp_tps[i] = secs > 0 ? st.generated / secs : 0;
            s_score(rw, par.verifier, ids[i], n_ids[i], out, st.generated);
        }
        fprintf(stderr, "\r  prompt %d/%d done", i + 1, n_p);
    }
    fprintf(stderr, "\n");
    /* table, JSON, CSV */
    double base = rows[0].tokens / rows[0].seconds;
    for (int k = 0; k < n_rows; k++) s_paired(&rows[k], &rows[0], n_p);
    char path[1024];
    snprintf(path, sizeof path, "%s.csv", out_prefix);
    FILE *csv = fopen(path, "w");
    snprintf(path, sizeof path, "%s.json", out_prefix);
    FILE *js = fopen(path, "w");
    if (!csv || !js) {
        fprintf(stderr, "tandem bench: cannot write %s.{csv,json} (does the directory exist?)\n",
                out_prefix);
        if (csv) fclose(csv);
        if (js) fclose(js);
        goto done;
    }
    printf("%-10s %5s %5s %-14s %8s %8s %8s %17s %8s %8s %9s %9s %6s\n", "method", "gamma", "steps",
           "order", "tokens", "tok/s", "speedup", "per-prompt [IQR]", "accept", "acc.len",
           "fwd/tok", "transport", "fallb");
    fprintf(csv, "method,gamma,steps,order,verify,temperature,prompts,tokens,seconds,tokens_per_"
                 "second,speedup_vs_ar,"
                 "drafted,accepted,acceptance_rate,rounds,mean_accepted_length,forwards,fallbacks,"
                 "drafter_s,verifier_s,transport_s,"
                 "transport_share,verifier_nll,steps_ratio,plan_tokens,spans,stages,span_tokens,"
                 "span_steps,steps_per_span,ar_forwards,diffusion_forwards,draft_k,commits,"
                 "drafts_per_forward,acceptance_by_depth,speedup_median,speedup_p25,speedup_p75\n");
    fprintf(js,
            "{\"verifier\":\"%s\",\"prompts\":%d,\"max_tokens\":%ld,\"temperature\":%g,\"verify\":"
            "\"%s\",\"results\":[",
            vdir, n_p, max_tokens, temperature, verify_s);
    for (int k = 0; k < n_rows; k++) {
        row_t *w = &rows[k];
        double tps = w->tokens / w->seconds,
               acc = w->drafted ? (double)w->accepted / w->drafted : 0;
        int lossy = !strcmp(w->method, "apd");
        double alen = w->rounds ? (double)(w->accepted + w->bonus) / w->rounds : 0;
        double tshare = (w->drafter_s + w->verifier_s + w->transport_s) > 0
                            ? w->transport_s / (w->drafter_s + w->verifier_s + w->transport_s)
                            : 0;
        printf("%-10s %5d %5d %-14s %8ld %8.1f %7.2fx %5.2fx [%.2f-%.2f] %8.3f %8.2f %9.3f %8.1f%% "
               "%6ld\n",
               w->method, w->gamma, w->steps, w->order, w->tokens, tps, tps / base, w->spd_med,
               w->spd_p25, w->spd_p75, acc, alen, (double)w->forwards / (w->tokens ? w->tokens : 1),
               100 * tshare, w->fallbacks);
        fprintf(csv,
                "%s,%d,%d,%s,%s,%g,%d,%ld,%.6f,%.4f,%.4f,%ld,%ld,%.6f,%ld,%.4f,%ld,%ld,%.6f,%.6f,%."
                "6f,%.6f",
                w->method, w->gamma, w->steps, w->order, verify_s, temperature, n_p, w->tokens,
                w->seconds, tps, tps / base, w->drafted, w->accepted, acc, w->rounds, alen,
                w->forwards, w->fallbacks, w->drafter_s, w->verifier_s, w->transport_s, tshare);
        double nll = w->nll_tokens ? w->nll_sum / w->nll_tokens : 0,
               sps = w->spans ? (double)w->span_steps / w->spans : 0,
               dpf = w->draft_k && w->forwards ? (double)w->commits / w->forwards : 0;
        /* the CSV line continues: quality, planned and selfspec columns */
        fprintf(csv, ",%.6f,%g,%ld,%ld,%ld,%ld,%ld,%.4f,%ld,%ld,%d,%ld,%.4f,", nll, w->steps_ratio,
                w->plan_tokens, w->spans, w->stages, w->span_tokens, w->span_steps, sps,
                w->ar_forwards, w->diffusion_forwards, w->draft_k, w->commits, dpf);
        for (int d = 1; d <= w->draft_k; d++)
            fprintf(csv, "%s%.4f", d > 1 ? ";" : "",
                    w->depth_checked[d] ? (double)w->depth_accepted[d] / w->depth_checked[d] : 0);
        fprintf(csv, ",%.4f,%.4f,%.4f\n", w->spd_med, w->spd_p25, w->spd_p75);
        fprintf(js,
                "%s{\"method\":\"%s\",\"lossy\":%s,\"gamma\":%d,\"steps\":%d,\"order\":\"%s\","
                "\"tokens\":%ld,\"seconds\":%.6f,"
                "\"tokens_per_second\":%.4f,\"speedup_vs_ar\":%.4f,\"drafted\":%ld,\"accepted\":%"
                "ld,\"acceptance_rate\":%.6f,"
                "\"rounds\":%ld,\"predrafted\":%ld,\"mean_accepted_length\":%.4f,\"mean_accepted_"
                "length_includes_bonus\":%s,\"forwards\":%ld,"
                "\"fallbacks\":%ld,\"drafter_s\":%.6f,\"verifier_s\":%.6f,\"transport_s\":%.6f,"
                "\"transport_share\":%.6f,"
                "\"accepted_by_position\":[",
                k ? "," : "", w->method, lossy ? "true" : "false", w->gamma, w->steps, w->order,
                w->tokens, w->seconds, tps, tps / base, w->drafted, w->accepted, acc, w->rounds,
                w->predrafted, alen, lossy ? "false" : "true", w->forwards, w->fallbacks,
                w->drafter_s, w->verifier_s, w->transport_s, tshare);
        for (int j = 0; j < w->gamma; j++) fprintf(js, "%s%ld", j ? "," : "", w->acc_pos[j]);
        fprintf(js, "],\"drafted_by_position\":[");
        for (int j = 0; j < w->gamma; j++) fprintf(js, "%s%ld", j ? "," : "", w->dr_pos[j]);
        fprintf(js, "],\"verifier_nll\":%.6f", nll);
        fprintf(js, ",\"speedup_median\":%.4f,\"speedup_p25\":%.4f,\"speedup_p75\":%.4f",
                w->spd_med, w->spd_p25, w->spd_p75);
        if (w->steps_ratio > 0)
            fprintf(js,
                    ",\"steps_ratio\":%g,\"plan_tokens\":%ld,\"spans\":%ld,\"stages\":%ld,"
                    "\"span_tokens\":%ld,\"span_steps\":%ld,\"steps_per_span\":%.4f,"
                    "\"ar_forwards\":%ld,\"diffusion_forwards\":%ld",
                    w->steps_ratio, w->plan_tokens, w->spans, w->stages, w->span_tokens,
                    w->span_steps, sps, w->ar_forwards, w->diffusion_forwards);
        if (w->draft_k) {
            fprintf(js, ",\"draft_k\":%d,\"commits\":%ld,\"drafts_per_forward\":%.4f", w->draft_k,
                    w->commits, dpf);
            fprintf(js, ",\"checked_by_depth\":[");
            for (int d = 1; d <= w->draft_k; d++)
                fprintf(js, "%s%ld", d > 1 ? "," : "", w->depth_checked[d]);
            fprintf(js, "],\"accepted_by_depth\":[");
            for (int d = 1; d <= w->draft_k; d++)
                fprintf(js, "%s%ld", d > 1 ? "," : "", w->depth_accepted[d]);
            fprintf(js, "]");
        }
        fprintf(js, "}");
    }
    fprintf(js, "]}\n");
    fclose(csv);
    fclose(js);
    for (int k = 0; k < n_rows; k++) { /* the methods' own stats, one line each */
        row_t *w = &rows[k];
        double tpt = (double)w->forwards / (w->tokens ? w->tokens : 1),
               nll = w->nll_tokens ? w->nll_sum / w->nll_tokens : 0;
        if (w->steps_ratio > 0)
            printf("planned   ratio %g: %ld spans in %ld stage(s), %ld plan tokens, %.1f steps per "
                   "span, critical path %.3f passes per output token, verifier NLL %.3f (ar "
                   "%.3f)\n",
                   w->steps_ratio, w->spans, w->stages, w->plan_tokens,
                   w->spans ? (double)w->span_steps / w->spans : 0, tpt, nll,
                   rows[0].nll_tokens ? rows[0].nll_sum / rows[0].nll_tokens : 0);
        if (w->draft_k) {
            printf("selfspec  K %d: %.2f drafts per forward; acceptance by chain depth", w->draft_k,
                   w->forwards ? (double)w->commits / w->forwards : 0);
            for (int d = 1; d <= w->draft_k; d++)
                printf(" %d:%.2f", d,
                       w->depth_checked[d] ? (double)w->depth_accepted[d] / w->depth_checked[d]
                                           : 0);
            printf("\n");
        }
    }
    printf("(speedup = tokens/s over ar in this run; per-prompt = median [quartiles] of each "
           "prompt's tokens/s over ar's on the same prompt, run back to back; acc.len = tokens per "
           "verification round incl. the bonus; apd is lossy)\nwrote %s.json and %s.csv\n",
           out_prefix, out_prefix);
    rc = 0;
done:
    for (int i = 0; i < n_p; i++) free(ids[i]);
    free(ids);
    free(n_ids);
    free(out);
    for (int k = 0; rows && k < TD_BENCH_MAX_ROWS; k++) free(rows[k].pp_tps);
    free(rows);
    free(ptxt);
    td_pair_close(&par);
    td_pair_close(&pdf);
    td_pair_close(&pfl);
    td_tokenizer_destroy(&dtok);
    td_model_destroy(&dm);
    td_backend_destroy(&dbe);
    return rc;
}
