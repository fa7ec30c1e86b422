"""Local AWS API server for pageflow's tests and demo: moto in server mode, single-threaded.

Usage: .venv-aws/bin/python scripts/aws-local/moto_server.py [--port N] [--exit-on-stdin-eof] [--verbose]

Binds 127.0.0.1 only. --port 0 (the default) picks a free port. The first line written to stdout is
`PORT <n>`, flushed, once the socket is listening; the server then serves until SIGTERM or SIGINT,
and exits with status 0 on either.

Why single-threaded: moto's default threaded server acknowledged Kinesis PutRecords calls but lost
records under concurrent writers (duplicate sequence numbers); serving the same WSGI app from one
thread lost none (see LOCAL-AWS.md in the shared notes). Responses are HTTP/1.0 (the connection
closes after each response) so that an idle keep-alive connection of one client can never hold
the only thread while other clients wait.

--exit-on-stdin-eof: exit when standard input reaches end of file, i.e. when the parent that holds
the other end of the pipe exits, even if it was killed before it could stop this server.
"""

import argparse
import logging
import os
import signal
import sys
import threading


def main() -> None:
    parser = argparse.ArgumentParser(description="moto server, single-threaded, on loopback")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks a free one")
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when standard input is closed (the parent went away)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args()

    # Imported here so that `--help` works without moto.
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Http10Handler(MotoRequestHandler):
        # One request per connection: see the module's docstring.
        protocol_version = "HTTP/1.0"

    # Request lines are werkzeug's INFO logs; keep them out unless asked (errors still show).
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.WARNING)

    app = DomainDispatcherApplication(create_backend_app)

    # What `run_simple(host, port, app, threaded=False, processes=1, request_handler=...)` does,
    # minus its banner, but with the bound port known before serving.
    server = make_server(
        "127.0.0.1",
        args.port,
        app,
        threaded=False,
        processes=1,
        request_handler=Http10Handler,
    )
    port = server.socket.getsockname()[1]
    # moto builds some URLs it returns (e.g. Lambda's AWS endpoint) from MOTO_PORT.
    os.environ["MOTO_PORT"] = str(port)

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    if args.exit_on_stdin_eof:

        def watch_stdin() -> None:
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            finally:
                # Raises SystemExit in the main thread, through the handler above.
                os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()

    try:
        server.serve_forever()
    except SystemExit:
        pass
    finally:
        server.server_close()
    # Skip the interpreter's teardown of moto's thousands of modules (1.5 to 2 s, and nothing in
    # it matters once the socket is closed): the port is free and the exit status is 0 at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
