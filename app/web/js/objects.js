import { $, api, lowConfidenceBelow, percent, renderBars, renderVerdict, showError, uploadTooLarge } from "./api.js";

export function initObjects() {
  const drop = $("object-drop");
  const input = $("object-file");
  const thumb = $("object-thumb");
  const result = $("object-result");
  const bars = $("object-bars");
  let seq = 0;

  async function classify(file) {
    if (!file) return;
    const mine = ++seq;
    showError("object-error", null);
    bars.replaceChildren();
    result.textContent = "Classifying…";
    delete result.dataset.label;
    delete result.dataset.confidence;
    if (thumb.src.startsWith("blob:")) URL.revokeObjectURL(thumb.src);
    if (file.type.startsWith("image/")) {
      thumb.src = URL.createObjectURL(file);
      thumb.alt = `Thumbnail of ${file.name || "the pasted image"}`;
      thumb.hidden = false;
    } else {
      thumb.hidden = true;
      thumb.removeAttribute("src");
    }
    const tooLarge = await uploadTooLarge([file], "The photo");
    if (mine !== seq) return;
    if (tooLarge) { result.textContent = ""; showError("object-error", tooLarge); return; }
    const form = new FormData();
    form.append("file", file, file.name || "pasted.png");
    try {
      const body = await api("/v1/objects/predict?top_k=3", { method: "POST", body: form });
      const threshold = await lowConfidenceBelow(body.model, "objects");
      if (mine !== seq) return;
      renderVerdict(result, { label: body.label, score: body.score, labelId: "object-label", task: "objects", threshold,
        sure: (strong) => ["Most likely ", strong, ` (${percent(body.score)})`] });
      renderBars(bars, body.top);
    } catch (err) {
      if (mine !== seq) return;
      result.textContent = "";
      showError("object-error", err, { what: "photo", noun: "The photo" });
    }
  }

  input.addEventListener("change", () => { classify(input.files[0]); input.value = ""; });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classify(event.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.target === drop && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); input.click(); }
  });
  // Paste anywhere on the page, unless the user is typing in a text field.
  document.addEventListener("paste", (event) => {
    if (event.target.closest && event.target.closest("textarea, input[type=text], input[type=number]")) return;
    const item = [...(event.clipboardData?.items ?? [])].find((i) => i.kind === "file");
    if (item) { event.preventDefault(); classify(item.getAsFile()); drop.scrollIntoView({ block: "nearest" }); }
  });
}
