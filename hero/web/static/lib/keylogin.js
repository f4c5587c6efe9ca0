// Sign-in with the user's own Ed25519 key (WebCrypto): the node signs a challenge, we sign it back.
// The secret key never leaves the browser, and it is not stored: only the token that comes back is.
import { ApiError, getJSON } from "./api.js";

const PKCS8_ED25519_PREFIX = "302e020100300506032b657004220420"; // PKCS#8 wrapper of a raw 32-byte seed

function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

function bytesToHex(bytes) {
  return [...new Uint8Array(bytes)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function b64urlToBytes(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

/** Import a 32-byte seed (64 hex chars; a 128-char NaCl secret key also works) and learn its public key. */
export async function importSecretKey(secretHex) {
  const hex = (secretHex || "").trim().toLowerCase().replace(/^0x/, "");
  if (!/^[0-9a-f]{64}([0-9a-f]{64})?$/.test(hex)) {
    throw new Error("A secret key is 64 hexadecimal characters (the contents of NAME.user.key).");
  }
  if (!globalThis.crypto?.subtle) throw new Error("This browser offers no WebCrypto here (it needs HTTPS or localhost).");
  let key;
  try {
    key = await crypto.subtle.importKey("pkcs8", hexToBytes(PKCS8_ED25519_PREFIX + hex.slice(0, 64)),
      { name: "Ed25519" }, true, ["sign"]);
  } catch {
    throw new Error("This browser cannot use Ed25519 keys yet; sign in with a token instead.");
  }
  const jwk = await crypto.subtle.exportKey("jwk", key);
  return { key, agentId: bytesToHex(b64urlToBytes(jwk.x)) };
}

/** Challenge, sign, log in: returns {token, name, agent_id, expires}. */
export async function signInWithKey(secretHex) {
  const { key, agentId } = await importSecretKey(secretHex);
  const { challenge } = await getJSON(null, "/api/auth/challenge", { method: "POST", body: { agent_id: agentId } });
  const signature = await crypto.subtle.sign({ name: "Ed25519" }, key, new TextEncoder().encode(challenge));
  try {
    return await getJSON(null, "/api/auth/login", {
      method: "POST",
      body: { challenge, signature: bytesToHex(signature) },
    });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      throw new Error(`This key is not a user of this node (${err.message}).`);
    }
    throw err;
  }
}
