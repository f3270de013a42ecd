// The larger view: a modal dialog with the image, its tag, rank, score and source link, its
// copies and a strip of the images most like it (each opens here too). Esc closes it (native
// dialog), arrow keys step through the ranking (loading pages as needed) or through the list
// the image was opened from (more like this, a "probably" strip).
import { formatScore, safeUrl, scoreLabel } from './text.js';
import { tileContent } from './results.js';
import { EVENTS } from './events.js';

function showSource(source, uri, siteRoot) {
  // the original is a link where the site has public links (an absolute http(s) source); a
  // relative path is only named: it is not on the web
  const href = safeUrl(uri, siteRoot, false);
  source.replaceChildren();
  if (href) {
    const a = document.createElement('a');
    a.href = href;
    a.rel = 'noopener noreferrer nofollow';
    a.target = '_blank';
    a.textContent = 'Open the original';
    source.append(a);
  } else if (typeof uri === 'string' && uri) {
    source.textContent = `Original: ${uri} (not published on the web)`;
  }
}

// The viewer's image: the thumbnail at once (already loaded by the grid), then the larger
// rendition in its place once it has arrived; srcset lets a small screen keep the thumbnail.
function showImage(figure, item, rank, tag, siteRoot) {
  figure.replaceChildren(tileContent({ ...item, rank }, tag, safeUrl(item.thumb, siteRoot, true)));
  const img = figure.querySelector('img');
  const thumb = img?.getAttribute('src');
  const view = safeUrl(item.view, siteRoot, true);
  if (!img || !view || !thumb) return;
  const big = document.createElement('img');
  big.decoding = 'async';
  big.alt = img.alt;
  big.sizes = '(max-width: 48rem) 100vw, 44rem';
  big.srcset = `${thumb} 256w, ${view} 768w`;
  big.addEventListener('load', () => { if (img.isConnected) img.replaceWith(big); }, { once: true });
  big.addEventListener('error', () => big.remove(), { once: true });
  big.src = view;
}

function thumbButton(item, i, siteRoot, label) {
  const li = document.createElement('li');
  const btn = document.createElement('button');
  btn.type = 'button';
  btn.className = 'mini';
  btn.dataset.index = String(i);
  btn.setAttribute('aria-label', label);
  btn.append(tileContent({ ...item, rank: i + 1 }, item.tag, safeUrl(item.thumb, siteRoot, true)));
  const cap = document.createElement('span');
  cap.className = 'cap';
  cap.textContent = item.tag;
  btn.append(cap);
  li.append(btn);
  return li;
}

export function mountViewer(hub, { dialog, figure, title, meta, source, copies, similar, siteRoot }) {
  let tag = '';
  let total = 0;
  let ranking = []; // the tag's ranking, as loaded
  let items = []; // what the arrows step through: the ranking, or the list an image came from
  let listLabel = null; // null: stepping through the ranking
  let more = false;
  let index = -1;
  let rankingIndex = -1; // the ranking tile to focus when the viewer closes
  let pending = null; // index waiting for the next page
  let opener = null; // what had focus before the viewer opened from outside the ranking
  let shownId = '';
  let similarItems = [];
  let labels = null; // the manifest's score_labels
  let quiet = false; // closed by the page (Back, a new query), not by the person
  hub.on(EVENTS.MANIFEST, (m) => { labels = m.score_labels; });

  function closeQuietly() {
    if (!dialog.open) return;
    quiet = true;
    dialog.close();
  }

  function showOther(i) {
    const item = items[i];
    if (!item) return;
    index = i;
    showImage(figure, item, i + 1, item.tag || '', siteRoot);
    title.textContent = item.tag || '';
    const parts = [`${listLabel}: ${i + 1} of ${items.length}`];
    if (Number.isFinite(item.similarity)) parts.push(`${Math.round(item.similarity * 100)}% alike`);
    if (item.probable) parts.push(`crawled as “${item.tag}”`);
    meta.textContent = parts.join(' · ');
    meta.dataset.rank = '';
    showSource(source, item.uri, siteRoot);
    afterShow(item);
  }

  function afterShow(item) {
    copies.replaceChildren();
    copies.hidden = true;
    similar.replaceChildren();
    similar.parentElement.hidden = true;
    similarItems = [];
    shownId = String(item.image_id ?? '');
    if (!dialog.open) dialog.showModal();
    // the source link may have held focus and just been replaced
    if (!dialog.contains(document.activeElement)) dialog.querySelector('[autofocus]')?.focus();
    if (shownId) hub.emit(EVENTS.VIEWER_SHOWN, { imageId: shownId });
  }

  function show(i) {
    const item = items[i];
    if (!item) return;
    if (listLabel !== null) { showOther(i); return; }
    index = i;
    rankingIndex = i;
    pending = null;
    const rank = item.rank ?? i + 1;
    showImage(figure, item, rank, tag, siteRoot);
    title.textContent = tag;
    const score = formatScore(item.score);
    const label = scoreLabel(item.score, labels);
    meta.textContent = `Rank ${rank} of ${total}${score ? ` · ${label ? `${label} (score ${score})` : `score ${score}`}` : ' · index order, no score'}`;
    meta.dataset.rank = String(rank);
    showSource(source, item.uri, siteRoot);
    afterShow(item);
    const n = Array.isArray(item.copies) ? item.copies.length : 0;
    if (n) copies.textContent = `${n + 1} copies of this picture were crawled; shown once.`;
    copies.hidden = !n;
  }

  function go(step) {
    const next = index + step;
    if (next < 0) return;
    if (next < items.length) { show(next); return; }
    if (listLabel === null && more && pending === null) {
      pending = next;
      meta.textContent = 'Loading more…';
      hub.emit(EVENTS.RESULTS_MORE);
    }
  }

  // back to stepping through the ranking
  function useRanking() {
    items = ranking;
    listLabel = null;
    opener = null;
  }

  hub.on(EVENTS.RESULTS_START, ({ tag: t, total: n }) => {
    tag = t;
    total = n;
    ranking = [];
    useRanking();
    more = false;
    pending = null;
    rankingIndex = -1;
    closeQuietly();
  });
  hub.on(EVENTS.RESULTS_PAGE, ({ items: page, more: hasMore }) => {
    ranking = ranking.concat(page);
    if (listLabel === null) items = ranking;
    more = hasMore;
    if (pending !== null && dialog.open && listLabel === null) show(pending);
  });
  hub.on(EVENTS.RESULTS_CLEAR, closeQuietly);
  hub.on(EVENTS.VIEWER_CLOSE, closeQuietly);
  hub.on(EVENTS.VIEW, ({ index: i }) => { useRanking(); show(i); });
  hub.on(EVENTS.VIEW_ITEM, ({ items: list, index: i, label }) => {
    if (!dialog.open) opener = document.activeElement;
    items = list;
    listLabel = label || 'More like this';
    showOther(i);
  });

  // the shown image's record: its source (for images opened from a list), copies, more like this
  hub.on(EVENTS.SIMILAR, ({ imageId, record }) => {
    if (imageId !== shownId || !dialog.open) return;
    if (listLabel !== null && !items[index]?.uri && record.uri) showSource(source, record.uri, siteRoot);
    if (record.copies.length) {
      copies.replaceChildren(`${record.copies.length + 1} copies of this picture were crawled; shown once. Copies: `);
      record.copies.forEach((c, k) => {
        const href = safeUrl(c.uri, siteRoot, false);
        const el = document.createElement(href ? 'a' : 'span');
        if (href) { el.href = href; el.rel = 'noopener noreferrer nofollow'; el.target = '_blank'; }
        el.textContent = href ? `copy ${k + 1}` : String(c.uri || `copy ${k + 1}`);
        copies.append(k ? ', ' : '', el);
      });
      copies.hidden = false;
    }
    similarItems = record.similar;
    similar.replaceChildren(...similarItems.map((item, i) => thumbButton(
      item, i, siteRoot, `More like this ${i + 1}: “${item.tag}”, open`,
    )));
    similar.parentElement.hidden = !similarItems.length;
  });
  similar.addEventListener('click', (ev) => {
    const btn = ev.target.closest('button.mini');
    if (!btn) return;
    hub.emit(EVENTS.VIEW_ITEM, { items: similarItems, index: Number(btn.dataset.index), label: 'More like this' });
    dialog.querySelector('[autofocus]')?.focus();
  });

  document.addEventListener('keydown', (ev) => {
    if (!dialog.open || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    if (ev.target.closest?.('#viewer-similar')) return; // arrows there move between its buttons
    if (ev.key === 'ArrowRight' || ev.key === 'ArrowDown') { ev.preventDefault(); go(1); }
    else if (ev.key === 'ArrowLeft' || ev.key === 'ArrowUp') { ev.preventDefault(); go(-1); }
  });
  dialog.addEventListener('click', (ev) => {
    const step = ev.target.closest('[data-step]');
    if (step) go(Number(step.dataset.step));
    else if (ev.target.closest('[data-close]') || ev.target === dialog) dialog.close();
  });
  dialog.addEventListener('close', () => {
    pending = null;
    if (!quiet) hub.emit(EVENTS.VIEWER_DONE);
    quiet = false;
    const back = opener;
    const fromRanking = listLabel === null || !back;
    useRanking();
    if (back && back.isConnected && !dialog.contains(back)) { back.focus(); return; }
    if (fromRanking && rankingIndex >= 0) hub.emit(EVENTS.VIEWER_CLOSED, { index: rankingIndex });
  });
}
