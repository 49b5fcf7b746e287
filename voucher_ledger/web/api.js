// The only module that talks to the service. Every call goes through ENDPOINTS: a method and a
// path template that the REST API documents in /openapi.json (the tests check both, statically
// and by recording every request the browser makes).

export const ENDPOINTS = Object.freeze({
  list: ["GET", "billing/vouchers/list"],
  issue: ["POST", "billing/vouchers/issue"],
  revoke: ["DELETE", "billing/vouchers/revoke/{code}"],
  detail: ["GET", "billing/vouchers/{code}"],
  history: ["GET", "billing/vouchers/{code}/history"],
  redemptions: ["GET", "billing/vouchers/{code}/redemptions"],
  preview: ["POST", "billing/vouchers/redeem-preview"],
  campaigns: ["GET", "billing/campaigns"],
  createCampaign: ["POST", "billing/campaigns"],
  campaign: ["GET", "billing/campaigns/{campaign_id}"],
  revokeCampaign: ["DELETE", "billing/campaigns/{campaign_id}"],
  generateCodes: ["POST", "billing/campaigns/{campaign_id}/codes"],
  codesCsv: ["GET", "billing/campaigns/{campaign_id}/codes.csv"],
  report: ["GET", "billing/reports/campaigns"],
  globals: ["GET", "billing/global-vouchers"],
  revokeGlobal: ["POST", "billing/global-vouchers/{code}/revoke"],
  recallShare: ["POST", "billing/global-vouchers/{code}/recall"],
});

// The API sits next to the page (a relative root, so a proxy's path prefix is kept).
const apiRoot = new URL(
  document.querySelector('meta[name="api-root"]')?.getAttribute("content") ?? "./",
  window.location.href,
);

/** Seconds from a Retry-After header (delta-seconds or an HTTP date), or null. */
export function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - Date.now()) / 1000));
}

/**
 * Call one documented endpoint. Never throws: the answer is
 * {status, ok, body, error, fields, headers, retryAfter}; status 0 means the service could not
 * be reached. ``fields``: a 400's field -> plain words (every error of the body), or null.
 * ``text``: a 2xx body is kept as text (a CSV), not read as JSON.
 */
export async function call(name, { code, campaignId, query, body, token, headers: extra, text: asText } = {}) {
  const [method, template] = ENDPOINTS[name];
  const path = template
    .replace("{code}", encodeURIComponent(code ?? ""))
    .replace("{campaign_id}", encodeURIComponent(campaignId ?? ""));
  const url = new URL(path, apiRoot);
  for (const [key, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = { Accept: "application/json", ...extra };
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, credentials: "omit", cache: "no-store", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    return {
      status: 0, ok: false, body: null, error: "the service could not be reached", fields: null,
      headers: new Headers(), retryAfter: null,
    };
  }
  let data = null;
  try {
    const text = await response.text();
    data = asText && response.ok ? text : text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  const error = data && typeof data.error === "string" ? data.error : `HTTP ${response.status}`;
  return {
    status: response.status,
    ok: response.ok,
    body: data,
    error,
    fields: data && !response.ok && data.fields && typeof data.fields === "object" ? data.fields : null,
    headers: response.headers,
    retryAfter: parseRetryAfter(response.headers.get("Retry-After")),
  };
}
