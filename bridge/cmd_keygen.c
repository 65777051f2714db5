/* cmd_keygen.c - `tandem keygen --out NAME`: a CURVE key pair for encrypted, authenticated links.
 *
 * Writes NAME.key (the secret key, mode 0600) and NAME.pub (the public key), both Z85 text. A
 * worker serving other hosts is given its NAME.key and an allow file listing its clients' public
 * keys; a client is given the server's NAME.pub and its own NAME.key (docs/protocol.md). */
#include "protocol/transport.h"

#include <stdio.h>
#include <string.h>

int td_cmd_keygen(int argc, char **argv);

static void s_usage(FILE *f) {
    fprintf(f,
            "usage: tandem keygen --out NAME [--force]\n\n"
            "  --out NAME   write NAME.key (secret key, mode 0600) and NAME.pub (public key)\n"
            "  --force      overwrite existing files\n"
            "  -h, --help   this help\n\n"
            "The keys are CURVE keys in Z85 text. Give a worker its NAME.key (and an allow file\n"
            "holding one client public key per line) to serve tcp on other interfaces than\n"
            "loopback; give each client the server's NAME.pub and its own NAME.key.\n"
            "Exit status: 0 ok, 1 failure (files exist, cannot write, no CURVE), 2 usage.\n");
}

int td_cmd_keygen(int argc, char **argv) {
    const char *out = NULL;
    int force = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--force")) {
            force = 1;
        } else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            out = argv[++i];
        } else if (!strncmp(argv[i], "--out=", 6)) {
            out = argv[i] + 6;
        } else {
            fprintf(stderr, "tandem keygen: unknown or incomplete option '%s'\n\n", argv[i]);
            s_usage(stderr);
            return 2;
        }
    }
    if (!out || !*out) {
        fprintf(stderr, "tandem keygen: --out NAME is required\n\n");
        s_usage(stderr);
        return 2;
    }
    char pub[41];
    td_err_t err = {0};
    if (td_curve_keygen(out, force, pub, &err) != TD_OK) {
        fprintf(stderr, "tandem keygen: %s\n", err.msg);
        return 1;
    }
    printf("secret key: %s.key (keep it private)\npublic key: %s.pub\n%s\n", out, out, pub);
    return 0;
}
