"""OpenAI Batch API mode of the openai judge (`config.feedback.batch_api`).

    remaining = await run(judge, client, groups, deliver, report)   # then asked live

1. Every distinct prompt becomes one line of a JSONL input file, ``custom_id`` = its cache key,
   ``body`` = the same chat-completion parameters the live path sends.
2. The file is uploaded (``files.create(purpose="batch")``) and a batch created on
   ``/v1/chat/completions`` with a 24 h window. The batch's ``metadata`` carries a fingerprint of
   the judge and the set of keys: a run killed while waiting finds its batch again
   (``batches.list``) instead of paying for a second one.
3. The batch is polled every `batch_poll_seconds` until it ends. Then the output file is read and
   each line mapped back by ``custom_id``; complete answers go to `deliver` (so into the cache)
   exactly as live answers do.
4. Lines that failed, are missing or left a question unanswered are returned: the caller asks them
   through the live path, with its retries. A batch that "failed" (rejected input) or was
   "cancelled" raises `JudgeError`; an "expired" one keeps what it finished.

Batch tokens are counted in ``report.batch_prompt_tokens`` / ``batch_completion_tokens`` as
well and priced at `BATCH_DISCOUNT`. Each line counts as one call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import openai
from openai.types.chat import ChatCompletion

logger = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
METADATA_KEY = "rlaif_jax_job"
DONE = ("completed", "expired", "failed", "cancelled")


def fingerprint(judge_name: str, keys) -> str:
    return hashlib.sha256(json.dumps([judge_name, sorted(keys)]).encode()).hexdigest()[:48]


def input_jsonl(judge, groups) -> bytes:
    lines = [json.dumps({"custom_id": group[0].key, "method": "POST", "url": ENDPOINT,
                         "body": judge._params(group[0])}, ensure_ascii=False)
             for group in groups]
    return ("\n".join(lines) + "\n").encode("utf-8")


async def _call(judge, fn, *args, **kwargs):
    """`await fn(...)` with the judge's retry policy for transient errors."""
    for attempt in range(judge.max_retries + 1):
        try:
            return await fn(*args, **kwargs)
        except (openai.OpenAIError, ValueError) as exc:
            failure = judge._classify(exc)  # raises JudgeError when fatal
            if attempt == judge.max_retries:
                from rlaif_jax.feedback.openai_judge import JudgeError
                raise JudgeError(f"batch API call failed after {attempt + 1} attempts: "
                                 f"{failure.kind}: {failure.message}", failure.kind,
                                 failure.status) from None
            await asyncio.sleep(judge._backoff(attempt, failure))


async def _find_or_create(judge, client, groups, report):
    fp = fingerprint(judge.name, [g[0].key for g in groups])
    page = await _call(judge, client.batches.list, limit=100)
    for batch in getattr(page, "data", None) or []:
        meta = batch.metadata or {}
        if meta.get(METADATA_KEY) == fp and batch.status not in ("failed", "cancelled",
                                                                  "cancelling", "expired"):
            logger.info("resuming batch %s (%s) of an earlier run", batch.id, batch.status)
            return batch
    data = input_jsonl(judge, groups)
    file = await _call(judge, client.files.create, file=("judge_requests.jsonl", data),
                       purpose="batch")
    batch = await _call(judge, client.batches.create, input_file_id=file.id, endpoint=ENDPOINT,
                        completion_window="24h", metadata={METADATA_KEY: fp})
    logger.info("created batch %s: %d requests (%d bytes) for %s", batch.id, len(groups),
                len(data), judge.name)
    return batch


async def _output_lines(judge, client, file_id) -> list[dict]:
    if not file_id:
        return []
    content = await _call(judge, client.files.content, file_id)
    rows = []
    for line in content.content.decode("utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("batch output line is not JSON: %r", line[:120])
    return rows


async def run(judge, client, groups, deliver, report) -> list:
    """Judges `groups` (lists of JudgeRequests sharing a key) as one batch; returns the rest."""
    from rlaif_jax.feedback.openai_judge import JudgeAnswer, JudgeError

    batch = await _find_or_create(judge, client, groups, report)
    report.batch_id = batch.id
    while batch.status not in DONE:
        await asyncio.sleep(judge.batch_poll_seconds)
        batch = await _call(judge, client.batches.retrieve, batch.id)
        logger.info("batch %s: %s %s", batch.id, batch.status, batch.request_counts)
    if batch.status in ("failed", "cancelled"):
        errors = getattr(batch, "errors", None)
        detail = f": {judge.redact(errors)}" if errors else ""
        raise JudgeError(f"batch {batch.id} {batch.status}{detail}", f"batch_{batch.status}")
    by_key = {g[0].key: g for g in groups}
    done = set()
    report.calls += len(groups)
    for row in await _output_lines(judge, client, batch.output_file_id):
        group = by_key.get(row.get("custom_id"))
        response = row.get("response") or {}
        if group is None or response.get("status_code") != 200:
            continue
        try:
            completion = ChatCompletion.model_validate(response.get("body"))
        except ValueError:
            report.errors["malformed"] = report.errors.get("malformed", 0) + 1
            continue
        before = (report.prompt_tokens, report.completion_tokens)
        result = judge.read_completion(completion, group[0], report)
        report.batch_prompt_tokens += report.prompt_tokens - before[0]
        report.batch_completion_tokens += report.completion_tokens - before[1]
        if isinstance(result, JudgeAnswer):
            result.usage["attempts"] = 1
            deliver(group, result)
            done.add(group[0].key)
        else:
            report.errors[result.kind] = report.errors.get(result.kind, 0) + 1
    rest = [g for g in groups if g[0].key not in done]
    if rest:
        report.errors["batch_failed"] = report.errors.get("batch_failed", 0) + len(rest)
        logger.warning("batch %s (%s): %d of %d requests have no usable answer; asking them "
                       "live", batch.id, batch.status, len(rest), len(groups))
    return rest
