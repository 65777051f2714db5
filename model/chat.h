/* chat.h - built-in chat templates (Qwen ChatML, LLaMA-3 style as used by LLaDA), chosen from the
 * checkpoint's tokenizer_config.json / chat_template.jinja, or a GGUF's template string, and
 * overridable by name. */
#ifndef TD_CHAT_H
#define TD_CHAT_H

#include "common/td_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum td_chat_kind {
    TD_CHAT_NONE = 0, /* raw text, no template */
    TD_CHAT_CHATML,   /* <|im_start|>role\n...<|im_end|>\n (Qwen2, Dream) */
    TD_CHAT_LLAMA3 /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> (LLaDA, LLaMA 3) */
} td_chat_kind_t;

typedef struct td_chat_msg {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} td_chat_msg_t;

/* "none", "chatml", "llama3" -> kind; -1 when unknown. */
int td_chat_kind_from_name(const char *name);
const char *td_chat_kind_name(td_chat_kind_t k);

/* Picks the template for a model directory: reads tokenizer_config.json's chat_template (if any)
 * and the tokenizer's special tokens; TD_CHAT_NONE when the model has no chat format. */
td_chat_kind_t td_chat_detect(const char *model_dir);

/* Renders msgs into a malloc'd string (*out), adding the assistant header when
 * add_generation_prompt is set. Qwen's default system prompt is added for CHATML when the first
 * message is not a system message, as the Qwen2.5 template does. */
int td_chat_apply(td_chat_kind_t kind, const td_chat_msg_t *msgs, int n, int add_generation_prompt,
                  char **out, td_err_t *err);

/* The default system prompt of Qwen2.5's template, which td_chat_apply(TD_CHAT_CHATML) adds. */
#define TD_CHAT_QWEN_SYSTEM "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
/* LLaDA-8B-Instruct's bos_token, which td_chat_apply(TD_CHAT_LLAMA3) puts before the first header
 * (LLaMA 3 itself uses "<|begin_of_text|>": read it with td_chat_format_detect). */
#define TD_CHAT_LLADA_BOS "<|startoftext|>"

/* Renders msgs like td_chat_apply, with the checkpoint's strings spelled out:
 * - CHATML: when default_system is non-NULL and msgs[0] is not a "system" message (or n == 0),
 *   "<|im_start|>system\n{default_system}<|im_end|>\n" comes first; NULL adds nothing.
 * - LLAMA3: bos (NULL = "") is put before the first message's header, and each content is
 *   stripped of leading/trailing whitespace (Python's str.strip() set, as jinja's `trim`).
 * - NONE: the contents concatenated, nothing else (add_generation_prompt ignored).
 * Roles are free text and rendered as given. Returns TD_OK and a malloc'd *out, or TD_ERR_ARG
 * (NULL role or content, n < 0, unknown kind) / TD_ERR_NOMEM with *out left NULL. */
int td_chat_apply_ex(td_chat_kind_t kind, const char *default_system, const char *bos,
                     const td_chat_msg_t *msgs, int n, int add_generation_prompt, char **out,
                     td_err_t *err);

/* A checkpoint's chat format: the family plus the strings its template fills in. */
typedef struct td_chat_format {
    td_chat_kind_t kind;
    int has_default_system; /* CHATML: the template adds default_system when msgs[0] isn't system */
    char default_system[4096]; /* NUL-terminated, "" when has_default_system is 0 */
    char bos[256];             /* LLAMA3: the string before the first header ("" = none) */
} td_chat_format_t;

/* The built-in format of kind, as td_chat_apply renders it (Qwen2.5's default system prompt for
 * CHATML, LLaDA's BOS for LLAMA3). */
void td_chat_format_builtin(td_chat_kind_t kind, td_chat_format_t *fmt);

/* Reads model_dir/tokenizer_config.json (chat_template: a string, or a list of {name, template}
 * where "default" or else the first is used; bos_token: a string or {"content": ...}) and, when
 * the config has no template, model_dir/chat_template.jinja. A template containing "<|im_start|>"
 * is CHATML, and its default system prompt is taken from a string literal of the shape
 * '<|im_start|>system\n' TEXT '<|im_end|>\n' (none if there is no such literal); one containing
 * "<|start_header_id|>" is LLAMA3, with bos = bos_token when the template uses bos_token (or
 * "<|begin_of_text|>" when written literally). No config or no template: NONE. A template of
 * another family: NONE with a warning logged. Returns TD_OK, or TD_ERR_FORMAT (malformed JSON,
 * chat_template of the wrong type), TD_ERR_IO (unreadable file), TD_ERR_UNSUPPORTED (default
 * system prompt or BOS longer than the buffers); fmt is NONE on failure. */
/* model_dir may also be a .gguf file: its tokenizer.chat_template string is the template and the
 * token named by tokenizer.ggml.bos_token_id the bos_token. */
int td_chat_format_detect(const char *model_dir, td_chat_format_t *fmt, td_err_t *err);

/* The same from in-memory text: config_json (tokenizer_config.json, may be NULL) and
 * jinja (chat_template.jinja, may be NULL, used when the config has no chat_template). */
int td_chat_format_parse(const char *config_json, size_t config_len, const char *jinja,
                         td_chat_format_t *fmt, td_err_t *err);

/* The same from a template string alone, as a GGUF carries it (`tokenizer.chat_template`):
 * tmpl (NULL or "" gives NONE) is recognised as in td_chat_format_parse; bos_token is the text of
 * the BOS token (GGUF: tokens[bos_token_id]; may be NULL), used when a LLAMA3 template writes
 * bos_token. SmolLM2's GGUF template gives CHATML with default system prompt "You are a helpful
 * AI assistant named SmolLM, trained by Hugging Face". Errors as td_chat_format_parse (no
 * TD_ERR_FORMAT/TD_ERR_IO: there is no JSON or file); TD_ERR_ARG when fmt is NULL. */
int td_chat_format_from_template(const char *tmpl, const char *bos_token, td_chat_format_t *fmt,
                                 td_err_t *err);

/* td_chat_apply_ex with fmt's strings. */
int td_chat_format_apply(const td_chat_format_t *fmt, const td_chat_msg_t *msgs, int n,
                         int add_generation_prompt, char **out, td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
