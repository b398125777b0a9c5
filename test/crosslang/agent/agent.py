#!/usr/bin/python3
"""A minimal OptiInfra agent, written the way the existing agents are:
plain Flask for the /task endpoint and requests for talking to the
orchestrator, nothing else (Debian: python3-flask python3-requests).

It registers with the orchestrator (retrying with a short backoff until the
orchestrator answers 201), sends a heartbeat at once and then every interval
the orchestrator asked for, serves POST /task, and unregisters on SIGTERM or
SIGINT before exiting 0.

Task types it knows:
  analyze    200 completed; the result echoes the parameters back and adds
             count/sum/mean of parameters["values"] when it is a list of numbers
  fail       500 {"status": "failed"}: a server-side failure the orchestrator
             should retry
  soft_fail  200 {"status": "failed"}: a failure reported in the body, which
             the orchestrator should retry like a 500
  sleep      200 completed after parameters["seconds"] (default 1, at most 60)
Any other task_type gets 400 {"status": "failed"}: the orchestrator must not
retry it.

Plan steps. A task whose parameters hold a "coordination" object is a step
of one of the orchestrator's execution plans (task_type the step's action:
take_snapshot, migrate_workload, validate_quality, rollback_<action>, ...).
The agent serves the step types it advertises in --capabilities, whatever
their name, and answers any other step 400. A step is answered 200
completed with a result naming what it did:
  {"step": task_type, "agent", "agent_id", "task_id", "plan_id", "step_id",
   "recommendation_id", "customer_id", "action", "resources"}
  (resources: the coordination's affected_resources), plus
  take_snapshot      "snapshot_id": "snap-<task_id>", the same on a
                     redelivery of the task, as an idempotent agent's
  rollback_<action>  "rollback_of" (the undone step's id), "undid"
                     (<action>) and "step_result": the undone step's
                     result as the orchestrator sent it, echoed back, and
                     for rollback_take_snapshot "deleted_snapshot_id"
                     taken from it
A parameter "fail_steps" (a list of step types) makes those steps answer
400 failed instead: the recommendation's parameters reach every step of
its plan, so ["validate_quality"] fails the validation and lets the
rollback steps run; add "rollback_migrate_workload" to fail a rollback too.

Configuration: flags, each with an environment fallback.
  --orchestrator-url  ORCHESTRATOR_URL    (http://127.0.0.1:8080)
  --name              AGENT_NAME          (python-agent)
  --type              AGENT_TYPE          (cost)
  --host              AGENT_HOST          (127.0.0.1)
  --port              AGENT_PORT          (8001)
  --capabilities      AGENT_CAPABILITIES  (analyze,fail; comma separated)
  --version           AGENT_VERSION       (0.1.0)
  AGENT_TOKEN: bearer token sent to the orchestrator when agent auth is on.

It prints "registered <agent_id>" on stdout once registered, one line per
task it answers ("task <task_id> <task_type> -> <http status>"), and
"unregistered <agent_id>" on shutdown. Problems go to stderr.
"""

import argparse
import os
import signal
import sys
import threading
import time

import requests
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

AGENT_TYPES = ("cost", "performance", "resource", "application")


def log(*args):
    print(*args, flush=True)


def warn(*args):
    print("agent:", *args, file=sys.stderr, flush=True)


def parse_args(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(description="OptiInfra test agent")
    p.add_argument("--orchestrator-url", default=env("ORCHESTRATOR_URL", "http://127.0.0.1:8080"))
    p.add_argument("--name", default=env("AGENT_NAME", "python-agent"))
    p.add_argument("--type", default=env("AGENT_TYPE", "cost"), choices=AGENT_TYPES)
    p.add_argument("--host", default=env("AGENT_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("AGENT_PORT", "8001")))
    p.add_argument("--capabilities", default=env("AGENT_CAPABILITIES", "analyze,fail"))
    p.add_argument("--version", default=env("AGENT_VERSION", "0.1.0"))
    args = p.parse_args(argv)
    args.orchestrator_url = args.orchestrator_url.rstrip("/")
    args.capabilities = [c.strip() for c in args.capabilities.split(",") if c.strip()]
    if not 1 <= args.port <= 65535:
        p.error("--port must be from 1 to 65535")
    return args


class Agent:
    """The agent's side of the orchestrator protocol."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.session = requests.Session()
        token = os.environ.get("AGENT_TOKEN")
        if token:
            self.session.headers["Authorization"] = "Bearer " + token
        self.started = time.monotonic()
        # lock guards agent_id and makes registering and unregistering
        # exclusive, so a shutdown never races a registration in flight.
        self.lock = threading.Lock()
        self.agent_id = None
        self.interval = 30.0
        self.stopping = threading.Event()
        self.counts = {"completed": 0, "failed": 0}
        self.counts_lock = threading.Lock()

    def url(self, path):
        return self.cfg.orchestrator_url + path

    # Registration and heartbeats -------------------------------------------

    def register(self):
        """Register until the orchestrator accepts us; False when stopping."""
        payload = {
            "name": self.cfg.name,
            "type": self.cfg.type,
            "host": self.cfg.host,
            "port": self.cfg.port,
            "capabilities": self.cfg.capabilities,
            "version": self.cfg.version,
            "metadata": {"language": "python", "pid": os.getpid()},
        }
        backoff = 0.2
        while not self.stopping.is_set():
            with self.lock:
                if self.stopping.is_set():
                    return False
                try:
                    r = self.session.post(self.url("/agents/register"), json=payload, timeout=5)
                    if r.status_code == 201:
                        body = r.json()
                        self.agent_id = body["agent_id"]
                        self.interval = max(float(body.get("heartbeat_interval_seconds") or 30), 1.0)
                        log("registered", self.agent_id)
                        return True
                    warn("register: HTTP %d: %s" % (r.status_code, r.text.strip()))
                except (requests.RequestException, ValueError, KeyError) as e:
                    warn("register: %s" % e)
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, 5.0)
        return False

    def heartbeat(self):
        """Send one heartbeat; re-register when the orchestrator forgot us."""
        with self.counts_lock:
            metadata = dict(self.counts)
        metadata["uptime_seconds"] = round(time.monotonic() - self.started, 1)
        try:
            r = self.session.post(
                self.url("/agents/%s/heartbeat" % self.agent_id),
                json={"status": "healthy", "metadata": metadata},
                timeout=5,
            )
        except requests.RequestException as e:
            warn("heartbeat: %s" % e)
            return
        if r.status_code == 200:
            try:
                nxt = r.json().get("next_interval_seconds")
                if nxt:
                    self.interval = max(float(nxt), 1.0)
            except ValueError:
                pass
        elif r.status_code == 404 and not self.stopping.is_set():
            warn("heartbeat: orchestrator does not know %s any more; registering again" % self.agent_id)
            self.register()
        else:
            warn("heartbeat: HTTP %d: %s" % (r.status_code, r.text.strip()))

    def run_background(self):
        if not self.register():
            return
        while not self.stopping.is_set():
            self.heartbeat()
            self.stopping.wait(self.interval)

    def unregister(self):
        self.stopping.set()
        with self.lock:
            agent_id = self.agent_id
            if agent_id is None:
                return
            try:
                # No body and no Content-Type, as the existing agents do.
                r = self.session.post(self.url("/agents/%s/unregister" % agent_id), timeout=5)
                if r.status_code == 200:
                    log("unregistered", agent_id)
                else:
                    warn("unregister: HTTP %d: %s" % (r.status_code, r.text.strip()))
            except requests.RequestException as e:
                warn("unregister: %s" % e)

    def count(self, outcome):
        with self.counts_lock:
            self.counts[outcome] += 1


def create_app(agent):
    app = Flask(__name__)

    def answer(task_id, task_type, code, body):
        log("task %s %s -> %d" % (task_id, task_type, code))
        agent.count("completed" if code == 200 else "failed")
        return jsonify(body), code

    @app.post("/task")
    def task():
        started = time.monotonic()
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return answer(None, None, 400, {
                "task_id": None,
                "status": "failed",
                "error": "expected a JSON object with Content-Type: application/json",
            })
        task_id = body.get("task_id")
        task_type = body.get("task_type")
        parameters = body.get("parameters")
        if not task_id or not isinstance(parameters, dict):
            return answer(task_id, task_type, 400, {
                "task_id": task_id,
                "status": "failed",
                "error": "task_id and an object of parameters are required",
            })

        coordination = parameters.get("coordination")
        if isinstance(coordination, dict):
            return step(task_id, task_type, parameters, coordination, started)

        if task_type == "analyze":
            result = {
                "agent": agent.cfg.name,
                "agent_id": agent.agent_id,
                "task_id": task_id,
                "parameters": parameters,
                "timeout_seconds": body.get("timeout_seconds"),
                "priority": body.get("priority"),
                "metadata": body.get("metadata"),
            }
            values = parameters.get("values")
            if isinstance(values, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                total = sum(values)
                result["count"] = len(values)
                result["sum"] = total
                result["mean"] = total / len(values) if values else None
            return answer(task_id, task_type, 200, {
                "task_id": task_id,
                "status": "completed",
                "result": result,
                "execution_time_ms": round((time.monotonic() - started) * 1000, 3),
            })
        if task_type == "sleep":
            # Answers after parameters["seconds"]; for timeouts.
            try:
                seconds = min(max(float(parameters.get("seconds", 1)), 0.0), 60.0)
            except (TypeError, ValueError):
                seconds = 1.0
            time.sleep(seconds)
            return answer(task_id, task_type, 200, {
                "task_id": task_id,
                "status": "completed",
                "result": {"slept_seconds": seconds},
                "execution_time_ms": round((time.monotonic() - started) * 1000, 3),
            })
        if task_type == "soft_fail":
            return answer(task_id, task_type, 200, {
                "task_id": task_id,
                "status": "failed",
                "error": "simulated failure reported with HTTP 200",
            })
        if task_type == "fail":
            return answer(task_id, task_type, 500, {
                "task_id": task_id,
                "status": "failed",
                "error": "simulated failure requested by task_type fail",
            })
        return answer(task_id, task_type, 400, {
            "task_id": task_id,
            "status": "failed",
            "error": "unknown task_type %r" % (task_type,),
        })

    def step(task_id, task_type, parameters, coordination, started):
        """Answers one step of an execution plan (see the module's doc)."""
        if task_type not in agent.cfg.capabilities:
            return answer(task_id, task_type, 400, {
                "task_id": task_id,
                "status": "failed",
                "error": "step %r is not one of this agent's capabilities" % (task_type,),
            })
        fail_steps = parameters.get("fail_steps")
        if isinstance(fail_steps, list) and task_type in fail_steps:
            return answer(task_id, task_type, 400, {
                "task_id": task_id,
                "status": "failed",
                "error": "step %s of plan %s failed: requested by fail_steps"
                         % (task_type, coordination.get("plan_id")),
            })
        result = {
            "step": task_type,
            "agent": agent.cfg.name,
            "agent_id": agent.agent_id,
            "task_id": task_id,
            "plan_id": coordination.get("plan_id"),
            "step_id": coordination.get("step_id"),
            "recommendation_id": coordination.get("recommendation_id"),
            "customer_id": coordination.get("customer_id"),
            "action": coordination.get("action"),
            "resources": coordination.get("affected_resources"),
        }
        if task_type == "take_snapshot":
            result["snapshot_id"] = "snap-" + task_id
        if task_type.startswith("rollback_"):
            undone = coordination.get("step_result")
            result["rollback_of"] = coordination.get("rollback_of")
            result["undid"] = task_type[len("rollback_"):]
            result["step_result"] = undone
            if task_type == "rollback_take_snapshot" and isinstance(undone, dict):
                result["deleted_snapshot_id"] = undone.get("snapshot_id")
        return answer(task_id, task_type, 200, {
            "task_id": task_id,
            "status": "completed",
            "result": result,
            "execution_time_ms": round((time.monotonic() - started) * 1000, 3),
        })

    return app


def main(argv):
    cfg = parse_args(argv)
    agent = Agent(cfg)
    # Bind before registering, so the orchestrator can deliver a task the
    # moment it knows us.
    server = make_server(cfg.host, cfg.port, create_app(agent), threaded=True)

    def on_signal(signum, frame):
        agent.unregister()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    threading.Thread(target=agent.run_background, name="orchestrator", daemon=True).start()
    warn("serving /task on %s:%d (%s agent %r, capabilities %s)"
         % (cfg.host, cfg.port, cfg.type, cfg.name, ",".join(cfg.capabilities)))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
