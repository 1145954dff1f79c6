import { initDigits } from "./digits.js";
import { initObjects } from "./objects.js";
import { initSentiment } from "./sentiment.js";
import { initStyle } from "./style.js";
import { initModels } from "./models.js";

for (const init of [initDigits, initObjects, initSentiment, initStyle, initModels]) {
  try { init(); } catch (err) { console.error(err); }
}
document.body.dataset.ready = "true";
