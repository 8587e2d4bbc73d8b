"""``llm``: runs the task through an OpenAI-compatible chat endpoint (vLLM, SGLang, OpenAI, ...).

Configured by ``SRAQ_TASK_LLM_BASE_URL`` / ``SRAQ_TASK_LLM_MODEL`` / ``SRAQ_TASK_LLM_API_KEY`` (falling back
to the teacher's ``SRAQ_OPENAI_*``). Updates that arrive while the model is answering are folded into a
follow-up request (at most ``MAX_ROUNDS`` requests per run), so the result reflects the latest
instructions. Cancellation closes the HTTP request.
"""

from __future__ import annotations

from openai import AsyncOpenAI

from workers.context import PermanentTaskError, TaskContext, TaskUpdate

MAX_ROUNDS = 3
SYSTEM_PROMPT = (
    "You are a background worker of a conversational assistant. Carry out the task you are given and "
    "answer with the result only, concisely. If the user changed the task, follow the latest instruction."
)


class LLMNotConfigured(PermanentTaskError):
    """The llm handler has no endpoint or model."""


def _task_message(explanation: str, updates: list[TaskUpdate]) -> str:
    text = f"Task: {explanation}"
    for u in updates:
        text += f"\nUpdate from the user: {u.text}"
    return text


async def llm(ctx: TaskContext) -> str:
    """Ask the configured chat model to do the task; returns the model's answer."""
    cfg = ctx.config
    if not cfg.llm_base_url or not cfg.llm_model:
        raise LLMNotConfigured("the llm handler needs SRAQ_TASK_LLM_BASE_URL and SRAQ_TASK_LLM_MODEL")
    updates = list(await ctx.poll_updates())
    messages: list[dict[str, str]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": _task_message(ctx.explanation, updates)},
    ]
    client = AsyncOpenAI(
        base_url=cfg.llm_base_url,
        api_key=cfg.llm_api_key or "unused",
        timeout=cfg.llm_timeout_s,
        max_retries=0,  # retries are the worker's job (backoff, attempt numbers, failed event)
    )
    try:
        answer = ""
        for round_ in range(1, MAX_ROUNDS + 1):
            await ctx.progress(f"asking {cfg.llm_model} (round {round_})")
            response = await client.chat.completions.create(
                model=cfg.llm_model,
                messages=messages,  # type: ignore[arg-type]
            )
            answer = (response.choices[0].message.content or "").strip() if response.choices else ""
            new = await ctx.poll_updates()
            if not new:
                break
            messages.append({"role": "assistant", "content": answer})
            messages.append({"role": "user", "content": _task_message("(same task)", new)})
        return answer
    finally:
        await client.close()
