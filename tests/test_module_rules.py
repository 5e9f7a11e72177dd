"""wrangler's module rules (``[[rules]]`` before the defaults, ``fallthrough``) in
``warren dev`` and ``warren deploy``: which type each imported file becomes, and
the errors for rules that are wrong or files no rule matches.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from warren.config import ConfigError, ModuleRule, load_project
from warren.store import validation

ADD_WASM = bytes(
    [0, 97, 115, 109, 1, 0, 0, 0, 1, 7, 1, 96, 2, 127, 127, 1, 127, 3, 2, 1, 0, 7, 7, 1, 3, 97, 100, 100,
     0, 0, 10, 9, 1, 7, 0, 32, 0, 32, 1, 106, 11]
)
BLOB = bytes([0, 1, 127, 128, 254, 255])


def write(directory: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content).lstrip())


def kinds(directory: Path) -> dict[str, str]:
    project = load_project(directory)
    return {module.name: module.kind for module in project.modules()}


# -- which type a file is ------------------------------------------------------------------------

ALL_KINDS: dict[str, str | bytes] = {
    "wrangler.toml": 'name = "kinds"\nmain = "src/index.js"\n',
    "src/index.js": """
        import a from "./a.txt";
        import b from "./b.html";
        import c from "./q/c.sql";
        import d from "./d.bin";
        import e from "./e.wasm";
        import f from "./f.wasm?module";
        import g from "./g.json";
        import h from "./h.cjs";
        import { i } from "./i.mjs";
        export default { fetch() { return new Response("x"); } };
        """,
    "src/a.txt": "a",
    "src/b.html": "<b>",
    "src/q/c.sql": "SELECT 1;",
    "src/d.bin": BLOB,
    "src/e.wasm": ADD_WASM,
    "src/f.wasm": ADD_WASM,
    "src/g.json": "{}",
    "src/h.cjs": "module.exports = 1;",
    "src/i.mjs": "export const i = 1;",
}


def test_the_default_rules_are_wranglers(tmp_path: Path) -> None:
    write(tmp_path, ALL_KINDS)
    assert kinds(tmp_path) == {
        "index.js": "esm",
        "a.txt": "text",
        "b.html": "text",
        "q/c.sql": "text",
        "d.bin": "data",
        "e.wasm": "wasm",
        "f.wasm": "wasm",
        "g.json": "json",
        "h.cjs": "commonjs",
        "i.mjs": "esm",
    }
    assert load_project(tmp_path).warnings == []


def test_a_rule_without_fallthrough_replaces_the_default_of_its_type(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "wrangler.toml": """
                name = "rules"
                main = "index.js"
                [[rules]]
                type = "Text"
                globs = ["**/*.md"]
                """,
            "index.js": 'import notes from "./notes.md";\nimport a from "./a.txt";\nexport default {};\n',
            "notes.md": "# notes",
            "a.txt": "a",
        },
    )
    project = load_project(tmp_path)
    [warning] = project.warnings
    assert "fallthrough = true" in warning and "**/*.txt" in warning and "default" in warning
    with pytest.raises(ConfigError, match=r"a\.txt matches the module rule .*'Text'.*fallthrough = true"):
        project.modules()


def test_fallthrough_true_keeps_the_defaults_and_false_silences_the_warning(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        "index.js": 'import notes from "./notes.md";\nimport a from "./a.txt";\nexport default {};\n',
        "notes.md": "# notes",
        "a.txt": "a",
    }
    write(tmp_path, files)
    (tmp_path / "wrangler.toml").write_text(
        'main = "index.js"\n[[rules]]\ntype = "Text"\nglobs = ["**/*.md"]\nfallthrough = true\n'
    )
    assert kinds(tmp_path) == {"index.js": "esm", "notes.md": "text", "a.txt": "text"}
    assert load_project(tmp_path).warnings == []

    (tmp_path / "wrangler.toml").write_text(
        'main = "index.js"\n[[rules]]\ntype = "Text"\nglobs = ["**/*.md"]\nfallthrough = false\n'
    )
    project = load_project(tmp_path)
    assert project.warnings == []
    with pytest.raises(ConfigError, match="fallthrough"):
        project.modules()


def test_user_rules_come_before_the_defaults(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "wrangler.json": json.dumps(
                {
                    "main": "index.js",
                    "rules": [
                        {"type": "Data", "globs": ["**/*.txt"]},  # before the default Text rule for .txt
                        {"type": "CommonJS", "globs": ["legacy/*.js"]},
                        {"type": "ESModule", "globs": ["**/*.es"]},
                    ],
                }
            ),
            "index.js": (
                'import raw from "./raw.txt";\nimport old from "./legacy/old.js";\n'
                'import modern from "./modern.es";\nexport default {};\n'
            ),
            "raw.txt": "bytes",
            "legacy/old.js": 'module.exports = require("./helper.js");',
            "legacy/helper.js": "module.exports = 1;",
            "modern.es": "export default 1;",
        },
    )
    assert kinds(tmp_path) == {
        "index.js": "esm",
        "raw.txt": "data",
        "legacy/old.js": "commonjs",
        "modern.es": "esm",
        "legacy/helper.js": "commonjs",
    }


def test_globs_match_paths_as_wrangler_means_them() -> None:
    anywhere = ModuleRule("Text", ("**/*.txt",))
    assert anywhere.matches("a.txt") and anywhere.matches("x/y/a.txt") and not anywhere.matches("a.txt.js")
    direct = ModuleRule("Text", ("assets/*.txt",))
    assert direct.matches("assets/a.txt") and not direct.matches("assets/x/a.txt") and not direct.matches("a.txt")
    either = ModuleRule("Data", ("./**/*.{bin,dat}",))
    assert either.matches("a.bin") and either.matches("d/a.dat") and not either.matches("a.bind")
    literal = ModuleRule("Text", ("**/a+b.(1).txt",))
    assert literal.matches("a+b.(1).txt") and not literal.matches("aab.1.txt")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ('rules = "Text"', r"'rules' must be a list"),
        ('[[rules]]\ntype = "Wasm"\nglobs = ["*.w"]', r"rule #1 has type 'Wasm'; it must be one of ESModule, CommonJS"),
        ('[[rules]]\ntype = "Text"', r"rule #1 needs 'globs'"),
        ('[[rules]]\ntype = "Text"\nglobs = "*.md"', r"rule #1 needs 'globs'"),
        ('[[rules]]\ntype = "Text"\nglobs = ["*.md"]\nfallthrough = "yes"', r"'fallthrough' must be true or false"),
        ('[[rules]]\ntype = "Text"\nglobs = ["{a,b"]', r"malformed glob"),
        ("[wasm_modules]\n1X = 'a.wasm'", r"not a JavaScript identifier"),
        ("[wasm_modules]\nX = 'missing.wasm'", r"missing\.wasm does not exist"),
        ("[data_blobs]\nX = '../outside.bin'", r"outside"),
        ("[text_blobs]\nX = 'a.txt'\n[data_blobs]\nX = 'a.txt'", r"the global X is bound twice"),
    ],
)
def test_bad_rules_and_blobs_are_clear_errors(tmp_path: Path, rules: str, message: str) -> None:
    project_dir = tmp_path / "project"
    write(project_dir, {"index.js": "addEventListener('fetch', () => {});", "a.txt": "a"})
    (tmp_path / "outside.bin").write_bytes(BLOB)
    (project_dir / "wrangler.toml").write_text(f'main = "index.js"\n{rules}\n')
    with pytest.raises(ConfigError, match=message):
        load_project(project_dir)


def test_a_file_no_rule_matches_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path, {"index.js": 'import c from "./config.yaml";\nexport default {};\n', "config.yaml": "a: 1"})
    with pytest.raises(ConfigError, match=r"config\.yaml: no module rule matches it .*\[\[rules\]\]"):
        load_project(tmp_path / "index.js").modules()


# -- what the worker receives -------------------------------------------------------------------------


def test_each_rule_type_reaches_the_worker_as_wrangler_documents(dev: Any, tmp_path: Path) -> None:
    write(tmp_path, {"src/add.wasm": ADD_WASM, "src/blob.bin": BLOB, "src/raw.dat": BLOB})
    server = dev(
        {
            "wrangler.toml": """
            name = "rules"
            main = "src/index.js"
            rules = [
              { type = "Text", globs = ["**/*.md"], fallthrough = true },
              { type = "Data", globs = ["**/*.dat"], fallthrough = true },
              { type = "CommonJS", globs = ["**/legacy/*.js"] },
            ]
            """,
            "src/index.js": """
            import query from "./schema.sql";
            import page from "./page.html";
            import notes from "./notes.md";
            import blob from "./blob.bin";
            import raw from "./raw.dat";
            import add from "./add.wasm?module";
            import counter from "./legacy/counter.js";
            import twice from "./twice.cjs";
            const bytes = (buffer) => buffer instanceof ArrayBuffer ? [...new Uint8Array(buffer)] : String(buffer);
            export default {
              fetch() {
                return Response.json({
                  query, page, notes, blob: bytes(blob), raw: bytes(raw),
                  add: new WebAssembly.Instance(add).exports.add(1, 2),
                  counter: [counter.next(), counter.next()],
                  twice: twice(21),
                });
              },
            };
            """,
            "src/schema.sql": "SELECT 1;\n",
            "src/page.html": "<p>é</p>",
            "src/notes.md": "# notes",
            # Run as CommonJS, not transformed and not strict: `with` is a syntax error in strict code.
            "src/legacy/counter.js": """
            var state = require("./state.js");
            with (state) { count = 0; }
            module.exports = { next: function () { return ++state.count; } };
            """,
            "src/legacy/state.js": "exports.count = 5;",
            "src/twice.cjs": "module.exports = (n) => n * 2;",
        },
        ".",
    )
    assert server.get("/").json() == {
        "query": "SELECT 1;\n",
        "page": "<p>é</p>",
        "notes": "# notes",
        "blob": list(BLOB),
        "raw": list(BLOB),
        "add": 3,
        "counter": [1, 2],
        "twice": 42,
    }


def test_a_rule_error_in_dev_is_reported_and_the_last_good_version_keeps_serving(dev: Any, tmp_path: Path) -> None:
    server = dev(
        {
            "wrangler.toml": 'name = "x"\nmain = "index.js"\n',
            "index.js": 'import a from "./a.txt";\nexport default { fetch() { return new Response(a); } };\n',
            "a.txt": "good",
        },
        ".",
    )
    assert server.get("/").text == "good"
    time.sleep(0.3)  # let the watcher start
    (tmp_path / "wrangler.toml").write_text('name = "x"\nmain = "index.js"\n[[rules]]\ntype = "Text"\nglobs = ["*.md"]\n')
    server.wait_for(r"a\.txt matches the module rule")
    assert server.get("/").text == "good"


# -- deploy -------------------------------------------------------------------------------------------------

DOMAIN = "workers.test"


def test_deploy_uploads_each_type_with_the_content_type_the_store_takes(tmp_path: Path, spawn: Any) -> None:
    store = tmp_path / "warren.db"
    created = subprocess.run(
        [sys.executable, "-m", "warren.cli", "control", "--store", str(store), "account", "create", "demo", "--json"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    account = json.loads(created.stdout)
    node = spawn(["serve", "--store", str(store), "--workers-domain", DOMAIN, "--control-port", "0"])
    api_url = re.search(r"Control-plane API on (http://\S+)", node.output).group(1)  # type: ignore[union-attr]

    project = tmp_path / "project"
    write(
        project,
        {
            "wrangler.toml": """
                name = "typed"
                main = "index.js"
                [[rules]]
                type = "Data"
                globs = ["**/*.dat"]
                fallthrough = true
                """,
            "index.js": """
                import add from "./add.wasm";
                import query from "./q.sql";
                import raw from "./raw.dat";
                import blob from "./blob.bin";
                import twice from "./twice.cjs";
                export default {
                  fetch() {
                    const sum = new WebAssembly.Instance(add).exports.add(2, 3);
                    return new Response([sum, query, new Uint8Array(raw).join(","), blob.byteLength, twice(4)].join(" "));
                  },
                };
                """,
            "add.wasm": ADD_WASM,
            "q.sql": "SELECT 1;",
            "raw.dat": BLOB,
            "blob.bin": BLOB,
            "twice.cjs": "module.exports = (n) => n * 2;",
        },
    )
    env = {
        **os.environ,
        "WARREN_API_URL": api_url,
        "WARREN_API_TOKEN": account["token"],
        "WARREN_CONFIG_DIR": str(tmp_path / "config"),
    }
    deployed = subprocess.run(
        [sys.executable, "-m", "warren.cli", "deploy", "--no-bundle"],
        cwd=project, capture_output=True, text=True, timeout=60, env=env,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    types = dict(re.findall(r"^\s+(\S+)\s+(\S+/\S+)\s+\d", deployed.stdout, re.M))
    assert types == {
        "index.js": "application/javascript+module",
        "add.wasm": "application/wasm",
        "q.sql": "text/plain",
        "raw.dat": "application/octet-stream",
        "blob.bin": "application/octet-stream",
        "twice.cjs": "text/javascript",
    }
    assert set(types.values()) <= set(validation.MODULE_CONTENT_TYPES)

    deadline = time.monotonic() + 10
    while True:
        response = httpx.get(node.url + "/", headers={"host": f"typed.demo.{DOMAIN}"}, timeout=30)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert response.text == "5 SELECT 1; 0,1,127,128,254,255 6 8"


def test_deploying_service_worker_blobs_is_refused_before_any_upload(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "wrangler.toml": 'name = "sw"\nmain = "sw.js"\n[wasm_modules]\nADD = "add.wasm"\n',
            "sw.js": "addEventListener('fetch', (e) => e.respondWith(new Response('x')));",
            "add.wasm": ADD_WASM,
        },
    )
    result = subprocess.run(
        [sys.executable, "-m", "warren.cli", "deploy", "--no-bundle"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "WARREN_API_URL": "http://127.0.0.1:9", "WARREN_API_TOKEN": "x",
             "WARREN_CONFIG_DIR": str(tmp_path / "config")},
    )
    assert result.returncode != 0
    assert "[wasm_modules]" in result.stdout + result.stderr and "warren dev" in result.stdout + result.stderr


SLOPPY_PROJECT: dict[str, str | bytes] = {
    "wrangler.toml": 'name = "sloppy"\nmain = "index.js"\n[[rules]]\ntype = "CommonJS"\nglobs = ["legacy/*.js"]\n',
    "index.js": """
        import loose from "./loose.cjs";
        import legacy from "./legacy/old.js";
        export default { fetch() { return new Response(loose() + " " + legacy); } };
        """,
    # Only sloppy-mode code runs these: `with`, an undeclared assignment, `this` of a plain call.
    "loose.cjs": """
        function scope() { return this === undefined ? "strict" : "sloppy"; }
        module.exports = function () {
          counter = (typeof counter === "number" ? counter : 0) + 1;
          with ({ greeting: "with" }) { return greeting + " " + scope() + " " + counter; }
        };
        """,
    "legacy/old.js": "exports = module.exports = 'legacy ' + (function () { return this !== undefined; })();\n",
}


def test_a_deployed_commonjs_module_runs_as_in_dev_not_strict(tmp_path: Path, spawn: Any) -> None:
    """Cloudflare takes a non-main text/javascript part for CommonJS; the edge must not make it an ES module."""
    project = tmp_path / "project"
    write(project, SLOPPY_PROJECT)
    dev = spawn(["dev", str(project)])
    in_dev = dev.get("/")
    assert (in_dev.status_code, in_dev.text) == (200, "with sloppy 1 legacy true"), in_dev.text

    store = tmp_path / "warren.db"
    created = subprocess.run(
        [sys.executable, "-m", "warren.cli", "control", "--store", str(store), "account", "create", "demo", "--json"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    account = json.loads(created.stdout)
    node = spawn(["serve", "--store", str(store), "--workers-domain", DOMAIN, "--control-port", "0"])
    api_url = re.search(r"Control-plane API on (http://\S+)", node.output).group(1)  # type: ignore[union-attr]
    env = {
        **os.environ,
        "WARREN_API_URL": api_url,
        "WARREN_API_TOKEN": account["token"],
        "WARREN_CONFIG_DIR": str(tmp_path / "config"),
    }
    deployed = subprocess.run(
        [sys.executable, "-m", "warren.cli", "deploy", "--no-bundle"],
        cwd=project, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    deadline = time.monotonic() + 10
    while True:
        on_edge = httpx.get(node.url + "/", headers={"host": f"sloppy.demo.{DOMAIN}"}, timeout=30)
        if on_edge.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (on_edge.status_code, on_edge.text) == (200, in_dev.text), on_edge.text + "\n" + node.output
