// Pure helpers: tag normalisation, URL safety, spelling distance, number formatting.
import { FOLD } from './fold.js';

// Python's str.casefold, one character at a time: the generated table where casefold and
// toLowerCase differ (ᾳ -> αι, ß -> ss, ς -> σ, ...), toLowerCase for the rest. Per character,
// so toLowerCase's final-sigma rule (a context Python's casefold ignores) never applies.
function casefold(text) {
  let out = '';
  for (const ch of text) out += FOLD.get(ch) ?? ch.toLowerCase();
  return out;
}

// model.tags.strip_invisible: format characters (Cf) removed, except a zero width joiner between
// two emoji (an emoji, its skin tone, VS16 or keycap before it; an emoji after), which makes
// them one picture (👩🏽‍💻). Neighbours are those of the text as given, as in Python.
// (Emoji_Modifier: U+1F3FB..U+1F3FF, the skin tones; alternatives, not a [class]: Chromium 156
// misses astral characters at the end of a string in a class before `$`)
const EMOJI_END = /(?:\p{So}|\p{Emoji_Modifier}|\uFE0F|\u20E3)$/u;
const EMOJI_START = /^\p{So}/u;
function stripInvisible(text) {
  return text.replace(/\p{Cf}/gu, (ch, at) =>
    ch === '\u200D' && EMOJI_END.test(text.slice(0, at)) && EMOJI_START.test(text.slice(at + 1)) ? ch : '');
}

// model.tags.normalize_tag, step for step: NFKC, invisible format characters (Cf: zero-width
// space and joiners, BOM, soft hyphen, bidi marks) removed, casefold, NFKC, whitespace collapsed.
export function normalizeTag(raw) {
  const text = stripInvisible(String(raw ?? '').normalize('NFKC'));
  return casefold(text).normalize('NFKC').replace(/\s+/g, ' ').trim();
}

const SCHEME = /^[a-z][a-z0-9+.-]*:/i;

// An http(s) URL or null: data from the collection never reaches src/href unless it passes
// here. With allowRelative, a relative path (no scheme, no leading slash, no "..") resolves
// against `base` (the site root) and must stay under it; a leading "/" is most likely a source
// file's local path, and "//" another host.
export function safeUrl(raw, base, allowRelative = false) {
  if (typeof raw !== 'string') return null;
  const s = raw.trim();
  // backslashes and control characters make browsers reinterpret "relative" paths
  if (!s || /[\u0000-\u001f\u007f\\]/.test(s)) return null;
  let url;
  try {
    if (SCHEME.test(s)) url = new URL(s);
    else if (allowRelative && !s.startsWith('/') && !/(^|\/)(\.|%2e){2}(\/|$)/i.test(s)) {
      url = new URL(s, base);
      if (!url.href.startsWith(new URL(base).href)) return null;
    } else return null;
  } catch {
    return null;
  }
  return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
}

// Optimal-string-alignment (Damerau) distance, or max+1 as soon as it must exceed max.
export function editDistance(a, b, max) {
  if (Math.abs(a.length - b.length) > max) return max + 1;
  let prev2 = null;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost);
      if (prev2 && i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d = Math.min(d, prev2[j - 2] + 1);
      }
      cur.push(d);
      rowMin = Math.min(rowMin, d);
    }
    if (rowMin > max) return max + 1;
    prev2 = prev;
    prev = cur;
  }
  return prev[b.length];
}

export const formatCount = (n) => (Number.isFinite(n) ? n.toLocaleString('en-US') : '?');

export const formatScore = (s) => (typeof s === 'number' && Number.isFinite(s) ? s.toFixed(3) : null);

// A score in words ("strong match", "typical", "doubtful") from the manifest's score_labels
// ([[lowest score, label], …, [null, label]], export/score_labels.py), or null.
export function scoreLabel(score, labels) {
  if (typeof score !== 'number' || !Number.isFinite(score) || !Array.isArray(labels)) return null;
  for (const row of labels) {
    if (!Array.isArray(row) || typeof row[1] !== 'string') continue;
    if (row[0] === null || (Number.isFinite(row[0]) && score >= row[0])) return row[1].slice(0, 40);
  }
  return null;
}
