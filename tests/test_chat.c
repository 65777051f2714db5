/* test_chat.c - chat template detection and rendering against renders made by transformers.
 *
 * tests/data/chat/families.json lists fixture directories (made by tools/make_chat_fixtures.py)
 * with the kind, default system prompt and BOS that td_chat_format_detect must find there; each
 * <family>/cases.json holds conversations rendered by transformers' jinja renderer, which
 * td_chat_format_apply must reproduce byte for byte. */
#include "model/chat.h"
#include "tests/tdtest.h"

#include <cjson/cJSON.h>
#include <stdlib.h>

static cJSON *s_load_json(const char *rel) {
    size_t len = 0;
    char *data = td_test_read(rel, &len);
    if (!data) return NULL;
    cJSON *j = cJSON_ParseWithLength(data, len);
    free(data);
    if (!j) td_test_fail(__FILE__, __LINE__, "%s/%s: bad JSON", td_test_data(), rel);
    return j;
}

static const char *s_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Shows where two strings first differ. */
static void s_check_render(const char *fam, int idx, const char *got, const char *want) {
    if (got && want && strcmp(got, want) == 0) return;
    size_t i = 0;
    while (got && want && got[i] && got[i] == want[i]) i++;
    td_test_fail(__FILE__, __LINE__,
                 "%s case %d differs at byte %zu:\n      got  \"%s\"\n      want \"%s\"", fam, idx,
                 i, got ? got + i : "(null)", want ? want + i : "(null)");
}

/* Renders every case of the cases.json at rel (under the test data) with fmt. */
static void s_run_cases_at(const char *fam, const char *rel, const td_chat_format_t *fmt) {
    cJSON *root = s_load_json(rel);
    if (!root) return;
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    CHECK(cJSON_IsArray(cases) && cJSON_GetArraySize(cases) > 0);
    int idx = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(c, "messages");
        int n = cJSON_GetArraySize(msgs);
        td_chat_msg_t m[16];
        REQUIRE(n <= 16);
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(msgs, i);
            m[i].role = s_str(e, "role");
            m[i].content = s_str(e, "content");
        }
        int gen = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "add_generation_prompt"));
        char *out = NULL;
        td_err_t err = {0};
        int rc = td_chat_format_apply(fmt, m, n, gen, &out, &err);
        CHECK_MSG(rc == TD_OK, "%s case %d: %s", fam, idx, err.msg);
        s_check_render(fam, idx, out, s_str(c, "expected"));
        free(out);
        idx++;
    }
    cJSON_Delete(root);
}

/* Renders every case of chat/<fam>/cases.json with fmt. */
static void s_run_cases(const char *fam, const td_chat_format_t *fmt) {
    char rel[512];
    snprintf(rel, sizeof rel, "chat/%s/cases.json", fam);
    s_run_cases_at(fam, rel, fmt);
}

TD_TEST(detect_and_render_families) {
    cJSON *root = s_load_json("chat/families.json");
    REQUIRE(root);
    const cJSON *fams = cJSON_GetObjectItemCaseSensitive(root, "families");
    REQUIRE(cJSON_IsObject(fams));
    int nfam = 0, nrendered = 0;
    const cJSON *f;
    cJSON_ArrayForEach(f, fams) {
        const char *name = f->string;
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/chat/%s", td_test_data(), name);
        int want_kind = td_chat_kind_from_name(s_str(f, "kind"));
        REQUIRE(want_kind >= 0);
        const char *want_sys = s_str(f, "default_system");
        const char *want_bos = s_str(f, "bos");
        int want_error = s_str(f, "error") != NULL;

        td_chat_format_t fmt;
        td_err_t err = {0};
        int rc = td_chat_format_detect(dir, &fmt, &err);
        if (want_error) {
            CHECK_MSG(rc == TD_ERR_FORMAT, "%s: detect returned %d, expected TD_ERR_FORMAT", name,
                      rc);
            CHECK(strstr(err.msg, "tokenizer_config.json") != NULL);
        } else {
            CHECK_MSG(rc == TD_OK, "%s: %s", name, err.msg);
        }
        CHECK_MSG(fmt.kind == (td_chat_kind_t)want_kind, "%s: detected %s, expected %s", name,
                  td_chat_kind_name(fmt.kind), td_chat_kind_name((td_chat_kind_t)want_kind));
        CHECK_MSG(td_chat_detect(dir) == (td_chat_kind_t)want_kind, "%s: td_chat_detect", name);
        CHECK_MSG(fmt.has_default_system == (want_sys != NULL), "%s: default system presence",
                  name);
        if (want_sys) CHECK_STR(fmt.default_system, want_sys);
        CHECK_STR(fmt.bos, want_bos ? want_bos : "");

        char cases[1200];
        snprintf(cases, sizeof cases, "%s/cases.json", dir);
        FILE *cf = fopen(cases, "rb");
        if (cf) {
            fclose(cf);
            s_run_cases(name, &fmt);
            nrendered++;
            /* the built-in formats are Qwen2.5's and LLaDA's */
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(f, "builtin"))) {
                td_chat_format_t b;
                td_chat_format_builtin(fmt.kind, &b);
                CHECK(memcmp(&b, &fmt, sizeof b) == 0);
                s_run_cases(name, &b);
            }
        }
        nfam++;
    }
    CHECK(nfam >= 9);
    CHECK(nrendered >= 6);
    cJSON_Delete(root);
}

TD_TEST(builtin_apply_matches_qwen_and_llada) {
    td_chat_msg_t m[2] = {{"user", "Hello!"}, {"assistant", " Hi "}};
    char *out = NULL;
    CHECK_EQ_INT(td_chat_apply(TD_CHAT_CHATML, m, 1, 1, &out, NULL), TD_OK);
    CHECK_STR(out,
              "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
              "assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    CHECK_EQ_INT(td_chat_apply(TD_CHAT_LLAMA3, m, 2, 0, &out, NULL), TD_OK);
    CHECK_STR(out, "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\nHi<|eot_id|>");
    free(out);
    CHECK_EQ_INT(td_chat_apply(TD_CHAT_NONE, m, 2, 1, &out, NULL), TD_OK);
    CHECK_STR(out, "Hello! Hi ");
    free(out);
    /* no messages: only the default system turn and the generation prompt */
    CHECK_EQ_INT(td_chat_apply(TD_CHAT_CHATML, NULL, 0, 1, &out, NULL), TD_OK);
    CHECK_STR(out,
              "<|im_start|>system\n" TD_CHAT_QWEN_SYSTEM "<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    CHECK_EQ_INT(td_chat_apply_ex(TD_CHAT_CHATML, NULL, NULL, m, 1, 0, &out, NULL), TD_OK);
    CHECK_STR(out, "<|im_start|>user\nHello!<|im_end|>\n");
    free(out);
}

TD_TEST(errors_and_free_roles) {
    char *out = (char *)"sentinel";
    td_err_t err = {0};
    td_chat_msg_t bad_content[2] = {{"user", "a"}, {"assistant", NULL}};
    CHECK_EQ_INT(td_chat_apply(TD_CHAT_CHATML, bad_content, 2, 1, &out, &err), TD_ERR_ARG);
    CHECK(out == NULL);
    CHECK(strstr(err.msg, "message 1") != NULL);
    td_chat_msg_t bad_role[1] = {{NULL, "a"}};
    CHECK_EQ_INT(td_chat_apply(TD_CHAT_LLAMA3, bad_role, 1, 1, &out, &err), TD_ERR_ARG);
    CHECK_EQ_INT(td_chat_apply(TD_CHAT_CHATML, NULL, 2, 1, &out, &err), TD_ERR_ARG);
    CHECK_EQ_INT(td_chat_apply(TD_CHAT_CHATML, bad_content, -1, 1, &out, &err), TD_ERR_ARG);
    CHECK_EQ_INT(td_chat_apply((td_chat_kind_t)7, bad_content, 1, 1, &out, &err), TD_ERR_ARG);
    CHECK(out == NULL);
    /* any role is accepted and rendered as given */
    td_chat_msg_t free_role[1] = {{"narrator", "once upon a time"}};
    CHECK_EQ_INT(td_chat_apply(TD_CHAT_CHATML, free_role, 1, 0, &out, &err), TD_OK);
    CHECK(out && strstr(out, "<|im_start|>narrator\nonce upon a time<|im_end|>\n") != NULL);
    free(out);
    /* names */
    CHECK_EQ_INT(td_chat_kind_from_name("chatml"), TD_CHAT_CHATML);
    CHECK_EQ_INT(td_chat_kind_from_name("llama3"), TD_CHAT_LLAMA3);
    CHECK_EQ_INT(td_chat_kind_from_name("none"), TD_CHAT_NONE);
    CHECK_EQ_INT(td_chat_kind_from_name("jinja"), -1);
    CHECK_EQ_INT(td_chat_kind_from_name(NULL), -1);
    CHECK_STR(td_chat_kind_name(TD_CHAT_LLAMA3), "llama3");
    /* a directory without any config */
    td_chat_format_t fmt;
    CHECK_EQ_INT(td_chat_format_detect("/nonexistent/tandem/model", &fmt, &err), TD_OK);
    CHECK(fmt.kind == TD_CHAT_NONE);
    CHECK(td_chat_detect("/nonexistent/tandem/model") == TD_CHAT_NONE);
}

TD_TEST(parse_edge_cases) {
    td_chat_format_t fmt;
    td_err_t err = {0};
    /* chat_template of the wrong type */
    const char *wrong = "{\"chat_template\": 42}";
    CHECK_EQ_INT(td_chat_format_parse(wrong, strlen(wrong), NULL, &fmt, &err), TD_ERR_FORMAT);
    CHECK(fmt.kind == TD_CHAT_NONE);
    /* a template literal with the system head but no default text is not a default prompt */
    const char *nodef =
        "{\"chat_template\": \"{{ '<|im_start|>system\\\\n' + m + '<|im_end|>\\\\n' }}\"}";
    CHECK_EQ_INT(td_chat_format_parse(nodef, strlen(nodef), NULL, &fmt, &err), TD_OK);
    CHECK(fmt.kind == TD_CHAT_CHATML && !fmt.has_default_system);
    /* double-quoted literal with a real newline */
    const char *dq =
        "{\"chat_template\": \"{{ \\\"<|im_start|>system\\nBe kind.<|im_end|>\\n\\\" }}\"}";
    CHECK_EQ_INT(td_chat_format_parse(dq, strlen(dq), NULL, &fmt, &err), TD_OK);
    CHECK(fmt.has_default_system);
    CHECK_STR(fmt.default_system, "Be kind.");
    /* the config's template wins over chat_template.jinja; jinja alone is used */
    const char *llama =
        "{\"chat_template\": \"<|start_header_id|>{{ bos_token }}\", \"bos_token\": \"<s>\"}";
    CHECK_EQ_INT(td_chat_format_parse(llama, strlen(llama), "<|im_start|>", &fmt, &err), TD_OK);
    CHECK(fmt.kind == TD_CHAT_LLAMA3);
    CHECK_STR(fmt.bos, "<s>");
    CHECK_EQ_INT(td_chat_format_parse(NULL, 0, "<|im_start|>", &fmt, &err), TD_OK);
    CHECK(fmt.kind == TD_CHAT_CHATML && !fmt.has_default_system);
    /* a LLaMA-3 template that writes no BOS */
    const char *nobos = "{\"chat_template\": \"<|start_header_id|>\", \"bos_token\": \"<s>\"}";
    CHECK_EQ_INT(td_chat_format_parse(nobos, strlen(nobos), NULL, &fmt, &err), TD_OK);
    CHECK_STR(fmt.bos, "");
}

/* A GGUF carries its template as a string (tokenizer.chat_template): SmolLM2's, byte for byte
 * from the real model (tools/make_gguf_tokenizer_fixtures.py), is ChatML with SmolLM's default
 * system prompt, and renders as transformers renders it. */
TD_TEST(gguf_template_string_smollm2) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/smollm2-gguf/chat_template.jinja", td_test_data());
    char *tmpl = NULL;
    size_t len = 0;
    td_err_t err = {0};
    REQUIRE(td_read_file(path, &tmpl, &len, &err) == TD_OK);
    td_chat_format_t fmt;
    CHECK_EQ_INT(td_chat_format_from_template(tmpl, "<|im_start|>", &fmt, &err), TD_OK);
    CHECK_EQ_INT(fmt.kind, TD_CHAT_CHATML);
    CHECK(fmt.has_default_system);
    CHECK_STR(fmt.default_system,
              "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
    CHECK_STR(fmt.bos, "");
    s_run_cases_at("smollm2-gguf", "tokenizers/smollm2-gguf/chat_cases.json", &fmt);
    /* the same text as a chat_template.jinja or a tokenizer_config.json string */
    td_chat_format_t f2;
    CHECK_EQ_INT(td_chat_format_parse(NULL, 0, tmpl, &f2, &err), TD_OK);
    CHECK(memcmp(&f2, &fmt, sizeof f2) == 0);
    free(tmpl);

    /* no template, another family, a LLaMA-3 template taking the GGUF's BOS text */
    CHECK_EQ_INT(td_chat_format_from_template(NULL, NULL, &fmt, &err), TD_OK);
    CHECK_EQ_INT(fmt.kind, TD_CHAT_NONE);
    CHECK_EQ_INT(td_chat_format_from_template("", NULL, &fmt, &err), TD_OK);
    CHECK_EQ_INT(fmt.kind, TD_CHAT_NONE);
    CHECK_EQ_INT(td_chat_format_from_template("{{ '<start_of_turn>' }}", NULL, &fmt, &err), TD_OK);
    CHECK_EQ_INT(fmt.kind, TD_CHAT_NONE);
    const char *l3 = "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] "
                     "+ '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
                     "{% endfor %}";
    CHECK_EQ_INT(td_chat_format_from_template(l3, "<|begin_of_text|>", &fmt, &err), TD_OK);
    CHECK_EQ_INT(fmt.kind, TD_CHAT_LLAMA3);
    CHECK_STR(fmt.bos, "<|begin_of_text|>");
    CHECK_EQ_INT(td_chat_format_from_template(l3, NULL, &fmt, &err), TD_OK);
    CHECK_STR(fmt.bos, "");
    CHECK_EQ_INT(td_chat_format_from_template(l3, NULL, NULL, &err), TD_ERR_ARG);
}

TD_TEST_MAIN()
