// The public redeem page, /redeem?code=X, as the seed's marketplace page behaved: the code is
// trimmed and upper-cased, previewed without any Authorization header, and one of three outcomes
// is shown (valid with its credit and description; campaign ended; not valid). A valid code can
// be kept for checkout in localStorage under both keys the seed's checkout steps read:
// "sme-pending-voucher" (the first marketplace) and "org-pending-voucher" (the later one).
// Without a code the page shows a manual entry form, which writes ?code= and validates.

import { call } from "./api.js";
import { formatTime, h, omr, replace } from "./ui.js";

export const PENDING_VOUCHER_KEYS = ["sme-pending-voucher", "org-pending-voucher"];

const $ = (id) => document.getElementById(id);
const continueUrl = document.querySelector('meta[name="continue-url"]')?.getAttribute("content") ?? "";
let checking = 0;

/** What the code gives, as the customer reads it: "25 OMR credit", "20% off add-ons for
 *  3 months" (a discount's summary, from the preview). */
function gives(v) {
  return v.kind && v.kind !== "credit" && v.summary ? v.summary : `${omr(v.credit_omr)} credit`;
}

function codeFromUrl() {
  return (new URLSearchParams(window.location.search).get("code") ?? "").trim().toUpperCase();
}

function card(kind, title, ...body) {
  const heading = h("h2", { id: "result-title", tabindex: "-1" }, title);
  return h("div", { class: `card card-${kind}`, id: "outcome", "data-outcome": kind }, heading, ...body);
}

function seconds(n) {
  return n === 1 ? "1 second" : `${n} seconds`;
}

function show(result, focus = true) {
  replace($("result"), result);
  $("form-heading").textContent = result ? "Check another code" : "Enter your voucher code";
  if (focus) $("result-title")?.focus();
}

function useButton(voucher) {
  const button = h("button", { type: "button", class: "primary", id: "use-code" }, "Use this code at checkout");
  button.addEventListener("click", () => {
    for (const key of PENDING_VOUCHER_KEYS) localStorage.setItem(key, voucher.code);
    if (continueUrl) {
      window.location.assign(continueUrl);
      return;
    }
    button.replaceWith(
      h("p", { class: "saved", id: "saved", role: "status", tabindex: "-1" },
        `Saved: ${voucher.code} will be filled in at checkout.`),
    );
    $("saved").focus();
  });
  return button;
}

async function check(code) {
  const id = ++checking;
  $("code").value = code;
  document.title = `${code} · Redeem a voucher`;
  replace($("result"), h("p", { class: "checking", id: "checking" }, `Checking ${code}…`));
  const res = await call("preview", { body: { code } });
  if (id !== checking) return; // a newer check replaced this one
  const v = res.body ?? {};
  if (res.status === 200) {
    show(card("valid", `${v.code} is valid`,
      h("p", { class: "amount" }, gives(v)),
      v.description ? h("p", { class: "description" }, v.description) : null,
      v.expires_at ? h("p", { class: "window", id: "valid-until" }, `Valid until ${formatTime(v.expires_at)}.`) : null,
      useButton(v)));
  } else if (res.status === 410 && v.reason === "not_started") {
    show(card("scheduled", "This code is not valid yet",
      h("p", { id: "starts-on" }, `${v.code} (${gives(v)}) starts on ${formatTime(v.starts_at)}.`)));
  } else if (res.status === 410 && v.reason === "share_exhausted") {
    // a global code whose share on this Sovereign is used up until the hub tops it up
    show(card("scheduled", "This code is busy right now",
      h("p", { id: "share-exhausted" }, `${v.code} (${gives(v)}) is used up here for the moment. Try again in a few minutes.`)));
  } else if (res.status === 410) {
    const ended = v.reason === "expired" && v.expires_at
      ? h("p", { id: "ended-on" }, `${v.code} (${gives(v)}) ended on ${formatTime(v.expires_at)}.`)
      : h("p", {}, `${v.code} (${gives(v)}) no longer accepts redemptions.`);
    show(card("ended", "This campaign has ended", ended));
  } else if (res.status === 404 || res.status === 400) {
    // 400: not a well-formed code at all. A customer needs to know it cannot work, not the
    // validation rule it breaks.
    show(card("invalid", "This code is not valid",
      h("p", {}, res.status === 400 ? `${code || "This"} is not a valid voucher code. Check the spelling and try again.` : `There is no voucher ${code}. Check the spelling and try again.`)));
  } else if (res.status === 429) {
    const wait = res.retryAfter ?? 60;
    show(card("limited", "Too many attempts",
      h("p", {}, `Codes were checked too often from this address. Try again in ${seconds(wait)}.`)));
  } else {
    const retry = h("button", { type: "button", id: "retry" }, "Try again");
    retry.addEventListener("click", () => check(code));
    show(card("error", "Could not validate the voucher right now",
      h("p", {}, "The voucher service did not answer. Please try again in a moment."), retry));
  }
}

$("redeem-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const code = $("code").value.trim().toUpperCase();
  if (!code) {
    $("form-error").hidden = false;
    $("form-error").textContent = "Enter a voucher code.";
    $("code").setAttribute("aria-invalid", "true");
    $("code").setAttribute("aria-describedby", "form-error code-hint");
    $("code").focus();
    return;
  }
  $("form-error").hidden = true;
  $("code").removeAttribute("aria-invalid");
  $("code").setAttribute("aria-describedby", "code-hint");
  const url = new URL(window.location.href);
  url.searchParams.set("code", code);
  history.pushState(null, "", url);
  check(code);
});

function start() {
  const code = codeFromUrl();
  if (code) {
    check(code);
  } else {
    checking++;
    document.title = "Redeem a voucher";
    $("code").value = "";
    show(null, false);
  }
}

window.addEventListener("popstate", start);
start();
