// The public JSON API, and the helpers every section shares.

/** An API answer that was not 2xx: `message` is the server's readable {"detail"}. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

const STATUS_HINTS = {
  413: "too large", 415: "unsupported file", 422: "invalid input", 429: "busy, try again shortly",
  503: "server starting, try again shortly",
};

/** fetch + JSON; throws ApiError with the server's detail (or a readable fallback). */
export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "Cannot reach the server. Check your connection and try again.");
  }
  if (response.status === 204) return null;
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    let detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
    const hint = STATUS_HINTS[response.status];
    if (response.status === 429 && response.headers.get("Retry-After")) {
      detail += ` (retry in ${response.headers.get("Retry-After")} s)`;
    }
    throw new ApiError(response.status, hint ? `Error ${response.status} (${hint}): ${detail}` : `Error ${response.status}: ${detail}`);
  }
  return body;
}

export const $ = (id) => document.getElementById(id);

/** Show (or clear, with "") an error next to the control that caused it; the element has role="alert". */
export function showError(id, err) {
  const el = $(id);
  if (!err) { el.textContent = ""; return; }
  el.textContent = err instanceof Error ? err.message : String(err);
}

export function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

export const percent = (x) => `${(x * 100).toFixed(1)} %`;

/** Render [{label, score}] as a list of horizontal bars. */
export function renderBars(list, top) {
  list.replaceChildren(...top.map((item, i) => {
    const li = document.createElement("li");
    if (i === 0) li.className = "top";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = item.label;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${Math.max(0, Math.min(1, item.score)) * 100}%`;
    fill.style.display = "block";
    track.append(fill);
    const num = document.createElement("span");
    num.className = "num";
    num.textContent = percent(item.score);
    li.append(name, track, num);
    li.dataset.label = item.label;
    return li;
  }));
}

let modelsPromise;
/** GET /v1/models once, shared by every section. */
export function models() {
  modelsPromise ??= api("/v1/models").then((body) => body.models);
  return modelsPromise;
}
