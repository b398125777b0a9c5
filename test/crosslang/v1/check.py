#!/usr/bin/python3
"""Checks the orchestrator's /api/v1 agent dialect ("dialect B") with the
async clients of clients.py, the way OptiInfra's performance, resource and
application agents use it. It exits 0 when every check passed, 1 with
"FAIL: <what>" on stderr at the first mismatch, 2 on a usage error or an
unexpected exception. Each check that passed prints "ok <what>".

  check.py protocol --orchestrator-url URL [--heartbeat-seconds N]
      an orchestrator without agent tokens. Registers the three agents,
      heartbeats in both forms, status words, metrics, a restart, both
      listings, bad inputs, a dialect-A agent's id; then prints
      "checkpoint <performance-id> <resource-id> <application-id>" and, with
      the three heartbeating, waits for a line on stdin (at most 120s) so
      the caller can read the registry; then deregisters them
      ("deregistered <id>" each) and checks they are gone.

  check.py proxy --orchestrator-url URL
      an orchestrator with HTTP_TRUSTED_PROXIES=127.0.0.1/32, as behind an
      ingress on the same machine: X-Forwarded-For names the request's
      address, so an announced 0.0.0.0 or loopback host registers the
      right-most forwarded address that is not the proxy (a pod's, here
      10.x), and one outside AGENT_ALLOWED_NETWORKS is 403. (protocol
      checks that without trusted proxies X-Forwarded-For is ignored.)

  check.py auth --orchestrator-url URL
      an orchestrator with agent and operator tokens, taken from the
      environment (never the command line): CHECK_AGENT_TOKEN,
      CHECK_OTHER_AGENT_TOKEN (a second agent token), CHECK_OPERATOR_TOKEN.
      No token -> 401; another agent's token -> 403 on heartbeat (both
      forms, and dialect A's), delete (and dialect A's unregister) and
      re-register; the operator token reads and deletes.
"""

import argparse
import asyncio
import json
import os
import sys
import threading
import traceback

import httpx

from clients import ApplicationAgentClient, PerformanceAgentClient, ResourceAgentClient

# The keys of the register answer and of an AgentV1 (V1SPEC.md).
REGISTER_KEYS = ("agent_id", "status", "message", "heartbeat_interval_seconds", "heartbeat_url",
                 "registered_at", "host", "port", "address_source")
HEARTBEAT_KEYS = ("status", "agent_id", "timestamp", "heartbeat_interval_seconds")
AGENT_V1_KEYS = ("agent_id", "agent_name", "agent_type", "endpoint", "host", "port", "capabilities",
                 "status", "version", "health_check_endpoint", "registered_at", "last_heartbeat",
                 "metadata", "announced_host", "address_source")


class Mismatch(Exception):
    """The orchestrator did not answer as the design says."""


def ok(what):
    print("ok", what, flush=True)


def expect(cond, what):
    if not cond:
        raise Mismatch(what)


def body_of(r):
    try:
        return r.json()
    except ValueError:
        raise Mismatch("%s %s: HTTP %d with a body that is not JSON: %r"
                       % (r.request.method, r.request.url.path, r.status_code, r.text[:200]))


def expect_status(r, code, what):
    """r answered code; returns its JSON body (None for HEAD)."""
    if r.status_code != code:
        raise Mismatch("%s: %s %s answered %d, want %d: %s"
                       % (what, r.request.method, r.request.url.path, r.status_code, code, r.text.strip()[:300]))
    if r.request.method == "HEAD":
        expect(r.content == b"", "%s: HEAD answered a body" % what)
        return None
    return body_of(r)


def expect_error(r, code, what, field=None, secrets=()):
    """r answered code with {"error": "..."} naming field, and no secret."""
    body = expect_status(r, code, what)
    expect(isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"],
           '%s: the %d body is %r, want {"error": "..."}' % (what, code, body))
    if field:
        expect(field in body["error"], "%s: the error %r does not name %s" % (what, body["error"], field))
    for s in secrets:
        expect(s not in r.text, "%s: the %d answer contains a token" % (what, code))
    return body


def expect_keys(body, keys, what):
    missing = [k for k in keys if k not in body]
    expect(not missing, "%s: %s missing from %s" % (what, ", ".join(missing), json.dumps(body)))


async def wait_line(timeout):
    """Waits for a line on stdin; False on timeout or EOF. The reader is a
    daemon thread, so a timeout never holds the interpreter's exit, and the
    event loop (the heartbeat tasks) keeps running meanwhile."""
    loop = asyncio.get_running_loop()
    line = loop.create_future()

    def read():
        got = sys.stdin.readline()
        try:
            loop.call_soon_threadsafe(lambda: line.done() or line.set_result(got))
        except RuntimeError:  # the loop is closed: we gave up waiting
            pass

    threading.Thread(target=read, name="stdin", daemon=True).start()
    try:
        return bool(await asyncio.wait_for(line, timeout))
    except asyncio.TimeoutError:
        return False


# protocol ------------------------------------------------------------------

async def protocol(args):
    url = args.orchestrator_url
    raw = httpx.AsyncClient(base_url=url, timeout=10.0)
    perf = PerformanceAgentClient(url)                  # endpoint http://localhost:8002
    res = ResourceAgentClient(url, host="127.0.0.1")    # endpoint http://127.0.0.1:8003
    app = ApplicationAgentClient(url)                   # host 0.0.0.0, port 8004
    agents = [perf, res, app]
    # What each must register as: (host, address_source, announced_host).
    # The loopback announcements come from loopback here, so they are kept;
    # the application agent's 0.0.0.0 becomes the request's address.
    address = {
        perf.agent_id: ("localhost", "announced", "localhost"),
        res.agent_id: ("127.0.0.1", "announced", "127.0.0.1"),
        app.agent_id: ("127.0.0.1", "request", "0.0.0.0"),
    }
    try:
        # Register: 200 and the documented answer.
        for a in agents:
            body = expect_status(await a.register(), 200, "register the %s agent" % a.agent_type)
            what = "register the %s agent" % a.agent_type
            expect_keys(body, REGISTER_KEYS, what)
            host, source, _ = address[a.agent_id]
            expect(body["agent_id"] == a.agent_id, "%s: agent_id %r, want %r" % (what, body["agent_id"], a.agent_id))
            expect(body["status"] == "registered", "%s: status %r, want registered" % (what, body["status"]))
            expect(body["heartbeat_url"] == "/api/v1/agents/%s/heartbeat" % a.agent_id,
                   "%s: heartbeat_url %r" % (what, body["heartbeat_url"]))
            expect(body["heartbeat_interval_seconds"] == args.heartbeat_seconds,
                   "%s: heartbeat_interval_seconds %r, want %d (AGENT_HEARTBEAT_INTERVAL)"
                   % (what, body["heartbeat_interval_seconds"], args.heartbeat_seconds))
            expect((body["host"], body["port"], body["address_source"]) == (host, a.port, source),
                   "%s: host %r port %r address_source %r, want %r %r %r"
                   % (what, body["host"], body["port"], body["address_source"], host, a.port, source))
            ok("register %s %s -> 200 host %s address_source %s" % (a.agent_type, a.agent_id, host, source))

        # Heartbeats in both forms.
        perf.metrics = {"cpu_percent": 12.5, "p95_latency_ms": 180, "requests_per_second": 40.0}
        body = expect_status(await perf.send_heartbeat(), 200, "heartbeat with the id in the body")
        expect_keys(body, HEARTBEAT_KEYS, "heartbeat with the id in the body")
        expect(body["status"] == "ok" and body["agent_id"] == perf.agent_id
               and body["heartbeat_interval_seconds"] == args.heartbeat_seconds,
               "heartbeat with the id in the body answered %s" % json.dumps(body))
        ok("heartbeat POST /api/v1/agents/heartbeat (id and metrics in the body) -> 200")
        body = expect_status(await app.send_heartbeat(), 200, 'heartbeat with the id in the path and {"status":"active"}')
        expect_keys(body, HEARTBEAT_KEYS, "heartbeat with the id in the path")
        expect(body["status"] == "ok" and body["agent_id"] == app.agent_id,
               "heartbeat with the id in the path answered %s" % json.dumps(body))
        ok('heartbeat POST /api/v1/agents/%s/heartbeat {"status":"active"} -> 200' % app.agent_id)
        r = await raw.post("/api/v1/agents/%s/heartbeat" % app.agent_id)
        expect_status(r, 200, "heartbeat with the id in the path and no body")
        ok("heartbeat with the id in the path and no body -> 200")
        # The timestamp is accepted in any form and ignored.
        r = await raw.post("/api/v1/agents/heartbeat",
                           json={"agent_id": res.agent_id, "timestamp": 1700000000.5, "status": "healthy"})
        expect_status(r, 200, "heartbeat with a numeric timestamp")
        ok("heartbeat with a numeric timestamp -> 200")

        # Every agent reads back as it registered; the metrics are kept.
        for a in agents:
            what = "GET /api/v1/agents/%s" % a.agent_id
            got = expect_status(await raw.get("/api/v1/agents/" + a.agent_id), 200, what)
            expect_keys(got, AGENT_V1_KEYS, what)
            host, source, announced = address[a.agent_id]
            want = {
                "agent_id": a.agent_id,
                "agent_name": getattr(a, "agent_name", a.agent_id),
                "agent_type": a.agent_type,
                "endpoint": "http://%s:%d" % (host, a.port),
                "host": host, "port": a.port,
                "capabilities": a.capabilities,
                "status": "healthy",
                "version": a.version,
                "announced_host": announced,
                "address_source": source,
            }
            differ = {k: (got[k], v) for k, v in want.items() if got[k] != v}
            expect(not differ, "%s: (got, want) %s" % (what, differ))
            hc = a.registration().get("health_check_endpoint")
            if hc:
                expect(got["health_check_endpoint"] == hc,
                       "%s: health_check_endpoint %r, want %r" % (what, got["health_check_endpoint"], hc))
            expect(got["registered_at"] and got["last_heartbeat"], "%s: registered_at or last_heartbeat empty" % what)
            expect_status(await raw.head("/api/v1/agents/" + a.agent_id), 200, "HEAD " + what)
            ok("GET and HEAD /api/v1/agents/%s: as registered, healthy" % a.agent_id)
        meta = (await raw.get("/api/v1/agents/" + perf.agent_id)).json()["metadata"]
        expect(isinstance(meta, dict) and all(meta.get(k) == v for k, v in perf.metrics.items()),
               "the heartbeat's metrics %s are not in the agent's metadata %s" % (perf.metrics, meta))
        ok("the heartbeat's metrics are in GET /api/v1/agents/%s metadata" % perf.agent_id)

        # Status words.
        for word, want in (("degraded", "degraded"), ("inactive", "unhealthy"), ("error", "unhealthy"),
                           ("unhealthy", "unhealthy"), ("healthy", "healthy"), ("", "healthy"),
                           ("active", "healthy")):
            res.status = word
            expect_status(await res.send_heartbeat(), 200, "heartbeat status %r" % word)
            got = (await raw.get("/api/v1/agents/" + res.agent_id)).json()["status"]
            expect(got == want, "after a heartbeat with status %r the agent is %r, want %r" % (word, got, want))
        r = await raw.post("/api/v1/agents/heartbeat", json={"agent_id": res.agent_id, "status": "sleeping"})
        expect_error(r, 400, 'heartbeat with status "sleeping"', "status")
        ok("status words: degraded, inactive/error/unhealthy, healthy/active/empty; anything else 400 naming status")

        for a in agents:
            a.start_heartbeats()

        # A restart: the same agent_id registers again, updated, still one agent.
        await perf.crash()
        perf = PerformanceAgentClient(url, version="0.2.0",
                                      capabilities=perf.capabilities + ["load_testing"])
        agents[0] = perf
        body = expect_status(await perf.register(), 200, "register again after a restart")
        expect(body["agent_id"] == perf.agent_id, "re-register answered agent_id %r" % body["agent_id"])
        listed = expect_status(await raw.get("/api/v1/agents", params={"agent_type": "performance"}), 200,
                               "GET /api/v1/agents?agent_type=performance")
        expect(listed["count"] == 1 and len(listed["agents"]) == 1,
               "after a restart GET /api/v1/agents?agent_type=performance lists %s" % json.dumps(listed))
        one = listed["agents"][0]
        expect(one["agent_id"] == perf.agent_id and one["version"] == "0.2.0"
               and one["capabilities"] == perf.capabilities,
               "after a restart the agent is %s, want version 0.2.0 and the new capabilities" % json.dumps(one))
        perf.start_heartbeats()
        ok("re-register after a restart -> 200, one agent, the same id, updated")

        # Both listings.
        listed = expect_status(await raw.get("/api/v1/agents"), 200, "GET /api/v1/agents")
        ids = sorted(a["agent_id"] for a in listed["agents"])
        expect(listed["count"] == 3 and ids == sorted(a.agent_id for a in agents),
               "GET /api/v1/agents lists %s (count %r), want the three" % (ids, listed["count"]))
        listed = expect_status(await raw.get("/api/v1/agents", params={"agent_type": "application"}), 200,
                               "GET /api/v1/agents?agent_type=application")
        expect([a["agent_id"] for a in listed["agents"]] == [app.agent_id],
               "GET /api/v1/agents?agent_type=application lists %s" % json.dumps(listed))
        expect_status(await raw.head("/api/v1/agents"), 200, "HEAD /api/v1/agents")
        listed = expect_status(await raw.get("/agents"), 200, "GET /agents")
        by_id = {a["id"]: a for a in listed["agents"]}
        expect(len(listed["agents"]) == 3 and sorted(by_id) == sorted(a.agent_id for a in agents),
               "GET /agents lists %s, want the three dialect-B agents by their ids" % sorted(by_id))
        for a in agents:
            expect(by_id[a.agent_id]["type"] == a.agent_type,
                   "GET /agents: %s has type %r" % (a.agent_id, by_id[a.agent_id]["type"]))
        ok("both listings: GET /agents and GET /api/v1/agents show the three, by their ids")

        await bad_inputs(raw, app)

        # The caller reads the registry while the three heartbeat.
        print("checkpoint", perf.agent_id, res.agent_id, app.agent_id, flush=True)
        expect(await wait_line(120), "no line on stdin within 120s after the checkpoint")
        for a in agents:
            expect(a.last_heartbeat is not None and a.last_heartbeat.status_code == 200,
                   "%s's heartbeat loop: last answer %r" % (a.agent_id, a.last_heartbeat))

        # Deregister on shutdown: 200, then 404 everywhere.
        for a in agents:
            r = await a.shutdown()
            expect(r is not None, "deregister %s: no answer" % a.agent_id)
            body = expect_status(r, 200, "DELETE /api/v1/agents/%s" % a.agent_id)
            expect(body.get("agent_id") == a.agent_id and body.get("message"),
                   "DELETE answered %s, want message and agent_id" % json.dumps(body))
            print("deregistered", a.agent_id, flush=True)
            what = "after DELETE /api/v1/agents/%s" % a.agent_id
            expect_error(await raw.post("/api/v1/agents/heartbeat", json={"agent_id": a.agent_id}), 404,
                         "heartbeat (id in the body) " + what)
            expect_error(await raw.post("/api/v1/agents/%s/heartbeat" % a.agent_id, json={"status": "active"}),
                         404, "heartbeat (id in the path) " + what)
            expect_error(await raw.get("/api/v1/agents/" + a.agent_id), 404, "GET " + what)
            expect_error(await raw.delete("/api/v1/agents/" + a.agent_id), 404, "DELETE again " + what)
        listed = expect_status(await raw.get("/api/v1/agents"), 200, "GET /api/v1/agents")
        expect(listed["count"] == 0 and listed["agents"] == [], "after deregistering: %s" % json.dumps(listed))
        ok("deregister -> 200; then heartbeat, GET and DELETE -> 404; the listing is empty")
    finally:
        for a in agents:
            await a.stop_heartbeats()
            await a.client.aclose()
        await raw.aclose()


async def bad_inputs(raw, app):
    base = {"agent_type": "performance", "endpoint": "http://127.0.0.1:8102", "capabilities": ["x"]}
    for bad in ("../../etc/passwd", "..", ".", "a/b", "-leading-dash", "with space", "x" * 129, "", "caf\u00e9"):
        r = await raw.post("/api/v1/agents/register", json=dict(base, agent_id=bad))
        expect_error(r, 400, "register agent_id %r" % bad, "agent_id")
    expect_error(await raw.post("/api/v1/agents/register", json=base), 400, "register without agent_id", "agent_id")
    ok("register with an unsafe or missing agent_id -> 400 naming agent_id")
    for endpoint in ("https://127.0.0.1:8102", "http://127.0.0.1:8102/agent", "http://user:pw@127.0.0.1:8102",
                     "http://127.0.0.1:8102?x=1", "http://127.0.0.1", "not a url"):
        r = await raw.post("/api/v1/agents/register", json=dict(base, agent_id="bad-endpoint", endpoint=endpoint))
        expect_error(r, 400, "register endpoint %r" % endpoint, "endpoint")
    ok("register with an https, path, userinfo, query or port-less endpoint -> 400 naming endpoint")
    r = await raw.post("/api/v1/agents/register", content=b"{not json", headers={"Content-Type": "application/json"})
    expect_error(r, 400, "register with a body that is not JSON")
    ok("register with a body that is not JSON -> 400")

    unknown = "no-such-agent-001"
    expect_error(await raw.post("/api/v1/agents/heartbeat", json={"agent_id": unknown, "status": "active"}), 404,
                 "heartbeat (id in the body) for an unknown id")
    expect_error(await raw.post("/api/v1/agents/%s/heartbeat" % unknown, json={"status": "active"}), 404,
                 "heartbeat (id in the path) for an unknown id")
    expect_error(await raw.get("/api/v1/agents/" + unknown), 404, "GET an unknown id")
    expect_error(await raw.delete("/api/v1/agents/" + unknown), 404, "DELETE an unknown id")
    expect_error(await raw.post("/api/v1/agents/heartbeat", json={"status": "active"}), 400,
                 "heartbeat without agent_id", "agent_id")
    ok("unknown id: heartbeat (both forms), GET, DELETE -> 404; heartbeat without agent_id -> 400")

    # Without trusted proxies, X-Forwarded-For is nobody's word.
    r = await raw.post("/api/v1/agents/register", headers={"X-Forwarded-For": "10.9.8.7"},
                       json=dict(base, agent_id="forwarded-agent", endpoint="http://0.0.0.0:8106"))
    body = expect_status(r, 200, "register 0.0.0.0 with X-Forwarded-For and no trusted proxies")
    expect((body["host"], body["address_source"]) == ("127.0.0.1", "request"),
           "X-Forwarded-For from an untrusted peer was used: %s" % json.dumps(body))
    expect_status(await raw.delete("/api/v1/agents/forwarded-agent"), 200, "DELETE forwarded-agent")
    ok("X-Forwarded-For without HTTP_TRUSTED_PROXIES is ignored: 0.0.0.0 registers the peer, 127.0.0.1")

    # A dialect-A agent's generated id is never taken over by dialect B.
    r = await raw.post("/agents/register", json={"name": "dialect-a-agent", "type": "cost",
                                                 "host": "127.0.0.1", "port": 8105, "capabilities": ["x"]})
    generated = expect_status(r, 201, "dialect A register")["agent_id"]
    r = await raw.post("/api/v1/agents/register", json=dict(base, agent_id=generated))
    expect_error(r, 409, "dialect B register with a dialect-A agent's id", "agent_id")
    a = expect_status(await raw.get("/agents/" + generated), 200, "GET the dialect-A agent")
    expect(a["type"] == "cost" and a["port"] == 8105, "the dialect-A agent changed: %s" % json.dumps(a))
    expect_status(await raw.post("/agents/%s/unregister" % generated), 200, "dialect A unregister")
    ok("dialect B register with a dialect-A agent's generated id -> 409 naming agent_id, the agent unchanged")


# proxy ---------------------------------------------------------------------

async def proxy(args):
    raw = httpx.AsyncClient(base_url=args.orchestrator_url, timeout=10.0)
    cases = (
        # (announced endpoint, X-Forwarded-For, host, address_source)
        ("http://0.0.0.0:8201", "10.9.8.7", "10.9.8.7", "request"),
        ("http://localhost:8202", "10.9.8.7", "10.9.8.7", "request"),
        ("http://127.0.0.1:8203", "10.9.8.7", "10.9.8.7", "request"),
        ("http://0.0.0.0:8204", "10.6.6.6, 10.9.8.7, 127.0.0.1", "10.9.8.7", "request"),
        ("http://0.0.0.0:8205", None, "127.0.0.1", "request"),
        ("http://127.0.0.1:8206", None, "127.0.0.1", "announced"),
        ("http://10.1.2.3:8207", "10.9.8.7", "10.1.2.3", "announced"),
    )
    try:
        for i, (endpoint, xff, host, source) in enumerate(cases):
            agent_id = "proxied-agent-%d" % i
            headers = {"X-Forwarded-For": xff} if xff else {}
            r = await raw.post("/api/v1/agents/register", headers=headers, json={
                "agent_id": agent_id, "agent_type": "resource", "endpoint": endpoint, "capabilities": ["x"]})
            what = "register %s with X-Forwarded-For %r through a trusted proxy" % (endpoint, xff)
            body = expect_status(r, 200, what)
            expect((body["host"], body["address_source"]) == (host, source),
                   "%s: host %r address_source %r, want %r %r" % (what, body["host"], body["address_source"], host, source))
            got = expect_status(await raw.get("/api/v1/agents/" + agent_id), 200, "GET " + agent_id)
            announced = endpoint.split("//")[1].rsplit(":", 1)[0]
            expect((got["host"], got["announced_host"], got["address_source"]) == (host, announced, source),
                   "GET /api/v1/agents/%s: %s" % (agent_id, json.dumps(got)))
            expect_status(await raw.delete("/api/v1/agents/" + agent_id), 200, "DELETE " + agent_id)
        ok("behind a trusted proxy: 0.0.0.0 and loopback announcements register the forwarded address; others are kept")
        r = await raw.post("/api/v1/agents/register", headers={"X-Forwarded-For": "203.0.113.9"}, json={
            "agent_id": "proxied-outside", "agent_type": "resource", "endpoint": "http://0.0.0.0:8208"})
        expect_error(r, 403, "register 0.0.0.0 forwarded from 203.0.113.9, outside AGENT_ALLOWED_NETWORKS")
        expect_error(await raw.get("/api/v1/agents/proxied-outside"), 404, "GET the refused agent")
        ok("a forwarded address outside AGENT_ALLOWED_NETWORKS -> 403, nothing registered")
    finally:
        await raw.aclose()


# auth ----------------------------------------------------------------------

async def auth(args):
    url = args.orchestrator_url
    token = os.environ.get("CHECK_AGENT_TOKEN", "")
    other_token = os.environ.get("CHECK_OTHER_AGENT_TOKEN", "")
    operator_token = os.environ.get("CHECK_OPERATOR_TOKEN", "")
    if not (token and other_token and operator_token):
        print("check.py auth: set CHECK_AGENT_TOKEN, CHECK_OTHER_AGENT_TOKEN and CHECK_OPERATOR_TOKEN",
              file=sys.stderr)
        sys.exit(2)
    secrets = (token, other_token, operator_token)
    agent_id = "performance-agent-auth"
    anonymous = PerformanceAgentClient(url, agent_id=agent_id)
    owner = PerformanceAgentClient(url, agent_id=agent_id, token=token)
    thief = PerformanceAgentClient(url, agent_id=agent_id, token=other_token, version="6.6.6",
                                   host="127.0.0.2")
    operator = httpx.AsyncClient(base_url=url, timeout=10.0,
                                 headers={"Authorization": "Bearer " + operator_token})
    agent_reader = httpx.AsyncClient(base_url=url, timeout=10.0, headers={"Authorization": "Bearer " + token})
    other_raw = httpx.AsyncClient(base_url=url, timeout=10.0, headers={"Authorization": "Bearer " + other_token})
    clients = (anonymous, owner, thief)
    try:
        expect_error(await anonymous.register(), 401, "register without a token", secrets=secrets)
        expect_status(await owner.register(), 200, "register with an agent token")
        expect_error(await anonymous.send_heartbeat(), 401, "heartbeat without a token", secrets=secrets)
        expect_error(await anonymous.deregister(), 401, "DELETE without a token", secrets=secrets)
        ok("no token -> 401 on register, heartbeat and DELETE; an agent token registers -> 200")

        # Another agent's token: 403 on everything that acts as the agent,
        # in either dialect.
        expect_error(await thief.send_heartbeat(), 403, "heartbeat (id in the body) with another agent's token",
                     secrets=secrets)
        r = await other_raw.post("/api/v1/agents/%s/heartbeat" % agent_id, json={"status": "active"})
        expect_error(r, 403, "heartbeat (id in the path) with another agent's token", secrets=secrets)
        r = await other_raw.post("/agents/%s/heartbeat" % agent_id, json={"status": "healthy"})
        expect_error(r, 403, "dialect A heartbeat with another agent's token", secrets=secrets)
        expect_error(await thief.deregister(), 403, "DELETE with another agent's token", secrets=secrets)
        r = await other_raw.post("/agents/%s/unregister" % agent_id)
        expect_error(r, 403, "dialect A unregister with another agent's token", secrets=secrets)
        expect_error(await thief.register(), 403, "re-register with another agent's token", secrets=secrets)
        ok("another agent's token -> 403 on heartbeat (both forms and dialect A's), DELETE, unregister, re-register")

        # Reads are the operator's: the agent is as its owner registered it.
        expect_error(await agent_reader.get("/api/v1/agents/" + agent_id), 401, "GET with an agent token",
                     secrets=secrets)
        got = expect_status(await operator.get("/api/v1/agents/" + agent_id), 200, "GET with the operator token")
        expect(got["version"] == owner.version and got["host"] == "localhost",
               "after the refused takeover the agent is %s, want the owner's registration" % json.dumps(got))
        ok("reads need the operator token (an agent token -> 401); the refused takeover changed nothing")

        # The owner keeps working; an operator may delete it.
        expect_status(await owner.send_heartbeat(), 200, "heartbeat with the owner's token")
        expect_status(await owner.register(), 200, "re-register with the owner's token")
        body = expect_status(await operator.delete("/api/v1/agents/" + agent_id), 200, "DELETE with the operator token")
        expect(body.get("agent_id") == agent_id, "DELETE answered %s" % json.dumps(body))
        expect_error(await owner.send_heartbeat(), 404, "heartbeat after the operator deleted the agent")
        ok("the owner heartbeats and re-registers -> 200; the operator's DELETE -> 200, then heartbeat -> 404")

        # Registered again, it deletes itself on shutdown with its own token.
        expect_status(await owner.register(), 200, "register again with the agent token")
        r = await owner.shutdown()
        expect(r is not None, "deregister: no answer")
        expect_status(r, 200, "DELETE with the owner's token")
        print("deregistered", agent_id, flush=True)
        expect_error(await operator.get("/api/v1/agents/" + agent_id), 404, "GET after the owner deleted itself")
        ok("the owner's DELETE on shutdown -> 200, then GET -> 404")
    finally:
        for c in clients:
            await c.stop_heartbeats()
            await c.client.aclose()
        for c in (operator, agent_reader, other_raw):
            await c.aclose()


def main(argv):
    p = argparse.ArgumentParser(description="checks the orchestrator's /api/v1 agent dialect")
    p.add_argument("scenario", choices=("protocol", "proxy", "auth"))
    p.add_argument("--orchestrator-url", default=os.environ.get("ORCHESTRATOR_URL", "http://127.0.0.1:8080"))
    p.add_argument("--heartbeat-seconds", type=int, default=30,
                   help="the orchestrator's AGENT_HEARTBEAT_INTERVAL in seconds")
    args = p.parse_args(argv)
    try:
        asyncio.run({"protocol": protocol, "proxy": proxy, "auth": auth}[args.scenario](args))
    except Mismatch as e:
        print("FAIL:", e, file=sys.stderr, flush=True)
        return 1
    except Exception:  # an answer so far off that a check raised
        traceback.print_exc()
        return 2
    print("%s checks passed" % args.scenario, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
