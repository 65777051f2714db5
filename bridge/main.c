/* main.c - the `tandem` command: dispatches to its subcommands. */
#include "bridge/commands.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} s_cmds[] = {
    {"generate", td_cmd_generate,
     "generate text: ar, spec-ar, specdiff, apd, diffusion, selfspec, planned"},
    {"serve", td_cmd_serve,
     "OpenAI-compatible HTTP server (chat/completions, streaming, /metrics)"},
    {"bench", td_cmd_bench, "compare methods and settings on the same prompts (speedup over ar)"},
    {"score", td_cmd_score, "per-token log-probabilities and perplexity of a text"},
    {"tokenize", td_cmd_tokenize, "text -> token ids and pieces, or --decode ids -> text"},
    {"keygen", td_cmd_keygen,
     "make a CURVE key pair (NAME.key, NAME.pub) for encrypted, authenticated links"},
    {"drafter", td_cmd_drafter, "run a drafter worker (same as tandem-drafter)"},
    {"verifier", td_cmd_verifier, "run a verifier worker (same as tandem-verifier)"},
    {"inspect", td_cmd_inspect,
     "architecture, parameters, dtypes, tensors and memory of a checkpoint"},
};

static void s_usage(FILE *f) {
    fprintf(f, "usage: tandem <command> [options]   (tandem <command> --help for its options)\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof s_cmds / sizeof s_cmds[0]; i++)
        fprintf(f, "  %-10s %s\n", s_cmds[i].name, s_cmds[i].help);
    fprintf(f, "\nModels are HuggingFace checkpoint directories (config.json, *.safetensors, "
               "tokenizer.json)\nor GGUF files (MODEL.gguf) wherever a DIR is asked "
               "for.\nEnvironment: TD_LOG=error|warn|info|debug.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        s_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        s_usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof s_cmds / sizeof s_cmds[0]; i++)
        if (!strcmp(argv[1], s_cmds[i].name)) return s_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "tandem: unknown command '%s'\n\n", argv[1]);
    s_usage(stderr);
    return 2;
}
