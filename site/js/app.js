// Wires the components to the hub and runs queries: URL <-> query, data -> results, and
// stale answers dropped (each query has a sequence number and an AbortController).
import { createHub } from './hub.js';
import { createData, thumbFor } from './data.js';
import { normalizeTag } from './text.js';
import { mountHeader } from './header.js';
import { mountSearchBox } from './searchbox.js';
import { mountResults } from './results.js';
import { mountViewer } from './viewer.js';
import { mountHome } from './home.js';
import { mountProbably } from './probably.js';
import { EVENTS } from './events.js';

const SUGGESTIONS = 8;
const SHARD_DELAY_MS = 150; // wait for a pause in typing before fetching a new tag shard

const $ = (id) => document.getElementById(id);
const siteRoot = new URL('.', document.baseURI);
const hub = createHub();
const data = createData(siteRoot);

mountHeader(hub, { line: $('collection'), header: document.querySelector('header.top'), siteRoot });
mountSearchBox(hub, { form: $('search'), input: $('q'), list: $('suggestions') });
mountResults(hub, {
  section: $('results'), title: $('results-title'), note: $('results-note'), near: $('near'),
  related: $('related'), instead: $('instead'),
  grid: $('grid'), sentinel: $('sentinel'), status: $('results-status'), siteRoot,
});
mountViewer(hub, {
  dialog: $('viewer'), figure: $('viewer-figure'), title: $('viewer-title'), meta: $('viewer-meta'),
  source: $('viewer-source'), copies: $('viewer-copies'), similar: $('viewer-similar'), siteRoot,
});
mountHome(hub, {
  section: $('home'), facts: $('home-facts'), popular: $('popular'), letters: $('az-letters'),
  list: $('az-list'), pager: $('az-pager'), siteRoot,
});
mountProbably(hub, { section: $('probably'), title: $('probably-title'), list: $('probably-list'), siteRoot });

const aborted = (err) => err?.name === 'AbortError';
const message = (err) => (err?.name === 'HttpError' && err.status === 404
  ? 'Part of the collection is missing; it may be being republished. Try again shortly.'
  : 'Could not load the collection. Check the connection and try again.');

// ---- suggestions as the person types ----
let suggestTimer = 0;
let suggestSeq = 0; // only the latest keystroke may start a shard fetch
function cancelSuggest() {
  suggestSeq += 1;
  clearTimeout(suggestTimer);
}
hub.on(EVENTS.SUGGEST, ({ text }) => {
  cancelSuggest();
  const mine = suggestSeq;
  const query = normalizeTag(text);
  const answer = () => hub.emit(EVENTS.SUGGESTIONS, { text, items: data.matches(query, SUGGESTIONS) });
  data.prefixShard(query).then((i) => {
    if (mine !== suggestSeq) return;
    if (data.hasShard(i)) { answer(); return; }
    suggestTimer = setTimeout(() => data.shard(i).then(answer, (err) => console.warn(err)), SHARD_DELAY_MS);
  }, () => {});
});

// ---- queries ----
let seq = 0;
let controller = null;
let current = null; // {seq, entry, next, pages, loading, signal}

function urlFor(tag) {
  const url = new URL(location.href);
  if (tag) url.searchParams.set('q', tag); else url.searchParams.delete('q');
  return url;
}

async function search(text, push) {
  const tag = normalizeTag(text);
  const mine = ++seq;
  controller?.abort();
  controller = new AbortController();
  const { signal } = controller;
  current = null;
  cancelSuggest();
  if (push) {
    const url = urlFor(tag);
    if (url.href !== location.href) history.pushState({ q: tag }, '', url);
  }
  document.title = tag ? `${tag} · imgsearch` : 'imgsearch';
  hub.emit(EVENTS.QUERY, { tag });
  if (!tag) { hub.emit(EVENTS.RESULTS_CLEAR); return; }
  hub.emit(EVENTS.RESULTS_LOADING, { tag });
  try {
    let entry = await data.findTag(tag);
    if (mine !== seq) return;
    let instead = null;
    if (!entry) {
      // not a tag: tags spelled like it, and tags whose word vectors are close to its words
      const [suggestions, related] = await Promise.all([
        data.nearTags(tag), data.relatedTags(tag).catch((err) => { console.warn(err); return []; }),
      ]);
      if (mine !== seq) return;
      const showAt = Number((await data.manifest()).related?.show_at);
      const best = related[0] && related[0].sim >= showAt ? await data.findTag(related[0].tag) : null;
      if (mine !== seq) return;
      if (!best) { hub.emit(EVENTS.RESULTS_UNKNOWN, { query: tag, suggestions, related }); return; }
      instead = { query: tag, suggestions, related };
      entry = best;
    }
    const page = await data.rankingPage(entry, 0, signal);
    if (mine !== seq) return;
    const pages = Number(page.pages) || 1;
    current = { seq: mine, entry, next: 1, pages, loading: false, signal };
    hub.emit(EVENTS.RESULTS_START, { tag: entry.tag, total: Number(page.total) || 0, rankedBy: page.ranked_by, pages, instead });
    hub.emit(EVENTS.RESULTS_PAGE, { items: Array.isArray(page.items) ? page.items : [], more: pages > 1 });
  } catch (err) {
    if (mine === seq && !aborted(err)) { console.warn(err); hub.emit(EVENTS.RESULTS_ERROR, { message: message(err) }); }
  }
}

async function loadMore() {
  const c = current;
  if (!c || c.loading || c.next >= c.pages) return;
  c.loading = true;
  hub.emit(EVENTS.RESULTS_LOADING_MORE);
  try {
    const page = await data.rankingPage(c.entry, c.next, c.signal);
    if (c !== current) return;
    c.next += 1;
    hub.emit(EVENTS.RESULTS_PAGE, { items: Array.isArray(page.items) ? page.items : [], more: c.next < c.pages });
  } catch (err) {
    if (c === current && !aborted(err)) { console.warn(err); hub.emit(EVENTS.RESULTS_ERROR, { message: message(err) }); }
  } finally {
    c.loading = false;
  }
}

hub.on(EVENTS.SEARCH, ({ text, push }) => search(text, push));

// ---- the home page: popular tags, and every tag A–Z a shard at a time ----
hub.on(EVENTS.RESULTS_CLEAR, () => {
  data.home().then((popular) => hub.emit(EVENTS.HOME, { popular }), (err) => console.warn(err));
});
hub.on(EVENTS.BROWSE, async ({ prefix, shard }) => {
  try {
    const m = await data.manifest();
    const i = typeof prefix === 'string' ? await data.prefixShard(prefix) : Number(shard);
    if (!Number.isInteger(i) || i < 0 || i >= m.tag_shards.length) return;
    const entries = await data.shard(i);
    hub.emit(EVENTS.BROWSE_PAGE, { shard: i, shards: m.tag_shards.length, entries, prefix });
  } catch (err) { console.warn(err); }
});

// ---- the viewer's "more like this" and copies, one small file per image opened ----
hub.on(EVENTS.VIEWER_SHOWN, async ({ imageId }) => {
  try {
    const m = await data.manifest();
    const record = await data.similar(imageId);
    if (!record) return;
    const item = (id, tag, extra) => ({ image_id: id, tag, thumb: thumbFor(m, id, extra?.uri), ...extra });
    const similar = (Array.isArray(record.similar) ? record.similar : []).filter(Array.isArray)
      .map(([id, tag, sim]) => item(String(id), String(tag), { similarity: Number(sim) }));
    const copies = (Array.isArray(record.copies) ? record.copies : []).filter(Array.isArray)
      .map(([id, uri]) => item(String(id), String(record.tag), { uri: String(uri) }));
    hub.emit(EVENTS.SIMILAR, { imageId, record: { tag: String(record.tag ?? ''), uri: record.uri, similar, copies } });
  } catch (err) { console.warn(err); }
});

// ---- after the tag's own images: those that probably belong to it, crawled under another ----
hub.on(EVENTS.RESULTS_END, async ({ tag }) => {
  const c = current;
  if (!c || c.entry.tag !== tag) return;
  try {
    const m = await data.manifest();
    const items = (await data.probably(c.entry)).filter((it) => it && typeof it.image_id === 'string')
      .map((it) => ({ ...it, thumb: thumbFor(m, it.image_id, it.uri) }));
    if (c === current && items.length) hub.emit(EVENTS.PROBABLY, { tag, items });
  } catch (err) { console.warn(err); }
});
hub.on(EVENTS.RESULTS_MORE, loadMore);

const queryFromUrl = () => new URLSearchParams(location.search).get('q') || '';
window.addEventListener('popstate', () => search(queryFromUrl(), false));

data.manifest().then(
  (m) => hub.emit(EVENTS.MANIFEST, m),
  (err) => hub.emit(EVENTS.MANIFEST_ERROR, { message: message(err) }),
);
search(queryFromUrl(), false);
