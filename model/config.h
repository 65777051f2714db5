/* config.h - HF config.json -> one flat description of the network tandem runs.
 *
 * Architecture adapters map each supported family onto this struct: Qwen2/Qwen2.5, LLaMA, Dream
 * (Qwen2 weights, bidirectional, logit shift, mask token), LLaDA (OLMo-style fields),
 * GPT-2 and DiffuGPT. Anything else is refused by name.
 *
 * Detection, in order:
 *   1. a top-level string "tandem_arch" (one of the td_arch_name() names) overrides everything,
 *      for checkpoints whose config does not say what they are;
 *   2. model_type "diffugpt", or model_type "gpt2" with architectures[0] containing "Diffu"
 *      (any case) -> DIFFUGPT;
 *   3. architectures[0]: Qwen2ForCausalLM, LlamaForCausalLM, DreamModel, LLaDAModelLM,
 *      GPT2LMHeadModel; another class name is refused (even with a known model_type: Fast-dLLM,
 *      DiffuLLaMA, Mistral... compute something else) unless model_type is "dream" or "llada";
 *   4. no architectures: model_type qwen2 / llama / dream / llada / gpt2 (any case).
 * Field sources: Qwen2/LLaMA/Dream use HF names (hidden_size, num_hidden_layers, ...; rope_theta
 * at top level or in transformers 5's rope_parameters); LLaDA uses OLMo names (d_model, n_layers,
 * n_heads, n_kv_heads, mlp_hidden_size or mlp_ratio*d_model, embedding_size else vocab_size,
 * weight_tying default true as in OLMo, include_bias / include_qkv_bias); GPT-2/DiffuGPT use
 * n_embd, n_layer, n_head, n_inner (default 4*n_embd), n_positions. JSON null means absent.
 * Refused as TD_ERR_UNSUPPORTED: rope scaling other than "default", sliding windows, activations
 * other than SiLU (SwiGLU) / tanh-GELU, LLaMA with attention_bias != mlp_bias (o_proj bias alone
 * cannot be expressed here), GPT-2 attention-scaling variants, LLaDA blocks other than "llama". */
#ifndef TD_CONFIG_H
#define TD_CONFIG_H

#include "common/td_common.h"
#include "kernels/backend.h" /* td_rope_layout_t */

#ifdef __cplusplus
extern "C" {
#endif

typedef enum td_arch {
    TD_ARCH_QWEN2 = 0,
    TD_ARCH_LLAMA,
    TD_ARCH_DREAM,
    TD_ARCH_LLADA,
    TD_ARCH_GPT2,
    TD_ARCH_DIFFUGPT,
    TD_ARCH_COUNT
} td_arch_t;

typedef enum td_norm_kind { TD_NORM_RMS = 0, TD_NORM_LAYER } td_norm_kind_t;
typedef enum td_act_kind { TD_ACT_SILU_GLU = 0, TD_ACT_GELU_TANH } td_act_kind_t;
typedef enum td_pos_kind { TD_POS_ROPE = 0, TD_POS_LEARNED } td_pos_kind_t;

typedef struct td_config {
    td_arch_t arch;
    char arch_name[64];  /* e.g. "Qwen2ForCausalLM" (architectures[0]) or model_type */
    char model_type[64]; /* config.json model_type */
    int n_vocab;         /* rows of the embedding / LM head */
    int n_embd;          /* hidden size */
    int n_layer;
    int n_head;
    int n_kv_head;
    int head_dim;
    int n_ff;        /* MLP inner size */
    int n_ctx_train; /* max_position_embeddings / n_positions (0 = unknown) */
    float rope_theta;
    td_rope_layout_t rope_layout; /* TD_ROPE_HALF for HF checkpoints; GGUF llama: interleaved */
    float norm_eps;
    td_norm_kind_t norm;
    td_act_kind_t act;
    td_pos_kind_t pos;
    int tie_embeddings; /* LM head shares the token embedding */
    int qkv_bias;       /* q/k/v projections have a bias */
    int mlp_bias;       /* MLP and attention-output projections have biases (GPT-2) */
    int causal;         /* default attention: 1 for AR models, 0 for diffusion LMs */
    int is_diffusion;   /* a masked-diffusion LM */
    int logit_shift;    /* token i is predicted from the hidden state at i-1 (Dream, DiffuGPT) */
    int mask_token_id;  /* -1 when none */
    int bos_token_id, eos_token_id, pad_token_id; /* -1 when none */
} td_config_t;

const char *td_arch_name(td_arch_t a); /* "qwen2", "llama", "dream", "llada", "gpt2", "diffugpt" */

/* Parses config.json text (len bytes, NUL not needed). Unknown architectures are refused with
 * TD_ERR_UNSUPPORTED naming the architecture; missing, mistyped or out-of-range fields give
 * TD_ERR_FORMAT naming the field. bos/eos/pad ids outside the vocabulary become -1 (with a
 * td_log warning); the mask token must be inside it, and a diffusion LM always has one. *cfg is
 * written only on success. */
int td_config_parse(const char *json, size_t len, td_config_t *cfg, td_err_t *err);
/* Reads DIR/config.json (or DIR itself when it ends in ".json") and parses it; messages name the
 * file. */
int td_config_load(const char *dir, td_config_t *cfg, td_err_t *err);

/* Fills *cfg from GGUF metadata: general.architecture llama, qwen2 or gpt2 (anything else refused
 * by name, TD_ERR_UNSUPPORTED) and the <arch>.* keys (embedding_length, block_count,
 * feed_forward_length, attention.head_count, head_count_kv, key_length, layer_norm_rms_epsilon /
 * layer_norm_epsilon, rope.freq_base, context_length); the vocabulary size from the
 * tokenizer.ggml.tokens list (else <arch>.vocab_size, else token_embd's rows); bos/eos/pad from
 * tokenizer.ggml.*_token_id; tied embeddings when there is no output.weight tensor; llama gets
 * the interleaved RoPE layout (its converter permuted Q/K), qwen2 rotate-half. Missing required
 * keys and wrong types are TD_ERR_FORMAT naming the key; *cfg is written only on success. */
struct td_gguf;
int td_config_from_gguf(const struct td_gguf *g, td_config_t *cfg, td_err_t *err);

/* The one context clamp of the decoding loops: *n_ctx = n_prompt + max_tokens + lookahead, cut to
 * the model's trained context. TD_ERR_ARG when the prompt does not fit: with lookahead 0 when
 * the prompt fills the cut context and tokens were asked for, else when fewer than
 * n_prompt + 2 positions remain (a speculative round needs the prompt and one token). */
int td_config_fit_ctx(const td_config_t *c, int n_prompt, int max_tokens, int lookahead, int *n_ctx,
                      td_err_t *err);

/* The one stop-id check: id is in stop_ids[n_stop], or equals eos (>= 0). */
int td_is_stop_id(const int32_t *stop_ids, int n_stop, int32_t eos, int32_t id);

#ifdef __cplusplus
}
#endif
#endif
