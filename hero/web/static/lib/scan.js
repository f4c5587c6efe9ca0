// Scanning a sign-in QR code, where the browser can (BarcodeDetector, e.g. Chrome on Android).

import { tokenFromInput } from "./api.js";

const $ = (id) => document.getElementById(id);
let scanStream = null;

export const canScan = () => "BarcodeDetector" in window && Boolean(navigator.mediaDevices?.getUserMedia);

/** Show the camera until a code holding a token is seen: `onToken(token)`; `onError(err)` if it cannot. */
export async function startScan(onToken, onError) {
  try {
    const detector = new BarcodeDetector({ formats: ["qr_code"] });
    scanStream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    const video = $("scan-video");
    video.srcObject = scanStream;
    $("scanner").hidden = false;
    await video.play();
    while (scanStream) {
      const codes = await detector.detect(video).catch(() => []);
      const token = codes.map((c) => tokenFromInput(c.rawValue)).find(Boolean);
      if (token) {
        stopScan();
        await onToken(token);
        return;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  } catch (err) {
    stopScan();
    onError(err);
  }
}

export function stopScan() {
  scanStream?.getTracks().forEach((t) => t.stop());
  scanStream = null;
  $("scanner").hidden = true;
}
