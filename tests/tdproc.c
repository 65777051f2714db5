/* tdproc.c - process helpers for the tests (see tdproc.h). */
#include "tests/tdproc.h"

#include "tests/tdtest.h"

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

pid_t td_test_spawn_worker(const char *name, const char *model, const char *ep,
                           const char *const *extra) {
    const char *bin = td_test_bin(name);
    const char *argv[16] = {bin, "--model", model, "--bind", ep, "--threads", "1"};
    int n = 7;
    for (int i = 0; extra && extra[i] && n < 15; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        setenv("TD_LOG", "error", 1);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

void td_test_stop(pid_t pid, int sig) {
    if (pid <= 0) return;
    kill(pid, sig);
    waitpid(pid, NULL, 0);
}

int td_test_rmtree(const char *dir) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) == 0) return 0;
    fprintf(stderr, "cleanup of %s failed\n", dir);
    return -1;
}

int td_test_pair_open_retry(td_pair_t *pair, const char *vdir, const char *ep,
                            const td_pair_opts_t *po, int tries, td_err_t *err) {
    int rc = TD_ERR;
    for (int i = 0; i < tries; i++) {
        if ((rc = td_pair_open(pair, vdir, ep, po, err)) == TD_OK) return TD_OK;
        td_pair_close(pair);
        usleep(100 * 1000);
    }
    return rc;
}

int td_test_run_retry(const char *cmd, char *out, size_t cap, int tries) {
    int rc = -1;
    for (int i = 0; i < tries && rc != 0; i++) {
        rc = td_test_run(cmd, out, cap);
        if (rc != 0) usleep(100 * 1000);
    }
    return rc;
}

void td_test_check_same_tokens(const char *a, const char *b, size_t min_len) {
    cJSON *ja = cJSON_Parse(a), *jb = cJSON_Parse(b);
    CHECK_MSG(ja && jb, "not JSON: %s / %s", a, b);
    if (ja && jb) {
        char *ta = cJSON_PrintUnformatted(cJSON_GetObjectItem(ja, "tokens")),
             *tb = cJSON_PrintUnformatted(cJSON_GetObjectItem(jb, "tokens"));
        CHECK_MSG(ta && tb && !strcmp(ta, tb), "tokens differ: %s vs %s", ta, tb);
        CHECK_MSG(ta && strlen(ta) > min_len, "tokens too short: %s", ta ? ta : "(none)");
        free(ta);
        free(tb);
    }
    cJSON_Delete(ja);
    cJSON_Delete(jb);
}

int td_test_flip_byte(const char *dir, const char *name, long from_end) {
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r+b");
    if (!f) return -1;
    int c = fseek(f, -from_end, SEEK_END) == 0 ? fgetc(f) : EOF;
    if (c != EOF && fseek(f, -from_end, SEEK_END) == 0) fputc(c ^ 1, f);
    return fclose(f) == 0 && c != EOF ? 0 : -1;
}
