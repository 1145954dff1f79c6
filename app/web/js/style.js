import { $, ApiError, api, debounce, duration, explain, rangeSentence, showError, styleOptions, uploadTooLarge } from "./api.js";

const HISTORY_KEY = "model-server.style-jobs";
const HISTORY_MAX = 30;
const FINISHED = new Set(["succeeded", "failed", "cancelled", "deleted", "expired"]);
const PROBE_TIMEOUT_MS = 5000; // a job GET that takes longer counts as a lost connection
const STREAM_RETRIES = 2; // a dying event stream is re-opened this many times before the page polls instead
const POLL_MS = 2000; // polling while the stream cannot be had but the server answers
const LOST_BACKOFF_MS = [1000, 2000, 3000, 5000]; // retries while the server cannot be reached
const QUIET_MS = 25_000; // an open stream silent this long is checked with a GET (the server sends keep-alives)
const STREAM_RETRY_WHILE_POLLING_MS = 10_000;
const RESTART_POLL_MS = 3000; // after the server's `shutdown` event (its `retry:` hint): asked this often until it is back
const RESTARTING = "The server is restarting; the job continues when it is back…";
const POLLING_INSTEAD = "This page follows the job by asking the server every few seconds instead.";
const LONG_JOB_S = 60; // a job estimated over this is announced before it is submitted
const NUMBER_FIELDS = ["size", "steps", "style_weight"]; // form inputs whose default and bounds the API gives
const INSTANT_DEBOUNCE_MS = 400; // a size being typed is asked for once it settles

function loadHistory() {
  try {
    const list = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch { return []; }
}
function saveHistory(list) {
  try { localStorage.setItem(HISTORY_KEY, JSON.stringify(list.slice(0, HISTORY_MAX))); } catch { /* storage full or off */ }
}

const jobUrl = (id) => `/v1/style/jobs/${encodeURIComponent(id)}`;
const left = (eta) => (typeof eta === "number" && Number.isFinite(eta) && eta >= 0 ? `${duration(eta)} left` : "");

export function initStyle() {
  const form = $("style-form");
  const content = $("style-content");
  const contentThumb = $("style-content-thumb");
  const upload = $("style-upload");
  const presets = $("style-presets");
  const submit = $("style-submit");
  const cancel = $("style-cancel");
  const estimateEl = $("style-estimate");
  const panel = $("style-job");
  const status = $("style-status");
  const connection = $("style-connection");
  const progress = $("style-progress");
  const preview = $("style-preview");
  const download = $("style-download");
  const historyList = $("style-history");
  const instantBox = $("style-instant");
  const instantImg = $("style-instant-img");
  const instantNote = $("style-instant-note");
  let current = null; // the followed job: {id, source, timer, ...}; see follow()
  let previewBusy = false;
  let previewPending = null;
  let limits = null; // from GET /v1/style/options

  // ---- history (this browser's jobs, in localStorage)
  function remember(job, extra = {}) {
    const list = loadHistory();
    const i = list.findIndex((j) => j.id === job.id);
    const entry = { ...(i >= 0 ? list[i] : {}), ...extra, id: job.id, status: job.status,
      created_at: job.created_at ?? list[i]?.created_at, result_url: job.result_url ?? null,
      fraction: job.progress?.fraction ?? list[i]?.fraction ?? 0 };
    if (i >= 0) list[i] = entry; else list.unshift(entry);
    saveHistory(list);
    renderHistory();
  }
  function renderHistory() {
    const list = loadHistory();
    if (!list.length) {
      historyList.replaceChildren(Object.assign(document.createElement("li"), { textContent: "No jobs yet." }));
      return;
    }
    historyList.replaceChildren(...list.map((j) => {
      const li = document.createElement("li");
      li.dataset.id = j.id;
      li.dataset.status = j.status;
      const when = j.created_at ? new Date(j.created_at).toLocaleString() : "";
      const state = Object.assign(document.createElement("span"), {
        className: `status-${j.status}`,
        textContent: j.status === "running" ? `running ${Math.round((j.fraction || 0) * 100)} %` : j.status,
      });
      li.append(`${when} · ${j.label || "style job"} · `, state);
      if (j.status === "succeeded" && j.result_url) {
        li.append(" · ", Object.assign(document.createElement("a"), { href: j.result_url, textContent: "result" }),
          " · ", Object.assign(document.createElement("a"), { href: j.result_url, textContent: "download",
            download: `style-${j.id}.png` }));
      } else if (!FINISHED.has(j.status) && (!current || current.id !== j.id)) {
        const watch = Object.assign(document.createElement("button"), { type: "button", textContent: "Watch" });
        watch.addEventListener("click", () => follow({ id: j.id }));
        li.append(" ", watch);
      }
      return li;
    }));
  }
  $("style-history-clear").addEventListener("click", () => { saveHistory([]); renderHistory(); });

  // ---- the form: defaults and bounds from the API (GET /v1/style/options), never written here
  styleOptions().then((opts) => {
    if (!opts) return; // older server: the fields stay empty and the server applies its own defaults
    limits = opts.limits ?? null;
    for (const name of NUMBER_FIELDS) {
      const input = form.elements.namedItem(name);
      if (!input) continue;
      const d = opts.defaults?.[name];
      if (typeof d === "number" && input.value === "") input.value = String(d);
      const range = opts.limits?.[name];
      if (typeof range?.min === "number") input.min = String(range.min);
      if (typeof range?.max === "number") input.max = String(range.max);
      if (typeof d === "number") input.placeholder = String(d);
    }
    const preserve = form.elements.namedItem("preserve_color");
    if (preserve && typeof opts.defaults?.preserve_color === "boolean") preserve.checked = opts.defaults.preserve_color;
    const hint = $("style-upload-limit");
    if (hint && typeof opts.max_upload_mb === "number") hint.textContent = `Up to ${+opts.max_upload_mb.toFixed(1)} MB.`;
    form.dataset.options = "api";
    estimate();
  });

  /** The values to send: only fields with a value (an empty one means "the server's default"). */
  function numberFields() {
    const out = {};
    for (const name of NUMBER_FIELDS) {
      const input = form.elements.namedItem(name);
      if (input && input.value.trim() !== "") out[name] = input.value.trim();
    }
    return out;
  }

  /** A sentence for the first value out of the API's bounds, else null (the server checks again anyway). */
  function invalidField() {
    for (const [name, value] of Object.entries(numberFields())) {
      const range = limits?.[name];
      const input = form.elements.namedItem(name);
      const n = Number(value);
      const integer = input?.step !== "any";
      const min = typeof range?.min === "number" ? range.min : -Infinity;
      const max = typeof range?.max === "number" ? range.max : Infinity;
      if (!Number.isFinite(n) || (integer && !Number.isInteger(n)) || n < min || n > max
          || (range?.exclusive_min && n === min) || (range?.exclusive_max && n === max)) {
        return { input, text: rangeSentence(name, limits) ?? `${input?.labels?.[0]?.textContent ?? name} must be a number.` };
      }
    }
    return null;
  }

  // ---- the estimate before submitting (GET /v1/style/estimate)
  let estimateSeq = 0;
  async function estimate() {
    const mine = ++estimateSeq;
    const fields = numberFields();
    if (invalidField() || !fields.size || !fields.steps) {
      estimateEl.textContent = "";
      delete estimateEl.dataset.eta;
      estimateEl.classList.remove("stale");
      return;
    }
    try {
      const query = new URLSearchParams({ size: fields.size, steps: fields.steps });
      if (contentDims) { query.set("width", contentDims[0]); query.set("height", contentDims[1]); } // its aspect
      const body = await api(`/v1/style/estimate?${query}`, { timeoutMs: PROBE_TIMEOUT_MS });
      if (mine !== estimateSeq) return;
      estimateEl.classList.remove("stale");
      const eta = body?.eta_s;
      if (typeof eta !== "number" || !Number.isFinite(eta)) { estimateEl.textContent = ""; return; }
      const ahead = body.queued_ahead > 0 ? `, ${body.queued_ahead} job${body.queued_ahead > 1 ? "s" : ""} ahead of it` : "";
      estimateEl.dataset.eta = String(eta);
      estimateEl.classList.toggle("long", eta > LONG_JOB_S);
      estimateEl.textContent = eta > LONG_JOB_S
        ? `This job will take ${duration(eta)}${ahead}. Fewer steps or a smaller size are quicker.`
        : `This job will take ${duration(eta)}${ahead}.`;
    } catch (err) {
      if (mine !== estimateSeq) return;
      delete estimateEl.dataset.eta;
      estimateEl.classList.remove("stale");
      // A job the server would refuse (too costly): say so now, in its words, not after the upload.
      const refused = err instanceof ApiError && err.status === 422 && err.detail;
      estimateEl.classList.toggle("long", Boolean(refused));
      estimateEl.textContent = refused ? `The server would refuse this job: ${err.detail.replace(/^query steps: /, "")}` : "";
    }
  }
  const estimateSoon = debounce(estimate, 300);

  // ---- inputs: any change is a new action, so the last error goes
  form.addEventListener("input", () => {
    showError("style-error", null);
    for (const el of form.querySelectorAll("[aria-invalid=true]")) el.removeAttribute("aria-invalid");
    if (invalidField()) { estimateSeq++; estimateEl.textContent = ""; delete estimateEl.dataset.eta; } // at once
    else estimateEl.classList.add("stale"); // until the new estimate is in
    estimateSoon();
  });
  let contentDims = null; // [width, height] of the chosen photo: a wide photo has fewer pixels at the same size
  content.addEventListener("change", () => {
    const file = content.files[0];
    contentDims = null;
    if (file) {
      createImageBitmap(file).then((bitmap) => {
        if (content.files[0] !== file) return;
        contentDims = [bitmap.width, bitmap.height];
        bitmap.close();
        estimate();
      }).catch(() => { /* not an image: the server will say so */ });
    }
    if (contentThumb.src.startsWith("blob:")) URL.revokeObjectURL(contentThumb.src);
    if (file) { contentThumb.src = URL.createObjectURL(file); contentThumb.hidden = false; } else contentThumb.hidden = true;
    showError("style-error", null);
  });
  upload.addEventListener("change", () => {
    if (upload.files[0]) for (const radio of presets.querySelectorAll("input")) radio.checked = false;
  });
  presets.addEventListener("change", () => { upload.value = ""; });

  api("/v1/style/presets").then((body) => {
    presets.replaceChildren(...body.presets.map((p, i) => {
      const label = document.createElement("label");
      const radio = Object.assign(document.createElement("input"), { type: "radio", name: "style_preset", value: p.name, checked: i === 0 });
      const img = Object.assign(document.createElement("img"), { src: p.image_url, alt: "", loading: "lazy" });
      label.title = `${p.title}, ${p.artist} (${p.year})`;
      label.append(radio, img, p.title);
      return label;
    }));
    if (content.files[0]) instantPreview(); // a photo chosen before the paintings were listed
  }).catch((err) => showError("style-error", err));

  // ---- a followed job: its event stream, re-opened when it dies, polling when it cannot be had
  function showPreview(url) {
    if (!url) return;
    if (previewBusy) { previewPending = url; return; }
    previewBusy = true;
    const next = new Image();
    next.onload = next.onerror = () => {
      if (next.complete && next.naturalWidth) { preview.src = next.src; preview.hidden = false; instantReplaced(); }
      previewBusy = false;
      if (previewPending) { const u = previewPending; previewPending = null; showPreview(u); }
    };
    next.src = `${url}?t=${Date.now()}`;
  }

  let connectionNoteTimer;
  /** live: the stream is open; polling: the server answers but the stream does not (`note` says why, when the
   *  server said: a 429); lost: no answer; restarting: the server said it is restarting (its `shutdown` event) and
   *  has not answered since. */
  function setConnection(c, state, err = null, note = null) {
    if (c !== current) return;
    const was = panel.dataset.connection;
    panel.dataset.connection = state;
    if (state === "lost" || state === "restarting") {
      clearTimeout(connectionNoteTimer);
      connection.className = `conn ${state}`;
      const why = !err?.status ? "Connection to the server lost." // it answers, but not about jobs:
        : err.status === 503 ? "Style jobs are unavailable on the server for a moment." // e.g. its job store is down
          : `The server answers this job's status with an error (HTTP ${err.status}).`;
      connection.textContent = state === "restarting" ? RESTARTING : `${why} Trying again by itself every few seconds…`;
      connection.hidden = false;
      if (c.last) status.textContent = `Last known: ${describe(c.last, false)}`;
    } else if (was === "lost" || was === "restarting") {
      connection.className = "conn ok";
      connection.textContent = "Reconnected.";
      connection.hidden = false;
      connectionNoteTimer = setTimeout(() => { connection.hidden = true; }, 6000);
    } else if (state === "polling" && note) {
      clearTimeout(connectionNoteTimer);
      connection.className = "conn info";
      connection.textContent = note;
      connection.hidden = false;
    } else if (state === "live" && connection.classList.contains("info")) {
      connection.hidden = true; // the stream is back: the reason it was not is old news
    } // else: nothing to say (a "Reconnected." note fades by itself)
  }

  function stopFollowing() {
    if (current) {
      current.source?.close();
      clearTimeout(current.timer);
      clearInterval(current.watchdog);
    }
    current = null;
    cancel.disabled = true;
    connection.hidden = true;
    delete panel.dataset.connection;
  }

  /** "Job running: step 20 of 100 · about 2 min left" (the estimate only while it is known). */
  function describe(job, withEta = true) {
    const eta = withEta ? left(job.eta_s) : "";
    const line = (text) => (eta ? `${text} · ${eta}` : `${text}.`);
    switch (job.status) {
      case "queued": return line(`Job queued${job.queue_position ? ` (place ${job.queue_position} in the queue)` : ""}`);
      case "running":
        return line(job.progress?.total ? `Job running: step ${job.progress.step} of ${job.progress.total}` : "Job running");
      case "succeeded": {
        const took = (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000;
        return Number.isFinite(took) && took >= 0 ? `Job succeeded in ${duration(took).replace(/^about /, "")}.` : "Job succeeded.";
      }
      case "failed": return `Job failed: ${job.error ?? "no reason given"}`;
      case "cancelled": return "Job cancelled.";
      case "deleted": return "Job deleted.";
      case "expired": return "This job no longer exists on the server (deleted, or expired).";
      default: return `Job ${job.status}.`;
    }
  }

  function onStatus(job) {
    if (current && current.id === job.id) current.last = { ...(current.last ?? {}), ...job };
    progress.value = job.progress?.fraction ?? progress.value;
    status.textContent = describe(job) + (job.notice ? ` ${job.notice}` : "");
    panel.dataset.status = job.status;
    if (typeof job.eta_s === "number") panel.dataset.eta = String(job.eta_s); else delete panel.dataset.eta;
    if (job.status !== "deleted") remember(job);
    if (job.status === "succeeded") {
      progress.value = 1;
      previewPending = null;
      preview.src = job.result_url;
      preview.alt = "The stylised image";
      preview.hidden = false;
      instantReplaced();
      download.href = job.result_url;
      download.download = `style-${job.id}.png`;
      download.hidden = false;
    } else if (job.status === "running" && job.preview_url) {
      showPreview(job.preview_url);
    }
    if (FINISHED.has(job.status)) { stopFollowing(); estimate(); }
  }

  function onProgress(p) {
    const c = current;
    if (!c) return;
    c.last = { ...(c.last ?? {}), status: "running", eta_s: p.eta_s ?? null,
      progress: { step: p.step, total: p.total, fraction: p.fraction } };
    progress.value = p.fraction;
    status.textContent = describe(c.last);
    if (Date.now() - (c.rememberedAt ?? 0) > 2000) { // the history's percentage too, now and then
      c.rememberedAt = Date.now();
      remember({ id: c.id, ...c.last });
    }
    if (typeof p.eta_s === "number") panel.dataset.eta = String(p.eta_s); else delete panel.dataset.eta;
    showPreview(p.preview_url);
  }

  function openStream(c) {
    if (c !== current) return;
    c.source?.close();
    const source = new EventSource(`${jobUrl(c.id)}/events`);
    c.source = source;
    c.streamTriedAt = Date.now();
    const mine = () => c === current && c.source === source;
    source.addEventListener("open", () => {
      if (!mine()) return;
      c.seen = Date.now();
      clearTimeout(c.timer); // polling stops: the stream carries the job again
      c.polling = false;
      setConnection(c, "live");
    });
    // the server is stopping (SIGTERM): its last event, then the stream ends. Not an error: the job goes back to its
    // queue and runs on when the server is back, so the page waits for it calmly instead of counting failures.
    source.addEventListener("shutdown", () => {
      if (!mine()) return;
      source.close();
      c.source = null;
      serverRestarting(c);
    });
    // a message (the server sends the job's status first) shows the stream works: its retries start afresh
    source.addEventListener("status", (e) => {
      if (mine()) { c.seen = Date.now(); c.streamFailures = 0; onStatus(JSON.parse(e.data)); }
    });
    source.addEventListener("progress", (e) => {
      if (mine()) { c.seen = Date.now(); c.streamFailures = 0; onProgress(JSON.parse(e.data)); }
    });
    source.addEventListener("error", () => {
      if (!mine()) return; // the job finished (the stream ends after its last status) or another job is followed
      const answered = source.readyState === EventSource.CLOSED; // an HTTP error answer, not a lost connection
      source.close();
      c.source = null;
      if (answered) { streamRefused(c); return; }
      streamFailed(c);
    });
  }

  /** A stream that died or could not be had: re-opened (twice), then polling. */
  function streamFailed(c) {
    if (c !== current) return;
    c.streamFailures = (c.streamFailures ?? 0) + 1;
    if (c.streamFailures <= STREAM_RETRIES && !c.polling) {
      c.timer = setTimeout(() => openStream(c), 300 * c.streamFailures); // re-open a dying stream
    } else if (!c.polling) {
      startPolling(c);
    }
  }

  /** The server answered the stream with an error (EventSource does not say which): ask once more with fetch to
   *  read its answer. A 429 (too many streams on this job or in all) is said in the server's words, and the job
   *  is followed by polling; anything else is a failed stream as before. */
  async function streamRefused(c) {
    const err = await streamAnswer(c);
    if (c !== current || c.source) return;
    if (err?.status !== 429) { streamFailed(c); return; }
    c.streamFailures = STREAM_RETRIES; // polling re-tries the stream now and then; a refusal goes back to polling
    c.streamTriedAt = Date.now();
    setConnection(c, "polling", null, `${explain(err)} ${POLLING_INSTEAD}`);
    if (!c.polling) startPolling(c);
  }

  /** The stream's refusal as an ApiError, or null when it opens (then closed at once) or cannot be asked. */
  async function streamAnswer(c) {
    const stop = new AbortController();
    try {
      const response = await fetch(`${jobUrl(c.id)}/events`, {
        signal: AbortSignal.any([stop.signal, AbortSignal.timeout(PROBE_TIMEOUT_MS)]) });
      if (response.ok) { stop.abort(); return null; }
      let body = null;
      try { body = await response.json(); } catch { /* not JSON */ }
      const detail = typeof body?.detail === "string" ? body.detail : `HTTP ${response.status}`;
      return new ApiError(response.status, detail, { body, headers: response.headers });
    } catch { return null; }
  }

  /** After the server's `shutdown` event: say so, and ask for the job every RESTART_POLL_MS until the server answers;
   *  then the stream is opened again. Failures meanwhile are the restart, not a lost connection. */
  function serverRestarting(c) {
    if (c !== current) return;
    c.restarting = true;
    c.polling = true;
    c.streamFailures = 0;
    c.streamTriedAt = 0; // once the server answers, the stream is opened again at once
    clearTimeout(c.timer);
    setConnection(c, "restarting");
    c.timer = setTimeout(() => poll(c), RESTART_POLL_MS);
  }

  function startPolling(c) {
    if (c !== current) return;
    c.polling = true;
    clearTimeout(c.timer);
    poll(c);
  }

  /** GET the job: the fallback while the stream is down, and the check of a quiet stream. */
  async function poll(c) {
    if (c !== current) return;
    try {
      const job = await api(jobUrl(c.id), { timeoutMs: PROBE_TIMEOUT_MS });
      if (c !== current) return;
      c.seen = Date.now();
      c.lostTries = 0;
      c.restarting = false; // it answers: back (the stream is opened again below)
      if (["lost", "restarting", undefined].includes(panel.dataset.connection)) setConnection(c, "polling");
      onStatus(job);
      if (c !== current || !c.polling) return;
      // the server answers: try the stream again now and then (polling goes on until it opens)
      if (!c.source && Date.now() - (c.streamTriedAt ?? 0) > STREAM_RETRY_WHILE_POLLING_MS) {
        c.streamFailures = STREAM_RETRIES; // one more failure goes straight back to polling
        openStream(c);
      }
      c.timer = setTimeout(() => poll(c), POLL_MS);
    } catch (err) {
      if (c !== current) return;
      if (err.status === 404) {
        remember({ id: c.id, status: "expired" });
        onStatus({ id: c.id, status: "expired" });
        return;
      }
      if (c.source) { c.source.close(); c.source = null; }
      c.polling = true;
      c.lostTries = (c.lostTries ?? 0) + 1;
      c.streamTriedAt = 0; // once it answers again, re-open the stream at once
      if (c.restarting && (err.status === 0 || err.status >= 500)) { // still restarting (or starting up)
        setConnection(c, "restarting");
        c.timer = setTimeout(() => poll(c), RESTART_POLL_MS);
        return;
      }
      setConnection(c, "lost", err);
      c.timer = setTimeout(() => poll(c), LOST_BACKOFF_MS[Math.min(c.lostTries, LOST_BACKOFF_MS.length) - 1]);
    }
  }

  function follow(job) {
    stopFollowing();
    panel.hidden = false;
    preview.hidden = true;
    download.hidden = true;
    progress.value = 0;
    status.textContent = job.status ? describe(job) : "Connecting…";
    current = { id: job.id, source: null, timer: null, last: job.status ? job : null, seen: Date.now() };
    const c = current;
    cancel.disabled = false;
    renderHistory();
    openStream(c);
    // a stream can also die silently (a frozen server, a dropped network): check it when it has been quiet
    c.watchdog = setInterval(() => {
      if (c === current && c.source && !c.polling && Date.now() - c.seen > QUIET_MS) {
        c.seen = Date.now();
        api(jobUrl(c.id), { timeoutMs: PROBE_TIMEOUT_MS }).then((j) => { if (c === current) onStatus(j); }).catch(() => {
          if (c !== current) return;
          c.source?.close();
          c.source = null;
          setConnection(c, "lost");
          startPolling(c);
        });
      }
    }, 5000);
  }

  // ---- the instant result (POST /v1/style/instant): shown as soon as a photo and a painting are chosen, until
  // a job's own preview replaces it. A newer choice aborts the older request; a busy server (429) is asked again
  // after its Retry-After; any failure is a note under the preview, never the form's error.
  let instantSeq = 0;
  let instantAbort = null;
  let instantRetry = null;
  function instantReplaced() {
    if (instantBox.hidden) return;
    instantSeq++; // an instant answer still on its way must not come back over the job's image
    instantAbort?.abort();
    clearTimeout(instantRetry);
    instantBox.hidden = true;
    instantBox.dataset.state = "replaced";
  }
  async function instantPreview() {
    const mine = ++instantSeq;
    instantAbort?.abort();
    clearTimeout(instantRetry);
    const file = content.files[0];
    const painting = upload.files[0];
    const preset = painting ? null : presets.querySelector("input:checked");
    if (!file || (!painting && !preset)) return;
    const bad = invalidField();
    if (bad && bad.input?.name === "size") return; // the form says what is wrong when it is submitted
    const data = new FormData();
    data.append("content", file, file.name);
    if (painting) data.append("style", painting, painting.name); else data.append("style_preset", preset.value);
    const size = numberFields().size;
    if (size) data.append("size", size);
    data.append("preserve_color", $("style-preserve").checked ? "true" : "false");
    const abort = new AbortController();
    instantAbort = abort;
    instantBox.hidden = false;
    instantBox.dataset.state = "loading";
    instantNote.textContent = "Instant preview…";
    try {
      let response;
      try {
        response = await fetch("/v1/style/instant", { method: "POST", body: data, signal: abort.signal });
      } catch (err) {
        if (err.name === "AbortError") throw err;
        throw new ApiError(0, `network error: ${err.message}`);
      }
      if (!response.ok) {
        let body = null;
        try { body = await response.json(); } catch { /* not JSON */ }
        throw new ApiError(response.status, typeof body?.detail === "string" ? body.detail : `HTTP ${response.status}`,
          { body, headers: response.headers });
      }
      const blob = await response.blob();
      if (mine !== instantSeq) return;
      if (instantImg.src.startsWith("blob:")) URL.revokeObjectURL(instantImg.src);
      instantImg.src = URL.createObjectURL(blob);
      instantImg.hidden = false;
      instantBox.dataset.state = "ready";
      const took = Number(response.headers.get("X-Style-Seconds"));
      instantNote.textContent = `Instant preview${Number.isFinite(took) ? ` (${took.toFixed(1)} s)` : ""}. `
        + "Stylise refines it; the job's own preview takes its place.";
    } catch (err) {
      if (err.name === "AbortError" || mine !== instantSeq) return;
      if (err.status === 429) {
        const wait = Math.min(10, Math.max(1, Number(err.retryAfter) || 1));
        instantBox.dataset.state = "loading";
        instantNote.textContent = "The server is busy with other previews; asking again in a moment…";
        instantRetry = setTimeout(() => { if (mine === instantSeq) instantPreview(); }, wait * 1000);
        return;
      }
      instantBox.dataset.state = "failed";
      instantImg.hidden = true;
      instantNote.textContent = `No instant preview: ${explain(err, { what: /^style/.test(err.detail ?? "") ? "painting" : "picture" })}`;
    }
  }
  const instantSoon = debounce(instantPreview, INSTANT_DEBOUNCE_MS);
  content.addEventListener("change", () => instantPreview());
  upload.addEventListener("change", () => instantPreview());
  presets.addEventListener("change", () => instantPreview());
  $("style-preserve").addEventListener("change", () => instantPreview());
  form.elements.namedItem("size")?.addEventListener("input", () => instantSoon());

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError("style-error", null);
    const file = content.files[0];
    if (!file) { showError("style-error", "Choose a content photo first."); content.focus(); return; }
    const bad = invalidField();
    if (bad) { showError("style-error", bad.text); bad.input?.setAttribute("aria-invalid", "true"); bad.input?.focus(); return; }
    const data = new FormData();
    data.append("content", file, file.name);
    const preset = presets.querySelector("input:checked");
    let label;
    if (upload.files[0]) { data.append("style", upload.files[0], upload.files[0].name); label = upload.files[0].name; } else if (preset) { data.append("style_preset", preset.value); label = preset.parentElement.textContent; } else {
      showError("style-error", "Pick a painting or upload your own."); return;
    }
    const tooLarge = await uploadTooLarge([file, upload.files[0]], upload.files[0] ? "The photo and the painting" : "The photo");
    if (tooLarge) { showError("style-error", tooLarge); return; }
    for (const [name, value] of Object.entries(numberFields())) data.append(name, value);
    data.append("preserve_color", $("style-preserve").checked ? "true" : "false");
    submit.disabled = true;
    try {
      const job = await api("/v1/style/jobs", { method: "POST", body: data });
      remember(job, { label: `${file.name} × ${label}` });
      follow(job);
      onStatus(job);
      estimate(); // the next job would queue behind this one
    } catch (err) {
      const both = Boolean(upload.files[0]);
      showError("style-error", err, { what: /^style/.test(err.detail ?? "") ? "painting" : "photo", limits,
        noun: both ? "The photo and the painting" : "The photo", plural: both });
    } finally {
      submit.disabled = false;
    }
  });

  cancel.addEventListener("click", async () => {
    if (!current) return;
    showError("style-error", null);
    const id = current.id;
    try {
      const job = await api(jobUrl(id), { method: "DELETE" });
      if (job) onStatus(job); else { remember({ id, status: "deleted" }); stopFollowing(); }
    } catch (err) {
      showError("style-error", err, { what: "job" });
    }
  });

  // ---- after a reload: refresh unfinished jobs, and follow the newest still running
  renderHistory();
  const open = loadHistory().filter((j) => !FINISHED.has(j.status));
  for (const j of open) {
    api(jobUrl(j.id)).then((job) => remember(job)).catch((err) => {
      if (err.status === 404) remember({ id: j.id, status: "expired" });
    });
  }
  if (open.length) follow(open[0]);
}
