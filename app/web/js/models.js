import { $, models, showError, wholePercent } from "./api.js";

const COLUMNS = ["Model", "Task", "Accuracy", "Dataset", "Device", "Calibration error", "Not sure below"];

export async function initModels() {
  const body = $("models-body");
  try {
    const list = await models();
    body.replaceChildren(...list.map((m) => {
      const tr = document.createElement("tr");
      const acc = m.metrics && typeof m.metrics.accuracy === "number" ? `${(m.metrics.accuracy * 100).toFixed(2)} %` : "–";
      const dataset = m.metrics ? [m.metrics.dataset, m.metrics.split, m.metrics.size ? `(${m.metrics.size})` : ""]
        .filter(Boolean).join(" ") : "–";
      const cal = m.calibration ?? {};
      const below = cal.low_confidence_below;
      // expected calibration error on the test set: how far the scores are from the accuracy they promise
      const pct = (x) => `${(x * 100).toFixed(1)}\u00a0%`; // no line break inside "9.0 %"
      const ece = typeof cal.ece_after === "number" ? pct(cal.ece_after)
        + (typeof cal.ece_before === "number" ? ` (was\u00a0${pct(cal.ece_before)})` : "") : "–";
      const cells = [m.name + (m.default ? " (default)" : ""), m.task, acc, dataset, m.device ?? "–", ece,
        typeof below === "number" ? wholePercent(below) : "–"];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        td.textContent = text;
        td.dataset.col = COLUMNS[i]; // the column's name, shown beside the value on a narrow screen
        tr.append(td);
      });
      tr.dataset.model = m.name;
      return tr;
    }));
  } catch (err) {
    showError("models-error", err);
  }
}
