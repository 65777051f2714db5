/* test_config.c - config.json -> td_config_t for every family, from configs with the real field
 * names and values of published checkpoints (Qwen2.5-0.5B, SmolLM2-135M, Dream-v0-7B,
 * LLaDA-8B, GPT-2, DiffuGPT), from the config.json files transformers 5 wrote for the fixtures in
 * tests/data/st, and every refusal: unknown architectures by name, wrong types, missing and
 * out-of-range fields, unsupported RoPE scaling. */
#include "model/config.h"
#include "tests/tdtest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *QWEN25_05B =
    "{\"architectures\": [\"Qwen2ForCausalLM\"], \"attention_dropout\": 0.0,"
    " \"bos_token_id\": 151643, \"eos_token_id\": 151643, \"hidden_act\": \"silu\","
    " \"hidden_size\": 896, \"initializer_range\": 0.02, \"intermediate_size\": 4864,"
    " \"max_position_embeddings\": 32768, \"max_window_layers\": 24, \"model_type\": \"qwen2\","
    " \"num_attention_heads\": 14, \"num_hidden_layers\": 24, \"num_key_value_heads\": 2,"
    " \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"sliding_window\": 32768,"
    " \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\","
    " \"transformers_version\": \"4.40.1\", \"use_cache\": true, \"use_sliding_window\": false,"
    " \"vocab_size\": 151936}";

static const char *SMOLLM2_135M =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false,"
    " \"attention_dropout\": 0.0, \"bos_token_id\": 1, \"eos_token_id\": 2,"
    " \"hidden_act\": \"silu\", \"hidden_size\": 576, \"initializer_range\": 0.041666666666666664,"
    " \"intermediate_size\": 1536, \"is_llama_config\": true, \"max_position_embeddings\": 8192,"
    " \"model_type\": \"llama\", \"num_attention_heads\": 9, \"num_hidden_layers\": 30,"
    " \"num_key_value_heads\": 3, \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05,"
    " \"rope_interleaved\": false, \"rope_scaling\": null, \"rope_theta\": 100000,"
    " \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\", \"use_cache\": true,"
    " \"vocab_size\": 49152}";

static const char *DREAM_7B =
    "{\"architectures\": [\"DreamModel\"], \"attention_dropout\": 0.0,"
    " \"auto_map\": {\"AutoConfig\": \"configuration_dream.DreamConfig\","
    " \"AutoModel\": \"modeling_dream.DreamModel\"},"
    " \"bos_token_id\": 151665, \"eos_token_id\": 151643, \"hidden_act\": \"silu\","
    " \"hidden_size\": 3584, \"initializer_range\": 0.02, \"intermediate_size\": 18944,"
    " \"mask_token_id\": 151666, \"max_position_embeddings\": 131072,"
    " \"max_window_layers\": 28, \"model_type\": \"Dream\", \"num_attention_heads\": 28,"
    " \"num_hidden_layers\": 28, \"num_key_value_heads\": 4, \"pad_token_id\": 151643,"
    " \"rms_norm_eps\": 1e-06, \"rope_scaling\": null, \"rope_theta\": 1000000.0,"
    " \"sliding_window\": null, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\","
    " \"use_cache\": true, \"use_sliding_window\": false, \"vocab_size\": 152064}";

static const char *LLADA_8B =
    "{\"activation_type\": \"silu\", \"alibi\": false, \"alibi_bias_max\": 8.0,"
    " \"architectures\": [\"LLaDAModelLM\"], \"attention_dropout\": 0.0,"
    " \"attention_layer_norm\": false, \"attention_layer_norm_with_affine\": true,"
    " \"auto_map\": {\"AutoConfig\": \"configuration_llada.LLaDAConfig\"},"
    " \"bias_for_layer_norm\": false, \"block_group_size\": 1, \"block_type\": \"llama\","
    " \"d_model\": 4096, \"embedding_dropout\": 0.0, \"embedding_size\": 126464,"
    " \"eos_token_id\": 126081, \"flash_attention\": false, \"include_bias\": false,"
    " \"include_qkv_bias\": false, \"init_cutoff_factor\": null, \"init_device\": \"meta\","
    " \"init_fn\": \"mitchell\", \"init_std\": 0.02, \"input_emb_norm\": false,"
    " \"layer_norm_type\": \"rms\", \"layer_norm_with_affine\": true, \"mask_token_id\": 126336,"
    " \"max_sequence_length\": 4096, \"mlp_hidden_size\": 12288, \"mlp_ratio\": 4,"
    " \"model_type\": \"llada\", \"multi_query_attention\": null, \"n_heads\": 32,"
    " \"n_kv_heads\": 32, \"n_layers\": 32, \"pad_token_id\": 126081,"
    " \"precision\": \"amp_bf16\", \"residual_dropout\": 0.0, \"rms_norm_eps\": 1e-05,"
    " \"rope\": true, \"rope_full_precision\": true, \"rope_theta\": 500000.0,"
    " \"scale_logits\": false, \"transformers_version\": \"4.46.3\", \"use_cache\": false,"
    " \"vocab_size\": 126464, \"weight_tying\": false}";

static const char *GPT2_SMALL =
    "{\"activation_function\": \"gelu_new\", \"architectures\": [\"GPT2LMHeadModel\"],"
    " \"attn_pdrop\": 0.1, \"bos_token_id\": 50256, \"embd_pdrop\": 0.1,"
    " \"eos_token_id\": 50256, \"initializer_range\": 0.02, \"layer_norm_epsilon\": 1e-05,"
    " \"model_type\": \"gpt2\", \"n_ctx\": 1024, \"n_embd\": 768, \"n_head\": 12,"
    " \"n_layer\": 12, \"n_positions\": 1024, \"resid_pdrop\": 0.1,"
    " \"summary_activation\": null, \"summary_first_dropout\": 0.1,"
    " \"summary_proj_to_labels\": true, \"summary_type\": \"cls_index\","
    " \"summary_use_proj\": true,"
    " \"task_specific_params\": {\"text-generation\": {\"do_sample\": true, \"max_length\": 50}},"
    " \"vocab_size\": 50257}";

/* --- helpers -----------------------------------------------------------------------------------
 */

static int s_parse(const char *json, td_config_t *cfg, td_err_t *err) {
    memset(err, 0, sizeof *err);
    return td_config_parse(json, strlen(json), cfg, err);
}

/* Returns json with the first occurrence of `from` replaced by `to` (static buffer ring). */
static const char *s_edit(const char *json, const char *from, const char *to) {
    static char bufs[4][8192];
    static int k;
    char *out = bufs[k++ % 4];
    const char *at = strstr(json, from);
    if (!at) {
        fprintf(stderr, "s_edit: '%s' not found\n", from);
        exit(1);
    }
    snprintf(out, 8192, "%.*s%s%s", (int)(at - json), json, to, at + strlen(from));
    return out;
}

/* Parsing must fail with code and a message holding each needle; cfg must stay untouched. */
static void s_refuse(const char *json, int code, const char *n1, const char *n2) {
    td_config_t cfg;
    memset(&cfg, 0xAB, sizeof cfg);
    td_config_t before = cfg;
    td_err_t err;
    int rc = s_parse(json, &cfg, &err);
    CHECK_EQ_INT(rc, code);
    CHECK_EQ_INT(err.code, code);
    if (getenv("TD_TEST_VERBOSE")) printf("    [%s]\n", err.msg);
    if (n1) CHECK_MSG(strstr(err.msg, n1), "message \"%s\" lacks \"%s\"", err.msg, n1);
    if (n2) CHECK_MSG(strstr(err.msg, n2), "message \"%s\" lacks \"%s\"", err.msg, n2);
    CHECK_MSG(memcmp(&cfg, &before, sizeof cfg) == 0, "cfg written on failure");
}

/* --- every family ------------------------------------------------------------------------------
 */

TD_TEST(qwen25_05b) {
    td_config_t c;
    td_err_t err;
    int rc = s_parse(QWEN25_05B, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    REQUIRE(rc == TD_OK);
    CHECK_EQ_INT(c.arch, TD_ARCH_QWEN2);
    CHECK_STR(td_arch_name(c.arch), "qwen2");
    CHECK_STR(c.arch_name, "Qwen2ForCausalLM");
    CHECK_STR(c.model_type, "qwen2");
    CHECK_EQ_INT(c.n_vocab, 151936);
    CHECK_EQ_INT(c.n_embd, 896);
    CHECK_EQ_INT(c.n_layer, 24);
    CHECK_EQ_INT(c.n_head, 14);
    CHECK_EQ_INT(c.n_kv_head, 2);
    CHECK_EQ_INT(c.head_dim, 64);
    CHECK_EQ_INT(c.n_ff, 4864);
    CHECK_EQ_INT(c.n_ctx_train, 32768);
    CHECK_NEAR(c.rope_theta, 1e6, 0);
    CHECK_NEAR(c.norm_eps, 1e-6, 1e-12);
    CHECK_EQ_INT(c.norm, TD_NORM_RMS);
    CHECK_EQ_INT(c.act, TD_ACT_SILU_GLU);
    CHECK_EQ_INT(c.pos, TD_POS_ROPE);
    CHECK_EQ_INT(c.tie_embeddings, 1);
    CHECK_EQ_INT(c.qkv_bias, 1);
    CHECK_EQ_INT(c.mlp_bias, 0);
    CHECK_EQ_INT(c.causal, 1);
    CHECK_EQ_INT(c.is_diffusion, 0);
    CHECK_EQ_INT(c.logit_shift, 0);
    CHECK_EQ_INT(c.mask_token_id, -1);
    CHECK_EQ_INT(c.bos_token_id, 151643);
    CHECK_EQ_INT(c.eos_token_id, 151643);
    CHECK_EQ_INT(c.pad_token_id, -1);
    /* Qwen2 default: untied when the field is absent */
    rc = s_parse(s_edit(QWEN25_05B, "\"tie_word_embeddings\": true,", ""), &c, &err);
    CHECK_EQ_INT(rc, TD_OK);
    CHECK_EQ_INT(c.tie_embeddings, 0);
    /* model_type alone is enough */
    rc = s_parse(s_edit(QWEN25_05B, "\"architectures\": [\"Qwen2ForCausalLM\"],", ""), &c, &err);
    CHECK_EQ_INT(rc, TD_OK);
    CHECK_EQ_INT(c.arch, TD_ARCH_QWEN2);
    CHECK_STR(c.arch_name, "qwen2");
}

TD_TEST(llama_smollm2) {
    td_config_t c;
    td_err_t err;
    int rc = s_parse(SMOLLM2_135M, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    REQUIRE(rc == TD_OK);
    CHECK_EQ_INT(c.arch, TD_ARCH_LLAMA);
    CHECK_STR(td_arch_name(c.arch), "llama");
    CHECK_EQ_INT(c.n_vocab, 49152);
    CHECK_EQ_INT(c.n_embd, 576);
    CHECK_EQ_INT(c.n_layer, 30);
    CHECK_EQ_INT(c.n_head, 9);
    CHECK_EQ_INT(c.n_kv_head, 3);
    CHECK_EQ_INT(c.head_dim, 64);
    CHECK_EQ_INT(c.n_ff, 1536);
    CHECK_EQ_INT(c.n_ctx_train, 8192);
    CHECK_NEAR(c.rope_theta, 100000, 0);
    CHECK_NEAR(c.norm_eps, 1e-5, 1e-12);
    CHECK_EQ_INT(c.tie_embeddings, 1);
    CHECK_EQ_INT(c.qkv_bias, 0);
    CHECK_EQ_INT(c.mlp_bias, 0);
    CHECK_EQ_INT(c.causal, 1);
    CHECK_EQ_INT(c.is_diffusion, 0);
    CHECK_EQ_INT(c.bos_token_id, 1);
    CHECK_EQ_INT(c.eos_token_id, 2);
    /* LLaMA default: untied, no bias, theta 10000, kv heads = heads */
    const char *j = s_edit(SMOLLM2_135M, "\"tie_word_embeddings\": true,", "");
    j = s_edit(j, "\"rope_theta\": 100000,", "");
    j = s_edit(j, "\"num_key_value_heads\": 3,", "");
    rc = s_parse(j, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    CHECK_EQ_INT(c.tie_embeddings, 0);
    CHECK_NEAR(c.rope_theta, 10000, 0);
    CHECK_EQ_INT(c.n_kv_head, 9);
    /* explicit head_dim wins over hidden/heads */
    rc = s_parse(s_edit(SMOLLM2_135M, "\"hidden_act\"", "\"head_dim\": 128, \"hidden_act\""), &c,
                 &err);
    CHECK_EQ_INT(rc, TD_OK);
    CHECK_EQ_INT(c.head_dim, 128);
    /* attention_bias together with mlp_bias */
    j = s_edit(SMOLLM2_135M, "\"attention_bias\": false",
               "\"attention_bias\": true, \"mlp_bias\": true");
    rc = s_parse(j, &c, &err);
    CHECK_EQ_INT(rc, TD_OK);
    CHECK_EQ_INT(c.qkv_bias, 1);
    CHECK_EQ_INT(c.mlp_bias, 1);
    /* attention_bias alone also biases o_proj, which the struct cannot express: refused */
    s_refuse(s_edit(SMOLLM2_135M, "\"attention_bias\": false", "\"attention_bias\": true"),
             TD_ERR_UNSUPPORTED, "attention_bias", NULL);
}

TD_TEST(dream_7b) {
    td_config_t c;
    td_err_t err;
    int rc = s_parse(DREAM_7B, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    REQUIRE(rc == TD_OK);
    CHECK_EQ_INT(c.arch, TD_ARCH_DREAM);
    CHECK_STR(td_arch_name(c.arch), "dream");
    CHECK_STR(c.arch_name, "DreamModel");
    CHECK_STR(c.model_type, "Dream");
    CHECK_EQ_INT(c.n_vocab, 152064);
    CHECK_EQ_INT(c.n_embd, 3584);
    CHECK_EQ_INT(c.n_layer, 28);
    CHECK_EQ_INT(c.n_head, 28);
    CHECK_EQ_INT(c.n_kv_head, 4);
    CHECK_EQ_INT(c.head_dim, 128);
    CHECK_EQ_INT(c.n_ff, 18944);
    CHECK_EQ_INT(c.n_ctx_train, 131072);
    CHECK_NEAR(c.rope_theta, 1e6, 0);
    CHECK_NEAR(c.norm_eps, 1e-6, 1e-12);
    CHECK_EQ_INT(c.tie_embeddings, 0);
    CHECK_EQ_INT(c.qkv_bias, 1);
    CHECK_EQ_INT(c.causal, 0);
    CHECK_EQ_INT(c.is_diffusion, 1);
    CHECK_EQ_INT(c.logit_shift, 1);
    CHECK_EQ_INT(c.mask_token_id, 151666);
    CHECK_EQ_INT(c.bos_token_id, 151665);
    CHECK_EQ_INT(c.eos_token_id, 151643);
    CHECK_EQ_INT(c.pad_token_id, 151643);
    /* default mask id when the config lacks it; model_type alone identifies Dream */
    const char *j = s_edit(DREAM_7B, "\"mask_token_id\": 151666,", "");
    j = s_edit(j, "\"architectures\": [\"DreamModel\"],", "");
    rc = s_parse(j, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    CHECK_EQ_INT(c.arch, TD_ARCH_DREAM);
    CHECK_EQ_INT(c.mask_token_id, 151666);
    /* a mask outside the vocabulary is an error */
    s_refuse(s_edit(DREAM_7B, "\"mask_token_id\": 151666", "\"mask_token_id\": 152064"),
             TD_ERR_FORMAT, "mask_token_id", NULL);
}

TD_TEST(llada_8b) {
    td_config_t c;
    td_err_t err;
    int rc = s_parse(LLADA_8B, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    REQUIRE(rc == TD_OK);
    CHECK_EQ_INT(c.arch, TD_ARCH_LLADA);
    CHECK_STR(td_arch_name(c.arch), "llada");
    CHECK_STR(c.arch_name, "LLaDAModelLM");
    CHECK_EQ_INT(c.n_vocab, 126464);
    CHECK_EQ_INT(c.n_embd, 4096);
    CHECK_EQ_INT(c.n_layer, 32);
    CHECK_EQ_INT(c.n_head, 32);
    CHECK_EQ_INT(c.n_kv_head, 32);
    CHECK_EQ_INT(c.head_dim, 128);
    CHECK_EQ_INT(c.n_ff, 12288);
    CHECK_EQ_INT(c.n_ctx_train, 4096);
    CHECK_NEAR(c.rope_theta, 500000, 0);
    CHECK_NEAR(c.norm_eps, 1e-5, 1e-12);
    CHECK_EQ_INT(c.norm, TD_NORM_RMS);
    CHECK_EQ_INT(c.act, TD_ACT_SILU_GLU);
    CHECK_EQ_INT(c.pos, TD_POS_ROPE);
    CHECK_EQ_INT(c.tie_embeddings, 0);
    CHECK_EQ_INT(c.qkv_bias, 0);
    CHECK_EQ_INT(c.mlp_bias, 0);
    CHECK_EQ_INT(c.causal, 0);
    CHECK_EQ_INT(c.is_diffusion, 1);
    CHECK_EQ_INT(c.logit_shift, 0);
    CHECK_EQ_INT(c.mask_token_id, 126336);
    CHECK_EQ_INT(c.eos_token_id, 126081);
    CHECK_EQ_INT(c.pad_token_id, 126081);
    CHECK_EQ_INT(c.bos_token_id, -1);
    /* embedding_size (padded) wins over vocab_size; defaults for kv heads, mask, eps, mlp size */
    const char *j = s_edit(LLADA_8B, "\"embedding_size\": 126464", "\"embedding_size\": 126720");
    j = s_edit(j, "\"n_kv_heads\": 32,", "");
    j = s_edit(j, "\"mask_token_id\": 126336,", "");
    j = s_edit(j, "\"rms_norm_eps\": 1e-05,", "");
    j = s_edit(j, "\"mlp_hidden_size\": 12288,", "");
    j = s_edit(j, "\"include_qkv_bias\": false", "\"include_qkv_bias\": true");
    rc = s_parse(j, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    CHECK_EQ_INT(c.n_vocab, 126720);
    CHECK_EQ_INT(c.n_kv_head, 32);
    CHECK_EQ_INT(c.mask_token_id, 126336);
    CHECK_NEAR(c.norm_eps, 1e-5, 1e-12);
    CHECK_EQ_INT(c.n_ff, 4 * 4096);
    CHECK_EQ_INT(c.qkv_bias, 1);
    CHECK_EQ_INT(c.mlp_bias, 0);
    /* GQA, and vocab_size when there is no embedding_size */
    j = s_edit(LLADA_8B, "\"n_kv_heads\": 32", "\"n_kv_heads\": 8");
    j = s_edit(j, "\"embedding_size\": 126464,", "");
    rc = s_parse(j, &c, &err);
    CHECK_EQ_INT(rc, TD_OK);
    CHECK_EQ_INT(c.n_kv_head, 8);
    CHECK_EQ_INT(c.n_vocab, 126464);
    s_refuse(s_edit(LLADA_8B, "\"block_type\": \"llama\"", "\"block_type\": \"sequential\""),
             TD_ERR_UNSUPPORTED, "sequential", NULL);
    s_refuse(s_edit(LLADA_8B, "\"d_model\": 4096", "\"d_model\": \"4096\""), TD_ERR_FORMAT,
             "'d_model'", "string");
}

TD_TEST(gpt2_small) {
    td_config_t c;
    td_err_t err;
    int rc = s_parse(GPT2_SMALL, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    REQUIRE(rc == TD_OK);
    CHECK_EQ_INT(c.arch, TD_ARCH_GPT2);
    CHECK_STR(td_arch_name(c.arch), "gpt2");
    CHECK_STR(c.arch_name, "GPT2LMHeadModel");
    CHECK_EQ_INT(c.n_vocab, 50257);
    CHECK_EQ_INT(c.n_embd, 768);
    CHECK_EQ_INT(c.n_layer, 12);
    CHECK_EQ_INT(c.n_head, 12);
    CHECK_EQ_INT(c.n_kv_head, 12);
    CHECK_EQ_INT(c.head_dim, 64);
    CHECK_EQ_INT(c.n_ff, 3072);
    CHECK_EQ_INT(c.n_ctx_train, 1024);
    CHECK_NEAR(c.norm_eps, 1e-5, 1e-12);
    CHECK_EQ_INT(c.norm, TD_NORM_LAYER);
    CHECK_EQ_INT(c.act, TD_ACT_GELU_TANH);
    CHECK_EQ_INT(c.pos, TD_POS_LEARNED);
    CHECK_EQ_INT(c.tie_embeddings, 1);
    CHECK_EQ_INT(c.qkv_bias, 1);
    CHECK_EQ_INT(c.mlp_bias, 1);
    CHECK_EQ_INT(c.causal, 1);
    CHECK_EQ_INT(c.is_diffusion, 0);
    CHECK_EQ_INT(c.logit_shift, 0);
    CHECK_EQ_INT(c.mask_token_id, -1);
    CHECK_EQ_INT(c.bos_token_id, 50256);
    CHECK_EQ_INT(c.eos_token_id, 50256);
    /* n_inner given; tie_word_embeddings false */
    const char *j = s_edit(GPT2_SMALL, "\"n_head\": 12,", "\"n_head\": 12, \"n_inner\": 1000,");
    j = s_edit(j, "\"vocab_size\"", "\"tie_word_embeddings\": false, \"vocab_size\"");
    rc = s_parse(j, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    CHECK_EQ_INT(c.n_ff, 1000);
    CHECK_EQ_INT(c.tie_embeddings, 0);
    s_refuse(s_edit(GPT2_SMALL, "\"gelu_new\"", "\"relu\""), TD_ERR_UNSUPPORTED, "relu", NULL);
    s_refuse(s_edit(GPT2_SMALL, "\"n_head\": 12", "\"n_head\": 7"), TD_ERR_FORMAT, "'n_embd'",
             "'n_head'");
}

TD_TEST(diffugpt) {
    td_config_t c;
    td_err_t err;
    /* GPT-2 config whose class says Diffu (any case) */
    const char *j = s_edit(GPT2_SMALL, "\"GPT2LMHeadModel\"", "\"DiffuGPTLMHeadModel\"");
    int rc = s_parse(j, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    REQUIRE(rc == TD_OK);
    CHECK_EQ_INT(c.arch, TD_ARCH_DIFFUGPT);
    CHECK_STR(td_arch_name(c.arch), "diffugpt");
    CHECK_EQ_INT(c.n_embd, 768);
    CHECK_EQ_INT(c.n_ff, 3072);
    CHECK_EQ_INT(c.norm, TD_NORM_LAYER);
    CHECK_EQ_INT(c.pos, TD_POS_LEARNED);
    CHECK_EQ_INT(c.causal, 0);
    CHECK_EQ_INT(c.is_diffusion, 1);
    CHECK_EQ_INT(c.logit_shift, 1);
    CHECK_EQ_INT(c.mask_token_id, 10541); /* vocab 50257: the small model's mask */
    rc = s_parse(s_edit(GPT2_SMALL, "\"GPT2LMHeadModel\"", "\"gpt2_diffusion\""), &c, &err);
    CHECK_EQ_INT(rc, TD_OK);
    CHECK_EQ_INT(c.arch, TD_ARCH_DIFFUGPT);
    /* model_type diffugpt, vocab grown by the added mask token */
    j = s_edit(GPT2_SMALL, "\"model_type\": \"gpt2\"", "\"model_type\": \"diffugpt\"");
    j = s_edit(j, "\"vocab_size\": 50257", "\"vocab_size\": 50258");
    rc = s_parse(j, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    CHECK_EQ_INT(c.arch, TD_ARCH_DIFFUGPT);
    CHECK_EQ_INT(c.mask_token_id, 50257);
    /* an explicit mask id wins */
    j = s_edit(j, "\"vocab_size\"", "\"mask_token_id\": 42, \"vocab_size\"");
    rc = s_parse(j, &c, &err);
    CHECK_EQ_INT(rc, TD_OK);
    CHECK_EQ_INT(c.mask_token_id, 42);
}

/* config.json files transformers 5.24 wrote (rope_parameters, eos as a list, null fields). */
TD_TEST(transformers5_files) {
    char dir[512];
    td_config_t c;
    td_err_t err = {0};
    snprintf(dir, sizeof dir, "%s/st/qwen2-tiny", td_test_data());
    int rc = td_config_load(dir, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    if (rc == TD_OK) {
        CHECK_EQ_INT(c.arch, TD_ARCH_QWEN2);
        CHECK_EQ_INT(c.n_vocab, 40);
        CHECK_EQ_INT(c.n_embd, 16);
        CHECK_EQ_INT(c.n_ff, 24);
        CHECK_EQ_INT(c.n_layer, 1);
        CHECK_EQ_INT(c.n_head, 4);
        CHECK_EQ_INT(c.n_kv_head, 2);
        CHECK_EQ_INT(c.head_dim, 4);
        CHECK_EQ_INT(c.n_ctx_train, 64);
        CHECK_NEAR(c.rope_theta, 1e6, 0); /* from rope_parameters */
        CHECK_EQ_INT(c.tie_embeddings, 1);
        CHECK_EQ_INT(c.bos_token_id, 1);
        CHECK_EQ_INT(c.eos_token_id, 2); /* [2, 3] -> first */
        CHECK_EQ_INT(c.pad_token_id, -1);
    }
    snprintf(dir, sizeof dir, "%s/st/gpt2-sharded/config.json", td_test_data());
    rc = td_config_load(dir, &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    if (rc == TD_OK) {
        CHECK_EQ_INT(c.arch, TD_ARCH_GPT2);
        CHECK_EQ_INT(c.n_vocab, 32);
        CHECK_EQ_INT(c.n_embd, 8);
        CHECK_EQ_INT(c.n_ff, 32); /* n_inner null -> 4 * n_embd */
        CHECK_EQ_INT(c.n_ctx_train, 16);
        CHECK_EQ_INT(c.eos_token_id, 31);
    }
    rc = td_config_load("/nonexistent/dir", &c, &err);
    CHECK_EQ_INT(rc, TD_ERR_IO);
    CHECK(strstr(err.msg, "/nonexistent/dir/config.json") != NULL);
}

/* --- detection and refusals --------------------------------------------------------------------
 */

TD_TEST(unknown_architecture_refused_by_name) {
    const char *j = s_edit(SMOLLM2_135M, "\"LlamaForCausalLM\"", "\"MistralForCausalLM\"");
    j = s_edit(j, "\"model_type\": \"llama\"", "\"model_type\": \"mistral\"");
    s_refuse(j, TD_ERR_UNSUPPORTED, "'MistralForCausalLM'", "supported: qwen2, llama, dream");
    /* a known model_type does not rescue an unknown class */
    s_refuse(s_edit(SMOLLM2_135M, "\"LlamaForCausalLM\"", "\"DiffuLLaMA\""), TD_ERR_UNSUPPORTED,
             "'DiffuLLaMA'", NULL);
    s_refuse("{\"model_type\": \"t5\", \"d_model\": 512}", TD_ERR_UNSUPPORTED, "'t5'", "gpt2");
    s_refuse("{\"hidden_size\": 512}", TD_ERR_FORMAT, "model_type", NULL);
}

TD_TEST(tandem_arch_override) {
    td_config_t c;
    td_err_t err;
    /* a Qwen2-shaped config declared to be Dream (e.g. a fine-tune saved under the base class) */
    int rc = s_parse(s_edit(QWEN25_05B, "{", "{\"tandem_arch\": \"dream\", "), &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    CHECK_EQ_INT(c.arch, TD_ARCH_DREAM);
    CHECK_EQ_INT(c.causal, 0);
    CHECK_EQ_INT(c.logit_shift, 1);
    CHECK_EQ_INT(c.mask_token_id, 151666);
    /* it also rescues an unknown class */
    const char *j = s_edit(SMOLLM2_135M, "\"LlamaForCausalLM\"", "\"MyLlama\"");
    rc = s_parse(s_edit(j, "{", "{\"tandem_arch\": \"llama\", "), &c, &err);
    CHECK_EQ_INT(rc, TD_OK);
    CHECK_EQ_INT(c.arch, TD_ARCH_LLAMA);
    s_refuse(s_edit(QWEN25_05B, "{", "{\"tandem_arch\": \"mamba\", "), TD_ERR_UNSUPPORTED,
             "'mamba'", NULL);
    s_refuse(s_edit(QWEN25_05B, "{", "{\"tandem_arch\": 3, "), TD_ERR_FORMAT, "'tandem_arch'",
             NULL);
}

TD_TEST(wrong_types_and_missing_fields) {
    s_refuse(s_edit(QWEN25_05B, "\"hidden_size\": 896", "\"hidden_size\": \"896\""), TD_ERR_FORMAT,
             "'hidden_size'", "string");
    s_refuse(s_edit(QWEN25_05B, "\"hidden_size\": 896", "\"hidden_size\": 896.5"), TD_ERR_FORMAT,
             "'hidden_size'", NULL);
    s_refuse(s_edit(QWEN25_05B, "\"hidden_size\": 896", "\"hidden_size\": 1e300"), TD_ERR_FORMAT,
             "'hidden_size'", NULL);
    s_refuse(s_edit(QWEN25_05B, "\"hidden_size\": 896", "\"hidden_size\": [896]"), TD_ERR_FORMAT,
             "'hidden_size'", "array");
    s_refuse(s_edit(QWEN25_05B, "\"num_hidden_layers\": 24,", ""), TD_ERR_FORMAT,
             "'num_hidden_layers'", "missing");
    s_refuse(s_edit(QWEN25_05B, "\"vocab_size\": 151936", "\"vocab_size\": null"), TD_ERR_FORMAT,
             "'vocab_size'", "missing");
    s_refuse(s_edit(QWEN25_05B, "\"rope_theta\": 1000000.0", "\"rope_theta\": \"1e6\""),
             TD_ERR_FORMAT, "'rope_theta'", NULL);
    s_refuse(
        s_edit(QWEN25_05B, "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": \"yes\""),
        TD_ERR_FORMAT, "'tie_word_embeddings'", NULL);
    s_refuse(s_edit(QWEN25_05B, "\"eos_token_id\": 151643", "\"eos_token_id\": \"</s>\""),
             TD_ERR_FORMAT, "'eos_token_id'", NULL);
    s_refuse(s_edit(QWEN25_05B, "[\"Qwen2ForCausalLM\"]", "\"Qwen2ForCausalLM\""), TD_ERR_FORMAT,
             "'architectures'", NULL);
    s_refuse(s_edit(QWEN25_05B, "[\"Qwen2ForCausalLM\"]", "[7]"), TD_ERR_FORMAT, "'architectures'",
             NULL);
    s_refuse(s_edit(QWEN25_05B, "\"model_type\": \"qwen2\"", "\"model_type\": {}"), TD_ERR_FORMAT,
             "'model_type'", NULL);
    s_refuse(s_edit(QWEN25_05B, "\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": -1"), TD_ERR_FORMAT,
             "rms_norm_eps", NULL);
    s_refuse("{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": ", TD_ERR_FORMAT, "JSON",
             NULL);
    s_refuse("[1, 2]", TD_ERR_FORMAT, "object", NULL);
    s_refuse("", TD_ERR_FORMAT, NULL, NULL);
    /* the length is respected: text after len is not read */
    td_config_t c;
    td_err_t err;
    CHECK(td_config_parse(QWEN25_05B, 20, &c, &err) == TD_ERR_FORMAT);
}

TD_TEST(out_of_range_sizes) {
    s_refuse(s_edit(QWEN25_05B, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"),
             TD_ERR_FORMAT, "heads (14)", "(3)");
    s_refuse(s_edit(QWEN25_05B, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 28"),
             TD_ERR_FORMAT, "num_key_value_heads", NULL);
    s_refuse(s_edit(QWEN25_05B, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 0"),
             TD_ERR_FORMAT, "num_key_value_heads", NULL);
    s_refuse(s_edit(QWEN25_05B, "\"hidden_size\": 896", "\"hidden_size\": -896"), TD_ERR_FORMAT,
             "hidden_size", NULL);
    s_refuse(s_edit(QWEN25_05B, "\"vocab_size\": 151936", "\"vocab_size\": 16777216"),
             TD_ERR_FORMAT, "vocab_size", NULL);
    s_refuse(s_edit(QWEN25_05B, "\"hidden_act\"", "\"head_dim\": 63, \"hidden_act\""),
             TD_ERR_FORMAT, "head_dim", "even");
    s_refuse(s_edit(QWEN25_05B, "\"hidden_size\": 896", "\"hidden_size\": 900"), TD_ERR_FORMAT,
             "'hidden_size'", "'num_attention_heads'");
    s_refuse(s_edit(QWEN25_05B, "\"intermediate_size\": 4864", "\"intermediate_size\": 0"),
             TD_ERR_FORMAT, "intermediate_size", NULL);
    s_refuse(s_edit(QWEN25_05B, "\"num_hidden_layers\": 24", "\"num_hidden_layers\": 2147483647"),
             TD_ERR_FORMAT, "num_hidden_layers", NULL);
    s_refuse(s_edit(GPT2_SMALL, "\"n_positions\": 1024", "\"n_positions\": 0"), TD_ERR_FORMAT,
             "n_positions", NULL);
    /* bos/eos outside the vocabulary are dropped (transformers only warns), not fatal */
    td_config_t c;
    td_err_t err;
    int rc =
        s_parse(s_edit(GPT2_SMALL, "\"eos_token_id\": 50256", "\"eos_token_id\": 60000"), &c, &err);
    CHECK_EQ_INT(rc, TD_OK);
    CHECK_EQ_INT(c.eos_token_id, -1);
    CHECK_EQ_INT(c.bos_token_id, 50256);
}

TD_TEST(rope_scaling_and_variants) {
    td_config_t c;
    td_err_t err;
    s_refuse(s_edit(SMOLLM2_135M, "\"rope_scaling\": null",
                    "\"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, "
                    "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192, "
                    "\"rope_type\": \"llama3\"}"),
             TD_ERR_UNSUPPORTED, "'llama3'", NULL);
    s_refuse(s_edit(QWEN25_05B, "\"rope_theta\"",
                    "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}, \"rope_theta\""),
             TD_ERR_UNSUPPORTED, "'yarn'", NULL);
    s_refuse(s_edit(QWEN25_05B, "\"rope_theta\"",
                    "\"rope_parameters\": {\"rope_type\": \"dynamic\"}, \"rope_theta\""),
             TD_ERR_UNSUPPORTED, "'dynamic'", NULL);
    int rc = s_parse(s_edit(QWEN25_05B, "\"rope_theta\"",
                            "\"rope_scaling\": {\"type\": \"default\"}, \"rope_theta\""),
                     &c, &err);
    CHECK_MSG(rc == TD_OK, "%s", err.msg);
    s_refuse(s_edit(QWEN25_05B, "\"use_sliding_window\": false", "\"use_sliding_window\": true"),
             TD_ERR_UNSUPPORTED, "sliding", NULL);
    s_refuse(s_edit(QWEN25_05B, "\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""),
             TD_ERR_UNSUPPORTED, "'gelu'", NULL);
    s_refuse(s_edit(SMOLLM2_135M, "\"rope_interleaved\": false", "\"rope_interleaved\": true"),
             TD_ERR_UNSUPPORTED, "rope_interleaved", NULL);
}

TD_TEST(arch_names) {
    CHECK_STR(td_arch_name(TD_ARCH_QWEN2), "qwen2");
    CHECK_STR(td_arch_name(TD_ARCH_LLAMA), "llama");
    CHECK_STR(td_arch_name(TD_ARCH_DREAM), "dream");
    CHECK_STR(td_arch_name(TD_ARCH_LLADA), "llada");
    CHECK_STR(td_arch_name(TD_ARCH_GPT2), "gpt2");
    CHECK_STR(td_arch_name(TD_ARCH_DIFFUGPT), "diffugpt");
    CHECK_STR(td_arch_name(TD_ARCH_COUNT), "?");
}

TD_TEST_MAIN()
