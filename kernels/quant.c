/* quant.c - reference dequantization and quantization of GGUF's block formats (see quant.h).
 *
 * Layering: common/ may not include kernels/, yet td_to_f32 (common) promises the quantized types.
 * common therefore exposes a registration hook (td_set_dequantize_hook) and this file registers
 * td_dequantize_row from a constructor. The hook keeps the block formats in one place (here,
 * beside the kernels that must agree with them bit for bit) and common free of them; every program
 * that can hold a quantized weight links this object, since the CPU backend calls into it. The
 * dequantization follows the gguf Python package's operation order in float32, so both give the
 * same floats (tests/test_quant.c checks this on a fixture). */
#include "kernels/quant.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

_Static_assert(sizeof(td_block_q8_0) == 34, "Q8_0 block");
_Static_assert(sizeof(td_block_q4_0) == 18, "Q4_0 block");
_Static_assert(sizeof(td_block_q4_1) == 20, "Q4_1 block");
_Static_assert(sizeof(td_block_q5_0) == 22, "Q5_0 block");
_Static_assert(sizeof(td_block_q5_1) == 24, "Q5_1 block");
_Static_assert(sizeof(td_block_q4_k) == 144, "Q4_K block");
_Static_assert(sizeof(td_block_q5_k) == 176, "Q5_K block");
_Static_assert(sizeof(td_block_q6_k) == 210, "Q6_K block");
/* s_q_legacy writes the 32-element blocks by these offsets */
_Static_assert(offsetof(td_block_q4_0, qs) == 2 && offsetof(td_block_q4_1, m) == 2 &&
                   offsetof(td_block_q4_1, qs) == 4,
               "Q4_0 / Q4_1 layout");
_Static_assert(offsetof(td_block_q5_0, qh) == 2 && offsetof(td_block_q5_0, qs) == 6 &&
                   offsetof(td_block_q5_1, m) == 2 && offsetof(td_block_q5_1, qh) == 4 &&
                   offsetof(td_block_q5_1, qs) == 8,
               "Q5_0 / Q5_1 layout");

static inline float s_h(uint16_t h) { return td_f16_to_f32(h); }

static void s_deq_q8_0(const void *p, float *y) {
    const td_block_q8_0 *b = p;
    const float d = s_h(b->d);
    for (int i = 0; i < 32; i++) y[i] = (float)b->qs[i] * d;
}
static void s_deq_q4_0(const void *p, float *y) {
    const td_block_q4_0 *b = p;
    const float d = s_h(b->d);
    for (int i = 0; i < 16; i++) {
        y[i] = d * (float)((b->qs[i] & 15) - 8);
        y[i + 16] = d * (float)((b->qs[i] >> 4) - 8);
    }
}
static void s_deq_q4_1(const void *p, float *y) {
    const td_block_q4_1 *b = p;
    const float d = s_h(b->d), m = s_h(b->m);
    for (int i = 0; i < 16; i++) {
        const float lo = d * (float)(b->qs[i] & 15), hi = d * (float)(b->qs[i] >> 4);
        y[i] = lo + m;
        y[i + 16] = hi + m;
    }
}
static uint32_t s_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void s_deq_q5_0(const void *p, float *y) {
    const td_block_q5_0 *b = p;
    const float d = s_h(b->d);
    const uint32_t qh = s_le32(b->qh);
    for (int i = 0; i < 16; i++) {
        const int lo = (b->qs[i] & 15) | (int)((qh >> i) & 1) << 4;
        const int hi = (b->qs[i] >> 4) | (int)((qh >> (i + 16)) & 1) << 4;
        y[i] = d * (float)(lo - 16);
        y[i + 16] = d * (float)(hi - 16);
    }
}
static void s_deq_q5_1(const void *p, float *y) {
    const td_block_q5_1 *b = p;
    const float d = s_h(b->d), m = s_h(b->m);
    const uint32_t qh = s_le32(b->qh);
    for (int i = 0; i < 16; i++) {
        const int lo = (b->qs[i] & 15) | (int)((qh >> i) & 1) << 4;
        const int hi = (b->qs[i] >> 4) | (int)((qh >> (i + 16)) & 1) << 4;
        const float a = d * (float)lo, c = d * (float)hi;
        y[i] = a + m;
        y[i + 16] = c + m;
    }
}
/* Q4_K / Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins; qh holds Q5_K's fifth bits (NULL
 * for Q4_K). */
static void s_deq_k(uint16_t dh, uint16_t dminh, const uint8_t *scales, const uint8_t *qs,
                    const uint8_t *qh, float *y) {
    const float d = s_h(dh), dmin = s_h(dminh);
    for (int j = 0; j < 8; j++) {
        int sc, m;
        td_q4k_scale_min(scales, j, &sc, &m);
        const float ds = d * (float)sc, dm = dmin * (float)m;
        const uint8_t *q = qs + 32 * (j / 2);
        const int sh = 4 * (j & 1);
        for (int l = 0; l < 32; l++) {
            const int v = ((q[l] >> sh) & 15) | (qh ? ((qh[l] >> j) & 1) << 4 : 0);
            const float p = ds * (float)v;
            y[32 * j + l] = p - dm;
        }
    }
}
static void s_deq_q4_k(const void *p, float *y) {
    const td_block_q4_k *b = p;
    s_deq_k(b->d, b->dmin, b->scales, b->qs, NULL, y);
}
static void s_deq_q5_k(const void *p, float *y) {
    const td_block_q5_k *b = p;
    s_deq_k(b->d, b->dmin, b->scales, b->qs, b->qh, y);
}
static void s_deq_q6_k(const void *p, float *y) {
    const td_block_q6_k *b = p;
    const float d = s_h(b->d);
    for (int u = 0; u < 8; u++) { /* 8 units of 32: half h, quarter k */
        const int h = u / 4, k = u % 4;
        const uint8_t *ql = b->ql + 64 * h + 32 * (k & 1), *qh = b->qh + 32 * h;
        for (int l = 0; l < 32; l++) {
            const int v = ((ql[l] >> (4 * (k >> 1))) & 15) | ((qh[l] >> (2 * k)) & 3) << 4;
            const float ds = d * (float)b->scales[2 * u + l / 16];
            y[32 * u + l] = ds * (float)(v - 32);
        }
    }
}

/* One block of type t to floats. */
typedef void (*s_deq_fn)(const void *block, float *y);
static const s_deq_fn s_deq[] = {
    [TD_DTYPE_Q8_0] = s_deq_q8_0, [TD_DTYPE_Q4_0] = s_deq_q4_0, [TD_DTYPE_Q4_1] = s_deq_q4_1,
    [TD_DTYPE_Q5_0] = s_deq_q5_0, [TD_DTYPE_Q5_1] = s_deq_q5_1, [TD_DTYPE_Q4_K] = s_deq_q4_k,
    [TD_DTYPE_Q5_K] = s_deq_q5_k, [TD_DTYPE_Q6_K] = s_deq_q6_k};

void td_dequantize_row(td_dtype_t t, const void *src, float *dst, int64_t n) {
    const int be = td_dtype_block_elems(t);
    const size_t bb = td_dtype_block_bytes(t);
    if (!td_dtype_is_quantized(t)) {
        if (t == TD_DTYPE_F32 || t == TD_DTYPE_F16 || t == TD_DTYPE_BF16)
            td_to_f32(dst, src, t, n);
        else
            memset(dst, 0, (size_t)n * sizeof(float));
        return;
    }
    const uint8_t *p = src;
    for (int64_t i = 0; i + be <= n; i += be, p += bb) {
        float *y = dst + i;
        const s_deq_fn fn = (size_t)t < sizeof s_deq / sizeof *s_deq ? s_deq[t] : NULL;
        if (fn)
            fn(p, y);
        else
            memset(y, 0, (size_t)be * sizeof(float));
    }
}

__attribute__((constructor)) static void s_register(void) {
    td_set_dequantize_hook(td_dequantize_row);
}

/* --- reference quantizers ----------------------------------------------------------------------
 */

/* Symmetric 32-blocks (Q4_0, Q5_0): the signed value of largest magnitude maps to -half. */
static void s_q_sym(const float *x, int half, uint16_t *d_out, uint8_t *q) {
    float amax = 0, mx = 0;
    for (int i = 0; i < 32; i++)
        if (fabsf(x[i]) > amax) amax = fabsf(x[i]), mx = x[i];
    const float d = mx / (float)-half, id = d != 0 ? 1.0f / d : 0.0f;
    for (int i = 0; i < 32; i++) {
        const float v = truncf(x[i] * id + ((float)half + 0.5f));
        q[i] = (uint8_t)(v < 0 ? 0 : v > 2 * half - 1 ? 2 * half - 1 : v);
    }
    *d_out = td_f32_to_f16(d);
}
/* Affine 32-blocks (Q4_1, Q5_1): min .. max onto 0 .. levels. */
static void s_q_aff(const float *x, int levels, uint16_t *d_out, uint16_t *m_out, uint8_t *q) {
    float mn = x[0], mx = x[0];
    for (int i = 1; i < 32; i++) mn = x[i] < mn ? x[i] : mn, mx = x[i] > mx ? x[i] : mx;
    const float d = (mx - mn) / (float)levels, id = d != 0 ? 1.0f / d : 0.0f;
    for (int i = 0; i < 32; i++) {
        const float v = truncf((x[i] - mn) * id + 0.5f);
        q[i] = (uint8_t)(v < 0 ? 0 : v > levels ? levels : v);
    }
    *d_out = td_f32_to_f16(d);
    *m_out = td_f32_to_f16(mn);
}
static void s_pack_nibbles(const uint8_t *q, uint8_t *qs) {
    for (int i = 0; i < 16; i++) qs[i] = (uint8_t)((q[i] & 15) | (q[i + 16] & 15) << 4);
}
static void s_pack_high(const uint8_t *q, uint8_t *qh) {
    uint32_t h = 0;
    for (int i = 0; i < 32; i++) h |= (uint32_t)((q[i] >> 4) & 1) << i;
    for (int i = 0; i < 4; i++) qh[i] = (uint8_t)(h >> (8 * i));
}
/* Q4_0 / Q4_1 / Q5_0 / Q5_1 (symmetric or affine, 4 or 5 bits): d (and m), the fifth bits (Q5),
 * then the nibbles, at the offsets of td_block_q4_0 .. td_block_q5_1 (asserted above). */
static void s_q_legacy(td_dtype_t t, const float *x, uint8_t *p) {
    const int five = t == TD_DTYPE_Q5_0 || t == TD_DTYPE_Q5_1;
    const int aff = t == TD_DTYPE_Q4_1 || t == TD_DTYPE_Q5_1;
    uint8_t q[32];
    uint16_t d, m;
    if (aff)
        s_q_aff(x, five ? 31 : 15, &d, &m, q);
    else
        s_q_sym(x, five ? 16 : 8, &d, q);
    memcpy(p, &d, 2);
    if (aff) memcpy(p + 2, &m, 2);
    uint8_t *qh = p + (aff ? 4 : 2), *qs = qh + (five ? 4 : 0);
    s_pack_nibbles(q, qs);
    if (five) s_pack_high(q, qh);
}
static int s_clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Q4_K / Q5_K (levels 15 / 31): per sub-block min/max, the scales and mins in 6 bits against the
 * super-block's d and dmin. */
static void s_q_k(const float *x, int levels, uint16_t *d_out, uint16_t *dmin_out, uint8_t *scales,
                  uint8_t *q /* [256] */) {
    float sc[8], mn[8], msc = 0, mmn = 0;
    for (int j = 0; j < 8; j++) {
        float lo = x[32 * j], hi = x[32 * j];
        for (int l = 1; l < 32; l++) {
            const float v = x[32 * j + l];
            lo = v < lo ? v : lo, hi = v > hi ? v : hi;
        }
        if (lo > 0) lo = 0;
        sc[j] = (hi - lo) / (float)levels, mn[j] = -lo;
        msc = sc[j] > msc ? sc[j] : msc, mmn = mn[j] > mmn ? mn[j] : mmn;
    }
    const float d = msc / 63, dmin = mmn / 63;
    *d_out = td_f32_to_f16(d), *dmin_out = td_f32_to_f16(dmin);
    const float dq = td_f16_to_f32(*d_out), dmq = td_f16_to_f32(*dmin_out);
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; j++) {
        ls[j] = (uint8_t)s_clampi(dq > 0 ? (int)lrintf(sc[j] / dq) : 0, 0, 63);
        lm[j] = (uint8_t)s_clampi(dmq > 0 ? (int)lrintf(mn[j] / dmq) : 0, 0, 63);
    }
    for (int j = 0; j < 4; j++) {
        scales[j] = (uint8_t)(ls[j] | (ls[j + 4] >> 4) << 6);
        scales[j + 4] = (uint8_t)(lm[j] | (lm[j + 4] >> 4) << 6);
        scales[j + 8] = (uint8_t)((ls[j + 4] & 15) | (lm[j + 4] & 15) << 4);
    }
    for (int j = 0; j < 8; j++) {
        int s, m;
        td_q4k_scale_min(scales, j, &s, &m);
        const float ds = dq * (float)s, dm = dmq * (float)m;
        for (int l = 0; l < 32; l++) {
            const int v = ds > 0 ? (int)lrintf((x[32 * j + l] + dm) / ds) : 0;
            q[32 * j + l] = (uint8_t)s_clampi(v, 0, levels);
        }
    }
}

static void s_q_q6k(const float *x, td_block_q6_k *b) {
    float sc[16], amax = 0;
    for (int i = 0; i < 16; i++) {
        float m = 0, mv = 0;
        for (int l = 0; l < 16; l++)
            if (fabsf(x[16 * i + l]) > m) m = fabsf(x[16 * i + l]), mv = x[16 * i + l];
        sc[i] = mv / -32;
        amax = fabsf(sc[i]) > amax ? fabsf(sc[i]) : amax;
    }
    const float d = amax / 127;
    b->d = td_f32_to_f16(d);
    const float dq = td_f16_to_f32(b->d);
    uint8_t q[256];
    for (int i = 0; i < 16; i++) {
        b->scales[i] = (int8_t)s_clampi(dq > 0 ? (int)lrintf(sc[i] / dq) : 0, -128, 127);
        const float ds = dq * (float)b->scales[i];
        for (int l = 0; l < 16; l++) {
            const int v = ds != 0 ? (int)lrintf(x[16 * i + l] / ds) : 0;
            q[16 * i + l] = (uint8_t)s_clampi(v + 32, 0, 63);
        }
    }
    memset(b->ql, 0, sizeof b->ql);
    memset(b->qh, 0, sizeof b->qh);
    for (int u = 0; u < 8; u++) {
        const int h = u / 4, k = u % 4;
        for (int l = 0; l < 32; l++) {
            const int v = q[32 * u + l];
            b->ql[64 * h + 32 * (k & 1) + l] |= (uint8_t)((v & 15) << (4 * (k >> 1)));
            b->qh[32 * h + l] |= (uint8_t)((v >> 4) << (2 * k));
        }
    }
}

int td_quantize_row(td_dtype_t t, const float *src, void *dst, int64_t n) {
    if (!td_dtype_is_quantized(t)) return TD_ERR_ARG;
    const int be = td_dtype_block_elems(t);
    const size_t bb = td_dtype_block_bytes(t);
    if (n < 0 || n % be) return TD_ERR_ARG;
    uint8_t *p = dst;
    for (int64_t i = 0; i < n; i += be, p += bb) {
        const float *x = src + i;
        uint8_t q[256];
        switch (t) {
        case TD_DTYPE_Q8_0: {
            td_block_q8_0 *b = (td_block_q8_0 *)p;
            float amax = 0;
            for (int l = 0; l < 32; l++) amax = fabsf(x[l]) > amax ? fabsf(x[l]) : amax;
            const float d = amax / 127, id = d != 0 ? 1.0f / d : 0.0f;
            for (int l = 0; l < 32; l++) b->qs[l] = (int8_t)roundf(x[l] * id);
            b->d = td_f32_to_f16(d);
        } break;
        case TD_DTYPE_Q4_0:
        case TD_DTYPE_Q4_1:
        case TD_DTYPE_Q5_0:
        case TD_DTYPE_Q5_1:
            s_q_legacy(t, x, p);
            break;
        case TD_DTYPE_Q4_K:
        case TD_DTYPE_Q5_K: {
            const int five = t == TD_DTYPE_Q5_K;
            uint16_t d, dmin;
            uint8_t *scales = p + 4;
            s_q_k(x, five ? 31 : 15, &d, &dmin, scales, q);
            memcpy(p, &d, 2);
            memcpy(p + 2, &dmin, 2);
            uint8_t *qh = five ? p + 16 : NULL, *qs = p + 16 + (five ? 32 : 0);
            memset(qs, 0, 128);
            if (qh) memset(qh, 0, 32);
            for (int j = 0; j < 8; j++)
                for (int l = 0; l < 32; l++) {
                    const int v = q[32 * j + l];
                    qs[32 * (j / 2) + l] |= (uint8_t)((v & 15) << (4 * (j & 1)));
                    if (qh) qh[l] |= (uint8_t)(((v >> 4) & 1) << j);
                }
        } break;
        case TD_DTYPE_Q6_K:
            s_q_q6k(x, (td_block_q6_k *)p);
            break;
        default:
            return TD_ERR_ARG;
        }
    }
    return TD_OK;
}
