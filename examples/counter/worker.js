// A counter per name, kept by a Durable Object: GET /<name> reads it,
// POST /<name> adds one (or ?by=N). Every name is one object, so concurrent
// increments of one counter never race.
import { DurableObject } from "cloudflare:workers";

export class Counter extends DurableObject {
  async increment(by = 1) {
    const value = ((await this.ctx.storage.get("value")) ?? 0) + by;
    await this.ctx.storage.put("value", value);
    return value;
  }

  async current() {
    return (await this.ctx.storage.get("value")) ?? 0;
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const name = url.pathname.slice(1) || "default";
    const counter = env.COUNTER.getByName(name);
    if (request.method === "POST") {
      const by = Number(url.searchParams.get("by") ?? 1);
      return Response.json({ name, value: await counter.increment(by) });
    }
    return Response.json({ name, value: await counter.current() });
  },
};
