/* cmd_drafter.c - `tandem-drafter` / `tandem drafter`: the long-running drafter worker. */
#include <stdio.h>

#include "bridge/cli.h"
#include "bridge/commands.h"
#include "drafter/service.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t s_stop;
static void s_on_signal(int sig) {
    (void)sig;
    s_stop = 1;
}

static void s_help(FILE *f) {
    fprintf(
        f,
        "usage: tandem-drafter --model DIR --bind ENDPOINT [options]\n\n"
        "Serves draft proposals for many sessions until SIGINT/SIGTERM. A diffusion LM drafts\n"
        "blocks (specdiff, apd); a causal LM drafts autoregressively (spec-ar).\n\n"
        "options:\n"
        "  --model DIR        the drafter checkpoint\n"
        "  --bind ENDPOINT    tcp://127.0.0.1:5555, ipc:///tmp/drafter.sock, ... Without "
        "--curve-key a\n"
        "                     tcp endpoint must be loopback\n"
        "  --curve-key F      serve with CURVE encryption using this secret key (tandem keygen)\n"
        "  --curve-allow F    accept only the client public keys listed in F (one Z85 key per "
        "line)\n"
        "  --max-sessions N   concurrent sessions (default 8; the least recently used is evicted)\n"
        "  --ctx N            positions per session (default min(model context, 2048))\n"
        "  --exact            diffusion drafts without the prefix cache (slower)\n"
        "  --predraft         after each proposal, draft the next round ahead (assuming every "
        "token\n"
        "                     is accepted and guessing the bonus) while the verifier verifies\n"
        "  --threads N        CPU threads (default: all cores)\n"
        "  --device N         CUDA device (default -1: CPU)\n");
}

int td_cmd_drafter(int argc, char **argv) {
    const char *model = NULL, *bind = NULL, *ckey = NULL, *callow = NULL, *pos;
    long threads = 0, sessions = 8, ctx = 0, device = -1;
    int exact = 0, predraft = 0, r;
    td_opts_t o;
    td_opts_init(&o, argc, argv);
    while ((r = td_opts_next(&o, &pos)) != 0) {
        if (r < 0) {
            fprintf(stderr, "tandem-drafter: unexpected argument '%s'\n", pos);
            return 2;
        }
        if (td_opts_is(&o, "help") || td_opts_is(&o, "h")) {
            s_help(stdout);
            return 0;
        } else if (td_opts_is(&o, "model")) {
            if (!(model = td_opts_value(&o))) return 2;
        } else if (td_opts_is(&o, "bind")) {
            if (!(bind = td_opts_value(&o))) return 2;
        } else if (td_opts_is(&o, "curve-key")) {
            if (!(ckey = td_opts_value(&o))) return 2;
        } else if (td_opts_is(&o, "curve-allow")) {
            if (!(callow = td_opts_value(&o))) return 2;
        } else if (td_opts_is(&o, "max-sessions")) {
            if (td_opts_int(&o, 1, 4096, &sessions)) return 2;
        } else if (td_opts_is(&o, "ctx")) {
            if (td_opts_int(&o, 1, 1 << 22, &ctx)) return 2;
        } else if (td_opts_is(&o, "threads")) {
            if (td_opts_int(&o, 0, 1024, &threads)) return 2;
        } else if (td_opts_is(&o, "device")) {
            if (td_opts_int(&o, -1, 64, &device)) return 2;
        } else if (td_opts_is(&o, "exact")) {
            exact = 1;
        } else if (td_opts_is(&o, "predraft")) {
            predraft = 1;
        } else {
            fprintf(stderr, "tandem-drafter: unknown option --%s (see --help)\n", o.name);
            return 2;
        }
    }
    if (!model || !bind) {
        fprintf(stderr, "tandem-drafter: need --model DIR and --bind ENDPOINT (see --help)\n");
        return 2;
    }
    td_backend_t *be;
    td_model_t *m;
    td_tokenizer_t *tok;
    if (td_cli_load_on(model, (int)device, (int)threads, &be, &m, &tok)) return 1;
    td_err_t err = {0};
    td_drafter_opts_t dopts = {.max_sessions = (int)sessions,
                               .n_ctx = (int)ctx,
                               .model_id = model,
                               .exact = exact,
                               .predraft = predraft};
    td_drafter_service_t *svc = td_drafter_service_new(m, tok, &dopts, &err);
    td_transport_opts_t to = {
        .curve_secret_key = ckey, .curve_allow_file = callow, .heartbeat_ivl_ms = 1000};
    td_server_t *srv = svc ? td_server_new(bind, &to, &err) : NULL;
    int rc = 1;
    if (!srv) {
        fprintf(stderr, "tandem-drafter: %s\n", err.msg);
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    fprintf(stderr, "tandem-drafter: %s (%s) serving on %s\n", model,
            td_arch_name(td_model_config(m)->arch), td_server_endpoint(srv));
    td_drafter_serve(svc, srv, &s_stop);
    fprintf(stderr, "tandem-drafter: shutting down\n");
    rc = 0;
out:
    td_server_destroy(&srv);
    td_drafter_service_destroy(&svc);
    td_tokenizer_destroy(&tok);
    td_model_destroy(&m);
    td_backend_destroy(&be);
    return rc;
}
