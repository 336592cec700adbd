/* The decision on the phone: an interpreter of the offline package (GET
   /v1/models/active/offline-package), which carries the bundle's temperature, thresholds,
   labels, out-of-domain model, the taxonomy's roll-up lineages and appendices by origin, and the
   guidance texts. The rules are model/decision.py's, named by the package in the order they are
   tried; a package naming a rule or method this page does not know is refused, never guessed.
   The browser test replays golden cases made by the Python predictor through this module. */

const REFER = "refer to an expert";
const f32 = Math.fround;

/** Base64 float32 (little-endian) of the package to a Float32Array with its shape. */
export function float32Array(entry) {
  const bytes = Uint8Array.from(atob(entry.data), (c) => c.charCodeAt(0));
  return { data: new Float32Array(bytes.buffer), shape: entry.shape };
}

/** Base64 float16 (little-endian) of the package to a Float32Array with its shape. */
export function float16Array(entry) {
  const bytes = Uint8Array.from(atob(entry.data), (c) => c.charCodeAt(0));
  const halves = new Uint16Array(bytes.buffer);
  const out = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) out[i] = halfToFloat(halves[i]);
  return { data: out, shape: entry.shape };
}

/** One IEEE 754 half-precision value (its 16 bits) as a number. */
function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/** Python's "%.2f". */
const fixed2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : String(x));

// ---------------------------------------------------------------- out of domain

/** The Euclidean length of ``v``, at least 1e-12 (model/ood.py's _l2_normalize divisor). */
function l2Norm(v) {
  let sum = 0;
  for (let i = 0; i < v.length; i++) sum += v[i] * v[i];
  return Math.max(Math.sqrt(sum), 1e-12);
}

const OOD_METHODS = {
  /* model/ood.py OodModel.score: max(Mahalanobis distance to the nearest class mean in the
     whitened PCA space / sqrt(k), residual norm outside the k components / its training mean). */
  mahalanobis_pca(spec, features) {
    const center = spec._center || (spec._center = float32Array(spec.center));
    const basis = spec._basis || (spec._basis = float32Array(spec.basis));
    const whitening = spec._whitening || (spec._whitening = float32Array(spec.whitening));
    const centers = spec._centers || (spec._centers = float32Array(spec.class_centers));
    const [F, k] = basis.shape;
    if (features.length !== F) throw new Error(`features have ${features.length} values, not ${F}`);
    const norm = l2Norm(features);
    const x = new Float64Array(F);
    for (let i = 0; i < F; i++) x[i] = (spec.normalize ? features[i] / norm : features[i]) - center.data[i];
    const reduced = new Float64Array(k);
    for (let i = 0; i < F; i++) {
      const xi = x[i];
      if (xi === 0) continue;
      const row = i * k;
      for (let j = 0; j < k; j++) reduced[j] += xi * basis.data[row + j];
    }
    let residual = 0;
    for (let i = 0; i < F; i++) {
      let back = 0;
      const row = i * k;
      for (let j = 0; j < k; j++) back += reduced[j] * basis.data[row + j];
      const r = x[i] - back;
      residual += r * r;
    }
    residual = Math.sqrt(residual);
    const z = new Float64Array(k);
    for (let i = 0; i < k; i++) {
      const ri = reduced[i];
      const row = i * k;
      for (let j = 0; j < k; j++) z[j] += ri * whitening.data[row + j];
    }
    let nearest = Infinity;
    const classes = centers.shape[0];
    for (let c = 0; c < classes; c++) {
      let d = 0;
      for (let j = 0; j < k; j++) {
        const diff = z[j] - centers.data[c * k + j];
        d += diff * diff;
      }
      nearest = Math.min(nearest, d);
    }
    const mahalanobis = Math.sqrt(Math.max(nearest, 0)) / Math.sqrt(k);
    return Math.max(mahalanobis, residual / spec.residual_scale);
  },

  /* model/ood.py KnnOodModel.score: one minus the mean cosine similarity of the L2-normalised
     features to the k nearest rows of the reference bank (normalised training features). */
  knn_cosine(spec, features) {
    const bank = spec._bank || (spec._bank = float16Array(spec.bank));
    const [rows, F] = bank.shape;
    if (features.length !== F) throw new Error(`features have ${features.length} values, not ${F}`);
    const norm = l2Norm(features);
    const k = Math.min(spec.k, rows);
    const nearest = new Float64Array(k).fill(-Infinity); // ascending: nearest[0] is the smallest
    for (let r = 0; r < rows; r++) {
      let dot = 0;
      const row = r * F;
      for (let i = 0; i < F; i++) dot += features[i] * bank.data[row + i];
      const similarity = dot / norm;
      if (similarity <= nearest[0]) continue;
      let j = 0;
      while (j + 1 < k && nearest[j + 1] < similarity) {
        nearest[j] = nearest[j + 1];
        j++;
      }
      nearest[j] = similarity;
    }
    let sum = 0;
    for (let j = 0; j < k; j++) sum += nearest[j];
    return 1 - sum / k;
  },
};

/* model/fusion.py fused_ood_score: how the photos' out-of-domain scores become the item's. */
const OOD_FUSIONS = {
  max: (scores) => Math.max(...scores),
  mean: (scores) => scores.reduce((a, b) => a + b, 0) / scores.length,
};

/** Whether this page can interpret ``pkg``: every rule, the OOD method and the fusion of
    several photos must be known. */
export function unsupportedParts(pkg) {
  const missing = (pkg.decision_rules || []).filter((rule) => !(rule in RULES));
  if (pkg.ood && !(pkg.ood.method in OOD_METHODS)) missing.push("ood:" + pkg.ood.method);
  if (pkg.format !== 2) missing.push("format:" + pkg.format);
  const fusion = pkg.fusion || {};
  if (fusion.probabilities !== "mean" || !(fusion.ood in OOD_FUSIONS)) {
    missing.push("fusion:" + fusion.probabilities + "/" + fusion.ood);
  }
  return missing;
}

/** The out-of-domain score of the features the package's OOD model scores
    (``model.outputs.ood_features``), or null when the bundle has no OOD model. */
export function oodScore(pkg, features) {
  if (!pkg.ood) return null;
  return OOD_METHODS[pkg.ood.method](pkg.ood, features);
}

/** Calibrated probabilities: softmax(logits / temperature) in float64, stored as float32
    (model.predictor.softmax). */
export function softmax(logits, temperature) {
  const scaled = Array.from(logits, (v) => v / temperature);
  const peak = Math.max(...scaled);
  const exp = scaled.map((v) => Math.exp(v - peak));
  const total = exp.reduce((a, b) => a + b, 0);
  return exp.map((v) => f32(v / total));
}

// ---------------------------------------------------------------- taxonomy data

/** Appendix and explanation for a taxon from an origin (null: the strictest, as the service). */
export function appendixFor(pkg, taxonId, origin) {
  const taxon = pkg.taxa[taxonId];
  if (!taxon) return { appendix: null, explanation: "" };
  const table = taxon.appendix;
  const position = origin && origin in table.by_country ? table.by_country[origin] : table.default;
  return table.resolutions[position];
}

function taxonSummary(pkg, taxonId) {
  if (!taxonId) return null;
  const taxon = pkg.taxa[taxonId];
  if (!taxon) return { id: taxonId, scientific_name: null, rank: null, kind: null };
  return {
    id: taxon.id,
    scientific_name: taxon.scientific_name,
    rank: taxon.rank,
    kind: taxon.kind,
    common_names: { ...taxon.common_names },
  };
}

function taxonDecision(pkg, taxonId, probability, rule, origin, labelId) {
  const taxon = pkg.taxa[taxonId];
  const { appendix, explanation } = appendixFor(pkg, taxonId, origin);
  return {
    kind: "taxon",
    label_id: labelId,
    taxon_id: taxonId,
    probability,
    rule,
    reason: `${taxon.scientific_name} (${taxon.rank}) with probability ${fixed2(probability)}; ${explanation}`,
    appendix,
    rank: taxon.rank,
  };
}

/** model.decision.lookalike_reason: what the object is not, what it looks like, and that the
    documents must still be checked. */
function lookalikeReason(pkg, probs, top, topP) {
  const looksLike = `looks like ${top.name} (${fixed2(topP)})`;
  let closest = null;
  for (const label of pkg.labels) {
    if (label.kind !== "cites") continue;
    if (closest === null || probs[label.index] > probs[closest.index]) closest = label;
  }
  if (closest === null) return `${looksLike}; not a CITES product this model knows: check the documents`;
  return `not ${closest.name}: ${looksLike}; check the documents`;
}

// ---------------------------------------------------------------- the rules, in package order

const RULES = {
  ood_mahalanobis(ctx) {
    const { pkg, score, top, topP } = ctx;
    const threshold = pkg.ood ? pkg.ood.threshold : null;
    if (score === null || threshold === null || !(score > threshold)) return null;
    return {
      kind: "outside_training_domain",
      label_id: null,
      taxon_id: null,
      probability: topP,
      rule: "ood_mahalanobis",
      reason:
        `the image is unlike the images this model was trained on (score ${fixed2(score)} > `
        + `${fixed2(threshold)}); its suggestion is not reliable: ${REFER}`,
      appendix: null,
      rank: null,
      _top: top,
    };
  },
  label_threshold({ pkg, top, topP, origin }) {
    if (top.kind !== "cites" || topP < pkg.thresholds.taxon) return null;
    return taxonDecision(pkg, top.taxon_id, topP, "label_threshold", origin, top.id);
  },
  lookalike_threshold({ pkg, probs, score, top, topP }) {
    /* Only after the out-of-domain check passed, and at the label's own threshold
       (thresholds.lookalike_by_label, else thresholds.lookalike). */
    if (score === null || !pkg.ood || top.kind === "cites") return null;
    const byLabel = pkg.thresholds.lookalike_by_label || {};
    const threshold = top.id in byLabel ? byLabel[top.id] : pkg.thresholds.lookalike;
    if (topP < threshold) return null;
    return {
      kind: "lookalike",
      label_id: top.id,
      taxon_id: top.taxon_id || null,
      probability: topP,
      rule: "lookalike_threshold",
      reason: lookalikeReason(pkg, probs, top, topP),
      appendix: null,
      rank: null,
    };
  },
  rollup({ pkg, probs, origin }) {
    const sums = new Map();
    for (const label of pkg.labels) {
      const lineage = pkg.rollup.lineages[label.id];
      if (label.kind !== "cites" || !lineage) continue;
      for (const taxonId of lineage) sums.set(taxonId, (sums.get(taxonId) || 0) + probs[label.index]);
    }
    const order = [...pkg.rollup.ranks, pkg.rollup.limit];
    let best = null;
    for (const [taxonId, total] of sums) {
      if (total < pkg.thresholds.taxon) continue;
      const rank = pkg.taxa[taxonId].rank;
      const position = order.indexOf(rank);
      if (position < 0 || rank === pkg.rollup.limit) continue;
      const key = [position, -total, taxonId];
      if (best === null || key[0] < best[0] || (key[0] === best[0]
        && (key[1] < best[1] || (key[1] === best[1] && key[2] < best[2])))) best = key;
    }
    if (best === null) return null;
    const chosen = best[2];
    return taxonDecision(pkg, chosen, sums.get(chosen), "rollup:" + pkg.taxa[chosen].rank, origin, null);
  },
  below_thresholds({ top, topP }) {
    return {
      kind: "uncertain",
      label_id: null,
      taxon_id: null,
      probability: topP,
      rule: "below_thresholds",
      reason: `no label or taxon reaches the thresholds (most likely: ${top.name}, ${fixed2(topP)}); ${REFER}`,
      appendix: null,
      rank: null,
    };
  },
};

/** model.decision.decide: the first rule of the package's list that applies. */
export function decide(pkg, probs, origin, score) {
  let topIndex = 0;
  for (let i = 1; i < probs.length; i++) if (probs[i] > probs[topIndex]) topIndex = i;
  const top = pkg.labels[topIndex];
  const ctx = { pkg, probs, origin, score, top, topP: probs[topIndex] };
  for (const name of pkg.decision_rules) {
    const rule = RULES[name];
    if (!rule) throw new Error(`decision rule ${name} is unknown to this page`);
    const decision = rule(ctx);
    if (decision) {
      delete decision._top;
      return decision;
    }
  }
  throw new Error("no decision rule applied");
}

// ---------------------------------------------------------------- the answer, as the API shapes it

/** service.guidance.GuidanceBook.lookup on the package's texts. */
export function guidanceFor(pkg, kind, appendix, language) {
  const book = pkg.guidance;
  const lang = ["en", "fr", "es"].includes(language) ? language : "en";
  const known = kind in book ? kind : "uncertain";
  const byAppendix = book[known];
  const entry = (byAppendix[appendix || "none"] || byAppendix.none)[lang];
  return { language: lang, title: entry.title, text: entry.text };
}

const round6 = (x) => Math.round(x * 1e6) / 1e6;

/** The probabilities, OOD score and decision for one image, shaped like the service's
    identification (service/render.py), so that the page shows both the same way. ``features``:
    the network output the OOD model scores (``model.outputs.ood_features``). */
export function identification(pkg, logits, features, { origin = null, topK = 5, language = "en" } = {}) {
  const { probs, score } = viewOutputs(pkg, logits, features);
  return shaped(pkg, probs, score, decide(pkg, probs, origin, score), { origin, topK, language });
}

/** One answer for several photos of one item (``outputs``: one {logits, features} per photo,
    in the order taken), as POST /v1/identifications:views gives it (model/fusion.py): the mean
    of the photos' calibrated probabilities, their out-of-domain scores fused by the package's
    rule (``fusion.ood``: the largest, so that a look-alike answer needs every photo inside the
    domain), one decision with the same rules. The phone has no image checks, so every photo
    takes part. Adds ``views`` (each photo's own answer) and ``fusion``, as the service does. */
export function fusedIdentification(pkg, outputs, { origin = null, topK = 5, language = "en" } = {}) {
  if (!outputs.length || outputs.length > pkg.fusion.max_views) {
    throw new Error(`1 to ${pkg.fusion.max_views} photos can be fused, got ${outputs.length}`);
  }
  const views = outputs.map(({ logits, features }) => viewOutputs(pkg, logits, features));
  // summed in order, then divided: numpy's mean over the views, to the bit (ties decide alike)
  const mean = new Array(pkg.labels.length).fill(0);
  for (const { probs } of views) for (let i = 0; i < mean.length; i++) mean[i] += probs[i];
  for (let i = 0; i < mean.length; i++) mean[i] /= views.length;
  const scores = views.map((v) => v.score);
  const score = scores.some((s) => s === null) ? null : OOD_FUSIONS[pkg.fusion.ood](scores);
  const ident = shaped(pkg, mean, score, decide(pkg, mean, origin, score), { origin, topK, language });
  ident.views = views.map(({ probs, score: viewScore }, position) => {
    const d = decide(pkg, probs, origin, viewScore);
    const best = topLabels(probs, 1)[0];
    const label = pkg.labels[best[1]];
    return {
      position,
      image: null,
      used: true,
      decision: { kind: d.kind, rule: d.rule, label: d.label_id, probability: round6(d.probability) },
      top: { label: label.id, label_name: label.name, kind: label.kind, probability: round6(best[0]) },
      ood_score: roundScore(viewScore),
    };
  });
  ident.fusion = {
    method: "mean of calibrated probabilities",
    ood: pkg.fusion.ood,
    views_used: views.map((_v, position) => position),
    views_excluded: {},
    ood_score: roundScore(score),
  };
  return ident;
}

/** Calibrated probabilities and out-of-domain score of one photo's network outputs. */
function viewOutputs(pkg, logits, features) {
  return { probs: softmax(logits, pkg.temperature), score: features ? oodScore(pkg, features) : null };
}

const roundScore = (score) => (score === null ? null : Math.round(score * 1e4) / 1e4);

/** [probability, label index] of the ``topK`` most probable labels (ties in label order). */
function topLabels(probs, topK) {
  return Array.from(probs, (p, i) => [p, i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, topK);
}

/** An identification shaped like service/render.py's from probabilities, score and decision. */
function shaped(pkg, probs, score, d, { origin, topK, language }) {
  const labelsById = Object.fromEntries(pkg.labels.map((l) => [l.id, l]));
  const top = topLabels(probs, topK).map(([p, i], position) => {
    const label = pkg.labels[i];
    const listed = label.kind === "cites" && label.taxon_id
      ? appendixFor(pkg, label.taxon_id, origin).appendix : null;
    return {
      rank: position + 1,
      label: label.id,
      label_name: label.name,
      kind: label.kind,
      probability: round6(p),
      taxon: localise(taxonSummary(pkg, label.taxon_id), language),
      appendix: listed,
    };
  });
  const deciding = d.label_id ? labelsById[d.label_id] : null;
  return {
    model_version: pkg.version,
    modality: pkg.modality,
    origin_country: origin,
    top_k: top,
    ood_score: roundScore(score),
    decision: {
      kind: d.kind,
      rule: d.rule,
      label: d.label_id,
      label_name: deciding ? deciding.name : null,
      taxon: localise(taxonSummary(pkg, d.taxon_id), language),
      rank: d.rank,
      appendix: d.appendix,
      probability: round6(d.probability),
      explanation: d.reason,
      refer_to_expert: d.kind === "uncertain" || d.kind === "outside_training_domain",
    },
    guidance: guidanceFor(pkg, d.kind, d.appendix, language),
  };
}

function localise(taxon, language) {
  if (taxon && taxon.common_names) {
    taxon.common_name = taxon.common_names[language] || taxon.common_names.en;
  }
  return taxon;
}
