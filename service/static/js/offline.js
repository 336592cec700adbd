/* Offline use on the page: keeping the active model on the phone, identifying without the
   network, the list of cases waiting to sync, and sending them when the network returns
   (docs/web.md, "Offline use"). The work itself is in offline/: runtime.js (model and ONNX
   Runtime Web), decide.js (the decision data's interpreter), cases.js (IndexedDB). */
import { api, postIdentification } from "./api.js";
import { ApiError, NetworkError } from "./errors.js";
import { formatTime, say, t } from "./i18n.js";
import { deleteCase, listCases, saveCase, updateCase } from "./offline/cases.js";
import { cachedPackage, cachedSize, identifyOnDevice, refreshPackage } from "./offline/runtime.js";
import { $, state } from "./state.js";

let onSyncedCallback = () => {};
let syncing = false;

const megabytes = (bytes) => (bytes / 1048576).toFixed(1) + " MB";

async function fetchBytes(path) {
  let response;
  try {
    response = await fetch(path, {
      headers: { Authorization: "Bearer " + state.key, Accept: "application/octet-stream" },
      cache: "no-store",
    });
  } catch (_err) {
    throw new NetworkError("network");
  }
  if (!response.ok) throw new ApiError(response.status, null, null);
  return response.arrayBuffer();
}

/** Register the service worker, which keeps the page and the runtime for offline starts. */
export function registerServiceWorker() {
  if (!("serviceWorker" in navigator)) return;
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(() => {
    /* an http page on another host than localhost: online only */
  });
}

/** At each online start: bring the phone's model up to the active one and say what works. */
export async function refreshOffline() {
  const status = $("offline-status");
  try {
    const before = await cachedPackage();
    const result = await refreshPackage(api, fetchBytes);
    if (!result.pkg) {
      state.offline = null;
      say(status, result.reason === "runtime" ? "offlineNoRuntime"
        : result.reason === "modality" ? "offlineNoModel" : "offlineUnsupported");
      return;
    }
    state.offline = result.pkg;
    const size = megabytes(await cachedSize());
    if (result.updated && before) say(status, "offlineUpdated", { version: result.pkg.version, size });
    else say(status, "offlineReady", { version: result.pkg.version, size });
  } catch (_err) {
    state.offline = await cachedPackage().catch(() => null);
    if (state.offline) say(status, "offlineReady", { version: state.offline.version, size: megabytes(await cachedSize()) });
    else say(status, "offlineNotReady");
  }
  renderPending();
}

/** Without the network: use the model kept on the phone, if there is one. */
export async function useStoredModel() {
  state.offline = await cachedPackage().catch(() => null);
  if (state.offline) say($("offline-status"), "offlineUsing", { version: state.offline.version });
  else say($("offline-status"), "offlineNotReady");
  renderPending();
}

/** Whether the page can identify on the phone now. */
export function canIdentifyOffline(modality) {
  return Boolean(state.offline) && modality === state.offline.modality;
}

function deviceAnswer(record) {
  const ident = record.answer;
  const d = ident.decision;
  return JSON.stringify({
    case_id: record.case_id,
    made_at: record.made_at,
    model_version: ident.model_version,
    runtime: ident.runtime,
    decision: {
      kind: d.kind,
      rule: d.rule,
      label: d.label,
      taxon_id: d.taxon ? d.taxon.id : null,
      rank: d.rank,
      appendix: d.appendix,
      probability: d.probability,
      refer_to_expert: d.refer_to_expert,
    },
    top_k: ident.top_k.map((c) => ({ label: c.label, probability: c.probability })),
    ood_score: ident.ood_score,
    inference_ms: ident.inference_ms,
    views: casePhotos(record).length,
  });
}

/** The photos of a case, in the order taken (a case kept by an older page has one, under
    ``photo``). */
function casePhotos(record) {
  if (Array.isArray(record.photos)) return record.photos;
  return [{ blob: record.photo, name: record.photo_name }];
}

/** Identify an item on the phone from its prepared photos (one, or several of the same item,
    fused as the service fuses them), keep the case with its photos, and return the answer. */
export async function identifyOffline(photos, fields) {
  const pkg = state.offline;
  const ident = await identifyOnDevice(pkg, photos.map((p) => p.blob), {
    origin: fields.origin_country || null,
    language: state.lang,
  });
  const record = {
    case_id: crypto.randomUUID(),
    key_id: state.me ? state.me.key_id : null,
    officer: state.me ? state.me.name : "",
    made_at: new Date().toISOString(),
    photos: photos.map((p) => ({ blob: p.blob, name: p.name })),
    modality: fields.modality,
    origin_country: fields.origin_country || null,
    case_ref: fields.case_ref || null,
    answer: ident,
    status: "waiting",
    error: null,
  };
  await saveCase(record);
  for (const view of ident.views || []) view.blob = photos[view.position].blob; // to look at it
  Object.assign(ident, {
    id: "device:" + record.case_id,
    made_on_device: true,
    created_at: record.made_at,
    case_ref: record.case_ref,
  });
  renderPending();
  return ident;
}

/** The cases waiting to sync, on screen. */
export async function renderPending() {
  let cases = [];
  try {
    cases = await listCases();
  } catch (_err) {
    cases = [];
  }
  const section = $("pending");
  const list = $("pending-list");
  list.textContent = "";
  section.hidden = cases.length === 0 && !$("pending-status").textContent;
  $("sync-now").hidden = cases.length === 0;
  for (const record of cases) {
    const li = document.createElement("li");
    li.dataset.caseId = record.case_id;
    const d = record.answer.decision;
    const parts = [formatTime(record.made_at), t("decision_" + d.kind), t("model", { version: record.answer.model_version })];
    const photoCount = casePhotos(record).length;
    if (photoCount > 1) parts.push(t("pendingPhotos", { count: photoCount }));
    if (record.case_ref) parts.push(t("caseLabel", { ref: record.case_ref }));
    li.textContent = parts.join(" · ");
    if (record.status === "failed") {
      const why = document.createElement("p");
      why.className = "hint";
      why.textContent = t("pendingRefused", { detail: record.error || "" });
      li.append(why);
    } else if (state.me && record.key_id !== state.me.key_id) {
      const who = document.createElement("p");
      who.className = "hint";
      who.textContent = t("pendingOtherOfficer", { name: record.officer });
      li.append(who);
    }
    list.append(li);
  }
  section.dataset.count = String(cases.length);
  $("pending-count").textContent = cases.length
    ? t("pendingCount", { count: cases.length }) : t("pendingNone");
}

/** Send the signed-in officer's waiting cases; each is deleted from the phone only once the
    service has stored it. */
export async function syncPending() {
  if (syncing || !state.key || !state.me || !navigator.onLine) return 0;
  syncing = true;
  let sent = 0;
  try {
    const mine = (await listCases()).filter((c) => c.key_id === state.me.key_id && c.status !== "failed");
    if (!mine.length) return 0;
    say($("pending-status"), "syncing", { count: mine.length });
    $("pending").hidden = false;
    for (const record of mine) {
      const fields = {
        modality: record.modality,
        origin_country: record.origin_country || "",
        case_ref: record.case_ref || "",
        device_answer: deviceAnswer(record),
      };
      try {
        await postIdentification(casePhotos(record), fields, () => {});
      } catch (err) {
        if (err instanceof ApiError && err.status >= 400 && err.status < 500
          && ![401, 403, 408, 409, 429].includes(err.status)) {
          await updateCase(record.case_id, { status: "failed", error: err.message });
          continue;
        }
        throw err;
      }
      await deleteCase(record.case_id);
      sent += 1;
    }
    say($("pending-status"), "synced", { count: sent });
  } catch (_err) {
    say($("pending-status"), sent ? "synced" : "syncWaiting", { count: sent });
  } finally {
    syncing = false;
    await renderPending();
    if (sent) onSyncedCallback();
  }
  return sent;
}

/** Wire the "Send now" button; ``onSynced`` runs after cases were sent. */
export function initOffline({ onSynced }) {
  onSyncedCallback = onSynced;
  $("sync-now").addEventListener("click", () => syncPending());
  renderPending();
}
