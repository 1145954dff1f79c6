import { $, models, showError } from "./api.js";

export async function initModels() {
  const body = $("models-body");
  try {
    const list = await models();
    body.replaceChildren(...list.map((m) => {
      const tr = document.createElement("tr");
      const acc = m.metrics && typeof m.metrics.accuracy === "number" ? `${(m.metrics.accuracy * 100).toFixed(2)} %` : "–";
      const dataset = m.metrics ? [m.metrics.dataset, m.metrics.split, m.metrics.size ? `(${m.metrics.size})` : ""]
        .filter(Boolean).join(" ") : "–";
      const cells = [m.name + (m.default ? " (default)" : ""), m.task, acc, dataset, m.device ?? "–"];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      tr.dataset.model = m.name;
      return tr;
    }));
  } catch (err) {
    showError("models-error", err);
  }
}
