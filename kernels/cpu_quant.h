/* cpu_quant.h - the CPU backend's products and lookups on block-quantized weights (cpu_quant.c).
 * Internal to the CPU backend: backend_cpu.c calls these when a weight's dtype is quantized. */
#ifndef TD_CPU_QUANT_H
#define TD_CPU_QUANT_H

#include "kernels/backend.h"

/* y[n, w->rows] = x[n, w->cols] W^T for a quantized, non-transposed w (w->cols and w->ld
 * multiples of the block), for every n: integer dot products against activations quantized to 8
 * bits per 32-block, batch-invariant (row t's outputs bitwise the same for every n and every other
 * row), output rows split over n_threads OpenMP threads. Returns TD_OK, TD_ERR_UNSUPPORTED
 * (transposed, bad shape) or TD_ERR_NOMEM; on failure y is zeroed. */
int td_cpu_qmatmul(int n_threads, float *y, const float *x, const td_weight_t *w, int n);

/* The reference product: each weight row dequantized (td_dequantize_row) and dotted with x in
 * double, plus bias (any float dtype) when given. */
void td_cpu_qmatmul_ref(float *y, const float *x, const td_weight_t *w, const td_weight_t *bias,
                        int n);

/* Q4_1 and Q8_0 matrices of rows % 16 == 0 (dense, not transposed) regrouped into 16-row
 * tiles (TD_WLAYOUT_TILE16; cpu_quant.c describes it): the products then read each unit of 16
 * rows with a few plain vector loads. td_cpu_qrepack returns a new 64-byte-aligned block (free()
 * it) holding w's bytes in that layout, or NULL when w does not fit (td_cpu_qrepack_fits) or
 * memory is short; the caller sets data and layout. Every product, lookup and reference gives
 * bitwise the same values on both layouts. */
int td_cpu_qrepack_fits(const td_weight_t *w);
void *td_cpu_qrepack(const td_weight_t *w);
/* The same into dst (td_cpu_qrepack_bytes(w) bytes, 64-byte aligned; 0 when w does not fit). */
size_t td_cpu_qrepack_bytes(const td_weight_t *w);
void td_cpu_qrepack_into(const td_weight_t *w, void *dst);

/* y[i, :] = dequantized row ids[i] of table (embedding lookup). */
void td_cpu_qget_rows(float *y, const td_weight_t *table, const int32_t *ids, int n);

#endif
