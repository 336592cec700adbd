/* model/preprocess.py in the browser: decode, resize the shorter side (torchvision's size rule,
   Pillow's filter), centre-crop, scale to [0, 1] and normalise, driven by the bundle's
   ``preprocess`` settings from the offline package. Resize, crop and normalisation are exact;
   decoding is the browser's own (createImageBitmap), which differs from Pillow's JPEG decoding
   by a little; docs/web.md gives the measured difference. */
import { resizeRgb } from "./resample.js";

/** Python's round(): halves go to the even neighbour. */
export function pyRound(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** model.preprocess.resized_size: scale the shorter side to ``shorter``. */
export function resizedSize(width, height, shorter) {
  if (width <= height) return [shorter, Math.max(1, Math.trunc((shorter * height) / width))];
  return [Math.max(1, Math.trunc((shorter * width) / height)), shorter];
}

/** RGBA pixels (ImageData layout) to packed RGB; transparent pixels over white, as
    model/imageio.py composites them. */
export function rgbaToRgb(rgba, width, height) {
  const out = new Uint8ClampedArray(width * height * 3);
  for (let i = 0, o = 0; i < rgba.length; i += 4, o += 3) {
    const a = rgba[i + 3];
    if (a === 255) {
      out[o] = rgba[i];
      out[o + 1] = rgba[i + 1];
      out[o + 2] = rgba[i + 2];
    } else {
      for (let c = 0; c < 3; c++) out[o + c] = Math.round((rgba[i + c] * a + 255 * (255 - a)) / 255);
    }
  }
  return out;
}

/** model.preprocess.image_to_array on packed RGB: a Float32Array (3, S, S), channel first. */
export function rgbToInput(rgb, width, height, config) {
  const size = config.input_size;
  let data = rgb;
  let w = width;
  let h = height;
  let left = 0;
  let top = 0;
  if (config.crop === "squash") {
    data = resizeRgb(data, w, h, size, size, config.interpolation);
    w = size;
    h = size;
  } else if (config.crop === "center") {
    const [nw, nh] = resizedSize(w, h, config.resize_shorter);
    if (nw !== w || nh !== h) data = resizeRgb(data, w, h, nw, nh, config.interpolation);
    w = nw;
    h = nh;
    left = pyRound((w - size) / 2);
    top = pyRound((h - size) / 2);
  } else {
    throw new Error(`crop ${config.crop} is not supported offline`);
  }
  // float32 arithmetic as numpy does it: pixels * float32(1/255), then (p - mean) / std.
  const f = Math.fround;
  const inv = f(1 / 255);
  const mean = config.mean.map(f);
  const std = config.std.map(f);
  const out = new Float32Array(3 * size * size);
  const plane = size * size;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const sx = x + left;
      const sy = y + top;
      const inside = sx >= 0 && sy >= 0 && sx < w && sy < h; // Pillow's crop pads with black
      const p = (sy * w + sx) * 3;
      for (let c = 0; c < 3; c++) {
        const v = inside ? data[p + c] : 0;
        out[c * plane + y * size + x] = f(f(f(v * inv) - mean[c]) / std[c]);
      }
    }
  }
  return out;
}

/** Decode an image Blob in the browser, upright (EXIF orientation applied), without colour
    management or premultiplied alpha, into packed RGB. */
export async function decodeToRgb(blob) {
  const bitmap = await createImageBitmap(blob, {
    imageOrientation: "from-image",
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  try {
    const { width, height } = bitmap;
    const canvas = new OffscreenCanvas(width, height);
    const ctx = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
    ctx.drawImage(bitmap, 0, 0);
    const pixels = ctx.getImageData(0, 0, width, height).data;
    return { rgb: rgbaToRgb(pixels, width, height), width, height };
  } finally {
    bitmap.close();
  }
}

/** THE browser path from a photo to the model input, like model.preprocess.preprocess_bytes. */
export async function preprocessBlob(blob, config) {
  const { rgb, width, height } = await decodeToRgb(blob);
  return { input: rgbToInput(rgb, width, height, config), width, height };
}
