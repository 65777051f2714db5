/* cpu_quant_simd.h - the SIMD body of the quantized skinny products, included twice by
 * cpu_quant.c: once for AVX2 (maddubs + madd) and once for AVX-512 VNNI (vpdpbusd on 256-bit
 * vectors), each time with TQ_ATTR (the target attribute), TQ_FN(name) (a suffixed name) and
 * TQ_VNNI (0 or 1) defined. Not a public header.
 *
 * Every weight type is read as units of 32 weights turned into 32 unsigned bytes u (Q8_0: |w|,
 * the sign moved onto the activation), a per-lane weight scale fw (8 floats: lane i covers elements
 * 4i .. 4i+3) and a min coefficient mw. For a unit and a token with quantized activations q (int8,
 * scale dx) the 8 int32 lanes are corr + sum of 4 products u * q (exact integers, whichever
 * instruction makes them), and the 8 float lanes of the accumulator get
 *     acc = fma(float(lanes), fw * dx, acc);  acc = fma(sv, mw, acc)   (min types)
 * in ascending unit order; the result is the lanes folded as s_fold8 does. cpu_quant.c's scalar
 * path does exactly these operations, so all paths give bitwise the same floats. */

static inline TQ_ATTR __attribute__((always_inline)) float TQ_FN(h)(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return _cvtsh_ss(v);
}

static inline TQ_ATTR __attribute__((always_inline)) __m256i TQ_FN(nib16)(const uint8_t *p) {
    const __m128i v = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

/* 32 bits of qh (bit i = element i) as bytes 0x10 / 0. */
static inline TQ_ATTR __attribute__((always_inline)) __m256i TQ_FN(bits32)(const uint8_t *qh) {
    uint32_t h;
    memcpy(&h, qh, 4);
    const __m256i idx = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                         2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h), idx);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* Unit k of weight row `row` of type DT: u, fw, mw (see above); *ws the signed weights (Q8_0). */
static inline TQ_ATTR __attribute__((always_inline)) __m256i
TQ_FN(unit)(const int DT, const uint8_t *row, int64_t k, __m256 *fw, float *mw, __m256i *ws) {
    const __m256i m4 = _mm256_set1_epi8(15);
    switch (DT) {
    case TD_DTYPE_Q8_0: {
        const uint8_t *b = row + 34 * k;
        *fw = _mm256_set1_ps(TQ_FN(h)(b));
        *ws = _mm256_loadu_si256((const __m256i *)(b + 2));
        return _mm256_abs_epi8(*ws);
    }
    case TD_DTYPE_Q4_0: {
        const uint8_t *b = row + 18 * k;
        *fw = _mm256_set1_ps(TQ_FN(h)(b));
        return TQ_FN(nib16)(b + 2);
    }
    case TD_DTYPE_Q4_1: {
        const uint8_t *b = row + 20 * k;
        *fw = _mm256_set1_ps(TQ_FN(h)(b));
        *mw = TQ_FN(h)(b + 2);
        return TQ_FN(nib16)(b + 4);
    }
    case TD_DTYPE_Q5_0: {
        const uint8_t *b = row + 22 * k;
        *fw = _mm256_set1_ps(TQ_FN(h)(b));
        return _mm256_or_si256(TQ_FN(nib16)(b + 6), TQ_FN(bits32)(b + 2));
    }
    case TD_DTYPE_Q5_1: {
        const uint8_t *b = row + 24 * k;
        *fw = _mm256_set1_ps(TQ_FN(h)(b));
        *mw = TQ_FN(h)(b + 2);
        return _mm256_or_si256(TQ_FN(nib16)(b + 8), TQ_FN(bits32)(b + 4));
    }
    case TD_DTYPE_Q4_K:
    case TD_DTYPE_Q5_K: {
        const int five = DT == TD_DTYPE_Q5_K, j = (int)(k & 7);
        const uint8_t *b = row + (five ? 176 : 144) * (k >> 3);
        float f, m;
        s_k_scales(b + 4, j, TQ_FN(h)(b), TQ_FN(h)(b + 2), &f, &m);
        *fw = _mm256_set1_ps(f);
        *mw = m;
        const __m256i v =
            _mm256_loadu_si256((const __m256i *)(b + (five ? 48 : 16) + 32 * (j >> 1)));
        __m256i u = _mm256_and_si256(_mm256_srli_epi16(v, 4 * (j & 1)), m4);
        if (five) {
            const __m256i h = _mm256_loadu_si256((const __m256i *)(b + 16));
            u = _mm256_or_si256(
                u, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, j), _mm256_set1_epi8(1)),
                                     4));
        }
        return u;
    }
    default: { /* Q6_K */
        const int j = (int)(k & 7), h = j >> 2, q = j & 3;
        const uint8_t *b = row + 210 * (k >> 3);
        const float d = TQ_FN(h)(b + 208);
        const int8_t *sc = (const int8_t *)(b + 192) + 2 * j;
        const float f0 = d * (float)sc[0], f1 = d * (float)sc[1];
        *fw = _mm256_set_m128(_mm_set1_ps(f1), _mm_set1_ps(f0));
        const __m256i lo = _mm256_and_si256(
            _mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)(b + 64 * h + 32 * (q & 1))),
                              4 * (q >> 1)),
            m4);
        const __m256i hi = _mm256_and_si256(
            _mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h)), 2 * q),
            _mm256_set1_epi8(3));
        return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
    }
    }
}

/* NR weight rows (w0, stride ldb bytes) against NT activation rows t0 .. t0+NT-1 of xa:
 * out[t * NR + r]. DT, NR and NT are constants after inlining. */
static inline TQ_ATTR __attribute__((always_inline)) void
TQ_FN(rows)(const int DT, const int NR, const int NT, const uint8_t *w0, size_t ldb,
            const td_qx_t *xa, int t0, float *out) {
    const int64_t nu = xa->nu, cols = nu * 32;
    const int has_corr = s_has_corr(DT), has_min = s_has_min(DT);
    __m256 acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < NR * NT; i++) acc[i] = _mm256_setzero_ps();
#if !TQ_VNNI
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    for (int64_t k = 0; k < nu; k++) {
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            __m256 fw;
            float mw = 0;
            __m256i ws = _mm256_setzero_si256();
            const __m256i u = TQ_FN(unit)(DT, w0 + (size_t)r * ldb, k, &fw, &mw, &ws);
#pragma GCC unroll 2
            for (int t = 0; t < NT; t++) {
                const int64_t tk = (int64_t)(t0 + t) * nu + k;
                __m256i xv =
                    _mm256_loadu_si256((const __m256i *)(xa->q + (t0 + t) * cols + 32 * k));
                if (DT == TD_DTYPE_Q8_0) xv = _mm256_sign_epi8(xv, ws);
                __m256i is = has_corr ? _mm256_loadu_si256((const __m256i *)(xa->corr + 8 * tk))
                                      : _mm256_setzero_si256();
#if TQ_VNNI
                is = _mm256_dpbusd_epi32(is, u, xv);
#else
                is = _mm256_add_epi32(is, _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), ones));
#endif
                const __m256 f = _mm256_mul_ps(fw, _mm256_broadcast_ss(xa->d + tk));
                acc[t * NR + r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), f, acc[t * NR + r]);
                if (has_min)
                    acc[t * NR + r] = _mm256_fmadd_ps(_mm256_loadu_ps(xa->sv + 8 * tk),
                                                      _mm256_set1_ps(mw), acc[t * NR + r]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NR * NT; i++) {
        const __m128 s =
            _mm_add_ps(_mm256_castps256_ps128(acc[i]), _mm256_extractf128_ps(acc[i], 1));
        const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
        out[i] = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
    }
}

#define TQ_CASE_NT(DT, NR)                                                                         \
    do {                                                                                           \
        if (nt == 2)                                                                               \
            TQ_FN(rows)(DT, NR, 2, w0, ldb, xa, t0, out);                                          \
        else                                                                                       \
            TQ_FN(rows)(DT, NR, 1, w0, ldb, xa, t0, out);                                          \
    } while (0)
#define TQ_CASE_DT(DT)                                                                             \
    case DT:                                                                                       \
        if (nr == 4)                                                                               \
            TQ_CASE_NT(DT, 4);                                                                     \
        else                                                                                       \
            TQ_CASE_NT(DT, 1);                                                                     \
        break;

static TQ_ATTR void TQ_FN(block)(int dt, int nr, int nt, const uint8_t *w0, size_t ldb,
                                 const td_qx_t *xa, int t0, float *out) {
    switch (dt) {
        TQ_CASE_DT(TD_DTYPE_Q8_0)
        TQ_CASE_DT(TD_DTYPE_Q4_0)
        TQ_CASE_DT(TD_DTYPE_Q4_1)
        TQ_CASE_DT(TD_DTYPE_Q5_0)
        TQ_CASE_DT(TD_DTYPE_Q5_1)
        TQ_CASE_DT(TD_DTYPE_Q4_K)
        TQ_CASE_DT(TD_DTYPE_Q5_K)
        TQ_CASE_DT(TD_DTYPE_Q6_K)
    default:
        break;
    }
}
#undef TQ_CASE_NT
#undef TQ_CASE_DT
