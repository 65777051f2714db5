/* sampler.c - seeded token sampling: xoshiro256** RNG, temperature / top-k / top-p truncation
 * with HF transformers' semantics, Gumbel-max draws, inverse-CDF draws, argmax and log-softmax.
 *
 * The kept set is computed in O(V) average time (a size-k heap for top-k, a mass-weighted
 * quickselect for top-p), never with a full sort of the vocabulary. It is represented by a cut
 * (v_cut, id_cut) in the order "a ranks above b when v_a > v_b, or v_a == v_b and id_a > id_b":
 * an id is kept when it is eligible (finite scaled logit) and ranks at or above the cut. That order
 * is the reverse of a stable ascending sort, which is what HF's TopPLogitsWarper walks; top-k keeps
 * every id whose value equals the k-th largest (cut id -1), as HF's TopKLogitsWarper does.
 *
 * NaN logits are treated as -inf everywhere in this file. */
#include "kernels/sampler.h"

#include <math.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif
#include <stdlib.h>
#include <string.h>

/* ---- RNG: xoshiro256** seeded through splitmix64 ---- */

static uint64_t s_splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t s_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* Fills the four state words from splitmix64(seed); the state is never all zero. */
void td_rng_seed(td_rng_t *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = s_splitmix64(&x);
}

/* Next 64 random bits (xoshiro256**). */
uint64_t td_rng_next(td_rng_t *r) {
    uint64_t *s = r->s;
    uint64_t result = s_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s_rotl(s[3], 45);
    return result;
}

/* Uniform double in [0, 1): the top 53 bits of one draw times 2^-53. */
double td_rng_uniform(td_rng_t *r) { return (double)(td_rng_next(r) >> 11) * 0x1.0p-53; }

/* Uniform double in (0, 1): (top 53 bits + 0.5) * 2^-53, so logs never see 0. */
static double s_uniform_open(td_rng_t *r) {
    return ((double)(td_rng_next(r) >> 11) + 0.5) * 0x1.0p-53;
}

/* ---- argmax, log-softmax ---- */

static inline float s_clean(float x) { return isnan(x) ? -INFINITY : x; }

/* Index of the largest x[i] (first one on ties), NaN counting as -inf; 0 when every entry is
 * NaN or -inf; -1 when n <= 0. */
int td_argmax(const float *x, int n) {
    if (n <= 0) return -1;
    int best = 0;
    float bv = s_clean(x[0]);
#ifdef __AVX2__
    /* the largest cleaned value (max is exact and order-free), then the first index holding it:
     * the same answer as the loop below, without a compare-and-branch per element */
    if (n >= 64) {
        const __m256 ninf = _mm256_set1_ps(-INFINITY);
        __m256 m = ninf;
        int i = 0;
        for (; i + 8 <= n; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i);
            m = _mm256_max_ps(m, _mm256_blendv_ps(v, ninf, _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, m);
        for (int j = 0; j < 8; j++) bv = lanes[j] > bv ? lanes[j] : bv;
        for (; i < n; i++) bv = s_clean(x[i]) > bv ? s_clean(x[i]) : bv;
        if (bv == -INFINITY) return 0; /* every entry NaN or -inf */
        const __m256 b8 = _mm256_set1_ps(bv);
        for (i = 0; i + 8 <= n; i += 8) {
            const int hit =
                _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), b8, _CMP_EQ_OQ));
            if (hit) return i + __builtin_ctz((unsigned)hit);
        }
        for (; i < n; i++)
            if (s_clean(x[i]) == bv) return i;
        return 0; /* not reached: bv is one of the entries */
    }
#endif
    for (int i = 1; i < n; i++) {
        float v = s_clean(x[i]);
        if (v > bv) {
            bv = v;
            best = i;
        }
    }
    return best;
}

/* out[i] = logits[i] - logsumexp(logits), accumulated in double. NaN entries count as -inf (and
 * give -inf). When some entries are +inf, those share the mass equally (-log(count)) and the rest
 * get -inf. When no entry is finite or +inf, every out[i] is -inf. */
void td_log_softmax(float *out, const float *logits, int n) {
    if (n <= 0) return;
    float m = -INFINITY;
    for (int i = 0; i < n; i++) {
        float v = s_clean(logits[i]);
        if (v > m) m = v;
    }
    if (m == -INFINITY) {
        for (int i = 0; i < n; i++) out[i] = -INFINITY;
        return;
    }
    if (m == INFINITY) {
        int c = 0;
        for (int i = 0; i < n; i++) c += logits[i] == INFINITY;
        float l = (float)-log((double)c);
        for (int i = 0; i < n; i++) out[i] = logits[i] == INFINITY ? l : -INFINITY;
        return;
    }
    double z = 0.0;
    for (int i = 0; i < n; i++) z += exp((double)s_clean(logits[i]) - (double)m);
    double lz = (double)m + log(z);
    for (int i = 0; i < n; i++) out[i] = (float)((double)s_clean(logits[i]) - lz);
}

/* ---- the kept set ---- */

typedef struct s_cut {
    float v; /* kept: eligible and (value > v, or value == v and id >= id) */
    int id;
    int inf_mode; /* some scaled value is +inf: only the +inf ids are eligible, with equal weight */
    float vmax;   /* largest scaled value (log-weights are value - vmax) */
} s_cut_t;

typedef struct s_cand {
    float v;
    int id;
    double w;
} s_cand_t;

static inline int s_eligible(const s_cut_t *c, float v) {
    return c->inf_mode ? v == INFINITY : v > -INFINITY;
}
static inline int s_above_cut(const s_cut_t *c, float v, int id) {
    return v > c->v || (v == c->v && id >= c->id);
}
static inline double s_logw(const s_cut_t *c, float v) {
    return c->inf_mode ? 0.0 : (double)v - (double)c->vmax;
}
/* a ranks strictly above b in the order of the file banner. */
static inline int s_ranks_above(const s_cand_t *a, const s_cand_t *b) {
    return a->v > b->v || (a->v == b->v && a->id > b->id);
}

/* The value of the k-th largest of x[n] (1 <= k <= n) with a size-k min-heap: O(n log k) worst
 * case, about O(n) when most values fall below the heap's minimum. */
static int s_kth_largest(const float *x, int n, int k, float temp, float *out) {
    float *h = malloc((size_t)k * sizeof *h);
    if (!h) return TD_ERR_NOMEM;
    for (int i = 0; i < k; i++) {
        /* sift up */
        float v = s_clean(x[i]) / temp;
        int j = i;
        while (j > 0) {
            int p = (j - 1) / 2;
            if (h[p] <= v) break;
            h[j] = h[p];
            j = p;
        }
        h[j] = v;
    }
    for (int i = k; i < n; i++) {
        float v = s_clean(x[i]) / temp;
        if (!(v > h[0])) continue;
        /* replace the root and sift down */
        int j = 0;
        for (;;) {
            int l = 2 * j + 1, r = l + 1, s = j;
            float sv = v;
            if (l < k && h[l] < sv) {
                s = l;
                sv = h[l];
            }
            if (r < k && h[r] < sv) {
                s = r;
                sv = h[r];
            }
            if (s == j) break;
            h[j] = h[s];
            j = s;
        }
        h[j] = v;
    }
    *out = h[0];
    free(h);
    return TD_OK;
}

/* Finds the shortest prefix (in rank order) of c[n] whose kept tokens satisfy HF's top-p rule:
 * a token is kept when the mass ranked strictly above it is < target (and the top one always).
 * Reorders c so that the kept ones come first, in no particular order, and returns their count.
 * Quickselect by mass: O(n) on average. */
static int s_top_p_select(s_cand_t *c, int n, double target) {
    int lo = 0, hi = n; /* undecided range [lo, hi); [0, lo) kept, [hi, n) removed */
    double acc = 0.0;   /* mass of [0, lo) */
    uint64_t seed = 0x243f6a8885a308d3ull;
    while (lo < hi) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        int pi = lo + (int)((seed >> 33) % (uint64_t)(hi - lo));
        s_cand_t piv = c[pi];
        c[pi] = c[hi - 1];
        c[hi - 1] = piv;
        /* partition [lo, hi-1) into ranks-above-pivot first */
        int g = lo;
        double gmass = 0.0;
        for (int i = lo; i < hi - 1; i++) {
            if (s_ranks_above(&c[i], &piv)) {
                gmass += c[i].w;
                s_cand_t t = c[i];
                c[i] = c[g];
                c[g] = t;
                g++;
            }
        }
        c[hi - 1] = c[g];
        c[g] = piv;
        if (acc + gmass < target || (g == 0)) {
            /* the pivot is kept (or is the top token), so is everything above it */
            acc += gmass + piv.w;
            lo = g + 1;
        } else {
            hi = g; /* pivot and everything below it are removed */
        }
    }
    return lo;
}

/* Computes the cut for sp (temperature > 0) over logits[n]. */
static int s_compute_cut(const td_sampling_t *sp, const float *logits, int n, s_cut_t *cut) {
    const float temp = sp->temperature;
    memset(cut, 0, sizeof *cut);
    float vmax = -INFINITY;
    for (int i = 0; i < n; i++) {
        float v = s_clean(logits[i]) / temp;
        if (v > vmax) vmax = v;
    }
    cut->vmax = vmax;
    cut->inf_mode = vmax == INFINITY;
    cut->v = -INFINITY;
    cut->id = -1;
    if (vmax == -INFINITY) return TD_OK; /* nothing eligible */

    if (sp->top_k > 0 && sp->top_k < n) {
        float t;
        int rc = s_kth_largest(logits, n, sp->top_k, temp, &t);
        if (rc < 0) return rc;
        cut->v = t;
    }

    if (sp->top_p < 1.0f) {
        int nc = 0;
        for (int i = 0; i < n; i++) {
            float v = s_clean(logits[i]) / temp;
            nc += s_eligible(cut, v) && s_above_cut(cut, v, i);
        }
        s_cand_t *c = malloc((size_t)nc * sizeof *c);
        if (!c) return TD_ERR_NOMEM;
        double z = 0.0;
        int j = 0;
        for (int i = 0; i < n; i++) {
            float v = s_clean(logits[i]) / temp;
            if (!(s_eligible(cut, v) && s_above_cut(cut, v, i))) continue;
            c[j].v = v;
            c[j].id = i;
            c[j].w = exp(s_logw(cut, v));
            z += c[j].w;
            j++;
        }
        double p = sp->top_p > 0.0f ? (double)sp->top_p : 0.0;
        int kept = s_top_p_select(c, nc, p * z);
        /* the lowest-ranked kept candidate becomes the cut */
        int lowest = 0;
        for (int i = 1; i < kept; i++)
            if (s_ranks_above(&c[lowest], &c[i])) lowest = i;
        cut->v = c[lowest].v;
        cut->id = c[lowest].id;
        free(c);
        return TD_OK;
    }

    return TD_OK;
}

static int s_greedy(const float *logits, int n, float *probs) {
    int a = td_argmax(logits, n);
    if (probs) {
        memset(probs, 0, (size_t)n * sizeof *probs);
        probs[a] = 1.0f;
    }
    return a;
}

static int s_is_greedy(const td_sampling_t *sp) { return !(sp->temperature > 0.0f); }

/* Writes the kept distribution of cut into probs[n] (one pass for the weights and their sum, one
 * to normalise). Returns the kept count. */
static int s_write_probs(const s_cut_t *cut, float temp, const float *logits, int n, float *probs) {
    double z = 0.0;
    int count = 0;
    for (int i = 0; i < n; i++) {
        float v = s_clean(logits[i]) / temp;
        float w = 0.0f;
        if (s_eligible(cut, v) && s_above_cut(cut, v, i)) {
            w = (float)exp(s_logw(cut, v));
            z += (double)w;
            count++;
        }
        probs[i] = w;
    }
    const double inv = 1.0 / z;
    for (int i = 0; i < n; i++) probs[i] = (float)((double)probs[i] * inv);
    return count;
}

/* Distribution after temperature, top-k and top-p (HF order and semantics), renormalised in
 * double precision; see sampler.h. A temperature <= 0 (or NaN) is greedy: one-hot on td_argmax.
 * top_k <= 0 or >= n is off; top_p >= 1 (or NaN) is off, top_p <= 0 keeps only the top id. When
 * no logit is finite (all -inf/NaN) the result is one-hot on td_argmax; when some scaled logits
 * are +inf the +inf ids share the mass equally. Returns the kept count (>= 1), TD_ERR_ARG when
 * n <= 0, TD_ERR_NOMEM when scratch memory cannot be allocated (probs then unchanged). */
int td_sampling_dist(const td_sampling_t *sp, const float *logits, int n, float *probs) {
    if (!sp || !logits || !probs || n <= 0) return TD_ERR_ARG;
    if (s_is_greedy(sp)) {
        s_greedy(logits, n, probs);
        return 1;
    }
    s_cut_t cut;
    int rc = s_compute_cut(sp, logits, n, &cut);
    if (rc < 0) return rc;
    if (cut.vmax == -INFINITY) {
        s_greedy(logits, n, probs);
        return 1;
    }
    return s_write_probs(&cut, sp->temperature, logits, n, probs);
}

/* Gumbel-max draw: argmax over kept ids (visited in id order, one uniform each) of
 * (logit/T - max) + G with G = -log(-log(U)), U in (0, 1). Greedy settings and inputs with no
 * finite logit return td_argmax without touching rng. Returns the id, or TD_ERR_ARG /
 * TD_ERR_NOMEM (negative, rng untouched) on bad arguments / allocation failure. */
int td_sample(const td_sampling_t *sp, td_rng_t *rng, const float *logits, int n, float *probs) {
    if (!sp || !rng || !logits || n <= 0) return TD_ERR_ARG;
    if (s_is_greedy(sp)) return s_greedy(logits, n, probs);
    s_cut_t cut;
    int rc = s_compute_cut(sp, logits, n, &cut);
    if (rc < 0) return rc;
    if (cut.vmax == -INFINITY) return s_greedy(logits, n, probs);
    const float temp = sp->temperature;
    if (probs) s_write_probs(&cut, temp, logits, n, probs);
    int best = -1;
    double best_score = -INFINITY;
    for (int i = 0; i < n; i++) {
        float v = s_clean(logits[i]) / temp;
        if (!(s_eligible(&cut, v) && s_above_cut(&cut, v, i))) continue;
        double g = -log(-log(s_uniform_open(rng)));
        double score = s_logw(&cut, v) + g;
        if (best < 0 || score > best_score) {
            best = i;
            best_score = score;
        }
    }
    return best;
}

/* Counter-based Gumbel-max (see sampler.h): the kept set and weights of td_sampling_dist, one
 * pass that accumulates the normaliser exactly as s_write_probs does (float weights summed in
 * double, in id order) and keeps the best score (ties to the lowest id). */
int td_sample_seeded(const td_sampling_t *sp, uint64_t seed, const float *logits, int n,
                     float *prob, int *n_kept) {
    if (!sp || !logits || n <= 0) return TD_ERR_ARG;
    s_cut_t cut = {0};
    if (!s_is_greedy(sp)) {
        int rc = s_compute_cut(sp, logits, n, &cut);
        if (rc < 0) return rc;
    }
    if (s_is_greedy(sp) || cut.vmax == -INFINITY) {
        if (prob) *prob = 1.0f;
        if (n_kept) *n_kept = 1;
        return td_argmax(logits, n);
    }
    const float temp = sp->temperature;
    double z = 0.0, best_score = -INFINITY;
    int best = -1, count = 0;
    float best_w = 0.0f;
    for (int i = 0; i < n; i++) {
        float v = s_clean(logits[i]) / temp;
        if (!(s_eligible(&cut, v) && s_above_cut(&cut, v, i))) continue;
        const double lw = s_logw(&cut, v);
        const float w = (float)exp(lw);
        z += (double)w;
        count++;
        const double u = ((double)(td_sample_bits(seed, (uint64_t)i) >> 11) + 0.5) * 0x1.0p-53;
        const double score = lw - log(-log(u));
        if (best < 0 || score > best_score) {
            best = i;
            best_score = score;
            best_w = w;
        }
    }
    if (prob) *prob = (float)((double)best_w * (1.0 / z));
    if (n_kept) *n_kept = count;
    return best;
}

/* Inverse-CDF draw from probs[n] (unnormalised; negative and NaN entries count as 0) with one
 * uniform. Never returns an id whose weight is 0. Returns TD_ERR_ARG when n <= 0 or the total
 * weight is not positive and finite (rng untouched then). */
int td_sample_probs(td_rng_t *rng, const float *probs, int n) {
    if (!rng || !probs || n <= 0) return TD_ERR_ARG;
    double total = 0.0;
    int last = -1;
    for (int i = 0; i < n; i++) {
        if (probs[i] > 0.0f) {
            total += (double)probs[i];
            last = i;
        }
    }
    if (!(total > 0.0) || !isfinite(total)) return TD_ERR_ARG;
    double u = td_rng_uniform(rng) * total;
    double acc = 0.0;
    for (int i = 0; i < n; i++) {
        if (!(probs[i] > 0.0f)) continue;
        acc += (double)probs[i];
        if (u < acc) return i;
    }
    return last; /* rounding left u at or past the final sum */
}
