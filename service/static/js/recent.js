/* Recent cases: the officer's latest identifications, with decisions and feedback. */
import { api, getTaxon } from "./api.js";
import { showError } from "./errors.js";
import { formatTime, say, t } from "./i18n.js";
import { $, state } from "./state.js";
import {
  actionOf,
  appendName,
  feedbackSummary,
  isDecided,
  labelName,
  nameParts,
  probabilityText,
} from "./words.js";

const RECENT_LIMIT = 10;
let openCase = () => undefined;

/** Wire the list; ``onOpen(id)`` opens an identification again. */
export function initRecent({ onOpen }) {
  openCase = onOpen;
  $("recent-refresh").addEventListener("click", loadRecent);
}

/** Fetch and show the latest identifications made with this key. */
export async function loadRecent() {
  if (!state.key) return;
  say($("recent-status"), "loading");
  try {
    const page = await api("/v1/identifications?mine=true&limit=" + RECENT_LIMIT);
    state.recent = page.items || [];
    // Corrections name taxa by id: fetch the names once.
    const ids = state.recent
      .map((i) => i.feedback && i.feedback.taxon_id)
      .filter((id) => id && !state.taxonCache.has(id));
    await Promise.allSettled([...new Set(ids)].map(getTaxon));
    renderRecent();
  } catch (err) {
    say($("recent-status"), null);
    showError(err);
  }
}

function renderRecent() {
  const list = $("recent-list");
  list.textContent = "";
  say($("recent-status"), state.recent.length ? null : "recentEmpty");
  for (const ident of state.recent) {
    const d = ident.decision || { kind: "uncertain" };
    const decided = isDecided(d);
    const li = document.createElement("li");
    li.className = "recent-item decision-" + d.kind + " action-" + actionOf(d);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "recent-open";
    const title = document.createElement("span");
    title.className = "recent-title";
    if (decided || d.taxon) {
      appendName(title, nameParts(d.taxon, d.label_name || labelName(d.label, ident.top_k)));
    } else {
      title.textContent = t("noTaxon");
    }
    const what = [t("decision_" + d.kind)];
    if (decided) what.push(probabilityText(d.probability));
    const when = [formatTime(ident.created_at)];
    if (ident.case_ref) when.push(t("caseLabel", { ref: ident.case_ref }));
    when.push(feedbackSummary(ident.feedback));
    button.append(title, line(what), line(when));
    if (ident.device) {
      // Made offline on a phone: say so, and whether the service's own answer agrees.
      const agrees = ident.device.agrees_with_service ? "deviceAgrees" : "deviceDiffers";
      button.append(line([t("madeOnDevice", { version: ident.device.model_version }), t(agrees)]));
    }
    button.addEventListener("click", () => openCase(ident.id));
    li.append(button);
    list.append(li);
  }
}

function line(parts) {
  const span = document.createElement("span");
  span.className = "recent-line";
  span.textContent = parts.filter(Boolean).join(" · ");
  return span;
}
