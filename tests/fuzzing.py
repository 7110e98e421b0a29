"""A route-table fuzzer (issue 18): hostile variants of every route's valid requests, sent over raw sockets.

It walks ``viewer.app.routes()``, so a route added later is fuzzed without a change here. For each route
and method it builds a valid request from the test data (path values of real datasets, images, chunks,
stored keys, viewer sessions, API tokens; the body examples each ``@op`` body model declares) and mutates
it: the path, the query, the method, the headers, the body, the framing, the HTTP version. Each request
is made from ``FUZZ_SEED`` and its index alone (``random.Random(f"{seed}/{index}")``), so a failure is
reproduced by its index whatever the order the worker threads sent it in.

Every answer is checked: no 5xx; every error is the one JSON error body (strict JSON, NaN refused) with an
``application/json`` content type, except where HTTP forbids a body (HEAD, 304); every 2xx JSON answer is
strict JSON; a HEAD answer has no body; a server that says ``Connection: close`` closes; a complete
request gets an answer; and the server stays up.

What the server holds (the catalog, each dataset as an admin reads it, members, transform histories,
viewer sessions) is read before and after the run. Refused requests must change none of it. Valid
writes do succeed, so each 2xx answer to a write names the resources it may change (``touches``) and
those are left out of the comparison; to keep most resources under comparison, requests that could
succeed as writes (unmutated, or mutated only in their headers or framing) go to the *open* datasets
(``OPEN_DATASETS``) and their sessions, and the others (*sealed*) only get writes whose mutation is meant
to break them. The report counts what was compared and what was left out.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.fuzzing_requests import Fuzzed, Maker, coverage_problems
from tests.fuzzing_world import OPEN_DATASETS, Item, World, discover, snapshot, touches
from tests.rawhttp import Answer, Broken, Connection, address_of
from viewer.app import Route, routes

__all__ = ["Report", "World", "compare", "coverage_problems", "discover", "fuzz", "write_summary"]

DEFAULT_REQUESTS = 15_000  # about 40 s on the 2-core development machine, shared with other work
DEFAULT_SEED = 18
WORKERS = 4
ANSWER_TIMEOUT = 20.0  # a sign-in under throttling waits up to 8 s before answering
FAILURES_KEPT = 60

# Python's words for its own failures: no error message a client sees has them (as in tests/test_contract.py).
INTERNAL = re.compile(r"Error\b|Exception|Traceback|Value error|Assertion failed|function-(?:before|after|wrap|plain)"
                      r"|constrained-|object at 0x|<class|File \"|validation errors? for|errors\.pydantic\.dev")


def _reject(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def strict_json(data: bytes) -> Any:
    """``data`` as strict JSON: UTF-8, no NaN or Infinity (Python's json takes both unless told not to)."""
    return json.loads(data.decode("utf-8"), parse_constant=_reject)


# --- checks --------------------------------------------------------------------------------------------------------


def problems_with(request: Fuzzed, method: str, answer: Answer) -> list[str]:
    """What is wrong with one answer (nothing: an empty list)."""
    found = []
    status = answer.status
    content_type = answer.header("content-type") or ""
    if status >= 500:
        found.append(f"a {status}")
    bodiless = method == "HEAD" or status in (204, 304) or status < 200
    if bodiless and answer.body:
        found.append(f"a {status} to {method} with a body")
    if status >= 400 and not bodiless:
        if not content_type.startswith("application/json"):
            found.append(f"a {status} with content type {content_type!r}")
        try:
            error = strict_json(answer.body)
        except ValueError as failure:
            found.append(f"a {status} whose body is not strict JSON ({failure}): {answer.body[:120]!r}")
        else:
            if not (isinstance(error, dict) and error.get("ok") is False and error.get("status") == status
                    and isinstance(error.get("code"), str) and isinstance(error.get("message"), str)):
                found.append(f"a {status} without the error shape: {answer.body[:200]!r}")
            elif INTERNAL.search(error["message"]):
                found.append(f"a {status} whose message has Python's words: {error['message'][:200]!r}")
    elif 200 <= status < 300 and status != 206 and content_type.startswith("application/json") and not bodiless:
        # (a 206 is a byte range of a JSON document: its content type is the document's, RFC 9110 section 14.3)
        try:
            strict_json(answer.body)
        except ValueError as failure:
            found.append(f"a {status} JSON answer that is not strict JSON ({failure})")
    return found


# --- the run -------------------------------------------------------------------------------------------------------


@dataclass
class Report:
    seed: int
    requests: int = 0
    answers: int = 0
    duration_s: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # answered, unanswered (allowed), reset while sending
    failures: list[dict[str, Any]] = field(default_factory=list)
    failure_count: int = 0
    hung_up: Counter[str] = field(default_factory=Counter)  # mutations after whose answers the server hung up
    hung_up_examples: list[str] = field(default_factory=list)
    sealed_writes: Counter[str] = field(default_factory=Counter)  # 2xx writes to sealed datasets, by mutation
    slowest: list[tuple[float, str, str, str]] = field(default_factory=list)  # seconds, route, method, mutation
    route_seconds: Counter[str] = field(default_factory=Counter)
    failure_kinds: Counter[str] = field(default_factory=Counter)
    written: set[Item] = field(default_factory=set)  # left out of the comparison: changed by a 2xx write
    created: set[str] = field(default_factory=set)  # datasets made by a 2xx POST /api/datasets
    compared: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, request: Fuzzed, problem: str, answer: Answer | None = None) -> None:
        with self.lock:
            self.failure_count += 1
            self.failure_kinds[re.sub(r"\d+", "N", problem)[:80]] += 1
            if len(self.failures) < FAILURES_KEPT:
                found = {"problem": problem, **request.reproducer(self.seed)}
                if answer is not None:
                    found["answer"] = {"status_line": answer.status_line, "headers": answer.headers[:20],
                                       "body_prefix": repr(answer.body[:300])}
                self.failures.append(found)

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "requests": self.requests, "answers": self.answers,
            "duration_s": round(self.duration_s, 2),
            "requests_per_s": round(self.requests / self.duration_s, 1) if self.duration_s else None,
            "statuses": dict(sorted(self.statuses.items())), "outcomes": dict(self.outcomes),
            "routes": {name: {"requests": count, "mean_ms": round(1000 * self.route_seconds[name] / count, 2)}
                       for name, count in sorted(self.routes.items())},
            "mutations": dict(sorted(Counter(m.split(":")[0] for m in self.mutations.elements()).items())),
            "failure_count": self.failure_count, "failure_kinds": dict(self.failure_kinds.most_common(30)),
            "slowest": [{"s": round(s, 3), "route": r, "method": m[:20], "mutation": u}
                        for s, r, m, u in sorted(self.slowest, reverse=True)[:15]],
            "hung_up_after": dict(self.hung_up.most_common(20)), "hung_up_examples": self.hung_up_examples,
            "failures": self.failures,
            "state": {"compared": self.compared, "left_out_written": sorted("/".join(item) for item in self.written),
                      "datasets_created": sorted(self.created), "sealed_writes": dict(self.sealed_writes)},
        }


class Fuzzer:
    """Sends ``count`` requests from ``WORKERS`` threads, each on its own keep-alive connection."""

    def __init__(self, world: World, seed: int, count: int, route_list: list[Route] | None = None) -> None:
        self.world = world
        self.maker = Maker(world, seed, route_list or routes())
        self.count = count
        self.report = Report(seed)
        self.next = 0
        self.lock = threading.Lock()
        self.down = False

    def take(self) -> int | None:
        with self.lock:
            if self.next >= self.count or self.down:
                return None
            self.next += 1
            return self.next - 1

    def hung_up(self, previous: Fuzzed | None) -> None:
        """The server closed a kept-alive connection after answering ``previous``, without saying so."""
        with self.report.lock:
            self.report.outcomes["closed after an answer without Connection: close"] += 1
            if previous is not None:
                self.report.hung_up[previous.mutation.split(" ")[0][:40]] += 1
                if len(self.report.hung_up_examples) < 10:
                    self.report.hung_up_examples.append(previous.reproducer(self.report.seed)["wire_prefix"][:300])

    def worker(self) -> None:
        connection = Connection(address_of(self.world.url), timeout=ANSWER_TIMEOUT)
        previous: Fuzzed | None = None
        try:
            while (index := self.take()) is not None:
                request = self.maker.make(index)
                started = time.monotonic()
                try:
                    self.exchange(connection, request, previous)
                    previous = request
                except ConnectionRefusedError:
                    self.report.fail(request, "the server refused connections: it is down")
                    self.down = True
                except OSError as failure:  # a reset or timeout while sending or reading
                    self.report.fail(request, f"{type(failure).__name__} {failure}")
                    connection.close()
                took = time.monotonic() - started
                with self.report.lock:
                    self.report.route_seconds[request.route] += took
                    if took > 0.05:
                        self.report.slowest.append((took, request.route, request.method, request.mutation))
        finally:
            connection.close()

    def exchange(self, connection: Connection, request: Fuzzed, previous: Fuzzed | None = None) -> int:
        """Send ``request`` on ``connection`` (a kept-alive one unless it must be fresh), read and check its answers;
        the number of answers."""
        report = self.report
        reused = not connection.fresh
        if reused and previous is not None:  # a failure may come of what the connection carried before
            request.before = f"#{previous.index} {previous.mutation}: {previous.wire()[:200]!r}"
        if reused and connection.at_end(0.0):
            self.hung_up(previous)
            connection.close()
            reused = False
        sent = connection.send(request.wire(), half_close=request.half_close)
        answers: list[Answer] = []
        sends_close = request.version != b"HTTP/1.1" or any(k.lower() == b"connection" for k, _ in request.headers)
        reusable = not (request.half_close or sends_close)
        for method in request.expected_methods():
            try:
                answer = connection.read_answer(method)
            except TimeoutError:
                if not request.may_go_unanswered:
                    report.fail(request, f"no answer within {ANSWER_TIMEOUT} s")
                reusable = False
                break
            except Broken as broken:
                reusable = False
                if reused and not answers and connection.eof and not connection.buffer:
                    connection.close()  # closed before this request arrived, or because of it: send it again
                    if self.exchange(connection, request):
                        self.hung_up(previous)
                    return 0
                if not answers and not sent:
                    with report.lock:
                        report.outcomes["reset while sending"] += 1
                elif not (request.may_go_unanswered or (answers and answers[-1].says_close())):
                    report.fail(request, str(broken), answers[-1] if answers else None)
                break
            answers.append(answer)
            for problem in problems_with(request, method, answer):
                report.fail(request, problem, answer)
            if answer.streamed or answer.closed:
                reusable = False
                break
            if answer.says_close():
                reusable = False
                if not connection.at_end(2.0):
                    extra = bytes(connection.buffer[:80])
                    report.fail(request, "said Connection: close, then " +
                                (f"sent more bytes: {extra!r}" if extra else "kept the connection open"), answer)
                break
        else:
            if request.method == "HEAD" and connection.buffer and not connection.buffer.startswith(b"HTTP/"):
                report.fail(request, "bytes after a HEAD answer (a body?)", answers[-1])
                reusable = False
        if request.half_close and answers and not answers[-1].streamed:
            extra = connection.leftover(wait=2.0 if not connection.eof else 0.0)
            if extra and not request.may_go_unanswered:
                report.fail(request, f"bytes after the last answer: {extra[:80]!r}", answers[-1])
        if not reusable:
            connection.close()
        with report.lock:
            report.requests += 1
            report.answers += len(answers)
            report.routes[request.route] += 1
            report.mutations[request.mutation] += 1
            report.outcomes["answered" if answers else "unanswered"] += 1
            for answer in answers:
                report.statuses[str(answer.status)] += 1
            first = answers[0] if answers else None
            if first is not None and request.write and 200 <= first.status < 300:
                touched = touches(self.world, request.route, request.groups)
                report.written |= touched
                if any(item[1] not in OPEN_DATASETS and self.world.session_dataset.get(item[1]) not in OPEN_DATASETS
                       for item in touched if len(item) > 1):
                    report.sealed_writes[f"{request.route} {request.method} {request.mutation}"[:90]] += 1
                if request.route == "datasets":
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        report.created.add(strict_json(first.body)["name"])
        return len(answers)

    def run(self) -> Report:
        started = time.monotonic()
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.report.duration_s = time.monotonic() - started
        return self.report


def compare(before: dict[Item, Any], after: dict[Item, Any], report: Report) -> None:
    """Every item no successful write touched is as it was; the listing only gained datasets made by a 2xx."""
    for item, was in before.items():
        now = after[item]
        if item == ("listing",):
            gained, lost = set(now) - set(was), set(was) - set(now)
            if lost or gained - report.created:
                report.failure_count += 1
                report.failures.append({"problem": "the catalog changed", "lost": sorted(lost),
                                        "gained": sorted(gained - report.created)})
            report.compared += 1
            continue
        if item in report.written:
            continue
        report.compared += 1
        if now != was:
            report.failure_count += 1
            report.failures.append({"problem": f"{'/'.join(item)} changed though no write to it succeeded",
                                    "before": json.dumps(was)[:600], "after": json.dumps(now)[:600]})


def fuzz(world: World, count: int | None = None, seed: int | None = None) -> Report:
    """Snapshot, fuzz, check the server is up, compare: the report of it all (count and seed default to
    ``FUZZ_REQUESTS`` and ``FUZZ_SEED``)."""
    count = int(os.environ.get("FUZZ_REQUESTS", DEFAULT_REQUESTS)) if count is None else count
    seed = int(os.environ.get("FUZZ_SEED", DEFAULT_SEED)) if seed is None else seed
    before = snapshot(world)
    fuzzer = Fuzzer(world, seed, count)
    report = fuzzer.run()
    alive = requests.get(f"{world.url}/api/datasets", timeout=30)
    if alive.status_code != 200:
        report.failure_count += 1
        report.failures.append({"problem": f"after the run GET /api/datasets answered {alive.status_code}"})
    compare(before, snapshot(world), report)
    return report


def write_summary(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.summary(), indent=1, ensure_ascii=False) + "\n")
