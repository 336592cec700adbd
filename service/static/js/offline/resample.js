/* Pillow's resize, to the bit: the same filters, coefficients, fixed-point arithmetic and
   rounding as Pillow's src/libImaging/Resample.c (8 bits per channel), so that the page feeds
   the model the pixels model/preprocess.py would (docs/web.md, "Same pixels as the service"). */

const PRECISION_BITS = 32 - 8 - 2;
const HALF = 1 << (PRECISION_BITS - 1);
const SCALE = 1 << PRECISION_BITS;

function bicubic(x) {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

function bilinear(x) {
  if (x < 0) x = -x;
  return x < 1 ? 1 - x : 0;
}

function box(x) {
  return x > -0.5 && x <= 0.5 ? 1 : 0;
}

function hamming(x) {
  if (x < 0) x = -x;
  if (x === 0) return 1;
  if (x >= 1) return 0;
  x *= Math.PI;
  // Pillow writes 0.54f and 0.46f: single-precision constants.
  return (Math.sin(x) / x) * (Math.fround(0.54) + Math.fround(0.46) * Math.cos(x));
}

function sinc(x) {
  if (x === 0) return 1;
  x *= Math.PI;
  return Math.sin(x) / x;
}

function lanczos(x) {
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

/** Filters by the names model/preprocess.py accepts ("nearest" is not a convolution). */
export const FILTERS = {
  bicubic: { fn: bicubic, support: 2 },
  bilinear: { fn: bilinear, support: 1 },
  box: { fn: box, support: 0.5 },
  hamming: { fn: hamming, support: 1 },
  lanczos: { fn: lanczos, support: 3 },
};

/** precompute_coeffs + normalize_coeffs_8bpc: integer weights and source bounds per output. */
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const weights = new Int32Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? k[x] / ww : k[x];
      weights[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * SCALE) : Math.trunc(0.5 + w * SCALE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { weights, bounds, ksize };
}

const clip8 = (v) => {
  const s = v >> PRECISION_BITS;
  return s < 0 ? 0 : s > 255 ? 255 : s;
};

function horizontal(src, width, height, outWidth, filter) {
  const { weights, bounds, ksize } = coefficients(width, outWidth, filter);
  const out = new Uint8ClampedArray(outWidth * height * 3);
  for (let y = 0; y < height; y++) {
    const row = y * width * 3;
    for (let xx = 0; xx < outWidth; xx++) {
      const xmin = bounds[xx * 2];
      const xmax = bounds[xx * 2 + 1];
      const base = xx * ksize;
      let r = HALF;
      let g = HALF;
      let b = HALF;
      for (let x = 0; x < xmax; x++) {
        const w = weights[base + x];
        const p = row + (x + xmin) * 3;
        r += src[p] * w;
        g += src[p + 1] * w;
        b += src[p + 2] * w;
      }
      const o = (y * outWidth + xx) * 3;
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
    }
  }
  return out;
}

function vertical(src, width, height, outHeight, filter) {
  const { weights, bounds, ksize } = coefficients(height, outHeight, filter);
  const out = new Uint8ClampedArray(width * outHeight * 3);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = bounds[yy * 2];
    const ymax = bounds[yy * 2 + 1];
    const base = yy * ksize;
    for (let x = 0; x < width; x++) {
      let r = HALF;
      let g = HALF;
      let b = HALF;
      for (let y = 0; y < ymax; y++) {
        const w = weights[base + y];
        const p = ((y + ymin) * width + x) * 3;
        r += src[p] * w;
        g += src[p + 1] * w;
        b += src[p + 2] * w;
      }
      const o = (yy * width + x) * 3;
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
    }
  }
  return out;
}

/** Resize packed RGB (``width`` x ``height``, 3 bytes a pixel) as Pillow's
    ``Image.resize((outWidth, outHeight), filter)`` does: horizontal pass, then vertical. */
export function resizeRgb(rgb, width, height, outWidth, outHeight, filterName) {
  const filter = FILTERS[filterName];
  if (!filter) throw new Error(`interpolation ${filterName} is not supported offline`);
  let data = rgb;
  let w = width;
  if (outWidth !== width) {
    data = horizontal(data, w, height, outWidth, filter);
    w = outWidth;
  }
  if (outHeight !== height) data = vertical(data, w, height, outHeight, filter);
  return data;
}
