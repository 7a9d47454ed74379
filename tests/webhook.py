"""A webhook that records what it is sent, for the alert tests of both tiers."""

import http.server
import json
import threading
from contextlib import contextmanager


@contextmanager
def webhook_sink():
    """(port on 127.0.0.1, the list of JSON bodies POSTed to it)."""
    got = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_port, got
    finally:
        srv.shutdown()
