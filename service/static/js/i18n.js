/* Languages: which one to use, interface text in it, and text that follows a change of it. */
import { MESSAGES } from "./messages.js";
import { state } from "./state.js";

export const LANGS = ["en", "fr", "es"];
const LANG_STORE = "citesVision.lang";

/** Interface text for ``key`` in the current language, with {name} placeholders filled. */
export function t(key, vars) {
  const table = MESSAGES[state.lang] || MESSAGES.en;
  let text = key in table ? table[key] : key in MESSAGES.en ? MESSAGES.en[key] : key;
  for (const [name, value] of Object.entries(vars || {})) {
    text = text.split("{" + name + "}").join(String(value));
  }
  return text;
}

/** Show interface text ``key`` in ``el`` and remember it, so that a change of language
    rewrites it. In ``vars`` a value ``{t: key}`` is itself translated and ``{time: iso}``
    written as a clock time. A null ``key`` clears the element. */
export function say(el, key, vars) {
  if (!key) {
    el.textContent = "";
    delete el.dataset.msg;
    return;
  }
  el.dataset.msg = JSON.stringify({ key, vars: vars || null });
  const filled = {};
  for (const [name, value] of Object.entries(vars || {})) {
    if (value && typeof value === "object" && value.time) filled[name] = clockTime(value.time);
    else if (value && typeof value === "object") filled[name] = t(value.t);
    else filled[name] = value;
  }
  el.textContent = t(key, filled);
}

/** Put the current language into the static page and everything said with ``say``. */
export function rewritePage() {
  document.documentElement.lang = state.lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":");
      el.setAttribute(attr, t(key));
    }
  }
  for (const el of document.querySelectorAll("[data-msg]")) {
    const msg = JSON.parse(el.dataset.msg);
    say(el, msg.key, msg.vars);
  }
}

/** The stored choice, else the first of the browser's languages the page speaks, else en. */
export function initialLanguage() {
  try {
    const stored = window.localStorage.getItem(LANG_STORE);
    if (LANGS.includes(stored)) return stored;
  } catch (_err) {
    /* storage refused: fall through to the browser's languages */
  }
  const prefs = navigator.languages && navigator.languages.length
    ? navigator.languages : [navigator.language || "en"];
  for (const pref of prefs) {
    const base = String(pref).toLowerCase().split("-")[0];
    if (LANGS.includes(base)) return base;
  }
  return "en";
}

/** Use ``lang`` from now on and remember the choice (not a secret: localStorage is fine). */
export function chooseLanguage(lang) {
  state.lang = LANGS.includes(lang) ? lang : "en";
  try {
    window.localStorage.setItem(LANG_STORE, state.lang);
  } catch (_err) {
    /* private mode: the choice lasts for this page only */
  }
}

/** The Accept-Language header: the interface language first, then the others. */
export function acceptLanguage() {
  const others = LANGS.filter((l) => l !== state.lang);
  return [state.lang, others[0] + ";q=0.5", others[1] + ";q=0.4"].join(", ");
}

/** A time of day (for "saved at 10:42"). */
export function clockTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleTimeString(state.lang, { hour: "2-digit", minute: "2-digit" });
}

/** A date and time. */
export function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(state.lang, { dateStyle: "medium", timeStyle: "short" });
}

/** ``text`` with its first letter in upper case, for names at the start of a line. */
export function capitalise(text) {
  return text ? text.charAt(0).toLocaleUpperCase(state.lang) + text.slice(1) : "";
}
