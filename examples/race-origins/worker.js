// Ask two origins (say, a primary and a mirror) at once and answer with
// whichever responds first. The slower request is cancelled with an
// AbortController, so it stops costing either side anything, and the outcome
// is logged in ctx.waitUntil, after the client already has its response.

// Racing a POST would run it twice: only requests that are safe to repeat race.
const RACED_METHODS = new Set(["GET", "HEAD"]);

export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    const origins = [["primary", env.PRIMARY_ORIGIN], ["secondary", env.SECONDARY_ORIGIN]];
    const upstream = (base) => base.replace(/\/$/, "") + url.pathname + url.search;
    if (!RACED_METHODS.has(request.method)) {
      return fetch(upstream(env.PRIMARY_ORIGIN), request);
    }

    const started = performance.now();
    const attempts = origins.map(([name, base]) => {
      const controller = new AbortController();
      const response = fetch(upstream(base), {
        method: request.method, headers: request.headers, signal: controller.signal,
      });
      return { name, controller, response };
    });

    // An origin that fails (network error or 5xx) drops out of the race
    // instead of winning it: its promise never settles, and the race is lost
    // only when every origin has failed, or none answered in time.
    const never = new Promise(() => {});
    const successes = attempts.map((attempt) =>
      attempt.response.then((response) => (response.status >= 500 ? never : { attempt, response }), () => never));
    const allFailed = Promise.allSettled(attempts.map((a) => a.response)).then(() => "failed");
    let timer;
    const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve("timeout"), Number(env.TIMEOUT_MS)); });
    const winner = await Promise.race([...successes, allFailed, timeout]);
    clearTimeout(timer);

    const won = typeof winner === "object";
    const losers = attempts.filter((a) => !won || a !== winner.attempt);
    const reason = won ? "another origin answered first" : "no origin answered in time";
    for (const loser of losers) loser.controller.abort(new DOMException(reason, "AbortError"));

    ctx.waitUntil((async () => {
      // Each loser settles once its cancellation (or failure) has gone through.
      const outcomes = await Promise.all(losers.map(async (loser) => {
        try {
          const response = await loser.response;
          return `${loser.name} answered ${response.status}`;
        } catch (error) {
          return `${loser.name} ${error.name === "AbortError" ? "cancelled" : "failed"} (${error.name}: ${error.message})`;
        }
      }));
      const elapsed = Math.round(performance.now() - started);
      const result = won ? `${winner.attempt.name} won` : `no winner (${winner})`;
      console.log(`race ${request.method} ${url.pathname}: ${result} after ${elapsed} ms; ${outcomes.join("; ")}`);
    })());

    if (winner === "timeout") return new Response("no origin answered in time\n", { status: 504 });
    if (winner === "failed") return new Response("no origin could answer\n", { status: 502 });
    const response = new Response(winner.response.body, winner.response);
    response.headers.set("X-Served-By", winner.attempt.name);
    return response;
  },
};
