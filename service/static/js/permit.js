/* "Check against a permit": photos of the goods plus the permit's declared data, sent to
   POST /v1/verifications; shows the verdict, the permit checks and a verdict per photo, all
   worded by the service in the page's language (docs/api.md). */
import { api, postForm } from "./api.js";
import { clearError, showError, UserError } from "./errors.js";
import { say, t } from "./i18n.js";
import { preparePhoto } from "./photo.js";
import { $, state } from "./state.js";
import { showAppendix } from "./words.js";

let chosen = [];

function onFilesChosen(event) {
  chosen = [...(event.target.files || [])].filter((f) => !f.type || f.type.startsWith("image/"));
  event.target.value = "";
  say($("permit-chosen"), chosen.length ? "permitPhotosChosen" : null, { n: chosen.length });
}

async function onSubmit(event) {
  event.preventDefault();
  clearError();
  if (!chosen.length) {
    showError(new UserError("permitNoPhoto"));
    return;
  }
  const form = new FormData();
  for (const el of $("permit-form").elements) {
    if (!el.name || el.type === "file") continue;
    const value = el.value.trim();
    if (value) form.append(el.name, value);
  }
  const button = $("permit-btn");
  button.disabled = true;
  say($("permit-status"), "checkingPermit");
  try {
    for (const file of chosen) {
      const prepared = await preparePhoto(file, "camera");
      form.append("images", prepared.blob, prepared.name);
    }
    renderVerification(await postForm("/v1/verifications", form));
  } catch (err) {
    showError(err);
  } finally {
    say($("permit-status"), null);
    button.disabled = false;
  }
}

function outcomeItem(label, outcome, reason) {
  const li = document.createElement("li");
  li.dataset.outcome = outcome;
  const head = document.createElement("span");
  head.className = "outcome outcome-" + outcome;
  head.textContent = t("outcomeLine", { label, outcome: t("outcome_" + outcome) });
  li.append(head, document.createTextNode(" — " + reason));
  return li;
}

/** Show a verification (as answered by the service, in the current language). */
export function renderVerification(v) {
  state.verification = v;
  const box = $("permit-result");
  box.hidden = false;
  box.dataset.id = v.id;
  box.dataset.verdict = v.verdict;
  const verdict = $("permit-verdict");
  verdict.textContent = t("verdict_" + v.verdict);
  verdict.className = "verdict verdict-" + v.verdict;
  showAppendix($("permit-badge"), "cites", v.applicable_appendix);
  const unverified = Boolean(v.listing) && v.listing.verified === false;
  $("permit-unverified").hidden = !unverified;
  $("permit-unverified-hint").hidden = !unverified;
  const checks = $("permit-checks");
  checks.textContent = "";
  for (const c of v.checks || []) {
    checks.append(outcomeItem(t("check_" + c.check), c.outcome, c.reason));
  }
  const images = $("permit-images");
  images.textContent = "";
  for (const image of v.images || []) {
    images.append(outcomeItem(t("photoN", { n: image.index + 1 }), image.verdict, image.reason));
  }
  const meta = [v.permit ? v.permit.permit_number : ""];
  if (v.case_ref) meta.push(t("caseLabel", { ref: v.case_ref }));
  $("permit-meta").textContent = meta.filter(Boolean).join(" · ");
  box.scrollIntoView({ block: "start" });
}

/** After a change of language: ask the service for the same verification in it. */
export async function relabelPermit() {
  if (!state.verification || !state.key) return;
  try {
    renderVerification(await api("/v1/verifications/" + encodeURIComponent(state.verification.id)));
  } catch (err) {
    showError(err);
  }
}

export function initPermit() {
  $("permit-files").addEventListener("change", onFilesChosen);
  $("permit-form").addEventListener("submit", onSubmit);
}
