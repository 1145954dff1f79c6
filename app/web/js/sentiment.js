import { $, api, debounce, lowConfidenceBelow, percent, renderVerdict, showError, floorPercent } from "./api.js";

function verdict(label) {
  return Object.assign(document.createElement("strong"), { className: label, textContent: label });
}

export function initSentiment() {
  const text = $("sentiment-text");
  const result = $("sentiment-result");
  const batch = $("sentiment-batch");
  const list = $("sentiment-batch-results");
  let seq = 0;
  let batchSeq = 0;

  async function one() {
    const value = text.value;
    const mine = ++seq;
    if (!value.trim()) {
      result.textContent = "";
      delete result.dataset.label;
      delete result.dataset.confidence;
      showError("sentiment-error", null);
      return;
    }
    try {
      const body = await api("/v1/sentiment/predict", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text: value }),
      });
      const threshold = await lowConfidenceBelow(body.model, "sentiment");
      if (mine !== seq) return;
      showError("sentiment-error", null);
      renderVerdict(result, { label: body.label, score: body.score, labelId: "sentiment-label", task: "sentiment",
        threshold, sure: (strong) => [strong, ` (${percent(body.score)} sure)`] });
    } catch (err) {
      if (mine !== seq) return;
      result.textContent = "";
      delete result.dataset.label;
      showError("sentiment-error", err, { what: "review" });
    }
  }
  const oneSoon = debounce(one, 250);
  text.addEventListener("input", () => { showError("sentiment-error", null); oneSoon(); });

  async function many() {
    const texts = batch.value.split("\n").map((t) => t.trim()).filter(Boolean);
    showError("sentiment-batch-error", null);
    if (!texts.length) { list.replaceChildren(); showError("sentiment-batch-error", "Write at least one review, one per line."); return; }
    const mine = ++batchSeq;
    try {
      const body = await api("/v1/sentiment/predict", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ texts }),
      });
      const threshold = await lowConfidenceBelow(body.model, "sentiment");
      if (mine !== batchSeq) return;
      list.replaceChildren(...body.results.map((r, i) => {
        const li = document.createElement("li");
        li.dataset.label = r.label;
        if (threshold !== null && r.score < threshold) {
          li.dataset.confidence = "low";
          li.append(Object.assign(document.createElement("span"), { className: "unsure", textContent: "Not sure:" }),
            " maybe ", verdict(r.label), ` ${floorPercent(r.score)}: `, texts[i]);
        } else {
          li.dataset.confidence = "high";
          li.append(verdict(r.label), ` ${percent(r.score)}: `, texts[i]);
        }
        return li;
      }));
    } catch (err) {
      if (mine !== batchSeq) return;
      list.replaceChildren();
      showError("sentiment-batch-error", err, { what: "reviews" });
    }
  }
  $("sentiment-batch-go").addEventListener("click", many);
  const manySoon = debounce(() => { if (batch.value.trim()) many(); }, 400);
  batch.addEventListener("input", () => { showError("sentiment-batch-error", null); manySoon(); });
  batch.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); many(); }
  });
}
