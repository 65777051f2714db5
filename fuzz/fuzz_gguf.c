/* fuzz_gguf.c - libFuzzer target: td_gguf_from_memory on arbitrary bytes.
 *
 * Whatever the input, parsing must not crash, leak or read outside the buffer; when it succeeds,
 * every tensor's bytes must lie inside the image (touched here so ASan would catch a bad range),
 * every name and key must be found again, and every metadata value must be readable through the
 * typed getters and array accessors. */
#include "fuzz/fuzz_common.h"
#include "model/gguf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void s_check(const td_gguf_t *g, const uint8_t *buf, size_t size) {
    volatile uint8_t sink = 0;
    for (int64_t i = 0; i < td_gguf_n_tensors(g); i++) {
        const td_gguf_tensor_t *t = td_gguf_tensor_at(g, i);
        const uint8_t *p = t->data;
        if (p < buf || t->nbytes == 0 || p + t->nbytes > buf + size) abort();
        sink ^= p[0] ^ p[t->nbytes - 1];
        if (td_gguf_find_tensor(g, t->name) != t) abort();
        if (t->ne[0] % td_dtype_block_elems(t->dtype)) abort();
    }
    for (int64_t i = 0; i < td_gguf_n_kv(g); i++) {
        const td_gguf_kv_t *kv = td_gguf_kv_at(g, i);
        if (td_gguf_find_kv(g, kv->key) != kv) abort();
        int64_t iv;
        double fv;
        int bv;
        const char *sv;
        const td_gguf_kv_t *arr;
        td_err_t e2 = {0};
        (void)td_gguf_get_int(g, kv->key, &iv, &e2);
        (void)td_gguf_get_float(g, kv->key, &fv, &e2);
        (void)td_gguf_get_bool(g, kv->key, &bv, &e2);
        if (td_gguf_get_str(g, kv->key, &sv, &e2) == TD_OK) sink ^= (uint8_t)sv[0];
        if (td_gguf_get_arr(g, kv->key, TD_GGUF_TYPE_COUNT, &arr, &e2) == TD_OK) {
            for (uint64_t j = 0; j < arr->n; j++) {
                uint64_t len;
                const char *s = td_gguf_arr_str(arr, j, &len);
                if (s && len) sink ^= (uint8_t)(s[0] ^ s[len - 1]);
                sink ^= (uint8_t)td_gguf_arr_int(arr, j);
                sink ^= (uint8_t)(td_gguf_arr_float(arr, j) != 0);
            }
        }
    }
    (void)sink;
}

TD_FUZZ_IMAGE_TARGET("fuzz.gguf", td_gguf_t, td_gguf_from_memory, s_check, td_gguf_destroy)
