/* method.h - the method table: the only place that knows the decoding methods by name.
 *
 * Layering: engine/ sits above drafter/ and verifier/ and below bridge/ (kernels <- model <-
 * drafter, verifier <- engine <- bridge). The table must know both drafter-side decoders
 * (diffusion, selfspec, planned: drafter/) and verifier-side ones (ar, spec-ar, specdiff, apd:
 * verifier/), so it lives in the first layer that may see both.
 *
 * Each entry gives a method's name, its capabilities (exact or lossy, needs a causal verifier,
 * needs a drafter and of which kind, runs a diffusion LM locally, can hand its dLLM work to a
 * drafter process, needs target features), its option defaults, the constructor of its
 * per-request session for the batched driver (verifier/driver.h; NULL for the methods that are
 * still one blocking loop: diffusion, selfspec, planned) and `run`, which decodes one request
 * start to finish from one parameter type (td_run_params_t) into one stats type
 * (td_run_stats_t). `tandem generate`, `tandem bench` and the verifier worker dispatch through
 * it; none of them branches on a method. The conversions to each decoder's own parameter and
 * stats structs happen here, once. */
#ifndef TD_ENGINE_METHOD_H
#define TD_ENGINE_METHOD_H

#include "drafter/planned.h"
#include "drafter/selfspec.h"
#include "model/tokenizer.h"
#include "verifier/driver.h"
#include "verifier/spec.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Capability flags of a method. */
enum {
    TD_CAP_LOSSY = 1u << 0,           /* does not preserve the verifier's distribution */
    TD_CAP_VERIFIER = 1u << 1,        /* needs a causal verifier model (td_run_ctx_t.verifier) */
    TD_CAP_DRAFTER = 1u << 2,         /* needs a drafter (a link to a drafter service) */
    TD_CAP_LOCAL_DLLM = 1u << 3,      /* runs a diffusion LM in this process (ctx.dllm) */
    TD_CAP_REMOTE_DLLM = 1u << 4,     /* can hand its dLLM work to a drafter process (ctx.dc) */
    TD_CAP_TARGET_FEATURES = 1u << 5, /* needs the verifier's hidden states (dflash) */
    TD_CAP_STREAMS = 1u << 6,         /* tokens reach the callback as they are committed (else all
                                         at the end of the request) */
    TD_CAP_SERVED = 1u << 7,          /* a verifier worker serves it (GenerateRequest) */
};

/* Which options of td_run_params_t a method reads (beyond the common ones): lets `bench` sweep
 * only what matters. */
enum {
    TD_OPTS_GAMMA = 1u << 0,       /* gamma (and verify, dist_top_k, timeout) */
    TD_OPTS_STEPS = 1u << 1,       /* steps per draft */
    TD_OPTS_ORDER = 1u << 2,       /* unmasking order */
    TD_OPTS_STEPS_RATIO = 1u << 3, /* planned */
    TD_OPTS_DRAFT_K = 1u << 4,     /* selfspec */
    TD_OPTS_BLOCK = 1u << 5,       /* block_size */
};

/* Which drafter a method talks to (the bundled default the bridge picks). */
typedef enum td_drafter_kind {
    TD_DRAFTER_NONE = 0,
    TD_DRAFTER_AR,        /* a small causal LM */
    TD_DRAFTER_DIFFUSION, /* a diffusion LM */
    TD_DRAFTER_PLANNED,   /* a diffusion LM with plan tags */
    TD_DRAFTER_DFLASH,    /* a DFlash drafter (a directory of its own weights + its target) */
} td_drafter_kind_t;

/* Every option of every method; the fields a method does not use are ignored by it. */
typedef struct td_run_params {
    int max_tokens;
    td_sampling_t sampling;       /* the target distribution */
    td_sampling_t draft_sampling; /* how the drafter samples (spec methods) */
    uint64_t seed;
    const int32_t *stop_ids; /* generation ends after one of these (kept in the output) */
    int n_stop;
    /* speculative methods (spec-ar, specdiff, apd) */
    int gamma, steps, order;
    td_verify_t verify;
    int dist_top_k;
    float apd_mixture;
    int apd_kv_window;
    int drafter_timeout_ms; /* also the per-request timeout of remote selfspec / planned */
    /* diffusion-LM methods */
    int block_size;    /* diffusion, selfspec */
    float threshold;   /* diffusion */
    int draft_k;       /* selfspec */
    float steps_ratio; /* planned (<= 0: its default) */
    int dense;         /* planned: dense span attention */
    /* dflash: the features' wire type (TD_FEATURE_* of drafter/dflash.h: 1 F16, 2 BF16; 0 = BF16).
     * Its gamma
     * <= 0 means the drafter's block_size - 1 (the default) */
    int feature_type;
    /* ar, diffusion: ids never generated (planned's fallback passes its plan tags); borrowed */
    const int32_t *suppress_ids;
    int n_suppress;
} td_run_params_t;

/* One stats type for every method: `s` holds the counters all methods fill (and the bridge
 * prints); the method-specific detail is kept beside it for the commands that report it. */
typedef struct td_run_stats {
    td_spec_stats_t s;
    td_method_t ran;              /* the method that produced the output (planned may fall back) */
    td_selfspec_stats_t selfspec; /* selfspec only */
    td_planned_stats_t planned;   /* planned only */
    int remote;                   /* selfspec / planned: the dLLM work went to a drafter process */
    char note[512];               /* why a fallback method ran instead (empty: none) */
} td_run_stats_t;

/* What a request runs with. Borrowed; unused members may be NULL. */
typedef struct td_run_ctx {
    td_model_t *verifier;    /* the causal target; planned: the planner (NULL: the dLLM, causally);
                                remote selfspec: the same dLLM the drafter runs */
    td_model_t *dllm;        /* in-process diffusion LM (diffusion, selfspec, planned) */
    td_client_t *dc;         /* connected drafter (spec methods; remote selfspec / planned) */
    const td_hello_t *hello; /* our Hello, to handshake again with a restarted drafter */
    /* the drafter's Hello (from the handshake's ack): dflash reads its target_layers and
     * block_size */
    const td_hello_t *drafter_hello;
    const td_tokenizer_t *tok; /* the tokenizer of the model planned plans with (plan tags) */
    uint64_t session;          /* drafter session id (nonzero) */
    td_token_cb cb;            /* optional: each token (see TD_CAP_STREAMS); non-zero stops */
    void *ud;
} td_run_ctx_t;

typedef struct td_method_desc {
    td_method_t id;
    const char *name;
    const char *summary; /* one line for --help */
    unsigned caps;       /* TD_CAP_* */
    td_drafter_kind_t drafter;
    unsigned opts; /* TD_OPTS_* */
    /* defaults for this method on top of td_run_params_default's common ones */
    void (*defaults)(td_run_params_t *p);
    /* one request, start to finish: out[p->max_tokens] receives st->s.generated ids */
    int (*run)(const td_run_ctx_t *c, const td_run_params_t *p, const int32_t *prompt, int n_prompt,
               int32_t *out, td_run_stats_t *st, td_err_t *err);
    /* a per-request session for td_driver_t (verifier/driver.h); NULL: not batched yet */
    td_session_t *(*session_new)(const td_run_ctx_t *c, td_link_t *link, const td_run_params_t *p,
                                 const int32_t *prompt, int n_prompt, td_err_t *err);
    /* optional: method-specific lines for a human reader (stderr of `generate`) */
    void (*report)(FILE *f, const td_run_stats_t *st);
} td_method_desc_t;

/* The entry of m, or NULL when out of range. */
const td_method_desc_t *td_method_get(td_method_t m);
/* The entry named s, or NULL. */
const td_method_desc_t *td_method_find(const char *s);

/* The method's defaults: max_tokens 128, greedy, seed 0, no stop ids, gamma 8, steps 4,
 * left-to-right, rejection, dist top-k 32, apd R 0.7 W 16, timeout 5000 ms, block 32,
 * threshold 0.9, K 4, then the method's own (spec-ar steps 1; apd gamma 16, steps 1). */
td_run_params_t td_run_params_default(td_method_t m);

/* The speculative loop's parameters for p (the one conversion). */
td_spec_params_t td_run_spec_params(td_method_t m, const td_run_params_t *p,
                                    const td_hello_t *hello);

/* The method list for messages: "ar, spec-ar, ..." */
const char *td_method_list(void);

/* Runs method m: td_method_get(m)->run with *st zeroed first and st->ran set. */
int td_method_run(td_method_t m, const td_run_ctx_t *c, const td_run_params_t *p,
                  const int32_t *prompt, int n_prompt, int32_t *out, td_run_stats_t *st,
                  td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
