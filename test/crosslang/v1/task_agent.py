#!/usr/bin/python3
"""A dialect-B (/api/v1) application agent that also serves POST /task, so
the orchestrator can route tasks to it: it registers with
ApplicationAgentClient (clients.py: httpx.AsyncClient, "host": "0.0.0.0"
by default), heartbeats with the id in the path, and deregisters
(DELETE /api/v1/agents/<id>) on SIGTERM or SIGINT before exiting 0.

POST /task is dialect A's contract, served by the very Flask app of
../agent/agent.py (the same delivery body read, the same replies, the same
"task <task_id> <task_type> -> <status>" lines), run in a thread beside the
asyncio loop.

  task_agent.py --orchestrator-url URL --port PORT [--bind 127.0.0.1]
                [--host 0.0.0.0] [--agent-id application-agent-001]
                [--capabilities analyze,fail] [--version 0.1.0]
  AGENT_TOKEN: bearer token sent to the orchestrator when agent auth is on.

--host is what it announces; --bind where it listens (loopback by default,
whatever it announces). It prints "registered <agent_id>" once the
orchestrator answered 200 (it retries with a short backoff until then),
and "deregistered <agent_id>" after a 200 to its DELETE. Problems go to
stderr; a DELETE that fails makes the exit status 1.
"""

import argparse
import asyncio
import os
import signal
import sys
import threading

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "agent"))
from agent import create_app  # noqa: E402  dialect A's /task, reused as is
from werkzeug.serving import make_server  # noqa: E402

from clients import ApplicationAgentClient, warn  # noqa: E402


class TaskState:
    """What agent.py's create_app reads of its agent."""

    def __init__(self, name, agent_id, capabilities):
        self.cfg = argparse.Namespace(name=name, capabilities=capabilities)
        self.agent_id = agent_id
        self.lock = threading.Lock()
        self.counts = {"completed": 0, "failed": 0}

    def count(self, outcome):
        with self.lock:
            self.counts[outcome] += 1


async def run(args):
    client = ApplicationAgentClient(
        args.orchestrator_url, agent_id=args.agent_id, port=args.port, host=args.host,
        agent_name=args.agent_name, capabilities=args.capabilities, version=args.version,
        token=os.environ.get("AGENT_TOKEN") or None)
    state = TaskState(args.agent_name, args.agent_id, args.capabilities)
    # Listen before registering, so a task can arrive the moment the
    # orchestrator knows us.
    server = make_server(args.bind, args.port, create_app(state), threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="task-server", daemon=True)
    serving.start()
    warn("serving /task on %s:%d, announcing %s:%d as %s" % (args.bind, args.port, args.host, args.port, args.agent_id))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    code = 0
    try:
        backoff = 0.2
        while not stop.is_set():
            try:
                r = await client.register()
                if r.status_code == 200:
                    print("registered", client.agent_id, flush=True)
                    break
            except httpx.HTTPError as e:
                warn("register: %s" % e)
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 5.0)
        if client.registered is not None:
            client.start_heartbeats()
            await stop.wait()
            r = await client.shutdown()
            if r is not None and r.status_code == 200:
                print("deregistered", client.agent_id, flush=True)
            else:
                warn("deregister: %s" % ("no answer" if r is None else "HTTP %d: %s" % (r.status_code, r.text.strip())))
                code = 1
        else:
            await client.client.aclose()
    finally:
        server.shutdown()
        serving.join(5)
    return code


def main(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(description="a dialect-B application agent serving POST /task")
    p.add_argument("--orchestrator-url", default=env("ORCHESTRATOR_URL", "http://127.0.0.1:8080"))
    p.add_argument("--agent-id", default="application-agent-001")
    p.add_argument("--agent-name", default="Application Agent")
    p.add_argument("--host", default="0.0.0.0", help="the host it announces")
    p.add_argument("--bind", default="127.0.0.1", help="the address it listens on")
    p.add_argument("--port", type=int, default=8004)
    p.add_argument("--capabilities", default="analyze,fail")
    p.add_argument("--version", default="0.1.0")
    args = p.parse_args(argv)
    args.capabilities = [c.strip() for c in args.capabilities.split(",") if c.strip()]
    if not 1 <= args.port <= 65535:
        p.error("--port must be from 1 to 65535")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
