"""/openapi.json: the document lists every route the app serves, with the request bodies the
protocol modules accept; and schemathesis, generating requests from it (valid and invalid) over
real HTTP against the HTTP side on a scripted backend, finds no 5xx. A short run here (bounded
examples per operation); benchmarks/fuzz.py runs a longer budget against the real model."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from starlette.routing import Route

from infer.runtime.options import OPTIONS
from infer.runtime.server.app import HttpSettings, create_app
from infer.runtime.server.backend import Embeddings, ModelUnavailable

from .fake_backend import FakeBackend
from .test_serve_http import Served, serving


class EmbeddingBackend(FakeBackend):
    """The scripted backend, with embeddings (a fixed vector per input)."""

    async def embed(self, model: str, inputs: list[str] | list[list[int]]) -> Embeddings:
        if model not in self.known:
            raise ModelUnavailable(model, f"no model {model!r}")
        return Embeddings([[0.6, 0.8] for _ in inputs], prompt_tokens=len(inputs))


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serving(EmbeddingBackend()) as s:
        yield s


def test_the_document_lists_every_route_with_its_body(served: Served) -> None:
    r = httpx.get(served.url + "/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    app = create_app(FakeBackend(), HttpSettings())
    for route in app.routes:
        assert isinstance(route, Route)
        path = route.path.replace(":path}", "}")
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in doc["paths"][path], (method, path)
    chat = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    fields = chat["application/json"]["schema"]["properties"]
    temperature = next(o for o in OPTIONS if o.openai == "temperature")
    assert fields["temperature"]["maximum"] == temperature.high  # from the one option table
    ollama = doc["paths"]["/api/chat"]["post"]["requestBody"]["content"]["application/json"]
    assert "repeat_penalty" in ollama["schema"]["properties"]["options"]["properties"]


def fuzz(url: str, max_examples: int) -> list[str]:
    """Schemathesis over every operation of `url`'s /openapi.json: the failures found (a 5xx,
    a connection dropped), one line each. benchmarks/fuzz.py runs it with a larger budget."""
    api = schemathesis.openapi.from_url(url + "/openapi.json")
    failures: list[str] = []
    for result in api.get_all_operations():
        if isinstance(result, Err):  # our own document failed to load: a finding in itself
            failures.append(f"invalid operation in /openapi.json: {result.err()}")
            continue
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=max_examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def one(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error], timeout=30)

        try:
            one()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # a failure group: schemathesis's report names the case
            failures.append(f"{operation.label}: {e}")
    return failures


def test_no_generated_request_is_a_server_error(served: Served) -> None:
    failures = fuzz(served.url, max_examples=10)
    assert not failures, "\n\n".join(failures)
