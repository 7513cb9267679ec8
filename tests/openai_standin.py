"""A local stand-in for OpenAI's image API on 127.0.0.1, for tests (the real one costs money and
is not reachable here).

It answers as the API does (platform.openai.com/docs/api-reference/images): POST
/v1/images/generations (JSON), /v1/images/variations and /v1/images/edits (multipart), GET
/v1/models, with `data: [{b64_json}]` or `data: [{url}]` (pictures then served from /files/…),
an `x-request-id` header on every answer, and the API's error bodies
(`{"error": {message, type, param, code}}`). Its error modes, set with `mode`, answer as the API
does, with the key and the request id in the message where the real API puts them (a 401 quotes
the key): tests check that neither reaches a member, the database or the logs. The pictures that
variations and edits calls upload are held to the API's documented limits (`refused_input`: a
400 as the API answers), so a picture Pintor sends too large fails a test here.

It runs in a thread (ThreadingHTTPServer), so that both the worker process and code the test
calls in its own thread reach it.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

TEST_KEY = "sk-test-pintor-0123456789abcdefSECRET"
REQUEST_ID = "req_standin_5f1e2d3c4b5a"
# mode → (HTTP status, error body) as the API answers
ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "content_policy": (400, {"message": f"Your request was rejected as a result of our safety system. "
                                        f"Request id {REQUEST_ID}.", "type": "invalid_request_error",
                             "param": None, "code": "content_policy_violation"}),
    "bad_key": (401, {"message": f"Incorrect API key provided: {TEST_KEY}. You can find your API key at "
                                 "https://platform.openai.com/account/api-keys.", "type": "invalid_request_error",
                      "param": None, "code": "invalid_api_key"}),
    "quota": (429, {"message": "You exceeded your current quota, please check your plan and billing details.",
                    "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}),
    "rate_limit": (429, {"message": f"Rate limit reached for images per minute. Request {REQUEST_ID}.",
                         "type": "requests", "param": None, "code": "rate_limit_exceeded"}),
    "server_error": (500, {"message": f"The server had an error processing your request ({REQUEST_ID}).",
                           "type": "server_error", "param": None, "code": None}),
}
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200), (200, 40, 200)]


# What the variations and edits calls take as `image` (platform.openai.com/docs/api-reference/
# images: createVariation, createEdit): for dall-e-2 "a valid PNG file, less than 4MB, and
# square"; for gpt-image-1 "a png, webp, or jpg file less than 50MB". The API answers 400
# otherwise; so does the stand-in (4 MB read as 4,000,000 bytes, the stricter reading).
INPUT_BYTES = {"dall-e-2": 4_000_000, "gpt-image-1": 50_000_000}


def refused_input(fields: dict[str, Any]) -> str | None:
    """The API's 400 message for a variations or edits call whose picture breaks its model's
    rules, or None (no picture: a generation call)."""
    pictures = [value for name, value in fields.items() if name.startswith("image") and isinstance(value, bytes)]
    model = str(fields.get("model") or "dall-e-2")
    for data in pictures:
        if len(data) >= INPUT_BYTES.get(model, 50_000_000):
            return f"Uploaded image must be less than {INPUT_BYTES[model] // 1_000_000} MB."
        try:
            with Image.open(io.BytesIO(data)) as opened:
                kind, size = opened.format, opened.size
        except OSError:
            return "Uploaded image is not a valid image."
        if model == "dall-e-2" and kind != "PNG":
            return "Uploaded image must be a PNG and less than 4 MB."
        if model == "dall-e-2" and size[0] != size[1]:
            return "Uploaded image must be square."
    return None


@dataclass
class Call:
    """One request the stand-in received: method, path, Authorization header, and its fields
    (JSON body, or multipart form fields with files as bytes)."""

    method: str
    path: str
    authorization: str
    fields: dict[str, Any] = field(default_factory=dict)


class OpenAIStandIn:
    """`with OpenAIStandIn() as api:` serves on 127.0.0.1:<free port>; `api.base_url` is what the
    client takes. `mode`: None (pictures), one of ERRORS, or "slow" (answers after `slow_s`);
    `answer`: "b64_json" or "url" (a model without response_format always gets b64_json, as
    gpt-image-1 does). `calls` lists what it received."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self.answer = "b64_json"
        self.slow_s = 3.0
        self.calls: list[Call] = []
        self.files: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="openai-standin")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def image_calls(self, kind: str | None = None) -> list[Call]:
        """The picture requests received ("generations", "variations", "edits"; None: all)."""
        return [c for c in self.calls if c.path.startswith("/v1/images/")
                and (kind is None or c.path == f"/v1/images/{kind}")]

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.mode, self.answer = None, "b64_json"

    # -- answering ------------------------------------------------------------------------------

    def _pictures(self, fields: dict[str, Any]) -> list[dict[str, str]]:
        size = str(fields.get("size") or "1024x1024")
        width, height = (int(v) for v in size.split("x"))
        n = int(fields.get("n") or 1)
        data = []
        for _ in range(n):
            with self._lock:
                number = len(self.files) + 1
                buffer = io.BytesIO()
                Image.new("RGB", (width, height), COLOURS[number % len(COLOURS)]).save(buffer, "PNG")
                png = buffer.getvalue()
                self.files[f"{number}.png"] = png
            gpt_image = str(fields.get("model", "")).startswith("gpt-image")
            if self.answer == "url" and not gpt_image:
                port = self._server.server_address[1]
                data.append({"url": f"http://127.0.0.1:{port}/files/{number}.png?sig=standin-signature"})
            else:
                import base64

                data.append({"b64_json": base64.b64encode(png).decode()})
        return data

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("x-request-id", REQUEST_ID)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps(payload).encode(), headers=headers)

            def do_GET(self) -> None:
                if self.path.startswith("/files/"):
                    name = self.path.split("/files/", 1)[1].split("?", 1)[0]
                    png = standin.files.get(name)
                    if png is None:
                        self._json(404, {"error": {"message": "no such file", "type": "invalid_request_error"}})
                    else:
                        self._send(200, png, "image/png")
                    return
                standin.calls.append(Call("GET", self.path, self.headers.get("Authorization", "")))
                if self.path == "/v1/models":
                    if self.headers.get("Authorization") != f"Bearer {TEST_KEY}":
                        status, error = ERRORS["bad_key"]
                        self._json(status, {"error": error})
                        return
                    self._json(200, {"object": "list", "data": [
                        {"id": model, "object": "model", "created": 0, "owned_by": "system"}
                        for model in ("dall-e-2", "dall-e-3", "gpt-image-1")]})
                    return
                self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                content_type = self.headers.get("Content-Type", "")
                if content_type.startswith("multipart/form-data"):
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
                    fields: dict[str, Any] = {}
                    for part in message.iter_parts():
                        name = part.get_param("name", header="content-disposition")
                        payload = part.get_payload(decode=True)
                        assert isinstance(payload, bytes)
                        fields[str(name)] = payload if part.get_filename() else payload.decode()
                else:
                    fields = json.loads(body or b"{}")
                standin.calls.append(Call("POST", self.path, self.headers.get("Authorization", ""), fields))
                if self.path not in ("/v1/images/generations", "/v1/images/variations", "/v1/images/edits"):
                    self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                    return
                if self.headers.get("Authorization") != f"Bearer {TEST_KEY}" or standin.mode == "bad_key":
                    status, error = ERRORS["bad_key"]
                    self._json(status, {"error": error})
                    return
                if (refusal := refused_input(fields)) is not None:
                    self._json(400, {"error": {"message": refusal, "type": "invalid_request_error",
                                               "param": "image", "code": None}})
                    return
                if standin.mode == "slow":
                    time.sleep(standin.slow_s)
                elif standin.mode in ERRORS:
                    status, error = ERRORS[standin.mode]
                    # the API says when to try again; short here, so the client's retries are quick
                    self._json(status, {"error": error}, headers={"retry-after-ms": "10"})
                    return
                self._json(200, {"created": int(time.time()), "data": standin._pictures(fields)})

        return Handler
