#!/usr/bin/env bash
# Rebuild the dashboard's static files in warren/control/dashboard/static/ from
# scripts/dashboard/ (its source, and the npm packages pinned in its package-lock.json).
#
#   scripts/build-dashboard.sh            # npm ci + bundle + licences
#
# Needs node >= 18 and npm; reaches only the npm registry (for npm ci). The output
# is committed, so warren itself never needs Node.js.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/scripts/dashboard"
OUT="$ROOT/warren/control/dashboard/static"
META="$(mktemp -d)"
trap 'rm -rf "$META"' EXIT

cd "$SRC"
# Exact versions from the lock file; --ignore-scripts: esbuild's postinstall only
# re-checks the platform binary npm installs as @esbuild/<platform>.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

rm -rf "$OUT"
mkdir -p "$OUT"

# ES modules with code splitting: the editor (CodeMirror) is a chunk of its own,
# fetched only when a worker's code is opened. Chunk names carry a content hash
# (served as immutable); app.js and app.css are revalidated on every load.
npx --no-install esbuild app=src/main.js \
  --bundle \
  --splitting \
  --format=esm \
  --target=es2020,chrome100,firefox100,safari15 \
  --minify \
  --legal-comments=none \
  --chunk-names='chunks/[name]-[hash]' \
  --metafile="$META/meta.json" \
  --log-level=warning \
  --outdir="$OUT"

cp src/index.html src/favicon.svg "$OUT/"
node gen-licenses.mjs "$OUT/LICENSES.md" "$META/meta.json"

( cd "$OUT" && wc -c app.js app.css chunks/*.js | sed 's/^/  /' )
gzip -9 -c "$OUT"/app.js "$OUT"/chunks/*.js | wc -c | sed 's/^/  gzipped JavaScript, all chunks: /'
