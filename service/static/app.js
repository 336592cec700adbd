/* CITES Vision officer page: sign in, photograph an item, read the suggestion, give feedback.
   Plain JavaScript, no build step, no external resources. Talks to the JSON API in docs/api.md.
   All text shown comes from i18n.js (window.CITES_I18N) or from the API; the DOM is built with
   textContent only, never innerHTML. */
"use strict";

(function () {
  const I18N = window.CITES_I18N;
  const LANGS = ["en", "fr", "es"];
  const KEY_STORE = "citesVision.apiKey"; // sessionStorage only: gone when the tab closes
  const LANG_STORE = "citesVision.lang";
  const MAX_SIDE = 1600; // longest side of the uploaded photo, in pixels
  const JPEG_QUALITY = 0.85;
  const SEND_AS_IS_BYTES = 1500000; // a small JPEG within MAX_SIDE is sent untouched
  const UPLOAD_TIMEOUT_MS = 120000;
  const AUTO_RETRY_DELAY_MS = 1500;
  const RECENT_LIMIT = 10;
  const SEARCH_DELAY_MS = 250;

  const $ = (id) => document.getElementById(id);

  const state = {
    key: null,
    me: null,
    lang: "en",
    file: null, // the File the officer picked
    prepared: null, // {blob, name} ready to upload (downscaled)
    photoUrl: null, // object URL of the photo shown with the result
    heatmapUrl: null, // object URL of the heat map PNG
    heatmapFor: null, // identification id the heat map belongs to
    current: null, // the identification shown
    labels: [], // labels of the active model: [{id, name, taxon_id, kind}]
    chosen: null, // correction chosen in the search box: {label, taxon_id, text}
    options: [], // options currently listed in the search box
    active: -1, // index of the highlighted option
    searchTimer: 0,
    searchSeq: 0,
    recent: [],
    taxonCache: new Map(),
  };

  // ---------------------------------------------------------------- text and languages

  /** Interface text for `key` in the current language, with {name} placeholders filled. */
  function t(key, vars) {
    const table = I18N[state.lang] || I18N.en;
    let text = key in table ? table[key] : I18N.en[key] !== undefined ? I18N.en[key] : key;
    if (vars) {
      for (const [name, value] of Object.entries(vars)) {
        text = text.split("{" + name + "}").join(String(value));
      }
    }
    return text;
  }

  /** Show interface text ``key`` in ``el`` and remember it, so that a change of language
      rewrites it; a value ``{t: key}`` in ``vars`` is itself translated. ``key`` null clears. */
  function say(el, key, vars) {
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

  /** The latest feedback already given on an identification, in words. */
  function sayFeedback(el, fb) {
    if (!fb) say(el, null);
    else if (fb.verdict === "confirm") say(el, "earlierConfirmed");
    else say(el, "earlierCorrected", { name: correctionName(fb) });
  }

  /** The first of the browser's preferred languages that the page speaks (else English). */
  function browserLanguage() {
    const prefs = navigator.languages && navigator.languages.length
      ? navigator.languages : [navigator.language || "en"];
    for (const pref of prefs) {
      const base = String(pref).toLowerCase().split("-")[0];
      if (LANGS.includes(base)) return base;
    }
    return "en";
  }

  function storedLanguage() {
    try {
      const lang = window.localStorage.getItem(LANG_STORE);
      return LANGS.includes(lang) ? lang : null;
    } catch (_err) {
      return null;
    }
  }

  /** Put the interface text of the current language into the static page. */
  function applyLanguage() {
    document.documentElement.lang = state.lang;
    $("lang").value = state.lang;
    for (const el of document.querySelectorAll("[data-i18n]")) {
      el.textContent = t(el.dataset.i18n);
    }
    for (const el of document.querySelectorAll("[data-msg]")) {
      const msg = JSON.parse(el.dataset.msg);
      say(el, msg.key, msg.vars);
    }
    if (state.lastError && !$("error").hidden) showError(state.lastError);
    for (const el of document.querySelectorAll("[data-i18n-attr]")) {
      for (const pair of el.dataset.i18nAttr.split(";")) {
        const [attr, key] = pair.split(":");
        el.setAttribute(attr, t(key));
      }
    }
    renderWhoami();
    renderHeatmapToggle();
    showChosen();
    if (!$("taxon-options").hidden) showOptions(state.options, $("taxon-search").value);
  }

  async function setLanguage(lang) {
    state.lang = LANGS.includes(lang) ? lang : "en";
    try {
      window.localStorage.setItem(LANG_STORE, state.lang);
    } catch (_err) {
      /* private mode: the choice lasts for this page only */
    }
    applyLanguage();
    if (!state.key) return;
    // Guidance and common names come from the API in the requested language: ask again.
    if (state.current) {
      try {
        const ident = await api("/v1/identifications/" + encodeURIComponent(state.current.id));
        renderResult(ident, { keepPhoto: true });
      } catch (err) {
        showError(err);
      }
    }
    loadRecent();
  }

  // ---------------------------------------------------------------- errors

  class ApiError extends Error {
    constructor(status, problem, retryAfter) {
      super((problem && (problem.detail || problem.title)) || "HTTP " + status);
      this.status = status;
      this.problem = problem || {};
      this.retryAfter = retryAfter;
    }
  }

  class NetworkError extends Error {}

  /** A mistake the officer can fix; shown as interface text ``key``. */
  class UserError extends Error {
    constructor(key) {
      super(key);
      this.key = key;
    }
  }

  /** Plain-words text for an error, in the interface language where we can. */
  function errorText(err) {
    if (err instanceof UserError) return t(err.key);
    if (err instanceof NetworkError) return t("networkFailed");
    if (err instanceof ApiError) {
      if (err.status === 401) return t("error_401");
      if (err.status === 403) return t("error_403");
      if (err.status === 503 && err.retryAfter) {
        return t("error_503", { s: err.retryAfter }) + " " + (err.problem.detail || "");
      }
      // The service writes `detail` for people: what went wrong and what to do.
      if (err.problem.detail) return err.problem.detail;
      if (err.problem.title) return err.problem.title;
      return t("error_generic", { status: err.status });
    }
    return err && err.message ? err.message : String(err);
  }

  function showError(err) {
    state.lastError = err;
    const box = $("error");
    box.textContent = "";
    const strong = document.createElement("strong");
    strong.textContent = t("error_prefix") + " ";
    box.append(strong, document.createTextNode(errorText(err)));
    box.hidden = false;
    if (err instanceof ApiError && err.status === 401 && state.key) signOut({ keepError: true });
  }

  function clearError() {
    state.lastError = null;
    $("error").hidden = true;
    $("error").textContent = "";
  }

  // ---------------------------------------------------------------- API

  function headers(extra) {
    const h = { Accept: "application/json", "Accept-Language": acceptLanguage(), ...extra };
    if (state.key) h.Authorization = "Bearer " + state.key;
    return h;
  }

  function acceptLanguage() {
    const others = LANGS.filter((l) => l !== state.lang);
    return [state.lang, others[0] + ";q=0.5", others[1] + ";q=0.4"].join(", ");
  }

  async function problemFrom(response) {
    try {
      return await response.json();
    } catch (_err) {
      return null;
    }
  }

  /** JSON call to the API; throws ApiError (with the problem+json body) or NetworkError. */
  async function api(path, options) {
    const opts = options || {};
    let response;
    try {
      response = await fetch(path, {
        method: opts.method || "GET",
        headers: headers(opts.body ? { "Content-Type": "application/json" } : {}),
        body: opts.body ? JSON.stringify(opts.body) : undefined,
        cache: "no-store",
      });
    } catch (_err) {
      throw new NetworkError("network");
    }
    if (!response.ok) {
      throw new ApiError(response.status, await problemFrom(response),
        response.headers.get("Retry-After"));
    }
    return response.json();
  }

  /** An authenticated binary resource (image, heat map) as an object URL. */
  async function apiBlobUrl(path) {
    let response;
    try {
      response = await fetch(path, { headers: headers({ Accept: "image/*" }), cache: "no-store" });
    } catch (_err) {
      throw new NetworkError("network");
    }
    if (!response.ok) throw new ApiError(response.status, await problemFrom(response), null);
    return URL.createObjectURL(await response.blob());
  }

  // ---------------------------------------------------------------- sign in

  async function signIn(key) {
    const previous = state.key;
    state.key = key;
    try {
      state.me = await api("/v1/me");
    } catch (err) {
      state.key = previous;
      throw err;
    }
    try {
      window.sessionStorage.setItem(KEY_STORE, key);
    } catch (_err) {
      /* storage refused: the key lasts for this page only */
    }
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    $("apikey").value = "";
    renderWhoami();
    loadModel();
    loadRecent();
  }

  function signOut(opts) {
    state.key = null;
    state.me = null;
    try {
      window.sessionStorage.removeItem(KEY_STORE);
    } catch (_err) {
      /* nothing stored */
    }
    $("app").hidden = true;
    $("signout").hidden = true;
    $("signin").hidden = false;
    $("result").hidden = true;
    $("feedback").hidden = true;
    state.current = null;
    if (!(opts && opts.keepError)) clearError();
    $("apikey").focus();
  }

  function renderWhoami() {
    $("whoami").textContent = state.me
      ? t("signedInAs", { name: state.me.name, role: t("role_" + state.me.role) })
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
    const modalities = Array.isArray(model.modalities) ? model.modalities : ["camera", "xray"];
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

  /** Limitations are shown for answers of the active model only. */
  function showModelInfo() {
    const ident = state.current;
    const model = state.model;
    $("model-info").hidden = !(ident && model && ident.model_version === model.version
      && $("limitations").children.length);
  }

  // ---------------------------------------------------------------- choosing the photo

  function onFileChosen(event) {
    const file = event.target.files && event.target.files[0];
    event.target.value = ""; // choosing the same file again still fires "change"
    if (!file) return;
    clearError();
    if (file.type && !file.type.startsWith("image/")) {
      showError(new UserError("notImage"));
      return;
    }
    state.file = file;
    state.prepared = null;
    say($("chosen"), "chosenFile", { name: file.name || "photo" });
    $("identify-btn").disabled = false;
    $("retry").hidden = true;
  }

  /** Decode with EXIF orientation applied; null when the browser cannot decode it (HEIC, TIFF). */
  async function decode(file) {
    if (window.createImageBitmap) {
      try {
        return await createImageBitmap(file, { imageOrientation: "from-image" });
      } catch (_err) {
        /* fall back to an <img>, which also honours EXIF orientation */
      }
    }
    const url = URL.createObjectURL(file);
    try {
      const img = new Image();
      img.src = url;
      await img.decode();
      return img;
    } catch (_err) {
      return null;
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  function canvasToBlob(canvas) {
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
  }

  /** Downscale to MAX_SIDE as JPEG; small JPEGs, x-ray scans and files the browser cannot
      decode go as they are (the service reads HEIC and 16-bit TIFF itself). */
  async function prepare(file, modality) {
    const baseName = (file.name || "photo").replace(/\.[^.]*$/, "");
    const isJpeg = file.type === "image/jpeg";
    // X-ray scans may be 16-bit grayscale: a canvas would flatten them to 8 bits.
    if (modality === "xray" && !isJpeg) return { blob: file, name: file.name || "scan" };
    const image = await decode(file);
    if (!image) return { blob: file, name: file.name || "photo" };
    const width = image.width;
    const height = image.height;
    const scale = Math.min(1, MAX_SIDE / Math.max(width, height));
    if (scale === 1 && isJpeg && file.size <= SEND_AS_IS_BYTES) {
      if (image.close) image.close();
      return { blob: file, name: file.name || "photo.jpg" };
    }
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(width * scale));
    canvas.height = Math.max(1, Math.round(height * scale));
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    if (image.close) image.close();
    const blob = await canvasToBlob(canvas);
    if (!blob) return { blob: file, name: file.name || "photo" };
    return { blob, name: baseName + ".jpg" };
  }

  // ---------------------------------------------------------------- upload

  function setProgress(key, vars, pct) {
    $("upload").hidden = false;
    say($("progress-label"), key, vars);
    const bar = $("progress");
    if (pct === null) bar.removeAttribute("value"); // indeterminate while the model works
    else bar.value = pct;
  }

  /** One upload with XMLHttpRequest (for upload progress); resolves with the identification. */
  function uploadOnce(prepared, fields) {
    return new Promise((resolve, reject) => {
      const form = new FormData();
      form.append("image", prepared.blob, prepared.name);
      for (const [name, value] of Object.entries(fields)) {
        if (value !== "" && value !== null && value !== undefined) form.append(name, value);
      }
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/identifications");
      const h = headers();
      for (const [name, value] of Object.entries(h)) xhr.setRequestHeader(name, value);
      xhr.timeout = UPLOAD_TIMEOUT_MS;
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) {
          const pct = Math.round((100 * e.loaded) / e.total);
          setProgress("uploading", { pct }, pct);
        }
      };
      xhr.upload.onload = () => setProgress("analysing", null, null);
      xhr.onerror = () => reject(new NetworkError("network"));
      xhr.ontimeout = () => reject(new NetworkError("timeout"));
      xhr.onabort = () => reject(new NetworkError("abort"));
      xhr.onload = () => {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch (_err) {
          body = null;
        }
        if (xhr.status >= 200 && xhr.status < 300 && body) resolve(body);
        else reject(new ApiError(xhr.status, body, xhr.getResponseHeader("Retry-After")));
      };
      setProgress("uploading", { pct: 0 }, 0);
      xhr.send(form);
    });
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /** Upload with one automatic retry on a network failure or a busy (503) service. */
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

  async function identify(event) {
    if (event) event.preventDefault();
    clearError();
    if (!state.file) {
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
    const button = $("identify-btn");
    button.disabled = true;
    $("retry").hidden = true;
    try {
      if (!state.prepared) {
        setProgress("preparing", null, null);
        state.prepared = await prepare(state.file, modality);
      }
      const ident = await uploadWithRetry(state.prepared, {
        modality,
        origin_country: origin,
        case_ref: $("caseref").value.trim(),
      });
      $("upload").hidden = true; // before scrolling to the answer, so that it does not move
      setPhoto(URL.createObjectURL(state.prepared.blob));
      renderResult(ident, { keepPhoto: true, focus: true });
      loadRecent();
    } catch (err) {
      showError(err);
      if (err instanceof NetworkError || (err instanceof ApiError && err.status >= 500)) {
        $("retry").hidden = false;
        $("retry").focus();
      }
    } finally {
      $("upload").hidden = true;
      button.disabled = !state.file;
    }
  }

  // ---------------------------------------------------------------- the answer

  function probabilityWords(p) {
    if (p >= 0.9) return t("prob_very_likely");
    if (p >= 0.66) return t("prob_likely");
    if (p >= 0.33) return t("prob_possible");
    return t("prob_unlikely");
  }

  function probabilityText(p) {
    if (typeof p !== "number") return "";
    const pct = p >= 0.995 ? ">99" : p < 0.005 ? "<1" : String(Math.round(p * 100));
    return t("probability", { words: probabilityWords(p), pct });
  }

  const APPENDICES = ["I", "II", "III"];

  /** Fill the CITES appendix badge. ``kind`` is a label kind (cites, lookalike, not_wildlife)
      or "unknown" when no single class was decided; a CITES class without an appendix is not
      listed (for this origin). */
  function showAppendix(span, kind, appendix) {
    if (kind === "lookalike" || kind === "not_wildlife") fillBadge(span, "lookalike");
    else if (APPENDICES.includes(appendix)) fillBadge(span, appendix);
    else if (kind === "cites") fillBadge(span, "none");
    else fillBadge(span, "unknown");
  }

  function fillBadge(span, kindName) {
    span.className = "badge badge-" + kindName;
    span.textContent = t("appendix_" + kindName);
  }

  async function getTaxon(taxonId) {
    if (!state.taxonCache.has(taxonId)) {
      state.taxonCache.set(taxonId, await api("/v1/taxa/" + encodeURIComponent(taxonId)));
    }
    return state.taxonCache.get(taxonId);
  }

  /** Without an origin country the service reports the strictest listing of a taxon listed
      by population; say so next to the badge. */
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
      /* the note is a hint; the badge already shows the strictest listing */
    }
  }

  function labelName(labelId, candidates) {
    const fromTop = (candidates || []).find((c) => c.label === labelId);
    if (fromTop && fromTop.label_name) return fromTop.label_name;
    const fromModel = state.labels.find((l) => l.id === labelId);
    return fromModel ? fromModel.name : labelId || "";
  }

  /** Name parts of a top-k entry: scientific (italic) and common / label name. */
  function candidateNames(c) {
    if (c.taxon && isTaxon(c.taxon)) {
      return { sci: c.taxon.scientific_name, common: c.taxon.common_name || c.label_name };
    }
    if (c.taxon && c.taxon.common_name) return { sci: "", common: capitalise(c.taxon.common_name) };
    return { sci: "", common: capitalise(c.label_name || c.label) };
  }

  function capitalise(text) {
    return text ? text.charAt(0).toLocaleUpperCase(state.lang) + text.slice(1) : "";
  }

  /** True for a biological taxon (its name is set in italics); false for a material or group. */
  function isTaxon(taxon) {
    return Boolean(taxon && taxon.scientific_name) && (!taxon.kind || taxon.kind === "taxon");
  }

  function renderResult(ident, opts) {
    const options = opts || {};
    state.current = ident;
    const d = ident.decision || { kind: "uncertain" };
    const top = Array.isArray(ident.top_k) ? ident.top_k : [];
    const kind = d.kind || "uncertain";

    $("result").hidden = false;
    $("result").dataset.decision = kind;
    $("result").dataset.id = ident.id;
    const decision = $("decision");
    decision.textContent = t("decision_" + kind);
    decision.className = "decision decision-" + kind;

    let sci = "";
    let common = "";
    if (isTaxon(d.taxon)) {
      sci = d.taxon.scientific_name;
      common = d.taxon.common_name || "";
    } else if (d.taxon) {
      common = capitalise(d.taxon.common_name || d.taxon.scientific_name || d.label_name || "");
    } else if (d.label) {
      common = d.label_name || labelName(d.label, top);
    } else {
      common = t("noTaxon");
    }
    $("sci").textContent = sci;
    $("common").textContent = sci && common ? "(" + common + ")" : common;

    const decidedKind = kind === "lookalike" ? "lookalike" : kind === "taxon" ? "cites" : "unknown";
    showAppendix($("badge"), decidedKind, d.appendix);
    noteOriginDependence(ident);
    // Without a decided class there is no single appendix or probability to show: the
    // closest candidates below carry theirs.
    const decided = kind === "taxon" || kind === "lookalike";
    $("facts").hidden = !decided;
    $("prob").textContent = decided ? probabilityText(d.probability) : "";

    const guidance = ident.guidance || {};
    $("guidance-title").textContent = guidance.title || "";
    // A guidance title that repeats the decision line above it is not shown twice.
    const title = (guidance.title || "").trim().toLowerCase();
    const same = title === t("decision_" + kind).toLowerCase();
    $("guidance-title").hidden = same || !guidance.title;
    $("guidance-text").textContent = guidance.text || "";
    $("guidance").hidden = !(guidance.title || guidance.text);
    if (guidance.language) $("guidance").lang = guidance.language;

    const candidatesTitle = $("candidates-title");
    candidatesTitle.dataset.i18n = decided ? "otherCandidates" : "closestCandidates";
    candidatesTitle.textContent = t(candidatesTitle.dataset.i18n);
    renderCandidates(top, decided ? d.label : null);

    const meta = [t("model", { version: ident.model_version })];
    if (ident.case_ref) meta.push(t("caseLabel", { ref: ident.case_ref }));
    if (ident.created_at) meta.push(formatTime(ident.created_at));
    $("meta").textContent = meta.join(" · ");
    showModelInfo();

    if (!options.keepPhoto || !state.photoUrl) loadPhoto(ident);
    if (state.heatmapFor !== ident.id) resetHeatmap();
    renderFeedbackForm(ident);
    if (options.focus) {
      const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      $("result").scrollIntoView({ behavior: still ? "auto" : "smooth", block: "start" });
      $("result-title").setAttribute("tabindex", "-1");
      $("result-title").focus({ preventScroll: true });
    }
  }

  function renderCandidates(top, decidedLabel) {
    const list = $("candidates");
    list.textContent = "";
    const others = top.filter((c) => !(decidedLabel && c.label === decidedLabel));
    const shown = decidedLabel ? others : top;
    if (!shown.length) {
      const li = document.createElement("li");
      li.className = "hint";
      li.textContent = t("noOtherCandidates");
      list.append(li);
      return;
    }
    for (const c of shown) {
      const li = document.createElement("li");
      const names = candidateNames(c);
      const name = document.createElement("span");
      name.className = "cand-name";
      if (names.sci) {
        const i = document.createElement("i");
        i.textContent = names.sci;
        name.append(i, document.createTextNode(names.common ? " (" + names.common + ")" : ""));
      } else {
        name.textContent = names.common;
      }
      const facts = document.createElement("span");
      facts.className = "cand-facts";
      const badge = document.createElement("span");
      showAppendix(badge, c.kind, c.appendix);
      const prob = document.createElement("span");
      prob.className = "prob";
      prob.textContent = probabilityText(c.probability);
      facts.append(badge, document.createTextNode(" "), prob);
      li.append(name, facts);
      list.append(li);
    }
  }

  function clockTime(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso;
    return date.toLocaleTimeString(state.lang, { hour: "2-digit", minute: "2-digit" });
  }

  function formatTime(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso;
    return date.toLocaleString(state.lang, { dateStyle: "medium", timeStyle: "short" });
  }

  // ---------------------------------------------------------------- photo and heat map

  function setPhoto(url) {
    if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
    state.photoUrl = url;
    $("photo").src = url;
  }

  async function loadPhoto(ident) {
    if (!ident.image || !ident.image.url) return;
    try {
      setPhoto(await apiBlobUrl(ident.image.url));
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

  function renderHeatmapToggle() {
    const on = !$("heatmap").hidden;
    const button = $("heatmap-toggle");
    button.setAttribute("aria-pressed", on ? "true" : "false");
    button.textContent = on ? t("hideHeatmap") : t("showHeatmap");
    if (on) say($("heatmap-status"), "heatmapShown");
  }

  async function toggleHeatmap() {
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

  // ---------------------------------------------------------------- feedback

  function renderFeedbackForm(ident) {
    $("feedback").hidden = !state.me || !["officer", "trainer", "admin"].includes(state.me.role);
    if (state.feedbackFor === ident.id) return; // keep what the officer is typing
    state.feedbackFor = ident.id;
    $("feedback-form").reset();
    $("fb-caseref").value = ident.case_ref || "";
    say($("confirm-text"), "confirmName", { name: confirmedName(ident) });
    $("correction").hidden = true;
    state.chosen = null;
    say($("taxon-chosen"), null);
    sayFeedback($("feedback-status"), ident.feedback);
    closeOptions();
  }

  /** What "confirm" agrees with: the decided class, else the first candidate (docs/api.md). */
  function confirmedName(ident) {
    const d = ident.decision || {};
    const decided = d.kind === "taxon" || d.kind === "lookalike";
    const top = (ident.top_k || [])[0];
    const nameOf = (taxon, fallback) => {
      if (isTaxon(taxon)) return taxon.scientific_name;
      return (taxon && taxon.common_name) || fallback || "?";
    };
    if (decided) return nameOf(d.taxon, d.label_name || labelName(d.label, ident.top_k));
    return top ? nameOf(top.taxon, top.label_name) : "?";
  }

  function feedbackSummary(fb) {
    if (fb.verdict === "confirm") return t("feedbackConfirmed");
    return t("feedbackCorrected", { name: correctionName(fb) });
  }

  function correctionName(fb) {
    if (fb.label) return labelName(fb.label, []);
    if (fb.taxon_id) {
      const taxon = state.taxonCache.get(fb.taxon_id);
      return taxon ? taxon.scientific_name : fb.taxon_id.replace(/_/g, " ");
    }
    return "?";
  }

  function onVerdictChange() {
    const correct = document.querySelector("input[name=verdict]:checked").value === "correct";
    $("correction").hidden = !correct;
    if (correct) $("taxon-search").focus();
  }

  async function sendFeedback(event) {
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
    // Feedback has no case field of its own (docs/api.md): a case reference other than the
    // one given with the photo travels at the start of the note.
    let note = $("note").value.trim();
    const caseRef = $("fb-caseref").value.trim();
    if (caseRef && caseRef !== (ident.case_ref || "")) {
      note = t("caseLabel", { ref: caseRef }) + (note ? ": " + note : "");
    }
    if (note) body.note = note;
    const status = $("feedback-status");
    say(status, "sending");
    try {
      const saved = await api("/v1/identifications/" + encodeURIComponent(ident.id) + "/feedback",
        { method: "POST", body });
      ident.feedback = saved;
      const time = { time: saved.created_at || new Date().toISOString() };
      say(status, "feedbackSaved", { verdict: { t: "verdict_" + verdict }, time });
      status.dataset.saved = saved.id || "yes";
      loadRecent();
    } catch (err) {
      say(status, null);
      showError(err);
    }
  }

  // ---------------------------------------------------------------- correction search box

  function rankName(rank) {
    const key = "rank_" + rank;
    const text = t(key);
    return text === key ? rank : text;
  }

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
    clearTimeout(state.searchTimer);
    const q = $("taxon-search").value.trim();
    if (q.length < 2) {
      closeOptions();
      return;
    }
    state.searchTimer = setTimeout(() => search(q), SEARCH_DELAY_MS);
  }

  /** How an option of the search box reads in the current language. */
  function optionText(opt) {
    if (!opt.taxon) return opt.labelName + " — " + t("modelLabel");
    const taxon = opt.taxon;
    const names = taxon.common_names || {};
    const common = names[state.lang] || names.en || "";
    const what = taxon.kind === "lookalike" ? t("lookalikeMaterial") : rankName(taxon.rank);
    return taxon.scientific_name + (common ? " — " + common : "") + " (" + what + ")";
  }

  /** Show the chosen correction (again, after a change of language). */
  function showChosen() {
    if (!state.chosen) return;
    const text = optionText(state.chosen);
    $("taxon-search").value = text;
    say($("taxon-chosen"), "chosenTaxon", { name: text });
  }

  /** Model labels whose name or id matches, then taxa from /v1/taxa, as options. */
  async function search(q) {
    const seq = ++state.searchSeq;
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
      if (seq === state.searchSeq) showError(err);
    }
    if (seq !== state.searchSeq) return; // a newer search is under way
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
        e.preventDefault(); // keep focus in the input
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

  // ---------------------------------------------------------------- recent cases

  async function loadRecent() {
    if (!state.key) return;
    say($("recent-status"), "loading");
    try {
      const page = await api("/v1/identifications?mine=true&limit=" + RECENT_LIMIT);
      state.recent = page.items || [];
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
      const li = document.createElement("li");
      li.className = "recent-item decision-" + d.kind;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "recent-open";
      const title = document.createElement("span");
      title.className = "recent-title";
      if (isTaxon(d.taxon)) {
        const i = document.createElement("i");
        i.textContent = d.taxon.scientific_name;
        title.append(i);
        const common = d.taxon.common_name;
        if (common) title.append(document.createTextNode(" (" + common + ")"));
      } else {
        const name = capitalise(d.taxon ? d.taxon.common_name
          : d.label_name || labelName(d.label, ident.top_k));
        title.textContent = d.label ? name : t("noTaxon");
      }
      const line = document.createElement("span");
      line.className = "recent-line";
      const parts = [t("decision_" + d.kind)];
      const decided = d.kind === "taxon" || d.kind === "lookalike";
      if (decided && typeof d.probability === "number") parts.push(probabilityText(d.probability));
      line.textContent = parts.join(" · ");
      const line2 = document.createElement("span");
      line2.className = "recent-line";
      const parts2 = [formatTime(ident.created_at)];
      if (ident.case_ref) parts2.push(t("caseLabel", { ref: ident.case_ref }));
      parts2.push(ident.feedback ? feedbackSummary(ident.feedback) : t("feedbackNone"));
      line2.textContent = parts2.join(" · ");
      button.append(title, line, line2);
      button.addEventListener("click", () => openCase(ident.id));
      li.append(button);
      list.append(li);
    }
  }

  async function openCase(id) {
    clearError();
    try {
      const ident = await api("/v1/identifications/" + encodeURIComponent(id));
      state.feedbackFor = null;
      renderResult(ident, { focus: true });
    } catch (err) {
      showError(err);
    }
  }

  // ---------------------------------------------------------------- start

  function start() {
    state.lang = storedLanguage() || browserLanguage();
    applyLanguage();
    $("lang").addEventListener("change", (e) => setLanguage(e.target.value));
    $("signin-form").addEventListener("submit", async (e) => {
      e.preventDefault();
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
    });
    $("signout").addEventListener("click", () => signOut());
    $("camera").addEventListener("change", onFileChosen);
    $("file").addEventListener("change", onFileChosen);
    $("modality").addEventListener("change", () => {
      state.prepared = null;
    });
    $("identify-form").addEventListener("submit", identify);
    $("retry").addEventListener("click", () => identify());
    $("heatmap-toggle").addEventListener("click", toggleHeatmap);
    for (const radio of document.querySelectorAll("input[name=verdict]")) {
      radio.addEventListener("change", onVerdictChange);
    }
    $("taxon-search").addEventListener("input", onSearchInput);
    $("taxon-search").addEventListener("keydown", onSearchKey);
    $("taxon-search").addEventListener("blur", () => setTimeout(closeOptions, 150));
    $("feedback-form").addEventListener("submit", sendFeedback);
    $("recent-refresh").addEventListener("click", loadRecent);

    let saved = null;
    try {
      saved = window.sessionStorage.getItem(KEY_STORE);
    } catch (_err) {
      saved = null;
    }
    if (saved) {
      signIn(saved).catch((err) => {
        signOut({ keepError: true });
        showError(err);
      });
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
