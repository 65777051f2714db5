/* method.c - the method table (see method.h): each method's defaults, its run and its session
 * constructor, and the one conversion from td_run_params_t to each decoder's own structs. */
#include "engine/method.h"

#include "drafter/draft.h"
#include "engine/remote_methods.h"
#include "verifier/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void s_emit_all(const td_run_ctx_t *c, const int32_t *out, int n) {
    for (int i = 0; c->cb && i < n; i++)
        if (c->cb(c->ud, out[i])) break;
}

td_spec_params_t td_run_spec_params(td_method_t m, const td_run_params_t *p,
                                    const td_hello_t *hello) {
    td_spec_params_t s = td_spec_params_default(m);
    s.gamma = p->gamma;
    s.steps = p->steps;
    s.order = p->order;
    s.verify = p->verify;
    s.max_tokens = p->max_tokens;
    s.sampling = p->sampling;
    s.draft_sampling = p->draft_sampling;
    s.seed = p->seed;
    s.stop_ids = p->stop_ids;
    s.n_stop = p->n_stop;
    s.dist_top_k = p->dist_top_k;
    s.apd_mixture = p->apd_mixture;
    s.apd_kv_window = p->apd_kv_window;
    s.drafter_timeout_ms = p->drafter_timeout_ms;
    s.hello = hello;
    return s;
}

/* ---- ar and the speculative methods: the driver with one session ------------------------------
 */

/* The session options of one request of method m (sp: its converted parameters). */
static td_session_opts_t s_opts(const td_run_ctx_t *c, td_link_t *link, const td_run_params_t *p,
                                const td_spec_params_t *sp, const int32_t *prompt, int n_prompt,
                                td_method_t m) {
    return (td_session_opts_t){.method = m,
                               .params = sp,
                               .link = link,
                               .session_id = c->session,
                               .prompt = prompt,
                               .n_prompt = n_prompt,
                               .cb = c->cb,
                               .ud = c->ud,
                               .suppress_ids = p->suppress_ids,
                               .n_suppress = p->n_suppress};
}

/* dflash: the drafter's layer list into layers[64] and o, gamma from its block size when unset.
 * TD_OK or TD_ERR_ARG (no dflash drafter behind the link). */
static int s_dflash_opts(const td_run_ctx_t *c, const td_run_params_t *p, td_spec_params_t *sp,
                         td_session_opts_t *o, int *layers, td_err_t *err) {
    const td_hello_t *h = c->drafter_hello;
    if (!h || !td_hello_has_capability(h, "dflash") || !h->n_target_layers ||
        h->n_target_layers > 64)
        return td_err_set(err, TD_ERR_ARG,
                          "dflash needs a dflash drafter (its Hello lists no target layers)");
    for (size_t i = 0; i < h->n_target_layers; i++) layers[i] = (int)h->target_layers[i];
    o->feature_layers = layers;
    o->n_feature_layers = (int)h->n_target_layers;
    o->feature_type = p->feature_type;
    if (sp->gamma <= 0) sp->gamma = h->block_size > 1 ? (int)h->block_size - 1 : 15;
    return TD_OK;
}

static td_session_t *s_session_new(const td_run_ctx_t *c, td_link_t *link, const td_run_params_t *p,
                                   const int32_t *prompt, int n_prompt, td_method_t m,
                                   td_err_t *err) {
    td_spec_params_t sp = td_run_spec_params(m, p, c->hello);
    td_session_opts_t o = s_opts(c, link, p, &sp, prompt, n_prompt, m);
    int layers[64];
    if (m == TD_METHOD_DFLASH && s_dflash_opts(c, p, &sp, &o, layers, err) != TD_OK) return NULL;
    return td_session_new(c->verifier, &o, err);
}

#define SESSION_CTOR(fn, m)                                                                        \
    static td_session_t *fn(const td_run_ctx_t *c, td_link_t *link, const td_run_params_t *p,      \
                            const int32_t *prompt, int n_prompt, td_err_t *err) {                  \
        return s_session_new(c, link, p, prompt, n_prompt, m, err);                                \
    }
SESSION_CTOR(s_ar_session, TD_METHOD_AR)
SESSION_CTOR(s_spec_ar_session, TD_METHOD_SPEC_AR)
SESSION_CTOR(s_specdiff_session, TD_METHOD_SPECDIFF)
SESSION_CTOR(s_apd_session, TD_METHOD_APD)
SESSION_CTOR(s_dflash_session, TD_METHOD_DFLASH)

static int s_run_driver(const td_run_ctx_t *c, const td_run_params_t *p, const int32_t *prompt,
                        int n_prompt, int32_t *out, td_run_stats_t *st, td_err_t *err) {
    if (!c->verifier)
        return td_err_set(err, TD_ERR_ARG, "%s needs a verifier model", td_method_name(st->ran));
    td_link_t *link = NULL;
    if (st->ran != TD_METHOD_AR) {
        if (!c->dc)
            return td_err_set(err, TD_ERR_ARG, "%s needs a drafter", td_method_name(st->ran));
        if (!(link = td_link_new(c->dc, c->hello, err))) return TD_ERR_NOMEM;
    }
    td_spec_params_t sp = td_run_spec_params(st->ran, p, c->hello);
    td_session_opts_t o = s_opts(c, link, p, &sp, prompt, n_prompt, st->ran);
    int layers[64];
    int rc = st->ran == TD_METHOD_DFLASH ? s_dflash_opts(c, p, &sp, &o, layers, err) : TD_OK;
    if (rc == TD_OK) rc = td_driver_generate(c->verifier, &o, out, &st->s, err);
    td_link_destroy(&link);
    return rc;
}

static int s_run_ar(const td_run_ctx_t *c, const td_run_params_t *p, const int32_t *prompt,
                    int n_prompt, int32_t *out, td_run_stats_t *st, td_err_t *err) {
    if (!c->verifier) return td_err_set(err, TD_ERR_ARG, "ar needs a model");
    if (td_backend_host_memory(td_model_backend(c->verifier)))
        return s_run_driver(c, p, prompt, n_prompt, out, st, err);
    /* a device backend: sample on the device, 12 bytes back per token instead of a logits row */
    td_gen_params_t gp = {.max_tokens = p->max_tokens, .sampling = p->sampling, .seed = p->seed};
    gp.stop_ids = p->stop_ids, gp.n_stop = p->n_stop;
    gp.suppress_ids = p->suppress_ids, gp.n_suppress = p->n_suppress;
    td_gen_stats_t gs = {0};
    int rc = td_generate_ar(c->verifier, prompt, n_prompt, &gp, c->cb, c->ud, out, &gs, err);
    st->s.generated = gs.generated;
    st->s.forwards = gs.forwards;
    st->s.verifier_s = gs.prefill_s + gs.decode_s;
    st->s.stop = gs.stop;
    return rc;
}

/* ---- diffusion-LM methods ---------------------------------------------------------------------
 */

static int s_run_diffusion(const td_run_ctx_t *c, const td_run_params_t *p, const int32_t *prompt,
                           int n_prompt, int32_t *out, td_run_stats_t *st, td_err_t *err) {
    if (!c->dllm) return td_err_set(err, TD_ERR_ARG, "diffusion needs a diffusion LM");
    td_diffusion_params_t dp = td_diffusion_params_default();
    dp.max_tokens = p->max_tokens, dp.block_size = p->block_size, dp.threshold = p->threshold;
    dp.sampling = p->sampling, dp.seed = p->seed;
    dp.stop_ids = p->stop_ids, dp.n_stop = p->n_stop;
    dp.suppress_ids = p->suppress_ids, dp.n_suppress = p->n_suppress;
    td_diffusion_stats_t ds = {0};
    double t0 = td_time_now();
    int rc = td_diffusion_generate(c->dllm, prompt, n_prompt, &dp, out, &ds, err);
    st->s.generated = ds.generated;
    st->s.forwards = ds.forwards;
    st->s.drafter_s = td_time_now() - t0;
    st->s.stop = ds.stopped_at_stop_id ? TD_STOP_EOS : TD_STOP_LENGTH;
    if (rc == TD_OK) s_emit_all(c, out, ds.generated);
    return rc;
}

static int s_run_selfspec(const td_run_ctx_t *c, const td_run_params_t *p, const int32_t *prompt,
                          int n_prompt, int32_t *out, td_run_stats_t *st, td_err_t *err) {
    /* with a drafter link the local model is ctx.verifier (the same dLLM the drafter runs) */
    td_model_t *m = c->dc ? (c->verifier ? c->verifier : c->dllm) : c->dllm;
    if (!m) return td_err_set(err, TD_ERR_ARG, "selfspec needs a diffusion LM");
    td_selfspec_params_t sp = td_selfspec_params_default();
    sp.max_tokens = p->max_tokens, sp.block_size = p->block_size, sp.draft_k = p->draft_k;
    sp.stop_ids = p->stop_ids, sp.n_stop = p->n_stop;
    if (p->sampling.temperature > 0)
        td_log(TD_LOG_WARN, "selfspec is greedy: --temperature ignored");
    td_selfspec_stats_t *ts = &st->selfspec;
    double t0 = td_time_now();
    int rc;
    if (c->dc) {
        td_remote_opts_t ro = {.session = c->session, .timeout_ms = p->drafter_timeout_ms};
        rc = td_selfspec_generate_via(m, c->dc, &ro, prompt, n_prompt, &sp, out, ts, err);
        st->s.fallbacks = ts->remote_fallbacks;
        st->remote = 1;
    } else {
        rc = td_selfspec_generate(m, prompt, n_prompt, &sp, out, ts, err);
    }
    st->s.generated = ts->generated, st->s.forwards = ts->forwards, st->s.rounds = ts->rounds;
    st->s.drafted = ts->drafted, st->s.accepted = ts->commits - ts->rounds;
    st->s.bonus_tokens = ts->rounds;
    st->s.drafter_s = td_time_now() - t0;
    st->s.stop = ts->stopped_at_stop_id ? TD_STOP_EOS : TD_STOP_LENGTH;
    if (rc == TD_OK) s_emit_all(c, out, ts->generated);
    return rc;
}

static void s_report_selfspec(FILE *f, const td_run_stats_t *st) {
    const td_selfspec_stats_t *ts = &st->selfspec;
    if (st->remote)
        fprintf(f,
                "[selfspec] %d chain states evaluated by the drafter process in %d forwards beside "
                "this side's %d; %d round(s) redone here\n",
                ts->remote_states, ts->remote_forwards, ts->forwards, ts->remote_fallbacks);
}

static int s_run_planned(const td_run_ctx_t *c, const td_run_params_t *p, const int32_t *prompt,
                         int n_prompt, int32_t *out, td_run_stats_t *st, td_err_t *err) {
    /* the model plain decoding falls back to: the dLLM here, else the local planner */
    td_model_t *fb = c->dllm ? c->dllm : c->verifier;
    td_model_t *planner = c->verifier ? c->verifier : c->dllm;
    if (!fb || !c->tok) return td_err_set(err, TD_ERR_ARG, "planned needs a model and tokenizer");
    const td_config_t *fc = td_model_config(fb);
    int32_t suppress[TD_PLAN_MAX_TAG_IDS];
    int n_suppress = td_plan_tag_ids(c->tok, fc->eos_token_id, suppress);
    td_plan_tags_t tags;
    double t0 = td_time_now();
    int rc = td_plan_tags_init(&tags, c->tok, fc->eos_token_id, err);
    if (rc == TD_OK) {
        td_planned_params_t pp = td_planned_params_default();
        pp.max_tokens = p->max_tokens;
        pp.dense = p->dense;
        if (p->steps_ratio > 0) pp.steps_ratio = p->steps_ratio;
        pp.sampling = p->sampling;
        pp.seed = p->seed;
        td_planned_stats_t *ps = &st->planned;
        int n_out = 0;
        double dsec = 0;
        if (c->dc) {
            td_remote_opts_t ro = {.session = c->session, .timeout_ms = p->drafter_timeout_ms};
            rc = td_planned_generate_via(planner, c->dc, &ro, &tags, prompt, n_prompt, &pp, out,
                                         &n_out, ps, &dsec, err);
            st->remote = 1;
        } else {
            rc = td_planned_generate(planner, c->dllm, &tags, prompt, n_prompt, &pp, out, &n_out,
                                     NULL, NULL, ps, err);
        }
        td_plan_tags_free(&tags);
        st->s.generated = n_out, st->s.forwards = ps->critical_path;
        st->s.drafter_s = c->dc ? dsec : td_time_now() - t0;
        st->s.stop = ps->stopped_at_eos ? TD_STOP_EOS : TD_STOP_LENGTH;
        if (rc == TD_OK) s_emit_all(c, out, n_out);
        /* refused by the drafter, an unparseable plan, or spans that do not fit the context or
         * the token budget: the documented fallback below */
        if (rc == TD_OK ||
            !((c->dc && rc == TD_ERR_UNSUPPORTED) || rc == TD_ERR_FORMAT || rc == TD_ERR_ARG))
            return rc;
    }
    /* plain decoding with the plan tags suppressed, counted as a fallback */
    td_method_t m = fc->causal ? TD_METHOD_AR : TD_METHOD_DIFFUSION;
    snprintf(st->note, sizeof st->note, "planned: %.400s; falling back to --method %s",
             err ? err->msg : "", td_method_name(m));
    td_run_ctx_t c2 = *c;
    c2.verifier = m == TD_METHOD_AR ? fb : NULL;
    c2.dllm = m == TD_METHOD_DIFFUSION ? fb : NULL;
    c2.dc = NULL;
    td_run_params_t p2 = *p;
    p2.suppress_ids = suppress;
    p2.n_suppress = n_suppress;
    int planned_forwards = st->planned.critical_path;
    td_spec_stats_t keep = {0};
    st->s = keep;
    st->ran = m;
    if (err) *err = (td_err_t){0};
    rc = td_method_get(m)->run(&c2, &p2, prompt, n_prompt, out, st, err);
    st->s.forwards += planned_forwards;
    st->s.fallbacks = 1;
    snprintf(st->s.last_fallback, sizeof st->s.last_fallback, "the plan could not be used");
    return rc;
}

static void s_report_planned(FILE *f, const td_run_stats_t *st) {
    const td_planned_stats_t *ps = &st->planned;
    if (st->ran == TD_METHOD_PLANNED)
        fprintf(f,
                "[planned] plan %d tokens, %d stage(s), %d span(s), %.1f steps per span, critical "
                "path %d passes\n",
                ps->plan_tokens, ps->stages, ps->spans,
                ps->spans ? (double)ps->span_steps / ps->spans : 0.0, ps->critical_path);
}

/* ---- the table ---------------------------------------------------------------------------------
 */

static void s_def_none(td_run_params_t *p) { (void)p; }
static void s_def_spec_ar(td_run_params_t *p) { p->steps = 1; }
static void s_def_apd(td_run_params_t *p) { p->gamma = 16, p->steps = 1; }
static void s_def_dflash(td_run_params_t *p) { p->gamma = 0, p->steps = 1; }

#define SPEC_CAPS (TD_CAP_VERIFIER | TD_CAP_DRAFTER | TD_CAP_STREAMS | TD_CAP_SERVED)

/* One entry: id, name, summary, caps, drafter kind, options read, defaults, run, session, report.
 */
#define METHOD(ID, NAME, SUM, CAPS, DK, OPTS, DEF, RUN, SESS, REP)                                 \
    [ID] = {.id = ID,                                                                              \
            .name = NAME,                                                                          \
            .summary = SUM,                                                                        \
            .caps = CAPS,                                                                          \
            .drafter = DK,                                                                         \
            .opts = OPTS,                                                                          \
            .defaults = DEF,                                                                       \
            .run = RUN,                                                                            \
            .session_new = SESS,                                                                   \
            .report = REP}

/* clang-format off */
static const td_method_desc_t s_table[TD_METHOD_COUNT] = {
    METHOD(TD_METHOD_AR, "ar", "plain autoregressive decoding with the verifier (exact)",
           TD_CAP_VERIFIER | TD_CAP_STREAMS | TD_CAP_SERVED, TD_DRAFTER_NONE, 0,
           s_def_none, s_run_ar, s_ar_session, NULL),
    METHOD(TD_METHOD_SPEC_AR, "spec-ar", "speculative decoding with a small AR drafter (exact)",
           SPEC_CAPS, TD_DRAFTER_AR, TD_OPTS_GAMMA,
           s_def_spec_ar, s_run_driver, s_spec_ar_session, NULL),
    METHOD(TD_METHOD_SPECDIFF, "specdiff", "a diffusion drafter drafts gamma tokens in steps steps",
           SPEC_CAPS, TD_DRAFTER_DIFFUSION, TD_OPTS_GAMMA | TD_OPTS_STEPS | TD_OPTS_ORDER,
           s_def_none, s_run_driver, s_specdiff_session, NULL),
    METHOD(TD_METHOD_APD, "apd", "diffusion drafts judged by the APD mixture (lossy)",
           SPEC_CAPS | TD_CAP_LOSSY, TD_DRAFTER_DIFFUSION, TD_OPTS_GAMMA,
           s_def_apd, s_run_driver, s_apd_session, NULL),
    METHOD(TD_METHOD_DIFFUSION, "diffusion", "the drafter alone, confidence-threshold unmasking",
           TD_CAP_LOCAL_DLLM | TD_CAP_LOSSY, TD_DRAFTER_DIFFUSION, TD_OPTS_BLOCK,
           s_def_none, s_run_diffusion, NULL, NULL),
    METHOD(TD_METHOD_SELFSPEC, "selfspec", "the dLLM verifies its own drafts (= its stepwise greedy)",
           TD_CAP_LOCAL_DLLM | TD_CAP_REMOTE_DLLM, TD_DRAFTER_DIFFUSION,
           TD_OPTS_DRAFT_K | TD_OPTS_BLOCK, s_def_none, s_run_selfspec, NULL, s_report_selfspec),
    METHOD(TD_METHOD_PLANNED, "planned", "an AR plan of <promise> spans filled by parallel diffusion",
           TD_CAP_LOCAL_DLLM | TD_CAP_REMOTE_DLLM | TD_CAP_LOSSY, TD_DRAFTER_PLANNED,
           TD_OPTS_STEPS_RATIO, s_def_none, s_run_planned, NULL, s_report_planned),
    METHOD(TD_METHOD_DFLASH, "dflash", "a DFlash drafter fed the verifier's features drafts a block in one pass (exact)",
           TD_CAP_VERIFIER | TD_CAP_DRAFTER | TD_CAP_STREAMS | TD_CAP_TARGET_FEATURES | TD_CAP_SERVED,
           TD_DRAFTER_DFLASH, TD_OPTS_GAMMA,
           s_def_dflash, s_run_driver, s_dflash_session, NULL),
};
/* clang-format on */

const td_method_desc_t *td_method_get(td_method_t m) {
    return (unsigned)m < TD_METHOD_COUNT ? &s_table[m] : NULL;
}

const td_method_desc_t *td_method_find(const char *s) {
    int m = s ? td_method_parse(s) : -1;
    return m < 0 ? NULL : &s_table[m];
}

const char *td_method_list(void) {
    return "ar, spec-ar, specdiff, apd, diffusion, selfspec, planned, dflash";
}

td_run_params_t td_run_params_default(td_method_t m) {
    /* the speculative loop's documented defaults, then the dLLM methods' */
    td_spec_params_t s = td_spec_params_default(TD_METHOD_SPECDIFF);
    td_run_params_t p = {.max_tokens = s.max_tokens, .sampling = s.sampling};
    p.draft_sampling = s.draft_sampling, p.gamma = s.gamma, p.steps = s.steps, p.order = s.order;
    p.verify = s.verify, p.dist_top_k = s.dist_top_k, p.drafter_timeout_ms = s.drafter_timeout_ms;
    p.apd_mixture = s.apd_mixture, p.apd_kv_window = s.apd_kv_window;
    p.block_size = 32, p.threshold = 0.9f, p.draft_k = 4;
    const td_method_desc_t *d = td_method_get(m);
    if (d && d->defaults) d->defaults(&p);
    return p;
}

int td_method_run(td_method_t m, const td_run_ctx_t *c, const td_run_params_t *p,
                  const int32_t *prompt, int n_prompt, int32_t *out, td_run_stats_t *st,
                  td_err_t *err) {
    memset(st, 0, sizeof *st);
    st->ran = m;
    st->s.lossy = m == TD_METHOD_APD;
    const td_method_desc_t *d = td_method_get(m);
    if (!d) return td_err_set(err, TD_ERR_ARG, "unknown method %d", (int)m);
    return d->run(c, p, prompt, n_prompt, out, st, err);
}
