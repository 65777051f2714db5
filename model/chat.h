/* chat.h - built-in chat templates (Qwen ChatML, LLaMA-3 style as used by LLaDA), chosen from the
 * checkpoint's tokenizer_config.json / tokenizer and overridable by name. */
#ifndef TD_CHAT_H
#define TD_CHAT_H

#include "common/td_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum td_chat_kind {
    TD_CHAT_NONE = 0, /* raw text, no template */
    TD_CHAT_CHATML,   /* <|im_start|>role\n...<|im_end|>\n (Qwen2, Dream) */
    TD_CHAT_LLAMA3    /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> (LLaDA, LLaMA 3) */
} td_chat_kind_t;

typedef struct td_chat_msg {
    const char *role;    /* "system", "user", "assistant" */
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

#ifdef __cplusplus
}
#endif
#endif
