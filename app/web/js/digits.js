import { $, api, debounce, lowConfidenceBelow, models, percent, renderBars, renderVerdict, showError } from "./api.js";

const INK = "#000";
const PAPER = "#fff";

export function initDigits() {
  const canvas = $("digit-canvas");
  const ctx = canvas.getContext("2d");
  const select = $("digit-model");
  const result = $("digit-result");
  const bars = $("digit-bars");
  let drawing = false;
  let dirty = false; // anything drawn since the last clear
  let last = null;
  let controller = null;
  let seq = 0;

  function clear() {
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    dirty = false;
    if (controller) controller.abort();
    bars.replaceChildren();
    result.textContent = "Draw a digit to see what the model reads.";
    delete result.dataset.label;
    delete result.dataset.confidence;
    showError("digit-error", null);
  }

  function point(event) {
    const rect = canvas.getBoundingClientRect();
    return [(event.clientX - rect.left) * (canvas.width / rect.width),
            (event.clientY - rect.top) * (canvas.height / rect.height)];
  }

  function stroke(from, to, pressure) {
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = canvas.width / 14 * (pressure > 0 && pressure !== 0.5 ? 0.6 + pressure * 0.8 : 1);
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...to);
    ctx.stroke();
  }

  async function predict() {
    if (!dirty) return;
    const mine = ++seq;
    if (controller) controller.abort();
    controller = new AbortController();
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    const form = new FormData();
    form.append("file", blob, "digit.png");
    const params = new URLSearchParams({ top_k: "10" });
    if (select.value) params.set("model", select.value);
    try {
      const body = await api(`/v1/digits/predict?${params}`, { method: "POST", body: form, signal: controller.signal });
      const threshold = await lowConfidenceBelow(body.model, "digits");
      if (mine !== seq || !dirty) return;
      showError("digit-error", null);
      renderVerdict(result, { label: body.label, score: body.score, labelId: "digit-label", task: "digits", threshold,
        suffix: `, ${body.model}`, sure: (strong) => ["It looks like ", strong, ` (${percent(body.score)}, ${body.model})`] });
      const top = [...body.top].sort((a, b) => Number(a.label) - Number(b.label));
      renderBars(bars, top);
      bars.querySelector(`li[data-label="${body.label}"]`)?.classList.add("top");
      for (const li of bars.children) if (li.dataset.label !== body.label) li.classList.remove("top");
    } catch (err) {
      if (err.name === "AbortError" || mine !== seq) return;
      result.textContent = ""; // no stale answer beside the error
      delete result.dataset.label;
      bars.replaceChildren();
      showError("digit-error", err, { what: "drawing" });
    }
  }
  const predictSoon = debounce(predict, 150);

  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    drawing = true;
    showError("digit-error", null); // a new stroke is a new try: the last error goes
    last = point(event);
    stroke(last, last, event.pressure);
    dirty = true;
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const e of events.length ? events : [event]) {
      const p = point(e);
      stroke(last, p, e.pressure);
      last = p;
    }
    predictSoon();
  });
  const end = () => {
    if (!drawing) return;
    drawing = false;
    predictSoon();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("keydown", (event) => {
    if (["Escape", "Delete", "Backspace"].includes(event.key)) { event.preventDefault(); clear(); }
  });
  $("digit-clear").addEventListener("click", clear);
  select.addEventListener("change", () => predict());

  models().then((list) => {
    const digits = list.filter((m) => m.task === "digits");
    select.replaceChildren(...digits.map((m) => new Option(`${m.name}${m.default ? " (default)" : ""}`, m.name, m.default, m.default)));
  }).catch(() => { /* the default model still answers; the Models section says what failed */ });

  clear();
}
