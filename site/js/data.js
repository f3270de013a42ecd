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

  async function findTag(tag) {
    const i = await shardFor(tag);
    if (!(await manifest()).tag_shards.length) return null;
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

  // Known tags spelled like `tag`, from its shard and both neighbours.
  async function nearTags(tag, limit = 8) {
    const i = await shardFor(tag);
    const count = (await manifest()).tag_shards.length;
    await Promise.all([i - 1, i, i + 1].filter((k) => k >= 0 && k < count).map(shard));
    const max = tag.length <= 4 ? 1 : tag.length <= 8 ? 2 : 3;
    const scored = [];
    for (const entries of shards.values()) {
      for (const e of entries) {
        let rank = null;
        if (e.tag.startsWith(tag)) rank = 0;
        else {
          const d = editDistance(tag, e.tag, max);
          if (d <= max) rank = d;
          else if (tag.startsWith(e.tag) && e.tag.length >= 3) rank = max + 1;
        }
        if (rank !== null) scored.push([rank, e]);
      }
    }
    scored.sort((a, b) => a[0] - b[0] || b[1].count - a[1].count);
    return scored.slice(0, limit).map(([, e]) => e);
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

  // Tags related to a query that is not a tag: the phrase's own entry, else its words' entries
  // merged (each tag's similarity averaged over the words). [{tag, sim}] best first.
  async function relatedTags(query, limit = 5) {
    const m = await manifest();
    if (!m.related) return [];
    const words = [...new Set(query.split(' ').filter(Boolean))];
    const asList = (rows) => (Array.isArray(rows) ? rows : [])
      .filter((r) => Array.isArray(r) && typeof r[0] === 'string' && Number.isFinite(r[1]))
      .map((r) => ({ tag: r[0], sim: r[1] }));
    const phrase = asList(await hashed('related', query, 'words'));
    if (phrase.length || words.length < 2) return phrase.slice(0, limit);
    const lists = await Promise.all(words.map((w) => hashed('related', w, 'words').then(asList)));
    const sum = new Map();
    for (const list of lists) for (const { tag, sim } of list) sum.set(tag, (sum.get(tag) || 0) + sim);
    return [...sum].map(([tag, s]) => ({ tag, sim: s / words.length }))
      .sort((a, b) => b.sim - a.sim || (a.tag < b.tag ? -1 : 1)).slice(0, limit);
  }

  // An image's record for the viewer: {tag, uri, similar: [[id, tag, cosine]], copies: [[id, uri]]}.
  const similar = (imageId) => (IMAGE_ID.test(imageId) ? hashed('similar', imageId, 'images') : Promise.resolve(null));
  // A tag's "probably" strip: [{image_id, tag, uri, score, neighbours, matcher, own_score}].
  const probably = async (entry) => (KEY.test(entry.key) ? (await hashed('probably', entry.key, 'tags')) || [] : []);

  return {
    manifest, shard, shardFor, prefixShard, findTag, matches, nearTags, rankingPage,
    home, relatedTags, similar, probably,
    hasShard: (i) => shards.has(i),
  };
}
