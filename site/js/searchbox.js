// The search box: an ARIA combobox whose listbox shows tag suggestions with image counts.
import { normalizeTag } from './text.js';
import { tagWithCount } from './results.js';
import { EVENTS } from './events.js';

export function mountSearchBox(hub, { form, input, list }) {
  let options = [];
  let active = -1;
  let awaiting = null; // the text whose suggestions are still wanted

  function close() {
    list.hidden = true;
    list.replaceChildren();
    options = [];
    active = -1;
    input.setAttribute('aria-expanded', 'false');
    input.removeAttribute('aria-activedescendant');
  }

  function highlight(i) {
    active = i;
    [...list.children].forEach((li, k) => li.setAttribute('aria-selected', String(k === i)));
    if (i < 0) { input.removeAttribute('aria-activedescendant'); return; }
    const li = list.children[i];
    input.setAttribute('aria-activedescendant', li.id);
    li.scrollIntoView({ block: 'nearest' });
  }

  function render(items) {
    if (!items.length) { close(); return; }
    options = items;
    active = -1;
    list.replaceChildren(...items.map((item, i) => {
      const li = document.createElement('li');
      li.id = `suggestion-${i}`;
      li.setAttribute('role', 'option');
      li.setAttribute('aria-selected', 'false');
      li.append(...tagWithCount(item));
      return li;
    }));
    list.hidden = false;
    input.setAttribute('aria-expanded', 'true');
    input.removeAttribute('aria-activedescendant');
  }

  function choose(text) {
    awaiting = null;
    close();
    hub.emit(EVENTS.SEARCH, { text, push: true });
  }

  input.addEventListener('input', () => {
    awaiting = input.value;
    if (!normalizeTag(input.value)) { close(); return; }
    hub.emit(EVENTS.SUGGEST, { text: input.value });
  });

  input.addEventListener('keydown', (ev) => {
    const open = !list.hidden && options.length > 0;
    if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
      if (!open) return;
      ev.preventDefault();
      const step = ev.key === 'ArrowDown' ? 1 : -1;
      // cycle through the options and back to the typed text (-1)
      let next = active + step;
      if (next >= options.length) next = -1;
      else if (next < -1) next = options.length - 1;
      highlight(next);
    } else if (ev.key === 'Enter' && open && (active >= 0 || options.length === 1)) {
      // the highlighted suggestion, or the only one shown: "ca" + Enter with only "car" opens car
      ev.preventDefault();
      const item = options[Math.max(active, 0)];
      input.value = item.tag;
      choose(item.tag);
    } else if (ev.key === 'Escape' && open) {
      ev.preventDefault();
      awaiting = null;
      close();
    }
  });

  // mousedown would blur the input before the click lands
  list.addEventListener('mousedown', (ev) => ev.preventDefault());
  list.addEventListener('click', (ev) => {
    const li = ev.target.closest('[role="option"]');
    if (!li) return;
    const item = options[[...list.children].indexOf(li)];
    if (item) { input.value = item.tag; choose(item.tag); }
  });

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    choose(input.value);
  });
  form.addEventListener('focusout', (ev) => {
    if (!form.contains(ev.relatedTarget)) { awaiting = null; close(); }
  });

  hub.on(EVENTS.SUGGESTIONS, ({ text, items }) => {
    if (text === awaiting && text === input.value) render(items);
  });
  // the placeholder names a real tag: the collection's most popular
  hub.on(EVENTS.HOME, ({ popular }) => {
    if (popular[0]?.tag) input.placeholder = `Search a tag, e.g. ${popular[0].tag}`;
  });
  hub.on(EVENTS.QUERY, ({ tag }) => {
    if (normalizeTag(input.value) !== tag) input.value = tag;
    awaiting = null;
    close();
  });
}
