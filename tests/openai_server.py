"""A fake OpenAI-compatible HTTP server for tests: real sockets, OpenAI's JSON, scripted faults.

In a test (the server runs in a background thread of the test process):

    with FakeOpenAIServer(rule=contains_rule("torch.hub.load", p_yes=0.8),
                          faults=["429:0.5", "500"]) as server:
        judge = OpenAIJudge(cfg_with(base_url=server.url))
        ...
        assert server.calls == 3 and server.max_in_flight <= 4

Standalone (for subprocess tests; prints the port on stdout, then serves until SIGTERM):

    python tests/openai_server.py --port 0 --print-port --delay 0.2 --call-log calls.jsonl

Answers
-------
``POST /v1/chat/completions`` answers the rubric's questions. The question ids come from
`question_ids` (``--questions a,b``) or, by default, from the ``- <id>: <question>`` lines after
the last ``## Questions`` header of the prompt (the format of `rlaif_jax.feedback.rubric`).
A *rule* ``rule(body, question_ids) -> {qid: p_yes} | str`` decides: the answer to a question
is "yes" when its probability is >= 0.5; a string is sent verbatim as the reply text.
`hash_rule` (default) draws a stable probability per (prompt, question); `contains_rule` says
yes to everything when the candidate section of the prompt contains a marker.

The reply is a JSON object ``{"<id>": "yes", ...}`` when the request asks for
``response_format={"type": "json_object"}``, else ``<id>: yes`` lines (`style` overrides:
json, lines, numbered, fenced). With ``logprobs: true`` each token (words and runs of
punctuation are tokens) gets ``logprobs.content`` entries; at an answer token the top
alternatives are yes (90% of p), Yes (10% of p), no and No (same split of 1 - p) and "maybe"
(2% of the mass), so the P(yes) a client computes from them equals the rule's p exactly.

Faults
------
`faults` is a schedule consumed by chat requests in arrival order (None = answer normally):
``"429"`` / ``"429:SECONDS"`` (Retry-After header) / ``"429ms:MS"`` (retry-after-ms),
``"500"``/``"502"``/``"503"``, ``"400"``/``"403"``/``"404"``, ``"401"`` (the message echoes the
presented key, as real providers echo part of it), ``"slow:SECONDS"``, ``"malformed"`` (200 with
a body that is not JSON), ``"truncated"`` (a valid completion cut mid-JSON, finish_reason
"length"), ``"garbage"`` (a valid completion that answers nothing), ``"drop"`` (the connection
is closed unanswered). When the schedule is empty, ``fault_rule(body) -> fault | None`` (if
given) decides per request, e.g. by prompt.
``require_key`` makes every request without ``Authorization: Bearer <key>`` a 401.

Bookkeeping: `calls`, `max_in_flight`, `headers` (one dict per chat request), `bodies`,
`prompts`; `call_log` appends one JSON line per chat request as it arrives ({n, time, sha256,
prompt, fault}; the Authorization header is logged only as a hash).

Batch API: ``POST /v1/files`` (multipart), ``GET /v1/files/ID[/content]``, ``POST /v1/batches``,
``GET /v1/batches[/ID]``. A batch runs in a thread: ``batch_delay`` seconds in "in_progress",
then every line is answered by the same rule (the first ``batch_fail_first`` lines fail with a
500 into the error file) and the batch is "completed".
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import hashlib
import http.server
import json
import math
import re
import signal
import socket
import sys
import threading
import time

# --- rules ---------------------------------------------------------------------------------


def prompt_text(messages) -> str:
    """The same canonical text as rlaif_jax.feedback.rubric.prompt_text."""
    return "\n".join(f"<{m.get('role')}>\n{m.get('content')}" for m in messages)


def candidate_section(body: dict) -> str:
    """The text of the '## Candidate response' section of the prompt (else the whole prompt)."""
    text = prompt_text(body.get("messages", []))
    m = re.search(r"## Candidate response\n(.*?)(?:\n\n## |\Z)", text, re.DOTALL)
    return m.group(1) if m else text


def hash_rule(body: dict, question_ids: list[str]) -> dict[str, float]:
    """A stable probability in [0.05, 0.95] per (prompt, question)."""
    text = prompt_text(body.get("messages", []))
    out = {}
    for qid in question_ids:
        h = hashlib.sha256(f"{qid}\0{text}".encode()).digest()
        out[qid] = 0.05 + 0.9 * int.from_bytes(h[:4], "big") / 2**32
    return out


def contains_rule(marker: str, p_yes: float = 0.9):
    """All yes with probability `p_yes` when the candidate contains `marker`, else all no."""
    def rule(body, question_ids):
        p = p_yes if marker in candidate_section(body) else 1.0 - p_yes
        return {qid: p for qid in question_ids}
    return rule


def question_ids_of(body: dict) -> list[str]:
    text = prompt_text(body.get("messages", []))
    head = text.rfind("## Questions")
    if head < 0:
        return []
    return re.findall(r"^- ([A-Za-z_]\w*): ", text[head:], re.MULTILINE)


# --- completions -----------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+|[^\w]+")


def _alternatives(p: float) -> list[tuple[str, float]]:
    eps = 0.02
    alts = [("yes", p * (1 - eps) * 0.9), ("Yes", p * (1 - eps) * 0.1),
            ("no", (1 - p) * (1 - eps) * 0.9), ("No", (1 - p) * (1 - eps) * 0.1),
            ("maybe", eps)]
    return sorted(alts, key=lambda a: -a[1])


def _entry(token: str, logprob: float, top: list[tuple[str, float]]) -> dict:
    def one(tok, lp):
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}
    return {**one(token, logprob), "top_logprobs": [one(t, lp) for t, lp in top]}


def _log(p: float) -> float:
    return math.log(max(p, 1e-12))


def logprobs_content(text: str, probs: list[float], top_n: int) -> list[dict]:
    """Token entries of `text`; the i-th yes/no token gets the alternatives of probs[i]."""
    content, answer = [], 0
    for tok in _TOKEN.findall(text):
        if tok.lower() in ("yes", "no") and answer < len(probs):
            alts = _alternatives(probs[answer])
            answer += 1
            chosen = dict(alts)[tok] if tok in dict(alts) else 0.99
            top = [(t, _log(q)) for t, q in alts[:top_n]]
            content.append(_entry(tok, _log(chosen), top))
        else:
            content.append(_entry(tok, -0.001, [(tok, -0.001)][:top_n]))
    return content


def render(answers: dict[str, str], style: str) -> str:
    if style == "json":
        return json.dumps(answers)
    if style == "lines":
        return "\n".join(f"{q}: {a}" for q, a in answers.items())
    if style == "numbered":
        return "\n".join(f"{i}. {a}" for i, a in enumerate(answers.values(), start=1))
    if style == "fenced":
        return ("Here is my review of the candidate.\n```json\n"
                + json.dumps(answers, indent=1) + "\n```\nLet me know if you need more.")
    raise ValueError(f"unknown style {style!r}")


def _truncate(text: str) -> str:
    """`text` cut inside the answer word of its middle question."""
    words = [m.start() for m in re.finditer(r"\b(yes|no)\b", text)]
    return text[:words[len(words) // 2] + 1] if words else text[:len(text) // 2]


# --- the server ------------------------------------------------------------------------------


class FakeOpenAIServer:
    def __init__(self, rule=None, *, faults=None, fault_rule=None, delay: float = 0.0,
                 question_ids=None,
                 style: str = "auto", require_key: str | None = None, call_log=None,
                 port: int = 0, batch_delay: float = 0.1, batch_fail_first: int = 0):
        self.rule = rule or hash_rule
        self.faults = list(faults or [])
        self.fault_rule = fault_rule
        self.delay = delay
        self.question_ids = list(question_ids) if question_ids else None
        self.style = style
        self.require_key = require_key
        self.call_log = call_log
        self.batch_delay = batch_delay
        self.batch_fail_first = batch_fail_first
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.headers: list[dict] = []
        self.bodies: list[dict] = []
        self.prompts: list[str] = []
        self.call_times: list[float] = []
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.batch_requests = 0
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeOpenAIServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- bookkeeping ----------------------------------------------------------------------------
    def _arrive(self, headers: dict, body: dict) -> tuple[int, str | None]:
        with self._lock:
            self.calls += 1
            n = self.calls
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.headers.append(headers)
            self.bodies.append(body)
            prompt = prompt_text(body.get("messages", []))
            self.prompts.append(prompt)
            self.call_times.append(time.monotonic())
            if self.faults:
                fault = self.faults.pop(0)
            else:
                fault = self.fault_rule(body) if self.fault_rule else None
            if self.call_log:
                auth = headers.get("authorization", "")
                with open(self.call_log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({
                        "n": n, "time": time.time(), "fault": fault, "prompt": prompt,
                        "sha256": hashlib.sha256(prompt.encode()).hexdigest(),
                        "auth_sha256": hashlib.sha256(auth.encode()).hexdigest()}) + "\n")
        return n, fault

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    # -- answers --------------------------------------------------------------------------------
    def completion(self, body: dict, n: int, fault: str | None = None) -> dict:
        qids = self.question_ids or question_ids_of(body) or ["answer"]
        verdict = self.rule(body, qids)
        if isinstance(verdict, str):
            text, probs = verdict, []
        else:
            style = self.style
            if style == "auto":
                fmt = (body.get("response_format") or {}).get("type")
                style = "json" if fmt == "json_object" else "lines"
            answers = {q: "yes" if verdict[q] >= 0.5 else "no" for q in qids}
            text, probs = render(answers, style), [verdict[q] for q in qids]
        finish = "stop"
        if fault == "truncated":
            text, finish = _truncate(text), "length"
        elif fault == "garbage":
            text, probs = "I'm sorry, I can't review this code.", []
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": None, "finish_reason": finish}
        if body.get("logprobs"):
            top_n = int(body.get("top_logprobs") or 0)
            choice["logprobs"] = {"content": logprobs_content(text, probs, top_n),
                                  "refusal": None}
        prompt_tokens = len(prompt_text(body.get("messages", []))) // 4
        completion_tokens = len(_TOKEN.findall(text))
        return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fake"), "choices": [choice],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    # -- batch API --------------------------------------------------------------------------------
    def add_file(self, data: bytes, filename: str, purpose: str) -> dict:
        with self._lock:
            fid = f"file-{len(self.files) + 1}"
            obj = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                   "filename": filename, "purpose": purpose, "status": "processed"}
            self.files[fid] = {"object": obj, "data": data}
        return obj

    def create_batch(self, req: dict) -> dict:
        with self._lock:
            bid = f"batch-{len(self.batches) + 1}"
            batch = {"id": bid, "object": "batch", "endpoint": req.get("endpoint"),
                     "input_file_id": req.get("input_file_id"),
                     "completion_window": req.get("completion_window", "24h"),
                     "status": "validating", "created_at": int(time.time()),
                     "metadata": req.get("metadata"), "output_file_id": None,
                     "error_file_id": None, "errors": None,
                     "request_counts": {"total": 0, "completed": 0, "failed": 0}}
            self.batches[bid] = batch
        threading.Thread(target=self._run_batch, args=(bid,), daemon=True).start()
        return dict(batch)

    def _run_batch(self, bid: str) -> None:
        batch = self.batches[bid]
        lines = self.files[batch["input_file_id"]]["data"].decode().splitlines()
        batch["status"] = "in_progress"
        time.sleep(self.batch_delay)
        out, err = [], []
        for i, line in enumerate(l for l in lines if l.strip()):
            item = json.loads(line)
            with self._lock:
                self.batch_requests += 1
            if i < self.batch_fail_first:
                err.append({"id": f"req-{i}", "custom_id": item["custom_id"],
                            "response": {"status_code": 500, "body": {"error": {
                                "message": "internal error", "type": "server_error"}}},
                            "error": None})
                continue
            body = self.completion(item["body"], 10_000 + i)
            out.append({"id": f"req-{i}", "custom_id": item["custom_id"],
                        "response": {"status_code": 200, "request_id": f"r{i}", "body": body},
                        "error": None})
        counts = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}

        def jsonl(rows):
            return "".join(json.dumps(r) + "\n" for r in rows).encode()
        batch["output_file_id"] = self.add_file(jsonl(out), "output.jsonl", "batch_output")["id"]
        if err:
            batch["error_file_id"] = self.add_file(jsonl(err), "errors.jsonl",
                                                   "batch_output")["id"]
        batch.update(request_counts=counts, status="completed",
                     completed_at=int(time.time()))


def _error_body(message: str, kind: str, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _make_handler(server: FakeOpenAIServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, payload, headers=None, raw: bytes | None = None,
                  content_type="application/json"):
            data = raw if raw is not None else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self):
            path = self.path.split("?")[0].rstrip("/")
            if path.endswith("/chat/completions"):
                return self._chat()
            if path.endswith("/files"):
                return self._upload()
            if path.endswith("/batches"):
                return self._send(200, server.create_batch(json.loads(self._body())))
            self._send(404, _error_body(f"no route POST {path}", "invalid_request_error"))

        def do_GET(self):
            path = self.path.split("?")[0].rstrip("/")
            m = re.search(r"/files/([\w-]+)(/content)?$", path)
            if m and m.group(1) in server.files:
                f = server.files[m.group(1)]
                if m.group(2):
                    return self._send(200, None, raw=f["data"],
                                      content_type="application/octet-stream")
                return self._send(200, f["object"])
            m = re.search(r"/batches/([\w-]+)$", path)
            if m and m.group(1) in server.batches:
                return self._send(200, dict(server.batches[m.group(1)]))
            if path.endswith("/batches"):
                data = [dict(b) for b in reversed(list(server.batches.values()))]
                return self._send(200, {"object": "list", "data": data, "has_more": False,
                                        "first_id": None, "last_id": None})
            self._send(404, _error_body(f"no route GET {path}", "invalid_request_error"))

        def _upload(self):
            raw = self._body()
            head = f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode()
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
            fields, data, filename = {}, b"", "input.jsonl"
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if name == "file":
                    data = part.get_payload(decode=True)
                    filename = part.get_filename() or filename
                else:
                    fields[name] = part.get_payload(decode=True).decode()
            self._send(200, server.add_file(data, filename, fields.get("purpose", "batch")))

        def _chat(self):
            raw = self._body()
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                return self._send(400, _error_body("request body is not JSON",
                                                   "invalid_request_error"))
            headers = {k.lower(): v for k, v in self.headers.items()}
            n, fault = server._arrive(headers, body)
            try:
                self._answer(body, headers, n, fault)
            finally:
                server._leave()

        def _answer(self, body, headers, n, fault):
            kind, _, arg = (fault or "").partition(":")
            time.sleep(server.delay + (float(arg) if kind == "slow" else 0.0))
            presented = headers.get("authorization", "").removeprefix("Bearer ")
            if kind == "401" or (server.require_key and presented != server.require_key):
                return self._send(401, _error_body(
                    f"Incorrect API key provided: {presented}. You can find your API key at "
                    "https://example.invalid/api-keys.", "invalid_request_error",
                    "invalid_api_key"))
            if kind == "429":
                return self._send(429, _error_body("Rate limit reached for requests",
                                                   "requests", "rate_limit_exceeded"),
                                  headers={"Retry-After": arg or "1"})
            if kind == "429ms":
                return self._send(429, _error_body("Rate limit reached", "requests"),
                                  headers={"retry-after-ms": arg or "1000"})
            if kind in ("500", "502", "503", "400", "403", "404"):
                return self._send(int(kind), _error_body(f"fault {kind} injected",
                                                         "server_error"))
            if kind == "malformed":
                return self._send(200, None, raw=b'{"id": "chatcmpl-x", "choices": [{"mess')
            if kind == "drop":
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return None
            self._send(200, server.completion(body, n, fault))

    return Handler


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--print-port", action="store_true", help="print the port on stdout")
    parser.add_argument("--call-log", default=None, help="append a JSON line per chat request")
    parser.add_argument("--questions", default="", help="comma-separated question ids")
    parser.add_argument("--rule", default="hash", help="'hash' or 'contains:MARKER'")
    parser.add_argument("--p-yes", type=float, default=0.9, help="contains rule: P(yes)")
    parser.add_argument("--faults", default="", help="comma-separated fault schedule")
    parser.add_argument("--style", default="auto")
    parser.add_argument("--require-key", default=None)
    args = parser.parse_args(argv)
    rule = (contains_rule(args.rule.partition(":")[2], args.p_yes)
            if args.rule.startswith("contains:") else hash_rule)
    server = FakeOpenAIServer(
        rule, faults=[f or None for f in args.faults.split(",")] if args.faults else None,
        delay=args.delay, question_ids=[q for q in args.questions.split(",") if q],
        style=args.style, require_key=args.require_key, call_log=args.call_log, port=args.port)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    if args.print_port:
        print(server.port, flush=True)
    try:
        server._httpd.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server._httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
