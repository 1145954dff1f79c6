import { $, api, debounce, percent, showError } from "./api.js";

function verdict(label) {
  return Object.assign(document.createElement("strong"), { className: label, textContent: label });
}

export function initSentiment() {
  const text = $("sentiment-text");
  const result = $("sentiment-result");
  const batch = $("sentiment-batch");
  const list = $("sentiment-batch-results");
  let seq = 0;

  async function one() {
    const value = text.value;
    const mine = ++seq;
    if (!value.trim()) {
      result.textContent = "";
      delete result.dataset.label;
      showError("sentiment-error", null);
      return;
    }
    try {
      const body = await api("/v1/sentiment/predict", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text: value }),
      });
      if (mine !== seq) return;
      showError("sentiment-error", null);
      const v = verdict(body.label);
      v.id = "sentiment-label";
      result.replaceChildren(v, ` (${percent(body.score)} sure)`);
      result.dataset.label = body.label;
    } catch (err) {
      if (mine !== seq) return;
      showError("sentiment-error", err);
    }
  }
  text.addEventListener("input", debounce(one, 250));

  async function many() {
    const texts = batch.value.split("\n").map((t) => t.trim()).filter(Boolean);
    showError("sentiment-batch-error", null);
    if (!texts.length) { list.replaceChildren(); showError("sentiment-batch-error", "Write at least one review, one per line."); return; }
    try {
      const body = await api("/v1/sentiment/predict", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ texts }),
      });
      list.replaceChildren(...body.results.map((r, i) => {
        const li = document.createElement("li");
        li.dataset.label = r.label;
        li.append(verdict(r.label), ` ${percent(r.score)}: `, texts[i]);
        return li;
      }));
    } catch (err) {
      list.replaceChildren();
      showError("sentiment-batch-error", err);
    }
  }
  $("sentiment-batch-go").addEventListener("click", many);
  batch.addEventListener("input", debounce(() => { if (batch.value.trim()) many(); }, 400));
  batch.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); many(); }
  });
}
