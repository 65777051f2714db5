/* fuzz_safetensors.c - libFuzzer target: td_safetensors_from_memory on arbitrary bytes.
 *
 * Whatever the input, parsing must not crash, leak or read outside the buffer; when it succeeds,
 * every tensor's bytes must lie inside the image (touched here so ASan would catch a bad range)
 * and every name must be found again by td_safetensors_find. */
#include "fuzz/fuzz_common.h"
#include "model/safetensors.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void s_check(const td_safetensors_t *st, const uint8_t *buf, size_t size) {
    volatile uint8_t sink = 0;
    uint64_t total = 0;
    for (int i = 0; i < td_safetensors_count(st); i++) {
        const td_st_tensor_t *t = td_safetensors_at(st, i);
        const uint8_t *p = t->data;
        if (p < buf || p + t->nbytes > buf + size) abort();
        if (t->nbytes) sink ^= p[0] ^ p[t->nbytes - 1];
        if (td_safetensors_find(st, t->name) != t) abort();
        if ((uint64_t)td_safetensors_n_elements(t) * td_dtype_size(t->dtype) != t->nbytes) abort();
        total += t->nbytes;
    }
    if (total != td_safetensors_total_bytes(st)) abort();
    for (int i = 0; i < td_safetensors_n_metadata(st); i++) {
        const char *v = NULL;
        const char *k = td_safetensors_metadata_at(st, i, &v);
        sink ^= (uint8_t)(k[0] ^ v[0]);
    }
    (void)sink;
}

TD_FUZZ_IMAGE_TARGET("fuzz.safetensors", td_safetensors_t, td_safetensors_from_memory, s_check,
                     td_safetensors_destroy)
