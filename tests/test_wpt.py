"""Web-platform-tests data files (URL, URLPattern) run inside a real warren isolate.

The JSON test vectors live in ``../shared/conformance/wpt/`` (see its SOURCE.md);
the harness below is our own JavaScript, following the logic of the WPT test
files that read each data file (named in ``HARNESSES``). Each data file runs in
a freshly prepared isolate (Web APIs, vendored bundle and bootstrap loaded,
exactly what a tenant gets) and prints its pass count. A failure must be listed
in ``wpt_expected_failures.json``, and every listed test must still fail, so
the list stays exact. After a deliberate change, rewrite the list with
``WARREN_WPT_UPDATE=1 pytest tests/test_wpt.py`` and review its diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from warren.runtime.pool import prepare_isolate

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WPT = SHARED / "conformance" / "wpt"
DATA_DIRS = ("url/resources", "urlpattern/resources")
EXPECTED_FAILURES = Path(__file__).with_name("wpt_expected_failures.json")
UPDATE = os.environ.get("WARREN_WPT_UPDATE") == "1"
CPU_BUDGET_MS = 60_000

# data file (relative to shared/conformance/wpt) -> harness, after the WPT file(s) named
HARNESSES = {
    # url/url-constructor.any.js and url/url-origin.any.js
    "url/resources/urltestdata.json": "urltestdata",
    "url/resources/urltestdata-javascript-only.json": "urltestdata",
    # url/url-setters.any.js
    "url/resources/setters_tests.json": "setters",
    # url/toascii.any.js (the <a>/<area> variants need a document)
    "url/resources/toascii.json": "toascii",
    # url/percent-encoding.window.js, UTF-8 only (see the harness)
    "url/resources/percent-encoding.json": "percentEncoding",
    # url/IdnaTestV2.any.js, and its twin for the removed vectors
    "url/resources/IdnaTestV2.json": "idna",
    "url/resources/IdnaTestV2-removed.json": "idna",
    # urlpattern/resources/urlpatterntests.js
    "urlpattern/resources/urlpatterntestdata.json": "urlpattern",
    # urlpattern/resources/urlpattern-compare-tests.tentative.js
    "urlpattern/resources/urlpattern-compare-test-data.json": "urlpatternCompare",
    # urlpattern/urlpattern-generate.*.js
    "urlpattern/resources/urlpattern-generate-test-data.json": "urlpatternGenerate",
}

# Defines nothing global: one expression whose value is the outcome as ASCII-only
# JSON (strings leaving the isolate lose lone surrogates and astral characters).
HARNESS_JS = r"""
(function (kind, dataText) {
  "use strict";
  const data = JSON.parse(dataText);
  const outcome = { total: 0, failures: {}, skipped: 0, unsupported: null };
  const seenNames = new Map();

  class AssertionFailure extends Error {}

  function show(value) {
    if (typeof value === "string") return JSON.stringify(value);
    if (typeof value === "object" && value !== null) {
      try { return JSON.stringify(value); } catch { return String(value); }
    }
    return Object.is(value, -0) ? "-0" : String(value);
  }

  function test(name, body) {
    const seen = (seenNames.get(name) || 0) + 1;
    seenNames.set(name, seen);
    if (seen > 1) name += ` [#${seen}]`;
    outcome.total++;
    try {
      body();
    } catch (error) {
      outcome.failures[name] = error instanceof AssertionFailure
        ? error.message
        : `threw ${error && error.name}: ${error && error.message}`;
    }
  }

  // SameValue, as WPT's assert_equals: NaN equals NaN, +0 differs from -0.
  function assertEquals(actual, expected, what) {
    if (!Object.is(actual, expected)) {
      throw new AssertionFailure(`${what}: expected ${show(expected)}, got ${show(actual)}`);
    }
  }

  function assertThrowsTypeError(body, what) {
    let result;
    try {
      result = body();
    } catch (error) {
      if (error instanceof TypeError && error.constructor === TypeError) return;
      throw new AssertionFailure(`${what}: expected a TypeError, got ${error && error.name}: ${error && error.message}`);
    }
    throw new AssertionFailure(`${what}: expected a TypeError, got a result: ${show(String(result))}`);
  }

  // Same own enumerable properties, values compared with SameValue, nested objects recursively.
  function assertObjectEquals(actual, expected, what) {
    if (typeof actual !== "object" || actual === null) {
      throw new AssertionFailure(`${what}: expected an object, got ${show(actual)}`);
    }
    const compare = (a, e, path) => {
      for (const key in a) {
        if (!Object.prototype.hasOwnProperty.call(e, key)) {
          throw new AssertionFailure(`${what}: unexpected property ${path}${key} in ${show(actual)}`);
        }
        if (typeof a[key] === "object" && a[key] !== null) {
          compare(a[key], e[key], `${path}${key}.`);
        } else if (!Object.is(a[key], e[key])) {
          throw new AssertionFailure(`${what}: ${path}${key} expected ${show(e[key])}, got ${show(a[key])}`);
        }
      }
      for (const key in e) {
        if (!Object.prototype.hasOwnProperty.call(a, key)) {
          throw new AssertionFailure(`${what}: property ${path}${key} missing from ${show(actual)}`);
        }
      }
    };
    compare(actual, expected, "");
  }

  const URL_FIELDS = ["href", "protocol", "username", "password", "host", "hostname", "port", "pathname", "search"];

  const harnesses = {
    urltestdata() {
      for (const vector of data) {
        if (typeof vector === "string") continue;
        const label = `<${vector.input}> against <${vector.base}>`;
        test(`Parsing: ${label}`, () => {
          const parse = () => (vector.base ? new URL(vector.input, vector.base) : new URL(vector.input));
          if (vector.failure) {
            assertThrowsTypeError(parse, "new URL()");
            return;
          }
          const url = parse();
          for (const field of URL_FIELDS) assertEquals(url[field], vector[field], field);
          if ("searchParams" in vector) {
            assertEquals("searchParams" in url, true, "searchParams present");
            assertEquals(url.searchParams.toString(), vector.searchParams, "searchParams");
          }
          assertEquals(url.hash, vector.hash, "hash");
        });
        if ("origin" in vector) {
          test(`Origin parsing: ${label}`, () => {
            const url = vector.base !== null ? new URL(vector.input, vector.base) : new URL(vector.input);
            assertEquals(url.origin, vector.origin, "origin");
          });
        }
      }
    },

    setters() {
      for (const attribute of Object.keys(data)) {
        if (attribute === "comment") continue;
        for (const vector of data[attribute]) {
          let name = `URL: Setting <${vector.href}>.${attribute} = '${vector.new_value}'`;
          if ("comment" in vector) name += ` ${vector.comment}`;
          test(name, () => {
            const url = new URL(vector.href);
            url[attribute] = vector.new_value;
            for (const field of Object.keys(vector.expected)) {
              assertEquals(url[field], vector.expected[field], field);
            }
          });
        }
      }
    },

    toascii() {
      const hostURL = (host) => new URL(`https://${host}/x`);
      for (const vector of data) {
        if (typeof vector === "string") continue;
        test(`${vector.input} (using URL)`, () => {
          if (vector.output === null) {
            assertThrowsTypeError(() => hostURL(vector.input), "new URL()");
            return;
          }
          const url = hostURL(vector.input);
          assertEquals(url.host, vector.output, "host");
          assertEquals(url.hostname, vector.output, "hostname");
          assertEquals(url.pathname, "/x", "pathname");
          assertEquals(url.href, `https://${vector.output}/x`, "href");
        });
        for (const setter of ["host", "hostname"]) {
          test(`${vector.input} (using URL.${setter})`, () => {
            const url = hostURL("x");
            url[setter] = vector.input;
            assertEquals(url[setter], vector.output === null ? "x" : vector.output, setter);
          });
        }
      }
    },

    // WPT loads a document in each encoding holding <a href="https://doesnotmatter.invalid/?V#V">.
    // The URL API always encodes the query as UTF-8, so only the utf-8 expectations apply here.
    percentEncoding() {
      for (const vector of data) {
        if (typeof vector === "string") continue;
        for (const encoding of Object.keys(vector.output)) {
          if (encoding !== "utf-8") {
            outcome.skipped++;
            continue;
          }
          test(`Input ${vector.input} with encoding ${encoding}`, () => {
            const url = new URL(`https://doesnotmatter.invalid/?${vector.input}#${vector.input}`);
            assertEquals(url.hash, `#${vector.output["utf-8"]}`, "fragment");
            assertEquals(url.search, `?${vector.output[encoding]}`, "query");
          });
        }
      }
    },

    idna() {
      // Code points that would end the host are percent-encoded so the host parser sees them.
      const encodeHostEnding = (input) =>
        Array.from(input, (c) => (":/?#\\".includes(c) ? encodeURIComponent(c) : c)).join("");
      for (const vector of data) {
        if (typeof vector === "string") continue;
        if (vector.input === "") {
          outcome.skipped++; // an empty host cannot go through new URL()
          continue;
        }
        const input = encodeHostEnding(vector.input);
        test(`ToASCII("${vector.input}")${vector.comment ? " " + vector.comment : ""}`, () => {
          if (vector.output === null) {
            assertThrowsTypeError(() => new URL(`https://${input}/x`), "new URL()");
            return;
          }
          const url = new URL(`https://${input}/x`);
          assertEquals(url.host, vector.output, "host");
          assertEquals(url.hostname, vector.output, "hostname");
          assertEquals(url.pathname, "/x", "pathname");
          assertEquals(url.href, `https://${vector.output}/x`, "href");
        });
      }
    },

    urlpattern() {
      const COMPONENTS = ["protocol", "username", "password", "hostname", "port", "pathname", "search", "hash"];
      // A component given in the pattern makes these later ones default to "*", not the base URL's.
      const EARLIER = {
        protocol: [],
        username: [],
        password: [],
        hostname: ["protocol"],
        port: ["protocol", "hostname"],
        pathname: ["protocol", "hostname", "port"],
        search: ["protocol", "hostname", "port", "pathname"],
        hash: ["protocol", "hostname", "port", "pathname", "search"],
      };

      const expectedPatternString = (vector, component) => {
        const given = vector.expected_obj && vector.expected_obj[component];
        if (given !== undefined && given !== null) return given;
        if (vector.exactly_empty_components && vector.exactly_empty_components.includes(component)) return "";
        const init = vector.pattern[0];
        if (typeof init === "object" && init[component]) return init[component];
        if (typeof init === "object" && EARLIER[component].some((c) => c in init)) return "*";
        let baseURL = null;
        if (vector.pattern.length > 0 && vector.pattern[0].baseURL) baseURL = new URL(vector.pattern[0].baseURL);
        else if (vector.pattern.length > 1 && typeof vector.pattern[1] === "string") baseURL = new URL(vector.pattern[1]);
        if (baseURL && component !== "username" && component !== "password") {
          const value = baseURL[component];
          if (component === "protocol") return value.slice(0, -1); // without ":"
          if (component === "search" || component === "hash") return value.slice(1); // without "?" / "#"
          return value;
        }
        return "*";
      };

      for (const vector of data) {
        test(`Pattern: ${JSON.stringify(vector.pattern)} Inputs: ${JSON.stringify(vector.inputs)}`, () => {
          if (vector.expected_obj === "error") {
            assertThrowsTypeError(() => new URLPattern(...vector.pattern), "URLPattern() constructor");
            return;
          }
          const pattern = new URLPattern(...vector.pattern);
          for (const component of COMPONENTS) {
            assertEquals(pattern[component], expectedPatternString(vector, component), `pattern.${component}`);
          }

          if (vector.expected_match === "error") {
            assertThrowsTypeError(() => pattern.test(...vector.inputs), "test()");
            assertThrowsTypeError(() => pattern.exec(...vector.inputs), "exec()");
            return;
          }
          assertEquals(pattern.test(...vector.inputs), Boolean(vector.expected_match), "test()");
          const result = pattern.exec(...vector.inputs);
          const expected = vector.expected_match;
          if (!expected || typeof expected !== "object") {
            assertEquals(result, expected, "exec() on no match");
            return;
          }

          const expectedInputs = expected.inputs || vector.inputs;
          assertEquals(result.inputs.length, expectedInputs.length, "exec().inputs.length");
          result.inputs.forEach((input, i) => {
            if (typeof input === "string") {
              assertEquals(input, expectedInputs[i], `exec().inputs[${i}]`);
              return;
            }
            for (const component of COMPONENTS) {
              assertEquals(input[component], expectedInputs[i][component], `exec().inputs[${i}].${component}`);
            }
          });

          for (const component of COMPONENTS) {
            let want = expected[component];
            if (!want) {
              // Default wildcards capture group 0; empty-string patterns capture nothing.
              want = { input: "", groups: {} };
              if (!(vector.exactly_empty_components || []).includes(component)) want.groups["0"] = "";
            }
            const groups = {};
            for (const key in want.groups) groups[key] = want.groups[key] === null ? undefined : want.groups[key];
            assertObjectEquals(result[component], { ...want, groups }, `exec().${component}`);
          }
        });
      }
    },

    urlpatternCompare() {
      if (typeof URLPattern.compareComponent !== "function") {
        outcome.unsupported = "URLPattern.compareComponent is not provided";
        return;
      }
      for (const vector of data) {
        const name = `Component: ${vector.component} Left: ${JSON.stringify(vector.left)} Right: ${JSON.stringify(vector.right)}`;
        test(name, () => {
          const left = new URLPattern(vector.left);
          const right = new URLPattern(vector.right);
          const compare = (a, b) => URLPattern.compareComponent(vector.component, a, b);
          assertEquals(compare(left, right), vector.expected, "compareComponent(left, right)");
          // `| 0` so that an expected 0 reversed is +0, not -0
          assertEquals(compare(right, left), (-vector.expected) | 0, "compareComponent(right, left)");
          assertEquals(compare(left, left), 0, "compareComponent(left, left)");
          assertEquals(compare(right, right), 0, "compareComponent(right, right)");
        });
      }
    },

    urlpatternGenerate() {
      if (typeof URLPattern.prototype.generate !== "function") {
        outcome.unsupported = "URLPattern.prototype.generate is not provided";
        return;
      }
      for (const vector of data) {
        const name = `Pattern: ${JSON.stringify(vector.pattern)} Component: ${vector.component} Groups: ${JSON.stringify(vector.groups)}`;
        test(name, () => {
          const pattern = new URLPattern(vector.pattern);
          if (vector.expected === null) {
            assertThrowsTypeError(() => pattern.generate(vector.component, vector.groups), "generate()");
            return;
          }
          assertEquals(pattern.generate(vector.component, vector.groups), vector.expected, "generate()");
        });
      }
    },
  };

  harnesses[kind]();
  return JSON.stringify(outcome).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
})
"""


def run_data_file(harness: str, data_text: str) -> dict[str, Any]:
    # ASCII only in the source: stpyv8 mangles characters beyond U+FFFF coming from Python.
    source = f"{HARNESS_JS}({json.dumps(harness)}, {json.dumps(data_text, ensure_ascii=True)})"
    prepared = prepare_isolate()
    try:
        result = prepared.isolate.run_script(source, f"wpt:{harness}.js", cpu_budget_ms=CPU_BUDGET_MS)
    finally:
        prepared.isolate.dispose()
    assert isinstance(result, str), result
    outcome: dict[str, Any] = json.loads(result)
    return outcome


def load_expected_failures() -> dict[str, list[str]]:
    expected: dict[str, list[str]] = json.loads(EXPECTED_FAILURES.read_text(encoding="utf-8"))
    return {key: names for key, names in expected.items() if key != "//"}


def write_expected_failures(data_file: str, failures: list[str]) -> None:
    document = json.loads(EXPECTED_FAILURES.read_text(encoding="utf-8"))
    document[data_file] = sorted(failures)
    if not failures:
        del document[data_file]
    comment = document.pop("//", None)
    ordered = {"//": comment} if comment is not None else {}
    ordered.update(sorted(document.items()))
    EXPECTED_FAILURES.write_text(json.dumps(ordered, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")


def quoted(names: list[str]) -> str:
    return "\n".join(f"  {json.dumps(name)}" for name in names)


def printable(text: str) -> str:
    # Messages may hold control characters and lone surrogates, which a terminal cannot take.
    return text.encode("ascii", "backslashreplace").decode("ascii")


@pytest.mark.parametrize("data_file", sorted(HARNESSES))
def test_wpt_data_file(data_file: str) -> None:
    path = WPT / data_file
    if not path.is_file():
        pytest.skip(f"WPT data not found: {path} (the shared material belongs at ../shared beside the checkout)")
    outcome = run_data_file(HARNESSES[data_file], path.read_text(encoding="utf-8"))
    if outcome["unsupported"]:
        print(f"\nWPT {data_file}: skipped, {outcome['unsupported']}")
        pytest.skip(f"{data_file}: {outcome['unsupported']}")

    failures: dict[str, str] = outcome["failures"]
    total = outcome["total"]
    passed = total - len(failures)
    summary = f"WPT {data_file}: {passed}/{total} passed"
    if outcome["skipped"]:
        summary += f", {outcome['skipped']} not applicable here"
    print(f"\n{summary}")
    if UPDATE:
        write_expected_failures(data_file, list(failures))
        return

    expected = set(load_expected_failures().get(data_file, []))
    unexpected = sorted(set(failures) - expected)
    fixed = sorted(expected - set(failures))
    problems = []
    if unexpected:
        details = "\n".join(f"  {json.dumps(name)}: {printable(failures[name])}" for name in unexpected)
        problems.append(f"{len(unexpected)} failing, not in {EXPECTED_FAILURES.name}:\n{details}")
    if fixed:
        problems.append(
            f"{len(fixed)} in {EXPECTED_FAILURES.name} but passing now (or gone); remove them:\n{quoted(fixed)}"
        )
    if problems:
        pytest.fail(summary + "\n" + "\n".join(problems), pytrace=False)


def test_every_wpt_data_file_has_a_harness() -> None:
    if not WPT.is_dir():
        pytest.skip(f"WPT data not found: {WPT} (the shared material belongs at ../shared beside the checkout)")
    present = {path.relative_to(WPT).as_posix() for folder in DATA_DIRS for path in (WPT / folder).glob("*.json")}
    assert present - set(HARNESSES) == set(), "data files with no harness in tests/test_wpt.py"
    assert set(load_expected_failures()) <= set(HARNESSES), f"unknown data files in {EXPECTED_FAILURES.name}"
