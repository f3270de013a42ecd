// Fetches the published data: manifest -> one tag shard -> one ranking page, each file once.
import { editDistance } from './text.js';

const MANIFEST = 'data/manifest.json';
const KEY = /^[0-9a-f]{4,64}$/; // tag keys are hex; anything else could walk the path
const SHARD = /^data\/(v\/[0-9A-Za-z._-]+\/)?tags\/[0-9A-Za-z._-]+\.json$/;
// the folder of the published version the manifest points at (data/v/<version>), or plain data/
const DATA_ROOT = /^data(\/v\/[0-9A-Za-z._-]+)?$/;
export const dataRoot = (m) => (typeof m?.data === 'string' && DATA_ROOT.test(m.data) ? m.data : 'data');

export class HttpError extends Error {
  constructor(status, path) {
    super(`HTTP ${status} for ${path}`);
    this.name = 'HttpError';
    this.status = status;
  }
}

// Largest i with key(list[i]) <= value (JS string order = the publisher's UTF-16 order), or -1.
function lastAtOrBefore(list, value, key) {
  let lo = 0;
  let hi = list.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (key(list[mid]) <= value) { found = mid; lo = mid + 1; } else hi = mid - 1;
  }
  return found;
}

// 32-bit FNV-1a of the UTF-8 bytes: export/hashed_shards.py names shards the same way.
export function fnv1a32(text) {
  let h = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

// The file of a hashed-shard kind (related, similar, probably) that holds `key`, or null.
export function hashedShardPath(m, kind, key) {
  const n = Number(m?.[kind]?.shards);
  if (!Number.isInteger(n) || n < 1) return null;
  return `${dataRoot(m)}/${kind}/${String(fnv1a32(key) % n).padStart(5, '0')}.json`;
}

const IMAGE_ID = /^[0-9a-f]{4,64}$/;
const HOME = /^data(\/v\/[0-9A-Za-z._-]+)?\/home\.json$/;

// Where an image's thumbnail is: ours when the site has thumbnails, else its http(s) source.
export function thumbFor(m, imageId, uri) {
  if (m?.thumbnails && IMAGE_ID.test(imageId)) return `thumbs/${imageId.slice(0, 2)}/${imageId}.jpg`;
  return typeof uri === 'string' && /^https?:\/\//i.test(uri) ? uri : null;
}

// The viewer's larger rendition, made with each thumbnail of ours (export/site_data.view_path).
export function viewFor(m, imageId) {
  return m?.thumbnails && IMAGE_ID.test(imageId) ? `views/${imageId.slice(0, 2)}/${imageId}.jpg` : null;
}

// How much a spelling neighbour counts in the one ranked list of tags to try: one edit in a long
// word is nearly certain, two in a short one is a guess (below every related tag: "kitten" is
// "cat" before it is "kite").
export const spellScore = (edits, query) => Math.max(0.05, 1 - (1.5 * edits) / Math.max(query.length, 1));
const WHY_ORDER = { word: 0, related: 1, spelled: 2, popular: 3 };

const toEntry = (row) => ({ tag: String(row[0]), count: Number(row[1]) || 0, key: String(row[2]), pages: Number(row[3]) || 1 });

export function createData(siteRoot) {
  const files = new Map(); // path -> Promise of parsed JSON
  const shards = new Map(); // shard index -> entries, once loaded
  let manifestPromise = null;

  function getJSON(path, { signal, version, cache } = {}) {
    const hit = files.get(path);
    if (hit) return hit;
    const url = new URL(path, siteRoot);
    if (version) url.searchParams.set('v', version);
    const promise = fetch(url, { signal, cache }).then((res) => {
      if (!res.ok) throw new HttpError(res.status, path);
      return res.json();
    });
    // a failed or abandoned fetch must not stay cached; abort listeners run synchronously,
    // so the next query never picks up a promise that is about to reject
    const drop = () => { if (files.get(path) === promise) files.delete(path); };
    promise.catch(drop);
    signal?.addEventListener('abort', drop, { once: true });
    files.set(path, promise);
    return promise;
  }

  function manifest() {
    manifestPromise ??= getJSON(MANIFEST, { cache: 'no-cache' }).then((m) => {
      if (!m || !Array.isArray(m.tag_shards)) throw new Error('The collection manifest is malformed.');
      return m;
    }).catch((err) => { manifestPromise = null; throw err; });
    return manifestPromise;
  }

  async function shard(i) {
    const m = await manifest();
    if (shards.has(i)) return shards.get(i);
    const info = m.tag_shards[i];
    if (!info || !SHARD.test(info.file)) throw new Error('The tag list is malformed.');
    const body = await getJSON(info.file, { version: m.build });
    const entries = (Array.isArray(body?.tags) ? body.tags : []).filter(Array.isArray).map(toEntry);
    shards.set(i, entries);
    return entries;
  }

  // The shard that would hold `tag` (by `first`), clamped to a real shard.
  async function shardFor(tag) {
    const m = await manifest();
    return Math.max(0, lastAtOrBefore(m.tag_shards, tag, (s) => s.first));
  }

  // The shard where tags starting with `prefix` begin: the first whose `last` >= prefix.
  async function prefixShard(prefix) {
    const list = (await manifest()).tag_shards;
    const i = lastAtOrBefore(list, prefix, (s) => s.last) + 1;
    return Math.min(i, list.length - 1);
  }

  // The lookup index's value for a term (export/related_words.py): [count, key] for a tag,
  // {r: related, s: spelled like it} for a word, or null.
  async function lookup(term) {
    return (await manifest()).lookup ? hashed('lookup', term, 'terms') : null;
  }
  const asEntry = (tag, v) => (Array.isArray(v) && KEY.test(String(v[1]))
    ? { tag, count: Number(v[0]) || 0, key: String(v[1]), pages: 1 } : null);

  // A tag's entry, or null: from its tag shard when that is loaded (the search box loaded it),
  // else from the lookup index (a ?q= link: one small file, no tag shard).
  async function findTag(tag) {
    const m = await manifest();
    if (!m.tag_shards.length) return null;
    const i = await shardFor(tag);
    if (!shards.has(i) && m.lookup) return asEntry(tag, await lookup(tag));
    const entries = await shard(i);
    const j = lastAtOrBefore(entries, tag, (e) => e.tag);
    return j >= 0 && entries[j].tag === tag ? entries[j] : null;
  }

  // Prefix matches (most images first), then other substring matches, from every loaded shard.
  function matches(text, limit) {
    const prefix = [];
    const inner = [];
    for (const entries of shards.values()) {
      for (const e of entries) {
        if (e.tag.startsWith(text)) prefix.push(e);
        else if (e.tag.includes(text)) inner.push(e);
      }
    }
    const order = (a, b) => b.count - a.count || (a.tag < b.tag ? -1 : 1);
    return [...prefix.sort(order), ...inner.sort(order)].slice(0, limit);
  }

  // Tags spelled like `query` in the tag shard where it would sort (and any shard already
  // loaded): [{entry, score}]. Used for a query the lookup index does not know.
  async function spelledFromShards(query) {
    const m = await manifest();
    if (!m.tag_shards.length) return [];
    await shard(await shardFor(query));
    const max = query.length <= 4 ? 1 : query.length <= 8 ? 2 : 3;
    const found = [];
    for (const entries of shards.values()) {
      for (const e of entries) {
        let score = null;
        if (e.tag.startsWith(query)) score = 0.9 * (query.length / e.tag.length);
        else {
          const d = editDistance(query, e.tag, max);
          if (d <= max) score = spellScore(d, query);
          else if (query.startsWith(e.tag) && e.tag.length >= 3) score = 0.3 * (e.tag.length / query.length);
        }
        if (score !== null) found.push({ entry: e, score });
      }
    }
    return found;
  }

  // What to offer for a query that is no tag: ONE list, best first, of its related tags, the tags
  // spelled like it and (several words) the tags among its words; the collection's popular tags
  // when nothing matches. `best` is the related tag close enough to show its results at once.
  async function candidates(query, limit = 8) {
    const m = await manifest();
    const found = new Map();
    const add = (tag, count, key, why, score, sim) => {
      if (typeof tag !== 'string' || !KEY.test(String(key)) || !Number.isFinite(score)) return;
      const old = found.get(tag);
      if (old && (old.score > score || (old.score === score && WHY_ORDER[old.why] <= WHY_ORDER[why]))) return;
      found.set(tag, { tag, count: Number(count) || 0, key: String(key), pages: 1, why, score, sim });
    };
    const rows = (v) => (Array.isArray(v) ? v : []).filter((r) => Array.isArray(r) && typeof r[0] === 'string');
    const fromWord = (value, weight) => {
      if (!value || typeof value !== 'object' || Array.isArray(value)) return false;
      for (const r of rows(value.r)) add(r[0], r[2], r[3], 'related', weight * Number(r[1]), Number(r[1]));
      for (const r of rows(value.s)) add(r[0], r[2], r[3], 'spelled', weight * spellScore(Number(r[1]), query));
      return true;
    };
    const known = fromWord(await lookup(query), 1);
    const words = [...new Set(query.split(' ').filter(Boolean))];
    if (!known && words.length > 1 && m.lookup) {
      const values = await Promise.all(words.map((w) => lookup(w).catch(() => null)));
      values.forEach((v, k) => {
        const tag = asEntry(words[k], v);
        if (tag) add(tag.tag, tag.count, tag.key, 'word', 1);
        else fromWord(v, 1 / words.length);
      });
    }
    if (!known) for (const { entry: e, score } of await spelledFromShards(query)) add(e.tag, e.count, e.key, 'spelled', score);
    const items = [...found.values()]
      .sort((a, b) => b.score - a.score || WHY_ORDER[a.why] - WHY_ORDER[b.why] || b.count - a.count || (a.tag < b.tag ? -1 : 1))
      .slice(0, limit);
    const showAt = Number(m.lookup?.show_at);
    const best = items[0]?.why === 'related' && items[0].sim >= showAt ? items[0] : null;
    if (items.length) return { items, best, popular: false };
    const popular = rows(m.lookup?.popular).filter((r) => KEY.test(String(r[2])))
      .map((r) => ({ tag: r[0], count: Number(r[1]) || 0, key: String(r[2]), pages: 1, why: 'popular', score: 0 }));
    return { items: popular, best: null, popular: true };
  }

  // One page of the A–Z list: the tags whose folded first letter is `letter` (export/home.py).
  async function azPage(letter, page) {
    const m = await manifest();
    const row = (Array.isArray(m.az?.letters) ? m.az.letters : []).find((r) => Array.isArray(r) && r[0] === letter);
    if (!row || !/^[a-z#]$/.test(letter) || !Number.isInteger(page) || page < 0 || page >= Number(row[2])) return null;
    const path = `${dataRoot(m)}/az/${letter === '#' ? '0' : letter}-${String(page).padStart(4, '0')}.json`;
    const body = await getJSON(path, { version: m.build });
    const entries = (Array.isArray(body?.tags) ? body.tags : []).filter(Array.isArray).map(toEntry);
    return { letter, page, pages: Number(row[2]), entries };
  }

  async function rankingPage(entry, page, signal) {
    if (!KEY.test(entry.key)) throw new Error('The tag list is malformed.');
    const m = await manifest();
    const path = `${dataRoot(m)}/rank/${entry.key.slice(0, 2)}/${entry.key}-${String(page).padStart(4, '0')}.json`;
    return getJSON(path, { signal, version: m.build });
  }

  // The home page's popular tags ([{tag, count, key, pages, thumb, imageId}]), [] if none published.
  async function home() {
    const m = await manifest();
    if (typeof m.home !== 'string' || !HOME.test(m.home)) return [];
    const body = await getJSON(m.home, { version: m.build });
    return (Array.isArray(body?.popular) ? body.popular : []).filter(Array.isArray).map((row) => ({
      ...toEntry(row), thumb: typeof row[4] === 'string' ? row[4] : null, imageId: String(row[5] ?? ''),
    }));
  }

  async function hashed(kind, key, field) {
    const m = await manifest();
    const path = hashedShardPath(m, kind, key);
    if (!path) return null;
    const body = await getJSON(path, { version: m.build });
    const map = body?.[field];
    return map && typeof map === 'object' && Object.hasOwn(map, key) ? map[key] : null;
  }

  // An image's record for the viewer: {tag, uri, similar: [[id, tag, cosine]], copies: [[id, uri]]}.
  const similar = (imageId) => (IMAGE_ID.test(imageId) ? hashed('similar', imageId, 'images') : Promise.resolve(null));
  // A tag's "probably" strip: [{image_id, tag, uri, score, neighbours, matcher, own_score}].
  const probably = async (entry) => (KEY.test(entry.key) ? (await hashed('probably', entry.key, 'tags')) || [] : []);

  return {
    manifest, shard, shardFor, prefixShard, findTag, matches, candidates, rankingPage,
    home, azPage, similar, probably,
    hasShard: (i) => shards.has(i),
  };
}
