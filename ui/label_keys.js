// The Annotate page's labelling panel, run in the browser (see ui/label_keys.py).
//
// The server hands over a few pairs it has already claimed for this annotator (data.pairs, in the order to
// show them). A label is made here: the next pair shows at once from that look-ahead, and the label goes to
// the server in the "labels" state value, which lists every label the server has not yet acknowledged
// (data.recorded names those it has). Resending is harmless: the server records each event once.
//
// Pair text is user data: it only ever goes into textContent, never into markup.

const panels = new WeakMap(); // parentElement -> what this panel remembers between the server's redraws

// The labels not acknowledged yet also live in the tab's sessionStorage: a panel that goes away before the
// server has them (a redraw without it, a reload, a lost connection) sends them again when it comes back.
const UNACKNOWLEDGED = "cai-label-keys-unacknowledged";

function restored() {
  try {
    const labels = JSON.parse(sessionStorage.getItem(UNACKNOWLEDGED) || "[]");
    return Array.isArray(labels) ? labels : [];
  } catch {
    return [];
  }
}

function keep(labels) {
  try {
    sessionStorage.setItem(UNACKNOWLEDGED, JSON.stringify(labels));
  } catch {
    // no storage (a private window's quota): the labels are still sent, only not kept across a reload
  }
}

// Streamlit calls the exported function again with each redraw's data, but runs the cleanup it returns only
// when the panel goes away: so one key listener per panel, which hands each key to the latest redraw's handler.
function remembered(parentElement) {
  if (!panels.has(parentElement)) {
    // sent: the events of the labels last handed to the server (a new panel has sent none: it sends them again)
    const panel = { unacknowledged: restored(), sent: new Set(), shownPair: null, chosen: null };
    panel.onKey = () => {};
    panel.listener = (event) => panel.onKey(event);
    document.addEventListener("keydown", panel.listener, true);
    panels.set(parentElement, panel);
  }
  return panels.get(parentElement);
}

function typingInto(event) {
  const target = event.composedPath()[0];
  if (!(target instanceof HTMLElement)) return false;
  return target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName);
}

// Enter on another of the page's controls (Undo, a link, an expander's title, the panel's Discard) belongs to
// that control.
function onAnotherControl(event, root) {
  const target = event.composedPath()[0];
  const control = target instanceof Element && target.closest("button, a, summary");
  return Boolean(control) && (!root.contains(control) || control.dataset.part === "discard");
}

export default function ({ data, parentElement, setStateValue }) {
  const panel = remembered(parentElement);
  const root = parentElement.querySelector(".label-keys");
  const part = (name) => root.querySelector(`[data-part="${name}"]`);
  const recorded = new Set(data.recorded);
  panel.unacknowledged = panel.unacknowledged.filter((label) => !recorded.has(label.event));
  keep(panel.unacknowledged);

  const choiceButtons = part("choices");
  if (!choiceButtons.childElementCount) {
    for (const [choice, title, key] of data.choices) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.choice = choice;
      button.textContent = title;
      button.title = `key ${key}`;
      choiceButtons.appendChild(button);
    }
  }
  // This function runs again on every redraw with new data: the handlers are this run's, so set them anew.
  for (const button of choiceButtons.children) button.onclick = () => choose(button.dataset.choice);
  part("submit").onclick = () => save();
  part("discard").onclick = () => discardOthers();

  // The labels to send: this name's, and those already on their way. A label made under another name (the tab
  // changed hands, or the name was changed before the server had it) waits here until the name is set back or
  // the person discards it: the server would refuse it, and dropping it unasked loses someone's work.
  function sendable() {
    return panel.unacknowledged.filter((label) => label.annotator === data.annotator || panel.sent.has(label.event));
  }

  function othersWaiting() {
    const mine = new Set(sendable());
    return panel.unacknowledged.filter((label) => !mine.has(label));
  }

  function send() {
    const labels = sendable();
    panel.sent = new Set(labels.map((label) => label.event));
    setStateValue("labels", labels);
  }

  function discardOthers() {
    const others = new Set(othersWaiting());
    panel.unacknowledged = panel.unacknowledged.filter((label) => !others.has(label));
    keep(panel.unacknowledged);
    draw();
  }

  function queue() {
    const sent = new Set(sendable().map((label) => label.pair));
    return data.pairs.filter((pair) => !sent.has(pair.id));
  }

  function draw() {
    const [pair] = queue();
    if (!pair || pair.id !== panel.shownPair) {
      panel.chosen = null; // a choice never carries over to another pair
      part("rationale").value = "";
      if (pair) {
        // written only when the pair changes: a choice's redraw keeps where the reader had scrolled to
        part("pair-id").textContent = `Pair ${pair.id}`;
        part("prompt").textContent = pair.prompt;
        part("left").textContent = pair.left;
        part("right").textContent = pair.right;
      }
    }
    panel.shownPair = pair ? pair.id : null;
    part("pair").hidden = !pair;
    // The look-ahead ran out before the server refilled it: say so rather than show a pair already labelled.
    part("loading").hidden = Boolean(pair) || !sendable().length;
    for (const button of choiceButtons.children) {
      const on = button.dataset.choice === panel.chosen;
      button.classList.toggle("chosen", on);
      button.setAttribute("aria-pressed", String(on));
    }
    part("submit").disabled = !panel.chosen;
    const titles = Object.fromEntries(data.choices.map(([choice, title]) => [choice, title]));
    part("hint").textContent = panel.chosen ? `Your choice: ${titles[panel.chosen]}. Enter saves it.` : data.hint;
    const saving = sendable().length;
    part("status").textContent = saving ? `Saving ${saving} label${saving === 1 ? "" : "s"}…` : "";
    const others = othersWaiting();
    part("waiting").hidden = !others.length;
    if (others.length) {
      const names = [...new Set(others.map((label) => label.annotator))];
      const count = others.length === 1 ? "1 label" : `${others.length} labels`;
      part("waiting-text").textContent =
        `${count} made as ${names.map((name) => JSON.stringify(name)).join(", ")} ` +
        `${others.length === 1 ? "has" : "have"} not reached the server: ` +
        `set the name back to ${names.length === 1 ? JSON.stringify(names[0]) : "it"} to send them, or`;
    }
  }

  function choose(choice) {
    if (!panel.shownPair) return;
    panel.chosen = choice;
    draw();
  }

  function save() {
    if (!panel.shownPair || !panel.chosen) return;
    panel.unacknowledged.push({
      // unique within the server's session, across remounts of this panel too (its memory starts afresh)
      event: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`,
      annotator: data.annotator,
      pair: panel.shownPair,
      choice: panel.chosen,
      rationale: part("rationale").value.trim(),
    });
    keep(panel.unacknowledged);
    draw(); // the next pair, before the server has heard of this label
    send();
  }

  function onKey(event) {
    if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || typingInto(event)) return;
    const choice = data.choices.find(([, , key]) => key === event.key);
    if (choice) choose(choice[0]);
    else if (event.key === "Enter" && !onAnotherControl(event, root)) save();
    else return;
    event.preventDefault();
    event.stopPropagation();
  }

  panel.onKey = onKey;
  draw();
  // kept from before a reload or a restart, or this name's again after a change of name: send them
  if (sendable().some((label) => !panel.sent.has(label.event))) send();
  return () => {
    document.removeEventListener("keydown", panel.listener, true);
    panels.delete(parentElement);
  };
}
