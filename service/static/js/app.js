/* CITES Vision officer page: sign in, photograph an item, read the answer, give feedback.
   Plain JavaScript modules, no build step, nothing fetched from elsewhere; talks to the JSON API
   in docs/api.md. The DOM is built with textContent only, never innerHTML. */
import {
  clearAnswer,
  renderAnswer,
  renderHeatmapToggle,
  setPhoto,
  showModelInfo,
  toggleHeatmap,
} from "./answer.js";
import { api, postIdentification } from "./api.js";
import { ApiError, clearError, NetworkError, showError, UserError } from "./errors.js";
import { initFeedback, relabelFeedback, renderFeedbackForm } from "./feedback.js";
import { initPermit, relabelPermit } from "./permit.js";
import { chooseLanguage, initialLanguage, rewritePage, say, t } from "./i18n.js";
import { preparePhoto } from "./photo.js";
import {
  canIdentifyOffline,
  identifyOffline,
  initOffline,
  refreshOffline,
  registerServiceWorker,
  syncPending,
  useStoredModel,
} from "./offline.js";
import { initRecent, loadRecent } from "./recent.js";
import { $, state } from "./state.js";

const KEY_STORE = "citesVision.apiKey"; // sessionStorage only: gone when the tab closes
const ME_STORE = "citesVision.me"; // who the key belongs to, to keep working offline in this tab
const AUTO_RETRY_DELAY_MS = 1500;

// ---------------------------------------------------------------- languages

/** Put the current language everywhere on the page. */
function relabel() {
  $("lang").value = state.lang;
  rewritePage();
  if (state.lastError && !$("error").hidden) showError(state.lastError, { reveal: false });
  renderWhoami();
  renderHeatmapToggle();
  relabelFeedback();
}

async function switchLanguage(lang) {
  chooseLanguage(lang);
  relabel();
  if (!state.key) return;
  // Guidance and common names come from the API in the requested language: ask again.
  if (state.current) {
    try {
      const ident = await api("/v1/identifications/" + encodeURIComponent(state.current.id));
      show(ident, { keepPhoto: true });
    } catch (err) {
      showError(err);
    }
  }
  loadRecent();
  relabelPermit();
}

// ---------------------------------------------------------------- signing in

async function signIn(key, { offlineMe = null } = {}) {
  const previous = state.key;
  state.key = key;
  let offline = false;
  try {
    state.me = await api("/v1/me");
  } catch (err) {
    // Reloaded without network: the key was checked earlier in this tab; work offline.
    if (!(err instanceof NetworkError) || !offlineMe) {
      state.key = previous;
      throw err;
    }
    state.me = offlineMe;
    offline = true;
  }
  try {
    window.sessionStorage.setItem(KEY_STORE, key);
    window.sessionStorage.setItem(ME_STORE, JSON.stringify(state.me));
  } catch (_err) {
    /* storage refused: the key lasts for this page only */
  }
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  $("apikey").value = "";
  state.offlineSession = offline;
  renderWhoami();
  if (offline) {
    await useStoredModel();
    return;
  }
  loadModel();
  loadRecent();
  refreshOffline().then(() => syncPending());
}

function signOut({ keepError = false } = {}) {
  state.key = null;
  state.me = null;
  state.current = null;
  state.feedbackFor = null;
  try {
    window.sessionStorage.removeItem(KEY_STORE);
    window.sessionStorage.removeItem(ME_STORE);
  } catch (_err) {
    /* nothing stored */
  }
  $("app").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  $("result").hidden = true;
  $("feedback").hidden = true;
  if (!keepError) clearError();
  $("apikey").focus();
}

async function onSignIn(event) {
  event.preventDefault();
  clearError();
  const key = $("apikey").value.trim();
  if (!key) {
    say($("signin-status"), "keyMissing");
    $("apikey").focus();
    return;
  }
  say($("signin-status"), "signingIn");
  try {
    await signIn(key);
    say($("signin-status"), null);
  } catch (err) {
    say($("signin-status"), null);
    showError(err);
    $("apikey").focus();
  }
}

function renderWhoami() {
  const key = state.offlineSession ? "offlineSignedIn" : "signedInAs";
  $("whoami").textContent = state.me
    ? t(key, { name: state.me.name, role: t("role_" + state.me.role) })
    : "";
}

/** The active model: its labels (offered for corrections), modalities and limitations. */
async function loadModel() {
  try {
    state.model = await api("/v1/models/active");
  } catch (_err) {
    state.model = null; // corrections then go by taxon only; the service still checks modality
  }
  const model = state.model || {};
  state.labels = Array.isArray(model.labels) ? model.labels : [];
  // one active model per modality: offer the image types some model answers
  const byModality = model.by_modality || null;
  const modalities = byModality
    ? Object.keys(byModality).filter((m) => byModality[m])
    : Array.isArray(model.modalities) ? model.modalities : ["camera", "xray"];
  const select = $("modality");
  for (const option of select.options) option.disabled = !modalities.includes(option.value);
  if (select.selectedOptions[0] && select.selectedOptions[0].disabled) {
    const usable = [...select.options].find((o) => !o.disabled);
    if (usable) select.value = usable.value;
  }
  const list = $("limitations");
  list.textContent = "";
  for (const sentence of model.limitations || []) {
    const li = document.createElement("li");
    li.textContent = sentence;
    list.append(li);
  }
  showModelInfo();
}

// ---------------------------------------------------------------- photo, upload, answer

const MAX_PHOTOS = 6; // photos of one item in one identification (POST /v1/identifications:views)

/** A photo picked with "Take a photo" or "Choose a file": a new item, its first photo. */
function onFileChosen(event) {
  const file = event.target.files && event.target.files[0];
  event.target.value = ""; // choosing the same file again still fires "change"
  if (!file) return;
  clearError();
  clearAnswer(); // a new photo: the previous answer is not its answer
  state.files = [];
  state.prepared = [];
  if (!acceptPhoto(file)) return;
  state.files = [file];
  renderChosen();
}

/** "Add another photo of the same item": one more view of the item already chosen. */
function onPhotoAdded(event) {
  const file = event.target.files && event.target.files[0];
  event.target.value = "";
  if (!file) return;
  clearError();
  clearAnswer(); // the answer to fewer photos is not the answer to these
  if (state.files.length >= MAX_PHOTOS) {
    showError(new UserError("tooManyPhotos"));
    return;
  }
  if (!acceptPhoto(file)) return;
  state.files.push(file);
  renderChosen();
}

function acceptPhoto(file) {
  if (file.type && !file.type.startsWith("image/")) {
    renderChosen();
    showError(new UserError("notImage"));
    return false;
  }
  return true;
}

/** What is ready to send, the Identify button and the "add another photo" picker. */
function renderChosen() {
  const files = state.files;
  const names = files.map((f) => f.name || "photo");
  if (files.length === 0) say($("chosen"), null);
  else if (files.length === 1) say($("chosen"), "chosenFile", { name: names[0] });
  else say($("chosen"), "chosenFiles", { count: files.length, names: names.join(", ") });
  $("identify-btn").disabled = files.length === 0;
  $("views-picker").hidden = files.length === 0 || files.length >= MAX_PHOTOS;
  $("retry").hidden = true;
}

/** Progress of the upload: a percentage, or null while the service works (indeterminate). */
function setProgress(key, vars, pct) {
  $("upload").hidden = false;
  say($("progress-label"), key, vars);
  const bar = $("progress");
  if (pct === null) bar.removeAttribute("value");
  else bar.value = pct;
}

function uploadOnce(prepared, fields) {
  let spoken = -1; // the label (read out by screen readers) changes in steps of 25%
  return postIdentification(prepared, fields, (pct) => {
    if (pct === null) {
      setProgress("analysing", null, null);
      return;
    }
    const step = Math.floor(pct / 25) * 25;
    if (step !== spoken) {
      spoken = step;
      setProgress("uploading", { pct: step }, pct);
    } else {
      $("progress").value = pct;
    }
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Upload with one automatic retry after a network failure or a busy (503) service. */
async function uploadWithRetry(prepared, fields) {
  try {
    return await uploadOnce(prepared, fields);
  } catch (err) {
    const busy = err instanceof ApiError && err.status === 503;
    if (!(err instanceof NetworkError) && !busy) throw err;
    const wait = busy ? Math.min(10, Number(err.retryAfter) || 2) * 1000 : AUTO_RETRY_DELAY_MS;
    setProgress("retrying", null, null);
    await sleep(wait);
    return uploadOnce(prepared, fields);
  }
}

async function identify(event, { onDevice = false } = {}) {
  if (event) event.preventDefault();
  clearError();
  clearAnswer(); // a new identification: nothing of the previous one stays on screen
  if (!state.files.length) {
    showError(new UserError("noFile"));
    return;
  }
  const origin = $("origin").value.trim().toUpperCase();
  if (origin && !/^[A-Z]{2}$/.test(origin)) {
    showError(new UserError("originInvalid"));
    $("origin").focus();
    return;
  }
  const modality = $("modality").value;
  const several = state.files.length > 1;
  const button = $("identify-btn");
  button.disabled = true;
  $("retry").hidden = true;
  $("identify-here").hidden = true;
  try {
    const onPhone = (onDevice || !navigator.onLine) && canIdentifyOffline(modality);
    setProgress("preparing", null, null);
    for (let i = 0; i < state.files.length; i += 1) {
      if (!state.prepared[i]) state.prepared[i] = await preparePhoto(state.files[i], modality);
    }
    const fields = { modality, origin_country: origin, case_ref: $("caseref").value.trim() };
    const photos = state.prepared.slice(0, state.files.length);
    const ident = onPhone
      ? await identifyHere(photos, fields)
      : await uploadWithRetry(several ? photos : photos[0], fields);
    $("upload").hidden = true; // before scrolling to the answer, so that it does not move
    const located = Boolean(ident.location && ident.location.image_url);
    if (!located) setPhoto(URL.createObjectURL(photos[0].blob));
    show(ident, { keepPhoto: !located, focus: true });
    // An answer made on the phone is not on the service yet: nothing new to list, and asking
    // without network would put a network error above the answer.
    if (!ident.made_on_device) loadRecent();
  } catch (err) {
    clearAnswer();
    showError(err);
    if (err instanceof NetworkError || (err instanceof ApiError && err.status >= 500)) {
      $("retry").hidden = false;
      // The network failed twice: the phone can answer by itself while it stays down.
      $("identify-here").hidden = !(
        err instanceof NetworkError && canIdentifyOffline(modality)
      );
      $("retry").focus();
    }
  } finally {
    $("upload").hidden = true;
    button.disabled = !state.files.length;
  }
}

/** Identify the item from its prepared photos on the phone (no network) and keep the case to
    sync later. */
async function identifyHere(photos, fields) {
  setProgress("identifyingOnDevice", null, null);
  return identifyOffline(photos, fields);
}

/** Show an identification: the answer and the feedback form for it. An answer made on the
    phone has no heat map or feedback until the service has it; it says so and names its
    model. */
function show(ident, options) {
  renderAnswer(ident, options);
  const onDevice = Boolean(ident.made_on_device);
  const note = $("device-note");
  note.hidden = !onDevice;
  say(note, onDevice ? "deviceNote" : null, { version: ident.model_version });
  $("heatmap-toggle").hidden = onDevice;
  if (onDevice) $("feedback").hidden = true;
  else renderFeedbackForm(ident);
}

async function openCase(id) {
  clearError();
  try {
    show(await api("/v1/identifications/" + encodeURIComponent(id)), { focus: true });
  } catch (err) {
    clearAnswer();
    showError(err);
  }
}

// ---------------------------------------------------------------- start

function start() {
  chooseLanguage(initialLanguage());
  relabel();
  $("lang").addEventListener("change", (e) => switchLanguage(e.target.value));
  $("signin-form").addEventListener("submit", onSignIn);
  $("signout").addEventListener("click", () => signOut());
  document.addEventListener("cites:unauthorised", () => {
    if (state.key) signOut({ keepError: true });
  });
  $("camera").addEventListener("change", onFileChosen);
  $("file").addEventListener("change", onFileChosen);
  $("add-photo").addEventListener("change", onPhotoAdded);
  $("modality").addEventListener("change", () => {
    state.prepared = [];
  });
  $("identify-form").addEventListener("submit", identify);
  $("retry").addEventListener("click", () => identify());
  $("identify-here").addEventListener("click", () => identify(null, { onDevice: true }));
  $("heatmap-toggle").addEventListener("click", toggleHeatmap);
  initFeedback({ onSaved: loadRecent });
  initPermit();
  initRecent({ onOpen: openCase });
  initOffline({ onSynced: loadRecent });
  registerServiceWorker();
  window.addEventListener("online", () => {
    if (!state.key) return;
    // Back online: check the key again (then refresh the model and sync), or just sync.
    if (state.offlineSession) signIn(state.key, { offlineMe: state.me }).catch(showError);
    else syncPending();
  });

  let saved = null;
  let savedMe = null;
  try {
    saved = window.sessionStorage.getItem(KEY_STORE);
    savedMe = JSON.parse(window.sessionStorage.getItem(ME_STORE) || "null");
  } catch (_err) {
    saved = null;
  }
  if (saved) {
    signIn(saved, { offlineMe: savedMe }).catch((err) => {
      signOut({ keepError: true });
      showError(err);
    });
  }
}

start(); // modules run after the document has been parsed
