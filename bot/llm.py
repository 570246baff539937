"""The LLM: any OpenAI-compatible streaming chat endpoint, through the ``openai`` client.

llama.cpp's server, Ollama, vLLM, LM Studio and OpenAI all speak
``POST {base_url}/chat/completions`` with ``"stream": true`` (server-sent events of
``chat.completion.chunk`` objects). :meth:`LLMClient.stream_reply` yields the text of
each chunk as it arrives; every failure becomes an :class:`~bot.errors.LLMError` whose
message says what went wrong and where.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import openai
from openai.types.chat import ChatCompletionMessageParam

from .config import LLMSettings
from .errors import LLMError

log = logging.getLogger(__name__)

#: One chat message (``{"role": ..., "content": ...}``).
Message = ChatCompletionMessageParam


class LLMClient:
    """Streams chat completions from the configured endpoint.

    Args:
        settings: ``[llm]``.
        api_key: overrides the key read from ``settings.api_key_env``.
    """

    def __init__(self, settings: LLMSettings, api_key: str | None = None) -> None:
        self.settings = settings
        self._client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            api_key=api_key or settings.api_key(),
            timeout=openai.Timeout(settings.timeout_s, connect=min(10.0, settings.timeout_s)),
            max_retries=0,  # a voice reply cannot wait for retries; the user sees the error and retries
        )

    def messages(self, history: list[Message], prompt: str) -> list[Message]:
        """The request's messages: the system prompt, ``history``, then ``prompt`` as the user."""
        messages: list[Message] = []
        if self.settings.system_prompt:
            messages.append({"role": "system", "content": self.settings.system_prompt})
        return [*messages, *history, {"role": "user", "content": prompt}]

    async def stream_reply(self, messages: list[Message]) -> AsyncIterator[str]:
        """Yield the reply's text piece by piece as the endpoint streams it.

        Cancelling the consumer closes the HTTP response (the server stops generating).

        Raises:
            LLMError: the endpoint is unreachable, times out, answers with an HTTP error,
                or reports an error mid-stream.
        """
        s = self.settings
        where = s.base_url
        streamed = False
        try:
            stream = await self._client.chat.completions.create(
                model=s.model,
                messages=messages,
                temperature=s.temperature,
                max_tokens=s.max_tokens,
                stream=True,
            )
            async with stream:
                async for chunk in stream:
                    if not chunk.choices:
                        continue
                    text = chunk.choices[0].delta.content
                    if text:
                        streamed = True
                        yield text
        except openai.APITimeoutError:
            raise LLMError(f"the LLM at {where} did not answer within {s.timeout_s:.0f} s") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            what = "the connection to the LLM at {} broke mid-reply" if streamed else "cannot reach the LLM at {}"
            raise LLMError(f"{what.format(where)} ({type(cause).__name__}: {cause})") from None
        except openai.APIStatusError as exc:
            raise LLMError(
                f"the LLM at {where} answered HTTP {exc.status_code}: {_short(exc.message)}"
                + (f" (is the model name {s.model!r} right?)" if exc.status_code == 404 else "")
            ) from None
        except openai.APIError as exc:
            raise LLMError(f"the LLM at {where} failed mid-reply: {_short(exc.message)}") from None

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.close()


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
