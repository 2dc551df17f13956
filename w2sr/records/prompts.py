"""Prompts: turn a problem into the chat messages sent to a model, and render them with the model's chat template.

The paper's default ("qwen-base") is system ``You are a helpful assistant.`` and user
``{problem}\\nPlease reason step by step, and put your final answer within \\boxed{}.``, rendered by the tokenizer's
chat template. The same rendering is used at generation, training (``w2sr.training.datamodule``) and evaluation, so
the student sees exactly the prompt the teacher saw. Exercised by ``pytest tests/records/test_prompts.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from w2sr.records.jsonl import InputError
from w2sr.records.options import document_fields

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class PromptTemplate:
    """A system message (or ``None``) and a user message with a ``{problem}`` placeholder."""

    system: str | None
    user: str


TEMPLATES: dict[str, PromptTemplate] = {
    # The paper's teacher and evaluation prompt (Qwen2.5-Math "qwen-base" style, via the chat template).
    "qwen-base": PromptTemplate(system="You are a helpful assistant.", user="{problem}\n" + BOXED_INSTRUCTION),
    # Used in the paper for the Llama teacher; meant for use_chat_template=False (base models without a template).
    "simple": PromptTemplate(system=None, user="Question:\n{problem}\nAnswer:\nLet's think step by step. "),
    # The problem alone, for already-instructed datasets.
    "plain": PromptTemplate(system=None, user="{problem}"),
}


@document_fields
@dataclass
class PromptOptions:
    """Which prompt template to use, and overrides of its messages; checked when made (an unknown template, a user
    message without ``{problem}``: exit 2 naming the option)."""

    template: str = "qwen-base"
    """a template of :data:`TEMPLATES`: ``qwen-base`` (the paper's), ``simple`` (for base models without a chat
    template) or ``plain`` (the problem alone)."""
    system: str | None = None
    """replaces the template's system message."""
    user: str | None = None
    """replaces the template's user message; must contain the placeholder ``{problem}``."""
    use_chat_template: bool = True
    """render the messages with the tokenizer's chat template (false: raw text, for base models)."""

    def __post_init__(self) -> None:
        self.resolve()

    def resolve(self) -> PromptTemplate:
        if self.template not in TEMPLATES:
            raise InputError(
                f"unknown prompt template {self.template!r}; choose one of {sorted(TEMPLATES)}", field="prompt.template"
            )
        base = TEMPLATES[self.template]
        user = self.user if self.user is not None else base.user
        if "{problem}" not in user:
            raise InputError("the user prompt must contain the placeholder {problem}", field="prompt.user")
        return PromptTemplate(system=self.system if self.system is not None else base.system, user=user)


def build_messages(problem: str, options: PromptOptions | None = None) -> list[dict[str, str]]:
    """The chat messages for one problem (``str.replace``, not ``str.format``: problems are full of braces)."""
    template = (options or PromptOptions()).resolve()
    messages = [{"role": "system", "content": template.system}] if template.system else []
    messages.append({"role": "user", "content": template.user.replace("{problem}", problem)})
    return messages


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], use_chat_template: bool = True
) -> str:
    """The exact prompt text the model continues: the chat template with the generation prompt, or raw text."""
    if not use_chat_template:  # raw text; the BOS token is added here since prompts are tokenized without specials
        return (getattr(tokenizer, "bos_token", None) or "") + "\n".join(m["content"] for m in messages)
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            "the tokenizer has no chat template: set one, or use use_chat_template=False "
            "(e.g. the 'simple' template for base models)",
            field="prompt.use_chat_template",
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], completion: str, use_chat_template: bool = True
) -> tuple[str, str]:
    """``(prompt, response)`` where ``prompt + response`` is the full rendered conversation.

    The response includes whatever the template closes an assistant turn with (``<|im_end|>\\n`` for ChatML);
    without a chat template it is the completion followed by the EOS token, so the student learns to stop.
    """
    prompt = render_prompt(tokenizer, messages, use_chat_template)
    if not use_chat_template:
        return prompt, completion + (tokenizer.eos_token or "")
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template does not render the prompt as a prefix of the conversation; "
            "prompt masking would be wrong for this template"
        )
    response = full[len(prompt) :]
    if tokenizer.eos_token and not any(
        tok and tok in response[len(completion) :] for tok in end_of_turn_tokens(tokenizer)
    ):
        response += tokenizer.eos_token  # the template does not close the turn: train the EOS token instead
    return prompt, response


END_OF_TURN_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "</s>")


def end_of_turn_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Tokens that end an assistant turn for this tokenizer: its EOS plus known end-of-turn markers in its vocab."""
    vocab = tokenizer.get_vocab()
    found = [tok for tok in END_OF_TURN_CANDIDATES if tok in vocab]
    if tokenizer.eos_token and tokenizer.eos_token not in found:
        found.insert(0, tokenizer.eos_token)
    return found
