"""The Spectre posture: no clock that moves while JavaScript runs, no SharedArrayBuffer, timers never early."""

from __future__ import annotations

from typing import Any


def test_clocks_stand_still_while_the_script_runs_and_timers_are_not_early(dev: Any) -> None:
    server = dev(
        {
            "worker.js": """
            export default {
              async fetch() {
                const start = Date.now(), perf = performance.now();
                let x = 0;
                for (let i = 0; i < 2e6; i++) x += i;
                const frozen = Date.now() === start && performance.now() === perf;
                await new Promise((resolve) => setTimeout(resolve, 30));
                const waited = Date.now() - start;
                return Response.json({ frozen, waited, sab: typeof SharedArrayBuffer, x: x > 0 });
              },
            };
            """
        }
    )
    result = server.get("/").json()
    assert result["frozen"] is True
    assert result["waited"] >= 30  # time moves at I/O, and a timer never fires early
    assert result["sab"] == "undefined"
