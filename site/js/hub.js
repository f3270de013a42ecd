// A tiny event hub: components talk only through it, never to each other.
import { EVENT_NAMES } from './events.js';

function known(type) {
  if (!EVENT_NAMES.has(type)) throw new Error(`unknown event ${JSON.stringify(type)} (see events.js)`);
  return type;
}

export function createHub() {
  const handlers = new Map();
  return {
    on(type, fn) {
      known(type);
      if (!handlers.has(type)) handlers.set(type, new Set());
      handlers.get(type).add(fn);
      return () => handlers.get(type).delete(fn);
    },
    emit(type, detail) {
      known(type);
      for (const fn of [...(handlers.get(type) || [])]) {
        // one failing listener must not silence the others
        try { fn(detail); } catch (err) { console.error(err); }
      }
    },
  };
}
