// Voice library UI: a radio group of saved voices (plus "the description
// being designed"), each with play-reference, rename and delete.
//
// The selected radio is the voice Speak uses; selection survives refreshes.

import * as api from './api.js';

const DESIGN = ''; // radio value meaning "use the description in Design a voice"

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('aria-') || k === 'role' || k === 'for') node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function seconds(ms) {
  return ms ? `${(ms / 1000).toFixed(1)} s` : '';
}

export class Library {
  /**
   * @param {HTMLElement} list the <ul> to render into
   * @param {object} cb
   * @param {(msg: string, kind?: string) => void} cb.status
   * @param {(voice: object|null) => void} cb.onSelect null means "the design"
   * @param {(err: Error) => void} cb.onError
   */
  constructor(list, { status, onSelect, onError }) {
    this.list = list;
    this.status = status;
    this.onSelect = onSelect;
    this.onError = onError;
    this.voices = [];
    this.selected = DESIGN;
    this.playing = null; // {id, audio, url}
    list.addEventListener('change', (e) => {
      if (e.target.name === 'voice') this.select(e.target.value);
    });
  }

  get selectedVoice() {
    return this.voices.find((v) => v.id === this.selected) || null;
  }

  select(id) {
    this.selected = this.voices.some((v) => v.id === id) ? id : DESIGN;
    const radio = [...this.list.querySelectorAll('input[name=voice]')].find((r) => r.value === this.selected);
    if (radio) radio.checked = true;
    this.onSelect(this.selectedVoice);
  }

  async refresh() {
    try {
      this.voices = await api.listVoices();
    } catch (err) {
      this.onError(err);
      return;
    }
    this.render();
    this.select(this.selected);
  }

  render() {
    const items = [
      el(
        'li',
        { class: 'voice design-choice' },
        this.#radio(DESIGN, 'The description in “Design a voice”', 'designed on the fly'),
      ),
    ];
    for (const v of this.voices) items.push(this.#item(v));
    this.list.replaceChildren(...items);
    if (!this.voices.length) {
      this.list.append(el('li', { class: 'empty' }, 'No saved voices yet: save a design or clone one.'));
    }
  }

  #radio(id, name, meta) {
    const inputId = `voice-radio-${id || 'design'}`;
    return el(
      'label',
      { class: 'voice-pick', for: inputId },
      el('input', { type: 'radio', name: 'voice', value: id, id: inputId, checked: id === this.selected }),
      el('span', { class: 'voice-name' }, name),
      el('span', { class: 'voice-meta' }, meta),
    );
  }

  #item(v) {
    const meta = [v.kind === 'clone' ? 'cloned' : 'designed', seconds(v.duration_ms)].filter(Boolean).join(' · ');
    const li = el('li', { class: 'voice' }, this.#radio(v.id, v.name || v.id, meta));
    if (v.kind === 'design' && v.design) li.title = v.design;
    const actions = el('div', { class: 'voice-actions' });
    if (v.duration_ms) {
      const play = el('button', { type: 'button', class: 'small', 'aria-label': `Play the reference of ${v.name}` }, 'Play');
      play.addEventListener('click', () => this.play(v, play));
      actions.append(play);
    }
    const rename = el('button', { type: 'button', class: 'small', 'aria-label': `Rename ${v.name}` }, 'Rename');
    rename.addEventListener('click', () => this.#startRename(li, v));
    const del = el('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${v.name}` }, 'Delete');
    del.addEventListener('click', () => this.remove(v));
    actions.append(rename, del);
    li.append(actions);
    return li;
  }

  // Inline rename: Enter saves, Escape cancels; focus goes back to the button.
  #startRename(li, v) {
    const id = `rename-${v.id}`;
    const input = el('input', { type: 'text', id, value: v.name || '', maxLength: 80 });
    const save = el('button', { type: 'submit', class: 'small' }, 'Save');
    const cancel = el('button', { type: 'button', class: 'small' }, 'Cancel');
    const form = el('form', { class: 'rename' }, el('label', { for: id, class: 'visually-hidden' }, `New name for ${v.name}`), input, save, cancel);
    const done = () => {
      form.remove();
      li.querySelector('.voice-actions').hidden = false;
      li.querySelector('button[aria-label^="Rename"]')?.focus();
    };
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const name = input.value.trim();
      if (!name || name === v.name) return done();
      try {
        await api.renameVoice(v.id, name);
        this.status(`Renamed to “${name}”.`);
        await this.refresh();
      } catch (err) {
        this.onError(err);
        done();
      }
    });
    cancel.addEventListener('click', done);
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        e.stopPropagation();
        done();
      }
    });
    li.querySelector('.voice-actions').hidden = true;
    li.append(form);
    input.focus();
    input.select();
  }

  async remove(v) {
    if (!confirm(`Delete the voice “${v.name}”? This cannot be undone.`)) return;
    try {
      await api.deleteVoice(v.id);
      this.status(`Deleted “${v.name}”.`);
      if (this.selected === v.id) this.selected = DESIGN;
      await this.refresh();
    } catch (err) {
      this.onError(err);
    }
  }

  /** Play (or stop) a voice's reference recording. */
  async play(v, button) {
    const wasPlaying = this.playing?.id === v.id;
    this.stopPlaying();
    if (wasPlaying) return;
    try {
      const url = URL.createObjectURL(await api.voiceAudio(v.id));
      const audio = new Audio(url);
      this.playing = { id: v.id, audio, url, button };
      button.textContent = 'Stop';
      audio.addEventListener('ended', () => this.stopPlaying());
      await audio.play();
    } catch (err) {
      this.stopPlaying();
      this.onError(err);
    }
  }

  stopPlaying() {
    if (!this.playing) return;
    const { audio, url, button } = this.playing;
    audio.pause();
    URL.revokeObjectURL(url);
    button.textContent = 'Play';
    this.playing = null;
  }
}
