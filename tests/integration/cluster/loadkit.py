"""The zero-drop tests' backend and client (standard library only, run by the test's
Python in namespaces).

SERVER answers every GET with its hostname over HTTP/1.1 keep-alive. On SIGTERM it
does what servers do on a graceful stop: it closes its listening socket at once (a
connection that still comes is refused), keeps serving the connections it has, answering
each request from then on with `Connection: close`, and exits DRAIN_S later (within
the stop grace period). So a new connection reaching it after the signal fails: none
may (the task leaves every node's backends before it: docs/networking.md,
"Draining").

CLIENT runs for a bounded time at a fixed rate against a list of addresses, half its
workers opening a new connection per request, half keeping theirs alive (reopening
only when the server said `Connection: close`), and prints one JSON object: requests,
failures, failures by kind, answers by hostname, and when each failed request was
sent (seconds since the client started, whose wall time is `t0_wall`).
"""

from __future__ import annotations

SERVER = r"""
import http.server, os, signal, socket, threading, time
DRAIN_S = float(os.environ.get("DRAIN_S", "2"))
draining = threading.Event()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = socket.gethostname().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if draining.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
def term(*_):
    draining.set()
    threading.Thread(target=s.shutdown).start()  # stop accepting
signal.signal(signal.SIGTERM, term)
s = http.server.ThreadingHTTPServer(("0.0.0.0", 80), H)
s.daemon_threads = True
s.serve_forever(poll_interval=0.05)
s.server_close()  # new connections are refused from now on
time.sleep(DRAIN_S)  # the open ones are served (each told to close) meanwhile
os._exit(0)
"""

CLIENT = r"""
import asyncio, collections, json, sys, time
targets = sys.argv[1].split(",")
duration, rate, workers = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
TIMEOUT = 3.0
t0 = time.monotonic()
stats = {"t0_wall": time.time(), "requests": 0, "failures": 0, "kinds": collections.Counter(),
         "answers": collections.Counter(), "failure_times": [], "new_conn": 0, "keepalive": 0}

async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body

def fail(kind, sent):
    stats["failures"] += 1
    stats["kinds"][kind] += 1
    stats["failure_times"].append(round(sent - t0, 3))

async def worker(i, keepalive):
    period = workers / rate
    next_at = time.monotonic() + period * i / workers
    conn = None
    n = i
    while True:
        now = time.monotonic()
        if now - t0 >= duration:
            break
        if next_at > now:
            await asyncio.sleep(next_at - now)
        next_at += period
        target = targets[n % len(targets)]
        n += 1
        host, port = target.rsplit(":", 1)
        stats["requests"] += 1
        stats["keepalive" if keepalive else "new_conn"] += 1
        sent = time.monotonic()
        try:
            async with asyncio.timeout(TIMEOUT):
                if conn is None:
                    conn = await asyncio.open_connection(host, int(port))
                reader, writer = conn
                hdr = "keep-alive" if keepalive else "close"
                writer.write(f"GET / HTTP/1.1\r\nHost: {target}\r\nConnection: {hdr}\r\n\r\n".encode())
                await writer.drain()
                status, headers, body = await read_response(reader)
            if status != 200:
                fail(f"status {status}", sent)
            else:
                stats["answers"][body.decode()] += 1
            if not keepalive or headers.get("connection", "").lower() == "close":
                writer.close()
                conn = None
        except Exception as e:
            fail(type(e).__name__, sent)
            if conn is not None:
                conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()

async def main():
    await asyncio.gather(*(worker(i, i % 2 == 1) for i in range(workers)))

asyncio.run(main())
stats["elapsed"] = round(time.monotonic() - t0, 3)
print(json.dumps(stats))
"""
