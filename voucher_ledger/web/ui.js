// Small DOM helpers shared by the pages. Text is always set as text, never parsed as HTML.

/** h("p", {class: "x"}, "text", child) builds an element; null/false children are skipped. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

const SVG = "http://www.w3.org/2000/svg";

/** The same for SVG elements. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const dateTime = new Intl.DateTimeFormat("en-GB", {
  dateStyle: "medium",
  timeStyle: "medium",
});

/** A <time> element for an ISO timestamp, shown in the browser's time zone. */
export function time(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return h("time", { datetime: iso, title: iso }, dateTime.format(date));
}

export function formatTime(iso) {
  return iso ? dateTime.format(new Date(iso)) : "—";
}

export function omr(amount) {
  return `${Number(amount).toLocaleString("en-GB")} OMR`;
}

export function plural(n, one, many) {
  return `${Number(n).toLocaleString("en-GB")} ${n === 1 ? one : many}`;
}

/** Move the keyboard focus to a heading (tabindex="-1") after the view changed. */
export function focusHeading(el) {
  if (!el) return;
  el.focus({ preventScroll: false });
}
