// Images crawled under another tag that probably show this one: a clearly separate strip after
// the tag's own images, or right under the first page's link to it. Each says in one sentence
// why it is there.
import { formatCount, safeUrl } from './text.js';
import { tileContent } from './results.js';
import { EVENTS } from './events.js';

// Why an image is in the strip, in one sentence that never contradicts the heading: its
// neighbours carry the tag (that is what put it there), and the matcher is mentioned only when
// it agrees.
export function evidence(item, tag) {
  const n = Array.isArray(item.neighbours) ? item.neighbours : [];
  const crawled = typeof item.tag === 'string' && item.tag ? `Crawled as “${item.tag}”` : 'Crawled under another tag';
  let why = Number.isFinite(n[0]) && Number.isFinite(n[1])
    ? `${crawled}, but ${n[0]} of the ${n[1]} images most like it are “${tag}”`
    : `${crawled}, but most images like it are “${tag}”`;
  if (Number.isFinite(item.matcher) && item.matcher > 0) why += `, and the matcher agrees`;
  return `${why}.`;
}

export function mountProbably(hub, { section, title, list, top, bottom, siteRoot }) {
  let items = [];
  let tag = '';

  function clear() {
    items = [];
    list.replaceChildren();
    section.hidden = true;
  }

  hub.on(EVENTS.RESULTS_START, clear);
  hub.on(EVENTS.RESULTS_CLEAR, clear);
  hub.on(EVENTS.RESULTS_UNKNOWN, clear);

  hub.on(EVENTS.PROBABLY, ({ tag: t, items: strip, jump }) => {
    const shown = !section.hidden && tag === t;
    tag = t;
    items = strip.map((it) => ({ ...it, probable: t }));
    title.textContent = `Probably “${t}”, crawled under another tag (${formatCount(items.length)})`;
    list.replaceChildren(...items.map((item, i) => {
      const li = document.createElement('li');
      const btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'tile';
      btn.dataset.index = String(i);
      const why = evidence(item, t);
      btn.setAttribute('aria-label', `Probably “${t}”, crawled as “${item.tag}”: open larger`);
      btn.title = why;
      btn.append(tileContent({ ...item, rank: i + 1 }, t, safeUrl(item.thumb, siteRoot, true)));
      const ev = document.createElement('span');
      ev.className = 'evidence';
      ev.textContent = why;
      btn.append(ev);
      li.append(btn);
      return li;
    }));
    // asked for from the first page: right under its link, so endless pages never push it away
    if (jump && !shown) top.after(section);
    else if (!jump && !shown) bottom.after(section);
    section.hidden = false;
    if (jump) {
      title.tabIndex = -1;
      title.focus({ preventScroll: true });
      section.scrollIntoView({ block: 'start' });
    }
  });

  list.addEventListener('click', (ev) => {
    const btn = ev.target.closest('button.tile');
    if (!btn) return;
    hub.emit(EVENTS.VIEW_ITEM, { items, index: Number(btn.dataset.index), label: `Probably “${tag}”` });
  });
}
