/* cmd_drafter.c - `tandem-drafter` / `tandem drafter`: the long-running drafter worker. */
#include <stdio.h>

#include "bridge/cli.h"
#include "bridge/commands.h"
#include "bridge/pair.h"
#include "drafter/dflash.h"
#include "drafter/service.h"
#include "model/checkpoint.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

static void s_help(FILE *f) {
    fprintf(
        f,
        "usage: tandem-drafter --model DIR --bind ENDPOINT [options]\n\n"
        "Serves draft proposals for many sessions until SIGINT/SIGTERM. A diffusion LM drafts\n"
        "blocks (specdiff, apd); a causal LM drafts autoregressively (spec-ar).\n\n"
        "options:\n"
        "  --model DIR        the drafter checkpoint (a DFlash drafter directory needs --target)\n"
        "  --target FILE      DFlash: the target model (GGUF file or directory) whose embedding\n"
        "                     and LM head the drafter uses (read from it; a drafter with a draft\n"
        "                     vocabulary gathers those ids' rows of the head once, 3.6 MB for\n"
        "                     the SmolLM2 drafter)\n"
        "  --dflash-any-target  DFlash: pair with any target of the right shape, not only the\n"
        "                     fingerprints in the drafter's config.json\n"
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
        "  --spin-us N        waiting for the other side, poll without sleeping for up to N\n"
        "                     microseconds first (saves a thread wake-up per message, costs a "
        "busy\n"
        "                     core; 0 = off). Default: 5000 when the threads leave a core, else 0\n"
        "  --device N         CUDA device (default -1: CPU)\n");
}

int td_cmd_drafter(int argc, char **argv) {
    const char *model = NULL, *bind = NULL, *ckey = NULL, *callow = NULL, *target = NULL;
    int any_target = 0;
    long threads = 0, sessions = 8, ctx = 0, device = -1, spin_us = -1;
    int exact = 0, predraft = 0;
    const td_opt_spec_t spec[] = {
        {"model", TD_OPT_STR, &model, 0, 0},
        {"bind", TD_OPT_STR, &bind, 0, 0},
        {"curve-key", TD_OPT_STR, &ckey, 0, 0},
        {"curve-allow", TD_OPT_STR, &callow, 0, 0},
        {"max-sessions", TD_OPT_INT, &sessions, 1, 4096},
        {"ctx", TD_OPT_INT, &ctx, 1, 1 << 22},
        {"spin-us", TD_OPT_INT, &spin_us, 0, 1000000},
        {"threads", TD_OPT_INT, &threads, 0, 1024},
        {"device", TD_OPT_INT, &device, -1, 64},
        {"exact", TD_OPT_FLAG, &exact, 0, 0},
        {"predraft", TD_OPT_FLAG, &predraft, 0, 0},
        {"target", TD_OPT_STR, &target, 0, 0},
        {"dflash-any-target", TD_OPT_FLAG, &any_target, 0, 0},
    };
    int ec = TD_CLI_OPTS(argc, argv, spec, s_help);
    if (ec >= 0) return ec;
    if (!model || !bind) {
        fprintf(stderr, "tandem-drafter: need --model DIR and --bind ENDPOINT (see --help)\n");
        return 2;
    }
    const int dflash = td_is_dflash_dir(model);
    if (dflash && !target) {
        fprintf(stderr, "tandem-drafter: %s is a DFlash drafter: give its target with --target "
                        "FILE\n",
                model);
        return 2;
    }
    td_backend_t *be;
    td_model_t *m;
    td_tokenizer_t *tok;
    /* a DFlash drafter computes on its target's backend with the target's embedding/LM head */
    if ((dflash ? td_cli_load_target_on : td_cli_load_on)(dflash ? target : model, (int)device,
                                                           (int)threads, &be, &m, &tok))
        return 1;
    td_err_t err = {0};
    td_dflash_t *df = NULL;
    if (dflash) {
        uint64_t fp = 0;
        if (td_checkpoint_fingerprint(target, &fp, &err) == TD_OK)
            df = td_dflash_load(model, m, fp, any_target, &err);
        if (!df) {
            fprintf(stderr, "tandem-drafter: %s with target %s: %s\n", model, target, err.msg);
            td_tokenizer_destroy(&tok);
            td_model_destroy(&m);
            td_backend_destroy(&be);
            return 1;
        }
    }
    td_drafter_opts_t dopts = {.max_sessions = (int)sessions,
                               .n_ctx = (int)ctx,
                               .model_id = model,
                               .exact = exact,
                               .predraft = predraft,
                               .dflash = df,
                               .dflash_any_target = any_target};
    td_drafter_service_t *svc = td_drafter_service_new(m, tok, &dopts, &err);
    td_transport_opts_t to = {
        .curve_secret_key = ckey, .curve_allow_file = callow, .heartbeat_ivl_ms = 1000};
    /* auto: spin when this drafter's threads leave a core for the waiting thread */
    to.spin_us = spin_us >= 0
                     ? (int)spin_us
                     : td_cli_auto_spin_us((threads > 0 ? (int)threads : td_cli_n_cores()) + 1);
    td_server_t *srv = svc ? td_server_new(bind, &to, &err) : NULL;
    int rc = 1;
    if (!srv) {
        fprintf(stderr, "tandem-drafter: %s\n", err.msg);
        goto out;
    }
    volatile sig_atomic_t *stop = td_cli_stop_on_signals();
    fprintf(stderr, "tandem-drafter: %s (%s) serving on %s\n", model,
            td_arch_name(td_model_config(m)->arch), td_server_endpoint(srv));
    td_drafter_serve(svc, srv, stop);
    fprintf(stderr, "tandem-drafter: shutting down\n");
    rc = 0;
out:
    td_server_destroy(&srv);
    td_drafter_service_destroy(&svc);
    td_dflash_destroy(&df);
    td_tokenizer_destroy(&tok);
    td_model_destroy(&m);
    td_backend_destroy(&be);
    return rc;
}
