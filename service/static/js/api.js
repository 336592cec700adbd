/* The JSON API (docs/api.md): every call sends the key and Accept-Language. */
import { ApiError, NetworkError } from "./errors.js";
import { acceptLanguage } from "./i18n.js";
import { state } from "./state.js";

const UPLOAD_TIMEOUT_MS = 120000;

function headers(extra) {
  const h = { Accept: "application/json", "Accept-Language": acceptLanguage(), ...extra };
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

async function problemFrom(response) {
  try {
    return await response.json();
  } catch (_err) {
    return null;
  }
}

/** JSON call; throws ApiError (with the problem+json body) or NetworkError. */
export async function api(path, options) {
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
    const problem = await problemFrom(response);
    throw new ApiError(response.status, problem, response.headers.get("Retry-After"));
  }
  return response.json();
}

/** An authenticated image (stored photo, heat map) as an object URL. */
export async function apiBlobUrl(path) {
  let response;
  try {
    response = await fetch(path, { headers: headers({ Accept: "image/*" }), cache: "no-store" });
  } catch (_err) {
    throw new NetworkError("network");
  }
  if (!response.ok) throw new ApiError(response.status, await problemFrom(response), null);
  return URL.createObjectURL(await response.blob());
}

/** A taxon of the taxonomy, fetched once. */
export async function getTaxon(taxonId) {
  if (!state.taxonCache.has(taxonId)) {
    state.taxonCache.set(taxonId, await api("/v1/taxa/" + encodeURIComponent(taxonId)));
  }
  return state.taxonCache.get(taxonId);
}

/** POST /v1/identifications with XMLHttpRequest, which reports upload progress:
    ``onProgress(pct)`` while sending, ``onProgress(null)`` once the service is working.
    ``photos``: one prepared photo, or a list; several photos of one item go to
    /v1/identifications:views as ``images`` parts and come back as one answer.
    Resolves with the identification; rejects with ApiError or NetworkError. */
export function postIdentification(photos, fields, onProgress) {
  const list = Array.isArray(photos) ? photos : [photos];
  const several = list.length > 1;
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const photo of list) form.append(several ? "images" : "image", photo.blob, photo.name);
    for (const [name, value] of Object.entries(fields)) {
      if (value !== "" && value !== null && value !== undefined) form.append(name, value);
    }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", several ? "/v1/identifications:views" : "/v1/identifications");
    for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
    xhr.timeout = UPLOAD_TIMEOUT_MS;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(Math.round((100 * e.loaded) / e.total));
    };
    xhr.upload.onload = () => onProgress(null);
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
    onProgress(0);
    xhr.send(form);
  });
}

/** POST a multipart form (fetch; no progress); resolves with the JSON answer. */
export async function postForm(path, form) {
  let response;
  try {
    response = await fetch(path, { method: "POST", headers: headers(), body: form, cache: "no-store" });
  } catch (_err) {
    throw new NetworkError("network");
  }
  if (!response.ok) {
    throw new ApiError(response.status, await problemFrom(response), response.headers.get("Retry-After"));
  }
  return response.json();
}
