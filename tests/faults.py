"""Faulty peers for the reliability tests: an endpoint that never answers, a TCP proxy that can
freeze, and an S3 proxy that cuts object bodies short. Each serves on a free loopback port from
threads of the test process and is stopped by the test that started it."""

import contextlib
import http.client
import http.server
import socket
import socketserver
import threading


class SilentEndpoint:
    """Accepts TCP connections, reads what comes, and never answers."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._clients = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._clients.append(client)  # held open, never read from or written to

    def stop(self):
        self._stopped.set()
        self._listener.close()
        for client in self._clients:
            client.close()


class FreezingProxy:
    """Forwards TCP connections to `target` (a unix socket path or (host, port)) until more than
    `after_bytes` went to the server (a point inside a large COPY, however slow the machine): from
    then on every connection stays open and nothing more passes, like a server that stopped."""

    def __init__(self, target, after_bytes: int):
        self._target = target
        self._after_bytes = after_bytes
        self._sent = 0  # bytes passed on to the server, over every connection
        self._counting = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.frozen = threading.Event()
        self._sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _connect_target(self):
        if isinstance(self._target, str):
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self._target)
            return upstream
        return socket.create_connection(self._target)

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = self._connect_target()
            self._sockets += [client, upstream]
            for source, sink, to_server in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, to_server), daemon=True).start()

    def _pump(self, source, sink, to_server):
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if to_server:
                    with self._counting:
                        self._sent += len(data)
                        if self._sent > self._after_bytes:
                            self.frozen.set()
                if self.frozen.is_set():
                    return  # stop reading, keep both ends open: the peers wait forever
                sink.sendall(data)

    def stop(self):
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


class TruncatingS3Proxy:
    """An HTTP proxy in front of an S3 endpoint that sends every object body (GET of a key) cut
    in half after announcing its full length; everything else passes unchanged."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"{host}:{port}"
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                cut = self.command == "GET" and "?" not in self.path and self.path.count("/") >= 2 and payload
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2] if cut else payload)
                if cut:
                    proxy.truncated += 1
                self.close_connection = True

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward  # noqa: N815 - http.server's names

        self.truncated = 0
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
