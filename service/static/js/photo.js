/* The photo as uploaded: upright (EXIF orientation applied) and at most MAX_SIDE pixels long. */

const MAX_SIDE = 1600;
const JPEG_QUALITY = 0.85;
const SEND_AS_IS_BYTES = 1500000; // a JPEG already within MAX_SIDE and this small goes untouched

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

/** ``{blob, name}`` to upload: a JPEG downscaled to MAX_SIDE. Small JPEGs, x-ray scans and files
    the browser cannot decode go as they are (the service reads HEIC and 16-bit TIFF itself). */
export async function preparePhoto(file, modality) {
  const baseName = (file.name || "photo").replace(/\.[^.]*$/, "");
  const isJpeg = file.type === "image/jpeg";
  // X-ray scans may be 16-bit grayscale: a canvas would flatten them to 8 bits.
  if (modality === "xray" && !isJpeg) return { blob: file, name: file.name || "scan" };
  const image = await decode(file);
  if (!image) return { blob: file, name: file.name || "photo" };
  const scale = Math.min(1, MAX_SIDE / Math.max(image.width, image.height));
  if (scale === 1 && isJpeg && file.size <= SEND_AS_IS_BYTES) {
    if (image.close) image.close();
    return { blob: file, name: file.name || "photo.jpg" };
  }
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(image.width * scale));
  canvas.height = Math.max(1, Math.round(image.height * scale));
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  if (image.close) image.close();
  const blob = await canvasToBlob(canvas);
  if (!blob) return { blob: file, name: file.name || "photo" };
  return { blob, name: baseName + ".jpg" };
}
