"""The `openai` judge backend: any OpenAI-compatible chat endpoint answers the rubric.

    judge = OpenAIJudge(config.feedback)              # base_url, model, key from $api_key_env
    report = judge.judge_many(requests, on_answer)    # on_answer(request, JudgeAnswer) per answer
    judge.estimate(requests)                          # dry run: calls, tokens, cost; no calls

Interface (what `rlaif_jax.feedback.label` uses)
-------------------------------------------------
* ``JudgeRequest(key, messages, question_ids)``: one prompt; `key` is its cache key
  (`cache.make_key`). Requests sharing a key are asked once and all get the answer.
* ``JudgeAnswer(answers, p_yes, raw, usage, model)``: ``answers[qid]`` is "yes"/"no"/None,
  ``p_yes[qid]`` P(yes) from token logprobs or None, ``raw`` the reply text, ``usage``
  {prompt_tokens, completion_tokens, attempts}, ``model`` as the server named it.
* ``OpenAIJudge(feedback_cfg)``; ``.name`` = ``"openai:<model>"`` (part of the cache key: the
  base URL is not, so the same model behind another URL or port reuses the answers).
* ``judge_many(requests, on_answer, progress=False, should_stop=None) -> UsageReport``.
  `on_answer` is called **in the thread that called judge_many** (it runs the asyncio event loop
  there with `asyncio.run`), one call at a time, the moment each answer arrives, so an answer
  written to the cache in it is lost by no later failure or kill. When a request fails for
  good, the other requests are cancelled (fail fast) and `JudgeError` is raised; every answer
  that arrived before has had its `on_answer`. An exception raised by `on_answer` stops the run
  the same way and propagates unchanged. `should_stop()` (e.g. a SIGTERM flag) is checked before
  each new request: once true, in-flight requests finish and judge_many returns
  (``report.stopped``). From async code, await `judge_many_async` instead.
* ``estimate(requests) -> dict``: calls, estimated prompt tokens, max completion tokens and
  the cost upper bound (None when `prices` has no entry for the model). Tokens are estimated
  as ``ceil(chars / 4) + 4`` per message (OpenAI's rule of thumb for English; code and JSON
  run a little denser, so treat it as +-25%).
* ``parse_answers`` and ``p_yes_from_logprobs`` live in `rlaif_jax.feedback.answers` and are
  re-exported here.

Requests
--------
`openai.AsyncOpenAI` with the client's own retries off (``max_retries=0``): the retries below
are the only ones, and each is counted. At most `max_concurrency` requests are in flight (that
many worker tasks pull from one queue); before every attempt a `RateLimiter` spaces requests
``60 / requests_per_minute`` s apart and holds a tokens-per-minute budget (prompt estimate +
max_tokens, the unused part refunded when the usage is known). With `json_mode` the request
asks for ``response_format={"type": "json_object"}`` (the rubric's prompt says "JSON", which
OpenAI requires); with `logprobs`, for ``logprobs=True, top_logprobs=<top_logprobs>``.
Servers that support neither answer 400: the error says which setting to turn off.

Retries
-------
An attempt fails with a kind, counted in ``report.errors``:
``rate_limit`` (429), ``server_error`` (5xx, 408, 409), ``timeout``, ``connection`` (refused,
dropped), ``malformed`` (a body that is not a chat completion), ``unparseable`` (a reply that
leaves a question unanswered) and ``truncated`` (the same, cut off by max_tokens). Each is
retried up to `max_retries` times (one budget per request), after a full-jitter backoff:
``uniform(0, min(backoff_max, backoff_base * 2**attempt))`` seconds. A 429's ``retry-after-ms``
or ``Retry-After`` (seconds or an HTTP date) is honoured instead: that wait plus up to 10%
jitter, and the limiter pauses every worker for it. A reply still incomplete after the last
retry is delivered with None for the missing questions (``report.incomplete``) rather than
failing the run; any other kind raises `JudgeError` naming the kind, HTTP status and server
message. 400, 401, 403, 404 and other 4xx fail at once: a 401 says the key in ``$VAR`` was
refused, a 404 points at base_url / model.

The API key
-----------
Read from ``os.environ[api_key_env]`` once; a missing key is an error unless `base_url` is a
local server (127.0.0.1, localhost, ::1), which gets a dummy key (with `dry_run` the error
waits until something is actually sent, so a dry run needs no key). The key is only ever sent in
the Authorization header: it is not in `name`, the answers, the report or the cache, and every
message this module logs or raises is scrubbed of it (and of anything shaped like ``sk-...`` or
``Bearer ...``), since providers echo part of a refused key in their 401 message.

Batch API
---------
With `batch_api`, `judge_many` sends all requests as one OpenAI batch job (`openai_batch`):
half the price, answers within the provider's completion window. Requests whose batch result
failed or is incomplete are then asked through the live path above.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import math
import os
import random
import re
import time
import urllib.parse
from collections.abc import Callable

import openai

from rlaif_jax.feedback.answers import p_yes_from_logprobs, parse_answers  # also re-exported
from rlaif_jax.feedback.ratelimit import RateLimiter

logger = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
LOCAL_DUMMY_KEY = "local-no-key"
BATCH_DISCOUNT = 0.5  # OpenAI bills Batch API tokens at half price


@dataclasses.dataclass
class JudgeRequest:
    key: str
    messages: list[dict]
    question_ids: list[str]


@dataclasses.dataclass
class JudgeAnswer:
    answers: dict[str, str | None]
    p_yes: dict[str, float | None]
    raw: str
    usage: dict
    model: str


@dataclasses.dataclass
class UsageReport:
    calls: int = 0  # HTTP requests sent (every attempt; a batch counts its lines)
    answers: int = 0  # on_answer calls
    retries: int = 0  # attempts after the first
    prompt_tokens: int = 0  # as the server reported them, for every billed reply
    completion_tokens: int = 0
    cost_usd: float | None = 0.0  # None when the model has no price in config.feedback.prices
    seconds: float = 0.0
    errors: dict = dataclasses.field(default_factory=dict)  # failed attempts by kind
    incomplete: int = 0  # answers delivered with unanswered questions after the last retry
    rate_limit_wait_s: float = 0.0  # time requests waited in the rate limiter (summed)
    stopped: bool = False  # should_stop() ended the run early
    batch_id: str | None = None
    batch_prompt_tokens: int = 0  # the part of the tokens billed at the Batch API price
    batch_completion_tokens: int = 0


class JudgeError(RuntimeError):
    """A request failed for good. `kind`, `status` (HTTP or None); `report` = usage so far."""

    def __init__(self, message: str, kind: str = "error", status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.report: UsageReport | None = None


@dataclasses.dataclass
class _Failure:
    kind: str
    message: str
    status: int | None = None
    retry_after: float | None = None
    answer: JudgeAnswer | None = None  # an incomplete but usable answer


def estimate_tokens(messages: list[dict]) -> int:
    """ceil(chars / 4) + 4 per message (see the module docstring)."""
    return sum(math.ceil(len(str(m.get("content", ""))) / 4) + 4 for m in messages)


def _cfg(cfg, key, default=None):
    try:
        return cfg[key]
    except (KeyError, AttributeError):
        return default


def parse_prices(prices) -> dict[str, tuple[float, float]]:
    """{model: (input, output) USD per million} from config.feedback.prices: a sequence of
    (model, input, output) triples, or a mapping model -> {input, output}."""
    if not prices:
        return {}
    if hasattr(prices, "items"):
        return {str(k): (float(v["input"]), float(v["output"])) for k, v in prices.items()}
    table = {}
    for i, entry in enumerate(prices):
        if len(entry) != 3:
            raise ValueError(f"config.feedback.prices[{i}]: expected (model, input USD/M, "
                             f"output USD/M), got {entry!r}")
        table[str(entry[0])] = (float(entry[1]), float(entry[2]))
    return table


def _is_local(base_url: str) -> bool:
    return urllib.parse.urlsplit(base_url).hostname in LOCAL_HOSTS


def retry_after_seconds(headers) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date), else None."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    try:
        if value is not None:
            return max(0.0, float(value) / 1000.0)
    except ValueError:
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None  # unreadable: the usual backoff applies


class OpenAIJudge:
    def __init__(self, feedback_cfg):
        c = feedback_cfg
        self.base_url = str(c["base_url"])
        self.model = str(c["model"])
        self.api_key_env = str(c["api_key_env"])
        self.json_mode = bool(c["json_mode"])
        self.logprobs = bool(c["logprobs"])
        self.top_logprobs = int(_cfg(c, "top_logprobs", 5))
        self.temperature = float(c["temperature"])
        self.max_tokens = int(c["max_tokens"])
        self.max_concurrency = max(1, int(c["max_concurrency"]))
        self.requests_per_minute = float(c["requests_per_minute"])
        self.tokens_per_minute = float(c["tokens_per_minute"])
        self.max_retries = max(0, int(c["max_retries"]))
        self.timeout = float(c["timeout"])
        self.backoff_base = float(c["backoff_base"])
        self.backoff_max = float(c["backoff_max"])
        self.batch_api = bool(_cfg(c, "batch_api", False))
        self.batch_poll_seconds = float(_cfg(c, "batch_poll_seconds", 30.0))
        self.prices = parse_prices(_cfg(c, "prices", None))
        self.name = f"openai:{self.model}"
        key = os.environ.get(self.api_key_env, "").strip()
        self._missing_key = None
        if not key and not _is_local(self.base_url):
            self._missing_key = (
                f"config.feedback.api_key_env: ${self.api_key_env} is not set; export the API "
                f"key for {self.base_url} in it (or name another variable)")
            if not _cfg(c, "dry_run", False):  # a dry run calls nothing: no key needed
                raise JudgeError(self._missing_key, "no_key")
        self._key = key or LOCAL_DUMMY_KEY

    def __repr__(self) -> str:
        return f"OpenAIJudge({self.name!r}, base_url={self.base_url!r})"

    # -- prices ---------------------------------------------------------------------------------
    def price(self) -> tuple[float, float] | None:
        """(input, output) USD per million tokens: exact model name, else longest prefix."""
        if self.model in self.prices:
            return self.prices[self.model]
        prefixes = [k for k in self.prices if self.model.startswith(k)]
        return self.prices[max(prefixes, key=len)] if prefixes else None

    def cost(self, prompt_tokens: int, completion_tokens: int,
             batch: bool = False) -> float | None:
        """USD for these tokens (at the Batch API discount with `batch`), None if unpriced."""
        price = self.price()
        if price is None:
            return None
        scale = BATCH_DISCOUNT if batch else 1.0
        return scale * (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6

    def report_cost(self, report: UsageReport) -> float | None:
        live = self.cost(report.prompt_tokens - report.batch_prompt_tokens,
                         report.completion_tokens - report.batch_completion_tokens)
        batch = self.cost(report.batch_prompt_tokens, report.batch_completion_tokens, batch=True)
        return None if live is None else live + batch

    def estimate(self, requests: list[JudgeRequest]) -> dict:
        """What judging `requests` would cost, without calling anything."""
        distinct = list({r.key: r for r in requests}.values())
        prompt = sum(estimate_tokens(r.messages) for r in distinct)
        completion = len(distinct) * self.max_tokens
        return {"judge": self.name, "base_url": self.base_url, "calls": len(distinct),
                "prompt_tokens": prompt, "max_completion_tokens": completion,
                "cost_usd": self.cost(prompt, completion, batch=self.batch_api),
                "price_per_million": self.price(),
                "batch_api": self.batch_api,
                "token_estimate": "ceil(chars/4) + 4 per message; cost is an upper bound "
                                  "(every reply at max_tokens), before retries"}

    # -- secrets --------------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        text = str(text)
        if len(self._key) >= 4:
            text = text.replace(self._key, "<redacted>")
        text = re.sub(r"sk-[A-Za-z0-9_\-*.]{2,}", "sk-<redacted>", text)
        return re.sub(r"(?i)(bearer\s+)\S+", r"\1<redacted>", text)

    # -- one request ----------------------------------------------------------------------------
    def _params(self, req: JudgeRequest) -> dict:
        params = {"model": self.model, "messages": req.messages,
                  "temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.json_mode:
            params["response_format"] = {"type": "json_object"}
        if self.logprobs:
            params["logprobs"] = True
            params["top_logprobs"] = self.top_logprobs
        return params

    def _client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=self._key, base_url=self.base_url, max_retries=0,
                                  timeout=self.timeout)

    def read_completion(self, completion, req: JudgeRequest, report: UsageReport):
        """JudgeAnswer for a complete reply, else a _Failure (malformed / unparseable)."""
        choices = getattr(completion, "choices", None)
        if not choices:
            return _Failure("malformed", "the reply has no choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None)
        if not isinstance(text, str):
            refusal = getattr(message, "refusal", None)
            why = f" (refusal: {refusal})" if refusal else ""
            return _Failure("malformed", f"the reply has no text{why}")
        usage = getattr(completion, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
            prompt_tokens = estimate_tokens(req.messages)  # server sent no usage
            completion_tokens = math.ceil(len(text) / 4)
        report.prompt_tokens += prompt_tokens
        report.completion_tokens += completion_tokens
        answers = parse_answers(text, req.question_ids)
        logprobs = getattr(choice, "logprobs", None)
        p_yes = (p_yes_from_logprobs(logprobs, text, req.question_ids)
                 if self.logprobs and logprobs is not None
                 else {q: None for q in req.question_ids})
        model = getattr(completion, "model", None)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        answer = JudgeAnswer(answers, p_yes, text, usage,
                             model if isinstance(model, str) and model else self.model)
        missing = [q for q, a in answers.items() if a is None]
        if not missing:
            return answer
        truncated = getattr(choice, "finish_reason", None) == "length"
        why = (f"cut off at max_tokens={self.max_tokens}" if truncated
               else f"no answer for {', '.join(missing)}")
        return _Failure("truncated" if truncated else "unparseable",
                        f"{why}: {text[:120]!r}", answer=answer)

    def _classify(self, exc: Exception) -> _Failure:
        """_Failure for a retryable error; raises JudgeError for a fatal one."""
        msg = self.redact(getattr(exc, "message", None) or str(exc))
        if isinstance(exc, openai.APITimeoutError):
            return _Failure("timeout", f"no reply within {self.timeout} s")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            return _Failure("connection", self.redact(f"{msg} ({cause!r})" if cause else msg))
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status == 429:
                wait = retry_after_seconds(exc.response.headers)
                return _Failure("rate_limit", msg, status, wait)
            if status >= 500 or status in (408, 409):
                return _Failure("server_error", msg, status)
            raise JudgeError(self._fatal_message(status, msg), f"http_{status}", status) from None
        if isinstance(exc, (openai.APIResponseValidationError, ValueError)):
            return _Failure("malformed", f"the reply is not a chat completion ({msg[:200]})")
        raise exc

    def _fatal_message(self, status: int, msg: str) -> str:
        where = f"{self.base_url} (model {self.model!r})"
        if status == 401:
            return (f"the API key in ${self.api_key_env} was refused by {where}: HTTP 401: {msg}")
        if status == 403:
            return (f"{where} denied access (HTTP 403: {msg}); check that the key in "
                    f"${self.api_key_env} may use this model")
        if status == 404:
            return (f"{where} answered HTTP 404 ({msg}); check config.feedback.base_url (it "
                    "usually ends in /v1) and config.feedback.model")
        if status == 400:
            return (f"{where} rejected the request (HTTP 400: {msg}); if the server does not "
                    "support JSON mode or logprobs, set config.feedback.json_mode=False or "
                    "config.feedback.logprobs=False")
        return f"{where} answered HTTP {status}: {msg}"

    def _backoff(self, attempt: int, failure: _Failure) -> float:
        if failure.retry_after is not None:
            return failure.retry_after * random.uniform(1.0, 1.1)
        return random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2 ** attempt))

    async def _judge_one(self, client, limiter: RateLimiter, req: JudgeRequest,
                         report: UsageReport) -> JudgeAnswer:
        estimate = estimate_tokens(req.messages)
        best: JudgeAnswer | None = None
        failure = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                report.retries += 1
            reserved = estimate + self.max_tokens
            await limiter.acquire(reserved)
            report.calls += 1
            try:
                completion = await client.chat.completions.create(**self._params(req))
            except (openai.OpenAIError, ValueError) as exc:  # ValueError: a body not JSON
                failure = self._classify(exc)
            else:
                result = self.read_completion(completion, req, report)
                used = sum(result.usage.values()) if isinstance(result, JudgeAnswer) else reserved
                limiter.refund(reserved - used)
                if isinstance(result, JudgeAnswer):
                    result.usage["attempts"] = attempt + 1
                    return result
                failure = result
            report.errors[failure.kind] = report.errors.get(failure.kind, 0) + 1
            if failure.answer is not None and (best is None or _answered(failure.answer)
                                               > _answered(best)):
                best = failure.answer
            if attempt == self.max_retries:
                break
            delay = self._backoff(attempt, failure)
            if failure.retry_after is not None:
                limiter.pause(delay)
            logger.info("judge request %s… attempt %d/%d failed (%s%s: %s); retrying in %.2f s",
                        req.key[:10], attempt + 1, self.max_retries + 1, failure.kind,
                        f" {failure.status}" if failure.status else "", failure.message, delay)
            await asyncio.sleep(delay)
        if best is not None:
            report.incomplete += 1
            best.usage["attempts"] = self.max_retries + 1
            logger.warning("judge request %s… still incomplete after %d attempts (%s); keeping "
                           "the best reply, unanswered questions are None", req.key[:10],
                           self.max_retries + 1, failure.message)
            return best
        raise JudgeError(
            f"judge request failed after {self.max_retries + 1} attempts (config.feedback."
            f"max_retries={self.max_retries}): last error {failure.kind}"
            f"{f' (HTTP {failure.status})' if failure.status else ''} from {self.base_url}: "
            f"{failure.message}", failure.kind, failure.status)

    # -- many requests --------------------------------------------------------------------------
    def judge_many(self, requests: list[JudgeRequest],
                   on_answer: Callable[[JudgeRequest, JudgeAnswer], None],
                   progress: bool = False,
                   should_stop: Callable[[], bool] | None = None) -> UsageReport:
        """Judges `requests` concurrently; see the module docstring for the contract."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.judge_many_async(requests, on_answer, progress, should_stop))
        raise RuntimeError("OpenAIJudge.judge_many runs its own event loop; from async code "
                           "await judge_many_async(...) instead")

    async def judge_many_async(self, requests, on_answer, progress=False,
                               should_stop=None) -> UsageReport:
        if self._missing_key:
            raise JudgeError(self._missing_key, "no_key")
        start = time.monotonic()
        report = UsageReport()
        groups: dict[str, list[JudgeRequest]] = {}
        for req in requests:
            groups.setdefault(req.key, []).append(req)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(requests), desc=f"judging ({self.name})", unit="answer")

        def deliver(group: list[JudgeRequest], answer: JudgeAnswer) -> None:
            for req in group:
                on_answer(req, answer)
            report.answers += len(group)
            if bar is not None:
                bar.update(len(group))

        client = self._client()
        limiter = RateLimiter(self.requests_per_minute, self.tokens_per_minute)
        logger.info("judging %d requests (%d distinct prompts) with %s at %s, %d concurrent",
                    len(requests), len(groups), self.name, self.base_url, self.max_concurrency)
        try:
            todo = list(groups.values())
            if self.batch_api and todo:
                from rlaif_jax.feedback import openai_batch
                todo = await openai_batch.run(self, client, todo, deliver, report)
            await self._run_workers(client, limiter, todo, deliver, report, should_stop)
        except JudgeError as e:
            e.report = report
            raise
        finally:
            await client.close()
            if bar is not None:
                bar.close()
            report.seconds = round(time.monotonic() - start, 3)
            report.rate_limit_wait_s = round(limiter.waited, 3)
            report.cost_usd = self.report_cost(report)
        logger.info("judged %d answers in %.1f s: %d calls, %d retries, %d+%d tokens, cost %s%s",
                    report.answers, report.seconds, report.calls, report.retries,
                    report.prompt_tokens, report.completion_tokens,
                    "unknown" if report.cost_usd is None else f"${report.cost_usd:.4f}",
                    f", errors {report.errors}" if report.errors else "")
        return report

    async def _run_workers(self, client, limiter, todo, deliver, report, should_stop) -> None:
        queue = iter(todo)

        async def worker():
            for group in queue:  # one iterator shared by all workers (one thread: no races)
                if should_stop is not None and should_stop():
                    report.stopped = True
                    return
                deliver(group, await self._judge_one(client, limiter, group[0], report))

        tasks = [asyncio.create_task(worker()) for _ in range(min(self.max_concurrency,
                                                                   len(todo)))]
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()


def _answered(answer: JudgeAnswer) -> int:
    return sum(a is not None for a in answer.answers.values())
