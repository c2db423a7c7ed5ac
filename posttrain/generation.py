"""Prompts in the model's own chat template, and batched generation.

Every stage that talks to the model builds prompts here, so SFT trains on exactly the
prompt that evaluation and RL later show the model.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from posttrain.config import PromptParams

# "#### 42" followed by a line break: the answer line is finished.
COMPLETE_ANSWER_LINE = re.compile(r"####\s*\$?-?[\d,]*\.?\d+\s*\n")


def gsm_messages(question: str, prompt: PromptParams) -> list[dict]:
    """The chat messages for one GSM problem (system prompt optional)."""
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    messages.append({"role": "user", "content": prompt.instruction.format(question=question)})
    return messages


def chat_messages(user_text: str, prompt: PromptParams) -> list[dict]:
    """A plain user turn (safety prompts), with the same system prompt as GSM."""
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    messages.append({"role": "user", "content": user_text})
    return messages


def render_prompts(tokenizer, conversations: list[list[dict]]) -> list[str]:
    """Chat-template text ending where the assistant's answer starts."""
    return [
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for messages in conversations
    ]


@dataclass
class GenerationResult:
    completions: list[str]
    completion_tokens: list[int]  # generated tokens per completion, end-of-turn included
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return sum(self.completion_tokens) / self.seconds if self.seconds > 0 else 0.0


class AnswerLineStop:
    """Stops a row once its strict `#### N` answer line is complete.

    Graded text ends there (strict reads the first `#### N` line), so tokens after it
    only cost time: an untrained model that states its answer and rambles on would
    otherwise hold its whole batch to max_new_tokens. Like lm-eval's `until` strings.
    """

    def __init__(self, tokenizer, prompt_length: int, tail_tokens: int = 12):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.tail_tokens = tail_tokens

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        tails = self.tokenizer.batch_decode(input_ids[:, max(self.prompt_length, input_ids.shape[1] - self.tail_tokens):])
        return torch.tensor([bool(COMPLETE_ANSWER_LINE.search(t)) for t in tails], device=input_ids.device)


def _generated_length(row, stop_ids: set[int]) -> int:
    """Tokens up to and including the first stop token (padding after it is not output)."""
    for index, token in enumerate(row.tolist()):
        if token in stop_ids:
            return index + 1
    return len(row)


def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    desc: str = "generating",
    stop_after_answer: bool = False,
) -> GenerationResult:
    """Complete each prompt; greedy when temperature is 0. Order of results = order of prompts.

    stop_after_answer: also end a completion once its `#### N` line is complete.
    """
    import torch
    from transformers import StoppingCriteriaList
    from tqdm.auto import tqdm

    eos = model.generation_config.eos_token_id
    # Rows that finish early are padded; pad counts as an end too (SmolLM2 pads with EOS).
    stop_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id, tokenizer.pad_token_id}
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}

    # Longest prompts first: similar lengths share a batch, so less padding is computed.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    completions: list[str] = [""] * len(prompts)
    lengths: list[int] = [0] * len(prompts)
    start = time.perf_counter()
    with torch.inference_mode(), tqdm(total=len(prompts), desc=desc, unit="prompt") as progress:
        for first in range(0, len(order), batch_size):
            indices = order[first : first + batch_size]
            batch = tokenizer(  # padded on the left: decoder-only models continue from the right edge
                [prompts[i] for i in indices], return_tensors="pt", padding=True, padding_side="left",
                add_special_tokens=False
            )
            prompt_length = batch["input_ids"].shape[1]
            stopping = StoppingCriteriaList([AnswerLineStop(tokenizer, prompt_length)] if stop_after_answer else [])
            output = model.generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                stopping_criteria=stopping, **sampling
            )
            new_tokens = output[:, prompt_length:]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for row, i, text in zip(new_tokens, indices, texts):
                completions[i] = text.strip()
                lengths[i] = _generated_length(row, stop_ids)
            progress.update(len(indices))
    return GenerationResult(completions, lengths, time.perf_counter() - start)
