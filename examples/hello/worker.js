export default {
  async fetch(request, env, ctx) {
    return new Response("hello from an isolate\n", {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
};
