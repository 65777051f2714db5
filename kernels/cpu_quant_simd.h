/* cpu_quant_simd.h - the SIMD body of the quantized skinny products, included twice by
 * cpu_quant.c: once for AVX2 (maddubs + madd) and once for AVX-512 VNNI (vpdpbusd on 256-bit
 * vectors), each time with TQ_ATTR (the target attribute), TQ_FN(name) (a suffixed name) and
 * TQ_VNNI (0 or 1) defined. Not a public header.
 *
 * The row-block kernels (the types without row tiles: Q4_0, Q5_1, Q5_K) read a weight type as
 * units of 32 weights turned into 32 unsigned bytes u, a per-lane weight scale fw (8 floats: lane
 * i covers elements 4i .. 4i+3) and a min coefficient mw. For a unit and a token with quantized activations q (int8,
 * scale dx) the 8 int32 lanes are corr + sum of 4 products u * q (exact integers, whichever
 * instruction makes them), and the 8 float lanes of the accumulator get
 *     acc = fma(float(lanes), fw * dx, acc);   macc = fmaf(mw, s, macc)   (min types; s = dx *
 *     sum(q))
 * in ascending unit order; the result is the lanes folded as s_fold8 does, plus macc. cpu_quant.c's
 * scalar path does exactly these operations, so all paths give bitwise the same floats. */

static inline TQ_ATTR __attribute__((always_inline)) float TQ_FN(h)(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return _cvtsh_ss(v);
}

/* The f16 pair d, m at p: fw = d in every lane, mw = m. */
static inline TQ_ATTR __attribute__((always_inline)) void TQ_FN(h2)(const uint8_t *p, __m256 *fw,
                                                                    float *mw) {
    int32_t v;
    memcpy(&v, p, 4);
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(v));
    *fw = _mm256_broadcastss_ps(dm);
    *mw = _mm_cvtss_f32(_mm_movehdup_ps(dm));
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

/* Unit k of weight row `row` of type DT (Q4_0, Q5_1, Q5_K): u, fw, mw (see above). */
static inline TQ_ATTR __attribute__((always_inline)) __m256i
TQ_FN(unit)(const int DT, const uint8_t *row, int64_t k, __m256 *fw, float *mw) {
    switch (DT) {
    case TD_DTYPE_Q4_0: {
        const uint8_t *b = row + 18 * k;
        *fw = _mm256_set1_ps(TQ_FN(h)(b));
        return TQ_FN(nib16)(b + 2);
    }
    case TD_DTYPE_Q5_1: {
        const uint8_t *b = row + 24 * k;
        TQ_FN(h2)(b, fw, mw);
        return _mm256_or_si256(TQ_FN(nib16)(b + 8), TQ_FN(bits32)(b + 4));
    }
    default: { /* Q5_K */
        const int j = (int)(k & 7);
        const uint8_t *b = row + 176 * (k >> 3);
        float f, m;
        s_k_scales(b + 4, j, TQ_FN(h)(b), TQ_FN(h)(b + 2), &f, &m);
        *fw = _mm256_set1_ps(f);
        *mw = m;
        const __m256i v = _mm256_loadu_si256((const __m256i *)(b + 48 + 32 * (j >> 1)));
        const __m256i h = _mm256_loadu_si256((const __m256i *)(b + 16));
        return _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(v, 4 * (j & 1)), _mm256_set1_epi8(15)),
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, j), _mm256_set1_epi8(1)), 4));
    }
    }
}

#if TQ_VNNI
/* Units k and k+1 of a row as one 512-bit u, fw (8 lanes each) and the two min coefficients
 * broadcast (mv0, mv1): the same values as two TQ_FN(unit) calls, with Q4_0's scale conversion
 * and nibble split and Q5_K's shared block done once for both units. */
static inline TQ_ATTR __attribute__((always_inline)) __m512i
TQ_FN(unit2)(const int DT, const uint8_t *row, int64_t k, __m512 *fw, __m128 *mv0, __m128 *mv1) {
    if (DT == TD_DTYPE_Q4_0) {
        const __m512i lohalf = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
        const uint8_t *b0 = row + 18 * k, *b1 = b0 + 18;
        int32_t a, c;
        memcpy(&a, b0, 4), memcpy(&c, b1, 4); /* d and the first qs bytes */
        const __m128 dm = _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128(a), c, 1));
        *fw = _mm512_permutexvar_ps(lohalf, _mm512_castps128_ps512(dm)); /* d0 x8, d1 x8 */
        *mv0 = *mv1 = _mm_setzero_ps();
        const __m256i q = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + 2))),
            _mm_loadu_si128((const __m128i *)(b1 + 2)), 1);
        const __m256i m4 = _mm256_set1_epi8(15);
        const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(q, m4)),
                                             _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), 1);
        return _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));
    }
    if (DT == TD_DTYPE_Q5_K) { /* k even: both units in one block */
        const int j = (int)(k & 7);
        const uint8_t *b = row + 176 * (k >> 3);
        int32_t a;
        memcpy(&a, b, 4);
        const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(a)); /* d, dmin */
        const float d = _mm_cvtss_f32(dd), dmin = _mm_cvtss_f32(_mm_movehdup_ps(dd));
        float f0, f1, m0, m1;
        s_k_scales(b + 4, j, d, dmin, &f0, &m0);
        s_k_scales(b + 4, j + 1, d, dmin, &f1, &m1);
        *fw = _mm512_castpd_ps(
            _mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(_mm256_set1_ps(f0))),
                               _mm256_castps_pd(_mm256_set1_ps(f1)), 1));
        *mv0 = _mm_set1_ps(m0), *mv1 = _mm_set1_ps(m1);
        /* units j, j+1 = the low and high nibbles of the same 32 bytes, plus their high bits */
        const __m256i v = _mm256_loadu_si256((const __m256i *)(b + 48 + 16 * j));
        const __m256i m4 = _mm256_set1_epi8(15);
        const __m512i u = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, m4)),
                                             _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), 1);
        const __m256i h = _mm256_loadu_si256((const __m256i *)(b + 16)), one = _mm256_set1_epi8(1);
        const __m512i hb = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_and_si256(_mm256_srli_epi16(h, j), one)),
            _mm256_and_si256(_mm256_srli_epi16(h, j + 1), one), 1);
        return _mm512_or_si512(u, _mm512_slli_epi16(hb, 4));
    }
    __m256 fw0, fw1;
    float mw0 = 0, mw1 = 0;
    const __m256i u0 = TQ_FN(unit)(DT, row, k, &fw0, &mw0);
    const __m256i u1 = TQ_FN(unit)(DT, row, k + 1, &fw1, &mw1);
    *fw = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(fw0)),
                                              _mm256_castps_pd(fw1), 1));
    *mv0 = _mm_set1_ps(mw0), *mv1 = _mm_set1_ps(mw1);
    return _mm512_inserti64x4(_mm512_castsi256_si512(u0), u1, 1);
}
#endif

/* NR weight rows (w0, stride ldb bytes) against NT activation rows t0 .. t0+NT-1 of xa:
 * out[t * NR + r]. DT, NR and NT are constants after inlining. Units alternate between two
 * accumulators (even and odd units; the VNNI path holds both in one 512-bit register), min terms
 * go to a vector whose lanes are the NT tokens. */
static inline TQ_ATTR __attribute__((always_inline)) void
TQ_FN(rows)(const int DT, const int NR, const int NT, const uint8_t *w0, size_t ldb,
            const td_qx_t *xa, int t0, float *out) {
    const int64_t nu = xa->nu, cols = nu * 32, ns = xa->ns;
    const int has_min = s_has_min(DT);
    __m128 macc[4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++) macc[r] = _mm_setzero_ps();
#if TQ_VNNI
    const int corr = s_has_corr(DT);
    __m512 acc[12];
#pragma GCC unroll 12
    for (int i = 0; i < NR * NT; i++) acc[i] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 2 <= nu; k += 2) {
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            __m512 fw;
            __m128 mv0, mv1;
            _mm_prefetch(
                (const char *)(w0 + (size_t)(r + TD_QPF_BLOCKS * NR) * ldb + s_unit_off(DT, k)),
                _MM_HINT_T2);
            const __m512i u = TQ_FN(unit2)(DT, w0 + (size_t)r * ldb, k, &fw, &mv0, &mv1);
            if (has_min) {
                macc[r] = _mm_fmadd_ps(mv0, _mm_loadu_ps(xa->s + k * ns + t0), macc[r]);
                macc[r] = _mm_fmadd_ps(mv1, _mm_loadu_ps(xa->s + (k + 1) * ns + t0), macc[r]);
            }
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const int64_t tk = (int64_t)(t0 + t) * nu + k;
                const __m512i xv = _mm512_loadu_si512(xa->q + (t0 + t) * cols + 32 * k);
                __m512i is = corr ? _mm512_loadu_si512(xa->corr + 8 * tk) : _mm512_setzero_si512();
                is = _mm512_dpbusd_epi32(is, u, xv);
                const __m512 f = _mm512_mul_ps(fw, _mm512_loadu_ps(xa->dv + 8 * tk));
                acc[t * NR + r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), f, acc[t * NR + r]);
            }
        }
    }
    if (k < nu) { /* an odd last unit: the even half only */
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            __m256 fw0;
            float mw0 = 0;
            const __m256i u = TQ_FN(unit)(DT, w0 + (size_t)r * ldb, k, &fw0, &mw0);
            if (has_min)
                macc[r] =
                    _mm_fmadd_ps(_mm_set1_ps(mw0), _mm_loadu_ps(xa->s + k * ns + t0), macc[r]);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const int64_t tk = (int64_t)(t0 + t) * nu + k;
                const __m256i xv =
                    _mm256_loadu_si256((const __m256i *)(xa->q + (t0 + t) * cols + 32 * k));
                __m256i is = corr ? _mm256_loadu_si256((const __m256i *)(xa->corr + 8 * tk))
                                  : _mm256_setzero_si256();
                is = _mm256_dpbusd_epi32(is, u, xv);
                const __m256 f = _mm256_mul_ps(fw0, _mm256_broadcast_ss(xa->d + tk));
                acc[t * NR + r] =
                    _mm512_mask3_fmadd_ps(_mm512_castps256_ps512(_mm256_cvtepi32_ps(is)),
                                          _mm512_castps256_ps512(f), acc[t * NR + r], 0x00ff);
            }
        }
    }
#define TQ_EVEN_ODD(i)                                                                             \
    _mm256_add_ps(_mm512_castps512_ps256(acc[i]),                                                  \
                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[i]), 1)))
#else
    const int corr = s_has_corr(DT);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[2][8];
#pragma GCC unroll 8
    for (int i = 0; i < NR * NT; i++) acc[0][i] = acc[1][i] = _mm256_setzero_ps();
    for (int64_t k = 0; k < nu; k++) {
        const int par = (int)(k & 1);
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            __m256 fw;
            float mw = 0;
            _mm_prefetch(
                (const char *)(w0 + (size_t)(r + TD_QPF_BLOCKS * NR) * ldb + s_unit_off(DT, k)),
                _MM_HINT_T2);
            const __m256i u = TQ_FN(unit)(DT, w0 + (size_t)r * ldb, k, &fw, &mw);
            if (has_min)
                macc[r] = _mm_fmadd_ps(_mm_set1_ps(mw), _mm_loadu_ps(xa->s + k * ns + t0), macc[r]);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const int64_t tk = (int64_t)(t0 + t) * nu + k;
                const __m256i xv =
                    _mm256_loadu_si256((const __m256i *)(xa->q + (t0 + t) * cols + 32 * k));
                __m256i is = corr ? _mm256_loadu_si256((const __m256i *)(xa->corr + 8 * tk))
                                  : _mm256_setzero_si256();
                is = _mm256_add_epi32(is, _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), ones));
                const __m256 f = _mm256_mul_ps(fw, _mm256_broadcast_ss(xa->d + tk));
                if (par)
                    acc[1][t * NR + r] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), f, acc[1][t * NR + r]);
                else
                    acc[0][t * NR + r] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), f, acc[0][t * NR + r]);
            }
        }
    }
#define TQ_EVEN_ODD(i) _mm256_add_ps(acc[0][i], acc[1][i])
#endif
    float m[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++) _mm_storeu_ps(m[r], macc[r]);
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++)
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            const __m256 e = TQ_EVEN_ODD(t * NR + r);
            const __m128 s = _mm_add_ps(_mm256_castps256_ps128(e), _mm256_extractf128_ps(e, 1));
            const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
            out[t * NR + r] = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1))) + m[r][t];
        }
#undef TQ_EVEN_ODD
}

#if TQ_VNNI
#define TQ_CASE_NT(DT, NR)                                                                         \
    do {                                                                                           \
        if (nt == 3)                                                                               \
            TQ_FN(rows)(DT, NR, 3, w0, ldb, xa, t0, out);                                          \
        else if (nt == 2)                                                                          \
            TQ_FN(rows)(DT, NR, 2, w0, ldb, xa, t0, out);                                          \
        else                                                                                       \
            TQ_FN(rows)(DT, NR, 1, w0, ldb, xa, t0, out);                                          \
    } while (0)
#else
#define TQ_CASE_NT(DT, NR)                                                                         \
    do {                                                                                           \
        if (nt == 2)                                                                               \
            TQ_FN(rows)(DT, NR, 2, w0, ldb, xa, t0, out);                                          \
        else                                                                                       \
            TQ_FN(rows)(DT, NR, 1, w0, ldb, xa, t0, out);                                          \
    } while (0)
#endif
#define TQ_CASE_DT(DT)                                                                             \
    case DT:                                                                                       \
        if (nr == 4)                                                                               \
            TQ_CASE_NT(DT, 4);                                                                     \
        else if (nr == 2)                                                                          \
            TQ_CASE_NT(DT, 2);                                                                     \
        else                                                                                       \
            TQ_CASE_NT(DT, 1);                                                                     \
        break;

static TQ_ATTR void TQ_FN(block)(int dt, int nr, int nt, const uint8_t *w0, size_t ldb,
                                 const td_qx_t *xa, int t0, float *out) {
    switch (dt) { /* Q4_1, Q8_0, Q5_0, Q4_K and Q6_K go through the row tiles below */
        TQ_CASE_DT(TD_DTYPE_Q4_0)
        TQ_CASE_DT(TD_DTYPE_Q5_1)
        TQ_CASE_DT(TD_DTYPE_Q5_K)
    default:
        break;
    }
}
#undef TQ_CASE_NT
#undef TQ_CASE_DT

/* --- row tiles (Q4_1, Q8_0) -------------------------------------------------------------------
 * 16 weight rows x all the tokens per pass: each unit of the 16 rows is loaded and unpacked once
 * and multiplied with every token (cpu_quant.c: "row tiles" gives the arithmetic). Unit k of rows
 * 4l + g goes to 128-bit lane l of vector g: elements 0..15 in lo[g], 16..31 in hi[g] (Q4_1: the
 * low and high nibbles; Q8_0: the bytes + 128). A token's 16 + 16 activation bytes are broadcast
 * to every lane, so lane l, dword j of the integer products holds 4 products of row 4l + g; two
 * rounds of unpack + add leave row i's exact unit sum in dword i. */

#if TQ_VNNI
typedef __m512i TQ_FN(vi);
typedef __m512 TQ_FN(vf);
#define TQ_TR 16 /* rows per vector */
#else
typedef __m256i TQ_FN(vi);
typedef __m256 TQ_FN(vf);
#define TQ_TR 8
#endif

/* 128 bits at p + off from rows g, 4 + g (, 8 + g, 12 + g), lane l = row 4l + g. */
static inline TQ_ATTR __attribute__((always_inline)) TQ_FN(vi)
    TQ_FN(lanes)(const uint8_t *w0, size_t ldb, int g, size_t off) {
    const __m128i a = _mm_loadu_si128((const __m128i *)(w0 + (size_t)g * ldb + off));
    const __m128i b = _mm_loadu_si128((const __m128i *)(w0 + (size_t)(4 + g) * ldb + off));
#if TQ_VNNI
    const __m128i c = _mm_loadu_si128((const __m128i *)(w0 + (size_t)(8 + g) * ldb + off));
    const __m128i d = _mm_loadu_si128((const __m128i *)(w0 + (size_t)(12 + g) * ldb + off));
    /* two 256-bit inserts (any vector port) and one 512-bit insert (one port only) */
    const __m256i ab = _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1);
    const __m256i cd = _mm256_inserti128_si256(_mm256_castsi128_si256(c), d, 1);
    return _mm512_inserti64x4(_mm512_castsi256_si512(ab), cd, 1);
#else
    return _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1);
#endif
}

/* dword i of the result: the sum of the 4 dwords of row i (vector i % 4, lane i / 4). */
static inline TQ_ATTR __attribute__((always_inline)) TQ_FN(vi) TQ_FN(reduce4)(const TQ_FN(vi) * v) {
#if TQ_VNNI
    const __m512i p =
        _mm512_add_epi32(_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
    const __m512i q =
        _mm512_add_epi32(_mm512_unpacklo_epi32(v[2], v[3]), _mm512_unpackhi_epi32(v[2], v[3]));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(p, q), _mm512_unpackhi_epi64(p, q));
#else
    const __m256i p =
        _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
    const __m256i q =
        _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(p, q), _mm256_unpackhi_epi64(p, q));
#endif
}

/* TQ_TR rows at w0 (stride ldb) against tokens t0 .. t0 + nt - 1 (nt <= TD_QTILE_NT):
 * out[t * TQ_TR + i]. pf: the bytes to prefetch while this runs (the next tile), pfn of them. */
#if TQ_VNNI
#ifndef TD_I32A_DEFINED
#define TD_I32A_DEFINED
typedef int32_t td_i32a __attribute__((may_alias, aligned(1)));
#endif
/* 4 vectors whose lane l holds 4 dwords of row 4l + g (g = the vector) -> 4 vectors whose dword
 * 4l + g holds dword j (j = the vector) of that row: row i in dword i. */
static inline TQ_ATTR __attribute__((always_inline)) void TQ_FN(tr4)(const __m512i *v, __m512i *o) {
    const __m512i a = _mm512_unpacklo_epi32(v[0], v[1]), b = _mm512_unpackhi_epi32(v[0], v[1]);
    const __m512i c = _mm512_unpacklo_epi32(v[2], v[3]), d = _mm512_unpackhi_epi32(v[2], v[3]);
    o[0] = _mm512_unpacklo_epi64(a, c), o[1] = _mm512_unpackhi_epi64(a, c);
    o[2] = _mm512_unpacklo_epi64(b, d), o[3] = _mm512_unpackhi_epi64(b, d);
}

/* s + u . (the 4 bytes at p broadcast to every dword), with the broadcast embedded in the
 * instruction (one fused uop; GCC emits a separate vpbroadcastd for the intrinsic form). */
static inline TQ_ATTR __attribute__((always_inline)) __m512i TQ_FN(dpbusd_b)(__m512i s, __m512i u,
                                                                             const int8_t *p) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(s) : "v"(u), "m"(*(const td_i32a *)p));
    return s;
}

/* VNNI: the 16 rows' unit is transposed once (row i in dword i, 8 vectors of 4 elements each),
 * then each token costs 8 vpdpbusd against its activation dwords broadcast, and the float ops. */
static inline TQ_ATTR __attribute__((always_inline)) void
TQ_FN(tile_t)(const int DT, const uint8_t *w0, size_t ldb, const td_qx_t *xa, int t0, int nt,
              float *out, const uint8_t *pf, size_t pfn) {
    const int64_t nu = xa->nu, cols = nu * 32, ns = xa->ns;
    const int q8 = DT == TD_DTYPE_Q8_0;
    const size_t bb = q8 ? 34 : 20;
    __m512 acc[TD_QTILE_NT], macc[TD_QTILE_NT];
    for (int t = 0; t < nt; t++) acc[t] = macc[t] = _mm512_setzero_ps();
    const __m512i vidx =
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32((int)ldb));
    const size_t pstep = (pfn / (size_t)nu + 63) & ~(size_t)63;
    for (int64_t k = 0; k < nu; k++) {
        for (size_t o = (size_t)k * pstep; o < (size_t)(k + 1) * pstep && o < pfn; o += 64)
            _mm_prefetch((const char *)(pf + o), _MM_HINT_T0);
        const size_t off = (size_t)k * bb;
        __m512i raw[4], u[8]; /* u[j]: elements 4j .. 4j+3 of row i in dword i */
        /* the f16 d (and m) of the 16 rows: one gather (cheaper here than 16 loads + shuffles) */
        const __m512i dmv = _mm512_i32gather_epi32(vidx, (const void *)(w0 + off), 1);
        if (q8) {
            const __m512i s = _mm512_set1_epi8(-128);
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) raw[g] = TQ_FN(lanes)(w0, ldb, g, off + 2);
            TQ_FN(tr4)(raw, u);
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) raw[g] = TQ_FN(lanes)(w0, ldb, g, off + 18);
            TQ_FN(tr4)(raw, u + 4);
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) u[j] = _mm512_xor_si512(u[j], s);
        } else {
            const __m512i m4 = _mm512_set1_epi8(15);
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) raw[g] = TQ_FN(lanes)(w0, ldb, g, off + 4);
            TQ_FN(tr4)(raw, u);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                u[j + 4] = _mm512_and_si512(_mm512_srli_epi16(u[j], 4), m4);
                u[j] = _mm512_and_si512(u[j], m4);
            }
        }
        const __m512 fw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dmv));
        const __m512 mw = q8 ? _mm512_setzero_ps()
                             : _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dmv, 16)));
        for (int t = 0; t < nt; t++) {
            const int64_t tk = (int64_t)(t0 + t) * nu + k;
            const int8_t *xq = xa->q + (t0 + t) * cols + 32 * k;
            /* one chain (tokens and units overlap in the core); Q8_0 starts from its correction */
            __m512i s = q8 ? _mm512_set1_epi32(-128 * xa->qsum[tk]) : _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) /* the 4 activation bytes: an embedded broadcast */
                s = TQ_FN(dpbusd_b)(s, u[j], xq + 4 * j);
            const __m512 f = _mm512_mul_ps(fw, _mm512_set1_ps(xa->d[tk]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), f, acc[t]);
            if (!q8) macc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xa->s[k * ns + t0 + t]), macc[t]);
        }
    }
    for (int t = 0; t < nt; t++) _mm512_storeu_ps(out + t * 16, _mm512_add_ps(acc[t], macc[t]));
}
#else
static inline TQ_ATTR __attribute__((always_inline)) void
TQ_FN(tile_t)(const int DT, const uint8_t *w0, size_t ldb, const td_qx_t *xa, int t0, int nt,
              float *out, const uint8_t *pf, size_t pfn) {
    const int64_t nu = xa->nu, cols = nu * 32, ns = xa->ns;
    const int q8 = DT == TD_DTYPE_Q8_0;
    const size_t bb = q8 ? 34 : 20;
    TQ_FN(vf) acc[TD_QTILE_NT], macc[TD_QTILE_NT];
    for (int t = 0; t < nt; t++) {
#if TQ_VNNI
        acc[t] = macc[t] = _mm512_setzero_ps();
#else
        acc[t] = macc[t] = _mm256_setzero_ps();
#endif
    }
    const size_t pstep = (pfn / (size_t)nu + 63) & ~(size_t)63;
    for (int64_t k = 0; k < nu; k++) {
        for (size_t o = (size_t)k * pstep; o < (size_t)(k + 1) * pstep && o < pfn; o += 64)
            _mm_prefetch((const char *)(pf + o), _MM_HINT_T0);
        const size_t off = (size_t)k * bb;
        TQ_FN(vi) lo[4], hi[4], dm[4];
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            dm[g] = TQ_FN(lanes)(w0, ldb, g, off);
#if TQ_VNNI
            if (q8) {
                const __m512i s = _mm512_set1_epi8(-128);
                lo[g] = _mm512_xor_si512(TQ_FN(lanes)(w0, ldb, g, off + 2), s);
                hi[g] = _mm512_xor_si512(TQ_FN(lanes)(w0, ldb, g, off + 18), s);
            } else {
                const __m512i v = TQ_FN(lanes)(w0, ldb, g, off + 4), m4 = _mm512_set1_epi8(15);
                lo[g] = _mm512_and_si512(v, m4);
                hi[g] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            }
#else
            if (q8) { /* signed bytes: |w| here, the sign goes onto the activations */
                lo[g] = TQ_FN(lanes)(w0, ldb, g, off + 2);
                hi[g] = TQ_FN(lanes)(w0, ldb, g, off + 18);
            } else {
                const __m256i v = TQ_FN(lanes)(w0, ldb, g, off + 4), m4 = _mm256_set1_epi8(15);
                lo[g] = _mm256_and_si256(v, m4);
                hi[g] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            }
#endif
        }
        /* the f16 d (and m) of each row: dword 0 of every lane, into row order */
#if TQ_VNNI
        const __m512i d01 = _mm512_unpacklo_epi32(dm[0], dm[1]),
                      d23 = _mm512_unpacklo_epi32(dm[2], dm[3]);
        const __m512i dmv = _mm512_unpacklo_epi64(d01, d23);
        const __m512 fw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dmv));
        const __m512 mw = q8 ? _mm512_setzero_ps()
                             : _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dmv, 16)));
#else
        const __m256i d01 = _mm256_unpacklo_epi32(dm[0], dm[1]),
                      d23 = _mm256_unpacklo_epi32(dm[2], dm[3]);
        const __m256i dmv = _mm256_unpacklo_epi64(d01, d23);
        const __m256i lo16 =
            _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5,
                             8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
        const __m256i hp = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(dmv, lo16), 0x08);
        const __m256 fw = _mm256_cvtph_ps(_mm256_castsi256_si128(hp));
        __m256 mw = _mm256_setzero_ps();
        if (!q8) {
            const __m256i hm = _mm256_permute4x64_epi64(
                _mm256_shuffle_epi8(_mm256_srli_epi32(dmv, 16), lo16), 0x08);
            mw = _mm256_cvtph_ps(_mm256_castsi256_si128(hm));
        }
        const __m256i ones = _mm256_set1_epi16(1);
#endif
        for (int t = 0; t < nt; t++) {
            const int64_t tk = (int64_t)(t0 + t) * nu + k;
            const int8_t *xq = xa->q + (t0 + t) * cols + 32 * k;
            TQ_FN(vi) v[4];
#if TQ_VNNI
            const __m512i xl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)xq));
            const __m512i xh = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xq + 16)));
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++)
                v[g] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[g], xl),
                                           hi[g], xh);
            __m512i s = TQ_FN(reduce4)(v);
            if (q8) s = _mm512_add_epi32(s, _mm512_set1_epi32(-128 * xa->qsum[tk]));
            const __m512 f = _mm512_mul_ps(fw, _mm512_set1_ps(xa->d[tk]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), f, acc[t]);
            if (!q8) macc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xa->s[k * ns + t0 + t]), macc[t]);
#else
            const __m256i xl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)xq));
            const __m256i xh =
                _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(xq + 16)));
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) {
                __m256i pl, ph;
                if (q8) {
                    pl = _mm256_maddubs_epi16(_mm256_abs_epi8(lo[g]), _mm256_sign_epi8(xl, lo[g]));
                    ph = _mm256_maddubs_epi16(_mm256_abs_epi8(hi[g]), _mm256_sign_epi8(xh, hi[g]));
                } else {
                    pl = _mm256_maddubs_epi16(lo[g], xl);
                    ph = _mm256_maddubs_epi16(hi[g], xh);
                }
                /* Q4_1 pairs are below 2 * 15 * 127: their sum fits 16 bits; Q8_0's do not */
                v[g] =
                    q8 ? _mm256_add_epi32(_mm256_madd_epi16(pl, ones), _mm256_madd_epi16(ph, ones))
                       : _mm256_madd_epi16(_mm256_add_epi16(pl, ph), ones);
            }
            const __m256i s = TQ_FN(reduce4)(v);
            const __m256 f = _mm256_mul_ps(fw, _mm256_set1_ps(xa->d[tk]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), f, acc[t]);
            if (!q8) macc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xa->s[k * ns + t0 + t]), macc[t]);
#endif
        }
    }
    for (int t = 0; t < nt; t++) {
#if TQ_VNNI
        _mm512_storeu_ps(out + t * TQ_TR, _mm512_add_ps(acc[t], macc[t]));
#else
        _mm256_storeu_ps(out + t * TQ_TR, _mm256_add_ps(acc[t], macc[t]));
#endif
    }
}

#endif

/* TD_QTILE_ROWS (16) rows: the VNNI path in one pass, AVX2 in two halves of 8. */
static TQ_ATTR void TQ_FN(tile)(int dt, const uint8_t *w0, size_t ldb, const td_qx_t *xa, int t0,
                                int nt, float *out, const uint8_t *pf, size_t pfn) {
#if TQ_VNNI
    if (dt == TD_DTYPE_Q8_0)
        TQ_FN(tile_t)(TD_DTYPE_Q8_0, w0, ldb, xa, t0, nt, out, pf, pfn);
    else
        TQ_FN(tile_t)(TD_DTYPE_Q4_1, w0, ldb, xa, t0, nt, out, pf, pfn);
#else
    float o2[2][TD_QTILE_NT * 8];
    for (int h = 0; h < 2; h++) {
        const uint8_t *wh = w0 + (size_t)(8 * h) * ldb;
        if (dt == TD_DTYPE_Q8_0)
            TQ_FN(tile_t)(TD_DTYPE_Q8_0, wh, ldb, xa, t0, nt, o2[h], pf + h * (pfn / 2), pfn / 2);
        else
            TQ_FN(tile_t)(TD_DTYPE_Q4_1, wh, ldb, xa, t0, nt, o2[h], pf + h * (pfn / 2), pfn / 2);
    }
    for (int t = 0; t < nt; t++)
        for (int i = 0; i < 8; i++) {
            out[t * 16 + i] = o2[0][t * 8 + i];
            out[t * 16 + 8 + i] = o2[1][t * 8 + i];
        }
#endif
}

/* --- TD_WLAYOUT_TILE16 tiles (cpu_quant.c): a unit of 16 rows is one contiguous block, "dword i
 * of vector j" = bytes 4j .. 4j+3 of row i. The same integer sums S and float operations as the
 * row tiles above, with the unit read by plain vector loads. */
/* Q4_K tiles: the 6-bit scale and min of sub-block j (td_q4k_scale_min) of the rows whose scale
 * bytes start at sb + 64 + off (byte c of row i at 64 + 16c + i), a byte per row. */
static inline TQ_ATTR __attribute__((always_inline)) void
TQ_FN(q4k_scmn)(const uint8_t *sb, int j, int off, __m128i *sc, __m128i *mn) {
    const __m128i m63 = _mm_set1_epi8(63), m15 = _mm_set1_epi8(15), m3 = _mm_set1_epi8(3);
#define TQ_SB(c) _mm_loadu_si128((const __m128i *)(sb + 64 + 16 * (c) + off))
    if (j < 4) {
        *sc = _mm_and_si128(TQ_SB(j), m63);
        *mn = _mm_and_si128(TQ_SB(j + 4), m63);
    } else {
        const __m128i ha = _mm_and_si128(_mm_srli_epi16(TQ_SB(j - 4), 6), m3),
                      hb = _mm_and_si128(_mm_srli_epi16(TQ_SB(j), 6), m3);
        *sc = _mm_or_si128(_mm_and_si128(TQ_SB(j + 4), m15), _mm_slli_epi16(ha, 4));
        *mn = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(TQ_SB(j + 4), 4), m15),
                           _mm_slli_epi16(hb, 4));
    }
#undef TQ_SB
}

#if TQ_VNNI
/* Unit blk of a tile: u[j] the 16 rows' weights (dword i = row i), fw, mw their scales. */
static inline TQ_ATTR __attribute__((always_inline)) void
TQ_FN(t16_unit)(const int DT, const uint8_t *w0, int64_t k, __m512i *u, __m512 *fw, __m512 *mw) {
    const uint8_t *blk =
        w0 + (size_t)k * (DT == TD_DTYPE_Q8_0 ? 544 : DT == TD_DTYPE_Q5_0 ? 352 : 320);
    if (DT == TD_DTYPE_Q4_K) {
        /* super-block k / 8, unit j: the 6-bit scale and min of 16 rows from the scale bytes
         * (td_q4k_scale_min, a byte per row), fw = d * sc, mw = -(dmin * m) */
        const uint8_t *sb = w0 + (size_t)(k >> 3) * 2304;
        const int j = (int)(k & 7);
        __m128i sc, mn;
        TQ_FN(q4k_scmn)(sb, j, 0, &sc, &mn);
        *fw = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_load_si256((const __m256i *)sb)),
                            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc)));
        const __m512 dm = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(sb + 32))),
                                        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(mn)));
        *mw = _mm512_castsi512_ps( /* -(dmin * m), the sign flipped as the scalar path does */
            _mm512_xor_si512(_mm512_castps_si512(dm), _mm512_set1_epi32((int)0x80000000u)));
        blk = sb + 256 + 256 * j - 64; /* the nibbles as Q4_1's, which start at blk + 64 */
        const __m512i m4 = _mm512_set1_epi8(15);
#pragma GCC unroll 4
        for (int jj = 0; jj < 4; jj++) {
            const __m512i v = _mm512_load_si512((const void *)(blk + 64 + 64 * jj));
            u[jj] = _mm512_and_si512(v, m4);
            u[jj + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        }
        return;
    }
    if (DT == TD_DTYPE_Q8_0) {
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) u[j] = _mm512_loadu_si512((const void *)(blk + 64 * j));
        *fw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 512)));
        *mw = _mm512_setzero_ps();
    } else if (DT == TD_DTYPE_Q5_0) {
        /* the nibbles as Q4_1's, then bit e of a row's qh onto element e: a byte shuffle brings
         * the qh byte holding the bits of dword j to each of the dword's 4 bytes, a test against
         * that byte's bit gives the mask of elements that get 16 */
        const __m512i m4 = _mm512_set1_epi8(15), b16 = _mm512_set1_epi8(16);
        const __m512i qh = _mm512_loadu_si512((const void *)(blk + 32));
        const __m512i dsel = _mm512_set4_epi32(0x0c0c0c0c, 0x08080808, 0x04040404, 0);
        const __m512i bit[2] = {_mm512_set1_epi32(0x08040201), _mm512_set1_epi32((int)0x80402010)};
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m512i v = _mm512_loadu_si512((const void *)(blk + 96 + 64 * j));
            const __m512i lo = _mm512_and_si512(v, m4),
                          hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            const __m512i slo = _mm512_add_epi32(dsel, _mm512_set1_epi32(0x01010101 * (j >> 1))),
                          shi = _mm512_add_epi32(dsel, _mm512_set1_epi32(0x01010101 * (2 + (j >> 1))));
            const __mmask64 klo = _mm512_test_epi8_mask(_mm512_shuffle_epi8(qh, slo), bit[j & 1]),
                            khi = _mm512_test_epi8_mask(_mm512_shuffle_epi8(qh, shi), bit[j & 1]);
            u[j] = _mm512_mask_add_epi8(lo, klo, lo, b16);
            u[j + 4] = _mm512_mask_add_epi8(hi, khi, hi, b16);
        }
        *fw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk));
        *mw = _mm512_setzero_ps();
    } else {
        const __m512i m4 = _mm512_set1_epi8(15);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m512i v = _mm512_load_si512((const void *)(blk + 64 + 64 * j));
            u[j] = _mm512_and_si512(v, m4);
            u[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        }
        *fw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)blk));
        *mw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(blk + 32)));
    }
}

/* Unit by unit; each unit against the tokens in groups of four whose vpdpbusd chains are
 * interleaved, then pairs, then one (a lone token: the plainest loop, decode's case). */
static inline TQ_ATTR __attribute__((always_inline)) void
TQ_FN(t16_t)(const int DT, const uint8_t *w0, const td_qx_t *xa, int t0, int nt, float *out,
             const uint8_t *pf, size_t pfn) {
    const int64_t nu = xa->nu, cols = nu * 32, ns = xa->ns;
    /* Q8_0 (weights stored + 128) and Q5_0 (+ 16) start from their corrections */
    const int q8 = DT != TD_DTYPE_Q4_1 && DT != TD_DTYPE_Q4_K, corr = DT == TD_DTYPE_Q8_0 ? -128 : -16;

    __m512 acc[TD_QTILE_NT], macc[TD_QTILE_NT];
    for (int t = 0; t < nt; t++) acc[t] = macc[t] = _mm512_setzero_ps();
    const size_t pstep = (pfn / (size_t)nu + 63) & ~(size_t)63;
    for (int64_t k = 0; k < nu; k++) {
        for (size_t o = (size_t)k * pstep; o < (size_t)(k + 1) * pstep && o < pfn; o += 64)
            _mm_prefetch((const char *)(pf + o), _MM_HINT_T2);
        __m512i u[8];
        __m512 fw, mw;
        TQ_FN(t16_unit)(DT, w0, k, u, &fw, &mw);
        if (nt == 1) {
            const int8_t *xq = xa->q + t0 * cols + 32 * k;
            const int64_t tk = (int64_t)t0 * nu + k;
            __m512i sv = q8 ? _mm512_set1_epi32(corr * xa->qsum[tk]) : _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) sv = TQ_FN(dpbusd_b)(sv, u[j], xq + 4 * j);
            const __m512 f = _mm512_mul_ps(fw, _mm512_set1_ps(xa->d[tk]));
            acc[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sv), f, acc[0]);
            if (!q8) macc[0] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xa->s[k * ns + t0]), macc[0]);
            continue;
        }
        int t = 0;
#define TQ_T16_TOKENS(G)                                                                           \
    for (; t + (G) <= nt; t += (G)) {                                                              \
        __m512i sv[G];                                                                             \
        const int8_t *xq[G];                                                                       \
        _Pragma("GCC unroll 4") for (int g = 0; g < (G); g++) {                                    \
            const int64_t tk = (int64_t)(t0 + t + g) * nu + k;                                     \
            xq[g] = xa->q + (t0 + t + g) * cols + 32 * k;                                          \
            sv[g] = q8 ? _mm512_set1_epi32(corr * xa->qsum[tk]) : _mm512_setzero_si512();          \
        }                                                                                          \
        _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++)                                        \
            _Pragma("GCC unroll 4") for (int g = 0; g < (G); g++) sv[g] =                          \
                TQ_FN(dpbusd_b)(sv[g], u[j], xq[g] + 4 * j);                                       \
        _Pragma("GCC unroll 4") for (int g = 0; g < (G); g++) {                                    \
            const int64_t tk = (int64_t)(t0 + t + g) * nu + k;                                     \
            const __m512 f = _mm512_mul_ps(fw, _mm512_set1_ps(xa->d[tk]));                         \
            acc[t + g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sv[g]), f, acc[t + g]);                \
            if (!q8)                                                                               \
                macc[t + g] =                                                                      \
                    _mm512_fmadd_ps(mw, _mm512_set1_ps(xa->s[k * ns + t0 + t + g]), macc[t + g]);  \
        }                                                                                          \
    }
        TQ_T16_TOKENS(4)
        TQ_T16_TOKENS(2)
        TQ_T16_TOKENS(1)
#undef TQ_T16_TOKENS
    }
    for (int t = 0; t < nt; t++) _mm512_storeu_ps(out + t * 16, _mm512_add_ps(acc[t], macc[t]));
}
#else
/* AVX2: rows 8h .. 8h+7 (h = half) are the low or high 32 bytes of each 64-byte vector; vpmaddubsw
 * against the token's activation dword broadcast, pairs summed in 16 bits where they fit (Q4_1:
 * 8 x 2 x 15 x 127 < 2^15), by vpmaddwd otherwise. Q8_0 goes back to signed bytes (|w| and the
 * sign on the activations, as the row tiles do). */
static inline TQ_ATTR __attribute__((always_inline)) void
TQ_FN(t16_t)(const int DT, const uint8_t *w0, const td_qx_t *xa, int t0, int nt, float *out,
             const uint8_t *pf, size_t pfn, int h) {
    const int64_t nu = xa->nu, cols = nu * 32, ns = xa->ns;
    const int q8 = DT == TD_DTYPE_Q8_0, q5 = DT == TD_DTYPE_Q5_0, q4k = DT == TD_DTYPE_Q4_K;
    const size_t tub = q8 ? 544 : q5 ? 352 : 320;
    __m256 acc[TD_QTILE_NT], macc[TD_QTILE_NT];
    for (int t = 0; t < nt; t++) acc[t] = macc[t] = _mm256_setzero_ps();
    const size_t pstep = (pfn / (size_t)nu + 63) & ~(size_t)63;
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(15);
    for (int64_t k = 0; k < nu; k++) {
        for (size_t o = (size_t)k * pstep; o < (size_t)(k + 1) * pstep && o < pfn; o += 64)
            _mm_prefetch((const char *)(pf + o), _MM_HINT_T2);
        const uint8_t *blk = w0 + (size_t)k * tub;
        if (q4k) /* super-block k / 8, unit j: nibbles as Q4_1's (at blk + 64) */
            blk = w0 + (size_t)(k >> 3) * 2304 + 192 + 256 * (k & 7);
        __m256i u[8], a[8]; /* a: |w| (Q8_0); u: the unsigned weights or the signed bytes */
        __m256 fw, mw = _mm256_setzero_ps();
        if (q8) {
            const __m256i s = _mm256_set1_epi8(-128);
            for (int j = 0; j < 8; j++) {
                u[j] = _mm256_xor_si256(
                    _mm256_loadu_si256((const __m256i *)(blk + 64 * j + 32 * h)), s);
                a[j] = _mm256_abs_epi8(u[j]);
            }
            fw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 512 + 16 * h)));
        } else if (q5) { /* as the VNNI loader: qh bit e onto element e */
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 32 + 32 * h));
            const __m256i dsel = _mm256_setr_epi32(0, 0x04040404, 0x08080808, 0x0c0c0c0c, 0,
                                                   0x04040404, 0x08080808, 0x0c0c0c0c);
            const __m256i b16 = _mm256_set1_epi8(16);
            for (int j = 0; j < 4; j++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 96 + 64 * j + 32 * h));
                const __m256i bit =
                    _mm256_set1_epi32(j & 1 ? (int)0x80402010 : 0x08040201);
                const __m256i tl = _mm256_and_si256(
                    _mm256_shuffle_epi8(qh, _mm256_add_epi32(dsel, _mm256_set1_epi32(0x01010101 * (j >> 1)))), bit);
                const __m256i th = _mm256_and_si256(
                    _mm256_shuffle_epi8(qh, _mm256_add_epi32(dsel, _mm256_set1_epi32(0x01010101 * (2 + (j >> 1))))), bit);
                u[j] = _mm256_or_si256(_mm256_and_si256(v, m4),
                                       _mm256_and_si256(_mm256_cmpeq_epi8(tl, bit), b16));
                u[j + 4] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4),
                                           _mm256_and_si256(_mm256_cmpeq_epi8(th, bit), b16));
            }
            fw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 16 * h)));
        } else {
            for (int j = 0; j < 4; j++) {
                const __m256i v = _mm256_load_si256((const __m256i *)(blk + 64 + 64 * j + 32 * h));
                u[j] = _mm256_and_si256(v, m4);
                u[j + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            }
            if (q4k) { /* fw = d * sc_j, mw = -(dmin * m_j) of the half's 8 rows */
                const uint8_t *sb = w0 + (size_t)(k >> 3) * 2304;
                const int j = (int)(k & 7);
                __m128i sc, mn;
                TQ_FN(q4k_scmn)(sb, j, 8 * h, &sc, &mn);
                fw = _mm256_mul_ps(_mm256_cvtph_ps(_mm_load_si128((const __m128i *)(sb + 16 * h))),
                                   _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sc)));
                mw = _mm256_xor_ps( /* -(dmin * m), the sign flipped as the scalar path does */
                    _mm256_mul_ps(_mm256_cvtph_ps(_mm_load_si128((const __m128i *)(sb + 32 + 16 * h))),
                                  _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn))),
                    _mm256_set1_ps(-0.0f));
            } else {
                fw = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(blk + 16 * h)));
                mw = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(blk + 32 + 16 * h)));
            }
        }
        for (int t = 0; t < nt; t++) {
            const int64_t tk = (int64_t)(t0 + t) * nu + k;
            const int8_t *xq = xa->q + (t0 + t) * cols + 32 * k;
            __m256i sv;
            if (q8) {
                sv = _mm256_setzero_si256();
                for (int j = 0; j < 8; j++) {
                    int32_t xd;
                    memcpy(&xd, xq + 4 * j, 4);
                    const __m256i p = _mm256_maddubs_epi16(
                        a[j], _mm256_sign_epi8(_mm256_set1_epi32(xd), u[j]));
                    sv = _mm256_add_epi32(sv, _mm256_madd_epi16(p, ones));
                }
            } else if (q5) { /* pairs below 2 x 31 x 127: four of them fit 16 bits */
                __m256i p16[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
                for (int j = 0; j < 8; j++) {
                    int32_t xd;
                    memcpy(&xd, xq + 4 * j, 4);
                    p16[j >> 2] =
                        _mm256_add_epi16(p16[j >> 2], _mm256_maddubs_epi16(u[j], _mm256_set1_epi32(xd)));
                }
                sv = _mm256_add_epi32(
                    _mm256_add_epi32(_mm256_madd_epi16(p16[0], ones), _mm256_madd_epi16(p16[1], ones)),
                    _mm256_set1_epi32(-16 * xa->qsum[tk]));
            } else {
                __m256i p16 = _mm256_setzero_si256();
                for (int j = 0; j < 8; j++) {
                    int32_t xd;
                    memcpy(&xd, xq + 4 * j, 4);
                    p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(u[j], _mm256_set1_epi32(xd)));
                }
                sv = _mm256_madd_epi16(p16, ones);
            }
            const __m256 f = _mm256_mul_ps(fw, _mm256_set1_ps(xa->d[tk]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sv), f, acc[t]);
            if (!q8 && !q5)
                macc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xa->s[k * ns + t0 + t]), macc[t]);
        }
    }
    for (int t = 0; t < nt; t++)
        _mm256_storeu_ps(out + t * 16 + 8 * h, _mm256_add_ps(acc[t], macc[t]));
}
#endif

/* Q6_K tiles (cpu_quant.c): per unit the low 4 bits as Q4_1's nibbles, the high 2 from the two
 * H vectors (16-bit shifts, then the byte mask 0x30 drops what crossed bytes), and per token two
 * integer sums (elements 0..15 and 16..31, each from its -32 correction) and two fmaf. */
#if TQ_VNNI
static inline TQ_ATTR void TQ_FN(t16_q6k)(const uint8_t *w0, const td_qx_t *xa, int t0, int nt,
                                          float *out, const uint8_t *pf, size_t pfn) {
    const int64_t nu = xa->nu, cols = nu * 32;
    __m512 acc[TD_QTILE_NT];
    for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    const size_t pstep = (pfn / (size_t)nu + 63) & ~(size_t)63;
    const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    for (int64_t k = 0; k < nu; k++) {
        for (size_t o = (size_t)k * pstep; o < (size_t)(k + 1) * pstep && o < pfn; o += 64)
            _mm_prefetch((const char *)(pf + o), _MM_HINT_T2);
        const uint8_t *sb = w0 + (size_t)(k >> 3) * 3360, *ub = sb + 384 * (k & 7);
        const __m512i h0 = _mm512_loadu_si512((const void *)(ub + 256)),
                      h1 = _mm512_loadu_si512((const void *)(ub + 320));
        __m512i u[8];
#pragma GCC unroll 4
        for (int jj = 0; jj < 4; jj++) {
            const __m512i v = _mm512_loadu_si512((const void *)(ub + 64 * jj));
            const __m512i hs = jj & 1 ? h1 : h0;
            const __m512i lo2 = jj >> 1 ? hs : _mm512_slli_epi16(hs, 4),
                          hi2 = jj >> 1 ? _mm512_srli_epi16(hs, 2) : _mm512_slli_epi16(hs, 2);
            u[jj] = _mm512_or_si512(_mm512_and_si512(v, m4), _mm512_and_si512(lo2, m30));
            u[jj + 4] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v, 4), m4),
                                        _mm512_and_si512(hi2, m30));
        }
        const int j = (int)(k & 7);
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sb + 3072)));
        const __m512 f0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                               _mm_loadu_si128((const __m128i *)(sb + 3104 + 32 * j))))),
                     f1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                                               (const __m128i *)(sb + 3104 + 32 * j + 16)))));
        for (int t = 0; t < nt; t++) {
            const int64_t tk = (int64_t)(t0 + t) * nu + k;
            const int8_t *xq = xa->q + (t0 + t) * cols + 32 * k;
            __m512i s0 = _mm512_set1_epi32(xa->corr[8 * tk]),
                    s1 = _mm512_set1_epi32(xa->corr[8 * tk + 4]);
#pragma GCC unroll 4
            for (int jj = 0; jj < 4; jj++) {
                s0 = TQ_FN(dpbusd_b)(s0, u[jj], xq + 4 * jj);
                s1 = TQ_FN(dpbusd_b)(s1, u[jj + 4], xq + 16 + 4 * jj);
            }
            const __m512 dx = _mm512_set1_ps(xa->d[tk]);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(f0, dx), acc[t]);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(f1, dx), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) _mm512_storeu_ps(out + t * 16, acc[t]);
}
#else
static inline TQ_ATTR void TQ_FN(t16_q6k)(const uint8_t *w0, const td_qx_t *xa, int t0, int nt,
                                          float *out, const uint8_t *pf, size_t pfn, int h) {
    const int64_t nu = xa->nu, cols = nu * 32;
    __m256 acc[TD_QTILE_NT];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps();
    const size_t pstep = (pfn / (size_t)nu + 63) & ~(size_t)63;
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30),
                  ones = _mm256_set1_epi16(1);
    for (int64_t k = 0; k < nu; k++) {
        for (size_t o = (size_t)k * pstep; o < (size_t)(k + 1) * pstep && o < pfn; o += 64)
            _mm_prefetch((const char *)(pf + o), _MM_HINT_T2);
        const uint8_t *sb = w0 + (size_t)(k >> 3) * 3360, *ub = sb + 384 * (k & 7) + 32 * h;
        const __m256i h0 = _mm256_loadu_si256((const __m256i *)(ub + 256)),
                      h1 = _mm256_loadu_si256((const __m256i *)(ub + 320));
        __m256i u[8];
        for (int jj = 0; jj < 4; jj++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(ub + 64 * jj));
            const __m256i hs = jj & 1 ? h1 : h0;
            const __m256i lo2 = jj >> 1 ? hs : _mm256_slli_epi16(hs, 4),
                          hi2 = jj >> 1 ? _mm256_srli_epi16(hs, 2) : _mm256_slli_epi16(hs, 2);
            u[jj] = _mm256_or_si256(_mm256_and_si256(v, m4), _mm256_and_si256(lo2, m30));
            u[jj + 4] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4),
                                        _mm256_and_si256(hi2, m30));
        }
        const int j = (int)(k & 7);
        const __m256 d =
            _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sb + 3072 + 16 * h)));
        const __m256 f0 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                               (const __m128i *)(sb + 3104 + 32 * j + 8 * h))))),
                     f1 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                               (const __m128i *)(sb + 3104 + 32 * j + 16 + 8 * h)))));
        for (int t = 0; t < nt; t++) {
            const int64_t tk = (int64_t)(t0 + t) * nu + k;
            const int8_t *xq = xa->q + (t0 + t) * cols + 32 * k;
            __m256i s[2];
            for (int g = 0; g < 2; g++) { /* pairs below 2 x 63 x 127: two of them fit 16 bits */
                __m256i p[2];
                for (int pq = 0; pq < 2; pq++) {
                    int32_t a, b;
                    memcpy(&a, xq + 16 * g + 8 * pq, 4);
                    memcpy(&b, xq + 16 * g + 8 * pq + 4, 4);
                    p[pq] = _mm256_add_epi16(
                        _mm256_maddubs_epi16(u[4 * g + 2 * pq], _mm256_set1_epi32(a)),
                        _mm256_maddubs_epi16(u[4 * g + 2 * pq + 1], _mm256_set1_epi32(b)));
                }
                s[g] = _mm256_add_epi32(
                    _mm256_add_epi32(_mm256_madd_epi16(p[0], ones), _mm256_madd_epi16(p[1], ones)),
                    _mm256_set1_epi32(xa->corr[8 * tk + 4 * g]));
            }
            const __m256 dx = _mm256_set1_ps(xa->d[tk]);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[0]), _mm256_mul_ps(f0, dx), acc[t]);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[1]), _mm256_mul_ps(f1, dx), acc[t]);
        }
    }
    for (int t = 0; t < nt; t++) _mm256_storeu_ps(out + t * 16 + 8 * h, acc[t]);
}
#endif

static TQ_ATTR void TQ_FN(t16)(int dt, const uint8_t *w0, const td_qx_t *xa, int t0, int nt,
                               float *out, const uint8_t *pf, size_t pfn) {
#if TQ_VNNI
    if (dt == TD_DTYPE_Q8_0)
        TQ_FN(t16_t)(TD_DTYPE_Q8_0, w0, xa, t0, nt, out, pf, pfn);
    else if (dt == TD_DTYPE_Q5_0)
        TQ_FN(t16_t)(TD_DTYPE_Q5_0, w0, xa, t0, nt, out, pf, pfn);
    else if (dt == TD_DTYPE_Q4_K)
        TQ_FN(t16_t)(TD_DTYPE_Q4_K, w0, xa, t0, nt, out, pf, pfn);
    else if (dt == TD_DTYPE_Q6_K)
        TQ_FN(t16_q6k)(w0, xa, t0, nt, out, pf, pfn);
    else
        TQ_FN(t16_t)(TD_DTYPE_Q4_1, w0, xa, t0, nt, out, pf, pfn);
#else
    for (int h = 0; h < 2; h++) {
        if (dt == TD_DTYPE_Q8_0)
            TQ_FN(t16_t)(TD_DTYPE_Q8_0, w0, xa, t0, nt, out, pf, h ? pfn : 0, h);
        else if (dt == TD_DTYPE_Q5_0)
            TQ_FN(t16_t)(TD_DTYPE_Q5_0, w0, xa, t0, nt, out, pf, h ? pfn : 0, h);
        else if (dt == TD_DTYPE_Q4_K)
            TQ_FN(t16_t)(TD_DTYPE_Q4_K, w0, xa, t0, nt, out, pf, h ? pfn : 0, h);
        else if (dt == TD_DTYPE_Q6_K)
            TQ_FN(t16_q6k)(w0, xa, t0, nt, out, pf, h ? pfn : 0, h);
        else
            TQ_FN(t16_t)(TD_DTYPE_Q4_1, w0, xa, t0, nt, out, pf, h ? pfn : 0, h);
    }
#endif
}
#undef TQ_TR
