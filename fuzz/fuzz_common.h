/* fuzz_common.h - what the libFuzzer targets share (header only: each fuzz/fuzz_*.c is linked on
 * its own). */
#ifndef TD_FUZZ_COMMON_H
#define TD_FUZZ_COMMON_H

#include "common/td_common.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A private malloc'd copy of data[size] (one byte at least, not NUL-terminated), so ASan knows
 * exactly where the input ends; NULL when out of memory. */
static inline void *td_fuzz_copy(const uint8_t *data, size_t size) {
    void *buf = malloc(size ? size : 1);
    if (buf && size) memcpy(buf, data, size);
    return buf;
}

/* A parse of FILE failed with err: every failure but running out of memory names the file. */
static inline void td_fuzz_check_named(const td_err_t *err, const char *file) {
    if (err->code != TD_ERR_NOMEM && !strstr(err->msg, file)) abort();
}

/* The libFuzzer entry of a target that parses a whole in-memory image (GGUF, safetensors): TYPE
 * *PARSE(buf, size, FILE, &err) on a private copy of the input; on success CHECK(obj, buf, size)
 * then DESTROY(&obj), else the error must name FILE. */
#define TD_FUZZ_IMAGE_TARGET(FILE, TYPE, PARSE, CHECK, DESTROY)                                    \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {                                 \
        uint8_t *buf = td_fuzz_copy(data, size);                                                   \
        if (!buf) return 0;                                                                        \
        td_err_t err = {0};                                                                        \
        TYPE *obj = PARSE(buf, size, FILE, &err);                                                  \
        if (obj) {                                                                                 \
            CHECK(obj, buf, size);                                                                 \
            DESTROY(&obj);                                                                         \
        } else {                                                                                   \
            td_fuzz_check_named(&err, FILE);                                                       \
        }                                                                                          \
        free(buf);                                                                                 \
        return 0;                                                                                  \
    }

#endif
