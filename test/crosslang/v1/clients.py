"""Async orchestrator clients written the way OptiInfra's performance,
resource and application agents talk to the orchestrator's /api/v1 agent
dialect ("dialect B"): one httpx.AsyncClient per agent, `async def
register()`, a heartbeat loop task, and deregistration on shutdown
(Debian: python3-httpx).

The three register with the three body shapes those agents send:

  PerformanceAgentClient  endpoint URL, health_check_endpoint as a path,
                          heartbeats with the id in the body
  ResourceAgentClient     the same plus "status": "active", and the
                          health_check_endpoint as a full URL
  ApplicationAgentClient  host + port ("host": "0.0.0.0" by default),
                          agent_name, "status": "active", heartbeats with
                          the id in the path and {"status": "active"}

Nothing here asserts anything: check.py and task_agent.py do.
"""

import asyncio
import datetime
import sys

import httpx


def warn(*args):
    print("agent:", *args, file=sys.stderr, flush=True)


def utcnow():
    # What the agents send as "timestamp"; the orchestrator ignores it.
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class OrchestratorClient:
    """One agent's side of dialect B. Subclasses give the registration body
    and may override how a heartbeat is sent."""

    agent_type = None

    def __init__(self, orchestrator_url, agent_id, port, capabilities=None,
                 version="0.1.0", token=None):
        self.orchestrator_url = orchestrator_url.rstrip("/")
        self.agent_id = agent_id
        self.port = port
        self.capabilities = list(capabilities or [])
        self.version = version
        headers = {"Authorization": "Bearer " + token} if token else {}
        self.client = httpx.AsyncClient(timeout=10.0, headers=headers)
        self.heartbeat_interval = 30.0
        self.status = "active"
        self.metrics = {}
        self.registered = None  # the 200 answer's body, once registered
        self.last_heartbeat = None  # the last heartbeat's httpx.Response
        self._heartbeat_task = None

    def url(self, path):
        return self.orchestrator_url + path

    def registration(self):
        raise NotImplementedError

    async def register(self):
        """Register (or register again after a restart: the same agent_id).
        Returns the response; the agents treat anything but 200 as failure."""
        r = await self.client.post(self.url("/api/v1/agents/register"), json=self.registration())
        if r.status_code == 200:
            self.registered = r.json()
            interval = self.registered.get("heartbeat_interval_seconds")
            if interval:
                self.heartbeat_interval = max(float(interval), 0.2)
        else:
            warn("register %s: HTTP %d: %s" % (self.agent_id, r.status_code, r.text.strip()))
        return r

    async def send_heartbeat(self):
        """One heartbeat, with the id in the body (performance, resource)."""
        body = {"agent_id": self.agent_id, "timestamp": utcnow(), "status": self.status}
        if self.metrics:
            body["metrics"] = self.metrics
        return await self.client.post(self.url("/api/v1/agents/heartbeat"), json=body)

    async def heartbeat_loop(self):
        while True:
            try:
                r = await self.send_heartbeat()
                self.last_heartbeat = r
                if r.status_code != 200:
                    warn("heartbeat %s: HTTP %d: %s" % (self.agent_id, r.status_code, r.text.strip()))
            except httpx.HTTPError as e:
                warn("heartbeat %s: %s" % (self.agent_id, e))
            await asyncio.sleep(self.heartbeat_interval)

    def start_heartbeats(self):
        if self._heartbeat_task is None:
            self._heartbeat_task = asyncio.create_task(self.heartbeat_loop(), name="heartbeat-" + self.agent_id)

    async def stop_heartbeats(self):
        task, self._heartbeat_task = self._heartbeat_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def deregister(self):
        """DELETE /api/v1/agents/{agent_id}; returns the response."""
        return await self.client.delete(self.url("/api/v1/agents/" + self.agent_id))

    async def shutdown(self):
        """What the agents do on shutdown: stop heartbeating, deregister,
        close the client. Returns the DELETE's response (None if it failed)."""
        await self.stop_heartbeats()
        try:
            return await self.deregister()
        except httpx.HTTPError as e:
            warn("deregister %s: %s" % (self.agent_id, e))
            return None
        finally:
            await self.client.aclose()

    async def crash(self):
        """A crash: the heartbeats stop and nothing is deregistered."""
        await self.stop_heartbeats()
        await self.client.aclose()


class PerformanceAgentClient(OrchestratorClient):
    agent_type = "performance"

    def __init__(self, orchestrator_url, agent_id="performance-agent-001", port=8002,
                 capabilities=("metrics_collection", "performance_analysis", "optimization"),
                 host="localhost", **kw):
        super().__init__(orchestrator_url, agent_id, port, capabilities, **kw)
        self.host = host

    def registration(self):
        return {
            "agent_id": self.agent_id,
            "agent_type": self.agent_type,
            "capabilities": self.capabilities,
            "endpoint": "http://%s:%d" % (self.host, self.port),
            "health_check_endpoint": "/api/v1/health",
            "version": self.version,
            "metadata": {"language": "python", "framework": "fastapi"},
        }


class ResourceAgentClient(OrchestratorClient):
    agent_type = "resource"

    def __init__(self, orchestrator_url, agent_id="resource-agent-001", port=8003,
                 capabilities=("gpu_monitoring", "cpu_monitoring", "memory_monitoring"),
                 host="localhost", **kw):
        super().__init__(orchestrator_url, agent_id, port, capabilities, **kw)
        self.host = host

    def registration(self):
        base = "http://%s:%d" % (self.host, self.port)
        return {
            "agent_id": self.agent_id,
            "agent_type": self.agent_type,
            "capabilities": self.capabilities,
            "endpoint": base,
            "health_check_endpoint": base + "/api/v1/health",
            "version": self.version,
            "status": "active",
            "metadata": {"language": "python", "gpu_count": 0},
        }


class ApplicationAgentClient(OrchestratorClient):
    agent_type = "application"

    def __init__(self, orchestrator_url, agent_id="application-agent-001", port=8004,
                 capabilities=("quality_monitoring", "regression_detection"),
                 host="0.0.0.0", agent_name="Application Agent", **kw):
        super().__init__(orchestrator_url, agent_id, port, capabilities, **kw)
        self.host = host
        self.agent_name = agent_name

    def registration(self):
        return {
            "agent_id": self.agent_id,
            "agent_name": self.agent_name,
            "agent_type": self.agent_type,
            "version": self.version,
            "host": self.host,
            "port": self.port,
            "capabilities": self.capabilities,
            "status": "active",
        }

    async def send_heartbeat(self):
        """One heartbeat, with the id in the path and {"status": "active"}."""
        return await self.client.post(
            self.url("/api/v1/agents/%s/heartbeat" % self.agent_id), json={"status": self.status})
