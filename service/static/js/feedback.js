/* Feedback on the answer: confirm it, or correct it with the search box over the model's labels
   and the taxonomy (an ARIA combobox: arrow keys, Enter, Escape). */
import { api } from "./api.js";
import { clearError, showError, UserError } from "./errors.js";
import { say, t } from "./i18n.js";
import { $, state } from "./state.js";
import { correctionName, isDecided, isTaxon, labelName, rankName } from "./words.js";

const SEARCH_DELAY_MS = 250;
const GIVES_FEEDBACK = ["officer", "trainer", "admin"];
let searchTimer = 0;
let searchSeq = 0;

/** Wire the form; ``onSaved()`` runs after feedback was stored. */
export function initFeedback({ onSaved }) {
  for (const radio of document.querySelectorAll("input[name=verdict]")) {
    radio.addEventListener("change", onVerdictChange);
  }
  const search = $("taxon-search");
  search.addEventListener("input", onSearchInput);
  search.addEventListener("keydown", onSearchKey);
  search.addEventListener("blur", () => setTimeout(closeOptions, 150));
  $("feedback-form").addEventListener("submit", (event) => sendFeedback(event, onSaved));
}

/** Show the form for ``ident`` (kept as it is while the officer works on the same one). */
export function renderFeedbackForm(ident) {
  $("feedback").hidden = !state.me || !GIVES_FEEDBACK.includes(state.me.role);
  // The name follows the language of the answer (common names come from the API).
  say($("confirm-text"), "confirmName", { name: confirmedName(ident) });
  if (state.feedbackFor === ident.id) return;
  state.feedbackFor = ident.id;
  $("feedback-form").reset();
  $("fb-caseref").value = ident.case_ref || "";
  $("correction").hidden = true;
  state.chosen = null;
  say($("taxon-chosen"), null);
  const fb = ident.feedback;
  if (!fb) say($("feedback-status"), null);
  else if (fb.verdict === "confirm") say($("feedback-status"), "earlierConfirmed");
  else say($("feedback-status"), "earlierCorrected", { name: correctionName(fb) });
  closeOptions();
}

/** Rewrite what the form shows after a change of language. */
export function relabelFeedback() {
  showChosen();
  if (!$("taxon-options").hidden) showOptions(state.options, $("taxon-search").value);
}

/** What "confirm" agrees with: the decided class, else the first candidate (docs/api.md). */
function confirmedName(ident) {
  const d = ident.decision || {};
  const nameOf = (taxon, fallback) => {
    if (isTaxon(taxon)) return taxon.scientific_name;
    return (taxon && taxon.common_name) || fallback || "?";
  };
  if (isDecided(d)) return nameOf(d.taxon, d.label_name || labelName(d.label, ident.top_k));
  const top = (ident.top_k || [])[0];
  return top ? nameOf(top.taxon, top.label_name) : "?";
}

function onVerdictChange() {
  const correct = document.querySelector("input[name=verdict]:checked").value === "correct";
  $("correction").hidden = !correct;
  if (correct) $("taxon-search").focus();
}

async function sendFeedback(event, onSaved) {
  event.preventDefault();
  clearError();
  const ident = state.current;
  if (!ident) return;
  const verdict = document.querySelector("input[name=verdict]:checked").value;
  const body = { verdict };
  if (verdict === "correct") {
    if (!state.chosen) {
      showError(new UserError("chooseTaxon"));
      $("taxon-search").focus();
      return;
    }
    if (state.chosen.label) body.label = state.chosen.label;
    if (state.chosen.taxon_id) body.taxon_id = state.chosen.taxon_id;
  }
  // The case reference travels in its own field (docs/api.md); the export groups by it.
  const note = $("note").value.trim();
  if (note) body.note = note;
  const caseRef = $("fb-caseref").value.trim();
  if (caseRef) body.case_ref = caseRef;
  const status = $("feedback-status");
  say(status, "sending");
  try {
    const path = "/v1/identifications/" + encodeURIComponent(ident.id) + "/feedback";
    const saved = await api(path, { method: "POST", body });
    ident.feedback = saved;
    const time = { time: saved.created_at || new Date().toISOString() };
    say(status, "feedbackSaved", { verdict: { t: "verdict_" + verdict }, time });
    onSaved();
  } catch (err) {
    say(status, null);
    showError(err);
  }
}

// ---------------------------------------------------------------- the search box

function closeOptions() {
  const list = $("taxon-options");
  list.hidden = true;
  list.textContent = "";
  state.options = [];
  state.active = -1;
  $("taxon-search").setAttribute("aria-expanded", "false");
  $("taxon-search").removeAttribute("aria-activedescendant");
}

function onSearchInput() {
  state.chosen = null;
  say($("taxon-chosen"), null);
  clearTimeout(searchTimer);
  const q = $("taxon-search").value.trim();
  if (q.length < 2) {
    closeOptions();
    return;
  }
  searchTimer = setTimeout(() => search(q), SEARCH_DELAY_MS);
}

/** How an option reads in the current language. */
function optionText(opt) {
  if (!opt.taxon) return opt.labelName + " — " + t("modelLabel");
  const taxon = opt.taxon;
  const names = taxon.common_names || {};
  const common = names[state.lang] || names.en || "";
  const what = taxon.kind === "lookalike" ? t("lookalikeMaterial") : rankName(taxon.rank);
  return taxon.scientific_name + (common ? " — " + common : "") + " (" + what + ")";
}

function showChosen() {
  if (!state.chosen) return;
  const text = optionText(state.chosen);
  $("taxon-search").value = text;
  say($("taxon-chosen"), "chosenTaxon", { name: text });
}

/** Labels of the active model whose name or id matches, then taxa from /v1/taxa. */
async function search(q) {
  const seq = ++searchSeq;
  say($("taxon-chosen"), "searching");
  const needle = q.toLowerCase();
  const options = state.labels
    .filter((l) => (l.name || "").toLowerCase().includes(needle)
      || (l.id || "").toLowerCase().includes(needle))
    .slice(0, 5)
    .map((l) => ({ label: l.id, taxon_id: l.taxon_id || null, labelName: l.name }));
  try {
    const found = await api("/v1/taxa?q=" + encodeURIComponent(q) + "&limit=8");
    for (const taxon of found.items || []) {
      state.taxonCache.set(taxon.id, taxon);
      const label = state.labels.find((l) => l.taxon_id === taxon.id);
      options.push({ label: label ? label.id : null, taxon_id: taxon.id, taxon });
    }
  } catch (err) {
    if (seq === searchSeq) showError(err);
  }
  if (seq !== searchSeq) return; // a newer search is under way
  showOptions(options, q);
}

function showOptions(options, q) {
  const list = $("taxon-options");
  list.textContent = "";
  state.options = options;
  state.active = -1;
  say($("taxon-chosen"), options.length ? null : "searchNone", { q });
  options.forEach((opt, i) => {
    const li = document.createElement("li");
    li.id = "taxon-opt-" + i;
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", "false");
    li.textContent = optionText(opt);
    li.addEventListener("mousedown", (e) => {
      e.preventDefault(); // keep the focus in the input
      choose(i);
    });
    list.append(li);
  });
  list.hidden = !options.length;
  $("taxon-search").setAttribute("aria-expanded", options.length ? "true" : "false");
}

function highlight(i) {
  const items = $("taxon-options").children;
  if (!items.length) return;
  state.active = (i + items.length) % items.length;
  for (let k = 0; k < items.length; k++) {
    items[k].setAttribute("aria-selected", k === state.active ? "true" : "false");
  }
  items[state.active].scrollIntoView({ block: "nearest" });
  $("taxon-search").setAttribute("aria-activedescendant", items[state.active].id);
}

function choose(i) {
  const opt = state.options[i];
  if (!opt) return;
  state.chosen = opt;
  showChosen();
  closeOptions();
}

function onSearchKey(e) {
  const open = !$("taxon-options").hidden;
  if (e.key === "ArrowDown") {
    e.preventDefault();
    if (open) highlight(state.active + 1);
  } else if (e.key === "ArrowUp") {
    e.preventDefault();
    if (open) highlight(state.active - 1);
  } else if (e.key === "Enter" && open) {
    e.preventDefault();
    choose(state.active >= 0 ? state.active : 0);
  } else if (e.key === "Escape" && open) {
    e.preventDefault();
    closeOptions();
  }
}
