/* quant.h - GGUF's block-quantized weight formats (ggml's block layouts, byte for byte), their
 * plain-C reference dequantization, reference quantizers for tests, and the CPU kernel selection.
 *
 * A quantized row of n elements is n / td_dtype_block_elems(t) consecutive blocks (the structs
 * below, little-endian, no padding). Element values:
 *   Q8_0: d * q                 (q int8)
 *   Q4_0: d * (q - 8)           (q 4 bits: element j < 16 the low nibble of qs[j], j >= 16 the high
 *                                nibble of qs[j - 16])
 *   Q4_1: d * q + m
 *   Q5_0: d * (q - 16)          (q = nibble as Q4_0 | bit j of qh (little-endian u32) << 4)
 *   Q5_1: d * q + m
 *   Q4_K: (d * sc_j) * q - dmin * m_j, 8 sub-blocks j of 32 with 6-bit sc/m packed in scales[12];
 *         sub-block 2c / 2c+1 = low / high nibbles of qs[32c .. 32c+31]
 *   Q5_K: as Q4_K, plus bit j of qh[l] as bit 4 of element l of sub-block j
 *   Q6_K: (d * scales[i]) * (q - 32), 16 groups i of 16 elements, q = 4 bits of ql | 2 bits of qh
 * The half-precision scales are IEEE binary16. */
#ifndef TD_QUANT_H
#define TD_QUANT_H

#include "common/td_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_block_q8_0 {
    uint16_t d;
    int8_t qs[32];
} td_block_q8_0;
typedef struct td_block_q4_0 {
    uint16_t d;
    uint8_t qs[16];
} td_block_q4_0;
typedef struct td_block_q4_1 {
    uint16_t d, m;
    uint8_t qs[16];
} td_block_q4_1;
typedef struct td_block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[16];
} td_block_q5_0;
typedef struct td_block_q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[16];
} td_block_q5_1;
typedef struct td_block_q4_k {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[128];
} td_block_q4_k;
typedef struct td_block_q5_k {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32];
    uint8_t qs[128];
} td_block_q5_k;
typedef struct td_block_q6_k {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;
} td_block_q6_k;

/* Reference dequantization: n elements (a multiple of the block's element count) of quantized
 * type t at src into dst. Plain types (F32, F16, BF16) are converted as td_to_f32 does. Other
 * types write zeros. Registered as td_to_f32's handler of quantized types (see quant.c). */
void td_dequantize_row(td_dtype_t t, const void *src, float *dst, int64_t n);

/* 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block's scales[12]. */
static inline void td_q4k_scale_min(const uint8_t *scales, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = scales[j] & 63;
        *m = scales[j + 4] & 63;
    } else {
        *sc = (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4);
        *m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
}

/* Reference quantizer (tests, tools): n floats (a multiple of the block size) into blocks of type
 * t at dst (td_dtype_row_bytes(t, n) bytes). All eight quantized types: Q8_0 .. Q5_1 round as
 * ggml's reference quantizers do; the K types use a simple per-sub-block min/max fit (valid
 * blocks, not llama.cpp's optimised search). Returns TD_OK or TD_ERR_ARG (not a quantized type,
 * n not a multiple of the block). */
int td_quantize_row(td_dtype_t t, const float *src, void *dst, int64_t n);

/* --- CPU kernel selection ---------------------------------------------------------------------
 * The CPU backend's quantized products have three implementations giving bitwise the same
 * results: "scalar" (plain C, always), "avx2" (AVX2 + FMA + F16C) and "avx512vnni" (AVX-512
 * VNNI/BW/VL on 256-bit vectors). The best one cpuid reports is chosen at first use, unless the
 * environment variable TD_CPU_KERNELS names one. */

/* Selects kernels by name ("auto", "scalar", "avx2", "avx512vnni"), process-wide. Returns TD_OK,
 * TD_ERR_ARG (unknown name) or TD_ERR_UNSUPPORTED (this CPU lacks it). Not thread-safe against
 * running products. */
int td_cpu_kernels_select(const char *name, td_err_t *err);
/* The kernels in use: "scalar", "avx2" or "avx512vnni". */
const char *td_cpu_kernels_name(void);
/* 1 when this CPU can run the named kernels. */
int td_cpu_kernels_available(const char *name);

#ifdef __cplusplus
}
#endif
#endif
