/* Errors in plain words: the API's problem+json, network failures and the officer's mistakes. */
import { t } from "./i18n.js";
import { $, state } from "./state.js";

/** An HTTP error answer; ``problem`` is the problem+json body (or {}). */
export class ApiError extends Error {
  constructor(status, problem, retryAfter) {
    super((problem && (problem.detail || problem.title)) || "HTTP " + status);
    this.status = status;
    this.problem = problem || {};
    this.retryAfter = retryAfter;
  }
}

/** The request never got an answer (offline, connection reset, timeout). */
export class NetworkError extends Error {}

/** A mistake the officer can fix; shown as interface text ``key``. */
export class UserError extends Error {
  constructor(key) {
    super(key);
    this.key = key;
  }
}

/** Problem slugs the page words itself, in the interface language. */
const PHOTO_PROBLEMS = ["corrupt-image", "image-too-complex", "too-many-views", "mixed-modalities"];

/** The index of the photo a problem of a multi-photo request names, else null. */
function photoOf(problem) {
  const loc = problem && Array.isArray(problem.errors) && problem.errors[0] && problem.errors[0].loc;
  if (!Array.isArray(loc) || loc.length !== 3 || loc[1] !== "images") return null;
  return Number.isInteger(loc[2]) ? loc[2] : null;
}

/** Plain-words text for an error, in the interface language where the page can. */
export function errorText(err) {
  if (err instanceof UserError) return t(err.key);
  if (err instanceof NetworkError) return t("networkFailed");
  if (err instanceof ApiError) {
    if (err.status === 401) return t("error_401");
    if (err.status === 403) return t("error_403");
    if (err.status === 503 && err.retryAfter) {
      return t("error_503", { s: err.retryAfter }) + " " + (err.problem.detail || "");
    }
    if (err.status === 429) return t("error_429", { s: err.retryAfter || 1 });
    // Problems an officer meets with a photo, in the interface language; with several
    // photos of one item, the problem names the photo (errors[0].loc = body, images, index).
    const slug = String(err.problem.type || "").split("/").pop();
    const inPhoto = photoOf(err.problem);
    const prefix = inPhoto === null ? "" : t("errorInPhoto", { n: inPhoto + 1 }) + " ";
    if (PHOTO_PROBLEMS.includes(slug)) return prefix + t("error_" + slug.replace(/-/g, "_"));
    // The service writes `detail` for people: what went wrong and what to do (with several
    // photos it names the photo itself, in the caller's language).
    if (err.problem.detail) return err.problem.detail;
    if (err.problem.title) return err.problem.title;
    return t("error_generic", { status: err.status });
  }
  return err && err.message ? err.message : String(err);
}

/**
 * Show ``err`` in the alert box and, unless ``reveal`` is false (the same error shown again
 * in another language), scroll the box into view: on a phone the officer is usually far below
 * it, at the photo or the answer. A refused key also fires "cites:unauthorised".
 */
export function showError(err, { reveal = true } = {}) {
  state.lastError = err;
  const box = $("error");
  box.textContent = "";
  const strong = document.createElement("strong");
  strong.textContent = t("error_prefix") + " ";
  box.append(strong, document.createTextNode(errorText(err)));
  box.hidden = false;
  if (reveal) {
    const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    box.scrollIntoView({ behavior: still ? "auto" : "smooth", block: "nearest" });
  }
  if (err instanceof ApiError && err.status === 401) {
    document.dispatchEvent(new CustomEvent("cites:unauthorised"));
  }
}

export function clearError() {
  state.lastError = null;
  $("error").hidden = true;
  $("error").textContent = "";
}
