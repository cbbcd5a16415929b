// The HTTP side: the access token and the voice library API (same origin).
//
// The URL the server prints carries ?token=...; the page takes it from there,
// keeps it in localStorage (so a bookmark without it still works) and removes
// it from the address bar so it is not shared by accident.

const TOKEN_KEY = 'minestream.token';

export class Unauthorized extends Error {
  constructor() {
    super('The server needs an access token.');
    this.name = 'Unauthorized';
  }
}

export function loadToken() {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get('token');
  if (fromUrl) {
    saveToken(fromUrl);
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : '') + location.hash);
    return fromUrl;
  }
  return getToken();
}

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null; // storage disabled (private mode on some browsers)
  }
}

export function saveToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* nothing to do: the token lives for this page only */
  }
}

async function request(path, { method = 'GET', json, body } = {}) {
  const headers = {};
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  }
  const res = await fetch(path, { method, headers, body });
  if (res.status === 401) throw new Unauthorized();
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try {
      const err = await res.json();
      message = err.message || err.error?.message || err.detail || message;
    } catch {
      /* not JSON: keep the status line */
    }
    throw new Error(message);
  }
  return res;
}

/** Status of an authenticated request, to tell a refused token from a dead server. */
export async function probeAuth() {
  try {
    const token = getToken();
    const res = await fetch('/v1/voices', { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    return res.status;
  } catch {
    return 0;
  }
}

const voiceUrl = (id) => `/v1/voices/${encodeURIComponent(id)}`;

export async function listVoices() {
  const data = await (await request('/v1/voices')).json();
  return data.voices || [];
}

export async function createDesignVoice(name, design) {
  return (await request('/v1/voices', { method: 'POST', json: { name, design } })).json();
}

export async function createVoiceFromFile(file, name, refText) {
  const form = new FormData();
  form.append('file', file, file.name || 'reference');
  if (name) form.append('name', name);
  if (refText) form.append('ref_text', refText);
  return (await request('/v1/voices', { method: 'POST', body: form })).json();
}

export async function renameVoice(id, name) {
  return (await request(voiceUrl(id), { method: 'PATCH', json: { name } })).json();
}

export async function deleteVoice(id) {
  await request(voiceUrl(id), { method: 'DELETE' });
}

/** The reference recording as a Blob (fetched with the token header, unlike <audio src>). */
export async function voiceAudio(id) {
  return (await request(`${voiceUrl(id)}/audio`)).blob();
}
