/* test_serve.c - `tandem serve`: the request parser, error bodies, stop strings and key compare
 * (pure), then end-to-end against a real `tandem serve` (the binary beside this test's build dir)
 * with curl: completions and chat, streaming and not, stop strings, seed replay, usage, 8
 * concurrent clients (each answer equal to the same request alone), a client that disconnects,
 * bad requests, 413, 401, a full queue (503 + Retry-After), SIGTERM with a request in flight; and
 * with the official `openai` Python package (installed into BUILD/venv-openai; skipped when pip
 * cannot reach PyPI). */
#include "bridge/serve_req.h"
#include "common/td_common.h"
#include "tests/tdtest.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- pure: parser -------------------------------------------------------------------------- */

static int s_parse(const char *body, td_serve_kind_t k, td_serve_req_t *r, td_serve_error_t *e) {
    memset(e, 0, sizeof *e);
    return td_serve_req_parse(body, strlen(body), k, r, e);
}

TD_TEST(parse_chat_full) {
    td_serve_req_t r;
    td_serve_error_t e;
    const char *b =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hel\"},{\"type\":\"text\","
        "\"text\":\"lo\"}]}],\"max_completion_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,"
        "\"seed\":42,\"stop\":[\"a\",\"\",\"bc\"],\"stream\":true,\"stream_options\":"
        "{\"include_usage\":true},\"n\":1,\"user\":\"ignored\",\"tandem\":{\"method\":\"ar\","
        "\"gamma\":4,\"steps\":2,\"order\":\"confidence\",\"verify\":\"match\",\"top_k\":5}}";
    REQUIRE(s_parse(b, TD_SERVE_CHAT, &r, &e) == 0);
    CHECK_STR(r.model, "m");
    CHECK_EQ_INT(r.n_msgs, 2);
    CHECK_STR(r.msgs[0].role, "system");
    CHECK_STR(r.msgs[1].content, "hello");
    CHECK_EQ_INT(r.max_tokens, 7);
    CHECK_NEAR(r.temperature, 0.5, 1e-12);
    CHECK_NEAR(r.top_p, 0.9, 1e-12);
    CHECK(r.has_seed && r.seed == 42);
    CHECK_EQ_INT(r.n_stop, 2); /* "" is dropped */
    CHECK_STR(r.stop[1], "bc");
    CHECK(r.stream && r.include_usage);
    CHECK_STR(r.method, "ar");
    CHECK_EQ_INT(r.gamma, 4);
    CHECK_EQ_INT(r.steps, 2);
    CHECK_STR(r.order, "confidence");
    CHECK_STR(r.verify, "match");
    CHECK_EQ_INT(r.top_k, 5);
    td_serve_req_free(&r);
}

TD_TEST(parse_defaults_and_prompt_forms) {
    td_serve_req_t r;
    td_serve_error_t e;
    REQUIRE(s_parse("{\"prompt\":\"abc\"}", TD_SERVE_COMPLETION, &r, &e) == 0);
    CHECK_STR(r.prompt, "abc");
    CHECK_EQ_INT(r.max_tokens, -1);
    CHECK(r.temperature < 0 && r.top_p < 0 && !r.has_seed && !r.stream && r.n_stop == 0);
    CHECK(r.method == NULL && r.gamma == -1);
    td_serve_req_free(&r);
    REQUIRE(
        s_parse("{\"prompt\":[\"xy\"],\"stop\":\"q\",\"max_tokens\":3,\"max_completion_tokens\":"
                "null,\"developer\":1}",
                TD_SERVE_COMPLETION, &r, &e) == 0);
    CHECK_STR(r.prompt, "xy");
    CHECK_EQ_INT(r.n_stop, 1);
    CHECK_STR(r.stop[0], "q");
    CHECK_EQ_INT(r.max_tokens, 3);
    td_serve_req_free(&r);
    /* developer is the newer name of system */
    REQUIRE(s_parse("{\"messages\":[{\"role\":\"developer\",\"content\":\"x\"}]}", TD_SERVE_CHAT,
                    &r, &e) == 0);
    CHECK_STR(r.msgs[0].role, "system");
    td_serve_req_free(&r);
}

/* each body must be refused with status and param (NULL: JSON null) */
static void s_bad(const char *body, td_serve_kind_t k, int status, const char *param) {
    td_serve_req_t r;
    td_serve_error_t e;
    int rc = s_parse(body, k, &r, &e);
    CHECK_MSG(rc == -1, "accepted: %s", body);
    if (rc) {
        CHECK_MSG(e.status == status, "%s: status %d, expected %d", body, e.status, status);
        CHECK_MSG(!strcmp(e.param, param ? param : ""), "%s: param '%s', expected '%s'", body,
                  e.param, param ? param : "");
        CHECK_MSG(e.message[0] != 0, "%s: no message", body);
        CHECK(r.prompt == NULL && r.msgs == NULL && r.n_stop == 0);
    } else {
        td_serve_req_free(&r);
    }
}

TD_TEST(parse_rejects) {
    const td_serve_kind_t C = TD_SERVE_COMPLETION, H = TD_SERVE_CHAT;
    s_bad("", C, 400, NULL);
    s_bad("{\"prompt\":\"x\"", C, 400, NULL);
    s_bad("[1,2]", C, 400, NULL);
    s_bad("{}", C, 400, "prompt");
    s_bad("{}", H, 400, "messages");
    s_bad("{\"prompt\":5}", C, 400, "prompt");
    s_bad("{\"prompt\":[\"a\",\"b\"]}", C, 400, "prompt");
    s_bad("{\"prompt\":[1,2]}", C, 400, "prompt");
    s_bad("{\"messages\":[]}", H, 400, "messages");
    s_bad("{\"messages\":{}}", H, 400, "messages");
    s_bad("{\"messages\":[1]}", H, 400, "messages[0]");
    s_bad("{\"messages\":[{\"role\":\"user\"}]}", H, 400, "messages[0]");
    s_bad("{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}", H, 400, "messages[0]");
    s_bad("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", H, 400,
          "messages[0].content");
    s_bad("{\"prompt\":\"x\",\"temperature\":\"hot\"}", C, 400, "temperature");
    s_bad("{\"prompt\":\"x\",\"temperature\":3}", C, 400, "temperature");
    s_bad("{\"prompt\":\"x\",\"top_p\":1.5}", C, 400, "top_p");
    s_bad("{\"prompt\":\"x\",\"max_tokens\":-1}", C, 400, "max_tokens");
    s_bad("{\"prompt\":\"x\",\"max_tokens\":2.5}", C, 400, "max_tokens");
    s_bad("{\"prompt\":\"x\",\"seed\":\"1\"}", C, 400, "seed");
    s_bad("{\"prompt\":\"x\",\"n\":2}", C, 400, "n");
    s_bad("{\"prompt\":\"x\",\"best_of\":3}", C, 400, "best_of");
    s_bad("{\"prompt\":\"x\",\"echo\":true}", C, 400, "echo");
    s_bad("{\"prompt\":\"x\",\"logprobs\":2}", C, 400, "logprobs");
    s_bad("{\"prompt\":\"x\",\"stream\":1}", C, 400, "stream");
    s_bad("{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":true}}", C, 400,
          "stream_options");
    s_bad("{\"prompt\":\"x\",\"stop\":7}", C, 400, "stop");
    s_bad("{\"prompt\":\"x\",\"stop\":[\"a\",1]}", C, 400, "stop");
    s_bad(
        "{\"prompt\":\"x\",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\","
        "\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}",
        C, 400, "stop");
    s_bad("{\"prompt\":\"x\",\"frequency_penalty\":0.5}", C, 400, "frequency_penalty");
    s_bad("{\"prompt\":\"x\",\"tools\":[{\"type\":\"function\"}]}", C, 400, "tools");
    s_bad("{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_object\"}}", C, 400,
          "response_format");
    s_bad("{\"prompt\":\"x\",\"tandem\":[]}", C, 400, "tandem");
    s_bad("{\"prompt\":\"x\",\"tandem\":{\"gama\":4}}", C, 400, "tandem");
    s_bad("{\"prompt\":\"x\",\"tandem\":{\"gamma\":0}}", C, 400, "gamma");
    s_bad("{\"prompt\":\"x\",\"tandem\":{\"method\":3}}", C, 400, "method");
    /* not NUL-terminated: the length is honoured */
    td_serve_req_t r;
    td_serve_error_t e;
    const char body[] = "{\"prompt\":\"ok\"}GARBAGE";
    CHECK(td_serve_req_parse(body, 15, C, &r, &e) == 0);
    CHECK_STR(r.prompt, "ok");
    td_serve_req_free(&r);
    CHECK(td_serve_req_parse(body, 14, C, &r, &e) == -1);
}

TD_TEST(error_json_shape) {
    td_serve_error_t e;
    td_serve_fail(&e, 401, "authentication_error", "invalid_api_key", NULL, "no \"key\" %d", 1);
    char *s = td_serve_error_json(&e);
    REQUIRE(s);
    cJSON *j = cJSON_Parse(s), *o = cJSON_GetObjectItem(j, "error");
    REQUIRE(cJSON_IsObject(o));
    CHECK_STR(cJSON_GetObjectItem(o, "message")->valuestring, "no \"key\" 1");
    CHECK_STR(cJSON_GetObjectItem(o, "type")->valuestring, "authentication_error");
    CHECK_STR(cJSON_GetObjectItem(o, "code")->valuestring, "invalid_api_key");
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(o, "param")));
    CHECK_EQ_INT(e.status, 401);
    cJSON_Delete(j);
    free(s);
}

/* ---- pure: stop strings, keys ------------------------------------------------------------------
 */

/* Feeds text in pieces as a stream would and returns what went out (stops at a hit). */
static void s_stream_stop(const char *const *pieces, int n, char *const *stop, int n_stop,
                          char *out, int *hit_out) {
    char text[512] = "";
    size_t len = 0, emitted = 0;
    int hit = 0;
    out[0] = 0;
    for (int i = 0; i < n && !hit; i++) {
        size_t pl = strlen(pieces[i]);
        memcpy(text + len, pieces[i], pl + 1);
        len += pl;
        size_t ok = td_serve_stop_scan(text, len, emitted, stop, n_stop, &hit);
        CHECK(ok >= emitted && ok <= len);
        strncat(out, text + emitted, ok - emitted);
        emitted = ok;
        if (hit) len = ok;
    }
    if (!hit) strncat(out, text + emitted, len - emitted); /* the end releases what was held */
    *hit_out = hit;
}

TD_TEST(stop_strings_across_pieces) {
    char out[512];
    int hit;
    char *st1[] = {"END"};
    const char *p1[] = {"hello E", "N", "D world"};
    s_stream_stop(p1, 3, st1, 1, out, &hit);
    CHECK(hit);
    CHECK_STR(out, "hello ");
    /* a held-back prefix that does not complete goes out */
    const char *p2[] = {"abc E", "Nx", " tail"};
    s_stream_stop(p2, 3, st1, 1, out, &hit);
    CHECK(!hit);
    CHECK_STR(out, "abc ENx tail");
    /* the earliest of several wins; overlapping prefixes */
    char *st2[] = {"xyz", "aab", "b"};
    const char *p3[] = {"caa", "a", "ab!"};
    s_stream_stop(p3, 3, st2, 3, out, &hit);
    CHECK(hit);
    CHECK_STR(out, "caa");
    /* what is held back while it may still grow into a stop string */
    char *st3[] = {"<end>"};
    int h;
    CHECK_EQ_INT(td_serve_stop_scan("ab<en", 5, 0, st3, 1, &h), 2);
    CHECK(!h);
    CHECK_EQ_INT(td_serve_stop_scan("ab<", 3, 0, st3, 1, &h), 2);
    CHECK_EQ_INT(td_serve_stop_scan("ab<end>cd", 9, 2, st3, 1, &h), 2);
    CHECK(h);
    CHECK_EQ_INT(td_serve_stop_scan("abc", 3, 1, NULL, 0, &h), 3);
    CHECK(!h);
    /* the stop string at the very start */
    CHECK_EQ_INT(td_serve_stop_scan("<end>", 5, 0, st3, 1, &h), 0);
    CHECK(h);
}

TD_TEST(key_compare) {
    CHECK(td_serve_key_equal("secret", "secret"));
    CHECK(!td_serve_key_equal("secreT", "secret"));
    CHECK(!td_serve_key_equal("secre", "secret"));
    CHECK(!td_serve_key_equal("secret1", "secret"));
    CHECK(!td_serve_key_equal("", "secret"));
    CHECK(!td_serve_key_equal(NULL, "secret"));
}

/* ---- end to end ---------------------------------------------------------------------------- */

static char s_bin[2100], s_build[2048];

/* BUILD/bin/tandem beside this test (BUILD/tests/test_serve); 0 when found */
static int s_find_bin(void) {
    char exe[2048];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return -1;
    exe[n] = 0;
    char *sl = strrchr(exe, '/');
    if (!sl) return -1;
    *sl = 0;
    sl = strrchr(exe, '/');
    if (!sl) return -1;
    *sl = 0;
    snprintf(s_build, sizeof s_build, "%s", exe);
    snprintf(s_bin, sizeof s_bin, "%s/bin/tandem", exe);
    return access(s_bin, X_OK);
}

typedef struct srv {
    pid_t pid;
    int port;
    char log[256];
} srv_t;

/* Starts `tandem serve --port 0 ARGS`; waits for its "listening" line. 0 on success. */
static int s_start(srv_t *s, const char *args) {
    memset(s, 0, sizeof *s);
    snprintf(s->log, sizeof s->log, "/tmp/td_test_serve_%d_%ld.log", (int)getpid(),
             (long)time(NULL) ^ (long)rand());
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "exec %s serve --port 0 %s > %s 2>&1", s_bin, args, s->log);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    s->pid = pid;
    for (int i = 0; i < 1200; i++) { /* 120 s: sanitizer builds load slowly */
        FILE *f = fopen(s->log, "r");
        char line[1024];
        while (f && fgets(line, sizeof line, f)) {
            const char *p = strstr(line, "listening on http://127.0.0.1:");
            if (p) {
                s->port = atoi(p + strlen("listening on http://127.0.0.1:"));
                fclose(f);
                return s->port > 0 ? 0 : -1;
            }
        }
        if (f) fclose(f);
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            s->pid = 0;
            return -1;
        }
        usleep(100000);
    }
    return -1;
}

/* SIGTERM, then the exit status (-1 when it had to be killed) */
static int s_stop(srv_t *s) {
    if (!s->pid) return -1;
    kill(s->pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < 600; i++) {
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            int rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
            if (rc == 0)
                unlink(s->log);
            else
                fprintf(stderr, "test_serve: the server exited with %d; its log: %s\n", rc, s->log);
            return rc;
        }
        usleep(100000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &st, 0);
    s->pid = 0;
    return -1;
}

static srv_t s_main;     /* the bundled pair, specdiff, 4 slots */
static int s_main_state; /* 0 not tried, 1 up, -1 failed */

static int s_need_main(void) {
    if (s_main_state == 0) {
        s_main_state = -1;
        if (s_find_bin() != 0) {
            td_test_skip("no bin/tandem beside the test binary");
            return -1;
        }
        if (access("models/tiny-verifier", R_OK) || access("models/tiny-diffusion-drafter", R_OK)) {
            td_test_skip("models/ (the bundled pair) not present");
            return -1;
        }
        if (system("curl --version > /dev/null 2>&1") != 0) {
            td_test_skip("curl not installed");
            return -1;
        }
        if (s_start(&s_main, "--parallel 4 --max-tokens 16") == 0) s_main_state = 1;
    }
    if (s_main_state < 0) {
        if (s_main.log[0] && s_main.pid == 0)
            td_test_fail(__FILE__, __LINE__, "server did not start");
        else if (s_bin[0] && access(s_bin, X_OK) == 0 && !access("models/tiny-verifier", R_OK))
            td_test_fail(__FILE__, __LINE__, "server did not start (see %s)", s_main.log);
        return -1;
    }
    return 0;
}

/* curl with a JSON body to PATH on port; the body and "HTTP:<code>" on the last line */
static int s_curl(int port, const char *path, const char *body, const char *extra, char *out,
                  size_t cap) {
    char cmd[8192];
    if (body)
        snprintf(cmd, sizeof cmd,
                 "curl -sS -N -H 'Content-Type: application/json' %s -w '\\nHTTP:%%{http_code}' "
                 "--data-binary '%s' http://127.0.0.1:%d%s",
                 extra ? extra : "", body, port, path);
    else
        snprintf(cmd, sizeof cmd, "curl -sS -N %s -w '\\nHTTP:%%{http_code}' http://127.0.0.1:%d%s",
                 extra ? extra : "", port, path);
    int rc = td_test_run(cmd, out, cap);
    const char *h = strstr(out, "\nHTTP:");
    if (rc != 0 || !h) return -1;
    return atoi(h + 6);
}

/* the answer's JSON (body without the status line) */
static cJSON *s_json(char *out) {
    char *h = strstr(out, "\nHTTP:");
    if (h) *h = 0;
    return cJSON_Parse(out);
}

static const char *s_text_of(cJSON *j) {
    cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cJSON *t = cJSON_GetObjectItem(c, "text");
    if (!t) t = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "message"), "content");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static const char *s_finish_of(cJSON *j) {
    cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cJSON *f = cJSON_GetObjectItem(c, "finish_reason");
    return cJSON_IsString(f) ? f->valuestring : NULL;
}

static int s_usage_of(cJSON *j, const char *k) {
    cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), k);
    return cJSON_IsNumber(v) ? v->valueint : -1;
}

/* concatenated streamed text of an SSE answer; *done when it ended with [DONE]; the usage chunk
 * (if any) is returned (caller deletes) */
static cJSON *s_sse(char *out, char *text, size_t cap, int *done, int *n_events) {
    text[0] = 0;
    *done = 0;
    *n_events = 0;
    cJSON *usage = NULL;
    char *save = NULL;
    for (char *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (strncmp(l, "data: ", 6) != 0) continue;
        (*n_events)++;
        if (!strcmp(l + 6, "[DONE]")) {
            *done = 1;
            continue;
        }
        cJSON *j = cJSON_Parse(l + 6);
        if (!j) continue;
        cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
        cJSON *t = cJSON_GetObjectItem(c, "text");
        if (!t) t = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "delta"), "content");
        if (cJSON_IsString(t)) strncat(text, t->valuestring, cap - strlen(text) - 1);
        if (cJSON_IsObject(cJSON_GetObjectItem(j, "usage"))) {
            cJSON_Delete(usage);
            usage = j;
        } else {
            cJSON_Delete(j);
        }
    }
    return usage;
}

TD_TEST(e2e_completion_and_chat) {
    if (s_need_main()) return;
    static char out[1 << 16];
    int p = s_main.port;
    CHECK_EQ_INT(s_curl(p, "/health", NULL, NULL, out, sizeof out), 200);
    CHECK(strstr(out, "\"ok\""));
    CHECK_EQ_INT(s_curl(p, "/v1/models", NULL, NULL, out, sizeof out), 200);
    CHECK(strstr(out, "\"tiny-verifier\""));
    int st =
        s_curl(p, "/v1/completions",
               "{\"model\":\"x\",\"prompt\":\"And God said\",\"max_tokens\":12,\"temperature\":0}",
               NULL, out, sizeof out);
    CHECK_EQ_INT(st, 200);
    cJSON *j = s_json(out);
    REQUIRE(j);
    CHECK_STR(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
    CHECK(s_text_of(j) && strlen(s_text_of(j)) > 0);
    int pt = s_usage_of(j, "prompt_tokens"), ct = s_usage_of(j, "completion_tokens");
    CHECK(pt > 0 && ct > 0 && ct <= 12);
    CHECK_EQ_INT(s_usage_of(j, "total_tokens"), pt + ct);
    CHECK_STR(s_finish_of(j), ct == 12 ? "length" : "stop");
    /* the tandem stats are generate --json's */
    cJSON *stats = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tandem"), "stats");
    CHECK_STR(cJSON_GetObjectItem(stats, "method")->valuestring, "specdiff");
    CHECK_EQ_INT(cJSON_GetObjectItem(stats, "generated")->valueint, ct);
    CHECK(cJSON_GetObjectItem(stats, "rounds")->valueint > 0);
    cJSON_Delete(j);
    /* the tandem object of the request reaches the method: gamma 3 drafts at most 3 per round */
    st = s_curl(p, "/v1/completions",
                "{\"prompt\":\"And God said\",\"max_tokens\":12,\"temperature\":0,\"tandem\":"
                "{\"gamma\":3,\"steps\":1}}",
                NULL, out, sizeof out);
    CHECK_EQ_INT(st, 200);
    j = s_json(out);
    REQUIRE(j);
    stats = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tandem"), "stats");
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(stats, "drafted_by_position")), 3);
    CHECK(cJSON_GetObjectItem(stats, "rounds")->valueint > 0);
    CHECK(cJSON_GetObjectItem(stats, "drafted")->valueint <=
          3 * cJSON_GetObjectItem(stats, "rounds")->valueint);
    cJSON_Delete(j);
    /* no CORS headers unless asked (--cors) */
    CHECK_EQ_INT(s_curl(p, "/health", NULL, "-i", out, sizeof out), 200);
    CHECK(!strstr(out, "Access-Control-Allow-Origin"));
    /* chat, and ar picked per request */
    st = s_curl(p, "/v1/chat/completions",
                "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"}],\"max_tokens\":8,"
                "\"seed\":3,\"tandem\":{\"method\":\"ar\"}}",
                NULL, out, sizeof out);
    CHECK_EQ_INT(st, 200);
    j = s_json(out);
    REQUIRE(j);
    CHECK_STR(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion");
    cJSON *msg =
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "message");
    CHECK_STR(cJSON_GetObjectItem(msg, "role")->valuestring, "assistant");
    CHECK(s_text_of(j) != NULL);
    CHECK_STR(cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tandem"), "stats"),
                                  "method")
                  ->valuestring,
              "ar");
    cJSON_Delete(j);
}

TD_TEST(e2e_stream_equals_full) {
    if (s_need_main()) return;
    static char out[1 << 16], text[8192];
    int p = s_main.port;
    const char *req =
        "\"prompt\":\"And God said\",\"max_tokens\":14,\"temperature\":0.8,\"seed\":11";
    char body[512];
    snprintf(body, sizeof body, "{%s}", req);
    REQUIRE(s_curl(p, "/v1/completions", body, NULL, out, sizeof out) == 200);
    cJSON *j = s_json(out);
    REQUIRE(j && s_text_of(j));
    char full[4096];
    snprintf(full, sizeof full, "%s", s_text_of(j));
    int ct = s_usage_of(j, "completion_tokens");
    cJSON_Delete(j);
    snprintf(body, sizeof body, "{%s,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
             req);
    REQUIRE(s_curl(p, "/v1/completions", body, NULL, out, sizeof out) == 200);
    int done, ev;
    cJSON *u = s_sse(out, text, sizeof text, &done, &ev);
    CHECK(done);
    CHECK(ev >= 3);
    CHECK_STR(text, full);
    REQUIRE(u);
    CHECK_EQ_INT(s_usage_of(u, "completion_tokens"), ct);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(u, "choices")), 0);
    cJSON_Delete(u);
    /* chat streaming: the first delta carries the role */
    REQUIRE(s_curl(p, "/v1/chat/completions",
                   "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":6,"
                   "\"stream\":true}",
                   NULL, out, sizeof out) == 200);
    CHECK(strstr(out, "\"delta\":{\"role\":\"assistant\""));
    CHECK(strstr(out, "chat.completion.chunk"));
    CHECK(strstr(out, "data: [DONE]"));
    CHECK(!strstr(out, "\"usage\"")); /* not asked for */
}

TD_TEST(e2e_seed_replay) {
    if (s_need_main()) return;
    static char out[1 << 16];
    char a[4096], b[4096];
    const char *body = "{\"prompt\":\"In the beginning\",\"max_tokens\":16,\"temperature\":1.0,"
                       "\"seed\":1234}";
    REQUIRE(s_curl(s_main.port, "/v1/completions", body, NULL, out, sizeof out) == 200);
    cJSON *j = s_json(out);
    REQUIRE(j && s_text_of(j));
    snprintf(a, sizeof a, "%s", s_text_of(j));
    cJSON_Delete(j);
    REQUIRE(s_curl(s_main.port, "/v1/completions", body, NULL, out, sizeof out) == 200);
    j = s_json(out);
    REQUIRE(j && s_text_of(j));
    snprintf(b, sizeof b, "%s", s_text_of(j));
    cJSON_Delete(j);
    CHECK_STR(a, b);
    CHECK(strlen(a) > 0);
}

TD_TEST(e2e_stop_strings) {
    if (s_need_main()) return;
    static char out[1 << 16], text[8192];
    int p = s_main.port;
    const char *req = "\"prompt\":\"And God said\",\"max_tokens\":16,\"temperature\":0";
    char body[1024];
    snprintf(body, sizeof body, "{%s}", req);
    REQUIRE(s_curl(p, "/v1/completions", body, NULL, out, sizeof out) == 200);
    cJSON *j = s_json(out);
    REQUIRE(j && s_text_of(j));
    char full[4096];
    snprintf(full, sizeof full, "%s", s_text_of(j));
    cJSON_Delete(j);
    size_t fl = strlen(full);
    REQUIRE(fl >= 12);
    /* a stop string from the middle of the greedy text (3 bytes, likely across tokens) */
    char stop[8];
    memcpy(stop, full + fl / 2, 3);
    stop[3] = 0;
    REQUIRE(!strchr(stop, '\'') && !strchr(stop, '"') && !strchr(stop, '\\'));
    const char *first = strstr(full, stop);
    REQUIRE(first);
    char expect[4096];
    snprintf(expect, sizeof expect, "%.*s", (int)(first - full), full);
    snprintf(body, sizeof body, "{%s,\"stop\":[\"zzzz\",\"%s\"]}", req, stop);
    REQUIRE(s_curl(p, "/v1/completions", body, NULL, out, sizeof out) == 200);
    j = s_json(out);
    REQUIRE(j && s_text_of(j));
    CHECK_STR(s_text_of(j), expect);
    CHECK_STR(s_finish_of(j), "stop");
    int ct = s_usage_of(j, "completion_tokens");
    CHECK(ct > 0 && ct < 16);
    cJSON_Delete(j);
    snprintf(body, sizeof body,
             "{%s,\"stop\":\"%s\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
             req, stop);
    REQUIRE(s_curl(p, "/v1/completions", body, NULL, out, sizeof out) == 200);
    int done, ev;
    cJSON *u = s_sse(out, text, sizeof text, &done, &ev);
    CHECK(done);
    CHECK_STR(text, expect);
    /* the tokens up to the stop string, however they were read */
    CHECK(u && s_usage_of(u, "completion_tokens") == ct);
    cJSON_Delete(u);
}

/* the value of a metrics line "name value" (first match), or -1 */
static double s_metric(const char *text, const char *name) {
    const char *p = text;
    size_t nl = strlen(name);
    while ((p = strstr(p, name))) {
        if ((p == text || p[-1] == '\n') && p[nl] == ' ') return atof(p + nl + 1);
        p += nl;
    }
    return -1;
}

/* The answers clients 0..n-1 left in DIR/i.json (the files and DIR are removed): each a
 * completion whose text, for i < n_solo, is solo[i] (what the request answered alone). */
static void s_check_answers(const char *dir, int n, char (*solo)[1024], int n_solo) {
    for (int i = 0; i < n; i++) {
        char path[256], *data = NULL;
        size_t len = 0;
        snprintf(path, sizeof path, "%s/%d.json", dir, i);
        CHECK_MSG(td_read_file(path, &data, &len, NULL) == TD_OK, "client %d got no answer", i);
        unlink(path);
        if (!data) continue;
        cJSON *j = cJSON_Parse(data);
        CHECK_MSG(j && s_text_of(j), "client %d: %s", i, data);
        /* the same answer alone and among others */
        if (j && s_text_of(j) && i < n_solo)
            CHECK_MSG(!strcmp(s_text_of(j), solo[i]), "client %d: '%s' concurrent vs '%s' alone", i,
                      s_text_of(j), solo[i]);
        cJSON_Delete(j);
        free(data);
    }
    rmdir(dir);
}

TD_TEST(e2e_concurrent_clients) {
    if (s_need_main()) return;
    static char out[1 << 16];
    enum { N = 8 };
    char solo[N][1024];
    /* each request alone (sanitizer builds: the first two; all eight still run concurrently) */
    int n_solo = getenv("TD_TEST_LIGHT") ? 2 : N;
    for (int i = 0; i < n_solo; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"prompt\":\"And God said\",\"max_tokens\":12,\"temperature\":0.9,\"seed\":%d}",
                 100 + i);
        REQUIRE(s_curl(s_main.port, "/v1/completions", body, NULL, out, sizeof out) == 200);
        cJSON *j = s_json(out);
        REQUIRE(j && s_text_of(j));
        snprintf(solo[i], sizeof solo[i], "%s", s_text_of(j));
        cJSON_Delete(j);
    }
    REQUIRE(s_curl(s_main.port, "/metrics", NULL, NULL, out, sizeof out) == 200);
    double r0 = s_metric(out, "tandem:engine_rounds_total");
    double q0 = s_metric(out, "tandem:engine_round_requests_total");
    /* the same eight at once (four slots: half of them queue) */
    char dir[] = "/tmp/td_serve_cc_XXXXXX";
    REQUIRE(mkdtemp(dir));
    char cmd[8192];
    size_t o = 0;
    for (int i = 0; i < N; i++)
        o += (size_t)snprintf(cmd + o, sizeof cmd - o,
                              "curl -sS -o %s/%d.json --data-binary '{\"prompt\":\"And God "
                              "said\",\"max_tokens\":12,\"temperature\":0.9,\"seed\":%d}' "
                              "http://127.0.0.1:%d/v1/completions & ",
                              dir, i, 100 + i, s_main.port);
    snprintf(cmd + o, sizeof cmd - o, "wait");
    CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 0);
    s_check_answers(dir, N, solo, n_solo);
    /* they were verified together: rounds held several requests (one forward for all of them) */
    REQUIRE(s_curl(s_main.port, "/metrics", NULL, NULL, out, sizeof out) == 200);
    double r1 = s_metric(out, "tandem:engine_rounds_total");
    double q1 = s_metric(out, "tandem:engine_round_requests_total");
    CHECK(r1 > r0 && r0 >= 0);
    CHECK_MSG(q1 - q0 > 1.5 * (r1 - r0), "mean batch %.2f over %g rounds",
              (q1 - q0) / (r1 - r0 > 0 ? r1 - r0 : 1), r1 - r0);
    CHECK(s_metric(out, "tandem:engine_batch_max") >= 2);
    printf("    8 concurrent: %g rounds, mean batch %.2f\n", r1 - r0,
           (q1 - q0) / (r1 - r0 > 0 ? r1 - r0 : 1));
}

TD_TEST(e2e_disconnect_frees_slot) {
    if (s_need_main()) return;
    static char out[1 << 17];
    int p = s_main.port;
    REQUIRE(s_curl(p, "/metrics", NULL, NULL, out, sizeof out) == 200);
    double before = s_metric(out, "tandem:request_success_total{outcome=\"cancelled\"}");
    /* a long stream, the client gone after a few events */
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "curl -sS -N --data-binary '{\"prompt\":\"And\",\"max_tokens\":1000,\"stream\":true,"
             "\"tandem\":{\"method\":\"ar\"}}' http://127.0.0.1:%d/v1/completions | head -c 600 "
             "> /dev/null",
             p);
    td_test_run(cmd, out, sizeof out);
    double cancelled = before, running = 1;
    for (int i = 0; i < 100 && (cancelled <= before || running != 0); i++) {
        usleep(100000);
        if (s_curl(p, "/metrics", NULL, NULL, out, sizeof out) != 200) continue;
        cancelled = s_metric(out, "tandem:request_success_total{outcome=\"cancelled\"}");
        running = s_metric(out, "tandem:num_requests_running");
    }
    CHECK_MSG(cancelled > before, "cancelled %g, before %g", cancelled, before);
    CHECK_EQ_INT((int)running, 0);
    /* a non-streamed request whose client gives up is cancelled too */
    before = cancelled;
    snprintf(cmd, sizeof cmd,
             "curl -sS -m 0.5 --data-binary '{\"prompt\":\"And\",\"max_tokens\":1000,"
             "\"tandem\":{\"method\":\"ar\"}}' http://127.0.0.1:%d/v1/completions > /dev/null "
             "2>&1",
             p);
    td_test_run(cmd, out, sizeof out);
    running = 1;
    for (int i = 0; i < 100 && (cancelled <= before || running != 0); i++) {
        usleep(100000);
        if (s_curl(p, "/metrics", NULL, NULL, out, sizeof out) != 200) continue;
        cancelled = s_metric(out, "tandem:request_success_total{outcome=\"cancelled\"}");
        running = s_metric(out, "tandem:num_requests_running");
    }
    CHECK_MSG(cancelled > before, "non-streamed: cancelled %g, before %g", cancelled, before);
    CHECK_EQ_INT((int)running, 0);
    /* the server still answers */
    CHECK_EQ_INT(s_curl(p, "/v1/completions", "{\"prompt\":\"And\",\"max_tokens\":4}", NULL, out,
                        sizeof out),
                 200);
    /* metrics: Prometheus text with the spec-decode counters */
    REQUIRE(s_curl(p, "/metrics", NULL, NULL, out, sizeof out) == 200);
    CHECK(s_metric(out, "tandem:spec_decode_num_draft_tokens_total") > 0);
    CHECK(s_metric(out, "tandem:spec_decode_num_accepted_tokens_total") >= 0);
    CHECK(s_metric(out, "tandem:time_to_first_token_seconds_count") > 0);
    CHECK(strstr(out, "# TYPE tandem:e2e_request_latency_seconds histogram"));
    CHECK(strstr(out, "tandem:spec_decode_accepted_length_bucket{le=\"+Inf\"}"));
}

TD_TEST(e2e_bad_requests) {
    if (s_need_main()) return;
    static char out[1 << 16];
    int p = s_main.port;
    struct {
        const char *path, *body;
        int status;
        const char *needle;
    } cases[] = {
        {"/v1/completions", "{bad json", 400, "not valid JSON"},
        {"/v1/completions", "{\"prompt\":\"x\",\"temperature\":\"hot\"}", 400, "\"temperature\""},
        {"/v1/completions", "{\"prompt\":\"x\",\"n\":3}", 400, "\"param\":\"n\""},
        {"/v1/chat/completions", "{\"prompt\":\"x\"}", 400, "\"messages\""},
        {"/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":5000}", 400,
         "context_length_exceeded"},
        {"/v1/completions", "{\"prompt\":\"x\",\"tandem\":{\"method\":\"spec-ar\"}}", 400,
         "tandem.method"},
        {"/v1/completions", "{\"prompt\":\"\"}", 400, "empty"},
        {"/v1/completions", "{\"prompt\":\"x\",\"tandem\":{\"order\":\"sideways\"}}", 400,
         "tandem.order"},
        {"/v1/completions", "{\"prompt\":\"x\",\"tandem\":{\"verify\":\"maybe\"}}", 400,
         "tandem.verify"},
        {"/v1/nothing", "{}", 404, "unknown path"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int st = s_curl(p, cases[i].path, cases[i].body, NULL, out, sizeof out);
        CHECK_MSG(st == cases[i].status, "%s %s: %d", cases[i].path, cases[i].body, st);
        CHECK_MSG(strstr(out, "\"error\":{") && strstr(out, cases[i].needle), "%s: %s",
                  cases[i].body, out);
    }
    CHECK_EQ_INT(s_curl(p, "/v1/completions", NULL, NULL, out, sizeof out), 405);
    /* a body over the limit */
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "head -c 1100000 /dev/zero | tr '\\0' a | curl -sS -w '\\nHTTP:%%{http_code}' "
             "--data-binary @- http://127.0.0.1:%d/v1/completions",
             p);
    td_test_run(cmd, out, sizeof out);
    CHECK_MSG(strstr(out, "HTTP:413") && strstr(out, "request_too_large"), "%s", out);
    /* still serving */
    CHECK_EQ_INT(s_curl(p, "/health", NULL, NULL, out, sizeof out), 200);
}

TD_TEST(e2e_auth_queue_shutdown) {
    if (s_need_main()) return;
    static char out[1 << 16];
    /* a non-loopback address without a key is refused before loading anything */
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s serve --host 0.0.0.0 --port 0 2>&1", s_bin);
    CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 2);
    CHECK(strstr(out, "api-key"));
    /* the chat fixture (ChatML template, 128 positions), ar, one slot, no queue, a key; two
     * threads: its 120 tokens then take ~0.1 s (one thread: ~3 ms), time to see the queue full */
    const char *model = "tests/data/e2e/qwen2-chat";
    if (access(model, R_OK)) {
        td_test_skip("tests/data/e2e/qwen2-chat missing");
        return;
    }
    char keyf[] = "/tmp/td_serve_key_XXXXXX";
    int fd = mkstemp(keyf);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, "s3cret-key\n", 11) == 11);
    close(fd);
    srv_t s;
    snprintf(
        cmd, sizeof cmd,
        "--verifier %s --method ar --parallel 1 --queue 0 --threads 2 --api-key-file %s --cors "
        "http://example.test",
        model, keyf);
    int up = s_start(&s, cmd);
    unlink(keyf);
    REQUIRE(up == 0);
    int p = s.port;
    const char *chat = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":4}";
    CHECK_EQ_INT(s_curl(p, "/v1/chat/completions", chat, NULL, out, sizeof out), 401);
    CHECK(strstr(out, "authentication_error"));
    CHECK_EQ_INT(s_curl(p, "/v1/chat/completions", chat, "-H 'Authorization: Bearer s3cret-kez'",
                        out, sizeof out),
                 401);
    CHECK_EQ_INT(s_curl(p, "/metrics", NULL, NULL, out, sizeof out), 401);
    CHECK_EQ_INT(s_curl(p, "/health", NULL, NULL, out, sizeof out), 200);
    /* --cors: preflight answered without a key, the origin allowed */
    CHECK_EQ_INT(s_curl(p, "/v1/chat/completions", NULL, "-i -X OPTIONS", out, sizeof out), 204);
    CHECK(strstr(out, "Access-Control-Allow-Origin: http://example.test"));
    const char *auth = "-H 'Authorization: Bearer s3cret-key'";
    CHECK_EQ_INT(s_curl(p, "/v1/chat/completions", chat, auth, out, sizeof out), 200);
    cJSON *j = s_json(out);
    REQUIRE(j);
    /* the ChatML template with Qwen's default system prompt: many more tokens than "hi" */
    CHECK(s_usage_of(j, "prompt_tokens") > 10);
    cJSON_Delete(j);
    CHECK_EQ_INT(s_stop(&s), 0);
    /* One slot busy with a long stream: the next request is refused with 503 + Retry-After.
     * The bundled verifier (1024 positions) greedily continues "a" for 600 tokens without an EOS
     * (seconds, far longer than the polling below needs), so the slot is surely busy. */
    char keyf2[] = "/tmp/td_serve_key_XXXXXX";
    fd = mkstemp(keyf2);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, "s3cret-key\n", 11) == 11);
    close(fd);
    snprintf(cmd, sizeof cmd,
             "--verifier models/tiny-verifier --method ar --parallel 1 --queue 0 --threads 1 "
             "--api-key-file %s",
             keyf2);
    up = s_start(&s, cmd);
    unlink(keyf2);
    REQUIRE(up == 0);
    p = s.port;
    char longf[] = "/tmp/td_serve_long_XXXXXX";
    fd = mkstemp(longf);
    REQUIRE(fd >= 0);
    close(fd);
    snprintf(cmd, sizeof cmd,
             "curl -sS -N %s --data-binary '{\"prompt\":\"a\",\"max_tokens\":600,\"stream\":true,"
             "\"temperature\":0}' http://127.0.0.1:%d/v1/completions > %s 2>&1 &",
             auth, p, longf);
    CHECK_EQ_INT(system(cmd), 0);
    int running = 0;
    for (int i = 0; i < 2000 && !running; i++) {
        usleep(5000);
        running = s_curl(p, "/metrics", NULL, auth, out, sizeof out) == 200 &&
                  s_metric(out, "tandem:num_requests_running") == 1;
    }
    CHECK_MSG(running, "the long request never showed as running");
    snprintf(cmd, sizeof cmd,
             "curl -sS -i %s --data-binary '{\"prompt\":\"b\",\"max_tokens\":2}' "
             "http://127.0.0.1:%d/v1/completions",
             auth, p);
    td_test_run(cmd, out, sizeof out);
    CHECK_MSG(strstr(out, " 503") && strstr(out, "Retry-After: 1") && strstr(out, "server_busy"),
              "a second request while the one slot streams: %.300s", out);
    /* SIGTERM while the stream runs: it ends cleanly (drained), the server exits 0. The curl
     * process writing the stream may still be flushing when the server is gone: poll its file. */
    CHECK_EQ_INT(s_stop(&s), 0);
    static char body[1 << 18];
    for (int i = 0; i < 200; i++) {
        FILE *f = fopen(longf, "r");
        REQUIRE(f);
        size_t n = fread(body, 1, sizeof body - 1, f);
        body[n] = 0;
        fclose(f);
        if (strstr(body, "data: [DONE]")) break;
        usleep(50000);
    }
    unlink(longf);
    size_t bl = strlen(body);
    CHECK_MSG(strstr(body, "data: [DONE]"),
              "the in-flight stream did not end cleanly (%zu bytes), it ends: %s", bl,
              body + (bl > 400 ? bl - 400 : 0));
}

/* ---- the official openai client ------------------------------------------------------------ */

TD_TEST(e2e_openai_client) {
    if (s_need_main()) return;
    if (getenv("TD_TEST_LIGHT")) {
        /* sanitizer builds: the Python client adds nothing the curl cases do not check */
        td_test_skip("TD_TEST_LIGHT: the openai client runs in the plain build");
        return;
    }
    static char out[1 << 16];
    char venv[2300], cmd[8192];
    snprintf(venv, sizeof venv, "%s/venv-openai", s_build);
    snprintf(cmd, sizeof cmd, "%s/bin/python -c 'import openai' 2>/dev/null", venv);
    if (system(cmd) != 0) {
        snprintf(cmd, sizeof cmd,
                 "(python3 -m venv %s && %s/bin/pip install -q --disable-pip-version-check "
                 "--timeout 30 openai) > %s.log 2>&1",
                 venv, venv, venv);
        if (system(cmd) != 0) {
            fprintf(stderr,
                    "e2e_openai_client: SKIPPED: could not install the openai package "
                    "from PyPI (see %s.log)\n",
                    venv);
            td_test_skip("pip could not install openai (PyPI unreachable?)");
            return;
        }
    }
    snprintf(cmd, sizeof cmd,
             "%s/bin/python tests/data/serve/openai_client.py http://127.0.0.1:%d/v1 2>&1", venv,
             s_main.port);
    int rc = td_test_run(cmd, out, sizeof out);
    CHECK_MSG(rc == 0 && strstr(out, "ALL OK"), "openai client (rc %d):\n%s", rc, out);
}

/* A drafter (a separate tandem-drafter) killed while requests decode: every request still
 * completes, as plain AR (greedy: the same text an ar request gives), the fallbacks counted. */
TD_TEST(e2e_drafter_dies_under_load) {
    if (s_need_main()) return;
    static char out[1 << 16];
    char dbin[2200], sock[128], cmd[8192];
    snprintf(dbin, sizeof dbin, "%s/bin/tandem-drafter", s_build);
    if (access(dbin, X_OK)) {
        td_test_skip("no bin/tandem-drafter");
        return;
    }
    snprintf(sock, sizeof sock, "/tmp/td_serve_dd_%d.sock", (int)getpid());
    pid_t dpid = fork();
    REQUIRE(dpid >= 0);
    if (dpid == 0) {
        char ep[160];
        snprintf(ep, sizeof ep, "ipc://%s", sock);
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
        execl(dbin, dbin, "--model", "models/tiny-diffusion-drafter", "--bind", ep, "--threads",
              "1", (char *)NULL);
        _exit(127);
    }
    /* a short drafter timeout keeps the rounds after its death quick; sanitizer builds draft
     * slowly: a longer one there, and shorter requests */
    int light = getenv("TD_TEST_LIGHT") != NULL, MAXT = light ? 12 : 24;
    srv_t s;
    snprintf(cmd, sizeof cmd,
             "--verifier models/tiny-verifier --drafter ipc://%s --method specdiff --parallel 4 "
             "--timeout-ms %d",
             sock, light ? 100 : 50);
    int up = s_start(&s, cmd);
    if (up != 0) kill(dpid, SIGKILL), waitpid(dpid, NULL, 0);
    REQUIRE(up == 0);
    int p = s.port;
    enum { N = 6 };
    /* greedy answers of plain ar, for reference (the spec methods are lossless when greedy) */
    char ref[N][1024];
    for (int i = 0; i < N; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"prompt\":\"In the beginning %d\",\"max_tokens\":%d,\"temperature\":0,"
                 "\"tandem\":{\"method\":\"ar\"}}",
                 i, MAXT);
        CHECK_EQ_INT(s_curl(p, "/v1/completions", body, NULL, out, sizeof out), 200);
        cJSON *j = s_json(out);
        snprintf(ref[i], sizeof ref[i], "%s", j && s_text_of(j) ? s_text_of(j) : "?");
        cJSON_Delete(j);
    }
    /* the drafter works: a specdiff request drafts (sanitizer builds: its first drafts can take
     * longer than any timeout that keeps this test short, so only the plain build checks) */
    CHECK_EQ_INT(s_curl(p, "/v1/completions",
                        "{\"prompt\":\"In the beginning 0\",\"max_tokens\":12,\"temperature\":0}",
                        NULL, out, sizeof out),
                 200);
    REQUIRE(s_curl(p, "/metrics", NULL, NULL, out, sizeof out) == 200);
    if (!light) CHECK(s_metric(out, "tandem:spec_decode_num_draft_tokens_total") > 0);
    /* the first half in flight when the drafter dies, the second half sent after */
    char dir[] = "/tmp/td_serve_dd_XXXXXX";
    REQUIRE(mkdtemp(dir));
    size_t o = 0;
    for (int i = 0; i < N / 2; i++)
        o += (size_t)snprintf(cmd + o, sizeof cmd - o,
                              "curl -sS -o %s/%d.json --data-binary '{\"prompt\":\"In the "
                              "beginning %d\",\"max_tokens\":%d,\"temperature\":0}' "
                              "http://127.0.0.1:%d/v1/completions & ",
                              dir, i, i, MAXT, p);
    o += (size_t)snprintf(cmd + o, sizeof cmd - o, "sleep 0.05; kill -9 %d; ", (int)dpid);
    for (int i = N / 2; i < N; i++)
        o += (size_t)snprintf(cmd + o, sizeof cmd - o,
                              "curl -sS -o %s/%d.json --data-binary '{\"prompt\":\"In the "
                              "beginning %d\",\"max_tokens\":%d,\"temperature\":0}' "
                              "http://127.0.0.1:%d/v1/completions & ",
                              dir, i, i, MAXT, p);
    snprintf(cmd + o, sizeof cmd - o, "wait");
    td_test_run(cmd, out, sizeof out);
    waitpid(dpid, NULL, 0);
    for (int i = 0; i < N; i++) {
        char path[256], data[1 << 14];
        snprintf(path, sizeof path, "%s/%d.json", dir, i);
        FILE *f = fopen(path, "r");
        CHECK_MSG(f != NULL, "request %d got no answer", i);
        if (!f) continue;
        size_t n = fread(data, 1, sizeof data - 1, f);
        data[n] = 0;
        fclose(f);
        unlink(path);
        cJSON *j = cJSON_Parse(data);
        CHECK_MSG(j && s_text_of(j) && !strcmp(s_text_of(j), ref[i]),
                  "request %d: '%s', plain ar gives '%s'", i, data, ref[i]);
        cJSON_Delete(j);
    }
    rmdir(dir);
    REQUIRE(s_curl(p, "/metrics", NULL, NULL, out, sizeof out) == 200);
    CHECK(s_metric(out, "tandem:spec_decode_fallbacks_total") > 0);
    CHECK_EQ_INT((int)s_metric(out, "tandem:request_success_total{outcome=\"error\"}"), 0);
    printf("    drafter killed: %g fallback rounds\n",
           s_metric(out, "tandem:spec_decode_fallbacks_total"));
    CHECK_EQ_INT(s_stop(&s), 0);
    unlink(sock);
}

/* last: SIGTERM ends the shared server cleanly (exit 0) */
TD_TEST(e2e_shutdown_clean) {
    if (s_main_state != 1) {
        td_test_skip("the shared server was not started");
        return;
    }
    CHECK_EQ_INT(s_stop(&s_main), 0);
    s_main_state = -2;
}

/* the shared server goes down with the binary: a destructor so every case can use it */
__attribute__((destructor)) static void s_main_down(void) {
    if (s_main.pid) {
        int rc = s_stop(&s_main);
        if (rc != 0) fprintf(stderr, "test_serve: the server exited with %d on SIGTERM\n", rc);
    }
}

/* `tandem serve --method dflash` on SmolLM2 (the Q4_1 GGUF and the shipped DFlash drafter; skipped
 * when the GGUF is absent): three greedy requests at once each answer what they answer alone and
 * what `ar` answers (greedy dflash is lossless), with dflash stats in the response, and the
 * rounds held several requests. */
TD_TEST(e2e_dflash_smollm2) {
    const char *gguf = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (access(gguf, R_OK) || access("models/dflash-smollm2/config.json", R_OK)) {
        td_test_skip("models/smollm2 Q4_1 GGUF or models/dflash-smollm2 absent");
        return;
    }
    if (s_find_bin() != 0 || system("curl --version > /dev/null 2>&1") != 0) {
        td_test_skip("no bin/tandem or no curl");
        return;
    }
    srv_t sv;
    char args[1024];
    snprintf(args, sizeof args,
             "--method dflash --drafter models/dflash-smollm2 --verifier %s --parallel 3 "
             "--max-tokens 12",
             gguf);
    REQUIRE(s_start(&sv, args) == 0);
    static char out[1 << 16];
    enum { N = 3 };
    const char *prompts[N] = {"The capital of France is", "List three fruits:", "Once upon a time"};
    char solo[N][1024], ar[N][1024], body[N][512];
    for (int i = 0; i < N; i++) {
        snprintf(body[i], sizeof body[i],
                 "{\"prompt\":\"%s\",\"max_tokens\":12,\"temperature\":0,\"tandem\":{\"method\":"
                 "\"%%s\"}}",
                 prompts[i]);
        char b[512];
        for (int m = 0; m < 2; m++) {
            snprintf(b, sizeof b, body[i], m ? "ar" : "dflash");
            REQUIRE(s_curl(sv.port, "/v1/completions", b, NULL, out, sizeof out) == 200);
            cJSON *j = s_json(out);
            REQUIRE(j && s_text_of(j));
            snprintf(m ? ar[i] : solo[i], 1024, "%s", s_text_of(j));
            if (!m) {
                const cJSON *st = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tandem"), "stats");
                const cJSON *mm = cJSON_GetObjectItem(st, "method");
                CHECK_MSG(cJSON_IsString(mm) && !strcmp(mm->valuestring, "dflash"),
                          "request %d did not run dflash", i);
            }
            cJSON_Delete(j);
        }
        CHECK_MSG(!strcmp(solo[i], ar[i]), "prompt %d: greedy dflash '%s' vs ar '%s'", i, solo[i],
                  ar[i]);
    }
    REQUIRE(s_curl(sv.port, "/metrics", NULL, NULL, out, sizeof out) == 200);
    double r0 = s_metric(out, "tandem:engine_rounds_total");
    double q0 = s_metric(out, "tandem:engine_round_requests_total");
    char dir[] = "/tmp/td_serve_df_XXXXXX";
    REQUIRE(mkdtemp(dir));
    char cmd[8192];
    size_t o = 0;
    for (int i = 0; i < N; i++) {
        char b[512];
        snprintf(b, sizeof b, body[i], "dflash");
        o += (size_t)snprintf(cmd + o, sizeof cmd - o,
                              "curl -sS -o %s/%d.json --data-binary '%s' "
                              "http://127.0.0.1:%d/v1/completions & ",
                              dir, i, b, sv.port);
    }
    snprintf(cmd + o, sizeof cmd - o, "wait");
    CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 0);
    s_check_answers(dir, N, solo, N);
    REQUIRE(s_curl(sv.port, "/metrics", NULL, NULL, out, sizeof out) == 200);
    double r1 = s_metric(out, "tandem:engine_rounds_total");
    double q1 = s_metric(out, "tandem:engine_round_requests_total");
    CHECK_MSG(r1 > r0 && q1 - q0 > 1.5 * (r1 - r0), "mean batch %.2f over %g rounds",
              (q1 - q0) / (r1 - r0 > 0 ? r1 - r0 : 1), r1 - r0);
    CHECK_EQ_INT(s_stop(&sv), 0);
}

TD_TEST_MAIN()
