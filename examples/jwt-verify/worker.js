// JWT verification at the edge: only requests with a valid token reach the
// origin, which gets the verified claims in a header instead of the token.
//
// RS256 tokens are checked against an RSA public key (a JWK, or a JWK Set,
// in the JWT_PUBLIC_JWK var); HS256 tokens against a shared secret
// (JWT_SECRET, which belongs in a secret, not in wrangler.toml). Which key
// checks a token depends only on its alg, and each key serves one alg, so a
// token "signed" with the public key as an HMAC secret is refused.

const CLAIMS_HEADER = "X-JWT-Claims";
const CLOCK_SKEW_SECONDS = 60;

class Unauthorized extends Error {}

function base64urlToBytes(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new Unauthorized("malformed token");
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

function decodeJSON(part) {
  try {
    const value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(base64urlToBytes(part)));
    if (typeof value === "object" && value !== null && !Array.isArray(value)) return value;
  } catch {
    // reported below
  }
  throw new Unauthorized("malformed token");
}

// Imported keys are kept for the life of the isolate: importing costs more than verifying.
const keyCache = new Map();

async function rsaKey(env, kid) {
  let config = env.JWT_PUBLIC_JWK;
  if (!config) throw new Unauthorized("RS256 tokens are not accepted here");
  if (typeof config === "string") {
    try {
      config = JSON.parse(config);
    } catch {
      throw new Error("JWT_PUBLIC_JWK is not JSON");
    }
  }
  const keys = Array.isArray(config.keys) ? config.keys : [config];
  const jwk = kid === undefined ? (keys.length === 1 ? keys[0] : undefined) : keys.find((k) => k.kid === kid);
  if (jwk === undefined) throw new Unauthorized("unknown key id");
  const cacheKey = "RS256:" + JSON.stringify(jwk);
  if (!keyCache.has(cacheKey)) {
    // importKey takes any modulus; a short one can be factored, and its tokens forged.
    const bits = typeof jwk.n === "string" ? Math.floor((jwk.n.replace(/=+$/, "").length * 6) / 8) * 8 : 0;
    if (jwk.kty !== "RSA" || bits < 2048) {
      throw new Error("JWT_PUBLIC_JWK is not a usable RSA public key: it must be an RSA key of 2048 bits or more");
    }
    try {
      keyCache.set(cacheKey, await crypto.subtle.importKey(
        "jwk", jwk, { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, false, ["verify"]));
    } catch (error) {
      throw new Error(`JWT_PUBLIC_JWK is not a usable RSA public key: ${error.message}`);
    }
  }
  return keyCache.get(cacheKey);
}

async function hmacKey(env) {
  if (!env.JWT_SECRET) throw new Unauthorized("HS256 tokens are not accepted here");
  const cacheKey = "HS256:" + env.JWT_SECRET;
  if (!keyCache.has(cacheKey)) {
    keyCache.set(cacheKey, await crypto.subtle.importKey(
      "raw", new TextEncoder().encode(env.JWT_SECRET), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]));
  }
  return keyCache.get(cacheKey);
}

// The claims of a token whose signature and times check out; throws Unauthorized otherwise.
async function verify(token, env, now = Date.now() / 1000) {
  const parts = token.split(".");
  if (parts.length !== 3) throw new Unauthorized("malformed token");
  const [headerPart, payloadPart, signaturePart] = parts;
  const header = decodeJSON(headerPart);
  const claims = decodeJSON(payloadPart);
  const signature = base64urlToBytes(signaturePart);
  const signed = new TextEncoder().encode(`${headerPart}.${payloadPart}`);

  let valid;
  if (header.alg === "RS256") {
    valid = await crypto.subtle.verify("RSASSA-PKCS1-v1_5", await rsaKey(env, header.kid), signature, signed);
  } else if (header.alg === "HS256") {
    // verify() compares in constant time, unlike comparing two signatures by hand.
    valid = await crypto.subtle.verify("HMAC", await hmacKey(env), signature, signed);
  } else if (typeof header.alg === "string" && header.alg.toLowerCase() === "none") {
    throw new Unauthorized("unsigned tokens (alg none) are refused");
  } else {
    throw new Unauthorized(`alg ${JSON.stringify(header.alg)} is not accepted (RS256 or HS256)`);
  }
  if (!valid) throw new Unauthorized("bad signature");

  for (const name of ["exp", "nbf", "iat"]) {
    if (claims[name] !== undefined && typeof claims[name] !== "number") throw new Unauthorized(`${name} is not a number`);
  }
  if (claims.exp === undefined) throw new Unauthorized("token has no expiry");
  if (now >= claims.exp + CLOCK_SKEW_SECONDS) throw new Unauthorized("token expired");
  if (claims.nbf !== undefined && now < claims.nbf - CLOCK_SKEW_SECONDS) throw new Unauthorized("token not yet valid");
  if (env.JWT_ISSUER && claims.iss !== env.JWT_ISSUER) throw new Unauthorized("wrong issuer");
  if (env.JWT_AUDIENCE) {
    const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (!audiences.includes(env.JWT_AUDIENCE)) throw new Unauthorized("wrong audience");
  }
  return claims;
}

function unauthorized(reason) {
  return Response.json({ error: reason }, {
    status: 401,
    headers: { "WWW-Authenticate": `Bearer error="invalid_token", error_description="${reason.replace(/"/g, "'")}"` },
  });
}

// Header values are bytes: escape anything past ASCII so every claim fits (still valid JSON).
function asciiJSON(value) {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

export default {
  async fetch(request, env) {
    const match = /^Bearer\s+(\S+)$/i.exec(request.headers.get("Authorization") || "");
    if (match === null) return unauthorized("missing bearer token");
    let claims;
    try {
      claims = await verify(match[1], env);
    } catch (error) {
      if (error instanceof Unauthorized) return unauthorized(error.message);
      // A configuration mistake: the operator needs the details, the client does not.
      console.error(`jwt-verify: ${error.message}`);
      return Response.json({ error: "token verification is misconfigured" }, { status: 500 });
    }

    const url = new URL(request.url);
    const forwarded = new Request(env.ORIGIN.replace(/\/$/, "") + url.pathname + url.search, request);
    // Only the edge may set the claims header; the token itself stops here.
    forwarded.headers.set(CLAIMS_HEADER, asciiJSON(claims));
    forwarded.headers.delete("Authorization");
    return fetch(forwarded);
  },
};
