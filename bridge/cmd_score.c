/* cmd_score.c - `tandem score`: per-token log-probabilities and perplexity of a text. */
#include <stdio.h>

#include "bridge/cli.h"
#include "bridge/commands.h"
#include "model/score.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void s_help(FILE *f) {
    fprintf(
        f,
        "usage: tandem score --model DIR (--text T | --file F) [options]\n\n"
        "Causal LMs: the log-probability of every token given the ones before it, and the\n"
        "perplexity exp(-mean log p) over the scored tokens (the first token of each window has "
        "no\n"
        "context and is not scored).\n"
        "Diffusion LMs (Dream, LLaDA, DiffuGPT): the masked-token log-likelihood: --draws times, "
        "a\n"
        "random fraction --mask-ratio of the positions is replaced by the mask token, the sequence "
        "is\n"
        "run once with bidirectional attention, and the log-probability of each true token at a\n"
        "masked position is summed; the masked perplexity is exp(-sum / count). With a logit "
        "shift\n"
        "(Dream, DiffuGPT) position 0 is never masked.\n\n"
        "options:\n"
        "  --model DIR        checkpoint directory (config.json, safetensors, tokenizer.json) or "
        "a\n"
        "                     .gguf file\n"
        "  --text T           text to score\n"
        "  --file F           read the text from F ('-' = stdin)\n"
        "  --window N         causal: score in non-overlapping windows of N tokens, each from its\n"
        "                     own start (default: the model's context, or the whole text)\n"
        "  --mask-ratio R     diffusion: fraction of positions masked per draw (default 0.15)\n"
        "  --draws N          diffusion: number of random maskings (default 1)\n"
        "  --seed S           diffusion: seed of the maskings (default 0)\n"
        "  --threads N        CPU threads (default: all cores)\n"
        "  --json             one JSON object: tokens, logprobs, n_scored, mean_logprob, "
        "perplexity\n"
        "  --summary          print only the summary line (no per-token lines)\n");
}

int td_cmd_score(int argc, char **argv) {
    const char *model = NULL, *text = NULL, *file = NULL;
    long window = 0, draws = 1, seed = 0, threads = 0;
    double ratio = 0.15;
    int json = 0, summary = 0;
    const td_opt_spec_t spec[] = {
        {"model", TD_OPT_STR, &model, 0, 0},
        {"text", TD_OPT_STR, &text, 0, 0},
        {"file", TD_OPT_STR, &file, 0, 0},
        {"window", TD_OPT_INT, &window, 0, 1 << 24},
        {"mask-ratio", TD_OPT_FLT, &ratio, 1e-6, 1.0},
        {"draws", TD_OPT_INT, &draws, 1, 1 << 20},
        {"seed", TD_OPT_INT, &seed, 0, 0x7fffffffL},
        {"threads", TD_OPT_INT, &threads, 0, 1024},
        {"json", TD_OPT_FLAG, &json, 0, 0},
        {"summary", TD_OPT_FLAG, &summary, 0, 0},
    };
    int ec = TD_CLI_OPTS(argc, argv, spec, s_help);
    if (ec >= 0) return ec;
    if (!model || (!text == !file)) {
        fprintf(stderr,
                "tandem score: need --model and exactly one of --text / --file (see --help)\n");
        return 2;
    }
    size_t len = 0;
    char *buf = NULL;
    if (file) {
        if (!(buf = td_cli_read_text(file, &len))) return 1;
        text = buf;
    } else {
        len = strlen(text);
    }
    td_backend_t *be;
    td_model_t *m;
    td_tokenizer_t *tok;
    if (td_cli_load(model, (int)threads, &be, &m, &tok)) {
        free(buf);
        return 1;
    }
    const td_config_t *c = td_model_config(m);
    td_err_t err = {0};
    int32_t *ids = NULL;
    int n = 0, rc = 1;
    if (td_tokenizer_encode(tok, text, len, 0, &ids, &n, &err) != TD_OK) {
        fprintf(stderr, "tandem score: %s\n", err.msg);
        goto out;
    }
    if (n < 2) {
        fprintf(stderr, "tandem score: the text has %d token(s); need at least 2\n", n);
        goto out;
    }
    if (!c->is_diffusion) {
        int win = (int)window;
        if (win <= 0 && c->n_ctx_train > 0 && n > c->n_ctx_train) win = c->n_ctx_train;
        if (c->n_ctx_train > 0 && win > c->n_ctx_train) {
            fprintf(stderr, "tandem score: --window %d exceeds the model's context %d\n", win,
                    c->n_ctx_train);
            goto out;
        }
        float *lp = malloc((size_t)n * sizeof *lp);
        int scored = 0;
        if (!lp || td_score_causal(m, ids, n, win, lp, &scored, &err) != TD_OK) {
            fprintf(stderr, "tandem score: %s\n", lp ? err.msg : "out of memory");
            free(lp);
            goto out;
        }
        double sum = 0;
        for (int i = 0; i < n; i++)
            if (!isnan(lp[i])) sum += lp[i];
        double mean = scored ? sum / scored : 0, ppl = exp(-mean);
        if (json) {
            printf("{\"model\":");
            td_cli_json_str(stdout, model, strlen(model));
            printf(
                ",\"kind\":\"causal\",\"n_tokens\":%d,\"n_scored\":%d,\"window\":%d,\"tokens\":[",
                n, scored, win > 0 ? win : n);
            for (int i = 0; i < n; i++) printf("%s%d", i ? "," : "", ids[i]);
            printf("],\"logprobs\":[");
            for (int i = 0; i < n; i++) {
                if (isnan(lp[i]))
                    printf("%snull", i ? "," : "");
                else
                    printf("%s%.6f", i ? "," : "", lp[i]);
            }
            printf("],\"sum_logprob\":%.6f,\"mean_logprob\":%.6f,\"perplexity\":%.6f}\n", sum, mean,
                   ppl);
        } else {
            if (!summary)
                for (int i = 0; i < n; i++) {
                    char *piece = NULL;
                    size_t pl = 0;
                    td_tokenizer_decode(tok, ids + i, 1, 0, &piece, &pl, NULL);
                    char lps[32] = "-";
                    if (!isnan(lp[i])) snprintf(lps, sizeof lps, "%.4f", lp[i]);
                    printf("%6d %8d %10s  ", i, ids[i], lps);
                    td_cli_json_str(stdout, piece ? piece : "", piece ? pl : 0);
                    printf("\n");
                    free(piece);
                }
            printf("tokens %d, scored %d, mean log-prob %.4f, perplexity %.4f\n", n, scored, mean,
                   ppl);
        }
        free(lp);
        rc = 0;
    } else {
        double total = 0;
        int64_t count = 0;
        if (td_score_masked(m, ids, n, (float)ratio, (int)draws, (uint64_t)seed, &total, &count,
                            &err) != TD_OK) {
            fprintf(stderr, "tandem score: %s\n", err.msg);
            goto out;
        }
        double mean = count ? total / (double)count : 0, ppl = exp(-mean);
        if (json) {
            printf("{\"model\":");
            td_cli_json_str(stdout, model, strlen(model));
            printf(",\"kind\":\"masked\",\"n_tokens\":%d,\"mask_ratio\":%g,\"draws\":%ld,"
                   "\"seed\":%ld,\"n_scored\":%lld,\"sum_logprob\":%.6f,\"mean_logprob\":%.6f,"
                   "\"perplexity\":%.6f}\n",
                   n, ratio, draws, seed, (long long)count, total, mean, ppl);
        } else
            printf("tokens %d, masked-token log-likelihood at ratio %.3f over %ld draw(s): %lld "
                   "tokens, "
                   "mean log-prob %.4f, masked perplexity %.4f\n",
                   n, ratio, draws, (long long)count, mean, ppl);
        rc = 0;
    }
out:
    free(ids);
    free(buf);
    td_tokenizer_destroy(&tok);
    td_model_destroy(&m);
    td_backend_destroy(&be);
    return rc;
}
