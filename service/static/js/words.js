/* How the page names things: probabilities in words, appendix badges, taxa, labels, feedback. */
import { capitalise, t } from "./i18n.js";
import { state } from "./state.js";

export const APPENDICES = ["I", "II", "III"];

/** "likely, 87%": words for the probability, then the number. */
export function probabilityText(p) {
  if (typeof p !== "number") return "";
  let words = "prob_unlikely";
  if (p >= 0.9) words = "prob_very_likely";
  else if (p >= 0.66) words = "prob_likely";
  else if (p >= 0.33) words = "prob_possible";
  const pct = p >= 0.995 ? ">99" : p < 0.005 ? "<1" : String(Math.round(p * 100));
  return t("probability", { words: t(words), pct });
}

/** True when the decision names one class (so it has one appendix and one probability). */
export function isDecided(decision) {
  return Boolean(decision) && (decision.kind === "taxon" || decision.kind === "lookalike");
}

/** What the officer should do, which sets the colour everywhere (answer bar, decision line,
    recent-cases stripe): ``detain`` (Appendix I: red), ``permit`` (Appendix II or III: check the
    permit, amber), ``clear`` (only an in-domain "not listed" answer: a look-alike material or a
    CITES label not listed for this origin: green) and ``refer`` (uncertain, outside the
    training domain, unusable photo: neutral). */
export function actionOf(decision) {
  const d = decision || {};
  if (d.kind === "taxon") {
    if (d.appendix === "I") return "detain";
    if (d.appendix === "II" || d.appendix === "III") return "permit";
    return "clear";
  }
  if (d.kind === "lookalike") return "clear";
  return "refer";
}

/** Fill an appendix badge: colour and text. ``kind`` is a label kind (cites, lookalike,
    not_wildlife), or "unknown" when no single class was decided; a CITES class without an
    appendix is not listed (for this origin). */
export function showAppendix(span, kind, appendix) {
  let badge = "unknown";
  if (kind === "lookalike" || kind === "not_wildlife") badge = "lookalike";
  else if (APPENDICES.includes(appendix)) badge = appendix;
  else if (kind === "cites") badge = "none";
  span.className = "badge badge-" + badge;
  span.textContent = t("appendix_" + badge);
}

/** True for a biological taxon (its name is set in italics); false for a material or group. */
export function isTaxon(taxon) {
  return Boolean(taxon && taxon.scientific_name) && (!taxon.kind || taxon.kind === "taxon");
}

/** The name of a label of the model (from the answer's candidates, else the active model). */
export function labelName(labelId, candidates) {
  const fromTop = (candidates || []).find((c) => c.label === labelId);
  if (fromTop && fromTop.label_name) return fromTop.label_name;
  const fromModel = state.labels.find((l) => l.id === labelId);
  return fromModel ? fromModel.name : labelId || "";
}

/** ``{sci, common}`` for a decision or candidate: a taxon's scientific name (italic) and common
    name, or the common name of a material or product group, or the label's name. */
export function nameParts(taxon, labelText) {
  if (isTaxon(taxon)) return { sci: taxon.scientific_name, common: taxon.common_name || "" };
  if (taxon && taxon.common_name) return { sci: "", common: capitalise(taxon.common_name) };
  return { sci: "", common: capitalise(labelText || "") };
}

/** Append a name to ``el``: the scientific name in italics with the common name after it. */
export function appendName(el, parts) {
  if (parts.sci) {
    const i = document.createElement("i");
    i.textContent = parts.sci;
    el.append(i);
    if (parts.common) el.append(document.createTextNode(" (" + parts.common + ")"));
  } else {
    el.append(document.createTextNode(parts.common));
  }
}

/** A rank ("species") in the interface language. */
export function rankName(rank) {
  const key = "rank_" + rank;
  const text = t(key);
  return text === key ? rank : text;
}

/** What a correction named: its label, else its taxon. */
export function correctionName(fb) {
  if (fb.label) return labelName(fb.label, []);
  if (fb.taxon_id) {
    const taxon = state.taxonCache.get(fb.taxon_id);
    return taxon ? taxon.scientific_name : fb.taxon_id.replace(/[-_]/g, " ");
  }
  return "?";
}

/** The latest feedback, in a few words ("confirmed", "corrected to Elephas maximus"). */
export function feedbackSummary(fb) {
  if (!fb) return t("feedbackNone");
  if (fb.verdict === "confirm") return t("feedbackConfirmed");
  return t("feedbackCorrected", { name: correctionName(fb) });
}
