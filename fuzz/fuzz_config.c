/* fuzz_config.c - libFuzzer target: td_config_parse on arbitrary bytes.
 *
 * Parsing must never crash or read past len; on success the result must satisfy the invariants
 * td_config_parse promises (sizes positive, heads divisible by key/value heads, token ids in the
 * vocabulary or -1, a mask token for every diffusion LM). */
#include "fuzz/fuzz_common.h"
#include "model/config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *buf = td_fuzz_copy(data, size); /* not NUL-terminated: len must be honoured */
    if (!buf) return 0;
    td_config_t cfg;
    td_err_t err = {0};
    int rc = td_config_parse(buf, size, &cfg, &err);
    if (rc == TD_OK) {
        if (cfg.n_vocab <= 0 || cfg.n_embd <= 0 || cfg.n_layer <= 0 || cfg.n_head <= 0 ||
            cfg.n_kv_head <= 0 || cfg.head_dim <= 0 || cfg.n_ff <= 0 ||
            cfg.n_head % cfg.n_kv_head != 0 || (unsigned)cfg.arch >= TD_ARCH_COUNT)
            abort();
        if (cfg.n_vocab >= (1 << 24) || cfg.mask_token_id >= cfg.n_vocab ||
            cfg.eos_token_id >= cfg.n_vocab || cfg.bos_token_id >= cfg.n_vocab ||
            cfg.pad_token_id >= cfg.n_vocab || (cfg.is_diffusion && cfg.mask_token_id < 0))
            abort();
        if (cfg.pos == TD_POS_ROPE && cfg.head_dim % 2) abort();
        if (!memchr(cfg.arch_name, 0, sizeof cfg.arch_name)) abort();
    } else if (!err.msg[0] || rc != err.code) {
        abort();
    }
    free(buf);
    return 0;
}
