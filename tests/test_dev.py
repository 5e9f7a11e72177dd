"""``warren dev``: loading, errors with file and line, reload, configuration errors."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def test_syntax_error_is_reported_with_file_and_line_and_the_server_keeps_running(dev: Any, tmp_path: Path) -> None:
    server = dev({"worker.js": "export default {\n  fetch() {\n    return new Response('x'\n  },\n};\n"})
    server.wait_for(r"worker\.js:4:\d+: SyntaxError")
    response = server.get("/")
    assert response.status_code == 503
    time.sleep(0.3)  # let the watcher start
    (tmp_path / "worker.js").write_text("export default { fetch() { return new Response('fixed'); } };\n")
    server.wait_for("Reloaded")
    assert server.get("/").text == "fixed"


def test_classic_script_syntax_error_has_a_line(dev: Any) -> None:
    server = dev({"worker.js": "addEventListener('fetch', (e) => {\n  e.respondWith(new Response('x'));\n});\nlet = = 3;\n"})
    server.wait_for(r"worker\.js:4:\d+: SyntaxError")


def test_top_level_throw_is_reported(dev: Any) -> None:
    server = dev({"worker.js": "\n\nthrow new TypeError('broken at start');\nexport default {};\n"})
    server.wait_for(r"worker\.js:3:\d+: TypeError: broken at start")


def test_script_without_a_handler_is_reported(dev: Any) -> None:
    server = dev({"worker.js": "console.log('no handlers here');"})
    server.wait_for("No event handlers were registered")


def test_hot_reload_picks_up_an_edit_without_restarting(dev: Any, tmp_path: Path) -> None:
    server = dev({"worker.js": "export default { fetch() { return new Response('one'); } };"})
    pid = server.process.pid
    assert server.get("/").text == "one"
    time.sleep(0.3)  # let the watcher start
    (tmp_path / "worker.js").write_text("export default { fetch() { return new Response('two'); } };")
    server.wait_for("Reloaded")
    assert server.get("/").text == "two"
    assert server.process.pid == pid and server.process.poll() is None


def test_reload_with_a_broken_edit_keeps_serving_the_last_good_version(dev: Any, tmp_path: Path) -> None:
    server = dev({"worker.js": "export default { fetch() { return new Response('good'); } };"})
    time.sleep(0.3)  # let the watcher start
    (tmp_path / "worker.js").write_text("export default { fetch() { return new Response('bad' } };")
    server.wait_for("SyntaxError")
    assert server.get("/").text == "good"


def _dev_that_refuses_to_start(target: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "warren.cli", "dev", str(target), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result
    return result


def test_malformed_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "wrangler.toml").write_text('name = "x"\nmain = \n')
    result = _dev_that_refuses_to_start(tmp_path)
    assert "wrangler.toml is malformed" in result.stderr


def test_missing_main_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "wrangler.toml").write_text('name = "x"\nmain = "src/missing.js"\n')
    result = _dev_that_refuses_to_start(tmp_path)
    assert "missing.js does not exist" in result.stderr


def test_hello_example_serves(dev: Any) -> None:
    example = Path(__file__).parent.parent / "examples" / "hello" / "worker.js"
    server = dev({"worker.js": example.read_text()})
    assert server.get("/").text == "hello from an isolate\n"


def test_script_over_10_mb_is_refused(dev: Any) -> None:
    filler = "// " + "x" * 1000 + "\n"
    server = dev({"worker.js": "export default { fetch() { return new Response('big'); } };\n" + filler * 10_500})
    server.wait_for("the limit is 10485760")
    assert server.get("/").status_code == 503  # the server runs, so that a later edit can fix it


def test_bad_cpu_limit_in_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "wrangler.toml").write_text('name = "x"\nmain = "w.js"\n[limits]\ncpu_ms = "fast"\n')
    (tmp_path / "w.js").write_text("export default { fetch() { return new Response('x'); } };")
    result = _dev_that_refuses_to_start(tmp_path)
    assert "limits.cpu_ms must be a number" in result.stderr


def test_scheduled_handler_runs_with_test_scheduled(dev: Any) -> None:
    server = dev(
        {
            "wrangler.toml": 'name = "cron"\nmain = "worker.js"\n[triggers]\ncrons = ["*/5 * * * *"]\n',
            "worker.js": """
            let runs = [];
            export default {
              async scheduled(controller, env, ctx) {
                runs.push(controller.cron);
                ctx.waitUntil(Promise.resolve().then(() => console.log("scheduled ran for", controller.cron)));
                if (controller.cron === "0 0 * * *") throw new Error("midnight job failed");
              },
              fetch() { return Response.json(runs); },
            };
            """,
        },
        ".",
        "--test-scheduled",
    )
    ran = server.get("/__scheduled", params={"cron": "*/5 * * * *"})
    assert (ran.status_code, ran.text) == (200, "Ran scheduled event")
    server.wait_for(r"scheduled ran for \*/5 \* \* \* \*")
    failed = server.get("/__scheduled", params={"cron": "0 0 * * *"})
    assert failed.status_code == 500
    server.wait_for("midnight job failed")
    assert server.get("/").json() == ["*/5 * * * *", "0 0 * * *"]


def test_a_scheduled_only_service_worker_loads(dev: Any) -> None:
    server = dev(
        {"worker.js": "addEventListener('scheduled', (event) => event.waitUntil(Promise.resolve(console.log('tick', event.cron))));"},
        "worker.js",
        "--test-scheduled",
    )
    assert server.get("/__scheduled").text == "Ran scheduled event"
    server.wait_for(r"tick \* \* \* \* \*")
    assert server.get("/").status_code == 500  # no fetch handler


def test_a_bad_cron_expression_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "wrangler.toml").write_text('name = "x"\nmain = "w.js"\n[triggers]\ncrons = ["every minute"]\n')
    (tmp_path / "w.js").write_text("export default { scheduled() {} };")
    result = _dev_that_refuses_to_start(tmp_path)
    assert "is not a cron expression" in result.stderr


def test_a_small_response_leaves_in_one_write(dev: Any) -> None:
    # uvicorn writes a head and a body separately; the edge joins what one turn of its loop
    # writes, so a client's first read after the request holds the whole small response.
    server = dev({"worker.js": 'export default { fetch: () => new Response("x".repeat(300)) };'})
    host, port = server.url.split("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(30):
            connection.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            select.select([connection], [], [], 10)
            first = connection.recv(65536)
            assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"x" * 300), first[-60:]


def test_lone_surrogates_in_a_workers_strings_cross_the_frames(dev: Any) -> None:
    # The frames' JSON codec (orjson) refuses lone surrogates; a script's log line and
    # response body may hold them, and must still arrive (json escapes them), with the
    # process serving on.
    server = dev(
        {
            "worker.js": """
            export default {
              fetch(request) {
                console.log("lone \\ud800 surrogate");
                return Response.json({ text: "x\\udc80y", url: request.url });
              },
            };
            """
        }
    )
    response = server.get("/?q=%F0%9F%90%87")
    assert response.status_code == 200
    assert response.json()["text"] == "x\udc80y"  # JSON.stringify escapes a lone half
    server.wait_for("lone . surrogate")
    assert server.get("/").status_code == 200


def test_a_change_that_leaves_the_worker_as_it_was_is_not_a_reload(dev: Any, tmp_path: Path) -> None:
    server = dev({"worker.js": "export default { fetch() { return new Response('zero'); } };"})
    time.sleep(0.3)  # let the watcher start

    def save(text: str) -> int:
        seen = len(server.lines)
        (tmp_path / "worker.js").write_text(f"export default {{ fetch() {{ return new Response({text}); }} }};")
        return seen

    server.wait_for("Reloaded", start=save("'one'"))  # the watcher is running
    (tmp_path / "notes.log").write_text("a log written beside the worker\n")
    save("'one'")
    time.sleep(0.5)  # the watcher's turn: nothing to say for either
    server.wait_for("SyntaxError", start=save("'bad' }"))
    server.wait_for("Reloaded", start=save("'one'"))  # back from a broken edit: the same code, but a reload
    server.wait_for("Reloaded", start=save("'two'"))
    assert server.output.count("Reloaded") == 3, server.output
    assert server.get("/").text == "two"
