// Wires the components to the hub and runs queries: URL <-> query, data -> results, and
// stale answers dropped (each query has a sequence number and an AbortController). The URL and
// the history say what is shown: ?q=car opens a tag, &i=<image id> its viewer; each entry's state
// keeps the pages loaded and the scroll position, so Back and reload come back to them.
import { createHub } from './hub.js';
import { createData, thumbFor, viewFor } from './data.js';
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
const SAVE_SCROLL_MS = 200;
const IMAGE_ID = /^[0-9a-f]{4,64}$/;

const $ = (id) => document.getElementById(id);
const siteRoot = new URL('.', document.baseURI);
const hub = createHub();
const data = createData(siteRoot);
history.scrollRestoration = 'manual'; // the page restores its own: the pages must be loaded first

mountHeader(hub, { line: $('collection'), header: document.querySelector('header.top'), siteRoot });
mountSearchBox(hub, { form: $('search'), input: $('q'), list: $('suggestions') });
mountResults(hub, {
  section: $('results'), title: $('results-title'), note: $('results-note'),
  related: $('related'), instead: $('instead'), stripNote: $('strip-note'),
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
mountProbably(hub, {
  section: $('probably'), title: $('probably-title'), list: $('probably-list'), top: $('strip-note'),
  bottom: $('results-status'), siteRoot,
});

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

// ---- history: the URL says the query and the open image, the state the pages and scroll ----
const params = () => new URLSearchParams(location.search);
const queryFromUrl = () => params().get('q') || '';
const imageFromUrl = () => { const i = params().get('i') || ''; return IMAGE_ID.test(i) ? i : ''; };

function urlFor(tag) {
  const url = new URL(location.href);
  if (tag) url.searchParams.set('q', tag); else url.searchParams.delete('q');
  url.searchParams.delete('i');
  return url;
}

function saveState() {
  const c = current;
  const state = { ...(history.state || {}), y: Math.round(scrollY) };
  if (c) state.pages = c.next;
  history.replaceState(state, '', location.href);
}
let saveTimer = 0;
window.addEventListener('scroll', () => {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(saveState, SAVE_SCROLL_MS);
}, { passive: true });
window.addEventListener('pagehide', saveState);

// ---- queries ----
let seq = 0;
let controller = null;
let current = null; // {seq, entry, next, pages, items, loading, signal}
let shownQuery = null; // the normalised query on screen (a word that is no tag shows another tag)

async function search(text, push, restore = null) {
  const tag = normalizeTag(text);
  const mine = ++seq;
  controller?.abort();
  controller = new AbortController();
  const { signal } = controller;
  if (push && current) saveState(); // the entry being left keeps its pages and scroll
  current = null;
  cancelSuggest();
  if (push) {
    const url = urlFor(tag);
    if (url.href !== location.href) history.pushState({ q: tag }, '', url);
  }
  document.title = tag ? `${tag} · imgsearch` : 'imgsearch';
  shownQuery = tag;
  hub.emit(EVENTS.QUERY, { tag });
  if (!tag) { hub.emit(EVENTS.RESULTS_CLEAR); if (restore) scrollTo(0, Number(restore.y) || 0); return; }
  hub.emit(EVENTS.RESULTS_LOADING, { tag });
  try {
    let entry = await data.findTag(tag);
    if (mine !== seq) return;
    let instead = null;
    if (!entry) {
      // not a tag: one ranked list of related tags, tags spelled like it, tags among its words
      const answer = await data.candidates(tag);
      if (mine !== seq) return;
      if (!answer.best) {
        hub.emit(EVENTS.RESULTS_UNKNOWN, { query: tag, candidates: answer.items, popular: answer.popular });
        return;
      }
      instead = { query: tag, candidates: answer.items };
      entry = answer.best;
    }
    const page = await data.rankingPage(entry, 0, signal);
    if (mine !== seq) return;
    const pages = Number(page.pages) || 1;
    const items = Array.isArray(page.items) ? page.items : [];
    current = { seq: mine, entry, next: 1, pages, items: [...items], loading: null, signal };
    const strip = Number.isInteger(page.probably) && page.probably > 0 ? page.probably : 0;
    hub.emit(EVENTS.RESULTS_START, { tag: entry.tag, total: Number(page.total) || 0, rankedBy: page.ranked_by, pages, instead, strip });
    hub.emit(EVENTS.RESULTS_PAGE, { items, more: pages > 1 });
    if (restore) await restoreView(current, restore);
  } catch (err) {
    if (mine === seq && !aborted(err)) { console.warn(err); hub.emit(EVENTS.RESULTS_ERROR, { message: message(err) }); }
  }
}

// Back, Forward or reload onto an entry: its pages loaded again, its scroll, its open image.
async function restoreView(c, state) {
  const want = Math.min(Number(state.pages) || 1, c.pages);
  while (c === current && c.next < want) await loadMore();
  if (c !== current) return;
  if (Number(state.y) > 0) requestAnimationFrame(() => { if (c === current) scrollTo(0, Number(state.y)); });
  const image = imageFromUrl();
  if (image) openImage(image);
}

function loadMore() {
  const c = current;
  if (!c || c.next >= c.pages) return Promise.resolve();
  if (c.loading) return c.loading;
  hub.emit(EVENTS.RESULTS_LOADING_MORE);
  c.loading = (async () => {
    try {
      const page = await data.rankingPage(c.entry, c.next, c.signal);
      if (c !== current) return;
      c.next += 1;
      const items = Array.isArray(page.items) ? page.items : [];
      c.items.push(...items);
      hub.emit(EVENTS.RESULTS_PAGE, { items, more: c.next < c.pages });
    } catch (err) {
      if (c === current && !aborted(err)) { console.warn(err); hub.emit(EVENTS.RESULTS_ERROR, { message: message(err) }); }
    } finally {
      c.loading = null;
    }
  })();
  return c.loading;
}

// A ?i= image: its tile's place in the ranking when loaded, else the image alone.
async function openImage(imageId) {
  const c = current;
  const index = c ? c.items.findIndex((it) => it?.image_id === imageId) : -1;
  if (index >= 0) { hub.emit(EVENTS.VIEW, { index }); return; }
  try {
    const m = await data.manifest();
    if (c !== current) return;
    const item = { image_id: imageId, tag: c?.entry.tag || '', thumb: thumbFor(m, imageId), view: viewFor(m, imageId) };
    hub.emit(EVENTS.VIEW_ITEM, { items: [item], index: 0, label: 'Shared image' });
  } catch (err) { console.warn(err); }
}

hub.on(EVENTS.SEARCH, ({ text, push, restore }) => search(text, push, restore));

// opening the viewer adds a history entry (Back closes it, the link opens it); stepping replaces it
hub.on(EVENTS.VIEWER_SHOWN, ({ imageId }) => {
  if (!IMAGE_ID.test(imageId)) return;
  const url = new URL(location.href);
  if (url.searchParams.get('i') === imageId) return;
  const opened = !url.searchParams.has('i');
  url.searchParams.set('i', imageId);
  if (opened) {
    saveState();
    history.pushState({ ...(history.state || {}), viewer: true }, '', url);
  } else history.replaceState(history.state, '', url);
});
hub.on(EVENTS.VIEWER_DONE, () => {
  if (!imageFromUrl()) return;
  if (history.state?.viewer) { history.back(); return; } // the entry the viewer added
  const url = new URL(location.href); // opened by a shared link: the same entry, without the image
  url.searchParams.delete('i');
  history.replaceState({ ...(history.state || {}), viewer: false }, '', url);
});
window.addEventListener('popstate', () => {
  const state = history.state || {};
  if (normalizeTag(queryFromUrl()) === shownQuery) {
    const image = imageFromUrl();
    if (image) openImage(image); else hub.emit(EVENTS.VIEWER_CLOSE);
    return;
  }
  hub.emit(EVENTS.VIEWER_CLOSE);
  search(queryFromUrl(), false, state);
});

// ---- the home page: popular tags, and every tag A–Z a letter at a time ----
hub.on(EVENTS.RESULTS_CLEAR, () => {
  data.home().then((popular) => hub.emit(EVENTS.HOME, { popular }), (err) => console.warn(err));
});
hub.on(EVENTS.BROWSE, async ({ letter, page }) => {
  try {
    const got = await data.azPage(String(letter), Number(page) || 0);
    if (got) hub.emit(EVENTS.BROWSE_PAGE, got);
  } catch (err) { console.warn(err); }
});

// ---- the viewer's "more like this" and copies, one small file per image opened ----
hub.on(EVENTS.VIEWER_SHOWN, async ({ imageId }) => {
  try {
    const m = await data.manifest();
    const record = await data.similar(imageId);
    if (!record) return;
    const item = (id, tag, extra) => ({ image_id: id, tag, thumb: thumbFor(m, id, extra?.uri), view: viewFor(m, id), ...extra });
    const similar = (Array.isArray(record.similar) ? record.similar : []).filter(Array.isArray)
      .map(([id, tag, sim]) => item(String(id), String(tag), { similarity: Number(sim) }));
    const copies = (Array.isArray(record.copies) ? record.copies : []).filter(Array.isArray)
      .map(([id, uri]) => item(String(id), String(record.tag), { uri: String(uri) }));
    hub.emit(EVENTS.SIMILAR, { imageId, record: { tag: String(record.tag ?? ''), uri: record.uri, similar, copies } });
  } catch (err) { console.warn(err); }
});

// ---- images that probably belong to the tag, crawled under another: after its own images, or
// at once when the person follows the first page's link to them ----
async function loadStrip(tag, jump) {
  const c = current;
  if (!c || c.entry.tag !== tag) return;
  try {
    const m = await data.manifest();
    const items = (await data.probably(c.entry)).filter((it) => it && typeof it.image_id === 'string')
      .map((it) => ({ ...it, thumb: thumbFor(m, it.image_id, it.uri), view: viewFor(m, it.image_id) }));
    if (c === current && items.length) hub.emit(EVENTS.PROBABLY, { tag, items, jump });
  } catch (err) { console.warn(err); }
}
hub.on(EVENTS.RESULTS_END, ({ tag }) => loadStrip(tag, false));
hub.on(EVENTS.PROBABLY_WANTED, ({ tag }) => loadStrip(tag, true));
hub.on(EVENTS.RESULTS_MORE, () => { loadMore(); });

data.manifest().then(
  (m) => hub.emit(EVENTS.MANIFEST, m),
  (err) => hub.emit(EVENTS.MANIFEST_ERROR, { message: message(err) }),
);
search(queryFromUrl(), false, history.state || (imageFromUrl() ? {} : null));
