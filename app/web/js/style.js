import { $, api, showError } from "./api.js";

const HISTORY_KEY = "model-server.style-jobs";
const HISTORY_MAX = 30;
const FINISHED = new Set(["succeeded", "failed", "cancelled", "deleted", "expired"]);

function loadHistory() {
  try {
    const list = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch { return []; }
}
function saveHistory(list) {
  try { localStorage.setItem(HISTORY_KEY, JSON.stringify(list.slice(0, HISTORY_MAX))); } catch { /* storage full or off */ }
}

export function initStyle() {
  const form = $("style-form");
  const content = $("style-content");
  const contentThumb = $("style-content-thumb");
  const upload = $("style-upload");
  const presets = $("style-presets");
  const submit = $("style-submit");
  const cancel = $("style-cancel");
  const panel = $("style-job");
  const status = $("style-status");
  const progress = $("style-progress");
  const preview = $("style-preview");
  const download = $("style-download");
  const historyList = $("style-history");
  let current = null; // {id, source: EventSource}
  let previewBusy = false;
  let previewPending = null;

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

  // ---- inputs
  content.addEventListener("change", () => {
    const file = content.files[0];
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
  }).catch((err) => showError("style-error", err));

  // ---- a running job: SSE progress, preview, result
  function showPreview(url) {
    if (!url) return;
    if (previewBusy) { previewPending = url; return; }
    previewBusy = true;
    const next = new Image();
    next.onload = next.onerror = () => {
      if (next.complete && next.naturalWidth) { preview.src = next.src; preview.hidden = false; }
      previewBusy = false;
      if (previewPending) { const u = previewPending; previewPending = null; showPreview(u); }
    };
    next.src = `${url}?t=${Date.now()}`;
  }

  function stopFollowing() {
    if (current?.source) current.source.close();
    current = null;
    cancel.disabled = true;
  }

  function onStatus(job) {
    progress.value = job.progress?.fraction ?? progress.value;
    const pos = job.status === "queued" && job.queue_position ? ` (place ${job.queue_position} in the queue)` : "";
    const pct = job.progress ? ` ${job.progress.step} / ${job.progress.total} steps` : "";
    status.textContent = `Job ${job.status}${pos}.${job.status === "running" ? pct : ""}`
      + (job.error ? ` ${job.error}` : "") + (job.notice ? ` ${job.notice}` : "");
    panel.dataset.status = job.status;
    if (job.status !== "deleted") remember(job);
    if (job.status === "succeeded") {
      progress.value = 1;
      previewPending = null;
      preview.src = job.result_url;
      preview.alt = "The stylised image";
      preview.hidden = false;
      download.href = job.result_url;
      download.download = `style-${job.id}.png`;
      download.hidden = false;
    } else if (job.status === "running" && job.preview_url) {
      showPreview(job.preview_url);
    }
    if (FINISHED.has(job.status)) stopFollowing();
  }

  function follow(job) {
    stopFollowing();
    panel.hidden = false;
    preview.hidden = true;
    download.hidden = true;
    progress.value = 0;
    status.textContent = "Submitted…";
    const source = new EventSource(`/v1/style/jobs/${encodeURIComponent(job.id)}/events`);
    current = { id: job.id, source };
    cancel.disabled = false;
    renderHistory();
    source.addEventListener("status", (e) => onStatus(JSON.parse(e.data)));
    source.addEventListener("progress", (e) => {
      const p = JSON.parse(e.data);
      progress.value = p.fraction;
      status.textContent = `Job running. ${p.step} / ${p.total} steps`;
      showPreview(p.preview_url);
    });
    source.addEventListener("error", async () => {
      if (source.readyState !== EventSource.CLOSED || current?.source !== source) return;
      // The stream was refused (e.g. the job no longer exists): ask once for its state.
      try { onStatus(await api(`/v1/style/jobs/${encodeURIComponent(job.id)}`)); } catch (err) {
        if (err.status === 404) { remember({ id: job.id, status: "expired" }); stopFollowing(); }
        showError("style-error", err);
      }
    });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError("style-error", null);
    const file = content.files[0];
    if (!file) { showError("style-error", "Choose a content photo first."); content.focus(); return; }
    const data = new FormData();
    data.append("content", file, file.name);
    const preset = presets.querySelector("input:checked");
    let label;
    if (upload.files[0]) { data.append("style", upload.files[0], upload.files[0].name); label = upload.files[0].name; } else if (preset) { data.append("style_preset", preset.value); label = preset.parentElement.textContent; } else {
      showError("style-error", "Pick a painting or upload your own."); return;
    }
    data.append("size", $("style-size").value);
    data.append("steps", $("style-steps").value);
    data.append("preserve_color", $("style-preserve").checked ? "true" : "false");
    submit.disabled = true;
    try {
      const job = await api("/v1/style/jobs", { method: "POST", body: data });
      remember(job, { label: `${file.name} × ${label}` });
      follow(job);
    } catch (err) {
      showError("style-error", err);
    } finally {
      submit.disabled = false;
    }
  });

  cancel.addEventListener("click", async () => {
    if (!current) return;
    const id = current.id;
    try {
      const job = await api(`/v1/style/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
      if (job) onStatus(job); else { remember({ id, status: "deleted" }); stopFollowing(); }
    } catch (err) {
      showError("style-error", err);
    }
  });

  // ---- after a reload: refresh unfinished jobs, and follow the newest still running
  renderHistory();
  const open = loadHistory().filter((j) => !FINISHED.has(j.status));
  for (const j of open) {
    api(`/v1/style/jobs/${encodeURIComponent(j.id)}`).then((job) => remember(job)).catch((err) => {
      if (err.status === 404) remember({ id: j.id, status: "expired" });
    });
  }
  if (open.length) follow(open[0]);
}
