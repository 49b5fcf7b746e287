// The issuer console: sign in with a bearer token, list / search vouchers, issue and update them,
// a voucher's detail with its audit trail and a chart of its redemptions, revoke with a
// confirmation. It uses only the documented REST API (api.js).

import { call } from "./api.js";
import { focusHeading, h, omr, plural, replace, s, time, formatTime } from "./ui.js";

const TOKEN_KEY = "voucher-ledger.console.token";
const PAGE_SIZE = 50;
const HISTORY_PAGE = 50;
const REDEMPTION_PAGES = 20; // the chart reads at most 20 pages of 1,000 redemptions
const FIELDS = [
  "code", "kind", "credit_omr", "percent_off", "amount_off_omr", "applies_to", "duration",
  "description", "max_redemptions", "starts_at", "expires_at",
  "credit_valid_for", "plans", "min_order_omr", "new_organizations_only", "active",
];
const FIELD_INPUT = {
  code: "f-code",
  kind: "f-kind",
  credit_omr: "f-credit",
  percent_off: "f-percent",
  amount_off_omr: "f-amount-off",
  applies_to: "f-applies",
  duration: "f-duration",
  description: "f-description",
  max_redemptions: "f-max",
  starts_at: "f-starts",
  expires_at: "f-expires",
  credit_valid_for: "f-valid-for",
  plans: "f-plans",
  min_order_omr: "f-min-order",
  new_organizations_only: "f-new-orgs",
  active: "f-active",
};
const TIME_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";

/** An ISO instant as a datetime-local value in the browser's (the issuer's) time zone. */
function localInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A datetime-local value (the issuer's time zone) as an ISO instant with its offset; empty:
 *  null (no bound). Something the browser cannot read is sent as typed, for the service's
 *  own message. */
function instantField(raw) {
  const text = raw.trim();
  if (text === "") return null;
  const d = new Date(text);
  return Number.isNaN(d.getTime()) ? text : d.toISOString();
}

const $ = (id) => document.getElementById(id);
const views = ["signin", "list", "form", "detail", "campaigns", "campaign", "reports", "globals"];
let renderId = 0; // a newer navigation makes the answers of an older one irrelevant
let pendingNotice = null;

// ---------------------------------------------------------------------------- session

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** A token handed over in the fragment (#token=...) is stored and removed from the address bar. */
function takeTokenFromFragment() {
  const match = /^#token=([^&]*)/.exec(window.location.hash);
  if (!match) return;
  const handed = decodeURIComponent(match[1]).trim();
  if (handed) sessionStorage.setItem(TOKEN_KEY, handed);
  history.replaceState(null, "", window.location.pathname + window.location.search);
}

/** The subject and role claimed by the token, for display only (the service verifies it). */
function claims(raw) {
  try {
    const part = raw.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    const roles = json.role ?? json.realm_access?.roles ?? [];
    return { sub: String(json.sub ?? "?"), role: Array.isArray(roles) ? roles.join(", ") : String(roles) };
  } catch {
    return { sub: "?", role: "?" };
  }
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  hubProbe = null;
  if (message) sessionStorage.setItem(`${TOKEN_KEY}.message`, message);
  else sessionStorage.removeItem(`${TOKEN_KEY}.message`);
  if (window.location.hash && window.location.hash !== "#/") window.location.hash = "#/";
  else render();
}

// ---------------------------------------------------------------------------- chrome

function show(view) {
  for (const name of views) $(`view-${name}`).hidden = name !== view;
  const signedIn = view !== "signin";
  $("nav").hidden = !signedIn;
  $("session").hidden = !signedIn;
  if (signedIn) {
    const who = claims(token() ?? "");
    $("session-who").textContent = `Signed in as ${who.sub} (${who.role})`;
  }
  for (const [id, match] of [["nav-list", view === "list"], ["nav-new", view === "form" && !currentRoute().code], ["nav-campaigns", view === "campaigns"], ["nav-reports", view === "reports"], ["nav-globals", view === "globals"]]) {
    if (match) $(id).setAttribute("aria-current", "page");
    else $(id).removeAttribute("aria-current");
  }
}

let retryAction = null;

/** A message above the view; with ``retry`` (true: render the view again, or a function) a
 *  "Try again" button. */
function banner(message, retry) {
  $("banner").hidden = !message;
  $("banner-text").textContent = message ?? "";
  $("banner-retry").hidden = !retry;
  retryAction = typeof retry === "function" ? retry : render;
}

function announce(message) {
  $("status").textContent = message;
}

function notice(message) {
  $("notice").hidden = !message;
  $("notice").textContent = message ?? "";
}

function loading(on) {
  $("loading").hidden = !on;
}

function seconds(n) {
  return n === 1 ? "1 second" : `${n} seconds`;
}

/**
 * The error states every call shares: 401 and 403 end the session (back to sign-in with the
 * reason), 429 and 5xx and an unreachable service get a banner with a retry. Returns true when
 * it handled the answer; 400 / 404 / 409 are left to the view.
 */
function handled(res, what, retry = true) {
  if (res.status === 401) {
    signOut(`The service refused the token (401: ${res.error}). Sign in again with a valid token.`);
    return true;
  }
  if (res.status === 403) {
    signOut(`This token may not manage vouchers (403: ${res.error}). Use an issuer's token.`);
    return true;
  }
  if (res.status === 429) {
    const wait = res.retryAfter ?? 1;
    banner(`Too many requests (429) while trying to ${what}. Try again in ${seconds(wait)}.`, retry);
    return true;
  }
  if (res.status === 0) {
    banner(`Could not reach the service to ${what}. Check the connection and try again.`, retry);
    return true;
  }
  if (res.status >= 500) {
    const later = res.retryAfter ? ` Try again in ${seconds(res.retryAfter)}.` : " Try again in a moment.";
    banner(`The service could not ${what} (${res.status}: ${res.error}).${later}`, retry);
    return true;
  }
  return false;
}

// ---------------------------------------------------------------------------- routing

/** #/ (list, with ?q=&status=&page=), #/new, #/v/CODE, #/v/CODE/edit */
function currentRoute() {
  const raw = window.location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = raw.split("?");
  const params = new URLSearchParams(search);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "new") return { view: "form" };
  if (parts[0] === "campaigns") return parts[1] ? { view: "campaign", id: parts[1] } : { view: "campaigns" };
  if (parts[0] === "global") return { view: "globals" };
  if (parts[0] === "reports") {
    const day = (name) => (/^\d{4}-\d{2}-\d{2}$/.test(params.get(name) ?? "") ? params.get(name) : "");
    return { view: "reports", from: day("from"), to: day("to") };
  }
  if (parts[0] === "v" && parts[1]) {
    return parts[2] === "edit" ? { view: "form", code: parts[1] } : { view: "detail", code: parts[1] };
  }
  return {
    view: "list",
    q: params.get("q") ?? "",
    status: params.get("status") === "revoked" ? "revoked" : "live",
    page: Math.max(1, Number.parseInt(params.get("page") ?? "1", 10) || 1),
  };
}

function listHash({ q = "", status = "live", page = 1 }) {
  const params = new URLSearchParams();
  if (q) params.set("q", q);
  if (status !== "live") params.set("status", status);
  if (page > 1) params.set("page", String(page));
  const search = params.toString();
  return search ? `#/?${search}` : "#/";
}

function voucherHash(code, edit = false) {
  return `#/v/${encodeURIComponent(code)}${edit ? "/edit" : ""}`;
}

async function render() {
  const id = ++renderId;
  banner(null);
  notice(pendingNotice);
  pendingNotice = null;
  if (!token()) {
    renderSignIn();
    return;
  }
  const route = currentRoute();
  probeHub();
  loading(true);
  try {
    if (route.view === "form") await renderForm(route, id);
    else if (route.view === "detail") await renderDetail(route, id);
    else if (route.view === "campaigns") await renderCampaigns(id);
    else if (route.view === "campaign") await renderCampaign(route, id);
    else if (route.view === "reports") await renderReports(route, id);
    else if (route.view === "globals") await renderGlobals(id);
    else await renderList(route, id);
  } finally {
    if (id === renderId) loading(false);
  }
}

// ---------------------------------------------------------------------------- sign-in

function renderSignIn() {
  loading(false);
  show("signin");
  document.title = "Sign in · voucher-ledger console";
  const message = sessionStorage.getItem(`${TOKEN_KEY}.message`);
  $("signin-error").hidden = !message;
  $("signin-error").textContent = message ?? "";
  $("token").value = "";
  if (message) $("token").setAttribute("aria-invalid", "true");
  else $("token").removeAttribute("aria-invalid");
  focusHeading($("signin-title"));
}

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const raw = $("token").value.trim().replace(/^Bearer\s+/i, "");
  if (!raw) {
    $("signin-error").hidden = false;
    $("signin-error").textContent = "Paste a token first.";
    $("token").setAttribute("aria-invalid", "true");
    $("token").focus();
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, raw);
  sessionStorage.removeItem(`${TOKEN_KEY}.message`);
  render();
});

$("sign-out").addEventListener("click", () => {
  signOut(null);
  announce("Signed out.");
});

$("banner-retry").addEventListener("click", () => {
  const action = retryAction;
  banner(null);
  action();
});

// ---------------------------------------------------------------------------- list

async function renderList(route, id) {
  show("list");
  document.title = "Vouchers · voucher-ledger console";
  $("search").value = route.q;
  $("status-filter").value = route.status;
  $("list-error").hidden = true;
  replace($("counters"));
  replace($("list-body"));
  $("pager").hidden = true;
  const res = await call("list", {
    token: token(),
    query: {
      limit: PAGE_SIZE + 1, // one more tells whether an older page exists
      offset: (route.page - 1) * PAGE_SIZE,
      q: route.q || undefined,
      status: route.status === "live" ? undefined : route.status,
    },
  });
  if (id !== renderId) return;
  if (handled(res, "list the vouchers")) return;
  if (!res.ok) {
    $("list-error").hidden = false;
    $("list-error").textContent = res.error;
    $("search").setAttribute("aria-invalid", "true");
    focusHeading($("list-title"));
    return;
  }
  $("search").removeAttribute("aria-invalid");
  const rows = res.body.slice(0, PAGE_SIZE);
  const older = res.body.length > PAGE_SIZE;
  renderCounters(res.headers, rows, route);
  if (rows.length === 0) {
    $("list-body").append(emptyList(route));
  } else {
    $("list-body").append(voucherTable(rows, route));
  }
  if (route.page > 1 || older) {
    $("pager").hidden = false;
    const prev = $("pager-prev");
    const next = $("pager-next");
    prev.hidden = route.page <= 1;
    next.hidden = !older;
    prev.href = listHash({ ...route, page: route.page - 1 });
    next.href = listHash({ ...route, page: route.page + 1 });
    $("pager-where").textContent = `Page ${route.page}`;
  }
  announce(`${plural(rows.length, "voucher", "vouchers")} shown.`);
  focusHeading($("list-title"));
}

/** A whole number from a response header, or ``fallback`` when it is absent or not one. */
function headerNumber(headers, name, fallback) {
  const raw = headers?.get(name);
  return raw !== null && raw !== undefined && /^\d+$/.test(raw) ? Number(raw) : fallback;
}

/** Totals of every voucher the list matches (the API's X-Total-* headers), not of the page. */
function renderCounters(headers, rows, route) {
  const total = headerNumber(headers, "X-Total-Count", rows.length);
  const active = headerNumber(headers, "X-Total-Active", rows.filter((v) => v.active).length);
  const redeemed = headerNumber(headers, "X-Total-Redemptions",
    rows.reduce((sum, v) => sum + v.times_redeemed, 0));
  const creditBaisa = headerNumber(headers, "X-Total-Credit-Baisa",
    rows.reduce((sum, v) => sum + v.times_redeemed * v.credit_baisa, 0));
  const items =
    route.status === "revoked"
      ? [["Revoked", total]]
      : [["Vouchers", total], ["Active", active], ["Inactive", total - active]];
  items.push(["Redemptions", redeemed], ["Credit granted", omr(Math.floor(creditBaisa / 1000))]);
  replace(
    $("counters"),
    items.map(([label, value]) =>
      h("li", { "data-counter": label.toLowerCase().replace(/ /g, "-") },
        h("span", { class: "counter-value" }, typeof value === "number" ? value.toLocaleString("en-GB") : value),
        h("span", { class: "counter-label" }, label)),
    ),
  );
}

function emptyList(route) {
  if (route.q) {
    return h("div", { class: "empty", id: "list-empty" },
      h("p", { class: "empty-title" }, `No ${route.status === "revoked" ? "revoked " : ""}voucher code contains “${route.q.toUpperCase()}”.`),
      h("p", {}, h("a", { href: listHash({ status: route.status }) }, "Clear the search")));
  }
  if (route.status === "revoked") {
    return h("div", { class: "empty", id: "list-empty" }, h("p", { class: "empty-title" }, "No revoked vouchers."));
  }
  if (route.page > 1) {
    return h("div", { class: "empty", id: "list-empty" },
      h("p", { class: "empty-title" }, "No older vouchers."),
      h("p", {}, h("a", { href: listHash({}) }, "Back to the newest")));
  }
  return h("div", { class: "empty", id: "list-empty" },
    h("p", { class: "empty-title" }, "No vouchers yet."),
    h("p", {}, "Issue the first one; it appears here, newest first."),
    h("p", {}, h("a", { class: "button primary", href: "#/new" }, "Issue a voucher")));
}

function statusBadge(v) {
  if (v.revoked) return h("span", { class: "badge badge-revoked" }, "Revoked");
  if (!v.active) return h("span", { class: "badge badge-inactive" }, "Inactive");
  const now = Date.now();
  if (v.starts_at && Date.parse(v.starts_at) > now) {
    return h("span", { class: "badge badge-inactive" }, `Starts ${formatTime(v.starts_at)}`);
  }
  if (v.expires_at && Date.parse(v.expires_at) <= now) {
    return h("span", { class: "badge badge-inactive" }, `Ended ${formatTime(v.expires_at)}`);
  }
  if (v.max_redemptions > 0 && v.times_redeemed >= v.max_redemptions) {
    return h("span", { class: "badge badge-full" }, "At cap");
  }
  return h("span", { class: "badge badge-active" }, "Active");
}

function usage(v) {
  return v.max_redemptions > 0
    ? `${v.times_redeemed.toLocaleString("en-GB")} of ${v.max_redemptions.toLocaleString("en-GB")}`
    : `${v.times_redeemed.toLocaleString("en-GB")} (unlimited)`;
}

function voucherTable(rows, route) {
  const revoked = route.status === "revoked";
  return h("div", { class: "table-wrap" },
    h("table", { id: "voucher-table" },
      h("caption", {}, revoked ? "Revoked vouchers, newest first" : "Live vouchers, newest first"),
      h("thead", {}, h("tr", {},
        ["Code", "Credit", "Description", "Status", "Redeemed", "Created"].map((label) =>
          h("th", { scope: "col" }, label)))),
      h("tbody", {}, rows.map((v) =>
        h("tr", { "data-code": v.code },
          h("th", { scope: "row" }, h("a", { href: voucherHash(v.code), class: "code" }, v.code)),
          h("td", { class: v.kind && v.kind !== "credit" ? "gives" : "num" }, gives(v)),
          h("td", { class: "description" }, v.description || h("span", { class: "muted" }, "—")),
          h("td", {}, statusBadge({ ...v, revoked })),
          h("td", { class: "num" }, usage(v)),
          h("td", {}, time(v.created_at)))))));
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const target = listHash({ q: $("search").value.trim(), status: $("status-filter").value });
  if (window.location.hash === target) render();
  else window.location.hash = target;
});

$("status-filter").addEventListener("change", () => {
  window.location.hash = listHash({ q: $("search").value.trim(), status: $("status-filter").value });
});

// ---------------------------------------------------------------------------- issue / update

let editing = null; // the code being updated, or null for a new voucher
// The Idempotency-Key of the last save that got no answer (timeout, 5xx, no connection): the
// same body sent again reuses it, so the service applies the save at most once.
let unanswered = null;

function idempotencyKey(json) {
  if (unanswered?.json === json) return unanswered.key;
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  const key = `console-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
  unanswered = { json, key };
  return key;
}

async function renderForm(route, id) {
  show("form");
  clearFormErrors();
  const form = $("voucher-form");
  form.reset();
  $("f-tz").textContent = TIME_ZONE;
  editing = route.code ?? null;
  const title = $("form-title");
  if (!editing) {
    document.title = "Issue a voucher · voucher-ledger console";
    title.textContent = "Issue a voucher";
    $("form-submit").textContent = "Issue voucher";
    $("f-code").readOnly = false;
    $("form-cancel").href = "#/";
    $("f-active").checked = true;
    showKind();
    focusHeading(title);
    return;
  }
  const res = await call("detail", { token: token(), code: editing });
  if (id !== renderId) return;
  if (handled(res, `load ${editing}`)) return;
  if (!res.ok) {
    pendingNotice = `Voucher ${editing} was not found (${res.status}: ${res.error}).`;
    window.location.hash = "#/";
    return;
  }
  const v = res.body;
  const restoring = v.revoked;
  document.title = `${restoring ? "Restore" : "Update"} ${v.code} · voucher-ledger console`;
  title.textContent = `${restoring ? "Restore" : "Update"} voucher ${v.code}`;
  $("form-submit").textContent = restoring ? "Restore voucher" : "Save changes";
  $("form-cancel").href = voucherHash(v.code);
  $("f-code").value = v.code;
  $("f-code").readOnly = true;
  $("f-kind").value = v.kind ?? "credit";
  $("f-credit").value = v.kind && v.kind !== "credit" ? "" : String(v.credit_omr);
  $("f-percent").value = v.percent_off ? String(v.percent_off) : "";
  $("f-amount-off").value = v.amount_off_omr ? String(v.amount_off_omr) : "";
  for (const a of APPLIES) $(`f-applies-${a}`).checked = (v.applies_to ?? []).includes(a);
  $("f-duration").value = v.kind && v.kind !== "credit" ? v.duration ?? "" : "";
  showKind();
  $("f-description").value = v.description;
  $("f-max").value = String(v.max_redemptions);
  $("f-starts").value = localInput(v.starts_at);
  $("f-expires").value = localInput(v.expires_at);
  $("f-valid-for").value = v.credit_valid_for ?? "";
  $("f-plans").value = (v.plans ?? []).join(", ");
  $("f-min-order").value = v.min_order_omr ? String(v.min_order_omr) : "";
  $("f-new-orgs").checked = Boolean(v.new_organizations_only);
  $("f-active").checked = v.active;
  focusHeading(title);
}

/** A whole number as typed becomes a JSON number; anything else is sent as typed, so the
 *  service's own validation answers (and its message is the one shown). Empty: omitted. */
function numberField(raw) {
  const text = raw.trim();
  if (text === "") return undefined;
  return /^-?\d+$/.test(text) && Number.isSafeInteger(Number(text)) ? Number(text) : text;
}

function plansField(raw) {
  const plans = raw.split(",").map((p) => p.trim()).filter(Boolean);
  return plans.length ? plans : null;
}

/** Show the fields of the kind chosen (credit, or a discount's). */
function showKind() {
  const kind = $("f-kind").value;
  for (const el of document.querySelectorAll("#voucher-form [data-kind]")) {
    const want = el.dataset.kind;
    el.hidden = !(want === kind || (want === "discount" && kind !== "credit"));
  }
}

const APPLIES = ["plans", "addons", "apps"];

/** A discount's fields, only when the kind is one (a credit voucher's body is as before). */
function discountFields() {
  const kind = $("f-kind").value;
  if (kind === "credit") return {};
  const applies = APPLIES.filter((a) => $(`f-applies-${a}`).checked);
  return {
    kind,
    percent_off: kind === "percent_off" ? numberField($("f-percent").value) : undefined,
    amount_off_omr: kind === "amount_off" ? numberField($("f-amount-off").value) : undefined,
    applies_to: applies.length ? applies : undefined,
    duration: $("f-duration").value.trim() || undefined,
  };
}

function formBody() {
  const discount = $("f-kind").value !== "credit";
  const body = {
    code: $("f-code").value,
    ...discountFields(),
    credit_omr: discount ? undefined : numberField($("f-credit").value),
    description: $("f-description").value,
    max_redemptions: numberField($("f-max").value),
    // Empty means none (null clears a value the voucher had; it is what a new one gets).
    starts_at: instantField($("f-starts").value),
    expires_at: instantField($("f-expires").value),
    credit_valid_for: $("f-valid-for").value.trim() || null,
    plans: plansField($("f-plans").value),
    min_order_omr: numberField($("f-min-order").value) ?? null,
    new_organizations_only: $("f-new-orgs").checked,
    active: $("f-active").checked,
  };
  for (const key of Object.keys(body)) if (body[key] === undefined) delete body[key];
  return body;
}

function clearFormErrors() {
  $("form-error").hidden = true;
  $("form-error").textContent = "";
  for (const field of FIELDS) {
    const input = $(FIELD_INPUT[field]);
    input.removeAttribute("aria-invalid");
    const slot = $(`${FIELD_INPUT[field]}-error`);
    slot.hidden = true;
    slot.textContent = "";
  }
}

const FIELD_LABEL = {
  code: "Code",
  kind: "What it gives",
  credit_omr: "Credit per redemption",
  percent_off: "Percent off",
  amount_off_omr: "Amount off",
  applies_to: "Applies to",
  duration: "For how long",
  description: "Description",
  max_redemptions: "Maximum redemptions",
  starts_at: "Valid from",
  expires_at: "Valid until",
  credit_valid_for: "Credit lasts",
  plans: "Plans",
  min_order_omr: "Minimum order",
  new_organizations_only: "New Organizations only",
  active: "Active",
};

/** "must be a whole number" -> "Must be a whole number." */
function sentence(words) {
  const text = String(words).trim();
  return text.charAt(0).toUpperCase() + text.slice(1) + (/[.?!]$/.test(text) ? "" : ".");
}

/** Mark a field invalid with its error next to it (``text`` as given). */
function markField(field, text) {
  const input = $(FIELD_INPUT[field]);
  input.setAttribute("aria-invalid", "true");
  const slot = $(`${FIELD_INPUT[field]}-error`);
  slot.hidden = false;
  slot.textContent = text;
  return input;
}

/**
 * A refused save. With the service's field errors (every error of the body at once), each is
 * shown in plain words next to its input and listed in the summary; otherwise the service's
 * message is shown as it is, and next to the field it names. The first invalid input gets the
 * focus.
 */
function showFormError(res) {
  $("form-error").hidden = false;
  let first = null;
  if (res.fields) {
    const items = [];
    for (const [where, words] of Object.entries(res.fields)) {
      const field = where.split(".")[0];
      if (FIELD_INPUT[field]) {
        const input = markField(field, sentence(words));
        first ??= input;
        items.push(h("li", { "data-field": field },
          h("a", { href: `#${FIELD_INPUT[field]}`, onclick: (event) => { event.preventDefault(); input.focus(); } },
            FIELD_LABEL[field]), `: ${words}`));
      } else {
        items.push(h("li", { "data-field": field }, `${field}: ${words}`));
      }
    }
    replace($("form-error"), h("p", { class: "error-title" }, "The voucher was not saved:"),
      h("ul", { id: "form-error-list" }, items));
    (first ?? $("form-error")).focus();
    return;
  }
  const message = res.error;
  replace($("form-error"), h("p", { class: "error-title" }, "The voucher was not saved:"),
    h("p", { id: "form-error-message" }, message));
  for (const part of message.split("; ")) {
    // "credit_omr must be ...", "invalid code: ..."
    const named = FIELDS.map((name) => [part.search(new RegExp(`(^|\\s)${name}(:|\\s|$)`)), name])
      .filter(([at]) => at >= 0)
      .sort((a, b) => a[0] - b[0]);
    if (named.length === 0) continue;
    first ??= markField(named[0][1], part);
  }
  (first ?? $("form-error")).focus();
}

$("f-kind").addEventListener("change", showKind);

$("voucher-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const submit = $("form-submit");
  if (submit.disabled) return;
  clearFormErrors();
  banner(null);
  submit.disabled = true;
  submit.setAttribute("aria-busy", "true");
  const updating = editing;
  const body = formBody();
  const json = JSON.stringify(body);
  try {
    const res = await call("issue", {
      token: token(),
      body,
      headers: { "Idempotency-Key": idempotencyKey(json) },
    });
    if (res.status !== 0 && res.status < 500) unanswered = null; // decided: a new save, a new key
    if (handled(res, "save the voucher", () => $("voucher-form").requestSubmit())) return;
    if (!res.ok) {
      showFormError(res);
      return;
    }
    pendingNotice = `Voucher ${res.body.code} ${updating ? "saved" : "issued"}.`;
    announce(pendingNotice);
    window.location.hash = voucherHash(res.body.code);
  } finally {
    submit.disabled = false;
    submit.removeAttribute("aria-busy");
  }
});

// ---------------------------------------------------------------------------- detail

async function renderDetail(route, id) {
  show("detail");
  const code = route.code;
  document.title = `${code} · voucher-ledger console`;
  $("detail-title").textContent = code;
  $("detail-edit").hidden = true;
  $("detail-revoke").hidden = true;
  replace($("detail-body"));
  const [detail, history, redemptions] = await Promise.all([
    call("detail", { token: token(), code }),
    call("history", { token: token(), code, query: { limit: HISTORY_PAGE } }),
    loadRedemptions(code),
  ]);
  if (id !== renderId) return;
  for (const [res, what] of [[detail, `load ${code}`], [history, `load the history of ${code}`], [redemptions, `load the redemptions of ${code}`]]) {
    if (handled(res, what)) return;
  }
  if (detail.status === 404) {
    replace($("detail-body"), h("div", { class: "empty", id: "detail-empty" },
      h("p", { class: "empty-title" }, `There is no voucher ${code}.`),
      h("p", {}, h("a", { href: "#/" }, "Back to the vouchers"))));
    focusHeading($("detail-title"));
    return;
  }
  for (const res of [detail, history, redemptions]) {
    if (!res.ok) {
      replace($("detail-body"), h("p", { class: "error-summary", role: "alert" }, res.error));
      return;
    }
  }
  const v = detail.body;
  $("detail-title").textContent = v.code;
  // A campaign's code (its history starts with the campaign's creation) is edited and revoked
  // with its campaign.
  const campaignId = history.body.events.find((e) => e.type === "campaign.created")?.event.campaign_id ?? null;
  const edit = $("detail-edit");
  edit.hidden = campaignId !== null;
  edit.href = voucherHash(v.code, true);
  edit.textContent = v.revoked ? "Restore…" : "Edit";
  $("detail-revoke").hidden = v.revoked || campaignId !== null;
  $("detail-revoke").dataset.code = v.code;
  replace(
    $("detail-body"),
    facts(v, campaignId),
    h("section", { class: "panel", "aria-labelledby": "chart-title" },
      h("h2", { id: "chart-title" }, "Redemptions over time"),
      chart(v, redemptions.items, redemptions.truncated)),
    h("section", { class: "panel", "aria-labelledby": "history-title" },
      h("h2", { id: "history-title" }, "Audit trail"),
      h("p", { class: "hint" }, "Every event of this voucher, in stream order, from the history endpoint."),
      historyTable(code, history.body)),
    h("section", { class: "panel", "aria-labelledby": "redemptions-title" },
      h("h2", { id: "redemptions-title" }, "Latest redemptions"),
      redemptionTable(redemptions.items)),
  );
  focusHeading($("detail-title"));
}

/** What a voucher (or a campaign's code) gives: its credit, or its discount in words. */
function gives(v) {
  return v.kind && v.kind !== "credit" ? v.summary : omr(v.credit_omr);
}

function facts(v, campaignId = null) {
  const discount = v.kind && v.kind !== "credit";
  const rows = [
    ["Status", statusBadge(v)],
    campaignId ? ["Campaign", h("a", { href: campaignHash(campaignId), id: "detail-campaign" }, campaignId)] : null,
    discount ? ["Discount", h("span", { id: "detail-discount" }, v.summary)] : ["Credit per redemption", omr(v.credit_omr)],
    ["Description", v.description || "—"],
    ["Redeemed", usage(v)],
    ["Accepting redemptions", v.accepting_redemptions ? "Yes" : "No"],
    ["Valid from", v.starts_at ? time(v.starts_at) : "From its creation"],
    ["Valid until", v.expires_at ? time(v.expires_at) : "No end"],
    ["Credit lasts", v.credit_valid_for ?? "Forever"],
    ["Plans", v.plans ? v.plans.join(", ") : "Any"],
    ["Minimum order", v.min_order_omr ? omr(v.min_order_omr) : "Any"],
    ["New Organizations only", v.new_organizations_only ? "Yes" : "No"],
    ["Created", time(v.created_at)],
    ["Last changed", time(v.updated_at)],
  ];
  if (v.revoked) rows.push(["Revoked", time(v.revoked_at)]);
  rows.push(["Last stream sequence", String(v.last_seq)]);
  return h("dl", { class: "facts", id: "facts" },
    rows.filter(Boolean).map(([label, value]) => h("div", {}, h("dt", {}, label), h("dd", {}, value))));
}

async function loadRedemptions(code) {
  const items = [];
  let after = 0;
  for (let page = 0; page < REDEMPTION_PAGES; page++) {
    const res = await call("redemptions", { token: token(), code, query: { after_seq: after || undefined, limit: 1000 } });
    if (!res.ok) return res;
    items.push(...res.body.redemptions);
    if (res.body.next_after_seq === null) return { ...res, items, truncated: false };
    after = res.body.next_after_seq;
  }
  return { status: 200, ok: true, items, truncated: true };
}

const EVENT_LABEL = {
  "voucher.issued": (e) => ({ created: "Issued", updated: "Updated", restored: "Restored" })[e.change] ?? "Issued",
  "voucher.revoked": () => "Revoked",
  "voucher.redeemed": () => "Redeemed",
  "voucher.redemption_reversed": () => "Redemption reversed",
  // a campaign's code (issue #21): its campaign's events for it
  "campaign.created": () => "Campaign created",
  "campaign.codes_generated": () => "Generated",
  "campaign.code_redeemed": () => "Redeemed",
  "campaign.redemption_reversed": () => "Redemption reversed",
  "campaign.revoked": () => "Campaign revoked",
};

function eventDetails(type, e) {
  if (type === "voucher.issued") {
    const cap = e.max_redemptions > 0 ? `cap ${e.max_redemptions}` : "no cap";
    const parts = [`${omr(e.credit_baisa / 1000)} credit`, cap, e.active ? "active" : "inactive"];
    if (e.description) parts.push(`“${e.description}”`);
    return parts.join(", ");
  }
  if (type === "voucher.redeemed" || type === "campaign.code_redeemed") {
    return `by ${e.customer_id}, ${omr(e.credit_baisa / 1000)}`;
  }
  if (type === "voucher.redemption_reversed" || type === "campaign.redemption_reversed") {
    return `for ${e.customer_id}: ${e.reason}`;
  }
  if (type === "campaign.created") return `campaign ${e.campaign_id} “${e.name}”, ${omr(e.credit_baisa / 1000)} credit`;
  if (type === "campaign.codes_generated") return `in a batch of ${plural(e.codes.length, "code", "codes")}`;
  return "";
}

function historyRows(page) {
  return page.events.map((entry) =>
    h("tr", { "data-seq": entry.seq, "data-type": entry.type },
      h("td", { class: "num" }, String(entry.seq)),
      h("td", {}, time(entry.occurred_at)),
      h("td", {}, h("span", { class: `event event-${entry.type.split(".")[1]}` },
        (EVENT_LABEL[entry.type] ?? (() => entry.type))(entry.event))),
      h("td", {}, eventDetails(entry.type, entry.event)),
      h("td", {}, `${entry.actor.sub} (${entry.actor.role})`)));
}

function historyTable(code, firstPage) {
  if (firstPage.events.length === 0) {
    return h("p", { class: "empty" }, "No events recorded yet.");
  }
  const body = h("tbody", {}, historyRows(firstPage));
  const more = h("button", { type: "button", id: "history-more", class: "button-quiet" }, "Show later events");
  let next = firstPage.next_after_seq;
  more.hidden = next === null;
  more.addEventListener("click", async () => {
    more.disabled = true;
    const res = await call("history", { token: token(), code, query: { after_seq: next, limit: HISTORY_PAGE } });
    more.disabled = false;
    if (handled(res, `load the history of ${code}`)) return;
    if (!res.ok) {
      banner(res.error, false);
      return;
    }
    body.append(...historyRows(res.body));
    next = res.body.next_after_seq;
    more.hidden = next === null;
    announce(`${plural(res.body.events.length, "more event", "more events")} shown.`);
  });
  return h("div", {},
    h("div", { class: "table-wrap" },
      h("table", { id: "history-table" },
        h("caption", {}, `Audit trail of ${code}`),
        h("thead", {}, h("tr", {}, ["Seq", "Time", "Event", "Details", "Actor"].map((l) => h("th", { scope: "col" }, l)))),
        body)),
    more);
}

function redemptionTable(items) {
  if (items.length === 0) return h("p", { class: "empty", id: "redemptions-empty" }, "No redemptions yet.");
  const latest = items.slice(-10).reverse();
  return h("div", { class: "table-wrap" },
    h("table", { id: "redemptions-table" },
      h("caption", {}, `The ${latest.length} most recent of ${plural(items.length, "redemption", "redemptions")}`),
      h("thead", {}, h("tr", {}, ["Customer", "Redeemed", "Credit", "Reversed"].map((l) => h("th", { scope: "col" }, l)))),
      h("tbody", {}, latest.map((r) =>
        h("tr", {},
          h("td", {}, r.customer_id),
          h("td", {}, time(r.redeemed_at)),
          h("td", { class: "num" }, omr(r.credit_omr)),
          h("td", {}, r.reversed_at ? [time(r.reversed_at), ` (${r.reversal_reason ?? "reversed"})`] : "—"))))));
}

/**
 * Net redemptions over time (+1 when redeemed, -1 when reversed) as an SVG step line, with the
 * cap as a dashed line. The figure has a text summary for screen readers.
 */
function chart(v, items, truncated) {
  if (items.length === 0) {
    return h("p", { class: "empty", id: "chart-empty" }, "No redemptions yet: the chart starts with the first one.");
  }
  const steps = [];
  for (const r of items) {
    steps.push([Date.parse(r.redeemed_at), 1]);
    if (r.reversed_at) steps.push([Date.parse(r.reversed_at), -1]);
  }
  steps.sort((a, b) => a[0] - b[0]);
  const points = [];
  let total = 0;
  let peak = 0;
  for (const [t, delta] of steps) {
    total += delta;
    peak = Math.max(peak, total);
    points.push([t, total]);
  }
  const W = 640, H = 220, L = 48, R = 16, T = 16, B = 36;
  const t0 = points[0][0];
  const t1 = Math.max(points[points.length - 1][0], t0 + 1000);
  const top = Math.max(peak, v.max_redemptions || 0, 1);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (n) => H - B - (n / top) * (H - T - B);
  let d = `M ${x(t0).toFixed(1)} ${y(0).toFixed(1)}`;
  for (const [t, n] of points) d += ` H ${x(t).toFixed(1)} V ${y(n).toFixed(1)}`;
  d += ` H ${x(t1).toFixed(1)}`;
  const step = top <= 6 ? 1 : Math.ceil(top / 4);
  const ticks = [];
  for (let n = 0; n < top; n += step) ticks.push(n);
  ticks.push(top);
  const summary =
    `${plural(total, "redemption", "redemptions")} now (net of reversals), ` +
    `from ${formatTime(new Date(t0).toISOString())} to ${formatTime(new Date(t1).toISOString())}` +
    (v.max_redemptions > 0 ? `; cap ${v.max_redemptions}.` : "; no cap.") +
    (truncated ? " Only the first 20,000 redemptions are drawn." : "");
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "chart-svg-title chart-svg-desc", class: "chart", id: "redemption-chart" },
    s("title", { id: "chart-svg-title" }, `Redemptions of ${v.code} over time`),
    s("desc", { id: "chart-svg-desc" }, summary),
    ticks.map((n) => [
      s("line", { x1: L, x2: W - R, y1: y(n), y2: y(n), class: "grid" }),
      s("text", { x: L - 8, y: y(n) + 4, class: "axis", "text-anchor": "end" }, String(n)),
    ]),
    v.max_redemptions > 0 ? s("line", { x1: L, x2: W - R, y1: y(v.max_redemptions), y2: y(v.max_redemptions), class: "cap" }) : null,
    s("path", { d, class: "series" }),
    points.map(([t, n]) => s("circle", { cx: x(t), cy: y(n), r: 3, class: "dot" })),
    s("text", { x: L, y: H - 10, class: "axis" }, formatTime(new Date(t0).toISOString())),
    s("text", { x: W - R, y: H - 10, class: "axis", "text-anchor": "end" }, formatTime(new Date(t1).toISOString())));
  return h("figure", { class: "chart-figure" }, svg, h("figcaption", { id: "chart-summary" }, summary));
}

// ---------------------------------------------------------------------------- revoke

$("detail-revoke").addEventListener("click", () => {
  const code = $("detail-revoke").dataset.code;
  $("revoke-title").textContent = `Revoke voucher ${code}?`;
  $("revoke-text").textContent =
    `Customers can no longer redeem ${code}, and the public page will call it not valid. ` +
    "Its redemptions and history stay. Issuing the code again restores it.";
  $("revoke-dialog").returnValue = "";
  $("revoke-dialog").showModal();
});

$("revoke-dialog").addEventListener("close", async () => {
  const dialog = $("revoke-dialog");
  const code = $("detail-revoke").dataset.code;
  if (dialog.returnValue !== "confirm") {
    $("detail-revoke").focus();
    return;
  }
  const res = await call("revoke", { token: token(), code });
  if (handled(res, `revoke ${code}`)) return;
  if (!res.ok) {
    banner(`${code} was not revoked (${res.status}: ${res.error}).`, false);
    return;
  }
  pendingNotice = `Voucher ${code} revoked.`;
  announce(pendingNotice);
  render();
});

// ---------------------------------------------------------------------------- campaigns

function campaignHash(id) {
  return `#/campaigns/${encodeURIComponent(id)}`;
}

function ofLimit(n, limit, unit = (x) => x.toLocaleString("en-GB")) {
  return limit ? `${unit(n)} of ${unit(limit)}` : `${unit(n)} (no limit)`;
}

function campaignBadge(c) {
  if (c.revoked) return h("span", { class: "badge badge-revoked" }, "Revoked");
  if (!c.active) return h("span", { class: "badge badge-inactive" }, "Inactive");
  if (c.accepting_redemptions) return h("span", { class: "badge badge-active" }, "Active");
  return h("span", { class: "badge badge-full" }, "Not redeeming");
}

async function renderCampaigns(id) {
  show("campaigns");
  document.title = "Campaigns · voucher-ledger console";
  $("campaigns-error").hidden = true;
  replace($("campaigns-body"));
  const res = await call("campaigns", { token: token(), query: { limit: 100 } });
  if (id !== renderId) return;
  if (handled(res, "list the campaigns")) return;
  if (!res.ok) {
    $("campaigns-error").hidden = false;
    $("campaigns-error").textContent = res.error;
    return;
  }
  if (res.body.length === 0) {
    $("campaigns-body").append(h("div", { class: "empty", id: "campaigns-empty" },
      h("p", { class: "empty-title" }, "No campaigns yet."),
      h("p", {}, "Create one below, then generate its codes.")));
  } else {
    $("campaigns-body").append(h("div", { class: "table-wrap" },
      h("table", { id: "campaign-table" },
        h("caption", {}, "Campaigns, newest first"),
        h("thead", {}, h("tr", {},
          ["Campaign", "Id", "Each code gives", "Codes", "Redeemed", "Credit granted", "Status", "Created"].map((l) =>
            h("th", { scope: "col" }, l)))),
        h("tbody", {}, res.body.map((c) =>
          h("tr", { "data-campaign": c.campaign_id },
            h("th", { scope: "row" }, h("a", { href: campaignHash(c.campaign_id) }, c.name)),
            h("td", { class: "code" }, c.campaign_id),
            h("td", { class: c.kind !== "credit" ? "gives" : "num" }, gives(c)),
            h("td", { class: "num" }, c.codes_issued.toLocaleString("en-GB")),
            h("td", { class: "num" }, ofLimit(c.redemptions, c.max_redemptions)),
            h("td", { class: "num" }, ofLimit(c.credit_granted_omr, c.budget_omr, omr)),
            h("td", {}, campaignBadge(c)),
            h("td", {}, time(c.created_at))))))));
  }
  announce(`${plural(res.body.length, "campaign", "campaigns")} shown.`);
  focusHeading($("campaigns-title"));
}

function fieldErrors(slot, res) {
  slot.hidden = false;
  const items = Object.entries(res.fields ?? {}).map(([field, words]) => h("li", {}, `${field}: ${words}`));
  replace(slot, h("p", {}, res.error), items.length ? h("ul", {}, items) : null);
  slot.focus?.();
}

$("c-kind").addEventListener("change", () => {
  const kind = $("c-kind").value;
  for (const el of document.querySelectorAll("#campaign-form [data-ckind]")) {
    const want = el.dataset.ckind;
    el.hidden = !(want === kind || (want === "discount" && kind !== "credit"));
  }
});

$("campaign-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("campaign-form-error").hidden = true;
  const kind = $("c-kind").value;
  const discount = kind !== "credit";
  const applies = APPLIES.filter((a) => $(`c-applies-${a}`).checked);
  const body = {
    name: $("c-name").value.trim(),
    description: $("c-description").value,
    kind: discount ? kind : undefined,
    credit_omr: discount ? undefined : numberField($("c-credit").value),
    percent_off: kind === "percent_off" ? numberField($("c-percent").value) : undefined,
    amount_off_omr: kind === "amount_off" ? numberField($("c-amount-off").value) : undefined,
    applies_to: discount && applies.length ? applies : undefined,
    duration: discount ? $("c-duration").value.trim() || undefined : undefined,
    max_redemptions: numberField($("c-max").value),
    budget_omr: numberField($("c-budget").value),
    code_max_redemptions: numberField($("c-code-max").value),
    starts_at: instantField($("c-starts").value),
    expires_at: instantField($("c-expires").value),
    plans: plansField($("c-plans").value),
  };
  for (const key of Object.keys(body)) if (body[key] === undefined || body[key] === null) delete body[key];
  const json = JSON.stringify(body);
  $("campaign-submit").disabled = true;
  const res = await call("createCampaign", { token: token(), body, headers: { "Idempotency-Key": idempotencyKey(json) } });
  $("campaign-submit").disabled = false;
  if (handled(res, "create the campaign", false)) return;
  unanswered = null;
  if (!res.ok) {
    fieldErrors($("campaign-form-error"), res);
    return;
  }
  $("campaign-form").reset();
  pendingNotice = `Campaign “${res.body.name}” created (${res.body.campaign_id}). Generate its codes below.`;
  announce(pendingNotice);
  window.location.hash = campaignHash(res.body.campaign_id);
});

/** Cumulative figures by hour as an SVG step line, with the limit dashed (if any). */
function limitChart({ id, title, points, limit, unit }) {
  if (points.length === 0) {
    return h("p", { class: "empty", id: `${id}-empty` }, "No redemptions yet: the chart starts with the first one.");
  }
  const W = 640, H = 200, L = 64, R = 16, T = 16, B = 36;
  const t0 = Date.parse(points[0][0]);
  const t1 = Math.max(Date.parse(points[points.length - 1][0]) + 3600_000, t0 + 3600_000);
  const peak = Math.max(...points.map(([, n]) => n));
  const top = Math.max(peak, limit || 0, 1);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (n) => H - B - (n / top) * (H - T - B);
  let d = `M ${x(t0).toFixed(1)} ${y(0).toFixed(1)}`;
  for (const [at, n] of points) d += ` H ${x(Date.parse(at)).toFixed(1)} V ${y(n).toFixed(1)}`;
  d += ` H ${x(t1).toFixed(1)}`;
  const last = points[points.length - 1][1];
  const summary = `${unit(last)} by ${formatTime(points[points.length - 1][0])}` +
    (limit ? `, of a limit of ${unit(limit)}.` : ", no limit.");
  return h("figure", { class: "chart-figure" },
    s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${id}-title ${id}-desc`, class: "chart", id },
      s("title", { id: `${id}-title` }, title),
      s("desc", { id: `${id}-desc` }, summary),
      [0, top].map((n) => [
        s("line", { x1: L, x2: W - R, y1: y(n), y2: y(n), class: "grid" }),
        s("text", { x: L - 8, y: y(n) + 4, class: "axis", "text-anchor": "end" }, unit(n)),
      ]),
      limit ? s("line", { x1: L, x2: W - R, y1: y(limit), y2: y(limit), class: "cap" }) : null,
      s("path", { d, class: "series" }),
      s("text", { x: L, y: H - 10, class: "axis" }, formatTime(new Date(t0).toISOString())),
      s("text", { x: W - R, y: H - 10, class: "axis", "text-anchor": "end" }, formatTime(new Date(t1).toISOString()))),
    h("figcaption", { id: `${id}-summary` }, summary));
}

/** How much of a limit is taken: a labelled meter, or only the figure when there is no limit. */
function limitMeter(id, label, value, max, text) {
  if (!max) {
    return h("div", {}, h("p", { class: "meter-label" }, label), h("p", { class: "hint", id: `${id}-text` }, text));
  }
  return h("div", {},
    h("label", { for: id }, label),
    h("meter", { id, min: 0, max, value, low: max * 0.8, high: max * 0.95, optimum: 0 }, text),
    h("p", { class: "hint", id: `${id}-text` }, text));
}

let shownCampaign = null;

async function renderCampaign(route, id) {
  show("campaign");
  const cid = route.id;
  document.title = `Campaign ${cid} · voucher-ledger console`;
  $("campaign-title").textContent = `Campaign ${cid}`;
  $("campaign-revoke").hidden = true;
  $("campaign-csv").hidden = true;
  $("generate-panel").hidden = true;
  $("generate-error").hidden = true;
  replace($("generate-result"));
  replace($("campaign-body"));
  const res = await call("campaign", { token: token(), campaignId: cid });
  if (id !== renderId) return;
  if (handled(res, `load campaign ${cid}`)) return;
  if (!res.ok) {
    replace($("campaign-body"), h("div", { class: "empty", id: "campaign-empty" },
      h("p", { class: "empty-title" }, `There is no campaign ${cid} (${res.status}: ${res.error}).`),
      h("p", {}, h("a", { href: "#/campaigns" }, "Back to the campaigns"))));
    focusHeading($("campaign-title"));
    return;
  }
  const c = res.body;
  shownCampaign = c;
  $("campaign-title").textContent = `${c.name} (${c.campaign_id})`;
  $("campaign-revoke").hidden = c.revoked;
  $("campaign-csv").hidden = false;
  $("generate-panel").hidden = c.revoked;
  const timeline = c.timeline;
  replace($("campaign-body"),
    h("div", { class: "limits", id: "campaign-limits" },
      limitMeter("meter-cap", "Redemptions", c.redemptions, c.max_redemptions,
        ofLimit(c.redemptions, c.max_redemptions)),
      limitMeter("meter-budget", "Credit granted", c.credit_granted_omr, c.budget_omr,
        ofLimit(c.credit_granted_omr, c.budget_omr, omr))),
    h("dl", { class: "facts", id: "campaign-facts" }, [
      ["Status", campaignBadge(c)],
      ["Codes issued", c.codes_issued.toLocaleString("en-GB")],
      ["Each code gives", c.kind !== "credit" ? h("span", { id: "campaign-discount" }, c.summary) : `${omr(c.credit_omr)} of credit`],
      ["Redemptions per code", c.code_max_redemptions ? String(c.code_max_redemptions) : "Unlimited"],
      ["Description", c.description || "—"],
      ["Valid from", c.starts_at ? time(c.starts_at) : "From its creation"],
      ["Valid until", c.expires_at ? time(c.expires_at) : "No end"],
      ["Plans", c.plans ? c.plans.join(", ") : "Any"],
      ["Created", time(c.created_at)],
    ].map(([label, value]) => h("div", {}, h("dt", {}, label), h("dd", {}, value)))),
    h("section", { class: "panel", "aria-labelledby": "campaign-chart-title" },
      h("h2", { id: "campaign-chart-title" }, "Redemptions over time, against the cap"),
      limitChart({
        id: "campaign-chart",
        title: `Redemptions of campaign ${c.campaign_id} by hour`,
        points: timeline.map((p) => [p.at, p.redemptions]),
        limit: c.max_redemptions,
        unit: (n) => n.toLocaleString("en-GB"),
      })),
    h("section", { class: "panel", "aria-labelledby": "budget-chart-title" },
      h("h2", { id: "budget-chart-title" }, "Credit granted over time, against the budget"),
      limitChart({
        id: "budget-chart",
        title: `Credit granted by campaign ${c.campaign_id} by hour`,
        points: timeline.map((p) => [p.at, p.credit_granted_baisa / 1000]),
        limit: c.budget_omr,
        unit: (n) => omr(Math.floor(n)),
      })));
  focusHeading($("campaign-title"));
}

$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const c = shownCampaign;
  if (!c) return;
  $("generate-error").hidden = true;
  const body = { count: numberField($("g-count").value) };
  const prefix = $("g-prefix").value.trim();
  if (prefix) body.prefix = prefix;
  const json = JSON.stringify([c.campaign_id, body]);
  $("generate-submit").disabled = true;
  const res = await call("generateCodes", {
    token: token(), campaignId: c.campaign_id, body, headers: { "Idempotency-Key": idempotencyKey(json) },
  });
  $("generate-submit").disabled = false;
  if (handled(res, "generate the codes", false)) return;
  unanswered = null;
  if (!res.ok) {
    fieldErrors($("generate-error"), res);
    return;
  }
  const sample = res.body.codes.slice(0, 10);
  pendingNotice = `${plural(res.body.count, "code", "codes")} generated. Download the CSV for all of them.`;
  await render();
  replace($("generate-result"),
    h("p", { id: "generated-count" }, `${plural(res.body.count, "new code", "new codes")}, the first ${sample.length}:`),
    h("ul", { class: "codes-sample", id: "generated-codes" }, sample.map((code) => h("li", { class: "code" }, code))));
  announce(`${plural(res.body.count, "code", "codes")} generated.`);
});

$("campaign-csv").addEventListener("click", async () => {
  const c = shownCampaign;
  if (!c) return;
  $("campaign-csv").disabled = true;
  const res = await call("codesCsv", { token: token(), campaignId: c.campaign_id, text: true });
  $("campaign-csv").disabled = false;
  if (handled(res, "download the codes")) return;
  if (!res.ok) {
    banner(`The codes could not be downloaded (${res.status}: ${res.error}).`, false);
    return;
  }
  const url = URL.createObjectURL(new Blob([res.body], { type: "text/csv" }));
  const link = h("a", { href: url, download: `campaign-${c.campaign_id}-codes.csv`, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  announce("The codes' CSV is downloading.");
});

$("campaign-revoke").addEventListener("click", () => {
  const c = shownCampaign;
  if (!c) return;
  $("campaign-revoke-title").textContent = `Revoke campaign ${c.name}?`;
  $("campaign-revoke-text").textContent =
    `None of its ${plural(c.codes_issued, "code", "codes")} will redeem any more, and the public page ` +
    "will call them not valid. Its redemptions, figures and history stay.";
  $("campaign-revoke-dialog").returnValue = "";
  $("campaign-revoke-dialog").showModal();
});

$("campaign-revoke-dialog").addEventListener("close", async () => {
  const c = shownCampaign;
  if ($("campaign-revoke-dialog").returnValue !== "confirm" || !c) {
    $("campaign-revoke").focus();
    return;
  }
  const res = await call("revokeCampaign", { token: token(), campaignId: c.campaign_id });
  if (handled(res, `revoke campaign ${c.campaign_id}`)) return;
  if (!res.ok) {
    banner(`Campaign ${c.campaign_id} was not revoked (${res.status}: ${res.error}).`, false);
    return;
  }
  pendingNotice = `Campaign ${c.name} revoked: its codes no longer redeem.`;
  announce(pendingNotice);
  render();
});

// ---------------------------------------------------------------------------- reports

/** A day of the date inputs (YYYY-MM-DD) as the instant its midnight is in this browser's
 *  time zone, which the page names. */
function dayStart(day) {
  return day ? new Date(`${day}T00:00:00`).toISOString() : undefined;
}

function reportQuery(route) {
  return { from: dayStart(route.from), to: dayStart(route.to) };
}

function money(baisa) {
  const amount = (baisa / 1000).toLocaleString("en-GB", { minimumFractionDigits: 3, maximumFractionDigits: 3 });
  return `${amount} OMR`;
}

const REPORT_COLUMNS = [
  ["Codes issued", (r) => r.codes_issued.toLocaleString("en-GB")],
  ["Redemptions", (r) => r.redemptions.toLocaleString("en-GB")],
  ["Credit granted", (r) => money(r.credit_granted_baisa)],
  ["Credit spent", (r) => money(r.credit_spent_baisa)],
  ["Credit expired", (r) => money(r.credit_expired_baisa)],
  ["Discount", (r) => money(r.discount_baisa)],
  ["Orders", (r) => r.orders.toLocaleString("en-GB")],
  ["Revenue (Stripe)", (r) => money(r.revenue_baisa)],
];

function reportLine(r) {
  if (r.scope === "campaign") {
    return h("a", { href: campaignHash(r.campaign_id) }, r.name ? `${r.name} (${r.campaign_id})` : r.campaign_id);
  }
  return r.scope === "vouchers" ? "Single vouchers" : "Orders without a code";
}

let shownReport = null;

async function renderReports(route, id) {
  show("reports");
  document.title = "Reports · voucher-ledger console";
  $("reports-error").hidden = true;
  $("r-from").value = route.from;
  $("r-to").value = route.to;
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  $("r-window-hint").textContent = `Days start at midnight in ${zone}. Empty: no bound.`;
  replace($("reports-body"));
  shownReport = null;
  const res = await call("report", { token: token(), query: reportQuery(route) });
  if (id !== renderId) return;
  if (handled(res, "read the reports")) return;
  if (!res.ok) {
    $("reports-error").hidden = false;
    $("reports-error").textContent = res.error;
    return;
  }
  shownReport = route;
  const body = res.body;
  const row = (r, head) => h("tr", { "data-line": r.campaign_id ?? r.scope },
    h("th", { scope: "row" }, head),
    REPORT_COLUMNS.map(([, cell]) => h("td", { class: "num" }, cell(r))));
  $("reports-body").append(h("div", { class: "table-wrap" },
    h("table", { id: "report-table" },
      h("caption", {}, `Per campaign, then single vouchers and orders without a code; Sovereign ${body.sovereign || "(unnamed)"}`),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Line"),
        REPORT_COLUMNS.map(([label]) => h("th", { scope: "col" }, label)))),
      h("tbody", {}, body.rows.map((r) => row(r, reportLine(r)))),
      h("tfoot", {}, row(body.totals, `Total, ${body.sovereign || "this Sovereign"}`)))));
  announce(`${plural(body.rows.length, "line", "lines")} shown.`);
  focusHeading($("reports-title"));
}

$("reports-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  if ($("r-from").value) params.set("from", $("r-from").value);
  if ($("r-to").value) params.set("to", $("r-to").value);
  const search = params.toString();
  const hash = search ? `#/reports?${search}` : "#/reports";
  if (window.location.hash === hash) render();
  else window.location.hash = hash;
});

$("reports-csv").addEventListener("click", async () => {
  const route = shownReport ?? currentRoute();
  $("reports-csv").disabled = true;
  const res = await call("report", {
    token: token(), query: reportQuery(route), headers: { Accept: "text/csv" }, text: true,
  });
  $("reports-csv").disabled = false;
  if (handled(res, "download the report")) return;
  if (!res.ok) {
    banner(`The report could not be downloaded (${res.status}: ${res.error}).`, false);
    return;
  }
  const url = URL.createObjectURL(new Blob([res.body], { type: "text/csv" }));
  const name = `campaign-report${route.from ? `-from-${route.from}` : ""}${route.to ? `-to-${route.to}` : ""}.csv`;
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  announce("The report's CSV is downloading.");
});

// ---------------------------------------------------------------------------- global vouchers

// Whether this serve is the hub (issue #22): its global vouchers answer 200, elsewhere 404.
// Asked once per sign-in; the navigation shows "Global vouchers" only at the hub.
let hubProbe = null;

function probeHub() {
  if (hubProbe) return;
  hubProbe = call("globals", { token: token(), query: { limit: 1 } }).then((res) => {
    $("nav-globals-item").hidden = res.status !== 200;
    if (res.status !== 200 && res.status !== 404) hubProbe = null; // unknown yet: ask again
  });
}

function count(n) {
  return Number(n).toLocaleString("en-GB");
}

function globalBadge(g) {
  if (g.revoked) return h("span", { class: "badge badge-revoked" }, "Revoked");
  if (g.redeemed >= g.max_redemptions) return h("span", { class: "badge badge-full" }, "Cap used");
  return h("span", { class: "badge badge-active" }, "Live");
}

function sovereignRows(g) {
  if (g.sovereigns.length === 0) {
    return h("p", { class: "empty", id: `global-${g.code}-none` }, "No Sovereign holds a share yet: the whole cap is in the pool.");
  }
  return h("div", { class: "table-wrap" },
    h("table", { class: "global-shares", id: `global-${g.code}-shares` },
      h("caption", {}, `Each Sovereign's share of ${g.code}`),
      h("thead", {}, h("tr", {},
        ["Sovereign", "Allotted", "Used", "Unused", "Released", "Asked back"].map((l) =>
          h("th", { scope: "col" }, l)))),
      h("tbody", {}, g.sovereigns.map((x) =>
        h("tr", { "data-sovereign": x.sovereign },
          h("th", { scope: "row" }, x.sovereign),
          h("td", { class: "num" }, count(x.allotted)),
          h("td", { class: "num" }, count(x.redeemed)),
          h("td", { class: "num" }, count(x.unused)),
          h("td", { class: "num" }, count(x.released)),
          h("td", { class: "num" }, count(x.requested))))),
      h("tfoot", {}, h("tr", {},
        h("th", { scope: "row" }, "Pool (no Sovereign holds it)"),
        h("td", { class: "num", id: `global-${g.code}-pool` }, count(g.pool)),
        h("td", { colspan: 4 }, "")))));
}

function globalPanel(g) {
  const used = `${count(g.redeemed)} of ${count(g.max_redemptions)}`;
  const actions = g.revoked ? null : h("div", { class: "toolbar-actions" },
    h("button", { type: "button", class: "recall", "data-code": g.code, "aria-label": `Ask ${g.code}'s unused slots back` }, "Recall…"),
    h("button", { type: "button", class: "danger revoke-global", "data-code": g.code, "aria-label": `Revoke ${g.code}` }, "Revoke…"));
  return h("section", { class: "panel global", id: `global-${g.code}`, "data-code": g.code, "aria-labelledby": `global-${g.code}-title` },
    h("div", { class: "toolbar" },
      h("h2", { id: `global-${g.code}-title`, class: "code" }, g.code),
      actions),
    h("div", { class: "limits" },
      limitMeter(`global-${g.code}-meter`, "Cap used across all Sovereigns", g.redeemed, g.max_redemptions, used)),
    h("dl", { class: "facts" }, [
      ["Status", globalBadge(g)],
      ["Gives", gives(g)],
      ["Share per Sovereign", `${count(g.share)} slots at a time`],
      ["Description", g.description || "—"],
      ["Valid until", g.expires_at ? time(g.expires_at) : "No end"],
      ["Issued", time(g.created_at)],
    ].map(([label, value]) => h("div", {}, h("dt", {}, label), h("dd", {}, value)))),
    sovereignRows(g));
}

let shownGlobals = new Map();

async function renderGlobals(id) {
  show("globals");
  document.title = "Global vouchers · voucher-ledger console";
  $("globals-error").hidden = true;
  replace($("globals-body"));
  const res = await call("globals", { token: token(), query: { limit: 100 } });
  if (id !== renderId) return;
  if (handled(res, "list the global vouchers")) return;
  if (!res.ok) {
    $("globals-error").hidden = false;
    $("globals-error").textContent = res.status === 404
      ? `This service is not the hub: ${res.error}.`
      : res.error;
    focusHeading($("globals-title"));
    return;
  }
  shownGlobals = new Map(res.body.map((g) => [g.code, g]));
  if (res.body.length === 0) {
    $("globals-body").append(h("div", { class: "empty", id: "globals-empty" },
      h("p", { class: "empty-title" }, "No global vouchers yet."),
      h("p", {}, "Issue one at the hub through the API.")));
  } else {
    $("globals-body").append(...res.body.map(globalPanel));
  }
  announce(`${plural(res.body.length, "global voucher", "global vouchers")} shown.`);
  focusHeading($("globals-title"));
}

let actingOn = null;

$("globals-body").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-code]");
  if (!button) return;
  const g = shownGlobals.get(button.dataset.code);
  if (!g) return;
  actingOn = { g, button };
  if (button.classList.contains("revoke-global")) {
    $("global-revoke-title").textContent = `Revoke ${g.code} everywhere?`;
    $("global-revoke-text").textContent =
      "Every Sovereign stops redeeming it once the revocation reaches it (a Sovereign cut off " +
      "from the hub: when its link is back) and gives its unused slots back. Redemptions so far stay.";
    $("global-revoke-dialog").returnValue = "";
    $("global-revoke-dialog").showModal();
    return;
  }
  const holders = g.sovereigns.filter((x) => x.allotted > 0);
  replace($("recall-sovereign"), holders.map((x) =>
    h("option", { value: x.sovereign }, `${x.sovereign} (${count(x.unused)} unused)`)));
  $("recall-text").textContent = `${g.code}: slots go back to the pool (now ${count(g.pool)}) once the Sovereign answers.`;
  $("recall-error").hidden = true;
  $("recall-slots").value = "";
  $("recall-dialog").returnValue = "";
  $("recall-dialog").showModal();
});

$("global-revoke-dialog").addEventListener("close", async () => {
  const acting = actingOn;
  if ($("global-revoke-dialog").returnValue !== "confirm" || !acting) {
    acting?.button.focus();
    return;
  }
  const { g } = acting;
  const res = await call("revokeGlobal", { token: token(), code: g.code });
  if (handled(res, `revoke ${g.code}`)) return;
  if (!res.ok) {
    banner(`${g.code} was not revoked (${res.status}: ${res.error}).`, false);
    return;
  }
  pendingNotice = `Global voucher ${g.code} revoked: each Sovereign stops redeeming it once the revocation reaches it.`;
  announce(pendingNotice);
  render();
});

$("recall-form").addEventListener("submit", async (event) => {
  if (event.submitter?.value !== "confirm") return; // Cancel closes the dialog
  event.preventDefault();
  const acting = actingOn;
  if (!acting) return;
  const { g } = acting;
  const body = { sovereign: $("recall-sovereign").value, slots: numberField($("recall-slots").value) };
  if (body.slots === undefined) delete body.slots;
  const json = JSON.stringify([g.code, body]);
  $("recall-confirm").disabled = true;
  const res = await call("recallShare", {
    token: token(), code: g.code, body, headers: { "Idempotency-Key": idempotencyKey(json) },
  });
  $("recall-confirm").disabled = false;
  if (res.status === 401 || res.status === 403 || res.status === 0 || res.status === 429 || res.status >= 500) {
    $("recall-dialog").close();
    handled(res, `ask ${g.code}'s slots back`, false);
    return;
  }
  unanswered = null;
  if (!res.ok) {
    fieldErrors($("recall-error"), res);
    return;
  }
  $("recall-dialog").close();
  pendingNotice = `Asked ${body.sovereign} for ${plural(body.slots, "slot", "slots")} of ${g.code} back.`;
  announce(pendingNotice);
  render();
});

$("recall-dialog").addEventListener("close", () => {
  if ($("recall-dialog").returnValue !== "confirm") actingOn?.button.focus();
});

// ---------------------------------------------------------------------------- start

window.addEventListener("hashchange", () => {
  if (window.location.hash.startsWith("#token=")) takeTokenFromFragment();
  render();
});
takeTokenFromFragment();
render();
