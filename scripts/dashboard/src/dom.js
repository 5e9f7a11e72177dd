// Tiny DOM helpers. Every piece of data from the API (names, log lines, response
// bodies: all written by possibly hostile workers) goes in as text, never as HTML.

export function h(tag, props, ...children) {
  const el = tag === "svg" || SVG_TAGS.has(tag)
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2).toLowerCase(), value);
      } else if (key === "class") {
        el.setAttribute("class", value);
      } else if (key === "dataset") {
        Object.assign(el.dataset, value);
      } else if (key in el && !(el instanceof SVGElement) && typeof value !== "string") {
        el[key] = value;
      } else if (key === "value" || key === "checked") {
        el[key] = value;
      } else {
        el.setAttribute(key, value === true ? "" : String(value));
      }
    }
  }
  append(el, children);
  return el;
}

const SVG_TAGS = new Set(["path", "rect", "line", "polyline", "polygon", "circle", "g", "text", "title", "defs", "linearGradient", "stop"]);

export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

// Icons: small inline SVG paths (24x24, stroked), so no icon font or image request.
const ICONS = {
  back: "M15 18l-6-6 6-6",
  plus: "M12 5v14M5 12h14",
  play: "M7 4v16l13-8z",
  upload: "M12 16V4M6 10l6-6 6 6M4 20h16",
  undo: "M9 14L4 9l5-5M4 9h10a6 6 0 010 12h-3",
  logout: "M15 4h4a1 1 0 011 1v14a1 1 0 01-1 1h-4M10 17l5-5-5-5M15 12H3",
  pause: "M8 5v14M16 5v14",
  trash: "M4 7h16M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3",
  code: "M8 6l-6 6 6 6M16 6l6 6-6 6",
  history: "M3 12a9 9 0 109-9 9 9 0 00-6.4 2.6L3 8M3 3v5h5M12 7v5l3 3",
  terminal: "M4 17l6-6-6-6M12 19h8",
  bolt: "M13 2L3 14h9l-1 8 10-12h-9l1-8z",
  check: "M5 12l5 5L20 7",
  alert: "M12 9v4M12 17h.01M10.3 3.9L1.8 18a2 2 0 001.7 3h17a2 2 0 001.7-3L13.7 3.9a2 2 0 00-3.4 0z",
  refresh: "M21 12a9 9 0 11-3-6.7L21 8M21 3v5h-5",
  x: "M6 6l12 12M18 6L6 18",
};

export function icon(name, size = 16) {
  return h("svg", { class: "icon", width: size, height: size, viewBox: "0 0 24 24", "aria-hidden": "true" },
    h("path", { d: ICONS[name] }));
}

export function button(label, props = {}, iconName = null) {
  const { variant = "secondary", ...rest } = props;
  return h("button", { type: "button", class: `btn btn-${variant}`, ...rest }, iconName ? icon(iconName) : null,
    label ? h("span", null, label) : null);
}

export function relativeTime(iso) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "";
  const seconds = Math.round((Date.now() - then) / 1000);
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  const days = Math.round(hours / 24);
  if (days < 30) return `${days} d ago`;
  return new Date(then).toISOString().slice(0, 10);
}

export function formatNumber(value) {
  if (value === null || value === undefined) return "—";
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (value >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
  return value.toLocaleString("en-US");
}

export function formatMs(value) {
  if (value === null || value === undefined) return "—";
  if (value >= 60000) return `${(value / 60000).toFixed(1)} min`;
  if (value >= 1000) return `${(value / 1000).toFixed(2)} s`;
  if (value >= 10) return `${Math.round(value)} ms`;
  return `${value.toFixed(value < 1 ? 2 : 1)} ms`;
}

let toastHost = null;

export function toast(message, kind = "info") {
  if (!toastHost) {
    toastHost = h("div", { class: "toasts", role: "status", "aria-live": "polite" });
    document.body.append(toastHost);
  }
  const el = h("div", { class: `toast toast-${kind}` }, icon(kind === "error" ? "alert" : "check"), h("span", null, message));
  toastHost.append(el);
  setTimeout(() => el.classList.add("leaving"), 4200);
  setTimeout(() => el.remove(), 4600);
}

// A modal dialog built on <dialog>; resolves with the confirm value or null.
export function dialog({ title, body, confirm = "Confirm", variant = "primary", input = null }) {
  return new Promise((resolve) => {
    let field = null;
    if (input) {
      field = h("input", { class: "input", type: "text", placeholder: input.placeholder ?? "", value: input.value ?? "",
        maxlength: input.maxlength ?? 1024, "aria-label": input.label ?? title });
    }
    const done = (value) => { dlg.close(); dlg.remove(); resolve(value); };
    const form = h("form", { method: "dialog", class: "dialog-body", onsubmit: (e) => { e.preventDefault(); done(field ? field.value : true); } },
      h("h2", null, title),
      body ? h("p", { class: "muted" }, body) : null,
      field ? h("label", { class: "field" }, h("span", null, input.label ?? ""), field) : null,
      h("div", { class: "dialog-actions" },
        button("Cancel", { onclick: () => done(null) }),
        h("button", { type: "submit", class: `btn btn-${variant}` }, confirm)));
    const dlg = h("dialog", { class: "dialog", oncancel: (e) => { e.preventDefault(); done(null); } }, form);
    document.body.append(dlg);
    dlg.showModal();
    (field ?? form.querySelector("button[type=submit]")).focus();
  });
}
