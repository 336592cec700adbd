/* The page's one mutable state, shared by the modules, and a DOM shortcut. */

/** The element with id ``id``. */
export const $ = (id) => document.getElementById(id);

export const state = {
  key: null, // the API key (also in sessionStorage, never in localStorage)
  me: null, // GET /v1/me: {key_id, name, role}
  lang: "en", // interface language: en, fr or es
  model: null, // GET /v1/models/active
  labels: [], // labels of the active model: [{id, name, taxon_id, kind}]
  files: [], // the Files the officer picked: up to 6 photos of one item
  prepared: [], // [{blob, name}]: the photos as they will be uploaded (downscaled), by file
  current: null, // the identification shown
  photoUrl: null, // object URL of the photo shown with the answer
  heatmapUrl: null, // object URL of the heat map PNG
  heatmapFor: null, // id of the identification the heat map belongs to
  feedbackFor: null, // id of the identification the feedback form is for
  chosen: null, // correction chosen in the search box: {label, taxon_id, taxon | labelName}
  options: [], // options listed in the search box
  active: -1, // index of the highlighted option
  recent: [], // the officer's latest identifications
  taxonCache: new Map(), // taxon id -> GET /v1/taxa/{id}
  verification: null, // the permit verification shown
  lastError: null, // the error on screen (rewritten on a change of language)
  offline: null, // the offline package of the model stored on this phone (js/offline.js)
  offlineSession: false, // signed in from this tab's earlier check, without network
};
