/* The answer: decision, name, appendix badge, probability, guidance, candidates, photo and
   heat map. */
import { apiBlobUrl, getTaxon } from "./api.js";
import { showError } from "./errors.js";
import { formatTime, say, t } from "./i18n.js";
import { $, state } from "./state.js";
import {
  actionOf,
  APPENDICES,
  appendName,
  isDecided,
  labelName,
  nameParts,
  probabilityText,
  showAppendix,
} from "./words.js";

/** Show identification ``ident``; ``focus`` scrolls to it and moves the focus to its heading. */
export function renderAnswer(ident, { focus = false, keepPhoto = false } = {}) {
  state.current = ident;
  const d = ident.decision || { kind: "uncertain" };
  const kind = d.kind || "uncertain";
  const decided = isDecided(d);
  const top = Array.isArray(ident.top_k) ? ident.top_k : [];
  const section = $("result");
  section.hidden = false;
  section.dataset.decision = kind;
  section.dataset.action = actionOf(d);
  section.dataset.id = ident.id;

  const decision = $("decision");
  decision.textContent = t("decision_" + kind);
  decision.className = "decision decision-" + kind + " action-" + actionOf(d);
  const parts = decided || d.taxon
    ? nameParts(d.taxon, d.label_name || labelName(d.label, top))
    : { sci: "", common: t("noTaxon") };
  $("sci").textContent = parts.sci;
  $("common").textContent = parts.sci && parts.common ? "(" + parts.common + ")" : parts.common;

  // Without a decided class there is no single appendix or probability: the closest
  // candidates below carry theirs.
  $("facts").hidden = !decided;
  showAppendix($("badge"), kind === "lookalike" ? "lookalike" : "cites", d.appendix);
  const unverified = decided && Boolean(d.listing) && d.listing.verified === false;
  $("unverified").hidden = !unverified;
  $("unverified-hint").hidden = !unverified;
  $("prob").textContent = decided ? probabilityText(d.probability) : "";
  noteOriginDependence(ident);
  const caveat = $("caveat");
  caveat.textContent = d.caveat || "";
  caveat.hidden = !d.caveat;

  renderGuidance(ident.guidance || {}, kind);
  const title = $("candidates-title");
  title.dataset.i18n = decided ? "otherCandidates" : "closestCandidates";
  title.textContent = t(title.dataset.i18n);
  renderCandidates(decided ? top.filter((c) => !d.label || c.label !== d.label) : top);
  renderViews(ident);

  const meta = [t("model", { version: ident.model_version })];
  if (ident.case_ref) meta.push(t("caseLabel", { ref: ident.case_ref }));
  if (ident.created_at) meta.push(formatTime(ident.created_at));
  $("meta").textContent = meta.join(" · ");
  showModelInfo();

  const located = Boolean(ident.location && ident.location.image_url);
  if (located) loadPhoto(ident, ident.location.image_url); // the scan with the box drawn
  else if (!keepPhoto || !state.photoUrl) loadPhoto(ident);
  say($("location-note"), located ? "locatedCaption" : null);
  $("location-note").hidden = !located;
  if (state.heatmapFor !== ident.id) resetHeatmap();
  if (focus) {
    const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    section.scrollIntoView({ behavior: still ? "auto" : "smooth", block: "start" });
    $("result-title").setAttribute("tabindex", "-1");
    $("result-title").focus({ preventScroll: true });
  }
}

function renderGuidance(guidance, kind) {
  const title = $("guidance-title");
  title.textContent = guidance.title || "";
  // A guidance title that repeats the decision line above it is not shown twice.
  const same = (guidance.title || "").trim().toLowerCase() === t("decision_" + kind).toLowerCase();
  title.hidden = same || !guidance.title;
  $("guidance-text").textContent = guidance.text || "";
  $("guidance").hidden = !(guidance.title || guidance.text);
  if (guidance.language) $("guidance").lang = guidance.language;
}

function renderCandidates(candidates) {
  const list = $("candidates");
  list.textContent = "";
  if (!candidates.length) {
    const li = document.createElement("li");
    li.className = "hint";
    li.textContent = t("noOtherCandidates");
    list.append(li);
    return;
  }
  for (const c of candidates) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "cand-name";
    appendName(name, nameParts(c.taxon, c.label_name || c.label));
    const facts = document.createElement("span");
    facts.className = "cand-facts";
    const badge = document.createElement("span");
    showAppendix(badge, c.kind, c.appendix);
    const flag = document.createElement("span");
    if (c.listing && c.listing.verified === false) {
      flag.className = "flag flag-unverified";
      flag.textContent = t("listingUnverified");
    }
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = probabilityText(c.probability);
    facts.append(badge, document.createTextNode(" "), flag, document.createTextNode(" "), prob);
    li.append(name, facts);
    list.append(li);
  }
}

/** Several photos of one item (POST /v1/identifications:views): what each photo said on its
    own, which ones the answer left out, and a button per photo to look at it. */
function renderViews(ident) {
  const views = Array.isArray(ident.views) ? ident.views : [];
  const box = $("views-answer");
  const list = $("views");
  list.textContent = "";
  box.hidden = views.length < 2;
  if (box.hidden) return;
  const used = views.filter((v) => v.used).length;
  say($("views-summary"), "viewsSummary", { used, count: views.length });
  for (const view of views) {
    const li = document.createElement("li");
    li.dataset.position = String(view.position);
    if (!view.used) li.className = "view-excluded";
    const open = document.createElement("button");
    open.type = "button";
    open.className = "small";
    open.textContent = t("viewNumber", { n: view.position + 1 });
    open.addEventListener("click", () => (view.blob // an answer made on the phone: its own photo
      ? setPhoto(URL.createObjectURL(view.blob))
      : loadPhoto(ident, view.image && view.image.url)));
    const said = document.createElement("span");
    const kind = (view.decision && view.decision.kind) || "uncertain";
    const words = [t("decision_" + kind)];
    if (view.top && (kind === "taxon" || kind === "lookalike")) {
      words.push(view.top.label_name || view.top.label, probabilityText(view.top.probability));
    }
    if (!view.used) words.push(t("viewLeftOut"));
    said.textContent = " " + words.join(" · ");
    li.append(open, said);
    list.append(li);
  }
}

/** Without an origin country the service gives the strictest listing of a taxon listed by
    population; say so next to the badge. */
async function noteOriginDependence(ident) {
  const note = $("origin-note");
  say(note, null);
  const d = ident.decision || {};
  if (ident.origin_country || !d.taxon || !APPENDICES.includes(d.appendix)) return;
  try {
    const taxon = await getTaxon(d.taxon.id);
    const split = (taxon.populations || []).some((p) => APPENDICES.includes(p.appendix));
    if (split && state.current === ident) say(note, "originDepends");
  } catch (_err) {
    /* only a hint: the badge already shows the strictest listing */
  }
}

/** Take the answer off the page: a new photo, an error or a new identification must never
    leave the previous answer on screen, where it could be read as the answer to the new one. */
export function clearAnswer() {
  state.current = null;
  state.feedbackFor = null;
  const section = $("result");
  section.hidden = true;
  delete section.dataset.decision;
  delete section.dataset.action;
  delete section.dataset.id;
  for (const id of ["decision", "sci", "common", "prob", "caveat", "meta"]) $(id).textContent = "";
  $("caveat").hidden = true;
  $("candidates").textContent = "";
  $("views").textContent = "";
  $("views-answer").hidden = true;
  say($("origin-note"), null);
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photoUrl = null;
  $("photo").removeAttribute("src");
  resetHeatmap();
  $("feedback").hidden = true;
}

/** The active model's limitations, for answers of the active model only. */
export function showModelInfo() {
  const ident = state.current;
  const model = state.model;
  $("model-info").hidden = !(ident && model && ident.model_version === model.version
    && $("limitations").children.length);
}

// ---------------------------------------------------------------- photo and heat map

/** Show ``url`` (an object URL) as the photo of the answer. */
export function setPhoto(url) {
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photoUrl = url;
  $("photo").src = url;
}

async function loadPhoto(ident, url) {
  const path = url || (ident.image && ident.image.url);
  if (!path) return;
  try {
    setPhoto(await apiBlobUrl(path));
  } catch (err) {
    showError(err);
  }
}

function resetHeatmap() {
  if (state.heatmapUrl) URL.revokeObjectURL(state.heatmapUrl);
  state.heatmapUrl = null;
  state.heatmapFor = null;
  $("heatmap").hidden = true;
  $("heatmap").removeAttribute("src");
  say($("heatmap-status"), null);
  renderHeatmapToggle();
}

/** The toggle's text and pressed state (also after a change of language). */
export function renderHeatmapToggle() {
  const on = !$("heatmap").hidden;
  const button = $("heatmap-toggle");
  button.setAttribute("aria-pressed", on ? "true" : "false");
  button.textContent = on ? t("hideHeatmap") : t("showHeatmap");
  if (on) say($("heatmap-status"), "heatmapShown");
}

/** Lay the service's heat map over the photo, or take it away. */
export async function toggleHeatmap() {
  const ident = state.current;
  if (!ident) return;
  const img = $("heatmap");
  if (!img.hidden) {
    img.hidden = true;
    say($("heatmap-status"), null);
    renderHeatmapToggle();
    return;
  }
  if (state.heatmapFor !== ident.id) {
    say($("heatmap-status"), "heatmapLoading");
    try {
      const path = ident.heatmap_url
        || "/v1/identifications/" + encodeURIComponent(ident.id) + "/heatmap";
      const url = await apiBlobUrl(path);
      resetHeatmap();
      state.heatmapUrl = url;
      state.heatmapFor = ident.id;
      img.src = url;
      await img.decode().catch(() => undefined);
    } catch (err) {
      say($("heatmap-status"), null);
      showError(err);
      return;
    }
  }
  img.hidden = false;
  renderHeatmapToggle();
}
