"""The chat template an export carries: the prompt format training used (megatron_ext/data/text.py
HFTokenizer.format_prompt), written as Jinja so that `processor.apply_chat_template(messages)`
renders exactly the tokens the model was trained on.

A message's content is a string or a list of parts. Image parts render nothing: a parameter-space
method takes its image through the weights, and VoRA's processor puts its placeholders in front
of the text itself, where training put them. A tokenizer's own template is replaced (SmolLM2's adds
a default system prompt that training never showed the model).
"""

from __future__ import annotations

_TEXT = ("{%- if message['content'] is string -%}{{ message['content'] }}"
         "{%- else -%}{%- for part in message['content'] if part['type'] == 'text' -%}"
         "{{ part['text'] }}{%- endfor -%}{%- endif -%}")

# ChatML (Qwen2.5, SmolLM2): <|im_start|>role\n...<|im_end|>\n per turn. Newlines are written as
# Jinja string literals so that whitespace control ({%- -%}) cannot eat them.
CHATML = ("{%- for message in messages -%}{{ '<|im_start|>' + message['role'] + '\\n' }}" + _TEXT +
          "{{ '<|im_end|>\\n' }}{%- endfor -%}"
          "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")
# a tokenizer without chat tokens was trained on the bare prompt
PLAIN = "{%- for message in messages -%}" + _TEXT + "{%- endfor -%}"


def chat_template(tokenizer) -> str:
    """The template matching how training formatted prompts for this tokenizer."""
    return CHATML if "<|im_start|>" in tokenizer.get_vocab() else PLAIN
