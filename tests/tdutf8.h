/* tdutf8.h - the UTF-8 oracle of the tokenizer checks (tests/test_tokenizer.c and
 * fuzz/fuzz_tokenizer.c): written apart from model/tokenizer.c's decoder on purpose, so a bug
 * there cannot hide in the check. Header only: the fuzz targets link no test objects. */
#ifndef TD_TDUTF8_H
#define TD_TDUTF8_H

#include <stddef.h>
#include <stdint.h>

/* 1 when s[0..n) is well-formed UTF-8 (no overlongs, no surrogates, nothing past U+10FFFF). */
static inline int td_test_utf8_valid(const char *s, size_t n) {
    const uint8_t *p = (const uint8_t *)s;
    for (size_t i = 0; i < n;) {
        uint8_t c = p[i];
        size_t need = c < 0x80                 ? 1
                      : c >= 0xc2 && c <= 0xdf ? 2
                      : c >= 0xe0 && c <= 0xef ? 3
                      : c >= 0xf0 && c <= 0xf4 ? 4
                                               : 0;
        if (!need || i + need > n) return 0;
        for (size_t k = 1; k < need; k++)
            if ((p[i + k] & 0xc0) != 0x80) return 0;
        if (c == 0xe0 && p[i + 1] < 0xa0) return 0;
        if (c == 0xed && p[i + 1] > 0x9f) return 0;
        if (c == 0xf0 && p[i + 1] < 0x90) return 0;
        if (c == 0xf4 && p[i + 1] > 0x8f) return 0;
        i += need;
    }
    return 1;
}

#endif
