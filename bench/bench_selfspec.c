/* bench_selfspec.c - selfspec against the stepwise greedy decoder it must reproduce: same prompts
 * (bench/prompts.txt), identical output checked, forwards and wall-clock compared side by side.
 * Usage: build/bench/bench_selfspec [MODEL_DIR] (default models/tiny-diffusion-drafter). */
#include "model/checkpoint.h"
#include "drafter/selfspec.h"
#include "model/tokenizer.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "models/tiny-diffusion-drafter";
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(1, 0, &err);
    td_model_t *m = td_model_load(dir, be, &err);
    td_tokenizer_t *tok = td_checkpoint_tokenizer(dir, &err);
    if (!m || !tok) {
        fprintf(stderr, "bench_selfspec: %s\n", err.msg);
        return 1;
    }
    FILE *f = fopen("bench/prompts.txt", "r");
    if (!f) {
        perror("bench/prompts.txt");
        return 1;
    }
    char line[1024];
    double ts = 0, tr = 0;
    long fs = 0, fr = 0, tk = 0;
    int same = 1, np = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        line[strcspn(line, "\n")] = 0;
        int32_t *ids;
        int n;
        td_tokenizer_encode(tok, line, strlen(line), 0, &ids, &n, &err);
        td_selfspec_params_t p = td_selfspec_params_default();
        p.max_tokens = 64;
        int32_t a[64], b[64];
        td_selfspec_stats_t s1, s2;
        double t0 = td_time_now();
        td_stepwise_greedy_generate(m, ids, n, &p, a, &s1, &err);
        double t1 = td_time_now();
        td_selfspec_generate(m, ids, n, &p, b, &s2, &err);
        double t2 = td_time_now();
        tr += t1 - t0;
        ts += t2 - t1;
        fr += s1.forwards;
        fs += s2.forwards;
        tk += s1.generated;
        same &= s1.generated == s2.generated && !memcmp(a, b, sizeof(int32_t) * s1.generated);
        np++;
        free(ids);
    }
    printf("%d prompts, %ld tokens: stepwise greedy %ld forwards %.2f s (%.1f tok/s); selfspec %ld "
           "forwards %.2f s (%.1f tok/s); forwards saved %.1f%%, wall-clock speedup %.2fx, "
           "identical=%d\n",
           np, tk, fr, tr, tk / tr, fs, ts, tk / ts, 100.0 * (fr - fs) / fr, tr / ts, same);
}
