#!/usr/bin/env python3
"""A CIM agent worker: connects to the agent service as one agent, runs the tasks it is given with
two toy skills (`text.reverse`, `math.sum`), and answers conversation messages in chunks.

Copy it and replace `Skills` with real work. README.md says how to run it and what each message
on the stream means. It prints one line per thing that happens (`welcome`, `assigned`,
`accepted`, `cancelled`, ...) so a person, or a test, can follow it.
"""

import argparse
import hashlib
import importlib
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from google.protobuf import json_format, struct_pb2

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
# agent.proto and everything it imports that protobuf does not ship itself.
PROTOS = [
    "cim/agent/v1/agent.proto",
    "cim/common/v1/command.proto",
    "cim/common/v1/paging.proto",
    "google/api/annotations.proto",
    "google/api/http.proto",
]


def load_stubs():
    """Generates the Python stubs from the repository's protos with grpc_tools (once per proto
    content: they are cached under $CIM_AGENT_STUBS, or the temp directory) and imports them."""
    from grpc_tools import protoc
    import grpc_tools

    digest = hashlib.sha256(b"".join((PROTO_ROOT / p).read_bytes() for p in PROTOS)).hexdigest()[:16]
    root = Path(os.environ.get("CIM_AGENT_STUBS") or Path(tempfile.gettempdir()) / "cim-agent-stubs")
    cache = root / digest
    if not (cache / "cim/agent/v1/agent_pb2_grpc.py").exists():
        root.mkdir(parents=True, exist_ok=True)
        # Generated aside and renamed into place: workers starting together never see half a set.
        staging = Path(tempfile.mkdtemp(prefix="staging-", dir=root))
        include = Path(grpc_tools.__file__).parent / "_proto"
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={staging}", f"--grpc_python_out={staging}"]
        if protoc.main(args + PROTOS) != 0:
            sys.exit("could not generate the gRPC stubs from " + str(PROTO_ROOT))
        try:
            os.rename(staging, cache)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another worker put the same set there
    # Last on the path: an installed google.api (googleapis-common-protos) is used if present.
    sys.path.append(str(cache))
    return importlib.import_module("cim.agent.v1.agent_pb2"), importlib.import_module("cim.agent.v1.agent_pb2_grpc")


pb, rpc = load_stubs()


SAYING = threading.Lock()


def say(*words):
    """One line per event, whole and flushed at once: threads print together, and a test reads
    the lines as they come."""
    line = " ".join(str(w) for w in words) + "\n"
    with SAYING:
        sys.stdout.write(line)
        sys.stdout.flush()


class Stopped(Exception):
    """The service cancelled the task: drop it, send nothing."""


class SkillFailed(Exception):
    def __init__(self, error, retryable):
        super().__init__(error)
        self.retryable = retryable


class Skills:
    """The toy work. `delay_ms` in a payload makes any task take that long (reporting progress),
    so a test can cancel it or kill the worker in the middle; `fail` makes it fail."""

    def __init__(self, worker):
        self.worker = worker

    def run(self, task_id, capabilities, payload, cancel):
        self.wait(task_id, payload.get("delay_ms", 0), cancel)
        if "fail" in payload:
            raise SkillFailed(str(payload["fail"]), bool(payload.get("retryable", False)))
        if "text.reverse" in capabilities or (not capabilities and "text" in payload):
            return {"text": str(payload.get("text", ""))[::-1]}
        if "math.sum" in capabilities or (not capabilities and "numbers" in payload):
            return {"sum": sum(payload.get("numbers", []))}
        raise SkillFailed(f"no skill for {sorted(capabilities)}", False)

    def wait(self, task_id, delay_ms, cancel):
        """Works for `delay_ms`, telling the service how far it got about once a heartbeat."""
        end = time.monotonic() + delay_ms / 1000
        report = time.monotonic()
        while (left := end - time.monotonic()) > 0:
            if cancel.wait(min(left, 0.05)):
                raise Stopped()
            if time.monotonic() - report >= self.worker.heartbeat_every:
                report = time.monotonic()
                done = 100 - int(100 * left * 1000 / delay_ms)
                self.worker.send(progress=pb.Progress(task_id=task_id, percent=done, message="working"))


class Worker:
    def __init__(self, args):
        self.args = args
        self.outbox = queue.Queue()
        self.lock = threading.Lock()
        self.tasks = {}  # task id -> cancel event
        self.responses = {}  # message id -> (cancel event, reason holder)
        self.heartbeat_every = 5.0
        self.skills = Skills(self)
        self.pool = ThreadPoolExecutor(max_workers=max(args.slots, 1) + 8)
        self.closed = threading.Event()  # set when the current stream ended

    def send(self, **kind):
        self.outbox.put(pb.WorkerMessage(**kind))

    def requests(self, hello):
        """The worker's side of the stream: hello, then whatever the worker's threads queue."""
        yield pb.WorkerMessage(hello=hello)
        while (message := self.outbox.get()) is not None:
            yield message

    def run(self):
        """One stream, until it ends: the status it ended with."""
        with self.lock:
            running = list(self.tasks)
        hello = pb.Hello(agent_id=self.args.agent_id, free_slots=self.args.slots, running_task_ids=running)
        metadata = [("x-cim-tenant", self.args.tenant), ("x-cim-actor", self.args.actor)]
        if self.args.caller_signature:
            # Signed for exactly this tenant and actor, no roles (`cim service-token`).
            metadata.append(("x-cim-caller-signature", self.args.caller_signature))
        # Fresh for each stream: what a previous one left unsent (and its end marker) stays there.
        self.outbox, self.closed = queue.Queue(), threading.Event()
        channel = self.channel()
        stream = rpc.AgentServiceStub(channel).ConnectAgent(self.requests(hello), metadata=metadata)
        try:
            for message in stream:
                self.on(message)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            say("ended", e.code().name, e.details())
            return e.code()
        finally:
            self.closed.set()
            self.outbox.put(None)
            channel.close()

    def channel(self):
        """A channel to the service: TLS when a CA or a certificate is given, checking the service
        against the CA (else the system's roots) and presenting this worker's certificate (the
        service requires one when it sets CIM_TLS_CLIENT_CA_FILE). The files are read for each
        stream, so certificates rotated on disk are used from the next connection on."""
        a = self.args
        if not (a.tls_ca or a.tls_cert):
            return grpc.insecure_channel(a.target)

        def read(path):
            return Path(path).read_bytes() if path else None

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(a.tls_ca), private_key=read(a.tls_key), certificate_chain=read(a.tls_cert))
        return grpc.secure_channel(a.target, credentials)

    def on(self, message):
        kind = message.WhichOneof("kind")
        if kind == "welcome":
            w = message.welcome
            self.heartbeat_every = w.heartbeat_interval_ms / 1000
            threading.Thread(target=self.heartbeats, args=(self.closed,), daemon=True).start()
            say("welcome", w.session_id, "adopted=" + ",".join(w.adopted_task_ids))
        elif kind == "assignment":
            a = message.assignment
            say("assigned", a.task_id, f"attempt={a.attempt}")
            cancel = threading.Event()
            with self.lock:
                self.tasks[a.task_id] = cancel
            self.pool.submit(self.work, a, cancel)
        elif kind == "cancellation":
            c = message.cancellation
            with self.lock:
                cancel = self.tasks.get(c.task_id)
            if cancel is not None:  # one the worker no longer runs needs nothing
                cancel.set()
                say("cancelled", c.task_id, c.cause)
        elif kind == "message":
            m = message.message
            say("message", m.message_id)
            cancel = threading.Event()
            with self.lock:
                self.responses[m.message_id] = cancel
            self.pool.submit(self.answer, m, cancel)
        elif kind == "response_cancellation":
            with self.lock:
                cancel = self.responses.get(message.response_cancellation.message_id)
            if cancel is not None:
                cancel.set()
        elif kind == "reply":
            r = message.reply
            about = r.task_id or r.message_id
            if r.HasField("refusal"):
                say("refused", about, r.refusal.code, r.refusal.message)
            else:
                say("accepted", about)

    def heartbeats(self, closed):
        """Keeps the leases of the tasks still running (a task left out would lapse)."""
        while not closed.wait(self.heartbeat_every):
            with self.lock:
                running = list(self.tasks)
            self.send(heartbeat=pb.Heartbeat(task_ids=running))

    def work(self, assignment, cancel):
        payload = json_format.MessageToDict(assignment.payload)
        try:
            result = self.skills.run(assignment.task_id, set(assignment.required_capabilities), payload, cancel)
            value = struct_pb2.Struct()
            value.update(result)
            self.send(completion=pb.TaskCompletion(task_id=assignment.task_id, result_value=value))
        except Stopped:
            say("stopped", assignment.task_id)
        except SkillFailed as e:
            failure = pb.TaskFailure(task_id=assignment.task_id, error=str(e), retryable=e.retryable)
            self.send(failure=failure)
        finally:
            with self.lock:
                self.tasks.pop(assignment.task_id, None)

    def answer(self, message, cancel):
        """A toy model: echoes the message back a word at a time."""
        words = f"You said: {message.content}".split(" ")
        started = time.monotonic()
        try:
            for i, word in enumerate(words):
                if cancel.is_set():
                    self.send(response_failed=pb.ResponseFailed(
                        message_id=message.message_id, error_type="unknown",
                        error="cancelled at the caller's request", recoverable=True))
                    say("abandoned", message.message_id)
                    return
                chunk = word if i == 0 else " " + word
                self.send(response_chunk=pb.ResponseChunk(message_id=message.message_id, content=chunk))
                time.sleep(self.args.chunk_delay_ms / 1000)
            prompt, completion = len(message.content.split()), len(words)
            usage = pb.TokenUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
            self.send(response_completed=pb.ResponseCompleted(
                message_id=message.message_id, finish_reason="stop", token_usage=usage))
            say("responded", message.message_id, f"in {int((time.monotonic() - started) * 1000)}ms")
        finally:
            with self.lock:
                self.responses.pop(message.message_id, None)


# Ends worth connecting again after: the service restarted, or the stream went silent.
RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="localhost:50054", help="the agent service's gRPC address")
    parser.add_argument("--tenant", required=True, help="the tenant id (sent as x-cim-tenant)")
    parser.add_argument("--agent-id", required=True, help="the agent this worker is")
    parser.add_argument("--actor", default="service:example-agent", help="who the results are recorded as")
    parser.add_argument(
        "--caller-signature",
        default=os.environ.get("CIM_CALLER_SIGNATURE", ""),
        help="x-cim-caller-signature for this tenant and actor, when the services check signatures "
        "(CIM_SERVICE_TOKEN_SECRET): the last line of `cim service-token --tenant T --actor A`",
    )
    parser.add_argument(
        "--tls-ca",
        default=os.environ.get("CIM_TLS_CA_FILE", ""),
        help="PEM file of the CA the agent service's certificate must come from: connect over TLS (CIM_TLS_CA_FILE)",
    )
    parser.add_argument(
        "--tls-cert",
        default=os.environ.get("CIM_TLS_CERT_FILE", ""),
        help="PEM certificate chain this worker presents, for a service that requires client certificates "
        "(mTLS: issued by the service's CIM_TLS_CLIENT_CA_FILE) (CIM_TLS_CERT_FILE)",
    )
    parser.add_argument(
        "--tls-key",
        default=os.environ.get("CIM_TLS_KEY_FILE", ""),
        help="PEM private key of --tls-cert (CIM_TLS_KEY_FILE)",
    )
    parser.add_argument("--slots", type=int, default=0, help="tasks run at once (0: the agent's limit)")
    parser.add_argument("--chunk-delay-ms", type=int, default=20, help="pause between response chunks")
    parser.add_argument("--reconnect", action="store_true", help="connect again after UNAVAILABLE")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    for path in (args.tls_ca, args.tls_cert, args.tls_key):
        if path and not Path(path).is_file():
            parser.error(f"{path}: no such file")
    worker = Worker(args)
    backoff = 0.5
    while True:
        code = worker.run()
        if not args.reconnect or code not in RETRY:
            sys.exit(0 if code == grpc.StatusCode.OK else 1)
        time.sleep(backoff)
        backoff = min(backoff * 2, 10)


if __name__ == "__main__":
    main()
