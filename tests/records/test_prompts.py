"""Prompt templates and chat rendering (the same at generation and training)."""

from __future__ import annotations

import pytest

from w2sr.records.prompts import PromptOptions, build_messages, render_conversation, render_prompt


def test_paper_default_prompt():
    messages = build_messages("What is $1+{2}$?")
    assert messages == [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": "What is $1+{2}$?\nPlease reason step by step, and put your final answer within \\boxed{}.",
        },
    ]


def test_overrides_and_errors():
    assert build_messages("P", PromptOptions(template="plain")) == [{"role": "user", "content": "P"}]
    assert build_messages("P", PromptOptions(system="S", user="Q: {problem}"))[1]["content"] == "Q: P"
    with pytest.raises(ValueError, match="placeholder"):
        build_messages("P", PromptOptions(user="no placeholder"))
    with pytest.raises(ValueError, match="unknown prompt template"):
        build_messages("P", PromptOptions(template="nope"))


def test_chat_rendering(tiny_tokenizer):
    messages = build_messages("Compute 1 + 2.")
    prompt = render_prompt(tiny_tokenizer, messages)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert prompt.endswith("<|im_start|>assistant\n")
    full_prompt, response = render_conversation(tiny_tokenizer, messages, "1 + 2 = 3. \\boxed{3}")
    assert full_prompt == prompt and response == "1 + 2 = 3. \\boxed{3}<|im_end|>\n"


def test_raw_rendering_appends_eos(tiny_tokenizer):
    messages = build_messages("Q", PromptOptions(template="simple"))
    prompt, response = render_conversation(tiny_tokenizer, messages, "A", use_chat_template=False)
    assert prompt.endswith("Let's think step by step. ") and response == "A<|endoftext|>"
