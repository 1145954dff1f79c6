// The public JSON API, and the helpers every section shares.

/** An API answer that was not 2xx (status 0: no answer at all). `detail` is the server's own {"detail"};
 *  `message` is the sentence shown to people (see explain()). */
export class ApiError extends Error {
  constructor(status, detail, { body = null, headers = null } = {}) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.body = body;
    this.retryAfter = headers?.get("Retry-After") ?? null;
    this.requestId = headers?.get("X-Request-ID") ?? null;
  }
}

/** fetch + JSON; throws ApiError (status 0 when the server cannot be reached). `timeoutMs` aborts a hung call. */
export async function api(path, { timeoutMs, ...options } = {}) {
  let response;
  if (timeoutMs) {
    const signals = [AbortSignal.timeout(timeoutMs), options.signal].filter(Boolean);
    options.signal = signals.length > 1 ? AbortSignal.any(signals) : signals[0];
  }
  try {
    response = await fetch(path, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, err.name === "TimeoutError" ? `no answer within ${timeoutMs / 1000} s`
      : `network error: ${err.message}`);
  }
  if (response.status === 204) return null;
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
    throw new ApiError(response.status, detail, { body, headers: response.headers });
  }
  return body;
}

export const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- numbers people read

export const percent = (x) => `${(x * 100).toFixed(1)} %`;
export const wholePercent = (x) => `${Math.round(x * 100)} %`;
/** Rounded down: a score under a threshold of 83 % never reads "83 %" (82.7 % -> "82 %"). */
export const floorPercent = (x) => `${Math.floor(x * 100 + 1e-9)} %`;

const MB = 1024 * 1024; // the server's limit is in MiB (MAX_UPLOAD_BYTES 10485760 = 10 MB)
/** 15204352 -> "14.5 MB"; 10485760 -> "10 MB". */
export function megabytes(bytes) {
  const mb = bytes / MB;
  const text = mb >= 100 ? mb.toFixed(0) : mb < 0.1 ? mb.toFixed(2) : mb.toFixed(1);
  return `${text.replace(/\.0+$/, "")} MB`;
}

/** Seconds -> "a few seconds", "about 40 s", "about 2 min", "about 1 h 20 min". */
export function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  if (seconds < 10) return "a few seconds";
  if (seconds < 55) return `about ${Math.max(10, Math.round(seconds / 5) * 5)} s`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `about ${Math.max(1, minutes)} min`;
  const h = Math.floor(minutes / 60);
  const m = minutes % 60;
  return `about ${h} h${m ? ` ${m} min` : ""}`;
}

// ---------------------------------------------------------------- errors written for people

const FIELD_NAMES = {
  size: "Size", steps: "Steps", style_weight: "Style strength", content_weight: "Content weight",
  tv_weight: "Smoothness", seed: "Seed", style_scale: "Style scale", style_weights: "Blend weights",
  top_k: "The number of answers", text: "The review", texts: "The reviews", image: "The image", images: "The images",
};
const UNITS = { size: " px" };
const RANGE_TYPES = new Set(["greater_than_equal", "less_than_equal", "greater_than", "less_than",
  "int_parsing", "int_from_float", "float_parsing", "finite_number"]);
const FORMATS = "a PNG, JPEG, GIF, BMP or WebP image";

function sentence(text) {
  const t = String(text).trim();
  if (!t) return t;
  return t[0].toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
}

/** "Size must be between 64 and 1024 px." from the API's limits, when it told us (GET /v1/style/options);
 *  "... at least 0." when it has no upper bound. */
export function rangeSentence(field, limits) {
  const range = limits?.[field];
  const name = FIELD_NAMES[field] ?? sentence(field.replace(/_/g, " ")).slice(0, -1);
  const unit = UNITS[field] ?? "";
  const min = typeof range?.min === "number" ? range.min : null;
  const max = typeof range?.max === "number" ? range.max : null;
  if (min !== null && max !== null) return `${name} must be between ${min} and ${max}${unit}.`;
  if (min !== null) return `${name} must be ${range.exclusive_min ? "more than" : "at least"} ${min}${unit}.`;
  if (max !== null) return `${name} must be ${range.exclusive_max ? "less than" : "at most"} ${max}${unit}.`;
  return null;
}

/** Without the API's limits: "Size must be at least 64 px." from pydantic's "greater than or equal to 64". */
function boundSentence(name, field, e) {
  const unit = UNITS[field] ?? "";
  const msg = String(e.msg || "");
  let m = msg.match(/greater than or equal to (-?[\d.e+]+)/);
  if (m) return `${name} must be at least ${m[1]}${unit}.`;
  m = msg.match(/less than or equal to (-?[\d.e+]+)/);
  if (m) return `${name} must be at most ${m[1]}${unit}.`;
  m = msg.match(/greater than (-?[\d.e+]+)/);
  if (m) return `${name} must be more than ${m[1]}${unit}.`;
  m = msg.match(/less than (-?[\d.e+]+)/);
  if (m) return `${name} must be less than ${m[1]}${unit}.`;
  if (/int/.test(e.type)) return `${name} must be a whole number.`;
  return `${name} must be a number.`;
}

function explain422(err, ctx) {
  const errors = Array.isArray(err.body?.errors) ? err.body.errors : [];
  const out = [];
  for (const e of errors) {
    const loc = (e.loc || []).filter((p) => typeof p === "string" && p !== "body" && p !== "query");
    const field = loc[loc.length - 1] ?? "";
    const name = FIELD_NAMES[field] ?? (field ? sentence(field.replace(/_/g, " ")).slice(0, -1) : "The request");
    let text;
    if (field === "content" && e.type === "missing") text = "Choose a content photo first.";
    else if ((field === "style" || field === "style_preset") && e.type === "missing") text = "Pick a painting or upload your own.";
    else if (field === "style_preset") text = "That painting is not available any more: reload the page and pick another.";
    else if (e.type === "blank_text") text = ctx.what === "reviews" ? "Write at least one review." : "Write a review first.";
    else if (e.type === "text_too_long") {
      const m = String(e.msg).match(/(\d+) characters; the limit is (\d+)/);
      const index = (e.loc || []).find((p) => typeof p === "number");
      const which = index !== undefined ? `Review ${index + 1}` : "The review";
      text = m ? `${which} is ${m[1]} characters long; the limit is ${m[2]}.` : `${which} is too long.`;
    } else if (e.type === "too_long" && /at most (\d+) items, not (\d+)/.test(e.msg)) {
      const [, most, given] = e.msg.match(/at most (\d+) items, not (\d+)/);
      text = ctx.what === "reviews" ? `At most ${most} reviews can be classified at once; there are ${given}.`
        : `${name}: at most ${most} at once; there are ${given}.`;
    } else if (e.type === "missing") text = `${name} is missing.`;
    else if (/MAX_JOB_PIXEL_STEPS/.test(e.msg)) text = e.msg; // every value in range, the job too costly: the server says by how much
    else if (RANGE_TYPES.has(e.type)) text = rangeSentence(field, ctx.limits) ?? boundSentence(name, field, e);
    else text = `${name}: ${String(e.msg || "").replace(/^Value error, /, "")}`;
    out.push(sentence(text));
  }
  return [...new Set(out)].join(" ") || "Some of the values are not valid; check them and try again.";
}

/** The sentence a person reads for an error. ctx: {what: "photo" | "drawing" | "painting" | "review" | "job",
 *  limits: the API's form limits, noun: what was uploaded ("The photo"), plural}. Plain strings are already sentences. */
export function explain(err, ctx = {}) {
  if (!(err instanceof ApiError)) return err instanceof Error ? sentence(err.message) : sentence(err);
  const detail = err.detail || "";
  const what = ctx.what === "drawing" ? "drawing" : ctx.what === "painting" ? "painting" : "picture";
  switch (err.status) {
    case 0:
      return "The server cannot be reached. Check that it is running and that you are online, then try again.";
    case 400:
      if (/no ink|blank|uniform|no strokes|empty/i.test(detail)) {
        return ctx.what === "drawing" ? "No digit found: the drawing looks empty. Draw a digit with a few strokes."
          : `The ${what} is blank: there is nothing in it to recognise.`;
      }
      if (/json|base64/i.test(detail)) return "The request could not be read. Reload the page and try again.";
      return `This ${what} could not be read: the file may be damaged or incomplete. Try another one.`;
    case 404:
      return ctx.what === "job" ? "This job no longer exists: it was deleted, or it expired."
        : "The server does not know this address. Reload the page.";
    case 409: return "The job is not finished yet.";
    case 410: return "This job failed or was cancelled, so it has no result.";
    case 413: {
      let m = detail.match(/is (\d+) bytes; the limit is (\d+) bytes/);
      if (m) return `${ctx.noun ?? "The upload"} ${ctx.plural ? "are" : "is"} ${megabytes(+m[1])}; the limit is ${megabytes(+m[2])}.`;
      m = detail.match(/limit of (\d+) bytes/);
      if (m) return `The upload is over the limit of ${megabytes(+m[1])}.`;
      m = detail.match(/(\d+)x(\d+)/);
      if (m) return `The ${what} is ${m[1]} × ${m[2]} pixels, which is too large. Use a smaller one.`;
      return `The ${what} is too large. Use a smaller one.`;
    }
    case 415: {
      const m = detail.match(/unsupported image format (\w+)/);
      if (m) return `${m[1]} images are not supported. Use ${FORMATS}.`;
      return `This file is not a picture the server can read. Use ${FORMATS}.`;
    }
    case 422: return explain422(err, ctx);
    case 429: { // the server says which cap it is (the whole queue, this key's jobs, event streams) and what to do
      const wait = err.retryAfter ? `try again in ${duration(+err.retryAfter)}` : "try again in a moment";
      return sentence(detail.replace(/\bretry later\b/, wait)) || `Too many requests at once; ${wait}.`;
    }
    case 401: case 403: return "This server needs an API key, which this page cannot send.";
    case 503:
      if (/job store|redis/i.test(detail)) return "Style jobs are unavailable for a moment. Try again in a few seconds.";
      return "The server is still starting up. Try again in a few seconds.";
    case 504: return "The server took too long to answer. Try again.";
    case 507: return "The server has no room left to store new jobs. Try again later.";
    default:
      if (err.status >= 500) return "Something went wrong on the server. Try again; if it keeps happening, tell whoever runs it.";
      return `The server refused the request (HTTP ${err.status}).`;
  }
}

/** What the API said, word for word, for people who use curl: "HTTP 413: request body is ... (request id ...)". */
export function technicalDetail(err) {
  if (!(err instanceof ApiError)) return null;
  const head = err.status ? `HTTP ${err.status}: ` : "No answer from the server: ";
  return head + err.detail + (err.requestId ? ` (X-Request-ID ${err.requestId})` : "");
}

/** Show an error (a sentence, and the API's own detail in a "Details" disclosure), or clear it with null. */
export function showError(id, err, ctx = {}) {
  const el = $(id);
  if (!err) { el.replaceChildren(); delete el.dataset.status; return; }
  const message = Object.assign(document.createElement("span"), { className: "message", textContent: explain(err, ctx) });
  el.replaceChildren(message);
  const detail = technicalDetail(err);
  if (detail) {
    const box = document.createElement("details");
    box.append(Object.assign(document.createElement("summary"), { textContent: "Details" }),
      Object.assign(document.createElement("code"), { textContent: detail }));
    el.append(" ", box);
    el.dataset.status = String(err.status);
  }
}

export function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

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
  modelsPromise.catch(() => { modelsPromise = undefined; }); // a failure is not remembered: the next call asks again
  return modelsPromise;
}

/** The score under which a model's answer is shown as "not sure" (from its calibration), or null. */
export async function lowConfidenceBelow(modelName, task) {
  try {
    const list = await models();
    const m = list.find((x) => x.name === modelName) ?? list.find((x) => x.task === task && x.default);
    const t = m?.calibration?.low_confidence_below;
    return typeof t === "number" && Number.isFinite(t) ? t : null;
  } catch { return null; }
}

const VOWEL = /^[aeiou8]/i; // "an airplane", "an 8"
/** "a cat", "an 8"; sentiment labels stay bare ("positive"). */
export function withArticle(label, task) {
  if (task === "sentiment") return label;
  return `${VOWEL.test(label) ? "an" : "a"} ${label}`;
}

/** The verdict line: confident ("It looks like 7 (99.3 %)") or not ("Not sure: maybe a cat (41 %)").
 *  Returns true when it was shown as not sure. The label itself is in a <strong id=labelId>. */
export function renderVerdict(el, { label, score, labelId, task, threshold, sure, suffix = "" }) {
  const strong = Object.assign(document.createElement("strong"), { textContent: label });
  if (labelId) strong.id = labelId;
  if (task === "sentiment") strong.className = label;
  const unsure = threshold !== null && threshold !== undefined && score < threshold;
  if (unsure) {
    const article = withArticle(label, task).slice(0, -label.length);
    el.replaceChildren(Object.assign(document.createElement("span"), { className: "unsure", textContent: "Not sure:" }),
      ` maybe ${article}`, strong, ` (${floorPercent(score)})${suffix}`);
    el.dataset.confidence = "low";
  } else {
    el.replaceChildren(...sure(strong));
    el.dataset.confidence = "high";
  }
  el.dataset.label = label;
  return unsure;
}

let optionsPromise;
/** GET /v1/style/options once: the style form's defaults and limits, and the upload limit. null when unavailable. */
export function styleOptions() {
  optionsPromise ??= api("/v1/style/options", { timeoutMs: 10_000 }).catch(() => { optionsPromise = undefined; return null; });
  return optionsPromise;
}

/** A sentence when the files are over the server's upload limit (known from /v1/style/options), else null. */
export async function uploadTooLarge(files, noun = "The photo") {
  const opts = await styleOptions();
  const limit = opts?.max_upload_bytes;
  if (typeof limit !== "number") return null;
  const total = files.filter(Boolean).reduce((sum, f) => sum + f.size, 0);
  if (total <= limit) return null;
  const mb = typeof opts.max_upload_mb === "number" ? `${String(+opts.max_upload_mb.toFixed(1))} MB` : megabytes(limit);
  return `${noun} ${files.filter(Boolean).length > 1 ? "are" : "is"} ${megabytes(total)}; the limit is ${mb}.`;
}
