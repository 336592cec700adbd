/* Identifying on the phone: ONNX Runtime Web (WASM) served by the service itself, the active
   model's offline package and model file kept in Cache Storage, and one function from a photo to
   an answer. Nothing is fetched from anywhere but the service. */
import { fusedIdentification, identification, unsupportedParts } from "./decide.js";
import { preprocessBlob } from "./preprocess.js";

export const CACHE_NAME = "cites-offline-model";
const PACKAGE_KEY = "/offline/package.json";
const MODEL_KEY = "/offline/model.onnx";

let ortModule = null;
let session = null;
let sessionVersion = null;
let packageInMemory = null;

/** The package kept on the phone, or null (also for a package this page cannot interpret,
    e.g. one kept by an older page: it is stored again at the next online start). */
export async function cachedPackage() {
  if (packageInMemory) return packageInMemory;
  if (!("caches" in window)) return null;
  const cache = await caches.open(CACHE_NAME);
  const response = await cache.match(PACKAGE_KEY);
  if (!response) return null;
  const pkg = await response.json();
  if (unsupportedParts(pkg).length) return null;
  packageInMemory = pkg;
  return packageInMemory;
}

/** Bytes kept for offline use: the model file and the package. */
export async function cachedSize() {
  if (!("caches" in window)) return 0;
  const cache = await caches.open(CACHE_NAME);
  let total = 0;
  for (const key of [PACKAGE_KEY, MODEL_KEY]) {
    const response = await cache.match(key);
    if (response) total += (await response.arrayBuffer()).byteLength;
  }
  return total;
}

async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Bring the phone's copy up to date with the active model (called at each online start).
    ``fetchJson(path)`` and ``fetchBytes(path)`` are the page's authenticated API calls.
    Returns {pkg, updated, reason}; ``reason`` says why offline use is unavailable. */
export async function refreshPackage(fetchJson, fetchBytes) {
  const pkg = await fetchJson("/v1/models/active/offline-package");
  if (!pkg.runtime || !pkg.runtime.available) return { pkg: null, updated: false, reason: "runtime" };
  if (!pkg.offline_capable) return { pkg: null, updated: false, reason: "modality" };
  if (unsupportedParts(pkg).length) return { pkg: null, updated: false, reason: "unsupported" };
  const current = await cachedPackage();
  if (current && current.version === pkg.version && current.model.sha256 === pkg.model.sha256
    && current.format === pkg.format) {
    return { pkg: current, updated: false, reason: null };
  }
  const bytes = await fetchBytes(pkg.model.url);
  if ((await sha256Hex(bytes)) !== pkg.model.sha256) throw new Error("the model file arrived damaged");
  const cache = await caches.open(CACHE_NAME);
  await cache.put(MODEL_KEY, new Response(bytes, { headers: { "Content-Type": "application/octet-stream" } }));
  await cache.put(PACKAGE_KEY, new Response(JSON.stringify(pkg), { headers: { "Content-Type": "application/json" } }));
  packageInMemory = pkg;
  session = null;
  sessionVersion = null;
  return { pkg, updated: true, reason: null };
}

async function loadOrt(pkg) {
  if (!ortModule) {
    ortModule = await import(pkg.runtime.url + "ort.wasm.min.mjs");
    ortModule.env.wasm.wasmPaths = pkg.runtime.url;
    ortModule.env.wasm.numThreads = 1; // no cross-origin isolation, so no shared-memory threads
    ortModule.env.wasm.proxy = false;
  }
  return ortModule;
}

async function getSession(pkg) {
  if (session && sessionVersion === pkg.version) return session;
  const ort = await loadOrt(pkg);
  const cache = await caches.open(CACHE_NAME);
  const response = await cache.match(MODEL_KEY);
  if (!response) throw new Error("no model is stored on this phone");
  const bytes = new Uint8Array(await response.arrayBuffer());
  session = await ort.InferenceSession.create(bytes, {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
  });
  sessionVersion = pkg.version;
  return session;
}

/** Run the model on a preprocessed input (Float32Array, 3 x S x S): the logits, and the
    features the out-of-domain model scores (the pooled features, or the frozen ImageNet
    branch's ``reference_features`` for a kNN bundle). */
export async function runModel(pkg, input) {
  const ort = await loadOrt(pkg);
  const s = await getSession(pkg);
  const size = pkg.preprocess.input_size;
  const feeds = { [pkg.model.input]: new ort.Tensor("float32", input, [1, 3, size, size]) };
  const outputs = pkg.model.outputs;
  const scored = outputs.ood_features || outputs.features;
  const out = await s.run(feeds, [...new Set([outputs.logits, scored])]);
  return {
    logits: Array.from(out[outputs.logits].data),
    features: out[scored].data,
  };
}

/** Identify an item on the phone from one photo or several photos of it (``blobs``, in the
    order taken): the same preprocessing, model, decision data and fusion as the service.
    Resolves with an identification shaped like the API's, plus ``device`` details. */
export async function identifyOnDevice(pkg, blobs, { origin = null, language = "en" } = {}) {
  const started = performance.now();
  const outputs = [];
  for (const blob of blobs) {
    const { input } = await preprocessBlob(blob, pkg.preprocess);
    outputs.push(await runModel(pkg, input));
  }
  const ident = outputs.length === 1
    ? identification(pkg, outputs[0].logits, outputs[0].features, { origin, language })
    : fusedIdentification(pkg, outputs, { origin, language });
  ident.inference_ms = Math.round(performance.now() - started);
  ident.runtime = `onnxruntime-web ${ortModule.env.versions ? ortModule.env.versions.web || "" : ""} wasm ${pkg.model.precision}`.replace(/\s+/g, " ");
  return ident;
}

/** The loaded runtime module (for tests and the about line), or null. */
export function ortLoaded() {
  return ortModule;
}
