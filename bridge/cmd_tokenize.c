/* cmd_tokenize.c - `tandem tokenize`: text -> token ids and pieces, or ids -> text.
 *
 * Loads only the tokenizer (a model directory holding tokenizer.json, or the file itself), so it
 * works on any checkpoint without reading weights. */
#include "model/checkpoint.h"
#include "bridge/cli.h"
#include "bridge/commands.h"
#include "model/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void s_usage(FILE *f) {
    fprintf(
        f,
        "usage: tandem tokenize --model DIR (--text T | --file PATH) [--json] [--no-special]\n"
        "       tandem tokenize --model DIR --decode \"ID ID ...\" [--skip-special]\n\n"
        "  --model DIR       model directory with tokenizer.json, the tokenizer.json file, or a\n"
        "                    .gguf file (its tokenizer.ggml.* metadata)\n"
        "  --text T          text to encode (\"-\" reads stdin)\n"
        "  --file PATH       read the text to encode from a file (\"-\" for stdin)\n"
        "  --json            print {\"ids\":[...],\"pieces\":[...]} instead of one token per "
        "line\n"
        "  --no-special      treat special tokens written in the text (e.g. <|im_end|>) as "
        "plain text\n"
        "  --decode IDS      decode ids (separated by spaces or commas) and print the text\n"
        "  --ids IDS         same as --decode\n"
        "  --skip-special    with --decode: leave special tokens out of the text\n"
        "  -h, --help        this help\n\n"
        "Without --json each token prints as `ID<TAB>\"PIECE\"`, PIECE being the text the token\n"
        "stands for, with \\n \\t \\r \\\\ \\\" escaped and bytes that are not a whole UTF-8\n"
        "character (or are control characters) shown as \\xNN. The last line counts the "
        "tokens.\n"
        "Exit status: 0 ok, 1 failure (bad tokenizer, invalid UTF-8, unknown id), 2 usage.\n");
}

/* Length of the well-formed UTF-8 character at s (n bytes left), 0 when ill-formed. */
static size_t s_utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    size_t need = c < 0x80                 ? 1
                  : c >= 0xc2 && c <= 0xdf ? 2
                  : c >= 0xe0 && c <= 0xef ? 3
                  : c >= 0xf0 && c <= 0xf4 ? 4
                                           : 0;
    if (!need || need > n) return 0;
    for (size_t k = 1; k < need; k++)
        if ((s[k] & 0xc0) != 0x80) return 0;
    if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f) || (c == 0xf0 && s[1] < 0x90) ||
        (c == 0xf4 && s[1] > 0x8f))
        return 0;
    return need;
}

/* Prints bytes escaped; json selects JSON string escapes (\u00XX for control characters). */
static void s_print_escaped(FILE *f, const char *p, size_t n, int json) {
    const unsigned char *s = (const unsigned char *)p;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t k = s_utf8_len(s + i, n - i);
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (k == 1 && (c < 0x20 || c == 0x7f))
            fprintf(f, json ? "\\u%04x" : "\\x%02x", c);
        else if (k == 0)
            fprintf(f, json ? "\\\\x%02x" : "\\x%02x", c); /* part of a character */
        else {
            fwrite(s + i, 1, k, f);
            i += k;
            continue;
        }
        i++;
    }
    fputc('"', f);
}

static int s_decode(const td_tokenizer_t *tok, const char *list, int skip_special) {
    size_t cap = strlen(list) / 2 + 2;
    int32_t *ids = malloc(cap * sizeof *ids);
    int n = 0;
    const char *p = list;
    if (!ids) return 1;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n' || *p == '[' || *p == ']') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < -2147483647L || v > 2147483647L) {
            fprintf(stderr, "tandem tokenize: --decode: '%.20s' is not a token id\n", p);
            free(ids);
            return 2;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    char *text = NULL;
    size_t len = 0;
    td_err_t err = {0};
    int rc = td_tokenizer_decode(tok, ids, n, skip_special, &text, &len, &err);
    free(ids);
    if (rc) {
        fprintf(stderr, "tandem tokenize: %s\n", err.msg);
        return 1;
    }
    fwrite(text, 1, len, stdout);
    fputc('\n', stdout);
    free(text);
    return 0;
}

static int s_encode(const td_tokenizer_t *tok, const char *text, size_t len, int json,
                    int parse_special) {
    int32_t *ids = NULL;
    int n = 0;
    td_err_t err = {0};
    if (td_tokenizer_encode(tok, text, len, parse_special, &ids, &n, &err)) {
        fprintf(stderr, "tandem tokenize: %s\n", err.msg);
        return 1;
    }
    if (json) {
        fputs("{\"ids\":[", stdout);
        for (int i = 0; i < n; i++) printf("%s%d", i ? "," : "", (int)ids[i]);
        fputs("],\"pieces\":[", stdout);
    }
    for (int i = 0; i < n; i++) {
        size_t bl = 0;
        const char *b = td_tokenizer_token_bytes(tok, ids[i], &bl);
        if (json) {
            if (i) fputc(',', stdout);
            s_print_escaped(stdout, b ? b : "", b ? bl : 0, 1);
        } else {
            printf("%d\t", (int)ids[i]);
            s_print_escaped(stdout, b ? b : "", b ? bl : 0, 0);
            fputc('\n', stdout);
        }
    }
    if (json)
        fputs("]}\n", stdout);
    else
        printf("%d tokens\n", n);
    free(ids);
    return 0;
}

int td_cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *text = NULL, *file = NULL, *decode = NULL;
    int json = 0, parse_special = 1, skip_special = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **want = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json"))
            json = 1;
        else if (!strcmp(a, "--no-special"))
            parse_special = 0;
        else if (!strcmp(a, "--skip-special"))
            skip_special = 1;
        else if (!strcmp(a, "--model"))
            want = &model;
        else if (!strcmp(a, "--text"))
            want = &text;
        else if (!strcmp(a, "--file"))
            want = &file;
        else if (!strcmp(a, "--decode") || !strcmp(a, "--ids"))
            want = &decode;
        else {
            fprintf(stderr, "tandem tokenize: unknown argument '%s'\n", a);
            s_usage(stderr);
            return 2;
        }
        if (want) {
            if (i + 1 >= argc) {
                fprintf(stderr, "tandem tokenize: %s needs a value\n", a);
                return 2;
            }
            *want = argv[++i];
        }
    }
    int inputs = (text != NULL) + (file != NULL) + (decode != NULL);
    if (!model || inputs != 1) {
        fprintf(stderr, "tandem tokenize: give --model and exactly one of --text, --file, "
                        "--decode\n");
        s_usage(stderr);
        return 2;
    }
    td_err_t err = {0};
    td_tokenizer_t *tok = td_checkpoint_tokenizer(model, &err);
    if (!tok) {
        fprintf(stderr, "tandem tokenize: %s\n", err.msg);
        return 1;
    }
    int rc;
    if (decode) {
        rc = s_decode(tok, decode, skip_special);
    } else {
        const char *path = file ? file : (strcmp(text, "-") == 0 ? "-" : NULL);
        char *buf = NULL;
        size_t len = 0;
        if (path) {
            FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
            if (!f) {
                fprintf(stderr, "tandem tokenize: cannot open %s: %s\n", path, strerror(errno));
                td_tokenizer_destroy(&tok);
                return 1;
            }
            buf = td_cli_read_stream(f, &len);
            if (f != stdin) fclose(f);
        }
        rc = path && !buf
                 ? 1
                 : s_encode(tok, path ? buf : text, path ? len : strlen(text), json, parse_special);
        free(buf);
    }
    td_tokenizer_destroy(&tok);
    return rc;
}
